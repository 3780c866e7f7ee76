//! Request/response: serving a topic, a requester's inbox, and the rings between them — on the
//! control socket only to set them up; requests and responses travel through shared memory.
//!
//! A server of topic `T` reads the **request ring** of `T`, which the broker creates when the
//! server registers ([`Serve`]) and retires when it stops or dies. A requester holds one or more
//! **inboxes** ([`OpenInbox`]): rings only it reads. It writes each request into the request ring
//! (as a writer it got with [`Target`]), headed by a [`RequestHeader`] naming its inbox and a
//! correlation number; the server writes the answer into that inbox (as a writer it got with
//! [`Respond`]), headed by a [`ResponseHeader`] with the same number. The broker sees neither.
//!
//! Both rings are read tethered, so requests and answers are read in place: requesters wait for
//! room while the server is behind, and a server for a requester that reads its answers slowly
//! (one that stops reading is evicted like any reader). A retired request ring is how a
//! requester learns, through shared memory, that the server is gone: the broker retires it and
//! rings the doorbells of the requesters' inboxes. A closed inbox is retired too, so servers'
//! writes to it fail.

use serde::{Deserialize, Serialize};

use super::ids::{RingId, SubscriptionId};
use super::pubsub::Publishing;
use super::{Call, Reply, Request};

/// Serve `topic` (a concrete topic: no wildcards), exclusively. The broker creates the topic's
/// request ring, reserves a tethered reader on it for the server (sent as a
/// [`RingAttached`](super::BrokerMessage::RingAttached) under the new subscription's id before the
/// reply), and answers with [`Serving`]. Refused with `Taken` if another client serves `topic`.
/// Serving ends with [`Unsubscribe`](super::pubsub::Unsubscribe) of the subscription, or when the
/// client goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serve {
    /// The topic served.
    pub topic: String,
    /// Index of the doorbell the server parks on (one the client holds).
    pub doorbell: u32,
}

/// The answer to [`Serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// The subscription under which the request ring was attached.
    pub subscription: SubscriptionId,
}

/// Open an inbox: a ring for responses that only this client reads. The broker sends its
/// reader as a [`RingAttached`](super::BrokerMessage::RingAttached) under the new subscription's
/// id before the reply. Closed with [`Unsubscribe`](super::pubsub::Unsubscribe), or when the
/// client goes; the broker then retires the ring, so servers drop their writers on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenInbox {
    /// Index of the doorbell the requester parks on (one the client holds).
    pub doorbell: u32,
}

/// The answer to [`OpenInbox`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxOpened {
    /// The subscription under which the inbox was attached.
    pub subscription: SubscriptionId,
    /// The inbox's ring: what requests name in [`RequestHeader::inbox`].
    pub inbox: RingId,
}

/// Write requests to the server of `topic`: answered with [`Publishing`] for its request ring,
/// or refused with `NoServer` when nobody serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The topic served.
    pub topic: String,
}

/// Write responses into inbox `inbox`: answered with [`Publishing`] for the inbox's ring, or
/// refused with `Unknown` when the inbox is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Respond {
    /// The inbox, from a request's [`RequestHeader`].
    pub inbox: RingId,
}

/// Bytes of [`RequestHeader`] and of [`ResponseHeader`] at the start of a frame's payload (a
/// multiple of the frames' alignment, so what follows stays aligned for rkyv).
pub const EXCHANGE_HEADER_LEN: usize = 16;

/// What heads each request in a request ring: where to answer. Little-endian `u64`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The inbox the answer goes to.
    pub inbox: RingId,
    /// Chosen by the requester; the answer carries it back.
    pub correlation: u64,
}

impl RequestHeader {
    /// The header's bytes.
    pub fn encode(self) -> [u8; EXCHANGE_HEADER_LEN] {
        let mut b = [0; EXCHANGE_HEADER_LEN];
        b[..8].copy_from_slice(&self.inbox.get().to_le_bytes());
        b[8..].copy_from_slice(&self.correlation.to_le_bytes());
        b
    }

    /// Splits a request frame's payload into its header and the request itself; `None` if it is
    /// too short to hold a header.
    pub fn decode(payload: &[u8]) -> Option<(RequestHeader, &[u8])> {
        let (head, body) = split_header(payload)?;
        let header = RequestHeader {
            inbox: RingId::from_raw(head.0),
            correlation: head.1,
        };
        Some((header, body))
    }
}

/// What a response frame is: one answer, part of a stream, or the end of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseKind {
    /// The whole answer.
    Single,
    /// One response of a stream; more follow.
    Item,
    /// The end of a stream (no payload).
    End,
    /// The server dropped the request without answering it (no payload).
    Unanswered,
}

impl ResponseKind {
    fn code(self) -> u64 {
        match self {
            ResponseKind::Single => 0,
            ResponseKind::Item => 1,
            ResponseKind::End => 2,
            ResponseKind::Unanswered => 3,
        }
    }

    fn from_code(code: u64) -> Option<ResponseKind> {
        Some(match code {
            0 => ResponseKind::Single,
            1 => ResponseKind::Item,
            2 => ResponseKind::End,
            3 => ResponseKind::Unanswered,
            _ => return None,
        })
    }
}

/// What heads each response in an inbox. Little-endian `u64`s: the correlation, then the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's [`RequestHeader::correlation`].
    pub correlation: u64,
    /// What the frame is.
    pub kind: ResponseKind,
}

impl ResponseHeader {
    /// The header's bytes.
    pub fn encode(self) -> [u8; EXCHANGE_HEADER_LEN] {
        let mut b = [0; EXCHANGE_HEADER_LEN];
        b[..8].copy_from_slice(&self.correlation.to_le_bytes());
        b[8..].copy_from_slice(&self.kind.code().to_le_bytes());
        b
    }

    /// Splits a response frame's payload into its header and the response itself; `None` if it
    /// is too short or of an unknown kind.
    pub fn decode(payload: &[u8]) -> Option<(ResponseHeader, &[u8])> {
        let (head, body) = split_header(payload)?;
        let header = ResponseHeader {
            correlation: head.0,
            kind: ResponseKind::from_code(head.1)?,
        };
        Some((header, body))
    }
}

/// The two little-endian `u64`s heading `payload`, and the rest.
fn split_header(payload: &[u8]) -> Option<((u64, u64), &[u8])> {
    let (head, body) = payload.split_first_chunk::<EXCHANGE_HEADER_LEN>()?;
    let (a, b) = head.split_at(8);
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
    Some(((word(a), word(b)), body))
}

impl Call for Serve {
    type Reply = Serving;

    fn into_request(self) -> Request {
        Request::Serve(self)
    }

    fn reply(reply: Reply) -> Result<Serving, Reply> {
        match reply {
            Reply::Serving(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Call for OpenInbox {
    type Reply = InboxOpened;

    fn into_request(self) -> Request {
        Request::OpenInbox(self)
    }

    fn reply(reply: Reply) -> Result<InboxOpened, Reply> {
        match reply {
            Reply::InboxOpened(i) => Ok(i),
            other => Err(other),
        }
    }
}

impl Call for Target {
    type Reply = Publishing;

    fn into_request(self) -> Request {
        Request::Target(self)
    }

    fn reply(reply: Reply) -> Result<Publishing, Reply> {
        match reply {
            Reply::Publishing(p) => Ok(p),
            other => Err(other),
        }
    }
}

impl Call for Respond {
    type Reply = Publishing;

    fn into_request(self) -> Request {
        Request::Respond(self)
    }

    fn reply(reply: Reply) -> Result<Publishing, Reply> {
        match reply {
            Reply::Publishing(p) => Ok(p),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_short_or_unknown() {
        let req = RequestHeader {
            inbox: RingId::from_raw(7),
            correlation: u64::MAX,
        };
        let mut frame = req.encode().to_vec();
        frame.extend_from_slice(b"body");
        assert_eq!(RequestHeader::decode(&frame), Some((req, &b"body"[..])));
        assert_eq!(RequestHeader::decode(&frame[..15]), None);

        let resp = ResponseHeader {
            correlation: 3,
            kind: ResponseKind::End,
        };
        assert_eq!(
            ResponseHeader::decode(&resp.encode()),
            Some((resp, &[][..]))
        );
        let mut unknown = resp.encode();
        unknown[8] = 9;
        assert_eq!(ResponseHeader::decode(&unknown), None);
    }
}
