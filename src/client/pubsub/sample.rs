//! Received messages: [`Sample`], read in place and borrowed from its subscriber, and
//! [`OwnedSample`], which borrows nothing.

use std::ffi::CStr;

use shmbus_shm::{Frame, OwnedFrame};

use std::sync::Arc;

use super::remote::RemoteMessage;
use super::subscriber::RingLabel;
use crate::protocol::PublisherId;
use crate::topic::Topic;

/// One message, read in place until dropped; the fastest way to read.
///
/// A sample borrows its subscriber: drop it before receiving the next, or [detach](Sample::detach)
/// it to keep it longer.
pub struct Sample<'a> {
    inner: SampleFlavor<'a>,
}

/// Where a sample's bytes are: a frame in a ring, or a message received over the network.
enum SampleFlavor<'a> {
    Ring(Frame<'a, RingLabel>),
    Remote(&'a Arc<RemoteMessage>),
}

/// One message that borrows nothing: it may be kept while the subscriber receives on, sent to
/// another thread, and dropped in any order. Its frame stays in place (a tethered subscriber's
/// ring holds publishers back behind the oldest owned sample) until it drops. A subscriber lends
/// at most [`max_held`](super::SubscriberBuilder::max_held) of them per topic at once.
pub struct OwnedSample {
    inner: OwnedFlavor,
}

enum OwnedFlavor {
    Ring(OwnedFrame<RingLabel>),
    Remote(Arc<RemoteMessage>),
}

impl<'a> Sample<'a> {
    #[inline]
    pub(crate) fn ring(frame: Frame<'a, RingLabel>) -> Sample<'a> {
        Sample {
            inner: SampleFlavor::Ring(frame),
        }
    }

    #[inline]
    pub(crate) fn remote(message: &'a Arc<RemoteMessage>) -> Sample<'a> {
        Sample {
            inner: SampleFlavor::Remote(message),
        }
    }

    /// The topic it was published on, exactly as the publisher wrote it.
    #[inline]
    pub fn topic(&self) -> &str {
        self.topic_ref().as_str()
    }

    /// [`Sample::topic`] as a NUL-terminated C string, without a copy (for foreign-function
    /// interfaces).
    #[inline]
    pub fn topic_c_str(&self) -> &CStr {
        self.topic_ref().as_c_str()
    }

    #[inline]
    pub(crate) fn topic_ref(&self) -> &Topic {
        match &self.inner {
            SampleFlavor::Ring(f) => &f.label().topic,
            SampleFlavor::Remote(m) => &m.topic,
        }
    }

    /// The payload (16-byte aligned; in shared memory for tethered subscribers of a local bus).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.inner {
            SampleFlavor::Ring(f) => f.payload(),
            SampleFlavor::Remote(m) => &m.payload,
        }
    }

    /// Payload length.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            SampleFlavor::Ring(f) => f.len(),
            SampleFlavor::Remote(m) => m.payload.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The publisher's bus-wide id.
    #[inline]
    pub fn publisher(&self) -> PublisherId {
        match &self.inner {
            SampleFlavor::Ring(f) => PublisherId::from_raw(f.writer()),
            SampleFlavor::Remote(m) => PublisherId::from_raw(m.publisher),
        }
    }

    /// The message's sequence number in its ring (increasing in publication order).
    #[inline]
    pub fn sequence(&self) -> u64 {
        match &self.inner {
            SampleFlavor::Ring(f) => f.sequence(),
            SampleFlavor::Remote(m) => m.sequence,
        }
    }

    /// Whether the payload is read in place in shared memory (rather than from a private copy,
    /// as lossy subscribers read).
    pub fn is_in_place(&self) -> bool {
        match &self.inner {
            SampleFlavor::Ring(f) => f.is_in_place(),
            SampleFlavor::Remote(_) => false,
        }
    }

    /// Keeps the message beyond the next receive: an [`OwnedSample`] that borrows nothing.
    ///
    /// ```
    /// let bus = shmbus::Bus::embedded()?;
    /// let mut sub = bus.subscribe("jobs")?;
    /// let mut publisher = bus.publisher("jobs")?;
    /// publisher.publish(b"first")?;
    /// publisher.publish(b"second")?;
    /// let first = sub.recv()?.detach();
    /// let second = sub.recv()?.detach();
    /// let worker = std::thread::spawn(move || first.payload().to_vec());
    /// assert_eq!(second.payload(), b"second");
    /// assert_eq!(worker.join().unwrap(), b"first");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(self) -> OwnedSample {
        match self.inner {
            SampleFlavor::Ring(f) => OwnedSample {
                inner: OwnedFlavor::Ring(f.detach()),
            },
            SampleFlavor::Remote(m) => OwnedSample {
                inner: OwnedFlavor::Remote(Arc::clone(m)),
            },
        }
    }

    /// [`Sample::detach`] into `slot`, giving back the sample the slot holds first: for loops
    /// that keep one owned sample at a time (the C API's `shmbus_recv_next`, iterators). A sample
    /// of the same topic is given back on the spot and its handle reused, so such a loop costs
    /// hardly more than reading borrowed samples.
    pub fn detach_into(self, slot: &mut Option<OwnedSample>) {
        match self.inner {
            SampleFlavor::Ring(frame) => {
                let mut frames = match slot.take() {
                    Some(OwnedSample {
                        inner: OwnedFlavor::Ring(f),
                    }) => Some(f),
                    _ => None,
                };
                frame.detach_into(&mut frames);
                *slot = frames.map(|f| OwnedSample {
                    inner: OwnedFlavor::Ring(f),
                });
            }
            SampleFlavor::Remote(m) => {
                *slot = Some(OwnedSample {
                    inner: OwnedFlavor::Remote(Arc::clone(m)),
                });
            }
        }
    }
}

impl std::fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("topic", &self.topic())
            .field("publisher", &self.publisher())
            .field("sequence", &self.sequence())
            .field("len", &self.len())
            .finish()
    }
}

impl OwnedSample {
    /// An owned sample of a message that came over the network.
    pub(crate) fn remote(message: Arc<RemoteMessage>) -> OwnedSample {
        OwnedSample {
            inner: OwnedFlavor::Remote(message),
        }
    }

    /// The topic it was published on, exactly as the publisher wrote it.
    #[inline]
    pub fn topic(&self) -> &str {
        self.topic_ref().as_str()
    }

    /// [`OwnedSample::topic`] as a NUL-terminated C string, without a copy.
    #[inline]
    pub fn topic_c_str(&self) -> &CStr {
        self.topic_ref().as_c_str()
    }

    #[inline]
    pub(crate) fn topic_ref(&self) -> &Topic {
        match &self.inner {
            OwnedFlavor::Ring(f) => &f.label().topic,
            OwnedFlavor::Remote(m) => &m.topic,
        }
    }

    /// The payload (16-byte aligned; in shared memory for tethered subscribers of a local bus).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.inner {
            OwnedFlavor::Ring(f) => f.payload(),
            OwnedFlavor::Remote(m) => &m.payload,
        }
    }

    /// Payload length.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.inner {
            OwnedFlavor::Ring(f) => f.len(),
            OwnedFlavor::Remote(m) => m.payload.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The publisher's bus-wide id.
    #[inline]
    pub fn publisher(&self) -> PublisherId {
        match &self.inner {
            OwnedFlavor::Ring(f) => PublisherId::from_raw(f.writer()),
            OwnedFlavor::Remote(m) => PublisherId::from_raw(m.publisher),
        }
    }

    /// The message's sequence number in its ring.
    #[inline]
    pub fn sequence(&self) -> u64 {
        match &self.inner {
            OwnedFlavor::Ring(f) => f.sequence(),
            OwnedFlavor::Remote(m) => m.sequence,
        }
    }

    /// Whether the payload is read in place in shared memory.
    pub fn is_in_place(&self) -> bool {
        match &self.inner {
            OwnedFlavor::Ring(f) => f.is_in_place(),
            OwnedFlavor::Remote(_) => false,
        }
    }
}

impl std::fmt::Debug for OwnedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedSample")
            .field("topic", &self.topic())
            .field("publisher", &self.publisher())
            .field("sequence", &self.sequence())
            .field("len", &self.len())
            .finish()
    }
}
