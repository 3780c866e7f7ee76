//! Child processes whose output lines can be awaited. Shared by the root package's tests
//! (`tests/support/mod.rs`) and the C API tests (`ffi/tests/support/mod.rs`, which include this
//! file with `#[path]`); each adds its own way of spawning. Private directories are
//! `tempfile::TempDir`s (created mode 0700).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// How long a test waits for something a process should do before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What the collector thread has seen of a stream.
#[derive(Default)]
struct Seen {
    lines: Vec<String>,
    /// The stream reached its end.
    ended: bool,
}

/// Lines a child printed on one of its streams, collected by a thread.
pub struct Lines {
    rx: Receiver<String>,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Lines {
    pub fn from_stream(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let keep = Arc::clone(&seen);
        std::thread::spawn(move || {
            let (state, changed) = &*keep;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                state.lock().unwrap().lines.push(line.clone());
                // Nobody may be waiting any more; `seen` still collects.
                let _ = tx.send(line);
            }
            state.lock().unwrap().ended = true;
            changed.notify_all();
        });
        Lines { rx, seen }
    }

    /// Waits for the next line containing `needle`; panics after [`PATIENCE`] or at the end of
    /// the stream.
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

    /// Everything seen so far, one line each.
    pub fn lines(&self) -> Vec<String> {
        self.seen.0.lock().unwrap().lines.clone()
    }

    /// Everything seen so far, joined with newlines.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until the collector has read the stream to its end, so that [`Lines::lines`] holds
    /// everything; gives up after [`PATIENCE`] (a grandchild may still hold the pipe open).
    fn settle(&self) {
        let (state, changed) = &*self.seen;
        let guard = state.lock().unwrap();
        let _ = changed
            .wait_timeout_while(guard, PATIENCE, |seen| !seen.ended)
            .unwrap();
    }
}

/// A running child with its stdin (if piped) and its stdout and stderr lines.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    /// Starts `cmd` with `stdin` as given and stdout and stderr collected line by line.
    pub fn start(mut cmd: Command, stdin: Stdio) -> Proc {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        let stdout = Lines::from_stream(child.stdout.take().unwrap());
        let stderr = Lines::from_stream(child.stderr.take().unwrap());
        Proc {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Writes `text` to its standard input.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin piped and still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its standard input (end of file).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Closes its standard input, waits for exit (at most [`PATIENCE`]) and for the end of its
    /// output, and returns the exit code.
    pub fn wait_code(&mut self) -> i32 {
        self.close_stdin();
        let status = self.child.wait_timeout(PATIENCE).unwrap();
        let Some(status) = status else {
            panic!(
                "process did not exit in time; stderr: {}",
                self.stderr.text()
            );
        };
        self.stdout.settle();
        self.stderr.settle();
        status.code().unwrap_or_else(|| {
            panic!(
                "killed by a signal: {status}; stderr: {}",
                self.stderr.text()
            )
        })
    }

    /// Waits for a successful exit; panics with its output otherwise.
    pub fn expect_success(&mut self) {
        let code = self.wait_code();
        assert_eq!(
            code,
            0,
            "exit code {code}; stdout: {}; stderr: {}",
            self.stdout.text(),
            self.stderr.text()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
