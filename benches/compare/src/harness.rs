//! What every transport shares: the payload work, the ping-pong, pinning and the child process.
//!
//! A transport is an [`Endpoint`]: send a message of `len` bytes, each set to one value, and wait
//! for the next message and read all of it. The parent times `send` + `recv` (one round trip)
//! with the child running [`echo`] on the other CPU; one-way latency is half the round trip.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Environment variable naming the child's transport; unset in the parent.
pub const ROLE_ENV: &str = "SHMBUS_COMPARE_ROLE";
/// Environment variable with the descriptor numbers the child inherited, comma-separated.
const FDS_ENV: &str = "SHMBUS_COMPARE_FDS";
/// Environment variable with a transport-specific argument (a bus address, a service name).
const ARG_ENV: &str = "SHMBUS_COMPARE_ARG";
/// Environment variable set in throughput mode: how many messages the child streams.
const STREAM_ENV: &str = "SHMBUS_COMPARE_STREAM";

/// Throughput mode in the parent: how many messages the child of the next case streams (0: a
/// ping-pong). A child learns it from its environment instead.
static STREAM: AtomicU64 = AtomicU64::new(0);

/// In the parent, before a case: the child streams `count` messages (0: ping-pong).
pub fn set_stream(count: u64) {
    STREAM.store(count, Ordering::Relaxed);
}

/// `Some(count)` in throughput mode (parent and child alike).
pub fn stream_count() -> Option<u64> {
    let count = match std::env::var(STREAM_ENV) {
        Ok(v) => v.parse().expect("a message count"),
        Err(_) => STREAM.load(Ordering::Relaxed),
    };
    (count > 0).then_some(count)
}

/// The parent runs on this CPU, the child on [`CHILD_CPU`].
pub const PARENT_CPU: usize = 0;
/// See [`PARENT_CPU`].
pub const CHILD_CPU: usize = 1;

/// One side of a ping-pong over some transport.
pub trait Endpoint {
    /// Sends a message of `len` bytes, writing `fill` into every one of them.
    fn send(&mut self, len: usize, fill: u8);
    /// Waits (busy-polling, unless the transport blocks) for the next message; returns its
    /// length and [`read_all`] of all its bytes.
    fn recv(&mut self) -> (usize, u64);
}

/// Reads every byte (the "fully read" part of the work), eight at a time — the same as the
/// shmbus benchmarks.
pub use shmbus::bench::read_all;

/// What [`read_all`] returns for `len` bytes that all hold `fill`.
pub fn expected_sum(len: usize, fill: u8) -> u64 {
    let word = u64::from(fill).wrapping_mul(0x0101_0101_0101_0101);
    word.wrapping_mul((len / 8) as u64)
        .wrapping_add(u64::from(fill) * (len % 8) as u64)
}

/// The byte the echo answers a message with: it depends on every byte it read.
pub fn reply_fill(received_sum: u64) -> u8 {
    received_sum as u8 ^ 0xa5
}

/// Pins the calling process to `cpu`; fails loudly, since unpinned numbers would mislead.
pub fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("CPU index within CpuSet");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e} (this benchmark needs 2 CPUs)"));
}

/// Starts this executable again as the child for `role`, inheriting `fds` (in order) and seeing
/// `arg`. The child pins itself, sets up its endpoint, sends one 1-byte "ready" message and
/// then echoes until it receives an empty message.
pub fn spawn_child(role: &str, fds: &[BorrowedFd<'_>], arg: &str) -> Child {
    // `dup` gives copies without close-on-exec, so the child inherits exactly these; they are
    // closed here again once it has started. No other thread of this process spawns processes,
    // so no other child can inherit them by accident.
    let inherited: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| nix::unistd::dup(fd).expect("dup a descriptor for the child"))
        .collect();
    let numbers: Vec<String> = inherited
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect();
    let mut command = Command::new(std::env::current_exe().expect("path of this executable"));
    command
        .env(ROLE_ENV, role)
        .env(FDS_ENV, numbers.join(","))
        .env(ARG_ENV, arg);
    if let Some(count) = stream_count() {
        command.env(STREAM_ENV, count.to_string());
    }
    command.spawn().expect("spawn the benchmark child")
}

/// In the child: takes ownership of the descriptors [`spawn_child`] passed.
pub fn inherited_fds() -> Vec<OwnedFd> {
    let list = std::env::var(FDS_ENV).unwrap_or_default();
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let raw: i32 = s.parse().expect("descriptor number");
            // SAFETY: the parent dup'ed this descriptor without close-on-exec for us alone and
            // named it in FDS_ENV; nothing else in this process owns it.
            unsafe { OwnedFd::from_raw_fd(raw) }
        })
        .collect()
}

/// In the child: the argument [`spawn_child`] passed.
pub fn child_arg() -> String {
    std::env::var(ARG_ENV).unwrap_or_default()
}

/// In the child, first thing: die with the parent, and move to the child's CPU.
pub fn child_prelude() {
    // If the parent is killed (e.g. by its watchdog alarm), a spinning child must not outlive it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).expect("PR_SET_PDEATHSIG");
    pin(CHILD_CPU);
}

/// The child's part, after its set-up: [`echo`], or in throughput mode [`flood`].
pub fn serve(endpoint: &mut impl Endpoint) {
    match stream_count() {
        Some(count) => flood(endpoint, count),
        None => echo(endpoint),
    }
}

/// The byte that fills message `i` of a stream (never 0, so a stale buffer does not pass).
pub fn stream_fill(i: u64) -> u8 {
    (i % 251) as u8 + 1
}

/// The streaming child: announce readiness with a 1-byte message, learn the payload length from
/// the parent's first message, send `count` messages of that length as fast as the transport
/// takes them, then wait for the parent's empty message.
fn flood(endpoint: &mut impl Endpoint, count: u64) {
    endpoint.send(1, 0);
    let (len, _) = endpoint.recv();
    for i in 0..count {
        endpoint.send(len, stream_fill(i));
    }
    while endpoint.recv().0 != 0 {}
}

/// The parent's side of one throughput case: waits for the child's "ready", asks for `count`
/// messages of `len` bytes, reads and checks every one, and stops the child. Returns messages per
/// second, timed from the first message received to the last.
pub fn stream(endpoint: &mut impl Endpoint, mut child: Child, len: usize, count: u64) -> f64 {
    assert!(len > 0, "a stream's messages are not empty");
    let (ready, _) = endpoint.recv();
    assert_eq!(ready, 1, "the child's first message is its 1-byte ready");
    endpoint.send(len, 1);
    let mut start = Instant::now();
    for i in 0..count {
        let (got, total) = endpoint.recv();
        if i == 0 {
            start = Instant::now();
        }
        let want = expected_sum(len, stream_fill(i));
        assert!(
            got == len && total == want,
            "message {i}: expected {len} bytes summing to {want}, got {got} bytes summing to {total}"
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    endpoint.send(0, 0);
    let status = child.wait().expect("wait for the benchmark child");
    assert!(status.success(), "benchmark child failed: {status}");
    (count - 1) as f64 / elapsed.max(1e-9)
}

/// The child's loop: announce readiness, then answer every message with one of the same length
/// whose bytes depend on all it read, until an empty message arrives.
fn echo(endpoint: &mut impl Endpoint) {
    endpoint.send(1, 0);
    loop {
        let (len, total) = endpoint.recv();
        if len == 0 {
            return;
        }
        endpoint.send(len, reply_fill(total));
    }
}

/// The parent's side of one case: waits for the child's "ready", runs `warmup` untimed and then
/// `rounds` timed round trips of `len` bytes, checking every reply, and stops the child.
/// Returns the round-trip times in nanoseconds.
pub fn ping_pong(
    endpoint: &mut impl Endpoint,
    mut child: Child,
    len: usize,
    warmup: usize,
    rounds: usize,
) -> Histogram<u64> {
    let (ready, _) = endpoint.recv();
    assert_eq!(ready, 1, "the child's first message is its 1-byte ready");
    // 1 ns to 60 s, three significant digits.
    let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for i in 0..warmup + rounds {
        let fill = (i % 251) as u8 + 1;
        let start = Instant::now();
        endpoint.send(len, fill);
        let (got, total) = endpoint.recv();
        let elapsed = start.elapsed();
        let want = expected_sum(len, reply_fill(expected_sum(len, fill)));
        assert!(
            got == len && total == want,
            "round {i}: sent {len} bytes of {fill}, got back {got} bytes summing to {total}, not {want}"
        );
        if i >= warmup {
            rtt.saturating_record(elapsed.as_nanos() as u64);
        }
    }
    endpoint.send(0, 0);
    let status = child.wait().expect("wait for the benchmark child");
    assert!(status.success(), "benchmark child failed: {status}");
    rtt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_sum_matches_read_all() {
        for len in [0, 1, 7, 8, 9, 64, 1000, 4096] {
            for fill in [0u8, 1, 0x7f, 0xff] {
                assert_eq!(
                    read_all(&vec![fill; len]),
                    expected_sum(len, fill),
                    "{len} x {fill}"
                );
            }
        }
    }
}
