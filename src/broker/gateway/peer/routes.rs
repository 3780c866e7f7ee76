//! Which peer link leads to each broker that wants something, and what it wants.
//!
//! Every broker floods its interest (its subscribers' patterns, with a version that grows at
//! every change and refresh) to its peers, and passes on every newer interest it learns to its
//! other peers. Each keeps, per origin, the newest interest and the link it arrived on first:
//! that link is the way back to the origin, so following the first arrivals from any broker
//! leads to the origin without a loop. A link carries a message when some origin reached
//! through it wants the message's topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Topic;
use crate::protocol::remote::{Interest, NodeId};
use crate::topic::overlaps;

/// Most brokers whose interest one broker keeps; the interest of more is ignored.
pub(super) const MAX_ORIGINS: usize = 256;

/// A peer link, numbered by this broker.
pub(super) type LinkId = u64;

/// The newest interest of every origin this broker knows of.
#[derive(Default)]
pub(super) struct Routes {
    origins: HashMap<NodeId, Route>,
}

/// One origin's newest interest and the link it came through first.
struct Route {
    interest: Interest,
    /// Its patterns, parsed (those that do not parse are left out).
    patterns: Vec<Topic>,
    via: LinkId,
    learned: Instant,
}

impl Routes {
    /// Takes `interest`, arrived on `via`, if it is newer than what is known of its origin (and
    /// there is room for a new origin); returns whether it was taken.
    pub(super) fn learn(&mut self, interest: &Interest, via: LinkId, now: Instant) -> bool {
        match self.origins.get(&interest.origin) {
            Some(known) if known.interest.version >= interest.version => return false,
            None if self.origins.len() >= MAX_ORIGINS => return false,
            _ => {}
        }
        let patterns = interest
            .patterns
            .iter()
            .filter_map(|p| Topic::new(p).ok())
            .collect();
        let route = Route {
            interest: interest.clone(),
            patterns,
            via,
            learned: now,
        };
        self.origins.insert(interest.origin, route);
        true
    }

    /// Forgets every origin reached through `link` (which is gone): their next refresh finds
    /// another way, if there is one.
    pub(super) fn forget_via(&mut self, link: LinkId) {
        self.origins.retain(|_, r| r.via != link);
    }

    /// Forgets origins not heard of for `max_age`: brokers gone, or cut off.
    pub(super) fn expire(&mut self, now: Instant, max_age: Duration) {
        self.origins
            .retain(|_, r| now.saturating_duration_since(r.learned) <= max_age);
    }

    /// The patterns wanted through `link`: those of every origin it leads to.
    pub(super) fn wanted_via(&self, link: LinkId) -> Vec<Topic> {
        let mut wanted: Vec<Topic> = self
            .origins
            .values()
            .filter(|r| r.via == link)
            .flat_map(|r| r.patterns.iter().cloned())
            .collect();
        wanted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        wanted.dedup();
        wanted
    }

    /// Every interest known, to tell a new peer.
    pub(super) fn interests(&self) -> impl Iterator<Item = &Interest> {
        self.origins.values().map(|r| &r.interest)
    }
}

/// Whether any of `patterns` matches `topic`.
pub(super) fn wants(patterns: &[Topic], topic: &Topic) -> bool {
    patterns.iter().any(|p| overlaps(p, topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(origin: NodeId, version: u64, patterns: &[&str]) -> Interest {
        Interest {
            origin,
            version,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn strings(topics: Vec<Topic>) -> Vec<String> {
        topics.iter().map(|t| t.as_str().to_string()).collect()
    }

    #[test]
    fn the_first_arrival_of_each_version_is_the_way_back() {
        let now = Instant::now();
        let mut routes = Routes::default();
        assert!(routes.learn(&interest(7, 1, &["a/**"]), 1, now));
        // The same version around the other side of a cycle changes nothing.
        assert!(!routes.learn(&interest(7, 1, &["a/**"]), 2, now));
        assert!(!routes.learn(&interest(7, 0, &["b"]), 2, now));
        assert_eq!(strings(routes.wanted_via(1)), ["a/**"]);
        assert!(routes.wanted_via(2).is_empty());
        // A newer version may come the other way first.
        assert!(routes.learn(&interest(7, 2, &["a/**", "c"]), 2, now));
        assert!(routes.wanted_via(1).is_empty());
        assert_eq!(strings(routes.wanted_via(2)), ["a/**", "c"]);
    }

    #[test]
    fn origins_behind_a_lost_link_or_long_silent_are_forgotten() {
        let now = Instant::now();
        let mut routes = Routes::default();
        routes.learn(&interest(7, 1, &["a"]), 1, now);
        routes.learn(&interest(8, 1, &["b", "a"]), 1, now);
        routes.learn(&interest(9, 1, &["c"]), 2, now + Duration::from_secs(5));
        assert_eq!(strings(routes.wanted_via(1)), ["a", "b"]);
        routes.forget_via(1);
        assert!(routes.wanted_via(1).is_empty());
        assert_eq!(routes.interests().count(), 1);
        routes.expire(now + Duration::from_secs(20), Duration::from_secs(10));
        assert_eq!(routes.interests().count(), 0);
    }

    #[test]
    fn the_number_of_origins_is_bounded() {
        let now = Instant::now();
        let mut routes = Routes::default();
        for origin in 0..MAX_ORIGINS as u64 {
            assert!(routes.learn(&interest(origin, 1, &["a"]), 1, now));
        }
        assert!(!routes.learn(&interest(u64::MAX, 1, &["a"]), 1, now));
        // Those known still move on.
        assert!(routes.learn(&interest(0, 2, &["b"]), 1, now));
    }

    #[test]
    fn wildcards_match_as_they_do_locally() {
        let patterns = vec![Topic::new("a/*").unwrap(), Topic::new("b/**").unwrap()];
        let t = |s| Topic::new(s).unwrap();
        assert!(wants(&patterns, &t("a/x")));
        assert!(wants(&patterns, &t("b/x/y")));
        assert!(!wants(&patterns, &t("a/x/y")));
        assert!(!wants(&patterns, &t("c")));
    }
}
