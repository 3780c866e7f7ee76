//! The remote protocol: what a client on another host (or a peer broker) and a broker's gateway
//! say to each other over TCP or TLS.
//!
//! A byte stream carries frames: a little-endian `u32` length, then that many bytes — a kind
//! byte and its body. The length is checked before anything is buffered: at most
//! [`HANDSHAKE_LIMIT`] until the handshake is over, then the largest payload the gateway announced
//! plus [`FRAME_OVERHEAD`]. Control frames (handshake, subscribing, advertising, errors) are
//! postcard-encoded bodies with the same limits as the local protocol; the two frames that carry
//! messages ([`Frame::Publish`], [`Frame::Message`]) have a fixed binary layout, so that a payload
//! is copied once into the stream and borrowed straight out of it.
//!
//! The conversation: the client sends [`Frame::Hello`] (magic and [`REMOTE_VERSION`]), the
//! gateway answers [`Frame::Welcome`] or [`Frame::Refused`] and closes. Then the client asks with
//! frames that carry an id of its choosing (a subscription's or a publisher's), and the gateway
//! answers each with [`Frame::Done`] or [`Frame::Failed`] naming it; messages then flow both
//! ways. Either side sends [`Frame::Ping`] when it has been quiet for a while, and closes a
//! connection that has sent no complete frame for longer than its idle timeout.
//!
//! A broker peering with another says so in its hello ([`Hello::peer`], its node id); the link
//! then carries, both ways, the brokers' interest ([`Frame::Interest`]: which patterns their
//! subscribers hold, flooded with a version per origin) and the messages that match it
//! ([`Frame::Relay`], each named by its origin, publisher and sequence).
//!
//! Nothing here trusts the peer: every length is checked against what is left of the frame,
//! strings must be UTF-8 within their limits, and trailing bytes are an error. A frame that fails
//! to decode costs the sender its connection.

use serde::{Deserialize, Serialize};

use super::state::Record;
use super::{ErrorCode, MAX_ERROR_LEN, MAX_NAME_LEN};
use crate::topic::MAX_TOPIC_LEN;

/// Version of the remote protocol, sent in [`Hello`] and [`Welcome`]; a gateway refuses others
/// (2: [`Hello::instance`]).
pub const REMOTE_VERSION: u16 = 2;

/// First bytes of every [`Hello`]: something that is not a shmbus client is refused at once.
pub const MAGIC: [u8; 4] = *b"SHMB";

/// Largest frame (kind and body) before the handshake is over.
pub const HANDSHAKE_LIMIT: usize = 4096;

/// What a [`Frame::Message`] or a [`Frame::Relay`] adds to its payload at most: kind, ids,
/// sequence and topic.
pub const FRAME_OVERHEAD: usize = 1 + 8 + 4 + 8 + 2 + MAX_TOPIC_LEN;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Most patterns one [`Subscribe`] may carry.
pub const MAX_PATTERNS: usize = 64;

/// Most patterns, and most served topics, one broker's [`Interest`] may carry.
pub const MAX_INTEREST_PATTERNS: usize = 1024;

/// The largest [`Frame::Interest`]: what a peer link's frame limit is at least, whatever the
/// largest payload.
pub const INTEREST_LIMIT: usize = 64 + 2 * MAX_INTEREST_PATTERNS * (MAX_TOPIC_LEN + 2);

/// The id of one running broker among peers: random, new at every start.
pub type NodeId = u64;

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`REMOTE_VERSION`] of the client.
    pub version: u16,
    /// Free-form name for logs (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// The session to hold (at most [`MAX_REMOTE_SESSION_LEN`] bytes): the gateway joins it on
    /// the client's behalf, so its subscriptions outlive the connection for the broker's
    /// session grace period.
    pub session: Option<String>,
    /// For a broker that peers with this one: who it is. The link then carries
    /// [`Frame::Interest`] and [`Frame::Relay`] both ways, and nothing else.
    pub peer: Option<Peer>,
    /// A number the client drew at random when it first connected, the same on every
    /// reconnection (0: none). A hello naming the instance of a connection the gateway still
    /// holds, for the same user, replaces that connection at once: the client noticed the loss
    /// of the link before the gateway did, and its session and collections go to the new one.
    pub instance: u64,
}

/// The first fields of every version's [`Hello`]: what a gateway reads of a hello of another
/// version, to refuse it with a clear message.
#[derive(Deserialize)]
struct HelloHead {
    magic: [u8; 4],
    version: u16,
}

/// A broker that dials another to peer with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its node id.
    pub node: NodeId,
    /// The largest payload its bus carries: larger messages are not relayed to it.
    pub max_payload: u32,
}

/// Most bytes of a remote client's session name (the gateway adds a prefix of its own).
pub const MAX_REMOTE_SESSION_LEN: usize = 48;

/// The gateway's answer to a [`Hello`] it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`REMOTE_VERSION`] of the gateway.
    pub version: u16,
    /// The largest payload the bus carries; frames are bounded by it.
    pub max_payload: u32,
    /// The gateway's broker's node id (a peer dialing itself sees its own).
    pub node: NodeId,
}

/// How an [`Frame::Answer`] stands in its exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    /// The one answer to a request (not a stream).
    Single,
    /// One answer of a stream; more follow.
    Item,
    /// The end of a stream (no payload).
    End,
}

impl AnswerKind {
    fn byte(self) -> u8 {
        match self {
            AnswerKind::Single => 0,
            AnswerKind::Item => 1,
            AnswerKind::End => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<AnswerKind> {
        match byte {
            0 => Some(AnswerKind::Single),
            1 => Some(AnswerKind::Item),
            2 => Some(AnswerKind::End),
            _ => None,
        }
    }
}

/// Why a remote request got no (more) answers: [`RequestError`](crate::RequestError)'s
/// variants that the gateway can meet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unanswered {
    /// Nobody serves the topic.
    NoServer,
    /// No answer before the timeout.
    Timeout,
    /// The server went away without answering.
    ServerGone,
    /// The server dropped the request without finishing its answer.
    Abandoned,
    /// The request exceeds the bus's payload limit.
    TooLarge {
        /// Request length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The gateway refused the request (access, topic, setup).
    Refused(Refusal),
}

/// What one broker's side of a peering wants and offers: the patterns its own subscribers
/// hold and the topics its own servers serve, as of `version`. Brokers flood these to each
/// other, each keeping the newest per origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// The broker whose subscribers hold the patterns.
    pub origin: NodeId,
    /// Grows with every change and refresh of the origin's interest.
    pub version: u64,
    /// Topic patterns (at most [`MAX_INTEREST_PATTERNS`], each at most [`MAX_TOPIC_LEN`]
    /// bytes).
    pub patterns: Vec<String>,
    /// Served topics (as many, as long): requests to them go to the origin.
    pub served: Vec<String>,
}

/// Why the gateway refuses a connection or a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of refusal, as the local protocol names them.
    pub code: ErrorCode,
    /// One line naming what was wrong (at most [`MAX_ERROR_LEN`] bytes).
    pub message: String,
}

impl Refusal {
    /// A refusal with `message` cut to [`MAX_ERROR_LEN`] bytes (at a character boundary).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        let message = message.into();
        let message = super::truncate_at_char(&message, MAX_ERROR_LEN).to_string();
        Refusal { code, message }
    }
}

/// How a remote subscription reads its rings at the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Lossless: a remote subscriber that stops reading holds local publishers back until the
    /// broker evicts the gateway's reader (then [`Frame::Lagged`]).
    Tethered,
    /// Never holds publishers back; overruns are reported as [`Frame::Lagged`].
    Lossy,
    /// The state rings of the collections the patterns match, read like [`Mode::Tethered`]:
    /// each message is one [`Record`] of a collection, for a remote state watcher, which
    /// starts from (and catches up with) a [`Frame::Snapshot`].
    State,
}

/// Own a state collection; answered with [`Frame::Owned`] or [`Frame::Failed`]. The
/// collection's changes then come as [`Frame::Change`]s naming `id`; [`Frame::Withdraw`] ends
/// the ownership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Own {
    /// The client's id for the owner.
    pub id: u32,
    /// The collection's topic (no wildcards).
    pub topic: String,
    /// Whether the broker keeps the collection on disk.
    pub persistent: bool,
    /// The client's content replaces the collection's: after the [`Frame::Change`]s that put
    /// every entry it holds comes [`Frame::Settle`], and the gateway removes every entry not
    /// put since. Sent when an owner owns again after a reconnection; otherwise the owner
    /// starts from the collection's content (persistent collections keep theirs), read with a
    /// [`Frame::Snapshot`].
    pub replace: bool,
}

/// Subscribe to patterns; answered with [`Frame::Done`] once every pattern is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The client's id for the subscription: its messages carry it.
    pub id: u32,
    /// Topic patterns (at most [`MAX_PATTERNS`], each at most [`MAX_TOPIC_LEN`] bytes).
    pub patterns: Vec<String>,
    /// How the gateway reads.
    pub mode: Mode,
    /// Also the last this many messages of each topic published before subscribing.
    pub history: u32,
}

/// One frame of the remote protocol, borrowing its strings and payload from the bytes it was
/// decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Client: the handshake.
    Hello(Hello),
    /// Gateway: the handshake is accepted.
    Welcome(Welcome),
    /// Gateway: the handshake is refused; the connection closes.
    Refused(Refusal),
    /// Client: subscribe.
    Subscribe(Subscribe),
    /// Client: add a pattern to subscription `id` (answered like [`Frame::Subscribe`]).
    AddPattern {
        /// The subscription.
        id: u32,
        /// The pattern.
        pattern: String,
    },
    /// Client: end subscription `id` (not answered).
    Unsubscribe {
        /// The subscription.
        id: u32,
    },
    /// Client: publish on `topic` under id `id`; answered with [`Frame::Done`].
    Advertise {
        /// The client's id for the publisher.
        id: u32,
        /// The topic.
        topic: String,
    },
    /// Client: publisher `id` is gone (not answered).
    Withdraw {
        /// The publisher.
        id: u32,
    },
    /// Client: one message of an advertised publisher.
    Publish {
        /// The publisher.
        publisher: u32,
        /// The message.
        payload: &'a [u8],
    },
    /// Gateway: one message for a subscription.
    Message {
        /// The subscription.
        subscription: u32,
        /// The bus-wide id of the publisher that wrote it.
        publisher: u32,
        /// Its sequence number in its ring.
        sequence: u64,
        /// Its topic.
        topic: &'a str,
        /// The message.
        payload: &'a [u8],
    },
    /// Gateway: subscription `subscription` missed messages of `topic`.
    Lagged {
        /// The subscription.
        subscription: u32,
        /// The topic (or pattern, across a reconnection of the gateway) the gap is in.
        topic: String,
        /// How many, or `u64::MAX` if unknown.
        missed: u64,
    },
    /// Gateway: the request with this id is done.
    Done {
        /// The subscription or publisher asked about.
        id: u32,
    },
    /// Gateway: the request with this id failed.
    Failed {
        /// The subscription or publisher asked about.
        id: u32,
        /// Why.
        refusal: Refusal,
    },
    /// Peer: a broker's interest, its own or passed on.
    Interest(Interest),
    /// Peer: one message published at broker `origin`, passed on towards the brokers whose
    /// interest it matches. `(origin, publisher, sequence)` names it among all messages of a
    /// peering, so that one arriving twice (around a cycle) is dropped.
    Relay {
        /// The broker it was published at.
        origin: NodeId,
        /// The id of its publisher at that broker.
        publisher: u32,
        /// Its sequence number in its ring at that broker.
        sequence: u64,
        /// Its topic.
        topic: &'a str,
        /// The message.
        payload: &'a [u8],
    },
    /// Client: ask the server of `topic`; answered by [`Frame::Answer`]s or a
    /// [`Frame::Unanswered`] naming `id`.
    Request {
        /// The client's id for the exchange (its own, apart from subscription and publisher
        /// ids).
        id: u32,
        /// Answers come as a stream ([`AnswerKind::Item`]s then [`AnswerKind::End`]) rather
        /// than one [`AnswerKind::Single`].
        stream: bool,
        /// How long to wait for (each) answer, in milliseconds; `u64::MAX`: as long as it
        /// takes.
        timeout_ms: u64,
        /// The topic.
        topic: &'a str,
        /// The request.
        payload: &'a [u8],
    },
    /// Gateway: an answer to request `id`.
    Answer {
        /// The request.
        id: u32,
        /// Where it stands.
        kind: AnswerKind,
        /// The answer.
        payload: &'a [u8],
    },
    /// Gateway: request `id` ends without (more) answers. Client: the server dropped the
    /// request the gateway numbered `id` without answering ([`Unanswered::Abandoned`]).
    Unanswered {
        /// The request.
        id: u32,
        /// Why.
        why: Unanswered,
    },
    /// Client: serve `topic` under id `id`; answered with [`Frame::Done`] or [`Frame::Failed`]
    /// (`Taken` when another server has it).
    Serve {
        /// The client's id for the server.
        id: u32,
        /// The topic (no wildcards).
        topic: String,
    },
    /// Client: server `id` stops serving (not answered); what it has not answered is
    /// abandoned.
    Unserve {
        /// The server.
        id: u32,
    },
    /// Gateway: a request for server `server`, numbered `request` by the gateway.
    Incoming {
        /// The server.
        server: u32,
        /// The gateway's number for the request, which the answers name.
        request: u32,
        /// The request.
        payload: &'a [u8],
    },
    /// Client: an answer to request `request` (see [`Frame::Incoming`]).
    Respond {
        /// The gateway's number for the request.
        request: u32,
        /// Where it stands.
        kind: AnswerKind,
        /// The answer.
        payload: &'a [u8],
    },
    /// Client: the content of the state collections `pattern` matches; answered with
    /// [`Frame::SnapshotPart`]s naming `id`, the last one marked, or with [`Frame::Failed`].
    Snapshot {
        /// The client's id for the snapshot.
        id: u32,
        /// The pattern (wildcards allowed).
        pattern: String,
    },
    /// Gateway: the next bytes of snapshot `id`, in the format of
    /// [`state::snapshot`](super::state::snapshot).
    SnapshotPart {
        /// The snapshot.
        id: u32,
        /// Whether this is the last part.
        last: bool,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// Client: own a state collection.
    Own(Own),
    /// Gateway: the owner with this id owns its collection.
    Owned {
        /// The owner.
        id: u32,
        /// The largest value the collection's ring carries.
        max_value: u32,
        /// Most bytes the collection may hold, keys and values together.
        max_bytes: u64,
    },
    /// Client: one change of owner `owner`'s collection (a put, a removal or a restart
    /// counter; never a clear). Not answered; a change the gateway cannot make is reported
    /// with [`Frame::Failed`] naming the owner.
    Change {
        /// The owner.
        owner: u32,
        /// The change (its sequence number is not used: the gateway numbers changes).
        change: Record<'a>,
    },
    /// Client: every entry of a replacing [`Own`] was put; the others go (not answered).
    Settle {
        /// The owner.
        owner: u32,
    },
    /// Client: answer with [`Frame::Done`] naming `id` once the broker has every change owner
    /// `owner` made before (on disk, for a persistent collection).
    SyncState {
        /// The client's id for the call.
        id: u32,
        /// The owner.
        owner: u32,
    },
    /// Either side: are you there?
    Ping,
    /// Either side: the answer to [`Frame::Ping`].
    Pong,
}

/// The kind byte of each frame.
mod kind {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const SUBSCRIBE: u8 = 4;
    pub const ADD_PATTERN: u8 = 5;
    pub const UNSUBSCRIBE: u8 = 6;
    pub const ADVERTISE: u8 = 7;
    pub const WITHDRAW: u8 = 8;
    pub const PUBLISH: u8 = 9;
    pub const MESSAGE: u8 = 10;
    pub const LAGGED: u8 = 11;
    pub const DONE: u8 = 12;
    pub const FAILED: u8 = 13;
    pub const PING: u8 = 14;
    pub const PONG: u8 = 15;
    pub const INTEREST: u8 = 16;
    pub const RELAY: u8 = 17;
    pub const REQUEST: u8 = 18;
    pub const ANSWER: u8 = 19;
    pub const UNANSWERED: u8 = 20;
    pub const SERVE: u8 = 21;
    pub const UNSERVE: u8 = 22;
    pub const INCOMING: u8 = 23;
    pub const RESPOND: u8 = 24;
    pub const SNAPSHOT: u8 = 25;
    pub const SNAPSHOT_PART: u8 = 26;
    pub const OWN: u8 = 27;
    pub const OWNED: u8 = 28;
    pub const CHANGE: u8 = 29;
    pub const SETTLE: u8 = 30;
    pub const SYNC_STATE: u8 = 31;
}

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A length prefix beyond the limit in force.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame of length zero (it has no kind).
    #[error("empty frame")]
    Empty,
    /// A kind byte no frame has.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body is cut short, malformed, or followed by extra bytes.
    #[error("malformed {kind} frame: {detail}")]
    Malformed {
        /// The frame's kind.
        kind: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The frame length `prefix` announces, if it is within `limit`.
pub fn frame_length(prefix: [u8; LENGTH_PREFIX], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    match len {
        0 => Err(FrameError::Empty),
        len if len > limit => Err(FrameError::TooLong { len, limit }),
        len => Ok(len),
    }
}

/// Appends `frame`, with its length prefix, to `out`.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    match frame {
        Frame::Hello(body) => control(out, kind::HELLO, body),
        Frame::Welcome(body) => control(out, kind::WELCOME, body),
        Frame::Refused(body) => control(out, kind::REFUSED, body),
        Frame::Subscribe(body) => control(out, kind::SUBSCRIBE, body),
        Frame::AddPattern { id, pattern } => control(out, kind::ADD_PATTERN, &(id, pattern)),
        Frame::Unsubscribe { id } => control(out, kind::UNSUBSCRIBE, id),
        Frame::Advertise { id, topic } => control(out, kind::ADVERTISE, &(id, topic)),
        Frame::Withdraw { id } => control(out, kind::WITHDRAW, id),
        Frame::Lagged {
            subscription,
            topic,
            missed,
        } => control(out, kind::LAGGED, &(subscription, topic, missed)),
        Frame::Done { id } => control(out, kind::DONE, id),
        Frame::Failed { id, refusal } => control(out, kind::FAILED, &(id, refusal)),
        Frame::Interest(body) => control(out, kind::INTEREST, body),
        Frame::Unanswered { id, why } => control(out, kind::UNANSWERED, &(id, why)),
        Frame::Request {
            id,
            stream,
            timeout_ms,
            topic,
            payload,
        } => {
            out.push(kind::REQUEST);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(u8::from(*stream));
            out.extend_from_slice(&timeout_ms.to_le_bytes());
            topic_and_payload(out, topic, payload);
        }
        Frame::Answer { id, kind, payload } => {
            out.push(kind::ANSWER);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(kind.byte());
            out.extend_from_slice(payload);
        }
        Frame::Serve { id, topic } => control(out, kind::SERVE, &(id, topic)),
        Frame::Unserve { id } => control(out, kind::UNSERVE, id),
        Frame::Incoming {
            server,
            request,
            payload,
        } => {
            out.push(kind::INCOMING);
            out.extend_from_slice(&server.to_le_bytes());
            out.extend_from_slice(&request.to_le_bytes());
            out.extend_from_slice(payload);
        }
        Frame::Respond {
            request,
            kind,
            payload,
        } => {
            out.push(kind::RESPOND);
            out.extend_from_slice(&request.to_le_bytes());
            out.push(kind.byte());
            out.extend_from_slice(payload);
        }
        Frame::Snapshot { id, pattern } => control(out, kind::SNAPSHOT, &(id, pattern)),
        Frame::SnapshotPart { id, last, bytes } => {
            out.push(kind::SNAPSHOT_PART);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(u8::from(*last));
            out.extend_from_slice(bytes);
        }
        Frame::Own(body) => control(out, kind::OWN, body),
        Frame::Owned {
            id,
            max_value,
            max_bytes,
        } => control(out, kind::OWNED, &(id, max_value, max_bytes)),
        Frame::Change { owner, change } => {
            out.push(kind::CHANGE);
            out.extend_from_slice(&owner.to_le_bytes());
            let at = out.len();
            out.resize(at + change.encoded_len(), 0);
            change.encode(0, &mut out[at..]);
        }
        Frame::Settle { owner } => control(out, kind::SETTLE, owner),
        Frame::SyncState { id, owner } => control(out, kind::SYNC_STATE, &(id, owner)),
        Frame::Ping => out.push(kind::PING),
        Frame::Pong => out.push(kind::PONG),
        Frame::Publish { publisher, payload } => {
            out.push(kind::PUBLISH);
            out.extend_from_slice(&publisher.to_le_bytes());
            out.extend_from_slice(payload);
        }
        Frame::Message {
            subscription,
            publisher,
            sequence,
            topic,
            payload,
        } => {
            out.push(kind::MESSAGE);
            out.extend_from_slice(&subscription.to_le_bytes());
            message_fields(out, *publisher, *sequence, topic, payload);
        }
        Frame::Relay {
            origin,
            publisher,
            sequence,
            topic,
            payload,
        } => {
            out.push(kind::RELAY);
            out.extend_from_slice(&origin.to_le_bytes());
            message_fields(out, *publisher, *sequence, topic, payload);
        }
    }
    let len = u32::try_from(out.len() - start - LENGTH_PREFIX).expect("frames fit in u32");
    out[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_le_bytes());
}

/// Appends the fields a [`Frame::Message`] and a [`Frame::Relay`] share.
fn message_fields(out: &mut Vec<u8>, publisher: u32, sequence: u64, topic: &str, payload: &[u8]) {
    out.extend_from_slice(&publisher.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    topic_and_payload(out, topic, payload);
}

/// Appends a topic (its `u16` length, then its bytes) and the payload after it.
fn topic_and_payload(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    let topic_len = u16::try_from(topic.len()).expect("topics are at most 255 bytes");
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a control frame: its kind, then `body` in postcard.
fn control<T: Serialize>(out: &mut Vec<u8>, kind: u8, body: &T) {
    out.push(kind);
    // Serialized straight onto `out`. Writing into a Vec cannot fail; the bodies are plain data.
    *out = postcard::to_extend(body, std::mem::take(out)).expect("control bodies serialize");
}

/// [`Frame::Ping`] or [`Frame::Pong`] if `bytes` (a frame's kind and body) is one: what a
/// connection answers or drops by itself, told apart without decoding the frame.
pub fn keepalive(bytes: &[u8]) -> Option<Frame<'static>> {
    match bytes {
        [kind::PING] => Some(Frame::Ping),
        [kind::PONG] => Some(Frame::Pong),
        _ => None,
    }
}

/// Decodes one frame (kind and body, without the length prefix).
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (&kind, body) = bytes.split_first().ok_or(FrameError::Empty)?;
    let frame = match kind {
        kind::HELLO => {
            let head: HelloHead = postcard::take_from_bytes(body)
                .map_err(|e| malformed("hello", e.to_string()))?
                .0;
            if head.magic == MAGIC && head.version != REMOTE_VERSION {
                // Another version: what follows may be laid out differently.
                return Ok(Frame::Hello(Hello {
                    magic: head.magic,
                    version: head.version,
                    name: String::new(),
                    session: None,
                    peer: None,
                    instance: 0,
                }));
            }
            let hello: Hello = body_of("hello", body)?;
            check_len("hello", "name", &hello.name, MAX_NAME_LEN)?;
            if let Some(session) = &hello.session {
                check_len("hello", "session", session, MAX_REMOTE_SESSION_LEN)?;
            }
            Frame::Hello(hello)
        }
        kind::WELCOME => Frame::Welcome(body_of("welcome", body)?),
        kind::REFUSED => {
            let refusal: Refusal = body_of("refused", body)?;
            check_len("refused", "message", &refusal.message, MAX_ERROR_LEN)?;
            Frame::Refused(refusal)
        }
        kind::SUBSCRIBE => {
            let subscribe: Subscribe = body_of("subscribe", body)?;
            if subscribe.patterns.len() > MAX_PATTERNS {
                return Err(malformed(
                    "subscribe",
                    format!(
                        "{} patterns, more than {MAX_PATTERNS}",
                        subscribe.patterns.len()
                    ),
                ));
            }
            for pattern in &subscribe.patterns {
                check_len("subscribe", "pattern", pattern, MAX_TOPIC_LEN)?;
            }
            Frame::Subscribe(subscribe)
        }
        kind::ADD_PATTERN => {
            let (id, pattern): (u32, String) = body_of("add-pattern", body)?;
            check_len("add-pattern", "pattern", &pattern, MAX_TOPIC_LEN)?;
            Frame::AddPattern { id, pattern }
        }
        kind::UNSUBSCRIBE => Frame::Unsubscribe {
            id: body_of("unsubscribe", body)?,
        },
        kind::ADVERTISE => {
            let (id, topic): (u32, String) = body_of("advertise", body)?;
            check_len("advertise", "topic", &topic, MAX_TOPIC_LEN)?;
            Frame::Advertise { id, topic }
        }
        kind::WITHDRAW => Frame::Withdraw {
            id: body_of("withdraw", body)?,
        },
        kind::LAGGED => {
            let (subscription, topic, missed): (u32, String, u64) = body_of("lagged", body)?;
            check_len("lagged", "topic", &topic, MAX_TOPIC_LEN)?;
            Frame::Lagged {
                subscription,
                topic,
                missed,
            }
        }
        kind::DONE => Frame::Done {
            id: body_of("done", body)?,
        },
        kind::FAILED => {
            let (id, refusal): (u32, Refusal) = body_of("failed", body)?;
            check_len("failed", "message", &refusal.message, MAX_ERROR_LEN)?;
            Frame::Failed { id, refusal }
        }
        kind::INTEREST => {
            let interest: Interest = body_of("interest", body)?;
            for (what, list) in [
                ("pattern", &interest.patterns),
                ("served topic", &interest.served),
            ] {
                if list.len() > MAX_INTEREST_PATTERNS {
                    return Err(malformed(
                        "interest",
                        format!("{} {what}s, more than {MAX_INTEREST_PATTERNS}", list.len()),
                    ));
                }
                for item in list {
                    check_len("interest", what, item, MAX_TOPIC_LEN)?;
                }
            }
            Frame::Interest(interest)
        }
        kind::UNANSWERED => {
            let (id, why): (u32, Unanswered) = body_of("unanswered", body)?;
            if let Unanswered::Refused(refusal) = &why {
                check_len("unanswered", "message", &refusal.message, MAX_ERROR_LEN)?;
            }
            Frame::Unanswered { id, why }
        }
        kind::REQUEST => {
            let mut rest = Fields::new("request", body);
            let id = rest.u32()?;
            let stream = rest.flag()?;
            let timeout_ms = rest.u64()?;
            let topic = rest.topic()?;
            Frame::Request {
                id,
                stream,
                timeout_ms,
                topic,
                payload: rest.remaining(),
            }
        }
        kind::ANSWER => {
            let mut rest = Fields::new("answer", body);
            let id = rest.u32()?;
            let kind = rest.answer_kind()?;
            Frame::Answer {
                id,
                kind,
                payload: rest.remaining(),
            }
        }
        kind::SERVE => {
            let (id, topic): (u32, String) = body_of("serve", body)?;
            check_len("serve", "topic", &topic, MAX_TOPIC_LEN)?;
            Frame::Serve { id, topic }
        }
        kind::UNSERVE => Frame::Unserve {
            id: body_of("unserve", body)?,
        },
        kind::INCOMING => {
            let mut rest = Fields::new("incoming", body);
            let server = rest.u32()?;
            let request = rest.u32()?;
            Frame::Incoming {
                server,
                request,
                payload: rest.remaining(),
            }
        }
        kind::RESPOND => {
            let mut rest = Fields::new("respond", body);
            let request = rest.u32()?;
            let kind = rest.answer_kind()?;
            Frame::Respond {
                request,
                kind,
                payload: rest.remaining(),
            }
        }
        kind::SNAPSHOT => {
            let (id, pattern): (u32, String) = body_of("snapshot", body)?;
            check_len("snapshot", "pattern", &pattern, MAX_TOPIC_LEN)?;
            Frame::Snapshot { id, pattern }
        }
        kind::SNAPSHOT_PART => {
            let mut rest = Fields::new("snapshot-part", body);
            let id = rest.u32()?;
            let last = rest.flag()?;
            Frame::SnapshotPart {
                id,
                last,
                bytes: rest.remaining(),
            }
        }
        kind::OWN => {
            let own: Own = body_of("own", body)?;
            check_len("own", "topic", &own.topic, MAX_TOPIC_LEN)?;
            Frame::Own(own)
        }
        kind::OWNED => {
            let (id, max_value, max_bytes) = body_of("owned", body)?;
            Frame::Owned {
                id,
                max_value,
                max_bytes,
            }
        }
        kind::CHANGE => {
            let mut rest = Fields::new("change", body);
            let owner = rest.u32()?;
            let record = rest.remaining();
            let (_, change) =
                Record::decode(record).map_err(|e| malformed("change", e.to_string()))?;
            if change == Record::Clear {
                return Err(malformed("change", "an owner does not clear".into()));
            }
            if record.len() != change.encoded_len() {
                return Err(malformed(
                    "change",
                    format!(
                        "{} bytes after the record",
                        record.len() - change.encoded_len()
                    ),
                ));
            }
            Frame::Change { owner, change }
        }
        kind::SETTLE => Frame::Settle {
            owner: body_of("settle", body)?,
        },
        kind::SYNC_STATE => {
            let (id, owner) = body_of("sync-state", body)?;
            Frame::SyncState { id, owner }
        }
        kind::PING => empty("ping", body, Frame::Ping)?,
        kind::PONG => empty("pong", body, Frame::Pong)?,
        kind::PUBLISH => {
            let mut rest = Fields::new("publish", body);
            let publisher = rest.u32()?;
            Frame::Publish {
                publisher,
                payload: rest.remaining(),
            }
        }
        kind::MESSAGE => {
            let mut rest = Fields::new("message", body);
            let subscription = rest.u32()?;
            let (publisher, sequence, topic, payload) = rest.message()?;
            Frame::Message {
                subscription,
                publisher,
                sequence,
                topic,
                payload,
            }
        }
        kind::RELAY => {
            let mut rest = Fields::new("relay", body);
            let origin = rest.u64()?;
            let (publisher, sequence, topic, payload) = rest.message()?;
            Frame::Relay {
                origin,
                publisher,
                sequence,
                topic,
                payload,
            }
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    Ok(frame)
}

fn malformed(kind: &'static str, detail: String) -> FrameError {
    FrameError::Malformed { kind, detail }
}

/// A postcard body that fills the frame exactly.
fn body_of<'a, T: Deserialize<'a>>(kind: &'static str, body: &'a [u8]) -> Result<T, FrameError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| malformed(kind, e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(
            kind,
            format!("{} bytes after the body", rest.len()),
        ));
    }
    Ok(value)
}

fn empty<'a>(kind: &'static str, body: &[u8], frame: Frame<'a>) -> Result<Frame<'a>, FrameError> {
    if body.is_empty() {
        Ok(frame)
    } else {
        Err(malformed(kind, format!("{} bytes of body", body.len())))
    }
}

fn check_len(kind: &'static str, what: &str, value: &str, max: usize) -> Result<(), FrameError> {
    if value.len() > max {
        return Err(malformed(
            kind,
            format!("{what} of {} bytes exceeds {max}", value.len()),
        ));
    }
    Ok(())
}

/// Fixed-width fields read off the front of a body, each checked against what is left.
struct Fields<'a> {
    kind: &'static str,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(kind: &'static str, rest: &'a [u8]) -> Fields<'a> {
        Fields { kind, rest }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(malformed(
                self.kind,
                format!("cut short: {n} bytes wanted, {} left", self.rest.len()),
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_le_bytes)
    }

    fn remaining(self) -> &'a [u8] {
        self.rest
    }

    /// The fields a message and a relay share, to the end of the body: publisher, sequence,
    /// topic and payload.
    fn message(mut self) -> Result<(u32, u64, &'a str, &'a [u8]), FrameError> {
        let publisher = self.u32()?;
        let sequence = self.u64()?;
        let topic = self.topic()?;
        Ok((publisher, sequence, topic, self.remaining()))
    }

    /// A flag byte: 0 or 1.
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(malformed(self.kind, format!("flag {other}"))),
        }
    }

    /// An [`AnswerKind`] byte.
    fn answer_kind(&mut self) -> Result<AnswerKind, FrameError> {
        let [byte] = self.array::<1>()?;
        AnswerKind::from_byte(byte)
            .ok_or_else(|| malformed(self.kind, format!("answer kind {byte}")))
    }

    /// A topic: its `u16` length, then its UTF-8 bytes.
    fn topic(&mut self) -> Result<&'a str, FrameError> {
        let topic_len = usize::from(self.u16()?);
        if topic_len > MAX_TOPIC_LEN {
            return Err(malformed(
                self.kind,
                format!("topic of {topic_len} bytes exceeds {MAX_TOPIC_LEN}"),
            ));
        }
        std::str::from_utf8(self.take(topic_len)?)
            .map_err(|_| malformed(self.kind, "topic is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame<'_>) {
        let mut out = Vec::new();
        encode(&frame, &mut out);
        let prefix: [u8; 4] = out[..4].try_into().unwrap();
        assert_eq!(frame_length(prefix, usize::MAX).unwrap(), out.len() - 4);
        assert_eq!(decode(&out[4..]).unwrap(), frame);
    }

    #[test]
    fn a_hello_of_another_version_is_read_as_far_as_its_version() {
        // Version 1's hello: kind, magic, version, name, session, peer.
        let body = [&[kind::HELLO][..], b"SHMB", &[1, 3], b"old", &[0, 0]].concat();
        match decode(&body).unwrap() {
            Frame::Hello(hello) => assert_eq!((hello.magic, hello.version), (MAGIC, 1)),
            other => panic!("{other:?}"),
        }
        // This version's, cut short: malformed.
        let mut out = Vec::new();
        encode(
            &Frame::Hello(Hello {
                magic: MAGIC,
                version: REMOTE_VERSION,
                name: "new".into(),
                session: None,
                peer: None,
                instance: 1,
            }),
            &mut out,
        );
        assert!(decode(&out[4..out.len() - 1]).is_err());
    }

    #[test]
    fn every_frame_survives_a_round_trip() {
        round_trip(Frame::Hello(Hello {
            magic: MAGIC,
            version: REMOTE_VERSION,
            name: "probe".into(),
            session: Some("billing".into()),
            peer: None,
            instance: 0x0123_4567_89ab_cdef,
        }));
        round_trip(Frame::Hello(Hello {
            magic: MAGIC,
            version: REMOTE_VERSION,
            name: "broker".into(),
            session: None,
            peer: Some(Peer {
                node: u64::MAX,
                max_payload: 1 << 20,
            }),
            instance: 0,
        }));
        round_trip(Frame::Welcome(Welcome {
            version: REMOTE_VERSION,
            max_payload: 65536,
            node: 9,
        }));
        round_trip(Frame::Interest(Interest {
            origin: 9,
            version: 3,
            patterns: vec!["a/**".into(), "b".into()],
            served: vec!["calc/add".into()],
        }));
        round_trip(Frame::Relay {
            origin: u64::MAX,
            publisher: 4,
            sequence: 5,
            topic: "a/b",
            payload: b"relayed",
        });
        let refusal = Refusal {
            code: ErrorCode::PermissionDenied,
            message: "no".into(),
        };
        round_trip(Frame::Refused(refusal.clone()));
        round_trip(Frame::Subscribe(Subscribe {
            id: 7,
            patterns: vec!["a/**".into(), "b/*".into()],
            mode: Mode::Lossy,
            history: 3,
        }));
        round_trip(Frame::AddPattern {
            id: 7,
            pattern: "c".into(),
        });
        round_trip(Frame::Unsubscribe { id: 7 });
        round_trip(Frame::Advertise {
            id: 8,
            topic: "a/b".into(),
        });
        round_trip(Frame::Withdraw { id: 8 });
        round_trip(Frame::Publish {
            publisher: 8,
            payload: b"hello",
        });
        round_trip(Frame::Publish {
            publisher: 8,
            payload: b"",
        });
        round_trip(Frame::Message {
            subscription: 7,
            publisher: u32::MAX,
            sequence: 42,
            topic: "a/b",
            payload: &[0, 1, 2],
        });
        round_trip(Frame::Lagged {
            subscription: 7,
            topic: "a/b".into(),
            missed: 5,
        });
        round_trip(Frame::Done { id: 1 });
        round_trip(Frame::Failed { id: 1, refusal });
        round_trip(Frame::Request {
            id: 3,
            stream: true,
            timeout_ms: u64::MAX,
            topic: "calc/add",
            payload: b"1+1",
        });
        for kind in [AnswerKind::Single, AnswerKind::Item, AnswerKind::End] {
            round_trip(Frame::Answer {
                id: 3,
                kind,
                payload: b"2",
            });
        }
        round_trip(Frame::Unanswered {
            id: 3,
            why: Unanswered::TooLarge { len: 9, max: 8 },
        });
        round_trip(Frame::Unanswered {
            id: 3,
            why: Unanswered::Refused(Refusal::new(ErrorCode::PermissionDenied, "no")),
        });
        round_trip(Frame::Serve {
            id: 4,
            topic: "calc/add".into(),
        });
        round_trip(Frame::Unserve { id: 4 });
        round_trip(Frame::Incoming {
            server: 4,
            request: 77,
            payload: b"1+1",
        });
        round_trip(Frame::Respond {
            request: 77,
            kind: AnswerKind::Item,
            payload: b"2",
        });
        round_trip(Frame::Subscribe(Subscribe {
            id: 9,
            patterns: vec!["net/*".into()],
            mode: Mode::State,
            history: 0,
        }));
        round_trip(Frame::Snapshot {
            id: 10,
            pattern: "net/*".into(),
        });
        for last in [false, true] {
            round_trip(Frame::SnapshotPart {
                id: 10,
                last,
                bytes: b"shmbusS1",
            });
        }
        round_trip(Frame::Own(Own {
            id: 11,
            topic: "net/links".into(),
            persistent: true,
            replace: false,
        }));
        round_trip(Frame::Owned {
            id: 11,
            max_value: 65536,
            max_bytes: u64::MAX,
        });
        for change in [
            Record::Put {
                key: "eth0",
                value: b"up",
            },
            Record::Put {
                key: "e",
                value: b"",
            },
            Record::Remove { key: "eth0" },
            Record::Restarted(3),
        ] {
            round_trip(Frame::Change { owner: 11, change });
        }
        round_trip(Frame::Settle { owner: 11 });
        round_trip(Frame::SyncState { id: 12, owner: 11 });
        round_trip(Frame::Ping);
        round_trip(Frame::Pong);
    }

    #[test]
    fn changes_are_checked_as_records() {
        let mut out = Vec::new();
        let put = Record::Put {
            key: "eth0",
            value: b"up",
        };
        encode(
            &Frame::Change {
                owner: 1,
                change: put,
            },
            &mut out,
        );
        let body = &out[4..];
        for cut in 1..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut clear = vec![kind::CHANGE, 1, 0, 0, 0];
        clear.resize(clear.len() + Record::Clear.encoded_len(), 0);
        Record::Clear.encode(0, &mut clear[5..]);
        assert!(decode(&clear).is_err(), "a clear accepted from an owner");
        let mut bad_key = out[4..].to_vec();
        bad_key[5 + 16] = b'/';
        assert!(decode(&bad_key).is_err(), "a key with '/' accepted");
    }

    #[test]
    fn lengths_are_checked_before_anything_is_read() {
        assert_eq!(frame_length([0; 4], 10), Err(FrameError::Empty));
        assert_eq!(
            frame_length(11u32.to_le_bytes(), 10),
            Err(FrameError::TooLong { len: 11, limit: 10 })
        );
        assert_eq!(frame_length(10u32.to_le_bytes(), 10), Ok(10));
    }

    #[test]
    fn cut_short_and_oversized_fields_are_refused() {
        let mut out = Vec::new();
        encode(
            &Frame::Message {
                subscription: 1,
                publisher: 2,
                sequence: 3,
                topic: "abc",
                payload: b"",
            },
            &mut out,
        );
        let body = &out[4..];
        for cut in 1..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut long_topic = body.to_vec();
        long_topic[17..19].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(
            decode(&long_topic),
            Err(FrameError::Malformed { .. })
        ));
        assert_eq!(decode(&[99]), Err(FrameError::UnknownKind(99)));
        assert!(decode(&[kind::PING, 0]).is_err());
        let mut ping_body = vec![kind::DONE];
        ping_body.extend_from_slice(&[1, 0]);
        assert!(decode(&ping_body).is_err(), "trailing bytes accepted");
        let too_many = Subscribe {
            id: 1,
            patterns: vec!["a".into(); MAX_PATTERNS + 1],
            mode: Mode::Tethered,
            history: 0,
        };
        let mut out = Vec::new();
        encode(&Frame::Subscribe(too_many), &mut out);
        assert!(decode(&out[4..]).is_err());
        let too_many = Interest {
            origin: 1,
            version: 1,
            patterns: Vec::new(),
            served: vec!["a".into(); MAX_INTEREST_PATTERNS + 1],
        };
        out.clear();
        encode(&Frame::Interest(too_many), &mut out);
        assert!(decode(&out[4..]).is_err());
    }

    #[test]
    fn the_largest_interest_fits_its_limit() {
        let largest = Interest {
            origin: u64::MAX,
            version: u64::MAX,
            patterns: vec!["x".repeat(MAX_TOPIC_LEN); MAX_INTEREST_PATTERNS],
            served: vec!["y".repeat(MAX_TOPIC_LEN); MAX_INTEREST_PATTERNS],
        };
        let mut out = Vec::new();
        encode(&Frame::Interest(largest), &mut out);
        assert!(out.len() - LENGTH_PREFIX <= INTEREST_LIMIT);
    }

    #[test]
    fn requests_and_answers_refuse_unknown_flags() {
        let mut out = Vec::new();
        encode(
            &Frame::Request {
                id: 1,
                stream: false,
                timeout_ms: 5,
                topic: "a",
                payload: b"",
            },
            &mut out,
        );
        let mut bad = out[4..].to_vec();
        bad[5] = 2;
        assert!(decode(&bad).is_err(), "stream flag 2 accepted");
        out.clear();
        encode(
            &Frame::Answer {
                id: 1,
                kind: AnswerKind::End,
                payload: b"",
            },
            &mut out,
        );
        let mut bad = out[4..].to_vec();
        bad[5] = 3;
        assert!(decode(&bad).is_err(), "answer kind 3 accepted");
    }

    #[test]
    fn relays_refuse_cut_bodies() {
        let mut out = Vec::new();
        encode(
            &Frame::Relay {
                origin: 1,
                publisher: 2,
                sequence: 3,
                topic: "abc",
                payload: b"",
            },
            &mut out,
        );
        let body = &out[4..];
        for cut in 1..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} accepted");
        }
    }
}
