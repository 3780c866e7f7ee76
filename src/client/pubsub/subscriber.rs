//! Subscribing: one [`Subscriber`] reads every ring its patterns match, in place, waiting on all
//! of them with one doorbell.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shmbus_shm::wait::{Deadline, Idle, Waiter};
use shmbus_shm::{
    Doorbell, MemberError, Owner, ReadError, Reader, ReaderMode, ReaderOptions, ReaderSet,
    ReservedReader, Ring, WaitStrategy,
};
use tracing::warn;

use super::attachments::{Attachment, AttachmentQueue};
use super::error::{RecvError, RecvTimeoutError, TryRecvError};
use super::publisher::Patience;
use super::remote::{Inbox, RemoteSubscriber};
use super::sample::Sample;
use super::typed::TypedSubscriberBuilder;
use crate::client::bus::{BusFlavor, BusInner};
use crate::client::connection::{Connection, Link};
use crate::client::error::{AttachError, CallError};
use crate::protocol::pubsub::{
    ClaimDoorbell, ReleaseDoorbell, Resume, RingAttachment, Subscribe, Unsubscribe,
};
use crate::protocol::remote::Mode;
use crate::protocol::{Call, RingId, SubscriptionId};
use crate::topic::Topic;

/// How a subscriber is made; from [`Bus::subscriber`](crate::Bus::subscriber). Defaults:
/// tethered (lossless), no history, spin 50 µs then park, 16 owned samples per topic.
#[must_use = "a builder does nothing until `create` is called"]
pub struct SubscriberBuilder {
    bus: BusFlavor,
    patterns: Vec<String>,
    options: ReaderOptions,
    lossy: bool,
    history: u32,
    wait: WaitStrategy,
}

impl std::fmt::Debug for SubscriberBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("patterns", &self.patterns)
            .field("options", &self.options)
            .field("wait", &self.wait)
            .finish()
    }
}

impl SubscriberBuilder {
    pub(crate) fn new(bus: BusFlavor) -> SubscriberBuilder {
        SubscriberBuilder {
            bus,
            patterns: Vec::new(),
            options: ReaderOptions::default(),
            lossy: false,
            history: 0,
            wait: WaitStrategy::default(),
        }
    }

    /// Also receive the topics matching `pattern` (a topic matched by several patterns is read
    /// once).
    pub fn pattern(mut self, pattern: &str) -> Self {
        self.patterns.push(pattern.to_string());
        self
    }

    /// Never hold publishers back: when overrun, get [`RecvError::Lagged`] and go on from the
    /// oldest message still in the ring (messages are then copied out and checked, not read in
    /// place). The default is tethered: lossless, and a subscriber that stops reading holds
    /// publishers back until the broker evicts it.
    pub fn lossy(mut self) -> Self {
        self.options = self.options.mode(ReaderMode::Lossy);
        self.lossy = true;
        self
    }

    /// Also deliver the last `n` messages of each matching topic published before subscribing,
    /// as far as its ring still holds them.
    pub fn history(mut self, n: u32) -> Self {
        self.history = n;
        self.options = self.options.history(u64::from(n));
        self
    }

    /// How receiving waits (default: spin 50 µs, then park).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// At most `n` (at least 1) [owned samples](Sample::detach) per topic at once; at the limit
    /// a receive fails with [`RecvError::HeldLimit`] until some are dropped.
    pub fn max_held(mut self, n: u32) -> Self {
        self.options = self.options.max_held(n);
        self
    }

    /// Receive values of `T`, validated and read in place.
    pub fn typed<T>(self) -> TypedSubscriberBuilder<T> {
        TypedSubscriberBuilder::new(self)
    }

    /// Subscribes: every pattern is attached before this returns, so every message published
    /// afterwards on a matching topic is delivered. Without patterns, the subscriber receives
    /// nothing until [`Subscriber::add_pattern`].
    ///
    /// On a remote bus the gateway subscribes on this subscriber's behalf and forwards the
    /// messages; they are read from the subscriber's bounded inbox (see `pubsub::remote`).
    pub fn create(self) -> Result<Subscriber, AttachError> {
        let bus = match self.bus {
            BusFlavor::Local(bus) => bus,
            BusFlavor::Remote(bus) => {
                let patterns = self
                    .patterns
                    .iter()
                    .map(|p| Topic::new(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let sub = {
                    let mode = if self.lossy {
                        Mode::Lossy
                    } else {
                        Mode::Tethered
                    };
                    RemoteSubscriber::open(bus, patterns, mode, self.history, self.wait)?
                };
                return Ok(Subscriber {
                    inner: Flavor::Remote(sub),
                });
            }
        };
        let first = self.patterns.first().map_or("(none yet)", String::as_str);
        let mut sub = RingSubscriber::open(bus, self.options, self.history, self.wait, first)?;
        sub.relink_with(Relinking {
            report: true,
            drain: true,
        });
        for pattern in &self.patterns {
            sub.add_pattern(pattern)?;
        }
        Ok(Subscriber {
            inner: Flavor::Rings(sub),
        })
    }
}

/// Receives the messages of every topic matching its patterns — rings that exist now and rings
/// created later — from the moment the pattern was added.
///
/// Messages of one publisher arrive in order; messages of different topics interleave (round
/// robin, so one busy topic cannot starve the others). A topic matched by several of the
/// subscriber's patterns is read once.
pub struct Subscriber {
    inner: Flavor,
}

/// What a subscriber reads from: rings in shared memory, or the inbox a gateway's connection
/// fills.
#[allow(clippy::large_enum_variant)] // boxing the hot, local variant would cost every receive
enum Flavor {
    Rings(RingSubscriber),
    Remote(RemoteSubscriber),
}

/// What each reader of a subscriber carries: its ring's topic, and the subscription, which is
/// ended only when the last reader and the last sample of it are gone.
pub(crate) struct RingLabel {
    pub(crate) topic: Topic,
    subscription: Arc<SubscriptionLease>,
}

/// A subscriber's subscriptions and doorbell at the broker of one link, given back when the
/// last of the subscriber and its owned samples lets go: only then are its reader slots unused,
/// and may be reclaimed.
struct SubscriptionLease {
    bus: Arc<BusInner>,
    link: Arc<Link>,
    ids: Mutex<Vec<SubscriptionId>>,
    doorbell: u32,
}

impl SubscriptionLease {
    /// Claims a doorbell from the broker of `link`, to park on; `what` names the subscriber in
    /// errors.
    fn claim(
        bus: Arc<BusInner>,
        link: Arc<Link>,
        what: &str,
    ) -> Result<(Arc<SubscriptionLease>, Arc<Doorbell>), AttachError> {
        let (claimed, _) = bus
            .conn
            .call_on(&link, ClaimDoorbell)
            .map_err(|e| AttachError::call(what, e))?;
        let lease = Arc::new(SubscriptionLease {
            bus,
            link,
            ids: Mutex::new(Vec::new()),
            doorbell: claimed.index,
        });
        let doorbell = lease.link.doorbells.bell(claimed.index).ok_or_else(|| {
            let detail = format!(
                "the broker gave doorbell {} of a smaller table",
                claimed.index
            );
            AttachError::shm(what, detail)
        })?;
        Ok((lease, Arc::new(doorbell)))
    }

    /// Subscription `id` is part of this lease, and `queue` gets its attachments.
    fn adopt(&self, id: SubscriptionId, queue: &Arc<AttachmentQueue>) {
        self.bus
            .conn
            .register_subscription(&self.link, id, Arc::clone(queue));
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
    }

    /// Stops routing the lease's attachments (those still coming are discarded at once, their
    /// descriptors closed; the broker frees their slots when the subscriptions end).
    fn unroute(&self) {
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        for &id in ids.iter() {
            self.bus.conn.unregister_subscription(&self.link, id);
        }
    }
}

impl Drop for SubscriptionLease {
    fn drop(&mut self) {
        let (conn, link) = (&self.bus.conn, &self.link);
        let ids = self.ids.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some((&last, rest)) = ids.split_last() {
            for &subscription in rest {
                conn.notify_on(link, Unsubscribe { subscription });
            }
            // The last one is waited for (the broker answers a connection's requests in order,
            // so all of them are then ended): once a server's handle is gone, another client may
            // serve its topic at once. A broker that is gone has ended them anyway.
            let _ = conn.call_on(link, Unsubscribe { subscription: last });
        }
        let index = self.doorbell;
        conn.notify_on(link, ReleaseDoorbell { index });
    }
}

/// One of a subscriber's subscriptions, as it is made again on a new link: sends the request,
/// given the subscriber's doorbell there, and returns the id the reply names.
type Registration =
    Box<dyn Fn(&Connection, &Link, u32) -> Result<SubscriptionId, CallError> + Send + Sync>;

/// What a subscriber told to register again at a broker that is back
/// ([`RingSubscriber::relink_with`]) does besides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Relinking {
    /// Report the loss ([`RecvError::BrokerLost`]), and each pattern as a gap
    /// ([`RecvError::Lagged`] with [`RecvError::MISSED_UNKNOWN`]) once registered again.
    pub(crate) report: bool,
    /// Read the lost broker's rings until they are first found empty; otherwise they are dropped
    /// at once (a server cannot answer their requests: the inboxes were the lost broker's).
    pub(crate) drain: bool,
}

/// A subscriber of local rings.
pub(crate) struct RingSubscriber {
    /// Declared first: readers let go of their slots before the subscription may end.
    set: ReaderSet<RingLabel>,
    /// After a reconnection, the readers of the lost broker's rings, read until they are first
    /// found empty (their publishers move to the new broker's rings).
    draining: Option<ReaderSet<RingLabel>>,
    lease: Arc<SubscriptionLease>,
    queue: Arc<AttachmentQueue>,
    /// The doorbell the subscriber parks on now, for [`Waker`]s.
    parks_on: Arc<Mutex<Arc<Doorbell>>>,
    /// What it does besides registering again, once told to (see
    /// [`RingSubscriber::relink_with`]).
    relinking: Relinking,
    /// How to make each of its subscriptions again, at a broker that is back.
    registrations: Vec<Registration>,
    /// A broker is back: register again before the next poll.
    relink_due: bool,
    /// Events to report before the next message: matching rings it cannot read, the broker's
    /// loss, gaps across it.
    events: VecDeque<RecvError>,
    options: ReaderOptions,
    history: u32,
    wait: WaitStrategy,
    patterns: Vec<Topic>,
    /// Rings the broker retired: their readers are dropped once nothing is left to read.
    retired: Vec<RingId>,
}

impl Drop for RingSubscriber {
    fn drop(&mut self) {
        self.lease.unroute();
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("patterns", &self.patterns().collect::<Vec<_>>())
            .field("topics", &self.topics().collect::<Vec<_>>())
            .finish()
    }
}

impl Subscriber {
    /// A subscriber of rings attached already (a gateway's, of state rings).
    pub(crate) fn from_rings(rings: RingSubscriber) -> Subscriber {
        Subscriber {
            inner: Flavor::Rings(rings),
        }
    }

    /// Also receives the topics matching `pattern`, from now on.
    pub fn add_pattern(&mut self, pattern: &str) -> Result<(), AttachError> {
        match &mut self.inner {
            Flavor::Rings(s) => s.add_pattern(pattern),
            Flavor::Remote(s) => s.add_pattern(Topic::new(pattern)?),
        }
    }

    /// How receiving waits from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match &mut self.inner {
            Flavor::Rings(s) => s.wait = wait,
            Flavor::Remote(s) => s.wait = wait,
        }
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        let patterns = match &self.inner {
            Flavor::Rings(s) => &s.patterns,
            Flavor::Remote(s) => &s.patterns,
        };
        patterns.iter().map(Topic::as_str)
    }

    /// The topics of the rings this subscriber reads now (on a remote bus, none: the gateway
    /// reads them).
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        let readers = match &self.inner {
            Flavor::Rings(s) => s.set.readers(),
            Flavor::Remote(_) => &[],
        };
        readers.iter().map(|r| r.label().topic.as_str())
    }

    /// The next message, waiting as long as it takes.
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_>, RecvError> {
        match self.receive(Patience::Until(Deadline::Never)) {
            Ok(sample) => Ok(sample),
            Err(Wait::Failed(e)) => Err(e),
            Err(Wait::Empty | Wait::Timeout | Wait::Stopped) => {
                unreachable!("a wait without a deadline ends only with a message or an error")
            }
        }
    }

    /// The next message if one is there; never waits.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Sample<'_>, TryRecvError> {
        self.receive(Patience::Now).map_err(|e| match e {
            Wait::Failed(e) => TryRecvError::Failed(e),
            Wait::Empty | Wait::Timeout | Wait::Stopped => TryRecvError::Empty,
        })
    }

    /// The next message, waiting up to `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmbus::RecvTimeoutError;
    ///
    /// let bus = shmbus::Bus::embedded()?;
    /// let mut sub = bus.subscribe("quiet")?;
    /// let outcome = sub.recv_timeout(Duration::from_millis(10));
    /// assert_eq!(outcome.unwrap_err(), RecvTimeoutError::Timeout);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Sample<'_>, RecvTimeoutError> {
        self.receive_until(Deadline::After(timeout))
    }

    /// The next message, waiting until `deadline`.
    #[inline]
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Sample<'_>, RecvTimeoutError> {
        self.receive_until(Deadline::At(deadline))
    }

    #[inline]
    fn receive_until(&mut self, deadline: Deadline) -> Result<Sample<'_>, RecvTimeoutError> {
        self.receive(Patience::Until(deadline))
            .map_err(|e| match e {
                Wait::Failed(e) => RecvTimeoutError::Failed(e),
                Wait::Empty | Wait::Timeout | Wait::Stopped => RecvTimeoutError::Timeout,
            })
    }

    #[inline]
    fn receive(&mut self, patience: Patience) -> Result<Sample<'_>, Wait> {
        self.receive_or_stop(patience, || false)
    }

    /// The next message, or [`Wait::Stopped`] once `stop` says so (see [`RingSubscriber::next`]).
    #[inline]
    pub(crate) fn receive_or_stop(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
    ) -> Result<Sample<'_>, Wait> {
        match &mut self.inner {
            Flavor::Rings(s) => s.next(patience, stop),
            Flavor::Remote(s) => s.next(patience, stop).map(Sample::remote),
        }
    }

    /// What wakes this subscriber's waits (see [`Subscriber::receive_or_stop`]).
    pub(crate) fn waker(&self) -> Waker {
        match &self.inner {
            Flavor::Rings(s) => s.waker(),
            Flavor::Remote(s) => Waker::Inbox(Arc::clone(&s.inbox)),
        }
    }
}

/// Why a wait for a message ended without one.
pub(crate) enum Wait {
    /// Nothing there, and no waiting asked for.
    Empty,
    /// The deadline passed.
    Timeout,
    /// The caller's stop condition held.
    Stopped,
    /// Receiving failed.
    Failed(RecvError),
}

/// Wakes a subscriber's wait, so it looks at its stop condition: see [`RingSubscriber::next`].
pub(crate) enum Waker {
    /// The doorbell a subscriber of rings parks on (replaced when it moves to a new broker).
    Doorbell(Arc<Mutex<Arc<Doorbell>>>),
    /// A remote subscriber's inbox.
    Inbox(Arc<Inbox>),
}

impl Waker {
    /// Rings the doorbell the subscriber parks on, or wakes its inbox.
    pub(crate) fn wake(&self) {
        match self {
            Waker::Doorbell(parks_on) => {
                let bell = Arc::clone(&parks_on.lock().unwrap_or_else(PoisonError::into_inner));
                bell.table().ring(bell.index());
            }
            Waker::Inbox(inbox) => inbox.wake(),
        }
    }
}

/// Where [`RingSubscriber::wait_for_frame`] found a message.
#[derive(Clone, Copy)]
enum Found {
    /// In the reader of this index in the set.
    Current(usize),
    /// In the reader of this index among those of the lost broker's rings.
    Draining(usize),
}

impl RingSubscriber {
    /// A subscriber with no subscription yet, parking on a doorbell it claims from the broker;
    /// `what` names it in errors.
    pub(crate) fn open(
        bus: Arc<BusInner>,
        options: ReaderOptions,
        history: u32,
        wait: WaitStrategy,
        what: &str,
    ) -> Result<RingSubscriber, AttachError> {
        let link = bus.conn.link();
        let (lease, doorbell) = SubscriptionLease::claim(bus, link, what)?;
        Ok(RingSubscriber {
            set: ReaderSet::new(Arc::clone(&doorbell)),
            draining: None,
            lease,
            queue: Arc::new(AttachmentQueue::new(Arc::clone(&doorbell))),
            parks_on: Arc::new(Mutex::new(doorbell)),
            relinking: Relinking::default(),
            registrations: Vec::new(),
            relink_due: false,
            events: VecDeque::new(),
            options,
            history,
            wait,
            patterns: Vec::new(),
            retired: Vec::new(),
        })
    }

    /// From now on, register again when a broker is back at the bus's address, and do what
    /// `relinking` says besides. (Without this, the subscriptions end with the broker.)
    pub(crate) fn relink_with(&mut self, relinking: Relinking) {
        self.relinking = relinking;
        self.lease.bus.conn.listen(&self.queue);
    }

    fn add_pattern(&mut self, pattern: &str) -> Result<(), AttachError> {
        let pattern = Topic::new(pattern)?;
        let (mode, history) = (self.options.reader_mode(), self.history);
        let name = pattern.as_str().to_string();
        let subscribe = move |doorbell| Subscribe {
            pattern: name.clone(),
            mode,
            history,
            doorbell,
        };
        self.attach_with(subscribe, |reply| reply.subscription)
            .map_err(|e| AttachError::call(pattern.as_str(), e))?;
        self.patterns.push(pattern);
        Ok(())
    }

    /// Makes a subscription with `request` (given this subscriber's doorbell), whose reply names
    /// it by `id`, and adopts the rings attached for it. Both are kept, to make the subscription
    /// again at a broker that is back (see [`RingSubscriber::relink_with`]).
    pub(crate) fn attach_with<C: Call + 'static>(
        &mut self,
        request: impl Fn(u32) -> C + Send + Sync + 'static,
        id: impl Fn(&C::Reply) -> SubscriptionId + Send + Sync + 'static,
    ) -> Result<C::Reply, CallError> {
        let lease = &self.lease;
        let (reply, _) =
            (lease.bus.conn).call_on(&lease.link, request(self.set.doorbell().index()))?;
        lease.adopt(id(&reply), &self.queue);
        self.registrations
            .push(Box::new(move |conn, link, doorbell| {
                let (reply, _) = conn.call_on(link, request(doorbell))?;
                Ok(id(&reply))
            }));
        self.adopt_pending();
        Ok(reply)
    }

    /// Makes the subscriptions again with the broker that is back, then reads or drops the lost
    /// broker's rings and reports the gap as [`RingSubscriber::relinking`] says. If that fails,
    /// the subscriber goes on as it was, and tries again at the next reconnection.
    #[cold]
    #[inline(never)]
    fn relink(&mut self) {
        let conn = &self.lease.bus.conn;
        let link = conn.link();
        if link.generation == self.lease.link.generation || !conn.is_alive() {
            return;
        }
        let what = self.patterns.first().map_or("(none yet)", Topic::as_str);
        let registered = SubscriptionLease::claim(Arc::clone(&self.lease.bus), link, what)
            .and_then(|(lease, doorbell)| {
                let queue = Arc::new(AttachmentQueue::new(Arc::clone(&doorbell)));
                for redo in &self.registrations {
                    match redo(&lease.bus.conn, &lease.link, doorbell.index()) {
                        Ok(id) => lease.adopt(id, &queue),
                        Err(e) => {
                            lease.unroute();
                            return Err(AttachError::call(what, e));
                        }
                    }
                }
                Ok((lease, doorbell, queue))
            });
        let (lease, doorbell, queue) = match registered {
            Ok(new) => new,
            Err(e) => {
                let detail = format!("cannot subscribe again after reconnecting: {e}");
                warn!("{detail}");
                if self.relinking.report {
                    let topic = what.to_string();
                    self.events
                        .push_back(RecvError::Unavailable { topic, detail });
                }
                return;
            }
        };
        self.lease.unroute();
        self.lease = lease;
        self.queue = queue;
        self.lease.bus.conn.listen(&self.queue);
        *self.parks_on.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&doorbell);
        let old = std::mem::replace(&mut self.set, ReaderSet::new(doorbell));
        self.draining = (self.relinking.drain && !old.is_empty()).then_some(old);
        // Ring ids of the lost broker mean nothing at the new one.
        self.retired.clear();
        // The new broker's rings may already hold messages of publishers that registered
        // again first: read them all.
        let options = self.options;
        self.options = options.history(u64::MAX);
        self.adopt_pending();
        self.options = options;
        if self.relinking.report {
            for pattern in &self.patterns {
                self.events.push_back(RecvError::Lagged {
                    topic: pattern.clone(),
                    missed: RecvError::MISSED_UNKNOWN,
                });
            }
        }
    }

    /// The link its subscriptions are registered on.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.lease.link
    }

    /// Whether its subscriptions were made with a broker that is gone.
    pub(crate) fn is_stale(&self) -> bool {
        self.lease.bus.conn.is_stale(&self.lease.link)
    }

    /// Whether owned samples of this subscriber are still held somewhere.
    pub(crate) fn holds_samples(&mut self) -> bool {
        self.set.holds_lent()
    }

    /// [`RingSubscriber::is_stale`], as a function that holds no borrow of the subscriber.
    pub(crate) fn staleness(&self) -> impl Fn() -> bool + use<> {
        let lease = Arc::clone(&self.lease);
        move || lease.bus.conn.is_stale(&lease.link)
    }

    /// How to wait for messages.
    pub(crate) fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// What wakes this subscriber's wait (to look at a stop condition).
    pub(crate) fn waker(&self) -> Waker {
        Waker::Doorbell(Arc::clone(&self.parks_on))
    }

    /// The next message, waiting with `patience`, or [`Wait::Stopped`] once nothing is there and
    /// `stop` says so (it is asked whenever the rings are found empty, and the wait wakes for it
    /// at least every 100 ms, and whenever the doorbell rings).
    #[inline]
    pub(crate) fn next(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
    ) -> Result<Sample<'_>, Wait> {
        self.next_noting_link(patience, stop, None)
            .map(|(sample, _)| sample)
    }

    /// [`RingSubscriber::next`], also returning the link the message's ring came from if it is
    /// not `known` (the subscriber registered again since).
    #[inline]
    pub(crate) fn next_noting_link(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
        known: Option<&Link>,
    ) -> Result<(Sample<'_>, Option<Arc<Link>>), Wait> {
        let found = self.wait_for_frame(patience, stop)?;
        let frame = match found {
            Found::Current(index) => self.set.frame(index),
            Found::Draining(index) => self.draining.as_mut().and_then(|d| d.frame(index)),
        };
        let frame = frame.expect("the poll found a frame there");
        let new_link = known.and_then(|known| {
            let link = &frame.label().subscription.link;
            (known.generation != link.generation).then(|| Arc::clone(link))
        });
        Ok((Sample::ring(frame), new_link))
    }

    /// Polls every reader, waiting with the subscriber's strategy as `patience` allows, until
    /// one holds a message; returns where.
    #[inline]
    fn wait_for_frame(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
    ) -> Result<Found, Wait> {
        let mut waiter = match patience {
            Patience::Now => None,
            Patience::Until(deadline) => Some(Waiter::new(self.wait, deadline)),
        };
        loop {
            if self.queue.has_pending() {
                self.adopt_pending();
                if self.relink_due {
                    self.relink_due = false;
                    self.relink();
                }
            }
            if let Some(event) = self.events.pop_front() {
                return Err(Wait::Failed(event));
            }
            match self.set.poll() {
                Ok(Some(index)) => return Ok(Found::Current(index)),
                Ok(None) if !self.retired.is_empty() => self.drop_retired(),
                Ok(None) => {}
                Err(e) => return Err(Wait::Failed(read_failed(&self.set, e))),
            }
            if self.draining.is_some() {
                if let Some(found) = self.poll_draining()? {
                    return Ok(found);
                }
            }
            if stop() {
                return Err(Wait::Stopped);
            }
            let Some(waiter) = waiter.as_mut() else {
                return Err(Wait::Empty);
            };
            match waiter.idle() {
                Idle::Retry => {}
                Idle::Park(until) => {
                    let queue = &self.queue;
                    self.set.park(until, &|| queue.has_pending() || stop());
                }
                Idle::TimedOut => return Err(Wait::Timeout),
            }
        }
    }

    /// Polls the lost broker's rings, after a reconnection; drops them once they are found
    /// empty (publishers that had not moved yet and publish later are the gap's loss).
    #[cold]
    #[inline(never)]
    fn poll_draining(&mut self) -> Result<Option<Found>, Wait> {
        let Some(draining) = &mut self.draining else {
            return Ok(None);
        };
        match draining.poll() {
            Ok(Some(index)) => Ok(Some(Found::Draining(index))),
            Ok(None) => {
                self.draining = None;
                Ok(None)
            }
            Err(e) => Err(Wait::Failed(read_failed(draining, e))),
        }
    }

    /// Drops the readers of retired rings: every reader was just found with nothing to read,
    /// and nothing new comes to a retired ring.
    #[cold]
    #[inline(never)]
    fn drop_retired(&mut self) {
        for ring in std::mem::take(&mut self.retired) {
            let index = self
                .set
                .readers()
                .iter()
                .position(|r| r.ring().id() == ring.get());
            if let Some(index) = index {
                self.set.remove(index);
            }
        }
    }

    /// Adopts the readers the broker attached since the last call.
    #[cold]
    #[inline(never)]
    fn adopt_pending(&mut self) {
        for item in self.queue.take() {
            let (a, ring) = match item {
                Attachment::Ring(a, ring) => (a, ring),
                Attachment::BrokerLost => {
                    if self.relinking.report {
                        self.events.push_back(RecvError::BrokerLost);
                    }
                    continue;
                }
                Attachment::Relinked => {
                    self.relink_due = true;
                    continue;
                }
                Attachment::Unavailable { topic, reason } => {
                    let detail = reason;
                    self.events
                        .push_back(RecvError::Unavailable { topic, detail });
                    continue;
                }
                Attachment::Retired { ring } => {
                    self.retired.push(ring);
                    continue;
                }
            };
            let Some(owner) = Owner::new(a.owner) else {
                continue;
            };
            let existing = self
                .set
                .readers()
                .iter()
                .find(|r| r.ring().id() == a.ring.id.get());
            if let Some(reader) = existing {
                // Another pattern already reads this ring: free the extra slot (fds drop).
                reader.ring().reclaim_reader(a.slot, owner);
                continue;
            }
            match self.adopt(&a, owner, ring) {
                Ok(reader) => self.set.insert(reader),
                Err(e) => {
                    warn!(topic = a.topic, "cannot read a matching ring: {e}");
                    let (topic, detail) = (a.topic, e);
                    self.events
                        .push_back(RecvError::Unavailable { topic, detail });
                }
            }
        }
        // A ring another of our patterns reads is not missed.
        let set = &self.set;
        self.events.retain(|e| match e {
            RecvError::Unavailable { topic, .. } => !set
                .readers()
                .iter()
                .any(|r| r.label().topic.as_str() == topic),
            _ => true,
        });
    }

    fn adopt(
        &mut self,
        a: &RingAttachment,
        owner: Owner,
        ring: Ring,
    ) -> Result<Reader<RingLabel>, String> {
        let topic = Topic::new(&a.topic).map_err(|e| format!("the broker sent {e}"))?;
        // A subscription its session took up starts where the session's reader stood.
        let options = match a.resume {
            Resume::Join => self.options,
            Resume::At { position, sequence } => self.options.resume_at(position, sequence),
            Resume::Oldest => self.options.history(u64::MAX),
            Resume::Gap => {
                self.events.push_back(RecvError::Lagged {
                    topic: topic.clone(),
                    missed: RecvError::MISSED_UNKNOWN,
                });
                self.options
            }
        };
        let reserved = ReservedReader {
            slot: a.slot,
            position: a.position,
            sequence: a.sequence,
        };
        let label = RingLabel {
            topic,
            subscription: Arc::clone(&self.lease),
        };
        ring.adopt_reader(reserved, options, self.set.doorbell(), owner, label)
            .map_err(|e| e.to_string())
    }
}

/// The error for a reader of `set` failing to read.
#[cold]
#[inline(never)]
fn read_failed(set: &ReaderSet<RingLabel>, e: MemberError) -> RecvError {
    let topic = set.readers()[e.index].label().topic.clone();
    match e.error {
        ReadError::Lagged { missed } => RecvError::Lagged { topic, missed },
        ReadError::HeldLimit { max } => RecvError::HeldLimit { topic, max },
        // The reader skipped past the corrupt frame and goes on.
        other => RecvError::Corrupt {
            topic,
            detail: other.to_string(),
        },
    }
}
