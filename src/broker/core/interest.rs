//! The patterns this broker's subscribers hold, for the gateway's peer links: what the broker
//! tells its peers it wants. The event loop keeps the board; peering threads read it and wait
//! for it to change.
//!
//! The gateway's own peer connection (see [`is_peer_link`]) does not count: what it subscribes
//! to is what *other* brokers want, and counting it would echo their interest back to them.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// The name the gateway's peer connection greets the broker with.
pub(crate) const PEER_LINK_NAME: &str = "shmbus-peer-link";

/// Whether a client with this name and pid is the gateway's peer connection: it greets with
/// [`PEER_LINK_NAME`] from the broker's own process, which no other process can claim.
pub(crate) fn is_peer_link(name: &str, pid: i32) -> bool {
    name == PEER_LINK_NAME && u32::try_from(pid).is_ok_and(|pid| pid == std::process::id())
}

/// Pattern subscriptions of local clients, counted per pattern.
#[derive(Default)]
pub(crate) struct InterestBoard {
    state: Mutex<Board>,
    /// Signalled when the set of patterns changes.
    changed: Condvar,
}

#[derive(Default)]
struct Board {
    counts: BTreeMap<String, usize>,
    /// Grows whenever a pattern appears or disappears.
    generation: u64,
}

impl InterestBoard {
    /// One more subscription to `pattern`.
    pub(crate) fn add(&self, pattern: &str) {
        let mut board = lock(&self.state);
        let count = board.counts.entry(pattern.to_string()).or_default();
        *count += 1;
        if *count == 1 {
            board.generation += 1;
            self.changed.notify_all();
        }
    }

    /// One subscription to `pattern` fewer.
    pub(crate) fn remove(&self, pattern: &str) {
        let mut board = lock(&self.state);
        let Some(count) = board.counts.get_mut(pattern) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            board.counts.remove(pattern);
            board.generation += 1;
            self.changed.notify_all();
        }
    }

    /// The patterns held now, and the generation they are of.
    pub(crate) fn snapshot(&self) -> (u64, Vec<String>) {
        let board = lock(&self.state);
        (board.generation, board.counts.keys().cloned().collect())
    }

    /// Waits until the generation is past `seen`, for at most `timeout`; returns whether it is.
    pub(crate) fn wait_past(&self, seen: u64, timeout: Duration) -> bool {
        let board = lock(&self.state);
        let (board, _) = self
            .changed
            .wait_timeout_while(board, timeout, |b| b.generation <= seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        board.generation > seen
    }

    /// Wakes every waiter (to look at something else, such as a stop flag).
    pub(crate) fn wake(&self) {
        let _board = lock(&self.state);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_counts_until_its_last_subscription_goes() {
        let board = InterestBoard::default();
        board.add("a/**");
        board.add("a/**");
        let (first, patterns) = board.snapshot();
        assert_eq!(patterns, ["a/**"]);
        board.remove("a/**");
        assert_eq!(board.snapshot(), (first, vec!["a/**".to_string()]));
        board.remove("a/**");
        let (last, patterns) = board.snapshot();
        assert!(patterns.is_empty());
        assert!(last > first);
        assert!(board.wait_past(first, Duration::ZERO));
        assert!(!board.wait_past(last, Duration::from_millis(1)));
    }

    #[test]
    fn only_this_process_can_be_the_peer_link() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(is_peer_link(PEER_LINK_NAME, me));
        assert!(!is_peer_link(PEER_LINK_NAME, me + 1));
        assert!(!is_peer_link("shmbus-gateway", me));
    }
}
