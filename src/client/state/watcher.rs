//! Watching collections: [`StateWatcher`] and its [`StateEvent`]s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmbus_shm::{Deadline, ReaderOptions, WaitStrategy};
use tracing::{debug, warn};

use super::error::WatchError;
use super::fetch_snapshot;
use super::value::StateValue;
use crate::client::bus::BusInner;
use crate::client::error::{AttachError, CallError};
use crate::client::pubsub::{Patience, RecvError, RingSubscriber, Wait};
use crate::protocol::state::{Record, WatchState, snapshot};
use crate::topic::Topic;

/// A change of a watched collection, or a step of the watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEvent {
    /// `key` appeared (or was there when the watch began).
    Created {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// Its value.
        value: StateValue,
    },
    /// `key`'s value changed.
    Modified {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// The value before.
        old: StateValue,
        /// The value now.
        new: StateValue,
    },
    /// `key` was removed (or its non-persistent collection's owner went).
    Deleted {
        /// The collection.
        topic: String,
        /// The key.
        key: String,
        /// Its last value.
        value: StateValue,
    },
    /// Every entry that existed when the watch began was delivered (once, after them).
    Synchronized,
    /// The collection's owner signalled a restart: the counter is now `count`.
    Restarted {
        /// The collection.
        topic: String,
        /// The restart counter.
        count: u64,
    },
}

/// How a watcher is made; from [`Bus::state_watcher`](crate::Bus::state_watcher).
#[must_use = "a builder does nothing until `create` is called"]
pub struct StateWatcherBuilder {
    bus: Arc<BusInner>,
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
    pub(crate) fn new(bus: Arc<BusInner>, pattern: &str) -> StateWatcherBuilder {
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
        let first = self.patterns.first().map_or("", String::as_str);
        // Tethered, from where the broker joined each reader: the keeper's snapshot holds
        // everything claimed before, so nothing is missed and nothing read is unprotected.
        let options = ReaderOptions::default();
        let mut sub = RingSubscriber::open(Arc::clone(&self.bus), options, 0, self.wait, first)?;
        let mut patterns = Vec::new();
        for p in &self.patterns {
            let pattern = Topic::new(p)?;
            let watch = |doorbell| WatchState {
                pattern: pattern.as_str().to_string(),
                doorbell,
            };
            sub.attach_with(watch, |reply| reply.subscription)
                .map_err(|e| AttachError::call(pattern.as_str(), e))?;
            patterns.push(pattern);
        }
        let mut watcher = StateWatcher {
            bus: self.bus,
            sub,
            patterns,
            mirror: BTreeMap::new(),
            events: VecDeque::new(),
            stale: Vec::new(),
        };
        for pattern in watcher.patterns.clone() {
            watcher
                .resync(pattern.as_str(), true)
                .map_err(|e| AttachError::shm(pattern.as_str(), e))?;
        }
        watcher.events.push_back(StateEvent::Synchronized);
        let restarts: Vec<StateEvent> = watcher
            .mirror
            .iter()
            .filter(|(_, m)| m.restarted != 0)
            .map(|(topic, m)| StateEvent::Restarted {
                topic: topic.clone(),
                count: m.restarted,
            })
            .collect();
        watcher.events.extend(restarts);
        Ok(watcher)
    }
}

/// One collection as the watcher mirrors it.
#[derive(Default)]
struct Mirror {
    entries: HashMap<String, StateValue>,
    seq: u64,
    restarted: u64,
}

/// Mirrors the collections of its patterns and reports their changes as [`StateEvent`]s: first
/// every entry as `Created`, then `Synchronized`, then `Restarted` for collections whose counter
/// is not zero, then every change in the order its owner made it. The mirror
/// ([`get`](StateWatcher::get), [`iter`](StateWatcher::iter)) holds what the events delivered so
/// far and those waiting to be received.
pub struct StateWatcher {
    bus: Arc<BusInner>,
    sub: RingSubscriber,
    patterns: Vec<Topic>,
    mirror: BTreeMap<String, Mirror>,
    events: VecDeque<StateEvent>,
    /// Collections whose mirror may have missed changes: a snapshot catches them up.
    stale: Vec<String>,
}

impl std::fmt::Debug for StateWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatcher")
            .field("patterns", &self.patterns)
            .field("collections", &self.mirror.len())
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
        self.mirror.get(topic)?.entries.get(key)
    }

    /// Every entry of collection `topic` (empty if it has none or is not watched).
    pub fn get_all(&self, topic: &str) -> impl Iterator<Item = (&str, &StateValue)> {
        self.mirror
            .get(topic)
            .into_iter()
            .flat_map(|m| m.entries.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Every entry of every watched collection: (topic, key, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &StateValue)> {
        self.mirror.iter().flat_map(|(t, m)| {
            m.entries
                .iter()
                .map(move |(k, v)| (t.as_str(), k.as_str(), v))
        })
    }

    /// The restart counter of collection `topic`.
    pub fn restarted(&self, topic: &str) -> u64 {
        self.mirror.get(topic).map_or(0, |m| m.restarted)
    }

    /// The watched collections' topics.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.mirror.keys().map(String::as_str)
    }

    fn next(&mut self, patience: Patience) -> Result<StateEvent, WatchError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if let Some(topic) = self.stale.pop() {
                if let Err(e) = self.resync(&topic, false) {
                    self.stale.push(topic.clone());
                    return Err(WatchError::Snapshot {
                        pattern: topic,
                        detail: e,
                    });
                }
                continue;
            }
            self.read(patience)?;
        }
    }

    /// Reads one record (waiting with `patience`) and applies it.
    fn read(&mut self, patience: Patience) -> Result<(), WatchError> {
        let failed = match self.sub.next(patience, || false) {
            Ok(sample) => {
                let topic = sample.topic();
                let m = self.mirror.entry(topic.to_string()).or_default();
                match Record::decode(sample.payload()) {
                    // Already in the snapshot.
                    Ok((seq, _)) if seq <= m.seq => {}
                    Ok((seq, record)) if seq == m.seq + 1 => {
                        m.seq = seq;
                        apply(topic, m, record, &mut self.events);
                    }
                    Ok((seq, _)) => {
                        debug!(
                            topic,
                            seq,
                            expected = m.seq + 1,
                            "missed state changes; catching up"
                        );
                        self.stale.push(topic.to_string());
                    }
                    Err(e) => {
                        warn!(
                            topic,
                            "malformed state record: {e}; catching up from a snapshot"
                        );
                        self.stale.push(topic.to_string());
                    }
                }
                return Ok(());
            }
            Err(Wait::Empty) => return Err(WatchError::Empty),
            Err(Wait::Timeout) => return Err(WatchError::Timeout),
            Err(Wait::Stopped) => return Ok(()),
            Err(Wait::Failed(e)) => e,
        };
        self.read_failed(failed)
    }

    #[cold]
    fn read_failed(&mut self, e: RecvError) -> Result<(), WatchError> {
        match e {
            RecvError::Unavailable { topic, detail } => {
                Err(WatchError::Unavailable { topic, detail })
            }
            // Evicted, or a record skipped: the snapshot says what it was.
            RecvError::Lagged { topic, .. }
            | RecvError::Corrupt { topic, .. }
            | RecvError::HeldLimit { topic, .. }
            | RecvError::TypeMismatch { topic, .. }
            | RecvError::Invalid { topic, .. } => {
                self.stale.push(topic.as_str().to_string());
                Ok(())
            }
        }
    }

    /// Brings the collections of `pattern` up to date from a snapshot, with the events that
    /// lead there (`initial`: every entry is `Created`).
    fn resync(&mut self, pattern: &str, initial: bool) -> Result<(), String> {
        let bytes = fetch_snapshot(&self.bus, pattern).map_err(|e| match e {
            CallError::Request(e) => e.to_string(),
            CallError::Refused(r) => r.message,
        })?;
        let collections = snapshot::parse(&bytes).map_err(|e| e.to_string())?;
        for c in collections {
            let m = self.mirror.entry(c.topic.to_string()).or_default();
            if !initial && c.seq <= m.seq {
                continue;
            }
            let topic = c.topic;
            let mut fresh: HashMap<&str, &[u8]> = c.entries.iter().copied().collect();
            let mut keys: Vec<String> = m.entries.keys().cloned().collect();
            keys.sort_unstable();
            for key in keys {
                match fresh.remove(key.as_str()) {
                    None => {
                        let value = m.entries.remove(&key).expect("listed");
                        let topic = topic.to_string();
                        self.events
                            .push_back(StateEvent::Deleted { topic, key, value });
                    }
                    Some(new) if *m.entries[&key] != *new => {
                        let new = StateValue::copy(new);
                        let old = m.entries.insert(key.clone(), new.clone()).expect("listed");
                        let topic = topic.to_string();
                        self.events.push_back(StateEvent::Modified {
                            topic,
                            key,
                            old,
                            new,
                        });
                    }
                    Some(_) => {}
                }
            }
            let mut created: Vec<(&str, &[u8])> = fresh.into_iter().collect();
            created.sort_unstable_by_key(|(k, _)| *k);
            for (key, value) in created {
                let value = StateValue::copy(value);
                m.entries.insert(key.to_string(), value.clone());
                self.events.push_back(StateEvent::Created {
                    topic: topic.to_string(),
                    key: key.to_string(),
                    value,
                });
            }
            if !initial && c.restarted != m.restarted {
                self.events.push_back(StateEvent::Restarted {
                    topic: topic.to_string(),
                    count: c.restarted,
                });
            }
            m.restarted = c.restarted;
            m.seq = c.seq;
        }
        Ok(())
    }
}

/// Applies `record` to mirror `m` of collection `topic`, queueing the events it makes.
fn apply(topic: &str, m: &mut Mirror, record: Record<'_>, events: &mut VecDeque<StateEvent>) {
    let topic = || topic.to_string();
    match record {
        Record::Put { key, value } => {
            let new = StateValue::copy(value);
            match m.entries.insert(key.to_string(), new.clone()) {
                None => events.push_back(StateEvent::Created {
                    topic: topic(),
                    key: key.to_string(),
                    value: new,
                }),
                Some(old) => events.push_back(StateEvent::Modified {
                    topic: topic(),
                    key: key.to_string(),
                    old,
                    new,
                }),
            }
        }
        Record::Remove { key } => {
            if let Some(value) = m.entries.remove(key) {
                events.push_back(StateEvent::Deleted {
                    topic: topic(),
                    key: key.to_string(),
                    value,
                });
            }
        }
        Record::Restarted(count) => {
            m.restarted = count;
            events.push_back(StateEvent::Restarted {
                topic: topic(),
                count,
            });
        }
        Record::Clear => {
            let mut gone: Vec<(String, StateValue)> = m.entries.drain().collect();
            gone.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in gone {
                events.push_back(StateEvent::Deleted {
                    topic: topic(),
                    key,
                    value,
                });
            }
        }
    }
}
