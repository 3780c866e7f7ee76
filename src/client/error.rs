//! Errors of connecting and attaching, each message naming the topic or address at fault. The
//! errors of publishing and receiving are in `pubsub::error`.

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
    /// No broker answers at the address (or it did not answer within the connect timeout).
    #[error("cannot reach the broker at {address}: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// What listens at the address is not trusted to be the broker: the socket's directory, or
    /// the process that accepted, belongs to another user (see
    /// [`BusBuilder::broker_uid`](crate::BusBuilder::broker_uid)).
    #[error("not connecting to {address}: {detail}")]
    Untrusted {
        /// The address.
        address: String,
        /// What is wrong.
        detail: String,
    },
    /// The broker's access list does not admit this process's user.
    #[error("the broker at {address} refused the connection: {message}")]
    PermissionDenied {
        /// The broker's address.
        address: String,
        /// The broker's message, naming the uid.
        message: String,
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
    /// The TLS settings for a `tls://` address could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    /// An embedded broker could not be started.
    #[error("cannot start an embedded broker: {0}")]
    Embedded(#[source] crate::broker::BrokerError),
}

/// Why a request to the broker got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ControlError {
    /// The broker closed the connection or died.
    #[error("the broker is gone")]
    BrokerGone,
    /// The broker did not answer in time.
    #[error("the broker did not answer")]
    Timeout,
    /// The broker answered with something other than the reply the request calls for.
    #[error("the broker's answer made no sense: {detail}")]
    Protocol {
        /// What was wrong with it.
        detail: String,
    },
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
        source: ControlError,
    },
    /// The broker's access list does not allow this client the operation on the topic.
    #[error("topic {topic:?}: {message}")]
    PermissionDenied {
        /// The topic or pattern.
        topic: String,
        /// The broker's message, naming the operation, the topic and the uid.
        message: String,
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
    /// What was asked for needs a broker on this host, and the bus is reached over TCP or TLS.
    /// (Everything the public API offers crosses the network; the gateway's own ring-level
    /// access does not.)
    #[error("topic {topic:?}: only available on a bus on this host, not over the network")]
    LocalOnly {
        /// The topic or pattern.
        topic: String,
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

/// How a call to the broker failed: no usable answer, or a refusal.
#[derive(Debug)]
pub(crate) enum CallError {
    Request(ControlError),
    Refused(ErrorReply),
}

impl CallError {
    /// The control error it stands for (a refusal's message as its detail).
    pub(crate) fn into_control(self) -> ControlError {
        match self {
            CallError::Request(e) => e,
            CallError::Refused(r) => ControlError::Protocol { detail: r.message },
        }
    }
}

impl AttachError {
    /// The error for `topic` when attaching failed at the broker.
    pub(crate) fn call(topic: &str, e: CallError) -> AttachError {
        let topic = topic.to_string();
        match e {
            CallError::Request(source) => AttachError::Broker { topic, source },
            CallError::Refused(e) if e.code == ErrorCode::PermissionDenied => {
                AttachError::PermissionDenied {
                    topic,
                    message: e.message,
                }
            }
            CallError::Refused(e) => AttachError::Refused {
                topic,
                code: e.code,
                message: e.message,
            },
        }
    }

    /// The error for `topic` when its shared memory failed.
    pub(crate) fn shm(topic: &str, e: impl std::fmt::Display) -> AttachError {
        AttachError::Shm {
            topic: topic.to_string(),
            detail: e.to_string(),
        }
    }
}
