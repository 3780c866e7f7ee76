//! What the broker knows and decides: rings by topic, clients, their publishers and
//! subscriptions, and the recovery of dead and stalled participants. No I/O happens here;
//! every decision returns the messages to send, so it can be tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use shmbus_shm::{
    DoorbellTable, Owner, ReaderMode as RingReaderMode, ReaderState, RepairOutcome, Ring,
    RingConfig,
};
use tracing::{debug, info, warn};

use crate::protocol::socket::PeerCredentials;
use crate::protocol::{
    BrokerMessage, ErrorCode, ErrorReply, MAX_ERROR_LEN, PROTOCOL_VERSION, ReaderMode, Reply,
    Request, RingAttachment,
};
use crate::topic::{Topic, overlaps};

/// A message for one client, with the descriptors it carries.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub client: u32,
    pub msg: BrokerMessage,
    pub fds: Vec<OwnedFd>,
}

impl Outgoing {
    fn to(client: u32, msg: BrokerMessage) -> Outgoing {
        Outgoing {
            client,
            msg,
            fds: Vec::new(),
        }
    }
}

/// The owner token of client `client`'s publishers and doorbells.
pub(crate) fn client_owner(client: u32) -> Owner {
    Owner::new(u64::from(client) << 32).expect("client ids start at 1")
}

/// The owner token of the reader slots of subscription `subscription` of client `client`.
fn subscription_owner(client: u32, subscription: u32) -> Owner {
    Owner::new((u64::from(client) << 32) | u64::from(subscription)).expect("client ids start at 1")
}

/// The client an owner token belongs to.
fn owner_client(owner: u64) -> u32 {
    (owner >> 32) as u32
}

struct RingEntry {
    ring: Ring,
    /// A read-only descriptor of the data segment, duplicated for each subscriber.
    read_only_data: OwnedFd,
    /// Since when nobody publishes or reads on it, if so.
    idle_since: Option<Instant>,
}

struct Subscription {
    pattern: Topic,
    mode: ReaderMode,
    doorbell: u32,
    /// Reader slots reserved for it: (topic, slot).
    reserved: Vec<(String, u32)>,
}

struct Client {
    name: String,
    creds: PeerCredentials,
    greeted: bool,
    /// Publisher id -> topic.
    publishers: HashMap<u32, String>,
    /// Every ring this client ever published on: repaired when it goes, whatever it
    /// unpublished before (it may die between unpublishing and freeing its slot).
    publisher_rings: BTreeSet<String>,
    subscriptions: HashMap<u32, Subscription>,
}

/// A tethered reader that has not moved, watched for eviction.
struct Stall {
    owner: u64,
    position: u64,
    since: Instant,
}

/// Broker tunables.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Geometry of every ring the broker creates.
    pub ring: RingConfig,
    /// A tethered reader that holds publishers back without progress for this long is untethered.
    pub evict_after: Duration,
}

/// The broker's state.
pub(crate) struct State {
    limits: Limits,
    doorbells: DoorbellTable,
    rings: BTreeMap<String, RingEntry>,
    clients: HashMap<u32, Client>,
    next_client: u32,
    next_publisher: u32,
    next_subscription: u32,
    /// Rings where dead publishers' claims still wait for repair.
    repairs_pending: BTreeMap<String, Instant>,
    stalls: HashMap<(String, u32), Stall>,
}

/// The client `client` (a registered connection), or the error for an unknown one.
fn known_client(
    clients: &mut HashMap<u32, Client>,
    client: u32,
) -> Result<&mut Client, ErrorReply> {
    clients
        .get_mut(&client)
        .ok_or_else(|| error(ErrorCode::Unknown, "no such client"))
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    let mut message = message.into();
    if message.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    ErrorReply { code, message }
}

fn ring_mode(mode: ReaderMode) -> RingReaderMode {
    match mode {
        ReaderMode::Tethered => RingReaderMode::Tethered,
        ReaderMode::Lossy => RingReaderMode::Lossy,
    }
}

impl State {
    pub(crate) fn new(limits: Limits, doorbells: DoorbellTable) -> State {
        State {
            limits,
            doorbells,
            rings: BTreeMap::new(),
            clients: HashMap::new(),
            next_client: 1,
            next_publisher: 1,
            next_subscription: 1,
            repairs_pending: BTreeMap::new(),
            stalls: HashMap::new(),
        }
    }

    /// Registers a new connection and returns its client id.
    pub(crate) fn connect(&mut self, creds: PeerCredentials) -> u32 {
        // Ids wrap after 2^32 connections; skip any still in use.
        let mut id = self.next_client;
        while self.clients.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        self.next_client = id.checked_add(1).unwrap_or(1);
        let client = Client {
            name: String::new(),
            creds,
            greeted: false,
            publishers: HashMap::new(),
            publisher_rings: BTreeSet::new(),
            subscriptions: HashMap::new(),
        };
        self.clients.insert(id, client);
        id
    }

    /// Number of connected clients.
    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Handles `Hello`. Returns the messages to send and whether to keep the connection.
    pub(crate) fn hello(&mut self, client: u32, version: u16, name: String) -> (Outgoing, bool) {
        if version != PROTOCOL_VERSION {
            let refusal = error(
                ErrorCode::Version,
                format!(
                    "protocol version {version} is not supported (this broker speaks {PROTOCOL_VERSION})"
                ),
            );
            return (Outgoing::to(client, BrokerMessage::Refused(refusal)), false);
        }
        let Some(c) = self.clients.get_mut(&client) else {
            return (
                Outgoing::to(
                    client,
                    BrokerMessage::Refused(error(ErrorCode::Internal, "unknown client")),
                ),
                false,
            );
        };
        c.greeted = true;
        c.name = name;
        debug!(client, name = %c.name, pid = c.creds.pid, uid = c.creds.uid, "client connected");
        let welcome = BrokerMessage::Welcome {
            version: PROTOCOL_VERSION,
            client,
            owner: client_owner(client).get(),
            max_payload: self.limits.ring.max_payload,
        };
        let fd = self.doorbells.fd().map(|fd| fd.try_clone_to_owned());
        match fd {
            Some(Ok(fd)) => (
                Outgoing {
                    client,
                    msg: welcome,
                    fds: vec![fd],
                },
                true,
            ),
            Some(Err(e)) => {
                let refusal = error(
                    ErrorCode::Internal,
                    format!("cannot share the doorbell table: {e}"),
                );
                (Outgoing::to(client, BrokerMessage::Refused(refusal)), false)
            }
            None => {
                let refusal = error(ErrorCode::Internal, "the doorbell table has no descriptor");
                (Outgoing::to(client, BrokerMessage::Refused(refusal)), false)
            }
        }
    }

    /// Whether `client` has completed the handshake.
    pub(crate) fn greeted(&self, client: u32) -> bool {
        self.clients.get(&client).is_some_and(|c| c.greeted)
    }

    /// Handles a request; returns the reply (always first) and any messages for other clients.
    pub(crate) fn request(&mut self, client: u32, id: u32, body: Request) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let result = match body {
            Request::Publish { topic, max_payload } => {
                self.publish(client, &topic, max_payload, &mut out)
            }
            Request::Unpublish { publisher } => self.unpublish(client, publisher),
            // History is applied by the client when it adopts each reader.
            Request::Subscribe {
                pattern,
                mode,
                history: _,
                doorbell,
            } => self.subscribe(client, &pattern, mode, doorbell, &mut out),
            Request::Unsubscribe { subscription } => self.unsubscribe(client, subscription),
        };
        let (result, fds) = match result {
            Ok((reply, fds)) => (Ok(reply), fds),
            Err(e) => (Err(e), Vec::new()),
        };
        // The reply goes after the attachments queued for this client (a subscriber must have
        // all its existing rings before it hears that it is subscribed), before the rest.
        let (mine, others): (Vec<_>, Vec<_>) = out.into_iter().partition(|o| o.client == client);
        let mut ordered = mine;
        ordered.push(Outgoing {
            client,
            msg: BrokerMessage::Reply { id, result },
            fds,
        });
        ordered.extend(others);
        ordered
    }

    fn publish(
        &mut self,
        client: u32,
        topic: &str,
        max_payload: u32,
        out: &mut Vec<Outgoing>,
    ) -> Result<(Reply, Vec<OwnedFd>), ErrorReply> {
        let topic = Topic::new(topic).map_err(|e| error(ErrorCode::InvalidTopic, e.to_string()))?;
        if max_payload > self.limits.ring.max_payload {
            return Err(error(
                ErrorCode::TooLarge,
                format!(
                    "payloads of {max_payload} bytes exceed this bus's limit of {} bytes (topic {topic:?})",
                    self.limits.ring.max_payload
                ),
            ));
        }
        if !self.rings.contains_key(topic.as_str()) {
            self.create_ring(&topic, out)?;
        }
        let entry = &self.rings[topic.as_str()];
        let fds = [entry.ring.data_fd(), entry.ring.readers_fd()]
            .into_iter()
            .flatten()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                error(
                    ErrorCode::Internal,
                    format!("duplicate ring descriptors: {e}"),
                )
            })?;
        let publisher = self.next_publisher;
        self.next_publisher = self.next_publisher.wrapping_add(1).max(1);
        let ring = entry.ring.id();
        if let Some(c) = self.clients.get_mut(&client) {
            c.publishers.insert(publisher, topic.as_str().to_string());
            c.publisher_rings.insert(topic.as_str().to_string());
        }
        debug!(client, publisher, topic = %topic, "publisher attached");
        Ok((Reply::Publishing { publisher, ring }, fds))
    }

    /// Creates the ring for `topic` and reserves readers on it for every matching subscription,
    /// so that they miss nothing its first publisher writes.
    fn create_ring(&mut self, topic: &Topic, out: &mut Vec<Outgoing>) -> Result<(), ErrorReply> {
        let ring = Ring::create(&self.limits.ring, &self.doorbells).map_err(|e| {
            error(
                ErrorCode::Internal,
                format!("create ring for {topic:?}: {e}"),
            )
        })?;
        let read_only_data = ring
            .data_fd_read_only()
            .expect("memfd rings have descriptors")
            .map_err(|e| {
                error(
                    ErrorCode::Internal,
                    format!("reopen ring for {topic:?}: {e}"),
                )
            })?;
        info!(topic = %topic, "ring created");
        self.rings.insert(
            topic.as_str().to_string(),
            RingEntry {
                ring,
                read_only_data,
                idle_since: None,
            },
        );
        let mut matching = Vec::new();
        for (&client, c) in &self.clients {
            for (&sub, s) in &c.subscriptions {
                if overlaps(&s.pattern, topic) {
                    matching.push((client, sub));
                }
            }
        }
        for (client, sub) in matching {
            match self.attach(client, sub, topic.as_str()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    warn!(client, subscription = sub, topic = %topic, "cannot attach reader: {}", e.message);
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

    /// Reserves a reader on ring `topic` for subscription `sub` and returns the attachment.
    fn attach(&mut self, client: u32, sub: u32, topic: &str) -> Result<Outgoing, ErrorReply> {
        let entry = &self.rings[topic];
        let s = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.subscriptions.get_mut(&sub))
            .ok_or_else(|| error(ErrorCode::Unknown, "no such subscription"))?;
        let owner = subscription_owner(client, sub);
        let reserved = entry
            .ring
            .reserve_reader(ring_mode(s.mode), owner, s.doorbell)
            .map_err(|e| error(ErrorCode::Exhausted, format!("topic {topic:?}: {e}")))?;
        let fds = [
            entry.read_only_data.try_clone(),
            entry
                .ring
                .readers_fd()
                .expect("memfd ring")
                .try_clone_to_owned(),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>();
        let fds = match fds {
            Ok(fds) => fds,
            Err(e) => {
                entry.ring.reclaim_reader(reserved.slot, owner);
                return Err(error(
                    ErrorCode::Internal,
                    format!("duplicate ring descriptors: {e}"),
                ));
            }
        };
        s.reserved.push((topic.to_string(), reserved.slot));
        let attachment = RingAttachment {
            subscription: sub,
            topic: topic.to_string(),
            ring: entry.ring.id(),
            slot: reserved.slot,
            owner: owner.get(),
            position: reserved.position,
            sequence: reserved.sequence,
        };
        Ok(Outgoing {
            client,
            msg: BrokerMessage::RingAttached(attachment),
            fds,
        })
    }

    fn unpublish(
        &mut self,
        client: u32,
        publisher: u32,
    ) -> Result<(Reply, Vec<OwnedFd>), ErrorReply> {
        let c = known_client(&mut self.clients, client)?;
        let topic = c
            .publishers
            .remove(&publisher)
            .ok_or_else(|| error(ErrorCode::Unknown, format!("no publisher {publisher}")))?;
        debug!(client, publisher, topic, "publisher detached");
        Ok((Reply::Done, Vec::new()))
    }

    fn subscribe(
        &mut self,
        client: u32,
        pattern: &str,
        mode: ReaderMode,
        doorbell: u32,
        out: &mut Vec<Outgoing>,
    ) -> Result<(Reply, Vec<OwnedFd>), ErrorReply> {
        let pattern =
            Topic::new(pattern).map_err(|e| error(ErrorCode::InvalidTopic, e.to_string()))?;
        if !self
            .doorbells
            .held_by(client_owner(client))
            .contains(&doorbell)
        {
            return Err(error(
                ErrorCode::NotPermitted,
                format!("doorbell {doorbell} is not held by this client"),
            ));
        }
        let c = known_client(&mut self.clients, client)?;
        // Ids wrap after 2^32 subscriptions; they need only be unique per client, since slot
        // owners combine the client's id with them.
        let mut sub = self.next_subscription;
        while c.subscriptions.contains_key(&sub) {
            sub = sub.wrapping_add(1).max(1);
        }
        self.next_subscription = sub.wrapping_add(1).max(1);
        c.subscriptions.insert(
            sub,
            Subscription {
                pattern: pattern.clone(),
                mode,
                doorbell,
                reserved: Vec::new(),
            },
        );
        let topics: Vec<String> = self
            .rings
            .keys()
            .filter(|t| Topic::new(t).is_ok_and(|t| overlaps(&pattern, &t)))
            .cloned()
            .collect();
        let mut attached = 0u32;
        for topic in topics {
            match self.attach(client, sub, &topic) {
                Ok(o) => {
                    out.push(o);
                    attached += 1;
                }
                Err(e) => {
                    // All or nothing: release what was reserved and forget the subscription.
                    let _ = self.unsubscribe(client, sub);
                    out.retain(|o| !matches!(&o.msg, BrokerMessage::RingAttached(a) if a.subscription == sub));
                    return Err(e);
                }
            }
        }
        debug!(client, subscription = sub, pattern = %pattern, rings = attached, "subscribed");
        Ok((
            Reply::Subscribed {
                subscription: sub,
                rings: attached,
            },
            Vec::new(),
        ))
    }

    fn unsubscribe(&mut self, client: u32, sub: u32) -> Result<(Reply, Vec<OwnedFd>), ErrorReply> {
        let c = known_client(&mut self.clients, client)?;
        let s = c
            .subscriptions
            .remove(&sub)
            .ok_or_else(|| error(ErrorCode::Unknown, format!("no subscription {sub}")))?;
        // Slots the client adopted and dropped are already free (owner 0); the rest — attached
        // but never adopted — are freed here. The per-subscription owner makes sure no slot of
        // another subscription is touched.
        let owner = subscription_owner(client, sub);
        for (topic, slot) in &s.reserved {
            if let Some(entry) = self.rings.get(topic) {
                entry.ring.reclaim_reader(*slot, owner);
            }
        }
        debug!(client, subscription = sub, "unsubscribed");
        Ok((Reply::Done, Vec::new()))
    }

    /// Forgets a client that left or died, freeing everything it held: its reserved and
    /// adopted reader slots, its doorbells, and — through repair — its publishers' slots and any
    /// frame one of them was writing.
    pub(crate) fn disconnect(&mut self, client: u32, reason: &str) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        info!(client, name = %c.name, pid = c.creds.pid, reason, "client gone");
        for (sub, s) in c.subscriptions {
            let owner = subscription_owner(client, sub);
            for (topic, slot) in s.reserved {
                if let Some(entry) = self.rings.get(&topic) {
                    if entry.ring.reclaim_reader(slot, owner) {
                        debug!(client, topic, slot, "reader slot reclaimed");
                    }
                }
            }
        }
        for index in self.doorbells.held_by(client_owner(client)) {
            self.doorbells.reclaim(index, client_owner(client));
        }
        let now = Instant::now();
        for topic in c.publisher_rings {
            self.repairs_pending.insert(topic, now);
        }
        self.repair();
    }

    /// Repairs dead publishers' claims on every ring that has some pending; keeps the rings
    /// whose repair had to be deferred.
    pub(crate) fn repair(&mut self) {
        let clients = &self.clients;
        let alive = |owner: Owner| clients.contains_key(&owner_client(owner.get()));
        let rings = &self.rings;
        self.repairs_pending.retain(|topic, since| {
            let Some(entry) = rings.get(topic) else {
                return false;
            };
            let repairs = entry.ring.repair_dead_publishers(alive);
            let mut deferred = false;
            for r in &repairs {
                match r.outcome {
                    RepairOutcome::Skipped { pos, seq, size } => {
                        warn!(
                            topic,
                            seq, pos, size, "repaired a frame a dead publisher left half-written"
                        )
                    }
                    RepairOutcome::Released => {
                        debug!(topic, slot = r.slot, "dead publisher's slot freed")
                    }
                    RepairOutcome::Deferred => deferred = true,
                }
            }
            if deferred && since.elapsed() > Duration::from_secs(1) {
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

    /// Forgets rings nobody has published on or read from for `idle_for`: no publisher or reader
    /// slot in use and no publisher registered. The memfds go once the last process that mapped
    /// them lets go. A topic published on again gets a fresh ring (with no history).
    pub(crate) fn collect_idle_rings(&mut self, now: Instant, idle_for: Duration) {
        let published: BTreeSet<&str> = self
            .clients
            .values()
            .flat_map(|c| c.publishers.values().map(String::as_str))
            .collect();
        let mut gone = Vec::new();
        for (topic, entry) in &mut self.rings {
            let idle = entry.ring.publishers().is_empty()
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

    /// Untethers tethered readers that have held publishers back without progress for the
    /// eviction timeout.
    pub(crate) fn evict_stalled(&mut self, now: Instant) {
        let mut seen = Vec::new();
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
                seen.push(key.clone());
                let stall = self.stalls.entry(key).or_insert(Stall {
                    owner: r.owner,
                    position: r.position,
                    since: now,
                });
                if stall.owner != r.owner || stall.position != r.position {
                    *stall = Stall {
                        owner: r.owner,
                        position: r.position,
                        since: now,
                    };
                    continue;
                }
                if now.duration_since(stall.since) >= self.limits.evict_after
                    && entry.ring.untether_reader(r.slot)
                {
                    entry.ring.wake_readers();
                    warn!(
                        topic,
                        slot = r.slot,
                        client = owner_client(r.owner),
                        stalled_for = ?now.duration_since(stall.since),
                        "reader evicted: it held publishers back without reading"
                    );
                }
            }
        }
        self.stalls.retain(|k, _| seen.contains(k));
    }
}
