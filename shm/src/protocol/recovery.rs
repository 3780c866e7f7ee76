//! What the broker does when participants die or stall.
//!
//! Everything here works from outside the affected process, using only what shared memory
//! records: writer intents (which claim a writer may hold), reader modes and positions,
//! and slot owners. The caller decides who is alive (the broker knows from its connections).

use crate::protocol::frame::{FrameHeader, kind, stamp};
use crate::protocol::layout::{Geometry, NO_INTENT, RETIRED_POSITION, mode, valid_position};
use crate::protocol::memory::RingMemory;
use crate::protocol::sync::{Head, Ordering};

use super::claim::wake_parked;
use super::read_frame_header;
use super::write_frame_header;

/// What repair did with one dead writer's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairOutcome {
    /// The writer held no claim (or its claim was committed): its slot was freed.
    Released,
    /// Its claim `pos..pos + size` (sequence `seq`) was never committed; it is now a skipped
    /// frame that readers step over, and the slot was freed.
    Skipped {
        /// Start of the claim.
        pos: u64,
        /// Its sequence number.
        seq: u64,
        /// Its length in bytes.
        size: u64,
    },
    /// A live writer may hold the same claim, or its extent is not yet known; try again
    /// later.
    Deferred,
    /// The claim cursor or the writer's intent holds values no claim can have (the writer was
    /// faulty): the slot was freed without touching the frames, and the ring cannot be trusted
    /// to go on — readers may wait at a claim nobody can repair.
    Corrupt,
}

/// One dead writer slot handled by `Ring::repair_dead_writers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    /// The writer slot.
    pub slot: u32,
    /// The dead owner's token.
    pub owner: u64,
    /// What was done.
    pub outcome: RepairOutcome,
}

/// Frees the slots of dead writers, turning any claim one of them left uncommitted into a
/// skipped frame so readers (and, through them, writers) can go on.
///
/// A claim is repaired only when no live writer could hold it: every writer records its
/// intent `(pos, seq, end)` before the CAS that makes the claim, and that CAS releases the intent
/// to us through the head we load first. So if the claim at `pos` exists (the head's sequence
/// has passed `seq`) and no live writer's intent names `pos`, its owner is dead, and nobody
/// will write there again.
pub(crate) fn repair_dead_writers(
    mem: &RingMemory,
    alive: &dyn Fn(u64) -> bool,
    ring_doorbell: &dyn Fn(u32),
) -> Vec<Repair> {
    // SYNC(intent): Acquire: every claim CAS up to this head value released its intent to us.
    let head = mem.control().head.load(Ordering::Acquire);
    // Every slot, not only those below the high-water mark, which a faulty writer can lower.
    let slots = mem.geometry().writer_slots;
    let mut repairs = Vec::new();
    for slot in 0..slots {
        let s = mem.writer(slot);
        // Acquire pairs with the Release clear of the owner in `WriterCore::detach`: a slot
        // that reads as free was left with its intent retired.
        let owner = s.owner.load(Ordering::Acquire);
        if owner == 0 || alive(owner) {
            continue;
        }
        let outcome = repair_slot(mem, slot, head, slots, alive, ring_doorbell);
        if outcome != RepairOutcome::Deferred {
            // Release pairs with the Acquire CAS of the next holder in `WriterCore::attach`.
            s.owner.store(0, Ordering::Release);
        }
        repairs.push(Repair {
            slot,
            owner,
            outcome,
        });
    }
    repairs
}

fn repair_slot(
    mem: &RingMemory,
    slot: u32,
    head: Head,
    slots: u32,
    alive: &dyn Fn(u64) -> bool,
    ring_doorbell: &dyn Fn(u32),
) -> RepairOutcome {
    let s = mem.writer(slot);
    // SYNC(retire): Acquire pairs with the Release clear after a commit.
    let pos = s.intent_pos.load(Ordering::Acquire);
    let seq = s.intent_seq.load(Ordering::Relaxed);
    let end = s.intent_end.load(Ordering::Relaxed);
    if pos == NO_INTENT || head.seq <= seq {
        // No claim, or a CAS that never happened (nobody has claimed from (pos, seq) yet).
        // SYNC(retire): Release, as a writer's own clear after a commit.
        s.intent_pos.store(NO_INTENT, Ordering::Release);
        return RepairOutcome::Released;
    }
    if !plausible_claim(mem.geometry(), head, pos, end) {
        // Whatever the writer recorded, no frame is touched on its word.
        // SYNC(retire): Release, as a writer's own clear after a commit.
        s.intent_pos.store(NO_INTENT, Ordering::Release);
        return RepairOutcome::Corrupt;
    }
    // The claim (pos, seq) exists. If a live writer names it, that writer may own it.
    let live_claimant = (0..slots).filter(|&o| o != slot).any(|o| {
        let other = mem.writer(o);
        // Acquire for the owner as above; SYNC(retire) for the intent.
        let owner = other.owner.load(Ordering::Acquire);
        owner != 0 && alive(owner) && other.intent_pos.load(Ordering::Acquire) == pos
    });
    if live_claimant {
        return RepairOutcome::Deferred;
    }
    // Read after the intents: a live owner that committed and retired its intent (Release)
    // made its stamp visible to the Acquire loads above.
    if committed(mem, pos) {
        // SYNC(retire): Release, as a writer's own clear after a commit.
        s.intent_pos.store(NO_INTENT, Ordering::Release);
        return RepairOutcome::Released;
    }
    let Some(end) = claim_end(mem, slot, pos, seq, end, head, slots) else {
        return RepairOutcome::Deferred;
    };
    // The claim's true end: the head has passed it.
    if !plausible_claim(mem.geometry(), head, pos, end) || end > head.pos {
        // SYNC(retire): Release, as a writer's own clear after a commit.
        s.intent_pos.store(NO_INTENT, Ordering::Release);
        return RepairOutcome::Corrupt;
    }
    pad_claim(mem, pos, seq, end, ring_doorbell);
    // SYNC(retire): as in `WriterCore::commit`.
    s.intent_pos.store(NO_INTENT, Ordering::Release);
    RepairOutcome::Skipped {
        pos,
        seq,
        size: end - pos,
    }
}

/// Turns the uncommitted claim `pos..end` (sequence `seq`) into a skipped frame that readers
/// step over, and wakes parked readers. The caller has made sure nobody will commit the claim
/// and that it is plausible (see [`plausible_claim`]).
fn pad_claim(mem: &RingMemory, pos: u64, seq: u64, end: u64, ring_doorbell: &dyn Fn(u32)) {
    let g = mem.geometry();
    let key = mem.stamp_key();
    // A claim that wrapped holds a frame at the lap boundary, possibly committed; erase its
    // stamp so nothing ever reads it as part of the stream (it is inside the skipped range).
    let lap = (pos / g.capacity + 1) * g.capacity;
    if pos % g.capacity != 0 && lap < end {
        mem.word(lap).store(0, Ordering::Relaxed);
    }
    let skip = FrameHeader {
        len: 0,
        size: (end - pos) as u32,
        seq,
        writer: 0,
        kind: kind::SKIP,
    };
    write_frame_header(mem, pos, &skip);
    // SYNC(publish): as in `WriterCore::commit` (and `wake_parked` issues the park fence).
    mem.word(pos).store(stamp(pos, key), Ordering::Release);
    wake_parked(mem, ring_doorbell);
}

/// What [`Ring::unblock_claim`](crate::Ring::unblock_claim) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnblockOutcome {
    /// The claim `pos..pos + size` (sequence `seq`) was taken back from its live writer and is
    /// now a skipped frame; the writer's commit of it will fail.
    Unblocked {
        /// Start of the claim.
        pos: u64,
        /// Its sequence number.
        seq: u64,
        /// Its length in bytes.
        size: u64,
    },
    /// The writer is committing the claim right now, or another writer names the same claim:
    /// look again later.
    Deferred,
    /// The writer no longer holds that claim (it committed, or never made it).
    Gone,
    /// The claim's values are impossible (the writer is faulty): nothing was touched.
    Corrupt,
    /// This system cannot order the writer's commit against the take-back (no global
    /// membarrier): claims are never taken back from live writers here.
    Unsupported,
}

/// Takes back the claim starting at `pos` that the live writer in `slot` holds (it has held it
/// too long: readers wait at it) and pads it, so that readers and writers go on; the writer's
/// commit then fails. See "Claims held too long" in `protocol::claim` for the protocol.
pub(crate) fn unblock_claim(
    mem: &RingMemory,
    slot: u32,
    pos: u64,
    ring_doorbell: &dyn Fn(u32),
) -> UnblockOutcome {
    let s = mem.writer(slot);
    // SYNC(intent): Acquire: the claim CAS up to this head value released its intent to us.
    let head = mem.control().head.load(Ordering::Acquire);
    // SYNC(retire): Acquire pairs with the Release clear of the intent after a commit.
    let (intent, seq, end) = (
        s.intent_pos.load(Ordering::Acquire),
        s.intent_seq.load(Ordering::Relaxed),
        s.intent_end.load(Ordering::Relaxed),
    );
    if intent != pos || head.seq <= seq || committed(mem, pos) {
        return UnblockOutcome::Gone;
    }
    if !plausible_claim(mem.geometry(), head, pos, end) || end > head.pos {
        return UnblockOutcome::Corrupt;
    }
    // A writer whose CAS lost to another's names the other's claim until it tries again: the
    // claim is this writer's only if no other writer names it.
    let slots = mem.geometry().writer_slots;
    // SYNC(retire): Acquire, as for our own intent.
    if (0..slots).any(|o| o != slot && mem.writer(o).intent_pos.load(Ordering::Acquire) == pos) {
        return UnblockOutcome::Deferred;
    }
    // SYNC(unblock): revoked store, heavy fence, committing load; see `WriterCore::commit`.
    s.revoked.store(pos, Ordering::Relaxed);
    if !crate::protocol::fence::heavy() {
        s.revoked.store(NO_INTENT, Ordering::Relaxed);
        return UnblockOutcome::Unsupported;
    }
    // Acquire pairs with the writer's Release store of `committing`.
    if s.committing.load(Ordering::Acquire) == pos {
        return UnblockOutcome::Deferred;
    }
    // From here the writer cannot commit the claim (it will see `revoked`). It may have
    // committed it before we stored `revoked`, though — then its intent moved on.
    // SYNC(retire): Acquire, as above.
    if s.intent_pos.load(Ordering::Acquire) != pos || committed(mem, pos) {
        return UnblockOutcome::Gone;
    }
    pad_claim(mem, pos, seq, end, ring_doorbell);
    // SYNC(retire): Release, as a writer's own clear after a commit: the padding is visible to
    // writers that see the intent gone (and to the writer itself, waiting in `try_claim`).
    let _ = s
        .intent_pos
        .compare_exchange(pos, NO_INTENT, Ordering::Release, Ordering::Relaxed);
    UnblockOutcome::Unblocked {
        pos,
        seq,
        size: end - pos,
    }
}

/// Whether the frame at `pos` carries its commit stamp.
fn committed(mem: &RingMemory, pos: u64) -> bool {
    // SYNC(publish): Acquire pairs with the stamp's Release store in the commit.
    mem.word(pos).load(Ordering::Acquire) == stamp(pos, mem.stamp_key())
}

/// Whether `pos..end`, read from a writer's slot, can be a claim made below the head `head`:
/// positions valid, a claim of at most a buffer's length, starting within the last lap below the
/// head. Only such a claim is ever repaired, so repair never writes over a live frame on the word
/// of a faulty writer (and `RingMemory::word` keeps every access inside the buffer anyway).
fn plausible_claim(g: &Geometry, head: Head, pos: u64, end: u64) -> bool {
    valid_position(pos)
        && valid_position(end)
        && valid_position(head.pos)
        && pos < end
        && end - pos <= g.capacity
        && pos < head.pos
        && head.pos - pos <= g.capacity
}

/// The end of the claim `(pos, seq)` recorded by dead slot `slot` as ending at `end`.
///
/// Normally that is `end`. But two dead writers may have recorded intents from the same head
/// value with different ends, only one of whose CAS succeeded; then the true end is where the
/// head went next: the head itself if no later claim exists, else the start of claim `seq + 1`,
/// known from its committed header or from its claimant's intent.
fn claim_end(
    mem: &RingMemory,
    slot: u32,
    pos: u64,
    seq: u64,
    end: u64,
    head: Head,
    slots: u32,
) -> Option<u64> {
    let rivals: Vec<u64> = (0..slots)
        .filter(|&o| o != slot)
        .map(|o| mem.writer(o))
        .filter(|p| {
            // SYNC(retire): Acquire pairs with the Release clear of an intent.
            p.intent_pos.load(Ordering::Acquire) == pos
                && p.intent_seq.load(Ordering::Relaxed) == seq
        })
        .map(|p| p.intent_end.load(Ordering::Relaxed))
        .filter(|&e| e != end)
        .collect();
    if rivals.is_empty() {
        return Some(end);
    }
    if head.seq == seq + 1 {
        return Some(head.pos);
    }
    let key = mem.stamp_key();
    std::iter::once(end).chain(rivals).find(|&candidate| {
        // SYNC(publish) for the stamp, SYNC(retire) for the intents, as above.
        let committed = mem.word(candidate).load(Ordering::Acquire) == stamp(candidate, key)
            && read_frame_header(mem, candidate).seq == seq + 1;
        committed
            || (0..slots).any(|o| {
                let p = mem.writer(o);
                p.intent_pos.load(Ordering::Acquire) == candidate
                    && p.intent_seq.load(Ordering::Relaxed) == seq + 1
            })
    })
}

/// Untethers a tethered reader that stopped making progress: writers stop waiting for it, and
/// it reports `Lagged` for whatever they overwrite before it resumes. Returns whether the reader
/// was tethered.
pub(crate) fn untether_reader(mem: &RingMemory, slot: u32) -> bool {
    // Relaxed: writers that later see EVICTED stop counting the reader; nothing written
    // before needs to be visible with it.
    mem.reader(slot)
        .mode
        .compare_exchange(
            mode::TETHERED,
            mode::EVICTED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// Frees the slot of reader `slot` if `owner` still holds it (its process died). Returns
/// whether it was freed.
pub(crate) fn reclaim_reader(mem: &RingMemory, slot: u32, owner: u64) -> bool {
    let r = mem.reader(slot);
    // Acquire pairs with the Release clear of the owner when a reader detaches: a slot that
    // reads as free is no longer used by its last holder.
    if r.owner.load(Ordering::Acquire) != owner {
        return false;
    }
    // Relaxed: writers that later see it stop counting the reader, which is all we need.
    r.mode.store(mode::INACTIVE, Ordering::Relaxed);
    super::read::withdraw_park(mem, slot);
    // Release pairs with the Acquire CAS of the next holder in `ReaderCore::attach`.
    r.owner
        .compare_exchange(owner, 0, Ordering::Release, Ordering::Relaxed)
        .is_ok()
}

/// Retires the ring: its claim cursor is set to `RETIRED_POSITION`, so every writer's next
/// claim fails (and its owner moves to a fresh ring) while readers find nothing new. Used by the
/// broker for a ring it cannot trust any more.
///
/// The cursor's exclusive owner (see "Exclusive claims" in `protocol::claim`) stores the cursor
/// without reading it; clearing its token sends its next claim through the shared path, which
/// reads the cursor. A claim it was making as we retired may still land on top: the caller
/// retires again until no writer is left (see [`is_retired`]).
pub(crate) fn retire(mem: &RingMemory) {
    let control = mem.control();
    // Relaxed: the owner compares its token after a fence and, seeing it gone, withdraws its
    // intent and reads the cursor (Acquire) before it claims.
    control.exclusive.store(0, Ordering::Relaxed);
    // SYNC(intent): Acquire, as in `refresh_limit`.
    let mut head = control.head.load(Ordering::Acquire);
    while head.pos != RETIRED_POSITION {
        let retired = Head {
            pos: RETIRED_POSITION,
            seq: head.seq,
            exclusive: false,
        };
        // AcqRel like every claim CAS: it continues the release sequence of the claims before.
        match control
            .head
            .compare_exchange(head, retired, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => break,
            Err(actual) => head = actual,
        }
    }
}

/// Whether the ring's claim cursor says it is retired.
pub(crate) fn is_retired(mem: &RingMemory) -> bool {
    mem.control().head.load_pos() == RETIRED_POSITION
}
