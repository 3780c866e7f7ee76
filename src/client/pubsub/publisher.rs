//! Publishing raw bytes: [`Publisher`], its builder, and zero-copy [`Loan`]s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus_shm::{Deadline, FrameLoan, LoanError, Ring, TryLoanError, WaitStrategy, Writer};

use super::error::{PublishError, PublishTimeoutError, TryPublishError};
use super::typed::TypedPublisherBuilder;
use crate::client::bus::BusInner;
use crate::client::error::AttachError;
use crate::protocol::pubsub::{Publish, Unpublish};
use crate::protocol::{PublisherId, RingId};
use crate::topic::Topic;

/// How a publisher is made; from [`Bus::publisher_builder`](crate::Bus::publisher_builder).
#[must_use = "a builder does nothing until `create` is called"]
pub struct PublisherBuilder {
    bus: Arc<BusInner>,
    topic: String,
    wait: WaitStrategy,
}

impl std::fmt::Debug for PublisherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("topic", &self.topic)
            .field("wait", &self.wait)
            .finish()
    }
}

impl PublisherBuilder {
    pub(crate) fn new(bus: Arc<BusInner>, topic: &str) -> PublisherBuilder {
        PublisherBuilder {
            bus,
            topic: topic.to_string(),
            wait: WaitStrategy::default(),
        }
    }

    /// How blocking publishes wait for a full ring (default: spin 50 µs, then park).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Publish values of `T`, serialized with rkyv straight into the ring.
    pub fn typed<T>(self) -> TypedPublisherBuilder<T> {
        TypedPublisherBuilder::new(self)
    }

    /// Asks the broker for the topic's ring and attaches to it.
    pub fn create(self) -> Result<Publisher, AttachError> {
        let topic = Topic::new(&self.topic)?;
        let request = Publish {
            topic: topic.as_str().to_string(),
            max_payload: self.bus.max_payload,
        };
        let (reply, fds) = self
            .bus
            .conn
            .call(request)
            .map_err(|e| AttachError::call(topic.as_str(), e))?;
        let mut writer = match open_writer(&self.bus, fds, reply.publisher) {
            Ok(writer) => writer,
            Err(detail) => {
                // The broker recorded the publisher; tell it the attachment failed.
                let unpublish = Unpublish {
                    publisher: reply.publisher,
                };
                self.bus.conn.notify(unpublish);
                return Err(AttachError::shm(topic.as_str(), detail));
            }
        };
        writer.set_wait_strategy(self.wait);
        Ok(Publisher {
            topic,
            id: reply.publisher,
            ring: reply.ring,
            inner: Flavor::Ring(RingPublisher {
                writer,
                bus: self.bus,
            }),
        })
    }
}

/// Maps the ring the broker sent and attaches a writer slot in it.
fn open_writer(
    bus: &BusInner,
    fds: Vec<std::os::fd::OwnedFd>,
    id: PublisherId,
) -> Result<Writer, String> {
    let [data, readers]: [_; 2] = fds
        .try_into()
        .map_err(|_| "the broker sent no ring descriptors".to_string())?;
    let ring = Ring::open(data, readers, &bus.doorbells).map_err(|e| e.to_string())?;
    ring.writer(id.get(), bus.owner).map_err(|e| e.to_string())
}

/// Publishes messages on one topic.
///
/// Messages from one publisher arrive in the order it published them. Its slot in the ring is
/// released when it drops.
pub struct Publisher {
    topic: Topic,
    id: PublisherId,
    ring: RingId,
    inner: Flavor,
}

/// What a publisher writes through: a ring in shared memory (remote buses will add theirs).
enum Flavor {
    Ring(RingPublisher),
}

/// A publisher on a local ring: it writes frames in place.
struct RingPublisher {
    writer: Writer,
    bus: Arc<BusInner>,
}

impl Drop for RingPublisher {
    fn drop(&mut self) {
        let publisher = PublisherId::from_raw(self.writer.id());
        self.bus.conn.notify(Unpublish { publisher });
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .finish()
    }
}

/// How long a publish may wait for room.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Patience {
    /// Not at all.
    Now,
    /// Until the deadline.
    Until(Deadline),
}

/// Why a loan was not made, before each call turns it into its own error.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    TooLarge { len: usize, max: usize },
    Full,
    Timeout,
}

impl Refusal {
    /// The error of a call that may not wait (`try_`), on `topic`.
    pub(crate) fn without_waiting(self, topic: &Topic) -> TryPublishError {
        match self {
            Refusal::TooLarge { len, max } => too_large(topic, len, max).into(),
            Refusal::Full | Refusal::Timeout => TryPublishError::Full,
        }
    }

    /// The error of a call that waits until a deadline, on `topic`.
    pub(crate) fn by_deadline(self, topic: &Topic) -> PublishTimeoutError {
        match self {
            Refusal::TooLarge { len, max } => too_large(topic, len, max).into(),
            Refusal::Full | Refusal::Timeout => PublishTimeoutError::Timeout,
        }
    }

    /// The error of a call that waits as long as it takes, on `topic`.
    pub(crate) fn forever(self, topic: &Topic) -> PublishError {
        match self {
            Refusal::TooLarge { len, max } => too_large(topic, len, max),
            Refusal::Full | Refusal::Timeout => {
                unreachable!("a wait without a deadline ends only with room")
            }
        }
    }
}

#[cold]
fn too_large(topic: &Topic, len: usize, max: usize) -> PublishError {
    PublishError::TooLarge {
        topic: topic.clone(),
        len,
        max,
    }
}

impl Publisher {
    /// The topic it publishes on.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// The ring it writes into (rings are per topic; the broker releases idle ones, and a topic
    /// published on again gets a new ring).
    pub fn ring_id(&self) -> RingId {
        self.ring
    }

    /// Its bus-wide id, which subscribers see on its messages.
    pub fn id(&self) -> PublisherId {
        self.id
    }

    /// The largest payload one message can carry.
    pub fn max_payload(&self) -> usize {
        match &self.inner {
            Flavor::Ring(p) => p.writer.max_payload(),
        }
    }

    /// How blocking publishes wait for a full ring from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match &mut self.inner {
            Flavor::Ring(p) => p.writer.set_wait_strategy(wait),
        }
    }

    /// Copies `payload` into the ring, waiting as long as it takes for room. Returns the
    /// message's sequence number.
    #[inline]
    pub fn publish(&mut self, payload: &[u8]) -> Result<u64, PublishError> {
        let mut loan = self.loan(payload.len())?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit())
    }

    /// Copies `payload` into the ring if there is room now.
    #[inline]
    pub fn try_publish(&mut self, payload: &[u8]) -> Result<u64, TryPublishError> {
        let mut loan = self.try_loan(payload.len())?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit())
    }

    /// Copies `payload` into the ring, waiting up to `timeout` for room.
    #[inline]
    pub fn publish_timeout(
        &mut self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, PublishTimeoutError> {
        let mut loan = self.loan_timeout(payload.len(), timeout)?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit())
    }

    /// Copies `payload` into the ring, waiting until `deadline` for room.
    #[inline]
    pub fn publish_deadline(
        &mut self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<u64, PublishTimeoutError> {
        let mut loan = self.loan_deadline(payload.len(), deadline)?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit())
    }

    /// Claims room for a `len`-byte message in the ring, waiting as long as it takes: fill
    /// [`Loan::as_mut_slice`] and [`Loan::commit`] — zero copy. Dropped uncommitted, nothing is
    /// published.
    ///
    /// ```
    /// let bus = shmbus::Bus::embedded()?;
    /// let mut sub = bus.subscribe("frames")?;
    /// let mut publisher = bus.publisher("frames")?;
    /// let mut loan = publisher.loan(4)?;
    /// loan.as_mut_slice().copy_from_slice(&[1, 2, 3, 4]); // written in shared memory
    /// loan.commit();
    /// assert_eq!(sub.recv()?.payload(), [1, 2, 3, 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        let Publisher { topic, inner, .. } = self;
        inner
            .loan(len, Patience::Until(Deadline::Never))
            .map_err(|r| r.forever(topic))
    }

    /// [`Publisher::loan`] if there is room now.
    #[inline]
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, TryPublishError> {
        let Publisher { topic, inner, .. } = self;
        inner
            .loan(len, Patience::Now)
            .map_err(|r| r.without_waiting(topic))
    }

    /// [`Publisher::loan`], waiting up to `timeout`.
    #[inline]
    pub fn loan_timeout(
        &mut self,
        len: usize,
        timeout: Duration,
    ) -> Result<Loan<'_>, PublishTimeoutError> {
        self.loan_until(len, Deadline::After(timeout))
    }

    /// [`Publisher::loan`], waiting until `deadline`.
    #[inline]
    pub fn loan_deadline(
        &mut self,
        len: usize,
        deadline: Instant,
    ) -> Result<Loan<'_>, PublishTimeoutError> {
        self.loan_until(len, Deadline::At(deadline))
    }

    #[inline]
    fn loan_until(
        &mut self,
        len: usize,
        deadline: Deadline,
    ) -> Result<Loan<'_>, PublishTimeoutError> {
        let Publisher { topic, inner, .. } = self;
        inner
            .loan(len, Patience::Until(deadline))
            .map_err(|r| r.by_deadline(topic))
    }

    /// Claims room for `len` bytes with the given patience (for typed publishers).
    #[inline]
    pub(crate) fn loan_with(
        &mut self,
        len: usize,
        patience: Patience,
    ) -> Result<Loan<'_>, Refusal> {
        self.inner.loan(len, patience)
    }

    /// The topic, shared.
    pub(crate) fn topic_ref(&self) -> &Topic {
        &self.topic
    }
}

impl Flavor {
    /// Claims room for `len` bytes with the given patience.
    #[inline]
    fn loan(&mut self, len: usize, patience: Patience) -> Result<Loan<'_>, Refusal> {
        match self {
            Flavor::Ring(p) => {
                let loan = match patience {
                    Patience::Now => p.writer.try_loan(len).map_err(|e| match e {
                        TryLoanError::TooLarge { len, max } => Refusal::TooLarge { len, max },
                        _ => Refusal::Full,
                    }),
                    Patience::Until(deadline) => {
                        p.writer.loan(len, deadline).map_err(|e| match e {
                            LoanError::TooLarge { len, max } => Refusal::TooLarge { len, max },
                            _ => Refusal::Timeout,
                        })
                    }
                }?;
                Ok(Loan {
                    inner: LoanFlavor::Ring(loan),
                })
            }
        }
    }
}

/// Room for one message. See [`Publisher::loan`].
#[derive(Debug)]
pub struct Loan<'a> {
    inner: LoanFlavor<'a>,
}

#[derive(Debug)]
enum LoanFlavor<'a> {
    Ring(FrameLoan<'a>),
}

impl Loan<'_> {
    /// The message buffer, in shared memory. Its bytes are whatever the ring held before.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.inner {
            LoanFlavor::Ring(l) => l.as_mut_slice(),
        }
    }

    /// Its length.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            LoanFlavor::Ring(l) => l.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence number the message will carry.
    pub fn sequence(&self) -> u64 {
        match &self.inner {
            LoanFlavor::Ring(l) => l.sequence(),
        }
    }

    /// Publishes the message. Returns its sequence number.
    #[inline]
    pub fn commit(self) -> u64 {
        match self.inner {
            LoanFlavor::Ring(l) => l.commit(),
        }
    }

    /// Publishes the first `len` bytes only (for writers that learn the size as they go).
    /// Panics if `len` exceeds the loan.
    #[inline]
    pub fn commit_prefix(self, len: usize) -> u64 {
        match self.inner {
            LoanFlavor::Ring(l) => l.commit_prefix(len),
        }
    }
}
