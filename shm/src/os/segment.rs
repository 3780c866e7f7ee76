//! Segments backed by sealed memfds and mapped with memmap2.
//!
//! A segment is created by one process (the broker, or a test standing in for it), sized,
//! sealed against shrinking and growing — so no process can later truncate it under another's
//! mapping and turn reads into `SIGBUS` — and handed to others as a file descriptor. Whoever
//! opens it maps it with the access its descriptor allows: a read-only descriptor gives a
//! `PROT_READ` mapping that cannot be made writable.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::protocol::memory::Backing;

/// How a segment is mapped in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
    /// `PROT_READ` only: a write faults.
    ReadOnly,
}

/// Why a segment file descriptor could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor is not sealed against shrinking, so a mapping of it could fault.
    #[error("segment is not sealed against shrinking")]
    NotSealed,
}

fn io_err(what: &'static str) -> impl FnOnce(nix::Error) -> SegmentError {
    move |e| SegmentError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// A mapped memfd.
pub(crate) struct MappedSegment {
    map: MmapRaw,
    /// The descriptor, kept by creators (who hand it out); `None` once a user that only maps the
    /// segment let it go (a subscriber of thousands of rings would otherwise hold thousands).
    fd: Option<OwnedFd>,
    access: Access,
}

impl MappedSegment {
    /// Creates a memfd of `len` bytes named `name` (visible in `/proc/PID/fd` and `/proc/PID/maps`
    /// as `memfd:NAME`) with file mode `mode`, seals its size, and maps it read-write.
    ///
    /// The mode is what `/proc/PID/fd/N` reopens are checked against: a segment that some
    /// holders may only read gets `0o400`, so that a read-only descriptor cannot be turned into
    /// a writable one by reopening it (other uids cannot reopen it at all; the creator's own uid
    /// only for reading).
    pub(crate) fn create(name: &str, len: u64, mode: u32) -> Result<MappedSegment, SegmentError> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(io_err("memfd_create"))?;
        let len_off = i64::try_from(len).map_err(|_| SegmentError::Io {
            what: "segment size",
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        nix::unistd::ftruncate(&fd, len_off).map_err(io_err("ftruncate memfd"))?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(io_err("seal memfd"))?;
        let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
        nix::sys::stat::fchmod(&fd, mode).map_err(io_err("chmod memfd"))?;
        let map = map(&fd, len, Access::ReadWrite)?;
        Ok(MappedSegment {
            map,
            fd: Some(fd),
            access: Access::ReadWrite,
        })
    }

    /// Maps a segment received from another process, read-write or read-only as the descriptor
    /// was opened. Sizes and contents are validated by the caller.
    pub(crate) fn open(fd: OwnedFd) -> Result<MappedSegment, SegmentError> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io_err("read descriptor flags"))?;
        let access = match OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE {
            OFlag::O_RDONLY => Access::ReadOnly,
            _ => Access::ReadWrite,
        };
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(io_err("read memfd seals"))?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(SegmentError::NotSealed);
        }
        let stat = nix::sys::stat::fstat(&fd).map_err(io_err("fstat memfd"))?;
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        let map = map(&fd, len, access)?;
        Ok(MappedSegment {
            map,
            fd: Some(fd),
            access,
        })
    }

    /// The same mapping without its descriptor (closed now; the mapping stays).
    pub(crate) fn without_fd(mut self) -> MappedSegment {
        self.fd = None;
        self
    }

    /// The descriptor, as created or received (`None` once let go).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// A new descriptor for the same memory that only allows reading, for handing to
    /// subscribers: they can map it `PROT_READ` and nothing else.
    pub(crate) fn read_only_fd(&self) -> io::Result<OwnedFd> {
        let fd = self.fd.as_ref().ok_or(io::ErrorKind::NotFound)?;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let file = File::options().read(true).open(path)?;
        Ok(OwnedFd::from(file))
    }
}

fn map(fd: &OwnedFd, len: u64, access: Access) -> Result<MmapRaw, SegmentError> {
    let len = usize::try_from(len).map_err(|_| SegmentError::Io {
        what: "segment size",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut opts = MmapOptions::new();
    // MAP_POPULATE: every page is faulted in (and, on first map, allocated) now, so that the
    // first lap of a ring does not take a page fault per 4 KiB in the middle of a publish or a
    // read (the peer comparison in `benches/compare` saw an 8-byte p99 of 5.8 µs instead of 0.25 µs
    // until the ring had lapped once).
    // The price is that a ring's memory is committed when it is created, not when first used.
    opts.len(len).populate();
    let result = match access {
        Access::ReadWrite => opts.map_raw(fd.as_raw_fd()),
        Access::ReadOnly => opts.map_raw_read_only(fd.as_raw_fd()),
    };
    result.map_err(|source| SegmentError::Io {
        what: "mmap segment",
        source,
    })
}

// SAFETY: the mapping stays valid until `self` drops (MmapRaw unmaps on drop); mmap returns a
// page-aligned address; the memfd is sealed against shrinking, so the whole length stays backed;
// and all shared access goes through atomics or the ring protocol. A zero-length segment maps to
// a dangling-but-aligned pointer with len 0, which no accessor dereferences (lengths are checked
// against the header before any access).
unsafe impl Backing for MappedSegment {
    fn base(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_mut_ptr()).unwrap_or(NonNull::dangling())
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn writable(&self) -> bool {
        self.access == Access::ReadWrite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
    fn created_segments_are_sealed_zeroed_and_reopenable_read_only() {
        let seg = MappedSegment::create("shmbus-test", 8192, 0o400).unwrap();
        assert!(seg.writable());
        // SAFETY: 8192 bytes are mapped and nothing else touches them.
        let bytes = unsafe { std::slice::from_raw_parts(seg.base().as_ptr(), seg.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: in bounds, and we are the only user of the mapping.
        unsafe { seg.base().as_ptr().add(100).write(42) };
        let ro = MappedSegment::open(seg.read_only_fd().unwrap()).unwrap();
        assert!(!ro.writable());
        assert_eq!(ro.len(), 8192);
        // SAFETY: in bounds of the read-only mapping.
        assert_eq!(unsafe { ro.base().as_ptr().add(100).read_volatile() }, 42);
        let grow = nix::unistd::ftruncate(seg.fd().unwrap(), 16384);
        assert!(grow.is_err(), "the size is sealed");
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
    fn unsealed_descriptors_are_refused() {
        let fd = memfd_create("shmbus-unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            MappedSegment::open(fd),
            Err(SegmentError::NotSealed)
        ));
    }
}
