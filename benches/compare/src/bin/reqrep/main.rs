//! Request/response round trips: shmbus beside t2_bus 0.2.0 and NATS, all measured by one method.
//!
//! Every case is a requester in this process (pinned to CPU 0) asking a responder in a copy of
//! this executable started as the child (pinned to CPU 1). The requester writes every byte of the
//! request, the responder reads every byte and answers with a response of the same length whose
//! bytes it writes from what it read, and the requester reads every byte of the response. Each
//! round trip (request sent → response read, not halved) goes into an HDR histogram. Each case
//! runs several times, interleaved with the others, and the table shows the median across runs of
//! each run's p50 and p99. The brokers of t2_bus and NATS run in processes of their own, on
//! whichever CPU the scheduler picks. See README.md.
//!
//! ```text
//! cargo run --release --bin reqrep [-- [--runs N] [--quick] [TRANSPORT...]]
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[path = "../../bus.rs"]
mod bus;
// Shared with the one-way and throughput comparison, which uses the rest of it.
#[allow(dead_code)]
#[path = "../../harness.rs"]
mod harness;
mod nats;
#[path = "../../nats_server.rs"]
mod nats_server;
#[path = "../../options.rs"]
mod options;
#[path = "../../process.rs"]
mod process;
#[path = "../../report.rs"]
mod report;
mod shm;
mod t2;
// Shared with the remote benchmark, which also uses its TCP listener.
#[allow(dead_code)]
#[path = "../../t2_server.rs"]
mod t2_server;

use std::fmt::Write as _;
use std::process::Child;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use report::{Meter, machine, size_name};

/// The transports, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    ShmbusReqrep,
    ShmbusPubsub,
    T2Bus,
    Nats,
}

impl Transport {
    const ALL: [Transport; 4] = [
        Transport::ShmbusReqrep,
        Transport::ShmbusPubsub,
        Transport::T2Bus,
        Transport::Nats,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::ShmbusReqrep => "shmbus-reqrep",
            Transport::ShmbusPubsub => "shmbus-pubsub",
            Transport::T2Bus => "t2_bus",
            Transport::Nats => "nats",
        }
    }

    /// Timed round trips per run and the untimed ones before them. The socket-based peers take
    /// 50–100 times longer per round trip, so they get fewer (still 20,000 samples per run).
    fn rounds(self) -> (usize, usize) {
        match self {
            // At least 20,000 untimed: a fresh shmbus ring page-faults on its first lap (see the
            // one-way benchmark); the timed round trips should see the steady state.
            Transport::ShmbusReqrep | Transport::ShmbusPubsub => (100_000, 20_000),
            Transport::T2Bus | Transport::Nats => (20_000, 2_000),
        }
    }
}

/// Payload sizes, the same each way.
const PAYLOADS: [usize; 2] = [8, 4096];

/// A case that takes longer than this is stuck: the alarm ends the process and, through their
/// parent-death signals, the child, the t2_bus broker and nats-server.
const CASE_LIMIT: Duration = Duration::from_secs(120);

/// The side that asks, blocking or busy-polling until the answer is there.
trait Requester {
    /// Sends a request of `len` bytes, writing `fill` into every one of them, and waits for the
    /// response; returns its length and [`harness::read_all`] of all its bytes.
    fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64);
}

/// [`Requester`] for a client whose calls are futures (run on a current-thread Tokio runtime).
trait AsyncRequester {
    /// As [`Requester::round_trip`].
    async fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64);
}

/// Checks and records round trips, the same for both kinds of requester.
struct Tally {
    len: usize,
    warmup: usize,
    /// Round-trip times in ns.
    rtt: Histogram<u64>,
}

impl Tally {
    fn new(len: usize, warmup: usize) -> Tally {
        Tally {
            len,
            warmup,
            // 1 ns to 60 s, three significant digits.
            rtt: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        }
    }

    /// The byte round trip `i` fills its request with (never 0).
    fn fill(i: usize) -> u8 {
        (i % 251) as u8 + 1
    }

    fn record(&mut self, i: usize, elapsed: Duration, (got, total): (usize, u64)) {
        let (len, fill) = (self.len, Tally::fill(i));
        let want =
            harness::expected_sum(len, harness::reply_fill(harness::expected_sum(len, fill)));
        assert!(
            got == len && total == want,
            "round {i}: asked with {len} bytes of {fill}, got back {got} bytes summing to {total}, not {want}"
        );
        if i >= self.warmup {
            self.rtt.saturating_record(elapsed.as_nanos() as u64);
        }
    }

    /// The empty request that ends the responder; then waits for it to exit.
    fn finish(self, stop: (usize, u64), mut child: Child) -> Histogram<u64> {
        assert_eq!(stop.0, 0, "the answer to the empty request is empty");
        let status = child.wait().expect("wait for the responder");
        assert!(status.success(), "the responder failed: {status}");
        self.rtt
    }
}

/// The parent's side of a case with a blocking requester: `warmup` untimed and then `rounds`
/// timed round trips of `len` bytes, every answer checked, then the responder stopped.
fn run(
    requester: &mut impl Requester,
    child: Child,
    len: usize,
    warmup: usize,
    rounds: usize,
) -> Histogram<u64> {
    let mut tally = Tally::new(len, warmup);
    for i in 0..warmup + rounds {
        let start = Instant::now();
        let answer = requester.round_trip(len, Tally::fill(i));
        let elapsed = start.elapsed();
        tally.record(i, elapsed, answer);
    }
    let stop = requester.round_trip(0, 0);
    tally.finish(stop, child)
}

/// [`run`] for an async requester, all inside one `block_on`.
async fn run_async(
    requester: &mut impl AsyncRequester,
    child: Child,
    len: usize,
    warmup: usize,
    rounds: usize,
) -> Histogram<u64> {
    let mut tally = Tally::new(len, warmup);
    for i in 0..warmup + rounds {
        let start = Instant::now();
        let answer = requester.round_trip(len, Tally::fill(i)).await;
        let elapsed = start.elapsed();
        tally.record(i, elapsed, answer);
    }
    let stop = requester.round_trip(0, 0).await;
    tally.finish(stop, child)
}

/// Request/response round trips of shmbus beside t2_bus and NATS, by one method.
#[derive(clap::Parser)]
#[command(name = "reqrep")]
struct Cli {
    #[command(flatten)]
    common: options::Common,
}

struct Options {
    runs: usize,
    /// Divides the round trips by 10, for a quick look.
    quick: bool,
    transports: Vec<Transport>,
}

fn parse_args() -> Options {
    let cli = <Cli as clap::Parser>::parse();
    let names: Vec<&str> = Transport::ALL.iter().map(|t| t.name()).collect();
    options::check_names(&cli.common.transports, &names);
    Options {
        runs: cli.common.runs,
        quick: cli.common.quick,
        transports: options::select(&Transport::ALL, |t| t.name(), &cli.common.transports),
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
            "shmbus-reqrep" => shm::child(),
            "shmbus-bus" => bus::child(),
            "t2_bus" => t2::child(),
            "nats" => nats::child(),
            other => panic!("unknown role {other:?}"),
        }
        return;
    }
    let options = parse_args();
    harness::pin(harness::PARENT_CPU);

    // nats-server, for the whole run; it goes when this drops (or, if this process is killed, by
    // its parent-death signal). t2_bus's broker is started for each case (see t2.rs).
    let nats_server = options
        .transports
        .contains(&Transport::Nats)
        .then(nats_server::Server::start);

    let meter = Meter::start();
    // results[payload][transport]: (p50, p99) round-trip ns of each run.
    let mut results = vec![vec![Vec::new(); options.transports.len()]; PAYLOADS.len()];
    for run in 0..options.runs {
        for (p, &len) in PAYLOADS.iter().enumerate() {
            for (t, &transport) in options.transports.iter().enumerate() {
                let (rounds, warmup) = transport.rounds();
                let rounds = if options.quick { rounds / 10 } else { rounds };
                nix::unistd::alarm::set(CASE_LIMIT.as_secs() as u32);
                let rtt = match transport {
                    Transport::ShmbusReqrep => shm::measure(len, warmup, rounds),
                    Transport::ShmbusPubsub => {
                        let (mut end, child) = bus::parent();
                        harness::ping_pong(&mut end, child, len, warmup, rounds)
                    }
                    Transport::T2Bus => t2::measure(len, warmup, rounds),
                    Transport::Nats => {
                        let server = nats_server.as_ref().expect("started above");
                        nats::measure(server, len, warmup, rounds)
                    }
                };
                nix::unistd::alarm::cancel();
                let p50 = rtt.value_at_quantile(0.50) as f64;
                let p99 = rtt.value_at_quantile(0.99) as f64;
                eprintln!(
                    "run {}/{}  {:>6}  {:<14} round trip p50 {:>9.0} ns  p99 {:>9.0} ns  ({rounds} round trips)",
                    run + 1,
                    options.runs,
                    size_name(len),
                    transport.name(),
                    p50,
                    p99
                );
                results[p][t].push((p50, p99));
            }
        }
    }
    let load = meter.stop();

    println!("{}", machine());
    if options.transports.contains(&Transport::T2Bus) {
        println!(
            "t2_bus {} (crates.io): a broker process for each case (multi-thread Tokio runtime, \
             any CPU), Unix socket",
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
    print!("{}", table(&options.transports, &results));
    drop(nats_server);
}

/// The results as a Markdown table: medians across runs of the round trip, ratios to t2_bus and
/// to NATS at the same payload, and the spread of the runs' p50; then shmbus-reqrep's p50
/// ratios on lines of their own.
fn table(transports: &[Transport], results: &[Vec<Vec<(f64, f64)>>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | transport | round trip p50 ns | p99 ns | p50 vs t2_bus | p99 vs t2_bus \
         | p50 vs NATS | p99 vs NATS | p50 of runs, min–max |\n",
    );
    out.push_str("|---:|:---|---:|---:|---:|---:|---:|---:|---:|\n");
    let position = |wanted| transports.iter().position(|&t| t == wanted);
    let (t2, nats, ours) = (
        position(Transport::T2Bus),
        position(Transport::Nats),
        position(Transport::ShmbusReqrep),
    );
    let names: Vec<&str> = transports.iter().map(|t| t.name()).collect();
    let mut summary = String::new();
    for (p, &len) in PAYLOADS.iter().enumerate() {
        let medians = report::latency_rows(&mut out, len, &names, &results[p], [t2, nats], 3);
        if let Some(ours) = ours {
            for (peer, name) in [(t2, "t2_bus"), (nats, "NATS")] {
                if let Some(peer) = peer {
                    let _ = writeln!(
                        summary,
                        "{:>6}: shmbus-reqrep / {name} at p50 = {:.0} / {:.0} ns = {:.4}× \
                         (target ≤ 0.05×: {})",
                        size_name(len),
                        medians[ours].0,
                        medians[peer].0,
                        medians[ours].0 / medians[peer].0,
                        if medians[ours].0 <= 0.05 * medians[peer].0 {
                            "met"
                        } else {
                            "NOT met"
                        }
                    );
                }
            }
        }
    }
    if !summary.is_empty() {
        out.push('\n');
        out.push_str(&summary);
    }
    out
}
