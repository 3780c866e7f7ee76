//! Asymmetric fences for the park protocol (`SYNC(park)` in the crate docs).
//!
//! A commit must not miss a reader that is going to sleep: the publisher stores its stamp and
//! then loads the parked count, the reader increments the count and then loads the stamp, and a
//! full fence on each side between the store and the load makes one of them see the other. But a
//! full fence on every commit stalls the publisher until its stores are visible — the cost of a
//! cross-core cache miss on every message, for the benefit of readers that are mostly not asleep.
//!
//! So the cost moves to the side that is about to sleep anyway. A publishing process registers
//! for `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` and then only needs a compiler fence; a reader
//! about to park calls `membarrier`, which makes every running thread of every registered process
//! pass through a full barrier before it returns — as if each had executed the fence at that
//! moment. Threads not running have no pending stores to order. This is the asymmetric Dekker
//! used by userspace RCU.
//!
//! Where the kernel lacks the command (or a seccomp filter refuses it), publishers keep the full
//! fence; a reader that cannot issue the heavy fence parks with a short timeout instead of
//! forever, so a missed wake-up costs at most that timeout. Under loom both sides are plain
//! `fence(SeqCst)`, which is what the models check.

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{AtomicU8, Ordering, compiler_fence, fence};

    const UNKNOWN: u8 = 0;
    const REGISTERED: u8 = 1;
    const UNAVAILABLE: u8 = 2;

    /// Whether this process registered for global expedited membarriers.
    static PUBLISHER: AtomicU8 = AtomicU8::new(UNKNOWN);

    // From <linux/membarrier.h>.
    const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
    const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

    fn membarrier(cmd: libc::c_int) -> bool {
        if cfg!(miri) {
            return false; // Miri does not emulate membarrier; the full fences are used instead.
        }
        // SAFETY: membarrier takes two integer arguments and touches no user memory.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
    }

    /// Registers this process so that readers' heavy fences cover its publishers. Called when a
    /// publisher attaches; cheap after the first call.
    pub(crate) fn register_publisher_process() {
        if PUBLISHER.load(Ordering::Relaxed) == UNKNOWN {
            let state = if membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) {
                REGISTERED
            } else {
                UNAVAILABLE
            };
            PUBLISHER.store(state, Ordering::Relaxed);
        }
    }

    /// The publisher's side of `SYNC(park)`: between the stamp store and the parked-count load.
    #[inline]
    pub(crate) fn publisher_fence() {
        if PUBLISHER.load(Ordering::Relaxed) == REGISTERED {
            // Keeps the compiler from reordering; the CPU is ordered by the reader's membarrier.
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The reader's side of `SYNC(park)`: between the parked-count increment and the stamp
    /// loads. Returns false if the heavy fence was not available, in which case registered
    /// publishers may not be ordered and the caller must not sleep without a timeout.
    pub(crate) fn reader_fence() -> bool {
        fence(Ordering::SeqCst);
        membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)
    }
}

#[cfg(loom)]
mod imp {
    use crate::sync::{Ordering, fence};

    pub(crate) fn publisher_fence() {
        fence(Ordering::SeqCst);
    }

    pub(crate) fn reader_fence() -> bool {
        fence(Ordering::SeqCst);
        true
    }
}

pub(crate) use imp::*;
