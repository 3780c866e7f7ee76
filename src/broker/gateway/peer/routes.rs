//! Which peer link leads to each broker that wants something, and what it wants.
//!
//! Every broker floods its interest (its subscribers' patterns and served topics, with a version
//! that grows at every change and refresh) to its peers, and passes on every newer interest it
//! learns to its other peers. Each keeps, per origin, the newest interest and the link the
//! origin was first learned through, for as long as that link lasts: the way back to the
//! origin, so following the ways back from any broker leads to the origin without a loop. A
//! link carries a message when some origin reached through it wants the message's topic, and
//! requests to the topics those origins serve.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Topic;
use crate::protocol::remote::{Interest, NodeId};
use crate::topic::overlaps;

/// Most brokers whose interest one broker keeps; the interest of more is ignored.
pub(super) const MAX_ORIGINS: usize = 256;

/// How many versions in a row a way back may miss before it is given up.
pub(super) const STALE_VERSIONS: u64 = 3;

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
    /// The topics it serves, parsed (those that are not exact topics are left out).
    served: Vec<Topic>,
    via: LinkId,
    /// The newest version of this origin's interest that came through `via`.
    via_version: u64,
    learned: Instant,
}

impl Routes {
    /// Takes `interest`, arrived on `from`, if it is newer than what is known of its origin (and
    /// there is room for a new origin); returns whether it was taken.
    ///
    /// The way back to an origin is the link it was first learned through, for as long as that
    /// link keeps bringing its versions: a message's way then does not change under it, which
    /// the one-mark-per-publisher duplicate check relies on. A way that has brought none of the
    /// last [`STALE_VERSIONS`] versions is given up for the link that brings them (this also
    /// undoes, within a few refreshes, a way that came to lead back through this broker after
    /// a link was lost).
    pub(super) fn learn(&mut self, interest: &Interest, from: LinkId, now: Instant) -> bool {
        let version = interest.version;
        let full = self.origins.len() >= MAX_ORIGINS;
        let (via, via_version) = match self.origins.get_mut(&interest.origin) {
            Some(known) if known.interest.version >= version => {
                if known.via == from {
                    known.via_version = known.via_version.max(version);
                }
                return false;
            }
            Some(known) if known.via == from => (from, version),
            Some(known) if version.saturating_sub(known.via_version) < STALE_VERSIONS => {
                (known.via, known.via_version)
            }
            Some(_) => (from, version),
            None if full => return false,
            None => (from, version),
        };
        let patterns = interest
            .patterns
            .iter()
            .filter_map(|p| Topic::new(p).ok())
            .collect();
        let served = interest
            .served
            .iter()
            .filter_map(|t| Topic::new(t).ok().filter(|t| !t.is_wildcard()))
            .collect();
        let route = Route {
            interest: interest.clone(),
            patterns,
            served,
            via,
            via_version,
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
        self.via(link, |r| &r.patterns)
    }

    /// The topics served by origins reached through `link`: requests to them go that way.
    pub(super) fn served_via(&self, link: LinkId) -> Vec<Topic> {
        self.via(link, |r| &r.served)
    }

    /// What `of` says of every origin reached through `link`, sorted, without repeats.
    fn via(&self, link: LinkId, of: impl Fn(&Route) -> &Vec<Topic>) -> Vec<Topic> {
        let mut topics: Vec<Topic> = self
            .origins
            .values()
            .filter(|r| r.via == link)
            .flat_map(|r| of(r).iter().cloned())
            .collect();
        topics.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        topics.dedup();
        topics
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
            served: Vec::new(),
        }
    }

    fn strings(topics: Vec<Topic>) -> Vec<String> {
        topics.iter().map(|t| t.as_str().to_string()).collect()
    }

    #[test]
    fn the_first_arrival_is_the_way_back_while_it_brings_the_versions() {
        let now = Instant::now();
        let mut routes = Routes::default();
        assert!(routes.learn(&interest(7, 1, &["a/**"]), 1, now));
        // The same version around the other side of a cycle changes nothing.
        assert!(!routes.learn(&interest(7, 1, &["a/**"]), 2, now));
        assert!(!routes.learn(&interest(7, 0, &["b"]), 2, now));
        assert_eq!(strings(routes.wanted_via(1)), ["a/**"]);
        assert!(routes.wanted_via(2).is_empty());
        // A newer version that comes the other way first changes what is wanted, not the way,
        // as long as the way brings the versions too.
        assert!(routes.learn(&interest(7, 2, &["a/**", "c"]), 2, now));
        assert!(!routes.learn(&interest(7, 2, &["a/**", "c"]), 1, now));
        assert!(routes.wanted_via(2).is_empty());
        assert_eq!(strings(routes.wanted_via(1)), ["a/**", "c"]);
        // A way that stops bringing them is given up.
        for version in 3..3 + STALE_VERSIONS {
            assert!(routes.learn(&interest(7, version, &["a/**"]), 2, now));
        }
        assert!(routes.wanted_via(1).is_empty());
        assert_eq!(strings(routes.wanted_via(2)), ["a/**"]);
        // Once a link is gone, the next version finds another way at once.
        routes.forget_via(2);
        assert!(routes.learn(&interest(7, 10, &["a/**"]), 1, now));
        assert_eq!(strings(routes.wanted_via(1)), ["a/**"]);
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
    fn served_topics_lead_to_their_origin() {
        let now = Instant::now();
        let mut routes = Routes::default();
        let mut offer = interest(7, 1, &[]);
        offer.served = vec!["calc/add".into(), "calc/*".into()];
        routes.learn(&offer, 2, now);
        assert_eq!(strings(routes.served_via(2)), ["calc/add"]);
        assert!(routes.served_via(1).is_empty());
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
