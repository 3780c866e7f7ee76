//! Doorbells: the futex words parked subscribers sleep on.
//!
//! One table per bus, mapped read-write by every participant. A subscriber claims one doorbell
//! and records its index in the reader slot of every ring it reads; a writer that finds parked
//! readers on its ring rings each one's doorbell. So a subscriber attached to many rings (a
//! wildcard subscription) sleeps on a single word and any of its rings wakes it.
//!
//! Anyone can ring any doorbell: the worst a hostile participant can do is wake a subscriber for
//! nothing, and every sleeper re-checks its rings when it wakes.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::api::error::{CreateError, OpenError, SlotError};
use crate::api::owner::Owner;
use crate::os::futex;
use crate::os::segment::MappedSegment;
use crate::protocol::layout::{
    self, DoorbellCell, HEADER_LEN, LAYOUT_VERSION, MAGIC, SegmentHeader, SegmentKind,
};
use crate::protocol::memory::{Backing, HeapBacking, read_header, write_header};
use crate::protocol::sync::{AtomicU32, Ordering};

struct TableInner {
    backing: Arc<dyn Backing>,
    segment: Option<Arc<MappedSegment>>,
    count: u32,
}

/// A bus-wide table of doorbells in shared memory. Cloning shares the mapping.
#[derive(Clone)]
pub struct DoorbellTable {
    inner: Arc<TableInner>,
}

impl std::fmt::Debug for DoorbellTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorbellTable")
            .field("count", &self.inner.count)
            .finish()
    }
}

fn header(count: u32, len: u64) -> SegmentHeader {
    SegmentHeader {
        magic: MAGIC,
        version: LAYOUT_VERSION,
        kind: SegmentKind::Doorbells as u32,
        segment_len: len,
        ring_id: 0,
        capacity: 0,
        max_payload: 0,
        writer_slots: 0,
        reader_slots: 0,
        doorbells: count,
        stamp_key: 0,
    }
}

impl DoorbellTable {
    /// Creates a table of `count` doorbells in a new sealed memfd.
    pub fn create(count: u32) -> Result<DoorbellTable, CreateError> {
        let len = layout::doorbells_segment_len(count)?;
        let segment = Arc::new(MappedSegment::create("shmbus-doorbells", len, 0o600)?);
        write_header(&*segment, header(count, len));
        Ok(DoorbellTable::from_parts(
            segment.clone(),
            Some(segment),
            count,
        ))
    }

    /// Creates a table in this process's heap, for process-local rings (and tests).
    pub fn create_local(count: u32) -> Result<DoorbellTable, CreateError> {
        let len = layout::doorbells_segment_len(count)?;
        let backing = Arc::new(HeapBacking::new(len as usize));
        write_header(&*backing, header(count, len));
        Ok(DoorbellTable::from_parts(backing, None, count))
    }

    /// Opens a table received from another process. The descriptor must be read-write.
    pub fn open(fd: OwnedFd) -> Result<DoorbellTable, OpenError> {
        let segment = Arc::new(MappedSegment::open(fd)?);
        if !segment.writable() {
            return Err(OpenError::ReadOnly("doorbell"));
        }
        let len = segment.len() as u64;
        let h = read_header(&*segment).ok_or(layout::LayoutError::Truncated {
            actual: len,
            expected: HEADER_LEN,
        })?;
        h.check(SegmentKind::Doorbells, len)?;
        if h.segment_len != layout::doorbells_segment_len(h.doorbells)? {
            return Err(layout::LayoutError::Geometry(format!(
                "doorbell table length {} does not match its {} doorbells",
                h.segment_len, h.doorbells
            ))
            .into());
        }
        Ok(DoorbellTable::from_parts(
            segment.clone(),
            Some(segment),
            h.doorbells,
        ))
    }

    /// Maps a table of `count` doorbells from a descriptor its creator handed out, trusting
    /// `count` (the creator's word) rather than the segment's header, which every participant can
    /// write: the segment's length is checked with `fstat`. The descriptor is closed once mapped.
    pub fn attach(fd: OwnedFd, count: u32) -> Result<DoorbellTable, OpenError> {
        let len = layout::doorbells_segment_len(count)?;
        let segment = Arc::new(MappedSegment::open(fd)?.without_fd());
        if !segment.writable() {
            return Err(OpenError::ReadOnly("doorbell"));
        }
        let actual = segment.len() as u64;
        if actual < len {
            return Err(layout::LayoutError::Truncated {
                actual,
                expected: len,
            }
            .into());
        }
        Ok(DoorbellTable::from_parts(
            segment.clone(),
            Some(segment),
            count,
        ))
    }

    /// Doorbell `index`, without claiming it: for clients whose broker hands doorbells out (and
    /// records who holds which), instead of claiming one in the shared table. `None` if the index
    /// is out of range.
    pub fn bell(&self, index: u32) -> Option<Doorbell> {
        self.cell(index)?;
        Some(Doorbell {
            table: self.clone(),
            index,
            owner: None,
        })
    }

    fn from_parts(
        backing: Arc<dyn Backing>,
        segment: Option<Arc<MappedSegment>>,
        count: u32,
    ) -> DoorbellTable {
        DoorbellTable {
            inner: Arc::new(TableInner {
                backing,
                segment,
                count,
            }),
        }
    }

    /// The table's memfd, to hand to other processes (`None` for process-local tables).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.segment.as_ref().and_then(|s| s.fd())
    }

    /// Number of doorbells.
    pub fn len(&self) -> u32 {
        self.inner.count
    }

    /// Always false: a table has at least one doorbell.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether two handles share one table.
    pub fn same_table(&self, other: &DoorbellTable) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn cell(&self, index: u32) -> Option<&DoorbellCell> {
        if index >= self.inner.count {
            return None;
        }
        let off = HEADER_LEN + 64 * u64::from(index);
        // SAFETY: the table was validated (or created) with `count` cells after the header, each
        // 64 bytes and 64-aligned (the base is page-aligned); `index < count`; DoorbellCell is
        // made of atomics, valid for any bytes; the reference lives no longer than `self`, which
        // keeps the mapping alive.
        Some(unsafe { &*self.inner.backing.base().as_ptr().add(off as usize).cast() })
    }

    /// Claims a free doorbell for `owner`. It is freed when the returned handle drops.
    pub fn claim(&self, owner: Owner) -> Result<Doorbell, SlotError> {
        for index in 0..self.inner.count {
            let cell = self.cell(index).expect("index below count");
            // Acquire pairs with the Release store of 0 by the previous holder's release.
            if cell
                .owner
                .compare_exchange(0, owner.get(), Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(Doorbell {
                    table: self.clone(),
                    index,
                    owner: Some(owner),
                });
            }
        }
        Err(SlotError::NoFreeSlot {
            what: "doorbell",
            slots: self.inner.count,
        })
    }

    /// Frees doorbell `index` if `owner` still holds it (the broker does this for dead clients).
    /// Returns whether it was freed.
    pub fn reclaim(&self, index: u32, owner: Owner) -> bool {
        self.cell(index).is_some_and(|c| {
            c.owner
                // Release pairs with the Acquire CAS of the doorbell's next holder in `claim`.
                .compare_exchange(owner.get(), 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Doorbells held by `owner`, for reclaiming a dead client's.
    pub fn held_by(&self, owner: Owner) -> Vec<u32> {
        (0..self.inner.count)
            .filter(|&i| {
                self.cell(i)
                    .is_some_and(|c| c.owner.load(Ordering::Relaxed) == owner.get())
            })
            .collect()
    }

    /// Rings doorbell `index`: bumps its word and wakes its sleeper. Out-of-range indices (a
    /// hostile reader slot can hold anything) are ignored. Writers do this for parked
    /// readers; a client also does it to wake its own subscriber when a new ring attaches.
    pub fn ring(&self, index: u32) {
        if let Some(cell) = self.cell(index) {
            // SYNC(doorbell): Release pairs with the Acquire load in `Doorbell::arm`; the commit
            // that made us ring happens-before a sleeper that sees the new value.
            cell.word.fetch_add(1, Ordering::Release);
            futex::wake_all(&cell.word);
        }
    }
}

/// One doorbell: claimed from the table (freed on drop) or handed out by a broker (which
/// records who holds it). Readers that share it are woken together.
#[derive(Debug)]
pub struct Doorbell {
    table: DoorbellTable,
    index: u32,
    /// The token it was claimed with; `None` for a broker-assigned doorbell.
    owner: Option<Owner>,
}

impl Doorbell {
    /// Its index in the table.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The table it belongs to.
    pub fn table(&self) -> &DoorbellTable {
        &self.table
    }

    fn word(&self) -> &AtomicU32 {
        &self
            .table
            .cell(self.index)
            .expect("claimed index is in range")
            .word
    }

    /// Reads the word before checking for work; pass the value to [`Doorbell::sleep`].
    pub fn arm(&self) -> u32 {
        // SYNC(doorbell): Acquire pairs with the Release bump in `DoorbellTable::ring`.
        self.word().load(Ordering::Acquire)
    }

    /// Sleeps until the doorbell is rung after `armed` was read, or `timeout` passes.
    pub fn sleep(&self, armed: u32, timeout: Option<Duration>) {
        futex::wait(self.word(), armed, timeout);
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        if let Some(owner) = self.owner {
            self.table.reclaim(self.index, owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_release_and_reclaim() {
        let table = DoorbellTable::create_local(2).unwrap();
        let a = Owner::new(1).unwrap();
        let b = Owner::new(2).unwrap();
        let d0 = table.claim(a).unwrap();
        let d1 = table.claim(b).unwrap();
        assert_eq!((d0.index(), d1.index()), (0, 1));
        assert_eq!(
            table.claim(a).unwrap_err(),
            SlotError::NoFreeSlot {
                what: "doorbell",
                slots: 2
            }
        );
        assert_eq!(table.held_by(b), vec![1]);
        assert!(
            !table.reclaim(1, a),
            "only the holder's token frees a doorbell"
        );
        drop(d0);
        assert_eq!(table.claim(b).unwrap().index(), 0);
        // The broker reclaims a dead holder's doorbell; the handle's own release then finds
        // nothing to free.
        assert!(table.reclaim(1, b));
        assert!(table.held_by(b).is_empty());
        drop(d1);
        assert!(table.held_by(b).is_empty());
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
    fn opened_tables_are_validated() {
        let table = DoorbellTable::create(4).unwrap();
        let fd = table.fd().unwrap().try_clone_to_owned().unwrap();
        let again = DoorbellTable::open(fd).unwrap();
        assert_eq!(again.len(), 4);
        let d = again.claim(Owner::new(9).unwrap()).unwrap();
        assert_eq!(table.held_by(Owner::new(9).unwrap()), vec![d.index()]);
    }

    #[test]
    fn ringing_wakes_a_sleeper() {
        let table = DoorbellTable::create_local(1).unwrap();
        let bell = Arc::new(table.claim(Owner::new(1).unwrap()).unwrap());
        let armed = bell.arm();
        let sleeper = {
            let bell = Arc::clone(&bell);
            std::thread::spawn(move || {
                while bell.arm() == armed {
                    bell.sleep(armed, None);
                }
            })
        };
        table.ring(0);
        table.ring(7); // out of range: ignored
        sleeper.join().unwrap();
    }
}
