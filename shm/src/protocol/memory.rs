//! Typed access to a ring's two segments.
//!
//! [`RingMemory`] turns geometry offsets into references to the shared structures of
//! [`crate::protocol::layout`] and to the 64-bit words of the frame buffer. The protocol in
//! the rest of [`crate::protocol`] touches shared memory only through it.
//!
//! Two builds of it exist. Normally the segments are [`Backing`]s — memory-mapped memfds, or
//! zeroed heap memory for process-local rings and Miri — and references are computed from their
//! base addresses. Under `--cfg loom` the structures are ordinary boxed values made of loom's
//! atomics, so the model checker sees every shared access the protocol makes.

#[cfg(not(loom))]
pub(crate) use mapped::*;

#[cfg(loom)]
pub(crate) use modelled::*;

#[cfg(not(loom))]
mod mapped {
    use std::ptr::NonNull;

    use super::CopyBuf;
    use std::sync::Arc;

    use crate::protocol::layout::{
        Geometry, HEADER_LEN, PAGE, ReaderSlot, ReadersControl, RingControl, RingCounters,
        SegmentHeader, SpaceWait, WriterSlot,
    };
    use crate::protocol::sync::AtomicU64;

    /// Memory a segment lives in: a shared mapping, or heap memory for process-local use.
    ///
    /// # Safety
    ///
    /// Implementors guarantee that `base()..base() + len()` stays mapped (readable, and writable
    /// when `writable()`) for as long as the value lives, that `base()` is page-aligned, and that
    /// the bytes are only ever changed through atomics or through the ring protocol.
    pub(crate) unsafe trait Backing: Send + Sync + 'static {
        /// Start of the memory.
        fn base(&self) -> NonNull<u8>;
        /// Length in bytes.
        fn len(&self) -> usize;
        /// Whether this process may write it.
        fn writable(&self) -> bool;
    }

    /// Zeroed, page-aligned heap memory: the backing of process-local rings.
    pub(crate) struct HeapBacking {
        ptr: NonNull<u8>,
        layout: std::alloc::Layout,
    }

    impl HeapBacking {
        /// Allocates `len` zeroed bytes aligned to a page.
        pub(crate) fn new(len: usize) -> HeapBacking {
            let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE as usize)
                .expect("segment length overflows a Layout");
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { std::alloc::alloc_zeroed(layout) };
            let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
            HeapBacking { ptr, layout }
        }
    }

    impl Drop for HeapBacking {
        fn drop(&mut self) {
            // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed once, here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    // SAFETY: the allocation is exclusively owned, page-aligned, `layout.size()` long, and lives
    // until drop; all shared access to it goes through atomics or the ring protocol.
    unsafe impl Backing for HeapBacking {
        fn base(&self) -> NonNull<u8> {
            self.ptr
        }
        fn len(&self) -> usize {
            self.layout.size()
        }
        fn writable(&self) -> bool {
            true
        }
    }

    // SAFETY: `HeapBacking` is a uniquely owned allocation; the pointer is not aliased by any
    // other owner, and every access to the bytes from several threads is atomic or ordered by
    // the ring protocol.
    unsafe impl Send for HeapBacking {}
    // SAFETY: as above.
    unsafe impl Sync for HeapBacking {}

    /// Reads a segment's header by value.
    ///
    /// The bytes may be changing under us (the readers segment is writable by every subscriber,
    /// one of which may be hostile); they are copied with a volatile read and only then checked,
    /// and nothing is trusted from the header until [`SegmentHeader::check`] passed.
    pub(crate) fn read_header(backing: &dyn Backing) -> Option<SegmentHeader> {
        if (backing.len() as u64) < HEADER_LEN {
            return None;
        }
        // SAFETY: the backing is at least HEADER_LEN >= size_of::<SegmentHeader>() bytes and
        // page-aligned, so the read is in bounds and aligned; every bit pattern is a valid
        // SegmentHeader (plain integers).
        Some(unsafe {
            backing
                .base()
                .cast::<SegmentHeader>()
                .as_ptr()
                .read_volatile()
        })
    }

    /// Writes a segment's header. Only the creator does this, before sharing the segment.
    pub(crate) fn write_header(backing: &dyn Backing, header: SegmentHeader) {
        assert!(backing.writable() && backing.len() as u64 >= HEADER_LEN);
        // SAFETY: in bounds and aligned as in `read_header`; the creator is the only process that
        // can see the segment yet, so nothing races with this write.
        unsafe {
            backing
                .base()
                .cast::<SegmentHeader>()
                .as_ptr()
                .write_volatile(header)
        }
    }

    /// A ring's two segments, with typed accessors.
    ///
    /// The base addresses are resolved once, here: every protocol step goes through these
    /// accessors, and a virtual call per access would cost more than the protocol itself.
    pub(crate) struct RingMemory {
        geometry: Geometry,
        stamp_key: u64,
        /// Start of the data segment.
        data: NonNull<u8>,
        /// Start of the frame buffer (inside the data segment).
        buffer: NonNull<u8>,
        /// Start of the readers segment.
        readers: NonNull<u8>,
        /// `capacity - 1`.
        mask: u64,
        writable: bool,
        /// Keep the memory mapped for as long as the pointers above are used.
        _backings: [Arc<dyn Backing>; 2],
    }

    // SAFETY: the pointers point into the two backings this value keeps alive (which are Send
    // and Sync themselves); everything reached through them is accessed atomically or under the
    // ring protocol, so sharing and sending the value between threads is as sound as sharing the
    // backings.
    unsafe impl Send for RingMemory {}
    // SAFETY: as above.
    unsafe impl Sync for RingMemory {}

    impl RingMemory {
        /// Wraps two backings laid out by `geometry`.
        ///
        /// Panics if a backing is shorter than the geometry requires: callers validate lengths
        /// (and report a typed error) before getting here.
        pub(crate) fn new(
            geometry: Geometry,
            stamp_key: u64,
            data: Arc<dyn Backing>,
            readers: Arc<dyn Backing>,
        ) -> RingMemory {
            assert!(data.len() as u64 >= geometry.data_segment_len);
            assert!(readers.len() as u64 >= geometry.readers_segment_len);
            // SAFETY: data_off + capacity <= data_segment_len <= data.len(), checked above.
            let buffer = unsafe { data.base().add(geometry.data_off as usize) };
            RingMemory {
                geometry,
                stamp_key,
                data: data.base(),
                buffer,
                readers: readers.base(),
                mask: geometry.capacity - 1,
                writable: data.writable(),
                _backings: [data, readers],
            }
        }

        #[inline]
        pub(crate) fn geometry(&self) -> &Geometry {
            &self.geometry
        }

        #[inline]
        pub(crate) fn stamp_key(&self) -> u64 {
            self.stamp_key
        }

        /// Whether the data segment is mapped writable.
        pub(crate) fn writable(&self) -> bool {
            self.writable
        }

        /// A reference to the `T` at byte `offset` from `base`.
        ///
        /// # Safety
        ///
        /// `base` must be one of this value's segment bases and `offset` must come from the
        /// geometry that segment was checked against, so that `offset + size_of::<T>()` is in
        /// bounds and `offset` is aligned for `T`; `T` must be one of the layout structures, made
        /// only of atomics, for which zeroed or any previously written bytes are valid.
        #[inline]
        unsafe fn at<T>(&self, base: NonNull<u8>, offset: u64) -> &T {
            debug_assert_eq!(offset % std::mem::align_of::<T>() as u64, 0);
            // SAFETY: guaranteed by the caller (bounds, alignment, validity); the reference lives
            // no longer than `self`, which keeps the memory mapped.
            unsafe { &*base.as_ptr().add(offset as usize).cast::<T>() }
        }

        #[inline]
        pub(crate) fn control(&self) -> &RingControl {
            // SAFETY: control_off is a geometry offset of a RingControl in the data segment.
            unsafe { self.at(self.data, self.geometry.control_off) }
        }

        pub(crate) fn counters(&self) -> &RingCounters {
            // SAFETY: counters_off is a geometry offset of a RingCounters in the data segment.
            unsafe { self.at(self.data, self.geometry.counters_off) }
        }

        #[inline]
        pub(crate) fn writer(&self, slot: u32) -> &WriterSlot {
            assert!(slot < self.geometry.writer_slots);
            let off = self.geometry.writers_off + 128 * u64::from(slot);
            // SAFETY: slot is in range, so `off` addresses one of the geometry's writer slots.
            unsafe { self.at(self.data, off) }
        }

        #[inline]
        pub(crate) fn readers_control(&self) -> &ReadersControl {
            // SAFETY: readers_control_off is a geometry offset in the readers segment.
            unsafe { self.at(self.readers, self.geometry.readers_control_off) }
        }

        #[inline]
        pub(crate) fn space_wait(&self) -> &SpaceWait {
            // SAFETY: space_wait_off is a geometry offset in the readers segment.
            unsafe { self.at(self.readers, self.geometry.space_wait_off) }
        }

        #[inline]
        pub(crate) fn reader(&self, slot: u32) -> &ReaderSlot {
            assert!(slot < self.geometry.reader_slots);
            let off = self.geometry.reader_slots_off + 128 * u64::from(slot);
            // SAFETY: slot is in range, so `off` addresses one of the geometry's reader slots.
            unsafe { self.at(self.readers, off) }
        }

        /// The 64-bit word at absolute ring position `offset` of the frame buffer, taken modulo
        /// the capacity and rounded down to 8 bytes: whatever a position read from shared memory
        /// holds, the word is inside the buffer and aligned (a misaligned position only makes the
        /// caller find garbage, which frame validation rejects).
        #[inline]
        pub(crate) fn word(&self, offset: u64) -> &AtomicU64 {
            // SAFETY: the mask keeps the offset inside the frame buffer and clears its low three
            // bits; the buffer is page-aligned and its length a multiple of 8, so the result is an
            // aligned, in-bounds AtomicU64.
            unsafe { self.at(self.buffer, offset & self.mask & !7) }
        }

        /// Address of the byte at absolute ring position `offset` (taken modulo the capacity).
        #[inline]
        pub(crate) fn data_ptr(&self, offset: u64) -> *mut u8 {
            // SAFETY: masking keeps the offset inside the frame buffer.
            unsafe { self.buffer.as_ptr().add((offset & self.mask) as usize) }
        }

        /// Copies `len` payload bytes at `offset` out of the frame buffer into `dst`.
        ///
        /// The bytes may be overwritten while they are copied; the copy is then torn, and the
        /// caller finds out (seqlock style, by re-reading the claim cursor) and throws it away.
        /// This is the reason the copy goes through raw pointers and never forms a reference to
        /// the shared bytes.
        #[inline]
        pub(crate) fn copy_out(&self, offset: u64, len: usize, dst: &mut CopyBuf) {
            debug_assert!(
                (offset & (self.geometry.capacity - 1)) + len as u64 <= self.geometry.capacity
            );
            let out = dst.prepare(len);
            // SAFETY: the source range is inside the frame buffer (frames never wrap, and the
            // caller validated the header: offset + len stays below the capacity), the
            // destination has room for `len` bytes, and the two cannot overlap (heap vs mapping).
            unsafe { std::ptr::copy_nonoverlapping(self.data_ptr(offset), out, len) }
        }
    }
}

/// A 16-byte-aligned buffer for frames read by copy (aligned so rkyv can read archives in it).
#[derive(Debug, Default)]
pub(crate) struct CopyBuf {
    words: Vec<u128>,
    len: usize,
}

impl CopyBuf {
    /// Makes room for `len` bytes, sets the length, and returns where to write them.
    #[inline]
    pub(crate) fn prepare(&mut self, len: usize) -> *mut u8 {
        let words = len.div_ceil(16);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
        self.len = len;
        self.words.as_mut_ptr().cast()
    }

    /// The bytes last copied in.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes (prepare sized it, and u128s
        // are plain bytes), and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

#[cfg(loom)]
mod modelled {
    use crate::protocol::layout::{
        Geometry, ReaderSlot, ReadersControl, RingControl, RingCounters, SpaceWait, WriterSlot,
    };
    use crate::protocol::sync::{AtomicU32, AtomicU64, Head, HeadCell};

    /// The loom model of a ring's memory: every shared structure as a loom value.
    pub(crate) struct RingMemory {
        geometry: Geometry,
        stamp_key: u64,
        control: RingControl,
        counters: RingCounters,
        writers: Box<[WriterSlot]>,
        readers_control: ReadersControl,
        space_wait: SpaceWait,
        readers: Box<[ReaderSlot]>,
        words: Box<[AtomicU64]>,
    }

    impl RingMemory {
        /// A zeroed ring, as a fresh memfd would be.
        pub(crate) fn zeroed(geometry: Geometry, stamp_key: u64) -> RingMemory {
            let writer = || WriterSlot {
                owner: AtomicU64::new(0),
                intent_pos: AtomicU64::new(crate::protocol::layout::NO_INTENT),
                intent_seq: AtomicU64::new(0),
                intent_end: AtomicU64::new(0),
                published: AtomicU64::new(0),
                writer_id: AtomicU32::new(0),
                committing: AtomicU64::new(crate::protocol::layout::NO_INTENT),
                revoked: AtomicU64::new(crate::protocol::layout::NO_INTENT),
            };
            let reader = || ReaderSlot {
                owner: AtomicU64::new(0),
                pos: AtomicU64::new(0),
                missed: AtomicU64::new(0),
                mode: AtomicU32::new(0),
                doorbell: AtomicU32::new(0),
                parked: AtomicU32::new(0),
            };
            RingMemory {
                geometry,
                stamp_key,
                control: RingControl {
                    head: HeadCell::new(Head::default()),
                    exclusive: AtomicU64::new(0),
                    epoch: AtomicU64::new(0),
                },
                counters: RingCounters {
                    writer_high_water: AtomicU32::new(0),
                },
                writers: (0..geometry.writer_slots).map(|_| writer()).collect(),
                readers_control: ReadersControl {
                    parked: AtomicU32::new(0),
                    high_water: AtomicU32::new(0),
                },
                space_wait: SpaceWait {
                    waiters: AtomicU32::new(0),
                    word: AtomicU32::new(0),
                    starving: AtomicU32::new(0),
                },
                readers: (0..geometry.reader_slots).map(|_| reader()).collect(),
                words: (0..geometry.capacity / 8)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            }
        }

        #[inline]
        pub(crate) fn geometry(&self) -> &Geometry {
            &self.geometry
        }
        #[inline]
        pub(crate) fn stamp_key(&self) -> u64 {
            self.stamp_key
        }
        #[inline]
        pub(crate) fn control(&self) -> &RingControl {
            &self.control
        }
        pub(crate) fn counters(&self) -> &RingCounters {
            &self.counters
        }
        #[inline]
        pub(crate) fn writer(&self, slot: u32) -> &WriterSlot {
            &self.writers[slot as usize]
        }
        #[inline]
        pub(crate) fn readers_control(&self) -> &ReadersControl {
            &self.readers_control
        }
        #[inline]
        pub(crate) fn space_wait(&self) -> &SpaceWait {
            &self.space_wait
        }
        #[inline]
        pub(crate) fn reader(&self, slot: u32) -> &ReaderSlot {
            &self.readers[slot as usize]
        }
        pub(crate) fn word(&self, offset: u64) -> &AtomicU64 {
            &self.words[((offset & (self.geometry.capacity - 1)) / 8) as usize]
        }
        /// Payload bytes are modelled as whole 64-bit words read with Relaxed loads.
        #[inline]
        pub(crate) fn copy_out(&self, offset: u64, len: usize, dst: &mut super::CopyBuf) {
            let out = dst.prepare(len);
            for i in 0..len.div_ceil(8) {
                let w = self
                    .word(offset + 8 * i as u64)
                    .load(crate::protocol::sync::Ordering::Relaxed);
                let n = (len - 8 * i).min(8);
                // SAFETY: `prepare` made room for `len` bytes; bytes 8i..8i+n are inside it.
                unsafe {
                    std::ptr::copy_nonoverlapping(w.to_le_bytes().as_ptr(), out.add(8 * i), n)
                }
            }
        }
    }
}
