//! The control protocol between clients and the broker.
//!
//! Messages travel over a Unix `SOCK_SEQPACKET` socket ([`seqpacket`]): one datagram per message
//! (so message boundaries come from the kernel), file descriptors alongside (`SCM_RIGHTS`). Each
//! message is one [`ClientMessage`] or [`BrokerMessage`] encoded with postcard, at most
//! [`MAX_MESSAGE_LEN`] bytes. The full description, with the order of messages and which ones
//! carry descriptors, is `docs/PROTOCOL.md`.
//!
//! This module holds the envelope (handshake, requests and replies, errors) and the ids; each
//! messaging pattern has its own module with its requests, their replies and what the broker
//! sends unasked ([`pubsub`], [`reqrep`], [`state`]). Every request type names its reply type through [`Call`], so a
//! client asks `call(Subscribe { .. })` and gets a [`Subscribed`] back, or a protocol error —
//! never a reply of the wrong kind to sort out.
//!
//! Nothing here trusts the peer: [`codec`] decodes with a hard size limit, rejects trailing bytes
//! and checks the length limits of names, topics and error texts (postcard itself rejects unknown
//! enum variants); the broker then checks topics against the grammar, answering a bad one with an
//! error that names it. A message that fails to decode costs the sender its connection, never the
//! receiver's.

pub mod codec;
mod ids;
pub mod pubsub;
pub mod remote;
pub mod reqrep;
pub mod seqpacket;
pub mod state;

use serde::{Deserialize, Serialize};

pub use ids::{ClientId, PublisherId, RequestId, RingId, SubscriptionId};
use pubsub::{
    ClaimDoorbell, DoorbellClaimed, Holders, Publish, Publishing, ReleaseDoorbell, RingAttachment,
    Subscribe, Subscribed, Unpublish, Unsubscribe, WhoHolds,
};
use reqrep::{InboxOpened, OpenInbox, Respond, Serve, Serving, Target};
use state::{OwnState, SnapshotReady, StateOwned, StateSnapshot, SyncState, WatchState};

/// Version of this protocol. The client states it in [`ClientMessage::Hello`]; the broker refuses
/// other versions.
pub const PROTOCOL_VERSION: u16 = 5;

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
    Hello(Hello),
    /// A request; the broker answers with [`BrokerMessage::Reply`] carrying the same `id`.
    Request {
        /// Chosen by the client to match the reply.
        id: RequestId,
        /// What is asked.
        body: Request,
    },
    /// The client is leaving; the broker releases everything it held.
    Goodbye,
}

/// The handshake's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u16,
    /// Free-form name for logs and `shmbus stat` (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
}

/// What a client can ask of the broker, one variant per request type of every pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// See [`Publish`].
    Publish(Publish),
    /// See [`Unpublish`].
    Unpublish(Unpublish),
    /// See [`Subscribe`].
    Subscribe(Subscribe),
    /// See [`Unsubscribe`].
    Unsubscribe(Unsubscribe),
    /// See [`ClaimDoorbell`].
    ClaimDoorbell(ClaimDoorbell),
    /// See [`ReleaseDoorbell`].
    ReleaseDoorbell(ReleaseDoorbell),
    /// See [`Serve`].
    Serve(Serve),
    /// See [`OpenInbox`].
    OpenInbox(OpenInbox),
    /// See [`Target`].
    Target(Target),
    /// See [`Respond`].
    Respond(Respond),
    /// See [`WhoHolds`].
    WhoHolds(WhoHolds),
    /// See [`OwnState`].
    OwnState(OwnState),
    /// See [`WatchState`].
    WatchState(WatchState),
    /// See [`StateSnapshot`].
    StateSnapshot(StateSnapshot),
    /// See [`SyncState`].
    SyncState(SyncState),
    /// See [`JoinSession`].
    JoinSession(JoinSession),
}

/// Successful replies, one variant per reply type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Publish`]; carries the ring's data and readers descriptors.
    Publishing(Publishing),
    /// To [`Subscribe`].
    Subscribed(Subscribed),
    /// To [`ClaimDoorbell`].
    DoorbellClaimed(DoorbellClaimed),
    /// To requests with nothing to report.
    Done,
    /// To [`Serve`].
    Serving(Serving),
    /// To [`OpenInbox`].
    InboxOpened(InboxOpened),
    /// To [`WhoHolds`].
    Holders(Holders),
    /// To [`StateSnapshot`]; carries the snapshot's memfd.
    SnapshotReady(SnapshotReady),
    /// To [`OwnState`]; carries the ring's data and readers descriptors.
    StateOwned(StateOwned),
    /// To [`JoinSession`].
    SessionJoined(SessionJoined),
}

/// Most bytes of a session name.
pub const MAX_SESSION_LEN: usize = 64;

/// Hold session `name` (of this client's uid) from now on: the broker keeps this client's
/// pattern subscriptions for its session grace period after the client goes (or unsubscribes),
/// and a client that joins the session again within it takes them up where they stood, with
/// what the rings still hold. Sent right after the handshake; refused with `Taken` while another
/// live client holds the session. Answered with [`SessionJoined`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSession {
    /// The session's name: 1 to [`MAX_SESSION_LEN`] bytes.
    pub name: String,
}

/// The answer to [`JoinSession`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionJoined {
    /// Subscriptions the session kept, to be taken up by subscribing to the same patterns.
    pub kept: u32,
}

impl Call for JoinSession {
    type Reply = SessionJoined;

    fn into_request(self) -> Request {
        Request::JoinSession(self)
    }

    fn reply(reply: Reply) -> Result<SessionJoined, Reply> {
        match reply {
            Reply::SessionJoined(s) => Ok(s),
            other => Err(other),
        }
    }
}

/// A request type and the reply it is answered with.
pub trait Call {
    /// What a successful answer carries.
    type Reply;

    /// The request as sent.
    fn into_request(self) -> Request;

    /// The typed answer, or `reply` back if it is not of this request's kind.
    fn reply(reply: Reply) -> Result<Self::Reply, Reply>;
}

/// A message from the broker to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// Answer to [`Hello`]; carries the bus's doorbell table descriptor.
    Welcome(Welcome),
    /// The broker will not talk to this client (a protocol version it does not speak, or it
    /// could not set the client up); it closes the connection after sending this.
    Refused(ErrorReply),
    /// Answer to [`ClientMessage::Request`].
    Reply {
        /// The request's id.
        id: RequestId,
        /// Its outcome.
        result: Result<Reply, ErrorReply>,
    },
    /// A reader slot was attached for the client to a ring matching one of its subscriptions.
    /// Carries the ring's data (read-only) and readers descriptors.
    RingAttached(RingAttachment),
    /// A ring matching one of the client's subscriptions was created, but no reader could be
    /// attached for it (the ring has no free reader slot): the subscription will not see
    /// that topic's messages. Sent instead of [`BrokerMessage::RingAttached`].
    RingUnavailable {
        /// The subscription that misses the ring.
        subscription: SubscriptionId,
        /// The ring's topic.
        topic: String,
        /// Why (`Exhausted`: no free reader slot).
        error: ErrorReply,
    },
    /// The broker retired a ring the subscription reads (it found the ring corrupt): read what
    /// is left in it and drop it. A fresh ring for the topic is attached as usual when it is
    /// published on again.
    RingRetired {
        /// The subscription that reads the ring.
        subscription: SubscriptionId,
        /// The retired ring.
        ring: RingId,
    },
}

/// The answer to [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The broker's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The client's id on this broker.
    pub client: ClientId,
    /// Token the client must use as owner of the publisher slots it claims (see
    /// `shmbus_shm::Owner`). Reader slots the broker reserves carry their own token (see
    /// [`RingAttachment::owner`]). The broker frees everything of this client when it goes.
    pub owner: u64,
    /// Largest payload of rings this broker creates.
    pub max_payload: u32,
    /// Number of doorbells in the table whose descriptor comes with this message (the table's
    /// own header is not trusted: every client can write it).
    pub doorbells: u32,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    /// A limit was reached (slots, rings, subscriptions, a quota of the client).
    Exhausted,
    /// The client may not do this.
    NotPermitted,
    /// The broker failed (for example, could not create a memfd).
    Internal,
    /// Something only one client may hold at a time is held by another (a served topic).
    Taken,
    /// Nobody serves the topic a request is for.
    NoServer,
    /// The broker's access list does not allow this client the operation on the topic (or to
    /// connect at all).
    PermissionDenied,
}
