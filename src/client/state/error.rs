//! What can go wrong when changing a collection, and when watching.

use crate::client::ControlError;

/// Why a change of a collection (or a sync) failed. Each names the collection and the key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The key is not a valid key (empty, `/`, NUL, over 255 bytes).
    #[error("collection {topic:?}: {reason}")]
    InvalidKey {
        /// The collection.
        topic: String,
        /// What is wrong with the key.
        reason: String,
    },
    /// The value is larger than the collection allows.
    #[error(
        "collection {topic:?}, key {key:?}: a value of {len} bytes exceeds the limit of {max} bytes"
    )]
    TooLarge {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
        /// The largest value allowed.
        max: usize,
    },
    /// The put would take the collection beyond the bytes (keys and values together) the broker
    /// allows one collection (`shmbus broker --max-state-bytes`).
    #[error("collection {topic:?}, key {key:?}: the collection would exceed its {max} bytes")]
    Full {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// The most bytes a collection may hold.
        max: u64,
    },
    /// `remove` of a key the collection does not hold.
    #[error("collection {topic:?}: no key {key:?} to remove")]
    MissingKey {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
    },
    /// A typed value could not be serialized.
    #[error("collection {topic:?}, key {key:?}: cannot serialize the value: {detail}")]
    Serialize {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// Why.
        detail: String,
    },
    /// The change could not be written into the collection's ring.
    #[error("collection {topic:?}: cannot write the change: {detail}")]
    Ring {
        /// The collection.
        topic: String,
        /// Why.
        detail: String,
    },
    /// The broker could not be asked (sync).
    #[error("collection {topic:?}: {source}")]
    Broker {
        /// The collection.
        topic: String,
        /// What happened.
        #[source]
        source: ControlError,
    },
}

/// Why a watcher has no event to give.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchError {
    /// Nothing there (`try_recv`).
    #[error("no state change is waiting")]
    Empty,
    /// The time given passed first.
    #[error("no state change came in time")]
    Timeout,
    /// A snapshot could not be had or read; the watcher asks again at its next receive.
    #[error("state {pattern:?}: cannot get a snapshot: {detail}")]
    Snapshot {
        /// The pattern or collection the snapshot was for.
        pattern: String,
        /// Why.
        detail: String,
    },
    /// A collection's ring cannot be read (no free reader slot): its changes are missed.
    #[error("collection {topic:?}: cannot be watched: {detail}")]
    Unavailable {
        /// The collection.
        topic: String,
        /// Why.
        detail: String,
    },
}
