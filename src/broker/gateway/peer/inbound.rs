//! The publishers through which peering puts relayed messages into this broker's rings: one per
//! topic, shared by every link. A relayed message is taken, passed on and published under its
//! topic's lock, so that the messages of one origin leave this broker — into its rings and on to
//! other peers — in the order they were taken, whichever link brought each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::{Publisher, Topic};

/// Most topics with a publisher of relayed messages; past that, those not in use are let go
/// (and made again as needed).
const MAX_TOPICS: usize = 4096;

/// One topic's publisher of relayed messages, made with its first message.
pub(super) type TopicSlot = Arc<Mutex<Option<Publisher>>>;

/// The topics' slots.
#[derive(Default)]
pub(super) struct Inbound {
    topics: Mutex<HashMap<String, TopicSlot>>,
}

impl Inbound {
    /// The slot of `topic`, to lock while taking, passing on and publishing one message.
    pub(super) fn slot(&self, topic: &Topic) -> TopicSlot {
        let mut topics = lock(&self.topics);
        if let Some(slot) = topics.get(topic.as_str()) {
            return Arc::clone(slot);
        }
        if topics.len() >= MAX_TOPICS {
            // A slot some link holds now stays, so that its topic keeps one lock.
            topics.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot = TopicSlot::default();
        topics.insert(topic.as_str().to_string(), Arc::clone(&slot));
        slot
    }

    /// Lets go of every publisher (the gateway is stopping).
    pub(super) fn clear(&self) {
        lock(&self.topics).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_keeps_one_slot_while_it_is_used() {
        let inbound = Inbound::default();
        let topic = Topic::new("a/b").unwrap();
        let held = inbound.slot(&topic);
        assert!(Arc::ptr_eq(&held, &inbound.slot(&topic)));
        for i in 0..MAX_TOPICS {
            inbound.slot(&Topic::new(&format!("t/{i}")).unwrap());
        }
        // Full: the idle slots went, the one held stayed.
        assert!(Arc::ptr_eq(&held, &inbound.slot(&topic)));
        assert!(lock(&inbound.topics).len() <= MAX_TOPICS);
    }
}
