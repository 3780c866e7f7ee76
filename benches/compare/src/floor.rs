//! `floor`: no protocol at all — a sequence word and the payload in plain shared memory.
//!
//! One memfd, mapped by both processes, holds two mailboxes (parent → child, child → parent).
//! A mailbox is a sequence number, a length and then the payload, so an 8-byte message is one
//! cache line. The sender writes the payload and length and then publishes the sequence number
//! with a Release store; the receiver spins on it with Acquire loads. This is the least any
//! cross-process message of that size can cost here: what remains is moving the cache lines.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags};

use crate::harness::{self, Endpoint};

/// Bytes of one mailbox: header and up to 64 KiB of payload, rounded to pages.
const MAILBOX: usize = 128 * 1024;
/// The payload starts after the sequence number and the length.
const HEADER: usize = 16;
/// The largest payload a mailbox holds.
const MAX_PAYLOAD: usize = MAILBOX - HEADER;

/// One process's view of the two mailboxes.
pub struct Floor {
    base: NonNull<u8>,
    /// Where this process sends (0 or 1); it receives from the other.
    outbox: usize,
    /// The last sequence number sent.
    sent: u64,
    /// The last sequence number received.
    seen: u64,
}

impl Floor {
    fn map(fd: impl AsFd, outbox: usize) -> Floor {
        // SAFETY: a fresh shared mapping of the whole memfd at an address the kernel picks;
        // nothing else in this process refers to that range. It is unmapped in `drop`.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(2 * MAILBOX).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .expect("mmap the floor's memfd");
        Floor {
            base: base.cast(),
            outbox,
            sent: 0,
            seen: 0,
        }
    }

    /// The start of mailbox `i` (0 or 1).
    fn mailbox(&self, i: usize) -> *mut u8 {
        debug_assert!(i < 2);
        // SAFETY: the mapping is 2 * MAILBOX bytes long, so mailbox 0 and 1 start inside it.
        unsafe { self.base.as_ptr().add(i * MAILBOX) }
    }

    /// Word `w` (0: sequence, 1: length) of mailbox `i`.
    fn word(&self, i: usize, w: usize) -> &AtomicU64 {
        debug_assert!(w < 2);
        // SAFETY: the mailbox is page-aligned and its first 16 bytes are the two words, accessed
        // only atomically by either process; the mapping lives as long as `self`.
        unsafe { &*self.mailbox(i).cast::<AtomicU64>().add(w) }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // SAFETY: `base` is the mapping made in `map`, of this length; no reference into it
        // outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), 2 * MAILBOX) };
    }
}

impl Endpoint for Floor {
    fn send(&mut self, len: usize, fill: u8) {
        assert!(len <= MAX_PAYLOAD);
        let payload = self.mailbox(self.outbox).wrapping_add(HEADER);
        // SAFETY: the payload area of our outbox is ours to write: the other process reads it
        // only between our Release store of the sequence below and its reply, and it replied to
        // the previous message before we send the next (strict ping-pong).
        unsafe { std::ptr::write_bytes(payload, fill, len) };
        self.word(self.outbox, 1)
            .store(len as u64, Ordering::Relaxed);
        self.sent += 1;
        // SYNC POINT(floor): publishes the payload and length above to the Acquire load in
        // `recv` of the other process.
        self.word(self.outbox, 0)
            .store(self.sent, Ordering::Release);
    }

    fn recv(&mut self) -> (usize, u64) {
        let inbox = 1 - self.outbox;
        loop {
            // SYNC POINT(floor): pairs with the other process's Release store in `send`.
            let seq = self.word(inbox, 0).load(Ordering::Acquire);
            if seq != self.seen {
                self.seen = seq;
                break;
            }
            std::hint::spin_loop();
        }
        let len = self.word(inbox, 1).load(Ordering::Relaxed) as usize;
        assert!(len <= MAX_PAYLOAD);
        // SAFETY: the other process wrote these `len` bytes before the Release store our
        // Acquire load saw, and does not write them again until we answer.
        let payload = unsafe { std::slice::from_raw_parts(self.mailbox(inbox).add(HEADER), len) };
        (len, harness::read_all(payload))
    }
}

/// Parent side: creates the memfd, starts the child on it.
pub fn parent() -> (Floor, Child) {
    let fd: OwnedFd = nix::sys::memfd::memfd_create(
        "shmbus-compare-floor",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .expect("memfd_create");
    nix::unistd::ftruncate(&fd, (2 * MAILBOX) as i64).expect("size the floor's memfd");
    let floor = Floor::map(&fd, 0);
    let child = harness::spawn_child("floor", &[fd.as_fd()], "");
    (floor, child)
}

/// Child side.
pub fn child() {
    let fd = harness::inherited_fds().pop().expect("the floor's memfd");
    harness::serve(&mut Floor::map(&fd, 1));
}
