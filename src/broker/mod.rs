//! The broker: owns the bus's rings and doorbell table, serves clients over the control socket,
//! and cleans up after clients that die or stall. Embed one with [`Broker::builder`]:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let broker = shmbus::Broker::builder()
//!     .socket("/run/my-app/bus.sock")
//!     .evict_after(Duration::from_secs(2))
//!     .bind()?;
//! let handle = broker.handle(); // stops it from another thread
//! broker.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Inside, the `core` module decides (registration, rings, subscriptions, recovery; no I/O) and
//! the `event_loop` moves bytes between it and the sockets.

pub mod access;
mod core;
mod event_loop;
mod gateway;
mod keeper;

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Waker};
use nix::fcntl::{Flock, FlockArg};
use shmbus_shm::{DoorbellTable, RingConfig};
use tracing::warn;

use self::access::AccessList;
use self::core::{AccessSlot, Core, Limits, Quotas};
use crate::address::{BusAddress, ensure_private_dir};
use crate::protocol::seqpacket;
use crate::transport::tls::{TlsClientFiles, TlsServerFiles, client_config};
use event_loop::{EventLoop, LISTENER, WAKER};
pub use gateway::ListenError;
use gateway::{Gateway, GatewaySetup, Listener};
use keeper::Keeper;

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
    /// The address is not a local socket (a broker serves a socket on this host).
    #[error("a broker serves a local socket; {0} is not one")]
    NotLocal(String),
    /// No socket was given and the default bus address is invalid.
    #[error(transparent)]
    Address(#[from] crate::address::AddressError),
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
    /// A `tcp://` or `tls://` listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> BrokerError + 'p {
    move |source| BrokerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How to start a broker; from [`Broker::builder`]. Every option has a default: the default bus's
/// socket (`$SHMBUS_BUS`, else the name `default`), 1 MiB rings carrying payloads up to 64 KiB,
/// 64 publishers and 128 subscribers per ring, eviction after 5 s, claims held uncommitted taken
/// back after 15 s, idle rings released after 60 s, 16,384 doorbells; and the quotas below
/// (`docs/THREAT_MODEL.md` lists them with their defaults).
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `bind` is called"]
pub struct BrokerBuilder {
    socket: Option<PathBuf>,
    limits: Limits,
    doorbells: u32,
    ring_idle: Duration,
    state_dir: Option<PathBuf>,
    access: Option<Arc<AccessList>>,
    listen: Vec<BusAddress>,
    tls: Option<TlsServerFiles>,
    peers: Vec<BusAddress>,
    peer_tls: Option<TlsClientFiles>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        BrokerBuilder {
            socket: None,
            limits: Limits {
                ring: RingConfig::default(),
                evict_after: Duration::from_secs(5),
                unblock_after: Duration::from_secs(15),
                quotas: Quotas::default(),
                max_state_value: 64 << 10,
                max_state_bytes: 64 << 20,
                session_grace: Duration::from_secs(60),
            },
            doorbells: 16_384,
            ring_idle: Duration::from_secs(60),
            state_dir: None,
            access: None,
            listen: Vec::new(),
            tls: None,
            peers: Vec::new(),
            peer_tls: None,
        }
    }
}

impl BrokerBuilder {
    /// Serve the control socket at `path` (its directory is created private if missing).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Bytes of each topic's ring (a power of two, at least twice the largest frame).
    pub fn ring_capacity(mut self, bytes: u64) -> Self {
        self.limits.ring.capacity = bytes;
        self
    }

    /// The largest payload one message can carry.
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.limits.ring.max_payload = bytes;
        self
    }

    /// How many publishers may write one topic at once.
    pub fn publishers_per_topic(mut self, n: u32) -> Self {
        self.limits.ring.writer_slots = n;
        self
    }

    /// How many subscribers may read one topic at once.
    pub fn subscribers_per_topic(mut self, n: u32) -> Self {
        self.limits.ring.reader_slots = n;
        self
    }

    /// Untether a subscriber that holds publishers back without reading for this long.
    pub fn evict_after(mut self, timeout: Duration) -> Self {
        self.limits.evict_after = timeout;
        self
    }

    /// Take back a claim a live publisher has held uncommitted this long (it was stopped or
    /// descheduled between loan and commit), so that subscribers and other publishers go on; its
    /// late commit then fails. Default 15 s.
    pub fn unblock_after(mut self, timeout: Duration) -> Self {
        self.limits.unblock_after = timeout;
        self
    }

    /// Drop a connection that has not completed the handshake within this long. Default 5 s.
    pub fn hello_timeout(mut self, timeout: Duration) -> Self {
        self.limits.quotas.hello_timeout = timeout;
        self
    }

    /// Serve at most this many connections; more are refused. Default 10,000.
    pub fn max_clients(mut self, n: usize) -> Self {
        self.limits.quotas.clients = n;
        self
    }

    /// Keep at most this many connections that have not said Hello yet; beyond it the oldest is
    /// dropped, so silent connections cannot keep newcomers out. Default 1,024.
    pub fn max_pending_connections(mut self, n: usize) -> Self {
        self.limits.quotas.unwelcomed = n;
        self
    }

    /// At most this many rings (topics published on) on the bus. Default 8,192.
    pub fn max_rings(mut self, n: usize) -> Self {
        self.limits.quotas.rings = n;
        self
    }

    /// At most this many rings created by one client's publishes. Default 2,048.
    pub fn max_rings_per_client(mut self, n: usize) -> Self {
        self.limits.quotas.rings_per_client = n;
        self
    }

    /// At most this many publishers per client. Default 4,096.
    pub fn max_publishers_per_client(mut self, n: usize) -> Self {
        self.limits.quotas.publishers_per_client = n;
        self
    }

    /// At most this many subscription patterns per client. Default 1,024.
    pub fn max_subscriptions_per_client(mut self, n: usize) -> Self {
        self.limits.quotas.subscriptions_per_client = n;
        self
    }

    /// At most this many subscribers (each holds a doorbell) per client. Default 256.
    pub fn max_subscribers_per_client(mut self, n: usize) -> Self {
        self.limits.quotas.doorbells_per_client = n;
        self
    }

    /// At most this many bytes of messages waiting for one client that does not read its
    /// socket; beyond, it is disconnected. Default 8 MiB.
    pub fn max_outbox_bytes(mut self, n: usize) -> Self {
        self.limits.quotas.outbox_bytes = n;
        self
    }

    /// At most this many descriptors waiting for one client that does not read its socket
    /// (each ring attachment carries two); beyond, it is disconnected. Default 32,768.
    pub fn max_outbox_descriptors(mut self, n: usize) -> Self {
        self.limits.quotas.outbox_fds = n;
        self
    }

    /// Keep the subscriptions of a client that joined a session (see
    /// [`BusBuilder::session`](crate::BusBuilder::session)) this long after it goes. Default 60 s.
    pub fn session_grace(mut self, grace: Duration) -> Self {
        self.limits.session_grace = grace;
        self
    }

    /// Release a topic's ring (and its history) after this long without publishers or
    /// subscribers.
    pub fn ring_idle(mut self, timeout: Duration) -> Self {
        self.ring_idle = timeout;
        self
    }

    /// Doorbells in the bus's table: one per subscriber, so at most this many at once.
    pub fn doorbells(mut self, n: u32) -> Self {
        self.doorbells = n;
        self
    }

    /// Keep persistent state collections in directory `dir` (created private if missing); without
    /// one, collections cannot be persistent.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Largest value of a state collection's entry (default 64 KiB).
    pub fn max_state_value(mut self, bytes: u32) -> Self {
        self.limits.max_state_value = bytes;
        self
    }

    /// Most bytes, keys and values together, one state collection may hold (default 64 MiB):
    /// what the broker's mirror of it may take. Owners are refused puts beyond it.
    pub fn max_state_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_state_bytes = bytes;
        self
    }

    /// Admit other users as `list` says (see [`access`]): the socket becomes reachable by
    /// everyone (mode 0666, and its directory 0711 if the broker made it), and each connection
    /// and request is checked against the list. Without one, only the broker's user can reach
    /// the socket. Replace the list of a running broker with [`BrokerHandle::set_access_list`].
    pub fn access_list(mut self, list: AccessList) -> Self {
        self.access = Some(Arc::new(list));
        self
    }

    /// Also accept remote clients at `address`, a `tcp://HOST:PORT` or `tls://HOST:PORT` (port 0:
    /// one the system chooses; see [`Broker::listen_addresses`]); may be given several times.
    /// The gateway serving them runs on threads of the broker process as an ordinary client of
    /// the rings. Without an access list, anyone who can reach a `tcp://` address can use the
    /// bus: listen on loopback, or use `tls://` with a client CA ([`BrokerBuilder::tls`]). With
    /// one, remote clients must present a TLS client certificate whose subject's common name is
    /// a user of this host, and are checked as that user.
    pub fn listen(mut self, address: BusAddress) -> Self {
        self.listen.push(address);
        self
    }

    /// The certificate and key `tls://` listeners present, and the CA, if any, their clients'
    /// certificates must be signed by.
    pub fn tls(mut self, files: TlsServerFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Peer with the broker listening at `address` (`tcp://` or `tls://`); may be given several
    /// times. The gateway dials it (again, with backoff, whenever the link is lost), and the two
    /// buses then share their messages: a topic crosses only when a subscriber on the other
    /// side wants it, and a message reaches each broker once, whatever the topology (chains,
    /// hubs, cycles). The peer's own listener takes this broker like a remote client: with an
    /// access list, as the user its certificate names.
    pub fn peer(mut self, address: BusAddress) -> Self {
        self.peers.push(address);
        self
    }

    /// The TLS settings for `tls://` peers: the CA their certificates are checked against, and
    /// the certificate to present to a peer that requires one (default: the system's roots,
    /// no certificate).
    pub fn peer_tls(mut self, files: TlsClientFiles) -> Self {
        self.peer_tls = Some(files);
        self
    }

    /// Binds the control socket: creates its private directory, refuses to start if a live
    /// broker owns the socket, and replaces a stale socket file left by a dead one. Binds the
    /// `tcp://` and `tls://` listeners too.
    pub fn bind(self) -> Result<Broker, BrokerError> {
        self.limits.ring.validate()?;
        let listeners = self
            .listen
            .iter()
            .map(|address| Listener::bind(address, self.tls.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let peer_tls = self.peer_tls_config()?;
        let path = match self.socket.clone() {
            Some(path) => path,
            None => {
                let address = BusAddress::from_env()?;
                address
                    .socket_path()
                    .ok_or_else(|| BrokerError::NotLocal(address.to_string()))?
                    .to_path_buf()
            }
        };
        ensure_private_dir(&path).map_err(io_err("prepare directory of", &path))?;
        let lock = lock_socket(&path)?;
        remove_stale_socket(&path)?;
        let listener = seqpacket::listen(&path).map_err(io_err("listen on", &path))?;
        if self.access.is_some() {
            open_to_others(&path).map_err(io_err("open to other users", &path))?;
        }
        raise_descriptor_limit();
        let doorbells = DoorbellTable::create(self.doorbells)?;
        let poll = Poll::new().map_err(io_err("create event loop for", &path))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(io_err("register", &path))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(io_err("create waker for", &path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let access = AccessSlot::new(RwLock::new(self.access.clone()));
        let handle = BrokerHandle {
            stop: Arc::clone(&stop),
            waker: Arc::new(waker),
            access: Arc::clone(&access),
        };
        let mut core = Core::new(self.limits.clone(), doorbells);
        core.set_access(Arc::clone(&access));
        let gateway = GatewaySetup {
            socket: BusAddress::Local(path.clone()),
            hello_timeout: self.limits.quotas.hello_timeout,
            access: Arc::clone(&access),
            interest: core.interest(),
            peers: self.peers.clone(),
            peer_tls,
        };
        let (answers, answered) = mpsc::channel();
        let keeper = self.start_keeper(&mut core, answers, &handle, &path)?;
        let event_loop = EventLoop::new(listener, poll, core, self.ring_idle, stop, answered);
        Ok(Broker {
            socket: path,
            _lock: lock,
            handle,
            event_loop,
            keeper: Some(keeper),
            listeners,
            gateway,
        })
    }

    /// The client TLS settings for `tls://` peers, if there are any; checks that every peer is
    /// a `tcp://` or `tls://` address.
    fn peer_tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, BrokerError> {
        let mut secure = false;
        for peer in &self.peers {
            match peer {
                BusAddress::Tcp(_) => {}
                BusAddress::Tls(_) => secure = true,
                BusAddress::Local(_) => {
                    return Err(ListenError::PeerNotRemote(peer.to_string()).into());
                }
            }
        }
        if !secure {
            return Ok(None);
        }
        let files = self.peer_tls.clone().unwrap_or_default();
        let config = client_config(&files).map_err(ListenError::from)?;
        Ok(Some(config))
    }

    /// Loads the state directory and makes the keeper that `run` starts, linked to `core`.
    fn start_keeper(
        &self,
        core: &mut Core,
        answers: mpsc::Sender<self::core::Outgoing>,
        handle: &BrokerHandle,
        path: &Path,
    ) -> Result<Keeper, BrokerError> {
        let doorbell = core.keeper_doorbell().ok_or_else(|| {
            io_err("reserve a doorbell for the state keeper of", path)(io::Error::other(
                "the doorbell table is empty",
            ))
        })?;
        let (jobs_tx, jobs) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let link = self::core::KeeperLink::new(jobs_tx, Arc::clone(&pending), doorbell.index());
        core.set_keeper(link, self.state_dir.is_some());
        let (reader_owner, writer_owner) = Core::keeper_owners();
        let setup = keeper::KeeperSetup {
            max_bytes: self.limits.max_state_bytes,
            jobs,
            pending,
            doorbell: Arc::new(doorbell),
            reader_owner,
            writer_owner,
            answers,
            waker: Arc::clone(&handle.waker),
            stop: Arc::clone(&handle.stop),
        };
        let dir = self.state_dir.as_deref();
        Keeper::new(setup, dir).map_err(|source| BrokerError::Io {
            what: "open state directory",
            path: dir.map_or_else(PathBuf::new, Path::to_path_buf),
            source,
        })
    }
}

/// The lock file serialises brokers for a socket: whoever holds it owns the socket, and a socket
/// file found while holding it is stale.
fn lock_socket(path: &Path) -> Result<Flock<std::fs::File>, BrokerError> {
    let lock_path = path.with_extension("lock");
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open lock file", &lock_path))?;
    match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::Error::EWOULDBLOCK)) => Err(BrokerError::AlreadyRunning(path.to_path_buf())),
        Err((_, e)) => Err(io_err("lock", &lock_path)(e.into())),
    }
}

/// Removes a socket file a dead broker left; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> Result<(), BrokerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BrokerError::NotASocket(path.to_path_buf()));
            }
            if seqpacket::connect(path).is_ok() {
                return Err(BrokerError::AlreadyRunning(path.to_path_buf()));
            }
            warn!(socket = %path.display(), "replacing a stale socket left by a broker that died");
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Makes the socket (and its directory, if the broker made it) reachable by other users, whom
/// the access list then admits or refuses.
fn open_to_others(socket: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    let ours = socket.parent().filter(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("shmbus"))
    });
    if let Some(dir) = ours {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

/// Stops a running broker from another thread (or a signal-handling thread), or replaces its
/// access list.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    access: AccessSlot,
}

impl BrokerHandle {
    /// Checks connections and requests against `list` from now on (subscriptions and other
    /// handles made before stay). A broker started without an access list keeps its socket
    /// private to its user, so only that user is checked.
    pub fn set_access_list(&self, list: AccessList) {
        *self
            .access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(list));
    }

    /// Asks the broker to stop; [`Broker::run`] returns soon after.
    pub fn stop(&self) {
        // Release pairs with the Acquire load at the top of the event loop.
        self.stop.store(true, Ordering::Release);
        // A failed wake only delays the stop to the next tick.
        let _ = self.waker.wake();
    }
}

/// A broker bound to its socket, ready to [`run`](Broker::run).
pub struct Broker {
    socket: PathBuf,
    /// Held while the broker lives; released when the descriptor closes.
    _lock: Flock<std::fs::File>,
    handle: BrokerHandle,
    event_loop: EventLoop,
    /// Started by `run`.
    keeper: Option<Keeper>,
    /// Bound; served by the gateway `run` starts.
    listeners: Vec<Listener>,
    /// The rest of what the gateway needs.
    gateway: GatewaySetup,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Broker {
    /// How to start a broker, with defaults for everything.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The `tcp://` and `tls://` addresses remote clients reach this broker at, with the ports
    /// bound (so port 0 shows the one chosen).
    pub fn listen_addresses(&self) -> Vec<BusAddress> {
        self.listeners.iter().map(|l| l.address().clone()).collect()
    }

    /// A handle that stops the broker.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Serves clients until [`BrokerHandle::stop`]. Removes the socket file when it returns.
    pub fn run(mut self) -> io::Result<()> {
        let keeper = self.keeper.take().map(|k| {
            std::thread::Builder::new()
                .name("shmbus-keeper".into())
                .spawn(move || k.run())
        });
        let keeper = keeper.transpose()?;
        let listeners = std::mem::take(&mut self.listeners);
        let gateway = match listeners.is_empty() && self.gateway.peers.is_empty() {
            true => None,
            false => {
                let setup = self.gateway.clone();
                Some(Gateway::start(listeners, setup)?)
            }
        };
        let result = self.event_loop.run();
        // The gateway's threads end now; a call they make as they do (a state owner's drop)
        // fails at once on a connection the broker hung up.
        self.event_loop.hang_up();
        drop(gateway);
        self.handle.stop();
        if let Some(k) = keeper {
            let _ = k.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        result
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
