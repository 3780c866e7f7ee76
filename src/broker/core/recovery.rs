//! Recovery: repairing what dead publishers left half-written, and evicting tethered readers
//! that hold publishers back without reading.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use shmbus_shm::{Owner, ReaderState, RepairOutcome};
use tracing::{debug, warn};

use super::Core;
use super::clients::owner_client;

/// A tethered reader that has not moved, watched for eviction.
pub(super) struct Stall {
    owner: u64,
    position: u64,
    since: Instant,
}

/// How long a repair may wait for a live publisher that names the same claim before it is
/// reported.
const REPAIR_PATIENCE: Duration = Duration::from_secs(1);

impl Core {
    /// Repairs dead publishers' claims on every ring that has some pending; keeps the rings whose
    /// repair had to be deferred.
    pub(crate) fn repair(&mut self) {
        let clients = &self.clients;
        let alive = |owner: Owner| clients.contains(owner_client(owner.get()));
        let rings = &self.rings;
        self.repairs_pending.retain(|topic, since| {
            let Some(entry) = rings.get(topic) else {
                return false;
            };
            let mut deferred = false;
            for r in entry.ring.repair_dead_writers(alive) {
                match r.outcome {
                    RepairOutcome::Skipped { pos, seq, size } => warn!(
                        topic,
                        seq, pos, size, "repaired a frame a dead publisher left half-written"
                    ),
                    RepairOutcome::Released => {
                        debug!(topic, slot = r.slot, "dead publisher's slot freed")
                    }
                    RepairOutcome::Deferred => deferred = true,
                    RepairOutcome::Corrupt => {
                        warn!(
                            topic,
                            slot = r.slot,
                            "a dead publisher left an impossible claim"
                        )
                    }
                }
            }
            if deferred && since.elapsed() > REPAIR_PATIENCE {
                warn!(
                    topic,
                    "repair deferred for over a second: a live publisher names the same claim"
                );
            }
            deferred
        });
    }

    /// Whether some repair waits to be retried.
    pub(crate) fn repairs_pending(&self) -> bool {
        !self.repairs_pending.is_empty()
    }

    /// Untethers tethered readers that have held publishers back without progress for the
    /// eviction timeout.
    pub(crate) fn evict_stalled(&mut self, now: Instant) {
        let mut seen = HashSet::new();
        for (topic, entry) in &self.rings {
            let head = entry.ring.head();
            let config = entry.ring.config();
            let max_frame = u64::from(config.max_payload) + 64;
            for r in entry.ring.readers() {
                if r.state != ReaderState::Tethered {
                    continue;
                }
                // Only a reader that leaves publishers less than a frame of room holds them back.
                let blocking = head.position + max_frame > r.position + config.capacity;
                let key = (topic.clone(), r.slot);
                if !blocking {
                    self.stalls.remove(&key);
                    continue;
                }
                seen.insert(key.clone());
                let fresh = Stall {
                    owner: r.owner,
                    position: r.position,
                    since: now,
                };
                let stall = self.stalls.entry(key).or_insert(fresh);
                if stall.owner != r.owner || stall.position != r.position {
                    *stall = Stall {
                        owner: r.owner,
                        position: r.position,
                        since: now,
                    };
                    continue;
                }
                let stalled_for = now.duration_since(stall.since);
                if stalled_for >= self.limits.evict_after && entry.ring.untether_reader(r.slot) {
                    entry.ring.wake_readers();
                    let client = owner_client(r.owner);
                    let pid = self.clients.get(client).map(|c| c.creds.pid);
                    warn!(
                        topic,
                        slot = r.slot,
                        client = %client,
                        pid,
                        ?stalled_for,
                        "reader evicted: it held publishers back without reading"
                    );
                }
            }
        }
        self.stalls.retain(|k, _| seen.contains(k));
    }
}
