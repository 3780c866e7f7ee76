//! Recovery, run by the event loop's tick: repairing what dead publishers left half-written,
//! taking back claims live publishers hold too long, freeing slots the broker never gave out,
//! evicting tethered readers that hold publishers back without reading, and retiring rings whose
//! shared state is beyond repair.
//!
//! Everything read from a ring here is a claim made by processes that may be faulty: an owner
//! token counts only if the broker gave it out for that slot, a reader's progress only if its
//! position moves past the best it ever showed, and every position is checked before arithmetic.

use std::time::{Duration, Instant};

use shmbus_shm::{Owner, ReaderState, RepairOutcome, UnblockOutcome};
use tracing::{debug, warn};

use super::clients::{keeper_reader, owner_client};
use super::{Core, Outgoing};

/// A tethered reader that holds publishers back, watched for eviction.
pub(super) struct Stall {
    /// The furthest position it has shown: only moving past it counts as progress, so a position
    /// that goes back and forth does not.
    best: u64,
    /// Since when it has made no progress.
    since: Instant,
}

/// An uncommitted claim of a live publisher, watched for taking back.
pub(super) struct HeldClaim {
    pos: u64,
    since: Instant,
}

/// A ring whose dead publishers' claims wait for repair.
pub(super) struct PendingRepair {
    since: Instant,
    /// Whether the long wait was reported (once per ring).
    reported: bool,
}

impl PendingRepair {
    pub(super) fn since(now: Instant) -> PendingRepair {
        PendingRepair {
            since: now,
            reported: false,
        }
    }
}

/// How long a repair may wait for a live publisher that names the same claim before it is
/// reported.
const REPAIR_PATIENCE: Duration = Duration::from_secs(1);

/// How often the rings are swept for slots held under tokens the broker never gave out, for
/// claims held too long, and for corrupt claim cursors.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Core {
    /// The periodic work: repairs, evictions, and (every [`SWEEP_INTERVAL`]) the sweep. Returns
    /// the messages it makes the broker send (subscribers of retired rings).
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if !self.repairs_pending.is_empty() {
            self.repair(&mut out);
        }
        self.evict_stalled(now);
        if self
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= SWEEP_INTERVAL)
        {
            self.last_sweep = Some(now);
            self.sweep(now, &mut out);
            self.expire_sessions(now);
        }
        out
    }

    /// Repairs dead publishers' claims on every ring that has some pending; keeps the rings whose
    /// repair had to be deferred. Rings with impossible claims are retired.
    pub(crate) fn repair(&mut self, out: &mut Vec<Outgoing>) {
        let topics: Vec<String> = self.repairs_pending.keys().cloned().collect();
        for topic in topics {
            match self.repair_ring(&topic) {
                Ok(false) => {
                    self.repairs_pending.remove(&topic);
                }
                Ok(true) => {
                    if let Some(p) = self.repairs_pending.get_mut(&topic) {
                        if !p.reported && p.since.elapsed() > REPAIR_PATIENCE {
                            p.reported = true;
                            warn!(
                                topic,
                                "repair deferred for over a second: a live publisher names the \
                                 same claim (retrying quietly)"
                            );
                        }
                    }
                }
                Err(why) => self.retire_ring(&topic, why, out),
            }
        }
    }

    /// Repairs the dead writers of ring `topic`. Returns whether some repair was deferred, or
    /// why the ring must be retired.
    fn repair_ring(&self, topic: &str) -> Result<bool, &'static str> {
        let Some(entry) = self.rings.get(topic) else {
            return Ok(false);
        };
        let clients = &self.clients;
        let alive = |owner: Owner| clients.writer_alive(owner.get());
        let mut deferred = false;
        let mut corrupt = false;
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
                RepairOutcome::Corrupt => corrupt = true,
            }
        }
        if corrupt {
            return Err("a dead publisher left an impossible claim");
        }
        Ok(deferred)
    }

    /// Looks at every ring: a corrupt claim cursor retires it; writer slots held under tokens of
    /// no live client are repaired; reader slots the broker never reserved (for that owner) are
    /// freed; claims live publishers have held longer than the unblock timeout are taken back.
    fn sweep(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        self.keep_retired();
        let mut corrupt = Vec::new();
        let mut dead_writers = Vec::new();
        for (topic, entry) in &mut self.rings {
            if entry.ring.is_corrupt() {
                corrupt.push((
                    topic.clone(),
                    "its claim cursor holds an impossible position",
                ));
                continue;
            }
            for r in entry.ring.readers() {
                if entry.reserved.get(&r.slot) != Some(&r.owner)
                    && entry
                        .ring
                        .reclaim_reader(r.slot, Owner::new(r.owner).expect("in use"))
                {
                    warn!(
                        topic,
                        slot = r.slot,
                        owner = r.owner,
                        "freed a reader slot the broker never gave out"
                    );
                }
            }
            let writers = entry.ring.writers();
            if writers.iter().any(|w| !self.clients.writer_alive(w.owner)) {
                dead_writers.push(topic.clone());
            }
            entry.held.retain(|slot, _| {
                writers
                    .iter()
                    .any(|w| w.slot == *slot && w.claiming.is_some())
            });
            for w in writers
                .iter()
                .filter(|w| self.clients.writer_alive(w.owner))
            {
                let Some(pos) = w.claiming else { continue };
                let held = entry
                    .held
                    .entry(w.slot)
                    .or_insert(HeldClaim { pos, since: now });
                if held.pos != pos {
                    *held = HeldClaim { pos, since: now };
                    continue;
                }
                let held_for = now.duration_since(held.since);
                if held_for < self.limits.unblock_after || !self.unblock_supported {
                    continue;
                }
                match entry.ring.unblock_claim(w.slot, pos) {
                    UnblockOutcome::Unblocked { pos, seq, size } => {
                        let client = owner_client(w.owner);
                        let who = self.clients.who(client);
                        warn!(
                            topic, client = %client, who, seq, pos, size, ?held_for,
                            "took back a claim a live publisher held uncommitted too long"
                        );
                        entry.held.remove(&w.slot);
                    }
                    UnblockOutcome::Deferred => {}
                    UnblockOutcome::Corrupt => {
                        corrupt.push((topic.clone(), "a publisher holds an impossible claim"));
                    }
                    UnblockOutcome::Unsupported => {
                        warn!(
                            "this system has no global membarrier: claims held by stopped \
                             publishers cannot be taken back"
                        );
                        self.unblock_supported = false;
                    }
                    _ => {
                        entry.held.remove(&w.slot);
                    }
                }
            }
        }
        for (topic, why) in corrupt {
            self.retire_ring(&topic, why, out);
        }
        for topic in dead_writers {
            self.repairs_pending
                .entry(topic)
                .or_insert_with(|| PendingRepair::since(now));
        }
        if !self.repairs_pending.is_empty() {
            self.repair(out);
        }
    }

    /// Untethers tethered readers that have held publishers back without progress for the
    /// eviction timeout, and at once those seen tethered again after an eviction.
    pub(super) fn evict_stalled(&mut self, now: Instant) {
        let evict_after = self.limits.evict_after;
        for (topic, entry) in &mut self.rings {
            let head = entry.ring.head().position;
            let config = entry.ring.config();
            let max_frame = u64::from(config.max_payload) + 64;
            let readers = entry.ring.readers();
            entry
                .evicted
                .retain(|slot, owner| readers.iter().any(|r| r.slot == *slot && r.owner == *owner));
            entry
                .stalls
                .retain(|slot, _| readers.iter().any(|r| r.slot == *slot));
            for r in readers {
                // The keeper is the broker itself: it reads to the end whenever woken.
                if r.state != ReaderState::Tethered || r.owner == keeper_reader().get() {
                    entry.stalls.remove(&r.slot);
                    continue;
                }
                if entry.evicted.get(&r.slot) == Some(&r.owner) {
                    // It was evicted and tethered itself again: the eviction stands.
                    if entry.ring.untether_reader(r.slot) {
                        entry.ring.wake_readers();
                        debug!(topic, slot = r.slot, "evicted reader re-tethered itself");
                    }
                    continue;
                }
                // Only a reader that leaves publishers less than a frame of room holds them
                // back. Saturating: both positions come from shared memory.
                let blocking =
                    head.saturating_add(max_frame) > r.position.saturating_add(config.capacity);
                if !blocking {
                    entry.stalls.remove(&r.slot);
                    continue;
                }
                let stall = entry.stalls.entry(r.slot).or_insert(Stall {
                    best: r.position,
                    since: now,
                });
                if r.position > stall.best && r.position <= head {
                    *stall = Stall {
                        best: r.position,
                        since: now,
                    };
                    continue;
                }
                let stalled_for = now.duration_since(stall.since);
                if stalled_for < evict_after || !entry.ring.untether_reader(r.slot) {
                    continue;
                }
                entry.ring.wake_readers();
                entry.stalls.remove(&r.slot);
                entry.evicted.insert(r.slot, r.owner);
                let client = owner_client(r.owner);
                let who = self.clients.who(client);
                warn!(
                    topic,
                    slot = r.slot,
                    client = %client,
                    who,
                    ?stalled_for,
                    "reader evicted: it held publishers back without reading"
                );
            }
        }
    }
}
