//! `shmbus broker`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::BusAddress;
use crate::broker::access::AccessList;
use crate::broker::{Broker, BrokerError, BrokerHandle, ListenError};
use crate::transport::tls::{TlsClientFiles, TlsServerFiles};

use super::{Exit, Failure, Outcome, SocketArg};

/// Arguments of `shmbus broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: SocketArg,
    /// Untether a subscriber that holds publishers back without reading for this long.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    evict_after: f64,
    /// Release a topic's ring after this long without publishers or subscribers.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    ring_idle: f64,
    /// Bytes of each topic's ring (a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    ring_capacity: u64,
    /// Largest message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_payload: u32,
    /// Take back a claim a live publisher has held uncommitted for this long.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    unblock_after: f64,
    /// Drop a connection that has not said Hello within this long.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    hello_timeout: f64,
    /// Most publishers of one topic at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    publishers_per_topic: u32,
    /// Most subscribers of one topic at once.
    #[arg(long, value_name = "N", default_value_t = 128)]
    subscribers_per_topic: u32,
    /// Most connected clients.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_clients: usize,
    /// Most rings (topics published on) on the bus.
    #[arg(long, value_name = "N", default_value_t = 8_192)]
    max_rings: usize,
    /// Most rings one client's publishes may create.
    #[arg(long, value_name = "N", default_value_t = 2_048)]
    max_rings_per_client: usize,
    /// Keep persistent state collections in this directory (one file per key).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Largest value of a state collection's entry, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_state_value: u32,
    /// Most bytes (keys and values together) of one state collection.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_state_bytes: u64,
    /// Keep the subscriptions of a client with a --session this long after it goes.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    session_grace: f64,
    /// Let other users connect, as the rules of this TOML file allow (re-read on SIGHUP; see
    /// the README's "Access control").
    #[arg(long, value_name = "FILE")]
    acl: Option<PathBuf>,
    /// Also accept remote clients at tcp://HOST:PORT or tls://HOST:PORT (repeatable; port 0
    /// picks a free port, printed at start). Anyone who reaches a tcp:// address can use the
    /// bus: listen on loopback, or use tls:// with --tls-client-ca.
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// The certificate chain (PEM) tls:// listeners present.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require tls:// clients to present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Peer with the broker listening at tcp://HOST:PORT or tls://HOST:PORT (repeatable): the
    /// buses share the messages of topics the other side subscribes to.
    #[arg(long, value_name = "URL")]
    peer: Vec<String>,
    /// Check tls:// peers' certificates against this CA (PEM; default: the system's roots).
    /// A tls:// peer is shown --tls-cert, if given.
    #[arg(long, value_name = "FILE")]
    peer_ca: Option<PathBuf>,
}

/// `value` seconds as a duration, if it is a number of seconds (positive unless `zero_ok`).
fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration, Failure> {
    let valid = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
    if !valid {
        let what = if zero_ok {
            "a number"
        } else {
            "a positive number"
        };
        return Err(Failure::new(
            Exit::Usage,
            format!("--{flag} must be {what} of seconds, not {value}"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Runs a broker until SIGINT or SIGTERM.
pub fn run(args: Args) -> Outcome {
    let address = args.bus.address()?;
    let socket = address.socket_path().ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!("a broker serves a local socket; {address} is not one"),
        )
    })?;
    let builder = Broker::builder()
        .socket(socket)
        .ring_idle(seconds("ring-idle", args.ring_idle, true)?)
        .evict_after(seconds("evict-after", args.evict_after, false)?)
        .unblock_after(seconds("unblock-after", args.unblock_after, false)?)
        .hello_timeout(seconds("hello-timeout", args.hello_timeout, false)?)
        .ring_capacity(args.ring_capacity)
        .max_payload(args.max_payload)
        .publishers_per_topic(args.publishers_per_topic)
        .subscribers_per_topic(args.subscribers_per_topic)
        .max_clients(args.max_clients)
        .max_rings(args.max_rings)
        .max_rings_per_client(args.max_rings_per_client)
        .max_state_value(args.max_state_value)
        .max_state_bytes(args.max_state_bytes)
        .session_grace(seconds("session-grace", args.session_grace, true)?);
    let builder = match args.state_dir {
        Some(dir) => builder.state_dir(dir),
        None => builder,
    };
    let mut builder = builder;
    for url in &args.listen {
        let address = BusAddress::parse_listen(url).map_err(|e| Failure::new(Exit::Usage, e))?;
        builder = builder.listen(address);
    }
    for url in &args.peer {
        let address = BusAddress::parse(url).map_err(|e| Failure::new(Exit::Usage, e))?;
        builder = builder.peer(address);
    }
    let mut peer_tls = TlsClientFiles {
        ca: args.peer_ca,
        identity: None,
    };
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        peer_tls = peer_tls.identity(&cert, &key);
        builder = builder.tls(TlsServerFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        });
    }
    builder = builder.peer_tls(peer_tls);
    let builder = match &args.acl {
        Some(path) => builder.access_list(AccessList::load(path).map_err(Failure::error)?),
        None => builder,
    };
    let broker = builder.bind().map_err(|e| match e {
        BrokerError::Config(_) => Failure::new(Exit::Usage, e),
        BrokerError::Listen(ListenError::NotRemote(_) | ListenError::NoCertificate(_)) => {
            Failure::new(Exit::Usage, e)
        }
        other => Failure::error(other),
    })?;
    let handle = broker.handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Failure::error(format!("install signal handlers: {e}")))?;
    let acl = args.acl;
    std::thread::Builder::new()
        .name("shmbus-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match (signal, &acl) {
                    (signal_hook::consts::SIGHUP, Some(path)) => reload(&handle, path),
                    (signal_hook::consts::SIGHUP, None) => {
                        tracing::info!("SIGHUP: no --acl file to re-read");
                    }
                    _ => {
                        handle.stop();
                        break;
                    }
                }
            }
        })
        .map_err(|e| Failure::error(format!("start signal thread: {e}")))?;
    eprintln!("shmbus broker ready on {}", broker.socket_path().display());
    for address in broker.listen_addresses() {
        eprintln!("shmbus broker listening on {address}");
    }
    broker
        .run()
        .map_err(|e| Failure::error(format!("broker failed: {e}")))
}

/// Re-reads the access list at `path` and puts it in force; a bad file is reported and the
/// rules in force stay.
fn reload(handle: &BrokerHandle, path: &Path) {
    match AccessList::load(path) {
        Ok(list) => {
            handle.set_access_list(list);
            tracing::info!(file = %path.display(), "access list reloaded");
        }
        Err(e) => tracing::error!("access list not reloaded, the previous rules stay: {e}"),
    }
}
