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
//!
//! When the broker goes, the control thread tells every listening subscriber, then reconnects
//! with backoff until a broker answers at the same address again. Each successful handshake is
//! a new [`Link`], numbered one higher: what a handle registered belongs to the link it
//! registered on (ids, doorbells and rings mean nothing to the next broker), so handles keep
//! that link, register again on the new one when they see the number change, and never send a
//! request of an old link to a new broker.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use shmbus_shm::{DoorbellTable, Owner, Ring};
use tracing::{debug, info, warn};

use super::broker_identity::TrustedUsers;
use super::error::{CallError, ConnectError, ControlError};
use super::pubsub::attachments::{Attachment, AttachmentQueue};
use crate::address::BusAddress;
use crate::protocol::pubsub::{ReleaseDoorbell, RingAttachment, Unpublish, Unsubscribe};
use crate::protocol::reqrep::{InboxOpened, Serving};
use crate::protocol::seqpacket::{self, Received};
use crate::protocol::{
    BrokerMessage, Call, ClientMessage, ErrorCode, ErrorReply, Hello, JoinSession, MAX_MESSAGE_LEN,
    PROTOCOL_VERSION, Reply, Request, RequestId, SubscriptionId, Welcome, codec,
};
use crate::sync::lock;

/// How long a request waits for its reply (and a send for room) before the broker is deemed
/// unresponsive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait before reconnecting to a lost broker; each failed attempt doubles it, up to
/// [`RECONNECT_MAX`], and each wait is spread by up to half either way, so that the many clients
/// of a restarted broker do not all knock at the same instant.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two attempts to reconnect.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How a client connects: how long it waits for the broker, whom it trusts as one, and the
/// session it holds.
#[derive(Clone, Debug)]
pub(crate) struct ConnectOptions {
    /// How long connecting and the handshake may take.
    pub(crate) timeout: Duration,
    pub(crate) trusted: TrustedUsers,
    /// The session to join after the handshake (again with every broker it reconnects to).
    pub(crate) session: Option<String>,
}

/// How many dropped subscriptions [`Routing::closed`] remembers.
const CLOSED_MEMORY: usize = 256;

/// A reply with the descriptors it carried (none if they were lost on the way: see
/// [`Received::DescriptorsLost`]).
type ReplyWithFds = (Result<Reply, ErrorReply>, Vec<OwnedFd>);

/// Where the control thread sends what it receives.
#[derive(Default)]
struct Routing {
    /// The generation of the link requests go out on now. It changes only under this lock, so
    /// a caller waits for a reply only to a request of the current link.
    generation: u64,
    replies: HashMap<RequestId, mpsc::Sender<ReplyWithFds>>,
    subscriptions: HashMap<SubscriptionId, Arc<AttachmentQueue>>,
    /// Attachments that arrived before their subscription was registered (the broker sends a
    /// subscription's existing rings before the reply that names it).
    orphans: HashMap<SubscriptionId, Vec<Attachment>>,
    /// Subscriptions recently dropped: attachments still in flight for them are discarded (the
    /// broker frees their slots when it handles the unsubscribe).
    closed: VecDeque<SubscriptionId>,
    /// Subscribers to tell when the broker is lost and when a broker is back.
    listeners: Vec<Weak<AttachmentQueue>>,
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
    fn route(&mut self, sub: SubscriptionId, item: Attachment) {
        if let Some(queue) = self.subscriptions.get(&sub) {
            queue.push([item]);
            queue.wake();
        } else if !self.closed.contains(&sub) {
            self.orphans.entry(sub).or_default().push(item);
        }
    }

    /// Gives every listener the event `what` makes and wakes it; forgets listeners dropped.
    fn tell_listeners(&mut self, what: impl Fn() -> Attachment) {
        self.listeners.retain(|listener| match listener.upgrade() {
            Some(queue) => {
                queue.push([what()]);
                queue.wake();
                true
            }
            None => false,
        });
    }

    /// Forgets everything of the link that ended: its waiting callers get `Disconnected`, and
    /// its subscriptions' ids may name others' at the next broker. Wakes every subscriber, so
    /// parked ones see what they have.
    fn end_link(&mut self) {
        self.replies.clear();
        self.orphans.clear();
        self.closed.clear();
        for queue in std::mem::take(&mut self.subscriptions).into_values() {
            queue.wake();
        }
    }
}

/// One connection to one broker: its socket and what the handshake established. Handles keep
/// the link they registered on.
pub(crate) struct Link {
    sock: OwnedFd,
    /// Numbers the links of a connection from 1: a handle of an older link registers again.
    pub(crate) generation: u64,
    /// This client's token in the broker's slots.
    pub(crate) owner: Owner,
    /// The largest payload the broker's rings carry.
    pub(crate) max_payload: u32,
    /// The broker's doorbell table.
    pub(crate) doorbells: DoorbellTable,
}

/// A control connection to the broker at one address, linked again whenever a broker is back
/// there after the last one went.
pub(crate) struct Connection {
    link: RwLock<Arc<Link>>,
    /// The current link's generation, for handles that look on every message (publishers): a
    /// hint to take [`Connection::link`], which is the truth. On a line of its own, since it is
    /// written once per reconnection and read all the time.
    generation: Arc<CachePadded<AtomicU64>>,
    routing: Mutex<Routing>,
    next_id: AtomicU32,
    /// Whether a broker is linked. Its Release stores and AcqRel swaps (by whichever thread
    /// notices the loss first, and by the control thread when it links again) pair with the
    /// Acquire load in `is_alive`.
    alive: AtomicBool,
    /// Set by [`Connection::close`]; `closed` wakes a control thread waiting to reconnect.
    closing: Mutex<bool>,
    closed: Condvar,
    address: BusAddress,
    name: String,
    options: ConnectOptions,
}

impl Connection {
    /// Connects to the broker at `address` (a local socket), completes the handshake and starts
    /// the control thread, which ends once [`Connection::close`] was called.
    pub(crate) fn open(
        address: &BusAddress,
        name: &str,
        options: ConnectOptions,
    ) -> Result<(Arc<Connection>, std::thread::JoinHandle<()>), ConnectError> {
        let link = Arc::new(handshake(address, name, &options, 1)?);
        let conn = Arc::new(Connection {
            link: RwLock::new(Arc::clone(&link)),
            generation: Arc::new(CachePadded::new(AtomicU64::new(1))),
            routing: Mutex::new(Routing {
                generation: 1,
                ..Routing::default()
            }),
            next_id: AtomicU32::new(1),
            alive: AtomicBool::new(true),
            closing: Mutex::new(false),
            closed: Condvar::new(),
            address: address.clone(),
            name: name.to_string(),
            options,
        });
        let reader = Arc::clone(&conn);
        let control = std::thread::Builder::new()
            .name("shmbus-control".into())
            .spawn(move || reader.control_loop(link))
            .map_err(|e| ConnectError::Protocol {
                address: address.to_string(),
                detail: format!("start control thread: {e}"),
            })?;
        Ok((conn, control))
    }

    /// The address this connection reaches.
    pub(crate) fn address(&self) -> &BusAddress {
        &self.address
    }

    /// Whether a broker is linked now.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The current link (which may have lost its broker: see [`Connection::is_alive`]).
    pub(crate) fn link(&self) -> Arc<Link> {
        Arc::clone(&self.link.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The current link's generation, shared: a hint to look at [`Connection::link`].
    pub(crate) fn generation(&self) -> Arc<CachePadded<AtomicU64>> {
        Arc::clone(&self.generation)
    }

    /// Whether `link` is not the current link (its broker is gone).
    pub(crate) fn is_stale(&self, link: &Link) -> bool {
        // Relaxed: a hint; calls on a stale link fail cleanly anyway.
        self.generation.load(Ordering::Relaxed) != link.generation
    }

    fn next_id(&self) -> RequestId {
        RequestId::from_raw(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends a request on the current link and waits for its reply, which must be of the kind
    /// the request calls for.
    pub(crate) fn call<C: Call>(&self, request: C) -> Result<(C::Reply, Vec<OwnedFd>), CallError> {
        self.call_on(&self.link(), request)
    }

    /// Sends a request on `link` and waits for its reply. A link that is not the current one
    /// has lost its broker: [`ControlError::BrokerGone`].
    pub(crate) fn call_on<C: Call>(
        &self,
        link: &Link,
        request: C,
    ) -> Result<(C::Reply, Vec<OwnedFd>), CallError> {
        let gone = || CallError::Request(ControlError::BrokerGone);
        if !self.is_alive() {
            return Err(gone());
        }
        let id = self.next_id();
        let (tx, rx) = mpsc::channel();
        {
            let mut routing = lock(&self.routing);
            if routing.generation != link.generation {
                return Err(gone());
            }
            routing.replies.insert(id, tx);
        }
        let msg = ClientMessage::Request {
            id,
            body: request.into_request(),
        };
        if let Err(e) = seqpacket::send(link.sock.as_fd(), &msg, &[]) {
            lock(&self.routing).replies.remove(&id);
            debug!("request not sent: {e}");
            if e.kind() == std::io::ErrorKind::WouldBlock {
                // The broker has not read its socket for the send timeout.
                return Err(CallError::Request(ControlError::Timeout));
            }
            // The socket is broken: the broker is gone, whether or not the control thread has
            // noticed yet. Only the current link's loss makes the bus disconnected.
            if self.link().generation == link.generation {
                self.alive.store(false, Ordering::Release);
            }
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

    /// Sends a request whose reply nobody waits for on `link`; nothing if `link` is not the
    /// current one (its broker is gone, and released everything anyway).
    pub(crate) fn notify_on<C: Call>(&self, link: &Link, request: C) {
        if self.is_alive() && self.link().generation == link.generation {
            let msg = ClientMessage::Request {
                id: self.next_id(),
                body: request.into_request(),
            };
            // Best effort: if the broker is gone, it has released everything anyway.
            let _ = seqpacket::send(link.sock.as_fd(), &msg, &[]);
        }
    }

    /// Routes subscription `id`'s attachments to `queue`, starting with any that came first,
    /// if `link` is the current link (else the subscription is gone with its broker).
    pub(crate) fn register_subscription(
        &self,
        link: &Link,
        id: SubscriptionId,
        queue: Arc<AttachmentQueue>,
    ) {
        let mut routing = lock(&self.routing);
        if routing.generation != link.generation {
            return;
        }
        if let Some(early) = routing.orphans.remove(&id) {
            queue.push(early);
        }
        routing.subscriptions.insert(id, queue);
    }

    /// Forgets subscription `id` of `link`.
    pub(crate) fn unregister_subscription(&self, link: &Link, id: SubscriptionId) {
        let mut routing = lock(&self.routing);
        if routing.generation != link.generation {
            return;
        }
        routing.subscriptions.remove(&id);
        routing.orphans.remove(&id);
        routing.remember_closed(id);
    }

    /// Tells `queue`, from now on, when the broker is lost ([`Attachment::BrokerLost`]) and when
    /// a new link is up ([`Attachment::Relinked`]). Dropping the queue ends this.
    pub(crate) fn listen(&self, queue: &Arc<AttachmentQueue>) {
        lock(&self.routing).listeners.push(Arc::downgrade(queue));
    }

    /// Says goodbye and closes the socket; the control thread then exits.
    pub(crate) fn close(&self) {
        *lock(&self.closing) = true;
        self.closed.notify_all();
        let link = self.link();
        if self.alive.swap(false, Ordering::AcqRel) {
            let _ = seqpacket::send(link.sock.as_fd(), &ClientMessage::Goodbye, &[]);
        }
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&link.sock),
            nix::sys::socket::Shutdown::Both,
        );
    }

    fn is_closing(&self) -> bool {
        *lock(&self.closing)
    }

    /// The control thread: reads `link` until its broker goes, then links again as soon as a
    /// broker is back, until [`Connection::close`].
    fn control_loop(&self, mut link: Arc<Link>) {
        loop {
            let reason = self.receive(&link);
            self.alive.store(false, Ordering::Release);
            let mut routing = lock(&self.routing);
            routing.end_link();
            if self.is_closing() {
                break;
            }
            warn!(address = %self.address, "lost the broker ({reason}); reconnecting");
            routing.tell_listeners(|| Attachment::BrokerLost);
            drop(routing);
            let Some(next) = self.relink(link.generation + 1) else {
                break;
            };
            link = next;
        }
    }

    /// Receives and routes everything the broker sends on `link`, until it goes; returns why.
    fn receive(&self, link: &Link) -> String {
        loop {
            let (msg, fds) = match recv_one(&link.sock) {
                Ok(m) => m,
                Err(reason) => return reason.to_string(),
            };
            let mut routing = lock(&self.routing);
            match msg {
                BrokerMessage::Reply { id, result } => match routing.replies.remove(&id) {
                    Some(tx) => {
                        let _ = tx.send((result, fds));
                    }
                    None => self.undo_abandoned(link, &mut routing, result),
                },
                BrokerMessage::RingAttached(a) => {
                    let sub = a.subscription;
                    let item = map_attachment(a, fds, &link.doorbells);
                    routing.route(sub, item);
                }
                BrokerMessage::RingUnavailable {
                    subscription,
                    topic,
                    error,
                } => {
                    let reason = error.message;
                    let item = Attachment::Unavailable { topic, reason };
                    routing.route(subscription, item);
                }
                BrokerMessage::RingRetired { subscription, ring } => {
                    routing.route(subscription, Attachment::Retired { ring });
                }
                other @ (BrokerMessage::Welcome(_) | BrokerMessage::Refused(_)) => {
                    return format!("unexpected message from the broker: {other:?}");
                }
            }
        }
    }

    /// Tries, with backoff, to link to a broker at the address again, until one answers (then
    /// installs the link as number `generation` and tells the listeners) or the connection is
    /// closed (`None`).
    fn relink(&self, generation: u64) -> Option<Arc<Link>> {
        let mut backoff = Backoff::default();
        loop {
            if self.pause(backoff.next_wait()) {
                return None;
            }
            match handshake(&self.address, &self.name, &self.options, generation) {
                Ok(link) => {
                    let link = Arc::new(link);
                    let mut routing = lock(&self.routing);
                    if self.is_closing() {
                        return None;
                    }
                    *self.link.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&link);
                    routing.generation = generation;
                    // Relaxed: a hint only; whoever sees it takes the link under its lock.
                    self.generation.store(generation, Ordering::Relaxed);
                    self.alive.store(true, Ordering::Release);
                    info!(address = %self.address, attempts = backoff.attempts(), "reconnected to the broker");
                    routing.tell_listeners(|| Attachment::Relinked);
                    return Some(link);
                }
                Err(e) => debug!(address = %self.address, "reconnecting failed: {e}"),
            }
        }
    }

    /// Waits `how_long`, or less if the connection is closed meanwhile; returns whether it is.
    fn pause(&self, how_long: Duration) -> bool {
        let closing = lock(&self.closing);
        let (closing, _) = self
            .closed
            .wait_timeout_while(closing, how_long, |closing| !*closing)
            .unwrap_or_else(PoisonError::into_inner);
        *closing
    }

    /// Releases at the broker what a request whose caller stopped waiting created after all.
    fn undo_abandoned(
        &self,
        link: &Link,
        routing: &mut Routing,
        result: Result<Reply, ErrorReply>,
    ) {
        match result {
            Ok(Reply::Publishing(p)) => self.notify_on(
                link,
                Unpublish {
                    publisher: p.publisher,
                },
            ),
            Ok(Reply::StateOwned(s)) => self.notify_on(
                link,
                Unpublish {
                    publisher: s.publishing.publisher,
                },
            ),
            Ok(Reply::Subscribed(s)) => {
                routing.orphans.remove(&s.subscription);
                routing.remember_closed(s.subscription);
                self.notify_on(
                    link,
                    Unsubscribe {
                        subscription: s.subscription,
                    },
                );
            }
            Ok(Reply::Serving(Serving { subscription }))
            | Ok(Reply::InboxOpened(InboxOpened { subscription, .. })) => {
                routing.orphans.remove(&subscription);
                routing.remember_closed(subscription);
                self.notify_on(link, Unsubscribe { subscription });
            }
            Ok(Reply::DoorbellClaimed(d)) => {
                self.notify_on(link, ReleaseDoorbell { index: d.index })
            }
            Ok(
                Reply::Done | Reply::Holders(_) | Reply::SnapshotReady(_) | Reply::SessionJoined(_),
            )
            | Err(_) => {}
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

/// The waits between attempts to reach a lost broker (or gateway) again: from
/// [`RECONNECT_FIRST`], doubling up to [`RECONNECT_MAX`], each spread by up to half either way.
#[derive(Debug)]
pub(crate) struct Backoff {
    wait: Duration,
    attempts: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            wait: RECONNECT_FIRST,
            attempts: 0,
        }
    }
}

impl Backoff {
    /// How long to wait before the next attempt (each call counts one attempt).
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = spread(self.wait, self.attempts);
        self.attempts += 1;
        self.wait = (self.wait * 2).min(RECONNECT_MAX);
        wait
    }

    /// How many attempts were made.
    pub(crate) fn attempts(&self) -> u64 {
        self.attempts
    }
}

/// `wait` spread by up to half of it either way, differently for each process and attempt.
fn spread(wait: Duration, attempt: u64) -> Duration {
    use std::hash::BuildHasher;
    let seed = (u64::from(std::process::id()) << 32) ^ attempt;
    let noise = foldhash::fast::RandomState::default().hash_one(seed) % 1024;
    // From 0.5 to 1.5 times `wait`, in 1024 steps.
    wait / 2 + wait * u32::try_from(noise).unwrap_or(0) / 1024
}

/// Connects to the broker at `address` (a local socket) and completes the handshake, as link
/// number `generation`.
fn handshake(
    address: &BusAddress,
    name: &str,
    options: &ConnectOptions,
    generation: u64,
) -> Result<Link, ConnectError> {
    let path = address
        .socket_path()
        .ok_or_else(|| ConnectError::Protocol {
            address: address.to_string(),
            detail: "not the address of a local socket".into(),
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
        BrokerMessage::Refused(e) if e.code == ErrorCode::PermissionDenied => {
            return Err(ConnectError::PermissionDenied {
                address: address.to_string(),
                message: e.message,
            });
        }
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
    if let Some(name) = &options.session {
        join_session(&sock, address, name, options.timeout)?;
    }
    // From now on the control thread waits for the broker as long as it takes; a send still
    // gives up when the broker stops reading.
    seqpacket::set_timeouts(sock.as_fd(), None, Some(REPLY_TIMEOUT))
        .map_err(|e| protocol(format!("set socket timeouts: {e}")))?;
    Ok(Link {
        sock,
        generation,
        owner,
        max_payload: welcome.max_payload,
        doorbells,
    })
}

/// Joins session `name` on a connection just greeted (before the control thread reads it).
fn join_session(
    sock: &OwnedFd,
    address: &BusAddress,
    name: &str,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let failed = |detail: String| ConnectError::Protocol {
        address: address.to_string(),
        detail,
    };
    // Id 0 is never one of the control thread's (they start at 1).
    let id = RequestId::from_raw(0);
    let join = ClientMessage::Request {
        id,
        body: Request::JoinSession(JoinSession {
            name: name.to_string(),
        }),
    };
    seqpacket::send(sock.as_fd(), &join, &[]).map_err(|e| failed(format!("join session: {e}")))?;
    let result = match recv_one(sock) {
        Ok((BrokerMessage::Reply { id: got, result }, _)) if got == id => result,
        Ok((other, _)) => {
            return Err(failed(format!(
                "expected the session's reply, got {other:?}"
            )));
        }
        Err(Failure::Timeout) => {
            return Err(failed(format!(
                "the broker did not answer the session request within {timeout:?}"
            )));
        }
        Err(Failure::Other(why)) => return Err(failed(why)),
    };
    match result {
        Ok(Reply::SessionJoined(joined)) => {
            debug!(session = name, kept = joined.kept, "session joined");
            Ok(())
        }
        Ok(other) => Err(failed(format!("expected SessionJoined, got {other:?}"))),
        Err(e) if e.code == ErrorCode::PermissionDenied => Err(ConnectError::PermissionDenied {
            address: address.to_string(),
            message: e.message,
        }),
        Err(e) => Err(ConnectError::Refused {
            address: address.to_string(),
            message: e.message,
        }),
    }
}
