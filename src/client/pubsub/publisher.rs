//! Publishing raw bytes: [`Publisher`], its builder, and zero-copy [`Loan`]s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use shmbus_shm::{
    CommitError, Deadline, FrameLoan, LoanError, Ring, TryLoanError, WaitStrategy, Writer,
};

use super::error::{PublishError, PublishTimeoutError, TryPublishError};
use super::remote::{RemoteLoan, RemotePublisher};
use super::typed::TypedPublisherBuilder;
use crate::client::bus::{BusFlavor, BusInner};
use crate::client::connection::Link;
use crate::client::error::{AttachError, CallError, ControlError};
use crate::protocol::pubsub::{Holder, Publish, Publishing, Unpublish, WhoHolds};
use crate::protocol::{PublisherId, RingId};
use crate::topic::Topic;

/// How a publisher is made; from [`Bus::publisher_builder`](crate::Bus::publisher_builder).
#[must_use = "a builder does nothing until `create` is called"]
pub struct PublisherBuilder {
    bus: BusFlavor,
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
    pub(crate) fn new(bus: BusFlavor, topic: &str) -> PublisherBuilder {
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

    /// Asks the broker for the topic's ring and attaches to it (on a remote bus: advertises the
    /// topic to the gateway, which attaches to the ring on this publisher's behalf).
    pub fn create(self) -> Result<Publisher, AttachError> {
        let topic = Topic::new(&self.topic)?;
        let inner = match self.bus {
            BusFlavor::Local(bus) => {
                let link = bus.conn.link();
                let mut ring = RingPublisher::attach(bus, link, &topic, None)
                    .map_err(|e| e.into_attach_error(topic.as_str()))?;
                ring.set_wait_strategy(self.wait);
                Flavor::Ring(ring)
            }
            BusFlavor::Remote(bus) => Flavor::Remote(RemotePublisher::open(bus, &topic)?),
        };
        Ok(Publisher { topic, inner })
    }
}

/// Publishes messages on one topic.
///
/// Messages from one publisher arrive in the order it published them. Its slot in the ring is
/// released when it drops.
pub struct Publisher {
    topic: Topic,
    inner: Flavor,
}

/// What a publisher writes through: a ring in shared memory, or a gateway's connection.
enum Flavor {
    Ring(RingPublisher),
    Remote(RemotePublisher),
}

/// A publisher on a local ring: it writes frames in place.
struct RingPublisher {
    writer: Writer,
    ring: RingId,
    wait: WaitStrategy,
    /// The generation of the link it registered on, or [`STALE`] when a loan found the ring
    /// corrupt or retired: while it differs from `current`, the next loan first registers
    /// again (on the new broker's ring, or the topic's new ring).
    registered: u64,
    /// The bus's current link generation (see [`Connection::generation`](
    /// crate::client::connection::Connection::generation)), read at every loan.
    current: Arc<CachePadded<AtomicU64>>,
    bus: Arc<BusInner>,
    link: Arc<Link>,
}

/// [`RingPublisher::registered`] of a publisher whose ring was found corrupt or retired; no
/// link has generation 0.
const STALE: u64 = 0;

impl Drop for RingPublisher {
    fn drop(&mut self) {
        let publisher = PublisherId::from_raw(self.writer.id());
        self.bus.conn.notify_on(&self.link, Unpublish { publisher });
    }
}

/// Why attaching a writer to a topic's ring failed.
enum AttachFailure {
    Call(CallError),
    Shm(String),
}

impl AttachFailure {
    fn into_attach_error(self, topic: &str) -> AttachError {
        match self {
            AttachFailure::Call(e) => AttachError::call(topic, e),
            AttachFailure::Shm(detail) => AttachError::shm(topic, detail),
        }
    }
}

impl std::fmt::Display for AttachFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachFailure::Call(CallError::Request(e)) => e.fmt(f),
            AttachFailure::Call(CallError::Refused(e)) => {
                write!(f, "the broker refused: {}", e.message)
            }
            AttachFailure::Shm(detail) => f.write_str(detail),
        }
    }
}

impl RingPublisher {
    /// Asks the broker of `link` for `topic`'s ring — a fresh one if `replace` names the ring
    /// this publisher found corrupt — maps it and attaches a writer slot in it.
    fn attach(
        bus: Arc<BusInner>,
        link: Arc<Link>,
        topic: &Topic,
        replace: Option<RingId>,
    ) -> Result<RingPublisher, AttachFailure> {
        let request = Publish {
            topic: topic.as_str().to_string(),
            max_payload: link.max_payload,
            replace,
        };
        let (reply, fds) = bus
            .conn
            .call_on(&link, request)
            .map_err(AttachFailure::Call)?;
        match open_ring_writer(&link, fds, &reply) {
            Ok((_, writer)) => Ok(RingPublisher {
                writer,
                ring: reply.ring.id,
                wait: WaitStrategy::default(),
                registered: link.generation,
                current: bus.conn.generation(),
                bus,
                link,
            }),
            Err(detail) => {
                // The broker recorded the publisher; tell it the attachment failed.
                let unpublish = Unpublish {
                    publisher: reply.publisher,
                };
                bus.conn.notify_on(&link, unpublish);
                Err(AttachFailure::Shm(detail))
            }
        }
    }

    /// How blocking loans wait for room.
    fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.writer.set_wait_strategy(wait);
        self.wait = wait;
    }

    /// Registers again: with the broker that is back after a reconnection, or for the topic's
    /// new ring after this one was found corrupt (the broker retires it and creates another).
    /// If the new broker is gone too, the publisher goes on writing the ring it has until the
    /// next reconnection.
    #[cold]
    #[inline(never)]
    fn register_again(&mut self, topic: &Topic) -> Result<(), Refusal> {
        let link = self.bus.conn.link();
        let relinked = link.generation != self.link.generation;
        let replace = (!relinked).then_some(self.ring);
        match RingPublisher::attach(Arc::clone(&self.bus), link.clone(), topic, replace) {
            Ok(mut fresh) => {
                fresh.set_wait_strategy(self.wait);
                // The old publisher is unpublished as it drops (a no-op for a lost broker's).
                *self = fresh;
                Ok(())
            }
            Err(AttachFailure::Call(CallError::Request(ControlError::BrokerGone))) if relinked => {
                self.registered = link.generation;
                Ok(())
            }
            Err(e) => Err(Refusal::Lost(e.to_string())),
        }
    }

    /// Claims room for `len` bytes with the given patience.
    #[inline]
    fn loan<'a>(
        &'a mut self,
        topic: &'a Topic,
        len: usize,
        patience: Patience,
    ) -> Result<Loan<'a>, Refusal> {
        // Relaxed: a hint to look at the link, which `register_again` takes under its lock.
        if self.registered != self.current.load(Ordering::Relaxed) {
            self.register_again(topic)?;
        }
        let loan = match patience {
            Patience::Now => self.writer.try_loan(len).map_err(|e| match e {
                TryLoanError::TooLarge { len, max } => Refusal::TooLarge { len, max },
                TryLoanError::Corrupt | TryLoanError::Retired => Refusal::Moved,
                _ => Refusal::Full,
            }),
            Patience::Until(deadline) => self.writer.loan(len, deadline).map_err(|e| match e {
                LoanError::TooLarge { len, max } => Refusal::TooLarge { len, max },
                LoanError::Corrupt | LoanError::Retired => Refusal::Moved,
                _ => Refusal::Timeout,
            }),
        };
        match loan {
            Ok(loan) => Ok(Loan {
                inner: LoanFlavor::Ring(loan),
                topic,
            }),
            Err(Refusal::Moved) => {
                self.registered = STALE;
                Err(Refusal::Moved)
            }
            Err(r) => Err(r),
        }
    }
}

/// A writer slot on a ring the broker handed out (of request/response), with the ring (to see
/// when it is retired); the broker forgets the publisher when it drops.
pub(crate) struct AttachedWriter {
    pub(crate) writer: Writer,
    pub(crate) ring: Ring,
    bus: Arc<BusInner>,
    /// The link of the broker that handed the ring out.
    pub(crate) link: Arc<Link>,
}

impl AttachedWriter {
    /// Maps the ring of `reply`, which the broker of `link` sent, and attaches its writer; if
    /// that fails, the broker is told to forget the publisher.
    pub(crate) fn attach(
        bus: &Arc<BusInner>,
        link: Arc<Link>,
        fds: Vec<std::os::fd::OwnedFd>,
        reply: &Publishing,
    ) -> Result<AttachedWriter, String> {
        match open_ring_writer(&link, fds, reply) {
            Ok((ring, writer)) => Ok(AttachedWriter {
                writer,
                ring,
                bus: Arc::clone(bus),
                link,
            }),
            Err(detail) => {
                bus.conn.notify_on(
                    &link,
                    Unpublish {
                        publisher: reply.publisher,
                    },
                );
                Err(detail)
            }
        }
    }
}

impl Drop for AttachedWriter {
    fn drop(&mut self) {
        let publisher = PublisherId::from_raw(self.writer.id());
        // Waited for: what the publisher held (a state collection's ownership) is free for
        // other clients when the drop returns. A broker that is gone has released it anyway.
        let _ = self.bus.conn.call_on(&self.link, Unpublish { publisher });
    }
}

/// Maps the ring the broker of `link` sent, with the geometry it described, and attaches a
/// writer slot.
fn open_ring_writer(
    link: &Link,
    fds: Vec<std::os::fd::OwnedFd>,
    reply: &Publishing,
) -> Result<(Ring, Writer), String> {
    let [data, readers]: [_; 2] = fds.try_into().map_err(|_| {
        "the broker's reply came without the ring's descriptors (is this process out of file \
         descriptors?)"
            .to_string()
    })?;
    let ring = Ring::attach(data, readers, &link.doorbells, &reply.ring.into())
        .map_err(|e| e.to_string())?;
    let writer = ring
        .writer(reply.publisher.get(), link.owner)
        .map_err(|e| e.to_string())?;
    Ok((ring, writer))
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("id", &self.id())
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

impl Patience {
    /// When waiting ends: now for [`Patience::Now`], `None` for never.
    pub(crate) fn until(self) -> Option<Instant> {
        match self {
            Patience::Now => Some(Instant::now()),
            Patience::Until(Deadline::Never) => None,
            Patience::Until(Deadline::After(d)) => Some(Instant::now() + d),
            Patience::Until(Deadline::At(at)) => Some(at),
        }
    }
}

/// Why a loan or commit did not happen, before each call turns it into its own error.
#[derive(Clone, Debug)]
pub(crate) enum Refusal {
    TooLarge {
        len: usize,
        max: usize,
    },
    Full,
    Timeout,
    /// The ring was found corrupt or retired; the next loan moves to the topic's new ring.
    Moved,
    /// The broker took the claim back before the commit.
    Revoked,
    /// The ring was found corrupt and no new one could be attached.
    Lost(String),
}

impl Refusal {
    /// The error of a call that may not wait (`try_`), on `topic`.
    pub(crate) fn without_waiting(self, topic: &Topic) -> TryPublishError {
        match self {
            Refusal::Full | Refusal::Timeout => TryPublishError::Full,
            other => other.failure(topic).into(),
        }
    }

    /// The error of a call that waits until a deadline, on `topic`.
    pub(crate) fn by_deadline(self, topic: &Topic) -> PublishTimeoutError {
        match self {
            Refusal::Full | Refusal::Timeout => PublishTimeoutError::Timeout,
            other => other.failure(topic).into(),
        }
    }

    /// The error of a call that waits as long as it takes, on `topic`.
    pub(crate) fn forever(self, topic: &Topic) -> PublishError {
        self.failure(topic)
    }

    /// The error, whatever the call's patience (which alone decides about `Full` and `Timeout`).
    #[cold]
    fn failure(self, topic: &Topic) -> PublishError {
        let topic = topic.clone();
        match self {
            Refusal::TooLarge { len, max } => PublishError::TooLarge { topic, len, max },
            Refusal::Moved => PublishError::RingReplaced { topic },
            Refusal::Revoked => PublishError::Revoked { topic },
            Refusal::Lost(detail) => PublishError::RingLost { topic, detail },
            Refusal::Full | Refusal::Timeout => {
                unreachable!("a wait without a deadline ends only with room")
            }
        }
    }
}

impl Publisher {
    /// The topic it publishes on.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// The ring it writes into (rings are per topic; the broker releases idle ones and replaces
    /// corrupt ones, and a topic published on again gets a new ring).
    ///
    /// On a remote bus the ring is the gateway's business: this is [`RingId::REMOTE`].
    pub fn ring_id(&self) -> RingId {
        match &self.inner {
            Flavor::Ring(p) => p.ring,
            Flavor::Remote(_) => RingId::REMOTE,
        }
    }

    /// Its bus-wide id, which subscribers see on its messages (a new one after a move to a new
    /// ring).
    ///
    /// On a remote bus, the gateway publishes on this publisher's behalf under an id of its own,
    /// which is what subscribers see; this is [`PublisherId::REMOTE`].
    pub fn id(&self) -> PublisherId {
        match &self.inner {
            Flavor::Ring(p) => PublisherId::from_raw(p.writer.id()),
            Flavor::Remote(_) => PublisherId::REMOTE,
        }
    }

    /// The largest payload one message can carry.
    pub fn max_payload(&self) -> usize {
        match &self.inner {
            Flavor::Ring(p) => p.writer.max_payload(),
            Flavor::Remote(p) => p.max_payload(),
        }
    }

    /// How blocking publishes wait for a full ring from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match &mut self.inner {
            Flavor::Ring(p) => p.set_wait_strategy(wait),
            // A remote publisher waits on its connection, which has no strategy to choose.
            Flavor::Remote(_) => {}
        }
    }

    /// Who holds this publisher back: the tethered subscribers furthest behind on its ring, as
    /// the broker knows them (process, user, program, bytes unread). Ask when a publish waits
    /// longer than expected (a `publish_timeout` that timed out): a subscriber that reads nothing
    /// holds publishers back until the broker evicts it (its `--evict-after`, 5 s by default).
    ///
    /// On a remote bus the answer is always empty: the gateway's publisher, not this one, is the
    /// ring's writer.
    pub fn holders(&self) -> Result<Vec<Holder>, ControlError> {
        let p = match &self.inner {
            Flavor::Ring(p) => p,
            Flavor::Remote(_) => return Ok(Vec::new()),
        };
        match p.bus.conn.call_on(&p.link, WhoHolds { ring: p.ring }) {
            Ok((reply, _)) => Ok(reply.holders),
            Err(CallError::Request(e)) => Err(e),
            Err(CallError::Refused(e)) => Err(ControlError::Protocol { detail: e.message }),
        }
    }

    /// Copies `payload` into the ring, waiting as long as it takes for room. Returns the
    /// message's sequence number.
    #[inline]
    pub fn publish(&mut self, payload: &[u8]) -> Result<u64, PublishError> {
        self.copy_in(payload, Patience::Until(Deadline::Never))
            .map_err(|r| r.forever(&self.topic))
    }

    /// Copies `payload` into the ring if there is room now.
    #[inline]
    pub fn try_publish(&mut self, payload: &[u8]) -> Result<u64, TryPublishError> {
        self.copy_in(payload, Patience::Now)
            .map_err(|r| r.without_waiting(&self.topic))
    }

    /// Copies `payload` into the ring, waiting up to `timeout` for room.
    #[inline]
    pub fn publish_timeout(
        &mut self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, PublishTimeoutError> {
        self.copy_in(payload, Patience::Until(Deadline::After(timeout)))
            .map_err(|r| r.by_deadline(&self.topic))
    }

    /// Copies `payload` into the ring, waiting until `deadline` for room.
    #[inline]
    pub fn publish_deadline(
        &mut self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<u64, PublishTimeoutError> {
        self.copy_in(payload, Patience::Until(Deadline::At(deadline)))
            .map_err(|r| r.by_deadline(&self.topic))
    }

    /// Copies `payload` into a loan and commits it. A ring found corrupt (the publisher moves to
    /// the topic's new ring) or a claim the broker took back is tried once more.
    #[inline]
    fn copy_in(&mut self, payload: &[u8], patience: Patience) -> Result<u64, Refusal> {
        let mut retried = false;
        loop {
            let outcome = match self.loan_with(payload.len(), patience) {
                Ok(mut loan) => {
                    loan.as_mut_slice().copy_from_slice(payload);
                    loan.finish(payload.len())
                }
                Err(r) => Err(r),
            };
            match outcome {
                Err(Refusal::Moved | Refusal::Revoked) if !retried => retried = true,
                other => return other,
            }
        }
    }

    /// Claims room for a `len`-byte message in the ring, waiting as long as it takes: fill
    /// [`Loan::as_mut_slice`] and [`Loan::commit`] — zero copy. Dropped uncommitted, nothing is
    /// published.
    ///
    /// If the ring turns out corrupt, the loan fails with [`PublishError::RingReplaced`] and the
    /// publisher moves to the topic's new ring at the next loan.
    ///
    /// ```
    /// let bus = shmbus::Bus::embedded()?;
    /// let mut sub = bus.subscribe("frames")?;
    /// let mut publisher = bus.publisher("frames")?;
    /// let mut loan = publisher.loan(4)?;
    /// loan.as_mut_slice().copy_from_slice(&[1, 2, 3, 4]); // written in shared memory
    /// loan.commit()?;
    /// assert_eq!(sub.recv()?.payload(), [1, 2, 3, 4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        let Publisher { topic, inner } = self;
        inner
            .loan(topic, len, Patience::Until(Deadline::Never))
            .map_err(|r| r.forever(topic))
    }

    /// [`Publisher::loan`] if there is room now.
    #[inline]
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, TryPublishError> {
        let Publisher { topic, inner } = self;
        inner
            .loan(topic, len, Patience::Now)
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
        let Publisher { topic, inner } = self;
        inner
            .loan(topic, len, Patience::Until(deadline))
            .map_err(|r| r.by_deadline(topic))
    }

    /// Claims room for `len` bytes with the given patience (for typed publishers).
    #[inline]
    pub(crate) fn loan_with(
        &mut self,
        len: usize,
        patience: Patience,
    ) -> Result<Loan<'_>, Refusal> {
        let Publisher { topic, inner } = self;
        inner.loan(topic, len, patience)
    }

    /// The topic, shared.
    pub(crate) fn topic_ref(&self) -> &Topic {
        &self.topic
    }
}

impl Flavor {
    /// Claims room for `len` bytes with the given patience.
    #[inline]
    fn loan<'a>(
        &'a mut self,
        topic: &'a Topic,
        len: usize,
        patience: Patience,
    ) -> Result<Loan<'a>, Refusal> {
        match self {
            Flavor::Ring(p) => p.loan(topic, len, patience),
            Flavor::Remote(p) => Ok(Loan {
                inner: LoanFlavor::Remote(p.loan(len, patience)?),
                topic,
            }),
        }
    }
}

/// Room for one message. See [`Publisher::loan`].
#[derive(Debug)]
pub struct Loan<'a> {
    inner: LoanFlavor<'a>,
    topic: &'a Topic,
}

#[derive(Debug)]
enum LoanFlavor<'a> {
    Ring(FrameLoan<'a>),
    Remote(RemoteLoan<'a>),
}

impl Loan<'_> {
    /// The message buffer, in shared memory (on a remote bus, a buffer sent at commit). Its
    /// bytes are whatever the ring held before.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.inner {
            LoanFlavor::Ring(l) => l.as_mut_slice(),
            LoanFlavor::Remote(l) => l.as_mut_slice(),
        }
    }

    /// Its length.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            LoanFlavor::Ring(l) => l.len(),
            LoanFlavor::Remote(l) => l.len(),
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
            LoanFlavor::Remote(l) => l.sequence(),
        }
    }

    /// Publishes the message. Returns its sequence number, or [`PublishError::Revoked`] if the
    /// loan was held so long (the process stopped between loan and commit) that the broker took
    /// it back to let subscribers go on.
    #[inline]
    pub fn commit(self) -> Result<u64, PublishError> {
        let len = self.len();
        self.commit_prefix(len)
    }

    /// Publishes the first `len` bytes only (for writers that learn the size as they go).
    /// Panics if `len` exceeds the loan.
    #[inline]
    pub fn commit_prefix(self, len: usize) -> Result<u64, PublishError> {
        let topic = self.topic;
        self.finish(len).map_err(|r| r.forever(topic))
    }

    /// Commits the first `len` bytes.
    #[inline]
    pub(crate) fn finish(self, len: usize) -> Result<u64, Refusal> {
        match self.inner {
            // A commit fails only when the broker took the claim back.
            LoanFlavor::Ring(l) => l
                .commit_prefix(len)
                .map_err(|_: CommitError| Refusal::Revoked),
            LoanFlavor::Remote(l) => l.commit_prefix(len),
        }
    }
}
