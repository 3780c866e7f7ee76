//! The publisher side of the protocol: claim, commit, abort.
//!
//! ```text
//! publisher                                   shared memory
//! ---------                                   -------------
//! (pos, seq) = cached head
//! room check against cached limit  ───────▶  (refresh: head, intents, tethered reader positions)
//! intent := (pos, seq)                        publisher slot
//! CAS head (pos, seq) → (end, seq+1)   ◀──▶   claim cursor
//! write header words 1–3, payload             frame buffer
//! stamp := stamp(frame)                       frame buffer (word 0)   ── readers may now read it
//! parked readers? ring their doorbells        readers segment, doorbells
//! intent := none                              publisher slot          ── others may now lap it
//! ```

use crate::frame::{FrameHeader, kind, stamp};
use crate::layout::{NO_INTENT, frame_size, mode};
use crate::memory::RingMemory;
use crate::sync::{Head, Ordering, fence};

use super::write_frame_header;

/// A claimed, not yet committed, range of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// A publisher's private protocol state. Its slot in shared memory holds what others need to see.
#[derive(Debug)]
pub(crate) struct PublisherCore {
    /// Index of this publisher's slot.
    pub slot: u32,
    /// Bus-wide id written into every frame.
    pub id: u32,
    /// Last head value this publisher knows of: the expected value of its next CAS.
    head: Head,
    /// Claims may end at or below this position without looking at readers again.
    ///
    /// Invariant: `limit <= m + capacity`, where `m` is a lower bound, at the time it was
    /// computed, of every tethered reader's position and every other publisher's intent.
    limit: u64,
}

impl PublisherCore {
    /// Claims a free publisher slot for `owner` and starts with a fresh view of the ring.
    pub(crate) fn attach(mem: &RingMemory, owner: u64, id: u32) -> Option<PublisherCore> {
        let g = mem.geometry();
        (0..g.publisher_slots).find_map(|slot| {
            let s = mem.publisher(slot);
            // Acquire pairs with the Release store of 0 in `detach`/`reclaim`, so the previous
            // holder's reset of `intent_pos` is visible.
            s.owner
                .compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
                .ok()?;
            s.publisher_id.store(id, Ordering::Relaxed);
            s.published.store(0, Ordering::Relaxed);
            // Release pairs with the Acquire load in `refresh_limit`; see there.
            mem.counters()
                .publisher_high_water
                .fetch_max(slot + 1, Ordering::Release);
            let head = mem.control().head.load(Ordering::Acquire);
            Some(PublisherCore {
                slot,
                id,
                head,
                limit: 0,
            })
        })
    }

    /// Frees this publisher's slot. Must not hold a claim.
    pub(crate) fn detach(&self, mem: &RingMemory) {
        let s = mem.publisher(self.slot);
        debug_assert_eq!(s.intent_pos.load(Ordering::Relaxed), NO_INTENT);
        // Release pairs with the Acquire CAS in `attach`.
        s.owner.store(0, Ordering::Release);
    }

    /// Recomputes [`PublisherCore::limit`] from the claim cursor, the other publishers' intents
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
        let publishers = mem
            .counters()
            .publisher_high_water
            .load(Ordering::Acquire)
            .min(g.publisher_slots);
        for slot in (0..publishers).filter(|&s| s != self.slot) {
            // SYNC(retire): Acquire pairs with the Release clear of the intent after a commit, so
            // that publisher's frame writes happen-before our overwriting of them a lap later.
            // SYNC(intent): an intent whose claim succeeded is visible through the head load
            // above (its CAS released it).
            let intent = mem.publisher(slot).intent_pos.load(Ordering::Acquire);
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
                // only lower the limit, stalling publishers until the broker evicts it.
                min = min.min(r.pos.load(Ordering::Acquire));
            }
        }
        self.limit = min + g.capacity;
        if head.seq > self.head.seq {
            self.head = head;
        }
    }

    /// Whether a claim for `payload` bytes would fit now (it re-reads the readers' positions).
    pub(crate) fn would_fit(&mut self, mem: &RingMemory, payload: u32) -> bool {
        self.refresh_limit(mem);
        let g = mem.geometry();
        let size = frame_size(u64::from(payload));
        let offset = self.head.pos & (g.capacity - 1);
        let pad = if offset + size > g.capacity {
            g.capacity - offset
        } else {
            0
        };
        self.head.pos + pad + size <= self.limit
    }

    /// Claims room for a frame with `payload` bytes.
    pub(crate) fn try_claim(
        &mut self,
        mem: &RingMemory,
        payload: u32,
    ) -> Result<Claim, ClaimError> {
        let g = mem.geometry();
        if payload > g.max_payload {
            return Err(ClaimError::TooLarge);
        }
        let size = frame_size(u64::from(payload));
        let slot = mem.publisher(self.slot);
        let mut cur = self.head;
        let mut refreshed = false;
        loop {
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
            slot.intent_seq.store(cur.seq, Ordering::Relaxed);
            slot.intent_end.store(end, Ordering::Relaxed);
            slot.intent_pos.store(cur.pos, Ordering::Relaxed);
            let next = Head {
                pos: end,
                seq: cur.seq + 1,
            };
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
                    return Ok(Claim {
                        start: cur.pos,
                        frame,
                        end,
                        seq: cur.seq,
                        payload,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Makes a claim visible to readers as a frame of `kind` with `len` payload bytes, wakes
    /// parked readers through `ring_doorbell`, and retires the intent.
    pub(crate) fn commit(
        &mut self,
        mem: &RingMemory,
        claim: &Claim,
        kind: u32,
        len: u32,
        ring_doorbell: &dyn Fn(u32),
    ) {
        debug_assert!(len <= claim.payload);
        let key = mem.stamp_key();
        let header = FrameHeader {
            len,
            size: (claim.end - claim.frame) as u32,
            seq: claim.seq,
            publisher: self.id,
            kind,
        };
        write_frame_header(mem, claim.frame, &header);
        // SYNC(publish): Release pairs with the reader's Acquire load of the stamp: header words
        // and payload are visible to a reader that sees this stamp.
        mem.word(claim.frame)
            .store(stamp(claim.frame, key), Ordering::Release);
        if claim.frame != claim.start {
            // The padding is committed after the frame, so a reader that steps over it finds the
            // frame committed too (and a dead publisher leaves readers at `start`, where the
            // broker's repair expects them).
            let pad = FrameHeader {
                len: 0,
                size: (claim.frame - claim.start) as u32,
                seq: claim.seq,
                publisher: self.id,
                kind: kind::PAD,
            };
            write_frame_header(mem, claim.start, &pad);
            // SYNC(publish): as above.
            mem.word(claim.start)
                .store(stamp(claim.start, key), Ordering::Release);
        }
        let slot = mem.publisher(self.slot);
        if kind == kind::DATA {
            // Only this publisher writes its counter; it is a statistic, hence Relaxed.
            slot.published.store(
                slot.published.load(Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
        }
        wake_parked(mem, ring_doorbell);
        // SYNC(retire): Release pairs with the Acquire loads of intents in `refresh_limit` and in
        // the broker's repair: everything written above happens-before their decisions.
        slot.intent_pos.store(NO_INTENT, Ordering::Release);
        mem.prefetch_for_write(self.head.pos);
    }
}

/// Rings the doorbell of every parked reader of the ring; no system call when none is parked.
pub(crate) fn wake_parked(mem: &RingMemory, ring_doorbell: &dyn Fn(u32)) {
    let rc = mem.readers_control();
    // SYNC(park): the commit's stamp store, a fence, then the parked count; a parking reader
    // increments the count, issues a fence, then loads the stamp. Whichever fence comes first in
    // their total order, the other side sees the first side's write: either we see the reader
    // parked, or it sees the commit and does not sleep. The fences are asymmetric: see
    // `crate::fence`.
    crate::fence::publisher_fence();
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
