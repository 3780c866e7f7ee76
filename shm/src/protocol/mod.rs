//! The ring protocol, and everything it stands on that loom can model: the one atomics module
//! ([`sync`]), the shared-memory layout ([`layout`], [`memory`], [`frame`]), the asymmetric fences
//! ([`fence`]), and the three roles' steps — claims and commits ([`claim`]), reads ([`read`]) and
//! the broker's recovery primitives ([`recovery`]) — written against [`RingMemory`] so the same
//! code runs on shared memory and under `--cfg loom`.

pub(crate) mod claim;
pub(crate) mod fence;
pub(crate) mod frame;
pub(crate) mod layout;
pub(crate) mod memory;
pub(crate) mod read;
pub(crate) mod recovery;
pub(crate) mod sync;

#[cfg(all(test, loom))]
mod loom_models;

use crate::protocol::frame::FrameHeader;
use crate::protocol::memory::RingMemory;
use crate::protocol::sync::Ordering;

/// Writes words 1–3 of the frame header at absolute position `pos`. Relaxed: the stamp store
/// that follows releases them.
#[inline]
pub(crate) fn write_frame_header(mem: &RingMemory, pos: u64, header: &FrameHeader) {
    for (i, word) in header.encode().into_iter().enumerate() {
        mem.word(pos + 8 * (i as u64 + 1))
            .store(word, Ordering::Relaxed);
    }
}

/// Reads words 1–3 of the frame header at absolute position `pos`. Relaxed: callers load the
/// stamp with Acquire first (or validate with a fence afterwards, when reading by copy).
#[inline]
pub(crate) fn read_frame_header(mem: &RingMemory, pos: u64) -> FrameHeader {
    let w = |i: u64| mem.word(pos + 8 * i).load(Ordering::Relaxed);
    FrameHeader::decode([w(1), w(2), w(3)])
}
