//! Asymmetric fences: a cheap side that runs on every message, a costly side that runs rarely.
//!
//! Two places in the protocol are store-then-load (Dekker) patterns between a writer's hot
//! path and something rare:
//!
//! * `SYNC(park)`: a commit stores its stamp and then loads the parked count; a reader going to
//!   sleep increments the count and then loads the stamp.
//! * `SYNC(exclusive)`: a writer that owns the claim cursor alone stores its intent and then
//!   loads the ownership word; a writer revoking that ownership stores the word and then loads
//!   the owner's intent.
//!
//! A full fence on each side would make one of them see the other — but on the writer's side
//! it stalls every message until its stores are visible, the price of a cross-core cache miss.
//! So the cost moves to the rare side. A publishing process registers for
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` and then needs only a compiler fence ([`light`]);
//! the rare side calls `membarrier` ([`heavy`]), which makes every running thread of every
//! registered process pass through a full barrier before it returns — as if each had executed the
//! fence at that moment (threads not running have no pending stores to order). This is the
//! asymmetric Dekker of userspace RCU.
//!
//! Where the kernel lacks the command (or a seccomp filter refuses it), writers keep full
//! fences and never take exclusive ownership, and a [`heavy`] that fails says so, so its caller
//! can fall back (a reader parks with a short timeout). Under loom both sides are plain
//! `fence(SeqCst)`, the symmetric pattern the asymmetric one stands in for, which is what the
//! models check.

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{AtomicU8, Ordering, compiler_fence, fence};

    const UNKNOWN: u8 = 0;
    const REGISTERED: u8 = 1;
    const UNAVAILABLE: u8 = 2;

    /// Whether this process registered for global expedited membarriers.
    static WRITER: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// Registers this process so that [`heavy`] fences cover its writers. Called when a
    /// writer attaches; cheap after the first call.
    pub(crate) fn register_writer_process() {
        if WRITER.load(Ordering::Relaxed) == UNKNOWN {
            let state = if crate::os::membarrier_register() {
                REGISTERED
            } else {
                UNAVAILABLE
            };
            WRITER.store(state, Ordering::Relaxed);
        }
    }

    /// Whether [`light`] is only a compiler fence in this process (it registered).
    #[inline]
    pub(crate) fn light_is_asymmetric() -> bool {
        WRITER.load(Ordering::Relaxed) == REGISTERED
    }

    /// The hot side: a compiler fence in registered processes, else a full fence.
    #[inline]
    pub(crate) fn light() {
        if light_is_asymmetric() {
            // Keeps the compiler from reordering; the CPU is ordered by the other side's
            // membarrier.
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The rare side: a full fence here and, through membarrier, in every running registered
    /// thread. Returns false if the membarrier failed (registered writers are then not
    /// ordered against the caller).
    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        crate::os::membarrier_global()
    }
}

#[cfg(loom)]
mod imp {
    use crate::protocol::sync::{Ordering, fence};

    pub(crate) fn light_is_asymmetric() -> bool {
        true
    }

    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        true
    }
}

pub(crate) use imp::*;
