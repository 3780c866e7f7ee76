//! Starting this test (or bench) binary again as a child process that inherits some file
//! descriptors at fixed numbers: the first at 3, the next at 4, and so on.
//!
//! Shared by the multi-process tests and the benchmarks (included with `#[path]`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first descriptor number a child finds its inherited descriptors at.
pub const FIRST_FD: i32 = 3;

/// Arranges for `fds` to appear in the child started by `cmd` as descriptors 3, 4, ...
///
/// The returned descriptors must stay open until the child is spawned.
pub fn pass_fds(cmd: &mut Command, fds: &[BorrowedFd<'_>]) -> Vec<OwnedFd> {
    // Duplicated above 100 first, so that moving them to 3, 4, ... in the child cannot
    // overwrite one another.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(raw) }
        })
        .collect();
    let raw: Vec<i32> = high.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe; `raw` was computed before the fork and is only read. The sources are
    // all >= 100, so no dup2 overwrites a source still to be moved; dup2's copies do not have
    // close-on-exec set, so they survive the exec.
    unsafe {
        cmd.pre_exec(move || {
            for (target, &source) in (FIRST_FD..).zip(&raw) {
                if libc::dup2(source, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    high
}

/// In the child: takes ownership of the `n` descriptors passed by [`pass_fds`].
pub fn inherited_fds(n: usize) -> Vec<OwnedFd> {
    (FIRST_FD..FIRST_FD + n as i32)
        // SAFETY: the parent placed exactly these descriptors here before exec (see
        // `pass_fds`), and nothing else in this process owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}
