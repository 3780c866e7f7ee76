//! Errors of publishing and receiving: one enum per kind of call, after crossbeam's channels.
//!
//! A blocking call fails only for what it cannot wait out ([`PublishError`], [`RecvError`]); its
//! `try_` twin also reports that nothing could be done now ([`TryPublishError::Full`],
//! [`TryRecvError::Empty`]); its `_timeout`/`_deadline` twins that the time ran out
//! ([`PublishTimeoutError::Timeout`], [`RecvTimeoutError::Timeout`]). A timeout is always an
//! error, never an `Ok(None)`. None of them allocates: the errors a busy loop meets (`Full`,
//! `Empty`, `Timeout`) carry nothing, since the handle knows its topic, and the others carry the
//! topic as a shared [`Topic`].

use crate::topic::Topic;

/// Why a message was not published. Nothing was published.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload exceeds the ring's largest payload.
    #[error("topic {topic:?}: payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The publisher's topic.
        topic: Topic,
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message could not be serialized (typed publishers).
    #[error("cannot serialize the message: {detail}")]
    Serialize {
        /// The serializer's error.
        detail: String,
    },
    /// The loan was held uncommitted longer than the broker's unblock timeout (the process was
    /// stopped or descheduled between loan and commit), so the broker took it back to let
    /// subscribers go on. Publishing again works.
    #[error(
        "topic {topic:?}: the broker took the message back: it was held uncommitted longer than the broker's unblock timeout"
    )]
    Revoked {
        /// The publisher's topic.
        topic: Topic,
    },
    /// The topic's ring was found corrupt (a faulty publisher wrote its claim cursor) and the
    /// broker replaced it; the publisher moves to the new ring at its next loan. Only loans
    /// report this: the copying publishes move and retry by themselves.
    #[error("topic {topic:?}: the ring was found corrupt and replaced; loan again")]
    RingReplaced {
        /// The publisher's topic.
        topic: Topic,
    },
    /// The topic's ring was found corrupt and no new one could be attached.
    #[error(
        "topic {topic:?}: the ring was found corrupt and no new one could be attached: {detail}"
    )]
    RingLost {
        /// The publisher's topic.
        topic: Topic,
        /// Why the new ring could not be attached.
        detail: String,
    },
}

/// Why a message was not published without waiting. Nothing was written to the ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TryPublishError {
    /// The ring is full: a tethered subscriber has not caught up.
    #[error("ring full: a tethered subscriber has not caught up")]
    Full,
    /// Publishing failed whether or not it waited.
    #[error(transparent)]
    Failed(#[from] PublishError),
}

/// Why a message was not published before the timeout. Nothing was written to the ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum PublishTimeoutError {
    /// The ring stayed full until the timeout: a tethered subscriber has not caught up.
    #[error("the ring stayed full until the timeout passed")]
    Timeout,
    /// Publishing failed whether or not it waited.
    #[error(transparent)]
    Failed(#[from] PublishError),
}

/// Why a receive returned no message. Every variant concerns one topic; receiving the others
/// goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RecvError {
    /// Messages on `topic` were overwritten before this subscriber read them (a lossy
    /// subscriber overrun, or a stalled one that the broker evicted), or may have been
    /// published while the broker was away: after a reconnection, each of the subscriber's
    /// patterns is reported with `missed` [`RecvError::MISSED_UNKNOWN`]. Receiving goes on.
    #[error("{}", lagged_message(topic, *missed))]
    Lagged {
        /// The ring's topic, or the pattern across a reconnection.
        topic: Topic,
        /// How many, or [`RecvError::MISSED_UNKNOWN`].
        missed: u64,
    },
    /// The broker is gone. The subscriber goes on reading the rings it has, and registers again
    /// by itself when a broker is back at the bus's address (then reporting each pattern as
    /// [`RecvError::Lagged`]). Receiving goes on.
    #[error("the broker is gone: reading the rings already attached, and reconnecting")]
    BrokerLost,
    /// The ring for `topic` held a frame that breaks the layout rules (a faulty publisher wrote
    /// it): what was between it and the newest message is skipped. Receiving goes on.
    #[error("topic {topic:?}: {detail}; skipped to the newest message")]
    Corrupt {
        /// The ring's topic.
        topic: Topic,
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
    /// The subscriber holds as many owned samples of `topic` as it may (see
    /// [`SubscriberBuilder::max_held`](super::SubscriberBuilder::max_held)): drop some to
    /// receive that topic's next message. Nothing was consumed.
    #[error("topic {topic:?}: {max} owned samples are held; drop some to receive more")]
    HeldLimit {
        /// The ring's topic.
        topic: Topic,
        /// The limit.
        max: u32,
    },
    /// A typed subscriber met a message of another type (its schema tag names another type, or
    /// it has none: a raw message). It is skipped; receiving goes on.
    #[error(
        "topic {topic:?}: a message of another type: expected schema {expected}, found {found}"
    )]
    TypeMismatch {
        /// The ring's topic.
        topic: Topic,
        /// The subscriber's schema.
        expected: crate::Schema,
        /// What the message carried.
        found: String,
    },
    /// A typed message failed validation (it is skipped; receiving goes on).
    #[error(
        "topic {topic:?}: message {sequence} is not a valid archive of the expected type: {detail}"
    )]
    Invalid {
        /// The ring's topic.
        topic: Topic,
        /// The message's sequence number.
        sequence: u64,
        /// The validator's error.
        detail: String,
    },
}

impl RecvError {
    /// Whether receiving can go on after this error: messages were lost, a frame was skipped, a
    /// topic is unreadable, too many samples are held, a typed message failed validation — each
    /// concerns one topic or one message, and the next receive goes on. Every error of this
    /// version is; match on this rather than on the variants, so a loop keeps running:
    ///
    /// ```
    /// # let bus = shmbus::Bus::embedded()?;
    /// # let mut sub = bus.subscriber("log/*").lossy().create()?;
    /// # bus.publisher("log/a")?.publish(b"x")?;
    /// let msg = loop {
    ///     match sub.recv() {
    ///         Ok(msg) => break msg,                             // handle it
    ///         Err(e) if e.is_recoverable() => eprintln!("{e}"), // say what was lost, go on
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// };
    /// # assert_eq!(msg.payload(), b"x");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_recoverable(&self) -> bool {
        match self {
            RecvError::Lagged { .. }
            | RecvError::BrokerLost
            | RecvError::Corrupt { .. }
            | RecvError::Unavailable { .. }
            | RecvError::HeldLimit { .. }
            | RecvError::TypeMismatch { .. }
            | RecvError::Invalid { .. } => true,
        }
    }
}

impl RecvError {
    /// The `missed` of a [`RecvError::Lagged`] across a reconnection: messages published while
    /// the broker was away may be lost, and nobody can count them.
    pub const MISSED_UNKNOWN: u64 = u64::MAX;
}

/// The message of [`RecvError::Lagged`].
fn lagged_message(topic: &Topic, missed: u64) -> String {
    if missed == RecvError::MISSED_UNKNOWN {
        format!("pattern {topic:?}: messages published while the broker was away may be lost")
    } else {
        format!("topic {topic:?}: {missed} messages were lost before they were read")
    }
}

/// Why a receive without waiting returned no message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is there yet.
    #[error("no message yet")]
    Empty,
    /// Receiving failed (see [`RecvError`]).
    #[error(transparent)]
    Failed(#[from] RecvError),
}

/// Why a receive with a timeout returned no message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message came before the timeout.
    #[error("no message before the timeout")]
    Timeout,
    /// Receiving failed (see [`RecvError`]).
    #[error(transparent)]
    Failed(#[from] RecvError),
}
