//! One-way latency of shmbus beside iceoryx2, crossbar, Unix domain sockets and TCP, all measured
//! by one method.
//!
//! Every case is a ping-pong between this process (pinned to CPU 0) and a copy of it started as
//! the child (pinned to CPU 1), both busy-polling except `uds-block` and `tcp`. The sender
//! writes every payload byte, the receiver reads every byte. Round trips go into an HDR
//! histogram; one-way latency is half a round trip. Each case runs several times, interleaved
//! with the others so that noise from the shared machine spreads over all of them, and the table
//! shows the median across runs of each run's p50 and p99. See README.md.
//!
//! With `--throughput`, each case is a stream instead: the child sends a fixed number of
//! messages as fast as the transport takes them (with flow control: the floor and crossbar get a
//! credit window, iceoryx2 its backpressure) and the parent reads and checks every one; the table
//! gives messages per second.
//!
//! ```text
//! cargo run --release [-- [--throughput] [--runs N] [--quick] [TRANSPORT...]]
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod bus;
mod credit;
mod floor;
mod floor_stream;
mod harness;
mod iox;
mod options;
mod report;
mod ring;
mod tcp;
mod uds;
mod xbar;

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use report::{Meter, machine, median, size_name};

/// The transports, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Floor,
    ShmbusRing,
    ShmbusBus,
    Iceoryx2,
    Crossbar,
    UdsSpin,
    UdsBlock,
    Tcp,
}

impl Transport {
    const ALL: [Transport; 8] = [
        Transport::Floor,
        Transport::ShmbusRing,
        Transport::ShmbusBus,
        Transport::Iceoryx2,
        Transport::Crossbar,
        Transport::UdsSpin,
        Transport::UdsBlock,
        Transport::Tcp,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::Floor => "floor",
            Transport::ShmbusRing => "shmbus-ring",
            Transport::ShmbusBus => "shmbus-bus",
            Transport::Iceoryx2 => "iceoryx2",
            Transport::Crossbar => "crossbar",
            Transport::UdsSpin => "uds-spin",
            Transport::UdsBlock => "uds-block",
            Transport::Tcp => "tcp",
        }
    }

    /// One run of this transport at `len` bytes: messages per second of a stream of `count`.
    fn stream(self, len: usize, count: u64) -> f64 {
        harness::set_stream(count);
        macro_rules! stream {
            ($parent:expr) => {{
                let (mut end, child) = $parent;
                harness::stream(&mut end, child, len, count)
            }};
        }
        let rate = match self {
            Transport::Floor => stream!(floor_stream::parent(len)),
            Transport::ShmbusRing => stream!(ring::parent()),
            Transport::ShmbusBus => stream!(bus::parent()),
            Transport::Iceoryx2 => stream!(iox::parent(len)),
            Transport::Crossbar => stream!(xbar::parent(len)),
            Transport::UdsSpin => stream!(uds::parent(true)),
            Transport::UdsBlock => stream!(uds::parent(false)),
            Transport::Tcp => stream!(tcp::parent(false)),
        };
        harness::set_stream(0);
        rate
    }

    /// One run of this transport at `len` bytes: round-trip times in ns.
    fn measure(self, len: usize, warmup: usize, rounds: usize) -> Histogram<u64> {
        macro_rules! ping_pong {
            ($parent:expr) => {{
                let (mut end, child) = $parent;
                harness::ping_pong(&mut end, child, len, warmup, rounds)
            }};
        }
        match self {
            Transport::Floor => ping_pong!(floor::parent()),
            Transport::ShmbusRing => ping_pong!(ring::parent()),
            Transport::ShmbusBus => ping_pong!(bus::parent()),
            Transport::Iceoryx2 => ping_pong!(iox::parent(len)),
            Transport::Crossbar => ping_pong!(xbar::parent(len)),
            Transport::UdsSpin => ping_pong!(uds::parent(true)),
            Transport::UdsBlock => ping_pong!(uds::parent(false)),
            Transport::Tcp => ping_pong!(tcp::parent(false)),
        }
    }
}

/// Payload sizes and the timed round trips per run for each (fewer for large payloads, whose
/// round trips take longer, so that the whole benchmark stays within about five to ten minutes).
const PAYLOADS: [(usize, usize); 5] = [
    (8, 200_000),
    (64, 200_000),
    (1024, 100_000),
    (4096, 50_000),
    (65536, 20_000),
];

/// Payload sizes and the messages per stream in throughput mode.
const STREAMS: [(usize, u64); 5] = [
    (8, 4_000_000),
    (64, 4_000_000),
    (1024, 1_000_000),
    (4096, 400_000),
    (65536, 40_000),
];

/// At least this many untimed round trips first. A fresh shmbus ring takes page faults on its
/// first lap (writer and reader each fault every page in), and a 1 MiB ring holds 8,192 frames
/// of 8 bytes: the timed round trips should see the steady state, for every transport alike.
const WARMUP_MIN: usize = 20_000;

/// A case that takes longer than this is stuck (a lost message): the alarm ends the process and,
/// through its parent-death signal, the child.
const CASE_LIMIT: Duration = Duration::from_secs(120);

/// One-way latency of shmbus beside iceoryx2, crossbar, Unix sockets and TCP, by one method (or,
/// with `--throughput`, streams).
#[derive(clap::Parser)]
#[command(name = "shmbus-compare")]
struct Cli {
    #[command(flatten)]
    common: options::Common,
    /// Streams (messages per second) instead of ping-pongs.
    #[arg(long)]
    throughput: bool,
}

struct Options {
    runs: usize,
    /// Streams (messages per second) instead of ping-pongs.
    throughput: bool,
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
        throughput: cli.throughput,
        quick: cli.common.quick,
        transports: options::select(&Transport::ALL, |t| t.name(), &cli.common.transports),
    }
}

fn main() {
    if let Ok(role) = std::env::var(harness::ROLE_ENV) {
        harness::child_prelude();
        match role.as_str() {
            "floor" => floor::child(),
            "floor-stream" => floor_stream::child(),
            "shmbus-ring" => ring::child(),
            "shmbus-bus" => bus::child(),
            "iceoryx2" => iox::child(),
            "crossbar" => xbar::child(),
            "uds-spin" | "uds-block" => uds::child(),
            "tcp" => tcp::child(),
            other => panic!("unknown role {other:?}"),
        }
        return;
    }
    let options = parse_args();
    harness::pin(harness::PARENT_CPU);

    let meter = Meter::start();
    let table = if options.throughput {
        throughput_table(&options.transports, &streams(&options))
    } else {
        table(&options.transports, &ping_pongs(&options))
    };
    let load = meter.stop();

    println!("{}", machine());
    load.print(options.runs, "about 2", 0.0);
    print!("{table}");
}

/// Every run of every stream: `[payload][transport]` → messages per second of each run.
fn streams(options: &Options) -> Vec<Vec<Vec<f64>>> {
    let mut results = vec![vec![Vec::new(); options.transports.len()]; STREAMS.len()];
    for run in 0..options.runs {
        for (p, &(len, count)) in STREAMS.iter().enumerate() {
            let count = if options.quick { count / 10 } else { count };
            for (t, &transport) in options.transports.iter().enumerate() {
                nix::unistd::alarm::set(CASE_LIMIT.as_secs() as u32);
                let rate = transport.stream(len, count);
                nix::unistd::alarm::cancel();
                eprintln!(
                    "run {}/{}  {:>9}  {:<12} {:>8.2} M msg/s  {:>8.0} MB/s  ({count} messages)",
                    run + 1,
                    options.runs,
                    size_name(len),
                    transport.name(),
                    rate / 1e6,
                    rate * len as f64 / 1e6,
                );
                results[p][t].push(rate);
            }
        }
    }
    results
}

/// Every run of every ping-pong: `[payload][transport]` → (p50, p99) one-way ns of each run.
fn ping_pongs(options: &Options) -> Vec<Vec<Vec<(f64, f64)>>> {
    let mut results = vec![vec![Vec::new(); options.transports.len()]; PAYLOADS.len()];
    for run in 0..options.runs {
        for (p, &(len, rounds)) in PAYLOADS.iter().enumerate() {
            let rounds = if options.quick { rounds / 10 } else { rounds };
            let warmup = (rounds / 10).max(WARMUP_MIN);
            for (t, &transport) in options.transports.iter().enumerate() {
                nix::unistd::alarm::set(CASE_LIMIT.as_secs() as u32);
                let rtt = transport.measure(len, warmup, rounds);
                nix::unistd::alarm::cancel();
                let p50 = rtt.value_at_quantile(0.50) as f64 / 2.0;
                let p99 = rtt.value_at_quantile(0.99) as f64 / 2.0;
                eprintln!(
                    "run {}/{}  {:>9}  {:<12} p50 {:>9.0} ns  p99 {:>9.0} ns  ({rounds} round trips)",
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
    results
}

/// The stream results as a Markdown table: medians across runs, ratios to the floor and to
/// shmbus-bus (the median of the runs' ratios: runs are side by side, so each ratio compares one
/// moment of the machine), and the spread of the runs.
fn throughput_table(transports: &[Transport], results: &[Vec<Vec<f64>>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | transport | M msg/s | MB/s | vs floor | shmbus-bus vs this, per run | \
         M msg/s of runs, min–max |\n",
    );
    out.push_str("|---:|:---|---:|---:|---:|---:|---:|\n");
    let position = |wanted| transports.iter().position(|&t| t == wanted);
    let (floor, bus) = (position(Transport::Floor), position(Transport::ShmbusBus));
    for (p, &(len, _)) in STREAMS.iter().enumerate() {
        let runs = &results[p];
        let per_run_ratio = |a: usize, b: usize| {
            let ratios = runs[a].iter().zip(&runs[b]).map(|(x, y)| x / y);
            format!("{:.2}×", median(ratios))
        };
        for (t, &transport) in transports.iter().enumerate() {
            let rate = median(runs[t].iter().copied());
            let lo = runs[t].iter().copied().fold(f64::INFINITY, f64::min);
            let hi = runs[t].iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2}–{:.2} |",
                size_name(len),
                transport.name(),
                rate / 1e6,
                rate * len as f64 / 1e6,
                floor.map_or("–".into(), |f| format!(
                    "{:.2}×",
                    rate / median(runs[f].iter().copied())
                )),
                bus.map_or("–".into(), |b| per_run_ratio(b, t)),
                lo / 1e6,
                hi / 1e6,
            );
        }
    }
    out
}

/// The results as a Markdown table: medians across runs, ratios to iceoryx2 and to the floor
/// at the same payload, and the spread of the runs' p50.
fn table(transports: &[Transport], results: &[Vec<Vec<(f64, f64)>>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | transport | p50 ns | p99 ns | p50 vs iceoryx2 | p99 vs iceoryx2 \
         | p50 vs floor | p99 vs floor | p50 of runs, min–max |\n",
    );
    out.push_str("|---:|:---|---:|---:|---:|---:|---:|---:|---:|\n");
    let position = |wanted| transports.iter().position(|&t| t == wanted);
    let bases = [position(Transport::Iceoryx2), position(Transport::Floor)];
    let names: Vec<&str> = transports.iter().map(|t| t.name()).collect();
    for (p, &(len, _)) in PAYLOADS.iter().enumerate() {
        report::latency_rows(&mut out, len, &names, &results[p], bases, 2);
    }
    out
}
