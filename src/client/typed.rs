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
//! let mut sub = bus.typed_subscriber::<Reading>("sensors/*")?;
//! let mut publisher = bus.typed_publisher::<Reading>("sensors/left")?;
//! publisher.publish(&Reading { sensor: "left".into(), values: vec![0.5, 0.25] })?;
//!
//! let reading = sub.recv()?; // validated, then read in shared memory
//! assert_eq!(reading.sensor, "left");
//! assert_eq!(reading.values[1], 0.25);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::{Archive, Portable, Serialize};

use super::error::{PublishError, RecvError};
use super::publisher::Publisher;
use super::subscriber::{Sample, Subscriber};

/// Serializer of typed publishers: writes into the loaned ring buffer (`'b`), scratch space from
/// rkyv's reusable per-thread arena (`'a`).
pub type RingSerializer<'b, 'a> = HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>;

/// Smallest first guess at a message's size.
const MIN_LOAN: usize = 256;

/// Publishes `T` values, serialized with rkyv directly into the ring.
///
/// The archive's size is known only once it is written, so each message claims a guess — the
/// last sizes seen, with room to spare — and commits what it used. A value that does not fit the
/// guess is serialized again into a claim of the ring's largest payload (the first claim becomes
/// a skipped frame no subscriber sees). Steady state allocates nothing.
pub struct TypedPublisher<T> {
    inner: Publisher,
    guess: usize,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for TypedPublisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedPublisher")
            .field("topic", &self.inner.topic())
            .finish()
    }
}

impl<T> TypedPublisher<T> {
    pub(crate) fn new(inner: Publisher) -> TypedPublisher<T> {
        let guess = MIN_LOAN.min(inner.max_payload());
        TypedPublisher {
            inner,
            guess,
            _type: PhantomData,
        }
    }

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
        self.publish_timeout(value, None)
    }

    /// [`TypedPublisher::publish`], waiting up to `timeout` for room.
    pub fn publish_timeout(
        &mut self,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<u64, PublishError> {
        let max = self.inner.max_payload();
        let mut len = self.guess;
        loop {
            let mut loan = self.inner.loan_timeout(len, timeout)?;
            let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
                value,
                Buffer::from(loan.as_mut_slice()),
            )
            .map(|buf| buf.len());
            match written {
                Ok(n) => {
                    // Next time claim the size just used with half again to spare.
                    self.guess = (n + n / 2).clamp(MIN_LOAN.min(max), max);
                    return Ok(loan.commit_prefix(n));
                }
                Err(_) if len < max => {
                    drop(loan); // skipped, never seen
                    len = max;
                }
                Err(e) => {
                    drop(loan);
                    return Err(PublishError::Serialize {
                        topic: self.inner.topic().to_string(),
                        detail: format!("{e} (the largest message is {max} bytes)"),
                    });
                }
            }
        }
    }
}

/// Receives `T` values, validated and then read in place.
pub struct TypedSubscriber<T> {
    inner: Subscriber,
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
    pub(crate) fn new(inner: Subscriber) -> TypedSubscriber<T> {
        TypedSubscriber {
            inner,
            _type: PhantomData,
        }
    }

    /// The underlying raw subscriber.
    pub fn raw(&mut self) -> &mut Subscriber {
        &mut self.inner
    }
}

impl<T> TypedSubscriber<T>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    fn check(sample: Sample<'_>) -> Result<TypedSample<'_, T>, RecvError> {
        match rkyv::access::<T::Archived, rancor::Error>(sample.payload()) {
            Ok(_) => Ok(TypedSample {
                sample,
                _type: PhantomData,
            }),
            Err(e) => Err(RecvError::Invalid {
                topic: sample.topic().to_string(),
                sequence: sample.sequence(),
                detail: e.to_string(),
            }),
        }
    }

    /// The next value, waiting as long as it takes. A message that is not a valid archive of
    /// `T` is consumed and reported as [`RecvError::Invalid`].
    pub fn recv(&mut self) -> Result<TypedSample<'_, T>, RecvError> {
        Self::check(self.inner.recv()?)
    }

    /// The next value if one is there; never waits.
    pub fn try_recv(&mut self) -> Result<Option<TypedSample<'_, T>>, RecvError> {
        self.inner.try_recv()?.map(Self::check).transpose()
    }

    /// The next value, waiting up to `timeout`.
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<TypedSample<'_, T>>, RecvError> {
        self.inner
            .recv_timeout(timeout)?
            .map(Self::check)
            .transpose()
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
        Ok(TypedSample {
            sample: self.inner.recv()?,
            _type: PhantomData,
        })
    }
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
        // until the sample is released, lossy ones a private copy.
        unsafe { rkyv::access_unchecked::<T::Archived>(self.sample.payload()) }
    }
}
