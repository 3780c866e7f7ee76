//! Reading: [`Reader`] and the [`Sample`]s it lends.

use std::sync::Arc;
use std::time::Duration;

use crate::doorbell::Doorbell;
use crate::error::ReadError;
use crate::layout::FRAME_HEADER_LEN;
use crate::memory::CopyBuf;
use crate::ring::read::{FrameView, Poll, ReaderCore};
use crate::shared_ring::RingShared;
use crate::wait::{Idle, WaitStrategy, Waiter, park};

/// Whether a reader holds publishers back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReaderMode {
    /// Publishers never overwrite what this reader has not read: nothing is lost, frames are
    /// read in place (zero copy), and a reader that stops reading eventually blocks publishers
    /// (until the broker evicts it).
    #[default]
    Tethered,
    /// Publishers never wait for this reader; when they lap it, it gets [`ReadError::Lagged`]
    /// and resumes at the oldest frame still held. Frames are copied out and checked, so a read
    /// that raced with an overwrite is never handed out.
    Lossy,
}

/// How to attach a reader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Tethered (default) or lossy.
    pub mode: ReaderMode,
    /// Deliver the last `history` messages published before attaching, as far as the ring still
    /// holds them (0: only what is published after attaching).
    pub history: u64,
}

/// Reads every frame of one ring, in order, from the moment it attached.
pub struct Reader {
    ring: Arc<RingShared>,
    core: ReaderCore,
    buf: CopyBuf,
    doorbell: Arc<Doorbell>,
    /// The frame in `view` was found by [`Reader::poll_ready`] and is not consumed yet: either
    /// waiting for [`Reader::take_ready`] or lent out as the live [`Sample`].
    ready: bool,
    /// The frame found last. It stays here while lent, so a [`Sample`] is one pointer wide and
    /// handing it out moves no bytes.
    view: FrameView,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("slot", &self.core.slot)
            .finish()
    }
}

impl Reader {
    pub(crate) fn new(ring: Arc<RingShared>, core: ReaderCore, doorbell: Arc<Doorbell>) -> Reader {
        Reader {
            ring,
            core,
            buf: CopyBuf::default(),
            doorbell,
            ready: false,
            view: FrameView::default(),
        }
    }

    /// The slot this reader occupies in the ring.
    pub fn slot(&self) -> u32 {
        self.core.slot
    }

    /// The sequence number of the next claim this reader expects.
    pub fn next_sequence(&self) -> u64 {
        self.core.next_seq()
    }

    pub(crate) fn doorbell_index(&self) -> u32 {
        self.doorbell.index()
    }

    /// Looks for the next message without handing it out: `Ok(true)` means
    /// [`Reader::take_ready`] will return it. For multiplexing many readers, where the sample to
    /// return is known only once one of them has a message.
    #[inline]
    pub fn poll_ready(&mut self) -> Result<bool, ReadError> {
        if self.ready {
            return Ok(true);
        }
        let mem = &self.ring.mem;
        if self.core.evicted(mem) {
            self.core.rejoin(mem);
        }
        match self.core.poll(mem, &mut self.buf)? {
            Poll::Empty => Ok(false),
            Poll::Frame(view) => {
                self.view = view;
                self.ready = true;
                Ok(true)
            }
            Poll::Lagged(missed) => Err(ReadError::Lagged { missed }),
        }
    }

    /// The message found by [`Reader::poll_ready`], if any.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Sample<'_>> {
        if self.ready {
            Some(Sample { reader: self })
        } else {
            None
        }
    }

    /// The next message, if one is committed; never waits.
    #[inline]
    pub fn try_read(&mut self) -> Result<Option<Sample<'_>>, ReadError> {
        if self.poll_ready()? {
            Ok(self.take_ready())
        } else {
            Ok(None)
        }
    }

    /// The next message, waiting with `wait` for up to `timeout` (forever if `None`). `Ok(None)`
    /// means the timeout passed.
    pub fn read(
        &mut self,
        wait: WaitStrategy,
        timeout: Option<Duration>,
    ) -> Result<Option<Sample<'_>>, ReadError> {
        let mut waiter = Waiter::new(wait, timeout);
        loop {
            if self.poll_ready()? {
                return Ok(self.take_ready());
            }
            match waiter.idle() {
                Idle::Retry => {}
                Idle::Park(until) => {
                    park(&self.doorbell, std::slice::from_ref(self), until, &|| false)
                }
                Idle::TimedOut => return Ok(None),
            }
        }
    }

    pub(crate) fn prepare_park(&self) {
        self.core.prepare_park(&self.ring.mem);
    }

    pub(crate) fn cancel_park(&self) {
        self.core.cancel_park(&self.ring.mem);
    }

    pub(crate) fn ready(&self) -> bool {
        self.ready || self.core.ready(&self.ring.mem)
    }
}

impl Drop for Reader {
    #[inline]
    fn drop(&mut self) {
        self.core.detach(&self.ring.mem);
    }
}

/// One message, lent by a [`Reader`] until dropped.
///
/// For a tethered reader the payload is read in place, in shared memory mapped read-only; no
/// publisher overwrites it while the sample lives — unless the broker evicts the reader because
/// it stalled for longer than the eviction timeout while holding the sample. Lossy readers (and
/// tethered ones catching up on history) get a validated private copy.
pub struct Sample<'a> {
    /// The reader whose `view` this sample is (with `ready` set).
    reader: &'a mut Reader,
}

impl std::fmt::Debug for Sample<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("sequence", &self.sequence())
            .field("publisher", &self.publisher())
            .field("len", &self.len())
            .finish()
    }
}

impl Sample<'_> {
    /// The payload bytes (16-byte aligned).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let view = &self.reader.view;
        let len = view.header.len as usize;
        if self.reader.core.reads_in_place() {
            let ptr = self.reader.ring.mem.data_ptr(view.pos + FRAME_HEADER_LEN);
            // SAFETY: the header was validated, so `len` bytes after it lie inside the frame
            // buffer; the frame is committed (its stamp was loaded with Acquire) and tethered
            // readers' frames are not overwritten until `consume` moves the tether past them;
            // the mapping lives as long as the reader this sample borrows.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        } else {
            self.reader.buf.as_slice()
        }
    }

    /// Payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.reader.view.header.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's ring-wide sequence number (one per claim, in ring order).
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.reader.view.header.seq
    }

    /// The bus-wide id of the publisher that wrote it.
    #[inline]
    pub fn publisher(&self) -> u32 {
        self.reader.view.header.publisher
    }

    /// Whether the payload is read in place in shared memory (rather than from a private copy).
    pub fn is_in_place(&self) -> bool {
        self.reader.core.reads_in_place()
    }
}

impl Drop for Sample<'_> {
    #[inline]
    fn drop(&mut self) {
        let reader = &mut *self.reader;
        reader.ready = false;
        if reader.core.consume(&reader.ring.mem, &reader.view) {
            reader.ring.signal_space();
        }
    }
}
