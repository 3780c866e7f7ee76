//! Publish/subscribe on the control socket: attaching publishers to rings, subscriptions, and
//! the ring attachments the broker sends for them. Messages themselves never pass here.

use serde::{Deserialize, Serialize};
use shmbus_shm::{ReaderMode, RingConfig, RingSpec};

use super::ids::{PublisherId, RingId, SubscriptionId};
use super::{Call, Reply, Request};

/// A ring as the broker describes it: participants map the ring's descriptors with this
/// geometry and never trust the segments' own headers, which others can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingGeometry {
    /// The ring's id (as in its segment headers).
    pub id: RingId,
    /// Bytes of frame storage.
    pub capacity: u64,
    /// Largest payload of one frame.
    pub max_payload: u32,
    /// Writer slots.
    pub writer_slots: u32,
    /// Reader slots.
    pub reader_slots: u32,
    /// Key of the ring's commit stamps.
    pub stamp_key: u64,
}

impl From<RingSpec> for RingGeometry {
    fn from(spec: RingSpec) -> RingGeometry {
        RingGeometry {
            id: RingId::from_raw(spec.id),
            capacity: spec.config.capacity,
            max_payload: spec.config.max_payload,
            writer_slots: spec.config.writer_slots,
            reader_slots: spec.config.reader_slots,
            stamp_key: spec.stamp_key,
        }
    }
}

impl From<RingGeometry> for RingSpec {
    fn from(g: RingGeometry) -> RingSpec {
        RingSpec {
            id: g.id.get(),
            config: RingConfig {
                capacity: g.capacity,
                max_payload: g.max_payload,
                writer_slots: g.writer_slots,
                reader_slots: g.reader_slots,
            },
            stamp_key: g.stamp_key,
        }
    }
}

/// Publish on `topic`: the ring is created if needed. Answered with [`Publishing`], carrying
/// the ring's data (read-write) and readers descriptors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The topic, exactly as subscribers will see it.
    pub topic: String,
    /// Largest payload the publisher will write; refused if the ring's is smaller.
    pub max_payload: u32,
    /// A ring of this topic the publisher found corrupt (or retired): the broker checks it and,
    /// if so, retires it and answers with a fresh ring.
    pub replace: Option<RingId>,
}

/// The answer to [`Publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publishing {
    /// Bus-wide id of the new publisher, to be stamped on its frames.
    pub publisher: PublisherId,
    /// The ring.
    pub ring: RingGeometry,
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
    /// Index of the doorbell its readers park on (one the client holds: see [`ClaimDoorbell`]).
    pub doorbell: u32,
}

/// Claim a doorbell of the bus's table for a subscriber to park on. The broker records who holds
/// which (the table itself is writable by every client, so nothing in it is trusted), and frees
/// a client's doorbells when it goes. Answered with [`DoorbellClaimed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimDoorbell;

/// The answer to [`ClaimDoorbell`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorbellClaimed {
    /// The doorbell's index in the table.
    pub index: u32,
}

/// Give back a doorbell from [`DoorbellClaimed`]. Answered with [`Reply::Done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDoorbell {
    /// The doorbell's index.
    pub index: u32,
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
    /// The ring.
    pub ring: RingGeometry,
    /// The reader slot reserved for the client.
    pub slot: u32,
    /// The owner token the slot is held under (the client adopts it with this token).
    pub owner: u64,
    /// Ring position where the reader was joined.
    pub position: u64,
    /// Sequence number expected there.
    pub sequence: u64,
    /// Where to read from instead, for a session's subscription taken up again.
    pub resume: Resume,
}

/// Where a reader taken up by a session starts, besides its subscription's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resume {
    /// From the join (a fresh subscription).
    #[default]
    Join,
    /// From where the session's reader stood on this ring: `position`, where the frame carries
    /// `sequence`. What writers overwrote since is reported lost.
    At {
        /// The ring position.
        position: u64,
        /// The sequence number expected there.
        sequence: u64,
    },
    /// From the oldest frame the ring holds: it appeared while the session was away.
    Oldest,
    /// From the join, and an unknown number of messages may be lost: the ring was replaced or
    /// the session's position could not be checked.
    Gap,
}

/// Most holders a [`Holders`] reply names.
pub const MAX_HOLDERS: usize = 8;

/// Ask who holds the publishers of ring `ring` back: the tethered readers furthest behind.
/// Answered with [`Holders`] (empty if the ring is gone or nobody holds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoHolds {
    /// The ring (from [`Publishing`]).
    pub ring: RingId,
}

/// The answer to [`WhoHolds`]: at most [`MAX_HOLDERS`] readers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    /// The readers furthest behind, all at the same position.
    pub holders: Vec<Holder>,
}

/// A reader that holds publishers back, as the broker knows its client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Its process.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// The name its client gave (at most 64 bytes).
    pub name: String,
    /// Bytes of the ring it has not released.
    pub behind: u64,
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

impl Call for ClaimDoorbell {
    type Reply = DoorbellClaimed;

    fn into_request(self) -> Request {
        Request::ClaimDoorbell(self)
    }

    fn reply(reply: Reply) -> Result<DoorbellClaimed, Reply> {
        match reply {
            Reply::DoorbellClaimed(d) => Ok(d),
            other => Err(other),
        }
    }
}

impl Call for WhoHolds {
    type Reply = Holders;

    fn into_request(self) -> Request {
        Request::WhoHolds(self)
    }

    fn reply(reply: Reply) -> Result<Holders, Reply> {
        match reply {
            Reply::Holders(h) => Ok(h),
            other => Err(other),
        }
    }
}

impl Call for ReleaseDoorbell {
    type Reply = ();

    fn into_request(self) -> Request {
        Request::ReleaseDoorbell(self)
    }

    fn reply(reply: Reply) -> Result<(), Reply> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(other),
        }
    }
}
