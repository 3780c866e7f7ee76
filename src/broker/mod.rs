//! The broker: owns the bus's rings and doorbell table, serves clients over the control socket,
//! and cleans up after clients that die or stall.
//!
//! One thread runs an event loop (mio/epoll) over the listening socket and every client
//! connection. Messages are handled to completion as they arrive (the `state` module decides, this one
//! moves bytes); replies that do not fit in a client's socket buffer wait in its outbox. Every
//! 100 ms the loop retries deferred repairs and looks for stalled readers; every few seconds it
//! releases rings nobody uses.

mod state;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::fcntl::{Flock, FlockArg};
use shmbus_shm::{DoorbellTable, RingConfig};
use tracing::{debug, warn};

use crate::address::ensure_private_dir;
use crate::protocol::socket::{self, Received};
use crate::protocol::{ClientMessage, MAX_MESSAGE_LEN, codec};
pub use state::Limits;
use state::{Outgoing, State};

/// How often the loop retries repairs and checks for stalled readers.
const TICK: Duration = Duration::from_millis(100);

/// How often the loop looks for idle rings to release.
const COLLECTION_INTERVAL: Duration = Duration::from_secs(5);

/// Most messages waiting for one client before it is dropped as not reading its socket.
const MAX_OUTBOX: usize = 4096;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// How to run a broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The control socket's path.
    pub socket: PathBuf,
    /// Ring sizes and the eviction timeout.
    pub limits: Limits,
    /// Doorbells in the bus's table: one per subscriber object.
    pub doorbells: u32,
    /// A ring nobody publishes on or reads from for this long is released.
    pub ring_idle: Duration,
}

impl BrokerConfig {
    /// Defaults for a broker at `socket`: 1 MiB rings with 64 KiB payloads, 5 s eviction, idle
    /// rings released after 60 s.
    pub fn new(socket: impl Into<PathBuf>) -> BrokerConfig {
        BrokerConfig {
            socket: socket.into(),
            limits: Limits {
                ring: RingConfig::default(),
                evict_after: Duration::from_secs(5),
            },
            doorbells: 16_384,
            ring_idle: Duration::from_secs(60),
        }
    }
}

/// Why a broker could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Another broker is serving this socket.
    #[error("a broker is already running on {0}")]
    AlreadyRunning(PathBuf),
    /// A file that is not a socket is in the way.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// Setting up the socket or its directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The ring configuration is impossible.
    #[error("ring configuration: {0}")]
    Config(#[from] shmbus_shm::LayoutError),
    /// The shared-memory doorbell table could not be created.
    #[error("create doorbell table: {0}")]
    Doorbells(#[from] shmbus_shm::CreateError),
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> BrokerError + 'p {
    move |source| BrokerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Stops a running broker from another thread (or a signal-handling thread).
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl BrokerHandle {
    /// Asks the broker to stop; [`Broker::run`] returns soon after.
    pub fn stop(&self) {
        // Release pairs with the Acquire load at the top of `Broker::run`'s loop.
        self.stop.store(true, Ordering::Release);
        // A failed wake only delays the stop to the next tick.
        let _ = self.waker.wake();
    }
}

struct Conn {
    fd: OwnedFd,
    outbox: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    writable: bool,
}

/// A broker bound to its socket, ready to [`run`](Broker::run).
pub struct Broker {
    socket: PathBuf,
    listener: OwnedFd,
    /// Held while the broker lives; released when the descriptor closes.
    _lock: Flock<std::fs::File>,
    poll: Poll,
    handle: BrokerHandle,
    state: State,
    conns: HashMap<u32, Conn>,
    ring_idle: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Broker {
    /// Binds the control socket: creates its private directory, refuses to start if a live
    /// broker owns the socket, and replaces a stale socket file left by a dead one.
    pub fn bind(config: BrokerConfig) -> Result<Broker, BrokerError> {
        config.limits.ring.validate()?;
        let path = config.socket.clone();
        ensure_private_dir(&path).map_err(io_err("prepare directory of", &path))?;
        // The lock file serialises brokers for this socket: whoever holds it owns the socket,
        // and a socket file found while holding it is stale.
        let lock_path = path.with_extension("lock");
        let lock_file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::Error::EWOULDBLOCK)) => return Err(BrokerError::AlreadyRunning(path)),
            Err((_, e)) => return Err(io_err("lock", &lock_path)(e.into())),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(BrokerError::NotASocket(path));
                }
                if socket::connect(&path).is_ok() {
                    return Err(BrokerError::AlreadyRunning(path));
                }
                warn!(socket = %path.display(), "replacing a stale socket left by a broker that died");
                std::fs::remove_file(&path).map_err(io_err("remove stale socket", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
        let listener = socket::listen(&path).map_err(io_err("listen on", &path))?;
        raise_descriptor_limit();
        let doorbells = DoorbellTable::create(config.doorbells)?;
        let poll = Poll::new().map_err(io_err("create event loop for", &path))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(io_err("register", &path))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(io_err("create waker for", &path))?,
        );
        let handle = BrokerHandle {
            stop: Arc::new(AtomicBool::new(false)),
            waker,
        };
        Ok(Broker {
            socket: path,
            listener,
            _lock: lock,
            poll,
            handle,
            state: State::new(config.limits, doorbells),
            conns: HashMap::new(),
            ring_idle: config.ring_idle,
        })
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A handle that stops the broker.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Serves clients until [`BrokerHandle::stop`]. Removes the socket file when it returns.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        let collection_interval = self.ring_idle.clamp(TICK, COLLECTION_INTERVAL);
        let mut next_collection = Instant::now() + collection_interval;
        while !self.handle.stop.load(Ordering::Acquire) {
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
                    Token(id) => {
                        let id = id as u32;
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
                if self.state.repairs_pending() {
                    self.state.repair();
                }
                self.state.evict_stalled(now);
                if now >= next_collection {
                    self.state.collect_idle_rings(now, self.ring_idle);
                    next_collection = now + collection_interval;
                }
                next_tick = now + TICK;
            }
        }
        debug!(clients = self.state.client_count(), "broker stopping");
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match socket::accept(self.listener.as_fd()) {
                Ok(Some(fd)) => {
                    let creds = match socket::peer_credentials(fd.as_fd()) {
                        Ok(c) => c,
                        Err(e) => {
                            warn!("dropping a connection without peer credentials: {e}");
                            continue;
                        }
                    };
                    let id = self.state.connect(creds);
                    let token = Token(id as usize);
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        token,
                        Interest::READABLE,
                    ) {
                        warn!("cannot watch a new connection: {e}");
                        self.state.disconnect(id, "could not be registered");
                        continue;
                    }
                    self.conns.insert(
                        id,
                        Conn {
                            fd,
                            outbox: VecDeque::new(),
                            writable: false,
                        },
                    );
                }
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog until descriptors free up.
                    warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_all(&mut self, id: u32) {
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        loop {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            let mut fds = Vec::new();
            let received = socket::recv(conn.fd.as_fd(), &mut buf, &mut fds);
            if !fds.is_empty() {
                // Clients never send descriptors; these are closed as `fds` drops.
                self.drop_client(id, "sent file descriptors, which clients never do");
                return;
            }
            match received {
                Ok(Received::Message(n)) => {
                    if !self.handle_bytes(id, &buf[..n]) {
                        return;
                    }
                }
                Ok(Received::Closed) => return self.drop_client(id, "connection closed"),
                Ok(Received::Oversized) => {
                    return self.drop_client(id, "sent an oversized message");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.drop_client(id, &format!("receive failed: {e}")),
            }
        }
    }

    /// Decodes and handles one message; returns false if the client was dropped.
    fn handle_bytes(&mut self, id: u32, bytes: &[u8]) -> bool {
        let msg = match codec::decode_client(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.drop_client(id, &format!("protocol violation: {e}"));
                return false;
            }
        };
        let greeted = self.state.greeted(id);
        match (greeted, msg) {
            (false, ClientMessage::Hello { version, name }) => {
                let (welcome, keep) = self.state.hello(id, version, name);
                self.send(welcome);
                if !keep {
                    self.flush(id);
                    self.drop_client(id, "refused at handshake");
                    return false;
                }
            }
            (false, _) => {
                self.drop_client(id, "protocol violation: first message was not Hello");
                return false;
            }
            (true, ClientMessage::Hello { .. }) => {
                self.drop_client(id, "protocol violation: second Hello");
                return false;
            }
            (true, ClientMessage::Request { id: request, body }) => {
                for out in self.state.request(id, request, body) {
                    self.send(out);
                }
            }
            (true, ClientMessage::Goodbye) => {
                self.drop_client(id, "said goodbye");
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
                warn!(client = out.client, "cannot encode a reply: {e}");
                return;
            }
        };
        if conn.outbox.len() >= MAX_OUTBOX {
            self.drop_client(out.client, "not reading its socket (outbox full)");
            return;
        }
        conn.outbox.push_back((bytes, out.fds));
        self.flush(out.client);
    }

    /// Sends queued messages until the socket is full; asks for writability if it is.
    fn flush(&mut self, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some((bytes, fds)) = conn.outbox.front() {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            match socket::send_bytes(conn.fd.as_fd(), bytes, &borrowed) {
                Ok(()) => {
                    conn.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("send failed: {e}");
                    return self.drop_client(id, &reason);
                }
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
                .reregister(&mut SourceFd(&raw), Token(id as usize), interest)
                .is_ok()
            {
                conn.writable = want_write;
            }
        }
    }

    fn drop_client(&mut self, id: u32, reason: &str) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        }
        if reason.starts_with("protocol")
            || reason.contains("oversized")
            || reason.contains("descriptors")
        {
            warn!(client = id, "closing connection: {reason}");
        }
        self.state.disconnect(id, reason);
    }
}

/// Raises the soft limit on open descriptors to the hard limit: every client is a socket, and
/// every ring two memfds.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
