//! The descriptors a message carries, made when it is sent rather than when it is queued: a
//! subscriber attached to thousands of rings gets thousands of messages with two descriptors
//! each, and holding them all open while they wait in its outbox would exhaust the broker's
//! descriptor limit. A queued message holds the ring instead (which keeps its segments alive),
//! and its descriptors exist only for the send.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use shmbus_shm::Ring;

/// What descriptors go with a message.
#[derive(Debug, Default)]
pub(crate) enum Descriptors {
    /// None.
    #[default]
    None,
    /// These (the doorbell table's, with the Welcome).
    Owned(Vec<OwnedFd>),
    /// A ring's data segment read-write and its readers segment, for a publisher.
    Publisher(Ring),
    /// A ring's data segment read-only and its readers segment, for a subscriber.
    Subscriber(Ring),
}

impl Descriptors {
    /// How many descriptors the message carries.
    pub(crate) fn count(&self) -> usize {
        match self {
            Descriptors::None => 0,
            Descriptors::Owned(fds) => fds.len(),
            Descriptors::Publisher(_) | Descriptors::Subscriber(_) => 2,
        }
    }

    /// Calls `send` with the descriptors, made for the occasion and closed after.
    pub(crate) fn with<R>(&self, send: impl FnOnce(&[BorrowedFd<'_>]) -> R) -> io::Result<R> {
        let made: Vec<OwnedFd> = match self {
            Descriptors::None => Vec::new(),
            Descriptors::Owned(fds) => {
                let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
                return Ok(send(&borrowed));
            }
            Descriptors::Publisher(ring) => {
                vec![duplicate(ring.data_fd())?, duplicate(ring.readers_fd())?]
            }
            Descriptors::Subscriber(ring) => vec![
                ring.data_fd_read_only().ok_or_else(no_descriptor)??,
                duplicate(ring.readers_fd())?,
            ],
        };
        let borrowed: Vec<_> = made.iter().map(AsFd::as_fd).collect();
        Ok(send(&borrowed))
    }
}

fn no_descriptor() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the ring has no descriptor")
}

fn duplicate(fd: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    fd.ok_or_else(no_descriptor)?.try_clone_to_owned()
}
