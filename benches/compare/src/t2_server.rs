//! A t2_bus 0.2.0 bus server in a process of its own, for the t2_bus cases of `reqrep` (Unix
//! socket) and `remote` (TCP).
//!
//! Its documented setup: a bus server (`ServerBuilder::serve_unix_socket` or `serve_tcp`, as
//! `t2 serve unix:…` or `t2 serve tcp:…` does) that every message passes through, on a
//! multi-thread Tokio runtime (`#[tokio::main]`'s default, as in the `t2` tool) and on any CPU.
//! Clients connect with `Connector::new_unix` or `Connector::new_tcp`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Child;

use t2_bus::prelude::{Client, Connector, ServerBuilder};

use crate::harness;
use crate::process::{free_loopback_port, ready_pipe, say_ready, wait_ready};

/// The crate version measured (the lock file pins it).
pub const VERSION: &str = "0.2.0";

/// The role of the broker process.
pub const BROKER_ROLE: &str = "t2_bus-broker";

/// Where a broker listens, as the `t2 serve` command line says it: `unix:PATH` or
/// `tcp:HOST:PORT`.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

impl Listen {
    /// A socket in the temporary directory, named after this process.
    pub fn unix() -> Listen {
        Listen::Unix(
            std::env::temp_dir().join(format!("shmbus-compare-t2-{}.sock", std::process::id())),
        )
    }

    /// A free loopback port.
    pub fn tcp() -> Listen {
        Listen::Tcp(format!("127.0.0.1:{}", free_loopback_port()))
    }

    /// How a client reaches it.
    pub fn connector(&self) -> Connector {
        match self {
            Listen::Unix(path) => Connector::new_unix(path.clone()),
            Listen::Tcp(address) => Connector::new_tcp(address.clone()),
        }
    }

    /// A client connected to the broker listening here (panics if it cannot be reached).
    pub async fn connect(&self) -> Client {
        self.connector()
            .connect()
            .await
            .expect("connect to the t2_bus broker")
    }

    /// As an argument for a child process ([`Listen::parse`] reads it back).
    pub fn to_arg(&self) -> String {
        match self {
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Tcp(address) => format!("tcp:{address}"),
        }
    }

    /// Reads what [`Listen::to_arg`] wrote.
    pub fn parse(arg: &str) -> Listen {
        match arg.split_once(':') {
            Some(("unix", path)) => Listen::Unix(PathBuf::from(path)),
            Some(("tcp", address)) => Listen::Tcp(address.to_string()),
            _ => panic!("not a t2_bus listen address: {arg:?}"),
        }
    }
}

/// The broker process; stopped when dropped.
pub struct Broker {
    process: Child,
    pub listen: Listen,
}

impl Broker {
    /// Starts the broker and waits until it listens.
    pub fn start(listen: Listen) -> Broker {
        let (ready, ready_w) = ready_pipe();
        let process = harness::spawn_child(BROKER_ROLE, &[ready_w.as_fd()], &listen.to_arg());
        drop(ready_w);
        wait_ready(ready, "the t2_bus broker");
        Broker { process, listen }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if let Listen::Unix(path) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The broker process's work (after `unpin_and_follow_parent`): serve until killed.
pub fn broker() {
    let listen = Listen::parse(&harness::child_arg());
    // t2_bus's server prints a line to stdout for every client that comes or goes; the table
    // goes to stdout.
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    nix::unistd::dup2_stdout(&null).expect("stdout to /dev/null");
    let runtime = tokio::runtime::Runtime::new().expect("a multi-thread Tokio runtime");
    runtime.block_on(async {
        let builder = match listen {
            Listen::Unix(path) => ServerBuilder::new().serve_unix_socket(path),
            Listen::Tcp(address) => ServerBuilder::new().serve_tcp(
                address
                    .parse()
                    .expect("a socket address for the t2_bus server"),
            ),
        };
        let (_stopper, _) = builder.build().await.expect("start the t2_bus server");
        say_ready();
        std::future::pending::<()>().await;
    });
}
