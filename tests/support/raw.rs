//! A client that speaks the control protocol by hand: for tests that misbehave on purpose
//! (garbage, misuse, silence) or need what the library hides (the descriptors it is sent).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use shmbus::protocol::pubsub::{ClaimDoorbell, Subscribe};
use shmbus::protocol::seqpacket::{self as socket, Received};
use shmbus::protocol::{
    BrokerMessage, ClientMessage, ErrorReply, Hello, MAX_MESSAGE_LEN, PROTOCOL_VERSION, Reply,
    Request, RequestId, Welcome, codec,
};
use shmbus_shm::ReaderMode;

/// Connects to the broker at `socket`, with a receive timeout so a silent broker fails the test
/// instead of hanging it.
pub fn connect(socket: &Path) -> OwnedFd {
    let sock = socket::connect(socket).expect("connect");
    let timeout = nix::sys::time::TimeVal::new(30, 0);
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .unwrap();
    sock
}

pub fn send(sock: &OwnedFd, msg: &ClientMessage) {
    socket::send(sock.as_fd(), msg, &[]).expect("send");
}

/// The next message from the broker with its descriptors, or `None` once it closed the
/// connection.
pub fn recv_with_fds(sock: &OwnedFd) -> Option<(BrokerMessage, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_MESSAGE_LEN + 1];
    let mut fds = Vec::new();
    match socket::recv(sock.as_fd(), &mut buf, &mut fds).expect("recv (timed out?)") {
        Received::Message(n) => Some((
            codec::decode_broker(&buf[..n]).expect("broker sent garbage"),
            fds,
        )),
        Received::Closed => None,
        Received::Oversized => panic!("broker sent an oversized message"),
        Received::DescriptorsLost(_) => panic!("descriptors from the broker were lost"),
    }
}

/// The next message from the broker, or `None` once it closed the connection.
pub fn recv(sock: &OwnedFd) -> Option<BrokerMessage> {
    recv_with_fds(sock).map(|(msg, _)| msg)
}

/// Says Hello and expects a Welcome.
pub fn hello(sock: &OwnedFd) -> (Welcome, Vec<OwnedFd>) {
    send(
        sock,
        &ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: "test".into(),
        }),
    );
    match recv_with_fds(sock) {
        Some((BrokerMessage::Welcome(w), fds)) => (w, fds),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Asserts the broker closed `sock` (after possibly one refusal message).
pub fn closed(sock: &OwnedFd) {
    loop {
        match recv(sock) {
            None => return,
            Some(BrokerMessage::Refused(_)) => {}
            Some(other) => panic!("expected the connection closed, got {other:?}"),
        }
    }
}

/// A greeted connection that sends requests and keeps what the broker sends besides replies.
pub struct RawClient {
    pub sock: OwnedFd,
    pub welcome: Welcome,
    /// The doorbell table's descriptor, from the Welcome.
    pub doorbells: OwnedFd,
    /// Messages received while waiting for replies, with their descriptors.
    pub unsolicited: Vec<(BrokerMessage, Vec<OwnedFd>)>,
    next: u32,
}

impl RawClient {
    pub fn connect(socket: &Path) -> RawClient {
        let sock = connect(socket);
        let (welcome, mut fds) = hello(&sock);
        let doorbells = fds.pop().expect("the Welcome carries the doorbell table");
        RawClient {
            sock,
            welcome,
            doorbells,
            unsolicited: Vec::new(),
            next: 1,
        }
    }

    /// Subscribes to `pattern`; returns the descriptors of the first ring attached (data
    /// read-only, readers).
    pub fn subscribe(&mut self, pattern: &str) -> Vec<OwnedFd> {
        let (reply, _) = self.request(Request::ClaimDoorbell(ClaimDoorbell));
        let Ok(Reply::DoorbellClaimed(bell)) = reply else {
            panic!("doorbell: {reply:?}");
        };
        let (reply, _) = self.request(Request::Subscribe(Subscribe {
            pattern: pattern.into(),
            mode: ReaderMode::Tethered,
            history: 0,
            doorbell: bell.index,
        }));
        assert!(matches!(reply, Ok(Reply::Subscribed(_))), "{reply:?}");
        let (_, fds) = self
            .unsolicited
            .drain(..)
            .find(|(m, _)| matches!(m, BrokerMessage::RingAttached(_)))
            .expect("an attachment before the reply");
        fds
    }

    /// Sends `body` and waits for its reply, keeping what comes before it.
    pub fn request(&mut self, body: Request) -> (Result<Reply, ErrorReply>, Vec<OwnedFd>) {
        let id = RequestId::from_raw(self.next);
        self.next += 1;
        send(&self.sock, &ClientMessage::Request { id, body });
        loop {
            match recv_with_fds(&self.sock).expect("the broker closed the connection") {
                (BrokerMessage::Reply { id: got, result }, fds) if got == id => {
                    return (result, fds);
                }
                other => self.unsolicited.push(other),
            }
        }
    }
}
