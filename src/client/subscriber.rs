//! Subscribing: one subscriber reads every ring its pattern matches, in place.

use std::ffi::CStr;
use std::sync::Arc;
use std::time::Duration;

use shmbus_shm::wait::{Idle, Waiter, park};
use shmbus_shm::{
    Doorbell, Owner, ReadError, Reader, ReaderMode as RingReaderMode, ReaderOptions,
    ReservedReader, Ring, WaitStrategy,
};
use tracing::warn;

use super::BusInner;
use super::connection::{Attachment, AttachmentQueue};
use super::error::{AttachError, RecvError};
use super::topic_name::TopicName;
use crate::protocol::RingAttachment;
use crate::protocol::{ReaderMode, Reply, Request};
use crate::topic::Topic;
use std::os::fd::OwnedFd;

/// How a subscriber reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberOptions {
    /// Never hold publishers back; when overrun, get [`RecvError::Lagged`] and go on from the
    /// oldest message still in the ring (messages are then copied out and checked, not read in
    /// place). Default: tethered, lossless.
    pub lossy: bool,
    /// Also deliver the last `history` messages of each ring, as far as it still holds them.
    pub history: u32,
    /// How `recv` waits (default: spin 50 µs, then park).
    pub wait: WaitStrategy,
}

/// Receives the messages of every topic matching its patterns — rings that exist now and rings
/// created later — from the moment the pattern was added.
///
/// Messages of one publisher arrive in order; messages of different rings interleave. A ring
/// matched by several of the subscriber's patterns is read once.
pub struct Subscriber {
    bus: Arc<BusInner>,
    /// (subscription id, pattern), one per pattern.
    subscriptions: Vec<(u32, Topic)>,
    options: SubscriberOptions,
    doorbell: Arc<Doorbell>,
    queue: Arc<AttachmentQueue>,
    readers: Vec<Reader>,
    /// The topic of `readers[i]`.
    topics: Vec<TopicName>,
    /// The ring of `readers[i]`.
    rings: Vec<Ring>,
    /// Where the next poll starts, so no ring starves the others.
    next: usize,
    /// Matching rings this subscriber cannot read, (topic, why), not yet reported by `recv`.
    unavailable: Vec<(String, String)>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("patterns", &self.patterns().collect::<Vec<_>>())
            .field("topics", &self.topics)
            .finish()
    }
}

impl Subscriber {
    pub(crate) fn attach(
        bus: Arc<BusInner>,
        patterns: &[&str],
        options: SubscriberOptions,
    ) -> Result<Subscriber, AttachError> {
        let first = patterns.first().copied().unwrap_or("");
        let doorbell = Arc::new(
            bus.doorbells
                .claim(bus.owner)
                .map_err(|e| AttachError::shm(first, e))?,
        );
        let queue = Arc::new(AttachmentQueue::new(doorbell.index()));
        let mut sub = Subscriber {
            bus,
            subscriptions: Vec::new(),
            options,
            doorbell,
            queue,
            readers: Vec::new(),
            topics: Vec::new(),
            rings: Vec::new(),
            next: 0,
            unavailable: Vec::new(),
        };
        for pattern in patterns {
            sub.add_pattern(pattern)?;
        }
        Ok(sub)
    }

    /// Also receives the topics matching `pattern`, from now on.
    pub fn add_pattern(&mut self, pattern: &str) -> Result<(), AttachError> {
        let pattern = Topic::new(pattern)?;
        let request = Request::Subscribe {
            pattern: pattern.as_str().to_string(),
            mode: if self.options.lossy {
                ReaderMode::Lossy
            } else {
                ReaderMode::Tethered
            },
            history: self.options.history,
            doorbell: self.doorbell.index(),
        };
        let (reply, _) = self
            .bus
            .conn
            .request(request)
            .map_err(|source| AttachError::Broker {
                topic: pattern.as_str().into(),
                source,
            })?;
        let id = match reply {
            Ok(Reply::Subscribed { subscription, .. }) => subscription,
            Ok(other) => {
                return Err(AttachError::shm(
                    pattern.as_str(),
                    format!("unexpected reply {other:?}"),
                ));
            }
            Err(e) => return Err(AttachError::refused(pattern.as_str(), e)),
        };
        self.bus
            .conn
            .register_subscription(id, Arc::clone(&self.queue));
        self.subscriptions.push((id, pattern));
        self.adopt_pending();
        Ok(())
    }

    /// How `recv` waits from now on.
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.options.wait = wait;
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(|(_, p)| p.as_str())
    }

    /// The topics of the rings this subscriber reads now.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(TopicName::as_str)
    }

    /// Adopts the readers the broker attached since the last call.
    #[cold]
    #[inline(never)]
    fn adopt_pending(&mut self) {
        let pending: Vec<Attachment> = self.queue.take();
        for item in pending {
            let (a, fds) = match item {
                Attachment::Ring(a, fds) => (a, fds),
                Attachment::Unavailable { topic, reason } => {
                    self.unavailable.push((topic, reason));
                    continue;
                }
            };
            let Some(owner) = Owner::new(a.owner) else {
                continue;
            };
            let Some(name) = TopicName::new(&a.topic) else {
                let why = "the topic holds a NUL byte".to_string();
                self.unavailable.push((a.topic, why));
                continue;
            };
            if let Some(i) = self.rings.iter().position(|r| r.id() == a.ring) {
                // Another pattern already reads this ring: free the extra slot (fds drop).
                self.rings[i].reclaim_reader(a.slot, owner);
                continue;
            }
            match self.adopt(&a, owner, fds) {
                Ok((ring, reader)) => {
                    self.readers.push(reader);
                    self.topics.push(name);
                    self.rings.push(ring);
                }
                Err(e) => {
                    warn!(topic = a.topic, "cannot read a matching ring: {e}");
                    self.unavailable.push((a.topic, e));
                }
            }
        }
        // A ring another of our patterns reads is not missed.
        let topics = &self.topics;
        self.unavailable
            .retain(|(topic, _)| !topics.iter().any(|t| t.as_str() == topic));
    }

    fn adopt(
        &self,
        a: &RingAttachment,
        owner: Owner,
        fds: Vec<OwnedFd>,
    ) -> Result<(Ring, Reader), String> {
        let [data, readers]: [_; 2] = fds
            .try_into()
            .map_err(|_| "the broker sent no ring descriptors".to_string())?;
        let ring = Ring::open(data, readers, &self.bus.doorbells).map_err(|e| e.to_string())?;
        let reserved = ReservedReader {
            slot: a.slot,
            position: a.position,
            sequence: a.sequence,
        };
        let mode = if self.options.lossy {
            RingReaderMode::Lossy
        } else {
            RingReaderMode::Tethered
        };
        let options = ReaderOptions {
            mode,
            history: u64::from(self.options.history),
        };
        let reader = ring
            .adopt_reader(reserved, options, &self.doorbell, owner)
            .map_err(|e| e.to_string())?;
        Ok((ring, reader))
    }

    /// Finds the next message without waiting; returns the index of the reader holding it.
    #[inline]
    fn poll(&mut self) -> Result<Option<usize>, RecvError> {
        if self.queue.has_pending() {
            self.adopt_pending();
        }
        if let Some((topic, detail)) = self.unavailable.pop() {
            return Err(RecvError::Unavailable { topic, detail });
        }
        let n = self.readers.len();
        // Round robin from `next`, so that one busy topic cannot starve the others.
        let mut idx = self.next;
        for _ in 0..n {
            if idx >= n {
                idx = 0;
            }
            match self.readers[idx].poll_ready() {
                Ok(true) => {
                    self.next = idx + 1;
                    return Ok(Some(idx));
                }
                Ok(false) => idx += 1,
                Err(e) => return Err(self.read_failed(idx, e)),
            }
        }
        Ok(None)
    }

    /// The error for reader `idx` failing to read.
    #[cold]
    #[inline(never)]
    fn read_failed(&mut self, idx: usize, e: ReadError) -> RecvError {
        if let ReadError::Lagged { missed } = e {
            self.next = idx;
            return RecvError::Lagged {
                topic: self.topics[idx].as_str().to_string(),
                missed,
            };
        }
        // A corrupt ring cannot be read past; stop reading it, keep the others.
        self.readers.remove(idx);
        self.rings.remove(idx);
        let topic = self.topics.remove(idx);
        RecvError::Corrupt {
            topic: topic.as_str().to_string(),
            detail: e.to_string(),
        }
    }

    /// The message `poll` found in reader `idx`.
    #[inline]
    fn sample(&mut self, idx: usize) -> Sample<'_> {
        let topic = &self.topics[idx];
        let inner = self.readers[idx]
            .take_ready()
            .expect("poll found a message in this reader");
        Sample { inner, topic }
    }

    /// The next message if one is there; never waits.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_>>, RecvError> {
        Ok(self.poll()?.map(|idx| self.sample(idx)))
    }

    /// The next message, waiting as long as it takes.
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_>, RecvError> {
        loop {
            if let Some(idx) = self.wait(None)? {
                return Ok(self.sample(idx));
            }
        }
    }

    /// The next message, waiting up to `timeout`; `Ok(None)` when it passed.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let bus = shmbus::Bus::embedded()?;
    /// let mut sub = bus.subscribe("quiet")?;
    /// assert!(sub.recv_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Sample<'_>>, RecvError> {
        Ok(self.wait(Some(timeout))?.map(|idx| self.sample(idx)))
    }

    /// Polls with the wait strategy until a reader holds a message or the timeout passes.
    #[inline]
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<usize>, RecvError> {
        let mut waiter = Waiter::new(self.options.wait, timeout);
        loop {
            if let Some(idx) = self.poll()? {
                return Ok(Some(idx));
            }
            match waiter.idle() {
                Idle::Retry => {}
                Idle::Park(until) => {
                    let queue = &self.queue;
                    let attached = || queue.has_pending();
                    park(&self.doorbell, &self.readers, until, &attached);
                }
                Idle::TimedOut => return Ok(None),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Readers free their slots first; the broker then frees any attached but never adopted.
        self.readers.clear();
        for &(id, _) in &self.subscriptions {
            self.bus.conn.unregister_subscription(id);
            self.bus
                .conn
                .notify(Request::Unsubscribe { subscription: id });
        }
    }
}

/// One message, read in place until dropped.
pub struct Sample<'a> {
    inner: shmbus_shm::Sample<'a>,
    topic: &'a TopicName,
}

impl std::fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("topic", &self.topic)
            .field("publisher", &self.publisher())
            .field("sequence", &self.sequence())
            .field("len", &self.len())
            .finish()
    }
}

impl Sample<'_> {
    /// The topic it was published on, exactly as the publisher wrote it.
    #[inline]
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// [`Sample::topic`] as a NUL-terminated C string, without a copy (for foreign-function
    /// interfaces).
    #[inline]
    pub fn topic_c_str(&self) -> &CStr {
        self.topic.as_c_str()
    }

    /// The payload (16-byte aligned, in shared memory for tethered subscribers).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.inner.payload()
    }

    /// Payload length.
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The publisher's bus-wide id.
    #[inline]
    pub fn publisher(&self) -> u32 {
        self.inner.publisher()
    }

    /// The message's sequence number in its ring (increasing in publication order).
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.inner.sequence()
    }
}
