//! A raw connection to a broker's gateway, speaking the remote protocol frame by frame: for
//! tests that say what the library never would.

use std::io::{Read, Write};
use std::net::TcpStream;

use shmbus::ErrorCode;
use shmbus::protocol::remote::{Frame, Hello, MAGIC, REMOTE_VERSION, decode, encode};

use super::PATIENCE;

/// A connection to a gateway.
pub struct RawRemote {
    stream: TcpStream,
}

/// A client's hello, of this version, naming `instance` and holding `session`.
pub fn hello(instance: u64, session: Option<&str>) -> Hello {
    Hello {
        magic: MAGIC,
        version: REMOTE_VERSION,
        name: "raw".into(),
        session: session.map(str::to_string),
        peer: None,
        instance,
    }
}

impl RawRemote {
    /// Connects to `url` (`tcp://…`) and says hello, expecting a welcome.
    pub fn connect(url: &str) -> RawRemote {
        let (raw, answer) = RawRemote::greet(url, &hello(0, None));
        assert!(matches!(answer.as_deref(), Some([2, ..])), "no welcome");
        raw
    }

    /// Connects to `url` (`tcp://…`) and says `hello`; returns the answer too (kind and body,
    /// `None` if the gateway closed the connection).
    pub fn greet(url: &str, hello: &Hello) -> (RawRemote, Option<Vec<u8>>) {
        let stream = TcpStream::connect(url.trim_start_matches("tcp://")).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut raw = RawRemote { stream };
        raw.send(&Frame::Hello(hello.clone()));
        let answer = raw.next();
        (raw, answer)
    }

    pub fn send(&mut self, frame: &Frame<'_>) {
        let mut bytes = Vec::new();
        encode(frame, &mut bytes);
        self.send_bytes(&bytes);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame's kind and body, or `None` once the gateway closed the connection.
    pub fn next(&mut self) -> Option<Vec<u8>> {
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).ok()?;
        let mut body = vec![0; u32::from_le_bytes(prefix) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(body)
    }

    /// Whether the gateway closes the connection, skipping pings until then; fails on any
    /// other frame.
    pub fn closed_by_gateway(&mut self) -> bool {
        loop {
            match self.next() {
                None => return true,
                Some(body) => match decode(&body).unwrap() {
                    Frame::Ping => {}
                    other => panic!("expected the connection to close, got {other:?}"),
                },
            }
        }
    }

    /// The next frame other than a ping, decoded into what a test looks at: a refusal's id and
    /// code, or `None` for anything else.
    pub fn next_failed(&mut self) -> Option<(u32, ErrorCode)> {
        loop {
            let body = self.next()?;
            match decode(&body).unwrap() {
                Frame::Ping => continue,
                Frame::Failed { id, refusal } => return Some((id, refusal.code)),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }
}
