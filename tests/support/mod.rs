//! Helpers for tests that drive the real `shmbus` binary: a private directory per test, a broker
//! process on a socket in it, and child processes whose output lines can be awaited.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something a process should say before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shmbus")
}

/// A private (0700) directory, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shmbus-test-{}-{n}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&path)
            .unwrap();
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Lines a child printed on one of its streams, collected by a thread.
pub struct Lines {
    rx: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub fn from_stream(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&all);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    // Nobody waits any more; keep collecting into `all`.
                }
            }
        });
        Lines { rx, all }
    }

    /// Waits for the next line containing `needle`; panics after [`PATIENCE`] or at end of
    /// stream.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} in time; saw {:?}", self.text())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "stream ended without a line with {needle:?}; saw {:?}",
                        self.text()
                    )
                }
            }
        }
    }

    /// Everything seen so far.
    pub fn text(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

/// A running child with its stdout and stderr lines.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn shmbus");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stderr: ChildStderr = child.stderr.take().unwrap();
        Proc {
            child,
            stdout: Lines::from_stream(stdout),
            stderr: Lines::from_stream(stderr),
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits for exit (at most [`PATIENCE`]) and returns the exit code.
    pub fn wait_code(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Give the collector threads a moment to drain the pipes.
                std::thread::sleep(Duration::from_millis(20));
                return status
                    .code()
                    .unwrap_or_else(|| panic!("killed by a signal: {status}"));
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in time; stderr: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    pub dir: TestDir,
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        let dir = TestDir::new();
        let socket = dir.path.join("bus.sock");
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
