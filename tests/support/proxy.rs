//! A TCP proxy between remote clients and a gateway that can cut a client's side of a
//! connection alone: the client sees its link go, while the gateway's side stays open and alive
//! (the proxy pings the gateway on it), as when a client's own network went down and up.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmbus::protocol::remote::{Frame, encode};

/// The proxy: it accepts on its own loopback port, each connection relayed to the gateway.
pub struct Proxy {
    address: String,
    /// Each accepted client's socket, with its gateway side.
    pairs: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
}

impl Proxy {
    /// A proxy to the gateway at `gateway` (`tcp://HOST:PORT`).
    pub fn start(gateway: &str) -> Proxy {
        let upstream = gateway.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::clone(&pairs);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(gateway) = TcpStream::connect(&upstream) else {
                    continue;
                };
                relay(client.try_clone().unwrap(), gateway.try_clone().unwrap());
                relay(gateway.try_clone().unwrap(), client.try_clone().unwrap());
                accepted.lock().unwrap().push((client, gateway));
            }
        });
        Proxy { address, pairs }
    }

    /// Where clients connect.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Closes the client's side of the first connection it relayed, and from then on pings the
    /// gateway on the other side every 200 ms, so that the gateway keeps it for alive.
    pub fn cut_client_side_of_first(&self) {
        let (client, gateway) = {
            let pairs = self.pairs.lock().unwrap();
            let (client, gateway) = pairs.first().expect("a connection to cut");
            (client.try_clone().unwrap(), gateway.try_clone().unwrap())
        };
        // Its relay threads end with the client's socket: the gateway side is the proxy's now
        // (a frame the client was sending may be cut short: cut only an idle connection).
        client.shutdown(Shutdown::Both).unwrap();
        let mut ping = Vec::new();
        encode(&Frame::Ping, &mut ping);
        let mut pinger = gateway;
        std::thread::spawn(move || {
            while pinger.write_all(&ping).is_ok() {
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }
}

/// Copies `from` into `to` on a thread of its own until either side fails or ends.
fn relay(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
