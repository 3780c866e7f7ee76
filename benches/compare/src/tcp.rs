//! `tcp`: a TCP connection over loopback (`TCP_NODELAY`, blocking), the transport a remote peer
//! would use, measured on one host; `tcp-spin` (in the `remote` benchmark): the same,
//! non-blocking, both sides busy-polling.
//!
//! TCP is a byte stream, so each message is a 4-byte little-endian length followed by the
//! payload, sent with one `write` (more only if the kernel takes part of it) from a buffer the
//! sender fills in its own memory; the receiver reads the length, then the payload into its own
//! buffer, and reads it. The parent makes both ends (listen on `127.0.0.1:0`, connect, accept)
//! and hands one to the child. Non-blocking ends retry a `read` or `write` that would block at
//! once (`EAGAIN`), as `uds-spin` does.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;

use crate::harness::{self, Endpoint};

/// The length prefix.
const HEADER: usize = 4;
/// The largest message.
const MAX_PAYLOAD: usize = 64 * 1024;

/// One end of the connection and a buffer for each direction.
pub struct TcpEnd {
    stream: TcpStream,
    /// The length prefix and then the payload, so one write sends the whole message.
    out: Vec<u8>,
    inbound: Vec<u8>,
}

impl Endpoint for TcpEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let prefix = u32::try_from(len).expect("message length fits the prefix");
        self.out[..HEADER].copy_from_slice(&prefix.to_le_bytes());
        self.out[HEADER..HEADER + len].fill(fill);
        let mut message = &self.out[..HEADER + len];
        while !message.is_empty() {
            match self.stream.write(message) {
                Ok(n) => message = &message[n..],
                Err(e) if retry(&e) => std::hint::spin_loop(),
                Err(e) => panic!("write to the TCP connection: {e}"),
            }
        }
    }

    fn recv(&mut self) -> (usize, u64) {
        let mut prefix = [0u8; HEADER];
        read_exact(&mut self.stream, &mut prefix);
        let len = u32::from_le_bytes(prefix) as usize;
        assert!(
            len <= MAX_PAYLOAD,
            "a message of {len} bytes was never sent"
        );
        let payload = &mut self.inbound[..len];
        read_exact(&mut self.stream, payload);
        (len, harness::read_all(payload))
    }
}

/// Whether a failed `read` or `write` is tried again at once: it would have blocked (only on a
/// non-blocking end) or a signal interrupted it.
fn retry(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// Fills `buf` from the connection, spinning while a non-blocking end has nothing.
fn read_exact(stream: &mut TcpStream, mut buf: &mut [u8]) {
    while !buf.is_empty() {
        match stream.read(buf) {
            Ok(0) => panic!("the TCP connection closed mid-message"),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if retry(&e) => std::hint::spin_loop(),
            Err(e) => panic!("read from the TCP connection: {e}"),
        }
    }
}

impl TcpEnd {
    fn new(stream: TcpStream) -> TcpEnd {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        TcpEnd {
            stream,
            out: vec![0; HEADER + MAX_PAYLOAD],
            inbound: vec![0; MAX_PAYLOAD],
        }
    }
}

/// Parent side: a connected pair over loopback, one end for the child. `spin` makes both ends
/// non-blocking (the flag is on the open file, which the child inherits).
pub fn parent(spin: bool) -> (TcpEnd, Child) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let mine = TcpStream::connect(listener.local_addr().expect("the listener's address"))
        .expect("connect over loopback");
    let (theirs, _) = listener.accept().expect("accept the loopback connection");
    for end in [&mine, &theirs] {
        end.set_nonblocking(spin).expect("O_NONBLOCK");
    }
    let role = if spin { "tcp-spin" } else { "tcp" };
    let child = harness::spawn_child(role, &[theirs.as_fd()], "");
    (TcpEnd::new(mine), child)
}

/// Child side.
pub fn child() {
    let fd: OwnedFd = harness::inherited_fds().pop().expect("the connection");
    harness::serve(&mut TcpEnd::new(TcpStream::from(fd)));
}
