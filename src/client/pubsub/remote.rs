//! Publishers and subscribers of a bus reached over TCP or TLS (see `client::remote`).
//!
//! A remote publisher sends each message as one frame (several go out in one write while the
//! connection is busy: see `transport::outbox`); the gateway writes it into the topic's ring. A
//! remote subscriber's messages arrive in its inbox, filled by the bus's thread, which the
//! subscriber empties in one go whenever it has handed out what it took before (so it holds at
//! most twice the inbox's bound). The inbox is bounded: a lossy subscriber that falls behind
//! loses the oldest messages (reported as [`RecvError::Lagged`] with the count), a tethered one
//! holds the connection back — and with it the gateway's reader, so local publishers, until the
//! broker evicts that reader — for at most [`STALL_LIMIT`], after which it loses messages like a
//! lossy one until it reads again. A state watcher's inbox loses records like a lossy one: the
//! watcher catches up from a snapshot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use shmbus_shm::WaitStrategy;

use super::error::RecvError;
use super::publisher::{Patience, Refusal};
use super::subscriber::Wait;
use crate::client::remote::RemoteInner;
use crate::protocol::remote::{Frame, Mode, Subscribe};
use crate::sync::lock;
use crate::topic::Topic;
use crate::transport::wire::SendError;

/// Most messages an inbox holds.
const INBOX_MESSAGES: usize = 4096;

/// Most payload bytes an inbox holds (one message more than that is always let in).
const INBOX_BYTES: usize = 8 << 20;

/// How long a full tethered inbox holds the connection back before it drops its oldest message.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(5);

/// One message received over the network: its payload 16-byte aligned, as typed samples need.
pub(crate) struct RemoteMessage {
    pub(crate) topic: Topic,
    pub(crate) payload: AlignedVec<16>,
    pub(crate) publisher: u32,
    pub(crate) sequence: u64,
}

/// `payload` copied behind `room` zero bytes (where a request or response carries its exchange
/// header, so that the payload sits at the offset, and alignment, it has in a ring).
pub(crate) fn with_room(room: usize, payload: &[u8]) -> AlignedVec<16> {
    let mut aligned = AlignedVec::with_capacity(room + payload.len());
    aligned.resize(room, 0);
    aligned.extend_from_slice(payload);
    aligned
}

/// What a subscriber (or server) took out of its inbox: the messages it took in one go, handed
/// out one at a time (one lock per batch, not per message), and the one handed out last.
#[derive(Default)]
pub(crate) struct Taken {
    batch: VecDeque<Arc<RemoteMessage>>,
    current: Option<Arc<RemoteMessage>>,
}

/// A remote subscription's messages and events, between the bus's thread and the subscriber.
pub(crate) struct Inbox {
    /// The subscription's id on the connection.
    pub(crate) id: u32,
    /// The patterns subscribed to, to subscribe again after a reconnection.
    patterns: Mutex<Vec<String>>,
    state: Mutex<InboxState>,
    /// Signalled when something arrives (or a waker wakes the subscriber).
    arrived: Condvar,
    /// Signalled when the subscriber took a message out.
    room: Condvar,
    /// Bumped whenever something arrives (or a waker wakes), for a subscriber polling without
    /// the lock before it sleeps on `arrived`.
    arrivals: AtomicU64,
    /// Tethered: a full inbox holds the connection back. Lossy, and a state watcher's: it drops
    /// its oldest message (a watcher catches up from a snapshot, rather than holding back
    /// everything else the connection carries).
    mode: Mode,
    /// Asked for at every (re)subscription, with the patterns.
    history: u32,
}

#[derive(Default)]
struct InboxState {
    messages: VecDeque<Arc<RemoteMessage>>,
    bytes: usize,
    events: VecDeque<RecvError>,
    /// Messages dropped for want of room, by topic of the first, not reported yet.
    overrun: Option<(Topic, u64)>,
    /// The topic of the last message, reused while it repeats.
    last_topic: Option<Topic>,
    /// A waker asked the subscriber to look at its stop condition.
    woken: bool,
    /// The subscriber sleeps on `arrived` (waking it is a system call, made only then).
    sleeping: bool,
    /// The bus's thread waits on `room` (a full tethered inbox).
    stalled: bool,
    /// A stall ran out: until the subscriber takes a message, a full inbox drops its oldest
    /// at once, so that one subscriber that stopped reading holds the connection back once, not
    /// for every message.
    gave_up: bool,
}

impl Inbox {
    /// An inbox for subscription `id`.
    pub(crate) fn new(id: u32, patterns: Vec<String>, mode: Mode, history: u32) -> Arc<Inbox> {
        Arc::new(Inbox {
            id,
            patterns: Mutex::new(patterns),
            state: Mutex::default(),
            arrived: Condvar::new(),
            room: Condvar::new(),
            arrivals: AtomicU64::new(0),
            mode,
            history,
        })
    }

    /// The subscription request, as sent at first and after each reconnection.
    pub(crate) fn request(&self) -> Subscribe {
        Subscribe {
            id: self.id,
            patterns: self.patterns(),
            mode: self.mode,
            history: self.history,
        }
    }

    /// The patterns subscribed to.
    pub(crate) fn patterns(&self) -> Vec<String> {
        lock(&self.patterns).clone()
    }

    /// Puts a message in (the bus's thread), making room as the mode says; `room` zero bytes go
    /// in front of its payload (where a request or response carries its exchange header).
    pub(crate) fn deliver(
        &self,
        topic: &str,
        room: usize,
        payload: &[u8],
        publisher: u32,
        sequence: u64,
    ) {
        let mut state = lock(&self.state);
        let topic = match &state.last_topic {
            Some(last) if last.as_str() == topic => last.clone(),
            _ => match Topic::new(topic) {
                Ok(t) => {
                    state.last_topic = Some(t.clone());
                    t
                }
                Err(e) => {
                    state.events.push_back(RecvError::Unavailable {
                        topic: topic.to_string(),
                        detail: format!("the gateway sent an invalid topic: {e}"),
                    });
                    self.signal(state);
                    return;
                }
            },
        };
        let tethered = self.mode == Mode::Tethered;
        let mut stall_until = None;
        while is_full(&state) {
            if tethered && !state.gave_up {
                let until = *stall_until.get_or_insert_with(|| Instant::now() + STALL_LIMIT);
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    state.gave_up = true;
                } else {
                    state.stalled = true;
                    state = self
                        .room
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    state.stalled = false;
                    continue;
                }
            }
            let Some(oldest) = state.messages.pop_front() else {
                break;
            };
            state.bytes -= oldest.payload.len();
            match &mut state.overrun {
                Some((_, missed)) => *missed += 1,
                None => state.overrun = Some((oldest.topic.clone(), 1)),
            }
        }
        let aligned = with_room(room, payload);
        state.bytes += aligned.len();
        state.messages.push_back(Arc::new(RemoteMessage {
            topic,
            payload: aligned,
            publisher,
            sequence,
        }));
        self.signal(state);
    }

    /// Reports `event` to the subscriber before its next message.
    pub(crate) fn report(&self, event: RecvError) {
        let mut state = lock(&self.state);
        state.events.push_back(event);
        self.signal(state);
    }

    /// Tells the subscriber that something arrived (its `state` lock held, then released):
    /// polling, it sees `arrivals` move; asleep, it is woken.
    fn signal(&self, state: MutexGuard<'_, InboxState>) {
        // Release pairs with the Acquire load of the subscriber's polling in `take`.
        self.arrivals.fetch_add(1, Ordering::Release);
        // Read under the lock the subscriber sets it under before it sleeps, so a subscriber
        // about to sleep either sees what arrived or is woken.
        let sleeping = state.sleeping;
        drop(state);
        if sleeping {
            self.arrived.notify_one();
        }
    }

    /// Reports each pattern as a gap (after a reconnection). A state watcher's inbox also
    /// drops the records it holds: the snapshot that fills the gap supersedes them.
    pub(crate) fn report_gap(&self) {
        if self.mode == Mode::State {
            let mut state = lock(&self.state);
            state.messages.clear();
            state.bytes = 0;
            state.overrun = None;
        }
        for pattern in self.patterns() {
            if let Ok(topic) = Topic::new(&pattern) {
                self.report(RecvError::Lagged {
                    topic,
                    missed: RecvError::MISSED_UNKNOWN,
                });
            }
        }
    }

    /// Wakes the subscriber's wait, so it looks at its stop condition.
    pub(crate) fn wake(&self) {
        lock(&self.state).woken = true;
        // Release pairs with the Acquire load of the subscriber's polling in `take`.
        self.arrivals.fetch_add(1, Ordering::Release);
        self.arrived.notify_all();
    }

    /// The next message (of those `taken` holds, else of a batch taken now) or event, waiting
    /// as `patience` allows: polling first as `wait` says, then asleep.
    pub(crate) fn next<'t>(
        &self,
        taken: &'t mut Taken,
        patience: Patience,
        wait: WaitStrategy,
        stop: impl Fn() -> bool,
    ) -> Result<&'t Arc<RemoteMessage>, Wait> {
        if taken.batch.is_empty() {
            self.take(&mut taken.batch, patience, wait, stop)?;
        }
        let message = taken.batch.pop_front().expect("a batch taken is not empty");
        Ok(taken.current.insert(message))
    }

    /// Moves every message there into `batch` (empty), or returns the next event, waiting as
    /// [`Inbox::next`] says.
    fn take(
        &self,
        batch: &mut VecDeque<Arc<RemoteMessage>>,
        patience: Patience,
        wait: WaitStrategy,
        stop: impl Fn() -> bool,
    ) -> Result<(), Wait> {
        // `None`: no waiting at all; `Some(None)`: as long as it takes.
        let deadline = match patience {
            Patience::Now => None,
            Patience::Until(_) => Some(patience.until()),
        };
        let mut polled = false;
        let mut state = lock(&self.state);
        loop {
            if let Some((topic, missed)) = state.overrun.take() {
                return Err(Wait::Failed(RecvError::Lagged { topic, missed }));
            }
            if let Some(event) = state.events.pop_front() {
                return Err(Wait::Failed(event));
            }
            if !state.messages.is_empty() {
                std::mem::swap(&mut state.messages, batch);
                state.bytes = 0;
                state.gave_up = false;
                if state.stalled {
                    self.room.notify_one();
                }
                return Ok(());
            }
            state.woken = false;
            if stop() {
                return Err(Wait::Stopped);
            }
            if !polled && deadline.is_some() {
                polled = true;
                let seen = self.arrivals.load(Ordering::Relaxed);
                drop(state);
                let until = deadline.flatten();
                self.poll(seen, wait, until, &stop);
                state = lock(&self.state);
                continue;
            }
            let left = match deadline {
                None => return Err(Wait::Empty),
                Some(None) => None,
                Some(Some(at)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Wait::Timeout);
                    }
                    Some(left)
                }
            };
            state.sleeping = true;
            state = match left {
                None => self
                    .arrived
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.arrived
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.sleeping = false;
        }
    }
}

impl Inbox {
    /// Polls, without the lock, until something arrives after `seen`, `stop` holds, `until`
    /// passes, or `wait` says to stop polling.
    fn poll(&self, seen: u64, wait: WaitStrategy, until: Option<Instant>, stop: impl Fn() -> bool) {
        let spin_until = match wait {
            WaitStrategy::Park => return,
            WaitStrategy::BusySpin => until,
            WaitStrategy::SpinThenPark { spin } => {
                let end = Instant::now() + spin;
                Some(until.map_or(end, |u| u.min(end)))
            }
        };
        let mut polls = 0u32;
        // Acquire pairs with the Release increments of `signal` and `wake`.
        while self.arrivals.load(Ordering::Acquire) == seen {
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                if spin_until.is_some_and(|end| Instant::now() >= end) || stop() {
                    return;
                }
                // Even a busy-spinning subscriber yields: its messages are delivered by the
                // bus's thread, which may share its CPU.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }
}

fn is_full(state: &InboxState) -> bool {
    state.messages.len() >= INBOX_MESSAGES || state.bytes >= INBOX_BYTES
}

/// A subscriber of a remote bus.
pub(crate) struct RemoteSubscriber {
    bus: Arc<RemoteInner>,
    pub(crate) inbox: Arc<Inbox>,
    /// Messages taken, and the one received last, which the sample borrows.
    taken: Taken,
    pub(crate) patterns: Vec<Topic>,
    /// How receiving waits.
    pub(crate) wait: WaitStrategy,
}

impl RemoteSubscriber {
    /// Subscribes to `patterns` (already checked) through `bus`, read as `mode` says.
    pub(crate) fn open(
        bus: Arc<RemoteInner>,
        patterns: Vec<Topic>,
        mode: Mode,
        history: u32,
        wait: WaitStrategy,
    ) -> Result<RemoteSubscriber, crate::AttachError> {
        let id = bus.bus.next_id();
        let names = patterns.iter().map(|p| p.as_str().to_string()).collect();
        let inbox = Inbox::new(id, names, mode, history);
        let first = patterns.first().map_or("(none yet)", Topic::as_str);
        bus.bus.subscribe(&inbox).map_err(|e| e.attach(first))?;
        Ok(RemoteSubscriber {
            bus,
            inbox,
            taken: Taken::default(),
            patterns,
            wait,
        })
    }

    /// The bus it receives through.
    pub(crate) fn bus(&self) -> &Arc<RemoteInner> {
        &self.bus
    }

    /// Also receives the topics matching `pattern`.
    pub(crate) fn add_pattern(&mut self, pattern: Topic) -> Result<(), crate::AttachError> {
        self.bus
            .bus
            .add_pattern(self.inbox.id, pattern.as_str())
            .map_err(|e| e.attach(pattern.as_str()))?;
        lock(&self.inbox.patterns).push(pattern.as_str().to_string());
        self.patterns.push(pattern);
        Ok(())
    }

    /// The next message, as [`RingSubscriber::next`](super::RingSubscriber) gives it.
    pub(crate) fn next(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
    ) -> Result<&Arc<RemoteMessage>, Wait> {
        self.inbox.next(&mut self.taken, patience, self.wait, stop)
    }
}

impl Drop for RemoteSubscriber {
    fn drop(&mut self) {
        self.bus.bus.unsubscribe(self.inbox.id);
    }
}

/// A publisher of a remote bus.
pub(crate) struct RemotePublisher {
    bus: Arc<RemoteInner>,
    id: u32,
    /// The message being written (aligned, as typed publishers serialize into it).
    buf: AlignedVec<16>,
    /// Messages sent: the next one's number is one more.
    sent: u64,
}

impl RemotePublisher {
    /// Advertises `topic` (already checked) through `bus`.
    pub(crate) fn open(
        bus: Arc<RemoteInner>,
        topic: &Topic,
    ) -> Result<RemotePublisher, crate::AttachError> {
        let id = bus.bus.next_id();
        bus.bus
            .advertise(id, topic.as_str())
            .map_err(|e| e.attach(topic.as_str()))?;
        Ok(RemotePublisher {
            bus,
            id,
            buf: AlignedVec::new(),
            sent: 0,
        })
    }

    /// The largest payload.
    pub(crate) fn max_payload(&self) -> usize {
        self.bus.bus.max_payload() as usize
    }

    /// Room for `len` bytes: a buffer of its own, sent at commit.
    pub(crate) fn loan(
        &mut self,
        len: usize,
        patience: Patience,
    ) -> Result<RemoteLoan<'_>, Refusal> {
        let max = self.max_payload();
        if len > max {
            return Err(Refusal::TooLarge { len, max });
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        Ok(RemoteLoan {
            publisher: self,
            patience,
        })
    }
}

impl Drop for RemotePublisher {
    fn drop(&mut self) {
        self.bus.bus.withdraw(self.id);
    }
}

/// Room for one message of a remote publisher.
pub(crate) struct RemoteLoan<'a> {
    publisher: &'a mut RemotePublisher,
    patience: Patience,
}

impl std::fmt::Debug for RemoteLoan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLoan")
            .field("len", &self.len())
            .finish()
    }
}

impl RemoteLoan<'_> {
    /// The buffer.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        self.publisher.buf.as_mut_slice()
    }

    /// Its length.
    pub(crate) fn len(&self) -> usize {
        self.publisher.buf.len()
    }

    /// The number the message will have (the publisher's own count).
    pub(crate) fn sequence(&self) -> u64 {
        self.publisher.sent + 1
    }

    /// Sends the first `len` bytes, waiting for the link and for room as the loan's patience
    /// allows; a link lost meanwhile is waited for again and the message sent on the new one.
    pub(crate) fn commit_prefix(self, len: usize) -> Result<u64, Refusal> {
        assert!(len <= self.len(), "commit of {len} bytes exceeds the loan");
        let p = self.publisher;
        let deadline = self.patience.until();
        let no_room = match self.patience {
            Patience::Now => Refusal::Full,
            Patience::Until(_) => Refusal::Timeout,
        };
        let frame = Frame::Publish {
            publisher: p.id,
            payload: &p.buf[..len],
        };
        loop {
            let Some(wire) = p.bus.bus.wire(deadline) else {
                return Err(no_room);
            };
            match wire.send_by(&frame, deadline) {
                Ok(()) => {
                    p.sent += 1;
                    return Ok(p.sent);
                }
                Err(SendError::Timeout) => return Err(no_room),
                // The bus's thread links again; the next `wire` waits for it.
                Err(SendError::Closed(_)) => {}
            }
        }
    }
}
