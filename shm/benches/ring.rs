//! Cross-process latency and throughput of the ring, measured beside the floor.
//!
//! * `one_way_latency/floor`: two processes passing one cache line back and forth in shared
//!   memory — the least any cross-process message can cost on this machine.
//! * `one_way_latency/floor_4KiB`: the same, each side also writing 4 KiB into a shared buffer
//!   before the flag and reading all 4 KiB the other wrote — the least a 4 KiB message costs.
//! * `one_way_latency/ring_{8B,64B,4KiB}`: a ping-pong over two rings; each side writes every
//!   payload byte into a loan and reads every byte of what it receives. Round trip / 2.
//! * `one_way_latency/copy_4KiB_twice`: copying 4 KiB twice in one process, the allowance the 4 KiB
//!   target adds to the floor.
//! * `throughput/{8B,64KiB}`: one writer process writing as fast as it can, this process
//!   reading and summing every byte.
//!
//! Both processes are pinned (parent on CPU 0, child on CPU 1) and busy-poll. Children are
//! started once per benchmark, outside the timed loop.

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use shmbus_shm::{Deadline, DoorbellTable, Owner, ReaderOptions, Ring, RingConfig, WaitStrategy};

#[path = "support/floor.rs"]
mod floor;
#[path = "../tests/support/spawn.rs"]
mod spawn;

fn main() {
    if let Ok(role) = std::env::var("SHM_BENCH_ROLE") {
        pin(1);
        match role.as_str() {
            "floor" => floor_child(),
            "echo" => echo_child(),
            "flood" => flood_child(),
            other => panic!("unknown role {other}"),
        }
        return;
    }
    pin(0);
    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    latency(&mut c);
    throughput(&mut c);
    c.final_summary();
}

/// Pins the calling process to `cpu` (if the machine has it).
fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        // Pinning is best effort: on a one-core machine the benchmark still runs.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn spawn_child(role: &str, fds: &[std::os::fd::BorrowedFd<'_>], arg: u64) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    let _keep = spawn::pass_fds(&mut cmd, fds);
    cmd.env("SHM_BENCH_ROLE", role)
        .env("SHM_BENCH_ARG", arg.to_string());
    cmd.spawn().expect("spawn benchmark child")
}

fn arg() -> u64 {
    std::env::var("SHM_BENCH_ARG").unwrap().parse().unwrap()
}

/// Echoes the floor's ping, with the 4 KiB payload if the argument is non-zero.
fn floor_child() {
    let floor = floor::Floor::open(spawn::inherited_fds(1).pop().unwrap());
    floor.echo(arg() != 0);
}

/// Two rings (there and back) and the doorbell table, as fds for the child.
struct PingPong {
    doorbells: DoorbellTable,
    there: Ring,
    back: Ring,
}

fn ring_config(max_payload: u32) -> RingConfig {
    let capacity = (4 * u64::from(max_payload) + 4096)
        .next_power_of_two()
        .max(1 << 20);
    RingConfig {
        capacity,
        max_payload,
        writer_slots: 4,
        reader_slots: 4,
    }
}

impl PingPong {
    fn new(max_payload: u32) -> PingPong {
        let doorbells = DoorbellTable::create(8).unwrap();
        let there = Ring::create(&ring_config(max_payload), &doorbells).unwrap();
        let back = Ring::create(&ring_config(max_payload), &doorbells).unwrap();
        PingPong {
            doorbells,
            there,
            back,
        }
    }
}

fn echo_child() {
    let [
        there_data,
        there_readers,
        back_data,
        back_readers,
        doorbells,
    ]: [OwnedFd; 5] = spawn::inherited_fds(5).try_into().unwrap();
    let doorbells = DoorbellTable::open(doorbells).unwrap();
    let there = Ring::open(there_data, there_readers, &doorbells).unwrap();
    let back = Ring::open(back_data, back_readers, &doorbells).unwrap();
    let me = Owner::this_process();
    let bell = Arc::new(doorbells.claim(me).unwrap());
    let mut reader = there.reader(ReaderOptions::default(), &bell, me).unwrap();
    let mut writer = back.writer(2, me).unwrap();
    writer.set_wait_strategy(WaitStrategy::BusySpin);
    loop {
        let sample = reader
            .read(WaitStrategy::BusySpin, Deadline::Never)
            .unwrap();
        let len = sample.len();
        if len == 0 {
            return;
        }
        let reply = floor::read_all(sample.payload()) as u8;
        drop(sample);
        let mut loan = writer.loan(len, Deadline::Never).unwrap();
        loan.as_mut_slice().fill(reply);
        loan.commit().expect("not revoked");
    }
}

fn flood_child() {
    let [data, readers, doorbells]: [OwnedFd; 3] = spawn::inherited_fds(3).try_into().unwrap();
    let doorbells = DoorbellTable::open(doorbells).unwrap();
    let ring = Ring::open(data, readers, &doorbells).unwrap();
    let mut writer = ring.writer(3, Owner::this_process()).unwrap();
    writer.set_wait_strategy(WaitStrategy::BusySpin);
    let len = arg() as usize;
    for n in 0u64.. {
        let mut loan = writer.loan(len, Deadline::Never).unwrap();
        loan.as_mut_slice().fill(n as u8);
        loan.commit().expect("not revoked");
    }
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_way_latency");

    for (name, with_payload) in [("floor", false), ("floor_4KiB", true)] {
        let mut floor = floor::Floor::create();
        let mut child = spawn_child("floor", &[floor.fd()], u64::from(with_payload));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    floor.round_trip(with_payload);
                }
                start.elapsed() / 2
            })
        });
        floor.stop();
        child.wait().unwrap();
    }

    for size in [8usize, 64, 4096] {
        let pp = PingPong::new(4096);
        let fds = [
            pp.there.data_fd_read_only().unwrap().unwrap(),
            pp.there.readers_fd().unwrap().try_clone_to_owned().unwrap(),
            pp.back.data_fd().unwrap().try_clone_to_owned().unwrap(),
            pp.back.readers_fd().unwrap().try_clone_to_owned().unwrap(),
            pp.doorbells.fd().unwrap().try_clone_to_owned().unwrap(),
        ];
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let mut child = spawn_child("echo", &borrowed, 0);
        let me = Owner::this_process();
        let bell = Arc::new(pp.doorbells.claim(me).unwrap());
        let mut reader = pp.back.reader(ReaderOptions::default(), &bell, me).unwrap();
        let mut writer = pp.there.writer(1, me).unwrap();
        writer.set_wait_strategy(WaitStrategy::BusySpin);
        // Wait until the echo child is attached before the first message.
        while pp.there.readers().is_empty() {
            std::thread::yield_now();
        }
        let name = match size {
            4096 => "ring_4KiB".to_string(),
            s => format!("ring_{s}B"),
        };
        let mut n = 0u8;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    n = n.wrapping_add(1);
                    let mut loan = writer.loan(size, Deadline::Never).unwrap();
                    loan.as_mut_slice().fill(n);
                    loan.commit().expect("not revoked");
                    let reply = reader
                        .read(WaitStrategy::BusySpin, Deadline::Never)
                        .unwrap();
                    black_box(floor::read_all(reply.payload()));
                }
                start.elapsed() / 2
            })
        });
        writer.publish(&[], Deadline::Never).unwrap();
        child.wait().unwrap();
    }

    let src = vec![7u8; 4096];
    let mut mid = vec![0u8; 4096];
    let mut dst = vec![0u8; 4096];
    group.bench_function("copy_4KiB_twice", |b| {
        b.iter(|| {
            mid.copy_from_slice(black_box(&src));
            dst.copy_from_slice(black_box(&mid));
            black_box(&dst);
        })
    });
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    for (name, size) in [("8B", 8usize), ("64KiB", 65536)] {
        let doorbells = DoorbellTable::create(8).unwrap();
        let ring = Ring::create(&ring_config(65536), &doorbells).unwrap();
        let me = Owner::this_process();
        let bell = Arc::new(doorbells.claim(me).unwrap());
        let mut reader = ring.reader(ReaderOptions::default(), &bell, me).unwrap();
        let fds = [
            ring.data_fd().unwrap(),
            ring.readers_fd().unwrap(),
            doorbells.fd().unwrap(),
        ];
        let mut child = spawn_child("flood", &fds, size as u64);
        if size == 8 {
            group.throughput(Throughput::Elements(1));
        } else {
            group.throughput(Throughput::Bytes(size as u64));
        }
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let sample = reader
                        .read(WaitStrategy::BusySpin, Deadline::Never)
                        .unwrap();
                    black_box(floor::read_all(sample.payload()));
                }
                start.elapsed()
            })
        });
        child.kill().unwrap();
        child.wait().unwrap();
    }
    group.finish();
}
