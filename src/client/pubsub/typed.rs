//! Typed messages: rkyv archives serialized straight into the ring and read in place.
//!
//! ```
//! use shmbus::Bus;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! struct Reading {
//!     sensor: String,
//!     values: Vec<f32>,
//! }
//!
//! let bus = Bus::embedded()?;
//! let mut sub = bus.subscriber("sensors/*").typed::<Reading>().create()?;
//! let mut publisher = bus.publisher_builder("sensors/left").typed::<Reading>().create()?;
//! publisher.publish(&Reading { sensor: "left".into(), values: vec![0.5, 0.25] })?;
//!
//! let reading = sub.recv()?; // validated, then read in shared memory
//! assert_eq!(reading.sensor, "left");
//! assert_eq!(reading.values[1], 0.25);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, Instant};

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::{Archive, Portable, Serialize};
use shmbus_shm::Deadline;

use super::error::{
    PublishError, PublishTimeoutError, RecvError, RecvTimeoutError, TryPublishError, TryRecvError,
};
use super::publisher::{Patience, Publisher, PublisherBuilder, Refusal};
use super::sample::{OwnedSample, Sample};
use super::subscriber::{Subscriber, SubscriberBuilder};
use crate::client::error::AttachError;
use crate::client::schema::{self, Schema, TAG_LEN};

/// Serializer of typed publishers: writes into the loaned ring buffer (`'b`), scratch space from
/// rkyv's reusable per-thread arena (`'a`).
pub type RingSerializer<'b, 'a> = HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::BoxedError>;

/// Smallest first guess at a message's size.
const MIN_LOAN: usize = 256;

/// How a typed publisher is made; from [`PublisherBuilder::typed`].
#[must_use = "a builder does nothing until `create` is called"]
pub struct TypedPublisherBuilder<T> {
    inner: PublisherBuilder,
    schema: Option<Schema>,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for TypedPublisherBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedPublisherBuilder")
            .field(&self.inner)
            .finish()
    }
}

impl<T> TypedPublisherBuilder<T> {
    pub(crate) fn new(inner: PublisherBuilder) -> Self {
        TypedPublisherBuilder {
            inner,
            schema: None,
            _type: PhantomData,
        }
    }

    /// The schema its messages are tagged with (default: [`Schema::of`] `T`; set one for a type
    /// that other programs or languages define too).
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }
}

impl<T: Archive> TypedPublisherBuilder<T> {
    /// Attaches the publisher.
    pub fn create(self) -> Result<TypedPublisher<T>, AttachError> {
        let inner = self.inner.create()?;
        let guess = MIN_LOAN.min(inner.max_payload());
        Ok(TypedPublisher {
            inner,
            guess,
            schema: self.schema.unwrap_or_else(Schema::of::<T>),
            _type: PhantomData,
        })
    }
}

/// Publishes `T` values, serialized with rkyv directly into the ring.
///
/// The archive's size is known only once it is written, so each message claims a guess — the
/// last sizes seen, with room to spare — and commits what it used. A value that does not fit the
/// guess is serialized again into a claim of the ring's largest payload (the first claim becomes
/// a skipped frame no subscriber sees). Steady state allocates nothing.
pub struct TypedPublisher<T> {
    inner: Publisher,
    guess: usize,
    schema: Schema,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for TypedPublisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedPublisher")
            .field("topic", &self.inner.topic())
            .finish()
    }
}

/// Why a typed publish failed, before each call turns it into its own error.
enum Failure {
    Refused(Refusal),
    Serialize(String),
}

impl<T> TypedPublisher<T> {
    /// The underlying raw publisher.
    pub fn raw(&mut self) -> &mut Publisher {
        &mut self.inner
    }
}

impl<T> TypedPublisher<T>
where
    T: for<'b, 'a> Serialize<RingSerializer<'b, 'a>>,
{
    /// Serializes `value` into the ring, waiting as long as it takes for room. Returns the
    /// message's sequence number.
    pub fn publish(&mut self, value: &T) -> Result<u64, PublishError> {
        match self.publish_with(value, Patience::Until(Deadline::Never)) {
            Ok(seq) => Ok(seq),
            Err(Failure::Serialize(detail)) => Err(PublishError::Serialize { detail }),
            Err(Failure::Refused(r)) => Err(r.forever(self.inner.topic_ref())),
        }
    }

    /// Serializes `value` into the ring if there is room now.
    pub fn try_publish(&mut self, value: &T) -> Result<u64, TryPublishError> {
        match self.publish_with(value, Patience::Now) {
            Ok(seq) => Ok(seq),
            Err(Failure::Serialize(detail)) => Err(PublishError::Serialize { detail }.into()),
            Err(Failure::Refused(r)) => Err(r.without_waiting(self.inner.topic_ref())),
        }
    }

    /// Serializes `value` into the ring, waiting up to `timeout` for room.
    pub fn publish_timeout(
        &mut self,
        value: &T,
        timeout: Duration,
    ) -> Result<u64, PublishTimeoutError> {
        // One deadline for both claims a value may take.
        let deadline = Instant::now() + timeout;
        self.publish_deadline(value, deadline)
    }

    /// Serializes `value` into the ring, waiting until `deadline` for room.
    pub fn publish_deadline(
        &mut self,
        value: &T,
        deadline: Instant,
    ) -> Result<u64, PublishTimeoutError> {
        match self.publish_with(value, Patience::Until(Deadline::At(deadline))) {
            Ok(seq) => Ok(seq),
            Err(Failure::Serialize(detail)) => Err(PublishError::Serialize { detail }.into()),
            Err(Failure::Refused(r)) => Err(r.by_deadline(self.inner.topic_ref())),
        }
    }

    fn publish_with(&mut self, value: &T, patience: Patience) -> Result<u64, Failure> {
        let max = self.inner.max_payload();
        let mut len = self.guess;
        // A ring found corrupt (the publisher moves to the new one) or a claim the broker took
        // back is tried once more, as raw publishes do.
        let mut retried = false;
        loop {
            let mut loan = match self.inner.loan_with(len, patience) {
                Ok(loan) => loan,
                Err(Refusal::Moved) if !retried => {
                    retried = true;
                    continue;
                }
                Err(r) => return Err(Failure::Refused(r)),
            };
            let Some((tag, archive)) = loan.as_mut_slice().split_first_chunk_mut::<TAG_LEN>()
            else {
                drop(loan);
                let topic = self.inner.topic();
                return Err(Failure::Serialize(format!(
                    "topic {topic:?}: the largest message ({max} bytes) cannot hold a schema tag"
                )));
            };
            *tag = self.schema.tag();
            let written =
                rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, Buffer::from(archive))
                    .map(|buf| TAG_LEN + buf.len());
            match written {
                Ok(n) => {
                    // Next time claim the size just used with half again to spare.
                    self.guess = (n + n / 2).clamp(MIN_LOAN.min(max), max);
                    match loan.finish(n) {
                        Err(Refusal::Revoked) if !retried => retried = true,
                        outcome => return outcome.map_err(Failure::Refused),
                    }
                }
                Err(_) if len < max => {
                    drop(loan); // skipped, never seen
                    len = max;
                }
                Err(e) => {
                    drop(loan);
                    let topic = self.inner.topic();
                    return Err(Failure::Serialize(format!(
                        "topic {topic:?}: {e} (the largest message is {max} bytes)"
                    )));
                }
            }
        }
    }
}

/// How a typed subscriber is made; from [`SubscriberBuilder::typed`].
#[must_use = "a builder does nothing until `create` is called"]
pub struct TypedSubscriberBuilder<T> {
    inner: SubscriberBuilder,
    schema: Option<Schema>,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TypedSubscriberBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedSubscriberBuilder")
            .field(&self.inner)
            .finish()
    }
}

impl<T> TypedSubscriberBuilder<T> {
    pub(crate) fn new(inner: SubscriberBuilder) -> Self {
        TypedSubscriberBuilder {
            inner,
            schema: None,
            _type: PhantomData,
        }
    }

    /// The schema messages must be tagged with (default: [`Schema::of`] `T`).
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }
}

impl<T: Archive> TypedSubscriberBuilder<T> {
    /// Subscribes.
    pub fn create(self) -> Result<TypedSubscriber<T>, AttachError> {
        Ok(TypedSubscriber {
            inner: self.inner.create()?,
            schema: self.schema.unwrap_or_else(Schema::of::<T>),
            _type: PhantomData,
        })
    }
}

/// Receives `T` values, validated and then read in place.
pub struct TypedSubscriber<T> {
    inner: Subscriber,
    schema: Schema,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TypedSubscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedSubscriber")
            .field("subscriber", &self.inner)
            .finish()
    }
}

impl<T> TypedSubscriber<T> {
    /// The underlying raw subscriber.
    pub fn raw(&mut self) -> &mut Subscriber {
        &mut self.inner
    }
}

impl<T> TypedSubscriber<T>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>,
{
    /// Checks `sample`'s schema tag, then validates the archive after it.
    fn check(schema: Schema, sample: Sample<'_>) -> Result<TypedSample<'_, T>, RecvError> {
        let archive = strip(schema, &sample)?;
        match rkyv::access::<T::Archived, rancor::BoxedError>(archive) {
            Ok(_) => Ok(TypedSample {
                sample,
                _type: PhantomData,
            }),
            Err(e) => Err(RecvError::Invalid {
                topic: sample.topic_ref().clone(),
                sequence: sample.sequence(),
                detail: e.to_string(),
            }),
        }
    }

    /// The next value, waiting as long as it takes. A message of another type is consumed and
    /// reported as [`RecvError::TypeMismatch`], one that is not a valid archive of `T` as
    /// [`RecvError::Invalid`].
    pub fn recv(&mut self) -> Result<TypedSample<'_, T>, RecvError> {
        Self::check(self.schema, self.inner.recv()?)
    }

    /// The next value if one is there; never waits.
    pub fn try_recv(&mut self) -> Result<TypedSample<'_, T>, TryRecvError> {
        Ok(Self::check(self.schema, self.inner.try_recv()?)?)
    }

    /// The next value, waiting up to `timeout`.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<TypedSample<'_, T>, RecvTimeoutError> {
        Ok(Self::check(self.schema, self.inner.recv_timeout(timeout)?)?)
    }

    /// The next value, waiting until `deadline`.
    pub fn recv_deadline(
        &mut self,
        deadline: Instant,
    ) -> Result<TypedSample<'_, T>, RecvTimeoutError> {
        Ok(Self::check(
            self.schema,
            self.inner.recv_deadline(deadline)?,
        )?)
    }
}

impl<T: Archive> TypedSubscriber<T>
where
    T::Archived: Portable,
{
    /// The next value, without validating it.
    ///
    /// # Safety
    ///
    /// Every message on the subscribed topics must be a valid archive of `T` — written by a
    /// [`TypedPublisher<T>`] of the same type definition, or equivalent. A message that is not
    /// is undefined behaviour to read.
    pub unsafe fn recv_unchecked(&mut self) -> Result<TypedSample<'_, T>, RecvError> {
        let sample = self.inner.recv()?;
        // The tag is still checked: it costs one comparison and names a wrong type.
        strip(self.schema, &sample)?;
        Ok(TypedSample {
            sample,
            _type: PhantomData,
        })
    }
}

/// The archive after `sample`'s schema tag, or the mismatch.
fn strip<'s>(schema: Schema, sample: &'s Sample<'_>) -> Result<&'s [u8], RecvError> {
    schema
        .strip(sample.payload())
        .map_err(|found| RecvError::TypeMismatch {
            topic: sample.topic_ref().clone(),
            expected: schema,
            found: schema::found(found),
        })
}

/// A received value: dereferences to the archived `T`, in place.
pub struct TypedSample<'a, T> {
    sample: Sample<'a>,
    _type: PhantomData<fn() -> T>,
}

impl<T> TypedSample<'_, T> {
    /// The raw message (topic, publisher, sequence, bytes).
    pub fn sample(&self) -> &Sample<'_> {
        &self.sample
    }

    /// Keeps the value beyond the next receive (see [`Sample::detach`]).
    pub fn detach(self) -> OwnedTypedSample<T> {
        OwnedTypedSample {
            sample: self.sample.detach(),
            _type: PhantomData,
        }
    }
}

impl<T: Archive> Deref for TypedSample<'_, T>
where
    T::Archived: Portable,
{
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: the bytes were validated as a `T::Archived` when this sample was made (or the
        // caller of `recv_unchecked` promised they are one), and they do not change while the
        // sample lives: tethered subscribers read committed frames publishers may not overwrite
        // until the sample is released, lossy ones a private copy. (One case is not defended:
        // a reader the broker evicts while it holds the sample; see docs/THREAT_MODEL.md.)
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.sample.payload()[TAG_LEN..]) }
    }
}

/// A received value that borrows nothing (see [`Sample::detach`]): dereferences to the archived
/// `T`, in place.
pub struct OwnedTypedSample<T> {
    sample: OwnedSample,
    _type: PhantomData<fn() -> T>,
}

impl<T> OwnedTypedSample<T> {
    /// The raw message.
    pub fn sample(&self) -> &OwnedSample {
        &self.sample
    }
}

impl<T: Archive> Deref for OwnedTypedSample<T>
where
    T::Archived: Portable,
{
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: validated when received (see `TypedSample::deref`); an owned sample keeps its
        // frame in place, or owns its private copy, until it drops.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.sample.payload()[TAG_LEN..]) }
    }
}
