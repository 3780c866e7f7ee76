//! Remote clients' servers at the gateway: the gateway serves the topic on the client's behalf,
//! passes each request on to the client, and answers it with what the client sends back. Peer
//! links serve the same way the topics served on the other side (see [`PassOn::Peer`]).
//!
//! Each served topic has a thread that receives its requests and keeps them, numbered, until
//! the client answers (one response, or a stream ended by an end marker) or drops them. At most
//! [`MAX_IN_FLIGHT`] requests per server wait for the client: beyond that the thread stops
//! receiving, and further requests wait in the server's ring, as they would for a slow local
//! server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use shmbus_shm::Deadline;
use tracing::debug;

use crate::client::pubsub::{Patience, Wait, Waker};
use crate::protocol::remote::{self, AnswerKind, Frame};
use crate::sync::lock;
use crate::transport::wire::Wire;
use crate::{OwnedRequest, ResponseSender, Server};

/// Most requests of one server passed on to the client and not yet answered.
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// The requests of one connection's servers that wait for the client's answers.
#[derive(Default)]
pub(super) struct Held {
    state: Mutex<HeldState>,
    /// Signalled when a request is answered or dropped (room for its server), or to stop.
    room: Condvar,
}

#[derive(Default)]
struct HeldState {
    requests: HashMap<u32, (u32, Answering)>,
    /// Requests held per server.
    per_server: HashMap<u32, usize>,
    next: u32,
}

/// Where a held request stands.
enum Answering {
    /// Not answered yet.
    Waiting(OwnedRequest),
    /// Answered with a stream, not yet ended.
    Streaming(ResponseSender),
}

impl Held {
    /// Holds `request` of `server` under a number of its own, first giving `pass_on` the
    /// number and the request's payload (to encode it into the frame that passes it on).
    fn hold(&self, server: u32, request: OwnedRequest, pass_on: impl FnOnce(u32, &[u8])) {
        let mut state = lock(&self.state);
        let mut key = state.next;
        while state.requests.contains_key(&key) {
            key = key.wrapping_add(1);
        }
        state.next = key.wrapping_add(1);
        pass_on(key, request.payload());
        state
            .requests
            .insert(key, (server, Answering::Waiting(request)));
        *state.per_server.entry(server).or_default() += 1;
    }

    /// Waits while `server` holds at least `limit` requests, until `done` says to stop
    /// waiting (or `patience` passes, if given); returns whether it holds fewer.
    fn wait_below(
        &self,
        server: u32,
        limit: usize,
        done: impl Fn() -> bool,
        patience: Option<Duration>,
    ) -> bool {
        let held = |s: &HeldState| s.per_server.get(&server).copied().unwrap_or(0);
        let waiting = |s: &mut HeldState| !done() && held(s) >= limit;
        let state = lock(&self.state);
        let state = match patience {
            None => self
                .room
                .wait_while(state, waiting)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(patience) => {
                self.room
                    .wait_timeout_while(state, patience, waiting)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
        };
        held(&state) < limit
    }

    /// Answers request `key` as the client says.
    pub(super) fn respond(&self, key: u32, kind: AnswerKind, payload: &[u8]) {
        let mut state = lock(&self.state);
        let Some((server, answering)) = state.requests.remove(&key) else {
            debug!(key, "gateway: an answer to a request no longer held");
            return;
        };
        let answered = match (kind, answering) {
            (AnswerKind::Single, Answering::Waiting(request)) => request.respond(payload),
            (AnswerKind::Item, Answering::Waiting(request)) => {
                let mut sender = request.stream();
                let sent = sender.send(payload);
                state
                    .requests
                    .insert(key, (server, Answering::Streaming(sender)));
                sent
            }
            (AnswerKind::Item, Answering::Streaming(mut sender)) => {
                let sent = sender.send(payload);
                state
                    .requests
                    .insert(key, (server, Answering::Streaming(sender)));
                sent
            }
            (AnswerKind::End, Answering::Waiting(request)) => request.stream().end(),
            (AnswerKind::End, Answering::Streaming(sender)) => sender.end(),
            // A single answer after stream items: the stream is dropped, unfinished (the
            // requester hears it was abandoned).
            (AnswerKind::Single, Answering::Streaming(_)) => Ok(()),
        };
        if let Err(e) = answered {
            debug!(
                key,
                "gateway: a remote server's answer could not be delivered: {e}"
            );
        }
        if !state.requests.contains_key(&key) {
            self.released(&mut state, server);
        }
    }

    /// Drops request `key` unanswered (the requester hears it was abandoned).
    pub(super) fn abandon(&self, key: u32) {
        let mut state = lock(&self.state);
        if let Some((server, _)) = state.requests.remove(&key) {
            self.released(&mut state, server);
        }
    }

    /// Drops every request `server` holds.
    fn abandon_all(&self, server: u32) {
        let mut state = lock(&self.state);
        state.requests.retain(|_, (s, _)| *s != server);
        state.per_server.remove(&server);
        self.room.notify_all();
    }

    fn released(&self, state: &mut HeldState, server: u32) {
        if let Some(count) = state.per_server.get_mut(&server) {
            *count = count.saturating_sub(1);
        }
        self.room.notify_all();
    }
}

/// To whom a server thread passes its requests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PassOn {
    /// A remote client that serves the topic: [`Frame::Incoming`], answered with
    /// [`Frame::Respond`].
    Client,
    /// A peer broker on whose side the topic is served: [`Frame::Request`] (a stream, waiting
    /// [`PEER_REQUEST_TIMEOUT`] for each answer), answered with [`Frame::Answer`].
    Peer,
}

/// How long a request passed on to a peer broker waits there for each answer.
pub(super) const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server that stops serving on a peer's behalf keeps answering the requests it
/// passed on already.
const DRAIN_LIMIT: Duration = PEER_REQUEST_TIMEOUT;

/// The thread that passes one served topic's requests on; stopped (and its held requests
/// dropped) when this is dropped.
pub(super) struct ServerThread {
    id: u32,
    stop: Arc<AtomicBool>,
    /// Set when it is to pass nothing more on, and stop serving once what it passed on is
    /// answered.
    draining: Arc<AtomicBool>,
    waker: Waker,
    held: Arc<Held>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Passes the requests `server` receives on, over `wire`, as server `id`'s.
    pub(super) fn start(
        server: Server,
        id: u32,
        wire: Arc<Wire>,
        held: Arc<Held>,
        to: PassOn,
    ) -> std::io::Result<ServerThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let waker = server.waker();
        let thread = {
            let flags = Flags {
                stop: Arc::clone(&stop),
                draining: Arc::clone(&draining),
            };
            let held = Arc::clone(&held);
            std::thread::Builder::new()
                .name("shmbus-gw-serve".into())
                .spawn(move || pass_on(server, id, to, &wire, &held, &flags))?
        };
        Ok(ServerThread {
            id,
            stop,
            draining,
            waker,
            held,
            thread: Some(thread),
        })
    }

    /// Passes nothing more on, and stops serving once every request passed on is answered (or
    /// after [`DRAIN_LIMIT`]): what is on its way back still reaches its requesters.
    pub(super) fn drain(&self) {
        // Release pairs with the Acquire loads of `Flags`.
        self.draining.store(true, Ordering::Release);
        self.waker.wake();
        self.held.room.notify_all();
    }

    /// Whether its thread has ended (a drained server is done).
    pub(super) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// What a server thread is told.
struct Flags {
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Flags {
    fn stopped(&self) -> bool {
        // Acquire pairs with the Release store of `ServerThread::drop`.
        self.stop.load(Ordering::Acquire)
    }

    fn draining(&self) -> bool {
        // Acquire pairs with the Release store of `ServerThread::drain`.
        self.stopped() || self.draining.load(Ordering::Acquire)
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        // Release pairs with the Acquire load of `Flags::stopped` (in `pass_on` and its waits).
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        self.held.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.held.abandon_all(self.id);
    }
}

/// Receives requests and passes them on until stopped or the connection fails; or, once
/// draining, until what it passed on is answered.
fn pass_on(mut server: Server, id: u32, to: PassOn, wire: &Wire, held: &Held, flags: &Flags) {
    // Each request's frame, encoded while its request is taken into `held`.
    let mut encoded = Vec::new();
    loop {
        let room = held.wait_below(id, MAX_IN_FLIGHT, || flags.draining(), None);
        if flags.draining() {
            break;
        }
        if !room {
            continue;
        }
        let request = match server.receive(Patience::Until(Deadline::Never), &|| flags.draining()) {
            Ok(request) => request.detach(),
            Err(Wait::Stopped) => break,
            Err(Wait::Failed(e)) => {
                debug!(id, "gateway: a remote server's requests: {e}");
                if wire.is_closed() {
                    return;
                }
                continue;
            }
            Err(Wait::Empty | Wait::Timeout) => continue,
        };
        let topic = server.topic();
        held.hold(id, request, |key, payload| {
            let frame = match to {
                PassOn::Client => Frame::Incoming {
                    server: id,
                    request: key,
                    payload,
                },
                PassOn::Peer => Frame::Request {
                    id: key,
                    stream: true,
                    timeout_ms: PEER_REQUEST_TIMEOUT.as_millis() as u64,
                    topic,
                    payload,
                },
            };
            encoded.clear();
            remote::encode(&frame, &mut encoded);
        });
        if wire.send_encoded(&encoded, None).is_err() {
            return;
        }
    }
    // Serving goes on (new requests wait in the ring) until what was passed on is answered.
    held.wait_below(id, 1, || flags.stopped(), Some(DRAIN_LIMIT));
}
