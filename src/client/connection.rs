//! The client's side of the control socket: the handshake, typed calls and their replies, and a
//! thread that reads everything the broker sends.
//!
//! The socket is blocking, with timeouts: connecting and the handshake give up after the connect
//! timeout, and a send after [`REPLY_TIMEOUT`] (a broker that stopped reading cannot hang a
//! client). Any thread sends (a `SOCK_SEQPACKET` datagram goes out whole, so senders need no
//! lock); one control thread receives, hands each reply to the thread waiting for it, and routes
//! what the broker sends unasked to whom it concerns (ring attachments, mapped at once so that no
//! descriptor piles up, to their subscriber). A reply that comes after its caller gave up is
//! undone: what it created at the broker is released.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shmbus_shm::{DoorbellTable, Owner, Ring};
use tracing::{debug, warn};

use super::broker_identity::TrustedUsers;
use super::error::{CallError, ConnectError, ControlError};
use super::pubsub::attachments::{Attachment, AttachmentQueue};
use crate::address::BusAddress;
use crate::protocol::pubsub::{ReleaseDoorbell, RingAttachment, Unpublish, Unsubscribe};
use crate::protocol::reqrep::{InboxOpened, Serving};
use crate::protocol::seqpacket::{self, Received};
use crate::protocol::{
    BrokerMessage, Call, ClientMessage, ErrorReply, Hello, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
    Reply, RequestId, SubscriptionId, Welcome, codec,
};

/// How long a request waits for its reply (and a send for room) before the broker is deemed
/// unresponsive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a client connects: how long it waits for the broker, and whom it trusts as one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectOptions {
    /// How long connecting and the handshake may take.
    pub(crate) timeout: Duration,
    pub(crate) trusted: TrustedUsers,
}

/// How many dropped subscriptions [`Routing::closed`] remembers.
const CLOSED_MEMORY: usize = 256;

/// A reply with the descriptors it carried (none if they were lost on the way: see
/// [`Received::DescriptorsLost`]).
type ReplyWithFds = (Result<Reply, ErrorReply>, Vec<OwnedFd>);

/// Where the control thread sends what it receives.
#[derive(Default)]
struct Routing {
    replies: HashMap<RequestId, mpsc::Sender<ReplyWithFds>>,
    subscriptions: HashMap<SubscriptionId, Arc<AttachmentQueue>>,
    /// Attachments that arrived before their subscription was registered (the broker sends a
    /// subscription's existing rings before the reply that names it).
    orphans: HashMap<SubscriptionId, Vec<Attachment>>,
    /// Subscriptions recently dropped: attachments still in flight for them are discarded (the
    /// broker frees their slots when it handles the unsubscribe).
    closed: VecDeque<SubscriptionId>,
}

impl Routing {
    /// Remembers that subscription `id` ended, so late attachments for it are dropped.
    fn remember_closed(&mut self, id: SubscriptionId) {
        if self.closed.len() == CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
    }

    /// Hands `item` to subscription `sub` and wakes its subscriber; keeps it for a subscription
    /// not registered yet, drops it for one recently closed.
    fn route(&mut self, sub: SubscriptionId, item: Attachment, doorbells: &DoorbellTable) {
        if let Some(queue) = self.subscriptions.get(&sub) {
            queue.push([item]);
            doorbells.ring(queue.doorbell());
        } else if !self.closed.contains(&sub) {
            self.orphans.entry(sub).or_default().push(item);
        }
    }
}

/// What the handshake established.
pub(crate) struct Session {
    pub(crate) owner: Owner,
    pub(crate) max_payload: u32,
    pub(crate) doorbells: DoorbellTable,
    /// The control thread; it ends once [`Connection::close`] shut the socket down.
    pub(crate) control: std::thread::JoinHandle<()>,
}

/// A live control connection.
pub(crate) struct Connection {
    sock: OwnedFd,
    routing: Mutex<Routing>,
    next_id: AtomicU32,
    /// Whether the broker is still there. Its Release stores and AcqRel swaps (by whichever
    /// thread notices the loss first) pair with the Acquire load in `is_alive`.
    alive: AtomicBool,
    address: BusAddress,
}

fn lock(m: &Mutex<Routing>) -> MutexGuard<'_, Routing> {
    // A panic while routing leaves the maps usable; keep going rather than cascade.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    /// Connects to the broker at `address` (a local socket) and completes the handshake.
    pub(crate) fn open(
        address: &BusAddress,
        name: &str,
        options: ConnectOptions,
    ) -> Result<(Arc<Connection>, Session), ConnectError> {
        let path = address
            .socket_path()
            .ok_or_else(|| ConnectError::RemoteUnsupported {
                address: address.to_string(),
            })?;
        let untrusted = |detail: String| ConnectError::Untrusted {
            address: address.to_string(),
            detail,
        };
        options.trusted.check_directory(path).map_err(untrusted)?;
        let unreachable = |source| ConnectError::Unreachable {
            address: address.to_string(),
            source,
        };
        let sock = seqpacket::connect_timeout(path, options.timeout).map_err(unreachable)?;
        options
            .trusted
            .check_peer(sock.as_fd())
            .map_err(untrusted)?;
        let protocol = |detail: String| ConnectError::Protocol {
            address: address.to_string(),
            detail,
        };
        let hello = ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: crate::protocol::truncate_at_char(name, 64).to_string(),
        });
        let silent = |what: &str| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the broker did not {what} within {:?}", options.timeout),
            ))
        };
        let sent = seqpacket::send(sock.as_fd(), &hello, &[]);
        if let Err(e) = &sent {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(silent("take the handshake"));
            }
        }
        // Even if the send failed, a refusal may be waiting: a broker at its client limit
        // refuses and closes before reading anything.
        let (msg, mut fds) = match (recv_one(&sock), sent) {
            (Ok(m), _) => m,
            (Err(Failure::Timeout), _) => return Err(silent("answer the handshake")),
            (Err(_), Err(e)) => return Err(protocol(format!("send hello: {e}"))),
            (Err(Failure::Other(detail)), Ok(())) => return Err(protocol(detail)),
        };
        let welcome: Welcome = match msg {
            BrokerMessage::Welcome(w) => w,
            BrokerMessage::Refused(e) => {
                return Err(ConnectError::Refused {
                    address: address.to_string(),
                    message: e.message,
                });
            }
            other => return Err(protocol(format!("expected Welcome, got {other:?}"))),
        };
        let owner = Owner::new(welcome.owner).ok_or_else(|| protocol("owner token 0".into()))?;
        let fd = fds
            .pop()
            .ok_or_else(|| protocol("welcome without the doorbell table".into()))?;
        let doorbells = DoorbellTable::attach(fd, welcome.doorbells).map_err(ConnectError::Shm)?;
        // From now on the control thread waits for the broker as long as it takes; a send still
        // gives up when the broker stops reading.
        seqpacket::set_timeouts(sock.as_fd(), None, Some(REPLY_TIMEOUT))
            .map_err(|e| protocol(format!("set socket timeouts: {e}")))?;
        let conn = Arc::new(Connection {
            sock,
            routing: Mutex::new(Routing::default()),
            next_id: AtomicU32::new(1),
            alive: AtomicBool::new(true),
            address: address.clone(),
        });
        let reader = Arc::clone(&conn);
        let control_doorbells = doorbells.clone();
        let control = std::thread::Builder::new()
            .name("shmbus-control".into())
            .spawn(move || reader.control_loop(&control_doorbells))
            .map_err(|e| protocol(format!("start control thread: {e}")))?;
        let session = Session {
            owner,
            max_payload: welcome.max_payload,
            doorbells,
            control,
        };
        Ok((conn, session))
    }

    /// The address this connection reached.
    pub(crate) fn address(&self) -> &BusAddress {
        &self.address
    }

    /// Whether the broker is still there.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn next_id(&self) -> RequestId {
        RequestId::from_raw(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends a request and waits for its reply, which must be of the kind the request calls for.
    pub(crate) fn call<C: Call>(&self, request: C) -> Result<(C::Reply, Vec<OwnedFd>), CallError> {
        let gone = || CallError::Request(ControlError::BrokerGone);
        if !self.is_alive() {
            return Err(gone());
        }
        let id = self.next_id();
        let (tx, rx) = mpsc::channel();
        lock(&self.routing).replies.insert(id, tx);
        let msg = ClientMessage::Request {
            id,
            body: request.into_request(),
        };
        if let Err(e) = seqpacket::send(self.sock.as_fd(), &msg, &[]) {
            lock(&self.routing).replies.remove(&id);
            debug!("request not sent: {e}");
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The broker has not read its socket for the send timeout.
                return Err(CallError::Request(ControlError::Timeout));
            }
            // The socket is broken: the broker is gone, whether or not the control thread has
            // noticed yet.
            self.alive.store(false, Ordering::Release);
            return Err(gone());
        }
        let (result, fds) = match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(gone()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.routing).replies.remove(&id);
                return Err(CallError::Request(ControlError::Timeout));
            }
        };
        match C::reply(result.map_err(CallError::Refused)?) {
            Ok(reply) => Ok((reply, fds)),
            Err(other) => Err(CallError::Request(ControlError::Protocol {
                detail: format!("unexpected reply {other:?}"),
            })),
        }
    }

    /// Sends a request whose reply nobody waits for (releasing something on drop).
    pub(crate) fn notify<C: Call>(&self, request: C) {
        if self.is_alive() {
            let msg = ClientMessage::Request {
                id: self.next_id(),
                body: request.into_request(),
            };
            // Best effort: if the broker is gone, it has released everything anyway.
            let _ = seqpacket::send(self.sock.as_fd(), &msg, &[]);
        }
    }

    /// Routes subscription `id`'s attachments to `queue`, starting with any that came first.
    pub(crate) fn register_subscription(&self, id: SubscriptionId, queue: Arc<AttachmentQueue>) {
        let mut routing = lock(&self.routing);
        if let Some(early) = routing.orphans.remove(&id) {
            queue.push(early);
        }
        routing.subscriptions.insert(id, queue);
    }

    /// Forgets subscription `id`.
    pub(crate) fn unregister_subscription(&self, id: SubscriptionId) {
        let mut routing = lock(&self.routing);
        routing.subscriptions.remove(&id);
        routing.orphans.remove(&id);
        routing.remember_closed(id);
    }

    /// Says goodbye and closes the socket; the control thread then exits.
    pub(crate) fn close(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let _ = seqpacket::send(self.sock.as_fd(), &ClientMessage::Goodbye, &[]);
        }
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            nix::sys::socket::Shutdown::Both,
        );
    }

    fn control_loop(&self, doorbells: &DoorbellTable) {
        loop {
            let (msg, fds) = match recv_one(&self.sock) {
                Ok(m) => m,
                Err(reason) => {
                    if self.alive.swap(false, Ordering::AcqRel) {
                        warn!(address = %self.address, "lost the broker: {reason}");
                    }
                    break;
                }
            };
            let mut routing = lock(&self.routing);
            match msg {
                BrokerMessage::Reply { id, result } => match routing.replies.remove(&id) {
                    Some(tx) => {
                        let _ = tx.send((result, fds));
                    }
                    None => self.undo_abandoned(&mut routing, result),
                },
                BrokerMessage::RingAttached(a) => {
                    let sub = a.subscription;
                    let item = map_attachment(a, fds, doorbells);
                    routing.route(sub, item, doorbells);
                }
                BrokerMessage::RingUnavailable {
                    subscription,
                    topic,
                    error,
                } => {
                    let reason = error.message;
                    let item = Attachment::Unavailable { topic, reason };
                    routing.route(subscription, item, doorbells);
                }
                BrokerMessage::RingRetired { subscription, ring } => {
                    routing.route(subscription, Attachment::Retired { ring }, doorbells);
                }
                other @ (BrokerMessage::Welcome(_) | BrokerMessage::Refused(_)) => {
                    warn!(address = %self.address, "unexpected message from the broker: {other:?}");
                    self.alive.store(false, Ordering::Release);
                    break;
                }
            }
        }
        // Waiters get `Disconnected` when their senders drop; parked subscribers are woken so
        // their callers see what they have (their rings keep working without the broker).
        let mut routing = lock(&self.routing);
        routing.replies.clear();
        for queue in routing.subscriptions.values() {
            doorbells.ring(queue.doorbell());
        }
    }

    /// Releases at the broker what a request whose caller stopped waiting created after all.
    fn undo_abandoned(&self, routing: &mut Routing, result: Result<Reply, ErrorReply>) {
        match result {
            Ok(Reply::Publishing(p)) => self.notify(Unpublish {
                publisher: p.publisher,
            }),
            Ok(Reply::StateOwned(s)) => self.notify(Unpublish {
                publisher: s.publishing.publisher,
            }),
            Ok(Reply::Subscribed(s)) => {
                routing.orphans.remove(&s.subscription);
                routing.remember_closed(s.subscription);
                self.notify(Unsubscribe {
                    subscription: s.subscription,
                });
            }
            Ok(Reply::Serving(Serving { subscription }))
            | Ok(Reply::InboxOpened(InboxOpened { subscription, .. })) => {
                routing.orphans.remove(&subscription);
                routing.remember_closed(subscription);
                self.notify(Unsubscribe { subscription });
            }
            Ok(Reply::DoorbellClaimed(d)) => self.notify(ReleaseDoorbell { index: d.index }),
            Ok(Reply::Done | Reply::Holders(_) | Reply::SnapshotReady(_)) | Err(_) => {}
        }
    }
}

/// Maps the ring of an attachment at once (its descriptors are closed then), so a subscription
/// to thousands of rings holds mappings, not thousands of descriptors.
fn map_attachment(a: RingAttachment, fds: Vec<OwnedFd>, doorbells: &DoorbellTable) -> Attachment {
    let unavailable = |a: RingAttachment, reason: String| Attachment::Unavailable {
        topic: a.topic,
        reason,
    };
    let Ok([data, readers]) = <[OwnedFd; 2]>::try_from(fds) else {
        let reason = "the ring's descriptors were lost on the way (is this process out of file \
                      descriptors?)";
        return unavailable(a, reason.to_string());
    };
    match Ring::attach(data, readers, doorbells, &a.ring.into()) {
        Ok(ring) => Attachment::Ring(a, ring),
        Err(e) => unavailable(a, format!("cannot map the ring: {e}")),
    }
}

/// Why [`recv_one`] returned no message.
enum Failure {
    /// The socket's receive timeout passed (only set during the handshake).
    Timeout,
    /// The connection ended or broke the protocol.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// Receives and decodes one broker message. A message whose descriptors were lost comes with
/// none; whoever needs them reports it.
fn recv_one(sock: &OwnedFd) -> Result<(BrokerMessage, Vec<OwnedFd>), Failure> {
    let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
    loop {
        let mut fds = Vec::new();
        let n = match seqpacket::recv(sock.as_fd(), &mut buf, &mut fds) {
            Ok(Received::Message(n)) => n,
            Ok(Received::DescriptorsLost(n)) => {
                warn!("descriptors from the broker were lost (is this process out of them?)");
                n
            }
            Ok(Received::Closed) => return Err(Failure::Other("connection closed".into())),
            Ok(Received::Oversized) => return Err(Failure::Other("oversized message".into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(Failure::Timeout),
            Err(e) => return Err(Failure::Other(format!("receive failed: {e}"))),
        };
        return match codec::decode_broker(&buf[..n]) {
            Ok(msg) => Ok((msg, fds)),
            Err(e) => Err(Failure::Other(format!("malformed message: {e}"))),
        };
    }
}
