//! Encoding and decoding of control messages: postcard, with hard limits and validation.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BrokerMessage, ClientMessage, MAX_ERROR_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN, Reply};

/// Why bytes received from a peer are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// Not a well-formed encoding of any message.
    #[error("malformed message: {0}")]
    Malformed(postcard::Error),
    /// A valid message followed by extra bytes.
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
    /// Well-formed, but a field breaks a limit.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// It would exceed [`MAX_MESSAGE_LEN`] (for example, a topic far beyond the topic limit).
    #[error("message exceeds the limit of {MAX_MESSAGE_LEN} bytes")]
    TooLong,
}

/// Encodes `msg` into `buf` and returns the encoded bytes.
pub fn encode<'b, T: Serialize>(
    msg: &T,
    buf: &'b mut [u8; MAX_MESSAGE_LEN],
) -> Result<&'b [u8], EncodeError> {
    postcard::to_slice(msg, buf)
        .map(|b| &*b)
        .map_err(|_| EncodeError::TooLong)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong(bytes.len()));
    }
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(msg)
}

fn limit(what: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::Invalid(format!(
            "{what} of {} bytes exceeds {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Decodes and checks a message a client sent. Topics are checked by the broker, which answers a
/// bad one with an error naming it; here only structure and sizes are judged.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    let msg: ClientMessage = decode(bytes)?;
    if let ClientMessage::Hello(hello) = &msg {
        limit("client name", &hello.name, MAX_NAME_LEN)?;
    }
    Ok(msg)
}

/// Decodes and checks a message the broker sent.
pub fn decode_broker(bytes: &[u8]) -> Result<BrokerMessage, DecodeError> {
    let msg: BrokerMessage = decode(bytes)?;
    match &msg {
        BrokerMessage::Refused(e) | BrokerMessage::Reply { result: Err(e), .. } => {
            limit("error message", &e.message, MAX_ERROR_LEN)?;
        }
        BrokerMessage::RingAttached(a) => limit("topic", &a.topic, crate::topic::MAX_TOPIC_LEN)?,
        BrokerMessage::RingUnavailable { topic, error, .. } => {
            limit("topic", topic, crate::topic::MAX_TOPIC_LEN)?;
            limit("error message", &error.message, MAX_ERROR_LEN)?;
        }
        BrokerMessage::Reply {
            result: Ok(Reply::Holders(h)),
            ..
        } => {
            if h.holders.len() > super::pubsub::MAX_HOLDERS {
                return Err(DecodeError::Invalid(format!(
                    "{} holders exceed {}",
                    h.holders.len(),
                    super::pubsub::MAX_HOLDERS
                )));
            }
            for holder in &h.holders {
                limit("holder name", &holder.name, MAX_NAME_LEN)?;
            }
        }
        BrokerMessage::Welcome(_)
        | BrokerMessage::Reply { result: Ok(_), .. }
        | BrokerMessage::RingRetired { .. } => {}
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pubsub::{
        ClaimDoorbell, DoorbellClaimed, Publish, Publishing, ReleaseDoorbell, RingAttachment,
        RingGeometry, Subscribe, Subscribed, Unpublish, Unsubscribe,
    };
    use crate::protocol::reqrep::{InboxOpened, OpenInbox, Respond, Serve, Serving, Target};
    use crate::protocol::{
        ClientId, ErrorCode, ErrorReply, Hello, PublisherId, Reply, Request, RequestId, RingId,
        SubscriptionId, Welcome,
    };
    use shmbus_shm::ReaderMode;

    fn round_trip_client(msg: ClientMessage) {
        let mut buf = [0; MAX_MESSAGE_LEN];
        let bytes = encode(&msg, &mut buf).unwrap().to_vec();
        assert_eq!(decode_client(&bytes), Ok(msg));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_client(&longer), Err(DecodeError::Trailing(1)));
        for cut in 0..bytes.len() {
            assert!(
                decode_client(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
    }

    fn geometry() -> RingGeometry {
        RingGeometry {
            id: RingId::from_raw(6),
            capacity: 1 << 20,
            max_payload: 65_536,
            writer_slots: 64,
            reader_slots: 128,
            stamp_key: 0x1234_5678_9abc_def0,
        }
    }

    fn hello(name: String) -> ClientMessage {
        ClientMessage::Hello(Hello { version: 1, name })
    }

    #[test]
    fn client_messages_round_trip_and_reject_truncation() {
        round_trip_client(hello("demo".into()));
        round_trip_client(ClientMessage::Goodbye);
        for body in [
            Request::Publish(Publish {
                topic: "a/b".into(),
                max_payload: 4096,
                replace: None,
            }),
            Request::Publish(Publish {
                topic: "a/b".into(),
                max_payload: 4096,
                replace: Some(RingId::from_raw(u64::MAX)),
            }),
            Request::Unpublish(Unpublish {
                publisher: PublisherId::from_raw(3),
            }),
            Request::Subscribe(Subscribe {
                pattern: "a/**".into(),
                mode: ReaderMode::Lossy,
                history: 5,
                doorbell: 2,
            }),
            Request::Unsubscribe(Unsubscribe {
                subscription: SubscriptionId::from_raw(9),
            }),
            Request::ClaimDoorbell(ClaimDoorbell),
            Request::ReleaseDoorbell(ReleaseDoorbell { index: 4 }),
            Request::Serve(Serve {
                topic: "calc/add".into(),
                doorbell: 3,
            }),
            Request::OpenInbox(OpenInbox { doorbell: 3 }),
            Request::Target(Target {
                topic: "calc/add".into(),
            }),
            Request::Respond(Respond {
                inbox: RingId::from_raw(9),
            }),
        ] {
            round_trip_client(ClientMessage::Request {
                id: RequestId::from_raw(77),
                body,
            });
        }
    }

    #[test]
    fn broker_messages_round_trip() {
        let mut buf = [0; MAX_MESSAGE_LEN];
        let reply = |result| BrokerMessage::Reply {
            id: RequestId::from_raw(1),
            result,
        };
        for msg in [
            BrokerMessage::Welcome(Welcome {
                version: 1,
                client: ClientId::from_raw(2),
                owner: 3,
                max_payload: 4,
                doorbells: 16_384,
            }),
            BrokerMessage::Refused(ErrorReply {
                code: ErrorCode::Version,
                message: "no".into(),
            }),
            reply(Ok(Reply::Publishing(Publishing {
                publisher: PublisherId::from_raw(5),
                ring: geometry(),
            }))),
            reply(Ok(Reply::DoorbellClaimed(DoorbellClaimed { index: 7 }))),
            reply(Ok(Reply::Subscribed(Subscribed {
                subscription: SubscriptionId::from_raw(5),
                rings: 0,
            }))),
            reply(Ok(Reply::Done)),
            reply(Ok(Reply::Serving(Serving {
                subscription: SubscriptionId::from_raw(6),
            }))),
            reply(Ok(Reply::InboxOpened(InboxOpened {
                subscription: SubscriptionId::from_raw(7),
                inbox: RingId::from_raw(8),
            }))),
            reply(Err(ErrorReply {
                code: ErrorCode::NoServer,
                message: "nobody serves \"calc/add\"".into(),
            })),
            reply(Err(ErrorReply {
                code: ErrorCode::InvalidTopic,
                message: "bad".into(),
            })),
            BrokerMessage::RingAttached(RingAttachment {
                subscription: SubscriptionId::from_raw(1),
                topic: "x".into(),
                ring: geometry(),
                slot: 3,
                owner: 8,
                position: 4,
                sequence: 5,
                resume: crate::protocol::pubsub::Resume::At {
                    position: 2,
                    sequence: 1,
                },
            }),
            BrokerMessage::RingRetired {
                subscription: SubscriptionId::from_raw(1),
                ring: RingId::from_raw(2),
            },
        ] {
            let bytes = encode(&msg, &mut buf).unwrap().to_vec();
            assert_eq!(decode_broker(&bytes), Ok(msg));
        }
    }

    #[test]
    fn limits_are_enforced() {
        let mut buf = [0; MAX_MESSAGE_LEN];
        let long_name = hello("n".repeat(MAX_NAME_LEN + 1));
        let bytes = encode(&long_name, &mut buf).unwrap().to_vec();
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::Invalid(_))
        ));
        let huge = hello("n".repeat(MAX_MESSAGE_LEN));
        assert_eq!(encode(&huge, &mut buf), Err(EncodeError::TooLong));
        assert_eq!(
            decode_client(&[0; MAX_MESSAGE_LEN + 1]),
            Err(DecodeError::TooLong(MAX_MESSAGE_LEN + 1))
        );
        // An absurd string length prefix must fail without allocating it.
        assert!(matches!(
            decode_client(&[0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
