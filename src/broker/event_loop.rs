//! The broker's event loop: one thread, mio (epoll) over the listening socket and every client
//! connection. It moves bytes and nothing else: each message is decoded and handed to the
//! [`Core`], and what the core returns is encoded and sent; replies that do not fit in a
//! client's socket buffer wait in its outbox, within the client's quota of bytes and descriptors.
//! Every [`TICK`] the loop runs the core's recovery work and drops connections that did not say
//! Hello in time; every few seconds it releases rings nobody uses.
//!
//! No client can hold the loop: each gets at most [`BATCH`] messages per turn (the rest wait for
//! the next turn, after everyone else's), and the listener is retried every tick after the
//! process ran out of descriptors.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::core::{Core, Descriptors, DisconnectReason, Outgoing};
use crate::protocol::seqpacket::{self, Received};
use crate::protocol::{ClientId, ClientMessage, MAX_MESSAGE_LEN, codec};

/// How often the loop retries repairs and checks for stalled readers.
const TICK: Duration = Duration::from_millis(100);

/// How often the loop looks for idle rings to release.
const COLLECTION_INTERVAL: Duration = Duration::from_secs(5);

/// Most messages handled from one client per turn of the loop.
const BATCH: usize = 32;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX - 2);

/// A client's connection.
struct Conn {
    fd: OwnedFd,
    outbox: VecDeque<(Vec<u8>, Descriptors)>,
    /// Bytes and descriptors in the outbox.
    outbox_bytes: usize,
    outbox_fds: usize,
    /// Whether the socket is registered for writability (the outbox is not empty).
    writable: bool,
}

fn token(id: ClientId) -> Token {
    Token(id.get() as usize)
}

/// The loop's state: the listener, the connections, and the core that decides.
pub(super) struct EventLoop {
    pub(super) listener: OwnedFd,
    pub(super) poll: Poll,
    pub(super) core: Core,
    pub(super) ring_idle: Duration,
    pub(super) stop: Arc<AtomicBool>,
    conns: HashMap<ClientId, Conn>,
    /// Connections that have not said Hello yet, oldest first, with when they were accepted.
    unwelcomed: VecDeque<(ClientId, Instant)>,
    /// Clients with messages left over from their last turn.
    backlog: VecDeque<ClientId>,
    backlogged: HashSet<ClientId>,
    /// Whether accepting stopped for lack of descriptors (retried every tick).
    accept_stalled: bool,
    /// Clients whose outbox waits for descriptors to become available (retried every tick).
    retry_flush: HashSet<ClientId>,
    /// The state keeper's answers (it wakes the loop after each).
    answered: Receiver<Outgoing>,
}

impl EventLoop {
    pub(super) fn new(
        listener: OwnedFd,
        poll: Poll,
        core: Core,
        ring_idle: Duration,
        stop: Arc<AtomicBool>,
        answered: Receiver<Outgoing>,
    ) -> EventLoop {
        EventLoop {
            listener,
            poll,
            core,
            ring_idle,
            stop,
            conns: HashMap::new(),
            unwelcomed: VecDeque::new(),
            backlog: VecDeque::new(),
            backlogged: HashSet::new(),
            accept_stalled: false,
            retry_flush: HashSet::new(),
            answered,
        }
    }

    /// Serves clients until the stop flag is set.
    pub(super) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let collection_interval = self.ring_idle.clamp(TICK, COLLECTION_INTERVAL);
        let mut next_collection = Instant::now() + collection_interval;
        // Acquire pairs with the Release store in `BrokerHandle::stop`.
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if self.backlog.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {
                        while let Ok(out) = self.answered.try_recv() {
                            self.send(out);
                        }
                    }
                    Token(raw) => {
                        let id = ClientId::from_raw(raw as u32);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_some(id);
                        }
                        if event.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
            // One more turn for each client that had more to say than its batch.
            for _ in 0..self.backlog.len() {
                if let Some(id) = self.backlog.pop_front() {
                    self.backlogged.remove(&id);
                    self.read_some(id);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                for out in self.core.tick(now) {
                    self.send(out);
                }
                self.expire_unwelcomed(now);
                for id in std::mem::take(&mut self.retry_flush) {
                    self.flush(id);
                }
                if self.accept_stalled {
                    self.accept_all();
                }
                if now >= next_collection {
                    self.core.collect_idle_rings(now, self.ring_idle);
                    next_collection = now + collection_interval;
                }
                next_tick = now + TICK;
            }
        }
        tracing::debug!(clients = self.core.client_count(), "broker stopping");
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match seqpacket::accept(self.listener.as_fd()) {
                Ok(Some(fd)) => {
                    if self.accept_stalled {
                        self.accept_stalled = false;
                        tracing::info!("accepting connections again");
                    }
                    self.admit(fd);
                }
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the rest stay in the backlog, retried every tick
                    // (the listener is edge-triggered: no new event would come for them).
                    if !self.accept_stalled {
                        tracing::warn!("accept failed, retrying every tick: {e}");
                        self.accept_stalled = true;
                    }
                    return;
                }
            }
        }
    }

    /// Registers an accepted connection, within the pending-connection quota (the client limit
    /// is applied at the handshake, so that a refused client reads why).
    fn admit(&mut self, fd: OwnedFd) {
        let quotas = &self.core.limits().quotas;
        let creds = match seqpacket::peer_credentials(fd.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("dropping a connection without peer credentials: {e}");
                return;
            }
        };
        if self.unwelcomed.len() >= quotas.unwelcomed {
            // Connections that never say Hello cannot keep newcomers out: the oldest goes.
            if let Some((oldest, _)) = self.unwelcomed.pop_front() {
                let why = "did not say Hello before the pending-connection limit".to_string();
                self.drop_client(oldest, DisconnectReason::Protocol(why));
            }
        }
        let groups = crate::broker::access::supplementary_groups(creds.pid);
        let id = self.core.connect(creds, groups);
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            token(id),
            Interest::READABLE,
        ) {
            for out in self.core.disconnect(id, &DisconnectReason::Io(e)) {
                self.send(out);
            }
            return;
        }
        let conn = Conn {
            fd,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            outbox_fds: 0,
            writable: false,
        };
        self.conns.insert(id, conn);
        self.unwelcomed.push_back((id, Instant::now()));
    }

    /// Drops connections that did not complete the handshake within the Hello timeout, and
    /// forgets those that did.
    fn expire_unwelcomed(&mut self, now: Instant) {
        let timeout = self.core.limits().quotas.hello_timeout;
        while let Some(&(id, since)) = self.unwelcomed.front() {
            if !self.conns.contains_key(&id) || self.core.greeted(id) {
                self.unwelcomed.pop_front();
            } else if now.duration_since(since) >= timeout {
                self.unwelcomed.pop_front();
                let why = format!("did not say Hello within {timeout:?}");
                self.drop_client(id, DisconnectReason::Protocol(why));
            } else {
                break;
            }
        }
    }

    /// Handles up to [`BATCH`] messages from client `id`; if it may have more, queues it for
    /// another turn.
    fn read_some(&mut self, id: ClientId) {
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        for _ in 0..BATCH {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            let mut fds = Vec::new();
            let received = seqpacket::recv(conn.fd.as_fd(), &mut buf, &mut fds);
            if !fds.is_empty() {
                // Clients never send descriptors; these are closed as `fds` drops.
                return self.drop_client(id, DisconnectReason::SentDescriptors);
            }
            match received {
                Ok(Received::Message(n)) => {
                    if !self.handle_bytes(id, &buf[..n]) {
                        return;
                    }
                }
                Ok(Received::Closed) => return self.drop_client(id, DisconnectReason::Closed),
                Ok(Received::Oversized) => {
                    return self.drop_client(id, DisconnectReason::Oversized);
                }
                Ok(Received::DescriptorsLost(_)) => {
                    return self.drop_client(id, DisconnectReason::SentDescriptors);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.drop_client(id, DisconnectReason::Closed);
                }
                Err(e) => return self.drop_client(id, DisconnectReason::Io(e)),
            }
        }
        if self.conns.contains_key(&id) && self.backlogged.insert(id) {
            self.backlog.push_back(id);
        }
    }

    /// Decodes and handles one message; returns false if the client was dropped.
    fn handle_bytes(&mut self, id: ClientId, bytes: &[u8]) -> bool {
        let msg = match codec::decode_client(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.drop_client(id, DisconnectReason::Protocol(e.to_string()));
                return false;
            }
        };
        let greeted = self.core.greeted(id);
        match (greeted, msg) {
            (false, ClientMessage::Hello(hello)) => {
                let (welcome, keep) = self.core.hello(id, hello);
                self.unwelcomed.retain(|&(pending, _)| pending != id);
                self.send(welcome);
                if !keep {
                    self.flush(id);
                    self.drop_client(id, DisconnectReason::Refused);
                    return false;
                }
            }
            (false, _) => {
                let why = "first message was not Hello".to_string();
                self.drop_client(id, DisconnectReason::Protocol(why));
                return false;
            }
            (true, ClientMessage::Hello(_)) => {
                let why = "second Hello".to_string();
                self.drop_client(id, DisconnectReason::Protocol(why));
                return false;
            }
            (true, ClientMessage::Request { id: request, body }) => {
                for out in self.core.request(id, request, body) {
                    self.send(out);
                }
            }
            (true, ClientMessage::Goodbye) => {
                self.drop_client(id, DisconnectReason::Goodbye);
                return false;
            }
        }
        self.conns.contains_key(&id)
    }

    /// Queues a message and tries to send it at once.
    fn send(&mut self, out: Outgoing) {
        let Some(conn) = self.conns.get_mut(&out.client) else {
            return;
        };
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let bytes = match codec::encode(&out.msg, &mut buf) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                tracing::warn!(client = %out.client, "cannot encode a message: {e}");
                return;
            }
        };
        let quotas = &self.core.limits().quotas;
        if conn.outbox_bytes + bytes.len() > quotas.outbox_bytes
            || conn.outbox_fds + out.fds.count() > quotas.outbox_fds
        {
            return self.drop_client(out.client, DisconnectReason::NotReading);
        }
        conn.outbox_bytes += bytes.len();
        conn.outbox_fds += out.fds.count();
        conn.outbox.push_back((bytes, out.fds));
        self.flush(out.client);
    }

    /// Sends queued messages until the socket is full; asks for writability if it is.
    fn flush(&mut self, id: ClientId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some((bytes, fds)) = conn.outbox.front() {
            let sent = match fds.with(|fds| seqpacket::send_bytes(conn.fd.as_fd(), bytes, fds)) {
                Ok(sent) => sent,
                Err(e) => {
                    // Out of descriptors for a moment: the message waits for the next tick.
                    tracing::warn!(client = %id, "cannot make the descriptors of a message: {e}");
                    self.retry_flush.insert(id);
                    break;
                }
            };
            match sent {
                Ok(()) => {
                    conn.outbox_bytes -= bytes.len();
                    conn.outbox_fds -= fds.count();
                    conn.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client went away with replies still owed: an ordinary departure.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return self.drop_client(id, DisconnectReason::Closed);
                }
                Err(e) => return self.drop_client(id, DisconnectReason::Io(e)),
            }
        }
        let want_write = !conn.outbox.is_empty();
        if want_write != conn.writable {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let raw = conn.fd.as_raw_fd();
            if self
                .poll
                .registry()
                .reregister(&mut SourceFd(&raw), token(id), interest)
                .is_ok()
            {
                conn.writable = want_write;
            }
        }
    }

    /// Shuts every client's connection down: for after [`run`](EventLoop::run), so that a
    /// client still waiting for an answer (the gateway's threads, as they end) hears at once
    /// that the broker is gone rather than after its call's timeout.
    pub(super) fn hang_up(&mut self) {
        for conn in self.conns.values() {
            let _ =
                nix::sys::socket::shutdown(conn.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    fn drop_client(&mut self, id: ClientId, reason: DisconnectReason) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        }
        for out in self.core.disconnect(id, &reason) {
            self.send(out);
        }
    }
}
