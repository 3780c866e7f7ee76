//! What the request/response and remote benchmarks need for the processes they start besides
//! the echo child (brokers, servers, responders): a readiness pipe, unpinning, a current-thread
//! Tokio runtime for async clients, and the CPU time of a process not yet waited for.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::harness;

/// A pipe over which a process started by this one says it is ready: the read end (for the
/// parent) and the write end (to hand to the child with [`harness::spawn_child`]). Both ends
/// are close-on-exec; `spawn_child` gives the child a copy without.
pub fn ready_pipe() -> (File, OwnedFd) {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    (File::from(read), write)
}

/// In the parent: waits for the byte [`say_ready`] writes. Drop the write end first, so that a
/// child that dies before it is ready ends the wait.
pub fn wait_ready(mut pipe: File, who: &str) {
    let mut byte = [0u8; 1];
    pipe.read_exact(&mut byte)
        .unwrap_or_else(|e| panic!("{who} ended before it was ready ({e})"));
}

/// In a child: says it is ready on the pipe it inherited.
pub fn say_ready() {
    let fd = harness::inherited_fds().pop().expect("the ready pipe");
    File::from(fd)
        .write_all(b"r")
        .expect("write to the ready pipe");
}

/// A current-thread Tokio runtime with I/O and timers: the clients of t2_bus and NATS run on
/// one, in the parent and in the child, so each process has one thread that does everything.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// Lets the calling process (a broker) run on every CPU again: it inherited the parent's
/// pinning to CPU 0. Also dies with the parent.
pub fn unpin_and_follow_parent() {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).expect("PR_SET_PDEATHSIG");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all_cpus())
        .expect("allow every CPU");
}

/// Every online CPU.
pub fn all_cpus() -> nix::sched::CpuSet {
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(2) as usize;
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..online.min(nix::sched::CpuSet::count()) {
        set.set(cpu).expect("CPU index within CpuSet");
    }
    set
}

/// User + system CPU seconds of process `pid` so far, from /proc/PID/stat: for a process of
/// this benchmark not yet waited for (so not in `getrusage(RUSAGE_CHILDREN)`).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// A loopback port the kernel just had free, for a server to bind a moment later.
pub fn free_loopback_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts connections on loopback port `port`.
pub fn wait_listening(port: u16, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{who} does not accept connections on port {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
