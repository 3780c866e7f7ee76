//! State collections at the broker: who owns which collection, the state rings, watchers'
//! subscriptions to them, and the jobs the core hands the keeper (the thread that mirrors and
//! persists collections, see `broker::keeper`). No change of a collection passes here.
//!
//! A state ring lives in the ring table as `?state/TOPIC` (outside the topic grammar, like the
//! rings of request/response, so no pub/sub pattern matches it). It is created when the
//! collection is first owned, with a tethered reader reserved for the keeper before anyone can
//! write, and kept for the broker's lifetime: the keeper reads it, and writes into it when a
//! non-persistent collection's owner goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use shmbus_shm::{ReaderMode, ReservedReader, Ring, RingConfig};
use tracing::debug;

use super::clients::{SubscriptionKind, keeper_reader};
use super::{Core, Descriptors, Handled, Outgoing, error, exact_topic, parse_topic};
use crate::protocol::pubsub::Subscribed;
use crate::protocol::state::{
    OwnState, RECORD_OVERHEAD, StateOwned, StateSnapshot, SyncState, WatchState,
};
use crate::protocol::{ClientId, ErrorCode, PublisherId, Reply, RequestId};
use crate::topic::{Topic, overlaps};

/// Prefix of state rings' names.
pub(super) const STATE_PREFIX: &str = "?state/";

/// The name of collection `topic`'s state ring.
fn state_ring_name(topic: &Topic) -> String {
    format!("{STATE_PREFIX}{topic}")
}

/// What the core asks of the keeper, in order.
#[derive(Debug)]
pub(crate) enum KeeperJob {
    /// A state ring was created: read it from the reserved position.
    Track {
        /// The collection.
        topic: Topic,
        /// Its ring.
        ring: Ring,
        /// The reader reserved for the keeper.
        reader: ReservedReader,
    },
    /// Someone owns the collection now (with this persistence).
    Own {
        /// The collection.
        topic: Topic,
        /// Whether it is persistent from now on.
        persistent: bool,
    },
    /// The collection's owner went.
    Disown {
        /// The collection.
        topic: Topic,
    },
    /// Answer request `id` of `client` with a snapshot of the collections `pattern` overlaps.
    Snapshot {
        /// Who asked.
        client: ClientId,
        /// The request to answer.
        id: RequestId,
        /// Which collections.
        pattern: Topic,
    },
    /// Answer request `id` of `client` once every change read so far in `topic` is stored.
    Sync {
        /// Who asked.
        client: ClientId,
        /// The request to answer.
        id: RequestId,
        /// The collection.
        topic: Topic,
    },
}

/// The core's end of the keeper: jobs go into the channel, then the keeper's doorbell rings.
pub(crate) struct KeeperLink {
    jobs: mpsc::Sender<KeeperJob>,
    /// Set after each job is sent (the keeper parks until it is set, or a ring has news).
    pending: Arc<AtomicBool>,
    /// The keeper's doorbell.
    doorbell: u32,
}

impl KeeperLink {
    /// A link over `jobs`, waking the keeper with `pending` and doorbell `doorbell`.
    pub(crate) fn new(
        jobs: mpsc::Sender<KeeperJob>,
        pending: Arc<AtomicBool>,
        doorbell: u32,
    ) -> KeeperLink {
        KeeperLink {
            jobs,
            pending,
            doorbell,
        }
    }
}

/// Who owns a collection.
pub(super) struct StateOwner {
    client: ClientId,
    publisher: PublisherId,
}

impl Core {
    /// Hands `job` to the keeper; an error if the broker runs without one.
    fn to_keeper(&self, job: KeeperJob) -> Result<(), crate::protocol::ErrorReply> {
        let Some(link) = &self.keeper else {
            return Err(error(
                ErrorCode::Internal,
                "this broker keeps no state collections",
            ));
        };
        link.jobs
            .send(job)
            .map_err(|_| error(ErrorCode::Internal, "the broker's state keeper stopped"))?;
        // Release pairs with the keeper's AcqRel swap of `pending` before it reads the channel.
        link.pending.store(true, Ordering::Release);
        self.doorbells.table().ring(link.doorbell);
        Ok(())
    }

    /// The geometry of state rings: values up to the configured size, with their record.
    fn state_ring_config(&self) -> RingConfig {
        let max_payload = self.limits.max_state_value + RECORD_OVERHEAD;
        RingConfig {
            max_payload,
            // A power of two that holds a few of the largest records.
            capacity: (u64::from(max_payload) * 4)
                .next_power_of_two()
                .max(self.limits.ring.capacity),
            ..self.limits.ring
        }
    }

    pub(super) fn own_state(
        &mut self,
        client: ClientId,
        request: OwnState,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let topic = exact_topic(&request.topic, "own collection")?;
        if let Some(owner) = self.owned.get(topic.as_str()) {
            let pid = self.clients.get(owner.client).map_or(0, |c| c.creds.pid);
            return Err(error(
                ErrorCode::Taken,
                format!("collection {topic:?} is already published (by process {pid})"),
            ));
        }
        if self.keeper.is_none() {
            return Err(error(
                ErrorCode::Internal,
                "this broker keeps no state collections",
            ));
        }
        if request.persistent && !self.persistence {
            return Err(error(
                ErrorCode::NotPermitted,
                format!(
                    "collection {topic:?} cannot be persistent: the broker has no state directory \
                     (shmbus broker --state-dir DIR)"
                ),
            ));
        }
        let name = state_ring_name(&topic);
        if !self.rings.contains_key(&name) {
            self.create_state_ring(client, &topic, &name, out)?;
        }
        let (reply, fds) = self.add_publisher(client, &name)?;
        let Reply::Publishing(publishing) = reply else {
            unreachable!("add_publisher answers with Publishing");
        };
        let publisher = publishing.publisher;
        self.to_keeper(KeeperJob::Own {
            topic: topic.clone(),
            persistent: request.persistent,
        })?;
        self.owned
            .insert(topic.as_str().to_string(), StateOwner { client, publisher });
        debug!(client = %client, topic = %topic, persistent = request.persistent, "collection owned");
        let owned = StateOwned {
            publishing,
            max_bytes: self.limits.max_state_bytes,
        };
        Ok((Reply::StateOwned(owned), fds))
    }

    /// Creates collection `topic`'s state ring `name`, with the keeper's reader, and attaches
    /// every watcher whose pattern overlaps it.
    fn create_state_ring(
        &mut self,
        client: ClientId,
        topic: &Topic,
        name: &str,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), crate::protocol::ErrorReply> {
        let config = self.state_ring_config();
        let ring = self.new_ring(client, &format!("collection {topic:?}"), &config)?;
        let doorbell = self.keeper.as_ref().map_or(0, |k| k.doorbell);
        let reader = ring
            .reserve_reader(ReaderMode::Tethered, keeper_reader(), doorbell)
            .map_err(|e| error(ErrorCode::Internal, format!("collection {topic:?}: {e}")))?;
        self.to_keeper(KeeperJob::Track {
            topic: topic.clone(),
            ring: ring.clone(),
            reader,
        })?;
        self.add_ring(client, name, ring);
        if let Some(entry) = self.rings.get_mut(name) {
            entry.reserved.insert(reader.slot, keeper_reader().get());
        }
        let matches = |kind: &SubscriptionKind| matches!(kind, SubscriptionKind::State(p) if overlaps(p, topic));
        self.attach_matching(name, topic, matches, out);
        Ok(())
    }

    /// Ends what `client` owned through `publisher` (everything it owned, for `None`).
    pub(super) fn end_ownership(&mut self, client: ClientId, publisher: Option<PublisherId>) {
        let gone: Vec<String> = self
            .owned
            .iter()
            .filter(|(_, o)| o.client == client && publisher.is_none_or(|p| p == o.publisher))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in gone {
            self.owned.remove(&topic);
            debug!(client = %client, topic, "collection no longer owned");
            if let Ok(topic) = Topic::new(&topic) {
                let _ = self.to_keeper(KeeperJob::Disown { topic });
            }
        }
    }

    pub(super) fn watch_state(
        &mut self,
        client: ClientId,
        request: WatchState,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let pattern = parse_topic(&request.pattern)?;
        let kind = SubscriptionKind::State(pattern.clone());
        let sub = self.new_subscription(client, kind, ReaderMode::Tethered, request.doorbell)?;
        let names: Vec<String> = self
            .rings
            .keys()
            .filter(|name| {
                name.strip_prefix(STATE_PREFIX)
                    .and_then(|t| Topic::new(t).ok())
                    .is_some_and(|t| overlaps(&pattern, &t))
            })
            .cloned()
            .collect();
        let rings = self.attach_all(client, sub, names, out)?;
        debug!(client = %client, subscription = %sub, pattern = %pattern, rings, "watching state");
        let reply = Subscribed {
            subscription: sub,
            rings,
        };
        Ok((Reply::Subscribed(reply), Descriptors::None))
    }

    /// Hands a snapshot request to the keeper, which answers it.
    pub(super) fn state_snapshot(
        &mut self,
        client: ClientId,
        id: RequestId,
        request: StateSnapshot,
    ) -> Result<(), crate::protocol::ErrorReply> {
        let pattern = parse_topic(&request.pattern)?;
        self.to_keeper(KeeperJob::Snapshot {
            client,
            id,
            pattern,
        })
    }

    /// Hands the owner's sync request to the keeper, which answers it.
    pub(super) fn sync_state(
        &mut self,
        client: ClientId,
        id: RequestId,
        request: SyncState,
    ) -> Result<(), crate::protocol::ErrorReply> {
        let topic = parse_topic(&request.topic)?;
        if self
            .owned
            .get(topic.as_str())
            .is_none_or(|o| o.client != client)
        {
            return Err(error(
                ErrorCode::NotPermitted,
                format!("collection {topic:?} is not published by this client"),
            ));
        }
        self.to_keeper(KeeperJob::Sync { client, id, topic })
    }
}
