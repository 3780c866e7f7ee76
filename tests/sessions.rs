//! Sessions: a client that connects with `--session NAME` keeps its subscriptions for the
//! broker's `--session-grace` after it goes (killed or exiting), holding no publisher back
//! meanwhile; the next client with the same name takes them up where they stood. Real broker
//! and subscriber processes.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmbus::Bus;
use support::{Broker, PATIENCE, Proc, run};

/// Publishes `first..first + n` on `topic`, each message its number.
fn publish_numbers(bus: &Bus, topic: &str, first: u64, n: u64) {
    let mut publisher = bus.publisher(topic).unwrap();
    for k in first..first + n {
        // A subscriber of a session away holds nobody back: this never waits for long.
        publisher
            .publish_timeout(k.to_string().as_bytes(), PATIENCE)
            .unwrap();
    }
}

/// The payloads `proc` printed for `topic`, in order.
fn received(proc: &Proc, topic: &str) -> Vec<u64> {
    proc.stdout
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{topic}\t")))
        .map(|v| v.parse().unwrap())
        .collect()
}

/// Waits until `proc` printed `n` messages of `topic`.
fn wait_received(proc: &Proc, topic: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = received(proc, topic);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "only {got:?} arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `shmbus sub PATTERN --session NAME ARGS`, once subscribed.
fn session_sub(broker: &Broker, session: &str, pattern: &str, extra: &[&str]) -> Proc {
    let mut args = vec![pattern, "--session", session];
    args.extend_from_slice(extra);
    broker.subscriber(&args)
}

#[test]
fn a_killed_session_subscriber_takes_up_where_it_stood_within_the_grace_period() {
    let broker = Broker::start(&["--session-grace", "60"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut sub = session_sub(&broker, "alpha", "kept/**", &[]);
    publish_numbers(&bus, "kept/a", 0, 10);
    assert_eq!(
        wait_received(&sub, "kept/a", 10),
        (0..10).collect::<Vec<_>>()
    );
    // Messages read but not released yet when it is killed may come again: kill it only once
    // it has released them all, so that where it stood is exact.
    sub.wait_asleep();
    sub.signal(Signal::SIGKILL);
    let _ = sub.child.wait();
    broker.proc.stderr.wait_for("session away");
    // Published while the session is away: kept for it.
    publish_numbers(&bus, "kept/a", 10, 10);
    let sub = session_sub(&broker, "alpha", "kept/**", &["--count", "10"]);
    assert_eq!(
        wait_received(&sub, "kept/a", 10),
        (10..20).collect::<Vec<_>>()
    );
    // Without the session, nothing of it.
    let mut other = broker.subscriber(&["kept/**", "--timeout", "0.2"]);
    assert_eq!(other.wait_code(), 4, "a fresh subscriber sees nothing old");
}

#[test]
fn a_session_subscriber_that_exits_cleanly_goes_on_with_the_next_message() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut first = session_sub(&broker, "beta", "clean/*", &["--count", "5"]);
    publish_numbers(&bus, "clean/x", 0, 12);
    assert_eq!(first.wait_code(), 0);
    assert_eq!(received(&first, "clean/x"), (0..5).collect::<Vec<_>>());
    let mut second = session_sub(&broker, "beta", "clean/*", &["--count", "7"]);
    assert_eq!(second.wait_code(), 0);
    assert_eq!(received(&second, "clean/x"), (5..12).collect::<Vec<_>>());
}

#[test]
fn while_away_a_session_holds_no_publisher_back_and_reports_what_was_overwritten() {
    // Eviction would take 10 minutes: only the session's absence lets the publisher go on.
    let broker = Broker::start(&[
        "--ring-capacity",
        "65536",
        "--max-payload",
        "1024",
        "--evict-after",
        "600",
    ]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut sub = session_sub(&broker, "gamma", "flood", &[]);
    publish_numbers(&bus, "flood", 0, 1);
    wait_received(&sub, "flood", 1);
    sub.signal(Signal::SIGKILL);
    let _ = sub.child.wait();
    broker.proc.stderr.wait_for("session away");
    // About 30 laps of the ring.
    let total = 20_000u64;
    publish_numbers(&bus, "flood", 1, total);
    let mut back = session_sub(&broker, "gamma", "flood", &["--timeout", "1"]);
    assert_eq!(back.wait_code(), 4, "ends at its timeout after the backlog");
    let got = received(&back, "flood");
    let stderr = back.stderr.text();
    let lost: u64 = stderr
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(2)?
                .strip_suffix(" messages were lost before they were read")
        })
        .unwrap_or_else(|| panic!("no loss reported: {stderr}"))
        .parse()
        .unwrap();
    assert!(!got.is_empty() && lost > 0, "{got:?} {stderr}");
    // The reader resumes where its position stood: after message 0, or at it when the killed
    // process had read message 0 but not yet released it (which can then be lost again).
    let first = got[0];
    assert!(
        first == 1 + lost || first == lost,
        "exactly what was overwritten is reported: first {first}, lost {lost}"
    );
    assert_eq!(got.last().copied(), Some(total), "and the rest arrives");
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, without gaps"
    );
}

#[test]
fn after_the_grace_period_the_session_is_forgotten() {
    let broker = Broker::start(&["--session-grace", "0.5"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    // One session ends cleanly, the other is killed.
    let mut clean = session_sub(&broker, "delta", "late/*", &["--count", "1"]);
    let mut killed = session_sub(&broker, "zeta", "late/*", &[]);
    publish_numbers(&bus, "late/a", 0, 1);
    assert_eq!(clean.wait_code(), 0);
    wait_received(&killed, "late/a", 1);
    killed.signal(Signal::SIGKILL);
    let _ = killed.child.wait();
    for _ in 0..2 {
        broker.proc.stderr.wait_for("session expired");
    }
    publish_numbers(&bus, "late/a", 1, 5);
    for session in ["delta", "zeta"] {
        let mut again = session_sub(&broker, session, "late/*", &["--timeout", "0.3"]);
        assert_eq!(again.wait_code(), 4);
        assert!(
            received(&again, "late/a").is_empty(),
            "{session}: nothing was kept"
        );
    }
}

#[test]
fn two_live_clients_cannot_hold_one_session() {
    let broker = Broker::start(&[]);
    let mut holder = session_sub(&broker, "epsilon", "one/*", &[]);
    let (code, _, stderr) = run(broker.bus(), &["sub", "one/*", "--session", "epsilon"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("session \"epsilon\" is held by another live client"),
        "{stderr}"
    );
    let (code, _, stderr) = run(broker.bus(), &["broker", "--session", "x"]);
    assert_eq!(code, 2, "{stderr}");
    holder.signal(Signal::SIGTERM);
    assert_eq!(holder.wait_code(), 0);
}

/// The broker's resident memory, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn expired_sessions_give_back_what_they_held() {
    let broker = Broker::start(&["--session-grace", "0.2"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("mem/a").unwrap();
    let mut round = |n: usize| {
        for k in 0..n {
            let client = Bus::builder()
                .address(shmbus::BusAddress::parse(broker.bus()).unwrap())
                .session(format!("mem-{k}"))
                .connect()
                .unwrap();
            let _sub = client.subscribe("mem/**").unwrap();
            publisher.publish(b"x").unwrap();
        }
        for _ in 0..n {
            broker.proc.stderr.wait_for("session expired");
        }
        rss_kib(broker.proc.pid())
    };
    let _warm = round(300);
    let second = round(300);
    let third = round(300);
    assert!(
        third <= second + 1024,
        "the broker grows with sessions that expired: {second} KiB, then {third} KiB"
    );
    // And a client that comes back after expiry starts afresh.
    let again = Bus::builder()
        .address(shmbus::BusAddress::parse(broker.bus()).unwrap())
        .session("mem-0")
        .connect()
        .unwrap();
    let mut sub = again.subscribe("mem/**").unwrap();
    assert_eq!(
        sub.try_recv().map(|s| s.payload().to_vec()).unwrap_err(),
        shmbus::TryRecvError::Empty
    );
}
