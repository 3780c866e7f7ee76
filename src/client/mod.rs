//! The Rust client API: connect to a bus ([`Bus`]), then one module per messaging pattern
//! ([`pubsub`], [`reqrep`], [`state`]).
//!
//! After attaching, messages never pass through the broker: publishers write into shared-memory
//! rings and subscribers read them in place. If the broker dies, rings already attached keep
//! working and new attachments fail with [`ControlError::BrokerGone`]; the bus reconnects by
//! itself when a broker is back at its address, and every handle registers again (see
//! `connection` for how).

mod broker_identity;
mod bus;
mod connection;
mod error;
pub mod pubsub;
mod remote;
pub mod reqrep;
mod schema;
pub mod state;

pub use bus::{Bus, BusBuilder};
pub use error::{AttachError, ConnectError, ControlError};
pub use schema::Schema;
