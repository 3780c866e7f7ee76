//! Watching collections: [`StateWatcher`] and its [`StateEvent`]s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus_shm::{Deadline, ReaderOptions, WaitStrategy};
use tracing::{debug, warn};

use super::error::WatchError;
use super::fetch_snapshot;
use super::value::StateValue;
use crate::client::bus::{BusFlavor, BusInner};
use crate::client::error::{AttachError, CallError};
use crate::client::pubsub::remote::RemoteSubscriber;
use crate::client::pubsub::{Patience, RecvError, Relinking, RingSubscriber, Wait};
use crate::protocol::remote::Mode;
use crate::protocol::state::{Record, WatchState, snapshot};
use crate::topic::Topic;

/// A change of a watched collection, or a step of the watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEvent {
    /// `key` appeared (or was there when the watch began).
    Created {
        /// The collection.
        topic: Topic,
        /// The key.
        key: Arc<str>,
        /// Its value.
        value: StateValue,
    },
    /// `key`'s value changed.
    Modified {
        /// The collection.
        topic: Topic,
        /// The key.
        key: Arc<str>,
        /// The value before.
        old: StateValue,
        /// The value now.
        new: StateValue,
    },
    /// `key` was removed (or its non-persistent collection's owner went).
    Deleted {
        /// The collection.
        topic: Topic,
        /// The key.
        key: Arc<str>,
        /// Its last value.
        value: StateValue,
    },
    /// Every entry that existed when the watch began was delivered (once, after them).
    Synchronized,
    /// The collection's owner signalled a restart: the counter is now `count`.
    Restarted {
        /// The collection.
        topic: Topic,
        /// The restart counter.
        count: u64,
    },
}

/// How a watcher is made; from [`Bus::state_watcher`](crate::Bus::state_watcher).
#[must_use = "a builder does nothing until `create` is called"]
pub struct StateWatcherBuilder {
    bus: BusFlavor,
    patterns: Vec<String>,
    wait: WaitStrategy,
}

impl std::fmt::Debug for StateWatcherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatcherBuilder")
            .field("patterns", &self.patterns)
            .field("wait", &self.wait)
            .finish()
    }
}

impl StateWatcherBuilder {
    pub(crate) fn new(bus: BusFlavor, pattern: &str) -> StateWatcherBuilder {
        StateWatcherBuilder {
            bus,
            patterns: vec![pattern.to_string()],
            wait: WaitStrategy::default(),
        }
    }

    /// Watch the collections of `pattern` too.
    pub fn pattern(mut self, pattern: &str) -> Self {
        self.patterns.push(pattern.to_string());
        self
    }

    /// How to wait for changes (default: spin, then park).
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Attaches to every collection the patterns match (and to those that appear later), then
    /// takes the snapshot the first events come from.
    pub fn create(self) -> Result<StateWatcher, AttachError> {
        let patterns = (self.patterns.iter())
            .map(|p| Topic::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        let source = match self.bus {
            BusFlavor::Local(bus) => {
                let sub = watch_rings(&bus, &patterns, self.wait)?;
                Source::Rings { bus, sub }
            }
            BusFlavor::Remote(bus) => {
                let sub = RemoteSubscriber::open(bus, patterns.clone(), Mode::State, 0, self.wait)?;
                Source::Remote(sub)
            }
        };
        let mut watcher = StateWatcher {
            source,
            patterns,
            view: View::default(),
        };
        for pattern in watcher.patterns.clone() {
            watcher
                .resync(pattern.as_str(), Resync::Initial)
                .map_err(|e| AttachError::shm(pattern.as_str(), e))?;
        }
        let view = &mut watcher.view;
        view.events.push_back(StateEvent::Synchronized);
        let restarts: Vec<StateEvent> = (view.mirror.values())
            .filter(|m| m.restarted != 0)
            .map(|m| StateEvent::Restarted {
                topic: m.topic.clone(),
                count: m.restarted,
            })
            .collect();
        view.events.extend(restarts);
        Ok(watcher)
    }
}

/// Attaches a subscriber to the state rings of every collection `patterns` match (and those that
/// appear later) — tethered, from where the broker joined each reader: the keeper's snapshot
/// holds everything claimed before, so nothing is missed and nothing read is unprotected. For a
/// watcher here, or one a gateway watches for.
pub(crate) fn watch_rings(
    bus: &Arc<BusInner>,
    patterns: &[Topic],
    wait: WaitStrategy,
) -> Result<RingSubscriber, AttachError> {
    let first = patterns.first().map_or("", Topic::as_str);
    let options = ReaderOptions::default();
    let mut sub = RingSubscriber::open(Arc::clone(bus), options, 0, wait, first)?;
    for pattern in patterns {
        let name = pattern.as_str().to_string();
        let watch = move |doorbell| WatchState {
            pattern: name.clone(),
            doorbell,
        };
        sub.attach_with(watch, |reply| reply.subscription)
            .map_err(|e| AttachError::call(pattern.as_str(), e))?;
    }
    // Watched again at a broker that is back; the gap it reports for each pattern is caught up
    // from the new broker's snapshot, so the lost broker's rings are not read further.
    sub.relink_with(Relinking {
        report: true,
        drain: false,
    });
    Ok(sub)
}

/// A collection's entries: hashbrown's map, for `get_key_value_mut` (one lookup per change).
type Entries = hashbrown::HashMap<Arc<str>, StateValue, foldhash::fast::RandomState>;

/// One collection as the watcher mirrors it.
struct Mirror {
    topic: Topic,
    entries: Entries,
    seq: u64,
    restarted: u64,
}

/// Mirrors the collections of its patterns and reports their changes as [`StateEvent`]s: first
/// every entry as `Created`, then `Synchronized`, then `Restarted` for collections whose counter
/// is not zero, then every change in the order its owner made it. The mirror
/// ([`get`](StateWatcher::get), [`iter`](StateWatcher::iter)) holds what the events delivered so
/// far and those waiting to be received.
///
/// On a bus reached over TCP or TLS, the broker's gateway reads the records for the watcher and
/// passes the keeper's snapshots on: the events are the same. A remote watcher that falls behind
/// loses records rather than hold its connection back, and catches up from a new snapshot (as a
/// local one does when the broker evicts it).
pub struct StateWatcher {
    source: Source,
    patterns: Vec<Topic>,
    view: View,
}

/// Where a watcher's records and snapshots come from.
#[allow(clippy::large_enum_variant)] // boxing the local variant would cost every record read
enum Source {
    /// The state rings, and the keeper, of a broker on this host.
    Rings {
        bus: Arc<BusInner>,
        sub: RingSubscriber,
    },
    /// A gateway, which reads the rings on the watcher's behalf and passes snapshots on.
    Remote(RemoteSubscriber),
}

impl Source {
    /// A snapshot of the collections `pattern` matches.
    fn snapshot(&self, pattern: &str) -> Result<Vec<u8>, String> {
        match self {
            Source::Rings { bus, .. } => fetch_snapshot(bus, pattern).map_err(|e| match e {
                CallError::Request(e) => e.to_string(),
                CallError::Refused(r) => r.message,
            }),
            Source::Remote(sub) => {
                (sub.bus().bus.snapshot(pattern)).map_err(|e| e.into_control().to_string())
            }
        }
    }
}

/// What a watcher has made of its records and snapshots.
#[derive(Default)]
struct View {
    /// By topic (the same as each mirror's `topic`, as a plain string to look up by `&str`).
    mirror: BTreeMap<Arc<str>, Mirror>,
    events: VecDeque<StateEvent>,
    /// Collections (or patterns) whose mirror may have missed changes, and how a snapshot is to
    /// catch them up.
    stale: Vec<(String, Resync)>,
}

/// How a snapshot brings the mirror of a pattern's collections up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resync {
    /// The watch begins: every entry is `Created`.
    Initial,
    /// Changes were missed: collections the snapshot has newer are caught up.
    Newer,
    /// The watch was made again at a new broker, whose sequence numbers start anew: the
    /// snapshot is the truth, and collections it lacks are emptied.
    Replace,
}

impl std::fmt::Debug for StateWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatcher")
            .field("patterns", &self.patterns)
            .field("collections", &self.view.mirror.len())
            .finish()
    }
}

impl StateWatcher {
    /// The next event, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<StateEvent, WatchError> {
        self.next(Patience::Until(Deadline::Never))
    }

    /// The next event if one is there: [`WatchError::Empty`] if not.
    pub fn try_recv(&mut self) -> Result<StateEvent, WatchError> {
        self.next(Patience::Now)
    }

    /// The next event, waiting up to `timeout`: [`WatchError::Timeout`] then.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<StateEvent, WatchError> {
        self.next(Patience::Until(Deadline::After(timeout)))
    }

    /// The next event, waiting until `deadline`: [`WatchError::Timeout`] then.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<StateEvent, WatchError> {
        self.next(Patience::Until(Deadline::At(deadline)))
    }

    /// The value of `key` in collection `topic`.
    pub fn get(&self, topic: &str, key: &str) -> Option<&StateValue> {
        self.view.mirror.get(topic)?.entries.get(key)
    }

    /// Every entry of collection `topic` (empty if it has none or is not watched).
    pub fn get_all(&self, topic: &str) -> impl Iterator<Item = (&str, &StateValue)> {
        self.view
            .mirror
            .get(topic)
            .into_iter()
            .flat_map(|m| m.entries.iter().map(|(k, v)| (&**k, v)))
    }

    /// Every entry of every watched collection: (topic, key, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &StateValue)> {
        self.view
            .mirror
            .iter()
            .flat_map(|(t, m)| m.entries.iter().map(move |(k, v)| (&**t, &**k, v)))
    }

    /// The restart counter of collection `topic`.
    pub fn restarted(&self, topic: &str) -> u64 {
        self.view.mirror.get(topic).map_or(0, |m| m.restarted)
    }

    /// The watched collections' topics.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.view.mirror.keys().map(|t| &**t)
    }

    fn next(&mut self, patience: Patience) -> Result<StateEvent, WatchError> {
        loop {
            if let Some(event) = self.view.events.pop_front() {
                return Ok(event);
            }
            if let Some((pattern, how)) = self.view.stale.pop() {
                if let Err(e) = self.resync(&pattern, how) {
                    self.view.stale.push((pattern.clone(), how));
                    return Err(WatchError::Snapshot { pattern, detail: e });
                }
                continue;
            }
            self.read(patience)?;
        }
    }

    /// Reads one record (waiting with `patience`) and applies it.
    fn read(&mut self, patience: Patience) -> Result<(), WatchError> {
        let view = &mut self.view;
        let waited = match &mut self.source {
            Source::Rings { sub, .. } => match sub.next(patience, || false) {
                Ok(sample) => {
                    view.record(sample.topic_ref(), sample.payload());
                    return Ok(());
                }
                Err(waited) => waited,
            },
            Source::Remote(sub) => match sub.next(patience, || false) {
                Ok(message) => {
                    view.record(&message.topic, &message.payload);
                    return Ok(());
                }
                Err(waited) => waited,
            },
        };
        match waited {
            Wait::Empty => Err(WatchError::Empty),
            Wait::Timeout => Err(WatchError::Timeout),
            Wait::Stopped => Ok(()),
            Wait::Failed(e) => view.read_failed(e),
        }
    }

    /// Brings the collections of `pattern` up to date from a snapshot, `how` says, with the
    /// events that lead there.
    fn resync(&mut self, pattern: &str, how: Resync) -> Result<(), String> {
        let bytes = self.source.snapshot(pattern)?;
        let collections = snapshot::parse(&bytes).map_err(|e| e.to_string())?;
        self.view.catch_up(pattern, collections, how)
    }
}

impl View {
    /// Applies a record of collection `topic`, or marks the collection to be caught up.
    fn record(&mut self, topic: &Topic, payload: &[u8]) {
        let m = match self.mirror.get_mut(topic.as_str()) {
            Some(m) => m,
            None => (self.mirror)
                .entry(Arc::from(topic.as_str()))
                .or_insert_with(|| Mirror::new(topic.clone())),
        };
        let topic = topic.as_str();
        match Record::decode(payload) {
            // Already in the snapshot.
            Ok((seq, _)) if seq <= m.seq => {}
            Ok((seq, record)) if seq == m.seq + 1 => {
                m.seq = seq;
                m.apply(record, &mut self.events);
            }
            Ok((seq, _)) => {
                debug!(
                    topic,
                    seq,
                    expected = m.seq + 1,
                    "missed state changes; catching up"
                );
                self.stale.push((topic.to_string(), Resync::Newer));
            }
            Err(e) => {
                warn!(
                    topic,
                    "malformed state record: {e}; catching up from a snapshot"
                );
                self.stale.push((topic.to_string(), Resync::Newer));
            }
        }
    }

    #[cold]
    fn read_failed(&mut self, e: RecvError) -> Result<(), WatchError> {
        match e {
            RecvError::Unavailable { topic, detail } => {
                Err(WatchError::Unavailable { topic, detail })
            }
            // Watching again at a new broker (or through a new connection to the gateway),
            // whose sequence numbers may start anew.
            RecvError::Lagged {
                topic,
                missed: RecvError::MISSED_UNKNOWN,
            } => {
                self.stale.push((topic.into_string(), Resync::Replace));
                Ok(())
            }
            // Evicted, or a record skipped: the snapshot says what it was.
            RecvError::Lagged { topic, .. }
            | RecvError::Corrupt { topic, .. }
            | RecvError::HeldLimit { topic, .. }
            | RecvError::TypeMismatch { topic, .. }
            | RecvError::Invalid { topic, .. } => {
                self.stale.push((topic.as_str().to_string(), Resync::Newer));
                Ok(())
            }
            // Its rings go on; what changed meanwhile comes with the new broker's snapshot.
            RecvError::BrokerLost => Ok(()),
        }
    }

    /// Brings the collections of `pattern` to `collections` (a snapshot's), `how` says, with
    /// the events that lead there.
    fn catch_up(
        &mut self,
        pattern: &str,
        collections: Vec<snapshot::Collection<'_>>,
        how: Resync,
    ) -> Result<(), String> {
        if how == Resync::Replace {
            let pattern = Topic::new(pattern).map_err(|e| e.to_string())?;
            let gone = self.mirror.values_mut().filter(|m| {
                pattern.matches(&m.topic)
                    && !collections.iter().any(|c| c.topic == m.topic.as_str())
            });
            for m in gone {
                let topic = m.topic.clone();
                let empty = snapshot::Collection {
                    topic: topic.as_str(),
                    seq: 0,
                    restarted: 0,
                    persistent: false,
                    owned: false,
                    entries: Vec::new(),
                };
                m.catch_up(&empty, false, &mut self.events);
            }
        }
        for c in collections {
            let topic = Topic::new(c.topic).map_err(|e| format!("the snapshot holds {e}"))?;
            let m = self
                .mirror
                .entry(Arc::from(c.topic))
                .or_insert_with(|| Mirror::new(topic));
            if how == Resync::Newer && c.seq <= m.seq {
                continue;
            }
            m.catch_up(&c, how == Resync::Initial, &mut self.events);
        }
        Ok(())
    }
}

impl Mirror {
    fn new(topic: Topic) -> Mirror {
        Mirror {
            topic,
            entries: Entries::default(),
            seq: 0,
            restarted: 0,
        }
    }

    /// Sets `key` to `value`, queueing `Created` or `Modified`.
    fn put(&mut self, key: &str, value: &[u8], events: &mut VecDeque<StateEvent>) {
        let topic = self.topic.clone();
        let new = StateValue::copy(value);
        match self.entries.get_key_value_mut(key) {
            Some((key, slot)) => {
                let key = Arc::clone(key);
                let old = std::mem::replace(slot, new.clone());
                events.push_back(StateEvent::Modified {
                    topic,
                    key,
                    old,
                    new,
                });
            }
            None => {
                let key: Arc<str> = Arc::from(key);
                self.entries.insert(Arc::clone(&key), new.clone());
                events.push_back(StateEvent::Created {
                    topic,
                    key,
                    value: new,
                });
            }
        }
    }

    /// Applies `record`, queueing the events it makes.
    fn apply(&mut self, record: Record<'_>, events: &mut VecDeque<StateEvent>) {
        match record {
            Record::Put { key, value } => self.put(key, value, events),
            Record::Remove { key } => {
                if let Some((key, value)) = self.entries.remove_entry(key) {
                    let topic = self.topic.clone();
                    events.push_back(StateEvent::Deleted { topic, key, value });
                }
            }
            Record::Restarted(count) => {
                self.restarted = count;
                let topic = self.topic.clone();
                events.push_back(StateEvent::Restarted { topic, count });
            }
            Record::Clear => {
                let mut gone: Vec<(Arc<str>, StateValue)> = self.entries.drain().collect();
                gone.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (key, value) in gone {
                    let topic = self.topic.clone();
                    events.push_back(StateEvent::Deleted { topic, key, value });
                }
            }
        }
    }

    /// Brings the mirror to collection `c` of a snapshot, queueing the events that lead there
    /// (`initial`: the first snapshot, whose restart counter is reported apart).
    fn catch_up(
        &mut self,
        c: &snapshot::Collection<'_>,
        initial: bool,
        events: &mut VecDeque<StateEvent>,
    ) {
        let was_empty = self.entries.is_empty();
        if !was_empty {
            let fresh: foldhash::HashMap<&str, &[u8]> = c.entries.iter().copied().collect();
            let mut gone: Vec<Arc<str>> = self
                .entries
                .keys()
                .filter(|k| !fresh.contains_key(&***k))
                .cloned()
                .collect();
            gone.sort_unstable();
            for key in gone {
                let value = self.entries.remove(&key).expect("listed");
                let topic = self.topic.clone();
                events.push_back(StateEvent::Deleted { topic, key, value });
            }
        }
        self.entries.reserve(c.entries.len());
        // Entries come sorted by key: they are reported in that order.
        for &(key, value) in &c.entries {
            if !was_empty && self.entries.get(key).is_some_and(|old| **old == *value) {
                continue;
            }
            self.put(key, value, events);
        }
        if !initial && c.restarted != self.restarted {
            events.push_back(StateEvent::Restarted {
                topic: self.topic.clone(),
                count: c.restarted,
            });
        }
        self.restarted = c.restarted;
        self.seq = c.seq;
    }
}
