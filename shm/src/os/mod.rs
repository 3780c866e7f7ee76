//! What the rings need from the kernel: sealed memfd segments, futex wait and wake, membarrier,
//! and randomness for ids and keys. Nothing here knows the ring protocol.

pub(crate) mod futex;
pub(crate) mod segment;

/// A random u64 from the kernel, or from the clock if the kernel cannot provide one (ids and
/// keys need to be unpredictable by accident, not by an adversary).
pub(crate) fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    })
}

/// A random u32; see [`random_u64`].
pub(crate) fn random_u32() -> u32 {
    (random_u64() >> 16) as u32
}

/// `membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)`: lets [`membarrier_global`] calls of
/// any process order this one's threads. Returns whether the kernel accepted it.
pub(crate) fn membarrier_register() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    // Miri does not emulate membarrier; callers fall back to full fences.
    !cfg!(miri) && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`: a full barrier in every running thread of
/// every registered process before it returns. Returns whether it succeeded.
pub(crate) fn membarrier_global() -> bool {
    use rustix::thread::{MembarrierCommand, membarrier};
    !cfg!(miri) && membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}
