//! The soak: mixed traffic for `SHMBUS_SOAK_SECS` (default 120) while clients come and go —
//! publishers, subscribers, servers and requesters, state owners — and are killed at random
//! (SIGKILL mostly, SIGTERM sometimes). Stable tethered subscribers must lose nothing of the
//! stable publishers (and see every churning publisher's messages in order, up to its death),
//! and the broker must end where it started: no descriptors, segments or memory left behind.
//! Long: `benches/soak.sh [SECS]` runs it in release mode; CI runs it for 2 minutes.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shmbus::{Bus, BusAddress, RecvTimeoutError};
use support::{Broker, PATIENCE};

/// The soak's processes: `publisher TOPIC NAME` publishes `NAME:n` for n = 0, 1, ... in
/// paced batches until its input ends, then prints `published N`; `subscriber PATTERN` checks
/// that each publisher's numbers come in order without gaps and prints `final` with its counts
/// when its input ends.
#[test]
#[ignore = "a helper the soak runs in its own processes"]
fn helper_soak_role() {
    let (Ok(socket), Ok(role)) = (
        std::env::var("SHMBUS_SOAK_SOCKET"),
        std::env::var("SHMBUS_SOAK_ROLE"),
    ) else {
        return;
    };
    let bus = Bus::builder()
        .address(BusAddress::parse(&socket).unwrap())
        .connect()
        .unwrap();
    let args: Vec<&str> = role.split(' ').collect();
    // The input's end is the signal to finish.
    let (done_tx, done) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        let _ = done_tx.send(());
    });
    let finished = || !matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty));
    match args[..] {
        ["publisher", topic, name] => {
            let mut publisher = bus.publisher(topic).unwrap();
            let mut n = 0u64;
            while !finished() {
                for _ in 0..50 {
                    publisher.publish(format!("{name}:{n}").as_bytes()).unwrap();
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            println!("published {n}");
        }
        ["subscriber", pattern] => {
            let mut sub = bus.subscribe(pattern).unwrap();
            println!("subscribed");
            std::io::stdout().flush().unwrap();
            let mut last: HashMap<String, u64> = HashMap::new();
            let (mut received, mut gaps, mut lagged) = (0u64, 0u64, 0u64);
            loop {
                match sub.recv_timeout(Duration::from_millis(50)) {
                    Ok(sample) => {
                        received += 1;
                        let text = std::str::from_utf8(sample.payload()).unwrap();
                        let (name, n) = text.rsplit_once(':').unwrap();
                        let n: u64 = n.parse().unwrap();
                        if let Some(prev) = last.insert(name.to_string(), n) {
                            if n != prev + 1 {
                                gaps += 1;
                                println!("GAP {name}: {prev} then {n}");
                            }
                        }
                    }
                    Err(RecvTimeoutError::Timeout) if finished() => break,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Failed(e)) => {
                        lagged += 1;
                        println!("EVENT {e}");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let stable: Vec<String> = last
                .iter()
                .filter(|(k, _)| k.starts_with("stable"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "final received={received} gaps={gaps} events={lagged} last {}",
                stable.join(" ")
            );
        }
        _ => panic!("unknown role {role:?}"),
    }
}

/// A helper process in `role`.
fn helper(broker: &Broker, role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_soak_role",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .env("SHMBUS_SOAK_SOCKET", &broker.socket)
        .env("SHMBUS_SOAK_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A `shmbus` command of the churn, its output discarded.
fn cli(broker: &Broker, args: &[&str]) -> Child {
    support::shmbus(broker.bus(), args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Ends a helper by closing its input; returns the line of its output starting with `prefix`.
fn finish(mut child: Child, prefix: &str) -> String {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text
        .lines()
        .filter(|l| l.starts_with("GAP") || l.starts_with("EVENT"))
    {
        eprintln!("  {line}");
    }
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in: {text}"))
        .to_string()
}

/// What the broker holds: descriptors, of which memfd segments, and its own memory (kB).
#[derive(Debug, Clone, Copy)]
struct Holdings {
    fds: usize,
    segments: usize,
    anon_kb: u64,
}

fn holdings(pid: u32) -> Holdings {
    let (mut fds, mut segments) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"))
        {
            segments += 1;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let anon_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0);
    Holdings {
        fds,
        segments,
        anon_kb,
    }
}

/// A small xorshift generator: the soak's choices, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
#[ignore = "long: benches/soak.sh runs it (CI for 2 minutes)"]
fn mixed_traffic_with_random_kills_loses_nothing_and_leaks_nothing() {
    let secs: u64 = std::env::var("SHMBUS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let broker = Broker::start(&["--ring-idle", "1", "--ring-capacity", "262144"]);
    let pid = broker.proc.child.id();
    // Collections and their rings live as long as the broker: made before the measure.
    for k in 0..4 {
        let mut state = cli(&broker, &["state", "publish", &format!("soak/state/{k}")]);
        writeln!(state.stdin.as_mut().unwrap(), "put warm up").unwrap();
        drop(state.stdin.take());
        assert!(state.wait().unwrap().success());
    }
    let stable_subs: Vec<Child> = (0..2)
        .map(|_| helper(&broker, "subscriber soak/stable/*"))
        .map(|mut s| {
            // Byte by byte, so that nothing after the line is read ahead and lost.
            let out = s.stdout.as_mut().unwrap();
            let mut seen = Vec::new();
            let mut byte = [0u8];
            while !String::from_utf8_lossy(&seen).contains("subscribed\n") {
                assert_eq!(out.read(&mut byte).unwrap(), 1, "the subscriber ended");
                seen.push(byte[0]);
            }
            s
        })
        .collect();
    let stable_pubs: Vec<Child> = (0..2)
        .map(|k| helper(&broker, &format!("publisher soak/stable/{k} stable{k}")))
        .collect();
    // Settle, then take the broker's measure with only the stable clients.
    std::thread::sleep(Duration::from_secs(2));
    let before = holdings(pid);
    let seed = std::process::id() as u64 * 0x9E37_79B9 + 1;
    println!("soak: {secs} s, seed {seed}, broker at start {before:?}");
    let mut rng = Rng(seed);
    // Churning processes, and whether each is a checking subscriber.
    let mut churn: Vec<(Child, bool)> = Vec::new();
    let (mut spawned, mut killed, mut churn_gaps) = (0u64, 0u64, 0usize);
    // What a checking subscriber printed before it was stopped: gaps are losses.
    let mut reap = |child: Child, checks: bool| {
        let out = child.wait_with_output().unwrap();
        if checks {
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines().filter(|l| l.starts_with("GAP")) {
                eprintln!("  churn subscriber: {line}");
                churn_gaps += 1;
            }
        }
    };
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        if churn.len() < 10 {
            spawned += 1;
            let k = rng.below(4);
            let checks = rng.below(6);
            let child = match checks {
                0 | 1 => helper(&broker, &format!("publisher soak/churn/{k} churn{spawned}")),
                2 => helper(&broker, "subscriber soak/churn/*"),
                3 => cli(&broker, &["sub", "soak/**", "--lossy"]),
                4 => cli(&broker, &["serve", &format!("soak/rpc/{k}"), "--echo"]),
                _ => {
                    let mut state = cli(&broker, &["state", "publish", &format!("soak/state/{k}")]);
                    let stdin = state.stdin.as_mut().unwrap();
                    let _ = writeln!(stdin, "put key{spawned} value");
                    state
                }
            };
            churn.push((child, checks == 2));
            // Requests to whichever servers are up (refused or answered, never hanging).
            let _ = cli(
                &broker,
                &["req", &format!("soak/rpc/{k}"), "x", "--timeout", "1"],
            )
            .wait();
        }
        if rng.below(3) == 0 && !churn.is_empty() {
            let (victim, checks) = churn.swap_remove(rng.below(churn.len() as u64) as usize);
            let signal = if rng.below(10) < 7 {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let _ = kill(Pid::from_raw(victim.id() as i32), signal);
            reap(victim, checks);
            killed += 1;
        }
    }
    for (c, checks) in churn {
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        reap(c, checks);
    }
    assert_eq!(
        churn_gaps, 0,
        "churning subscribers saw publishers' messages out of order"
    );
    // Everything of the churn is given back once its rings are idle (the stable clients go on).
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let now = holdings(pid);
        if now.fds <= before.fds && now.segments <= before.segments {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the broker holds more than at the start: {before:?} then {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("churn: {spawned} clients started, {killed} killed; broker at the end {after:?}");
    assert!(
        after.anon_kb <= before.anon_kb + 8 * 1024,
        "the broker's memory grew: {before:?} then {after:?}"
    );
    // The stable publishers stop; the stable subscribers then must have everything.
    let published: Vec<u64> = stable_pubs
        .into_iter()
        .map(|p| {
            finish(p, "published")["published ".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    for s in stable_subs {
        let line = finish(s, "final");
        println!("stable subscriber: {line}");
        assert!(line.contains(" gaps=0 events=0 "), "loss: {line}");
        for (k, n) in published.iter().enumerate() {
            assert!(
                line.contains(&format!("stable{k}={}", n - 1)),
                "stable{k} published {n}, the subscriber saw: {line}"
            );
        }
    }
    let log = broker.proc.stderr.text();
    assert!(!log.contains("panicked"), "the broker panicked: {log}");
}
