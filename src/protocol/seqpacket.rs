//! `SOCK_SEQPACKET` Unix sockets: listening, connecting, and sending and receiving one message
//! (plus descriptors) per datagram, with bounded buffers.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, sockopt,
};
use serde::Serialize;

use super::{MAX_FDS, MAX_MESSAGE_LEN, codec};

/// The kernel's limit on descriptors in one message.
const SCM_MAX_FD: usize = 253;

fn socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    Ok(nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        flags,
        None,
    )?)
}

/// A non-blocking listening socket bound at `path` (which must not exist).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(true)?;
    nix::sys::socket::bind(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    nix::sys::socket::listen(&sock, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(sock)
}

/// A blocking connection to the listener at `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(false)?;
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

/// Accepts one pending connection (non-blocking); `None` when there is none.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    match nix::sys::socket::accept4(listener.as_raw_fd(), flags) {
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(nix::Error::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Who is at the other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id at connect time.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The peer's credentials.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let c = nix::sys::socket::getsockopt(&sock, sockopt::PeerCredentials)?;
    Ok(PeerCredentials {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Sends one message with `fds` attached. `WouldBlock` on a full non-blocking socket.
pub fn send_bytes(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(&raw)]
    };
    let sent = nix::sys::socket::sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short send of a datagram",
        ));
    }
    Ok(())
}

/// Encodes and sends one message.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let bytes =
        codec::encode(msg, &mut buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    send_bytes(sock, bytes, fds)
}

/// What a receive produced.
#[derive(Debug)]
pub enum Received {
    /// A message of this many bytes (in the caller's buffer).
    Message(usize),
    /// The peer closed the connection.
    Closed,
    /// The message, or its descriptors, did not fit: a protocol violation (the excess was
    /// discarded by the kernel, descriptors included).
    Oversized,
}

/// Receives one message into `buf` (which should hold more than [`MAX_MESSAGE_LEN`] bytes, so an
/// oversized message shows as such), putting any descriptors into `fds` (close-on-exec), which
/// must be empty.
/// `WouldBlock` on an empty non-blocking socket.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Received> {
    // Room for the kernel's maximum (SCM_MAX_FD), so that descriptors a misbehaving peer floods
    // us with are all handed to us, and closed, rather than left installed in this process with
    // the control data truncated.
    debug_assert!(fds.is_empty(), "recv counts descriptors against MAX_FDS");
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nix::sys::socket::recvmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        // Cannot happen with a buffer for SCM_MAX_FD descriptors; nix refuses to parse
        // truncated control data, so there is nothing to take ownership of.
        return Ok(Received::Oversized);
    }
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel installed these descriptors in this process for us; nothing
            // else owns them. Taking ownership at once means they are closed if we reject the
            // message.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let (bytes, empty) = (msg.bytes, msg.bytes == 0);
    if truncated || bytes > MAX_MESSAGE_LEN || fds.len() > MAX_FDS {
        return Ok(Received::Oversized);
    }
    if empty {
        // SOCK_SEQPACKET reports the peer's close as a zero-length read; our messages are never
        // empty (every encoding has at least its variant tag).
        return Ok(Received::Closed);
    }
    Ok(Received::Message(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientMessage, codec};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn messages_and_descriptors_cross_and_boundaries_hold() {
        let (a, b) = pair();
        let hello = ClientMessage::Hello(crate::protocol::Hello {
            version: 1,
            name: "x".into(),
        });
        let (r, _w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), &hello, &[r.as_fd()]).unwrap();
        send(a.as_fd(), &ClientMessage::Goodbye, &[]).unwrap();
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        let mut fds = Vec::new();
        let Received::Message(n) = recv(b.as_fd(), &mut buf, &mut fds).unwrap() else {
            panic!()
        };
        assert_eq!(codec::decode_client(&buf[..n]).unwrap(), hello);
        assert_eq!(fds.len(), 1);
        let mut none = Vec::new();
        let Received::Message(n) = recv(b.as_fd(), &mut buf, &mut none).unwrap() else {
            panic!()
        };
        assert_eq!(
            codec::decode_client(&buf[..n]).unwrap(),
            ClientMessage::Goodbye
        );
        assert!(none.is_empty());
        drop(a);
        assert!(matches!(
            recv(b.as_fd(), &mut buf, &mut none).unwrap(),
            Received::Closed
        ));
    }

    #[test]
    fn oversized_datagrams_and_descriptor_floods_are_reported() {
        let (a, b) = pair();
        send_bytes(a.as_fd(), &[7u8; MAX_MESSAGE_LEN + 100], &[]).unwrap();
        let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
        let mut fds = Vec::new();
        assert!(matches!(
            recv(b.as_fd(), &mut buf, &mut fds).unwrap(),
            Received::Oversized
        ));
        let mut fds = Vec::new();
        let pipes: Vec<_> = (0..MAX_FDS + 3)
            .map(|_| nix::unistd::pipe().unwrap().0)
            .collect();
        let borrowed: Vec<_> = pipes.iter().map(AsFd::as_fd).collect();
        send_bytes(a.as_fd(), &[1], &borrowed).unwrap();
        assert!(matches!(
            recv(b.as_fd(), &mut buf, &mut fds).unwrap(),
            Received::Oversized
        ));
    }
}
