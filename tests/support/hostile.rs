//! What a faulty client can do to the shared memory it is given: map a segment from a descriptor
//! it holds, read-write, and store anything anywhere in it. Used by the robustness tests (and the
//! broker core's unit tests, which include this file) to damage segments on purpose.

#![allow(dead_code)] // each test uses its own subset

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shmbus_shm::{RingConfig, RingLayout, reader_slot, writer_slot};

/// A segment mapped read-write by a test that plays a faulty client.
pub struct Scribbler {
    map: memmap2::MmapRaw,
}

impl Scribbler {
    /// Maps the whole segment behind `fd` read-write (the descriptor must allow it).
    pub fn map(fd: BorrowedFd<'_>) -> std::io::Result<Scribbler> {
        let map = memmap2::MmapOptions::new().map_raw(fd.as_raw_fd())?;
        Ok(Scribbler { map })
    }

    /// The segment's length.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    fn at<T>(&self, off: u64) -> *mut T {
        let size = std::mem::size_of::<T>() as u64;
        assert!(
            off % size == 0 && off + size <= self.len(),
            "the scribbler writes whole aligned words inside the segment (offset {off})"
        );
        // In bounds by the assertion.
        self.map.as_mut_ptr().wrapping_add(off as usize).cast()
    }

    /// Stores `value` at `off` (8-aligned).
    pub fn put_u64(&self, off: u64, value: u64) {
        // SAFETY: `at` checked that the word is aligned and inside the mapping, which lives as
        // long as `self`; other processes access it only atomically.
        unsafe { AtomicU64::from_ptr(self.at(off)) }.store(value, Ordering::SeqCst);
    }

    /// Stores `value` at `off` (4-aligned).
    pub fn put_u32(&self, off: u64, value: u32) {
        // SAFETY: as in `put_u64`.
        unsafe { AtomicU32::from_ptr(self.at(off)) }.store(value, Ordering::SeqCst);
    }

    /// Loads the word at `off` (8-aligned).
    pub fn get_u64(&self, off: u64) -> u64 {
        // SAFETY: as in `put_u64`.
        unsafe { AtomicU64::from_ptr(self.at(off)) }.load(Ordering::SeqCst)
    }

    /// Stores `value` into every 8-byte word of `start..end`.
    pub fn fill_u64(&self, start: u64, end: u64, value: u64) {
        for off in (start..end.min(self.len())).step_by(8) {
            self.put_u64(off, value);
        }
    }
}

/// A ring's segments as a faulty participant maps them: the readers segment (every subscriber
/// has it read-write) and, for a publisher, the data segment.
pub struct RingScribbler {
    pub layout: RingLayout,
    pub readers: Scribbler,
    pub data: Option<Scribbler>,
}

impl RingScribbler {
    /// Maps the readers segment, and the data segment if given, of a ring of `config`.
    pub fn map(
        config: &RingConfig,
        readers: BorrowedFd<'_>,
        data: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<RingScribbler> {
        Ok(RingScribbler {
            layout: config.layout().expect("a valid configuration"),
            readers: Scribbler::map(readers)?,
            data: data.map(Scribbler::map).transpose()?,
        })
    }

    fn data(&self) -> &Scribbler {
        self.data.as_ref().expect("the data segment was mapped")
    }

    fn reader(&self, slot: u32) -> u64 {
        self.layout.reader_slots + u64::from(slot) * self.layout.slot_len
    }

    fn writer(&self, slot: u32) -> u64 {
        self.layout.writer_slots + u64::from(slot) * self.layout.slot_len
    }

    pub fn reader_position(&self, slot: u32, pos: u64) {
        self.readers
            .put_u64(self.reader(slot) + reader_slot::POS, pos);
    }

    pub fn reader_mode(&self, slot: u32, mode: u32) {
        self.readers
            .put_u32(self.reader(slot) + reader_slot::MODE, mode);
    }

    pub fn reader_owner(&self, slot: u32, owner: u64) {
        self.readers
            .put_u64(self.reader(slot) + reader_slot::OWNER, owner);
    }

    pub fn reader_doorbell(&self, slot: u32, index_plus_one: u32) {
        self.readers
            .put_u32(self.reader(slot) + reader_slot::DOORBELL, index_plus_one);
    }

    pub fn reader_parked(&self, slot: u32, parked: u32) {
        self.readers
            .put_u32(self.reader(slot) + reader_slot::PARKED, parked);
    }

    /// The parked count and high-water mark of the readers segment.
    pub fn readers_control(&self, parked: u32, high_water: u32) {
        let base = self.layout.readers_control;
        self.readers.put_u32(base, parked);
        self.readers.put_u32(base + 4, high_water);
    }

    /// The claim cursor: position, and sequence word (its top bit the exclusive flag).
    pub fn head(&self, pos: u64, seq_word: u64) {
        self.data().put_u64(self.layout.head, pos);
        self.data().put_u64(self.layout.head + 8, seq_word);
    }

    pub fn head_position(&self) -> u64 {
        self.data().get_u64(self.layout.head)
    }

    pub fn writer_owner_of(&self, slot: u32) -> u64 {
        self.data().get_u64(self.writer(slot) + writer_slot::OWNER)
    }

    pub fn reader_owner_of(&self, slot: u32) -> u64 {
        self.readers.get_u64(self.reader(slot) + reader_slot::OWNER)
    }

    pub fn writer_owner(&self, slot: u32, owner: u64) {
        self.data()
            .put_u64(self.writer(slot) + writer_slot::OWNER, owner);
    }

    /// A writer slot's intent: the claim `pos..end` with sequence `seq`.
    pub fn writer_intent(&self, slot: u32, pos: u64, seq: u64, end: u64) {
        let base = self.writer(slot);
        self.data().put_u64(base + writer_slot::INTENT_SEQ, seq);
        self.data().put_u64(base + writer_slot::INTENT_END, end);
        self.data().put_u64(base + writer_slot::INTENT_POS, pos);
    }

    /// Writes `value` over every word of frame storage.
    pub fn frames(&self, value: u64) {
        let start = self.layout.frames;
        self.data().fill_u64(start, self.layout.data_len, value);
    }

    /// Writes `value` over every word of the readers segment, header included.
    pub fn whole_readers_segment(&self, value: u64) {
        self.readers.fill_u64(0, self.readers.len(), value);
    }
}

/// Tries every way to write through a read-only descriptor of a ring's data; returns 0 when all
/// are refused, else the number of the step that succeeded.
///
/// # Safety
/// `path` is a NUL-terminated string; `fd` an open descriptor.
pub unsafe fn attempt_writable(path: *const libc::c_char, fd: i32) -> i32 {
    // SAFETY: by the caller's contract; each call only reports success or failure.
    unsafe {
        let reopened = libc::open(path, libc::O_RDWR);
        if reopened >= 0 {
            return 1;
        }
        let map = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if map != libc::MAP_FAILED {
            return 2;
        }
        let punched = libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        );
        if punched == 0 {
            return 3;
        }
        if libc::write(fd, b"x".as_ptr().cast(), 1) >= 0 {
            return 4;
        }
        0
    }
}
