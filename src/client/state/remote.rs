//! Owning a collection through a gateway: the remote side of a
//! [`StatePublisher`](super::StatePublisher).
//!
//! The gateway owns the collection on the owner's behalf and makes the changes it is sent
//! ([`Frame::Change`]), unanswered: the owner checks what it can (keys, sizes, the quota)
//! itself, and a change the gateway still cannot make is reported later and returned by the
//! owner's next call. When the link is lost, changes go on into the owner's own entries; the
//! first call after the reconnection owns the collection again with the owner's whole content,
//! which replaces the collection's ([`Own::replace`]).

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::client::error::ControlError;
use crate::client::remote::{RemoteCallError, RemoteInner};
use crate::protocol::remote::{self, Frame, Own, Refusal};
use crate::protocol::state::Record;
use crate::sync::lock;
use crate::topic::Topic;
use crate::transport::wire::{SendError, Wire};

/// Most bytes of changes gathered into one write when owning again.
const BATCH: usize = 64 * 1024;

/// An owner's content, as it is sent when it owns again.
pub(super) struct Content<'a> {
    /// Every entry.
    pub(super) entries: &'a foldhash::HashMap<String, Vec<u8>>,
    /// The restart counter.
    pub(super) restarted: u64,
}

/// A collection owned through a gateway.
pub(super) struct RemoteOwner {
    pub(super) bus: Arc<RemoteInner>,
    /// The owner's id on the connection.
    pub(super) id: u32,
    /// The link the collection is owned on; another link up means owning again.
    owned_on: Weak<Wire>,
    /// A change the gateway could not make, not reported yet.
    failure: Arc<Mutex<Option<Refusal>>>,
}

impl RemoteOwner {
    /// Owns collection `topic` through `bus`, starting from its content; returns the owner,
    /// the largest value and the most bytes the collection may hold.
    pub(super) fn own(
        bus: &Arc<RemoteInner>,
        topic: &Topic,
        persistent: bool,
    ) -> Result<(RemoteOwner, u32, u64), RemoteCallError> {
        let id = bus.bus.next_id();
        let failure = Arc::default();
        let own = Own {
            id,
            topic: topic.as_str().to_string(),
            persistent,
            replace: false,
        };
        let (max_value, max_bytes, wire) = bus.bus.own(own, &failure)?;
        let owner = RemoteOwner {
            bus: Arc::clone(bus),
            id,
            owned_on: Arc::downgrade(&wire),
            failure,
        };
        Ok((owner, max_value, max_bytes))
    }

    /// The change the gateway reported it could not make, if any (once).
    pub(super) fn failed(&self) -> Result<(), ControlError> {
        match lock(&self.failure).take() {
            Some(refusal) => Err(ControlError::Protocol {
                detail: refusal.message,
            }),
            None => Ok(()),
        }
    }

    /// Whether a link other than the one the collection is owned on is up.
    pub(super) fn is_stale(&self) -> bool {
        match self.bus.bus.wire(Some(Instant::now())) {
            Some(wire) => !self
                .owned_on
                .upgrade()
                .is_some_and(|owned_on| Arc::ptr_eq(&owned_on, &wire)),
            None => false,
        }
    }

    /// Sends `change` on the link the collection is owned on, waiting for room. On a link that
    /// is gone it is not sent: owning again sends the whole content.
    pub(super) fn send(&self, change: Record<'_>) {
        if let Some(wire) = self.owned_on.upgrade() {
            let _ = wire.send(&Frame::Change {
                owner: self.id,
                change,
            });
        }
    }

    /// Owns `topic` again on the link now up, with `content` replacing the collection's.
    /// Returns the most bytes the collection may hold, or `None` when the link went down
    /// meanwhile (the next call tries again).
    pub(super) fn own_again(
        &mut self,
        topic: &Topic,
        persistent: bool,
        content: Content<'_>,
    ) -> Result<Option<u64>, RemoteCallError> {
        let own = Own {
            id: self.id,
            topic: topic.as_str().to_string(),
            persistent,
            replace: true,
        };
        let (_, max_bytes, wire) = match self.bus.bus.own(own, &self.failure) {
            Ok(owned) => owned,
            Err(RemoteCallError::Control(ControlError::BrokerGone)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match replace(&wire, self.id, content) {
            Ok(()) => {
                self.owned_on = Arc::downgrade(&wire);
                Ok(Some(max_bytes))
            }
            Err(SendError::Closed(_)) => Ok(None),
            Err(SendError::Timeout) => Err(RemoteCallError::Control(ControlError::Timeout)),
        }
    }
}

impl Drop for RemoteOwner {
    fn drop(&mut self) {
        self.bus.bus.disown(self.id);
    }
}

/// Sends owner `owner`'s whole content on `wire`, then [`Frame::Settle`]: the gateway removes
/// what the content does not hold.
fn replace(wire: &Wire, owner: u32, content: Content<'_>) -> Result<(), SendError> {
    let mut batch = Vec::new();
    let changes = content
        .entries
        .iter()
        .map(|(key, value)| Record::Put { key, value })
        .chain([Record::Restarted(content.restarted)]);
    for change in changes {
        remote::encode(&Frame::Change { owner, change }, &mut batch);
        if batch.len() >= BATCH {
            wire.send_encoded(&batch, None)?;
            batch.clear();
        }
    }
    remote::encode(&Frame::Settle { owner }, &mut batch);
    wire.send_encoded(&batch, None)
}
