//! `nats`: NATS request/reply through a local `nats-server` over TCP loopback.
//!
//! The benchmark starts `nats-server` (from `PATH`) on a free loopback port, on any CPU, for the
//! whole run. The child subscribes to a subject and publishes each answer to the request's reply
//! subject; the parent asks with `Client::request` (async-nats, which waits on one shared inbox
//! subscription). Both clients run on a current-thread Tokio runtime and sleep in `epoll` while
//! they wait; async-nats sets `TCP_NODELAY`, and so does the Go server.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::harness;
use crate::{AsyncRequester, all_cpus, current_thread_runtime, ready_pipe, say_ready, wait_ready};

/// The client crate version measured (the lock file pins it).
pub const CLIENT_VERSION: &str = "0.51.0";

/// The subject served.
const SUBJECT: &str = "bench.rpc";

/// A `nats-server` process; killed when dropped.
pub struct Server {
    process: Child,
    pub port: u16,
    /// What `nats-server --version` says.
    pub version: String,
}

impl Server {
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
        // A port the kernel just had free; nats-server binds it a moment later.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server does not accept connections on port {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The parent's requester.
struct NatsRequester {
    client: async_nats::Client,
}

impl AsyncRequester for NatsRequester {
    async fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64) {
        let response = self
            .client
            .request(SUBJECT, Bytes::from(vec![fill; len]))
            .await
            .expect("request over NATS");
        (response.payload.len(), harness::read_all(&response.payload))
    }
}

/// One case: starts the responding child, connects, times the round trips.
pub fn measure(server: &Server, len: usize, warmup: usize, rounds: usize) -> Histogram<u64> {
    let url = server.url();
    let (ready, ready_w) = ready_pipe();
    let child = harness::spawn_child("nats", &[ready_w.as_fd()], &url);
    drop(ready_w);
    wait_ready(ready, "the NATS responder");
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .expect("connect to nats-server");
        // The responder has flushed its subscription; ask until the server has it too (a
        // request with no subscriber fails at once with "no responders").
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = client.request(SUBJECT, Bytes::from_static(b"?")).await {
            assert!(Instant::now() < deadline, "no NATS responder: {e}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut end = NatsRequester { client };
        let rtt = crate::run_async(&mut end, child, len, warmup, rounds).await;
        drop(end);
        rtt
    })
}

/// The child: answers until the empty request, which it answers (and flushes) before it
/// returns.
pub fn child() {
    let url = harness::child_arg();
    current_thread_runtime().block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .expect("connect to nats-server");
        let mut requests = client.subscribe(SUBJECT).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        say_ready();
        while let Some(request) = requests.next().await {
            let len = request.payload.len();
            let reply = request.reply.expect("a request carries a reply subject");
            let fill = harness::reply_fill(harness::read_all(&request.payload));
            client
                .publish(reply, Bytes::from(vec![fill; len]))
                .await
                .expect("publish the answer");
            if len == 0 {
                client.flush().await.expect("flush the last answer");
                return;
            }
        }
        panic!("the NATS subscription ended before the empty request");
    });
}
