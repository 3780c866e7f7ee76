//! What the benchmarks print besides their tables: medians, payload names, the machine and how
//! busy it was. Shared by `shmbus-compare` (one-way latency) and `reqrep` (request/response).

use nix::sys::resource::{UsageWho, getrusage};
use std::time::Instant;

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Writes the Markdown rows of a latency table for one payload (`len` bytes): for each
/// transport, named by `names`, the medians across runs of its p50 and p99 (`runs[t]` holds
/// transport `t`'s (p50, p99) of every run), their ratios to the transports at `bases` (each
/// p50 and p99, `–` when that transport was not measured) with `digits` decimals, and the range
/// of its runs' p50. Returns the medians.
pub fn latency_rows(
    out: &mut String,
    len: usize,
    names: &[&str],
    runs: &[Vec<(f64, f64)>],
    bases: [Option<usize>; 2],
    digits: usize,
) -> Vec<(f64, f64)> {
    use std::fmt::Write;
    let medians: Vec<(f64, f64)> = runs
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|r| r.0)),
                median(runs.iter().map(|r| r.1)),
            )
        })
        .collect();
    let ratio = |value: f64, base: Option<usize>, pick: fn(&(f64, f64)) -> f64| match base {
        Some(b) => format!("{:.digits$}×", value / pick(&medians[b])),
        None => "–".to_string(),
    };
    for (t, name) in names.iter().enumerate() {
        let (p50, p99) = medians[t];
        let lo = runs[t].iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let hi = runs[t].iter().map(|r| r.0).fold(0.0, f64::max);
        let _ = write!(out, "| {} | {name} | {p50:.0} | {p99:.0} |", size_name(len));
        for base in bases {
            let _ = write!(
                out,
                " {} | {} |",
                ratio(p50, base, |m| m.0),
                ratio(p99, base, |m| m.1)
            );
        }
        let _ = writeln!(out, " {lo:.0}–{hi:.0} |");
    }
    medians
}

pub fn size_name(len: usize) -> String {
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

/// The load average, the CPU times and the time at the start of a benchmark run.
pub struct Meter {
    load: String,
    cpu: CpuTimes,
    started: Instant,
}

/// How long a benchmark run took and how busy the machine was meanwhile.
pub struct Load {
    elapsed: f64,
    before: String,
    after: String,
    cpu: CpuTimes,
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            load: loadavg(),
            cpu: CpuTimes::now(),
            started: Instant::now(),
        }
    }

    /// The run is over.
    pub fn stop(self) -> Load {
        Load {
            elapsed: self.started.elapsed().as_secs_f64(),
            before: self.load,
            after: loadavg(),
            cpu: CpuTimes::now().since(&self.cpu),
        }
    }
}

impl Load {
    /// Prints how long `runs` runs took, the load average before and after (of which this
    /// benchmark adds `own_load`), and how busy other processes kept the machine meanwhile
    /// (less `helpers` CPU seconds of this benchmark's own not yet counted in its own time,
    /// such as nats-server's).
    pub fn print(&self, runs: usize, own_load: &str, helpers: f64) {
        let Load {
            elapsed,
            before,
            after,
            cpu,
        } = self;
        println!(
            "{runs} runs in {elapsed:.0} s; load average (1/5/15 min) before: {before}, after: \
             {after} (this benchmark alone adds {own_load})"
        );
        println!(
            "during the run, other processes kept {:.2} CPUs busy on average; hypervisor steal: {:.2} CPUs\n",
            (cpu.busy - cpu.own - helpers) / elapsed,
            cpu.steal / elapsed
        );
    }
}

/// CPU seconds, machine-wide from /proc/stat and this process's own (with its children).
pub struct CpuTimes {
    /// Every CPU's busy time (all but idle, iowait and steal).
    pub busy: f64,
    /// Time the hypervisor ran something else while a CPU of ours wanted to run.
    pub steal: f64,
    /// This process and its waited-for children, user and system.
    pub own: f64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
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

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
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
pub fn machine() -> String {
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
        crate::harness::PARENT_CPU,
        crate::harness::CHILD_CPU
    )
}
