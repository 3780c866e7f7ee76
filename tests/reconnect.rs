//! Broker restarts: clients notice the loss at once, keep their rings, reconnect by themselves
//! when a broker is back at the same address and register again, so traffic resumes without
//! restarting any client. Real broker processes, killed with SIGKILL or stopped with SIGSTOP.

mod support;

use std::time::Instant;

use nix::sys::signal::Signal;
use shmbus::{AttachError, Bus, ControlError, RecvError, RecvTimeoutError, Subscriber};
use support::{Broker, PATIENCE, Proc, eventually, run, shmbus};

/// Receives until the subscriber reports `wanted`, ignoring messages (those of rings read before
/// it); fails after [`PATIENCE`].
fn expect_event(sub: &mut Subscriber, wanted: impl Fn(&RecvError) -> bool) -> RecvError {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match sub.recv_deadline(deadline) {
            Ok(_) => {}
            Err(RecvTimeoutError::Failed(e)) if wanted(&e) => return e,
            Err(RecvTimeoutError::Failed(e)) => eprintln!("other event: {e}"),
            Err(e) => panic!("no such event before the deadline: {e}"),
        }
    }
}

fn is_gap(e: &RecvError) -> bool {
    matches!(
        e,
        RecvError::Lagged {
            missed: RecvError::MISSED_UNKNOWN,
            ..
        }
    )
}

/// Receives the messages `first..first + n` of `topic` in order, skipping other topics' (and
/// what earlier publishers left), failing on a gap.
fn expect_sequence(sub: &mut Subscriber, topic: &str, first: u64, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    let mut next = first;
    while next < first + n {
        let sample = match sub.recv_deadline(deadline) {
            Ok(sample) => sample,
            Err(RecvTimeoutError::Failed(e)) => panic!("unexpected event while at {next}: {e}"),
            Err(e) => panic!("message {next} of {topic} did not come: {e}"),
        };
        if sample.topic() != topic {
            continue;
        }
        let value: u64 = std::str::from_utf8(sample.payload())
            .unwrap()
            .parse()
            .unwrap();
        if value < first {
            continue; // published before the subscriber registered again
        }
        assert_eq!(value, next, "messages of {topic} lost or reordered");
        next += 1;
    }
}

/// Number of lines of `proc`'s stdout that name `topic`.
fn lines_of(proc: &Proc, topic: &str) -> usize {
    proc.stdout
        .lines()
        .iter()
        .filter(|l| l.starts_with(&format!("{topic}\t")))
        .count()
}

#[test]
fn after_a_kill_9_of_the_broker_clients_reconnect_by_themselves_and_traffic_resumes() {
    let mut broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("restart/api").unwrap();
    let mut sub = bus.subscribe("restart/**").unwrap();
    // Other processes: a paced CLI publisher and a CLI subscriber.
    let cli_pub = Proc::spawn(shmbus(
        broker.bus(),
        &[
            "pub",
            "restart/cli",
            "tick",
            "--rate",
            "200",
            "--count",
            "100000000",
        ],
    ));
    let cli_sub = broker.subscriber(&["restart/**"]);
    eventually(
        "the CLI subscriber gets the CLI publisher's messages",
        || lines_of(&cli_sub, "restart/cli") > 5,
    );
    publisher.publish(b"0").unwrap();
    expect_sequence(&mut sub, "restart/api", 0, 1);

    broker.proc.signal(Signal::SIGKILL);
    let _ = broker.proc.child.wait();
    // The loss is an event, at once, and the rings go on working meanwhile.
    expect_event(&mut sub, |e| *e == RecvError::BrokerLost);
    assert!(!bus.is_connected());
    cli_sub.stderr.wait_for("the broker is gone");
    publisher.publish(b"1").unwrap();
    expect_sequence(&mut sub, "restart/api", 1, 1);

    let _again = Broker::start_at(&broker.socket, &[]);
    eventually("the bus reconnects", || bus.is_connected());
    // The subscriber registered again and says what it may have missed: each pattern.
    match expect_event(&mut sub, is_gap) {
        RecvError::Lagged { topic, .. } => assert_eq!(topic.as_str(), "restart/**"),
        other => unreachable!("{other}"),
    }
    cli_sub.stderr.wait_for("while the broker was away");
    // Everything published from now on arrives, through the new broker's rings.
    for n in 100..200u64 {
        publisher.publish(n.to_string().as_bytes()).unwrap();
    }
    expect_sequence(&mut sub, "restart/api", 100, 100);
    // The CLI publisher moved too: its messages reach the CLI subscriber and this one.
    let before = lines_of(&cli_sub, "restart/cli");
    eventually(
        "the CLI subscriber gets new messages after the restart",
        || lines_of(&cli_sub, "restart/cli") > before + 20,
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let sample = sub.recv_deadline(deadline).expect("CLI messages resume");
        if sample.topic() == "restart/cli" {
            break;
        }
    }
    // New handles work on the new broker.
    let mut late = bus.publisher("restart/late").unwrap();
    late.publish(b"7").unwrap();
    expect_sequence(&mut sub, "restart/late", 7, 1);
    for mut p in [cli_pub, cli_sub] {
        p.signal(Signal::SIGTERM);
        let _ = p.child.wait();
    }
}

#[test]
fn a_stopped_broker_holds_no_traffic_back_and_resumes_without_reconnecting() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("stopped/a").unwrap();
    let mut sub = bus.subscribe("stopped/*").unwrap();
    broker.proc.signal(Signal::SIGSTOP);
    for n in 0..50u64 {
        publisher.publish(n.to_string().as_bytes()).unwrap();
    }
    expect_sequence(&mut sub, "stopped/a", 0, 50);
    assert!(bus.is_connected(), "a stopped broker is not a lost one");
    broker.proc.signal(Signal::SIGCONT);
    // The control plane answers again: new handles, and no gap reported.
    let mut other = bus.publisher("stopped/b").unwrap();
    other.publish(b"5").unwrap();
    expect_sequence(&mut sub, "stopped/b", 5, 1);
    assert_eq!(
        sub.try_recv().map(|s| s.topic().to_string()).unwrap_err(),
        shmbus::TryRecvError::Empty
    );
}

#[test]
fn when_the_broker_never_comes_back_clients_keep_their_rings_and_the_cli_exits_3() {
    let mut broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("gone/a").unwrap();
    let mut sub = bus.subscribe("gone/a").unwrap();
    let mut cli_sub = broker.subscriber(&["gone/a"]);
    broker.proc.signal(Signal::SIGKILL);
    let _ = broker.proc.child.wait();
    expect_event(&mut sub, |e| *e == RecvError::BrokerLost);
    // What was attached keeps working, in this process and between processes.
    for n in 0..10u64 {
        publisher.publish(n.to_string().as_bytes()).unwrap();
    }
    expect_sequence(&mut sub, "gone/a", 0, 10);
    // New attachments report the loss instead of hanging.
    match bus.publisher("gone/new") {
        Err(AttachError::Broker {
            source: ControlError::BrokerGone,
            ..
        }) => {}
        other => panic!("expected BrokerGone, got {other:?}"),
    }
    assert!(!bus.is_connected());
    eventually("the CLI subscriber still reads the ring", || {
        lines_of(&cli_sub, "gone/a") == 10
    });
    // Commands that need the broker say so and exit 3.
    for args in [
        &["pub", "gone/a", "x"][..],
        &["req", "gone/q", "x"],
        &["sub", "gone/b"],
    ] {
        let (code, _, stderr) = run(broker.bus(), args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert!(stderr.contains(broker.bus()), "{args:?}: {stderr}");
    }
    cli_sub.signal(Signal::SIGTERM);
    assert_eq!(cli_sub.wait_code(), 0);
}

#[test]
fn servers_requesters_and_state_owners_go_on_across_a_broker_restart() {
    let mut broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let _server = bus
        .serve_with("calc/echo", |request| request.payload().to_vec())
        .unwrap();
    let mut requester = bus.requester("calc/echo").unwrap();
    assert_eq!(requester.request(b"before").unwrap().payload(), b"before");
    let mut owner = bus.state_publisher("config/a").unwrap();
    owner.put("kept", b"1").unwrap();
    let mut watcher = bus.watch_state("config/**").unwrap();

    broker.proc.signal(Signal::SIGKILL);
    let _ = broker.proc.child.wait();
    let _again = Broker::start_at(&broker.socket, &[]);
    eventually("the bus reconnects", || bus.is_connected());

    // The server serves again by itself: this process's requests and another process's.
    eventually("the server serves the new broker", || {
        bus.request_timeout("calc/echo", b"x", PATIENCE)
            .is_ok_and(|r| r.payload() == b"x")
    });
    assert_eq!(requester.request(b"after").unwrap().payload(), b"after");
    let (code, stdout, stderr) = run(broker.bus(), &["req", "calc/echo", "from the CLI"]);
    assert_eq!((code, stdout.trim()), (0, "from the CLI"), "{stderr}");

    // The owner owns its collection again with its next change, content and all; the watcher
    // catches up from the new broker.
    owner.put("added", b"2").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while watcher
        .get("config/a", "added")
        .is_none_or(|v| **v != *b"2")
    {
        if let Err(e) = watcher.recv_deadline(deadline) {
            panic!("the watcher did not catch up: {e}");
        }
    }
    assert_eq!(**watcher.get("config/a", "kept").unwrap(), *b"1");
    let (code, stdout, _) = run(broker.bus(), &["state", "get", "config/a"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("kept 1") && stdout.contains("added 2"),
        "{stdout}"
    );
}
