//! The floor: two processes passing one cache line back and forth in shared memory — the least
//! any cross-process message can cost on a machine — and its 4 KiB variant, where each side also
//! writes 4 KiB into a shared buffer before the flag and reads all 4 KiB the other wrote.
//!
//! Shared by the ring benchmark (`shm/benches/ring.rs`) and the bus benchmarks (`benches/`),
//! included with `#[path]`.

#![allow(dead_code)] // each benchmark uses its own subset

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes each side of the 4 KiB floor writes and reads.
pub const PAGE: usize = 4096;

/// Shared memory for the floors: page 0 holds the cache line (ping at word 0, pong at word 1),
/// pages 1 and 2 the two 4 KiB buffers.
pub struct Floor {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
    seq: u64,
}

/// Reads every byte, eight at a time (the receiver's share of the work).
pub fn read_all(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let sum = words
        .by_ref()
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .fold(0u64, u64::wrapping_add);
    words
        .remainder()
        .iter()
        .fold(sum, |s, &b| s.wrapping_add(u64::from(b)))
}

impl Floor {
    /// New shared memory, for the parent.
    pub fn create() -> Floor {
        let fd =
            nix::sys::memfd::memfd_create("shmbus-floor", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        nix::unistd::ftruncate(&fd, 3 * PAGE as i64).unwrap();
        Floor::open(fd)
    }

    /// The parent's shared memory, for the child.
    pub fn open(fd: OwnedFd) -> Floor {
        let map = memmap2::MmapOptions::new()
            .len(3 * PAGE)
            .map_raw(&fd)
            .unwrap();
        Floor { map, fd, seq: 0 }
    }

    /// The descriptor to hand to the child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < 2);
        // SAFETY: the mapping is page-aligned and lives as long as `self`; words 0 and 1 are
        // aligned u64s accessed only atomically, by this process and its peer.
        unsafe { &*self.map.as_mut_ptr().cast::<AtomicU64>().add(i) }
    }

    fn page(&self, i: usize) -> *mut u8 {
        assert!((1..3).contains(&i));
        // SAFETY: pages 1 and 2 lie inside the 3-page mapping.
        unsafe { self.map.as_mut_ptr().add(PAGE * i) }
    }

    /// One round trip from the parent's side: (with `payload`, write page 1), ping, wait for the
    /// pong, (read page 2).
    pub fn round_trip(&mut self, payload: bool) {
        self.seq += 1;
        if payload {
            // SAFETY: page 1 is ours until the Release store of the ping below.
            unsafe { std::ptr::write_bytes(self.page(1), self.seq as u8, PAGE) };
        }
        self.word(0).store(self.seq, Ordering::Release);
        while self.word(1).load(Ordering::Acquire) != self.seq {
            std::hint::spin_loop();
        }
        if payload {
            // SAFETY: the child wrote page 2 before its Release store of the pong.
            let back = unsafe { std::slice::from_raw_parts(self.page(2), PAGE) };
            std::hint::black_box(read_all(back));
        }
    }

    /// The child's side: answers pings (reading page 1 and writing page 2 with `payload`) until
    /// the parent calls [`Floor::stop`].
    pub fn echo(&self, payload: bool) {
        let mut last = 0;
        loop {
            let v = self.word(0).load(Ordering::Acquire);
            if v == last {
                std::hint::spin_loop();
                continue;
            }
            if v == u64::MAX {
                return;
            }
            if payload {
                // SAFETY: the parent wrote page 1 before its Release store of the ping we saw,
                // and does not touch it until we answer; page 2 is ours until the pong.
                let there = unsafe { std::slice::from_raw_parts(self.page(1), PAGE) };
                let reply = read_all(there) as u8;
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(self.page(2), reply, PAGE) };
            }
            self.word(1).store(v, Ordering::Release);
            last = v;
        }
    }

    /// Ends the child's [`Floor::echo`].
    pub fn stop(&self) {
        self.word(0).store(u64::MAX, Ordering::Release);
    }
}
