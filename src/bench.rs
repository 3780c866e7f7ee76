//! Measuring the bus: the child-process roles and the measurement loops behind `shmbus bench`
//! and the criterion suite in `benches/`.
//!
//! Every measurement crosses processes and does the user's real work: the sender writes every
//! payload byte into its loan, the receiver reads every byte of what it gets. Latency samples are
//! one-way: half a ping-pong round trip, or — for paced (`--rate`) and fan-out runs — the
//! difference between `CLOCK_MONOTONIC` at receipt and at the *intended* send time written into
//! the message, so a stall delays the samples behind it instead of hiding them (no coordinated
//! omission).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    Bus, PublishError, Publisher, RecvError, RecvTimeoutError, RequestError, Requester, Subscriber,
};
use shmbus_shm::WaitStrategy;

/// Topic the latency ping travels on.
pub const PING: &str = "bench/ping";
/// Topic of the answer to a ping.
pub const PONG: &str = "bench/pong";
/// Topic of throughput and fan-out messages.
pub const DATA: &str = "bench/data";
/// Topic fan-out subscribers acknowledge on.
pub const ACK: &str = "bench/ack";

/// The topic the request/response benchmarks' server serves.
pub const RPC: &str = "bench/rpc";

/// The typed benchmark's message: a string and a vector, like most real messages.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize)]
pub struct Telemetry {
    /// Where it comes from.
    pub name: String,
    /// Readings.
    pub samples: Vec<u32>,
}

impl Telemetry {
    /// A message of about `size` bytes: a short name and `size / 4` samples.
    pub fn of_size(size: usize) -> Telemetry {
        Telemetry {
            name: "sensor-7".into(),
            samples: (0..(size / 4) as u32).collect(),
        }
    }
}

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Attaching a publisher or subscriber failed.
    #[error(transparent)]
    Attach(#[from] crate::AttachError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Receiving failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Nothing arrived in time.
    #[error("no message within {0:?}")]
    Timeout(Duration),
    /// A request failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] crate::ServeError),
    /// A response was not delivered.
    #[error(transparent)]
    Respond(#[from] crate::RespondError),
    /// A message was too short to carry a timestamp.
    #[error("benchmark messages carry an 8-byte timestamp; got {0} bytes")]
    Short(usize),
    /// A role process could not be started or failed before it was ready.
    #[error("the {role} process: {detail}")]
    Role {
        /// The role (`echo`, `flood`, ...).
        role: String,
        /// What went wrong.
        detail: String,
    },
}

/// Processes running benchmark roles (`shmbus bench-role ROLE ...`), killed and reaped when
/// dropped.
pub struct Roles {
    exe: PathBuf,
    /// Each process with its role.
    children: Vec<(String, Child)>,
}

impl Roles {
    /// Roles run by `exe`, the `shmbus` executable.
    pub fn new(exe: impl Into<PathBuf>) -> Roles {
        Roles {
            exe: exe.into(),
            children: Vec::new(),
        }
    }

    /// Starts `EXE bench-role ROLE --bus BUS ARGS` and waits until it says `ready` (it has
    /// attached its publishers and subscribers).
    pub fn start(
        &mut self,
        role: &str,
        bus: &str,
        args: &[impl AsRef<OsStr>],
    ) -> Result<(), BenchError> {
        let failed = |detail: String| BenchError::Role {
            role: role.to_string(),
            detail,
        };
        let mut child = Command::new(&self.exe)
            .args(["bench-role", role, "--bus", bus])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", self.exe.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.children.push((role.to_string(), child));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| failed(format!("cannot read its output: {e}")))?;
        if line.trim() != "ready" {
            return Err(failed("ended before it was ready".into()));
        }
        Ok(())
    }

    /// Waits until every role has exited on its own; fails on the first that did not succeed.
    pub fn wait(&mut self) -> Result<(), BenchError> {
        for (role, child) in &mut self.children {
            let failed = |detail: String| BenchError::Role {
                role: role.clone(),
                detail,
            };
            let status = child
                .wait()
                .map_err(|e| failed(format!("cannot wait for it: {e}")))?;
            if !status.success() {
                return Err(failed(format!("failed ({status})")));
            }
        }
        Ok(())
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a benchmark waits for any one message before giving up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process on the host.
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64
}

/// Pins the calling thread to `cpu`, if the machine has it (best effort: on one core the
/// measurement still runs, only noisier).
pub fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Reads every byte of `payload`, eight at a time (the receiver's share of the work).
pub fn read_all(payload: &[u8]) -> u64 {
    let mut words = payload.chunks_exact(8);
    let sum = words
        .by_ref()
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        .fold(0u64, u64::wrapping_add);
    words
        .remainder()
        .iter()
        .fold(sum, |s, &b| s.wrapping_add(u64::from(b)))
}

/// A subscriber that busy-polls (or parks, with `wait`).
pub fn subscriber(bus: &Bus, pattern: &str, wait: WaitStrategy) -> Result<Subscriber, BenchError> {
    Ok(bus.subscriber(pattern).wait(wait).create()?)
}

/// A publisher that waits for room with `wait`.
pub fn publisher(bus: &Bus, topic: &str, wait: WaitStrategy) -> Result<Publisher, BenchError> {
    Ok(bus.publisher_builder(topic).wait(wait).create()?)
}

/// Publishes a `size`-byte message, every byte written, the first eight (if room) holding
/// `stamp`.
pub fn send(publisher: &mut Publisher, size: usize, stamp: u64) -> Result<(), BenchError> {
    let mut loan = publisher.loan(size)?;
    let buf = loan.as_mut_slice();
    buf.fill(stamp as u8);
    if let Some(head) = buf.get_mut(..8) {
        head.copy_from_slice(&stamp.to_le_bytes());
    }
    loan.commit()?;
    Ok(())
}

/// Receives one message (waiting at most [`PATIENCE`]), reads all of it, and returns its length
/// and its leading timestamp (0 if shorter than 8 bytes).
pub fn receive(subscriber: &mut Subscriber) -> Result<(usize, u64), BenchError> {
    let sample = subscriber.recv_timeout(PATIENCE).map_err(|e| match e {
        RecvTimeoutError::Failed(e) => BenchError::Recv(e),
        _ => BenchError::Timeout(PATIENCE),
    })?;
    let payload = sample.payload();
    std::hint::black_box(read_all(payload));
    let stamp = payload
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    Ok((payload.len(), stamp))
}

/// The echo role: answers every ping on [`PING`] with a pong of the same size on [`PONG`]; stops
/// at an empty ping. Calls `ready` once attached.
pub fn echo(bus: &Bus, wait: WaitStrategy, ready: impl FnOnce()) -> Result<(), BenchError> {
    let mut pings = subscriber(bus, PING, wait)?;
    let mut pongs = publisher(bus, PONG, wait)?;
    ready();
    loop {
        let (len, stamp) = receive(&mut pings)?;
        if len == 0 {
            return Ok(());
        }
        send(&mut pongs, len, stamp)?;
    }
}

/// The acknowledging role: for every message on [`DATA`], publishes an empty message on
/// [`ACK`]; stops at an empty message. Calls `ready` once attached.
pub fn acknowledge(bus: &Bus, wait: WaitStrategy, ready: impl FnOnce()) -> Result<(), BenchError> {
    let mut data = subscriber(bus, DATA, wait)?;
    let mut acks = publisher(bus, ACK, wait)?;
    ready();
    loop {
        let (len, _) = receive(&mut data)?;
        if len == 0 {
            return Ok(());
        }
        send(&mut acks, 1, 0)?;
    }
}

/// The typed echo role: answers every [`Telemetry`] on [`PING`] (validated, every sample read)
/// with the same value serialized on [`PONG`]; stops at a message with no samples. Calls `ready`
/// once attached.
pub fn typed_echo(bus: &Bus, wait: WaitStrategy, ready: impl FnOnce()) -> Result<(), BenchError> {
    let mut pings = bus
        .subscriber(PING)
        .wait(wait)
        .typed::<Telemetry>()
        .create()?;
    let mut pongs = bus
        .publisher_builder(PONG)
        .wait(wait)
        .typed::<Telemetry>()
        .create()?;
    ready();
    let mut reply = Telemetry {
        name: String::new(),
        samples: Vec::new(),
    };
    loop {
        let sample = pings.recv()?;
        if sample.samples.is_empty() {
            return Ok(());
        }
        reply.name.clear();
        reply.name.push_str(&sample.name);
        reply.samples.clear();
        reply
            .samples
            .extend(sample.samples.iter().map(|v| v.to_native()));
        drop(sample);
        pongs.publish(&reply)?;
    }
}

/// An unpaced flood stamps one message in this many with its send time, and the others with 0:
/// a clock read costs about as much as a whole 8-byte message, so stamping every one would
/// measure the clock rather than the bus.
pub const STAMP_EVERY: u64 = 64;

/// The flood role: publishes `count` messages of `size` bytes on [`DATA`]. Paced at `rate` per
/// second, each carries its intended send time; else they go as fast as the ring allows, one in
/// [`STAMP_EVERY`] carrying its send time and the others 0.
///
/// A full ring is waited out with the default strategy, which yields the CPU while it spins:
/// with more publishers than cores, a busy-spinning one would take the CPU from the publisher
/// whose claim the subscriber waits for (4 → 1 on two cores: 15 M against 40–48 M messages/s).
pub fn flood(bus: &Bus, size: usize, count: u64, rate: Option<f64>) -> Result<(), BenchError> {
    let mut p = publisher(bus, DATA, WaitStrategy::default())?;
    let start = now_ns();
    let period = rate.map(|hz| 1e9 / hz);
    for i in 0..count {
        let stamp = match period {
            Some(ns) => {
                let intended = start + (i as f64 * ns) as u64;
                while now_ns() < intended {
                    std::hint::spin_loop();
                }
                intended
            }
            None if i % STAMP_EVERY == 0 => now_ns(),
            None => 0,
        };
        send(&mut p, size.max(8), stamp)?;
    }
    Ok(())
}

/// The fan-out subscriber role: receives `count` messages on [`DATA`] and returns each one's
/// one-way latency in nanoseconds (receipt minus intended send time).
pub fn fanout_subscriber(
    bus: &Bus,
    count: u64,
    wait: WaitStrategy,
    ready: impl FnOnce(),
) -> Result<Vec<u64>, BenchError> {
    let mut sub = subscriber(bus, DATA, wait)?;
    ready();
    (0..count)
        .map(|_| {
            let (len, stamp) = receive(&mut sub)?;
            if len < 8 {
                return Err(BenchError::Short(len));
            }
            Ok(now_ns().saturating_sub(stamp))
        })
        .collect()
}

/// Ping-pong with an echo: `iters` round trips of `size`-byte messages; returns the total time,
/// and calls `sample` with each one-way latency (half the round trip) in nanoseconds.
pub fn ping_pong(
    pings: &mut Publisher,
    pongs: &mut Subscriber,
    size: usize,
    iters: u64,
    mut sample: impl FnMut(u64),
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    for i in 0..iters {
        let sent = now_ns();
        send(pings, size.max(1), i)?;
        receive(pongs)?;
        sample((now_ns() - sent) / 2);
    }
    Ok(start.elapsed())
}

/// The server role: serves [`RPC`], answering every request with a response of the same size,
/// the request read in place and the response written in place; runs until killed. Calls `ready`
/// once serving.
pub fn reply(bus: &Bus, wait: WaitStrategy, ready: impl FnOnce()) -> Result<(), BenchError> {
    let mut server = bus.serve(RPC)?;
    server.set_wait_strategy(wait);
    ready();
    loop {
        let request = server.recv()?;
        let len = request.payload().len();
        request.respond_with(len, |req, buf| {
            let stamp = read_all(req);
            buf.fill(stamp as u8);
            len
        })?;
    }
}

/// The load role: burns CPU until killed (for measurements on a busy machine).
pub fn burn() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// A requester of [`RPC`] waiting with `wait`.
pub fn requester(bus: &Bus, wait: WaitStrategy) -> Result<Requester, BenchError> {
    let mut requester = bus.requester(RPC)?;
    requester.set_wait_strategy(wait);
    Ok(requester)
}

/// `iters` request/response round trips of `size` bytes each way, every byte written in place
/// and read; returns the total time and calls `sample` with each round trip in nanoseconds.
pub fn request_round_trips(
    requester: &mut Requester,
    size: usize,
    iters: u64,
    mut sample: impl FnMut(u64),
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    for i in 0..iters {
        let sent = now_ns();
        let response = requester.request_with(size, |buf| {
            buf.fill(i as u8);
            size
        })?;
        std::hint::black_box(read_all(response.payload()));
        drop(response);
        sample(now_ns() - sent);
    }
    Ok(start.elapsed())
}

/// Receives `count` messages on `sub` and returns how long that took from the first one (the
/// throughput window); calls `sample` with the latency of each stamped message (see [`flood`]),
/// from its intended send time.
pub fn drain(
    sub: &mut Subscriber,
    count: u64,
    mut sample: impl FnMut(u64),
) -> Result<Duration, BenchError> {
    let mut first = None;
    for _ in 0..count {
        let (_, stamp) = receive(sub)?;
        first.get_or_insert_with(Instant::now);
        if stamp != 0 {
            sample(now_ns().saturating_sub(stamp));
        }
    }
    Ok(first.map_or(Duration::ZERO, |f| f.elapsed()))
}
