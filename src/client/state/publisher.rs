//! Owning a collection: [`StatePublisher`].

use std::sync::Arc;

use shmbus_shm::{Deadline, LoanError};

use super::error::StateError;
use super::fetch_snapshot;
use crate::client::bus::{BusFlavor, BusInner};
use crate::client::error::{AttachError, CallError, ControlError};
use crate::client::pubsub::AttachedWriter;
use crate::client::schema::serialize_tagged;
use crate::protocol::state::{
    OwnState, RECORD_OVERHEAD, Record, SyncState, check_key, entry_size, snapshot,
};
use crate::topic::Topic;

/// How a state publisher is made; from [`Bus::state_publisher_builder`](crate::Bus).
/// Defaults: not persistent, values up to the broker's limit (64 KiB unless configured).
#[must_use = "a builder does nothing until `create` is called"]
pub struct StatePublisherBuilder {
    bus: BusFlavor,
    topic: String,
    persistent: bool,
    max_value: Option<usize>,
}

impl std::fmt::Debug for StatePublisherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatePublisherBuilder")
            .field("topic", &self.topic)
            .field("persistent", &self.persistent)
            .field("max_value", &self.max_value)
            .finish()
    }
}

impl StatePublisherBuilder {
    pub(crate) fn new(bus: BusFlavor, topic: &str) -> StatePublisherBuilder {
        StatePublisherBuilder {
            bus,
            topic: topic.to_string(),
            persistent: false,
            max_value: None,
        }
    }

    /// The broker keeps the collection on disk: it survives this publisher and the broker's
    /// restarts (the broker needs a state directory).
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Refuse values larger than `bytes` (at most the broker's limit).
    pub fn max_value(mut self, bytes: usize) -> Self {
        self.max_value = Some(bytes);
        self
    }

    /// Takes ownership of the collection — with its current content, if it has one (persistent)
    /// — or fails: another process owns it (`Taken`), the topic is invalid, or the broker
    /// refuses.
    pub fn create(self) -> Result<StatePublisher, AttachError> {
        let topic = Topic::new(&self.topic)?;
        let bus = self.bus.local(topic.as_str())?;
        let fail = |e| AttachError::call(topic.as_str(), e);
        let own = OwnState {
            topic: topic.as_str().to_string(),
            persistent: self.persistent,
        };
        let link = bus.conn.link();
        let (reply, fds) = bus.conn.call_on(&link, own).map_err(fail)?;
        let writer = AttachedWriter::attach(&bus, link, fds, &reply.publishing)
            .map_err(|e| AttachError::shm(topic.as_str(), e))?;
        let ring = reply.publishing.ring;
        let ring_max = (ring.max_payload.saturating_sub(RECORD_OVERHEAD)) as usize;
        let max_value = self.max_value.map_or(ring_max, |m| m.min(ring_max));
        // The keeper took the ownership before this: the snapshot is the collection as this
        // owner starts it.
        let bytes = fetch_snapshot(&bus, topic.as_str()).map_err(fail)?;
        let collections =
            snapshot::parse(&bytes).map_err(|e| AttachError::shm(topic.as_str(), e))?;
        let mut publisher = StatePublisher {
            bus,
            persistent: self.persistent,
            changes: Changes {
                writer,
                topic,
                seq: 0,
            },
            entries: foldhash::HashMap::default(),
            restarted: 0,
            max_value,
            bytes: 0,
            max_bytes: reply.max_bytes,
            scratch: Vec::new(),
        };
        if let Some(c) = collections
            .iter()
            .find(|c| c.topic == publisher.changes.topic.as_str())
        {
            publisher.changes.seq = c.seq;
            publisher.restarted = c.restarted;
            publisher.entries = c
                .entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            publisher.bytes = c.entries.iter().map(|(k, v)| entry_size(k, v)).sum();
        }
        Ok(publisher)
    }
}

/// The owner of one collection: its changes go into shared memory, where watchers and the
/// broker's keeper read them. One owner per collection at a time; ownership ends when this is
/// dropped or the process ends (a non-persistent collection is then emptied: watchers see every
/// entry deleted).
pub struct StatePublisher {
    bus: Arc<BusInner>,
    persistent: bool,
    changes: Changes,
    /// Each value's buffer is reused when its key is put again.
    entries: foldhash::HashMap<String, Vec<u8>>,
    restarted: u64,
    max_value: usize,
    /// Bytes of its keys and values, and the most the broker allows.
    bytes: u64,
    max_bytes: u64,
    /// Where typed values are serialized.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for StatePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatePublisher")
            .field("topic", &self.changes.topic)
            .field("entries", &self.entries.len())
            .field("seq", &self.changes.seq)
            .finish()
    }
}

impl StatePublisher {
    /// The collection's topic.
    pub fn topic(&self) -> &str {
        self.changes.topic.as_str()
    }

    /// Sets `key` to `value` (a copy). A value equal to the current one changes nothing and
    /// writes nothing.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.check_key(key)?;
        self.check_link()?;
        if value.len() > self.max_value {
            return Err(StateError::TooLarge {
                topic: self.changes.topic.as_str().to_string(),
                key: key.to_string(),
                len: value.len(),
                max: self.max_value,
            });
        }
        // One lookup: the entry's buffer is checked, and reused when the key is there.
        let slot = self.entries.get_mut(key);
        let current = slot.as_deref();
        if current.is_some_and(|v| v.as_slice() == value) {
            return Ok(());
        }
        let bytes = self.bytes - current.map_or(0, |v| entry_size(key, v)) + entry_size(key, value);
        if bytes > self.max_bytes && bytes > self.bytes {
            return Err(StateError::Full {
                topic: self.changes.topic.as_str().to_string(),
                key: key.to_string(),
                max: self.max_bytes,
            });
        }
        let record = Record::Put { key, value };
        self.changes.write(record)?;
        self.bytes = bytes;
        match slot {
            Some(slot) => {
                slot.clear();
                slot.extend_from_slice(value);
            }
            None => {
                self.entries.insert(key.to_string(), value.to_vec());
            }
        }
        Ok(())
    }

    /// Sets `key` to `value` serialized with rkyv, headed by `T`'s schema tag: watchers read it
    /// with [`StateValue::archived`](super::StateValue::archived).
    pub fn put_typed<T>(&mut self, key: &str, value: &T) -> Result<(), StateError>
    where
        T: rkyv::Archive + for<'b, 'a> rkyv::Serialize<crate::RingSerializer<'b, 'a>>,
    {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(self.max_value, 0);
        let written = serialize_tagged(value, &mut scratch);
        let result = match written {
            Ok(len) => self.put(key, &scratch[..len]),
            Err(detail) => Err(StateError::Serialize {
                topic: self.changes.topic.as_str().to_string(),
                key: key.to_string(),
                detail,
            }),
        };
        self.scratch = scratch;
        result
    }

    /// Removes `key`; [`StateError::MissingKey`] if the collection does not hold it.
    pub fn remove(&mut self, key: &str) -> Result<(), StateError> {
        self.check_key(key)?;
        self.check_link()?;
        if !self.entries.contains_key(key) {
            return Err(StateError::MissingKey {
                topic: self.changes.topic.as_str().to_string(),
                key: key.to_string(),
            });
        }
        self.changes.write(Record::Remove { key })?;
        if let Some(v) = self.entries.remove(key) {
            self.bytes -= entry_size(key, &v);
        }
        Ok(())
    }

    /// Counts a restart of the owner (watchers get `Restarted(n)`).
    pub fn signal_restarted(&mut self) -> Result<(), StateError> {
        self.check_link()?;
        let n = self.restarted.saturating_add(1);
        self.changes.write(Record::Restarted(n))?;
        self.restarted = n;
        Ok(())
    }

    /// Sets the restart counter back to zero.
    pub fn clear_restarted(&mut self) -> Result<(), StateError> {
        self.check_link()?;
        if self.restarted == 0 {
            return Ok(());
        }
        self.changes.write(Record::Restarted(0))?;
        self.restarted = 0;
        Ok(())
    }

    /// The restart counter.
    pub fn restarted(&self) -> u64 {
        self.restarted
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Waits until the broker has every change made so far — on disk, for a persistent
    /// collection. Changes are in shared memory (and seen by watchers) as soon as each call
    /// returns; this is for when they must survive a crash of the broker.
    pub fn sync(&self) -> Result<(), StateError> {
        let request = SyncState {
            topic: self.changes.topic.as_str().to_string(),
        };
        let link = &self.changes.writer.link;
        self.bus
            .conn
            .call_on(link, request)
            .map(|_| ())
            .map_err(|e| {
                let source = match e {
                    CallError::Request(source) => source,
                    CallError::Refused(r) => {
                        crate::client::ControlError::Protocol { detail: r.message }
                    }
                };
                StateError::Broker {
                    topic: self.changes.topic.as_str().to_string(),
                    source,
                }
            })
    }

    /// Owns the collection again if the bus reconnected to a new broker since it was owned.
    #[inline]
    fn check_link(&mut self) -> Result<(), StateError> {
        if self.bus.conn.is_stale(&self.changes.writer.link) {
            self.own_again()?;
        }
        Ok(())
    }

    /// Owns the collection at the broker that is back and makes its copy this owner's content
    /// (the owner's entries are the collection). If that broker is gone too, changes go on into
    /// the ring this owner has, until the next reconnection.
    #[cold]
    #[inline(never)]
    fn own_again(&mut self) -> Result<(), StateError> {
        let topic = self.changes.topic.clone();
        let broker = |source| StateError::Broker {
            topic: topic.as_str().to_string(),
            source,
        };
        let conn = &self.bus.conn;
        let link = conn.link();
        let own = OwnState {
            topic: topic.as_str().to_string(),
            persistent: self.persistent,
        };
        let (reply, fds) = match conn.call_on(&link, own) {
            Ok(owned) => owned,
            Err(CallError::Request(ControlError::BrokerGone)) => return Ok(()),
            Err(CallError::Request(e)) => return Err(broker(e)),
            Err(CallError::Refused(r)) => {
                return Err(broker(ControlError::Protocol { detail: r.message }));
            }
        };
        let ring = |detail: String| StateError::Ring {
            topic: topic.as_str().to_string(),
            detail,
        };
        let writer =
            AttachedWriter::attach(&self.bus, link, fds, &reply.publishing).map_err(ring)?;
        let bytes = fetch_snapshot(&self.bus, topic.as_str()).map_err(|e| match e {
            CallError::Request(e) => broker(e),
            CallError::Refused(r) => broker(ControlError::Protocol { detail: r.message }),
        })?;
        let collections = snapshot::parse(&bytes).map_err(|e| ring(e.to_string()))?;
        let held = collections.iter().find(|c| c.topic == topic.as_str());
        self.changes = Changes {
            writer,
            topic: topic.clone(),
            seq: held.map_or(0, |c| c.seq),
        };
        self.max_bytes = reply.max_bytes;
        let held_entries: foldhash::HashMap<&str, &[u8]> = held
            .map(|c| c.entries.iter().copied().collect())
            .unwrap_or_default();
        for key in held_entries.keys() {
            if !self.entries.contains_key(*key) {
                self.changes.write(Record::Remove { key })?;
            }
        }
        for (key, value) in &self.entries {
            if held_entries.get(key.as_str()) != Some(&value.as_slice()) {
                self.changes.write(Record::Put { key, value })?;
            }
        }
        if held.map_or(0, |c| c.restarted) != self.restarted {
            self.changes.write(Record::Restarted(self.restarted))?;
        }
        Ok(())
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        check_key(key).map_err(|reason| StateError::InvalidKey {
            topic: self.changes.topic.as_str().to_string(),
            reason,
        })
    }
}

/// Where an owner's changes go: its writer on the collection's ring, and the number of the last
/// change it wrote.
struct Changes {
    writer: AttachedWriter,
    topic: Topic,
    seq: u64,
}

impl Changes {
    /// Writes `record` as the next change, waiting for room while watchers are behind (a watcher
    /// that stops reading is evicted by the broker, which bounds the wait).
    fn write(&mut self, record: Record<'_>) -> Result<(), StateError> {
        let next = self.seq + 1;
        let fail = |detail: String| StateError::Ring {
            topic: self.topic.as_str().to_string(),
            detail,
        };
        let mut loan = match self
            .writer
            .writer
            .loan(record.encoded_len(), Deadline::Never)
        {
            Ok(loan) => loan,
            Err(LoanError::TooLarge { len, max }) => {
                return Err(fail(format!("a record of {len} bytes exceeds {max}")));
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        record.encode(next, loan.as_mut_slice());
        loan.commit().map_err(|e| fail(e.to_string()))?;
        self.seq = next;
        Ok(())
    }
}
