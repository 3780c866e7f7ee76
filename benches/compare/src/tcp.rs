//! `tcp`: a TCP connection over loopback (`TCP_NODELAY`, blocking), the transport a remote peer
//! would use, measured on one host.
//!
//! TCP is a byte stream, so each message is a 4-byte little-endian length followed by the
//! payload, sent with one `write_all` from a buffer the sender fills in its own memory; the
//! receiver reads the length, then the payload into its own buffer, and reads it. The parent
//! makes both ends (listen on `127.0.0.1:0`, connect, accept) and hands one to the child.

use std::io::{Read, Write};
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
        self.stream
            .write_all(&self.out[..HEADER + len])
            .expect("write to the TCP connection");
    }

    fn recv(&mut self) -> (usize, u64) {
        let mut prefix = [0u8; HEADER];
        self.stream
            .read_exact(&mut prefix)
            .expect("read a length prefix from the TCP connection");
        let len = u32::from_le_bytes(prefix) as usize;
        assert!(
            len <= MAX_PAYLOAD,
            "a message of {len} bytes was never sent"
        );
        let payload = &mut self.inbound[..len];
        self.stream
            .read_exact(payload)
            .expect("read a payload from the TCP connection");
        (len, harness::read_all(payload))
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

/// Parent side: a connected pair over loopback, one end for the child.
pub fn parent() -> (TcpEnd, Child) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let mine = TcpStream::connect(listener.local_addr().expect("the listener's address"))
        .expect("connect over loopback");
    let (theirs, _) = listener.accept().expect("accept the loopback connection");
    let child = harness::spawn_child("tcp", &[theirs.as_fd()], "");
    (TcpEnd::new(mine), child)
}

/// Child side.
pub fn child() {
    let fd: OwnedFd = harness::inherited_fds().pop().expect("the connection");
    harness::serve(&mut TcpEnd::new(TcpStream::from(fd)));
}
