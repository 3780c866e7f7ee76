//! One-way latency of shmbus beside iceoryx2, Unix domain sockets and TCP, all measured by one
//! method.
//!
//! Every case is a ping-pong between this process (pinned to CPU 0) and a copy of it started as
//! the child (pinned to CPU 1), both busy-polling except `uds-block` and `tcp`. The sender
//! writes every payload byte, the receiver reads every byte. Round trips go into an HDR
//! histogram; one-way latency is half a round trip. Each case runs several times, interleaved
//! with the others so that noise from the shared machine spreads over all of them, and the table
//! shows the median across runs of each run's p50 and p99. See README.md.
//!
//! ```text
//! cargo run --release [-- [--runs N] [--quick] [TRANSPORT...]]
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod bus;
mod floor;
mod harness;
mod iox;
mod ring;
mod tcp;
mod uds;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::resource::{UsageWho, getrusage};

/// The transports, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Floor,
    ShmbusRing,
    ShmbusBus,
    Iceoryx2,
    UdsSpin,
    UdsBlock,
    Tcp,
}

impl Transport {
    const ALL: [Transport; 7] = [
        Transport::Floor,
        Transport::ShmbusRing,
        Transport::ShmbusBus,
        Transport::Iceoryx2,
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
            Transport::UdsSpin => "uds-spin",
            Transport::UdsBlock => "uds-block",
            Transport::Tcp => "tcp",
        }
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
            Transport::UdsSpin => ping_pong!(uds::parent(true)),
            Transport::UdsBlock => ping_pong!(uds::parent(false)),
            Transport::Tcp => ping_pong!(tcp::parent()),
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

/// At least this many untimed round trips first. A fresh shmbus ring takes page faults on its
/// first lap (writer and reader each fault every page in), and a 1 MiB ring holds 16,384 frames
/// of 8 bytes: the timed round trips should see the steady state, for every transport alike.
const WARMUP_MIN: usize = 20_000;

/// A case that takes longer than this is stuck (a lost message): the alarm ends the process and,
/// through its parent-death signal, the child.
const CASE_LIMIT: Duration = Duration::from_secs(120);

struct Options {
    runs: usize,
    /// Divides the round trips by 10, for a quick look.
    quick: bool,
    transports: Vec<Transport>,
}

fn parse_args() -> Options {
    let mut options = Options {
        runs: 5,
        quick: false,
        transports: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                options.runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage("--runs takes a positive number"));
            }
            "--quick" => options.quick = true,
            "-h" | "--help" => usage(""),
            name => match Transport::ALL.iter().find(|t| t.name() == name) {
                Some(&t) => options.transports.push(t),
                None => usage(&format!("unknown transport {name:?}")),
            },
        }
    }
    if options.transports.is_empty() {
        options.transports = Transport::ALL.to_vec();
    }
    options
}

fn usage(error: &str) -> ! {
    let names: Vec<_> = Transport::ALL.iter().map(|t| t.name()).collect();
    eprintln!(
        "usage: shmbus-compare [--runs N] [--quick] [TRANSPORT...]\ntransports: {}",
        names.join(" ")
    );
    if error.is_empty() {
        std::process::exit(0);
    }
    eprintln!("error: {error}");
    std::process::exit(2);
}

fn main() {
    if let Ok(role) = std::env::var(harness::ROLE_ENV) {
        harness::child_prelude();
        match role.as_str() {
            "floor" => floor::child(),
            "shmbus-ring" => ring::child(),
            "shmbus-bus" => bus::child(),
            "iceoryx2" => iox::child(),
            "uds-spin" | "uds-block" => uds::child(),
            "tcp" => tcp::child(),
            other => panic!("unknown role {other:?}"),
        }
        return;
    }
    let options = parse_args();
    harness::pin(harness::PARENT_CPU);

    let load_before = loadavg();
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    // results[payload][transport]: (p50, p99) one-way ns of each run.
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
    let elapsed = started.elapsed().as_secs_f64();
    let load_after = loadavg();
    let cpu = CpuTimes::now().since(&cpu_before);

    println!("{}", machine());
    println!(
        "{} runs in {elapsed:.0} s; load average (1/5/15 min) before: {load_before}, after: \
         {load_after} (this benchmark alone adds about 2)",
        options.runs,
    );
    println!(
        "during the run, other processes kept {:.2} CPUs busy on average; hypervisor steal: {:.2} CPUs\n",
        (cpu.busy - cpu.own) / elapsed,
        cpu.steal / elapsed
    );
    print!("{}", table(&options.transports, &results));
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
    for (p, &(len, _)) in PAYLOADS.iter().enumerate() {
        let medians: Vec<(f64, f64)> = results[p]
            .iter()
            .map(|runs| {
                (
                    median(runs.iter().map(|r| r.0)),
                    median(runs.iter().map(|r| r.1)),
                )
            })
            .collect();
        let ratio = |value: f64, base: Option<usize>, pick: fn(&(f64, f64)) -> f64| match base {
            Some(b) => format!("{:.2}×", value / pick(&medians[b])),
            None => "–".to_string(),
        };
        let (iox, floor) = (position(Transport::Iceoryx2), position(Transport::Floor));
        for (t, &transport) in transports.iter().enumerate() {
            let (p50, p99) = medians[t];
            let lo = results[p][t]
                .iter()
                .map(|r| r.0)
                .fold(f64::INFINITY, f64::min);
            let hi = results[p][t].iter().map(|r| r.0).fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0}–{:.0} |",
                size_name(len),
                transport.name(),
                p50,
                p99,
                ratio(p50, iox, |m| m.0),
                ratio(p99, iox, |m| m.1),
                ratio(p50, floor, |m| m.0),
                ratio(p99, floor, |m| m.1),
                lo,
                hi
            );
        }
    }
    out
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn size_name(len: usize) -> String {
    if len >= 1024 {
        format!("{} KiB", len / 1024)
    } else {
        format!("{len} B")
    }
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU seconds, machine-wide from /proc/stat and this process's own (with its children).
struct CpuTimes {
    /// Every CPU's busy time (all but idle, iowait and steal).
    busy: f64,
    /// Time the hypervisor ran something else while a CPU of ours wanted to run.
    steal: f64,
    /// This process and its waited-for children, user and system.
    own: f64,
}

impl CpuTimes {
    fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().unwrap_or(0.0))
            .collect();
        let tick = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let busy = (tick(0) + tick(1) + tick(2) + tick(5) + tick(6)) / hz;
        let own = [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
            .into_iter()
            .filter_map(|who| getrusage(who).ok())
            .map(|u| seconds(u.user_time()) + seconds(u.system_time()))
            .sum();
        CpuTimes {
            busy,
            steal: tick(7) / hz,
            own,
        }
    }

    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy: self.busy - earlier.busy,
            steal: self.steal - earlier.steal,
            own: self.own - earlier.own,
        }
    }
}

fn seconds(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// CPU model, CPU count and whether a hypervisor is reported, from /proc/cpuinfo.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    let vm = info
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    format!(
        "{model}, {cpus} CPUs{}; parent on CPU {}, child on CPU {}",
        if vm { ", virtual machine" } else { "" },
        harness::PARENT_CPU,
        harness::CHILD_CPU
    )
}
