//! One remote subscription at the gateway (or one peer link's share of the rings): a subscriber
//! of the rings and the thread that writes its messages to the connection, framed by a
//! [`Framing`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use shmbus_shm::wait::Deadline;
use tracing::debug;

use super::connection::refusal;
use crate::client::AttachError;
use crate::client::pubsub::{Patience, RecvError, Wait, Waker};
use crate::protocol::ErrorCode;
use crate::protocol::remote::{self, Frame, Refusal};
use crate::sync::lock;
use crate::transport::wire::{SendError, Wire};
use crate::{Sample, Subscriber, Topic};

/// Most bytes of messages the forwarder gathers into one write.
const BATCH: usize = 64 * 1024;

/// A forwarding thread, stopped when dropped — not joined, as it may be waiting for room in
/// the connection's output, which only the connection's end frees (see [`Forwarder::finish`]).
pub(super) struct Forwarder {
    orders: Arc<Orders>,
    waker: Waker,
    /// Detached on drop; it ends at its next look at `orders` or when the connection closes.
    thread: Option<JoinHandle<()>>,
}

/// What the connection asks of its forwarder.
#[derive(Default)]
struct Orders {
    /// End.
    stop: AtomicBool,
    /// Patterns to add (and answer for); `pending` says there are some.
    patterns: Mutex<Vec<String>>,
    pending: AtomicBool,
}

/// How a forwarder puts what its subscriber receives on the connection.
pub(super) trait Framing: Send + 'static {
    /// Appends the frame of one message to `batch`, or nothing to leave it out.
    fn message(&mut self, sample: &Sample<'_>, batch: &mut Vec<u8>);
    /// Appends what tells of `missed` messages of `topic` lost, if anything does.
    fn lagged(&mut self, topic: &Topic, missed: u64, batch: &mut Vec<u8>);
    /// Appends what tells of receiving failing.
    fn failed(&mut self, error: RecvError, batch: &mut Vec<u8>);
    /// Says how adding a pattern went, if anyone is waiting to know.
    fn pattern_added(
        &mut self,
        outcome: Result<(), AttachError>,
        wire: &Wire,
    ) -> Result<(), SendError>;
}

/// The framing of the remote client subscription with this id: messages, gaps and answers that
/// name it.
pub(super) struct Subscription(pub(super) u32);

impl Framing for Subscription {
    fn message(&mut self, sample: &Sample<'_>, batch: &mut Vec<u8>) {
        let frame = Frame::Message {
            subscription: self.0,
            publisher: sample.publisher().get(),
            sequence: sample.sequence(),
            topic: sample.topic(),
            payload: sample.payload(),
        };
        remote::encode(&frame, batch);
    }

    fn lagged(&mut self, topic: &Topic, missed: u64, batch: &mut Vec<u8>) {
        let frame = Frame::Lagged {
            subscription: self.0,
            topic: topic.as_str().to_string(),
            missed,
        };
        remote::encode(&frame, batch);
    }

    fn failed(&mut self, error: RecvError, batch: &mut Vec<u8>) {
        let refusal = Refusal::new(ErrorCode::Internal, error.to_string());
        remote::encode(
            &Frame::Failed {
                id: self.0,
                refusal,
            },
            batch,
        );
    }

    fn pattern_added(
        &mut self,
        outcome: Result<(), AttachError>,
        wire: &Wire,
    ) -> Result<(), SendError> {
        let id = self.0;
        let frame = match outcome {
            Ok(()) => Frame::Done { id },
            Err(e) => Frame::Failed {
                id,
                refusal: refusal(e),
            },
        };
        wire.send(&frame)
    }
}

impl Forwarder {
    /// Forwards what `subscriber` receives on `wire`, framed by `framing`.
    pub(super) fn start(
        subscriber: Subscriber,
        framing: impl Framing,
        wire: Arc<Wire>,
    ) -> std::io::Result<Forwarder> {
        let orders = Arc::new(Orders::default());
        let waker = subscriber.waker();
        let thread = {
            let orders = Arc::clone(&orders);
            std::thread::Builder::new()
                .name("shmbus-gw-fwd".into())
                .spawn(move || forward(subscriber, framing, &wire, &orders))?
        };
        Ok(Forwarder {
            orders,
            waker,
            thread: Some(thread),
        })
    }

    /// Adds `pattern` to the subscription; the forwarder tells its framing how that went.
    pub(super) fn add_pattern(&self, pattern: String) {
        lock(&self.orders.patterns).push(pattern);
        // Release pairs with the Acquire load in the forwarder's stop condition, so the pattern
        // pushed above is seen when the flag is.
        self.orders.pending.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Forwarder {
    /// Stops the thread and waits for it to end (and drop its subscriber): for a connection
    /// that is closed, so that the thread cannot be waiting for room in it.
    pub(super) fn finish(mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn stop(&self) {
        // Release pairs with the Acquire load in the forwarder's stop condition.
        self.orders.stop.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The forwarding thread: receives and sends until stopped or the connection ends. What the
/// rings hold at once goes out in one write, up to [`BATCH`] bytes.
fn forward(mut subscriber: Subscriber, mut framing: impl Framing, wire: &Wire, orders: &Orders) {
    // Acquire pairs with the Release stores of `Forwarder::drop` and `add_pattern`.
    let interrupted =
        || orders.stop.load(Ordering::Acquire) || orders.pending.load(Ordering::Acquire);
    let mut batch = Vec::new();
    loop {
        // Wait for the first message; then take what else is there without waiting.
        let patience = if batch.is_empty() {
            Patience::Until(Deadline::Never)
        } else {
            Patience::Now
        };
        let mut orders_arrived = false;
        match subscriber.receive_or_stop(patience, interrupted) {
            Ok(sample) => {
                framing.message(&sample, &mut batch);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Err(Wait::Empty | Wait::Timeout) => {}
            Err(Wait::Stopped) => orders_arrived = true,
            Err(Wait::Failed(RecvError::Lagged { topic, missed })) => {
                framing.lagged(&topic, missed, &mut batch);
            }
            Err(Wait::Failed(e)) => framing.failed(e, &mut batch),
        }
        let mut sent = match batch.is_empty() {
            true => Ok(()),
            false => wire.send_encoded(&batch, None),
        };
        batch.clear();
        if sent.is_ok() && orders_arrived {
            // Acquire pairs with the Release store of `Forwarder::drop`.
            if orders.stop.load(Ordering::Acquire) {
                return;
            }
            sent = add_patterns(&mut subscriber, &mut framing, wire, orders);
        }
        if let Err(e) = sent {
            debug!("gateway: forwarding ends: {e:?}");
            return;
        }
    }
}

/// Adds the patterns asked for and says how each went.
fn add_patterns(
    subscriber: &mut Subscriber,
    framing: &mut impl Framing,
    wire: &Wire,
    orders: &Orders,
) -> Result<(), SendError> {
    // Cleared before taking, so a pattern pushed after the take raises it again (the mutex
    // orders the patterns themselves).
    orders.pending.store(false, Ordering::Relaxed);
    let patterns = std::mem::take(&mut *lock(&orders.patterns));
    for pattern in patterns {
        framing.pattern_added(subscriber.add_pattern(&pattern), wire)?;
    }
    Ok(())
}
