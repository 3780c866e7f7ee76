//! Which relayed messages this broker has taken already: around a cycle of peers a message can
//! arrive twice, and only the first is delivered and passed on.
//!
//! A message is named by its origin broker, its publisher there and its sequence number in that
//! publisher's ring. Every link carries one publisher's messages in order, so one high-water
//! mark per (origin, publisher) tells a new message from one already taken. The marks live in
//! two generations: when the current one is full, it becomes the old one and the old one is
//! dropped, so memory is bounded and only marks unused for a whole generation are forgotten.

use std::collections::HashMap;

use crate::protocol::remote::NodeId;

/// How many publishers' marks one generation holds.
const GENERATION: usize = 64 * 1024;

/// The high-water marks of the messages taken.
#[derive(Default)]
pub(super) struct Seen {
    current: HashMap<(NodeId, u32), u64>,
    old: HashMap<(NodeId, u32), u64>,
}

impl Seen {
    /// Whether message `sequence` of `publisher` at `origin` is new; it is taken if it is.
    pub(super) fn take(&mut self, origin: NodeId, publisher: u32, sequence: u64) -> bool {
        let key = (origin, publisher);
        let mark = match self.current.get(&key) {
            Some(&mark) => Some(mark),
            None => self.old.remove(&key),
        };
        self.keep(key, mark.map_or(sequence, |mark| mark.max(sequence)));
        mark.is_none_or(|mark| sequence > mark)
    }

    fn keep(&mut self, key: (NodeId, u32), mark: u64) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&key) {
            self.old = std::mem::take(&mut self.current);
        }
        self.current.insert(key, mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_taken_once_whichever_way_it_comes() {
        let mut seen = Seen::default();
        assert!(seen.take(1, 5, 10));
        assert!(!seen.take(1, 5, 10));
        assert!(!seen.take(1, 5, 9));
        assert!(seen.take(1, 5, 11));
        // Another publisher, another origin: their own marks.
        assert!(seen.take(1, 6, 10));
        assert!(seen.take(2, 5, 10));
    }

    #[test]
    fn marks_survive_one_generation_change_and_memory_stays_bounded() {
        let mut seen = Seen::default();
        assert!(seen.take(9, 0, 100));
        for publisher in 1..=GENERATION as u32 {
            assert!(seen.take(1, publisher, 1));
        }
        // Publisher 0's mark moved to the old generation, and is still known.
        assert!(!seen.take(9, 0, 100));
        assert!(seen.current.len() + seen.old.len() <= 2 * GENERATION);
    }
}
