//! Futex wait and wake on words in shared memory.
//!
//! These are the only system calls on the data path, and they are made only to sleep when there
//! is nothing to do or to wake a sleeper. The words live in `MAP_SHARED` mappings, so the calls
//! never use `FUTEX_PRIVATE_FLAG`: the kernel keys them by the underlying page, which is what
//! lets a writer in one process wake a subscriber in another.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Sleeps while `*word == expected`, for at most `timeout` (forever if `None`).
///
/// Returns when woken, when the word no longer holds `expected`, when the timeout passes, or on
/// a signal; callers always re-check their condition, so the reason does not matter (EAGAIN,
/// ETIMEDOUT and EINTR all mean "go and re-check").
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    // A timeout too long to represent is as good as none.
    let ts = timeout.and_then(|d| futex::Timespec::try_from(d).ok());
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every thread sleeping on `word`, in any process. Returns how many were woken.
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    // A failure (impossible for a valid address) wakes nobody.
    futex::wake(word, futex::Flags::empty(), u32::MAX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_the_word_changed() {
        let w = AtomicU32::new(1);
        let t = Instant::now();
        wait(&w, 0, Some(Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        wait(&w, 0, Some(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wake_releases_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                while w.load(Ordering::Acquire) == 0 {
                    wait(&w, 0, None);
                }
            })
        };
        w.store(1, Ordering::Release);
        wake_all(&w);
        sleeper.join().unwrap();
    }
}
