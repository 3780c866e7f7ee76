//! Futex wait and wake on words in shared memory.
//!
//! These are the only system calls on the data path, and they are made only to sleep when there
//! is nothing to do or to wake a sleeper. The words live in `MAP_SHARED` mappings, so the calls
//! never use `FUTEX_PRIVATE_FLAG`: the kernel keys them by the underlying page, which is what
//! lets a writer in one process wake a subscriber in another.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

#[cfg(not(miri))]
use rustix::thread::futex;

/// Sleeps while `*word == expected`, for at most `timeout` (forever if `None`).
///
/// Returns when woken, when the word no longer holds `expected`, when the timeout passes, or on
/// a signal; callers always re-check their condition, so the reason does not matter (EAGAIN,
/// ETIMEDOUT and EINTR all mean "go and re-check").
#[cfg(not(miri))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    // A timeout too long to represent is as good as none.
    let ts = timeout.and_then(|d| futex::Timespec::try_from(d).ok());
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes every thread sleeping on `word`, in any process. Returns how many were woken.
#[cfg(not(miri))]
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    // A failure (impossible for a valid address) wakes nobody.
    futex::wake(word, futex::Flags::empty(), u32::MAX).unwrap_or(0)
}

// Under Miri, rustix reaches the futex through libc's variadic `syscall`, passing the word as a
// `*const AtomicU32` where Miri insists on the `*mut u32` the kernel's prototype names; these
// twins make the same calls with the types Miri checks for. They run only under Miri.
#[cfg(miri)]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `word` is a valid, aligned u32 for the call; the kernel (Miri) only reads it and
    // the optional timespec, which outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(miri)]
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE uses its address as a key only.
    let woken = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(woken).unwrap_or(0)
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
