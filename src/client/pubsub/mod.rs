//! Publish/subscribe: publishers write messages into their topic's ring in shared memory;
//! subscribers read every ring their patterns match, in place.

pub(crate) mod attachments;
mod error;
mod publisher;
pub(crate) mod remote;
mod sample;
mod subscriber;
mod typed;

pub use error::{
    PublishError, PublishTimeoutError, RecvError, RecvTimeoutError, TryPublishError, TryRecvError,
};
pub(crate) use publisher::{AttachedWriter, Patience};
pub use publisher::{Loan, Publisher, PublisherBuilder};
pub use sample::{OwnedSample, Sample};
pub(crate) use subscriber::{Relinking, RingSubscriber, Wait, Waker};
pub use subscriber::{Subscriber, SubscriberBuilder};
pub use typed::{
    OwnedTypedSample, RingSerializer, TypedPublisher, TypedPublisherBuilder, TypedSample,
    TypedSubscriber, TypedSubscriberBuilder,
};
