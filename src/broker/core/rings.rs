//! Rings by topic: creating one on a topic's first publish (and attaching every matching
//! subscription to it), and releasing those nobody uses any more.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use shmbus_shm::Ring;
use tracing::{info, warn};

use super::{Core, Outgoing, error};
use crate::protocol::{BrokerMessage, ErrorCode, ErrorReply};
use crate::topic::{Topic, overlaps};

/// A ring the broker created.
pub(super) struct RingEntry {
    pub ring: Ring,
    /// A read-only descriptor of the data segment, duplicated for each subscriber.
    pub read_only_data: OwnedFd,
    /// Since when nobody publishes or reads on it, if so.
    pub idle_since: Option<Instant>,
}

impl Core {
    /// Creates the ring for `topic` and reserves readers on it for every matching subscription,
    /// so that they miss nothing its first publisher writes.
    pub(super) fn create_ring(
        &mut self,
        topic: &Topic,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ErrorReply> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            error(
                ErrorCode::Internal,
                format!("{what} ring for {topic:?}: {e}"),
            )
        };
        let ring =
            Ring::create(&self.limits.ring, &self.doorbells).map_err(|e| internal("create", &e))?;
        let read_only_data = ring
            .data_fd_read_only()
            .expect("memfd rings have descriptors")
            .map_err(|e| internal("reopen", &e))?;
        info!(topic = %topic, "ring created");
        self.rings.insert(
            topic.as_str().to_string(),
            RingEntry {
                ring,
                read_only_data,
                idle_since: None,
            },
        );
        let matching: Vec<_> = self
            .clients
            .iter()
            .flat_map(|(client, c)| {
                c.subscriptions
                    .iter()
                    .filter(|(_, s)| overlaps(&s.pattern, topic))
                    .map(move |(&sub, _)| (client, sub))
            })
            .collect();
        for (client, sub) in matching {
            match self.attach(client, sub, topic.as_str()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    warn!(client = %client, subscription = %sub, topic = %topic, "cannot attach reader: {}", e.message);
                    // The subscriber learns it misses this topic rather than wait for it forever.
                    let msg = BrokerMessage::RingUnavailable {
                        subscription: sub,
                        topic: topic.as_str().to_string(),
                        error: e,
                    };
                    out.push(Outgoing::to(client, msg));
                }
            }
        }
        Ok(())
    }

    /// Forgets rings nobody has published on or read from for `idle_for`: no publisher or reader
    /// slot in use and no publisher registered. The memfds go once the last process that mapped
    /// them lets go. A topic published on again gets a fresh ring (with no history).
    pub(crate) fn collect_idle_rings(&mut self, now: Instant, idle_for: Duration) {
        let published: BTreeSet<&str> = self
            .clients
            .iter()
            .flat_map(|(_, c)| c.publishers.values().map(String::as_str))
            .collect();
        let mut gone = Vec::new();
        for (topic, entry) in &mut self.rings {
            let idle = entry.ring.writers().is_empty()
                && entry.ring.readers().is_empty()
                && !published.contains(topic.as_str())
                && !self.repairs_pending.contains_key(topic);
            match (idle, entry.idle_since) {
                (false, _) => entry.idle_since = None,
                (true, None) => entry.idle_since = Some(now),
                (true, Some(since)) if now.duration_since(since) >= idle_for => {
                    gone.push(topic.clone())
                }
                (true, Some(_)) => {}
            }
        }
        for topic in gone {
            self.rings.remove(&topic);
            info!(topic, "idle ring released");
        }
    }

    /// Duplicates descriptors to send along a reply.
    pub(super) fn duplicate(
        topic: &str,
        fds: impl IntoIterator<Item = std::io::Result<OwnedFd>>,
    ) -> Result<Vec<OwnedFd>, ErrorReply> {
        fds.into_iter().collect::<Result<_, _>>().map_err(|e| {
            error(
                ErrorCode::Internal,
                format!("duplicate the descriptors of ring {topic:?}: {e}"),
            )
        })
    }
}
