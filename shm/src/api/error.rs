//! Errors, one small enum per operation.

use crate::os::segment::SegmentError;
use crate::protocol::frame::CorruptFrame;
use crate::protocol::layout::LayoutError;

/// Why a ring or doorbell table could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The requested sizes are impossible.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Creating or mapping the memfd failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// This CPU has no lock-free 128-bit compare-and-swap, which the rings need.
    #[error("this CPU lacks a lock-free 128-bit compare-and-swap (cmpxchg16b)")]
    Unsupported,
}

/// Why a ring or doorbell table received from another process could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A segment's header or geometry is wrong, foreign, truncated or from a newer version.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Mapping the descriptor failed, or it is not sealed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A segment that must be writable was received read-only.
    #[error("the {0} segment must be writable but the descriptor is read-only")]
    ReadOnly(&'static str),
    /// This CPU has no lock-free 128-bit compare-and-swap, which the rings need.
    #[error("this CPU lacks a lock-free 128-bit compare-and-swap (cmpxchg16b)")]
    Unsupported,
}

/// Why a writer, reader or doorbell slot could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotError {
    /// The ring's claim cursor holds a position no ring can have (a faulty writer wrote it): a
    /// reader cannot join it.
    #[error("the ring is corrupt: its claim cursor holds an impossible position")]
    CorruptRing,
    /// Every slot of that kind is taken.
    #[error("all {slots} {what} slots are in use")]
    NoFreeSlot {
        /// `"writer"`, `"reader"` or `"doorbell"`.
        what: &'static str,
        /// How many there are.
        slots: u32,
    },
    /// Publishing needs the ring's data mapped writable; this handle maps it read-only.
    #[error("cannot publish through a read-only mapping of the ring")]
    ReadOnly,
    /// The slot to adopt is not reserved for this owner (or not in the expected mode).
    #[error("reader slot {slot} is not reserved for this owner")]
    NotReserved {
        /// The slot.
        slot: u32,
    },
    /// The reader's doorbell belongs to another doorbell table than the ring's.
    #[error("the doorbell belongs to another doorbell table than the ring's")]
    ForeignDoorbell,
}

/// Why a non-blocking loan failed. Nothing was written to the ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum TryLoanError {
    /// The payload is larger than the ring's largest payload.
    #[error("payload of {len} bytes exceeds the ring's largest payload of {max} bytes")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's largest payload.
        max: usize,
    },
    /// A tethered reader has not released enough space (or a writer is mid-write a lap ago).
    #[error("ring is full: a tethered reader has not released enough space")]
    Full,
    /// The ring's claim cursor was corrupted (by a faulty writer): nothing can be written to it.
    #[error("the ring is corrupt: its claim cursor holds an impossible position")]
    Corrupt,
    /// The broker retired the ring (it found it corrupt): nothing can be written to it; attach
    /// to the topic's new ring.
    #[error("the ring was retired by the broker")]
    Retired,
    /// The frame was claimed but taken back before its commit (see [`CommitError::Revoked`]).
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// Why a commit failed. Nothing was published.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum CommitError {
    /// The claim was held longer than the broker's unblock timeout (the writing process was
    /// stopped or descheduled between loan and commit), so the broker took it back to let
    /// readers go on. The writer claims again as usual.
    #[error(
        "the claim was taken back by the broker after it was held longer than the unblock timeout"
    )]
    Revoked,
}

/// Why a blocking loan failed. Nothing was written to the ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum LoanError {
    /// The payload is larger than the ring's largest payload.
    #[error("payload of {len} bytes exceeds the ring's largest payload of {max} bytes")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// The ring's largest payload.
        max: usize,
    },
    /// The ring stayed full until the timeout passed.
    #[error("ring stayed full until the timeout passed")]
    Timeout,
    /// The ring's claim cursor was corrupted (by a faulty writer): nothing can be written to it.
    #[error("the ring is corrupt: its claim cursor holds an impossible position")]
    Corrupt,
    /// The broker retired the ring (it found it corrupt): nothing can be written to it; attach
    /// to the topic's new ring.
    #[error("the ring was retired by the broker")]
    Retired,
    /// The frame was claimed but taken back before its commit (see [`CommitError::Revoked`]).
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl From<TryLoanError> for LoanError {
    fn from(e: TryLoanError) -> Self {
        match e {
            TryLoanError::TooLarge { len, max } => LoanError::TooLarge { len, max },
            TryLoanError::Full => LoanError::Timeout,
            TryLoanError::Corrupt => LoanError::Corrupt,
            TryLoanError::Retired => LoanError::Retired,
            TryLoanError::Commit(e) => LoanError::Commit(e),
        }
    }
}

/// Why a read returned no frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum ReadError {
    /// Frames were overwritten before this reader got to them (a lossy reader overrun, or a
    /// tethered reader the broker untethered). Reading resumes at the oldest frame still held.
    #[error("reader lagged: {missed} frames were overwritten before it read them")]
    Lagged {
        /// How many claims (messages, and any aborted claims among them) were lost.
        missed: u64,
    },
    /// A frame in the ring breaks the layout rules (a faulty writer wrote it). Its size cannot
    /// be trusted, so the reader skipped to the newest frame: reading goes on from there.
    #[error(transparent)]
    Corrupt(#[from] CorruptFrame),
    /// The reader lends out as many owned frames as it may ([`ReaderOptions::max_held`]);
    /// drop some of them to read on. Nothing was consumed.
    ///
    /// [`ReaderOptions::max_held`]: crate::ReaderOptions::max_held
    #[error("{max} owned frames are held: drop some to read on")]
    HeldLimit {
        /// The reader's limit.
        max: u32,
    },
}

/// Why a blocking read returned no frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum ReadTimeoutError {
    /// Nothing was committed before the deadline.
    #[error("no frame before the deadline")]
    Timeout,
    /// The read failed.
    #[error(transparent)]
    Failed(#[from] ReadError),
}
