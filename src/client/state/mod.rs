//! State collections (key/value, in the style of EVE's pubsub): a [`StatePublisher`] owns the
//! collection of one topic; [`StateWatcher`]s mirror every collection their patterns match.
//!
//! ```
//! use shmbus::Bus;
//! use shmbus::StateEvent;
//!
//! let bus = Bus::embedded()?;
//! let mut links = bus.state_publisher("net/links")?;
//! links.put("eth0", b"up")?;
//! let mut watcher = bus.watch_state("net/*")?;
//! // First the current content, then `Synchronized`, then live changes.
//! assert!(matches!(watcher.recv()?, StateEvent::Created { key, .. } if &*key == "eth0"));
//! assert!(matches!(watcher.recv()?, StateEvent::Synchronized));
//! links.put("eth0", b"down")?;
//! match watcher.recv()? {
//!     StateEvent::Modified { old, new, .. } => {
//!         assert_eq!((&*old, &*new), (&b"up"[..], &b"down"[..]))
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(watcher.get("net/links", "eth0").map(|v| &**v), Some(&b"down"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it works: each collection has a ring in shared memory; its owner writes each change into
//! it as a numbered record, and watchers read the records in place, like messages. The broker's
//! *keeper* thread reads every collection's ring too: it holds the mirror from which a new
//! watcher (or a returning owner) gets its snapshot, and writes persistent collections to the
//! broker's state directory, one file per key, crash-safe. A watcher attaches to the rings
//! first, then asks for the snapshot, which the keeper makes only after reading every ring to its
//! end: each change is then in the snapshot or read from the ring after it, never both, never
//! neither (`docs/PROTOCOL.md`, "State collections").

mod error;
mod publisher;
mod remote;
mod value;
mod watcher;

pub use error::{StateError, WatchError};
pub(crate) use publisher::GiveUp;
pub use publisher::{StatePublisher, StatePublisherBuilder};
pub use value::StateValue;
pub(crate) use watcher::watch_rings;
pub use watcher::{StateEvent, StateWatcher, StateWatcherBuilder};

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use crate::client::bus::BusInner;
use crate::client::error::CallError;
use crate::protocol::state::StateSnapshot;

/// Asks the keeper for a snapshot of the collections `pattern` matches; its bytes.
pub(crate) fn fetch_snapshot(bus: &BusInner, pattern: &str) -> Result<Vec<u8>, CallError> {
    let (ready, fds) = bus.conn.call(StateSnapshot {
        pattern: pattern.to_string(),
    })?;
    let bad = |detail: String| CallError::Request(crate::client::ControlError::Protocol { detail });
    let fd: OwnedFd = fds
        .into_iter()
        .next()
        .ok_or_else(|| bad("a snapshot came without its memfd".into()))?;
    let file = std::fs::File::from(fd);
    let size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    if ready.len > size {
        return Err(bad(format!(
            "a snapshot of {} bytes in a memfd of {size}",
            ready.len
        )));
    }
    let mut bytes = vec![0; ready.len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| bad(e.to_string()))?;
    Ok(bytes)
}
