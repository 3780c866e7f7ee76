//! Shared-memory layout: segment headers, slot tables and ring geometry.
//!
//! Three kinds of segment exist (see the crate documentation for the picture):
//!
//! * **ring data** — written only by writers (and the broker): header, claim cursor,
//!   writer slots, frame bytes. Subscribers map it read-only.
//! * **ring readers** — written by subscribers: one slot per reader with its position, mode,
//!   doorbell and parked flag; the parked counter; the writers' space-wait word.
//! * **doorbells** — one per bus: futex words that parked subscribers sleep on, so that one
//!   subscriber can wait on many rings with one word.
//!
//! Every structure is `#[repr(C)]` with explicit alignment (128 bytes for anything two parties
//! write, so that adjacent-line prefetching cannot create false sharing; 64 for doorbells),
//! fixed-width fields, offsets instead of pointers, and zero as the valid initial value of every
//! atomic, so a fresh memfd is a valid empty ring once its header is written.

use crate::protocol::sync::{AtomicU32, AtomicU64, HeadCell};

/// First eight bytes of every shmbus segment: `"shmbus\0\0"` little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmbus\0\0");

/// Version of the layout described in this module. Bumped on any incompatible change; a segment
/// with a newer version is refused with [`LayoutError::NewerVersion`].
pub const LAYOUT_VERSION: u32 = 2;

/// Bytes reserved at the start of every segment for its [`SegmentHeader`].
pub(crate) const HEADER_LEN: u64 = 256;

/// Size of one page; data regions and segment ends are aligned to it.
pub(crate) const PAGE: u64 = 4096;

/// Alignment (and size granularity) of every frame in a ring. 32 bytes keeps payloads aligned for
/// rkyv (16) and guarantees that the room left before the end of the buffer is always either zero
/// or enough for a padding frame's header.
pub const FRAME_ALIGN: u64 = 32;

/// Size of the header in front of every frame's payload.
pub const FRAME_HEADER_LEN: u64 = 32;

/// Smallest ring capacity accepted.
pub const MIN_CAPACITY: u64 = 4096;

/// Largest ring capacity accepted (frame sizes are stored in 32 bits).
pub const MAX_CAPACITY: u64 = 1 << 31;

/// Largest number of writer or reader slots in one ring, and of doorbells in one table.
pub const MAX_SLOTS: u32 = 4096;

/// What a segment holds, as recorded in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SegmentKind {
    /// A ring's data segment (writers write, subscribers read).
    RingData = 1,
    /// A ring's readers segment (subscribers write their positions and wake state).
    RingReaders = 2,
    /// A bus-wide doorbell table.
    Doorbells = 3,
}

impl SegmentKind {
    fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(SegmentKind::RingData),
            2 => Some(SegmentKind::RingReaders),
            3 => Some(SegmentKind::Doorbells),
            _ => None,
        }
    }
}

/// Why a segment was refused when it was opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// The segment is smaller than its header or than its header says it is.
    #[error("segment truncated: {actual} bytes, expected at least {expected}")]
    Truncated {
        /// Bytes actually present.
        actual: u64,
        /// Bytes required.
        expected: u64,
    },
    /// The first eight bytes are not shmbus's magic number: not a shmbus segment.
    #[error("not a shmbus segment (magic {found:#018x})")]
    Foreign {
        /// The value found where the magic number belongs.
        found: u64,
    },
    /// The segment was written by a newer shmbus with a layout this build does not know.
    #[error("segment layout version {found} is newer than this build's {supported}")]
    NewerVersion {
        /// Version in the segment.
        found: u32,
        /// Newest version this build understands.
        supported: u32,
    },
    /// The segment was written by an older, incompatible layout.
    #[error("segment layout version {found} is older than this build's {supported}")]
    OlderVersion {
        /// Version in the segment.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// The segment is a shmbus segment of another kind than the one asked for.
    #[error("segment holds {found}, expected {expected:?}")]
    WrongKind {
        /// What the header says (raw value if unknown).
        found: String,
        /// What the caller asked for.
        expected: SegmentKind,
    },
    /// The geometry recorded in the header is impossible.
    #[error("invalid ring geometry: {0}")]
    Geometry(String),
    /// A ring's data and readers segments do not belong to the same ring.
    #[error("data segment belongs to ring {data:#x} but readers segment to ring {readers:#x}")]
    Mismatch {
        /// Ring id in the data segment.
        data: u64,
        /// Ring id in the readers segment.
        readers: u64,
    },
}

/// The header at offset 0 of every segment. Written once by the creator before the segment's
/// file descriptor is shared; read once (copied, then validated) by everyone who opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// A [`SegmentKind`] value.
    pub kind: u32,
    /// Total bytes of the segment.
    pub segment_len: u64,
    /// Random id shared by a ring's data and readers segments (0 for doorbell tables).
    pub ring_id: u64,
    /// Ring data capacity in bytes (power of two), or 0.
    pub capacity: u64,
    /// Largest payload of one frame, or 0.
    pub max_payload: u32,
    /// Writer slots in the ring, or 0.
    pub writer_slots: u32,
    /// Reader slots in the ring, or 0.
    pub reader_slots: u32,
    /// Doorbells in a doorbell table, or 0.
    pub doorbells: u32,
    /// Key mixed into every commit stamp of the ring (see `frame::stamp`).
    pub stamp_key: u64,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<SegmentHeader>() as u64 <= HEADER_LEN);

impl SegmentHeader {
    /// Checks magic, version and kind; the caller checks geometry.
    pub(crate) fn check(&self, expected: SegmentKind, actual_len: u64) -> Result<(), LayoutError> {
        if self.magic != MAGIC {
            return Err(LayoutError::Foreign { found: self.magic });
        }
        if self.version > LAYOUT_VERSION {
            return Err(LayoutError::NewerVersion {
                found: self.version,
                supported: LAYOUT_VERSION,
            });
        }
        if self.version < LAYOUT_VERSION {
            return Err(LayoutError::OlderVersion {
                found: self.version,
                supported: LAYOUT_VERSION,
            });
        }
        match SegmentKind::from_raw(self.kind) {
            Some(kind) if kind == expected => {}
            Some(kind) => {
                return Err(LayoutError::WrongKind {
                    found: format!("{kind:?}"),
                    expected,
                });
            }
            None => {
                return Err(LayoutError::WrongKind {
                    found: format!("unknown kind {}", self.kind),
                    expected,
                });
            }
        }
        if self.segment_len > actual_len {
            return Err(LayoutError::Truncated {
                actual: actual_len,
                expected: self.segment_len,
            });
        }
        Ok(())
    }
}

/// The claim cursor and its ownership, alone on their cache lines: every claim writes them.
#[repr(C, align(128))]
pub(crate) struct RingControl {
    /// `(pos, seq, exclusive)` of the next claim. Writers CAS it (`AcqRel`), or an exclusive
    /// owner stores it (`Release`); readers load it only to tell "nothing yet" from "overrun",
    /// and the broker to decide repairs.
    pub head: HeadCell,
    /// Token of the writer that owns the cursor (see `ring::claim`, "Exclusive claims"), with
    /// [`REVOKING`] set while another writer takes it back; 0 when shared.
    pub exclusive: AtomicU64,
    /// Source of ownership epochs, so a revoked owner's token never matches again.
    pub epoch: AtomicU64,
}

/// Set in [`RingControl::exclusive`] while the cursor's ownership is being revoked.
pub(crate) const REVOKING: u64 = 1 << 63;

/// Set in [`RingControl::exclusive`] by an owner that saw [`REVOKING`] and will make no more plain
/// stores of the head (what a revoker waits for when it has no heavy fence).
pub(crate) const ACKNOWLEDGED: u64 = 1 << 62;

/// Read-mostly ring counters, on their own lines so the cursor's traffic does not disturb them.
#[repr(C, align(128))]
pub(crate) struct RingCounters {
    /// One more than the highest writer slot ever claimed; scans stop there.
    pub writer_high_water: AtomicU32,
}

/// Sentinel for "no claim in progress" in [`WriterSlot::intent_pos`].
pub(crate) const NO_INTENT: u64 = u64::MAX;

/// Positions never get this far (2^62 bytes through one ring); anything beyond is corruption, and
/// below it `position + capacity` and the like cannot overflow.
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// Sequence numbers never get this far (one claim per frame, frames at least 32 bytes:
/// [`MAX_POSITION`] bytes hold fewer); a cursor with a larger one is corrupt, and below it the
/// next sequence number cannot reach the cursor's exclusive flag.
pub(crate) const MAX_SEQUENCE: u64 = MAX_POSITION;

/// The claim cursor's position once the broker retired the ring (see
/// `protocol::recovery::retire`): aligned but beyond [`MAX_POSITION`], so no claim can be made
/// from it, and told apart from corruption.
pub(crate) const RETIRED_POSITION: u64 = MAX_POSITION + FRAME_ALIGN;

/// Whether `pos`, read from shared memory, can be a ring position: a multiple of
/// [`FRAME_ALIGN`] no larger than [`MAX_POSITION`]. Everything a participant can write is checked
/// with this before it becomes an offset or a bound.
#[inline]
pub(crate) fn valid_position(pos: u64) -> bool {
    pos % FRAME_ALIGN == 0 && pos <= MAX_POSITION
}

/// One writer's slot in the data segment. Only its owner writes it, except the broker when it
/// reclaims a dead owner's slot or takes back a claim held too long.
///
/// Invariant: while `intent_pos != NO_INTENT`, the owner may hold the claim
/// `intent_pos..intent_end` with sequence `intent_seq`, and no writer claims beyond
/// `intent_pos + capacity`. Free slots hold `NO_INTENT` (the creator initialises every slot so).
#[repr(C, align(128))]
pub(crate) struct WriterSlot {
    /// Owner token of the process using this slot; 0 when free.
    pub owner: AtomicU64,
    /// Start of the claim being attempted or held, or [`NO_INTENT`].
    pub intent_pos: AtomicU64,
    /// Sequence number of that claim.
    pub intent_seq: AtomicU64,
    /// End of that claim.
    pub intent_end: AtomicU64,
    /// Frames this slot's writer committed (statistics).
    pub published: AtomicU64,
    /// Bus-wide id of the writer, copied into its frames.
    pub writer_id: AtomicU32,
    /// Start of the claim the owner is committing, or [`NO_INTENT`] (see `SYNC(unblock)` in
    /// `protocol::claim`).
    pub committing: AtomicU64,
    /// Start of a claim the broker took back from the owner because it was held too long, or
    /// [`NO_INTENT`]. Written only by the broker.
    pub revoked: AtomicU64,
}

/// Parked-reader bookkeeping, read by every commit.
#[repr(C, align(128))]
pub(crate) struct ReadersControl {
    /// Number of readers currently parked (or about to park) on this ring.
    pub parked: AtomicU32,
    /// One more than the highest reader slot ever claimed; scans stop there.
    pub high_water: AtomicU32,
}

/// Writers waiting for space, and the futex word they sleep on.
#[repr(C, align(128))]
pub(crate) struct SpaceWait {
    /// Number of writers parked waiting for readers to release space.
    pub waiters: AtomicU32,
    /// Futex word: bumped by whoever releases space while `waiters > 0`.
    pub word: AtomicU32,
    /// Number of writers that have waited for room for a while (parked or spinning). While it
    /// is not zero, readers publish their position with every frame instead of once per
    /// sixteenth of the ring, so that a slow reader's progress shows at once (to writers, and to
    /// the broker's stall detection). A hint only: a wrong value costs speed, nothing else.
    pub starving: AtomicU32,
}

/// Reader slot modes (values of [`ReaderSlot::mode`]).
pub(crate) mod mode {
    /// Not reading (free, or claimed and not yet joined).
    pub const INACTIVE: u32 = 0;
    /// Holds writers back: nothing at or after `pos` is overwritten.
    pub const TETHERED: u32 = 1;
    /// Never holds writers back.
    pub const LOSSY: u32 = 2;
    /// Was tethered; the broker untethered it because it stopped making progress.
    pub const EVICTED: u32 = 3;
}

/// One reader's slot in the readers segment. Its owner writes `pos`, `mode` (when joining or
/// leaving), `doorbell` and `parked`; the broker writes `mode` (eviction) and frees dead slots.
#[repr(C, align(128))]
pub(crate) struct ReaderSlot {
    /// Owner token of the process using this slot; 0 when free.
    pub owner: AtomicU64,
    /// Tethered readers: everything before `pos` is released and may be overwritten.
    pub pos: AtomicU64,
    /// Frames this reader was told it missed (statistics).
    pub missed: AtomicU64,
    /// One of [`mode`]'s values.
    pub mode: AtomicU32,
    /// Index + 1 of the doorbell this reader parks on; 0 for none.
    pub doorbell: AtomicU32,
    /// 1 while the reader is parked (or about to park) on its doorbell.
    pub parked: AtomicU32,
}

/// One doorbell: the futex word one subscriber sleeps on, whatever rings it waits for.
#[repr(C, align(64))]
pub(crate) struct DoorbellCell {
    /// Futex word, bumped by every wake.
    pub word: AtomicU32,
    /// Owner token; 0 when free.
    pub owner: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<RingControl>() == 128);
    assert!(size_of::<RingCounters>() == 128);
    assert!(size_of::<WriterSlot>() == 128);
    assert!(size_of::<ReadersControl>() == 128);
    assert!(size_of::<SpaceWait>() == 128);
    assert!(size_of::<ReaderSlot>() == 128);
    assert!(size_of::<DoorbellCell>() == 64);
};

/// Size parameters of a ring, chosen at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes of frame storage: a power of two between [`MIN_CAPACITY`] and [`MAX_CAPACITY`], at
    /// least twice the largest frame.
    pub capacity: u64,
    /// Largest payload of one frame, in bytes.
    pub max_payload: u32,
    /// How many writers may use the ring at once.
    pub writer_slots: u32,
    /// How many readers may use the ring at once.
    pub reader_slots: u32,
}

impl Default for RingConfig {
    /// 1 MiB of frames, payloads up to 64 KiB, 64 writers and 128 readers.
    fn default() -> Self {
        RingConfig {
            capacity: 1 << 20,
            max_payload: 64 * 1024,
            writer_slots: 64,
            reader_slots: 128,
        }
    }
}

impl RingConfig {
    /// Checks that a ring of this configuration can exist (capacity a power of two in range,
    /// room for two largest frames, slot counts in range).
    pub fn validate(&self) -> Result<(), LayoutError> {
        Geometry::new(self).map(|_| ())
    }
}

impl RingConfig {
    /// Where everything is in the segments of a ring of this configuration.
    pub fn layout(&self) -> Result<RingLayout, LayoutError> {
        let g = Geometry::new(self)?;
        Ok(RingLayout {
            head: g.control_off + std::mem::offset_of!(RingControl, head) as u64,
            exclusive: g.control_off + std::mem::offset_of!(RingControl, exclusive) as u64,
            writer_slots: g.writers_off,
            frames: g.data_off,
            data_len: g.data_segment_len,
            readers_control: g.readers_control_off,
            space_wait: g.space_wait_off,
            reader_slots: g.reader_slots_off,
            readers_len: g.readers_segment_len,
            slot_len: 128,
        })
    }
}

/// Where things are in a ring's two segments, in bytes from each segment's start: for tools and
/// tests that inspect segments (or, testing robustness, damage them). The crate documentation
/// describes what each holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingLayout {
    /// Data segment: the claim cursor, `pos: u64` then `seq: u64` (its top bit the exclusive
    /// flag).
    pub head: u64,
    /// Data segment: the token of the writer owning the cursor.
    pub exclusive: u64,
    /// Data segment: the first writer slot (fields at [`writer_slot`]'s offsets).
    pub writer_slots: u64,
    /// Data segment: the first byte of frame storage.
    pub frames: u64,
    /// Data segment: its length.
    pub data_len: u64,
    /// Readers segment: the parked-reader count (`u32`) and the reader high-water mark (`u32`).
    pub readers_control: u64,
    /// Readers segment: the count of writers waiting for space (`u32`) and their futex word.
    pub space_wait: u64,
    /// Readers segment: the first reader slot (fields at [`reader_slot`]'s offsets).
    pub reader_slots: u64,
    /// Readers segment: its length.
    pub readers_len: u64,
    /// Length of one writer or reader slot.
    pub slot_len: u64,
}

/// Offsets of the fields of a writer slot, from the slot's start (see [`RingLayout`]).
pub mod writer_slot {
    use super::WriterSlot;
    use std::mem::offset_of;

    /// Owner token (`u64`).
    pub const OWNER: u64 = offset_of!(WriterSlot, owner) as u64;
    /// Start of the claim being made (`u64`).
    pub const INTENT_POS: u64 = offset_of!(WriterSlot, intent_pos) as u64;
    /// Its sequence number (`u64`).
    pub const INTENT_SEQ: u64 = offset_of!(WriterSlot, intent_seq) as u64;
    /// Its end (`u64`).
    pub const INTENT_END: u64 = offset_of!(WriterSlot, intent_end) as u64;
    /// Start of the claim being committed (`u64`).
    pub const COMMITTING: u64 = offset_of!(WriterSlot, committing) as u64;
    /// Start of a claim the broker took back (`u64`).
    pub const REVOKED: u64 = offset_of!(WriterSlot, revoked) as u64;
}

/// Offsets of the fields of a reader slot, from the slot's start (see [`RingLayout`]).
pub mod reader_slot {
    use super::ReaderSlot;
    use std::mem::offset_of;

    /// Owner token (`u64`).
    pub const OWNER: u64 = offset_of!(ReaderSlot, owner) as u64;
    /// Position (`u64`).
    pub const POS: u64 = offset_of!(ReaderSlot, pos) as u64;
    /// Mode (`u32`: 0 inactive, 1 tethered, 2 lossy, 3 evicted).
    pub const MODE: u64 = offset_of!(ReaderSlot, mode) as u64;
    /// Doorbell index + 1 (`u32`).
    pub const DOORBELL: u64 = offset_of!(ReaderSlot, doorbell) as u64;
    /// Parked flag (`u32`).
    pub const PARKED: u64 = offset_of!(ReaderSlot, parked) as u64;
}

/// Offset of the first doorbell in a doorbell table; each takes [`DOORBELL_LEN`] bytes, its
/// futex word (`u32`) first, then an owner token (`u64`) at offset 8.
pub const DOORBELLS_OFFSET: u64 = HEADER_LEN;

/// Length of one doorbell in a doorbell table.
pub const DOORBELL_LEN: u64 = 64;

/// Everything derived from a [`RingConfig`]: offsets and sizes of both segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub capacity: u64,
    pub max_payload: u32,
    /// Size of the largest frame (header + largest payload, rounded up to [`FRAME_ALIGN`]).
    pub max_frame: u64,
    pub writer_slots: u32,
    pub reader_slots: u32,
    pub control_off: u64,
    pub counters_off: u64,
    pub writers_off: u64,
    pub data_off: u64,
    pub data_segment_len: u64,
    pub readers_control_off: u64,
    pub space_wait_off: u64,
    pub reader_slots_off: u64,
    pub readers_segment_len: u64,
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub(crate) const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Total size of a frame carrying `payload` bytes.
pub(crate) const fn frame_size(payload: u64) -> u64 {
    align_up(FRAME_HEADER_LEN + payload, FRAME_ALIGN)
}

/// A cache line, and the pair of them that adjacent-line prefetching moves together.
const LINE: u64 = 64;
const LINE_PAIR: u64 = 2 * LINE;

impl Geometry {
    /// Bytes a writer claims for a frame of `payload` bytes: the frame, except that a frame of
    /// one cache line (payloads up to 32 bytes) takes two, where the ring's largest frame allows.
    /// Adjacent-line prefetching moves lines in 128-byte pairs, so one-line frames shared a pair
    /// with the next frame: a reader at one pulled in the line a writer was filling. Padded, a
    /// stream of 8-byte messages runs 1.6× faster (`benches/compare --throughput`); larger
    /// frames padded to whole pairs ran 2–10 % slower, so they are left as they are. Readers
    /// accept any size that is a multiple of [`FRAME_ALIGN`]: this is the writer's choice alone
    /// (and only a writer alone on its ring makes it, see `WriterCore::claim_size`).
    pub(crate) fn claim_size(&self, payload: u64) -> u64 {
        let size = frame_size(payload);
        if size <= LINE {
            LINE_PAIR.min(self.max_frame).max(size)
        } else {
            size
        }
    }

    /// Validates `config` and lays both segments out.
    pub(crate) fn new(config: &RingConfig) -> Result<Geometry, LayoutError> {
        let bad = |msg: String| Err(LayoutError::Geometry(msg));
        let RingConfig {
            capacity,
            max_payload,
            writer_slots,
            reader_slots,
        } = *config;
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return bad(format!(
                "capacity {capacity} must be a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ));
        }
        if max_payload == 0 {
            return bad("largest payload must be at least 1 byte".into());
        }
        let max_frame = frame_size(u64::from(max_payload));
        if max_frame > capacity / 2 {
            return bad(format!(
                "largest frame ({max_frame} bytes for a {max_payload}-byte payload) must fit \
                 twice in the capacity ({capacity})"
            ));
        }
        for (what, n) in [("writer", writer_slots), ("reader", reader_slots)] {
            if n == 0 || n > MAX_SLOTS {
                return bad(format!("{what} slots {n} must be in 1..={MAX_SLOTS}"));
            }
        }
        let control_off = HEADER_LEN;
        let counters_off = control_off + 128;
        let writers_off = counters_off + 128;
        let data_off = align_up(writers_off + 128 * u64::from(writer_slots), PAGE);
        let readers_control_off = HEADER_LEN;
        let space_wait_off = readers_control_off + 128;
        let reader_slots_off = space_wait_off + 128;
        let readers_segment_len = align_up(reader_slots_off + 128 * u64::from(reader_slots), PAGE);
        Ok(Geometry {
            capacity,
            max_payload,
            max_frame,
            writer_slots,
            reader_slots,
            control_off,
            counters_off,
            writers_off,
            data_off,
            data_segment_len: data_off + capacity,
            readers_control_off,
            space_wait_off,
            reader_slots_off,
            readers_segment_len,
        })
    }

    /// The configuration this geometry was derived from.
    pub(crate) fn config(&self) -> RingConfig {
        RingConfig {
            capacity: self.capacity,
            max_payload: self.max_payload,
            writer_slots: self.writer_slots,
            reader_slots: self.reader_slots,
        }
    }

    /// Header for one of this ring's segments.
    pub(crate) fn header(&self, kind: SegmentKind, ring_id: u64, stamp_key: u64) -> SegmentHeader {
        let segment_len = match kind {
            SegmentKind::RingData => self.data_segment_len,
            _ => self.readers_segment_len,
        };
        SegmentHeader {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            kind: kind as u32,
            segment_len,
            ring_id,
            capacity: self.capacity,
            max_payload: self.max_payload,
            writer_slots: self.writer_slots,
            reader_slots: self.reader_slots,
            doorbells: 0,
            stamp_key,
        }
    }

    /// Rebuilds the geometry from a checked header and verifies the recorded length.
    pub(crate) fn from_header(h: &SegmentHeader) -> Result<Geometry, LayoutError> {
        let g = Geometry::new(&RingConfig {
            capacity: h.capacity,
            max_payload: h.max_payload,
            writer_slots: h.writer_slots,
            reader_slots: h.reader_slots,
        })?;
        let expected = if h.kind == SegmentKind::RingData as u32 {
            g.data_segment_len
        } else {
            g.readers_segment_len
        };
        if h.segment_len != expected {
            return Err(LayoutError::Geometry(format!(
                "segment length {} does not match its geometry ({expected})",
                h.segment_len
            )));
        }
        Ok(g)
    }
}

/// Layout of a doorbell table with `count` doorbells.
pub(crate) fn doorbells_segment_len(count: u32) -> Result<u64, LayoutError> {
    if count == 0 || count > MAX_SLOTS * 16 {
        return Err(LayoutError::Geometry(format!(
            "doorbell count {count} must be in 1..={}",
            MAX_SLOTS * 16
        )));
    }
    Ok(align_up(HEADER_LEN + 64 * u64::from(count), PAGE))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_is_valid_and_page_aligned() {
        let g = Geometry::new(&RingConfig::default()).unwrap();
        assert_eq!(g.data_off % PAGE, 0);
        assert_eq!(g.data_segment_len, g.data_off + (1 << 20));
        assert_eq!(g.readers_segment_len % PAGE, 0);
        assert_eq!(g.max_frame, frame_size(64 * 1024));
        assert_eq!(g.config(), RingConfig::default());
    }

    #[test]
    fn one_line_frames_take_a_line_pair_where_the_ring_allows_and_others_their_size() {
        let g = Geometry::new(&RingConfig::default()).unwrap();
        assert_eq!(g.claim_size(0), LINE_PAIR);
        assert_eq!(g.claim_size(8), LINE_PAIR);
        assert_eq!(g.claim_size(32), LINE_PAIR);
        assert_eq!(g.claim_size(33), frame_size(33));
        assert_eq!(g.claim_size(1000), frame_size(1000));
        assert_eq!(g.claim_size(64 * 1024), g.max_frame);
        // A ring whose largest frame is one line keeps one-line frames.
        let small = Geometry::new(&RingConfig {
            capacity: MIN_CAPACITY,
            max_payload: 16,
            ..RingConfig::default()
        })
        .unwrap();
        assert_eq!(small.claim_size(8), small.max_frame);
        for payload in 0..=16 {
            let size = small.claim_size(payload);
            assert!(size >= frame_size(payload) && size <= small.max_frame);
            assert_eq!(size % FRAME_ALIGN, 0);
        }
    }

    #[test]
    fn geometry_rejects_impossible_configs() {
        let ok = RingConfig::default();
        for bad in [
            RingConfig {
                capacity: 3000,
                ..ok
            },
            RingConfig {
                capacity: 1 << 12,
                max_payload: 4096,
                ..ok
            },
            RingConfig {
                capacity: 1 << 32,
                ..ok
            },
            RingConfig {
                max_payload: 0,
                ..ok
            },
            RingConfig {
                writer_slots: 0,
                ..ok
            },
            RingConfig {
                reader_slots: MAX_SLOTS + 1,
                ..ok
            },
        ] {
            assert!(
                matches!(Geometry::new(&bad), Err(LayoutError::Geometry(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_check_reports_each_failure() {
        let g = Geometry::new(&RingConfig::default()).unwrap();
        let good = g.header(SegmentKind::RingData, 7, 9);
        let len = g.data_segment_len;
        assert_eq!(good.check(SegmentKind::RingData, len), Ok(()));
        assert_eq!(Geometry::from_header(&good), Ok(g));
        let foreign = SegmentHeader { magic: 1, ..good };
        assert_eq!(
            foreign.check(SegmentKind::RingData, len),
            Err(LayoutError::Foreign { found: 1 })
        );
        let newer = SegmentHeader {
            version: LAYOUT_VERSION + 1,
            ..good
        };
        assert!(matches!(
            newer.check(SegmentKind::RingData, len),
            Err(LayoutError::NewerVersion { .. })
        ));
        assert!(matches!(
            good.check(SegmentKind::RingReaders, len),
            Err(LayoutError::WrongKind { .. })
        ));
        let unknown = SegmentHeader { kind: 99, ..good };
        assert!(matches!(
            unknown.check(SegmentKind::RingData, len),
            Err(LayoutError::WrongKind { .. })
        ));
        assert_eq!(
            good.check(SegmentKind::RingData, len - 1),
            Err(LayoutError::Truncated {
                actual: len - 1,
                expected: len
            })
        );
        let lying = SegmentHeader {
            segment_len: len - PAGE,
            ..good
        };
        assert!(matches!(
            Geometry::from_header(&lying),
            Err(LayoutError::Geometry(_))
        ));
    }
}
