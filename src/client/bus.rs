//! [`Bus`]: a connection to a broker, and what publishers and subscribers share through it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::broker_identity::TrustedUsers;
use super::connection::{ConnectOptions, Connection};
use super::error::{AttachError, ConnectError};
use super::pubsub::{Publisher, PublisherBuilder, Sample, Subscriber, SubscriberBuilder};
use super::remote::{Dialer, RemoteBus, RemoteInner};
use super::reqrep::{
    self, Dispatcher, InboxPool, Request, RequestError, Requester, Response, ResponseStream,
    ServeError, Server,
};
use super::state::{
    StatePublisher, StatePublisherBuilder, StateWatcher, StateWatcherBuilder, fetch_snapshot,
    watch_rings,
};
use crate::address::BusAddress;
use crate::broker::{BrokerBuilder, BrokerError, BrokerHandle};
use crate::topic::Topic;
use crate::transport::tls::TlsClientFiles;
use shmbus_shm::WaitStrategy;

/// A broker running on a thread of this process, owned by a [`Bus`].
struct Embedded {
    handle: BrokerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    dir: PathBuf,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Embedded {
    /// Starts `broker` on a thread, on a socket in a private directory of its own.
    fn start(broker: BrokerBuilder) -> Result<(Embedded, BusAddress), ConnectError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::temp_dir(),
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("shmbus-embedded-{}-{n}", std::process::id()));
        let broker = broker
            .socket(dir.join("bus.sock"))
            .bind()
            .map_err(ConnectError::Embedded)?;
        let address = BusAddress::Local(broker.socket_path().to_path_buf());
        let handle = broker.handle();
        let thread = std::thread::Builder::new()
            .name("shmbus-broker".into())
            .spawn(move || broker.run())
            .map_err(|e| {
                ConnectError::Embedded(BrokerError::Io {
                    what: "start broker thread for",
                    path: dir.clone(),
                    source: e,
                })
            })?;
        let embedded = Embedded {
            handle,
            thread: Some(thread),
            dir,
        };
        Ok((embedded, address))
    }
}

/// What every handle of a bus shares.
pub(crate) struct BusInner {
    pub(crate) conn: Arc<Connection>,
    /// Joined on drop, so that no thread of ours outlives the last handle.
    control: Option<std::thread::JoinHandle<()>>,
    /// Declared last: the embedded broker stops after the connection closed.
    embedded: Option<Embedded>,
}

impl BusInner {
    /// The largest payload the current broker's rings carry.
    pub(crate) fn max_payload(&self) -> u32 {
        self.conn.link().max_payload
    }
}

/// How a bus is reached: through a broker on this host (its rings mapped here), or through a
/// broker's gateway over TCP or TLS.
#[derive(Clone)]
pub(crate) enum BusFlavor {
    /// A broker on this host.
    Local(Arc<BusInner>),
    /// A gateway, over the network.
    Remote(Arc<RemoteInner>),
}

impl BusFlavor {
    /// The local bus, for what only a local bus offers; on a remote bus, the error of attaching
    /// `topic` that says so.
    pub(crate) fn local(&self, topic: &str) -> Result<Arc<BusInner>, AttachError> {
        match self {
            BusFlavor::Local(bus) => Ok(Arc::clone(bus)),
            BusFlavor::Remote(_) => Err(AttachError::LocalOnly {
                topic: topic.to_string(),
            }),
        }
    }
}

impl Drop for BusInner {
    fn drop(&mut self) {
        self.conn.close();
        // `close` shut the socket down, so the control thread's receive returns and it ends.
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        drop(self.embedded.take());
    }
}

/// A connection to a bus. Cheap to clone; publishers and subscribers keep it alive.
///
/// ```
/// use shmbus::Bus;
///
/// let bus = Bus::embedded()?;                    // a private broker on a thread, for the example
/// let mut sub = bus.subscribe("chat/**")?;
/// let mut publisher = bus.publisher("chat/lobby")?;
/// publisher.publish(b"hello")?;
/// let sample = sub.recv()?;
/// assert_eq!((sample.topic(), sample.payload()), ("chat/lobby", &b"hello"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Bus {
    flavor: BusFlavor,
    /// Idle inboxes for [`Bus::request`] calls. Held by the `Bus` handles, not by what they
    /// share: an inbox holds the shared part, so the pool in it would never be dropped.
    inboxes: Arc<InboxPool>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("address", &self.address().to_string())
            .finish()
    }
}

/// How long connecting and the handshake may take by default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a bus; from [`Bus::builder`].
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct BusBuilder {
    address: Option<BusAddress>,
    name: Option<String>,
    embedded: Option<BrokerBuilder>,
    connect_timeout: Option<Duration>,
    broker_uid: Option<u32>,
    session: Option<String>,
    tls: Option<TlsClientFiles>,
}

impl BusBuilder {
    /// The bus's address (default: `$SHMBUS_BUS`, else the name `default`).
    pub fn address(mut self, address: BusAddress) -> Self {
        self.address = Some(address);
        self
    }

    /// The name this client shows in the broker's logs (default: the program's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Starts `broker` on a thread of this process, on a private socket, and connects to it
    /// instead of to an address: a bus of the program's own, for tests and self-contained
    /// applications. Other processes can join it at [`Bus::address`]. The broker stops when the
    /// last handle of this bus drops.
    pub fn embedded(mut self, broker: BrokerBuilder) -> Self {
        self.embedded = Some(broker);
        self
    }

    /// How long connecting and the handshake may take before [`ConnectError::Unreachable`]
    /// (default 5 s): a broker that is stopped or overloaded cannot hang the client.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Also trust a broker running as user `uid` (a service account; default:
    /// `$SHMBUS_BROKER_UID`). By default the broker must run as this process's user or root,
    /// and its socket's directory belong to one of them; anything else is refused with
    /// [`ConnectError::Untrusted`].
    pub fn broker_uid(mut self, uid: u32) -> Self {
        self.broker_uid = Some(uid);
        self
    }

    /// Hold session `name`: the broker keeps this client's subscriptions for its session grace
    /// period (`--session-grace`, 60 s by default) after the client goes — killed or not — or
    /// drops them, holding no publisher back meanwhile. A client of the same user that connects
    /// with the same name within that time and subscribes to the same patterns (with the same
    /// mode) takes them up where they stood: it receives what the rings still hold, and
    /// [`RecvError::Lagged`](crate::RecvError::Lagged) with the count of what was overwritten.
    /// Messages read but not yet released when a process was killed may be delivered again.
    /// Only one live client holds a session: another gets [`ConnectError::Refused`].
    ///
    /// On a remote bus the gateway holds the session on the client's behalf (names of at most
    /// 48 bytes), kept apart from local sessions and, with an access list, by user.
    pub fn session(mut self, name: impl Into<String>) -> Self {
        self.session = Some(name.into());
        self
    }

    /// TLS settings for a `tls://` address: the CA to check the gateway against and the
    /// certificate to present (default: `$SHMBUS_TLS_CA`, `$SHMBUS_TLS_CERT` and
    /// `$SHMBUS_TLS_KEY`, else the system's roots and no certificate).
    pub fn tls(mut self, files: TlsClientFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Connects (starting the embedded broker first, if one was asked for).
    pub fn connect(self) -> Result<Bus, ConnectError> {
        let (embedded, address) = match self.embedded {
            Some(broker) => {
                let (embedded, address) = Embedded::start(broker)?;
                (Some(embedded), address)
            }
            None => match self.address {
                Some(address) => (None, address),
                None => (None, BusAddress::from_env()?),
            },
        };
        let name = self.name.unwrap_or_else(program_name);
        let timeout = self.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        if !matches!(address, BusAddress::Local(_)) {
            let max = crate::protocol::remote::MAX_REMOTE_SESSION_LEN;
            if self
                .session
                .as_ref()
                .is_some_and(|s| s.is_empty() || s.len() > max)
            {
                return Err(ConnectError::Refused {
                    address: address.to_string(),
                    message: format!("a remote client's session name is 1 to {max} bytes long"),
                });
            }
            let dialer = Dialer {
                address,
                name,
                tls: None,
                session: self.session,
                timeout,
                instance: crate::transport::random_id(),
            };
            return connect_remote(dialer, self.tls);
        }
        let options = ConnectOptions {
            timeout,
            trusted: TrustedUsers {
                extra: self.broker_uid.or_else(broker_uid_from_env),
            },
            session: self.session,
        };
        let (conn, control) = Connection::open(&address, &name, options)?;
        Ok(Bus {
            inboxes: Arc::default(),
            flavor: BusFlavor::Local(Arc::new(BusInner {
                conn,
                control: Some(control),
                embedded,
            })),
        })
    }
}

/// Connects to the gateway `dialer` names (`tcp://` or `tls://`, the latter with `tls` or the
/// files `SHMBUS_TLS_*` name).
fn connect_remote(mut dialer: Dialer, tls: Option<TlsClientFiles>) -> Result<Bus, ConnectError> {
    if let BusAddress::Tls(_) = dialer.address {
        let files = match tls {
            Some(files) => files,
            None => TlsClientFiles::from_env()?,
        };
        dialer.tls = Some(crate::transport::tls::client_config(&files)?);
    }
    let inner = RemoteBus::connect(dialer)?;
    Ok(Bus {
        inboxes: Arc::default(),
        flavor: BusFlavor::Remote(Arc::new(inner)),
    })
}

/// The service account `$SHMBUS_BROKER_UID` names, if it is set to a uid.
fn broker_uid_from_env() -> Option<u32> {
    std::env::var("SHMBUS_BROKER_UID").ok()?.trim().parse().ok()
}

/// The name of the running program, as clients introduce themselves by default.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "client".into())
}

impl Bus {
    /// Connects to the broker at `address`: a bus name, a socket path, or a URL (see
    /// [`BusAddress`]).
    pub fn connect(address: &str) -> Result<Bus, ConnectError> {
        Bus::builder()
            .address(BusAddress::parse(address)?)
            .connect()
    }

    /// Connects to the default bus: `$SHMBUS_BUS`, else the name `default`.
    pub fn connect_default() -> Result<Bus, ConnectError> {
        Bus::builder().connect()
    }

    /// Starts a broker with default settings on a thread of this process and connects to it; see
    /// [`BusBuilder::embedded`] for one with other settings.
    pub fn embedded() -> Result<Bus, ConnectError> {
        Bus::builder()
            .embedded(crate::broker::Broker::builder())
            .connect()
    }

    /// How to reach a bus, when the defaults do not do.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// The address this bus was reached at.
    pub fn address(&self) -> &BusAddress {
        match &self.flavor {
            BusFlavor::Local(bus) => bus.conn.address(),
            BusFlavor::Remote(bus) => bus.bus.address(),
        }
    }

    /// Whether a broker is connected now. Attached publishers and subscribers work either way;
    /// when the broker is lost, the bus reconnects by itself as soon as a broker is back at its
    /// address, and publishers and subscribers register again (see [`RecvError::BrokerLost`](
    /// crate::RecvError::BrokerLost)).
    pub fn is_connected(&self) -> bool {
        match &self.flavor {
            BusFlavor::Local(bus) => bus.conn.is_alive(),
            BusFlavor::Remote(bus) => bus.bus.is_connected(),
        }
    }

    /// Whether this bus is reached over the network (a `tcp://` or `tls://` address): messages
    /// are then copied through the gateway rather than read in place.
    pub fn is_remote(&self) -> bool {
        matches!(self.flavor, BusFlavor::Remote(_))
    }

    /// The largest payload this bus's rings carry.
    pub fn max_payload(&self) -> usize {
        match &self.flavor {
            BusFlavor::Local(bus) => bus.max_payload() as usize,
            BusFlavor::Remote(bus) => bus.bus.max_payload() as usize,
        }
    }

    /// A publisher of raw bytes on `topic`, with default options (see
    /// [`Bus::publisher_builder`]). Wildcards are allowed: subscribers whose pattern overlaps the
    /// topic receive its messages.
    pub fn publisher(&self, topic: &str) -> Result<Publisher, AttachError> {
        self.publisher_builder(topic).create()
    }

    /// A publisher with options: how it waits for room, typed messages.
    pub fn publisher_builder(&self, topic: &str) -> PublisherBuilder {
        PublisherBuilder::new(self.flavor.clone(), topic)
    }

    /// A tethered subscriber to every topic matching `pattern`, from now on, with default
    /// options (see [`Bus::subscriber`]).
    pub fn subscribe(&self, pattern: &str) -> Result<Subscriber, AttachError> {
        self.subscriber(pattern).create()
    }

    /// A subscriber with options: more patterns, lossy, history, how it waits, typed messages.
    ///
    /// ```
    /// use shmbus::Bus;
    ///
    /// let bus = Bus::embedded()?;
    /// let mut publisher = bus.publisher("log/app")?;
    /// publisher.publish(b"before")?;
    /// // Lossy: never holds the publisher back; history: also the last message before joining.
    /// let mut sub = bus.subscriber("log/*").lossy().history(1).create()?;
    /// publisher.publish(b"after")?;
    /// assert_eq!(sub.recv()?.payload(), b"before");
    /// assert_eq!(sub.recv()?.payload(), b"after");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscriber(&self, pattern: &str) -> SubscriberBuilder {
        self.subscriber_builder().pattern(pattern)
    }

    /// A subscriber with options and no pattern yet: add them with
    /// [`SubscriberBuilder::pattern`], or later with [`Subscriber::add_pattern`].
    pub fn subscriber_builder(&self) -> SubscriberBuilder {
        SubscriberBuilder::new(self.flavor.clone())
    }

    /// Owns the state collection of `topic` (an exact topic), not persistent: see
    /// [`Bus::state_publisher_builder`].
    pub fn state_publisher(&self, topic: &str) -> Result<StatePublisher, AttachError> {
        self.state_publisher_builder(topic).create()
    }

    /// A state publisher with options: persistent, the largest value.
    pub fn state_publisher_builder(&self, topic: &str) -> StatePublisherBuilder {
        StatePublisherBuilder::new(self.flavor.clone(), topic)
    }

    /// Watches every state collection whose topic matches `pattern` (wildcards allowed), now and
    /// later: see [`StateWatcher`].
    pub fn watch_state(&self, pattern: &str) -> Result<StateWatcher, AttachError> {
        self.state_watcher(pattern).create()
    }

    /// A state watcher with options: more patterns, how it waits.
    pub fn state_watcher(&self, pattern: &str) -> StateWatcherBuilder {
        StateWatcherBuilder::new(self.flavor.clone(), pattern)
    }

    /// For a gateway watching on a remote watcher's behalf: a subscriber of the state rings of
    /// the collections `patterns` match, each message one record. A local bus only.
    pub(crate) fn state_rings(&self, patterns: &[Topic]) -> Result<Subscriber, AttachError> {
        let first = patterns.first().map_or("", Topic::as_str);
        let bus = self.flavor.local(first)?;
        let rings = watch_rings(&bus, patterns, WaitStrategy::default())?;
        Ok(Subscriber::from_rings(rings))
    }

    /// For a gateway: the keeper's snapshot of the collections `pattern` matches (the
    /// [`snapshot`](crate::protocol::state::snapshot) format). A local bus only.
    pub(crate) fn state_snapshot(&self, pattern: &str) -> Result<Vec<u8>, AttachError> {
        let bus = self.flavor.local(pattern)?;
        fetch_snapshot(&bus, pattern).map_err(|e| AttachError::call(pattern, e))
    }

    /// Serves `topic` (an exact topic, no wildcards): receive its requests with
    /// [`Server::recv`]. Only one server per topic at a time: a second gets
    /// [`ServeError::AlreadyServed`].
    pub fn serve(&self, topic: &str) -> Result<Server, ServeError> {
        match &self.flavor {
            BusFlavor::Local(bus) => Server::new(Arc::clone(bus), topic),
            BusFlavor::Remote(remote) => Server::remote(Arc::clone(remote), topic),
        }
    }

    /// Serves `topic` on a dispatcher thread: `handler` answers each request with the bytes it
    /// returns. Serving stops when the returned guard drops. A handler that panics is reported
    /// and its request answered as abandoned; the next request is served as usual.
    pub fn serve_with<R: AsRef<[u8]>>(
        &self,
        topic: &str,
        handler: impl FnMut(&Request<'_>) -> R + Send + 'static,
    ) -> Result<Dispatcher, ServeError> {
        let server = self.serve(topic)?;
        reqrep::serve_with(server, handler).map_err(|e| {
            ServeError::Attach(AttachError::Shm {
                topic: topic.to_string(),
                detail: format!("cannot start the dispatcher thread: {e}"),
            })
        })
    }

    /// Runs `handler` on a dispatcher thread for every message on topics matching `pattern`
    /// (a tethered subscriber), until the returned guard drops. A handler that panics is
    /// reported and the next message handled as usual.
    pub fn on(
        &self,
        pattern: &str,
        handler: impl FnMut(Sample<'_>) + Send + 'static,
    ) -> Result<Dispatcher, AttachError> {
        let sub = self.subscribe(pattern)?;
        reqrep::on(sub, handler).map_err(|e| AttachError::Shm {
            topic: pattern.to_string(),
            detail: format!("cannot start the dispatcher thread: {e}"),
        })
    }

    /// Asks the server of `topic` and waits for its answer as long as it takes. Fails at once
    /// with [`RequestError::NoServer`] when nobody serves the topic, and with
    /// [`RequestError::ServerGone`] as soon as the server goes without answering. Safe to call
    /// from many threads at once: each call uses an inbox of its own.
    pub fn request(&self, topic: &str, payload: &[u8]) -> Result<Response, RequestError> {
        self.ask(topic, payload, None)
    }

    /// [`Bus::request`], giving up after `timeout` ([`RequestError::Timeout`]); an answer that
    /// comes later is dropped.
    pub fn request_timeout(
        &self,
        topic: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        self.ask(topic, payload, Some(timeout))
    }

    /// [`Bus::request`], giving up at `deadline`.
    pub fn request_deadline(
        &self,
        topic: &str,
        payload: &[u8],
        deadline: std::time::Instant,
    ) -> Result<Response, RequestError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        self.ask(topic, payload, Some(left))
    }

    /// Asks the server of `topic` for a stream of answers, waiting for each as long as it takes.
    pub fn request_stream(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<ResponseStream, RequestError> {
        self.ask_stream(topic, payload, None)
    }

    /// [`Bus::request_stream`], waiting at most `timeout` for each answer.
    pub fn request_stream_timeout(
        &self,
        topic: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<ResponseStream, RequestError> {
        self.ask_stream(topic, payload, Some(timeout))
    }

    /// A requester of `topic` with an inbox of its own: requests written in place, and a choice
    /// of how to wait for answers.
    pub fn requester(&self, topic: &str) -> Result<Requester, RequestError> {
        match &self.flavor {
            BusFlavor::Local(bus) => Requester::new(Arc::clone(bus), topic),
            BusFlavor::Remote(remote) => Requester::remote(Arc::clone(remote), topic),
        }
    }

    /// A request, waiting for its answer at most `patience`: through the local inboxes, or the
    /// gateway.
    fn ask(
        &self,
        topic: &str,
        payload: &[u8],
        patience: Option<Duration>,
    ) -> Result<Response, RequestError> {
        match &self.flavor {
            BusFlavor::Local(bus) => reqrep::request(bus, &self.inboxes, topic, payload, patience),
            BusFlavor::Remote(remote) => {
                reqrep::request_remote(&remote.bus, topic, payload, patience)
            }
        }
    }

    /// A request answered with a stream, waiting for each answer at most `patience`.
    fn ask_stream(
        &self,
        topic: &str,
        payload: &[u8],
        patience: Option<Duration>,
    ) -> Result<ResponseStream, RequestError> {
        match &self.flavor {
            BusFlavor::Local(bus) => {
                reqrep::request_stream(bus, &self.inboxes, topic, payload, patience)
            }
            BusFlavor::Remote(remote) => {
                reqrep::request_stream_remote(&remote.bus, topic, payload, patience)
            }
        }
    }
}
