//! A `nats-server` process for the NATS cases of `reqrep` and `remote`.
//!
//! The benchmark starts `nats-server` (from `PATH`) on a free loopback port, free to run on any
//! CPU, for the whole run, and kills it at the end (or, if the benchmark is killed, through its
//! parent-death signal). No configuration: the Go server's defaults, `TCP_NODELAY` included.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::process::{all_cpus, free_loopback_port, process_cpu_seconds, wait_listening};

/// The client crate version measured (the lock file pins it).
pub const CLIENT_VERSION: &str = "0.51.0";

/// A `nats-server` process; killed when dropped.
pub struct Server {
    process: Child,
    pub port: u16,
    /// What `nats-server --version` says.
    pub version: String,
}

impl Server {
    /// One line for the report: the server's version and address, and the client's version.
    pub fn describe(&self) -> String {
        format!(
            "{} on 127.0.0.1:{} (any CPU); client async-nats {CLIENT_VERSION}",
            self.version, self.port
        )
    }

    /// Starts `nats-server` on a free loopback port and waits until it accepts connections.
    pub fn start() -> Server {
        let version = Command::new("nats-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}); install it, e.g. `apt-get install nats-server`"
                )
            });
        let port = free_loopback_port();
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let cpus = all_cpus();
        // SAFETY: between fork and exec the closure makes two system calls (sched_setaffinity,
        // prctl) and allocates nothing; `cpus` was built before the fork.
        unsafe {
            command.pre_exec(move || {
                // This process is pinned to CPU 0; the server may run anywhere, and must not
                // outlive the benchmark.
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let process = command.spawn().expect("start nats-server");
        let server = Server {
            process,
            port,
            version,
        };
        wait_listening(port, "nats-server");
        server
    }

    /// Where clients connect.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its CPU seconds so far (it is this benchmark's, but not waited for until it stops).
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.process.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
