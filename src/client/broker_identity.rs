//! Whom a client trusts to be its broker. The broker hands out the memory a client reads and
//! writes, so a process listening where the broker should be must be the one the user meant:
//! the socket's directory must belong to a trusted user and not let others put a socket there,
//! and the process that accepted the connection must run as a trusted user (`SO_PEERCRED`).
//! Trusted users are this process's effective user, root, and the one the application names
//! ([`BusBuilder::broker_uid`](crate::BusBuilder::broker_uid)) for a broker run as a service
//! account.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::protocol::seqpacket;

/// The users a client accepts as its broker's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrustedUsers {
    /// A service account's uid, besides this process's and root's.
    pub(crate) extra: Option<u32>,
}

impl TrustedUsers {
    fn trusts(&self, uid: u32) -> bool {
        uid == 0 || uid == nix::unistd::geteuid().as_raw() || self.extra == Some(uid)
    }

    /// Checks the directory holding the broker's socket: owned by a trusted user, and writable
    /// by others only if sticky (so nobody else can replace the socket).
    pub(crate) fn check_directory(&self, socket: &Path) -> Result<(), String> {
        let dir = match socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let meta = std::fs::metadata(dir).map_err(|e| {
            format!(
                "cannot inspect the socket's directory {}: {e}",
                dir.display()
            )
        })?;
        if !self.trusts(meta.uid()) {
            return Err(format!(
                "the socket's directory {} belongs to uid {}, not to this user, root or the \
                 broker's user",
                dir.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(format!(
                "the socket's directory {} is writable by others (mode {:o}) without the sticky \
                 bit: anyone could have put a socket there",
                dir.display(),
                mode & 0o7777
            ));
        }
        Ok(())
    }

    /// Checks the user of the process at the other end of `sock`.
    pub(crate) fn check_peer(&self, sock: BorrowedFd<'_>) -> Result<(), String> {
        let creds = seqpacket::peer_credentials(sock)
            .map_err(|e| format!("cannot learn who listens on the socket: {e}"))?;
        if !self.trusts(creds.uid) {
            return Err(format!(
                "the process listening on the socket (pid {}) runs as uid {}, not as this user, \
                 root or the broker's user",
                creds.pid, creds.uid
            ));
        }
        Ok(())
    }
}
