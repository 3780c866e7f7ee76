//! shmbus: a shared-memory publish/subscribe bus for processes on one host.
//!
//! A broker hands out one ring per topic over a Unix socket; publishers write messages straight
//! into the rings and subscribers read them in place, so after attaching no message passes
//! through the broker or the kernel.
//!
//! ```
//! use shmbus::Bus;
//!
//! let bus = Bus::embedded()?;                         // or Bus::connect_default()?
//! let mut sub = bus.subscribe("chat/**")?;            // every topic under chat/, now and later
//! let mut publisher = bus.publisher("chat/lobby")?;
//! publisher.publish(b"hello")?;                       // written into shared memory
//! let msg = sub.recv()?;                              // read in place, zero copy
//! assert_eq!((msg.topic(), msg.payload()), ("chat/lobby", &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Request/response goes through shared memory too: [`Bus::serve`] (one server per topic),
//! [`Bus::request`] and [`Bus::request_stream`], a [`Requester`] for requests written in place
//! and typed ones, and callbacks ([`Bus::serve_with`], [`Bus::on`]); see the `reqrep` module of
//! the client for the design.
//!
//! Options go through builders — [`Bus::subscriber`], [`Bus::publisher_builder`],
//! [`Bus::builder`], [`Broker::builder`] — and typed (rkyv) messages through their `typed`
//! step. Every blocking call has a `try_` twin that never waits and `_timeout`/`_deadline` twins
//! that give up with an error. The rings themselves are in [`shmbus_shm`].
//!
//! Layers, in `src/`: [`topic`] (grammar and matching), `protocol` (the control messages, one
//! module per messaging pattern), [`broker`] (an I/O-free core that decides, and the event loop
//! around it), `client` (the API above, one module per pattern), and the `shmbus` command line
//! behind the default feature `cli` (an embedder with `default-features = false` compiles none of
//! its dependencies).

pub mod address;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod bench;
pub mod broker;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod client;
#[doc(hidden)]
pub mod protocol;
mod sync;
pub mod topic;
mod transport;

pub use address::BusAddress;
pub use broker::{Broker, BrokerBuilder, BrokerError, BrokerHandle};
pub use client::pubsub::{
    Loan, OwnedSample, OwnedTypedSample, PublishError, PublishTimeoutError, Publisher,
    PublisherBuilder, RecvError, RecvTimeoutError, RingSerializer, Sample, Subscriber,
    SubscriberBuilder, TryPublishError, TryRecvError, TypedPublisher, TypedPublisherBuilder,
    TypedSample, TypedSubscriber, TypedSubscriberBuilder,
};
pub use client::reqrep::{
    Dispatcher, OwnedRequest, Request, RequestError, Requester, RespondError, Responder, Response,
    ResponseSender, ResponseStream, ServeError, Server, TypedResponse,
};
pub use client::state::{
    StateError, StateEvent, StatePublisher, StatePublisherBuilder, StateValue, StateWatcher,
    StateWatcherBuilder, WatchError,
};
pub use client::{AttachError, Bus, BusBuilder, ConnectError, ControlError, Schema};
pub use protocol::pubsub::Holder;
pub use protocol::{ErrorCode, PublisherId, RingId};
/// The rkyv this crate serializes typed messages with (0.8): derive `rkyv::Archive` and
/// `rkyv::Serialize` through it to get the same version.
pub use rkyv;
pub use shmbus_shm::WaitStrategy;
pub use topic::Topic;
pub use transport::tls::{TlsClientFiles, TlsError, TlsServerFiles};
