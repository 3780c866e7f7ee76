//! The handles, by role: a [`Ring`] hands out [`Writer`]s, which lend [`FrameLoan`]s, and
//! [`Reader`]s, which lend [`Frame`]s (or give up [`OwnedFrame`]s); a [`ReaderSet`] waits on many
//! readers with one [`Doorbell`] of the bus's [`DoorbellTable`]; [`Owner`] tokens say who holds
//! which slot; [`WaitStrategy`] says how blocking calls wait.

mod doorbell;
mod error;
mod owner;
mod reader;
mod reader_set;
mod ring;
pub mod wait;
mod writer;

pub use crate::os::segment::{Access, SegmentError};
pub use doorbell::{Doorbell, DoorbellTable};
pub use error::{
    CommitError, CreateError, LoanError, OpenError, ReadError, ReadTimeoutError, SlotError,
    TryLoanError,
};
pub use owner::Owner;
pub use reader::{DEFAULT_MAX_HELD, Frame, OwnedFrame, Reader, ReaderMode, ReaderOptions};
pub use reader_set::{MemberError, ReaderSet};
pub use ring::{ReaderInfo, ReaderState, ReservedReader, Ring, RingHead, RingSpec, WriterInfo};
pub use wait::{Deadline, WaitStrategy};
pub use writer::{FrameLoan, Writer};
