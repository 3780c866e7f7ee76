//! The Rust client API: connect to a bus, publish, subscribe.
//!
//! ```
//! use shmbus::Bus;
//!
//! let bus = Bus::embedded()?;                    // a private broker on a thread, for the example
//! let mut sub = bus.subscribe("chat/**")?;
//! let mut publisher = bus.publisher("chat/lobby")?;
//! publisher.publish(b"hello")?;
//! let sample = sub.recv()?;
//! assert_eq!((sample.topic(), sample.payload()), ("chat/lobby", &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! After attaching, messages never pass through the broker: publishers write into shared-memory
//! rings and subscribers read them in place. If the broker dies, rings already attached keep
//! working; new attachments fail with [`RequestError::BrokerGone`].

mod connection;
mod error;
mod publisher;
mod subscriber;
mod topic_name;
mod typed;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use shmbus_shm::{DoorbellTable, Owner};

pub use error::{AttachError, ConnectError, PublishError, RecvError, RequestError};
pub use publisher::{Loan, Publisher};
pub use subscriber::{Sample, Subscriber, SubscriberOptions};
pub use typed::{TypedPublisher, TypedSample, TypedSubscriber};

use crate::address::BusAddress;
use crate::broker::{Broker, BrokerConfig, BrokerHandle};
use connection::Connection;

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

pub(crate) struct BusInner {
    conn: Arc<Connection>,
    owner: Owner,
    max_payload: u32,
    doorbells: DoorbellTable,
    /// Joined on drop, so that no thread of ours outlives the last handle.
    control: Option<std::thread::JoinHandle<()>>,
    /// Declared last: the embedded broker stops after the connection closed.
    embedded: Option<Embedded>,
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
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("address", &self.address().to_string())
            .finish()
    }
}

impl Bus {
    /// Connects to the broker at `address`: a bus name, a socket path, or a URL (see
    /// [`BusAddress`]).
    pub fn connect(address: &str) -> Result<Bus, ConnectError> {
        Bus::connect_to(&BusAddress::parse(address)?)
    }

    /// Connects to the default bus: `$SHMBUS_BUS`, else the name `default`.
    pub fn connect_default() -> Result<Bus, ConnectError> {
        Bus::connect_to(&BusAddress::from_env()?)
    }

    /// Connects to a parsed address.
    pub fn connect_to(address: &BusAddress) -> Result<Bus, ConnectError> {
        Bus::open(address, None)
    }

    fn open(address: &BusAddress, embedded: Option<Embedded>) -> Result<Bus, ConnectError> {
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "client".into());
        let (conn, session) = Connection::open(address, &name)?;
        Ok(Bus {
            inner: Arc::new(BusInner {
                conn,
                owner: session.owner,
                max_payload: session.max_payload,
                doorbells: session.doorbells,
                control: Some(session.control),
                embedded,
            }),
        })
    }

    /// Starts a broker on a thread of this process, on a private socket, and connects to it —
    /// for tests, and applications that want a bus of their own. Other processes can join it
    /// at [`Bus::address`]. The broker stops when the last clone of this `Bus` drops.
    pub fn embedded() -> Result<Bus, ConnectError> {
        Bus::embedded_with(|_| {})
    }

    /// Like [`Bus::embedded`], letting `configure` adjust the broker's configuration.
    pub fn embedded_with(configure: impl FnOnce(&mut BrokerConfig)) -> Result<Bus, ConnectError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::temp_dir(),
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("shmbus-embedded-{}-{n}", std::process::id()));
        let mut config = BrokerConfig::new(dir.join("bus.sock"));
        configure(&mut config);
        let broker = Broker::bind(config).map_err(ConnectError::Embedded)?;
        let socket = broker.socket_path().to_path_buf();
        let handle = broker.handle();
        let thread = std::thread::Builder::new()
            .name("shmbus-broker".into())
            .spawn(move || broker.run())
            .map_err(|e| {
                ConnectError::Embedded(crate::broker::BrokerError::Io {
                    what: "start broker thread for",
                    path: dir.clone(),
                    source: e,
                })
            })?;
        let embedded = Embedded {
            handle,
            thread: Some(thread),
            dir: dir.clone(),
        };
        Bus::open(&BusAddress::Local(socket), Some(embedded))
    }

    /// The address this bus was reached at.
    pub fn address(&self) -> &BusAddress {
        self.inner.conn.address()
    }

    /// Whether the broker is still connected. Attached publishers and subscribers work either
    /// way.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.is_alive()
    }

    /// The largest payload this bus's rings carry.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload as usize
    }

    /// A publisher of raw bytes on `topic` (wildcards allowed: subscribers whose pattern
    /// overlaps it receive its messages).
    pub fn publisher(&self, topic: &str) -> Result<Publisher, AttachError> {
        Publisher::attach(Arc::clone(&self.inner), topic)
    }

    /// A tethered subscriber to every topic matching `pattern`, from now on.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscriber, AttachError> {
        self.subscribe_with(pattern, SubscriberOptions::default())
    }

    /// A subscriber with options (lossy, history, wait strategy).
    ///
    /// ```
    /// use shmbus::{Bus, SubscriberOptions, WaitStrategy};
    ///
    /// let bus = Bus::embedded()?;
    /// let mut publisher = bus.publisher("log/app")?;
    /// publisher.publish(b"before")?;
    /// // Lossy: never holds the publisher back; history: also the last message before joining.
    /// let options = SubscriberOptions { lossy: true, history: 1, wait: WaitStrategy::Park };
    /// let mut sub = bus.subscribe_with("log/*", options)?;
    /// publisher.publish(b"after")?;
    /// assert_eq!(sub.recv()?.payload(), b"before");
    /// assert_eq!(sub.recv()?.payload(), b"after");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscriberOptions,
    ) -> Result<Subscriber, AttachError> {
        self.subscribe_all(&[pattern], options)
    }

    /// One subscriber for several patterns; a topic matched by more than one is read once.
    pub fn subscribe_all(
        &self,
        patterns: &[&str],
        options: SubscriberOptions,
    ) -> Result<Subscriber, AttachError> {
        Subscriber::attach(Arc::clone(&self.inner), patterns, options)
    }

    /// A publisher of `T`, serialized with rkyv straight into the ring.
    pub fn typed_publisher<T>(&self, topic: &str) -> Result<TypedPublisher<T>, AttachError> {
        Ok(TypedPublisher::new(self.publisher(topic)?))
    }

    /// A subscriber of `T`, read in place as validated `rkyv` archives.
    pub fn typed_subscriber<T>(&self, pattern: &str) -> Result<TypedSubscriber<T>, AttachError> {
        Ok(TypedSubscriber::new(self.subscribe(pattern)?))
    }
}
