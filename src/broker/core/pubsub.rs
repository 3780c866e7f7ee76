//! The publish/subscribe requests: attaching publishers to rings (creating them on first use),
//! subscriptions, and the reader slots the broker reserves for subscriptions on matching rings.

use shmbus_shm::{ReaderMode, ReaderState, SlotError};
use tracing::debug;

use super::clients::{Subscription, SubscriptionKind, owner_subscription, subscription_owner};
use super::interest::Held;
use super::reqrep::shown_topic;
use super::{Core, Descriptors, Handled, Outgoing, error, parse_topic};
use crate::protocol::pubsub::{
    Holder, Holders, MAX_HOLDERS, Publish, Publishing, Resume, RingAttachment, Subscribe,
    Subscribed, Unpublish, Unsubscribe, WhoHolds,
};
use crate::protocol::{
    BrokerMessage, ClientId, ErrorCode, ErrorReply, PublisherId, Reply, SubscriptionId,
};
use crate::topic::{Topic, overlaps};

impl Core {
    pub(super) fn publish(
        &mut self,
        client: ClientId,
        request: Publish,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let topic = parse_topic(&request.topic)?;
        let limit = self.limits.ring.max_payload;
        if request.max_payload > limit {
            return Err(error(
                ErrorCode::TooLarge,
                format!(
                    "payloads of {} bytes exceed this bus's limit of {limit} bytes (topic {topic:?})",
                    request.max_payload
                ),
            ));
        }
        // Checked before a ring is created for nothing.
        self.check_publisher_quota(client, topic.as_str())?;
        if let Some(suspect) = request.replace {
            let damaged = self
                .rings
                .get(topic.as_str())
                .is_some_and(|e| e.id() == suspect && (e.ring.is_corrupt() || e.ring.is_retired()));
            if damaged {
                let why = "a publisher found its claim cursor corrupt";
                self.retire_ring(topic.as_str(), why, out);
            }
        }
        if !self.rings.contains_key(topic.as_str()) {
            self.create_ring(client, &topic, out)?;
        }
        self.add_publisher(client, topic.as_str())
    }

    /// Whether `client` may have one more publisher (on ring `name`).
    fn check_publisher_quota(&mut self, client: ClientId, name: &str) -> Result<(), ErrorReply> {
        let quota = self.limits.quotas.publishers_per_client;
        if self.clients.known(client)?.publishers.len() >= quota {
            return Err(error(
                ErrorCode::Exhausted,
                format!(
                    "this client has {quota} publishers, its quota (topic {:?})",
                    shown_topic(name)
                ),
            ));
        }
        Ok(())
    }

    /// Records a new publisher of `client` on ring `name` and answers with the ring's writable
    /// descriptors.
    pub(super) fn add_publisher(&mut self, client: ClientId, name: &str) -> Handled {
        self.check_publisher_quota(client, name)?;
        let Some(entry) = self.rings.get(name) else {
            return Err(error(ErrorCode::Internal, format!("no ring {name:?}")));
        };
        let fds = Descriptors::Publisher(entry.ring.clone());
        let relayed = match self.clients.known(client)?.peer_link {
            true => PublisherId::RELAYED,
            false => 0,
        };
        let publisher = PublisherId::from_raw(self.next_publisher | relayed);
        // Ids wrap below the relayed bit, skipping 0.
        self.next_publisher = (self.next_publisher + 1) % PublisherId::RELAYED;
        self.next_publisher = self.next_publisher.max(1);
        let ring = entry.geometry();
        let c = self.clients.known(client)?;
        c.publishers.insert(publisher, name.to_string());
        c.publisher_rings.insert(name.to_string());
        debug!(client = %client, publisher = %publisher, ring = name, "publisher attached");
        Ok((Reply::Publishing(Publishing { publisher, ring }), fds))
    }

    pub(super) fn unpublish(&mut self, client: ClientId, request: Unpublish) -> Handled {
        let c = self.clients.known(client)?;
        let publisher = request.publisher;
        let topic = c
            .publishers
            .remove(&publisher)
            .ok_or_else(|| error(ErrorCode::Unknown, format!("no publisher {publisher}")))?;
        debug!(client = %client, publisher = %publisher, topic, "publisher detached");
        self.end_ownership(client, Some(publisher));
        Ok((Reply::Done, Descriptors::None))
    }

    pub(super) fn subscribe(
        &mut self,
        client: ClientId,
        request: Subscribe,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let pattern = parse_topic(&request.pattern)?;
        let kind = SubscriptionKind::Pattern(pattern.clone());
        let sub = self.new_subscription(client, kind, request.mode, request.doorbell)?;
        let taken_up = self.take_up(client, &pattern, request.mode);
        // A corrupt ring is left out: the sweep retires it, and the topic's fresh ring is
        // attached like any new ring.
        // Parsing every ring's name made a subscription cost a parse per ring (thousands of
        // clients on their own topics: quadratic); a ring named without wildcards matches a
        // pattern without them only by its very name.
        let exact = !pattern.is_wildcard();
        let topics: Vec<String> = self
            .rings
            .iter()
            .filter(|(t, e)| {
                let matches = if exact && !t.contains('*') {
                    t.as_str() == pattern.as_str()
                } else {
                    Topic::new(t).is_ok_and(|t| overlaps(&pattern, &t))
                };
                matches && !e.ring.is_corrupt()
            })
            .map(|(t, _)| t.clone())
            .collect();
        let rings = self.attach_all(client, sub, topics, out)?;
        if let Some(taken_up) = taken_up {
            // Taken up by its session: each reader starts where the session's stood.
            for o in out.iter_mut() {
                if let BrokerMessage::RingAttached(a) = &mut o.msg {
                    if a.subscription == sub {
                        a.resume = taken_up.resume(&a.topic, a.ring.id);
                    }
                }
            }
        }
        debug!(client = %client, subscription = %sub, pattern = %pattern, rings, "subscribed");
        let reply = Subscribed {
            subscription: sub,
            rings,
        };
        Ok((Reply::Subscribed(reply), Descriptors::None))
    }

    /// Reserves readers for subscription `sub` on every ring of `names`; all or nothing: if one
    /// fails, the subscription is forgotten, what was reserved released, and its attachments
    /// taken out of `out`. Returns how many rings it was attached to.
    pub(super) fn attach_all(
        &mut self,
        client: ClientId,
        sub: SubscriptionId,
        names: Vec<String>,
        out: &mut Vec<Outgoing>,
    ) -> Result<u32, ErrorReply> {
        let mut rings = 0u32;
        for name in names {
            match self.attach(client, sub, &name) {
                Ok(o) => {
                    out.push(o);
                    rings += 1;
                }
                Err(e) => {
                    let _ = self.unsubscribe(client, Unsubscribe { subscription: sub });
                    out.retain(|o| !matches!(&o.msg, BrokerMessage::RingAttached(a) if a.subscription == sub));
                    return Err(e);
                }
            }
        }
        Ok(rings)
    }

    pub(super) fn unsubscribe(&mut self, client: ClientId, request: Unsubscribe) -> Handled {
        let c = self.clients.known(client)?;
        let sub = request.subscription;
        let s = c
            .subscriptions
            .remove(&sub)
            .ok_or_else(|| error(ErrorCode::Unknown, format!("no subscription {sub}")))?;
        let peer_link = c.peer_link;
        if let Some(session) = c.session.clone() {
            self.keep_subscription(&session, &s);
        }
        self.count_interest(peer_link, &s.kind, false);
        self.reclaim_reserved(client, sub, &s);
        self.end_exchange(client, sub, &s.kind);
        debug!(client = %client, subscription = %sub, "unsubscribed");
        Ok((Reply::Done, Descriptors::None))
    }

    /// Records a new subscription of `client` reading `kind`, whose readers park on `doorbell`
    /// (one the client holds), within the client's quota.
    pub(super) fn new_subscription(
        &mut self,
        client: ClientId,
        kind: SubscriptionKind,
        mode: ReaderMode,
        doorbell: u32,
    ) -> Result<SubscriptionId, ErrorReply> {
        let quota = self.limits.quotas.subscriptions_per_client;
        let c = self.clients.known(client)?;
        if !c.doorbells.contains(&doorbell) {
            return Err(error(
                ErrorCode::NotPermitted,
                format!("doorbell {doorbell} is not held by this client"),
            ));
        }
        if c.subscriptions.len() >= quota {
            let what = match &kind {
                SubscriptionKind::Pattern(p) => format!("pattern {p:?}"),
                SubscriptionKind::Serve(t) => format!("serving {t:?}"),
                SubscriptionKind::Inbox(_) => "an inbox".to_string(),
                SubscriptionKind::State(p) => format!("watching state {p:?}"),
            };
            return Err(error(
                ErrorCode::Exhausted,
                format!("this client has {quota} subscriptions, its quota ({what})"),
            ));
        }
        // Ids need only be unique per client, since slot owners combine them with the client's.
        let mut raw = self.next_subscription;
        while c.subscriptions.contains_key(&SubscriptionId::from_raw(raw)) {
            raw = raw.wrapping_add(1).max(1);
        }
        self.next_subscription = raw.wrapping_add(1).max(1);
        let sub = SubscriptionId::from_raw(raw);
        let peer_link = c.peer_link;
        self.count_interest(peer_link, &kind, true);
        // History is applied by the client when it adopts each reader.
        let c = self.clients.known(client)?;
        c.subscriptions.insert(
            sub,
            Subscription {
                kind,
                mode,
                doorbell,
                reserved: Vec::new(),
            },
        );
        Ok(sub)
    }

    /// Counts a pattern subscription or a served topic that a client (the gateway's peer
    /// connection aside) takes up (`added`) or ends, on the interest board.
    pub(super) fn count_interest(&self, peer_link: bool, kind: &SubscriptionKind, added: bool) {
        let (held, what) = match kind {
            SubscriptionKind::Pattern(pattern) => (Held::Pattern, pattern),
            SubscriptionKind::Serve(topic) => (Held::Served, topic),
            SubscriptionKind::Inbox(_) | SubscriptionKind::State(_) => return,
        };
        if peer_link {
            return;
        }
        match added {
            true => self.interest.add(held, what.as_str()),
            false => self.interest.remove(held, what.as_str()),
        }
    }

    /// The tethered readers furthest behind on ring `request.ring`, as the broker knows their
    /// clients (only slots it reserved count).
    pub(super) fn who_holds(&mut self, request: WhoHolds) -> Handled {
        let mut holders = Vec::new();
        if let Some(entry) = self.rings.values().find(|e| e.id() == request.ring) {
            let head = entry.ring.head().position;
            let tethered: Vec<_> = entry
                .ring
                .readers()
                .into_iter()
                .filter(|r| {
                    r.state == ReaderState::Tethered
                        && entry.reserved.get(&r.slot) == Some(&r.owner)
                })
                .collect();
            let slowest = tethered.iter().map(|r| r.position).min();
            for r in tethered.iter().filter(|r| Some(r.position) == slowest) {
                let (client, _) = owner_subscription(r.owner);
                let Some(c) = self.clients.get(client) else {
                    continue;
                };
                holders.push(Holder {
                    pid: c.creds.pid,
                    uid: c.creds.uid,
                    name: crate::protocol::truncate_at_char(&c.name, 64).to_string(),
                    behind: head.saturating_sub(r.position),
                });
                if holders.len() == MAX_HOLDERS {
                    break;
                }
            }
        }
        Ok((Reply::Holders(Holders { holders }), Descriptors::None))
    }

    /// Frees the reader slots reserved for a subscription that ends. Slots the client adopted
    /// and dropped are already free (owner 0); the rest — attached but never adopted, or held by
    /// a client that died — are freed here. The per-subscription owner token makes sure no slot
    /// of another subscription is touched.
    pub(super) fn reclaim_reserved(
        &mut self,
        client: ClientId,
        sub: SubscriptionId,
        s: &Subscription,
    ) {
        let owner = subscription_owner(client, sub);
        for (topic, slot) in &s.reserved {
            if let Some(entry) = self.rings.get_mut(topic) {
                if entry.reserved.get(slot) == Some(&owner.get()) {
                    entry.reserved.remove(slot);
                }
                if entry.ring.reclaim_reader(*slot, owner) {
                    debug!(client = %client, topic, slot, "reader slot reclaimed");
                }
            }
        }
    }

    /// Reserves a reader on ring `topic` for subscription `sub` and returns the attachment.
    pub(super) fn attach(
        &mut self,
        client: ClientId,
        sub: SubscriptionId,
        topic: &str,
    ) -> Result<Outgoing, ErrorReply> {
        let Some(entry) = self.rings.get_mut(topic) else {
            return Err(error(ErrorCode::Internal, format!("no ring for {topic:?}")));
        };
        let s = self
            .clients
            .get_mut(client)
            .and_then(|c| c.subscriptions.get_mut(&sub))
            .ok_or_else(|| error(ErrorCode::Unknown, "no such subscription"))?;
        let owner = subscription_owner(client, sub);
        let mode: ReaderMode = s.mode;
        let mut reserved = entry.ring.reserve_reader(mode, owner, s.doorbell);
        if matches!(reserved, Err(SlotError::NoFreeSlot { .. }))
            && entry.free_foreign_readers(topic) > 0
        {
            reserved = entry.ring.reserve_reader(mode, owner, s.doorbell);
        }
        let reserved =
            reserved.map_err(|e| error(ErrorCode::Exhausted, format!("topic {topic:?}: {e}")))?;
        s.reserved.push((topic.to_string(), reserved.slot));
        entry.reserved.insert(reserved.slot, owner.get());
        entry.evicted.remove(&reserved.slot);
        entry.stalls.remove(&reserved.slot);
        let attachment = RingAttachment {
            subscription: sub,
            topic: shown_topic(topic).to_string(),
            ring: entry.geometry(),
            slot: reserved.slot,
            owner: owner.get(),
            position: reserved.position,
            sequence: reserved.sequence,
            resume: Resume::Join,
        };
        Ok(Outgoing {
            client,
            msg: BrokerMessage::RingAttached(attachment),
            fds: Descriptors::Subscriber(entry.ring.clone()),
        })
    }
}
