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

#[path = "../../../tests/support/process.rs"]
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use shmbus::{Broker, BrokerHandle};

pub use process::{PATIENCE, Proc};

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
        // An RPATH, not a RUNPATH: it wins over the LD_LIBRARY_PATH cargo sets for tests, which
        // also names `target/debug`, where a `cargo build` may have left an older library.
        .arg("-Wl,--disable-new-dtags")
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
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        let (broker, dir) = TestBroker::bind(Broker::builder());
        TestBroker::run(broker, dir)
    }

    /// A broker that also listens at `listen` (a `tcp://` URL, port 0 allowed), and the
    /// address it listens at.
    pub fn start_listening(listen: &str) -> (TestBroker, String) {
        let address = shmbus::BusAddress::parse_listen(listen).unwrap();
        let (broker, dir) = TestBroker::bind(Broker::builder().listen(address));
        let url = broker.listen_addresses()[0].to_string();
        (TestBroker::run(broker, dir), url)
    }

    /// Binds `builder`'s broker to a socket in a new private directory.
    fn bind(builder: shmbus::BrokerBuilder) -> (Broker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let broker = builder
            .socket(dir.path().join("bus.sock"))
            .bind()
            .expect("bind the broker");
        (broker, dir)
    }

    fn run(broker: Broker, dir: tempfile::TempDir) -> TestBroker {
        let socket = broker.socket_path().to_path_buf();
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

impl Proc {
    /// Starts `program ARGS` with a piped standard input, outside any `SHMBUS_BUS` of the
    /// environment.
    pub fn spawn(program: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args).env_remove("SHMBUS_BUS");
        Proc::start(cmd, Stdio::piped())
    }
}
