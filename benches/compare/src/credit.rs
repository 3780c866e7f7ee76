//! Flow control for streams over transports that have none of their own (crossbar overruns a
//! slow subscriber; the floor's slots are plain memory): a credit window.
//!
//! One small memfd holds, per direction, how many messages its receiver has read. The sender
//! may be at most `window` messages ahead of that count and reloads it only when its cached copy
//! says the window is used up; the receiver publishes its count once per sixteenth of the window
//! and whenever it finds nothing to read. This is the cheapest correct scheme we know (one cache
//! line moves per sixteenth of a window), and the same policy shmbus readers follow for their position.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags};

/// Each direction's count sits alone on 128 bytes (adjacent-line prefetching pairs lines).
const STRIDE: usize = 128;
/// Bytes of the memfd.
const LEN: usize = 2 * STRIDE;

/// One process's side of the credit window of both directions.
pub struct Credit {
    base: NonNull<u8>,
    /// Where this process sends (0 or 1); it receives from the other.
    outbox: usize,
    window: u64,
    /// Messages sent, and the receiver's count as last loaded.
    sent: u64,
    acked: u64,
    /// Messages received, and the count last published.
    received: u64,
    published: u64,
}

impl Credit {
    /// Creates the memfd; returns the side of direction 0's sender and the memfd for the other.
    pub fn create(window: u64) -> (Credit, OwnedFd) {
        let fd: OwnedFd = nix::sys::memfd::memfd_create(
            "shmbus-compare-credit",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .expect("memfd_create");
        nix::unistd::ftruncate(&fd, LEN as i64).expect("size the credit memfd");
        (Credit::map(&fd, 0, window), fd)
    }

    /// Maps `fd` (from [`Credit::create`]) as direction `outbox`'s sender.
    pub fn map(fd: impl AsFd, outbox: usize, window: u64) -> Credit {
        assert!(outbox < 2 && window >= 16);
        // SAFETY: a fresh shared mapping of the whole memfd at an address the kernel picks;
        // nothing else in this process refers to that range. It is unmapped in `drop`.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(LEN).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .expect("mmap the credit memfd");
        Credit {
            base: base.cast(),
            outbox,
            window,
            sent: 0,
            acked: 0,
            received: 0,
            published: 0,
        }
    }

    /// The receiver's count of direction `d`.
    fn count(&self, d: usize) -> &AtomicU64 {
        // SAFETY: the mapping is LEN bytes, page-aligned, and each direction's word starts a
        // STRIDE; both processes access it only atomically. It lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(d * STRIDE).cast::<AtomicU64>() }
    }

    /// Waits until the window allows one more message, and counts it as sent.
    pub fn before_send(&mut self) {
        while self.sent - self.acked >= self.window {
            // SYNC POINT(credit): pairs with the receiver's Release store in `publish`: its
            // reads of what we sent happen-before we write over it.
            self.acked = self.count(self.outbox).load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        self.sent += 1;
    }

    /// Counts one message as read (call after reading all of it).
    pub fn after_recv(&mut self) {
        self.received += 1;
        if self.received - self.published >= self.window / 16 {
            self.publish();
        }
    }

    /// Found nothing to read: publishes the count if it moved.
    pub fn idle(&mut self) {
        if self.published != self.received {
            self.publish();
        }
    }

    fn publish(&mut self) {
        // SYNC POINT(credit): see `before_send`.
        self.count(1 - self.outbox)
            .store(self.received, Ordering::Release);
        self.published = self.received;
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        // SAFETY: `base` is the mapping made in `map`, of this length; no reference into it
        // outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), LEN) };
    }
}
