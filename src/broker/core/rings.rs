//! Rings by topic: creating one on a topic's first publish (and attaching every matching
//! subscription to it), retiring one found corrupt, and releasing those nobody uses any more.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use shmbus_shm::{Owner, Ring, RingConfig};
use tracing::{debug, info, warn};

use super::clients::{SubscriptionKind, owner_subscription};
use super::recovery::{HeldClaim, Stall};
use super::reqrep::{is_exchange_ring, shown_topic};
use super::{Core, Outgoing, error};
use crate::protocol::pubsub::RingGeometry;
use crate::protocol::{BrokerMessage, ClientId, ErrorCode, ErrorReply, RingId};
use crate::topic::{Topic, overlaps};

/// How many sweeps retire a closed ring of request/response again before it is forgotten.
const RETIRE_AGAIN: u32 = 2;

/// A retired ring the broker retires again at each sweep (see [`Ring::retire`]).
pub(super) struct Retired {
    pub ring: Ring,
    /// Sweeps left, or `None` for as long as writers are on it.
    pub sweeps: Option<u32>,
}

/// A ring the broker created, and what the broker knows about its slots.
pub(super) struct RingEntry {
    pub ring: Ring,
    /// Since when nobody publishes or reads on it, if so.
    pub idle_since: Option<Instant>,
    /// The client whose publish created it, while connected (the ring counts against its quota).
    pub creator: Option<ClientId>,
    /// Reader slots the broker reserved, with the owner token each was reserved for: the only
    /// reader slots that may be in use.
    pub reserved: HashMap<u32, u64>,
    /// Tethered readers holding publishers back, watched for eviction, by slot.
    pub stalls: HashMap<u32, Stall>,
    /// Readers evicted, by slot, with the owner they were evicted under: one seen tethered again
    /// is untethered again at once.
    pub evicted: HashMap<u32, u64>,
    /// Claims of live publishers seen uncommitted, by writer slot.
    pub held: HashMap<u32, HeldClaim>,
}

impl RingEntry {
    /// The ring as described to clients.
    pub fn geometry(&self) -> RingGeometry {
        RingGeometry::from(self.ring.spec())
    }

    /// The ring's id.
    pub fn id(&self) -> RingId {
        RingId::from_raw(self.ring.id())
    }

    /// Frees the reader slots held under owners the broker did not reserve them for (a faulty
    /// process claimed or overwrote them). Returns how many (and logs them in one line).
    pub fn free_foreign_readers(&self, topic: &str) -> usize {
        let freed: Vec<u32> = self
            .ring
            .readers()
            .into_iter()
            .filter(|r| {
                self.reserved.get(&r.slot) != Some(&r.owner)
                    && Owner::new(r.owner).is_some_and(|o| self.ring.reclaim_reader(r.slot, o))
            })
            .map(|r| r.slot)
            .collect();
        if let (Some(first), n) = (freed.first(), freed.len()) {
            warn!(
                topic,
                first, n, "freed reader slots held under owners the broker never gave them to"
            );
        }
        freed.len()
    }
}

impl Core {
    /// Creates a ring of geometry `config` for `client`, within the ring quotas; `what` names it
    /// in errors. The ring is not in the table yet (see [`Core::add_ring`]).
    pub(super) fn new_ring(
        &mut self,
        client: ClientId,
        what: &str,
        config: &RingConfig,
    ) -> Result<Ring, ErrorReply> {
        let quotas = &self.limits.quotas;
        if self.rings.len() >= quotas.rings {
            return Err(error(
                ErrorCode::Exhausted,
                format!(
                    "cannot create a ring for {what}: the bus has {} rings, its limit",
                    quotas.rings
                ),
            ));
        }
        let per_client = quotas.rings_per_client;
        if self.clients.known(client)?.rings_created >= per_client {
            return Err(error(
                ErrorCode::Exhausted,
                format!(
                    "cannot create a ring for {what}: this client created {per_client} rings, \
                     its quota"
                ),
            ));
        }
        Ring::create(config, self.doorbells.table()).map_err(|e| {
            error(
                ErrorCode::Internal,
                format!("cannot create a ring for {what}: {e}"),
            )
        })
    }

    /// Puts `ring` in the table under `name`, counted against `client`'s ring quota.
    pub(super) fn add_ring(&mut self, client: ClientId, name: &str, ring: Ring) {
        if is_exchange_ring(name) {
            debug!(name, "ring created");
        } else {
            info!(topic = name, "ring created");
        }
        if let Some(c) = self.clients.get_mut(client) {
            c.rings_created += 1;
        }
        self.rings.insert(
            name.to_string(),
            RingEntry {
                ring,
                idle_since: None,
                creator: Some(client),
                reserved: HashMap::new(),
                stalls: HashMap::new(),
                evicted: HashMap::new(),
                held: HashMap::new(),
            },
        );
    }

    /// [`Core::new_ring`], then [`Core::add_ring`] under `name`.
    pub(super) fn insert_ring(
        &mut self,
        client: ClientId,
        name: &str,
        config: &RingConfig,
    ) -> Result<(), ErrorReply> {
        let ring = self.new_ring(client, &format!("{:?}", shown_topic(name)), config)?;
        self.add_ring(client, name, ring);
        Ok(())
    }

    /// Creates the ring for `topic` on behalf of `client`, within the quotas, and reserves readers
    /// on it for every matching subscription, so that they miss nothing its first publisher
    /// writes.
    pub(super) fn create_ring(
        &mut self,
        client: ClientId,
        topic: &Topic,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ErrorReply> {
        let config = self.limits.ring;
        self.insert_ring(client, topic.as_str(), &config)?;
        let matches = |kind: &SubscriptionKind| matches!(kind, SubscriptionKind::Pattern(p) if overlaps(p, topic));
        self.attach_matching(topic.as_str(), topic, matches, out);
        Ok(())
    }

    /// Reserves readers on the new ring `name` (of `topic`, as its readers are told) for every
    /// subscription `matches` accepts; one that cannot get a reader is told it misses the ring
    /// rather than wait for it forever.
    pub(super) fn attach_matching(
        &mut self,
        name: &str,
        topic: &Topic,
        matches: impl Fn(&SubscriptionKind) -> bool,
        out: &mut Vec<Outgoing>,
    ) {
        let matching: Vec<_> = self
            .clients
            .iter()
            .flat_map(|(client, c)| {
                c.subscriptions
                    .iter()
                    .filter(|(_, s)| matches(&s.kind))
                    .map(move |(&sub, _)| (client, sub))
            })
            .collect();
        for (client, sub) in matching {
            match self.attach(client, sub, name) {
                Ok(o) => out.push(o),
                Err(e) => {
                    warn!(client = %client, subscription = %sub, topic = %topic, "cannot attach reader: {}", e.message);
                    let msg = BrokerMessage::RingUnavailable {
                        subscription: sub,
                        topic: topic.as_str().to_string(),
                        error: e,
                    };
                    out.push(Outgoing::to(client, msg));
                }
            }
        }
    }

    /// Forgets ring `topic` and gives back its creator's quota.
    fn remove_ring(&mut self, topic: &str) -> Option<RingEntry> {
        let entry = self.rings.remove(topic)?;
        if let Some(c) = entry.creator.and_then(|id| self.clients.get_mut(id)) {
            c.rings_created = c.rings_created.saturating_sub(1);
        }
        self.repairs_pending.remove(topic);
        Some(entry)
    }

    /// Retires ring `topic`, which cannot be trusted any more (`why`): its claim cursor is marked
    /// retired, so its publishers' next claims fail and they ask for the topic's ring again,
    /// which is then a fresh one; its subscribers are told to drop it once read, and get the
    /// fresh ring like any new ring.
    pub(super) fn retire_ring(&mut self, topic: &str, why: &str, out: &mut Vec<Outgoing>) {
        let Some(entry) = self.remove_ring(topic) else {
            return;
        };
        warn!(topic, ring = %entry.id(), "ring retired: {why}");
        entry.ring.retire();
        let ring = entry.id();
        let mut told = BTreeSet::new();
        for (&slot, &owner) in &entry.reserved {
            let (client, subscription) = owner_subscription(owner);
            if let Some(s) = self
                .clients
                .get_mut(client)
                .and_then(|c| c.subscriptions.get_mut(&subscription))
            {
                s.reserved.retain(|(t, sl)| !(t == topic && *sl == slot));
                if told.insert((client, subscription)) {
                    let msg = BrokerMessage::RingRetired { subscription, ring };
                    out.push(Outgoing::to(client, msg));
                }
            }
        }
        if !entry.ring.writers().is_empty() {
            self.retired.push(Retired {
                ring: entry.ring,
                sweeps: None,
            });
        }
    }

    /// Takes ring `name` of request/response out of use when its server or requester goes: it
    /// is retired (its writers' claims fail, so they learn) and forgotten, with the records of
    /// the clients writing to it, whom it returns. Its writers may hold it as long as they like;
    /// the broker retires it again at its next sweeps, for a claim that was landing meanwhile.
    pub(super) fn close_ring(&mut self, name: &str) -> Vec<ClientId> {
        let Some(entry) = self.remove_ring(name) else {
            return Vec::new();
        };
        entry.ring.retire();
        let writers = self.clients.forget_ring(name);
        self.retired.push(Retired {
            ring: entry.ring,
            sweeps: Some(RETIRE_AGAIN),
        });
        writers
    }

    /// Retires again the retired rings a writer's last claim may have revived, and forgets those
    /// no writer is left on.
    pub(super) fn keep_retired(&mut self) {
        self.retired.retain_mut(|r| {
            r.ring.retire();
            match &mut r.sweeps {
                None => !r.ring.writers().is_empty(),
                Some(left) => {
                    *left = left.saturating_sub(1);
                    *left > 0
                }
            }
        });
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
            self.remove_ring(&topic);
            info!(topic, "idle ring released");
        }
    }
}
