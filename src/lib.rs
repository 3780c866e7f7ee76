//! shmbus: a shared-memory publish/subscribe and request/response bus for processes on one host.
//!
//! This crate holds the topics, the control protocol, the broker, the Rust client API and the CLI.
//! The lock-free rings themselves live in [`shmbus_shm`].

pub mod protocol;
pub mod topic;
