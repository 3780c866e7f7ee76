//! `floor` in throughput mode: the least a stream of messages costs — a ring of fixed slots in
//! plain shared memory per direction, with nothing but a sequence word per slot, and a
//! [`Credit`] window of the ring's length for flow control.
//!
//! A slot is a sequence number, a length and the payload, rounded up to whole cache lines, and
//! at least two (so an 8-byte message takes one line and leaves its pair's other line unused,
//! the fastest layout here). The sender writes the payload and length, then stores the
//! sequence number with Release; the receiver spins on it with Acquire. Each ring is about
//! 1 MiB, like a shmbus ring.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags};

use crate::credit::Credit;
use crate::harness::{self, Endpoint};

/// Bytes of slots per direction.
const RING_BYTES: usize = 1 << 20;
/// Sequence number and length before each payload.
const HEADER: usize = 16;
/// A cache line.
const LINE: usize = 64;

/// The slots of one direction for payloads of up to `max_len` bytes.
#[derive(Clone, Copy)]
struct Geometry {
    slot: usize,
    slots: u64,
}

impl Geometry {
    fn for_payload(max_len: usize) -> Geometry {
        // A one-line slot gets a second line, as shmbus frames do: adjacent-line prefetching
        // moves 128-byte pairs, and one-line slots sharing a pair ran at half the speed.
        let slot = ((HEADER + max_len).div_ceil(LINE) * LINE).max(2 * LINE);
        Geometry {
            slot,
            // At least 16 slots: the credit window is the ring.
            slots: (RING_BYTES / slot).max(16) as u64,
        }
    }

    /// Bytes of one direction's slots.
    fn ring(self) -> usize {
        self.slot * self.slots as usize
    }
}

/// One process's view of both directions.
pub struct FloorStream {
    base: NonNull<u8>,
    g: Geometry,
    /// Where this process sends (0 or 1); it receives from the other.
    outbox: usize,
    /// Messages sent and received.
    sent: u64,
    received: u64,
    credit: Credit,
}

impl FloorStream {
    fn map(fd: impl AsFd, g: Geometry, outbox: usize, credit: Credit) -> FloorStream {
        // SAFETY: a fresh shared mapping of the whole memfd at an address the kernel picks;
        // nothing else in this process refers to that range. It is unmapped in `drop`.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(2 * g.ring()).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .expect("mmap the floor's memfd");
        FloorStream {
            base: base.cast(),
            g,
            outbox,
            sent: 0,
            received: 0,
            credit,
        }
    }

    /// The slot message `n` of direction `d` goes to.
    fn slot(&self, d: usize, n: u64) -> *mut u8 {
        debug_assert!(d < 2);
        let index = d * self.g.slots as usize + (n % self.g.slots) as usize;
        // SAFETY: `index < 2 * slots`, so the slot lies inside the mapping.
        unsafe { self.base.as_ptr().add(index * self.g.slot) }
    }

    /// Word `w` (0: sequence, 1: length) of a slot from [`FloorStream::slot`].
    fn word(&self, slot: *mut u8, w: usize) -> &AtomicU64 {
        debug_assert!(w < 2);
        // SAFETY: slots are 64-aligned inside the mapping (which lives as long as `self`) and
        // start with these two words, which both processes access only atomically.
        unsafe { &*slot.cast::<AtomicU64>().add(w) }
    }
}

impl Drop for FloorStream {
    fn drop(&mut self) {
        // SAFETY: `base` is the mapping made in `map`, of this length; no reference into it
        // outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), 2 * self.g.ring()) };
    }
}

impl Endpoint for FloorStream {
    fn send(&mut self, len: usize, fill: u8) {
        assert!(HEADER + len <= self.g.slot);
        self.credit.before_send();
        let slot = self.slot(self.outbox, self.sent);
        // SAFETY: the slot's payload is ours to write: the credit window says the receiver has
        // read the message that was here a lap ago, and it reads this one only after our Release
        // store below.
        unsafe { std::ptr::write_bytes(slot.add(HEADER), fill, len) };
        self.word(slot, 1).store(len as u64, Ordering::Relaxed);
        self.sent += 1;
        // SYNC POINT(floor-stream): publishes the payload and length to the receiver's Acquire.
        self.word(slot, 0).store(self.sent, Ordering::Release);
    }

    fn recv(&mut self) -> (usize, u64) {
        let slot = self.slot(1 - self.outbox, self.received);
        // SYNC POINT(floor-stream): pairs with the sender's Release store of the sequence.
        while self.word(slot, 0).load(Ordering::Acquire) != self.received + 1 {
            self.credit.idle();
            std::hint::spin_loop();
        }
        let len = self.word(slot, 1).load(Ordering::Relaxed) as usize;
        assert!(HEADER + len <= self.g.slot);
        // SAFETY: the sender wrote these `len` bytes before the Release store our Acquire load
        // saw, and does not write them again before our credit says we are done with them.
        let payload = unsafe { std::slice::from_raw_parts(slot.add(HEADER), len) };
        let sum = harness::read_all(payload);
        self.received += 1;
        self.credit.after_recv();
        (len, sum)
    }
}

/// Parent side: creates the memfds for payloads of up to `max_len` bytes, starts the child.
pub fn parent(max_len: usize) -> (FloorStream, Child) {
    let g = Geometry::for_payload(max_len);
    let fd: OwnedFd = nix::sys::memfd::memfd_create(
        "shmbus-compare-floor-stream",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .expect("memfd_create");
    nix::unistd::ftruncate(&fd, (2 * g.ring()) as i64).expect("size the floor's memfd");
    let (credit, credit_fd) = Credit::create(g.slots);
    let floor = FloorStream::map(&fd, g, 0, credit);
    let child = harness::spawn_child(
        "floor-stream",
        &[fd.as_fd(), credit_fd.as_fd()],
        &max_len.to_string(),
    );
    (floor, child)
}

/// Child side.
pub fn child() {
    let [fd, credit_fd]: [OwnedFd; 2] = harness::inherited_fds()
        .try_into()
        .expect("the floor's two memfds");
    let max_len = harness::child_arg().parse().expect("payload length");
    let g = Geometry::for_payload(max_len);
    let credit = Credit::map(&credit_fd, 1, g.slots);
    harness::serve(&mut FloorStream::map(&fd, g, 1, credit));
}
