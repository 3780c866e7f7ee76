//! One broker, many clients: `SHMBUS_SCALE_CLIENTS` (default 2,000; the README quotes 10,000)
//! connections from helper processes, each with a subscription and a publisher on a topic of
//! its own. Measures connect time, the broker's memory per client and the shared memory it
//! holds, and checks that every client still gets its own message at the end. Long: run with
//! `cargo test --release --test scale -- --ignored --nocapture` (CI runs it at 2,000).

mod support;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmbus::{Bus, BusAddress};
use support::{Broker, PATIENCE};

/// Clients per helper process.
const PER_PROCESS: usize = 500;

/// The helper: clients `from..to` of the bus at `$SHMBUS_SCALE_SOCKET`. Prints `ready` with its
/// connect times, then on each stdin line `check` publishes one message per client and reads
/// it back on the client's subscription, printing `delivered N`; exits at end of input.
#[test]
#[ignore = "a helper the scale test runs in its own processes"]
fn helper_clients() {
    let (Ok(socket), Ok(range)) = (
        std::env::var("SHMBUS_SCALE_SOCKET"),
        std::env::var("SHMBUS_SCALE_RANGE"),
    ) else {
        return;
    };
    let (from, to) = range.split_once('-').unwrap();
    let (from, to): (usize, usize) = (from.parse().unwrap(), to.parse().unwrap());
    let address = BusAddress::parse(&socket).unwrap();
    let mut clients = Vec::new();
    let mut times = Vec::new();
    for k in from..to {
        let start = Instant::now();
        let bus = Bus::builder()
            .address(address.clone())
            .connect_timeout(PATIENCE)
            .connect()
            .unwrap_or_else(|e| panic!("client {k}: {e}"));
        let topic = format!("scale/{k}");
        let sub = bus
            .subscribe(&topic)
            .unwrap_or_else(|e| panic!("client {k}: {e}"));
        let publisher = bus
            .publisher(&topic)
            .unwrap_or_else(|e| panic!("client {k}: {e}"));
        times.push(start.elapsed());
        clients.push((bus, sub, publisher));
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "ready p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(*times.last().unwrap())
    );
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        if line.unwrap() != "check" {
            continue;
        }
        let mut delivered = 0;
        for (k, (_, sub, publisher)) in clients.iter_mut().enumerate() {
            let body = format!("client {}", from + k);
            publisher.publish(body.as_bytes()).unwrap();
            let sample = sub.recv_timeout(PATIENCE).unwrap();
            assert_eq!(sample.payload(), body.as_bytes());
            delivered += 1;
        }
        println!("delivered {delivered}");
        std::io::stdout().flush().unwrap();
    }
}

/// A field of `/proc/PID/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// The broker's memfd segments: how many descriptors, and their total size in bytes.
fn memfds(pid: u32) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let is_memfd = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
        if is_memfd {
            count += 1;
            bytes += std::fs::metadata(entry.path()).map_or(0, |m| m.len());
        }
    }
    (count, bytes)
}

/// Raises this process's descriptor limit (inherited by the broker) to what `clients` need, as
/// far as the system allows; says what it got.
fn raise_descriptor_limit(clients: usize) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // A socket per client, two memfds per ring, and room to spare.
    let want = (3 * clients + 1024) as u64;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let target = want.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, target).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        eprintln!(
            "RLIMIT_NOFILE: {soft} descriptors allowed (raising the hard limit needs \
             CAP_SYS_RESOURCE): the broker can hold about {} such clients",
            soft.saturating_sub(1024) / 3
        );
    }
    soft
}

#[test]
#[ignore = "long: run explicitly (CI runs it at 2,000 clients)"]
fn one_broker_holds_many_clients_each_with_a_subscription_and_a_publisher() {
    let clients: usize = std::env::var("SHMBUS_SCALE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let limit = raise_descriptor_limit(clients);
    let headroom = (clients + 64).to_string();
    let broker = Broker::start(&[
        "--max-clients",
        &headroom,
        "--max-rings",
        &headroom,
        "--ring-capacity",
        "65536",
        "--max-payload",
        "1024",
    ]);
    let pid = broker.proc.child.id();
    let (rss_before, anon_before) = (status_kb(pid, "VmRSS:"), status_kb(pid, "RssAnon:"));
    let start = Instant::now();
    let mut helpers: Vec<_> = (0..clients)
        .step_by(PER_PROCESS)
        .map(|from| {
            let to = (from + PER_PROCESS).min(clients);
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "helper_clients",
                    "--ignored",
                    "--nocapture",
                    "--quiet",
                ])
                .env("SHMBUS_SCALE_SOCKET", &broker.socket)
                .env("SHMBUS_SCALE_RANGE", format!("{from}-{to}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs: Vec<_> = helpers
        .iter_mut()
        .map(|h| std::io::BufReader::new(h.stdout.take().unwrap()).lines())
        .collect();
    let mut next_line = |i: usize, prefix: &str| loop {
        let line = outputs[i].next().expect("helper ended").unwrap();
        if line.starts_with(prefix) {
            return line;
        }
    };
    let ready: Vec<String> = (0..helpers.len()).map(|i| next_line(i, "ready")).collect();
    let connected_in = start.elapsed();
    let (rss_after, anon_after) = (status_kb(pid, "VmRSS:"), status_kb(pid, "RssAnon:"));
    let shmem = status_kb(pid, "RssShmem:");
    let (segments, segment_bytes) = memfds(pid);
    for h in &mut helpers {
        writeln!(h.stdin.as_mut().unwrap(), "check").unwrap();
    }
    let delivered: usize = (0..helpers.len())
        .map(|i| next_line(i, "delivered")[10..].parse::<usize>().unwrap())
        .sum();
    assert_eq!(delivered, clients, "every client got its own message");
    println!(
        "clients: {clients} in {} processes (RLIMIT_NOFILE {limit})",
        helpers.len()
    );
    println!(
        "connected, subscribed and publishing in {:.2} s ({:.0} clients/s)",
        connected_in.as_secs_f64(),
        clients as f64 / connected_in.as_secs_f64()
    );
    for (i, line) in ready.iter().enumerate() {
        println!("  helper {i}: per client {line}");
    }
    let per_client = |before: u64, after: u64| after.saturating_sub(before) as f64 / clients as f64;
    println!(
        "broker RSS: {rss_before} kB before, {rss_after} kB after: {:.1} kB per client, of which \
         {:.1} kB its own memory (RssAnon) and the rest the rings' shared memory",
        per_client(rss_before, rss_after),
        per_client(anon_before, anon_after)
    );
    println!(
        "shared memory: {segments} memfd descriptors, {:.0} MiB mapped, {shmem} kB resident in the broker",
        segment_bytes as f64 / (1 << 20) as f64
    );
    println!("delivery: {delivered} of {clients} clients got their message");
    for mut h in helpers {
        drop(h.stdin.take());
        let status = h.wait().unwrap();
        assert!(status.success(), "a helper failed: {status}");
    }
}
