//! The gateway: remote clients reach the bus over TCP or TLS through threads of the broker
//! process.
//!
//! The gateway is an ordinary client of the rings, connected to its own broker's socket like any
//! other: the event loop stays control-only and never sees a remote message. Each listener has an
//! accept thread; each connection a thread that reads its frames ([`connection`]), publishing what
//! remote publishers send (blocking on a full ring, so that a fast remote publisher is held back
//! by TCP flow control, never buffered without bound), and one forwarding thread per remote
//! subscription ([`forward`]), which reads the rings and writes each message to the connection.
//! A remote subscriber that stops reading stops its forwarder once the connection's output is
//! full; its tethered reader then holds local publishers back until the broker evicts it, like a
//! local subscriber that stops, and the remote side gets `Lagged` for what it missed.
//!
//! The gateway's own connection is the broker's user, which may do everything: with an access
//! list in force, the gateway checks each remote client itself, as the user its TLS client
//! certificate names ([`identity`]), and refuses clients without one.

mod connection;
mod forward;
mod identity;
mod instances;
mod peer;
mod requests;
mod serving;
mod state;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, warn};

use self::instances::Instances;
use self::peer::Peering;
use super::core::AccessSlot;
use super::core::interest::InterestBoard;
use crate::address::BusAddress;
use crate::client::Bus;
use crate::sync::lock;
use crate::transport::tls::{TlsError, TlsServerFiles};

/// Most remote connections one gateway serves at once; more are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 512;

/// One address the gateway accepts connections at, bound.
pub(crate) struct Listener {
    socket: TcpListener,
    address: BusAddress,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// Binds `address` (`tcp://` or `tls://`); a `tls://` one needs `tls`.
    pub(crate) fn bind(
        address: &BusAddress,
        tls: Option<&TlsServerFiles>,
    ) -> Result<Listener, ListenError> {
        let (host_port, secure) = match address {
            BusAddress::Tcp(a) => (a, false),
            BusAddress::Tls(a) => (a, true),
            BusAddress::Local(_) => return Err(ListenError::NotRemote(address.to_string())),
        };
        let tls = match (secure, tls) {
            (false, _) => None,
            (true, None) => return Err(ListenError::NoCertificate(address.to_string())),
            (true, Some(files)) => Some(files.server_config()?),
        };
        let socket = TcpListener::bind(host_port.as_str()).map_err(|source| ListenError::Bind {
            address: address.to_string(),
            source,
        })?;
        let local = socket.local_addr().map_err(|source| ListenError::Bind {
            address: address.to_string(),
            source,
        })?;
        let address = match address {
            BusAddress::Tls(_) => BusAddress::Tls(local.to_string()),
            _ => BusAddress::Tcp(local.to_string()),
        };
        Ok(Listener {
            socket,
            address,
            tls,
        })
    }

    /// The address bound (with the port the system chose for port 0).
    pub(crate) fn address(&self) -> &BusAddress {
        &self.address
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A `--listen` address that is not `tcp://` or `tls://`.
    #[error("the gateway listens on tcp:// or tls:// addresses, not {0}")]
    NotRemote(String),
    /// A `--peer` address that is not `tcp://` or `tls://`.
    #[error("a peer broker is reached at a tcp:// or tls:// address, not {0}")]
    PeerNotRemote(String),
    /// A `tls://` listener without a certificate and key.
    #[error("{0} needs a certificate and its key (--tls-cert, --tls-key)")]
    NoCertificate(String),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The running gateway: its accept threads, stopped and joined on drop.
pub(crate) struct Gateway {
    shared: Arc<Shared>,
    acceptors: Vec<(Arc<TcpListener>, JoinHandle<()>)>,
}

/// What every thread of the gateway shares.
struct Shared {
    /// The gateway's own connection to the broker (its socket), made when the first remote
    /// client arrives: by then the event loop runs.
    bus: Mutex<Option<Bus>>,
    socket: BusAddress,
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Connection threads, joined when the gateway stops.
    connection_threads: Mutex<Vec<JoinHandle<()>>>,
    /// Every live connection's wire, closed when the gateway stops.
    wires: Mutex<Vec<std::sync::Weak<crate::transport::wire::Wire>>>,
    hello_timeout: Duration,
    /// The broker's access list, if one is in force (replaced on SIGHUP).
    access: AccessSlot,
    /// Links to peer brokers, dialed and accepted.
    peering: Arc<Peering>,
    /// Remote clients' live connections, by the instance their hellos name.
    instances: Arc<Instances>,
}

/// The connection in `slot`, made (to the broker's `socket`, as `name`) if there is none yet:
/// the gateway connects when first needed, by when the event loop runs.
fn connected_once(
    slot: &Mutex<Option<Bus>>,
    socket: &BusAddress,
    name: &str,
) -> Result<Bus, crate::ConnectError> {
    let mut bus = lock(slot);
    if let Some(bus) = &*bus {
        return Ok(bus.clone());
    }
    let connected = Bus::builder()
        .address(socket.clone())
        .name(name)
        .connect()?;
    *bus = Some(connected.clone());
    Ok(connected)
}

impl Shared {
    /// The gateway's bus, connecting on first use.
    fn bus(&self) -> Result<Bus, crate::ConnectError> {
        connected_once(&self.bus, &self.socket, "shmbus-gateway")
    }

    /// A connection of the gateway's own holding session `key`, for one remote client.
    fn session_bus(&self, key: &str) -> Result<Bus, crate::ConnectError> {
        Bus::builder()
            .address(self.socket.clone())
            .name("shmbus-gateway")
            .session(key)
            .connect()
    }
}

/// What the gateway is to do besides accepting.
#[derive(Clone)]
pub(crate) struct GatewaySetup {
    /// The broker's socket, which the gateway reaches the bus through.
    pub(crate) socket: BusAddress,
    /// How long a new connection may take to say hello.
    pub(crate) hello_timeout: Duration,
    /// The broker's access list, if one is in force.
    pub(crate) access: AccessSlot,
    /// The patterns the broker's subscribers hold, which peers are told.
    pub(crate) interest: Arc<InterestBoard>,
    /// Peer brokers to dial.
    pub(crate) peers: Vec<BusAddress>,
    /// TLS settings for `tls://` peers.
    pub(crate) peer_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Gateway {
    /// Starts accepting on `listeners` and dialing the peers `setup` names.
    pub(crate) fn start(listeners: Vec<Listener>, setup: GatewaySetup) -> io::Result<Gateway> {
        let GatewaySetup {
            socket,
            hello_timeout,
            access,
            interest,
            peers,
            peer_tls,
        } = setup;
        let peering = Arc::new(Peering::new(socket.clone(), interest));
        let shared = Arc::new(Shared {
            bus: Mutex::new(None),
            socket,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            connection_threads: Mutex::default(),
            wires: Mutex::default(),
            hello_timeout,
            access,
            peering: Arc::clone(&peering),
            instances: Arc::default(),
        });
        let mut acceptors = Vec::new();
        for listener in listeners {
            let socket = Arc::new(listener.socket);
            let thread = {
                let shared = Arc::clone(&shared);
                let socket = Arc::clone(&socket);
                let tls = listener.tls;
                std::thread::Builder::new()
                    .name("shmbus-gw-accept".into())
                    .spawn(move || accept(&shared, &socket, tls.as_ref()))?
            };
            acceptors.push((socket, thread));
        }
        let gateway = Gateway { shared, acceptors };
        peering.start(peers, peer_tls)?;
        Ok(gateway)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Release pairs with the Acquire loads in `accept` and in `connection::serve` (which
        // loads it after registering its wire under the `wires` lock this drop takes later, so
        // a connection registered too late to be closed here sees the flag and closes itself).
        self.shared.stop.store(true, Ordering::Release);
        for (socket, thread) in self.acceptors.drain(..) {
            // Shutting a listening socket down wakes its blocked `accept` (Linux).
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&socket.as_fd()),
                nix::sys::socket::Shutdown::Both,
            );
            let _ = thread.join();
        }
        self.shared.peering.stop();
        let wires = std::mem::take(&mut *lock(&self.shared.wires));
        for wire in wires.iter().filter_map(std::sync::Weak::upgrade) {
            wire.close("the broker is stopping");
        }
        let threads = std::mem::take(&mut *lock(&self.shared.connection_threads));
        for thread in threads {
            let _ = thread.join();
        }
        lock(&self.shared.bus).take();
    }
}

/// Accepts connections until the gateway stops.
fn accept(shared: &Arc<Shared>, socket: &TcpListener, tls: Option<&Arc<rustls::ServerConfig>>) {
    loop {
        let accepted = socket.accept();
        // Acquire pairs with the Release store in `Gateway::drop`.
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("gateway: accept failed: {e}");
                // Out of descriptors, say: give the system a moment rather than spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        admit(shared, stream, peer, tls.cloned());
    }
}

/// Starts the thread of a new connection, unless there are too many.
fn admit(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    // Relaxed: a count for a limit, ordered by nothing else.
    if shared.connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        warn!(%peer, "gateway: {MAX_CONNECTIONS} connections already, closing this one");
        return;
    }
    let thread = {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("shmbus-gw-conn".into())
            .spawn(move || {
                connection::serve(&shared, stream, peer, tls);
                shared.connections.fetch_sub(1, Ordering::Relaxed);
            })
    };
    match thread {
        Ok(thread) => {
            let mut threads = lock(&shared.connection_threads);
            threads.retain(|t| !t.is_finished());
            threads.push(thread);
        }
        Err(e) => {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            debug!(%peer, "gateway: cannot start a connection thread: {e}");
        }
    }
}
