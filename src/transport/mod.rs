//! The TCP transport, plain or TLS: how remote clients and a broker's gateway exchange frames of
//! the remote protocol ([`crate::protocol::remote`]).
//!
//! [`wire`] moves frames over one connection, bounded both ways, and [`outbox`] lets a client's
//! wire coalesce its small frames into fewer writes; [`tls`] makes rustls settings from PEM
//! files. The two sides' handshakes are here: [`dial`] for clients (and peer brokers),
//! [`accept_tls`] for the gateway.

pub(crate) mod outbox;
pub mod tls;
pub(crate) mod wire;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::address::BusAddress;
use crate::protocol::ErrorCode;
use crate::protocol::remote::{
    FRAME_OVERHEAD, Frame, HANDSHAKE_LIMIT, Hello, INTEREST_LIMIT, MAGIC, Peer, REMOTE_VERSION,
    Welcome,
};
use wire::{Timing, Wire, WireReader};

/// A connection to a gateway, with the handshake done.
pub(crate) struct Dialed {
    pub(crate) wire: Arc<Wire>,
    pub(crate) reader: WireReader,
    pub(crate) welcome: Welcome,
}

/// Why [`dial`] failed.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Nothing answered, or the connection or its TLS handshake failed.
    Unreachable(io::Error),
    /// The gateway refused.
    Refused { code: ErrorCode, message: String },
    /// The gateway said something that makes no sense at this point.
    Protocol(String),
}

/// Who dials a gateway, as its hello says.
pub(crate) struct Caller<'a> {
    /// Free-form, for logs.
    pub(crate) name: &'a str,
    /// The session a client asks the gateway to hold.
    pub(crate) session: Option<&'a str>,
    /// A peering broker.
    pub(crate) peer: Option<Peer>,
    /// The client's [`Hello::instance`].
    pub(crate) instance: u64,
}

/// A number unlikely to be drawn by anyone else, now or later (a peer's node id, a client's
/// instance): the standard library's randomly keyed hasher over the process id and the time.
pub(crate) fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

/// The largest frame a connection accepts once its handshake is over: a message of the largest
/// payload, and on a peer link an interest of the most patterns.
pub(crate) fn frame_limit(max_payload: u32, peer: bool) -> usize {
    let messages = max_payload as usize + FRAME_OVERHEAD;
    match peer {
        true => messages.max(INTEREST_LIMIT),
        false => messages,
    }
}

/// Connects to the gateway at `address` (`Tcp` or `Tls`; `tls` holds the client's settings for
/// the latter) and completes the handshake within `timeout`, as `caller`.
pub(crate) fn dial(
    address: &BusAddress,
    tls: Option<&Arc<rustls::ClientConfig>>,
    caller: &Caller<'_>,
    timeout: Duration,
) -> Result<Dialed, DialError> {
    let deadline = Instant::now() + timeout;
    let (host_port, secure) = match address {
        BusAddress::Tcp(a) => (a, false),
        BusAddress::Tls(a) => (a, true),
        BusAddress::Local(p) => {
            return Err(DialError::Protocol(format!(
                "{} is a local socket, not a remote address",
                p.display()
            )));
        }
    };
    let stream = connect(host_port, timeout).map_err(DialError::Unreachable)?;
    let session = if secure {
        let config = tls.ok_or_else(|| {
            DialError::Protocol("a tls:// address needs TLS settings".to_string())
        })?;
        let host = host_of(host_port);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            DialError::Unreachable(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name: {e}"),
            ))
        })?;
        let conn = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(|e| DialError::Unreachable(io::Error::other(e.to_string())))?;
        Some(rustls::Connection::Client(conn))
    } else {
        None
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let handshake = Timing {
        idle: left.max(Duration::from_millis(1)),
        keepalive: left.max(Duration::from_millis(1)),
    };
    let (wire, mut reader) = Wire::establish(stream, session, HANDSHAKE_LIMIT, handshake)
        .map_err(DialError::Unreachable)?;
    let hello = Frame::Hello(Hello {
        magic: MAGIC,
        version: REMOTE_VERSION,
        session: caller.session.map(str::to_string),
        peer: caller.peer,
        instance: caller.instance,
        name: caller
            .name
            .chars()
            .take(crate::protocol::MAX_NAME_LEN / 4)
            .collect(),
    });
    wire.send_by(&hello, Some(deadline)).map_err(|e| {
        DialError::Unreachable(io::Error::other(format!("cannot send the hello: {e:?}")))
    })?;
    let welcome = match reader.next() {
        Ok(Frame::Welcome(welcome)) => welcome,
        Ok(Frame::Refused(refusal)) => {
            return Err(DialError::Refused {
                code: refusal.code,
                message: refusal.message,
            });
        }
        Ok(other) => {
            wire.close("unexpected handshake answer");
            return Err(DialError::Protocol(format!(
                "expected a welcome, got {other:?}"
            )));
        }
        Err(reason) => {
            return Err(DialError::Unreachable(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                reason,
            )));
        }
    };
    if welcome.version != REMOTE_VERSION {
        wire.close("version mismatch");
        return Err(DialError::Protocol(format!(
            "the gateway speaks version {}, this client {REMOTE_VERSION}",
            welcome.version
        )));
    }
    reader.set_limit(frame_limit(welcome.max_payload, caller.peer.is_some()));
    reader.set_timing(Timing::default());
    Ok(Dialed {
        wire,
        reader,
        welcome,
    })
}

/// Connects to the first address `host_port` resolves to that answers within `timeout`.
fn connect(host_port: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in host_port.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host_port} resolves to no address"),
        )
    }))
}

/// The host part of `host:port` (without the brackets of an IPv6 literal).
fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The gateway's side of a TLS connection: a server session with `config`.
pub(crate) fn accept_tls(
    config: &Arc<rustls::ServerConfig>,
) -> Result<rustls::Connection, rustls::Error> {
    rustls::ServerConnection::new(Arc::clone(config)).map(rustls::Connection::Server)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_are_cut_from_their_ports() {
        assert_eq!(host_of("localhost:4222"), "localhost");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
