//! Helpers for tests that drive the real `shmbus` binary: a private directory per test, a broker
//! process on a socket in it, and child processes whose output lines can be awaited.

#![allow(dead_code)] // each test file uses its own subset

pub mod hostile;
pub mod pki;
mod process;
pub mod proxy;
pub mod raw;
pub mod raw_remote;

use std::path::PathBuf;
use std::process::{Command, Stdio};

#[allow(unused_imports)] // each test file uses its own subset
pub use process::{Lines, PATIENCE, Proc};

/// Waits until `what` holds, failing after [`PATIENCE`]: `what` is a state another process
/// reaches (no fixed sleep stands in for it).
pub fn eventually(description: &str, mut what: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !what() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {description}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shmbus")
}

impl Proc {
    /// Starts `cmd` with no standard input.
    pub fn spawn(cmd: Command) -> Proc {
        Proc::start(cmd, Stdio::null())
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits until the process's main thread sleeps. For a subscriber that has printed what it
    /// read, that means it found nothing more and parked, which publishes how far it read.
    pub fn wait_asleep(&self) {
        let stat = format!("/proc/{0}/task/{0}/stat", self.pid());
        eventually("the process's main thread sleeps", || {
            let text = std::fs::read_to_string(&stat).unwrap();
            // `PID (COMM) STATE ...`, where COMM may hold anything, parentheses too.
            let after = &text[text.rfind(')').unwrap() + 1..];
            after.split_whitespace().next() == Some("S")
        });
    }
}

/// `shmbus ARGS --bus BUS`, quiet logs.
pub fn shmbus(bus: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .arg("--bus")
        .arg(bus)
        .env("RUST_LOG", "warn")
        .env_remove("SHMBUS_BUS");
    cmd
}

/// Runs `shmbus ARGS --bus BUS` to completion; returns (exit code, stdout, stderr).
pub fn run(bus: &str, args: &[&str]) -> (i32, String, String) {
    let mut p = Proc::spawn(shmbus(bus, args));
    let code = p.wait_code();
    (code, p.stdout.text(), p.stderr.text())
}

/// A broker process on a socket in its own private directory.
pub struct Broker {
    pub proc: Proc,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus.sock");
        let broker = Broker::start_at(&socket, extra);
        Broker {
            proc: broker,
            socket,
            dir,
        }
    }

    /// Starts a broker on `socket` and waits for its ready line.
    pub fn start_at(socket: &std::path::Path, extra: &[&str]) -> Proc {
        let mut args = vec!["broker"];
        args.extend_from_slice(extra);
        let mut cmd = shmbus(socket.to_str().unwrap(), &args);
        cmd.env("RUST_LOG", "info");
        let p = Proc::spawn(cmd);
        let ready = p.stderr.wait_for("shmbus broker ready on");
        assert_eq!(
            ready,
            format!("shmbus broker ready on {}", socket.display())
        );
        p
    }

    /// The bus address (the socket path).
    pub fn bus(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// Starts `shmbus sub ARGS` and waits until it said `subscribed` for each pattern.
    pub fn subscriber(&self, args: &[&str]) -> Proc {
        let mut full = vec!["sub"];
        full.extend_from_slice(args);
        let p = Proc::spawn(shmbus(self.bus(), &full));
        let patterns = args.iter().take_while(|a| !a.starts_with("--")).count();
        for _ in 0..patterns {
            p.stderr.wait_for("subscribed ");
        }
        p
    }
}

/// A broker with `--listen ADDRESS` (and `extra` flags), and the address it listens at.
pub fn listening_broker(address: &str, extra: &[&str]) -> (Broker, String) {
    let mut args = vec!["--listen", address];
    args.extend_from_slice(extra);
    let broker = Broker::start(&args);
    let url = listen_address(&broker.proc);
    (broker, url)
}

/// The address a broker process printed that it listens at.
pub fn listen_address(broker: &Proc) -> String {
    let line = broker.stderr.wait_for("shmbus broker listening on ");
    line.trim_start_matches("shmbus broker listening on ")
        .to_string()
}
