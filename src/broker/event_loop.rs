//! The broker's event loop: one thread, mio (epoll) over the listening socket and every client
//! connection. It moves bytes and nothing else: each message is decoded and handed to the
//! [`Core`], and what the core returns is encoded and sent; replies that do not fit in a
//! client's socket buffer wait in its outbox. Every [`TICK`] the loop retries deferred repairs and
//! looks for stalled readers; every few seconds it releases rings nobody uses.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::core::{Core, DisconnectReason, Outgoing};
use crate::protocol::seqpacket::{self, Received};
use crate::protocol::{ClientId, ClientMessage, MAX_MESSAGE_LEN, codec};

/// How often the loop retries repairs and checks for stalled readers.
const TICK: Duration = Duration::from_millis(100);

/// How often the loop looks for idle rings to release.
const COLLECTION_INTERVAL: Duration = Duration::from_secs(5);

/// Most messages waiting for one client before it is dropped as not reading its socket.
const MAX_OUTBOX: usize = 4096;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX - 2);

/// A client's connection.
struct Conn {
    fd: OwnedFd,
    outbox: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
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
}

impl EventLoop {
    pub(super) fn new(
        listener: OwnedFd,
        poll: Poll,
        core: Core,
        ring_idle: Duration,
        stop: Arc<AtomicBool>,
    ) -> EventLoop {
        EventLoop {
            listener,
            poll,
            core,
            ring_idle,
            stop,
            conns: HashMap::new(),
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
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(raw) => {
                        let id = ClientId::from_raw(raw as u32);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_all(id);
                        }
                        if event.is_writable() {
                            self.flush(id);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                if self.core.repairs_pending() {
                    self.core.repair();
                }
                self.core.evict_stalled(now);
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
                    let creds = match seqpacket::peer_credentials(fd.as_fd()) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("dropping a connection without peer credentials: {e}");
                            continue;
                        }
                    };
                    let id = self.core.connect(creds);
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        token(id),
                        Interest::READABLE,
                    ) {
                        self.core.disconnect(id, &DisconnectReason::Io(e));
                        continue;
                    }
                    let conn = Conn {
                        fd,
                        outbox: VecDeque::new(),
                        writable: false,
                    };
                    self.conns.insert(id, conn);
                }
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog until descriptors free up.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_all(&mut self, id: ClientId) {
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        loop {
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.drop_client(id, DisconnectReason::Closed);
                }
                Err(e) => return self.drop_client(id, DisconnectReason::Io(e)),
            }
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
        if conn.outbox.len() >= MAX_OUTBOX {
            return self.drop_client(out.client, DisconnectReason::NotReading);
        }
        conn.outbox.push_back((bytes, out.fds));
        self.flush(out.client);
    }

    /// Sends queued messages until the socket is full; asks for writability if it is.
    fn flush(&mut self, id: ClientId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some((bytes, fds)) = conn.outbox.front() {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            match seqpacket::send_bytes(conn.fd.as_fd(), bytes, &borrowed) {
                Ok(()) => {
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

    fn drop_client(&mut self, id: ClientId, reason: DisconnectReason) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        }
        self.core.disconnect(id, &reason);
    }
}
