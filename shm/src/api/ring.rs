//! [`Ring`]: a handle to one ring's two segments — creating, opening, attaching writers and
//! readers, and the broker's view and recovery operations.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::api::doorbell::{Doorbell, DoorbellTable};
use crate::api::error::{CreateError, OpenError, SlotError};
use crate::api::owner::Owner;
use crate::api::reader::{Reader, ReaderMode, ReaderOptions};
use crate::api::writer::Writer;
use crate::os::segment::MappedSegment;
use crate::protocol::claim::{WriterCore, wake_parked};
use crate::protocol::layout::{
    Geometry, LayoutError, NO_INTENT, RingConfig, SegmentHeader, SegmentKind, mode,
};
use crate::protocol::memory::{Backing, HeapBacking, RingMemory, read_header, write_header};
use crate::protocol::read::{self, JoinError, ReaderCore};
use crate::protocol::recovery::{self, Repair, UnblockOutcome};
use crate::protocol::sync::{Head, HeadCell, Ordering};

/// Everything a ring's handles share.
pub(crate) struct RingShared {
    pub(crate) mem: RingMemory,
    pub(crate) doorbells: DoorbellTable,
    ring_id: u64,
    segments: Option<(Arc<MappedSegment>, Arc<MappedSegment>)>,
}

impl RingShared {
    /// Rings doorbell `index` of this ring's table.
    pub(crate) fn ring_doorbell(&self, index: u32) {
        self.doorbells.ring(index);
    }

    /// Wakes writers parked waiting for space.
    pub(crate) fn signal_space(&self) {
        let sw = self.mem.space_wait();
        // Taking the count makes this one wake-up per parking: the releases that follow, until a
        // writer parks again, see no waiter and make no system call.
        // SYNC(space): Release pairs with the Acquire half of the writer's increment in
        // `park_for_space`. Both are read-modify-writes of one word, so one comes first: if the
        // increment, we see the waiter and wake it; if this swap, the writer synchronizes
        // with it and its room check sees the position our caller released before calling.
        if sw.waiters.swap(0, Ordering::Release) == 0 {
            return;
        }
        // Release pairs with the writer's Acquire load of the word before it re-checks.
        sw.word.fetch_add(1, Ordering::Release);
        crate::os::futex::wake_all(&sw.word);
    }
}

/// A ring: a broadcast log of variable-length frames in shared memory.
///
/// Cloning is cheap and shares the mappings. Writers and readers keep the ring mapped for as
/// long as they live.
#[derive(Clone)]
pub struct Ring {
    pub(crate) shared: Arc<RingShared>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("id", &format_args!("{:#x}", self.shared.ring_id))
            .field("config", &self.config())
            .field("writable", &self.is_writable())
            .finish()
    }
}

/// A ring as its creator describes it to others (see [`Ring::attach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSpec {
    /// The ring's random id.
    pub id: u64,
    /// Its sizes.
    pub config: RingConfig,
    /// The key of its commit stamps.
    pub stamp_key: u64,
}

/// The claim cursor: where the next frame goes and which sequence number it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHead {
    /// Absolute byte position of the next claim (bytes ever claimed).
    pub position: u64,
    /// Sequence number of the next claim (claims ever made).
    pub sequence: u64,
}

/// How a reader slot is being used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderState {
    /// Holds writers back until it has read.
    Tethered,
    /// Never holds writers back.
    Lossy,
    /// Was tethered; untethered for making no progress.
    Evicted,
    /// Claimed but not reading.
    Inactive,
}

/// A reader slot attached by [`Ring::reserve_reader`] for another process to adopt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedReader {
    /// The slot.
    pub slot: u32,
    /// Ring position where it was joined.
    pub position: u64,
    /// Sequence number expected there.
    pub sequence: u64,
}

/// A snapshot of one reader slot, for the broker and `shmbus stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderInfo {
    /// Slot index.
    pub slot: u32,
    /// Owner token.
    pub owner: u64,
    /// Mode.
    pub state: ReaderState,
    /// Position: everything before it is released (tethered) or read (lossy).
    pub position: u64,
    /// Whether it is parked on its doorbell.
    pub parked: bool,
    /// Frames it was told it missed.
    pub missed: u64,
}

/// A snapshot of one writer slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterInfo {
    /// Slot index.
    pub slot: u32,
    /// Owner token.
    pub owner: u64,
    /// Bus-wide writer id.
    pub writer_id: u32,
    /// Messages committed.
    pub published: u64,
    /// Start of the claim it is writing, if any.
    pub claiming: Option<u64>,
}

fn random_nonzero() -> u64 {
    crate::os::random_u64() | 1
}

impl Ring {
    /// Creates a ring in two new sealed memfds, waking parked readers through `doorbells`.
    pub fn create(config: &RingConfig, doorbells: &DoorbellTable) -> Result<Ring, CreateError> {
        let g = Geometry::new(config)?;
        // Readers only ever get a read-only descriptor of the data (and cannot reopen it
        // writable); every participant gets the readers segment read-write.
        let data = Arc::new(MappedSegment::create(
            "shmbus-ring-data",
            g.data_segment_len,
            0o400,
        )?);
        let readers = Arc::new(MappedSegment::create(
            "shmbus-ring-readers",
            g.readers_segment_len,
            0o600,
        )?);
        let ring = Ring::init(
            g,
            data.clone(),
            readers.clone(),
            Some((data, readers)),
            doorbells,
        )?;
        Ok(ring)
    }

    /// Creates a ring in this process's heap: the same protocol, for threads of one process
    /// (and for Miri). Its descriptors are `None`.
    pub fn create_local(
        config: &RingConfig,
        doorbells: &DoorbellTable,
    ) -> Result<Ring, CreateError> {
        let g = Geometry::new(config)?;
        let data = Arc::new(HeapBacking::new(g.data_segment_len as usize));
        let readers = Arc::new(HeapBacking::new(g.readers_segment_len as usize));
        Ring::init(g, data, readers, None, doorbells)
    }

    fn init(
        g: Geometry,
        data: Arc<dyn Backing>,
        readers: Arc<dyn Backing>,
        segments: Option<(Arc<MappedSegment>, Arc<MappedSegment>)>,
        doorbells: &DoorbellTable,
    ) -> Result<Ring, CreateError> {
        // Process-local rings may use portable-atomic's in-process fallback (as under Miri);
        // shared ones need the real instruction, since the fallback's lock is per process.
        if segments.is_some() && !HeadCell::is_lock_free() {
            return Err(CreateError::Unsupported);
        }
        let ring_id = random_nonzero();
        let stamp_key = crate::os::random_u64();
        write_header(&*data, g.header(SegmentKind::RingData, ring_id, stamp_key));
        write_header(&*readers, g.header(SegmentKind::RingReaders, ring_id, 0));
        let mem = RingMemory::new(g, stamp_key, data, readers);
        for slot in 0..g.writer_slots {
            // Nobody else sees the segment yet; the descriptor's hand-over orders these stores.
            let w = mem.writer(slot);
            for word in [&w.intent_pos, &w.committing, &w.revoked] {
                word.store(NO_INTENT, Ordering::Relaxed);
            }
        }
        Ok(Ring {
            shared: Arc::new(RingShared {
                mem,
                doorbells: doorbells.clone(),
                ring_id,
                segments,
            }),
        })
    }

    /// Opens a ring from descriptors received from another process.
    ///
    /// A read-only `data` descriptor gives a read-only handle (readers only); `readers` must be
    /// read-write. Both headers are checked — magic, layout version, kind, geometry, lengths —
    /// and must name the same ring.
    pub fn open(
        data: OwnedFd,
        readers: OwnedFd,
        doorbells: &DoorbellTable,
    ) -> Result<Ring, OpenError> {
        if !HeadCell::is_lock_free() {
            return Err(OpenError::Unsupported);
        }
        let data = Arc::new(MappedSegment::open(data)?);
        let readers = Arc::new(MappedSegment::open(readers)?);
        if !readers.writable() {
            return Err(OpenError::ReadOnly("readers"));
        }
        let dh = checked_header(&*data, SegmentKind::RingData)?;
        let rh = checked_header(&*readers, SegmentKind::RingReaders)?;
        let g = Geometry::from_header(&dh)?;
        if Geometry::from_header(&rh)? != g {
            return Err(LayoutError::Geometry(
                "data and readers segments disagree on the ring's geometry".into(),
            )
            .into());
        }
        if dh.ring_id != rh.ring_id {
            return Err(LayoutError::Mismatch {
                data: dh.ring_id,
                readers: rh.ring_id,
            }
            .into());
        }
        let mem = RingMemory::new(g, dh.stamp_key, data.clone(), readers.clone());
        Ok(Ring {
            shared: Arc::new(RingShared {
                mem,
                doorbells: doorbells.clone(),
                ring_id: dh.ring_id,
                segments: Some((data, readers)),
            }),
        })
    }

    /// Maps a ring from descriptors its creator handed out, trusting `spec` — the creator's
    /// description of the ring — instead of anything the segments say: their headers lie where
    /// other participants can write (the readers segment, by every subscriber), so a faulty one
    /// could otherwise lock newcomers out. The segments' lengths are checked (with `fstat`) against
    /// the geometry, and their seals; the descriptors are closed once mapped.
    ///
    /// A read-only `data` descriptor gives a read-only handle (readers only); `readers` must be
    /// read-write.
    pub fn attach(
        data: OwnedFd,
        readers: OwnedFd,
        doorbells: &DoorbellTable,
        spec: &RingSpec,
    ) -> Result<Ring, OpenError> {
        if !HeadCell::is_lock_free() {
            return Err(OpenError::Unsupported);
        }
        let g = Geometry::new(&spec.config)?;
        let data = Arc::new(MappedSegment::open(data)?.without_fd());
        let readers = Arc::new(MappedSegment::open(readers)?.without_fd());
        if !readers.writable() {
            return Err(OpenError::ReadOnly("readers"));
        }
        for (segment, len) in [
            (&data, g.data_segment_len),
            (&readers, g.readers_segment_len),
        ] {
            let actual = segment.len() as u64;
            if actual < len {
                return Err(LayoutError::Truncated {
                    actual,
                    expected: len,
                }
                .into());
            }
        }
        let mem = RingMemory::new(g, spec.stamp_key, data.clone(), readers.clone());
        Ok(Ring {
            shared: Arc::new(RingShared {
                mem,
                doorbells: doorbells.clone(),
                ring_id: spec.id,
                segments: Some((data, readers)),
            }),
        })
    }

    /// What [`Ring::attach`] needs to map this ring elsewhere: its id, geometry and stamp key.
    pub fn spec(&self) -> RingSpec {
        RingSpec {
            id: self.shared.ring_id,
            config: self.config(),
            stamp_key: self.shared.mem.stamp_key(),
        }
    }

    /// The ring's sizes.
    pub fn config(&self) -> RingConfig {
        self.shared.mem.geometry().config()
    }

    /// The ring's random id (shared by its two segments).
    pub fn id(&self) -> u64 {
        self.shared.ring_id
    }

    /// Whether this handle maps the data writable (and so can publish).
    pub fn is_writable(&self) -> bool {
        self.shared.mem.writable()
    }

    /// The data segment's descriptor (`None` for process-local rings).
    pub fn data_fd(&self) -> Option<BorrowedFd<'_>> {
        self.shared.segments.as_ref().and_then(|(d, _)| d.fd())
    }

    /// A new read-only descriptor of the data segment, for subscribers (`None` for process-local
    /// rings).
    pub fn data_fd_read_only(&self) -> Option<io::Result<OwnedFd>> {
        self.shared.segments.as_ref().map(|(d, _)| d.read_only_fd())
    }

    /// The readers segment's descriptor (`None` for process-local rings).
    pub fn readers_fd(&self) -> Option<BorrowedFd<'_>> {
        self.shared.segments.as_ref().and_then(|(_, r)| r.fd())
    }

    /// The doorbell table parked readers of this ring are woken through.
    pub fn doorbells(&self) -> &DoorbellTable {
        &self.shared.doorbells
    }

    /// Attaches a writer writing frames stamped with bus-wide `id`, owned by `owner`.
    pub fn writer(&self, id: u32, owner: Owner) -> Result<Writer, SlotError> {
        if !self.is_writable() {
            return Err(SlotError::ReadOnly);
        }
        crate::protocol::fence::register_writer_process();
        let mem = &self.shared.mem;
        let core = WriterCore::attach(mem, owner.get(), id).ok_or(SlotError::NoFreeSlot {
            what: "writer",
            slots: mem.geometry().writer_slots,
        })?;
        Ok(Writer::new(self.shared.clone(), core))
    }

    /// Attaches a reader owned by `owner` that parks on `doorbell` (a doorbell of this ring's
    /// table; one subscriber shares its doorbell among all the rings it reads).
    pub fn reader(
        &self,
        options: ReaderOptions,
        doorbell: &Arc<Doorbell>,
        owner: Owner,
    ) -> Result<Reader, SlotError> {
        self.check_doorbell(doorbell)?;
        let mut core = self.attach_core(options.reader_mode(), owner, doorbell.index())?;
        core.start_with_history(&self.shared.mem, options.history_len());
        let (ring, doorbell) = (self.shared.clone(), doorbell.clone());
        Ok(Reader::new(ring, core, doorbell, &options, ()))
    }

    /// Attaches a reader slot on behalf of `owner` (another process), joined at the current
    /// head, so that nothing committed from now on can be missed even before that process maps
    /// the ring. The slot stays claimed until the owner adopts it and drops its reader, or it is
    /// reclaimed. The broker does this when a subscription meets a ring.
    pub fn reserve_reader(
        &self,
        mode: ReaderMode,
        owner: Owner,
        doorbell: u32,
    ) -> Result<ReservedReader, SlotError> {
        let core = self.attach_core(mode, owner, doorbell)?;
        let start = core.position();
        Ok(ReservedReader {
            slot: core.slot,
            position: start.pos,
            sequence: start.seq,
        })
    }

    /// Takes over a reader slot reserved for `owner` with [`Ring::reserve_reader`]; the reader
    /// carries `label` (see [`Reader::label`]).
    pub fn adopt_reader<L>(
        &self,
        reserved: ReservedReader,
        options: ReaderOptions,
        doorbell: &Arc<Doorbell>,
        owner: Owner,
        label: L,
    ) -> Result<Reader<L>, SlotError> {
        self.check_doorbell(doorbell)?;
        let mem = &self.shared.mem;
        let start = Head::new(reserved.position, reserved.sequence);
        let tethered = options.reader_mode() == ReaderMode::Tethered;
        let mut core = ReaderCore::adopt(
            mem,
            reserved.slot,
            owner.get(),
            tethered,
            doorbell.index(),
            start,
        )
        .ok_or(SlotError::NotReserved {
            slot: reserved.slot,
        })?;
        core.start_with_history(mem, options.history_len());
        if let Some((pos, seq)) = options.resume_point() {
            core.start_at(Head::new(pos, seq));
        }
        let (ring, doorbell) = (self.shared.clone(), doorbell.clone());
        Ok(Reader::new(ring, core, doorbell, &options, label))
    }

    /// The sequence number a reader standing at `position` expects next: the next claim's at
    /// the head, else that of the committed data frame starting there. `None` if `position` is
    /// not where a data frame starts (or it was overwritten): a reader cannot be resumed there.
    pub fn sequence_at(&self, position: u64) -> Option<u64> {
        read::sequence_at(&self.shared.mem, position)
    }

    /// Refuses a doorbell of another table: its index would name someone else's wake word.
    fn check_doorbell(&self, doorbell: &Doorbell) -> Result<(), SlotError> {
        if doorbell.table().same_table(&self.shared.doorbells) {
            Ok(())
        } else {
            Err(SlotError::ForeignDoorbell)
        }
    }

    /// Claims a free reader slot for `owner`, joined at the current head.
    fn attach_core(
        &self,
        mode: ReaderMode,
        owner: Owner,
        doorbell: u32,
    ) -> Result<ReaderCore, SlotError> {
        let mem = &self.shared.mem;
        let tethered = mode == ReaderMode::Tethered;
        ReaderCore::attach(mem, owner.get(), tethered, doorbell).map_err(|e| match e {
            JoinError::NoFreeSlot => SlotError::NoFreeSlot {
                what: "reader",
                slots: mem.geometry().reader_slots,
            },
            JoinError::CorruptHead => SlotError::CorruptRing,
        })
    }

    /// The claim cursor.
    pub fn head(&self) -> RingHead {
        let h = self.shared.mem.control().head.load_for_reader();
        RingHead {
            position: h.pos,
            sequence: h.seq,
        }
    }

    /// Snapshots of the reader slots in use. Every slot is looked at, not only those below the
    /// high-water mark the readers segment keeps (which any subscriber can write).
    pub fn readers(&self) -> Vec<ReaderInfo> {
        let mem = &self.shared.mem;
        (0..mem.geometry().reader_slots)
            .filter_map(|slot| {
                let r = mem.reader(slot);
                // Acquire pairs with the Release clear of the owner in `ReaderCore::detach`.
                let owner = r.owner.load(Ordering::Acquire);
                (owner != 0).then(|| ReaderInfo {
                    slot,
                    owner,
                    state: match r.mode.load(Ordering::Relaxed) {
                        mode::TETHERED => ReaderState::Tethered,
                        mode::LOSSY => ReaderState::Lossy,
                        mode::EVICTED => ReaderState::Evicted,
                        _ => ReaderState::Inactive,
                    },
                    position: r.pos.load(Ordering::Relaxed),
                    parked: r.parked.load(Ordering::Relaxed) != 0,
                    missed: r.missed.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// The position reader slot `slot` last published, whether or not the slot is in use (a
    /// reader that went leaves where it stopped: see [`Ring::sequence_at`]); `None` for a slot
    /// the ring does not have. Any reader can write its slot: the value is a claim to check.
    pub fn reader_position(&self, slot: u32) -> Option<u64> {
        let mem = &self.shared.mem;
        // Relaxed: a snapshot; whoever resumes there checks it with `sequence_at`.
        (slot < mem.geometry().reader_slots).then(|| mem.reader(slot).pos.load(Ordering::Relaxed))
    }

    /// Snapshots of the writer slots in use. Every slot is looked at, not only those below the
    /// high-water mark (which a faulty publisher can write).
    pub fn writers(&self) -> Vec<WriterInfo> {
        let mem = &self.shared.mem;
        (0..mem.geometry().writer_slots)
            .filter_map(|slot| {
                let p = mem.writer(slot);
                // Acquire pairs with the Release clear of the owner in `WriterCore::detach`.
                let owner = p.owner.load(Ordering::Acquire);
                let intent = p.intent_pos.load(Ordering::Relaxed);
                (owner != 0).then(|| WriterInfo {
                    slot,
                    owner,
                    writer_id: p.writer_id.load(Ordering::Relaxed),
                    published: p.published.load(Ordering::Relaxed),
                    claiming: (intent != NO_INTENT).then_some(intent),
                })
            })
            .collect()
    }

    /// Frees the slots of writers whose owner `alive` says is dead, turning any claim one of
    /// them left uncommitted into a skipped frame. Needs a writable handle (the broker's).
    ///
    /// Call it again for outcomes [`RepairOutcome::Deferred`](crate::RepairOutcome::Deferred).
    pub fn repair_dead_writers(&self, alive: impl Fn(Owner) -> bool) -> Vec<Repair> {
        assert!(
            self.is_writable(),
            "repair needs the ring's data mapped writable"
        );
        let shared = &self.shared;
        recovery::repair_dead_writers(
            &shared.mem,
            &|raw| Owner::new(raw).is_some_and(&alive),
            &|i| shared.ring_doorbell(i),
        )
    }

    /// Takes back the claim starting at `pos` that the live writer in `slot` has held too long
    /// (readers wait at it), turning it into a skipped frame; the writer's commit of it then
    /// fails with [`CommitError::Revoked`](crate::CommitError::Revoked). Needs a writable handle
    /// (the broker's). Call it again for [`UnblockOutcome::Deferred`].
    pub fn unblock_claim(&self, slot: u32, pos: u64) -> UnblockOutcome {
        assert!(
            self.is_writable(),
            "unblocking needs the ring's data mapped writable"
        );
        if slot >= self.shared.mem.geometry().writer_slots {
            return UnblockOutcome::Gone;
        }
        let shared = &self.shared;
        recovery::unblock_claim(&shared.mem, slot, pos, &|i| shared.ring_doorbell(i))
    }

    /// Retires the ring: writers' next claims fail with `Retired` (their owners move to a fresh
    /// ring) and readers find nothing new. For rings the broker found corrupt. A claim the
    /// cursor's exclusive owner was making at that moment may still land: call again until
    /// [`Ring::is_retired`] holds and [`Ring::writers`] is empty.
    pub fn retire(&self) {
        recovery::retire(&self.shared.mem);
    }

    /// Whether the ring is retired (see [`Ring::retire`]).
    pub fn is_retired(&self) -> bool {
        recovery::is_retired(&self.shared.mem)
    }

    /// Whether the claim cursor holds a position or sequence number no healthy ring can have (a
    /// faulty writer wrote it): writers and joining readers then fail with `Corrupt`.
    pub fn is_corrupt(&self) -> bool {
        use crate::protocol::layout::{MAX_SEQUENCE, valid_position};
        let head = self.shared.mem.control().head.load_for_reader();
        !self.is_retired() && (!valid_position(head.pos) || head.seq >= MAX_SEQUENCE)
    }

    /// Untethers reader `slot` (it stopped making progress); writers no longer wait for it
    /// and it sees `Lagged` for what they overwrite. Returns whether it was tethered.
    pub fn untether_reader(&self, slot: u32) -> bool {
        if slot >= self.shared.mem.geometry().reader_slots {
            return false;
        }
        let untethered = recovery::untether_reader(&self.shared.mem, slot);
        if untethered {
            self.shared.signal_space();
        }
        untethered
    }

    /// Frees reader `slot` if `owner` still holds it (its process died). Returns whether it was
    /// freed.
    pub fn reclaim_reader(&self, slot: u32, owner: Owner) -> bool {
        if slot >= self.shared.mem.geometry().reader_slots {
            return false;
        }
        let freed = recovery::reclaim_reader(&self.shared.mem, slot, owner.get());
        if freed {
            self.shared.signal_space();
        }
        freed
    }

    /// Wakes every parked reader of this ring (used after the broker changes something readers
    /// must notice, such as an eviction).
    pub fn wake_readers(&self) {
        let shared = &self.shared;
        wake_parked(&shared.mem, &|i| shared.ring_doorbell(i));
    }
}

fn checked_header(backing: &dyn Backing, kind: SegmentKind) -> Result<SegmentHeader, LayoutError> {
    let len = backing.len() as u64;
    let h = read_header(backing).ok_or(LayoutError::Truncated {
        actual: len,
        expected: crate::protocol::layout::HEADER_LEN,
    })?;
    h.check(kind, len)?;
    Ok(h)
}
