//! [`ReaderSet`]: many readers, on as many rings, that wait together on one doorbell.

use std::sync::Arc;
use std::time::Instant;

use crate::api::doorbell::Doorbell;
use crate::api::error::ReadError;
use crate::api::reader::{Frame, Reader, park};

/// A reader of the set failed: which one, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("reader {index}: {error}")]
pub struct MemberError {
    /// The reader's index in the set.
    pub index: usize,
    /// What went wrong.
    pub error: ReadError,
}

/// Readers of several rings, polled round robin and parked on one doorbell: a commit on any of
/// the rings wakes the thread, which sleeps on a single futex word however many rings it reads.
///
/// Every reader must park on the set's doorbell (create it with that doorbell).
#[derive(Debug)]
pub struct ReaderSet<L = ()> {
    doorbell: Arc<Doorbell>,
    readers: Vec<Reader<L>>,
    /// Where the next poll starts, so that no ring starves the others.
    next: usize,
}

impl<L> ReaderSet<L> {
    /// An empty set whose readers park on `doorbell`.
    pub fn new(doorbell: Arc<Doorbell>) -> ReaderSet<L> {
        ReaderSet {
            doorbell,
            readers: Vec::new(),
            next: 0,
        }
    }

    /// The doorbell its readers park on.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// Adds a reader. Panics if it parks on another doorbell than the set's (a reader attached
    /// with another doorbell would sleep through its commits).
    pub fn insert(&mut self, reader: Reader<L>) {
        assert_eq!(
            reader.doorbell().index(),
            self.doorbell.index(),
            "a reader of a set parks on the set's doorbell"
        );
        self.readers.push(reader);
    }

    /// Removes and returns reader `index` (the last reader takes its index).
    pub fn remove(&mut self, index: usize) -> Reader<L> {
        let reader = self.readers.swap_remove(index);
        if self.next > self.readers.len() {
            self.next = 0;
        }
        reader
    }

    /// The readers, by index.
    pub fn readers(&self) -> &[Reader<L>] {
        &self.readers
    }

    /// Whether any reader's owned frames are still held (see [`Reader::holds_lent`]).
    pub fn holds_lent(&mut self) -> bool {
        self.readers.iter_mut().any(Reader::holds_lent)
    }

    /// How many readers the set holds.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// Looks for a reader holding a message, round robin from where the last one was found, so
    /// that one busy ring cannot starve the others. `Ok(Some(i))` means [`ReaderSet::frame`]`(i)`
    /// returns it. After a lag, the same reader is polled first next time (its next frame is
    /// there).
    #[inline]
    pub fn poll(&mut self) -> Result<Option<usize>, MemberError> {
        let n = self.readers.len();
        let mut index = self.next;
        for _ in 0..n {
            if index >= n {
                index = 0;
            }
            match self.readers[index].poll_ready() {
                Ok(true) => {
                    self.next = index + 1;
                    return Ok(Some(index));
                }
                Ok(false) => index += 1,
                Err(error) => {
                    self.next = index;
                    return Err(MemberError { index, error });
                }
            }
        }
        Ok(None)
    }

    /// The message [`ReaderSet::poll`] found in reader `index`, if it holds one.
    #[inline]
    pub fn frame(&mut self, index: usize) -> Option<Frame<'_, L>> {
        self.readers.get_mut(index)?.take_ready()
    }

    /// Sleeps until one of the readers has something to read (a frame, a lag, an eviction to
    /// handle), `also_ready` returns true, or `until`. Whoever makes `also_ready` true must ring
    /// the set's doorbell afterwards. May return early; callers poll again.
    pub fn park(&self, until: Option<Instant>, also_ready: &dyn Fn() -> bool) {
        park(&self.doorbell, &self.readers, until, also_ready);
    }
}
