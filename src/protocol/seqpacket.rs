//! `SOCK_SEQPACKET` Unix sockets: listening, connecting, and sending and receiving one message
//! (plus descriptors) per datagram, with bounded buffers.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// A blocking connection to the listener at `path`, given up with `TimedOut` if its backlog stays
/// full for `timeout` (a listener that stopped accepting). Receives and sends on it time out
/// after `timeout` too, until [`set_timeouts`] says otherwise.
pub fn connect_timeout(path: &Path, timeout: Duration) -> io::Result<OwnedFd> {
    let sock = socket(true)?;
    let addr = UnixAddr::new(path)?;
    let deadline = Instant::now() + timeout;
    // A Unix socket reports a full backlog with EAGAIN at once, and offers nothing to wait on
    // for room: retry with a growing pause.
    let mut pause = Duration::from_micros(100);
    loop {
        match nix::sys::socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("its connection backlog stayed full for {timeout:?}"),
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_GETFL,
    )?);
    nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFL(flags - nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    set_timeouts(
        std::os::fd::AsFd::as_fd(&sock),
        Some(timeout),
        Some(timeout),
    )?;
    Ok(sock)
}

/// Sets how long a blocking receive and send on `sock` may wait (`None`: forever). A receive
/// or send that times out fails with `WouldBlock`.
pub fn set_timeouts(
    sock: BorrowedFd<'_>,
    recv: Option<Duration>,
    send: Option<Duration>,
) -> io::Result<()> {
    let tv = |d: Option<Duration>| {
        let d = d.unwrap_or(Duration::ZERO);
        nix::sys::time::TimeVal::new(
            d.as_secs().try_into().unwrap_or(i64::MAX),
            d.subsec_micros().into(),
        )
    };
    nix::sys::socket::setsockopt(&sock, sockopt::ReceiveTimeout, &tv(recv))?;
    nix::sys::socket::setsockopt(&sock, sockopt::SendTimeout, &tv(send))?;
    Ok(())
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
    /// A message of this many bytes (in the caller's buffer) whose descriptors could not all be
    /// received: the kernel could not install them (this process is out of descriptors), or
    /// the peer sent more than any message may carry. The bytes are intact; the descriptors are
    /// gone.
    DescriptorsLost(usize),
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
        // With room for SCM_MAX_FD descriptors, the kernel truncates only when it cannot
        // install them (EMFILE). nix refuses to parse truncated control data, so any it did
        // install before running out cannot be taken ownership of.
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > MAX_MESSAGE_LEN;
        return Ok(if truncated || msg.bytes == 0 {
            Received::Oversized
        } else {
            Received::DescriptorsLost(msg.bytes)
        });
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
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
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
