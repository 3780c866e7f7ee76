//! Publish/subscribe on the control socket: attaching publishers to rings, subscriptions, and
//! the ring attachments the broker sends for them. Messages themselves never pass here.

use serde::{Deserialize, Serialize};
use shmbus_shm::ReaderMode;

use super::ids::{PublisherId, RingId, SubscriptionId};
use super::{Call, Reply, Request};

/// Publish on `topic`: the ring is created if needed. Answered with [`Publishing`], carrying
/// the ring's data (read-write) and readers descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The topic, exactly as subscribers will see it.
    pub topic: String,
    /// Largest payload the publisher will write; refused if the ring's is smaller.
    pub max_payload: u32,
}

/// The answer to [`Publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publishing {
    /// Bus-wide id of the new publisher, to be stamped on its frames.
    pub publisher: PublisherId,
    /// The ring's id.
    pub ring: RingId,
}

/// Stop publishing with a publisher from [`Publishing`]. Answered with [`Reply::Done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpublish {
    /// The publisher.
    pub publisher: PublisherId,
}

/// Subscribe to every ring whose topic overlaps `pattern`, now and later. The broker attaches a
/// reader for the client to each such ring before telling it — so nothing published after the
/// reply is missed — and sends one [`BrokerMessage::RingAttached`](super::BrokerMessage) per
/// ring: those for existing rings before the reply, the others as rings appear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Topic pattern (wildcards allowed).
    pub pattern: String,
    /// Tethered or lossy.
    #[serde(with = "ReaderModeDef")]
    pub mode: ReaderMode,
    /// Deliver the last `history` messages of each ring too (applied by the client).
    pub history: u32,
    /// Index of the doorbell (claimed by the client in the bus's table) its readers park on.
    pub doorbell: u32,
}

/// The answer to [`Subscribe`]; `rings` attachments were sent before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The subscription's id.
    pub subscription: SubscriptionId,
    /// How many rings it was attached to before this reply.
    pub rings: u32,
}

/// End a subscription. Answered with [`Reply::Done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// The subscription from [`Subscribed`].
    pub subscription: SubscriptionId,
}

/// A reader the broker attached for a subscription. Carries the ring's data (read-only) and
/// readers descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingAttachment {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// The ring's topic, as its publishers wrote it.
    pub topic: String,
    /// The ring's id (as in its segment headers).
    pub ring: RingId,
    /// The reader slot reserved for the client.
    pub slot: u32,
    /// The owner token the slot is held under (the client adopts it with this token).
    pub owner: u64,
    /// Ring position where the reader was joined.
    pub position: u64,
    /// Sequence number expected there.
    pub sequence: u64,
}

/// The wire form of [`ReaderMode`] (serde's remote derive: the one enum, spelled once more only
/// for serde).
#[derive(Serialize, Deserialize)]
#[serde(remote = "ReaderMode")]
enum ReaderModeDef {
    Tethered,
    Lossy,
}

impl Call for Publish {
    type Reply = Publishing;

    fn into_request(self) -> Request {
        Request::Publish(self)
    }

    fn reply(reply: Reply) -> Result<Publishing, Reply> {
        match reply {
            Reply::Publishing(p) => Ok(p),
            other => Err(other),
        }
    }
}

impl Call for Unpublish {
    type Reply = ();

    fn into_request(self) -> Request {
        Request::Unpublish(self)
    }

    fn reply(reply: Reply) -> Result<(), Reply> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(other),
        }
    }
}

impl Call for Subscribe {
    type Reply = Subscribed;

    fn into_request(self) -> Request {
        Request::Subscribe(self)
    }

    fn reply(reply: Reply) -> Result<Subscribed, Reply> {
        match reply {
            Reply::Subscribed(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Call for Unsubscribe {
    type Reply = ();

    fn into_request(self) -> Request {
        Request::Unsubscribe(self)
    }

    fn reply(reply: Reply) -> Result<(), Reply> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(other),
        }
    }
}
