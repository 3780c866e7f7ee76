//! `shmbus-tcp` and `shmbus-tls`: shmbus clients that reach the bus through the broker's gateway
//! over TCP loopback, in the clear or with TLS.
//!
//! The broker runs in this process, on a thread of its own that first lets itself run on every
//! CPU again (this process is pinned to CPU 0; the gateway's threads, which `Broker::run`
//! starts, inherit that thread's CPUs). A fresh broker serves each case, at a control socket in
//! the run's scratch directory and a `tcp://127.0.0.1:0` or `tls://127.0.0.1:0` listener.
//!
//! Round trips: the parent is a remote client (`Bus::connect` on the gateway's URL, or a
//! builder with the run's CA for TLS); the child is a local client of the same broker
//! (`Bus::connect` on the socket path), the `shmbus-bus` echo. Throughput: both are remote
//! clients (the same child, given the `tcp://` URL). Both sides use `bus::attach`: topics
//! `compare/ping` and `compare/pong`, loans, busy-spinning tethered subscribers.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::JoinHandle;

use shmbus::{Broker, BrokerHandle, Bus, BusAddress, TlsClientFiles, TlsServerFiles};

use crate::bus::{self, BusEnd};
use crate::harness;
use crate::process::all_cpus;

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM files.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Certificates {
    /// Makes them (rcgen) in `dir`.
    pub fn create(dir: &Path) -> Certificates {
        let generate = || -> Result<(String, String, String), rcgen::Error> {
            let mut ca = rcgen::CertificateParams::new(Vec::new())?;
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate()?;
            let ca_cert = ca.self_signed(&ca_key)?;
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem(), ca_cert.pem()))
        };
        let (cert_pem, key_pem, ca_pem) = generate().expect("make the TLS certificates");
        let certificates = Certificates {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
        };
        for (path, pem) in [
            (&certificates.cert, cert_pem),
            (&certificates.key, key_pem),
            (&certificates.ca, ca_pem),
        ] {
            std::fs::write(path, pem).expect("write a certificate file");
        }
        certificates
    }
}

/// A broker with a gateway, running on an unpinned thread; stopped when dropped.
pub struct Gateway {
    handle: BrokerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    socket: PathBuf,
    url: String,
    /// The CA to trust, for a `tls://` gateway.
    ca: Option<PathBuf>,
}

impl Gateway {
    /// Starts a broker at `dir/bus.sock` with one listener: `tls://127.0.0.1:0` with `tls`,
    /// else `tcp://127.0.0.1:0`.
    pub fn start(dir: &Path, tls: Option<&Certificates>) -> Gateway {
        let socket = dir.join("bus.sock");
        let listen = if tls.is_some() {
            "tls://127.0.0.1:0"
        } else {
            "tcp://127.0.0.1:0"
        };
        let mut builder = Broker::builder()
            .socket(&socket)
            .listen(BusAddress::parse_listen(listen).expect("a listen address"));
        if let Some(files) = tls {
            builder = builder.tls(TlsServerFiles {
                cert: files.cert.clone(),
                key: files.key.clone(),
                client_ca: None,
            });
        }
        let broker = builder.bind().expect("start the shmbus broker");
        let url = broker.listen_addresses()[0].to_string();
        let handle = broker.handle();
        let thread = std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || {
                // This thread inherited the pinning to CPU 0; the broker's event loop and the
                // gateway's threads (started by `run`, inheriting this) may run anywhere.
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all_cpus())
                    .expect("allow every CPU");
                broker.run()
            })
            .expect("start the broker thread");
        Gateway {
            handle,
            thread: Some(thread),
            socket,
            url,
            ca: tls.map(|files| files.ca.clone()),
        }
    }

    /// A remote client of the gateway.
    fn connect(&self) -> Bus {
        let mut builder =
            Bus::builder().address(BusAddress::parse(&self.url).expect("the gateway's URL"));
        if let Some(ca) = &self.ca {
            builder = builder.tls(TlsClientFiles::default().ca(ca));
        }
        builder.connect().expect("connect to the gateway")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("the broker thread");
            result.expect("the shmbus broker");
        }
    }
}

/// Round trips: the parent is a remote client of `gateway`, subscribed to the replies before
/// the child exists; the child, a local client of the same broker, echoes.
pub fn round_trip_parent(gateway: &Gateway) -> (BusEnd, Child) {
    let end = bus::attach(gateway.connect(), "compare/ping", "compare/pong");
    let socket = gateway.socket.to_str().expect("a UTF-8 socket path");
    let child = harness::spawn_child("shmbus-bus", &[], socket);
    (end, child)
}

/// Throughput: the parent and the streaming child are both remote clients of `gateway`.
pub fn stream_parent(gateway: &Gateway) -> (BusEnd, Child) {
    assert!(
        gateway.ca.is_none(),
        "the streaming child connects in the clear"
    );
    let end = bus::attach(gateway.connect(), "compare/ping", "compare/pong");
    let child = harness::spawn_child("shmbus-bus", &[], &gateway.url);
    (end, child)
}
