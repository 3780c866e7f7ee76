//! Client errors: one enum per operation, each message naming the topic or address at fault.

use std::io;

use crate::address::AddressError;
use crate::protocol::{ErrorCode, ErrorReply};
use crate::topic::TopicError;

/// Why [`Bus::connect`](super::Bus::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address could not be parsed.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// No broker answers at the address.
    #[error("cannot reach the broker at {address}: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The broker refused the connection.
    #[error("the broker at {address} refused the connection: {message}")]
    Refused {
        /// The broker's address.
        address: String,
        /// Its reason.
        message: String,
    },
    /// The broker's answer made no sense.
    #[error("protocol error with the broker at {address}: {detail}")]
    Protocol {
        /// The broker's address.
        address: String,
        /// What went wrong.
        detail: String,
    },
    /// The bus's shared memory could not be mapped.
    #[error("cannot map the bus's shared memory: {0}")]
    Shm(#[source] shmbus_shm::OpenError),
    /// Remote (TCP/TLS) buses are not supported by this build yet.
    #[error("remote bus {address}: TCP and TLS transports are not available in this version")]
    RemoteUnsupported {
        /// The address.
        address: String,
    },
    /// An embedded broker could not be started.
    #[error("cannot start an embedded broker: {0}")]
    Embedded(#[source] crate::broker::BrokerError),
}

/// Why a request to the broker got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum RequestError {
    /// The broker closed the connection or died.
    #[error("the broker is gone")]
    BrokerGone,
    /// The broker did not answer in time.
    #[error("the broker did not answer")]
    Timeout,
}

/// Why creating a publisher or subscriber failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The topic or pattern is not valid.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The broker could not be asked.
    #[error("topic {topic:?}: {source}")]
    Broker {
        /// The topic or pattern.
        topic: String,
        /// What happened.
        #[source]
        source: RequestError,
    },
    /// The broker said no.
    #[error("topic {topic:?}: the broker refused: {message}")]
    Refused {
        /// The topic or pattern.
        topic: String,
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The ring's shared memory could not be mapped or attached to.
    #[error("topic {topic:?}: {detail}")]
    Shm {
        /// The topic.
        topic: String,
        /// What failed.
        detail: String,
    },
}

impl AttachError {
    pub(crate) fn refused(topic: &str, e: ErrorReply) -> AttachError {
        AttachError::Refused {
            topic: topic.to_string(),
            code: e.code,
            message: e.message,
        }
    }

    pub(crate) fn shm(topic: &str, e: impl std::fmt::Display) -> AttachError {
        AttachError::Shm {
            topic: topic.to_string(),
            detail: e.to_string(),
        }
    }
}

/// Why a message was not published. Nothing was written to the ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload exceeds the ring's largest payload.
    #[error("topic {topic:?}: payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The topic.
        topic: String,
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The ring is full (`try_` variants only): a tethered subscriber has not caught up.
    #[error("topic {topic:?}: ring full, a subscriber has not caught up")]
    Full {
        /// The topic.
        topic: String,
    },
    /// The ring stayed full until the timeout.
    #[error("topic {topic:?}: ring still full when the timeout passed")]
    Timeout {
        /// The topic.
        topic: String,
    },
    /// The message could not be serialized (typed publishers).
    #[error("topic {topic:?}: cannot serialize the message: {detail}")]
    Serialize {
        /// The topic.
        topic: String,
        /// The serializer's error.
        detail: String,
    },
}

/// Why a receive returned no message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RecvError {
    /// Messages on `topic` were overwritten before this subscriber read them (a lossy
    /// subscriber overrun, or a stalled one that the broker evicted). Receiving goes on.
    #[error("topic {topic:?}: {missed} messages were lost before they were read")]
    Lagged {
        /// The ring's topic.
        topic: String,
        /// How many.
        missed: u64,
    },
    /// The ring for `topic` holds a frame that breaks the layout rules; this subscriber stops
    /// reading that ring.
    #[error("topic {topic:?}: {detail}; no longer reading this topic")]
    Corrupt {
        /// The ring's topic.
        topic: String,
        /// What is wrong.
        detail: String,
    },
    /// A ring for `topic` matches the subscription but cannot be read (the broker found no free
    /// reader slot on it, or its memory could not be mapped): this subscriber does not receive
    /// that topic's messages. Reported once; receiving goes on with the other topics.
    #[error("topic {topic:?} matches but cannot be read: {detail}")]
    Unavailable {
        /// The ring's topic.
        topic: String,
        /// Why.
        detail: String,
    },
    /// A typed message failed validation (it is skipped; receiving goes on).
    #[error(
        "topic {topic:?}: message {sequence} is not a valid archive of the expected type: {detail}"
    )]
    Invalid {
        /// The ring's topic.
        topic: String,
        /// The message's sequence number.
        sequence: u64,
        /// The validator's error.
        detail: String,
    },
}
