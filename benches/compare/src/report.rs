//! What the benchmarks print besides their tables: medians, payload names, the machine and how
//! busy it was. Shared by `shmbus-compare` (one-way latency) and `reqrep` (request/response).

use nix::sys::resource::{UsageWho, getrusage};

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

pub fn size_name(len: usize) -> String {
    if len >= 1024 {
        format!("{} KiB", len / 1024)
    } else {
        format!("{len} B")
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
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
