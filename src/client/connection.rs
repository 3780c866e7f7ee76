//! The client's side of the control socket: the handshake, requests and their replies, and a
//! thread that reads everything the broker sends.
//!
//! The socket is blocking. Any thread sends (a `SOCK_SEQPACKET` datagram goes out whole, so
//! senders need no lock); one control thread receives, hands each reply to the thread waiting
//! for it, and queues ring attachments for their subscriptions, ringing the subscriber's
//! doorbell so a parked subscriber wakes up to adopt the new ring.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shmbus_shm::{DoorbellTable, Owner};
use tracing::{debug, warn};

use crate::address::BusAddress;
use crate::protocol::socket::{self, Received};
use crate::protocol::{
    BrokerMessage, ClientMessage, ErrorReply, MAX_MESSAGE_LEN, PROTOCOL_VERSION, Reply, Request,
    RingAttachment, codec,
};

use super::error::{ConnectError, RequestError};

/// How long a request waits for its reply before the broker is deemed unresponsive.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply with the descriptors it carried.
pub(crate) type ReplyWithFds = (Result<Reply, ErrorReply>, Vec<OwnedFd>);

/// What the broker sent a subscription about one matching ring.
pub(crate) enum Attachment {
    /// A reader slot on the ring, with the ring's descriptors (data read-only, readers).
    Ring(RingAttachment, Vec<OwnedFd>),
    /// The ring the broker could not attach a reader to: the subscription misses `topic`.
    Unavailable {
        /// The ring's topic.
        topic: String,
        /// Why, from the broker.
        reason: String,
    },
}

/// Attachments waiting for their subscriber to adopt them, and how to wake it.
pub(crate) struct AttachmentQueue {
    pending: Mutex<Vec<Attachment>>,
    /// Whether `pending` may be non-empty: lets the subscriber's poll skip the lock.
    nonempty: AtomicBool,
    doorbell: u32,
}

impl AttachmentQueue {
    /// An empty queue whose subscriber parks on `doorbell`.
    pub(crate) fn new(doorbell: u32) -> AttachmentQueue {
        AttachmentQueue {
            pending: Mutex::new(Vec::new()),
            nonempty: AtomicBool::new(false),
            doorbell,
        }
    }

    /// Queues attachments; the caller then rings the doorbell.
    fn push(&self, items: impl IntoIterator<Item = Attachment>) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(items);
        // Release pairs with the Acquire load in `has_pending`: the items are visible with it.
        self.nonempty.store(true, Ordering::Release);
    }

    /// Whether attachments wait (cheap: no lock).
    pub(crate) fn has_pending(&self) -> bool {
        self.nonempty.load(Ordering::Acquire)
    }

    /// Takes every waiting attachment.
    pub(crate) fn take(&self) -> Vec<Attachment> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared under the lock, so a concurrent push (which sets it after extending, also under
        // the lock) is never lost.
        self.nonempty.store(false, Ordering::Relaxed);
        std::mem::take(&mut *pending)
    }
}

#[derive(Default)]
struct Routing {
    replies: HashMap<u32, mpsc::Sender<ReplyWithFds>>,
    subscriptions: HashMap<u32, Arc<AttachmentQueue>>,
    /// Attachments that arrived before their subscription was registered (the broker sends a
    /// subscription's existing rings before the reply that names it).
    orphans: HashMap<u32, Vec<Attachment>>,
    /// Subscriptions recently dropped: attachments still in flight for them are discarded (the
    /// broker frees their slots when it handles the unsubscribe).
    closed: VecDeque<u32>,
}

impl Routing {
    /// Hands `item` to subscription `sub` and wakes its subscriber; keeps it for a subscription
    /// not registered yet, drops it for one recently closed.
    fn route(&mut self, sub: u32, item: Attachment, doorbells: &DoorbellTable) {
        if let Some(queue) = self.subscriptions.get(&sub) {
            queue.push([item]);
            doorbells.ring(queue.doorbell);
        } else if !self.closed.contains(&sub) {
            self.orphans.entry(sub).or_default().push(item);
        }
    }
}

/// How many dropped subscriptions [`Routing::closed`] remembers.
const CLOSED_MEMORY: usize = 256;

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
    ) -> Result<(Arc<Connection>, Session), ConnectError> {
        let path = address
            .socket_path()
            .ok_or_else(|| ConnectError::RemoteUnsupported {
                address: address.to_string(),
            })?;
        let sock = socket::connect(path).map_err(|source| ConnectError::Unreachable {
            address: address.to_string(),
            source,
        })?;
        let protocol = |detail: String| ConnectError::Protocol {
            address: address.to_string(),
            detail,
        };
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            name: truncate_at_char(name, 64).to_string(),
        };
        socket::send(sock.as_fd(), &hello, &[])
            .map_err(|e| protocol(format!("send hello: {e}")))?;
        let (msg, mut fds) = recv_one(&sock).map_err(protocol)?;
        let (owner, max_payload, doorbells) = match msg {
            BrokerMessage::Welcome {
                owner, max_payload, ..
            } => {
                let owner = Owner::new(owner).ok_or_else(|| protocol("owner token 0".into()))?;
                let fd = fds
                    .pop()
                    .ok_or_else(|| protocol("welcome without the doorbell table".into()))?;
                let doorbells = DoorbellTable::open(fd).map_err(ConnectError::Shm)?;
                (owner, max_payload, doorbells)
            }
            BrokerMessage::Refused(e) => {
                return Err(ConnectError::Refused {
                    address: address.to_string(),
                    message: e.message,
                });
            }
            other => return Err(protocol(format!("expected Welcome, got {other:?}"))),
        };
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
            max_payload,
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

    /// Sends a request and waits for its reply.
    pub(crate) fn request(&self, body: Request) -> Result<ReplyWithFds, RequestError> {
        if !self.is_alive() {
            return Err(RequestError::BrokerGone);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.routing).replies.insert(id, tx);
        if let Err(e) = socket::send(self.sock.as_fd(), &ClientMessage::Request { id, body }, &[]) {
            lock(&self.routing).replies.remove(&id);
            debug!("request not sent: {e}");
            // The socket is broken: the broker is gone, whether or not the control thread has
            // noticed yet.
            self.alive.store(false, Ordering::Release);
            return Err(RequestError::BrokerGone);
        }
        match rx.recv_timeout(REPLY_TIMEOUT) {
            Ok(reply) => Ok(reply),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(RequestError::BrokerGone),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.routing).replies.remove(&id);
                Err(RequestError::Timeout)
            }
        }
    }

    /// Sends a request whose reply nobody waits for (releasing something on drop).
    pub(crate) fn notify(&self, body: Request) {
        if self.is_alive() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            // Best effort: if the broker is gone, it has released everything anyway.
            let _ = socket::send(self.sock.as_fd(), &ClientMessage::Request { id, body }, &[]);
        }
    }

    /// Routes subscription `id`'s attachments to `queue`, starting with any that came first.
    pub(crate) fn register_subscription(&self, id: u32, queue: Arc<AttachmentQueue>) {
        let mut routing = lock(&self.routing);
        if let Some(early) = routing.orphans.remove(&id) {
            queue.push(early);
        }
        routing.subscriptions.insert(id, queue);
    }

    /// Forgets subscription `id`.
    pub(crate) fn unregister_subscription(&self, id: u32) {
        let mut routing = lock(&self.routing);
        routing.subscriptions.remove(&id);
        routing.orphans.remove(&id);
        if routing.closed.len() == CLOSED_MEMORY {
            routing.closed.pop_front();
        }
        routing.closed.push_back(id);
    }

    /// Says goodbye and closes the socket; the control thread then exits.
    pub(crate) fn close(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let _ = socket::send(self.sock.as_fd(), &ClientMessage::Goodbye, &[]);
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
                BrokerMessage::Reply { id, result } => {
                    if let Some(tx) = routing.replies.remove(&id) {
                        let _ = tx.send((result, fds));
                    }
                }
                BrokerMessage::RingAttached(a) => {
                    let sub = a.subscription;
                    routing.route(sub, Attachment::Ring(a, fds), doorbells);
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
                other => {
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
            doorbells.ring(queue.doorbell);
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Receives and decodes one broker message.
fn recv_one(sock: &OwnedFd) -> Result<(BrokerMessage, Vec<OwnedFd>), String> {
    let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
    loop {
        let mut fds = Vec::new();
        return match socket::recv(sock.as_fd(), &mut buf, &mut fds) {
            Ok(Received::Message(n)) => match codec::decode_broker(&buf[..n]) {
                Ok(msg) => Ok((msg, fds)),
                Err(e) => Err(format!("malformed message: {e}")),
            },
            Ok(Received::Closed) => Err("connection closed".into()),
            Ok(Received::Oversized) => Err("oversized message".into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("receive failed: {e}")),
        };
    }
}
