//! Lock-free shared-memory rings for shmbus.
//!
//! This crate is shmbus's data plane and nothing else: segments in sealed memfds, broadcast rings
//! of variable-length frames that several writers and many readers in different processes use
//! at once without locks or system calls, futex-based waiting, and the primitives a broker needs
//! to clean up after processes that die. There are no sockets and no broker here.
//!
//! ```
//! use std::sync::Arc;
//! use shmbus_shm::{DoorbellTable, Owner, ReaderOptions, Ring, RingConfig};
//!
//! let doorbells = DoorbellTable::create(16)?;
//! let ring = Ring::create(&RingConfig::default(), &doorbells)?;
//! let me = Owner::this_process();
//! let bell = Arc::new(doorbells.claim(me)?);
//! let mut reader = ring.reader(ReaderOptions::default(), &bell, me)?;
//! let mut writer = ring.writer(1, me)?;
//!
//! let mut loan = writer.try_loan(5)?;             // room in the ring
//! loan.as_mut_slice().copy_from_slice(b"hello");  // written in place
//! loan.commit()?;                                 // visible to readers
//!
//! let frame = reader.try_read()?.expect("committed");
//! assert_eq!(frame.payload(), b"hello");          // read in place
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Memory layout
//!
//! A ring is two segments; a bus also has one doorbell table. Every segment starts with a
//! 256-byte header (magic `"shmbus\0\0"`, layout version, kind, length, geometry), checked when
//! the segment is opened with [`Ring::open`] or [`DoorbellTable::open`]: a foreign, truncated,
//! mismatched or newer segment is an [`OpenError`], never undefined behaviour. Since every
//! subscriber can write the readers segment and the doorbell table, headers included, a bus does
//! not rely on them: [`Ring::attach`] and [`DoorbellTable::attach`] take the geometry from their
//! creator (the broker's messages) and check only the segments' lengths, with `fstat`.
//! [`RingLayout`] gives the offsets below for a configuration.
//!
//! ```text
//! ring data segment (writers write; subscribers map it PROT_READ)
//!   0     header
//!   256   claim cursor: (position, sequence), one 128-bit word, alone on 128 bytes
//!   384   counters (writer high-water mark)
//!   512   writer slots, 128 bytes each: owner, intent (pos, seq, end), published, id,
//!         committing, revoked (see "Claims held too long" in the claim protocol)
//!   page  frame buffer, `capacity` bytes (a power of two)
//!
//! ring readers segment (subscribers write; everyone maps it read-write)
//!   0     header
//!   256   parked-reader count, reader high-water mark
//!   384   writers' space-wait counter, futex word and starving count
//!   512   reader slots, 128 bytes each: owner, position, missed, mode, doorbell, parked
//!
//! doorbell table (one per bus; read-write for all)
//!   0     header
//!   256   doorbells, 64 bytes each: futex word, owner
//! ```
//!
//! Everything a subscriber writes lives in the readers segment and the doorbell table, so the
//! frames themselves can be mapped read-only by subscribers: a subscriber cannot forge or
//! corrupt a message. Structures two parties write are aligned to 128 bytes (adjacent-line
//! prefetching pairs 64-byte lines), regardless of the build target. Positions are absolute byte
//! offsets into an endless stream (2^64 bytes never wrap in practice); the buffer offset is
//! `position % capacity`.
//!
//! # Frames
//!
//! A frame is a 32-byte header — commit stamp, payload length and frame size, sequence number,
//! writer id and kind — followed by the payload, padded to 32 bytes, so payloads are 16-byte
//! aligned for rkyv. A writer alone on its ring gives a frame of one cache line (a payload of up
//! to 32 bytes) a second line, so that consecutive small frames do not share a 128-byte prefetch
//! pair. A frame never wraps around the end of the buffer: a claim that would is preceded by a
//! padding frame up to the end. Kinds: data, skip (a loan dropped uncommitted, or a dead
//! writer's claim after repair), pad.
//!
//! # Protocol
//!
//! **Claim.** A writer reads the cursor `(pos, seq)`, checks there is room (below its cached
//! limit, see below), records its *intent* `(pos, seq, end)` in its slot, and CASes the cursor to
//! `(end, seq + 1)`. The intent is what lets the broker repair the claim if the writer dies,
//! and it tethers other writers: nobody claims more than a buffer's length beyond any intent,
//! so a writer stalled mid-write is never lapped and overwritten. A writer alone on its ring
//! takes the cursor for itself and then claims with a plain store instead of the locked CAS, until
//! another writer revokes that ownership ("Exclusive claims" in the `ring::claim` module).
//!
//! **Commit.** The writer writes the payload in place, then header words 1–3, then stores the
//! *stamp* — a keyed mix of the frame's position — into word 0, then checks whether any reader is
//! parked (waking it if so), then clears its intent.
//!
//! **Read.** A reader at position `p` loads word 0 at `p`; equal to the stamp of `p` means a
//! committed frame starts there. It reads the header, validates it against the geometry (so no
//! writer, however broken, can make it step outside the buffer or loop), checks the sequence
//! number, and hands out the payload in place. Releasing the frame moves the reader on; it stores
//! its position in its slot once it has read a sixteenth of the buffer since the last store,
//! whenever a poll finds nothing, and with every frame while a writer starves for space (see
//! "Waiting for space"). (Storing it for
//! every frame moved the slot's cache line to a writer short of room and back on every message:
//! 8-byte throughput was a fifth of what it is.)
//!
//! **Room.** A claim ending at `end` is allowed when `end ≤ m + capacity`, `m` being the minimum
//! of the cursor, every other writer's intent and every tethered reader's position. Writers
//! cache the bound and recompute it only when a claim would cross it, so in steady state a
//! publish reads no reader state at all.
//!
//! **Lossy reads.** Lossy readers (and tethered ones reading history or catching up after an
//! eviction) copy the frame out, then check, seqlock style, that the cursor has not moved more
//! than a buffer's length past the frame; if it has, the copy may be torn and is discarded, the
//! reader jumps to the oldest frame still held and reports how many claims it lost.
//!
//! ## Why an in-band stamp
//!
//! Word 0 of a frame lies in the buffer, so before the frame is committed it holds stale bytes.
//! A stale value is either an older frame's stamp — a different position, hence a different
//! value, as the mixer is a bijection — or payload bytes written a lap earlier by a writer of
//! this ring; those equal the stamp only by a 2^-64 accident, the key being random per ring. A
//! writer of the ring that wanted to forge a frame could simply publish it, so the stamp gives
//! subscribers nothing less than an out-of-band commit array would, and it keeps the commit flag
//! in the cache line the reader needs anyway.
//!
//! ## Orderings
//!
//! Every non-relaxed atomic access names its partner with a `SYNC(...)` tag in the code:
//!
//! | tag | release side | acquire side | what it guarantees |
//! | --- | --- | --- | --- |
//! | `publish` | stamp store (Release) | reader's stamp load (Acquire) | header and payload are visible with the stamp |
//! | `release` | reader's position store (Release) | writer's position load (Acquire) in the room check | a reader is done with bytes before they are overwritten |
//! | `intent` | cursor CAS (AcqRel), or an exclusive owner's cursor store (Release), after the intent stores | cursor load (Acquire) by other writers and the broker | a made claim's intent is visible to whoever sees the claim |
//! | `retire` | intent clear (Release) after the commit | intent load (Acquire) in the room check and repair | a writer's writes are finished before others lap or repair them |
//! | `overwrite` | `fence(Release)` after the claim, before writing | `fence(Acquire)` after a lossy copy, before re-loading the cursor | a torn copy is always detected |
//! | `join` | reader: mode store, `fence(SeqCst)`, cursor load | writer: cursor load, `fence(SeqCst)`, mode loads | a joining reader is either seen or never overrun |
//! | `park` | writer: stamp store, light fence, parked-count load | reader: parked-count increment, heavy fence, stamp load | a commit never misses a reader that is going to sleep |
//! | `exclusive` | owner: intent stores, light fence, ownership load | revoker: `REVOKING` store, heavy fence, owner's intent load | a revoked owner never stores the cursor over another claim |
//! | `doorbell` | doorbell bump (Release) | doorbell load before sleeping (Acquire) | a woken reader sees what woke it |
//! | `space` | reader: position store, then swap of the space-waiter count (Release) | writer: count increment (Acquire), room check | a writer waiting for room is either woken or sees the room |
//! | `give-back` | an owned frame's drop: its queue flag (Release), on any thread | the reader collecting flags (Acquire) before moving its tether | the owner is done with a frame before the reader lets writers overwrite it |
//!
//! Sequential consistency appears only as fences in `join`, `park` and `exclusive`, the three
//! store-then-load (Dekker) patterns, where acquire/release cannot order a store before a later
//! load (`space` needs none: both of its sides are read-modify-writes of one counter, which
//! the counter's modification order puts one before the other). They are fences rather than
//! SeqCst accesses because the fence rules are what the arguments use (and what loom models
//! exactly). In `park` and `exclusive` the fences are
//! asymmetric: the writer's hot path has only a compiler fence ("light"), and the rare side
//! issues `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` ("heavy"), which puts a full barrier into
//! every running thread of every publishing process — see the `fence` module, and its fallback
//! where the kernel refuses the call.
//!
//! ## Owned frames
//!
//! A frame read in place can be detached from its reader ([`Frame::detach`]): the reader keeps a
//! queue of the frames it lent out and never moves its tether past the oldest one not given back,
//! so the bytes of an [`OwnedFrame`] stay put until it drops — on any thread, in any order. A
//! drop only sets the frame's flag (`SYNC(give-back)`); the reader collects the flags at its next
//! poll, so a reader that lends frames parks at most a millisecond at a time. The queue and the
//! reader slot live in a lease the reader and its owned frames share, freed with the last of them.
//!
//! ## Waiting for space
//!
//! A writer whose claim does not fit spins, then sleeps on the ring's space word. A reader that
//! releases a frame and sees a writer waiting takes the waiter count (so one wake-up serves a
//! whole parking) and wakes it. A writer that has waited a millisecond, spinning or parked, also
//! counts itself as starving until it gets room; meanwhile readers publish their position with
//! every frame, so a slow reader's progress shows at once (to the broker too, which evicts
//! readers that show none). It checks with a relaxed load and no fence — a full fence on every
//! release, to make the wake-up exact, would cost every reader on every message to save a blocked
//! writer at most one millisecond, which is how often a sleeping writer re-checks.
//!
//! ## Recovery
//!
//! The broker decides who is dead; [`Ring::repair_dead_writers`] then turns a dead writer's
//! uncommitted claim into a skipped frame (only when no live writer's intent names the same
//! claim, so it never races a live writer), [`Ring::untether_reader`] stops writers waiting for
//! a stalled reader, and [`Ring::reclaim_reader`] frees a dead reader's slot.

mod protocol;

#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
mod os;

#[cfg(not(loom))]
pub use api::*;
pub use protocol::frame::CorruptFrame;
pub use protocol::layout::{
    DOORBELL_LEN, DOORBELLS_OFFSET, FRAME_ALIGN, FRAME_HEADER_LEN, LAYOUT_VERSION, LayoutError,
    MAGIC, MAX_CAPACITY, MAX_SLOTS, MIN_CAPACITY, RingConfig, RingLayout, SegmentKind, reader_slot,
    writer_slot,
};
pub use protocol::recovery::{Repair, RepairOutcome, UnblockOutcome};
