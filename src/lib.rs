//! shmbus: a shared-memory publish/subscribe and request/response bus for processes on one host.
//!
//! This crate holds the topics, the control protocol, the broker, the Rust client API and the CLI.
//! The lock-free rings themselves live in [`shmbus_shm`].

pub mod address;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod protocol;
pub mod topic;

pub use client::{
    AttachError, Bus, ConnectError, Loan, PublishError, Publisher, RecvError, RequestError, Sample,
    Subscriber, SubscriberOptions, TypedPublisher, TypedSample, TypedSubscriber,
};
pub use shmbus_shm::WaitStrategy;
