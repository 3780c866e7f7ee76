//! One-way latency of shmbus through the Rust client API, by ping-pong between two processes:
//! the twin of `latency.c`, measured the same way, so that the two can be compared in one run
//! (`ffi/bench/run.sh`).
//!
//! ```text
//! cargo run --release -p shmbus-ffi --example latency -- BUS SIZE ITERATIONS
//! ```
//!
//! The parent publishes SIZE bytes on a ping topic through a loan, writing every byte; the
//! child, subscribed to it, reads every byte and answers with SIZE bytes on a pong topic; the
//! parent reads every byte of the answer. Both busy-poll and are pinned to CPUs 0 and 1. Each
//! round trip is timed on its own; a sample is half of it. After ITERATIONS / 10 warm-up round
//! trips, ITERATIONS samples are sorted and printed as
//! `rust SIZE p50 P50_NS p90 P90_NS p99 P99_NS p999 P999_NS max MAX_NS`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use shmbus::bench::{pin, read_all};
use shmbus::{Bus, Publisher, Subscriber, WaitStrategy};

fn send_filled(publisher: &mut Publisher, len: usize, byte: u8) {
    let mut loan = publisher.loan(len).expect("loan");
    loan.as_mut_slice().fill(byte);
    loan.commit().expect("not revoked");
}

fn connect_pair(bus: &str, input: &str, output: &str) -> (Bus, Subscriber, Publisher) {
    let bus = Bus::connect(bus).expect("connect");
    let sub = bus
        .subscriber(input)
        .wait(WaitStrategy::BusySpin)
        .create()
        .expect("subscribe");
    let publisher = bus
        .publisher_builder(output)
        .wait(WaitStrategy::BusySpin)
        .create()
        .expect("publisher");
    (bus, sub, publisher)
}

/// The child: echoes every ping with a pong of the same size until an empty ping.
fn echo(bus: &str, ping: &str, pong: &str) {
    pin(1);
    let (_bus, mut sub, mut publisher) = connect_pair(bus, ping, pong);
    // Tell the parent we are subscribed.
    std::io::stdout().write_all(b"r").unwrap();
    std::io::stdout().flush().unwrap();
    loop {
        let sample = sub.recv().expect("recv");
        let len = sample.len();
        let reply = read_all(sample.payload()) as u8;
        drop(sample);
        if len == 0 {
            return;
        }
        send_filled(&mut publisher, len, reply);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(role) = std::env::var("SHMBUS_LATENCY_ECHO") {
        let (ping, pong) = role.split_once(' ').unwrap();
        echo(&args[1], ping, pong);
        return;
    }
    let [_, bus, size, iterations] = &args[..] else {
        eprintln!("usage: latency BUS SIZE ITERATIONS");
        std::process::exit(2);
    };
    let size: usize = size.parse().expect("SIZE");
    let iterations: usize = iterations.parse().expect("ITERATIONS");
    let ping = format!("bench/rust{}/ping", std::process::id());
    let pong = format!("bench/rust{}/pong", std::process::id());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg(bus)
        .env("SHMBUS_LATENCY_ECHO", format!("{ping} {pong}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the echo process");
    pin(0);
    let (_bus, mut sub, mut publisher) = connect_pair(bus, &pong, &ping);
    let mut ready = [0u8];
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut ready)
        .expect("the echo process failed");

    let warmup = iterations / 10;
    let mut samples = Vec::with_capacity(iterations);
    let mut n = 0u8;
    for i in 0..warmup + iterations {
        let t0 = Instant::now();
        n = n.wrapping_add(1);
        send_filled(&mut publisher, size, n);
        let reply = sub.recv().expect("recv");
        black_box(read_all(reply.payload()));
        drop(reply);
        let t1 = Instant::now();
        if i >= warmup {
            samples.push((t1 - t0).as_nanos() as u64 / 2);
        }
    }
    publisher.publish(&[]).unwrap();
    let status = child.wait().unwrap();

    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "rust {size} p50 {} p90 {} p99 {} p999 {} max {}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
    std::process::exit(if status.success() { 0 } else { 1 });
}
