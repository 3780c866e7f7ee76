//! `uds-spin` and `uds-block`: a `SOCK_SEQPACKET` Unix socket pair, one message per `send`.
//!
//! The sender fills a buffer in its own memory and `send`s it (the kernel copies it in); the
//! receiver `recv`s into its own buffer (the kernel copies it out) and reads it. `uds-spin` sets
//! the sockets non-blocking and retries on `EAGAIN`; `uds-block` sleeps in the kernel.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::harness::{self, Endpoint};

/// The largest message: 64 KiB fits the default socket send buffer (212,992 bytes).
const MAX_PAYLOAD: usize = 64 * 1024;

/// One end of the socket pair and a buffer for each direction.
pub struct UdsEnd {
    fd: OwnedFd,
    out: Vec<u8>,
    inbound: Vec<u8>,
}

impl Endpoint for UdsEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let message = &mut self.out[..len];
        message.fill(fill);
        loop {
            match socket::send(self.fd.as_raw_fd(), message, MsgFlags::empty()) {
                Ok(n) => {
                    assert_eq!(n, len, "a SOCK_SEQPACKET send is all or nothing");
                    return;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => std::hint::spin_loop(),
                Err(e) => panic!("send on the socket pair: {e}"),
            }
        }
    }

    fn recv(&mut self) -> (usize, u64) {
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut self.inbound, MsgFlags::empty()) {
                Ok(n) => return (n, harness::read_all(&self.inbound[..n])),
                Err(Errno::EAGAIN | Errno::EINTR) => std::hint::spin_loop(),
                Err(e) => panic!("recv on the socket pair: {e}"),
            }
        }
    }
}

impl UdsEnd {
    fn new(fd: OwnedFd) -> UdsEnd {
        UdsEnd {
            fd,
            out: vec![0; MAX_PAYLOAD],
            // One byte more than the largest message, so a truncated one would show.
            inbound: vec![0; MAX_PAYLOAD + 1],
        }
    }
}

/// Parent side. `spin` makes both ends non-blocking (the flag is on the open file, which the
/// child inherits).
pub fn parent(spin: bool) -> (UdsEnd, Child) {
    let flags = if spin {
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC
    } else {
        SockFlag::SOCK_CLOEXEC
    };
    let (mine, theirs) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)
        .expect("socketpair");
    let role = if spin { "uds-spin" } else { "uds-block" };
    let child = harness::spawn_child(role, &[theirs.as_fd()], "");
    (UdsEnd::new(mine), child)
}

/// Child side.
pub fn child() {
    let fd = harness::inherited_fds().pop().expect("the socket");
    harness::serve(&mut UdsEnd::new(fd));
}
