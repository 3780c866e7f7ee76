//! The `shmbus` command line against a real broker process: formats, ready lines, exit codes,
//! wildcard delivery, ordering, history, and the broker's socket handling.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use nix::sys::signal::Signal;
use support::{Broker, Proc, run, shmbus};

#[test]
fn wildcard_subscription_receives_rings_created_before_and_after_it() {
    let broker = Broker::start(&[]);
    // chat/old exists before the subscription; what was published on it then is not delivered.
    assert_eq!(run(broker.bus(), &["pub", "chat/old", "before"]).0, 0);
    let mut sub = broker.subscriber(&["chat/**", "--count", "3"]);
    assert_eq!(run(broker.bus(), &["pub", "chat/old", "after"]).0, 0);
    assert_eq!(run(broker.bus(), &["pub", "chat/new/deep", "fresh"]).0, 0);
    assert_eq!(run(broker.bus(), &["pub", "other", "not for us"]).0, 0);
    assert_eq!(
        run(broker.bus(), &["pub", "chat/*", "wildcard publish"]).0,
        0
    );
    assert_eq!(sub.wait_code(), 0, "stderr: {}", sub.stderr.text());
    let mut lines: Vec<String> = sub.stdout.text().lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "chat/*\twildcard publish",
            "chat/new/deep\tfresh",
            "chat/old\tafter"
        ]
    );
}

#[test]
fn text_format_escapes_and_json_format_carries_metadata() {
    let broker = Broker::start(&[]);
    let mut text = broker.subscriber(&["t", "--count", "1"]);
    let mut json = broker.subscriber(&["t", "--count", "1", "--format", "json"]);
    assert_eq!(run(broker.bus(), &["pub", "t", "tab\there\\ \u{7}é"]).0, 0);
    assert_eq!(text.wait_code(), 0);
    assert_eq!(text.stdout.text(), "t\ttab\\there\\\\ \\u{7}é");
    assert_eq!(json.wait_code(), 0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout.text()).unwrap();
    assert_eq!(v["topic"], "t");
    assert_eq!(v["payload"], "tab\there\\ \u{7}é");
    assert_eq!(v["sequence"], 0);
    assert!(v["publisher"].as_u64().unwrap() > 0);
}

#[test]
fn several_publishers_keep_their_order_and_lose_nothing() {
    let broker = Broker::start(&[]);
    let per = 2000;
    let mut sub = broker.subscriber(&[
        "load/*",
        "--count",
        &(3 * per).to_string(),
        "--format",
        "json",
    ]);
    let lines: String = (0..per).map(|i| format!("{i}\n")).collect();
    let mut publishers: Vec<Proc> = ["load/a", "load/b", "load/a"]
        .iter()
        .map(|topic| {
            let mut p = Proc::start(
                shmbus(broker.bus(), &["pub", topic]),
                std::process::Stdio::piped(),
            );
            // Fed from a thread each, so that the three publishers run at once.
            let mut stdin = p.stdin.take().unwrap();
            let input = lines.clone();
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
            p
        })
        .collect();
    for p in &mut publishers {
        assert_eq!(p.wait_code(), 0, "{}", p.stderr.text());
    }
    assert_eq!(sub.wait_code(), 0, "{}", sub.stderr.text());
    let mut next: HashMap<u64, u64> = HashMap::new();
    for line in sub.stdout.text().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let publisher = v["publisher"].as_u64().unwrap();
        let n: u64 = v["payload"].as_str().unwrap().parse().unwrap();
        let expected = next.entry(publisher).or_insert(0);
        assert_eq!(n, *expected, "publisher {publisher} out of order");
        *expected += 1;
    }
    assert_eq!(next.len(), 3);
    assert!(next.values().all(|&n| n == per), "{next:?}");
}

#[test]
fn late_joiners_see_nothing_earlier_and_exactly_n_with_history_n() {
    let broker = Broker::start(&[]);
    for i in 0..5 {
        assert_eq!(run(broker.bus(), &["pub", "h", &format!("old {i}")]).0, 0);
    }
    let mut late = broker.subscriber(&["h", "--count", "1"]);
    let mut with_history = broker.subscriber(&["h", "--count", "4", "--history", "3"]);
    assert_eq!(run(broker.bus(), &["pub", "h", "new"]).0, 0);
    assert_eq!(late.wait_code(), 0);
    assert_eq!(late.stdout.text(), "h\tnew");
    assert_eq!(with_history.wait_code(), 0);
    assert_eq!(
        with_history.stdout.text(),
        "h\told 2\nh\told 3\nh\told 4\nh\tnew"
    );
}

#[test]
fn invalid_topics_are_rejected_naming_the_topic() {
    let broker = Broker::start(&[]);
    for (cmd, topic) in [
        ("pub", "a//b"),
        ("pub", "a*"),
        ("sub", "***"),
        ("sub", "bad topic"),
        ("pub", "/a"),
    ] {
        let (code, _, stderr) = run(broker.bus(), &[cmd, topic, "x"]);
        assert_eq!(code, 2, "{cmd} {topic}: {stderr}");
        assert!(
            stderr.contains(&format!("{topic:?}")),
            "{cmd} {topic}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn exit_code_3_without_a_broker_and_4_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none.sock");
    let (code, _, stderr) = run(nowhere.to_str().unwrap(), &["pub", "t", "x"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("none.sock"), "names the address: {stderr}");
    assert_eq!(run(nowhere.to_str().unwrap(), &["sub", "t"]).0, 3);

    let broker = Broker::start(&[]);
    let (code, _, stderr) = run(
        broker.bus(),
        &["sub", "quiet", "--timeout", "0.3", "--count", "1"],
    );
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(run(broker.bus(), &["pub"]).0, 2, "usage error");
}

#[test]
fn broker_refuses_a_second_instance_replaces_stale_sockets_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("shmbus-bus");
    let socket = private.join("b.sock");
    let mut first = Broker::start_at(&socket, &[]);
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "socket directory is private");

    let mut second = Proc::spawn(shmbus(socket.to_str().unwrap(), &["broker"]));
    assert_eq!(second.wait_code(), 1);
    assert!(
        second.stderr.text().contains("already running"),
        "{}",
        second.stderr.text()
    );

    // SIGTERM: clean stop, socket removed.
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_code(), 0, "{}", first.stderr.text());
    assert!(!socket.exists());

    // A broker killed with SIGKILL leaves its socket behind; the next one replaces it.
    let mut third = Broker::start_at(&socket, &[]);
    third.signal(Signal::SIGKILL);
    let _ = third.child.wait();
    assert!(socket.exists(), "stale socket left behind");
    let mut fourth = Broker::start_at(&socket, &[]);
    assert_eq!(
        run(socket.to_str().unwrap(), &["pub", "t", "still works"]).0,
        0
    );
    fourth.signal(Signal::SIGINT);
    assert_eq!(fourth.wait_code(), 0);
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["broker", "--help"],
        &["pub", "--help"],
        &["sub", "--help"],
        &["demo", "--help"],
        &["req", "--help"],
        &["serve", "--help"],
        &["bench", "--help"],
    ] {
        let out = std::process::Command::new(support::bin())
            .args(cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
    // The long help carries what every command shares, and promises nothing that is not there.
    let out = std::process::Command::new(support::bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit codes:",
        "5 nobody serves",
        "Topics:",
        "'**'",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        assert!(help.contains(needle), "no {needle:?} in --help:\n{help}");
    }
    let out = std::process::Command::new(support::bin())
        .args(["pub", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["tcp://HOST:PORT", "--tls-ca", "--tls-cert", "--tls-key"] {
        assert!(
            help.contains(needle),
            "no {needle:?} in pub --help:\n{help}"
        );
    }
    let out = std::process::Command::new(support::bin())
        .args(["broker", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--listen", "--tls-cert", "--tls-client-ca"] {
        assert!(
            help.contains(needle),
            "no {needle:?} in broker --help:\n{help}"
        );
    }
}

#[test]
fn the_demo_runs_and_exits_by_itself() {
    let mut demo = Proc::spawn({
        let mut c = std::process::Command::new(support::bin());
        // Smaller than the default so it stays quick in debug builds.
        c.args(["demo", "--probes", "2000", "--burst", "20000"])
            .env("RUST_LOG", "warn");
        c
    });
    assert_eq!(demo.wait_code(), 0, "{}", demo.stderr.text());
    let out = demo.stdout.text();
    assert!(out.contains("demo/chat: hello #1"), "{out}");
    assert!(out.contains("latency"), "{out}");
    assert!(out.contains("demo finished"), "{out}");
}

#[test]
fn bench_reports_percentiles_and_draws_the_distribution() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("latency.svg");
    for (mode, extra) in [
        (
            "latency",
            vec!["--count", "300", "--plot", svg.to_str().unwrap()],
        ),
        ("latency", vec!["--count", "300", "--rate", "20000"]),
        ("throughput", vec!["--count", "5000", "--size", "64"]),
        (
            "fanout",
            vec![
                "--count",
                "200",
                "--subscribers",
                "2",
                "--wait",
                "spin-park",
            ],
        ),
    ] {
        let mut cmd = std::process::Command::new(support::bin());
        cmd.args(["bench", mode, "--json"])
            .args(&extra)
            .env("RUST_LOG", "warn");
        let mut p = Proc::spawn(cmd);
        assert_eq!(p.wait_code(), 0, "{mode}: {}", p.stderr.text());
        let v: serde_json::Value = serde_json::from_str(&p.stdout.text()).unwrap();
        let p50 = v["p50_ns"].as_u64().unwrap();
        assert!(
            p50 > 0 && p50 <= v["p99_ns"].as_u64().unwrap() && p50 <= v["max_ns"].as_u64().unwrap(),
            "{v}"
        );
        if mode == "throughput" {
            assert!(v["messages_per_second"].as_f64().unwrap() > 0.0, "{v}");
        }
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.starts_with("<svg") && drawn.contains("percentile"),
        "an SVG plot"
    );
}

#[test]
fn any_bytes_round_trip_through_pub_file_and_sub_raw() {
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let blob: Vec<u8> = (0..=255u8).chain(*b"\n\r\0 end").collect();
    std::fs::write(&file, &blob).unwrap();
    // `sub --format raw` writes into a file: its bytes are compared, not lines.
    let saved = dir.path().join("saved");
    let mut cmd = shmbus(
        broker.bus(),
        &["sub", "bin/*", "--count", "1", "--format", "raw"],
    );
    cmd.stdout(std::fs::File::create(&saved).unwrap())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut raw = cmd.spawn().unwrap();
    let raw_err = support::Lines::from_stream(raw.stderr.take().unwrap());
    raw_err.wait_for("subscribed bin/*");
    let mut hex = broker.subscriber(&["bin/*", "--count", "1", "--format", "hex"]);
    let (code, _, err) = run(
        broker.bus(),
        &["pub", "bin/blob", "--file", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(raw.wait().unwrap().success(), "{}", raw_err.text());
    assert_eq!(std::fs::read(&saved).unwrap(), blob);
    assert_eq!(hex.wait_code(), 0);
    let expected: String = blob.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex.stdout.text(), format!("bin/blob\t{expected}"));

    // From stdin, NUL-delimited: newlines and invalid UTF-8 are part of the messages.
    let mut sub = broker.subscriber(&["nul", "--count", "2", "--format", "hex"]);
    let mut p = Proc::start(
        shmbus(broker.bus(), &["pub", "nul", "--null"]),
        std::process::Stdio::piped(),
    );
    let stdin = p.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, b"a\nb\0\xff\xfe\0").unwrap();
    assert_eq!(p.wait_code(), 0);
    assert_eq!(sub.wait_code(), 0);
    assert_eq!(sub.stdout.text(), "nul\t610a62\nnul\tfffe");
}

#[test]
fn logs_written_to_a_pipe_have_no_colour_escapes() {
    let mut broker = Broker::start(&[]);
    assert_eq!(run(broker.bus(), &["pub", "t", "x"]).0, 0);
    broker.proc.signal(Signal::SIGTERM);
    assert_eq!(broker.proc.wait_code(), 0);
    let log = broker.proc.stderr.text();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a piped log: {log:?}"
    );
    // A client that leaves normally is logged as leaving, not as an error.
    assert!(log.contains("client left"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_lossy_flood_reports_its_losses_in_a_few_lines() {
    let broker = Broker::start(&["--ring-capacity", "65536", "--max-payload", "1024"]);
    let mut sub = broker.subscriber(&["flood", "--lossy"]);
    let start = std::time::Instant::now();
    assert_eq!(
        run(broker.bus(), &["pub", "flood", "x", "--count", "1000000"]).0,
        0
    );
    sub.stderr.wait_for("were lost");
    let seconds = start.elapsed().as_secs();
    sub.signal(Signal::SIGTERM);
    let _ = sub.child.wait();
    let lost = sub
        .stderr
        .lines()
        .into_iter()
        .filter(|l| l.contains("were lost"))
        .count();
    // At most one report a second (per topic), however many gaps.
    assert!(lost as u64 <= seconds + 2, "{lost} reports in {seconds} s");
}

#[test]
fn sigterm_stops_a_subscriber_cleanly_even_under_traffic() {
    let broker = Broker::start(&[]);
    let mut idle = broker.subscriber(&["quiet"]);
    idle.signal(Signal::SIGTERM);
    assert_eq!(idle.wait_code(), 0);
    let mut busy = broker.subscriber(&["busy"]);
    let flood = Proc::spawn(shmbus(
        broker.bus(),
        &["pub", "busy", "x", "--count", "100000000"],
    ));
    busy.stdout.wait_for("busy\tx");
    busy.signal(Signal::SIGTERM);
    assert_eq!(busy.wait_code(), 0);
    flood.signal(Signal::SIGKILL);
}

#[test]
fn a_publisher_held_back_by_a_stopped_subscriber_says_who() {
    let broker = Broker::start(&[
        "--ring-capacity",
        "65536",
        "--max-payload",
        "1024",
        "--evict-after",
        "3",
    ]);
    let sub = broker.subscriber(&["held"]);
    sub.signal(Signal::SIGSTOP);
    let mut p = Proc::spawn(shmbus(
        broker.bus(),
        &["pub", "held", "x", "--count", "10000"],
    ));
    let notice = p.stderr.wait_for("held back by");
    assert!(
        notice.contains(&format!("pid {} (\"shmbus\"", sub.child.id())),
        "{notice}"
    );
    // The broker evicts the stopped subscriber, and the publisher goes on to the end.
    assert_eq!(p.wait_code(), 0, "{}", p.stderr.text());
    sub.signal(Signal::SIGCONT);
}

#[test]
fn bench_measures_beside_cpu_bound_processes_and_stops_them() {
    let out = std::process::Command::new(support::bin())
        .args([
            "bench",
            "latency",
            "--count",
            "200",
            "--wait",
            "spin-park",
            "--load",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("beside 1 CPU-bound processes"), "{stdout}");
    // The load processes are gone with the measurement.
    let burners: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmd| cmd.windows(16).any(|w| w == b"bench-role\0burn\0"))
        .collect();
    assert!(burners.is_empty(), "{} load processes left", burners.len());
}
