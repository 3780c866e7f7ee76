//! A bus reached over TCP or TLS: one connection to a broker's gateway, kept up by a thread of
//! its own.
//!
//! The thread receives every frame and routes it: messages to their subscriber's inbox, answers
//! to the call waiting for them, answers to requests to their exchange. Senders — publishers, subscribe calls — write to the connection
//! directly. When the connection is lost, every inbox is told ([`RecvError::BrokerLost`]) and the
//! thread dials again with the same backoff as local clients; once through, it subscribes every
//! live subscription and advertises every live publisher again before anyone else may send, and
//! reports each pattern as a gap ([`RecvError::Lagged`] with [`RecvError::MISSED_UNKNOWN`]).
//! Meanwhile publishers wait for the link as they would wait for room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::connection::Backoff;
use super::error::{AttachError, ConnectError, ControlError};
use super::pubsub::RecvError;
use super::pubsub::remote::{Inbox, with_room};
use crate::RequestError;
use crate::address::BusAddress;
use crate::protocol::ErrorCode;
use crate::protocol::remote::{AnswerKind, Frame, Refusal, Unanswered};
use crate::protocol::reqrep::EXCHANGE_HEADER_LEN;
use crate::sync::lock;
use crate::topic::Topic;
use crate::transport::wire::{SendError, Wire, WireReader};
use crate::transport::{self, DialError, Dialed};
use rkyv::util::AlignedVec;

/// How long a call waits for the gateway's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing a bus waits for what its handles sent to be written (messages published
/// just before a program ends still go out; a gateway that does not read loses them then).
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// How to reach a gateway: what [`RemoteBus::connect`] dials, again after every loss.
pub(crate) struct Dialer {
    pub(crate) address: BusAddress,
    pub(crate) name: String,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// The session the gateway holds for this client, if any.
    pub(crate) session: Option<String>,
    pub(crate) timeout: Duration,
    /// Who this client is, to the gateway, on every connection ([`Hello::instance`](
    /// crate::protocol::remote::Hello::instance)): a reconnection replaces a connection the
    /// gateway may still hold.
    pub(crate) instance: u64,
}

impl Dialer {
    fn dial(&self) -> Result<Dialed, ConnectError> {
        let address = self.address.to_string();
        let session = self.session.as_deref();
        let caller = transport::Caller {
            name: &self.name,
            session,
            peer: None,
            instance: self.instance,
        };
        let dialed = transport::dial(&self.address, self.tls.as_ref(), &caller, self.timeout)
            .map_err(|e| match e {
                DialError::Unreachable(source) => ConnectError::Unreachable {
                    address: address.clone(),
                    source,
                },
                DialError::Refused {
                    code: ErrorCode::PermissionDenied,
                    message,
                } => ConnectError::PermissionDenied {
                    address: address.clone(),
                    message,
                },
                DialError::Refused { message, .. } => ConnectError::Refused {
                    address: address.clone(),
                    message,
                },
                DialError::Protocol(detail) => ConnectError::Protocol {
                    address: address.clone(),
                    detail,
                },
            })?;
        // A client's publishers send streams of small frames: batch them.
        dialed
            .wire
            .coalesce()
            .map_err(|source| ConnectError::Unreachable { address, source })?;
        Ok(dialed)
    }
}

/// A remote bus, shared by its handles and its thread.
pub(crate) struct RemoteBus {
    dialer: Dialer,
    link: Mutex<RemoteLink>,
    /// Signalled when the link comes up, goes down, or the bus closes.
    changed: Condvar,
    routes: Mutex<Routes>,
    next_id: AtomicU32,
}

/// The connection now, if there is one.
struct RemoteLink {
    wire: Option<Arc<Wire>>,
    max_payload: u32,
    closing: bool,
}

/// Where frames for each id go.
#[derive(Default)]
struct Routes {
    subscriptions: HashMap<u32, Arc<Inbox>>,
    /// Live publishers' topics, to advertise again after a reconnection.
    publishers: HashMap<u32, String>,
    /// Calls waiting for the answer about their id.
    waiting: HashMap<u32, mpsc::SyncSender<Result<Reply, Refusal>>>,
    /// Snapshots being received.
    snapshots: HashMap<u32, Gathering>,
    /// State owners: where a change the gateway could not make is reported.
    owners: HashMap<u32, Arc<Mutex<Option<Refusal>>>>,
    /// Requests waiting for their answers.
    exchanges: HashMap<u32, mpsc::SyncSender<Answered>>,
    /// Servers' request inboxes, and their topics (to serve again after a reconnection).
    servers: HashMap<u32, (Arc<Inbox>, String)>,
}

/// What the gateway answered a call with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// It is done.
    Done,
    /// A state owner owns its collection, with these limits.
    Owned {
        /// The largest value.
        max_value: u32,
        /// Most bytes of keys and values.
        max_bytes: u64,
    },
}

/// A snapshot being received, and who waits for it.
struct Gathering {
    bytes: Vec<u8>,
    done: mpsc::SyncSender<Result<Vec<u8>, Refusal>>,
}

/// The largest snapshot a client takes from a gateway: a bound on what the gateway can make it
/// buffer.
const MAX_SNAPSHOT: usize = 1 << 30;

/// How long a snapshot may take to arrive.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Most answers of one request that wait to be read; a stream whose reader falls further behind
/// ends.
const ANSWER_BACKLOG: usize = 1024;

/// How much longer than a request's own timeout a client waits for the gateway to report it:
/// the gateway keeps the time, the client only guards against a link that goes quiet.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What the gateway said about a request.
pub(crate) enum Answered {
    /// An answer, behind room for the exchange header (see [`Response`](crate::Response)).
    Answer(AnswerKind, AlignedVec<16>),
    /// No (more) answers.
    Unanswered(Unanswered),
}

/// One request in progress on a remote bus; its answers are routed to it until it drops.
pub(crate) struct RemoteExchange {
    bus: Arc<RemoteBus>,
    id: u32,
    answers: mpsc::Receiver<Answered>,
    patience: Option<Duration>,
    topic: Topic,
}

impl RemoteExchange {
    /// The next answer, as its kind and payload.
    pub(crate) fn next(&mut self) -> Result<(AnswerKind, AlignedVec<16>), RequestError> {
        let wait = self
            .patience
            .map_or(Duration::from_secs(u64::from(u32::MAX)), |p| {
                p + ANSWER_GRACE
            });
        let topic = self.topic.clone();
        match self.answers.recv_timeout(wait) {
            Ok(Answered::Answer(kind, payload)) => Ok((kind, payload)),
            Ok(Answered::Unanswered(why)) => Err(request_error(why, topic)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RequestError::Timeout { topic }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(RequestError::Setup {
                topic,
                detail: "the exchange with the gateway broke off: the link was lost, or the \
                         answers were not read as fast as they came"
                    .into(),
            }),
        }
    }

    /// The topic asked.
    pub(crate) fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl Drop for RemoteExchange {
    fn drop(&mut self) {
        lock(&self.bus.routes).exchanges.remove(&self.id);
    }
}

/// Sends `frame` on `wire` and waits for its answer on `answer` (routed there by the bus's
/// thread), both until `deadline`.
fn ask<T>(
    wire: &Wire,
    frame: &Frame<'_>,
    answer: &mpsc::Receiver<Result<T, Refusal>>,
    deadline: Instant,
) -> Result<T, RemoteCallError> {
    let gone = RemoteCallError::Control(ControlError::BrokerGone);
    match wire.send_by(frame, Some(deadline)) {
        Ok(()) => match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(answer) => answer.map_err(RemoteCallError::Refused),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(RemoteCallError::Control(ControlError::Timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone),
        },
        Err(SendError::Timeout) => Err(RemoteCallError::Control(ControlError::Timeout)),
        Err(SendError::Closed(_)) => Err(gone),
    }
}

/// The request error the gateway's `why` stands for.
fn request_error(why: Unanswered, topic: Topic) -> RequestError {
    match why {
        Unanswered::NoServer => RequestError::NoServer { topic },
        Unanswered::Timeout => RequestError::Timeout { topic },
        Unanswered::ServerGone => RequestError::ServerGone { topic },
        Unanswered::Abandoned => RequestError::Abandoned { topic },
        Unanswered::TooLarge { len, max } => RequestError::TooLarge {
            topic,
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        },
        Unanswered::Refused(Refusal {
            code: ErrorCode::PermissionDenied,
            message,
        }) => RequestError::PermissionDenied { topic, message },
        Unanswered::Refused(Refusal { message, .. }) => RequestError::Setup {
            topic,
            detail: message,
        },
    }
}

/// What every handle of a remote bus holds: the bus, and its thread, joined when the last
/// handle goes.
pub(crate) struct RemoteInner {
    pub(crate) bus: Arc<RemoteBus>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RemoteInner {
    fn drop(&mut self) {
        self.bus.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why a call to the gateway failed.
pub(crate) enum RemoteCallError {
    /// No answer: the link is down or went down, or the gateway did not answer in time.
    Control(ControlError),
    /// The gateway refused.
    Refused(Refusal),
}

impl RemoteCallError {
    /// The control error it stands for (a refusal's message as its detail).
    pub(crate) fn into_control(self) -> ControlError {
        match self {
            RemoteCallError::Control(e) => e,
            RemoteCallError::Refused(r) => ControlError::Protocol { detail: r.message },
        }
    }

    /// The error of attaching `topic`.
    pub(crate) fn attach(self, topic: &str) -> AttachError {
        let topic = topic.to_string();
        match self {
            RemoteCallError::Control(source) => AttachError::Broker { topic, source },
            RemoteCallError::Refused(Refusal {
                code: ErrorCode::PermissionDenied,
                message,
            }) => AttachError::PermissionDenied { topic, message },
            RemoteCallError::Refused(Refusal { code, message }) => AttachError::Refused {
                topic,
                code,
                message,
            },
        }
    }
}

impl RemoteBus {
    /// Dials the gateway and starts the thread that keeps the link.
    pub(crate) fn connect(dialer: Dialer) -> Result<RemoteInner, ConnectError> {
        let Dialed {
            wire,
            reader,
            welcome,
        } = dialer.dial()?;
        let bus = Arc::new(RemoteBus {
            dialer,
            link: Mutex::new(RemoteLink {
                wire: Some(wire),
                max_payload: welcome.max_payload,
                closing: false,
            }),
            changed: Condvar::new(),
            routes: Mutex::default(),
            next_id: AtomicU32::new(1),
        });
        let thread = {
            let bus = Arc::clone(&bus);
            std::thread::Builder::new()
                .name("shmbus-remote".into())
                .spawn(move || bus.run(reader))
                .map_err(|source| ConnectError::Unreachable {
                    address: "(thread)".into(),
                    source,
                })?
        };
        Ok(RemoteInner {
            bus,
            thread: Some(thread),
        })
    }

    /// The gateway's address.
    pub(crate) fn address(&self) -> &BusAddress {
        &self.dialer.address
    }

    /// Whether the link is up.
    pub(crate) fn is_connected(&self) -> bool {
        lock(&self.link).wire.is_some()
    }

    /// The largest payload the bus carries.
    pub(crate) fn max_payload(&self) -> u32 {
        lock(&self.link).max_payload
    }

    /// A new id for a subscription or publisher.
    pub(crate) fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The link, waiting for it until `deadline` (`None`: as long as it takes); `None` when it
    /// is not up in time (or the bus closes).
    pub(crate) fn wire(&self, deadline: Option<Instant>) -> Option<Arc<Wire>> {
        let mut link = lock(&self.link);
        loop {
            // A wire closed under its senders is dropped by the thread at once; wait for the next.
            if let Some(wire) = link.wire.as_ref().filter(|w| !w.is_closed()) {
                return Some(Arc::clone(wire));
            }
            if link.closing {
                return None;
            }
            let left = match deadline {
                None => Duration::from_secs(3600),
                Some(at) => at.saturating_duration_since(Instant::now()),
            };
            if left.is_zero() {
                return None;
            }
            link = self
                .changed
                .wait_timeout(link, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Subscribes `inbox` (routing its messages from now on) and waits for the gateway's answer.
    pub(crate) fn subscribe(&self, inbox: &Arc<Inbox>) -> Result<(), RemoteCallError> {
        let frame = Frame::Subscribe(inbox.request());
        let result = self.call(inbox.id, &frame, |routes| {
            routes.subscriptions.insert(inbox.id, Arc::clone(inbox));
        });
        if result.is_err() {
            lock(&self.routes).subscriptions.remove(&inbox.id);
        }
        result.map(drop)
    }

    /// Adds `pattern` to subscription `id` and waits for the gateway's answer.
    pub(crate) fn add_pattern(&self, id: u32, pattern: &str) -> Result<(), RemoteCallError> {
        let frame = Frame::AddPattern {
            id,
            pattern: pattern.to_string(),
        };
        self.call(id, &frame, |_| {}).map(drop)
    }

    /// Ends subscription `id`: nothing more is routed to it.
    pub(crate) fn unsubscribe(&self, id: u32) {
        lock(&self.routes).subscriptions.remove(&id);
        self.notify(&Frame::Unsubscribe { id });
    }

    /// Advertises publisher `id` on `topic` and waits for the gateway's answer.
    pub(crate) fn advertise(&self, id: u32, topic: &str) -> Result<(), RemoteCallError> {
        let frame = Frame::Advertise {
            id,
            topic: topic.to_string(),
        };
        let result = self.call(id, &frame, |routes| {
            routes.publishers.insert(id, topic.to_string());
        });
        if result.is_err() {
            lock(&self.routes).publishers.remove(&id);
        }
        result.map(drop)
    }

    /// Publisher `id` is gone.
    pub(crate) fn withdraw(&self, id: u32) {
        lock(&self.routes).publishers.remove(&id);
        self.notify(&Frame::Withdraw { id });
    }

    /// Serves `topic`, routing its requests to `inbox` from now on, and waits for the gateway's
    /// answer.
    pub(crate) fn serve(&self, inbox: &Arc<Inbox>, topic: &str) -> Result<(), RemoteCallError> {
        let frame = Frame::Serve {
            id: inbox.id,
            topic: topic.to_string(),
        };
        let result = self.call(inbox.id, &frame, |routes| {
            routes
                .servers
                .insert(inbox.id, (Arc::clone(inbox), topic.to_string()));
        });
        if result.is_err() {
            lock(&self.routes).servers.remove(&inbox.id);
        }
        result.map(drop)
    }

    /// The content of the state collections `pattern` matches, in the snapshot format.
    pub(crate) fn snapshot(&self, pattern: &str) -> Result<Vec<u8>, RemoteCallError> {
        let gone = || RemoteCallError::Control(ControlError::BrokerGone);
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        let wire = self.wire(Some(deadline)).ok_or_else(gone)?;
        let id = self.next_id();
        let (done, rx) = mpsc::sync_channel(1);
        let gathering = Gathering {
            bytes: Vec::new(),
            done,
        };
        lock(&self.routes).snapshots.insert(id, gathering);
        let frame = Frame::Snapshot {
            id,
            pattern: pattern.to_string(),
        };
        let outcome = ask(&wire, &frame, &rx, deadline);
        lock(&self.routes).snapshots.remove(&id);
        outcome
    }

    /// Owns a state collection as owner `own.id` (from now on, a change the gateway cannot make
    /// is reported in `failure`) and waits for the gateway's answer: the largest value and the
    /// most bytes, and the link it owns on.
    pub(crate) fn own(
        &self,
        own: crate::protocol::remote::Own,
        failure: &Arc<Mutex<Option<Refusal>>>,
    ) -> Result<(u32, u64, Arc<Wire>), RemoteCallError> {
        let id = own.id;
        let result = self.call_on(id, &Frame::Own(own), |routes| {
            routes.owners.insert(id, Arc::clone(failure));
        });
        if result.is_err() {
            lock(&self.routes).owners.remove(&id);
        }
        match result {
            Ok((
                Reply::Owned {
                    max_value,
                    max_bytes,
                },
                wire,
            )) => Ok((max_value, max_bytes, wire)),
            Ok((Reply::Done, _)) => Err(RemoteCallError::Control(ControlError::Protocol {
                detail: "the gateway answered an own without its limits".into(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Owner `id` is gone.
    pub(crate) fn disown(&self, id: u32) {
        lock(&self.routes).owners.remove(&id);
        self.notify(&Frame::Withdraw { id });
    }

    /// Waits until the broker has every change owner `owner` made so far.
    pub(crate) fn sync_state(&self, owner: u32) -> Result<(), RemoteCallError> {
        let id = self.next_id();
        self.call(id, &Frame::SyncState { id, owner }, |_| {})
            .map(drop)
    }

    /// Server `id` stops serving.
    pub(crate) fn unserve(&self, id: u32) {
        lock(&self.routes).servers.remove(&id);
        self.notify(&Frame::Unserve { id });
    }

    /// Answers request `request` (the gateway's number) of a server; fails if the link is
    /// down (the gateway then dropped the request anyway).
    pub(crate) fn respond(
        &self,
        request: u32,
        answer: Option<(AnswerKind, &[u8])>,
    ) -> Result<(), SendError> {
        let frame = match answer {
            Some((kind, payload)) => Frame::Respond {
                request,
                kind,
                payload,
            },
            None => Frame::Unanswered {
                id: request,
                why: Unanswered::Abandoned,
            },
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let wire = self
            .wire(Some(Instant::now()))
            .ok_or_else(|| SendError::Closed("the link to the gateway is down".into()))?;
        wire.send_by(&frame, Some(deadline))
    }

    /// Sends a request for `topic` to the gateway; its answers are read from the exchange
    /// returned. `patience` bounds the wait for (each) answer.
    pub(crate) fn request(
        self: &Arc<Self>,
        topic: Topic,
        payload: &[u8],
        stream: bool,
        patience: Option<Duration>,
    ) -> Result<RemoteExchange, RequestError> {
        let max = self.max_payload() as usize;
        if payload.len() > max {
            return Err(RequestError::TooLarge {
                topic,
                len: payload.len(),
                max,
            });
        }
        let deadline = Instant::now() + patience.map_or(REPLY_TIMEOUT, |p| p.min(REPLY_TIMEOUT));
        let unreachable = |topic| RequestError::Setup {
            topic,
            detail: format!("the gateway at {} is not reachable", self.dialer.address),
        };
        let Some(wire) = self.wire(Some(deadline)) else {
            return Err(unreachable(topic));
        };
        let id = self.next_id();
        let (tx, answers) = mpsc::sync_channel(ANSWER_BACKLOG);
        lock(&self.routes).exchanges.insert(id, tx);
        let exchange = RemoteExchange {
            bus: Arc::clone(self),
            id,
            answers,
            patience,
            topic,
        };
        let timeout_ms = patience.map_or(u64::MAX, |p| {
            u64::try_from(p.as_millis()).unwrap_or(u64::MAX - 1)
        });
        let frame = Frame::Request {
            id,
            stream,
            timeout_ms,
            topic: exchange.topic.as_str(),
            payload,
        };
        match wire.send_by(&frame, Some(deadline)) {
            Ok(()) => Ok(exchange),
            Err(_) => Err(unreachable(exchange.topic.clone())),
        }
    }

    /// Sends `frame` if the link is up (what it ends is ended anyway when the link is down).
    fn notify(&self, frame: &Frame<'_>) {
        if let Some(wire) = self.wire(Some(Instant::now())) {
            let _ = wire.send_by(frame, Some(Instant::now() + REPLY_TIMEOUT));
        }
    }

    /// Sends `frame`, about `id`, and waits for the answer about `id`. `route` records what
    /// the answer and later frames concern, once the link to send on is known (so that a
    /// reconnection meanwhile either registers it again or fails this call, never both).
    fn call(
        &self,
        id: u32,
        frame: &Frame<'_>,
        route: impl FnOnce(&mut Routes),
    ) -> Result<Reply, RemoteCallError> {
        self.call_on(id, frame, route).map(|(reply, _)| reply)
    }

    /// [`call`](Self::call), also returning the link the call went on.
    fn call_on(
        &self,
        id: u32,
        frame: &Frame<'_>,
        route: impl FnOnce(&mut Routes),
    ) -> Result<(Reply, Arc<Wire>), RemoteCallError> {
        let gone = || RemoteCallError::Control(ControlError::BrokerGone);
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let wire = self.wire(Some(deadline)).ok_or_else(gone)?;
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut routes = lock(&self.routes);
            route(&mut routes);
            routes.waiting.insert(id, tx);
        }
        let outcome = ask(&wire, frame, &rx, deadline);
        lock(&self.routes).waiting.remove(&id);
        outcome.map(|reply| (reply, wire))
    }

    /// Closes the link, once what was sent on it is written (see [`CLOSE_FLUSH`]).
    fn close(&self) {
        let wire = {
            let mut link = lock(&self.link);
            link.closing = true;
            self.changed.notify_all();
            link.wire.take()
        };
        if let Some(wire) = wire {
            wire.finish("the client closed the bus", Instant::now() + CLOSE_FLUSH);
        }
    }

    /// The thread: routes frames until the link is lost, then links again, until the bus closes.
    fn run(self: Arc<Self>, mut reader: WireReader) {
        loop {
            let reason = self.route(&mut reader);
            if !self.lost(&reason) {
                return;
            }
            match self.relink() {
                Some(next) => reader = next,
                None => return,
            }
        }
    }

    /// Routes frames until the link fails; returns why.
    fn route(&self, reader: &mut WireReader) -> String {
        loop {
            let frame = match reader.next() {
                Ok(frame) => frame,
                Err(reason) => return reason,
            };
            match frame {
                Frame::Message {
                    subscription,
                    publisher,
                    sequence,
                    topic,
                    payload,
                } => {
                    let inbox = lock(&self.routes).subscriptions.get(&subscription).cloned();
                    if let Some(inbox) = inbox {
                        inbox.deliver(topic, 0, payload, publisher, sequence);
                    }
                }
                Frame::Lagged {
                    subscription,
                    topic,
                    missed,
                } => {
                    let inbox = lock(&self.routes).subscriptions.get(&subscription).cloned();
                    if let (Some(inbox), Ok(topic)) = (inbox, crate::topic::Topic::new(&topic)) {
                        inbox.report(RecvError::Lagged { topic, missed });
                    }
                }
                Frame::Answer { id, kind, payload } => {
                    let answer = with_room(EXCHANGE_HEADER_LEN, payload);
                    self.route_answer(id, Answered::Answer(kind, answer));
                }
                Frame::Unanswered { id, why } => self.route_answer(id, Answered::Unanswered(why)),
                Frame::Incoming {
                    server,
                    request,
                    payload,
                } => {
                    let route = lock(&self.routes).servers.get(&server).cloned();
                    if let Some((inbox, topic)) = route {
                        inbox.deliver(&topic, EXCHANGE_HEADER_LEN, payload, 0, u64::from(request));
                    }
                }
                Frame::SnapshotPart { id, last, bytes } => self.gather(id, last, bytes),
                Frame::Done { id } => self.answer(id, Ok(Reply::Done)),
                Frame::Owned {
                    id,
                    max_value,
                    max_bytes,
                } => self.answer(
                    id,
                    Ok(Reply::Owned {
                        max_value,
                        max_bytes,
                    }),
                ),
                Frame::Failed { id, refusal } => self.answer(id, Err(refusal)),
                other => {
                    let reason = format!("unexpected frame from the gateway: {other:?}");
                    reader.wire().close(reason.clone());
                    return reason;
                }
            }
        }
    }

    /// Hands an answer to request `id`, if it still waits; one whose reader falls too far
    /// behind is dropped (and learns so at its next read).
    fn route_answer(&self, id: u32, answered: Answered) {
        let mut routes = lock(&self.routes);
        let Some(exchange) = routes.exchanges.get(&id) else {
            return;
        };
        if let Err(mpsc::TrySendError::Full(_)) = exchange.try_send(answered) {
            routes.exchanges.remove(&id);
        }
    }

    /// Adds the next part of snapshot `id`; hands the snapshot over after the last one. A
    /// snapshot that would outgrow [`MAX_SNAPSHOT`] fails.
    fn gather(&self, id: u32, last: bool, bytes: &[u8]) {
        let mut routes = lock(&self.routes);
        let Some(gathering) = routes.snapshots.get_mut(&id) else {
            return;
        };
        if gathering.bytes.len() + bytes.len() > MAX_SNAPSHOT {
            let refusal = Refusal::new(
                ErrorCode::Exhausted,
                format!("a snapshot larger than {MAX_SNAPSHOT} bytes"),
            );
            let gathering = routes.snapshots.remove(&id).expect("looked up");
            let _ = gathering.done.try_send(Err(refusal));
            return;
        }
        gathering.bytes.extend_from_slice(bytes);
        if last {
            let gathering = routes.snapshots.remove(&id).expect("looked up");
            let _ = gathering.done.try_send(Ok(gathering.bytes));
        }
    }

    /// Hands the answer about `id` to the call waiting for it, or, with none waiting (an answer
    /// to a registration made again after a reconnection), reports a refusal to whom it
    /// concerns.
    fn answer(&self, id: u32, answer: Result<Reply, Refusal>) {
        let mut routes = lock(&self.routes);
        if let Some(waiting) = routes.waiting.get(&id) {
            let _ = waiting.try_send(answer);
            return;
        }
        let Err(refusal) = answer else { return };
        if let Some(gathering) = routes.snapshots.remove(&id) {
            let _ = gathering.done.try_send(Err(refusal));
        } else if let Some(failure) = routes.owners.get(&id) {
            *lock(failure) = Some(refusal);
        } else if let Some((inbox, topic)) = routes.servers.get(&id) {
            inbox.report(RecvError::Unavailable {
                topic: topic.clone(),
                detail: refusal.message,
            });
        } else if let Some(inbox) = routes.subscriptions.get(&id) {
            inbox.report(RecvError::Unavailable {
                topic: inbox.patterns().join(" "),
                detail: refusal.message,
            });
        } else if let Some(topic) = routes.publishers.get(&id) {
            warn!(%topic, "the gateway refused a remote publisher: {}", refusal.message);
        }
    }

    /// The link is lost for `reason`: tell everyone. Returns whether to link again (the bus is
    /// not closing).
    fn lost(&self, reason: &str) -> bool {
        let closing = {
            let mut link = lock(&self.link);
            link.wire = None;
            self.changed.notify_all();
            link.closing
        };
        if closing {
            return false;
        }
        warn!(address = %self.dialer.address, "lost the gateway: {reason}");
        let mut routes = lock(&self.routes);
        let servers = routes.servers.values().map(|(inbox, _)| inbox);
        for inbox in routes.subscriptions.values().chain(servers) {
            inbox.report(RecvError::BrokerLost);
        }
        // Dropping the senders fails the calls, snapshots and requests waiting on them.
        routes.waiting.clear();
        routes.snapshots.clear();
        routes.exchanges.clear();
        true
    }

    /// Dials again with backoff until through (registering everything again) or closing.
    fn relink(&self) -> Option<WireReader> {
        let mut backoff = Backoff::default();
        loop {
            let wait = backoff.next_wait();
            {
                let link = lock(&self.link);
                let (link, _) = self
                    .changed
                    .wait_timeout_while(link, wait, |l| !l.closing)
                    .unwrap_or_else(PoisonError::into_inner);
                if link.closing {
                    return None;
                }
            }
            match self.dialer.dial() {
                Ok(dialed) => {
                    if self.register_again(&dialed.wire).is_err() {
                        continue;
                    }
                    let mut link = lock(&self.link);
                    if link.closing {
                        dialed.wire.close("the client closed the bus");
                        return None;
                    }
                    link.wire = Some(dialed.wire);
                    link.max_payload = dialed.welcome.max_payload;
                    self.changed.notify_all();
                    info!(address = %self.dialer.address, attempts = backoff.attempts(), "reconnected to the gateway");
                    return Some(dialed.reader);
                }
                Err(e) => debug!(address = %self.dialer.address, "reconnecting failed: {e}"),
            }
        }
    }

    /// Subscribes and advertises everything live again on `wire`, before anyone else may send on
    /// it; each pattern is reported as a gap.
    fn register_again(&self, wire: &Wire) -> Result<(), SendError> {
        let routes = lock(&self.routes);
        for inbox in routes.subscriptions.values() {
            wire.send(&Frame::Subscribe(inbox.request()))?;
            inbox.report_gap();
        }
        for (&id, topic) in &routes.publishers {
            wire.send(&Frame::Advertise {
                id,
                topic: topic.clone(),
            })?;
        }
        for (&id, (_, topic)) in &routes.servers {
            wire.send(&Frame::Serve {
                id,
                topic: topic.clone(),
            })?;
        }
        Ok(())
    }
}
