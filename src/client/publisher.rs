//! Publishing raw bytes.

use std::sync::Arc;
use std::time::Duration;

use shmbus_shm::{LoanError, Ring, TryLoanError, WaitStrategy};

use super::BusInner;
use super::error::{AttachError, PublishError};
use crate::protocol::{Reply, Request};
use crate::topic::Topic;

/// Publishes messages on one topic, zero-copy into the topic's ring.
///
/// Messages from one publisher arrive in the order it published them. The publisher's ring slot
/// is released when it drops.
pub struct Publisher {
    bus: Arc<BusInner>,
    topic: Topic,
    id: u32,
    inner: shmbus_shm::Publisher,
    ring: Ring,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic.as_str())
            .field("id", &self.id)
            .finish()
    }
}

impl Publisher {
    pub(crate) fn attach(bus: Arc<BusInner>, topic: &str) -> Result<Publisher, AttachError> {
        let topic = Topic::new(topic)?;
        let request = Request::Publish {
            topic: topic.as_str().to_string(),
            max_payload: bus.max_payload,
        };
        let (reply, fds) = bus
            .conn
            .request(request)
            .map_err(|source| AttachError::Broker {
                topic: topic.as_str().into(),
                source,
            })?;
        let (id, _ring_id) = match reply {
            Ok(Reply::Publishing { publisher, ring }) => (publisher, ring),
            Ok(other) => {
                return Err(AttachError::shm(
                    topic.as_str(),
                    format!("unexpected reply {other:?}"),
                ));
            }
            Err(e) => return Err(AttachError::refused(topic.as_str(), e)),
        };
        match open_publisher(&bus, fds, id) {
            Ok((ring, inner)) => Ok(Publisher {
                bus,
                topic,
                id,
                inner,
                ring,
            }),
            Err(detail) => {
                // The broker recorded the publisher; tell it the attachment failed.
                bus.conn.notify(Request::Unpublish { publisher: id });
                Err(AttachError::shm(topic.as_str(), detail))
            }
        }
    }

    /// The topic it publishes on.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// The id of the ring it writes into (rings are per topic; the broker releases idle ones, and
    /// a topic published on again gets a new ring).
    pub fn ring_id(&self) -> u64 {
        self.ring.id()
    }

    /// Its bus-wide id, which subscribers see on its messages.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The largest payload one message can carry.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// How blocking publishes wait for a full ring (default: spin 50 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.inner.set_wait_strategy(wait);
    }

    /// Copies `payload` into the ring, waiting as long as it takes for room. Returns the
    /// message's sequence number.
    #[inline]
    pub fn publish(&mut self, payload: &[u8]) -> Result<u64, PublishError> {
        self.publish_timeout(payload, None)
    }

    /// Copies `payload` into the ring, waiting up to `timeout` for room.
    #[inline]
    pub fn publish_timeout(
        &mut self,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<u64, PublishError> {
        let mut loan = self.loan_timeout(payload.len(), timeout)?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit())
    }

    /// Copies `payload` into the ring if there is room now.
    #[inline]
    pub fn try_publish(&mut self, payload: &[u8]) -> Result<u64, PublishError> {
        let mut loan = self.try_loan(payload.len())?;
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
        self.loan_timeout(len, None)
    }

    /// [`Publisher::loan`], waiting up to `timeout`.
    #[inline]
    pub fn loan_timeout(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_>, PublishError> {
        let topic = self.topic.as_str();
        match self.inner.loan(len, timeout) {
            Ok(loan) => Ok(Loan { inner: loan }),
            Err(LoanError::TooLarge { len, max }) => Err(too_large(topic, len, max)),
            Err(_) => Err(PublishError::Timeout {
                topic: topic.into(),
            }),
        }
    }

    /// [`Publisher::loan`] without waiting.
    #[inline]
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_>, PublishError> {
        let topic = self.topic.as_str();
        match self.inner.try_loan(len) {
            Ok(loan) => Ok(Loan { inner: loan }),
            Err(TryLoanError::TooLarge { len, max }) => Err(too_large(topic, len, max)),
            Err(_) => Err(PublishError::Full {
                topic: topic.into(),
            }),
        }
    }
}

#[cold]
fn too_large(topic: &str, len: usize, max: usize) -> PublishError {
    PublishError::TooLarge {
        topic: topic.into(),
        len,
        max,
    }
}

/// Maps the ring the broker sent and attaches a publisher slot in it.
fn open_publisher(
    bus: &BusInner,
    fds: Vec<std::os::fd::OwnedFd>,
    id: u32,
) -> Result<(Ring, shmbus_shm::Publisher), String> {
    let [data, readers]: [_; 2] = fds
        .try_into()
        .map_err(|_| "the broker sent no ring descriptors".to_string())?;
    let ring = Ring::open(data, readers, &bus.doorbells).map_err(|e| e.to_string())?;
    let publisher = ring.publisher(id, bus.owner).map_err(|e| e.to_string())?;
    Ok((ring, publisher))
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.bus
            .conn
            .notify(Request::Unpublish { publisher: self.id });
    }
}

/// Room for one message in the ring. See [`Publisher::loan`].
#[derive(Debug)]
pub struct Loan<'a> {
    inner: shmbus_shm::Loan<'a>,
}

impl Loan<'_> {
    /// The message buffer, in shared memory.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.inner.as_mut_slice()
    }

    /// Its length.
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Publishes the message. Returns its sequence number.
    #[inline]
    pub fn commit(self) -> u64 {
        self.inner.commit()
    }

    /// Publishes the first `len` bytes only (for writers that learn the size as they go).
    #[inline]
    pub fn commit_prefix(self, len: usize) -> u64 {
        self.inner.commit_prefix(len)
    }
}
