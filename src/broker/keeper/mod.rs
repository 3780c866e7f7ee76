//! The state keeper: a thread of the broker process that mirrors every state collection, stores
//! the persistent ones, and answers snapshot and sync requests.
//!
//! It reads every state ring as a tethered reader the broker reserved for it when the ring was
//! created (so it misses nothing). While changes come it reads the rings every [`POLL`] without
//! asking owners to wake it — a wake-up would be a system call of the owner's and a thread switch
//! per change — and after [`BUSY_FOR`] without changes it parks on its doorbell until a change
//! wakes it, like any subscriber. The core hands it jobs through a channel (and rings its
//! doorbell); its answers go to the event loop through another channel, which wakes the loop to
//! send them. A snapshot is answered once each ring it covers was read up to its claim cursor
//! at the time of the request (see `docs/PROTOCOL.md`). Persistent changes are written one file
//! per key ([`store`]) in the order they were made, a bounded batch between two reads of the
//! rings, so a slow disk delays persistence but never the reading. No collection is mirrored
//! beyond [`KeeperSetup::max_bytes`].

mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::Waker;
use shmbus_shm::{Doorbell, Owner, ReaderOptions, ReaderSet, Ring, TryLoanError, Writer};
use tracing::{debug, error, warn};

use super::core::{KeeperJob, Outgoing};
use crate::protocol::state::snapshot;
use crate::protocol::state::{Record, SnapshotReady, entry_size};
use crate::protocol::{BrokerMessage, ClientId, ErrorCode, ErrorReply, Reply, RequestId};
use crate::topic::{Topic, overlaps};
use store::Store;

/// Persistent changes written between two reads of the rings.
const PERSIST_BATCH: usize = 64;

/// Longest park: the stop flag is looked at this often.
const PARK: Duration = Duration::from_millis(100);

/// While changes come, the rings are read this often (rather than on a wake-up per change).
const POLL: Duration = Duration::from_millis(2);

/// How long after the last change the keeper goes on polling before it parks until woken.
const BUSY_FOR: Duration = Duration::from_millis(100);

/// Longest wait of a snapshot for claims made before it was asked to be committed (a dead
/// owner's is repaired within a second).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// The id stamped on the frames the keeper writes.
const KEEPER_WRITER_ID: u32 = 0;

/// What the keeper starts with.
pub(super) struct KeeperSetup {
    /// Most bytes (keys and values) of one collection.
    pub max_bytes: u64,
    /// Jobs from the core.
    pub jobs: Receiver<KeeperJob>,
    /// Set by the core after each job.
    pub pending: Arc<AtomicBool>,
    /// The keeper's doorbell.
    pub doorbell: Arc<Doorbell>,
    /// The owner token of its readers.
    pub reader_owner: Owner,
    /// The owner token of its writers.
    pub writer_owner: Owner,
    /// Answers for the event loop.
    pub answers: Sender<Outgoing>,
    /// What wakes the event loop to send them.
    pub waker: Arc<Waker>,
    /// Set when the broker stops.
    pub stop: Arc<AtomicBool>,
}

/// One collection's mirror.
#[derive(Default)]
struct Collection {
    /// Sorted, so snapshots are (watchers report the entries in this order).
    entries: BTreeMap<String, Vec<u8>>,
    /// Sequence number of the last change applied.
    seq: u64,
    restarted: u64,
    persistent: bool,
    owned: bool,
    /// The keeper's writer on the ring (for [`Record::Clear`]), once it has one.
    writer: Option<Writer>,
    /// Whether a clear waits for room in the ring.
    clear_pending: bool,
    /// Bytes of its keys and values.
    bytes: u64,
    /// Whether puts beyond its quota were refused (and reported) since it was last under it.
    over_quota: bool,
    /// Changes not yet on disk: key (or `None`: the counter) -> the change's sequence number.
    dirty: HashMap<Option<String>, u64>,
    /// The same, in the order they were made.
    dirty_order: BTreeSet<(u64, Option<String>)>,
}

impl Collection {
    /// Notes that `what` (a key, or `None`: the restart counter) changed, to be stored.
    fn mark(&mut self, what: Option<&str>) {
        if !self.persistent {
            return;
        }
        let what = what.map(str::to_string);
        if let Some(old) = self.dirty.insert(what.clone(), self.seq) {
            self.dirty_order.remove(&(old, what.clone()));
        }
        self.dirty_order.insert((self.seq, what));
    }

    /// Everything up to this sequence number is on disk (or needs not be).
    fn stored_through(&self) -> u64 {
        self.dirty_order
            .first()
            .map_or(self.seq, |(seq, _)| seq.saturating_sub(1))
    }

    /// Applies change `seq`; a put that would take the collection beyond `max_bytes` is not
    /// mirrored (the owner's client refuses such puts: only a faulty one writes them).
    fn apply(&mut self, topic: &str, seq: u64, record: Record<'_>, max_bytes: u64) {
        if seq <= self.seq {
            debug!(topic, seq, "stale state record ignored");
            return;
        }
        if seq != self.seq + 1 {
            warn!(
                topic,
                seq,
                expected = self.seq + 1,
                "gap in a state ring's sequence"
            );
        }
        self.seq = seq;
        match record {
            Record::Put { key, value } => {
                // One lookup: the entry's size, and its buffer to reuse when the key exists.
                let slot = self.entries.get_mut(key);
                let old = slot.as_deref().map_or(0, |v| entry_size(key, v));
                let bytes = self.bytes - old + entry_size(key, value);
                if bytes > max_bytes && bytes > self.bytes {
                    if !self.over_quota {
                        self.over_quota = true;
                        warn!(
                            topic,
                            key, max_bytes, "a put beyond the collection's quota is not mirrored"
                        );
                    }
                    return;
                }
                self.over_quota = false;
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
                self.mark(Some(key));
            }
            Record::Remove { key } => {
                if let Some(v) = self.entries.remove(key) {
                    self.bytes -= entry_size(key, &v);
                }
                self.mark(Some(key));
            }
            Record::Restarted(n) => {
                self.restarted = n;
                self.mark(None);
            }
            Record::Clear => {
                self.bytes = 0;
                let keys: Vec<String> = std::mem::take(&mut self.entries).into_keys().collect();
                for key in keys {
                    self.mark(Some(&key));
                }
            }
        }
    }
}

/// A snapshot request waiting for the keeper to read its rings up to `targets`: (ring id,
/// sequence number of the ring's next claim when it was asked).
struct PendingSnapshot {
    client: ClientId,
    id: RequestId,
    pattern: Topic,
    targets: Vec<(u64, u64)>,
    /// Answered then whatever was read: the targets come from shared memory, which a faulty
    /// owner may have scribbled on, and a claim of a stopped owner is taken back only after the
    /// broker's unblock timeout (the watcher then catches up from a later snapshot).
    until: Instant,
}

/// A sync request waiting for its collection to be stored.
struct PendingSync {
    client: ClientId,
    id: RequestId,
    topic: String,
    through: u64,
}

/// The keeper's state.
pub(super) struct Keeper {
    setup: KeeperSetup,
    readers: ReaderSet<Topic>,
    collections: BTreeMap<String, Collection>,
    store: Option<Store>,
    syncs: Vec<PendingSync>,
    snapshots: Vec<PendingSnapshot>,
    /// Most frames [`Keeper::drain`] reads: what all the rings can hold.
    drain_bound: u64,
}

impl Keeper {
    /// A keeper storing persistent collections in `state_dir` (loaded now), if given.
    pub(super) fn new(setup: KeeperSetup, state_dir: Option<&Path>) -> std::io::Result<Keeper> {
        let mut collections = BTreeMap::new();
        let store = match state_dir {
            Some(dir) => {
                let (store, loaded) = Store::open(dir)?;
                for (topic, c) in loaded {
                    let bytes = c.entries.iter().map(|(k, v)| entry_size(k, v)).sum();
                    let collection = Collection {
                        bytes,
                        entries: c.entries.into_iter().collect(),
                        restarted: c.restarted,
                        persistent: true,
                        ..Collection::default()
                    };
                    collections.insert(topic.as_str().to_string(), collection);
                }
                Some(store)
            }
            None => None,
        };
        let readers = ReaderSet::new(Arc::clone(&setup.doorbell));
        Ok(Keeper {
            setup,
            readers,
            collections,
            store,
            syncs: Vec::new(),
            snapshots: Vec::new(),
            drain_bound: 0,
        })
    }

    /// Runs until the broker stops.
    pub(super) fn run(mut self) {
        let mut last_change = Instant::now();
        // Acquire pairs with the Release store of the broker's stop.
        while !self.setup.stop.load(Ordering::Acquire) {
            self.take_jobs();
            if self.drain() > 0 {
                last_change = Instant::now();
            }
            self.write_clears();
            let more = self.persist();
            self.answer_syncs();
            self.answer_snapshots();
            if more {
                continue;
            }
            let pending = &self.setup.pending;
            // Acquire pairs with the Release store after the core sends a job.
            let also = || pending.load(Ordering::Acquire);
            if last_change.elapsed() < BUSY_FOR {
                // Changes are coming: look again shortly, without asking owners to wake us (a
                // wake-up is a system call of theirs, and a thread switch on a small machine,
                // per change). Jobs still ring the doorbell.
                let doorbell = self.readers.doorbell();
                let armed = doorbell.arm();
                if !also() {
                    doorbell.sleep(armed, Some(POLL));
                }
            } else {
                self.readers.park(Some(Instant::now() + PARK), &also);
            }
        }
    }

    fn take_jobs(&mut self) {
        // AcqRel: the Release store of the core's `to_keeper` happened before; jobs sent after
        // this swap set it again.
        if !self.setup.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        while let Ok(job) = self.setup.jobs.try_recv() {
            self.job(job);
        }
    }

    fn job(&mut self, job: KeeperJob) {
        match job {
            KeeperJob::Track {
                topic,
                ring,
                reader,
            } => self.track(topic, ring, reader),
            KeeperJob::Own { topic, persistent } => {
                self.drain();
                self.write_clears();
                self.own(&topic, persistent);
            }
            KeeperJob::Disown { topic } => {
                self.drain();
                if let Some(c) = self.collections.get_mut(topic.as_str()) {
                    c.owned = false;
                    c.clear_pending = !c.persistent;
                }
                self.write_clears();
            }
            KeeperJob::Snapshot {
                client,
                id,
                pattern,
            } => {
                self.drain();
                self.write_clears();
                // Every ring of the pattern up to its claim cursor now: past the point where the
                // one who asked joined it, and past any claim made before (committed later).
                let targets = self
                    .readers
                    .readers()
                    .iter()
                    .filter(|r| overlaps(&pattern, r.label()))
                    .map(|r| (r.ring().id(), r.ring().head().sequence))
                    .collect();
                self.snapshots.push(PendingSnapshot {
                    client,
                    id,
                    pattern,
                    targets,
                    until: Instant::now() + SNAPSHOT_WAIT,
                });
                self.answer_snapshots();
            }
            KeeperJob::Sync { client, id, topic } => {
                self.drain();
                let through = self.collections.get(topic.as_str()).map_or(0, |c| c.seq);
                self.syncs.push(PendingSync {
                    client,
                    id,
                    topic: topic.as_str().to_string(),
                    through,
                });
            }
        }
    }

    fn track(&mut self, topic: Topic, ring: Ring, reader: shmbus_shm::ReservedReader) {
        let options = ReaderOptions::default();
        let adopted = ring.adopt_reader(
            reader,
            options,
            self.readers.doorbell(),
            self.setup.reader_owner,
            topic.clone(),
        );
        let writer = ring.writer(KEEPER_WRITER_ID, self.setup.writer_owner);
        match (adopted, writer) {
            (Ok(reader), Ok(writer)) => {
                self.readers.insert(reader);
                // A frame takes at least 32 bytes.
                self.drain_bound += ring.config().capacity / 32;
                let c = self
                    .collections
                    .entry(topic.as_str().to_string())
                    .or_default();
                c.writer = Some(writer);
            }
            (Err(e), _) | (_, Err(e)) => {
                error!(topic = %topic, "the keeper cannot use a state ring: {e}");
            }
        }
    }

    fn own(&mut self, topic: &Topic, persistent: bool) {
        let c = self
            .collections
            .entry(topic.as_str().to_string())
            .or_default();
        if c.clear_pending {
            // The ring had no room for the last owner's clear: it happens here, and watchers
            // find the gap in the sequence and catch up from a snapshot.
            c.clear_pending = false;
            let seq = c.seq + 1;
            c.apply(topic.as_str(), seq, Record::Clear, u64::MAX);
        }
        c.owned = true;
        if c.persistent == persistent {
            return;
        }
        c.persistent = persistent;
        if persistent {
            // Everything it holds goes to disk.
            let keys: Vec<String> = c.entries.keys().cloned().collect();
            for key in keys {
                c.mark(Some(&key));
            }
            if c.restarted != 0 {
                c.mark(None);
            }
        } else {
            c.dirty.clear();
            c.dirty_order.clear();
            if let Some(store) = &mut self.store {
                if let Err(e) = store.drop_collection(topic.as_str()) {
                    error!(topic = %topic, "cannot delete the stored collection: {e}");
                }
            }
        }
    }

    /// Reads every ring to where its head was when this began (at most: what a ring can hold
    /// behind its head, for each ring), so that an owner writing without pause cannot keep the
    /// keeper here.
    /// Returns how many frames it read.
    fn drain(&mut self) -> u64 {
        let max_bytes = self.setup.max_bytes;
        for read in 0..self.drain_bound {
            match self.readers.poll() {
                Ok(Some(index)) => {
                    let Some(frame) = self.readers.frame(index) else {
                        continue;
                    };
                    let topic = frame.label().as_str();
                    let Some(c) = self.collections.get_mut(topic) else {
                        continue;
                    };
                    match Record::decode(frame.payload()) {
                        Ok((seq, record)) => c.apply(topic, seq, record, max_bytes),
                        Err(e) => warn!(topic, "malformed state record skipped: {e}"),
                    }
                }
                Ok(None) => return read,
                Err(e) => {
                    let topic = self.readers.readers()[e.index].label().clone();
                    warn!(topic = %topic, "reading a state ring: {}", e.error);
                }
            }
        }
        self.drain_bound
    }

    /// Writes the clears that wait, as far as their rings have room.
    fn write_clears(&mut self) {
        for (topic, c) in &mut self.collections {
            if !c.clear_pending {
                continue;
            }
            let Some(writer) = c.writer.as_mut() else {
                c.clear_pending = false;
                continue;
            };
            let record = Record::Clear;
            let seq = c.seq + 1;
            let committed = writer.try_loan(record.encoded_len()).map(|mut loan| {
                record.encode(seq, loan.as_mut_slice());
                loan.commit()
            });
            match committed {
                // Applied now, not when read back: a frame of the dead owner still being
                // repaired may stand before it in the ring, and the next owner must start after
                // the clear. Read back, it is stale and ignored.
                Ok(Ok(_)) => {
                    c.clear_pending = false;
                    c.apply(topic, seq, record, u64::MAX);
                }
                Ok(Err(e)) => warn!(topic, "clearing a collection: {e}"),
                // Watchers behind: retried after the next read (eviction bounds the wait).
                Err(TryLoanError::Full) => {}
                Err(e) => {
                    warn!(topic, "cannot clear a collection: {e}");
                    c.clear_pending = false;
                }
            }
        }
    }

    /// Writes up to [`PERSIST_BATCH`] changes to disk; whether more wait.
    fn persist(&mut self) -> bool {
        let Some(store) = &mut self.store else {
            return false;
        };
        let mut written = 0;
        for (topic, c) in &mut self.collections {
            while written < PERSIST_BATCH {
                let Some((seq, what)) = c.dirty_order.pop_first() else {
                    break;
                };
                c.dirty.remove(&what);
                written += 1;
                let result = match &what {
                    None => store.set_restarted(topic, c.restarted),
                    Some(key) => match c.entries.get(key) {
                        Some(value) => store.put(topic, key, value),
                        None => store.remove(topic, key),
                    },
                };
                if let Err(e) = result {
                    error!(topic, key = ?what, seq, "cannot store a state change: {e}");
                }
            }
        }
        written == PERSIST_BATCH
    }

    /// Answers the sync requests whose changes are stored.
    fn answer_syncs(&mut self) {
        let mut i = 0;
        while i < self.syncs.len() {
            let s = &self.syncs[i];
            let stored = self
                .collections
                .get(&s.topic)
                .is_none_or(|c| c.stored_through() >= s.through);
            if stored {
                let s = self.syncs.swap_remove(i);
                self.answer(s.client, s.id, Ok((Reply::Done, None)));
            } else {
                i += 1;
            }
        }
    }

    /// Answers the snapshot requests whose rings were read far enough (or that waited long
    /// enough).
    fn answer_snapshots(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.snapshots.len() {
            let s = &self.snapshots[i];
            let readers = self.readers.readers();
            let reached = s.targets.iter().all(|&(ring, target)| {
                readers
                    .iter()
                    .find(|r| r.ring().id() == ring)
                    .is_none_or(|r| r.next_sequence() >= target)
            });
            if reached || now >= s.until {
                if !reached {
                    warn!(pattern = %s.pattern, "snapshot made before a claim was committed");
                }
                let s = self.snapshots.swap_remove(i);
                let answer = self.snapshot(&s.pattern);
                self.answer(s.client, s.id, answer);
            } else {
                i += 1;
            }
        }
    }

    /// A snapshot of the collections `pattern` overlaps, in a sealed memfd.
    fn snapshot(&self, pattern: &Topic) -> Result<(Reply, Option<OwnedFd>), ErrorReply> {
        let mut w = snapshot::Writer::default();
        for (topic, c) in &self.collections {
            if !Topic::new(topic).is_ok_and(|t| overlaps(pattern, &t)) {
                continue;
            }
            let entries = c.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            w.collection(topic, c.seq, c.restarted, c.persistent, c.owned, entries);
        }
        let bytes = w.finish();
        let fail = |e: std::io::Error| ErrorReply {
            code: ErrorCode::Internal,
            message: format!("cannot make a snapshot of {pattern:?}: {e}"),
        };
        let fd = memfd(&bytes).map_err(fail)?;
        let len = bytes.len() as u64;
        Ok((Reply::SnapshotReady(SnapshotReady { len }), Some(fd)))
    }

    fn answer(
        &self,
        client: ClientId,
        id: RequestId,
        answer: Result<(Reply, Option<OwnedFd>), ErrorReply>,
    ) {
        let (result, fds) = match answer {
            Ok((reply, fd)) => (Ok(reply), fd.map(|fd| vec![fd])),
            Err(e) => (Err(e), None),
        };
        let out = Outgoing {
            client,
            msg: BrokerMessage::Reply { id, result },
            fds: fds.map_or(
                super::core::Descriptors::None,
                super::core::Descriptors::Owned,
            ),
        };
        if self.setup.answers.send(out).is_ok() {
            // A failed wake delays the answer to the loop's next tick.
            let _ = self.setup.waker.wake();
        }
    }
}

/// A memfd holding `bytes`, sealed against growing and shrinking.
fn memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        "shmbus-state-snapshot",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // Not F_SEAL_WRITE: it fails (EBUSY) while anything still references the pages written,
    // which happens now and then; the client copies the bytes out anyway.
    let seals = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_in_sequence_and_the_quota_holds() {
        let mut c = Collection::default();
        let put = |key, value| Record::Put { key, value };
        c.apply("t", 1, put("a", &[0; 6]), 16);
        c.apply("t", 1, put("a", &[9; 1]), 16); // stale: ignored
        assert_eq!((c.seq, c.bytes), (1, 7));
        c.apply("t", 2, put("b", &[0; 9]), 16); // 7 + 10 > 16: not mirrored
        assert!(c.over_quota && !c.entries.contains_key("b"));
        assert_eq!(c.seq, 2, "the change is numbered all the same");
        c.apply("t", 3, put("a", &[0; 2]), 16); // shrinking is always applied
        c.apply("t", 4, put("b", &[0; 9]), 16); // 3 + 10 fits now
        assert_eq!((c.bytes, c.entries.len()), (13, 2));
        c.apply("t", 5, Record::Remove { key: "a" }, 16);
        assert_eq!(c.bytes, 10);
        c.apply("t", 6, Record::Clear, 16);
        assert_eq!((c.bytes, c.entries.len(), c.seq), (0, 0, 6));
    }
}
