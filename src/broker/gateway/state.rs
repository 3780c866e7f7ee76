//! State collections for a remote client at the gateway: the collections it owns, and the
//! snapshots it asks for. (Its watchers are subscriptions of the state rings: see
//! `connection`.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{in_use, refusal};
use crate::client::Bus;
use crate::client::state::GiveUp;
use crate::protocol::ErrorCode;
use crate::protocol::remote::{Frame, Own, Refusal};
use crate::protocol::state::Record;
use crate::transport::wire::{SendError, Wire};
use crate::{StateError, StatePublisher};

/// Most collections one connection owns.
const MAX_OWNERS: usize = 256;

/// The collections one remote client owns, by its ids for them.
#[derive(Default)]
pub(super) struct Owners {
    owners: HashMap<u32, Owner>,
}

/// One collection a remote client owns.
struct Owner {
    publisher: StatePublisher,
    /// While the client's content replaces the collection's (see [`Own::replace`]): the keys
    /// it put so far, each one the collection holds.
    replacing: Option<HashSet<String>>,
}

impl Owners {
    /// Owns a collection on the client's behalf, waiting for room in its ring until `give_up`
    /// says so (the connection or the gateway ends); returns the largest value and the most
    /// bytes the collection may hold.
    pub(super) fn own(
        &mut self,
        bus: &Bus,
        own: Own,
        give_up: &GiveUp,
    ) -> Result<(u32, u64), Refusal> {
        if self.owners.contains_key(&own.id) {
            return Err(in_use(own.id));
        }
        if self.owners.len() >= MAX_OWNERS {
            return Err(Refusal::new(
                ErrorCode::Exhausted,
                format!("at most {MAX_OWNERS} state collections owned per connection"),
            ));
        }
        let mut builder = bus.state_publisher_builder(&own.topic);
        if own.persistent {
            builder = builder.persistent();
        }
        let mut publisher = builder.create().map_err(refusal)?;
        publisher.give_up_when(Arc::clone(give_up));
        let limits = (
            u32::try_from(publisher.max_value()).unwrap_or(u32::MAX),
            publisher.max_bytes(),
        );
        let replacing = own.replace.then(HashSet::new);
        self.owners.insert(
            own.id,
            Owner {
                publisher,
                replacing,
            },
        );
        Ok(limits)
    }

    /// Ends the ownership of owner `id`, if there is one; returns whether there was.
    pub(super) fn disown(&mut self, id: u32) -> bool {
        self.owners.remove(&id).is_some()
    }

    /// Makes a change of owner `id`'s collection. A removal of a key the collection does not
    /// hold changes nothing: it may be one the gateway made already while owning again.
    pub(super) fn change(&mut self, id: u32, change: Record<'_>) -> Result<(), Refusal> {
        let owner = self.owner(id)?;
        let made = match change {
            Record::Put { key, value } => {
                let made = owner.publisher.put(key, value);
                if let (Ok(()), Some(keys)) = (&made, &mut owner.replacing) {
                    keys.insert(key.to_string());
                }
                made
            }
            Record::Remove { key } => {
                if let Some(keys) = &mut owner.replacing {
                    keys.remove(key);
                }
                match owner.publisher.remove(key) {
                    Err(StateError::MissingKey { .. }) => Ok(()),
                    other => other,
                }
            }
            Record::Restarted(count) => owner.publisher.set_restarted(count),
            Record::Clear => {
                return Err(Refusal::new(
                    ErrorCode::NotPermitted,
                    "an owner does not clear",
                ));
            }
        };
        made.map_err(state_refusal)
    }

    /// Ends owner `id`'s replacement of its collection's content: the keys it did not put go.
    pub(super) fn settle(&mut self, id: u32) -> Result<(), Refusal> {
        let owner = self.owner(id)?;
        let Some(kept) = owner.replacing.take() else {
            return Ok(());
        };
        let gone: Vec<String> = (owner.publisher.iter())
            .filter(|(key, _)| !kept.contains(*key))
            .map(|(key, _)| key.to_string())
            .collect();
        for key in gone {
            owner.publisher.remove(&key).map_err(state_refusal)?;
        }
        Ok(())
    }

    /// Waits until the broker has every change of owner `id` made so far.
    pub(super) fn sync(&mut self, id: u32) -> Result<(), Refusal> {
        self.owner(id)?.publisher.sync().map_err(state_refusal)
    }

    fn owner(&mut self, id: u32) -> Result<&mut Owner, Refusal> {
        self.owners.get_mut(&id).ok_or_else(|| {
            Refusal::new(
                ErrorCode::Unknown,
                format!("no state collection owned as {id} on this connection"),
            )
        })
    }
}

/// The refusal for a state error at the gateway.
fn state_refusal(e: StateError) -> Refusal {
    let code = match &e {
        StateError::TooLarge { .. } | StateError::Full { .. } => ErrorCode::Exhausted,
        _ => ErrorCode::Internal,
    };
    Refusal::new(code, e.to_string())
}

/// Sends snapshot `id` of the collections `pattern` matches, in parts of at most `part` bytes,
/// or the refusal to make it; each frame may wait `patience` for room. Fails with the reason to
/// end the connection.
pub(super) fn send_snapshot(
    bus: &Bus,
    wire: &Wire,
    id: u32,
    pattern: &str,
    part: usize,
    patience: Duration,
) -> Result<(), String> {
    let sent = match bus.state_snapshot(pattern) {
        Ok(bytes) => send_parts(wire, id, &bytes, part.max(1), patience),
        Err(e) => {
            let refusal = refusal(e);
            let deadline = Instant::now() + patience;
            wire.send_by(&Frame::Failed { id, refusal }, Some(deadline))
        }
    };
    sent.map_err(|e| format!("cannot send a snapshot: {e:?}"))
}

/// Sends `bytes` as the parts of snapshot `id`, the last one marked (an empty snapshot is one
/// empty part).
fn send_parts(
    wire: &Wire,
    id: u32,
    bytes: &[u8],
    part: usize,
    patience: Duration,
) -> Result<(), SendError> {
    let mut parts: Vec<&[u8]> = bytes.chunks(part).collect();
    if parts.is_empty() {
        parts.push(&[]);
    }
    let last = parts.len() - 1;
    for (n, bytes) in parts.into_iter().enumerate() {
        let frame = Frame::SnapshotPart {
            id,
            last: n == last,
            bytes,
        };
        wire.send_by(&frame, Some(Instant::now() + patience))?;
    }
    Ok(())
}
