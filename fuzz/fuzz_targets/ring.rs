//! A ring whose shared memory a faulty process scribbles on, between the moves of honest
//! writers, readers and the broker's recovery: arbitrary words at arbitrary offsets of both
//! segments (cursor, slots, frames), interleaved with real publishes, reads by tethered and lossy
//! readers, repair, taking back held claims, eviction, retirement. Nothing may panic, hang or
//! touch memory outside the segments (the sanitizer and the segments' guard pages tell).

#![no_main]

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use shmbus_shm::{DoorbellTable, Owner, ReaderMode, ReaderOptions, Ring, RingConfig};

const CONFIG: RingConfig = RingConfig {
    capacity: 4096,
    max_payload: 1024,
    writer_slots: 4,
    reader_slots: 4,
};

/// A segment mapped a second time, for scribbling.
struct Scribble(memmap2::MmapRaw);

impl Scribble {
    fn map(fd: std::os::fd::BorrowedFd<'_>) -> Scribble {
        Scribble(memmap2::MmapOptions::new().map_raw(fd.as_raw_fd()).unwrap())
    }

    /// Stores `value` in the 8-aligned word `index` (modulo the segment's words).
    fn put(&self, index: u64, value: u64) {
        let words = self.0.len() as u64 / 8;
        let offset = (index % words) * 8;
        // SAFETY: the offset is 8-aligned and inside the mapping, which outlives this call;
        // everything in a segment is accessed atomically.
        unsafe { AtomicU64::from_ptr(self.0.as_mut_ptr().add(offset as usize).cast()) }
            .store(value, Ordering::Relaxed);
    }
}

fuzz_target!(|data: &[u8]| {
    let doorbells = DoorbellTable::create(4).unwrap();
    let ring = Ring::create(&CONFIG, &doorbells).unwrap();
    let data_seg = Scribble::map(ring.data_fd().unwrap());
    let readers_seg = Scribble::map(ring.readers_fd().unwrap());
    let me = Owner::new(1).unwrap();
    let bell = Arc::new(doorbells.claim(me).unwrap());
    let mut tethered = ring.reader(ReaderOptions::default(), &bell, me).ok();
    let lossy_options = ReaderOptions::default().mode(ReaderMode::Lossy).history(4);
    let mut lossy = ring.reader(lossy_options, &bell, me).ok();
    let mut writers: Vec<_> = (0..2).filter_map(|i| ring.writer(i, me).ok()).collect();
    for op in data.chunks(11) {
        let [kind, a, b, rest @ ..] = op else { break };
        let index = u64::from(u16::from_le_bytes([*a, *b]));
        let mut value = [0u8; 8];
        value[..rest.len()].copy_from_slice(rest);
        let value = u64::from_le_bytes(value);
        match kind % 10 {
            0 => data_seg.put(index, value),
            1 => readers_seg.put(index, value),
            2 | 3 => {
                if let Some(w) = writers.get_mut(usize::from(*kind % 2)) {
                    let len = (index as usize) % 1100;
                    let _ = w.try_publish(&vec![*a; len]);
                }
            }
            4 => {
                if let Some(w) = writers.first_mut() {
                    // A claim dropped uncommitted becomes a skipped frame.
                    drop(w.try_loan((index as usize) % 1100));
                }
            }
            5 => {
                for _ in 0..(index % 8) {
                    if let Some(r) = tethered.as_mut() {
                        let _ = r.try_read().map(|f| f.map(|f| f.payload().len()));
                    }
                }
            }
            6 => {
                for _ in 0..(index % 8) {
                    if let Some(r) = lossy.as_mut() {
                        let _ = r.try_read().map(|f| f.map(|f| f.payload().len()));
                    }
                }
            }
            7 => {
                let _ = ring.repair_dead_writers(|o| o.get() % 2 == value % 2);
            }
            8 => {
                for w in ring.writers() {
                    if let Some(pos) = w.claiming {
                        let _ = ring.unblock_claim(w.slot, pos);
                    }
                }
                let _ = (ring.readers(), ring.is_corrupt(), ring.head());
            }
            _ => {
                let slot = (index % 8) as u32;
                match value % 4 {
                    0 => drop(ring.untether_reader(slot)),
                    1 => drop(Owner::new(value | 1).map(|o| ring.reclaim_reader(slot, o))),
                    2 => ring.retire(),
                    _ => ring.wake_readers(),
                }
            }
        }
    }
    // Whatever state the ring is in, readers and a fresh reader return.
    for _ in 0..4 {
        if let Some(r) = tethered.as_mut() {
            let _ = r.try_read().map(|f| f.is_some());
        }
        if let Some(r) = lossy.as_mut() {
            let _ = r.try_read().map(|f| f.is_some());
        }
    }
    let _ = ring.reader(ReaderOptions::default().history(8), &bell, me);
});
