//! The patterns this broker's subscribers hold and the topics its servers serve, for the
//! gateway's peer links: what the broker tells its peers it wants and offers. The event loop
//! keeps the board; peering threads read it and wait for it to change.
//!
//! The gateway's own peer connection (see [`is_peer_link`]) does not count: what it subscribes
//! to is what *other* brokers want, what it serves other brokers serve, and counting either would
//! echo them back.

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

/// What the board counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    /// A pattern subscription.
    Pattern,
    /// A served topic.
    Served,
}

/// Pattern subscriptions and served topics of local clients, each counted.
#[derive(Default)]
pub(crate) struct InterestBoard {
    state: Mutex<Board>,
    /// Signalled when the set of patterns changes.
    changed: Condvar,
}

#[derive(Default)]
struct Board {
    patterns: BTreeMap<String, usize>,
    served: BTreeMap<String, usize>,
    /// Grows whenever a pattern or served topic appears or disappears.
    generation: u64,
}

impl Board {
    fn counts(&mut self, held: Held) -> &mut BTreeMap<String, usize> {
        match held {
            Held::Pattern => &mut self.patterns,
            Held::Served => &mut self.served,
        }
    }
}

/// What the board holds at one generation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) patterns: Vec<String>,
    pub(crate) served: Vec<String>,
}

impl InterestBoard {
    /// One more subscription to a pattern, or server of a topic, `what`.
    pub(crate) fn add(&self, held: Held, what: &str) {
        let mut board = lock(&self.state);
        let count = board.counts(held).entry(what.to_string()).or_default();
        *count += 1;
        if *count == 1 {
            board.generation += 1;
            self.changed.notify_all();
        }
    }

    /// One subscription to a pattern, or server of a topic, `what` fewer.
    pub(crate) fn remove(&self, held: Held, what: &str) {
        let mut board = lock(&self.state);
        let counts = board.counts(held);
        let Some(count) = counts.get_mut(what) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            counts.remove(what);
            board.generation += 1;
            self.changed.notify_all();
        }
    }

    /// What the board holds now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let board = lock(&self.state);
        Snapshot {
            generation: board.generation,
            patterns: board.patterns.keys().cloned().collect(),
            served: board.served.keys().cloned().collect(),
        }
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
        board.add(Held::Pattern, "a/**");
        board.add(Held::Pattern, "a/**");
        board.add(Held::Served, "calc/add");
        let first = board.snapshot();
        assert_eq!(first.patterns, ["a/**"]);
        assert_eq!(first.served, ["calc/add"]);
        board.remove(Held::Pattern, "a/**");
        assert_eq!(board.snapshot(), first);
        board.remove(Held::Pattern, "a/**");
        board.remove(Held::Served, "calc/add");
        let last = board.snapshot();
        assert!(last.patterns.is_empty() && last.served.is_empty());
        assert!(last.generation > first.generation);
        assert!(board.wait_past(first.generation, Duration::ZERO));
        assert!(!board.wait_past(last.generation, Duration::from_millis(1)));
    }

    #[test]
    fn only_this_process_can_be_the_peer_link() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(is_peer_link(PEER_LINK_NAME, me));
        assert!(!is_peer_link(PEER_LINK_NAME, me + 1));
        assert!(!is_peer_link("shmbus-gateway", me));
    }
}
