//! Errors of request/response: one enum per side. A timeout is an error, never an `Ok(None)`.

use crate::client::error::{AttachError, ControlError};
use crate::topic::{Topic, TopicError};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RequestError {
    /// The topic is not valid, or has wildcards (requests go to one exact topic).
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// Nobody serves the topic (reported at once, without waiting).
    #[error("nobody serves {topic:?}")]
    NoServer {
        /// The topic.
        topic: Topic,
    },
    /// No answer came before the timeout. An answer that comes later is dropped.
    #[error("{topic:?}: no answer before the timeout")]
    Timeout {
        /// The topic.
        topic: Topic,
    },
    /// The server stopped serving, or its process died, with the request unanswered (reported
    /// as soon as the broker notices, not at the timeout).
    #[error("{topic:?}: the server went away without answering")]
    ServerGone {
        /// The topic.
        topic: Topic,
    },
    /// The server dropped the request without answering it, or ended a stream of responses
    /// without its end marker (its handler failed, for example). The server itself goes on.
    #[error("{topic:?}: the server dropped the request without finishing its answer")]
    Abandoned {
        /// The topic.
        topic: Topic,
    },
    /// The request is larger than the bus's rings carry.
    #[error("{topic:?}: a request of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The topic.
        topic: Topic,
        /// Request length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The typed request could not be serialized (nothing was sent).
    #[error("{topic:?}: cannot serialize the request: {detail}")]
    Serialize {
        /// The topic.
        topic: Topic,
        /// The serializer's error.
        detail: String,
    },
    /// The answer is tagged with another type's schema (or none: a raw answer).
    #[error("{topic:?}: an answer of another type: expected schema {expected}, found {found}")]
    TypeMismatch {
        /// The topic.
        topic: Topic,
        /// The schema of the type asked for.
        expected: crate::Schema,
        /// What the answer carried.
        found: String,
    },
    /// The answer is not a valid archive of the expected type.
    #[error("{topic:?}: the answer is not a valid archive of the expected type: {detail}")]
    Invalid {
        /// The topic.
        topic: Topic,
        /// The validator's error.
        detail: String,
    },
    /// The broker could not set up the exchange (only the first request to a server, or one
    /// after a server change, asks it anything).
    #[error("{topic:?}: {detail}")]
    Setup {
        /// The topic.
        topic: Topic,
        /// What failed.
        detail: String,
    },
    /// The broker's access list does not let this client send requests to the topic.
    #[error("{topic:?}: {message}")]
    PermissionDenied {
        /// The topic.
        topic: Topic,
        /// The broker's message, naming the operation, the topic and the uid.
        message: String,
    },
}

/// Why serving a topic failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another server serves the topic; it can be served once that one ends.
    #[error("topic {topic:?} is already served: {detail}")]
    AlreadyServed {
        /// The topic.
        topic: String,
        /// The broker's words (which process serves it).
        detail: String,
    },
    /// The topic is invalid or has wildcards, or the broker could not be asked or refused.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Why a response was not delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RespondError {
    /// The requester is gone (its process ended or it closed its inbox): the answer goes
    /// nowhere.
    #[error("the requester is gone")]
    RequesterGone,
    /// The response is larger than the bus's rings carry.
    #[error("a response of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Response length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The requester's inbox could not be reached.
    #[error("cannot reach the requester's inbox: {0}")]
    Broker(#[from] ControlError),
    /// The typed response could not be serialized (nothing was sent).
    #[error("cannot serialize the response: {detail}")]
    Serialize {
        /// The serializer's error.
        detail: String,
    },
    /// The inbox could not be written (its memory failed to map, or the broker refused).
    #[error("cannot write to the requester's inbox: {detail}")]
    Inbox {
        /// What failed.
        detail: String,
    },
}
