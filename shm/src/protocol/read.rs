//! The reader side of the protocol: join, poll, consume, lag recovery, parking.
//!
//! A reader walks the ring frame by frame from its position `pos`, expecting the claim with
//! sequence `next_seq` there. It reads in one of two ways:
//!
//! * **in place** (tethered readers at or after `safe_from`): writers cannot overwrite what
//!   the reader has not released, so a committed frame is handed out as a view into the ring and
//!   released when the caller is done with it.
//! * **by copy** (lossy readers; tethered readers catching up on history or after an eviction):
//!   the frame may be overwritten at any moment, so it is copied out and then checked, seqlock
//!   style, against the claim cursor; a copy that raced with an overwrite is never handed out.

use std::collections::VecDeque;

use crate::protocol::frame::{CorruptFrame, FrameHeader, kind, stamp};
use crate::protocol::layout::{FRAME_ALIGN, FRAME_HEADER_LEN, align_up, mode, valid_position};
use crate::protocol::memory::{CopyBuf, RingMemory};
use crate::protocol::sync::{Head, Ordering, fence};

use super::read_frame_header;

/// How many times lag recovery rescans before giving up for this poll (each rescan means the
/// ring lapped the reader again while it was scanning).
const RESCANS: usize = 16;

/// Most frames one poll steps over (padding, skipped claims, history before its start) before it
/// returns, so that a flood of them cannot keep a receive from returning (the next poll goes on
/// where this one stopped).
const MAX_STEPS: u32 = 1024;

/// A tethered reader that finds nothing this many times in a row checks whether writers lapped
/// it anyway: they do when its slot was damaged (another process wrote a position beyond its
/// own into it), and without the check it would wait forever at a frame that is gone.
const LAP_CHECK_INTERVAL: u32 = 256;

/// A reader that keeps finding frames publishes its position once it has read this fraction of
/// the buffer since it last did (and whenever it finds nothing, and with every frame while a
/// writer has waited for room for a while: see `SpaceWait::starving`). Publishing every frame would move the slot's cache line to a writer short of room
/// and back on every message; this way writers that fill the ring get room in slices of a
/// sixteenth of it, and hold back at most that much more than the reader has read.
#[cfg(not(loom))]
const RELEASE_FRACTION: u64 = 16;
/// The loom models' rings hold two frames, where a sixteenth is less than a frame and every
/// release would publish at once: a whole ring makes releases wait for a poll that finds nothing
/// (or a full ring), so the models check that path too.
#[cfg(loom)]
const RELEASE_FRACTION: u64 = 1;

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Nothing to read yet.
    Empty,
    /// A message: in place at `pos`, or copied into the caller's buffer.
    Frame(FrameView),
    /// Frames were overwritten before the reader got to them; it now stands at the oldest frame
    /// still held.
    Lagged(u64),
}

/// A data frame ready to hand out. Whether its payload is read in the ring or from the copy
/// buffer is [`ReaderCore::reads_in_place`] until it is consumed. (No flag here: 32 bytes without
/// padding move as two vector stores, where a padded struct was copied byte-wise.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FrameView {
    /// Absolute position of the frame.
    pub pos: u64,
    /// Its header.
    pub header: FrameHeader,
}

/// A reader's private protocol state.
#[derive(Debug)]
pub(crate) struct ReaderCore {
    /// Index of this reader's slot.
    pub slot: u32,
    /// Whether the reader holds writers back.
    tethered: bool,
    /// Absolute position of the next frame to look at. Moved only by [`ReaderCore::move_to`].
    pos: u64,
    /// The commit stamp a frame at `pos` will carry (`stamp(pos, key)`), kept so that a poll
    /// that finds nothing is one load and one compare.
    expected: u64,
    /// The ring's stamp key.
    key: u64,
    /// Sequence number of the claim expected at `pos`.
    next_seq: u64,
    /// Tethered readers: frames at or after this position are protected by the tether (the
    /// slot's position never goes below it) and are read in place. `u64::MAX` for lossy readers.
    safe_from: u64,
    /// Data frames with a smaller sequence number are stepped over (history selection).
    deliver_from: u64,
    /// Start of the oldest frame lent out in place and not yet given back (see
    /// [`ReaderCore::hold_from`]), or `u64::MAX`. The tether never passes it.
    held_from: u64,
    /// The position last stored in the slot (the tether, for tethered readers); see
    /// [`RELEASE_FRACTION`].
    published: u64,
    /// Polls in a row that found nothing (see [`LAP_CHECK_INTERVAL`]).
    idle_polls: u32,
}

impl ReaderCore {
    /// Claims a free reader slot for `owner` and joins the ring at its current head. `doorbell`
    /// is the index of the doorbell to park on. Fails when no slot is free, or when the head holds
    /// an impossible position (then the slot is given back).
    pub(crate) fn attach(
        mem: &RingMemory,
        owner: u64,
        tethered: bool,
        doorbell: u32,
    ) -> Result<ReaderCore, JoinError> {
        let g = mem.geometry();
        let slot = (0..g.reader_slots)
            .find(|&slot| {
                // Acquire pairs with the Release store of 0 in `detach` or the broker's reclaim.
                mem.reader(slot)
                    .owner
                    .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(JoinError::NoFreeSlot)?;
        let r = mem.reader(slot);
        r.doorbell.store(doorbell + 1, Ordering::Relaxed);
        r.parked.store(0, Ordering::Relaxed);
        r.missed.store(0, Ordering::Relaxed);
        // Relaxed: the SeqCst fence in `join` orders it before our head load (SYNC(join)).
        mem.readers_control()
            .high_water
            .fetch_max(slot + 1, Ordering::Relaxed);
        let mut core = ReaderCore {
            slot,
            tethered,
            pos: 0,
            expected: stamp(0, mem.stamp_key()),
            key: mem.stamp_key(),
            next_seq: 0,
            safe_from: u64::MAX,
            deliver_from: 0,
            held_from: u64::MAX,
            published: 0,
            idle_polls: 0,
        };
        let head = core.join(mem);
        if !valid_position(head.pos) {
            detach(mem, slot);
            return Err(JoinError::CorruptHead);
        }
        core.move_to(head.pos);
        core.next_seq = head.seq;
        Ok(core)
    }

    /// Takes over slot `slot`, which another process (the broker) attached for `owner` with
    /// [`ReaderCore::attach`], joined at `start`. Returns `None` if `owner` does not hold the slot
    /// or its mode does not match.
    pub(crate) fn adopt(
        mem: &RingMemory,
        slot: u32,
        owner: u64,
        tethered: bool,
        doorbell: u32,
        start: Head,
    ) -> Option<ReaderCore> {
        if slot >= mem.geometry().reader_slots || !valid_position(start.pos) {
            return None;
        }
        let r = mem.reader(slot);
        // Acquire pairs with the Release CAS that claimed the slot for us.
        if r.owner.load(Ordering::Acquire) != owner {
            return None;
        }
        let expected = matches!(
            (tethered, r.mode.load(Ordering::Relaxed)),
            (true, mode::TETHERED | mode::EVICTED) | (false, mode::LOSSY)
        );
        if !expected {
            return None;
        }
        r.doorbell.store(doorbell + 1, Ordering::Relaxed);
        Some(ReaderCore {
            slot,
            tethered,
            pos: start.pos,
            expected: stamp(start.pos, mem.stamp_key()),
            key: mem.stamp_key(),
            next_seq: start.seq,
            safe_from: if tethered { start.pos } else { u64::MAX },
            deliver_from: 0,
            held_from: u64::MAX,
            published: start.pos,
            idle_polls: 0,
        })
    }

    /// Moves the reader to `pos`, with the stamp a frame there will carry.
    #[inline]
    fn move_to(&mut self, pos: u64) {
        self.pos = pos;
        self.expected = stamp(pos, self.key);
    }

    /// Where this reader stands: the position and sequence number of the next frame.
    pub(crate) fn position(&self) -> Head {
        Head::new(self.pos, self.next_seq)
    }

    /// Sets the slot's mode and returns the head from which the ring is protected (tethered) or
    /// watched (lossy). Used to start, and to restart after an eviction.
    fn join(&mut self, mem: &RingMemory) -> Head {
        let r = mem.reader(self.slot);
        let head = &mem.control().head;
        if !self.tethered {
            // Relaxed: writers read modes only to count tethered readers (SYNC(join) orders
            // that); nothing else travels with a lossy reader's mode.
            r.mode.store(mode::LOSSY, Ordering::Relaxed);
            self.safe_from = u64::MAX;
            return head.load_for_reader();
        }
        // A lower bound first, so the slot never advertises a position above what it will read.
        r.pos.store(head.load_pos(), Ordering::Relaxed);
        // SYNC(join): mode store, SeqCst fence, head load; writers refreshing their limit do
        // head load, SeqCst fence, mode load (see `WriterCore::refresh_limit`). Either a
        // writer sees us tethered, or its head snapshot is no later than ours and its limit
        // never lets it write past our start + capacity.
        r.mode.store(mode::TETHERED, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let h = head.load_for_reader();
        // SYNC(release): from here on the tether is at `h.pos`.
        r.pos.store(h.pos, Ordering::Release);
        self.safe_from = h.pos;
        self.published = h.pos;
        h
    }

    /// Whether this tethered reader no longer holds writers back (it must then
    /// [`ReaderCore::become_lossy`]): the broker evicted it, or its slot says anything else
    /// than tethered — a faulty process may have written it, and writers go by the slot.
    #[inline]
    pub(crate) fn evicted(&self, mem: &RingMemory) -> bool {
        self.tethered && mem.reader(self.slot).mode.load(Ordering::Relaxed) != mode::TETHERED
    }

    /// After an eviction: the reader goes on as a lossy one — reading by copy, reporting what
    /// writers overwrote before it got there, holding nobody back. It never tethers again, so a
    /// reader that keeps stalling makes writers wait at most once.
    pub(crate) fn become_lossy(&mut self, mem: &RingMemory) {
        self.tethered = false;
        self.safe_from = u64::MAX;
        // Relaxed: as a lossy join (writers count only tethered readers, and EVICTED is not).
        mem.reader(self.slot)
            .mode
            .store(mode::LOSSY, Ordering::Relaxed);
    }

    /// Positions the reader so that it delivers the last `n` messages committed before it
    /// joined (as far as the ring still holds them), read by copy.
    pub(crate) fn start_with_history(&mut self, mem: &RingMemory, n: u64) {
        if n == 0 {
            return;
        }
        let join_pos = self.pos;
        'rescan: for _ in 0..RESCANS {
            let Ok(Some((oldest, oldest_seq))) = oldest_frame(mem) else {
                return;
            };
            if oldest >= join_pos {
                return;
            }
            let g = mem.geometry();
            let key = mem.stamp_key();
            let mut last: VecDeque<u64> = VecDeque::new();
            let mut pos = oldest;
            while pos < join_pos {
                // SYNC(publish): Acquire pairs with the commit's Release stamp store.
                if mem.word(pos).load(Ordering::Acquire) != stamp(pos, key) {
                    break; // in flight: history ends here, reading will wait for it
                }
                let h = read_frame_header(mem, pos);
                // SYNC(overwrite): see `poll_by_copy`.
                fence(Ordering::Acquire);
                if mem.control().head.load_pos() > pos + g.capacity {
                    continue 'rescan;
                }
                if h.validate(pos, g).is_err() {
                    break;
                }
                if h.kind == kind::DATA {
                    if last.len() as u64 == n {
                        last.pop_front();
                    }
                    last.push_back(h.seq);
                }
                // Validated sizes are at least a frame header, so the walk ends within a
                // capacity's worth of steps.
                pos += u64::from(h.size);
            }
            if let Some(&first) = last.front() {
                self.move_to(oldest);
                self.next_seq = oldest_seq;
                self.deliver_from = first;
            }
            return;
        }
    }

    /// Positions a reader that joined at the head to deliver from `from` instead — where a
    /// reader it takes over from stood (a session resuming), with the sequence number expected
    /// there — read by copy up to the join position; what writers overwrote since is reported as
    /// lost ([`Poll::Lagged`]). A `from` that is not below the join position changes nothing.
    pub(crate) fn start_at(&mut self, from: Head) {
        if !valid_position(from.pos) || from.pos >= self.pos || from.seq > self.next_seq {
            return;
        }
        self.move_to(from.pos);
        self.next_seq = from.seq;
    }

    /// Publishes the reader's position, whether or not it is due: for a reader about to go,
    /// so that its slot says where it stopped.
    pub(crate) fn flush_position(&mut self, mem: &RingMemory) {
        self.publish_position(mem);
    }

    /// Whether the next frame (the one `poll` delivered, until it is consumed) is read in place.
    #[inline]
    pub(crate) fn reads_in_place(&self) -> bool {
        self.pos >= self.safe_from
    }

    /// Looks for the next message, stepping over padding, skipped claims and frames before the
    /// history start. `buf` receives the payload of frames read by copy.
    #[inline]
    pub(crate) fn poll(
        &mut self,
        mem: &RingMemory,
        buf: &mut CopyBuf,
    ) -> Result<Poll, CorruptFrame> {
        let mut steps = 0;
        let result = loop {
            let step = if self.reads_in_place() {
                self.step_in_place(mem)?
            } else {
                self.step_by_copy(mem, buf)?
            };
            match step {
                Step::Advanced if steps < MAX_STEPS => steps += 1,
                // Enough for one poll: the caller polls again (its next poll goes on from here).
                Step::Advanced => break Poll::Empty,
                Step::Done(poll) => break poll,
            }
        };
        if !matches!(result, Poll::Frame(_)) && self.tether() != self.published {
            // Idle (or lagged): nothing to amortise the store over.
            self.publish_position(mem);
        }
        if result != Poll::Empty {
            self.idle_polls = 0;
            return Ok(result);
        }
        self.idle_polls = self.idle_polls.wrapping_add(1);
        if self.idle_polls % LAP_CHECK_INTERVAL == 0 {
            if self.reads_in_place() && self.lapped(mem) {
                return self.recover_in_place(mem);
            }
            if let Some(missed) = self.skip_hole(mem) {
                return Ok(Poll::Lagged(missed));
            }
        }
        Ok(result)
    }

    /// A reader that keeps finding nothing at its position while writers have claimed beyond
    /// it, and no writer is making a claim there, stands at a frame that was committed and then
    /// destroyed (a faulty process wrote over it): nothing will ever be committed there again.
    /// Moves to the next committed frame and returns how many claims were lost; `None` if the
    /// reader is not at such a hole.
    #[cold]
    fn skip_hole(&mut self, mem: &RingMemory) -> Option<u64> {
        let g = mem.geometry();
        // SYNC(intent): Acquire: the claim CAS (or store) up to this head value released the
        // intent of whoever claimed at our position.
        let head = mem.control().head.load(Ordering::Acquire);
        if !valid_position(head.pos) || head.pos <= self.pos || overrun(head.pos, self.pos, g) {
            return None;
        }
        let in_flight = (0..g.writer_slots).any(|slot| {
            // SYNC(retire): Acquire pairs with the Release clear of an intent after a commit:
            // a claim at our position that reads as retired has its stamp visible below.
            mem.writer(slot).intent_pos.load(Ordering::Acquire) == self.pos
        });
        // SYNC(publish): Acquire pairs with the commit's stamp store.
        if in_flight || mem.word(self.pos).load(Ordering::Acquire) == self.expected {
            return None;
        }
        let (pos, seq) = next_frame(mem, self.pos, head.pos)?;
        let missed = seq.wrapping_sub(self.next_seq);
        self.move_to(pos);
        self.next_seq = seq;
        self.publish_position(mem);
        Some(missed)
    }

    /// After a corrupt frame, which cannot be stepped over (its size is not to be trusted): goes
    /// on from the claim cursor, skipping everything before it. Stays put if the cursor itself
    /// is not a valid position (the broker retires such a ring).
    pub(crate) fn skip_to_head(&mut self, mem: &RingMemory) {
        let head = mem.control().head.load_for_reader();
        if !valid_position(head.pos) {
            return;
        }
        self.move_to(head.pos);
        self.next_seq = head.seq;
        self.publish_position(mem);
    }

    /// Whether writers claimed past this reader's position plus a lap (so what was there is
    /// overwritten).
    fn lapped(&self, mem: &RingMemory) -> bool {
        overrun(mem.control().head.load_pos(), self.pos, mem.geometry())
    }

    /// A tethered reader found itself lapped: it goes on, untethered, from the oldest frame
    /// still held, reporting what it lost.
    #[cold]
    fn recover_in_place(&mut self, mem: &RingMemory) -> Result<Poll, CorruptFrame> {
        self.become_lossy(mem);
        match self.recover(mem)? {
            Step::Done(poll) => Ok(poll),
            Step::Advanced => Ok(Poll::Empty),
        }
    }

    #[inline]
    fn step_in_place(&mut self, mem: &RingMemory) -> Result<Step, CorruptFrame> {
        let pos = self.pos;
        // SYNC(publish): Acquire pairs with the writer's Release (SeqCst) stamp store: the
        // header and payload are visible once the stamp is.
        if mem.word(pos).load(Ordering::Acquire) != self.expected {
            return Ok(Step::Done(Poll::Empty));
        }
        let h = read_frame_header(mem, pos);
        let checked = h
            .validate(pos, mem.geometry())
            .and_then(|()| self.check_seq(pos, &h));
        if let Err(corrupt) = checked {
            // A tethered frame is never overwritten — unless the reader's slot was damaged and
            // writers lapped it; then the frame is merely gone.
            if self.lapped(mem) {
                self.become_lossy(mem);
                return self.recover(mem);
            }
            return Err(corrupt);
        }
        Ok(self.advance_or_deliver(pos, h))
    }

    fn step_by_copy(&mut self, mem: &RingMemory, buf: &mut CopyBuf) -> Result<Step, CorruptFrame> {
        let g = mem.geometry();
        let pos = self.pos;
        let head = &mem.control().head;
        // SYNC(publish): Acquire pairs with the commit's Release stamp store.
        if mem.word(pos).load(Ordering::Acquire) != self.expected {
            if overrun(head.load_pos(), pos, g) {
                return self.recover(mem);
            }
            return Ok(Step::Done(Poll::Empty));
        }
        let h = read_frame_header(mem, pos);
        let valid = h.validate(pos, g);
        let deliver = valid.is_ok() && h.kind == kind::DATA && h.seq >= self.deliver_from;
        if deliver {
            mem.copy_out(pos + FRAME_HEADER_LEN, h.len as usize, buf);
        }
        // SYNC(overwrite): the Acquire fence pairs with the Release fence a writer issues
        // after claiming and before writing. If anything we read above came from a writer
        // that claimed past `pos + capacity`, this load sees that claim, and we discard the read.
        fence(Ordering::Acquire);
        let now = head.load_pos();
        if !valid_position(now) {
            // A retired (or corrupted) ring: nothing tells whether the copy raced with an
            // overwrite, so it is not delivered; nothing new comes either.
            return Ok(Step::Done(Poll::Empty));
        }
        if overrun(now, pos, g) {
            return self.recover(mem);
        }
        valid?;
        self.check_seq(pos, &h)?;
        Ok(self.advance_or_deliver(pos, h))
    }

    #[inline]
    fn check_seq(&self, pos: u64, h: &FrameHeader) -> Result<(), CorruptFrame> {
        if h.seq == self.next_seq {
            Ok(())
        } else {
            Err(CorruptFrame {
                pos,
                why: "sequence number out of order",
            })
        }
    }

    #[inline]
    fn advance_or_deliver(&mut self, pos: u64, h: FrameHeader) -> Step {
        if h.kind == kind::DATA && h.seq >= self.deliver_from {
            return Step::Done(Poll::Frame(FrameView { pos, header: h }));
        }
        self.move_to(pos + u64::from(h.size));
        if h.kind != kind::PAD {
            // Wrapping: the sequence numbers come from writers, who may have written anything.
            self.next_seq = h.seq.wrapping_add(1);
        }
        Step::Advanced
    }

    /// Jumps to the oldest committed frame still in the ring and reports how many claims were
    /// lost on the way.
    fn recover(&mut self, mem: &RingMemory) -> Result<Step, CorruptFrame> {
        let Some((pos, seq)) = oldest_frame(mem)? else {
            return Ok(Step::Done(Poll::Empty));
        };
        let missed = seq.saturating_sub(self.next_seq);
        self.move_to(pos);
        self.next_seq = seq;
        if missed == 0 {
            return Ok(Step::Advanced);
        }
        // A statistic others can overwrite: wrapping.
        let r = mem.reader(self.slot);
        let total = r.missed.load(Ordering::Relaxed).wrapping_add(missed);
        r.missed.store(total, Ordering::Relaxed);
        Ok(Step::Done(Poll::Lagged(missed)))
    }

    /// Releases a delivered frame: publishes the new position when [`RELEASE_FRACTION`] of the
    /// buffer has been read since the last time or a writer waits for space or starves (else the
    /// next poll that finds nothing publishes it). Returns whether writers are waiting for space (the
    /// caller then wakes them).
    #[inline]
    pub(crate) fn consume(&mut self, mem: &RingMemory, frame: &FrameView) -> bool {
        debug_assert_eq!(frame.pos, self.pos);
        self.move_to(frame.pos + u64::from(frame.header.size));
        self.next_seq = frame.header.seq.wrapping_add(1);
        let due = self.tether().saturating_sub(self.published)
            >= mem.geometry().capacity / RELEASE_FRACTION;
        let sw = mem.space_wait();
        // Relaxed, as in `publish_position`: hints, on a line writers write only when they
        // have waited for room.
        if due
            || sw.waiters.load(Ordering::Relaxed) != 0
            || sw.starving.load(Ordering::Relaxed) != 0
        {
            self.publish_position(mem)
        } else {
            false
        }
    }

    /// What the slot should say: the position, held back to the oldest frame lent out.
    #[inline]
    fn tether(&self) -> u64 {
        self.pos.min(self.held_from)
    }

    /// Keeps the tether at or below `pos` (the start of the oldest frame lent out in place), or
    /// lifts that limit with `u64::MAX`, and publishes the resulting tether. Returns whether
    /// writers are waiting for space.
    pub(crate) fn hold_from(&mut self, mem: &RingMemory, pos: u64) -> bool {
        self.held_from = pos;
        self.publish_position(mem)
    }

    /// [`ReaderCore::hold_from`] without publishing: the caller publishes next (a
    /// [`ReaderCore::consume`] does).
    pub(crate) fn set_held_from(&mut self, pos: u64) {
        self.held_from = pos;
    }

    /// Publishes the reader's position (the tether, for tethered readers in the protected
    /// zone, never past a frame still lent out). Returns whether writers are waiting for space.
    #[inline]
    fn publish_position(&mut self, mem: &RingMemory) -> bool {
        let r = mem.reader(self.slot);
        if !self.tethered {
            // Statistics only: lossy positions hold nobody back.
            r.pos.store(self.pos, Ordering::Relaxed);
            self.published = self.pos;
            return false;
        }
        let tether = self.tether();
        if tether < self.safe_from {
            return false; // catching up below the tether, which stays at `safe_from`
        }
        self.published = tether;
        // SYNC(release): Release pairs with the writer's Acquire load in `refresh_limit`: our
        // reads of every frame below the tether happen-before a writer overwrites them.
        r.pos.store(tether, Ordering::Release);
        // Relaxed, and no fence: a writer that parks re-checks the ring at least every
        // millisecond, so a wake-up missed here delays it by at most that (see crate docs,
        // "Waiting for space").
        mem.space_wait().waiters.load(Ordering::Relaxed) != 0
    }

    /// Announces that this reader is about to sleep on its doorbell.
    pub(crate) fn prepare_park(&self, mem: &RingMemory) {
        mem.reader(self.slot).parked.store(1, Ordering::Relaxed);
        // Release: makes the flag above visible to a writer that reads the count (Acquire).
        // SYNC(park): the caller issues `park_fence` after this and before `ready`.
        mem.readers_control().parked.fetch_add(1, Ordering::Release);
    }

    /// Withdraws [`ReaderCore::prepare_park`].
    pub(crate) fn cancel_park(&self, mem: &RingMemory) {
        withdraw_park(mem, self.slot);
    }

    /// Whether a poll would find something (a frame, a lag, an eviction to handle).
    pub(crate) fn ready(&self, mem: &RingMemory) -> bool {
        // SYNC(park): after `park_fence`. Acquire also pairs with the commit (SYNC(publish)),
        // though the caller polls again before reading anything.
        let committed = mem.word(self.pos).load(Ordering::Acquire) == self.expected;
        committed
            || self.evicted(mem)
            || mem.control().head.load_pos() > self.pos + mem.geometry().capacity
    }

    /// Sequence number of the claim expected next.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Frees reader slot `slot`: withdraws any park, stops holding writers back, clears the owner.
pub(crate) fn detach(mem: &RingMemory, slot: u32) {
    let r = mem.reader(slot);
    withdraw_park(mem, slot);
    // Relaxed: the owner's Release clear below orders it for the slot's next holder.
    r.mode.store(mode::INACTIVE, Ordering::Relaxed);
    // Release pairs with the Acquire CAS in `ReaderCore::attach`.
    r.owner.store(0, Ordering::Release);
}

/// Clears slot `slot`'s parked flag and, if it was set, takes it out of the parked count.
pub(crate) fn withdraw_park(mem: &RingMemory, slot: u32) {
    // Relaxed: the count is a hint for committers (see `SYNC(park)`); the swap makes sure one
    // flag is subtracted once, whoever withdraws it.
    if mem.reader(slot).parked.swap(0, Ordering::Relaxed) != 0 {
        mem.readers_control().parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reader's side of `SYNC(park)`, issued once after [`ReaderCore::prepare_park`] on every
/// reader that is about to sleep and before checking them with [`ReaderCore::ready`]. Returns
/// false when it could not order registered writers (see `crate::protocol::fence`); the caller must then
/// sleep with a timeout.
pub(crate) fn park_fence() -> bool {
    crate::protocol::fence::heavy()
}

enum Step {
    Advanced,
    Done(Poll),
}

/// Whether writers have claimed past `pos + capacity` (so what was at `pos` is overwritten),
/// given the cursor's position `head`. A cursor with an impossible position (a retired ring, or
/// a corrupted one) says nothing of the kind.
#[inline]
fn overrun(head: u64, pos: u64, g: &crate::protocol::layout::Geometry) -> bool {
    valid_position(head) && head > pos + g.capacity
}

/// The first committed frame after `pos` and below `head`, as `(position, sequence)`, checked
/// seqlock style as in [`oldest_frame`].
fn next_frame(mem: &RingMemory, pos: u64, head: u64) -> Option<(u64, u64)> {
    let g = mem.geometry();
    let key = mem.stamp_key();
    let cursor = &mem.control().head;
    // At most capacity / FRAME_ALIGN steps: `head` is less than a lap beyond `pos`.
    let mut u = pos + FRAME_ALIGN;
    while u < head {
        // SYNC(publish): Acquire pairs with the commit's Release stamp store.
        if mem.word(u).load(Ordering::Acquire) == stamp(u, key) {
            let header = read_frame_header(mem, u);
            // SYNC(overwrite): as in `step_by_copy`.
            fence(Ordering::Acquire);
            if overrun(cursor.load_pos(), u, g) {
                return None;
            }
            if header.validate(u, g).is_ok() {
                return Some((u, header.seq));
            }
        }
        u += FRAME_ALIGN;
    }
    None
}

/// The sequence number a reader standing at `pos` expects: the next claim's if `pos` is the
/// head, else that of the committed frame starting at `pos` (checked seqlock style, as in
/// [`oldest_frame`]). `None` when neither holds: `pos` is not a frame start, its frame is in
/// flight or padding, or it was overwritten.
pub(crate) fn sequence_at(mem: &RingMemory, pos: u64) -> Option<u64> {
    let g = mem.geometry();
    let cursor = &mem.control().head;
    let head = cursor.load_for_reader();
    if pos == head.pos {
        return Some(head.seq);
    }
    if !valid_position(pos) || pos > head.pos || overrun(head.pos, pos, g) {
        return None;
    }
    // SYNC(publish): Acquire pairs with the commit's Release stamp store.
    if mem.word(pos).load(Ordering::Acquire) != stamp(pos, mem.stamp_key()) {
        return None;
    }
    let header = read_frame_header(mem, pos);
    // SYNC(overwrite): as in `step_by_copy`.
    fence(Ordering::Acquire);
    if overrun(cursor.load_pos(), pos, g) || header.validate(pos, g).is_err() {
        return None;
    }
    (header.kind == kind::DATA).then_some(header.seq)
}

/// The oldest committed frame still held in the ring, as `(position, sequence)`; an error when the
/// head holds an impossible position.
///
/// Scans the last `capacity` bytes below the head for a unit whose word holds its own stamp —
/// which only a committed frame's header does (see `frame::stamp`) — and checks, seqlock style,
/// that it was not overwritten while being read.
pub(crate) fn oldest_frame(mem: &RingMemory) -> Result<Option<(u64, u64)>, CorruptFrame> {
    let g = mem.geometry();
    let key = mem.stamp_key();
    let head = &mem.control().head;
    'rescan: for _ in 0..RESCANS {
        let h = head.load_pos();
        if !valid_position(h) {
            return Err(CorruptFrame {
                pos: h,
                why: "the claim cursor holds an impossible position",
            });
        }
        // At most capacity / FRAME_ALIGN steps: from a capacity below the head up to it.
        let mut u = align_up(h.saturating_sub(g.capacity), FRAME_ALIGN);
        while u < h {
            // SYNC(publish): Acquire pairs with the commit's Release stamp store.
            if mem.word(u).load(Ordering::Acquire) == stamp(u, key) {
                let header = read_frame_header(mem, u);
                // SYNC(overwrite): as in `step_by_copy`.
                fence(Ordering::Acquire);
                if head.load_pos() > u + g.capacity {
                    continue 'rescan;
                }
                if header.validate(u, g).is_ok() {
                    return Ok(Some((u, header.seq)));
                }
            }
            u += FRAME_ALIGN;
        }
        return Ok(None);
    }
    Ok(None)
}

/// Why a reader could not join a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// Every reader slot is taken.
    NoFreeSlot,
    /// The claim cursor holds an impossible position.
    CorruptHead,
}
