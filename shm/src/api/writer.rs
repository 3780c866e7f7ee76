//! Writing: [`Writer`] and its zero-copy [`FrameLoan`].

use std::sync::Arc;
use std::time::Duration;

use crate::api::error::{CommitError, LoanError, TryLoanError};
use crate::api::ring::RingShared;
use crate::api::wait::{Deadline, Idle, WaitStrategy, Waiter};
use crate::protocol::claim::{Claim, ClaimError, WriterCore};
use crate::protocol::frame::kind;
use crate::protocol::layout::FRAME_HEADER_LEN;
use crate::protocol::sync::Ordering;

/// Longest a blocked writer sleeps before looking at the ring again. Readers wake parked
/// writers when they release space, but without a fence (see the crate docs, "Waiting for
/// space"), so a wake-up can be missed; this bounds the cost of a miss.
const SPACE_RECHECK: Duration = Duration::from_millis(1);

/// Writes frames into one ring. Several writers, in any processes, may share a ring.
///
/// Frames are written in place: [`Writer::try_loan`] claims room in the ring, the caller fills
/// it, and [`FrameLoan::commit`] makes it visible. The writer's slot is freed on drop.
pub struct Writer {
    ring: Arc<RingShared>,
    core: WriterCore,
    wait: WaitStrategy,
    /// The outstanding [`FrameLoan`]'s claim, and whether one is outstanding. Kept here rather than
    /// in the loan so that a loan is one pointer wide: handing it out moves no bytes.
    claim: Claim,
    /// Payload bytes the outstanding loan lends.
    loan_len: usize,
    loan_open: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("id", &self.core.id)
            .field("slot", &self.core.slot)
            .finish()
    }
}

impl Writer {
    pub(crate) fn new(ring: Arc<RingShared>, core: WriterCore) -> Writer {
        Writer {
            ring,
            core,
            wait: WaitStrategy::default(),
            claim: Claim::default(),
            loan_len: 0,
            loan_open: false,
        }
    }

    /// The bus-wide id stamped on every frame.
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// The slot this writer occupies in the ring.
    pub fn slot(&self) -> u32 {
        self.core.slot
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
        self.ring.mem.geometry().max_payload as usize
    }

    /// Sets how blocking calls wait for space (default: spin 50 µs, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    #[inline]
    fn try_claim(&mut self, len: usize) -> Result<Claim, TryLoanError> {
        let too_large = TryLoanError::TooLarge {
            len,
            max: self.max_payload(),
        };
        let payload = u32::try_from(len).map_err(|_| too_large)?;
        self.core
            .try_claim(&self.ring.mem, payload)
            .map_err(|e| match e {
                ClaimError::TooLarge => too_large,
                ClaimError::Full => TryLoanError::Full,
                ClaimError::Corrupt => TryLoanError::Corrupt,
                ClaimError::Retired => TryLoanError::Retired,
            })
    }

    /// Claims room for a `len`-byte payload without waiting.
    #[inline]
    pub fn try_loan(&mut self, len: usize) -> Result<FrameLoan<'_>, TryLoanError> {
        let claim = self.try_claim(len)?;
        Ok(self.lend(claim, len))
    }

    /// Claims room for a `len`-byte payload, waiting until `deadline` for tethered readers to
    /// release space.
    #[inline]
    pub fn loan(&mut self, len: usize, deadline: Deadline) -> Result<FrameLoan<'_>, LoanError> {
        let mut waiter = Waiter::new(self.wait, deadline);
        let mut starvation = Starvation::default();
        // Larger lengths fail in `claim` before any wait.
        let payload_len = u32::try_from(len).unwrap_or(u32::MAX);
        let claimed = loop {
            match self.try_claim(len) {
                Ok(claim) => break Ok(claim),
                Err(TryLoanError::Full) => {}
                Err(e) => break Err(e.into()),
            }
            starvation.note_full(&self.ring);
            match waiter.idle() {
                Idle::Retry => {}
                Idle::Park(until) => self.park_for_space(payload_len, until),
                Idle::TimedOut => break Err(LoanError::Timeout),
            }
        };
        starvation.end(&self.ring);
        Ok(self.lend(claimed?, len))
    }

    #[inline]
    fn lend(&mut self, claim: Claim, len: usize) -> FrameLoan<'_> {
        self.claim = claim;
        self.loan_len = len;
        self.loan_open = true;
        FrameLoan { writer: self }
    }

    /// Sleeps until a reader releases space, `until` passes, or [`SPACE_RECHECK`] elapses.
    fn park_for_space(&mut self, len: u32, until: Option<std::time::Instant>) {
        let mem = &self.ring.mem;
        let sw = mem.space_wait();
        // SYNC(space): Acquire pairs with the Release swap in `RingShared::signal_space` (see
        // there), and keeps the word load and room check below after the increment.
        sw.waiters.fetch_add(1, Ordering::Acquire);
        // Acquire pairs with the Release bump in `RingShared::signal_space`.
        let armed = sw.word.load(Ordering::Acquire);
        // A reader that released space before it could see us waiting did not wake us.
        if !self.core.would_fit(mem, len) {
            let recheck = until.map_or(SPACE_RECHECK, |u| {
                u.saturating_duration_since(std::time::Instant::now())
                    .min(SPACE_RECHECK)
            });
            crate::os::futex::wait(&sw.word, armed, Some(recheck));
        }
        // A reader that woke us took our count already (see `signal_space`).
        let _ = sw
            .waiters
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_sub(1));
    }

    /// Copies `payload` into the ring without waiting. Returns the frame's sequence number.
    #[inline]
    pub fn try_publish(&mut self, payload: &[u8]) -> Result<u64, TryLoanError> {
        let mut loan = self.try_loan(payload.len())?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit()?)
    }

    /// Copies `payload` into the ring, waiting until `deadline` for space. Returns the frame's
    /// sequence number.
    #[inline]
    pub fn publish(&mut self, payload: &[u8], deadline: Deadline) -> Result<u64, LoanError> {
        let mut loan = self.loan(payload.len(), deadline)?;
        loan.as_mut_slice().copy_from_slice(payload);
        Ok(loan.commit()?)
    }

    /// Ends the outstanding loan: commits its frame as `kind` with `len` payload bytes.
    #[inline]
    fn finish_loan(&mut self, kind: u32, len: u32) -> Result<(), CommitError> {
        self.loan_open = false;
        let ring = &self.ring;
        self.core
            .commit(&ring.mem, &self.claim, kind, len, &|i| {
                ring.ring_doorbell(i)
            })
            .map_err(|_| CommitError::Revoked)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.core.detach(&self.ring.mem);
    }
}

/// Room for one frame, claimed in the ring. Fill it through [`FrameLoan::as_mut_slice`], then
/// [`commit`](FrameLoan::commit). Dropped without committing, the claim becomes a skipped frame that
/// no reader ever sees as a message.
pub struct FrameLoan<'a> {
    /// The writer whose `claim` this loan is (with `loan_open` set).
    writer: &'a mut Writer,
}

impl std::fmt::Debug for FrameLoan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameLoan")
            .field("len", &self.len())
            .field("sequence", &self.sequence())
            .finish()
    }
}

impl FrameLoan<'_> {
    /// The payload buffer, in the ring. Its bytes are whatever the ring held before.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let writer = &*self.writer;
        let ptr = writer
            .ring
            .mem
            .data_ptr(writer.claim.frame + FRAME_HEADER_LEN);
        // SAFETY: the claim gives this loan exclusive write access to `len` bytes after the
        // frame header, inside the frame buffer (frames never wrap); the mapping is writable (a
        // writer exists only on writable handles) and outlives `self`. Readers only read it
        // after the commit; a lossy reader racing with us copies and discards (see `copy_out`).
        unsafe { std::slice::from_raw_parts_mut(ptr, writer.loan_len) }
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.writer.loan_len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence number the frame will carry.
    pub fn sequence(&self) -> u64 {
        self.writer.claim.seq
    }

    /// Publishes the whole payload. Returns the frame's sequence number.
    #[inline]
    pub fn commit(self) -> Result<u64, CommitError> {
        let len = self.len();
        self.commit_prefix(len)
    }

    /// Publishes the first `len` bytes of the payload (for writers that learn the size as they
    /// go, such as serializers). The frame keeps the room it claimed. Panics if `len` exceeds
    /// the loan.
    #[inline]
    pub fn commit_prefix(self, len: usize) -> Result<u64, CommitError> {
        assert!(
            len <= self.len(),
            "commit of {len} bytes exceeds the loan of {}",
            self.len()
        );
        // The loan's `Drop` then finds nothing outstanding.
        self.writer.finish_loan(kind::DATA, len as u32)?;
        Ok(self.writer.claim.seq)
    }
}

impl Drop for FrameLoan<'_> {
    fn drop(&mut self) {
        if self.writer.loan_open {
            // A claim taken back is padded by the broker: nothing more to do either way.
            let _ = self.writer.finish_loan(kind::SKIP, 0);
        }
    }
}

/// A writer waiting for room this long tells readers so (see [`Starvation`]).
const STARVING_AFTER: Duration = Duration::from_millis(1);

/// Failed claims between two looks at the clock while waiting for room.
const CLAIMS_PER_CLOCK_CHECK: u32 = 256;

/// One wait for room, as readers should know of it: once it has lasted [`STARVING_AFTER`], the
/// ring's starving count includes this writer until the wait ends, and readers publish their
/// position with every frame. Readers that keep up publish only once per sixteenth of the ring,
/// so a writer short of room for that long waits on a slow reader, whose progress must show at
/// once — to this writer, and to the broker, which evicts tethered readers that show none.
#[derive(Default)]
struct Starvation {
    failed: u32,
    since: Option<std::time::Instant>,
    announced: bool,
}

impl Starvation {
    /// A claim found no room.
    fn note_full(&mut self, ring: &RingShared) {
        self.failed = self.failed.wrapping_add(1);
        if self.announced || self.failed % CLAIMS_PER_CLOCK_CHECK != 1 {
            return;
        }
        let now = std::time::Instant::now();
        if now.saturating_duration_since(*self.since.get_or_insert(now)) >= STARVING_AFTER {
            // Relaxed: a hint (see `SpaceWait::starving`); positions carry their own ordering.
            ring.mem
                .space_wait()
                .starving
                .fetch_add(1, Ordering::Relaxed);
            self.announced = true;
        }
    }

    /// The wait is over.
    fn end(&mut self, ring: &RingShared) {
        if self.announced {
            // Saturating: every process that can write the readers segment can write this word.
            let _ = ring.mem.space_wait().starving.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |n| n.checked_sub(1),
            );
            self.announced = false;
        }
    }
}
