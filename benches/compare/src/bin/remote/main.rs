//! Remote hosts: shmbus clients that reach the bus over TCP (and TLS) beside raw TCP, t2_bus and
//! NATS, on one host over loopback, by the method of the other two benchmarks.
//!
//! Round trips: a ping-pong between this process (pinned to CPU 0) and a copy of this executable
//! started as the child (pinned to CPU 1), timed and checked by `harness::ping_pong`; round
//! trips are not halved. Throughput: the child publishes a fixed number of messages as fast as
//! its transport takes them and this process receives, reads and checks every one; messages per
//! second from the first message received to the last. Each case runs several times, interleaved
//! with the others, and the tables show medians across runs. The brokers (shmbus's on a thread
//! of this process, t2_bus's and nats-server in processes of their own) may run on either CPU.
//! See README.md.
//!
//! ```text
//! cargo run --release --bin remote [-- [--runs N] [--quick] [TRANSPORT...]]
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// Shared with the other two benchmarks, which also start its embedded broker.
#[allow(dead_code)]
#[path = "../../bus.rs"]
mod bus;
// Shared with the one-way and throughput comparison, which uses the rest of it.
#[allow(dead_code)]
#[path = "../../harness.rs"]
mod harness;
mod nats;
#[path = "../../nats_server.rs"]
mod nats_server;
// Shared with the request/response benchmark, which uses the rest of it.
#[path = "../../options.rs"]
mod options;
#[allow(dead_code)]
#[path = "../../process.rs"]
mod process;
#[path = "../../report.rs"]
mod report;
mod shm;
mod t2;
// Shared with the request/response benchmark, which uses its Unix socket.
#[allow(dead_code)]
#[path = "../../t2_server.rs"]
mod t2_server;
#[path = "../../tcp.rs"]
mod tcp;

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use report::{Meter, machine, median, size_name};

/// The round-trip transports, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoundTrip {
    TcpRaw,
    TcpRawSpin,
    ShmbusTcp,
    ShmbusTls,
}

impl RoundTrip {
    const ALL: [RoundTrip; 4] = [
        RoundTrip::TcpRaw,
        RoundTrip::TcpRawSpin,
        RoundTrip::ShmbusTcp,
        RoundTrip::ShmbusTls,
    ];

    fn name(self) -> &'static str {
        match self {
            RoundTrip::TcpRaw => "tcp-raw",
            RoundTrip::TcpRawSpin => "tcp-raw-spin",
            RoundTrip::ShmbusTcp => "shmbus-tcp",
            RoundTrip::ShmbusTls => "shmbus-tls",
        }
    }

    /// One run of this transport at `len` bytes: round-trip times in ns.
    fn measure(self, scratch: &Scratch, len: usize, rounds: usize) -> Histogram<u64> {
        macro_rules! ping_pong {
            ($parent:expr) => {{
                let (mut end, child) = $parent;
                harness::ping_pong(&mut end, child, len, WARMUP, rounds)
            }};
        }
        match self {
            RoundTrip::TcpRaw => ping_pong!(tcp::parent(false)),
            RoundTrip::TcpRawSpin => ping_pong!(tcp::parent(true)),
            RoundTrip::ShmbusTcp => {
                let gateway = shm::Gateway::start(&scratch.dir, None);
                ping_pong!(shm::round_trip_parent(&gateway))
            }
            RoundTrip::ShmbusTls => {
                let gateway = shm::Gateway::start(&scratch.dir, Some(&scratch.certificates));
                ping_pong!(shm::round_trip_parent(&gateway))
            }
        }
    }
}

/// The throughput transports, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    ShmbusTcp,
    T2Bus,
    Nats,
}

impl Stream {
    const ALL: [Stream; 3] = [Stream::ShmbusTcp, Stream::T2Bus, Stream::Nats];

    fn name(self) -> &'static str {
        match self {
            Stream::ShmbusTcp => "shmbus-tcp",
            Stream::T2Bus => "t2_bus",
            Stream::Nats => "nats",
        }
    }

    /// Messages per stream at `len` bytes: about one to three seconds each on the machine of
    /// README.md.
    fn count(self, len: usize) -> u64 {
        match (self, len) {
            (Stream::ShmbusTcp, 8) => 1_000_000,
            (Stream::ShmbusTcp, _) => 20_000,
            (Stream::T2Bus, 8) => 200_000,
            (Stream::T2Bus, _) => 10_000,
            (Stream::Nats, 8) => 2_000_000,
            (Stream::Nats, _) => 10_000,
        }
    }

    /// One run of this transport: a stream of `count` messages of `len` bytes.
    fn stream(
        self,
        scratch: &Scratch,
        nats: Option<&nats_server::Server>,
        len: usize,
        count: u64,
    ) -> Streamed {
        harness::set_stream(count);
        let streamed = match self {
            Stream::ShmbusTcp => {
                let gateway = shm::Gateway::start(&scratch.dir, None);
                let (mut end, child) = shm::stream_parent(&gateway);
                let rate = harness::stream(&mut end, child, len, count);
                // A lost message ends the case with `RecvError::Lagged` or a wrong sequence.
                Streamed { rate, lost: 0 }
            }
            Stream::T2Bus => t2::stream(len, count),
            Stream::Nats => nats::stream(nats.expect("started for the run"), len, count),
        };
        harness::set_stream(0);
        streamed
    }
}

/// Payload sizes of the round trips, the same each way.
const PAYLOADS: [usize; 2] = [8, 4096];

/// Payload sizes of the streams.
const STREAM_PAYLOADS: [usize; 2] = [8, 65536];

/// Timed round trips per run and case, and untimed ones before them. Every transport here
/// sleeps in the kernel or crosses a socket at least twice per round trip, so a round trip takes
/// tens of microseconds: fewer than the shared-memory benchmarks', the same as reqrep's peers.
/// shmbus maps its rings with `MAP_POPULATE`, so its first lap takes no page faults.
const ROUNDS: usize = 20_000;
const WARMUP: usize = 2_000;

/// A case that takes longer than this is stuck: the alarm ends the process and, through their
/// parent-death signals, the child, the t2_bus broker and nats-server.
const CASE_LIMIT: Duration = Duration::from_secs(120);

/// How long a stream's receiver waits for its first message, and then for each next one before
/// it counts the rest as lost.
const FIRST_MESSAGE_PATIENCE: Duration = Duration::from_secs(30);
const NEXT_MESSAGE_PATIENCE: Duration = Duration::from_secs(2);

/// What one run of a stream gives.
#[derive(Clone, Copy, Debug)]
struct Streamed {
    /// Messages per second.
    rate: f64,
    /// Messages sent but never received.
    lost: u64,
}

/// The receiving side of a stream over a client whose calls are futures (run on a
/// current-thread Tokio runtime).
trait AsyncSubscriber {
    /// The next message's length and [`harness::read_all`] of all its bytes, or `None` if none
    /// arrives within `patience`.
    async fn recv(&mut self, patience: Duration) -> Option<(usize, u64)>;
}

/// The parent's side of a stream from a publishing child over an async client: receives and
/// checks every message (each one of `len` bytes that all hold `harness::stream_fill` of its
/// index, in order) until all `count` have come or none comes for [`NEXT_MESSAGE_PATIENCE`];
/// then waits for the child. Messages per second from the first message received to the last,
/// as `harness::stream` times; a message missing from the sequence is counted as lost.
async fn stream_async(
    subscriber: &mut impl AsyncSubscriber,
    mut child: Child,
    len: usize,
    count: u64,
) -> Streamed {
    let mut received = 0u64;
    // The index the next message should have.
    let mut next = 0u64;
    let mut first = Instant::now();
    let mut last = first;
    while next < count {
        let patience = if received == 0 {
            FIRST_MESSAGE_PATIENCE
        } else {
            NEXT_MESSAGE_PATIENCE
        };
        let Some((got, total)) = subscriber.recv(patience).await else {
            break;
        };
        last = Instant::now();
        if received == 0 {
            first = last;
        }
        received += 1;
        // Its index: the next one's, or a later one's if some were lost (the fill repeats every
        // 251 messages, so longer gaps would go unnoticed here; the count below still has them).
        let skipped = (0..251)
            .find(|&k| got == len && total == harness::expected_sum(len, harness::stream_fill(next + k)))
            .unwrap_or_else(|| {
                panic!("message {received}: {got} bytes summing to {total}, not a message of the stream")
            });
        next += skipped + 1;
    }
    let status = child.wait().expect("wait for the publisher");
    assert!(status.success(), "the publisher failed: {status}");
    assert!(received > 1, "the stream did not arrive");
    Streamed {
        rate: (received - 1) as f64 / (last - first).as_secs_f64().max(1e-9),
        lost: count - received,
    }
}

/// The run's scratch directory (the shmbus broker's socket, the TLS files); removed at the end.
struct Scratch {
    dir: PathBuf,
    certificates: shm::Certificates,
}

impl Scratch {
    fn create() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("shmbus-compare-remote-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("create the scratch directory");
        let certificates = shm::Certificates::create(&dir);
        Scratch { dir, certificates }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Round trips through the gateway beside raw TCP, and throughput beside t2_bus over TCP and
/// NATS, by one method.
#[derive(clap::Parser)]
#[command(name = "remote")]
struct Cli {
    #[command(flatten)]
    common: options::Common,
}

struct Options {
    runs: usize,
    /// Divides the round trips and the messages by 10, for a quick look.
    quick: bool,
    round_trips: Vec<RoundTrip>,
    streams: Vec<Stream>,
}

fn parse_args() -> Options {
    let cli = <Cli as clap::Parser>::parse();
    let names = &cli.common.transports;
    let mut known: Vec<&str> = RoundTrip::ALL.iter().map(|t| t.name()).collect();
    for stream in Stream::ALL {
        if !known.contains(&stream.name()) {
            known.push(stream.name());
        }
    }
    options::check_names(names, &known);
    // A name may be a round trip, a stream or both (`shmbus-tcp`).
    let round_trips = options::select(&RoundTrip::ALL, |t| t.name(), names);
    let streams = options::select(&Stream::ALL, |t| t.name(), names);
    Options {
        runs: cli.common.runs,
        quick: cli.common.quick,
        round_trips,
        streams,
    }
}

fn main() {
    if let Ok(role) = std::env::var(harness::ROLE_ENV) {
        if role == t2_server::BROKER_ROLE {
            process::unpin_and_follow_parent();
            t2_server::broker();
            return;
        }
        harness::child_prelude();
        match role.as_str() {
            "tcp" | "tcp-spin" => tcp::child(),
            "shmbus-bus" => bus::child(),
            "t2_bus" => t2::child(),
            "nats" => nats::child(),
            other => panic!("unknown role {other:?}"),
        }
        return;
    }
    let options = parse_args();
    harness::pin(harness::PARENT_CPU);
    let scratch = Scratch::create();
    // nats-server, for the whole run; it goes when this drops (or, if this process is killed, by
    // its parent-death signal). t2_bus's broker is started for each case.
    let nats_server = options
        .streams
        .contains(&Stream::Nats)
        .then(nats_server::Server::start);

    let meter = Meter::start();
    // round_trips[payload][transport]: (p50, p99) round-trip ns of each run.
    let mut round_trips = vec![vec![Vec::new(); options.round_trips.len()]; PAYLOADS.len()];
    // streams[payload][transport]: each run's stream.
    let mut streams = vec![vec![Vec::new(); options.streams.len()]; STREAM_PAYLOADS.len()];
    let divisor = if options.quick { 10 } else { 1 };
    for run in 0..options.runs {
        for (p, &len) in PAYLOADS.iter().enumerate() {
            for (t, &transport) in options.round_trips.iter().enumerate() {
                nix::unistd::alarm::set(CASE_LIMIT.as_secs() as u32);
                let rtt = transport.measure(&scratch, len, ROUNDS / divisor as usize);
                nix::unistd::alarm::cancel();
                let p50 = rtt.value_at_quantile(0.50) as f64;
                let p99 = rtt.value_at_quantile(0.99) as f64;
                eprintln!(
                    "run {}/{}  {:>6}  {:<13} round trip p50 {:>9.0} ns  p99 {:>9.0} ns  ({} round trips)",
                    run + 1,
                    options.runs,
                    size_name(len),
                    transport.name(),
                    p50,
                    p99,
                    rtt.len()
                );
                round_trips[p][t].push((p50, p99));
            }
        }
        for (p, &len) in STREAM_PAYLOADS.iter().enumerate() {
            for (t, &transport) in options.streams.iter().enumerate() {
                let count = transport.count(len) / divisor;
                nix::unistd::alarm::set(CASE_LIMIT.as_secs() as u32);
                let streamed = transport.stream(&scratch, nats_server.as_ref(), len, count);
                nix::unistd::alarm::cancel();
                eprintln!(
                    "run {}/{}  {:>6}  {:<13} {:>8.3} M msg/s  {:>8.0} MB/s  ({count} messages, {} lost)",
                    run + 1,
                    options.runs,
                    size_name(len),
                    transport.name(),
                    streamed.rate / 1e6,
                    streamed.rate * len as f64 / 1e6,
                    streamed.lost
                );
                streams[p][t].push(streamed);
            }
        }
    }
    let load = meter.stop();

    println!("{}", machine());
    let shmbus_round_trips = options
        .round_trips
        .iter()
        .any(|t| matches!(t, RoundTrip::ShmbusTcp | RoundTrip::ShmbusTls));
    if shmbus_round_trips || options.streams.contains(&Stream::ShmbusTcp) {
        println!(
            "shmbus (this tree): a broker for each case on a thread of the parent (any CPU), \
             gateway on 127.0.0.1"
        );
    }
    if options.streams.contains(&Stream::T2Bus) {
        println!(
            "t2_bus {} (crates.io): a broker process for each case (multi-thread Tokio runtime, \
             any CPU), TCP on 127.0.0.1",
            t2_server::VERSION
        );
    }
    if let Some(server) = &nats_server {
        println!("{}", server.describe());
    }
    let nats_cpu = nats_server
        .as_ref()
        .map_or(0.0, nats_server::Server::cpu_seconds);
    load.print(options.runs, "1–2", nats_cpu);
    if !options.round_trips.is_empty() {
        println!(
            "Round trip over TCP loopback, medians of {} runs:\n",
            options.runs
        );
        print!("{}", round_trip_table(&options.round_trips, &round_trips));
    }
    if !options.streams.is_empty() {
        if !options.round_trips.is_empty() {
            println!();
        }
        println!(
            "Throughput over TCP loopback, medians of {} runs:\n",
            options.runs
        );
        print!("{}", throughput_table(&options.streams, &streams, divisor));
    }
    drop(nats_server);
}

/// The round trips as a Markdown table: medians across runs, ratios to `tcp-raw` and
/// `tcp-raw-spin` at the same payload, and the spread of the runs' p50.
fn round_trip_table(transports: &[RoundTrip], results: &[Vec<Vec<(f64, f64)>>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | transport | round trip p50 ns | p99 ns | p50 vs tcp-raw | p99 vs tcp-raw \
         | p50 vs tcp-raw-spin | p99 vs tcp-raw-spin | p50 of runs, min–max |\n",
    );
    out.push_str("|---:|:---|---:|---:|---:|---:|---:|---:|---:|\n");
    let position = |wanted| transports.iter().position(|&t| t == wanted);
    let bases = [position(RoundTrip::TcpRaw), position(RoundTrip::TcpRawSpin)];
    let names: Vec<&str> = transports.iter().map(|t| t.name()).collect();
    for (p, &len) in PAYLOADS.iter().enumerate() {
        report::latency_rows(&mut out, len, &names, &results[p], bases, 2);
    }
    out
}

/// The streams as a Markdown table: medians across runs, shmbus-tcp's rate over each
/// transport's (the median of the runs' ratios: runs are side by side, so each ratio compares
/// one moment of the machine), messages lost over all runs, and the spread of the runs.
fn throughput_table(transports: &[Stream], results: &[Vec<Vec<Streamed>>], divisor: u64) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | transport | messages per run | M msg/s | MB/s | shmbus-tcp vs this, per run \
         | lost, all runs | M msg/s of runs, min–max |\n",
    );
    out.push_str("|---:|:---|---:|---:|---:|---:|---:|---:|\n");
    let ours = transports.iter().position(|&t| t == Stream::ShmbusTcp);
    for (p, &len) in STREAM_PAYLOADS.iter().enumerate() {
        let runs = &results[p];
        for (t, &transport) in transports.iter().enumerate() {
            let rates = || runs[t].iter().map(|s| s.rate);
            let rate = median(rates());
            let lo = rates().fold(f64::INFINITY, f64::min);
            let hi = rates().fold(0.0, f64::max);
            let per_run_ratio = ours.map_or("–".into(), |o| {
                let ratios = runs[o].iter().zip(&runs[t]).map(|(a, b)| a.rate / b.rate);
                format!("{:.2}×", median(ratios))
            });
            let lost: u64 = runs[t].iter().map(|s| s.lost).sum();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.0} | {} | {} | {:.3}–{:.3} |",
                size_name(len),
                transport.name(),
                transport.count(len) / divisor,
                rate / 1e6,
                rate * len as f64 / 1e6,
                per_run_ratio,
                lost,
                lo / 1e6,
                hi / 1e6,
            );
        }
    }
    out
}
