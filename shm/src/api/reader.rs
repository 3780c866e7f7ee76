//! Reading: [`Reader`], the [`Frame`]s it lends, and the [`OwnedFrame`]s they become.
//!
//! # Owned frames
//!
//! A [`Frame`] borrows its reader: the fastest path, and the frame is given back when it drops.
//! [`Frame::detach`] turns it into an [`OwnedFrame`] that borrows nothing, can move to another
//! thread, and gives the frame back when it drops, in any order. The reader keeps a queue of the
//! frames it lent out in place: its tether (what it tells writers they may overwrite) never passes
//! the oldest one not given back, so an owned frame's bytes stay put while it lives. Dropping one
//! sets its flag in the queue (`SYNC(give-back)`: a Release store); the reader collects flags from
//! the front of the queue at its next poll and moves the tether up. A reader lends at most
//! [`ReaderOptions::max_held`] frames this way; at the limit a read fails with
//! [`ReadError::HeldLimit`] until some are dropped.
//!
//! The queue and the reader slot live in a lease that the reader and its owned frames share: the
//! slot is freed when the last of them drops, so a frame outlives its reader safely.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::api::doorbell::Doorbell;
use crate::api::error::{ReadError, ReadTimeoutError};
use crate::api::ring::RingShared;
use crate::api::wait::{Deadline, Idle, WaitStrategy, Waiter};
use crate::protocol::frame::FrameHeader;
use crate::protocol::layout::FRAME_HEADER_LEN;
use crate::protocol::memory::CopyBuf;
use crate::protocol::read::{self, FrameView, Poll, ReaderCore};

/// Longest sleep of a reader whose park could not be ordered against writers, or that waits for
/// owned frames to come back from other threads.
const RECHECK: Duration = Duration::from_millis(1);

/// Longest sleep of any parked reader. Writers ring a reader's doorbell only when the ring's
/// parked count says someone sleeps, and that count lives where every subscriber can write: one
/// that zeroes it (by bug or malice) delays the others' wake-ups by at most this long.
const PARK_MAX: Duration = Duration::from_millis(100);

/// Owned frames a reader lends at most, by default.
pub const DEFAULT_MAX_HELD: u32 = 16;

/// Whether a reader holds writers back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReaderMode {
    /// Writers never overwrite what this reader has not read: nothing is lost, frames are read in
    /// place (zero copy), and a reader that stops reading eventually blocks writers (until the
    /// broker evicts it).
    #[default]
    Tethered,
    /// Writers never wait for this reader; when they lap it, it gets [`ReadError::Lagged`] and
    /// resumes at the oldest frame still held. Frames are copied out and checked, so a read that
    /// raced with an overwrite is never handed out.
    Lossy,
}

/// How to attach a reader: tethered, no history, [`DEFAULT_MAX_HELD`] owned frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderOptions {
    mode: ReaderMode,
    history: u64,
    max_held: u32,
    resume: Option<(u64, u64)>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            mode: ReaderMode::Tethered,
            history: 0,
            max_held: DEFAULT_MAX_HELD,
            resume: None,
        }
    }
}

impl ReaderOptions {
    /// Tethered (default) or lossy.
    pub fn mode(self, mode: ReaderMode) -> Self {
        ReaderOptions { mode, ..self }
    }

    /// Also deliver the last `n` frames committed before attaching, as far as the ring still
    /// holds them (default 0: only what is committed after attaching).
    pub fn history(self, n: u64) -> Self {
        ReaderOptions { history: n, ..self }
    }

    /// Deliver from ring position `position`, where the next frame carries `sequence` — where
    /// a reader this one takes over from stood, as [`Ring::sequence_at`](crate::Ring::sequence_at)
    /// checked it — rather than from the join: what is still there is read by copy, what writers
    /// overwrote is reported as lagged. Only applies to [`Ring::adopt_reader`](
    /// crate::Ring::adopt_reader), and to a position before the join.
    pub fn resume_at(self, position: u64, sequence: u64) -> Self {
        ReaderOptions {
            resume: Some((position, sequence)),
            ..self
        }
    }

    /// Lend at most `n` (at least 1) owned frames at once (see [`Frame::detach`]).
    pub fn max_held(self, n: u32) -> Self {
        ReaderOptions {
            max_held: n.max(1),
            ..self
        }
    }

    /// The mode.
    pub fn reader_mode(&self) -> ReaderMode {
        self.mode
    }

    pub(crate) fn history_len(&self) -> u64 {
        self.history
    }

    pub(crate) fn resume_point(&self) -> Option<(u64, u64)> {
        self.resume
    }
}

/// What a reader and the frames it lent out share: the reader slot (freed when the last of them
/// drops), the flags of the frames given back, and the reader's label.
pub(crate) struct ReaderLease<L> {
    ring: Arc<RingShared>,
    slot: u32,
    /// `given_back[k % len]` is set when owned frame `k` drops. Only the reader clears a flag,
    /// when it lends the entry out again.
    given_back: Box<[AtomicBool]>,
    label: L,
}

impl<L> Drop for ReaderLease<L> {
    fn drop(&mut self) {
        read::detach(&self.ring.mem, self.slot);
    }
}

/// The reader's side of the lent-out queue: start positions of frames lent out in place, oldest
/// first, as a ring of absolute indices `head..tail` (entries `k & mask`, the ring's length a
/// power of two at least `max`).
#[derive(Debug)]
struct Lent {
    starts: Box<[u64]>,
    mask: u64,
    max: u32,
    head: u64,
    tail: u64,
}

impl Lent {
    fn new(max: u32) -> Lent {
        let len = max.next_power_of_two();
        Lent {
            starts: vec![0; len as usize].into_boxed_slice(),
            mask: u64::from(len) - 1,
            max,
            head: 0,
            tail: 0,
        }
    }

    /// Entries of the shared flag array (one per entry of `starts`).
    fn capacity(max: u32) -> usize {
        max.next_power_of_two() as usize
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    #[inline]
    fn is_full(&self) -> bool {
        self.tail - self.head >= u64::from(self.max)
    }

    #[inline]
    fn entry(&self, k: u64) -> usize {
        (k & self.mask) as usize
    }

    /// Where the tether must stay: the start of the oldest frame out, or `u64::MAX`.
    fn oldest(&self) -> u64 {
        if self.is_empty() {
            u64::MAX
        } else {
            self.starts[self.entry(self.head)]
        }
    }
}

/// Reads every frame of one ring, in order, from the moment it attached. `L` is a label the
/// reader carries for its user (the subscriber's topic, say), which its frames show too.
pub struct Reader<L = ()> {
    /// The ring, as the lease holds it too: kept here as well so that every poll reaches the
    /// ring's memory in one step.
    ring: Arc<RingShared>,
    lease: Arc<ReaderLease<L>>,
    core: ReaderCore,
    buf: CopyBuf,
    doorbell: Arc<Doorbell>,
    lent: Lent,
    /// The frame in `view` was found by [`Reader::poll_ready`] and is not consumed yet: either
    /// waiting for [`Reader::take_ready`] or lent out as the live [`Frame`].
    ready: bool,
    /// The frame found last. It stays here while lent, so a [`Frame`] is one pointer wide and
    /// handing it out moves no bytes.
    view: FrameView,
}

impl<L> Drop for Reader<L> {
    fn drop(&mut self) {
        // Where it stopped, for a session that resumes from there (see `ReaderOptions::resume_at`);
        // the slot itself is freed when the lease drops.
        self.core.flush_position(&self.ring.mem);
    }
}

impl<L> std::fmt::Debug for Reader<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("slot", &self.core.slot)
            .field("lent", &(self.lent.tail - self.lent.head))
            .finish()
    }
}

impl<L> Reader<L> {
    pub(crate) fn new(
        ring: Arc<RingShared>,
        core: ReaderCore,
        doorbell: Arc<Doorbell>,
        options: &ReaderOptions,
        label: L,
    ) -> Reader<L> {
        let given_back = (0..Lent::capacity(options.max_held))
            .map(|_| AtomicBool::new(false))
            .collect();
        Reader {
            ring: Arc::clone(&ring),
            lease: Arc::new(ReaderLease {
                ring,
                slot: core.slot,
                given_back,
                label,
            }),
            core,
            buf: CopyBuf::default(),
            doorbell,
            lent: Lent::new(options.max_held),
            ready: false,
            view: FrameView::default(),
        }
    }

    fn shared(&self) -> &RingShared {
        &self.ring
    }

    /// The slot this reader occupies in the ring.
    pub fn slot(&self) -> u32 {
        self.core.slot
    }

    /// The sequence number of the next claim this reader expects.
    pub fn next_sequence(&self) -> u64 {
        self.core.next_seq()
    }

    /// A handle to the ring this reader reads.
    pub fn ring(&self) -> crate::Ring {
        crate::Ring {
            shared: Arc::clone(&self.ring),
        }
    }

    /// The label given when the reader was attached.
    pub fn label(&self) -> &L {
        &self.lease.label
    }

    /// Owned frames lent out and not known to be given back yet.
    pub fn lent(&self) -> u32 {
        (self.lent.tail - self.lent.head) as u32
    }

    /// Whether owned frames lent out are still held, once those given back at the front of
    /// the queue are collected (which moves the tether past them, as a read would).
    pub fn holds_lent(&mut self) -> bool {
        if !self.lent.is_empty() && self.oldest_given_back() {
            self.collect_given_back();
        }
        !self.lent.is_empty()
    }

    pub(crate) fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// Looks for the next message without handing it out: `Ok(true)` means
    /// [`Reader::take_ready`] will return it. For multiplexing many readers, where the frame to
    /// return is known only once one of them has a message.
    #[inline]
    pub fn poll_ready(&mut self) -> Result<bool, ReadError> {
        if self.ready {
            return Ok(true);
        }
        if !self.lent.is_empty() {
            if self.oldest_given_back() {
                self.collect_given_back();
            }
            if self.lent.is_full() {
                return Err(ReadError::HeldLimit { max: self.lent.max });
            }
        }
        let mem = &self.ring.mem;
        if self.core.evicted(mem) {
            self.core.become_lossy(mem);
        }
        let poll = self.core.poll(mem, &mut self.buf).map_err(|corrupt| {
            self.core.skip_to_head(mem);
            ReadError::Corrupt(corrupt)
        })?;
        match poll {
            Poll::Empty => Ok(false),
            Poll::Frame(view) => {
                self.view = view;
                self.ready = true;
                Ok(true)
            }
            Poll::Lagged(missed) => Err(ReadError::Lagged { missed }),
        }
    }

    /// Whether the oldest frame lent out was given back (the queue is not empty).
    #[inline]
    fn oldest_given_back(&self) -> bool {
        // SYNC(give-back): Acquire pairs with the Release store in `OwnedFrame::drop` (see
        // `skip_given_back`, which loads it again).
        self.lease.given_back[self.lent.entry(self.lent.head)].load(Ordering::Acquire)
    }

    /// Moves the tether past the owned frames given back at the front of the queue.
    #[cold]
    #[inline(never)]
    fn collect_given_back(&mut self) {
        if self.skip_given_back() {
            let oldest = self.lent.oldest();
            let shared = &self.ring;
            if self.core.hold_from(&shared.mem, oldest) {
                shared.signal_space();
            }
        }
    }

    /// Steps the queue's head past the frames given back; returns whether it moved. The caller
    /// moves the tether.
    fn skip_given_back(&mut self) -> bool {
        let before = self.lent.head;
        while !self.lent.is_empty() {
            let entry = self.lent.entry(self.lent.head);
            // SYNC(give-back): Acquire pairs with the Release store in `OwnedFrame::drop`: the
            // owner's reads of the frame happen-before the tether store that lets writers
            // overwrite it (in our caller, or in the next consume).
            if !self.lease.given_back[entry].load(Ordering::Acquire) {
                break;
            }
            self.lent.head += 1;
        }
        self.lent.head != before
    }

    /// The message found by [`Reader::poll_ready`], if any.
    #[inline]
    pub fn take_ready(&mut self) -> Option<Frame<'_, L>> {
        if self.ready {
            Some(Frame { reader: self })
        } else {
            None
        }
    }

    /// The next message, if one is committed; never waits.
    #[inline]
    pub fn try_read(&mut self) -> Result<Option<Frame<'_, L>>, ReadError> {
        if self.poll_ready()? {
            Ok(self.take_ready())
        } else {
            Ok(None)
        }
    }

    /// The next message, waiting with `wait` until `deadline`.
    pub fn read(
        &mut self,
        wait: WaitStrategy,
        deadline: Deadline,
    ) -> Result<Frame<'_, L>, ReadTimeoutError> {
        let mut waiter = Waiter::new(wait, deadline);
        loop {
            if self.poll_ready()? {
                return Ok(Frame { reader: self });
            }
            match waiter.idle() {
                Idle::Retry => {}
                Idle::Park(until) => {
                    park(&self.doorbell, std::slice::from_ref(self), until, &|| false)
                }
                Idle::TimedOut => return Err(ReadTimeoutError::Timeout),
            }
        }
    }

    fn prepare_park(&self) {
        self.core.prepare_park(&self.shared().mem);
    }

    fn cancel_park(&self) {
        self.core.cancel_park(&self.shared().mem);
    }

    /// Whether a poll would find something (a frame, a lag, an eviction to handle).
    fn ready(&self) -> bool {
        self.ready || self.core.ready(&self.shared().mem)
    }
}

/// Parks the calling thread on `doorbell` until one of `readers` has something to read (a frame,
/// a lag to report, an eviction to handle), `also_ready` returns true, or `until`.
///
/// The readers must park on `doorbell`; parking announces itself on every reader's ring, so a
/// commit on any of them wakes the thread, with a system call only because someone is actually
/// parked. Whoever makes `also_ready` true must ring the doorbell afterwards. Readers sleep at most
/// [`PARK_MAX`] at a time, and those with owned frames out at most [`RECHECK`], since a frame
/// given back on another thread rings nothing. May return early (spuriously); callers poll again.
pub(crate) fn park<L>(
    doorbell: &Doorbell,
    readers: &[Reader<L>],
    until: Option<Instant>,
    also_ready: &dyn Fn() -> bool,
) {
    debug_assert!(
        readers
            .iter()
            .all(|r| r.doorbell.index() == doorbell.index())
    );
    for r in readers {
        r.prepare_park();
    }
    let ordered = read::park_fence();
    let armed = doorbell.arm();
    if !also_ready() && !readers.iter().any(Reader::ready) {
        let left = until.map_or(PARK_MAX, |u| {
            u.saturating_duration_since(Instant::now()).min(PARK_MAX)
        });
        // Writers may not see us parked (see `crate::protocol::fence`), or owned frames may come
        // back without a wake-up: then sleep briefly, and look again.
        let timeout = if !ordered || readers.iter().any(|r| !r.lent.is_empty()) {
            left.min(RECHECK)
        } else {
            left
        };
        if !timeout.is_zero() {
            doorbell.sleep(armed, Some(timeout));
        }
    }
    for r in readers {
        r.cancel_park();
    }
}

/// One message, lent by a [`Reader`] until dropped (or [detached](Frame::detach)).
///
/// For a tethered reader the payload is read in place, in shared memory mapped read-only; no
/// writer overwrites it while the frame lives — unless the broker evicts the reader because it
/// stalled for longer than the eviction timeout while holding the frame. Lossy readers (and
/// tethered ones catching up on history) get a validated private copy.
pub struct Frame<'a, L = ()> {
    /// The reader whose `view` this frame is (with `ready` set).
    reader: &'a mut Reader<L>,
}

impl<L> std::fmt::Debug for Frame<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("sequence", &self.sequence())
            .field("writer", &self.writer())
            .field("len", &self.len())
            .finish()
    }
}

impl<L> Frame<'_, L> {
    /// The payload bytes (16-byte aligned).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let reader = &*self.reader;
        let view = &reader.view;
        if reader.core.reads_in_place() {
            // SAFETY: the header was validated, so `len` bytes after it lie inside the frame
            // buffer; the frame is committed (its stamp was loaded with Acquire) and tethered
            // readers' frames are not overwritten until `consume` moves the tether past them;
            // the mapping lives as long as the reader this frame borrows.
            unsafe { in_place(&reader.ring, view.pos, view.header.len) }
        } else {
            reader.buf.as_slice()
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

    /// The bus-wide id of the writer that wrote it.
    #[inline]
    pub fn writer(&self) -> u32 {
        self.reader.view.header.writer
    }

    /// Whether the payload is read in place in shared memory (rather than from a private copy).
    pub fn is_in_place(&self) -> bool {
        self.reader.core.reads_in_place()
    }

    /// The reader's label.
    #[inline]
    pub fn label(&self) -> &L {
        &self.reader.lease.label
    }

    /// Turns the frame into an [`OwnedFrame`], which borrows nothing and gives the frame back
    /// when it drops — on any thread, in any order. The reader reads on meanwhile.
    pub fn detach(self) -> OwnedFrame<L> {
        let mut slot = None;
        self.detach_into(&mut slot);
        slot.expect("detach_into fills the slot")
    }

    /// [`Frame::detach`] into `slot`, giving back the frame the slot holds first: for loops that
    /// keep one owned frame at a time. A frame of this reader is given back on the spot (no flag
    /// for a later poll to collect) and its lease handle is reused, so the loop costs no more
    /// than reading borrowed frames.
    pub fn detach_into(self, slot: &mut Option<OwnedFrame<L>>) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again; the reference is moved out of it, so
        // the frame's `Drop` (which would consume the frame a second time) does not run.
        let reader: &mut Reader<L> = unsafe { std::ptr::read(&this.reader) };
        let lease = match slot.take() {
            Some(old) if Arc::ptr_eq(&old.lease, &reader.lease) => reader.take_back(old),
            other => {
                drop(other);
                Arc::clone(&reader.lease)
            }
        };
        *slot = Some(reader.lend(lease));
    }
}

impl<L> Reader<L> {
    /// Gives back an owned frame of this reader directly, and returns its lease handle for reuse.
    fn take_back(&mut self, frame: OwnedFrame<L>) -> Arc<ReaderLease<L>> {
        let (lease, body) = frame.into_parts();
        match body {
            Body::InPlace { entry, .. } if entry == self.lent.entry(self.lent.head) => {
                // The oldest frame out: the queue moves on at once (and past any given back
                // behind it); the next consume moves the tether.
                self.lent.head += 1;
                self.skip_given_back();
                self.core.set_held_from(self.lent.oldest());
            }
            Body::InPlace { entry, .. } => {
                // Out of order: flagged like any frame given back, collected when it is the oldest.
                // SYNC(give-back): Release, as in `OwnedFrame::drop`.
                lease.given_back[entry].store(true, Ordering::Release);
            }
            // A copy's buffer goes back to the reader, which copies the next frame into it.
            Body::Copied(buf) => self.buf = buf,
        }
        lease
    }

    /// Lends the ready frame out as an owned frame holding `lease`, and consumes it.
    fn lend(&mut self, lease: Arc<ReaderLease<L>>) -> OwnedFrame<L> {
        self.ready = false;
        let view = self.view;
        let body = if self.core.reads_in_place() {
            // `poll_ready` delivers nothing while the queue is full, so there is room.
            debug_assert!(!self.lent.is_full());
            let k = self.lent.tail;
            let entry = self.lent.entry(k);
            self.lent.starts[entry] = view.pos;
            // Relaxed: the entry's last owned frame was given back (we saw its flag with Acquire
            // before collecting it, or took it back ourselves), and the new owner's Release store
            // comes after this one.
            lease.given_back[entry].store(false, Ordering::Relaxed);
            self.lent.tail = k + 1;
            self.core.set_held_from(self.lent.oldest());
            Body::InPlace {
                pos: view.pos,
                entry,
            }
        } else {
            Body::Copied(std::mem::take(&mut self.buf))
        };
        if self.core.consume(&self.ring.mem, &view) {
            self.ring.signal_space();
        }
        OwnedFrame {
            lease,
            header: view.header,
            body,
        }
    }
}

impl<L> Drop for Frame<'_, L> {
    #[inline]
    fn drop(&mut self) {
        let reader = &mut *self.reader;
        reader.ready = false;
        if reader.core.consume(&reader.ring.mem, &reader.view) {
            reader.ring.signal_space();
        }
    }
}

/// The payload of the frame at `pos` with `len` payload bytes, in the ring's buffer.
///
/// # Safety
///
/// The frame's header was validated (so the bytes lie inside the buffer), the frame is committed,
/// and the reader's tether stays at or below `pos` for as long as the returned slice is used.
#[inline]
unsafe fn in_place(ring: &RingShared, pos: u64, len: u32) -> &[u8] {
    let ptr = ring.mem.data_ptr(pos + FRAME_HEADER_LEN);
    // SAFETY: guaranteed by the caller; the mapping lives as long as `ring`.
    unsafe { std::slice::from_raw_parts(ptr, len as usize) }
}

enum Body {
    /// Read in place at `pos`; entry `entry` of the lease's queue keeps the tether below it.
    InPlace { pos: u64, entry: usize },
    /// Read by copy: the reader's copy, taken over.
    Copied(CopyBuf),
}

/// A frame that borrows nothing (see [`Frame::detach`]): it keeps its reader's slot, and the
/// tether below the frame, until it drops. `Send` and `Sync` when the label is.
pub struct OwnedFrame<L = ()> {
    lease: Arc<ReaderLease<L>>,
    header: FrameHeader,
    body: Body,
}

impl<L> std::fmt::Debug for OwnedFrame<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedFrame")
            .field("sequence", &self.sequence())
            .field("writer", &self.writer())
            .field("len", &self.len())
            .finish()
    }
}

impl<L> OwnedFrame<L> {
    /// Takes the frame apart without giving it back (its `Drop` does not run).
    fn into_parts(self) -> (Arc<ReaderLease<L>>, Body) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so each field is moved out exactly once
        // and nothing is dropped twice.
        unsafe { (std::ptr::read(&this.lease), std::ptr::read(&this.body)) }
    }

    /// The payload bytes (16-byte aligned).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.body {
            // SAFETY: the frame was validated and committed when it was read, and its queue
            // entry keeps the reader's tether at or below `pos` until this value drops; the lease
            // keeps the mapping alive.
            Body::InPlace { pos, .. } => unsafe {
                in_place(&self.lease.ring, *pos, self.header.len)
            },
            Body::Copied(buf) => buf.as_slice(),
        }
    }

    /// Payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.header.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's ring-wide sequence number.
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.header.seq
    }

    /// The bus-wide id of the writer that wrote it.
    #[inline]
    pub fn writer(&self) -> u32 {
        self.header.writer
    }

    /// Whether the payload is read in place in shared memory.
    pub fn is_in_place(&self) -> bool {
        matches!(self.body, Body::InPlace { .. })
    }

    /// The label of the reader that read it.
    #[inline]
    pub fn label(&self) -> &L {
        &self.lease.label
    }
}

impl<L> Drop for OwnedFrame<L> {
    #[inline]
    fn drop(&mut self) {
        if let Body::InPlace { entry, .. } = self.body {
            // SYNC(give-back): Release pairs with the reader's Acquire load in
            // `collect_given_back`.
            self.lease.given_back[entry].store(true, Ordering::Release);
        }
    }
}
