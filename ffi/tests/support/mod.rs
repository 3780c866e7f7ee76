//! Helpers for the C API tests: compiling C programs against the library cargo just built, a
//! real broker on a private socket, and child processes whose output lines can be awaited.
//!
//! # Where the library is
//!
//! `cargo test` builds this crate's library target once with all its crate types (`cdylib`,
//! `staticlib`, `rlib`, see `ffi/Cargo.toml`) before it builds the tests that link the rlib, so
//! `libshmbus_ffi.so` is always fresh when a test runs. Cargo writes it into `deps/` beside the
//! test executables (`target/<profile>/deps/`) and copies it one level up
//! (`target/<profile>/`); both are found from `std::env::current_exe()`, which also works for
//! `--release`, `CARGO_TARGET_DIR` and `--target` layouts. The C programs link that `.so` with an
//! rpath, so they run without `LD_LIBRARY_PATH`.
//!
//! # The broker
//!
//! A real broker (`shmbus::broker::Broker`, what `shmbus broker` runs) on a thread of the test
//! process, serving a socket in a private directory; the C programs are separate processes that
//! reach it through that socket, exactly as they would reach `shmbus broker`.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus::broker::{Broker, BrokerConfig, BrokerHandle};

/// How long a test waits for something a process should do before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The crate's directory (`ffi/`).
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the freshly built `libshmbus_ffi.so` (see the module documentation).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("locate the test executable");
    let deps = exe.parent().expect("the test executable has a directory");
    [deps, deps.parent().unwrap_or(deps)]
        .into_iter()
        .find(|d| d.join("libshmbus_ffi.so").is_file())
        .unwrap_or_else(|| {
            panic!(
                "libshmbus_ffi.so is neither in {} nor in its parent: was the cdylib crate type \
                 removed from ffi/Cargo.toml?",
                deps.display()
            )
        })
        .to_path_buf()
}

/// A private (0700) directory, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shmbus-ffi-test-{}-{n}", std::process::id()));
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

/// Compiles `source` (relative to `ffi/`) with the system C compiler as C11 with warnings as
/// errors, linked against the library; once per test process. Returns the executable.
pub fn compile(source: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(exe) = built.get(source) {
        return exe.clone();
    }
    let out_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shmbus-ffi-c-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let name = Path::new(source).file_stem().unwrap().to_str().unwrap();
    let exe = out_dir.join(name);
    let lib = lib_dir();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-g",
            "-I",
        ])
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join(source))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lshmbus_ffi")
        .output()
        .unwrap_or_else(|e| panic!("run the C compiler {cc:?}: {e}"));
    assert!(
        output.status.success(),
        "{cc} failed on {source}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    built.insert(source.to_string(), exe.clone());
    exe
}

/// A broker serving a socket in its own private directory, on a thread of this process.
pub struct TestBroker {
    pub socket: PathBuf,
    handle: BrokerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    pub dir: TestDir,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        let dir = TestDir::new();
        let socket = dir.path.join("bus.sock");
        let broker = Broker::bind(BrokerConfig::new(&socket)).expect("bind the broker");
        let handle = broker.handle();
        let thread = std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || broker.run())
            .unwrap();
        TestBroker {
            socket,
            handle,
            thread: Some(thread),
            dir,
        }
    }

    /// The bus address: the socket path.
    pub fn bus(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// Stops the broker and waits until it has closed every connection.
    pub fn stop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().expect("the broker failed");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lines a child printed on one of its streams, collected by a thread.
pub struct Lines {
    rx: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn from_stream(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&all);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                // Nobody may be waiting any more; `all` still collects.
                let _ = tx.send(line);
            }
        });
        Lines { rx, all }
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
        self.all.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// A running child with its stdin and its stdout and stderr lines.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("SHMBUS_BUS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
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
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its standard input (end of file).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for exit (at most [`PATIENCE`]) and returns the exit code.
    pub fn wait_code(&mut self) -> i32 {
        self.close_stdin();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the collector threads drain the pipes: they end at end of file.
                let _ = self.child.wait();
                self.stdout.settle();
                self.stderr.settle();
                return status.code().unwrap_or_else(|| {
                    panic!(
                        "killed by a signal: {status}; stderr: {}",
                        self.stderr.text()
                    )
                });
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in time; stderr: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

impl Lines {
    /// Waits (briefly) until the collector thread has seen the end of the stream.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
