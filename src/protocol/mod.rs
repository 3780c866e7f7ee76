//! The control protocol between clients and the broker.
//!
//! Messages travel over a Unix `SOCK_SEQPACKET` socket: one datagram per message (so message
//! boundaries come from the kernel), file descriptors alongside (`SCM_RIGHTS`). Each message is
//! one [`ClientMessage`] or [`BrokerMessage`] encoded with postcard, at most
//! [`MAX_MESSAGE_LEN`] bytes. The full description, with the order of messages and which ones
//! carry descriptors, is `docs/PROTOCOL.md`.
//!
//! Nothing here trusts the peer: [`codec`] decodes with a hard size limit, rejects trailing bytes
//! and checks the length limits of names, topics and error texts (postcard itself rejects unknown
//! enum variants); the broker then checks topics against the grammar, answering a bad one with an
//! error that names it. A message that fails to decode costs the sender its connection, never the
//! receiver's.

pub mod codec;
pub mod socket;

use serde::{Deserialize, Serialize};

/// Version of this protocol. The client states it in [`ClientMessage::Hello`]; the broker refuses
/// other versions.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message, in bytes. Anything larger is a protocol error.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 4;

/// Longest client name accepted in [`ClientMessage::Hello`].
pub const MAX_NAME_LEN: usize = 255;

/// Longest error text in an [`ErrorReply`].
pub const MAX_ERROR_LEN: usize = 1024;

/// A message from a client to the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u16,
        /// Free-form name for logs and `shmbus stat` (at most [`MAX_NAME_LEN`] bytes).
        name: String,
    },
    /// A request; the broker answers with [`BrokerMessage::Reply`] carrying the same `id`.
    Request {
        /// Chosen by the client to match the reply.
        id: u32,
        /// What is asked.
        body: Request,
    },
    /// The client is leaving; the broker releases everything it held.
    Goodbye,
}

/// What a client can ask of the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Publish on `topic`: the ring is created if needed. Answered with
    /// [`Reply::Publishing`], carrying the ring's data (read-write) and readers descriptors.
    Publish {
        /// The topic, exactly as subscribers will see it.
        topic: String,
        /// Largest payload the publisher will write; refused if the ring's is smaller.
        max_payload: u32,
    },
    /// Stop publishing with a publisher id from [`Reply::Publishing`].
    Unpublish {
        /// The publisher.
        publisher: u32,
    },
    /// Subscribe to every ring whose topic overlaps `pattern`, now and later. The broker
    /// attaches a reader for the client to each such ring before telling it — so nothing
    /// published after the reply is missed — and sends one [`BrokerMessage::RingAttached`] per
    /// ring: those for existing rings before the reply, the others as rings appear.
    Subscribe {
        /// Topic pattern (wildcards allowed).
        pattern: String,
        /// Tethered or lossy.
        mode: ReaderMode,
        /// Deliver the last `history` messages of each ring too.
        history: u32,
        /// Index of the doorbell (claimed by the client in the bus's table) its readers park on.
        doorbell: u32,
    },
    /// End a subscription.
    Unsubscribe {
        /// The subscription id from [`Reply::Subscribed`].
        subscription: u32,
    },
}

/// Reader modes, as in `shmbus_shm::ReaderMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReaderMode {
    /// Holds publishers back until read.
    Tethered,
    /// Never holds publishers back.
    Lossy,
}

/// A message from the broker to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// Answer to [`ClientMessage::Hello`]; carries the bus's doorbell table descriptor.
    Welcome {
        /// The broker's [`PROTOCOL_VERSION`].
        version: u16,
        /// The client's id on this broker.
        client: u32,
        /// Token the client must use as owner of the publisher slots and doorbells it claims (see
        /// `shmbus_shm::Owner`). Reader slots the broker reserves carry their own token (see
        /// [`RingAttachment::owner`]). The broker frees everything of this client when it goes.
        owner: u64,
        /// Largest payload of rings this broker creates.
        max_payload: u32,
    },
    /// The broker will not talk to this client (a protocol version it does not speak, or it
    /// could not set the client up); it closes the connection after sending this.
    Refused(ErrorReply),
    /// Answer to [`ClientMessage::Request`].
    Reply {
        /// The request's id.
        id: u32,
        /// Its outcome.
        result: Result<Reply, ErrorReply>,
    },
    /// A reader slot was attached for the client to a ring matching one of its subscriptions.
    /// Carries the ring's data (read-only) and readers descriptors.
    RingAttached(RingAttachment),
    /// A ring matching one of the client's subscriptions was created, but no reader could be
    /// attached for it (say, the ring has no free reader slot): the subscription will not see
    /// that topic's messages. Sent instead of [`BrokerMessage::RingAttached`].
    RingUnavailable {
        /// The subscription that misses the ring.
        subscription: u32,
        /// The ring's topic.
        topic: String,
        /// Why (`Exhausted` for no free reader slot, `Internal` otherwise).
        error: ErrorReply,
    },
}

/// A reader the broker attached for a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingAttachment {
    /// The subscription.
    pub subscription: u32,
    /// The ring's topic, as its publishers wrote it.
    pub topic: String,
    /// The ring's id (as in its segment headers).
    pub ring: u64,
    /// The reader slot reserved for the client.
    pub slot: u32,
    /// The owner token the slot is held under (the client adopts it with this token).
    pub owner: u64,
    /// Ring position where the reader was joined.
    pub position: u64,
    /// Sequence number expected there.
    pub sequence: u64,
}

/// Successful replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Request::Publish`]; carries the ring's data and readers descriptors.
    Publishing {
        /// Bus-wide id of the new publisher, to be stamped on its frames.
        publisher: u32,
        /// The ring's id.
        ring: u64,
    },
    /// To [`Request::Subscribe`]; `rings` attachments were sent before it.
    Subscribed {
        /// The subscription's id.
        subscription: u32,
        /// How many rings it was attached to before this reply.
        rings: u32,
    },
    /// To requests with nothing to report.
    Done,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line for a human, naming what was wrong (at most [`MAX_ERROR_LEN`] bytes).
    pub message: String,
}

/// Failure kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The protocol versions differ.
    Version,
    /// A topic or pattern is not valid.
    InvalidTopic,
    /// The payload size asked for exceeds what the ring allows.
    TooLarge,
    /// The id does not name something this client holds.
    Unknown,
    /// A limit was reached (slots, rings, subscriptions).
    Exhausted,
    /// The client may not do this.
    NotPermitted,
    /// The broker failed (for example, could not create a memfd).
    Internal,
}
