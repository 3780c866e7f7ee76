//! The writer side of the protocol: claim, commit, abort.
//!
//! ```text
//! writer                                   shared memory
//! ---------                                   -------------
//! (pos, seq) = cached head
//! room check against cached limit  ───────▶  (refresh: head, intents, tethered reader positions)
//! intent := (pos, seq)                        writer slot
//! CAS head (pos, seq) → (end, seq+1)   ◀──▶   claim cursor
//! write header words 1–3, payload             frame buffer
//! stamp := stamp(frame)                       frame buffer (word 0)   ── readers may now read it
//! parked readers? ring their doorbells        readers segment, doorbells
//! intent := none                              writer slot          ── others may now lap it
//! ```
//!
//! # Claims held too long
//!
//! A writer stopped between claim and commit (a debugger, SIGSTOP, a descheduled VM) holds up
//! every reader at its claim. The broker takes such a claim back after its unblock timeout
//! (`crate::protocol::recovery::unblock_claim`) and pads it with a skipped frame, like a dead
//! writer's. The writer must then never commit it: `SYNC(unblock)` is a Dekker pattern between
//! the commit (store `committing`, light fence, load `revoked`) and the broker (store `revoked`,
//! heavy fence, load `committing`). Either the writer sees `revoked` and commits nothing, or
//! the broker sees `committing` and leaves the claim alone until the writer's commit lands.
//! A writer whose claim was taken back waits, before claiming again, until the broker has
//! padded it (its intent is cleared), so that the intent keeps every writer from lapping the
//! claim before then.

//!
//! # Exclusive claims
//!
//! The CAS of a claim is a locked instruction, and on x86 a locked instruction waits until every
//! earlier store of the thread is visible — for a writer streaming frames that a reader is
//! polling, a cross-core transfer per message. Most rings have one writer, which needs no
//! CAS: a writer that finds itself alone takes the cursor (an epoch-stamped token in
//! `RingControl::exclusive`, and the exclusive flag in the head, which makes every other
//! writer's CAS impossible) and from then on claims with intent stores, a light fence, a check
//! that its token is still in place, and a plain store of the head.
//!
//! Another writer that finds the flag revokes: it marks the token `REVOKING`, issues the heavy
//! fence (`SYNC(exclusive)`, see `crate::protocol::fence`), then waits until the owner holds no claim it
//! might still publish with a plain store — its intent withdrawn, or the head past it — and clears
//! the flag with a CAS. The owner either saw `REVOKING` before storing (and withdrew its intent) or
//! its intent was visible to the revoker, whose wait covers that last plain store. Ownership is
//! only taken where the heavy fence is available.

use crate::protocol::frame::{FrameHeader, kind, stamp};
use crate::protocol::layout::{
    ACKNOWLEDGED, Geometry, MAX_SEQUENCE, NO_INTENT, RETIRED_POSITION, REVOKING, frame_size, mode,
    valid_position,
};
use crate::protocol::memory::RingMemory;
use crate::protocol::sync::{Backoff, Head, Ordering, fence};

/// Shared-mode claims between two checks whether this writer is alone and may own the cursor.
const ALONE_CHECK_INTERVAL: u32 = 1024;

use super::write_frame_header;

/// A claimed, not yet committed, range of the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Where the claim starts: the head position it was made from.
    pub start: u64,
    /// Where the frame starts: `start`, or the next lap boundary when the frame would not fit
    /// before the end of the buffer (then `start..frame` is padding).
    pub frame: u64,
    /// Where the claim ends; the next claim starts here.
    pub end: u64,
    /// The claim's sequence number.
    pub seq: u64,
    /// Payload bytes the frame has room for.
    pub payload: u32,
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// The payload exceeds the ring's largest payload.
    TooLarge,
    /// Not enough released space.
    Full,
    /// The claim cursor holds a value no ring can have (a faulty writer wrote it): nothing can be
    /// claimed on this ring any more.
    Corrupt,
    /// The broker retired the ring: nothing can be claimed on it any more.
    Retired,
}

/// The broker took the claim back (it was held longer than the unblock timeout): nothing was
/// committed, and the broker pads the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Revoked;

/// A writer's private protocol state. Its slot in shared memory holds what others need to see.
#[derive(Debug)]
pub(crate) struct WriterCore {
    /// Index of this writer's slot.
    pub slot: u32,
    /// Bus-wide id written into every frame.
    pub id: u32,
    /// Last head value this writer knows of: the expected value of its next CAS.
    head: Head,
    /// Claims may end at or below this position without looking at readers again.
    ///
    /// Invariant: `limit <= m + capacity`, where `m` is a lower bound, at the time it was
    /// computed, of every tethered reader's position and every other writer's intent.
    limit: u64,
    /// This writer's ownership token while it owns the cursor, else 0.
    token: u64,
    /// Claims made through the shared path (paces the checks for being alone).
    shared_claims: u32,
    /// Start of a claim the broker took back and has not yet padded, or `NO_INTENT`.
    revoked: u64,
}

impl WriterCore {
    /// Claims a free writer slot for `owner` and starts with a fresh view of the ring.
    pub(crate) fn attach(mem: &RingMemory, owner: u64, id: u32) -> Option<WriterCore> {
        let g = mem.geometry();
        (0..g.writer_slots).find_map(|slot| {
            let s = mem.writer(slot);
            // Acquire pairs with the Release store of 0 in `detach`/`reclaim`, so the previous
            // holder's reset of `intent_pos` is visible.
            s.owner
                .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                .ok()?;
            s.writer_id.store(id, Ordering::Relaxed);
            s.published.store(0, Ordering::Relaxed);
            // Release pairs with the Acquire load in `refresh_limit`; see there.
            mem.counters()
                .writer_high_water
                .fetch_max(slot + 1, Ordering::Release);
            let head = mem.control().head.load(Ordering::Acquire);
            let mut core = WriterCore {
                slot,
                id,
                head,
                limit: 0,
                token: 0,
                shared_claims: 0,
                revoked: NO_INTENT,
            };
            core.try_take_exclusive(mem);
            Some(core)
        })
    }

    /// Takes ownership of the cursor if this writer is the only one on the ring and the heavy
    /// fence is available to take it back.
    fn try_take_exclusive(&mut self, mem: &RingMemory) {
        if self.token != 0 || !crate::protocol::fence::light_is_asymmetric() {
            return;
        }
        let g = mem.geometry();
        // Acquire pairs with the Release fetch_max in `attach`, as in `refresh_limit`.
        let slots = mem
            .counters()
            .writer_high_water
            .load(Ordering::Acquire)
            .min(g.writer_slots);
        let alone =
            (0..slots).all(|s| s == self.slot || mem.writer(s).owner.load(Ordering::Relaxed) == 0);
        if !alone {
            return;
        }
        let control = mem.control();
        let epoch = control
            .epoch
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            & 0x7fff_ffff;
        let token = (epoch.max(1) << 32) | u64::from(self.slot + 1);
        if control
            .exclusive
            .compare_exchange(0, token, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // SYNC(intent): Acquire, as in `refresh_limit`.
        let head = control.head.load(Ordering::Acquire);
        let owned = Head {
            exclusive: true,
            ..head
        };
        // AcqRel: like any claim CAS, it continues the release sequence of the claims before it
        // (SYNC(intent)), so our later plain stores carry their intents' visibility along.
        if head.exclusive
            || control
                .head
                .compare_exchange(head, owned, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            let _ =
                control
                    .exclusive
                    .compare_exchange(token, 0, Ordering::Relaxed, Ordering::Relaxed);
            return;
        }
        self.token = token;
        self.head = owned;
    }

    /// Gives up ownership of the cursor, if held.
    fn release_exclusive(&mut self, mem: &RingMemory) {
        if self.token == 0 {
            return;
        }
        let control = mem.control();
        // SYNC(intent): Acquire, as in `refresh_limit`.
        let head = control.head.load(Ordering::Acquire);
        // If a revoker is at work it clears the flag itself; either CAS may win. AcqRel, like
        // every claim CAS, continues the release sequence of the claims (SYNC(intent)).
        let _ = control.head.compare_exchange(
            head,
            Head {
                exclusive: false,
                ..head
            },
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        for current in [
            self.token,
            self.token | REVOKING,
            self.token | REVOKING | ACKNOWLEDGED,
        ] {
            let _ = control.exclusive.compare_exchange(
                current,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.token = 0;
    }

    /// Frees this writer's slot. Must not hold a claim. A slot whose claim was taken back and
    /// not yet padded stays held: the broker pads it (its owner is alive) and frees the slot
    /// when the owner's connection ends.
    pub(crate) fn detach(&mut self, mem: &RingMemory) {
        self.release_exclusive(mem);
        if self.awaiting_unblock(mem) {
            return;
        }
        // No claim is held (the intent may say otherwise only if a faulty process wrote it).
        // Release pairs with the Acquire CAS in `attach`.
        mem.writer(self.slot).owner.store(0, Ordering::Release);
    }

    /// Whether a claim of this writer that the broker took back still waits for its padding.
    #[inline]
    fn awaiting_unblock(&mut self, mem: &RingMemory) -> bool {
        if self.revoked == NO_INTENT {
            return false;
        }
        // Acquire pairs with the broker's Release clear of the intent in `unblock_claim`, after
        // it wrote the padding.
        if mem.writer(self.slot).intent_pos.load(Ordering::Acquire) == self.revoked {
            return true;
        }
        self.revoked = NO_INTENT;
        false
    }

    /// Recomputes [`WriterCore::limit`] from the claim cursor, the other writers' intents
    /// and the tethered readers' positions.
    pub(crate) fn refresh_limit(&mut self, mem: &RingMemory) {
        let g = mem.geometry();
        // SYNC(intent): Acquire, see the intents below.
        let head = mem.control().head.load(Ordering::Acquire);
        // SYNC(join): a joining reader stores its mode, issues a SeqCst fence and loads the
        // head; we load the head, issue a SeqCst fence and load the modes. If our fence comes
        // first in the fences' total order, the reader's head load is coherence-ordered after
        // ours (it sees our head or a later one), so the limit below stays under its start plus
        // the capacity; if its fence comes first, we see it tethered.
        fence(Ordering::SeqCst);
        let mut min = head.pos;
        // Acquire pairs with the Release fetch_max in `attach`: a slot above the mark we read was
        // claimed after this load, and its first claim starts at or after `head.pos` (its intent
        // is published by its CAS, which we would otherwise have seen through `head`).
        let writers = mem
            .counters()
            .writer_high_water
            .load(Ordering::Acquire)
            .min(g.writer_slots);
        for slot in (0..writers).filter(|&s| s != self.slot) {
            // SYNC(retire): Acquire pairs with the Release clear of the intent after a commit, so
            // that writer's frame writes happen-before our overwriting of them a lap later.
            // SYNC(intent): an intent whose claim succeeded is visible through the head load
            // above (its CAS released it).
            let intent = mem.writer(slot).intent_pos.load(Ordering::Acquire);
            if intent != NO_INTENT {
                min = min.min(intent);
            }
        }
        // Relaxed: ordered by the fence above (SYNC(join)); a reader raises the mark before its
        // own fence.
        let readers = mem
            .readers_control()
            .high_water
            .load(Ordering::Relaxed)
            .min(g.reader_slots);
        for slot in 0..readers {
            let r = mem.reader(slot);
            if r.mode.load(Ordering::Relaxed) == mode::TETHERED {
                // SYNC(release): Acquire pairs with the reader's Release store of its position
                // after it finished with the frames below it. Garbage from a hostile reader can
                // only lower the limit, stalling writers until the broker evicts it.
                min = min.min(r.pos.load(Ordering::Acquire));
            }
        }
        // Saturating: `min` is at most the head, which a faulty writer may have made anything.
        self.limit = min.saturating_add(g.capacity);
        if head.seq > self.head.seq {
            self.head = head;
        }
    }

    /// Bytes to claim for a frame of `payload` bytes. A writer alone on its ring (holding the
    /// cursor) pads one-line frames to a line pair ([`Geometry::claim_size`]); writers that
    /// share the ring do not, since padded frames halve how many small messages the ring holds,
    /// and with publishers preempted mid-claim a fuller ring cost 4 publishers → 1 a third of
    /// their throughput.
    #[inline]
    fn claim_size(&self, g: &Geometry, payload: u32) -> u64 {
        if self.token != 0 {
            g.claim_size(u64::from(payload))
        } else {
            frame_size(u64::from(payload))
        }
    }

    /// Whether a claim for `payload` bytes would fit now (it re-reads the readers' positions).
    pub(crate) fn would_fit(&mut self, mem: &RingMemory, payload: u32) -> bool {
        self.refresh_limit(mem);
        let g = mem.geometry();
        let size = self.claim_size(g, payload);
        if !valid_position(self.head.pos) {
            return true; // a claim attempt reports the corruption
        }
        let offset = self.head.pos & (g.capacity - 1);
        let pad = if offset + size > g.capacity {
            g.capacity - offset
        } else {
            0
        };
        self.head.pos + pad + size <= self.limit
    }

    /// Claims room for a frame with `payload` bytes.
    #[inline]
    pub(crate) fn try_claim(
        &mut self,
        mem: &RingMemory,
        payload: u32,
    ) -> Result<Claim, ClaimError> {
        let g = mem.geometry();
        if payload > g.max_payload {
            return Err(ClaimError::TooLarge);
        }
        if self.awaiting_unblock(mem) {
            // The broker pads the claim it took back within a tick: wait as for space.
            return Err(ClaimError::Full);
        }
        let size = self.claim_size(g, payload);
        let slot = mem.writer(self.slot);
        let mut cur = self.head;
        let mut refreshed = false;
        loop {
            if !valid_position(cur.pos) || cur.seq >= MAX_SEQUENCE {
                // Nothing was claimed; drop any intent left from a failed CAS.
                slot.intent_pos.store(NO_INTENT, Ordering::Relaxed);
                return Err(if cur.pos == RETIRED_POSITION {
                    ClaimError::Retired
                } else {
                    ClaimError::Corrupt
                });
            }
            // From here on `cur.pos <= MAX_POSITION`, so no sum below overflows.
            let offset = cur.pos & (g.capacity - 1);
            let frame = if offset + size > g.capacity {
                cur.pos + (g.capacity - offset)
            } else {
                cur.pos
            };
            let end = frame + size;
            if end > self.limit {
                if refreshed {
                    // Nothing was claimed; drop any intent left from a failed CAS.
                    slot.intent_pos.store(NO_INTENT, Ordering::Relaxed);
                    return Err(ClaimError::Full);
                }
                self.refresh_limit(mem);
                refreshed = true;
                if self.head.seq > cur.seq {
                    cur = self.head;
                }
                continue;
            }
            if cur.exclusive && self.token == 0 {
                // Another writer owns the cursor: take it back before claiming. An owner that
                // does not settle in time (stopped mid-claim) makes the ring full for now.
                let Some(shared) = revoke(mem) else {
                    // Nothing was claimed; drop any intent left from a failed CAS.
                    slot.intent_pos.store(NO_INTENT, Ordering::Relaxed);
                    return Err(ClaimError::Full);
                };
                cur = shared;
                continue;
            }
            slot.intent_seq.store(cur.seq, Ordering::Relaxed);
            slot.intent_end.store(end, Ordering::Relaxed);
            slot.intent_pos.store(cur.pos, Ordering::Relaxed);
            let claim = Claim {
                start: cur.pos,
                frame,
                end,
                seq: cur.seq,
                payload,
            };
            if self.token != 0 {
                // SYNC(exclusive): intent stores, light fence, token load; a revoker stores
                // REVOKING, issues the heavy fence, loads our intent. Either we see REVOKING here
                // and make no plain store, or it sees our intent and waits for this claim.
                crate::protocol::fence::light();
                if mem.control().exclusive.load(Ordering::Relaxed) == self.token {
                    let next = Head {
                        pos: end,
                        seq: cur.seq + 1,
                        exclusive: true,
                    };
                    // SYNC(intent): Release publishes the intent stored above to whoever loads
                    // the head with Acquire and sees this claim or a later one.
                    mem.control().head.store(next, Ordering::Release);
                    // SYNC(overwrite): as after a CAS below.
                    fence(Ordering::Release);
                    self.head = next;
                    return Ok(claim);
                }
                // Revoked. No claim was made: withdraw the intent and acknowledge, which lets
                // the revoker finish, and claim like everyone else once it has.
                // SYNC(retire): Release pairs with the revoker's Acquire load of our intent in `revoke`.
                slot.intent_pos.store(NO_INTENT, Ordering::Release);
                let revoking = self.token | REVOKING;
                // Release pairs with the revoker's Acquire loads of `exclusive` in `revoke`: the
                // withdrawal above is visible to a revoker that sees the ack.
                let _ = mem.control().exclusive.compare_exchange(
                    revoking,
                    revoking | ACKNOWLEDGED,
                    Ordering::Release,
                    Ordering::Relaxed,
                );
                self.token = 0;
                // SYNC(intent): Acquire, as in `refresh_limit`.
                cur = mem.control().head.load(Ordering::Acquire);
                continue;
            }
            let next = Head::new(end, cur.seq + 1);
            // SYNC(intent): the Release half publishes the intent stored above to everyone who
            // loads the head with Acquire and sees this claim or a later one (all later head
            // writes are RMWs, so they continue the release sequence).
            match mem.control().head.compare_exchange(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SYNC(overwrite): orders the claim before every write into the frame, so a
                    // lossy reader that observes any of those writes and then loads the head
                    // (after an Acquire fence) sees this claim and discards what it read.
                    fence(Ordering::Release);
                    self.head = next;
                    self.shared_claims = self.shared_claims.wrapping_add(1);
                    if self.shared_claims % ALONE_CHECK_INTERVAL == 0 {
                        self.try_take_exclusive(mem);
                    }
                    return Ok(claim);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Makes a claim visible to readers as a frame of `kind` with `len` payload bytes, wakes
    /// parked readers through `ring_doorbell`, and retires the intent — unless the broker took
    /// the claim back (see "Claims held too long"); then nothing is written.
    #[inline]
    pub(crate) fn commit(
        &mut self,
        mem: &RingMemory,
        claim: &Claim,
        kind: u32,
        len: u32,
        ring_doorbell: &dyn Fn(u32),
    ) -> Result<(), Revoked> {
        debug_assert!(len <= claim.payload);
        let slot = mem.writer(self.slot);
        // SYNC(unblock): committing store, light fence, revoked load; the broker stores revoked,
        // issues the heavy fence, loads committing. Release pairs with the broker's Acquire load
        // of `committing`: one that reads a later commit's value sees this commit's retirement.
        slot.committing.store(claim.start, Ordering::Release);
        crate::protocol::fence::light();
        if slot.revoked.load(Ordering::Relaxed) == claim.start {
            // Lets the broker, which may have seen `committing` and stepped back, pad the claim.
            slot.committing.store(NO_INTENT, Ordering::Release);
            self.revoked = claim.start;
            return Err(Revoked);
        }
        let key = mem.stamp_key();
        let header = FrameHeader {
            len,
            size: (claim.end - claim.frame) as u32,
            seq: claim.seq,
            writer: self.id,
            kind,
        };
        write_frame_header(mem, claim.frame, &header);
        // SYNC(publish): Release pairs with the reader's Acquire load of the stamp: header words
        // and payload are visible to a reader that sees this stamp.
        mem.word(claim.frame)
            .store(stamp(claim.frame, key), Ordering::Release);
        if claim.frame != claim.start {
            // The padding is committed after the frame, so a reader that steps over it finds the
            // frame committed too (and a dead writer leaves readers at `start`, where the
            // broker's repair expects them).
            let pad = FrameHeader {
                len: 0,
                size: (claim.frame - claim.start) as u32,
                seq: claim.seq,
                writer: self.id,
                kind: kind::PAD,
            };
            write_frame_header(mem, claim.start, &pad);
            // SYNC(publish): as above.
            mem.word(claim.start)
                .store(stamp(claim.start, key), Ordering::Release);
        }
        if kind == kind::DATA {
            // Only this writer writes its counter; it is a statistic, hence Relaxed.
            slot.published.store(
                slot.published.load(Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
        }
        wake_parked(mem, ring_doorbell);
        // SYNC(retire): Release pairs with the Acquire loads of intents in `refresh_limit` and in
        // the broker's repair: everything written above happens-before their decisions.
        slot.intent_pos.store(NO_INTENT, Ordering::Release);
        Ok(())
    }
}

/// How many times [`revoke`] backs off (spinning, then yielding) before it gives up for now: far
/// more than an owner needs to finish a claim, unless it was stopped in the middle of one.
const REVOKE_PATIENCE: u32 = 4096;

/// Takes the cursor back from the writer that owns it (see "Exclusive claims"), waiting until
/// that writer can no longer store it; returns the head, shared again. `None` if the owner did
/// not settle within [`REVOKE_PATIENCE`] back-offs (it was stopped mid-claim, or a faulty process
/// wrote its slot): the caller treats the ring as full for now.
pub(crate) fn revoke(mem: &RingMemory) -> Option<Head> {
    let control = mem.control();
    let g = mem.geometry();
    let backoff = Backoff::new();
    let mut patience = REVOKE_PATIENCE;
    let mut wait = || {
        backoff.snooze();
        patience = patience.checked_sub(1)?;
        Some(())
    };
    // Every round ends with a change to look at again; a faulty process can keep changing
    // things, so the rounds are bounded too.
    for _ in 0..REVOKE_PATIENCE {
        // SYNC(intent): Acquire, as in `refresh_limit`.
        let head = control.head.load(Ordering::Acquire);
        if !head.exclusive {
            return Some(head);
        }
        // Acquire pairs with an owner's Release acknowledgement in `try_claim` (the token bits
        // are all this needs; the ack is looked at again in the wait below).
        let token = control.exclusive.load(Ordering::Acquire) & !(REVOKING | ACKNOWLEDGED);
        let owner_slot = (token & 0xffff_ffff)
            .checked_sub(1)
            .filter(|&s| s < u64::from(g.writer_slots));
        let Some(owner_slot) = owner_slot else {
            // Flag set and no valid owner: a revoker between clearing the token and the flag
            // (its next step clears the flag), or a faulty process wrote the token. Nobody can
            // store the cursor without a token; clear the flag if it stays.
            if wait().is_none() {
                clear_exclusive_flag(mem, head);
            }
            continue;
        };
        let current = control.exclusive.load(Ordering::Relaxed);
        if current == token
            && control
                .exclusive
                .compare_exchange(
                    token,
                    token | REVOKING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            continue;
        }
        // SYNC(exclusive): REVOKING store, heavy fence, owner's intent load; see `try_claim`.
        let ordered = crate::protocol::fence::heavy();
        let owner = mem.writer(owner_slot as u32);
        loop {
            // SYNC(retire): Acquire pairs with the owner's Release withdrawal or retirement of
            // its intent.
            let intent = owner.intent_pos.load(Ordering::Acquire);
            let intent_seq = owner.intent_seq.load(Ordering::Relaxed);
            // SYNC(intent): Acquire, as in `refresh_limit`.
            let now = control.head.load(Ordering::Acquire);
            // Acquire pairs with the owner's Release acknowledgement in `try_claim`, which follows
            // its withdrawal of the intent.
            let state = control.exclusive.load(Ordering::Acquire);
            // With the heavy fence: done when the owner holds no claim it could still store. The
            // only one it could is a claim from the current cursor — its intent exactly
            // `(now.pos, now.seq)`, all three intent words written before its fence; anything
            // else (no intent, a claim that landed, a half-written or garbage intent) it will not
            // store. Without the fence, only the owner's acknowledgement (or its release of
            // ownership, or the repair of a dead owner freeing its slot) is proof.
            let settled = if ordered {
                (intent, intent_seq) != (now.pos, now.seq)
            } else {
                // Acquire pairs with the Release clear of the owner in `detach` (or in the
                // broker's reclaim of a dead writer's slot).
                state & ACKNOWLEDGED != 0 || owner.owner.load(Ordering::Acquire) == 0
            };
            if settled || !now.exclusive || state & !(REVOKING | ACKNOWLEDGED) != token {
                break;
            }
            wait()?;
        }
        // Ownership first, then the flag: while the flag stays set nobody can take ownership
        // (taking it needs the flag clear), so the flag we clear is still the revoked owner's.
        let state = control.exclusive.load(Ordering::Relaxed);
        if state & !(REVOKING | ACKNOWLEDGED) != token
            || control
                .exclusive
                .compare_exchange(state, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue; // someone else finished (or the owner gave up): look again
        }
        // SYNC(intent): Acquire, as in `refresh_limit`.
        clear_exclusive_flag(mem, control.head.load(Ordering::Acquire));
    }
    None
}

/// Clears the cursor's exclusive flag, if `head` (as last read) has it and is still current. A
/// failure means someone else changed the cursor first; the caller looks again.
fn clear_exclusive_flag(mem: &RingMemory, head: Head) {
    if head.exclusive {
        let shared = Head {
            exclusive: false,
            ..head
        };
        // SYNC(intent): AcqRel like every claim CAS: it continues the release sequence of the
        // claims before it.
        let _ =
            mem.control()
                .head
                .compare_exchange(head, shared, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Rings the doorbell of every parked reader of the ring; no system call when none is parked.
#[inline]
pub(crate) fn wake_parked(mem: &RingMemory, ring_doorbell: &dyn Fn(u32)) {
    let rc = mem.readers_control();
    // SYNC(park): the commit's stamp store, a fence, then the parked count; a parking reader
    // increments the count, issues a fence, then loads the stamp. Whichever fence comes first in
    // their total order, the other side sees the first side's write: either we see the reader
    // parked, or it sees the commit and does not sleep. The fences are asymmetric: see
    // `crate::protocol::fence`.
    crate::protocol::fence::light();
    // Acquire pairs with the reader's Release increment, making its `parked` flag visible.
    if rc.parked.load(Ordering::Acquire) == 0 {
        return;
    }
    let g = mem.geometry();
    let readers = rc.high_water.load(Ordering::Relaxed).min(g.reader_slots);
    for slot in 0..readers {
        let r = mem.reader(slot);
        // Relaxed suffices: the parked count we just read (Acquire) reads-from the reader's
        // increment or a later RMW, which are ordered after its `parked` store.
        if r.parked.load(Ordering::Relaxed) != 0 {
            if let Some(index) = r.doorbell.load(Ordering::Relaxed).checked_sub(1) {
                ring_doorbell(index);
            }
        }
    }
}
