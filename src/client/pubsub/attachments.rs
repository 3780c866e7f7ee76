//! Ring attachments on their way from the control thread to their subscriber.
//!
//! The broker sends a subscription one attachment per matching ring — before it replies to the
//! subscribe, and later whenever a matching ring appears. The control thread queues each for the
//! subscriber that owns the subscription and rings its doorbell, so a parked subscriber wakes up
//! to adopt the new ring. Subscribers that listen are also told when the broker is lost and when
//! a broker is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;
use shmbus_shm::{Doorbell, Ring};

use crate::protocol::RingId;
use crate::protocol::pubsub::RingAttachment;

/// What the broker sent a subscription about one matching ring.
pub(crate) enum Attachment {
    /// A reader slot on the ring, which the control thread mapped.
    Ring(RingAttachment, Ring),
    /// The broker retired the ring: drop its reader once it is read.
    Retired {
        /// The ring.
        ring: RingId,
    },
    /// The ring the broker could not attach a reader to: the subscription misses `topic`.
    Unavailable {
        /// The ring's topic.
        topic: String,
        /// Why, from the broker.
        reason: String,
    },
    /// The broker is gone; the rings go on working, and the bus reconnects.
    BrokerLost,
    /// A broker is linked again: register again on the new link.
    Relinked,
}

/// Attachments waiting for their subscriber to adopt them, and how to wake it.
pub(crate) struct AttachmentQueue {
    /// Whether `pending` may be non-empty: the subscriber polls it on every receive, so it sits
    /// on a line of its own.
    nonempty: CachePadded<AtomicBool>,
    pending: Mutex<Vec<Attachment>>,
    doorbell: Arc<Doorbell>,
}

impl AttachmentQueue {
    /// An empty queue whose subscriber parks on `doorbell`.
    pub(crate) fn new(doorbell: Arc<Doorbell>) -> AttachmentQueue {
        AttachmentQueue {
            nonempty: CachePadded::new(AtomicBool::new(false)),
            pending: Mutex::new(Vec::new()),
            doorbell,
        }
    }

    /// Rings the subscriber's doorbell (after a push, or to make it look at its rings).
    pub(crate) fn wake(&self) {
        self.doorbell.table().ring(self.doorbell.index());
    }

    /// Queues attachments; the caller then rings the doorbell.
    pub(crate) fn push(&self, items: impl IntoIterator<Item = Attachment>) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(items);
        // Release pairs with the Acquire load in `has_pending`: the items are visible with it.
        self.nonempty.store(true, Ordering::Release);
    }

    /// Whether attachments wait (cheap: no lock).
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        self.nonempty.load(Ordering::Acquire)
    }

    /// Takes every waiting attachment.
    pub(crate) fn take(&self) -> Vec<Attachment> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared before the items are taken, under the lock: a push that extends after this take
        // sets the flag again once it has, so no item goes unseen (a flag left set over an empty
        // queue only costs one more look).
        self.nonempty.store(false, Ordering::Relaxed);
        std::mem::take(&mut *pending)
    }
}
