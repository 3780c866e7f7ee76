//! Request/response at the broker: who serves which topic, the request rings and inboxes, and
//! the writers requesters and servers get on them. No request or response passes here.
//!
//! The rings of request/response live in the same table as the topics' rings, under names no
//! topic can have (they start with `?`, outside the topic grammar), so that no subscription
//! pattern ever matches them and everything else — quotas, repair of dead writers, freeing slots,
//! eviction — applies to them unchanged: `?serve/TOPIC` is the request ring of `TOPIC`,
//! `?inbox/ID` the inbox whose ring has id `ID`.

use shmbus_shm::{ReaderMode, RingConfig};
use tracing::debug;

use super::clients::SubscriptionKind;
use super::{Core, Descriptors, Handled, Outgoing, error, exact_topic, parse_topic};
use crate::protocol::pubsub::Unsubscribe;
use crate::protocol::reqrep::{InboxOpened, OpenInbox, Respond, Serve, Serving, Target};
use crate::protocol::{ClientId, ErrorCode, Reply, RingId, SubscriptionId};
use crate::topic::Topic;

/// Prefix of request rings' names.
const SERVE_PREFIX: &str = "?serve/";

/// Prefix of inboxes' names.
const INBOX_PREFIX: &str = "?inbox/";

/// Writer slots of a request ring: one per requesting context of every client, so more than a
/// topic's.
const REQUEST_RING_WRITERS: u32 = 1024;

/// The name of `topic`'s request ring.
pub(super) fn request_ring_name(topic: &Topic) -> String {
    format!("{SERVE_PREFIX}{topic}")
}

/// The name of inbox `inbox`'s ring.
pub(super) fn inbox_name(inbox: RingId) -> String {
    format!("{INBOX_PREFIX}{inbox}")
}

/// Whether ring `name` belongs to request/response.
pub(super) fn is_exchange_ring(name: &str) -> bool {
    name.starts_with('?')
}

/// The topic a ring's readers are told: a request ring's served topic, a state ring's
/// collection, `inbox/ID` for an inbox, a topic's ring's own name.
pub(super) fn shown_topic(name: &str) -> &str {
    name.strip_prefix(SERVE_PREFIX)
        .or_else(|| name.strip_prefix(super::state::STATE_PREFIX))
        .or_else(|| name.strip_prefix('?'))
        .unwrap_or(name)
}

impl Core {
    pub(super) fn serve(
        &mut self,
        client: ClientId,
        request: Serve,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let topic = exact_topic(&request.topic, "serve")?;
        if let Some((holder, _)) = self.served.get(topic.as_str()) {
            let pid = self.clients.get(*holder).map_or(0, |c| c.creds.pid);
            return Err(error(
                ErrorCode::Taken,
                format!("topic {topic:?} is already served (by process {pid})"),
            ));
        }
        let name = request_ring_name(&topic);
        // A request ring left by a server that just went is retired already; this is a fresh one.
        self.close_ring(&name);
        let config = RingConfig {
            writer_slots: REQUEST_RING_WRITERS,
            ..self.limits.ring
        };
        let kind = SubscriptionKind::Serve(topic.clone());
        let sub = self.new_subscription(client, kind, ReaderMode::Tethered, request.doorbell)?;
        let attached = self
            .insert_ring(client, &name, &config)
            .and_then(|()| self.attach(client, sub, &name));
        match attached {
            Ok(o) => out.push(o),
            Err(e) => {
                let _ = self.unsubscribe(client, Unsubscribe { subscription: sub });
                return Err(e);
            }
        }
        self.served
            .insert(topic.as_str().to_string(), (client, sub));
        debug!(client = %client, topic = %topic, "serving");
        let reply = Serving { subscription: sub };
        Ok((Reply::Serving(reply), Descriptors::None))
    }

    pub(super) fn open_inbox(
        &mut self,
        client: ClientId,
        request: OpenInbox,
        out: &mut Vec<Outgoing>,
    ) -> Handled {
        let config = self.limits.ring;
        let ring = self.new_ring(client, "an inbox", &config)?;
        let inbox = RingId::from_raw(ring.id());
        let name = inbox_name(inbox);
        let kind = SubscriptionKind::Inbox(inbox);
        let sub = self.new_subscription(client, kind, ReaderMode::Tethered, request.doorbell)?;
        self.add_ring(client, &name, ring);
        match self.attach(client, sub, &name) {
            Ok(o) => out.push(o),
            Err(e) => {
                let _ = self.unsubscribe(client, Unsubscribe { subscription: sub });
                return Err(e);
            }
        }
        debug!(client = %client, inbox = %inbox, "inbox opened");
        let reply = InboxOpened {
            subscription: sub,
            inbox,
        };
        Ok((Reply::InboxOpened(reply), Descriptors::None))
    }

    pub(super) fn target(&mut self, client: ClientId, request: Target) -> Handled {
        let topic = parse_topic(&request.topic)?;
        if !self.served.contains_key(topic.as_str()) {
            return Err(error(
                ErrorCode::NoServer,
                format!("nobody serves {topic:?}"),
            ));
        }
        self.add_publisher(client, &request_ring_name(&topic))
    }

    pub(super) fn respond(&mut self, client: ClientId, request: Respond) -> Handled {
        // Only a server answers: nobody else gets to write into a requester's inbox.
        let serves = self
            .clients
            .known(client)?
            .subscriptions
            .values()
            .any(|s| matches!(s.kind, SubscriptionKind::Serve(_)));
        if !serves {
            return Err(error(
                ErrorCode::NotPermitted,
                "only a client that serves a topic may answer into an inbox",
            ));
        }
        let name = inbox_name(request.inbox);
        if !self.rings.contains_key(&name) {
            return Err(error(
                ErrorCode::Unknown,
                format!("inbox {} is closed (its requester went)", request.inbox),
            ));
        }
        self.add_publisher(client, &name)
    }

    /// Ends what a request/response subscription held: a server's topic (its request ring is
    /// retired, and the requesters writing to it are woken to find out), or an inbox (retired,
    /// so servers' writes to it fail).
    pub(super) fn end_exchange(
        &mut self,
        client: ClientId,
        sub: SubscriptionId,
        kind: &SubscriptionKind,
    ) {
        match kind {
            SubscriptionKind::Pattern(_) | SubscriptionKind::State(_) => {}
            SubscriptionKind::Serve(topic) => {
                if self.served.get(topic.as_str()) != Some(&(client, sub)) {
                    return;
                }
                self.served.remove(topic.as_str());
                let requesters = self.close_ring(&request_ring_name(topic));
                self.wake_inboxes(&requesters);
                debug!(client = %client, topic = %topic, "no longer served");
            }
            SubscriptionKind::Inbox(inbox) => {
                self.close_ring(&inbox_name(*inbox));
            }
        }
    }

    /// Rings the inbox doorbells of `clients`, so that those waiting for an answer look at the
    /// request ring they wrote to and find it retired.
    fn wake_inboxes(&self, clients: &[ClientId]) {
        for c in clients.iter().filter_map(|&id| self.clients.get(id)) {
            for s in c.subscriptions.values() {
                if matches!(s.kind, SubscriptionKind::Inbox(_)) {
                    self.doorbells.table().ring(s.doorbell);
                }
            }
        }
    }
}
