//! The one atomics module of the crate.
//!
//! Everything the ring protocol shares between processes goes through the types re-exported here,
//! so the same protocol code runs on real atomics in shared memory and, under `--cfg loom`, on
//! loom's model-checked atomics.
//!
//! [`HeadCell`] is the ring's claim cursor: a position and a sequence number updated together by
//! one 128-bit compare-and-swap (`cmpxchg16b` on x86_64, `casp`/`ldxp`+`stxp` on aarch64, through
//! `portable-atomic`). Under loom both halves are packed into one 64-bit atomic, which the tiny
//! model rings never overflow.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// The claim cursor's value: where the next claim starts and which sequence number it gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// Absolute byte position (never wraps in practice: 2^64 bytes) of the next claim.
    pub pos: u64,
    /// Sequence number the next claim receives; one per claim, ring-wide (below 2^63).
    pub seq: u64,
    /// Whether one writer owns the cursor and moves it with plain stores (see
    /// `ring::claim`, "Exclusive claims"). Kept in the sequence's top bit.
    pub exclusive: bool,
}

/// The sequence's top bit, which holds [`Head::exclusive`].
const EXCLUSIVE_BIT: u64 = 1 << 63;

impl Head {
    /// A head at `pos` with sequence `seq`, not exclusively owned.
    #[inline]
    pub(crate) fn new(pos: u64, seq: u64) -> Head {
        Head {
            pos,
            seq,
            exclusive: false,
        }
    }

    /// The sequence word as stored: the sequence with the exclusive flag in its top bit.
    #[inline]
    fn seq_word(self) -> u64 {
        debug_assert!(self.seq < EXCLUSIVE_BIT);
        self.seq | if self.exclusive { EXCLUSIVE_BIT } else { 0 }
    }

    #[inline]
    fn from_words(pos: u64, seq_word: u64) -> Head {
        Head {
            pos,
            seq: seq_word & !EXCLUSIVE_BIT,
            exclusive: seq_word & EXCLUSIVE_BIT != 0,
        }
    }

    #[cfg(not(loom))]
    #[inline]
    fn pack(self) -> u128 {
        (u128::from(self.seq_word()) << 64) | u128::from(self.pos)
    }

    #[cfg(not(loom))]
    #[inline]
    fn unpack(v: u128) -> Self {
        // Truncation is the point: the low half is the position, the high half the sequence.
        Head::from_words(v as u64, (v >> 64) as u64)
    }
}

/// A `(pos, seq)` pair read and compare-and-swapped as one atomic unit.
///
/// In shared memory this is 16 bytes, 16-aligned; zeroed memory is the valid value `(0, 0)`.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct HeadCell(portable_atomic::AtomicU128);

#[cfg(not(loom))]
impl HeadCell {
    /// Whether the 128-bit operations are real lock-free instructions on this CPU. When they are
    /// not, `portable-atomic` falls back to a per-process lock, which would be wrong across
    /// processes, so rings refuse to open (see `RingError::Unsupported`).
    pub(crate) fn is_lock_free() -> bool {
        portable_atomic::AtomicU128::is_lock_free()
    }

    /// A new cell holding `head` (used for in-process rings; shared memory starts zeroed).
    #[cfg_attr(not(test), allow(dead_code))]
    #[inline]
    pub(crate) fn new(head: Head) -> Self {
        HeadCell(portable_atomic::AtomicU128::new(head.pack()))
    }

    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> Head {
        Head::unpack(self.0.load(order))
    }

    /// Loads only the position, with acquire ordering, using a plain 64-bit load.
    ///
    /// Subscribers map the ring data read-only, and a 128-bit atomic load may be implemented with
    /// `cmpxchg16b`, which writes (and so faults on a read-only page) on CPUs without AVX. The
    /// position is the low half of the little-endian pair, and an aligned 64-bit load of it is
    /// single-copy atomic on every supported CPU: it returns the position before or after any
    /// 128-bit CAS, never a mixture. Under Miri (which rejects mixed-size atomic accesses) the
    /// 128-bit load is used instead; Miri's memory is always writable.
    #[inline]
    pub(crate) fn load_pos(&self) -> u64 {
        // SYNC(intent): Acquire, the cursor-load side that callers rely on.
        #[cfg(miri)]
        {
            self.load(Ordering::Acquire).pos
        }
        #[cfg(not(miri))]
        {
            const _: () = assert!(cfg!(target_endian = "little"), "shmbus needs little-endian");
            let low = std::ptr::from_ref(&self.0).cast::<AtomicU64>();
            // SAFETY: `self.0` is 16 bytes at a 16-aligned address, so its first 8 bytes are an
            // aligned u64 that lives as long as `self`; all accesses to it are atomic (the
            // 128-bit CAS and this load), see the comment above for why mixing widths is sound on
            // the hardware.
            unsafe { &*low }.load(Ordering::Acquire)
        }
    }

    /// Loads the whole head with 64-bit loads only (see [`HeadCell::load_pos`] for why readers
    /// avoid the 128-bit load): position, sequence, position again, until both position loads
    /// agree. Every claim moves the position forward, so equal positions mean no claim happened
    /// between the loads and the sequence read between them belongs to that position.
    pub(crate) fn load_for_reader(&self) -> Head {
        // SYNC(intent): Acquire loads, as in `load_pos`.
        #[cfg(miri)]
        {
            self.load(Ordering::Acquire)
        }
        #[cfg(not(miri))]
        {
            let high = std::ptr::from_ref(&self.0)
                .cast::<AtomicU64>()
                .wrapping_add(1);
            loop {
                let pos = self.load_pos();
                // SAFETY: the high 8 bytes of the 16-byte, 16-aligned cell: aligned, live as long
                // as `self`, accessed only atomically (see `load_pos`).
                let seq = unsafe { &*high }.load(Ordering::Acquire);
                if self.load_pos() == pos {
                    return Head::from_words(pos, seq);
                }
            }
        }
    }

    #[inline]
    pub(crate) fn compare_exchange(
        &self,
        current: Head,
        new: Head,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Head, Head> {
        self.0
            .compare_exchange(current.pack(), new.pack(), success, failure)
            .map(Head::unpack)
            .map_err(Head::unpack)
    }
}

#[cfg(not(loom))]
impl HeadCell {
    /// Stores `head` (an exclusive owner's plain store: no read-modify-write, no lock prefix
    /// where the CPU has an atomic 16-byte store).
    #[inline]
    pub(crate) fn store(&self, head: Head, order: Ordering) {
        self.0.store(head.pack(), order);
    }
}

/// Loom model of the 128-bit cursor: one 64-bit atomic holding both halves (32 bits each; loom
/// models never get near that), so every ordering the protocol asks of the cursor is modelled
/// exactly as asked.
#[cfg(loom)]
pub(crate) struct HeadCell(loom::sync::atomic::AtomicU64);

#[cfg(loom)]
impl HeadCell {
    #[inline]
    fn pack(h: Head) -> u64 {
        assert!(
            h.pos < 1 << 32 && h.seq < 1 << 31,
            "loom models use small rings"
        );
        (h.seq << 32) | h.pos | if h.exclusive { 1 << 63 } else { 0 }
    }

    #[inline]
    fn unpack(v: u64) -> Head {
        Head {
            pos: v & 0xffff_ffff,
            seq: (v >> 32) & 0x7fff_ffff,
            exclusive: v >> 63 == 1,
        }
    }

    #[inline]
    pub(crate) fn store(&self, head: Head, order: Ordering) {
        self.0.store(Self::pack(head), order);
    }

    pub(crate) fn is_lock_free() -> bool {
        true
    }

    #[inline]
    pub(crate) fn new(head: Head) -> Self {
        HeadCell(loom::sync::atomic::AtomicU64::new(Self::pack(head)))
    }

    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> Head {
        Self::unpack(self.0.load(order))
    }

    // SYNC(intent): Acquire, as in the non-loom `load_pos` and `load_for_reader`.
    #[inline]
    pub(crate) fn load_pos(&self) -> u64 {
        self.load(Ordering::Acquire).pos
    }

    pub(crate) fn load_for_reader(&self) -> Head {
        self.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn compare_exchange(
        &self,
        current: Head,
        new: Head,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Head, Head> {
        self.0
            .compare_exchange(Self::pack(current), Self::pack(new), success, failure)
            .map(Self::unpack)
            .map_err(Self::unpack)
    }
}

/// Waiting for another thread's next step: crossbeam's exponential [`Backoff`] (a few spins,
/// then yields), or under loom a yield to the model scheduler at every step.
#[cfg(not(loom))]
pub(crate) use crossbeam_utils::Backoff;

/// Loom's stand-in for crossbeam's `Backoff`: every step lets the model run another thread.
#[cfg(loom)]
#[derive(Default)]
pub(crate) struct Backoff;

#[cfg(loom)]
impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff
    }

    pub(crate) fn spin(&self) {
        loom::thread::yield_now();
    }

    pub(crate) fn snooze(&self) {
        loom::thread::yield_now();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_through_packing() {
        let h = Head {
            pos: u64::MAX - 5,
            seq: 7,
            exclusive: true,
        };
        assert_eq!(Head::unpack(h.pack()), h);
        let cell = HeadCell::new(h);
        assert_eq!(cell.load(Ordering::Relaxed), h);
        let next = Head::new(1, 2);
        assert_eq!(
            cell.compare_exchange(next, h, Ordering::AcqRel, Ordering::Acquire),
            Err(h)
        );
        assert_eq!(
            cell.compare_exchange(h, next, Ordering::AcqRel, Ordering::Acquire),
            Ok(h)
        );
        assert_eq!(cell.load(Ordering::Acquire), next);
        assert_eq!(cell.load_pos(), next.pos);
        assert_eq!(cell.load_for_reader(), next);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "Miri has no cmpxchg16b; portable-atomic falls back to a lock"
    )]
    fn head_cell_is_16_bytes_and_lock_free_here() {
        assert_eq!(std::mem::size_of::<HeadCell>(), 16);
        assert_eq!(std::mem::align_of::<HeadCell>(), 16);
        assert!(HeadCell::is_lock_free());
    }
}
