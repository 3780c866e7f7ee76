//! Locking as every module of the crate does it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a thread panicked while holding it: what the crate keeps under
/// a mutex (maps, queues, flags) stays usable, so a panic is not spread to every other thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
