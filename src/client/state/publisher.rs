//! Owning a collection: [`StatePublisher`].

use std::sync::Arc;

use shmbus_shm::{Deadline, LoanError};

use super::error::StateError;
use super::fetch_snapshot;
use super::remote::{Content, RemoteOwner};
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
        let fail = |e| AttachError::call(topic.as_str(), e);
        let (sink, ring_max, max_bytes, bytes) = match &self.bus {
            BusFlavor::Local(bus) => {
                let own = OwnState {
                    topic: topic.as_str().to_string(),
                    persistent: self.persistent,
                };
                let link = bus.conn.link();
                let (reply, fds) = bus.conn.call_on(&link, own).map_err(fail)?;
                let writer = AttachedWriter::attach(bus, link, fds, &reply.publishing)
                    .map_err(|e| AttachError::shm(topic.as_str(), e))?;
                let ring_max = reply
                    .publishing
                    .ring
                    .max_payload
                    .saturating_sub(RECORD_OVERHEAD);
                // The keeper took the ownership before this: the snapshot is the collection as
                // this owner starts it.
                let bytes = fetch_snapshot(bus, topic.as_str()).map_err(fail)?;
                let changes = Changes {
                    writer,
                    seq: 0,
                    give_up: None,
                };
                let sink = Sink::Ring {
                    bus: Arc::clone(bus),
                    changes,
                };
                (sink, ring_max, reply.max_bytes, bytes)
            }
            BusFlavor::Remote(bus) => {
                let (owner, max_value, max_bytes) = RemoteOwner::own(bus, &topic, self.persistent)
                    .map_err(|e| e.attach(topic.as_str()))?;
                let bytes =
                    (bus.bus.snapshot(topic.as_str())).map_err(|e| e.attach(topic.as_str()))?;
                (Sink::Remote(owner), max_value, max_bytes, bytes)
            }
        };
        let collections =
            snapshot::parse(&bytes).map_err(|e| AttachError::shm(topic.as_str(), e))?;
        let ring_max = ring_max as usize;
        let mut publisher = StatePublisher {
            topic,
            persistent: self.persistent,
            sink,
            entries: foldhash::HashMap::default(),
            restarted: 0,
            max_value: self.max_value.map_or(ring_max, |m| m.min(ring_max)),
            bytes: 0,
            max_bytes,
            scratch: Vec::new(),
        };
        if let Some(c) = collections
            .iter()
            .find(|c| c.topic == publisher.topic.as_str())
        {
            if let Sink::Ring { changes, .. } = &mut publisher.sink {
                changes.seq = c.seq;
            }
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
///
/// On a bus reached over TCP or TLS, the broker's gateway owns the collection on this owner's
/// behalf: each change is sent and the call returns (use [`sync`](StatePublisher::sync) to wait
/// for the broker), and a change the gateway could not make is returned by the next call. While
/// the link is down, changes are kept in this owner's entries only; the first call after the
/// reconnection owns the collection again and makes its content the collection's.
pub struct StatePublisher {
    topic: Topic,
    persistent: bool,
    sink: Sink,
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
            .field("topic", &self.topic)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl StatePublisher {
    /// The collection's topic.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// Sets `key` to `value` (a copy). A value equal to the current one changes nothing and
    /// writes nothing.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.check_key(key)?;
        self.check_link()?;
        if value.len() > self.max_value {
            return Err(StateError::TooLarge {
                topic: self.topic.as_str().to_string(),
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
                topic: self.topic.as_str().to_string(),
                key: key.to_string(),
                max: self.max_bytes,
            });
        }
        let record = Record::Put { key, value };
        self.sink.write(&self.topic, record)?;
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
                topic: self.topic.as_str().to_string(),
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
                topic: self.topic.as_str().to_string(),
                key: key.to_string(),
            });
        }
        self.sink.write(&self.topic, Record::Remove { key })?;
        if let Some(v) = self.entries.remove(key) {
            self.bytes -= entry_size(key, &v);
        }
        Ok(())
    }

    /// Counts a restart of the owner (watchers get `Restarted(n)`).
    pub fn signal_restarted(&mut self) -> Result<(), StateError> {
        self.set_restarted(self.restarted.saturating_add(1))
    }

    /// Sets the restart counter back to zero.
    pub fn clear_restarted(&mut self) -> Result<(), StateError> {
        self.set_restarted(0)
    }

    /// Sets the restart counter to `count` (nothing is written if it is that already).
    pub(crate) fn set_restarted(&mut self, count: u64) -> Result<(), StateError> {
        self.check_link()?;
        if self.restarted == count {
            return Ok(());
        }
        self.sink.write(&self.topic, Record::Restarted(count))?;
        self.restarted = count;
        Ok(())
    }

    /// Waits for room in the ring only while `give_up` says no (checked every
    /// [`GIVE_UP_SLICE`]): for a gateway's owner, which must not outwait its connection or its
    /// broker. Changes of a remote owner are not waited for here.
    pub(crate) fn give_up_when(&mut self, give_up: GiveUp) {
        if let Sink::Ring { changes, .. } = &mut self.sink {
            changes.give_up = Some(give_up);
        }
    }

    /// The largest value it takes.
    pub(crate) fn max_value(&self) -> usize {
        self.max_value
    }

    /// Most bytes of keys and values the collection may hold.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
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
        let broker = |source| StateError::Broker {
            topic: self.topic.as_str().to_string(),
            source,
        };
        match &self.sink {
            Sink::Ring { bus, changes } => {
                let request = SyncState {
                    topic: self.topic.as_str().to_string(),
                };
                bus.conn
                    .call_on(&changes.writer.link, request)
                    .map(drop)
                    .map_err(|e| broker(e.into_control()))
            }
            Sink::Remote(owner) => {
                owner.failed().map_err(broker)?;
                (owner.bus.bus.sync_state(owner.id)).map_err(|e| broker(e.into_control()))
            }
        }
    }

    /// Owns the collection again if the bus reconnected since it was owned; over the network,
    /// first reports a change the gateway could not make.
    #[inline]
    fn check_link(&mut self) -> Result<(), StateError> {
        let stale = match &self.sink {
            Sink::Ring { bus, changes } => bus.conn.is_stale(&changes.writer.link),
            Sink::Remote(owner) => {
                owner.failed().map_err(|source| StateError::Broker {
                    topic: self.topic.as_str().to_string(),
                    source,
                })?;
                owner.is_stale()
            }
        };
        if stale {
            self.own_again()?;
        }
        Ok(())
    }

    /// Owns the collection at the broker that is back (or through the gateway's new
    /// connection) and makes its copy this owner's content: the owner's entries are the
    /// collection. If that link is gone too, changes go on (into the ring this owner has, or
    /// into its own entries only) until the next reconnection.
    #[cold]
    #[inline(never)]
    fn own_again(&mut self) -> Result<(), StateError> {
        let topic = self.topic.clone();
        let broker = |source| StateError::Broker {
            topic: topic.as_str().to_string(),
            source,
        };
        let bus = match &mut self.sink {
            Sink::Ring { bus, .. } => Arc::clone(bus),
            Sink::Remote(owner) => {
                let content = Content {
                    entries: &self.entries,
                    restarted: self.restarted,
                };
                return match owner.own_again(&topic, self.persistent, content) {
                    Ok(Some(max_bytes)) => {
                        self.max_bytes = max_bytes;
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(broker(e.into_control())),
                };
            }
        };
        let conn = &bus.conn;
        let link = conn.link();
        let own = OwnState {
            topic: topic.as_str().to_string(),
            persistent: self.persistent,
        };
        let (reply, fds) = match conn.call_on(&link, own) {
            Ok(owned) => owned,
            Err(CallError::Request(ControlError::BrokerGone)) => return Ok(()),
            Err(e) => return Err(broker(e.into_control())),
        };
        let ring = |detail: String| StateError::Ring {
            topic: topic.as_str().to_string(),
            detail,
        };
        let writer = AttachedWriter::attach(&bus, link, fds, &reply.publishing).map_err(ring)?;
        let bytes = fetch_snapshot(&bus, topic.as_str()).map_err(|e| broker(e.into_control()))?;
        let collections = snapshot::parse(&bytes).map_err(|e| ring(e.to_string()))?;
        let held = collections.iter().find(|c| c.topic == topic.as_str());
        let give_up = match &mut self.sink {
            Sink::Ring { changes, .. } => changes.give_up.take(),
            Sink::Remote(_) => None,
        };
        let changes = Changes {
            writer,
            seq: held.map_or(0, |c| c.seq),
            give_up,
        };
        self.sink = Sink::Ring { bus, changes };
        self.max_bytes = reply.max_bytes;
        let held_entries: foldhash::HashMap<&str, &[u8]> = held
            .map(|c| c.entries.iter().copied().collect())
            .unwrap_or_default();
        for key in held_entries.keys() {
            if !self.entries.contains_key(*key) {
                self.sink.write(&topic, Record::Remove { key })?;
            }
        }
        for (key, value) in &self.entries {
            if held_entries.get(key.as_str()) != Some(&value.as_slice()) {
                self.sink.write(&topic, Record::Put { key, value })?;
            }
        }
        if held.map_or(0, |c| c.restarted) != self.restarted {
            self.sink.write(&topic, Record::Restarted(self.restarted))?;
        }
        Ok(())
    }

    fn check_key(&self, key: &str) -> Result<(), StateError> {
        check_key(key).map_err(|reason| StateError::InvalidKey {
            topic: self.topic.as_str().to_string(),
            reason,
        })
    }
}

/// Where an owner's changes go.
enum Sink {
    /// The collection's ring, on this host.
    Ring {
        bus: Arc<BusInner>,
        changes: Changes,
    },
    /// A gateway, over the network.
    Remote(RemoteOwner),
}

impl Sink {
    /// Writes `record` as the next change of collection `topic`.
    fn write(&mut self, topic: &Topic, record: Record<'_>) -> Result<(), StateError> {
        match self {
            Sink::Ring { changes, .. } => changes.write(topic, record),
            Sink::Remote(owner) => {
                owner.send(record);
                Ok(())
            }
        }
    }
}

/// Says when to stop waiting for room in a state ring.
pub(crate) type GiveUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often an owner that may give up looks again while it waits for room.
const GIVE_UP_SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// An owner's writer on the collection's ring, the number of the last change it wrote, and
/// when it stops waiting for room (never, unless set).
struct Changes {
    writer: AttachedWriter,
    seq: u64,
    give_up: Option<GiveUp>,
}

impl Changes {
    /// Writes `record` as the next change of `topic`, waiting for room while watchers are
    /// behind (a watcher that stops reading is evicted by the broker, which bounds the wait),
    /// or until it gives up.
    fn write(&mut self, topic: &Topic, record: Record<'_>) -> Result<(), StateError> {
        let next = self.seq + 1;
        let fail = |detail: String| StateError::Ring {
            topic: topic.as_str().to_string(),
            detail,
        };
        let deadline = match self.give_up {
            None => Deadline::Never,
            Some(_) => Deadline::After(GIVE_UP_SLICE),
        };
        let len = record.encoded_len();
        let give_up = self.give_up.as_deref();
        let mut loan = loop {
            match self.writer.writer.loan(len, deadline) {
                Ok(loan) => break loan,
                Err(LoanError::Timeout) if !give_up.is_some_and(|g| g()) => {}
                Err(LoanError::Timeout) => {
                    return Err(fail("gave up waiting for room in the ring".into()));
                }
                Err(LoanError::TooLarge { len, max }) => {
                    return Err(fail(format!("a record of {len} bytes exceeds {max}")));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        record.encode(next, loan.as_mut_slice());
        loan.commit().map_err(|e| fail(e.to_string()))?;
        self.seq = next;
        Ok(())
    }
}
