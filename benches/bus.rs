//! The bus measured through its public client API, across processes, beside its baselines.
//!
//! Groups (each benchmark starts its child processes once, outside the timed loop):
//!
//! * `latency`: one-way latency (round trip / 2) of a ping-pong with an echo process, payload
//!   fully written and fully read, busy-polling — 8 B to 64 KiB, plus 8 B with spin-then-park —
//!   beside the floor (one cache line between two processes, and its 4 KiB variant), Unix domain
//!   socket ping-pong (blocking, and non-blocking spinning) and TCP loopback.
//! * `throughput`: messages and bytes per second, one publisher process and four, to this one.
//! * `fanout`: a broadcast round trip — publish, then wait for an acknowledgement from every one
//!   of 1, 4 or 16 subscriber processes (which park between messages: sixteen busy-polling
//!   processes on a small machine would measure the scheduler). `shmbus bench fanout` measures
//!   the one-way latency to the last subscriber.
//! * `typed`: the latency ping-pong with an rkyv struct (a string and a vector) serialized in
//!   place and validated on receipt, against raw bytes of the same size.
//! * `wakeup`: the ping-pong with both sides parking on futexes, against a raw futex ping-pong.
//! * `reqrep`: request/response **round trips** (not halved) to a server process, 8 B and 4 KiB
//!   each way, busy-polling, beside the pub/sub ping-pong round trip through the same API and the
//!   floor's round trip; and requests per second from 1 and 4 requester threads.
//! * `state`: state collections. `put_to_event`: the one-way latency (round trip / 2) of a
//!   ping-pong through two collections — this process puts an 8 B value, an echo process (this
//!   binary again) watching that collection puts it back into another one, which this process
//!   watches; both watchers busy-poll — beside the pub/sub ping-pong of the `latency` group
//!   (`pubsub_one_way`, same run). `new_watcher_sync`: how long a new watcher takes to
//!   synchronize a collection of 100 000 entries of 100 B (from its creation to `Synchronized`,
//!   every value read).
//! * `remote`: **round trips** (not halved) of this process as a remote client — over TCP, and
//!   over TLS — through a broker's gateway to a local echo process and back, 8 B and 4 KiB, beside
//!   a raw TCP ping-pong over loopback between two processes, blocking (the echo of the `latency`
//!   group's `tcp_loopback`) and busy-polling non-blocking sockets, in the same run; and request
//!   round trips from this remote client to a local server process, through the gateway.
//!
//! The parent runs on CPU 0, children on CPU 1. `cargo test --benches` runs each once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use shmbus::bench::{self, ACK, DATA, PING, PONG, Telemetry};
use shmbus::{Bus, StateEvent, WaitStrategy};

#[path = "../shm/benches/support/floor.rs"]
mod floor;
#[path = "../shm/tests/support/spawn.rs"]
mod spawn;

fn main() {
    if let Ok(role) = std::env::var("SHMBUS_BENCH_BASELINE") {
        bench::pin(1);
        baseline_child(&role);
        return;
    }
    bench::pin(0);
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    latency(&mut c);
    throughput(&mut c);
    fanout(&mut c);
    typed(&mut c);
    wakeup(&mut c);
    reqrep(&mut c);
    state(&mut c);
    remote(&mut c);
    topics(&mut c);
    c.final_summary();
}

/// `shmbus bench-role` processes, killed when dropped.
fn roles() -> bench::Roles {
    bench::Roles::new(env!("CARGO_BIN_EXE_shmbus"))
}

/// Starts `shmbus bench-role ROLE --bus ADDR ARGS` and waits until it is attached.
fn role(roles: &mut bench::Roles, bus: &Bus, role: &str, args: &[&str]) {
    roles
        .start(role, &bus.address().to_string(), args)
        .expect("start a benchmark role");
}

/// Starts this benchmark binary again as the baseline child `role`, handing it `fds`.
fn baseline(role: &str, fds: &[std::os::fd::BorrowedFd<'_>], arg: usize) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    let _keep = spawn::pass_fds(&mut cmd, fds);
    cmd.env("SHMBUS_BENCH_BASELINE", role)
        .env("SHMBUS_BENCH_ARG", arg.to_string());
    cmd.spawn().expect("start a baseline child")
}

fn baseline_arg() -> usize {
    std::env::var("SHMBUS_BENCH_ARG").unwrap().parse().unwrap()
}

fn baseline_child(role: &str) {
    if role == "state-echo" {
        state_echo(&std::env::var("SHMBUS_BENCH_BUS").unwrap());
        return;
    }
    let fds = spawn::inherited_fds(1);
    let fd = fds.into_iter().next().unwrap();
    match role {
        "floor" => floor::Floor::open(fd).echo(baseline_arg() != 0),
        "uds" => echo_stream(UnixStream::from(fd), baseline_arg(), false),
        "uds-spin" => {
            let s = UnixStream::from(fd);
            s.set_nonblocking(true).unwrap();
            echo_stream(s, baseline_arg(), true);
        }
        "tcp" => echo_stream(TcpStream::from(fd), baseline_arg(), false),
        "tcp-spin" => {
            let s = TcpStream::from(fd);
            s.set_nonblocking(true).unwrap();
            echo_stream(s, baseline_arg(), true);
        }
        "futex" => futex_echo(&SharedWord::open(fd)),
        other => panic!("unknown baseline {other}"),
    }
}

/// Reads exactly `buf.len()` bytes, spinning on `WouldBlock` when `spin`. False at end of stream.
fn read_full(s: &mut impl Read, buf: &mut [u8], spin: bool) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if spin && e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("read: {e}"),
        }
    }
    true
}

fn write_full(s: &mut impl Write, buf: &[u8], spin: bool) {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) if spin && e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// The socket baselines' echo: reads a message of `size` bytes, answers with `size` bytes.
fn echo_stream(mut s: impl Read + Write, size: usize, spin: bool) {
    let mut buf = vec![0u8; size];
    while read_full(&mut s, &mut buf, spin) {
        let reply = floor::read_all(&buf) as u8;
        buf.fill(reply);
        write_full(&mut s, &buf, spin);
    }
}

/// One socket round trip: write every byte, read every byte back.
fn stream_round_trip(s: &mut (impl Read + Write), buf: &mut [u8], n: u8, spin: bool) {
    buf.fill(n);
    write_full(s, buf, spin);
    assert!(read_full(s, buf, spin));
    std::hint::black_box(floor::read_all(buf));
}

/// Benchmarks round trips of `size` bytes over `mine` (to an echo child), each time divided by
/// `divisor` (2: one-way), then closes `mine` so the child ends.
fn bench_stream<S: Read + Write>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    mut mine: S,
    size: usize,
    spin: bool,
    divisor: u32,
) {
    let mut buf = vec![0u8; size];
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                stream_round_trip(&mut mine, &mut buf, i as u8, spin);
            }
            start.elapsed() / divisor
        })
    });
}

/// A TCP connection over loopback, both ends with `TCP_NODELAY`.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mine = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (theirs, _) = listener.accept().unwrap();
    mine.set_nodelay(true).unwrap();
    theirs.set_nodelay(true).unwrap();
    (mine, theirs)
}

/// A process-shared futex word pair for the raw futex ping-pong.
struct SharedWord {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
}

impl SharedWord {
    fn create() -> SharedWord {
        let fd =
            nix::sys::memfd::memfd_create("shmbus-futex", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        SharedWord::open(fd)
    }

    fn open(fd: OwnedFd) -> SharedWord {
        let map = memmap2::MmapOptions::new().len(4096).map_raw(&fd).unwrap();
        SharedWord { map, fd }
    }

    /// Word 0 carries pings, word 16 (another cache line) pongs.
    fn word(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the mapping is 4096 bytes, page-aligned, and outlives the reference; words
        // 0 and 16 are aligned u32s accessed only atomically (and by futex).
        unsafe { &*self.map.as_mut_ptr().cast::<AtomicU32>().add(i * 16) }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a valid aligned u32 in a shared mapping; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            0usize,
            0usize,
            0u32,
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            1,
            0usize,
            0usize,
            0u32,
        )
    };
}

/// Sleeps on `word` until it differs from `seen`; returns the new value.
fn futex_await(word: &AtomicU32, seen: u32) -> u32 {
    loop {
        let v = word.load(Ordering::Acquire);
        if v != seen {
            return v;
        }
        futex_wait(word, seen);
    }
}

fn futex_echo(w: &SharedWord) {
    let mut seen = 0;
    loop {
        seen = futex_await(w.word(0), seen);
        if seen == u32::MAX {
            return;
        }
        w.word(1).store(seen, Ordering::Release);
        futex_wake(w.word(1));
    }
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1024 => format!("{}KiB", s / 1024),
        s => format!("{s}B"),
    }
}

/// The shmbus ping-pong against an echo process waiting with `wait`, for each of `sizes`.
fn bus_ping_pong(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    wait: WaitStrategy,
    wait_arg: &str,
    sizes: &[usize],
) {
    let bus = Bus::embedded().unwrap();
    let mut children = roles();
    let mut pongs = bench::subscriber(&bus, PONG, wait).unwrap();
    let mut pings = bench::publisher(&bus, PING, wait).unwrap();
    role(&mut children, &bus, "echo", &["--wait", wait_arg]);
    for &size in sizes {
        group.bench_function(BenchmarkId::new(name, size_name(size)), |b| {
            b.iter_custom(|iters| {
                bench::ping_pong(&mut pings, &mut pongs, size, iters, |_| {}).unwrap() / 2
            })
        });
    }
    pings.publish(&[]).unwrap();
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");

    for (name, payload) in [("floor", false), ("floor_4KiB", true)] {
        let mut floor = floor::Floor::create();
        let mut child = baseline("floor", &[floor.fd()], usize::from(payload));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    floor.round_trip(payload);
                }
                start.elapsed() / 2
            })
        });
        floor.stop();
        child.wait().unwrap();
    }

    for size in [8usize, 4096] {
        for (name, spin) in [("uds_blocking", false), ("uds_spinning", true)] {
            let (mine, theirs) = UnixStream::pair().unwrap();
            let mut child = baseline(
                if spin { "uds-spin" } else { "uds" },
                &[theirs.as_fd()],
                size,
            );
            drop(theirs);
            mine.set_nonblocking(spin).unwrap();
            let id = BenchmarkId::new(name, size_name(size));
            bench_stream(&mut group, id, mine, size, spin, 2);
            child.wait().unwrap();
        }
        let (mine, theirs) = tcp_pair();
        let mut child = baseline("tcp", &[theirs.as_fd()], size);
        drop(theirs);
        let id = BenchmarkId::new("tcp_loopback", size_name(size));
        bench_stream(&mut group, id, mine, size, false, 2);
        child.wait().unwrap();
    }

    bus_ping_pong(
        &mut group,
        "shmbus_busy",
        WaitStrategy::BusySpin,
        "busy",
        &[8, 64, 1024, 4096, 65536],
    );
    bus_ping_pong(
        &mut group,
        "shmbus_spin_park",
        WaitStrategy::default(),
        "spin-park",
        &[8],
    );
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    for (publishers, size) in [(1usize, 8usize), (1, 65536), (4, 8)] {
        let bus = Bus::embedded().unwrap();
        let mut children = roles();
        let mut sub = bench::subscriber(&bus, DATA, WaitStrategy::BusySpin).unwrap();
        for _ in 0..publishers {
            // Far more than any run consumes; the processes are killed at the end.
            role(
                &mut children,
                &bus,
                "flood",
                &[
                    "--size",
                    &size.to_string(),
                    "--count",
                    &u64::MAX.to_string(),
                ],
            );
        }
        if size >= 1024 {
            group.throughput(Throughput::Bytes(size as u64));
        } else {
            group.throughput(Throughput::Elements(1));
        }
        let name = format!("{publishers}_to_1");
        group.bench_function(BenchmarkId::new(name, size_name(size)), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                bench::drain(&mut sub, iters, |_| {}).unwrap();
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    let wait = WaitStrategy::default();
    for subscribers in [1usize, 4, 16] {
        let bus = Bus::embedded().unwrap();
        let mut children = roles();
        let mut acks = bench::subscriber(&bus, ACK, wait).unwrap();
        let mut data = bench::publisher(&bus, DATA, wait).unwrap();
        for _ in 0..subscribers {
            role(&mut children, &bus, "ack", &["--wait", "spin-park"]);
        }
        group.bench_function(BenchmarkId::new("broadcast_round_trip", subscribers), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    bench::send(&mut data, 8, i).unwrap();
                    for _ in 0..subscribers {
                        bench::receive(&mut acks).unwrap();
                    }
                }
                start.elapsed()
            })
        });
        data.publish(&[]).unwrap();
    }
    group.finish();
}

fn typed(c: &mut Criterion) {
    let mut group = c.benchmark_group("typed");
    let value = Telemetry::of_size(256);
    let bus = Bus::embedded().unwrap();
    let mut children = roles();
    let mut pongs = bus
        .subscriber(PONG)
        .wait(WaitStrategy::BusySpin)
        .typed::<Telemetry>()
        .create()
        .unwrap();
    let mut pings = bus
        .publisher_builder(PING)
        .wait(WaitStrategy::BusySpin)
        .typed::<Telemetry>()
        .create()
        .unwrap();
    role(&mut children, &bus, "typed-echo", &["--wait", "busy"]);
    group.bench_function("rkyv_struct_256B", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                pings.publish(&value).unwrap();
                let reply = pongs.recv().unwrap();
                std::hint::black_box(reply.samples.iter().map(|v| v.to_native()).sum::<u32>());
            }
            start.elapsed() / 2
        })
    });
    pings
        .publish(&Telemetry {
            name: String::new(),
            samples: Vec::new(),
        })
        .unwrap();
    drop(children);
    let raw_size = {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).unwrap();
        bytes.len()
    };
    bus_ping_pong(
        &mut group,
        "raw_bytes_same_size",
        WaitStrategy::BusySpin,
        "busy",
        &[raw_size],
    );
    group.finish();
}

fn wakeup(c: &mut Criterion) {
    let mut group = c.benchmark_group("wakeup");
    let words = SharedWord::create();
    let mut child = baseline("futex", &[words.fd.as_fd()], 0);
    let mut seq = 0u32;
    group.bench_function("raw_futex", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                assert!(seq < u32::MAX, "u32::MAX stops the echo");
                words.word(0).store(seq, Ordering::Release);
                futex_wake(words.word(0));
                // One load per check: sleeping on a second, later load could sleep on the
                // very value that answers us, after its wake-up went by.
                let mut seen = words.word(1).load(Ordering::Acquire);
                while seen != seq {
                    futex_wait(words.word(1), seen);
                    seen = words.word(1).load(Ordering::Acquire);
                }
            }
            start.elapsed() / 2
        })
    });
    words.word(0).store(u32::MAX, Ordering::Release);
    futex_wake(words.word(0));
    child.wait().unwrap();
    bus_ping_pong(
        &mut group,
        "shmbus_parked",
        WaitStrategy::Park,
        "park",
        &[8],
    );
    group.finish();
}

fn reqrep(c: &mut Criterion) {
    let mut group = c.benchmark_group("reqrep");
    let sizes = [8usize, 4096];

    let mut floor = floor::Floor::create();
    let mut child = baseline("floor", &[floor.fd()], 0);
    group.bench_function("floor_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                floor.round_trip(false);
            }
            start.elapsed()
        })
    });
    floor.stop();
    child.wait().unwrap();

    let wait = WaitStrategy::BusySpin;
    let bus = Bus::embedded().unwrap();
    let mut children = roles();
    let mut pongs = bench::subscriber(&bus, PONG, wait).unwrap();
    let mut pings = bench::publisher(&bus, PING, wait).unwrap();
    // One busy child at a time: two would share the child's CPU.
    role(&mut children, &bus, "echo", &["--wait", "busy"]);
    for size in sizes {
        group.bench_function(
            BenchmarkId::new("pubsub_round_trip", size_name(size)),
            |b| {
                b.iter_custom(|iters| {
                    bench::ping_pong(&mut pings, &mut pongs, size, iters, |_| {}).unwrap()
                })
            },
        );
    }
    pings.publish(&[]).unwrap();
    children.wait().unwrap();
    role(&mut children, &bus, "reply", &["--wait", "busy"]);
    let mut requester = bench::requester(&bus, wait).unwrap();
    for size in sizes {
        group.bench_function(
            BenchmarkId::new("request_round_trip", size_name(size)),
            |b| {
                b.iter_custom(|iters| {
                    bench::request_round_trips(&mut requester, size, iters, |_| {}).unwrap()
                })
            },
        );
    }

    for threads in [1u64, 4] {
        let mut requesters: Vec<_> = (0..threads)
            .map(|_| bench::requester(&bus, wait).unwrap())
            .collect();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("requests_per_second_8B", threads), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for r in &mut requesters {
                        scope.spawn(move || bench::request_round_trips(r, 8, per, |_| {}).unwrap());
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// The collection the state ping-pong's pings are put into, and the one its answers are.
const STATE_PING: &str = "bench/state/ping";
const STATE_PONG: &str = "bench/state/pong";
/// The one key of the ping-pong's collections.
const STATE_KEY: &str = "k";
/// The collection a new watcher synchronizes, and its size.
const STATE_BIG: &str = "bench/state/big";
const SYNC_ENTRIES: u64 = 100_000;
const SYNC_VALUE: usize = 100;

/// The state echo (in the child): for every value of [`STATE_KEY`] in [`STATE_PING`], puts the
/// same value into [`STATE_PONG`]; stops when the key is deleted (the parent's publisher went).
fn state_echo(address: &str) {
    let bus = Bus::connect(address).expect("connect to the benchmark's bus");
    let mut pings = bus
        .state_watcher(STATE_PING)
        .wait(WaitStrategy::BusySpin)
        .create()
        .unwrap();
    let mut pongs = bus.state_publisher(STATE_PONG).unwrap();
    loop {
        match pings.recv_timeout(bench::PATIENCE).unwrap() {
            StateEvent::Created { value, .. } | StateEvent::Modified { new: value, .. } => {
                pongs.put(STATE_KEY, &value).unwrap();
            }
            StateEvent::Synchronized => {}
            StateEvent::Deleted { .. } => return,
            other => panic!("state echo: unexpected {other:?}"),
        }
    }
}

/// The state echo process, killed if still running when dropped: a run that fails must not
/// leave it spinning.
struct StateEcho(Child);

impl StateEcho {
    /// Starts it as a client of the bus at `address`.
    fn start(address: &str) -> StateEcho {
        let child = Command::new(std::env::current_exe().unwrap())
            .env("SHMBUS_BENCH_BASELINE", "state-echo")
            .env("SHMBUS_BENCH_BUS", address)
            .spawn()
            .expect("start the state echo");
        StateEcho(child)
    }

    /// Waits until it has ended on its own, successfully.
    fn wait(mut self) {
        assert!(self.0.wait().unwrap().success(), "the state echo failed");
    }
}

impl Drop for StateEcho {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    bus_ping_pong(
        &mut group,
        "pubsub_one_way",
        WaitStrategy::BusySpin,
        "busy",
        &[8],
    );
    let bus = Bus::embedded().unwrap();
    let address = bus.address().to_string();
    state_put_to_event(&mut group, &bus, &address, "put_to_event");
    state_sync(&mut group);
    group.finish();
}

/// Put → `Modified` one-way latency: a ping-pong between `bus` and the state echo, a client of
/// the same bus at `echo_address`, halved.
fn state_put_to_event(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    bus: &Bus,
    echo_address: &str,
    name: &str,
) {
    let mut pings = bus.state_publisher(STATE_PING).unwrap();
    // Each put a value the key does not hold yet: an equal value would write nothing.
    let mut seq = 0u64;
    pings.put(STATE_KEY, &seq.to_le_bytes()).unwrap();
    let mut pongs = bus
        .state_watcher(STATE_PONG)
        .wait(WaitStrategy::BusySpin)
        .create()
        .unwrap();
    assert_eq!(pongs.recv().unwrap(), StateEvent::Synchronized);
    let echo = StateEcho::start(echo_address);
    // Ready: the echo answered the value it found.
    match pongs.recv_timeout(bench::PATIENCE).unwrap() {
        StateEvent::Created { value, .. } => assert_eq!(*value, seq.to_le_bytes()),
        other => panic!("unexpected {other:?}"),
    }
    group.bench_function(BenchmarkId::new(name, size_name(8)), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                seq += 1;
                let value = seq.to_le_bytes();
                pings.put(STATE_KEY, &value).unwrap();
                match pongs.recv_timeout(bench::PATIENCE).unwrap() {
                    StateEvent::Modified { new, .. } => {
                        assert_eq!(std::hint::black_box(bench::read_all(&new)), seq);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            start.elapsed() / 2
        })
    });
    // A non-persistent collection is emptied when its owner goes: the echo sees `Deleted`.
    drop(pings);
    echo.wait();
}

/// A new watcher of a collection of [`SYNC_ENTRIES`] entries, from its creation to
/// `Synchronized` (each value read; dropping it is not timed).
fn state_sync(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let bus = Bus::embedded().unwrap();
    let mut big = bus.state_publisher(STATE_BIG).unwrap();
    let mut value = [0u8; SYNC_VALUE];
    for i in 0..SYNC_ENTRIES {
        value[..8].copy_from_slice(&i.to_le_bytes());
        big.put(&format!("k{i:06}"), &value).unwrap();
    }
    big.sync().unwrap();
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(SYNC_ENTRIES));
    let name = format!("{SYNC_ENTRIES}x{}", size_name(SYNC_VALUE));
    group.bench_function(BenchmarkId::new("new_watcher_sync", name), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut watcher = bus.watch_state(STATE_BIG).unwrap();
                let mut created = 0;
                loop {
                    match watcher.recv().unwrap() {
                        StateEvent::Created { value, .. } => {
                            std::hint::black_box(bench::read_all(&value));
                            created += 1;
                        }
                        StateEvent::Synchronized => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                total += start.elapsed();
                assert_eq!(created, SYNC_ENTRIES);
                drop(watcher);
            }
            total
        })
    });
    drop(big);
}

/// A broker on a thread of this process, listening at `listen` too; stopped when dropped.
struct ListeningBroker {
    handle: shmbus::BrokerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    socket: std::path::PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

impl ListeningBroker {
    fn start(listen: &str, tls: Option<shmbus::TlsServerFiles>) -> ListeningBroker {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus.sock");
        let mut builder = shmbus::Broker::builder()
            .socket(&socket)
            .listen(shmbus::BusAddress::parse_listen(listen).unwrap());
        if let Some(files) = tls {
            builder = builder.tls(files);
        }
        let broker = builder.bind().unwrap();
        let url = broker.listen_addresses()[0].to_string();
        let handle = broker.handle();
        let thread = std::thread::spawn(move || broker.run());
        ListeningBroker {
            handle,
            thread: Some(thread),
            socket,
            url,
            _dir: dir,
        }
    }
}

impl Drop for ListeningBroker {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, in `dir`: (the gateway's files, the CA).
fn test_certificates(dir: &std::path::Path) -> (shmbus::TlsServerFiles, std::path::PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let files = shmbus::TlsServerFiles {
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        client_ca: None,
    };
    (files, write("ca.pem", ca_cert.pem()))
}

fn remote(c: &mut Criterion) {
    let mut group = c.benchmark_group("remote");
    let sizes = [8usize, 4096];

    for &size in &sizes {
        for (name, spin) in [
            ("tcp_raw_blocking_round_trip", false),
            ("tcp_raw_spinning_round_trip", true),
        ] {
            let (mine, theirs) = tcp_pair();
            let role = if spin { "tcp-spin" } else { "tcp" };
            let mut child = baseline(role, &[theirs.as_fd()], size);
            drop(theirs);
            mine.set_nonblocking(spin).unwrap();
            let id = BenchmarkId::new(name, size_name(size));
            bench_stream(&mut group, id, mine, size, spin, 1);
            child.wait().unwrap();
        }
    }

    let certs = tempfile::tempdir().unwrap();
    let (server_files, ca) = test_certificates(certs.path());
    for (transport, listen, tls) in [
        ("tcp", "tcp://127.0.0.1:0", None),
        ("tls", "tls://127.0.0.1:0", Some(server_files)),
    ] {
        let broker = ListeningBroker::start(listen, tls);
        let local = Bus::connect(broker.socket.to_str().unwrap()).unwrap();
        let remote = Bus::builder()
            .address(shmbus::BusAddress::parse(&broker.url).unwrap())
            .tls(shmbus::TlsClientFiles::default().ca(&ca))
            .connect()
            .unwrap();
        let mut children = roles();
        let mut pongs = bench::subscriber(&remote, PONG, WaitStrategy::BusySpin).unwrap();
        let mut pings = bench::publisher(&remote, PING, WaitStrategy::BusySpin).unwrap();
        role(&mut children, &local, "echo", &["--wait", "busy"]);
        for &size in &sizes {
            let name = format!("{transport}_gateway_round_trip");
            group.bench_function(BenchmarkId::new(name, size_name(size)), |b| {
                b.iter_custom(|iters| {
                    bench::ping_pong(&mut pings, &mut pongs, size, iters, |_| {}).unwrap()
                })
            });
        }
        pings.publish(&[]).unwrap();
        children.wait().unwrap();
        // Requests from this remote client to a local server process, made by the gateway.
        role(&mut children, &local, "reply", &["--wait", "busy"]);
        let mut requester = bench::requester(&remote, WaitStrategy::BusySpin).unwrap();
        for &size in &sizes {
            let name = format!("{transport}_gateway_request_round_trip");
            group.bench_function(BenchmarkId::new(name, size_name(size)), |b| {
                b.iter_custom(|iters| {
                    bench::request_round_trips(&mut requester, size, iters, |_| {}).unwrap()
                })
            });
        }
        // A remote state owner and watcher, with a local state echo.
        let name = format!("{transport}_gateway_state_put_to_event");
        let socket = broker.socket.to_str().unwrap();
        state_put_to_event(&mut group, &remote, socket, &name);
    }
    group.finish();
}

/// Matching a pattern against a topic, as a peer link does for every message it relays.
fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic");
    let t = |s: &str| shmbus::Topic::new(s).unwrap();
    let topic = t("sensors/kitchen/fridge/temp");
    for (name, pattern) in [
        ("overlaps_exact", "sensors/kitchen/fridge/temp"),
        ("overlaps_one", "sensors/*/fridge/temp"),
        ("overlaps_one_or_more", "sensors/**/temp"),
    ] {
        let pattern = t(pattern);
        group.bench_function(name, |b| {
            b.iter(|| shmbus::topic::overlaps(std::hint::black_box(&pattern), &topic))
        });
    }
    group.finish();
}
