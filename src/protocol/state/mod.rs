//! State collections: owning one, watching them, and the snapshots that start a watcher — on the
//! control socket only to set up; changes travel through shared memory.
//!
//! A collection `T` has a **state ring**, which the broker creates when `T` is first owned
//! ([`OwnState`]). Its owner writes every change into it as a [`Record`], numbered by a
//! per-collection sequence (1, 2, 3, … for the broker's lifetime). Watchers ([`WatchState`]) and
//! the broker's *keeper* read it tethered. The keeper mirrors every collection, writes persistent
//! ones to the state directory, and answers [`StateSnapshot`] with a memfd holding the
//! collections a pattern matches, each with the sequence number it reflects ([`snapshot`]).
//!
//! A watcher attaches its readers first, then asks for the snapshot; the keeper answers only
//! after reading every ring up to where the ring's claim cursor was when asked (waiting for a
//! change claimed before and committed after), so every change is either in the snapshot
//! (sequence ≤ the snapshot's) or read from the ring after it — the watcher skips the records
//! the snapshot already holds, and a gap in the sequence (after an eviction) makes it ask for a
//! new snapshot. When a non-persistent collection's owner goes, the keeper writes one
//! [`Record::Clear`] into its ring: watchers see every entry deleted.

pub mod record;
pub mod snapshot;

use serde::{Deserialize, Serialize};

use super::pubsub::{Publishing, Subscribed};
use super::{Call, Reply, Request};

pub use record::{
    MAX_KEY_LEN, RECORD_HEADER_LEN, RECORD_OVERHEAD, Record, RecordError, check_key, entry_size,
};

/// Own collection `topic` (a concrete topic), exclusively: the broker creates its state ring if
/// needed and answers with [`StateOwned`] (a publisher on it). Refused with `Taken` while another
/// client owns it. Ownership ends with [`Unpublish`](super::pubsub::Unpublish) of that publisher,
/// or when the client goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnState {
    /// The collection's topic.
    pub topic: String,
    /// Whether the broker keeps the collection on disk, across owners and its own restarts.
    pub persistent: bool,
}

/// The answer to [`OwnState`]; carries the ring's data (read-write) and readers descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateOwned {
    /// The owner's publisher on the collection's state ring.
    pub publishing: Publishing,
    /// Most bytes the collection may hold, keys and values together (the broker's keeper
    /// mirrors no more than that).
    pub max_bytes: u64,
}

/// Watch every collection whose topic overlaps `pattern`, now and later. Like
/// [`Subscribe`](super::pubsub::Subscribe), for state rings: the broker attaches a tethered
/// reader to each (sent as [`RingAttached`](super::BrokerMessage::RingAttached)), and answers
/// with [`Subscribed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchState {
    /// Topic pattern (wildcards allowed).
    pub pattern: String,
    /// Index of the doorbell its readers park on (one the client holds).
    pub doorbell: u32,
}

/// Ask for the current content of every collection whose topic overlaps `pattern`. Answered by
/// the keeper, after it has read every state ring to its end, with [`SnapshotReady`] and a memfd
/// in the [`snapshot`] format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// Topic pattern (wildcards allowed).
    pub pattern: String,
}

/// The answer to [`StateSnapshot`]: the memfd that comes with it holds `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReady {
    /// Bytes of the snapshot.
    pub len: u64,
}

/// Answered ([`Reply::Done`]) once the keeper has read every change the owner of `topic` made
/// before asking, and — for a persistent collection — written them to disk. Only the owner may
/// ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The collection's topic.
    pub topic: String,
}

impl Call for OwnState {
    type Reply = StateOwned;

    fn into_request(self) -> Request {
        Request::OwnState(self)
    }

    fn reply(reply: Reply) -> Result<StateOwned, Reply> {
        match reply {
            Reply::StateOwned(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Call for WatchState {
    type Reply = Subscribed;

    fn into_request(self) -> Request {
        Request::WatchState(self)
    }

    fn reply(reply: Reply) -> Result<Subscribed, Reply> {
        match reply {
            Reply::Subscribed(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Call for StateSnapshot {
    type Reply = SnapshotReady;

    fn into_request(self) -> Request {
        Request::StateSnapshot(self)
    }

    fn reply(reply: Reply) -> Result<SnapshotReady, Reply> {
        match reply {
            Reply::SnapshotReady(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Call for SyncState {
    type Reply = ();

    fn into_request(self) -> Request {
        Request::SyncState(self)
    }

    fn reply(reply: Reply) -> Result<(), Reply> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(other),
        }
    }
}
