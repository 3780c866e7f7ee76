//! The C API as C programs use it: the examples (`ffi/examples/*.c`) and a test program
//! (`ffi/tests/c/peer.c`), compiled with the system C compiler during the test, run as separate
//! processes against a real broker, with Rust peers on the other side where it matters.
//!
//! See `support/mod.rs` for how the library and the broker are found.

mod support;

use std::time::Duration;

use shmbus::{Bus, TryRecvError};
use support::{Proc, TestBroker, compile};

fn example(name: &str) -> std::path::PathBuf {
    compile(&format!("examples/{name}.c"))
}

fn peer() -> std::path::PathBuf {
    compile("tests/c/peer.c")
}

/// Receives `n` messages as (topic, payload) pairs.
fn receive(sub: &mut shmbus::Subscriber, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let sample = sub
                .recv_timeout(support::PATIENCE)
                .expect("a message in time");
            (
                sample.topic().to_string(),
                String::from_utf8(sample.payload().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn c_publisher_to_rust_subscriber_by_copy_by_loan_and_from_stdin() {
    let broker = TestBroker::start();
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut sub = bus.subscribe("c2r/**").unwrap();
    let publish = example("pub");

    let mut by_copy = Proc::spawn(
        &publish,
        &["-b", broker.bus(), "c2r/args", "one", "two words"],
    );
    by_copy.expect_success();
    assert_eq!(
        receive(&mut sub, 2),
        [
            ("c2r/args".to_string(), "one".to_string()),
            ("c2r/args".into(), "two words".into())
        ]
    );

    let mut by_loan = Proc::spawn(&publish, &["-b", broker.bus(), "-n", "3", "c2r/loaned"]);
    by_loan.expect_success();
    let got = receive(&mut sub, 3);
    let want: Vec<_> = (0..3)
        .map(|i| ("c2r/loaned".to_string(), format!("c2r/loaned #{i}")))
        .collect();
    assert_eq!(got, want);

    let mut from_stdin = Proc::spawn(&publish, &["-b", broker.bus(), "c2r/lines"]);
    from_stdin.send("first line\nsecond\n");
    from_stdin.expect_success();
    assert_eq!(
        receive(&mut sub, 2),
        [
            ("c2r/lines".to_string(), "first line".to_string()),
            ("c2r/lines".into(), "second".into())
        ]
    );
    assert_eq!(
        sub.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "nothing more"
    );
}

#[test]
fn rust_publisher_to_c_subscriber() {
    let broker = TestBroker::start();
    let mut c_sub = Proc::spawn(&example("sub"), &["-b", broker.bus(), "-n", "3", "r2c"]);
    c_sub.stderr.wait_for("subscribed r2c");
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("r2c").unwrap();
    publisher.publish(b"hello from Rust").unwrap();
    publisher.publish(b"tab\there\nnewline").unwrap();
    let mut loan = publisher.loan(5).unwrap();
    loan.as_mut_slice().copy_from_slice(b"loan!");
    loan.commit().expect("not revoked");
    c_sub.expect_success();
    assert_eq!(
        c_sub.stdout.lines(),
        [
            "r2c\thello from Rust",
            "r2c\ttab\\there\\nnewline",
            "r2c\tloan!"
        ]
    );
}

#[test]
fn c_to_c_with_wildcard_subscriptions() {
    let broker = TestBroker::start();
    let publish = example("pub");
    let run_pub = |topic: &str, message: &str| {
        Proc::spawn(&publish, &["-b", broker.bus(), topic, message]).expect_success();
    };
    // A ring that exists before the subscription; what it held then is not delivered.
    run_pub("w/old", "before");
    let mut c_sub = Proc::spawn(
        &example("sub"),
        &["-b", broker.bus(), "-n", "5", "w/**", "x/*"],
    );
    c_sub.stderr.wait_for("subscribed w/**");
    c_sub.stderr.wait_for("subscribed x/*");
    run_pub("w/old", "after");
    run_pub("w/new/deep", "created later");
    run_pub("x/y", "one level");
    run_pub("x/y/z", "too deep for x/*");
    run_pub("other", "not matched");
    run_pub("w/*", "a wildcard publish");
    run_pub("x/**", "matched by both patterns, delivered once");
    c_sub.expect_success();
    let mut lines = c_sub.stdout.lines();
    lines.sort();
    assert_eq!(
        lines,
        [
            "w/*\ta wildcard publish",
            "w/new/deep\tcreated later",
            "w/old\tafter",
            "x/**\tmatched by both patterns, delivered once",
            "x/y\tone level",
        ]
    );
}

#[test]
fn c_subscriber_times_out_with_exit_code_4() {
    let broker = TestBroker::start();
    let mut c_sub = Proc::spawn(
        &example("sub"),
        &["-b", broker.bus(), "-n", "1", "-t", "100", "quiet"],
    );
    assert_eq!(c_sub.wait_code(), 4);
    assert!(c_sub.stderr.text().contains("timed out after 0 messages"));
}

#[test]
fn c_subscriber_with_history_gets_earlier_messages() {
    let broker = TestBroker::start();
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("hist").unwrap();
    for i in 0..5 {
        publisher.publish(format!("m{i}").as_bytes()).unwrap();
    }
    let mut c_sub = Proc::spawn(
        &example("sub"),
        &["-b", broker.bus(), "-n", "3", "-H", "2", "hist"],
    );
    c_sub.stderr.wait_for("subscribed hist");
    publisher.publish(b"m5").unwrap();
    c_sub.expect_success();
    assert_eq!(c_sub.stdout.lines(), ["hist\tm3", "hist\tm4", "hist\tm5"]);
}

#[test]
fn zero_copy_loan_writes_in_the_ring_and_recv_reads_in_place() {
    let broker = TestBroker::start();
    let mut p = Proc::spawn(&peer(), &["zerocopy", broker.bus()]);
    p.expect_success();
    assert_eq!(
        p.stdout.lines(),
        [
            "ok loan-in-ring",
            "ok recv-in-place",
            "ok abort",
            "ok recv-next"
        ]
    );
}

#[test]
fn every_error_path_returns_its_code_and_message() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(
        &peer(),
        &["errors", broker.bus(), dir.path().to_str().unwrap()],
    );
    p.expect_success();
    assert_eq!(
        p.stdout.lines(),
        [
            "ok null-arguments",
            "ok invalid-topic",
            "ok addresses",
            "ok invalid-argument",
            "ok too-large",
            "ok state",
            "ok timeout-and-full",
            "ok strerror",
        ]
    );
}

#[test]
fn lossy_c_subscriber_reports_lagged_with_the_count() {
    let broker = TestBroker::start();
    let mut p = Proc::spawn(&peer(), &["lossy", broker.bus(), "lossy/t"]);
    p.stdout.wait_for("subscribed");
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut publisher = bus.publisher("lossy/t").unwrap();
    // Far more than the ring holds; a lossy subscriber never holds the publisher back.
    let chunk = vec![7u8; 60_000];
    for _ in 0..100 {
        publisher
            .publish_timeout(&chunk, Duration::from_secs(10))
            .unwrap();
    }
    p.send("go\n");
    let lagged = p.stdout.wait_for("lagged ");
    let missed: u64 = lagged["lagged ".len()..].parse().unwrap();
    assert!(missed > 0 && missed < 100, "{lagged}");
    p.expect_success();
    assert!(p.stdout.lines().contains(&"ok lossy".to_string()));
}

#[test]
fn broker_gone_fails_new_attachments_while_attached_rings_keep_working() {
    let mut broker = TestBroker::start();
    let mut p = Proc::spawn(&peer(), &["gone", broker.bus()]);
    p.stdout.wait_for("ready");
    broker.stop();
    p.send("stopped\n");
    p.expect_success();
    assert_eq!(p.stdout.lines(), ["ready", "ok broker-gone"]);
}

#[test]
fn chat_between_two_terminals() {
    let broker = TestBroker::start();
    let chat = example("chat");
    let mut alice = Proc::spawn(&chat, &["-b", broker.bus(), "lobby", "alice"]);
    let mut bob = Proc::spawn(&chat, &["-b", broker.bus(), "lobby", "bob"]);
    alice.stderr.wait_for("joined chat/lobby as alice");
    bob.stderr.wait_for("joined chat/lobby as bob");
    // A Rust participant sees the same room.
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut watcher = bus.subscriber("chat/*").create().unwrap();

    alice.send("hello bob\n");
    bob.stdout.wait_for("alice: hello bob");
    bob.send("hi alice, how are you?\n");
    alice.stdout.wait_for("bob: hi alice, how are you?");
    alice.send("fine, bye"); // no newline: sent at end of input
    alice.close_stdin();
    bob.stdout.wait_for("alice: fine, bye");
    assert_eq!(alice.wait_code(), 0, "{}", alice.stderr.text());
    bob.expect_success();

    // Nobody sees their own messages.
    assert_eq!(alice.stdout.lines(), ["bob: hi alice, how are you?"]);
    assert_eq!(bob.stdout.lines(), ["alice: hello bob", "alice: fine, bye"]);
    let seen: Vec<String> = receive(&mut watcher, 3)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        seen,
        [
            "alice: hello bob",
            "bob: hi alice, how are you?",
            "alice: fine, bye"
        ]
    );
}

#[test]
fn c_programs_report_an_unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = dir.path().join("nobody.sock");
    let nobody = nobody.to_str().unwrap();
    let mut publisher = Proc::spawn(&example("pub"), &["-b", nobody, "t", "m"]);
    assert_eq!(publisher.wait_code(), 3);
    assert!(
        publisher.stderr.text().contains(nobody),
        "{}",
        publisher.stderr.text()
    );
    let mut subscriber = Proc::spawn(&example("sub"), &["-b", nobody, "t"]);
    assert_eq!(subscriber.wait_code(), 3);
    let mut bad = Proc::spawn(&example("pub"), &["-b", nobody, "bad topic", "m"]);
    assert_eq!(bad.wait_code(), 3);
}

#[test]
fn c_publisher_rejects_an_invalid_topic_naming_it() {
    let broker = TestBroker::start();
    let mut p = Proc::spawn(&example("pub"), &["-b", broker.bus(), "a//b", "m"]);
    // Usage, as the command line says for a bad topic.
    assert_eq!(p.wait_code(), 2);
    assert_eq!(
        p.stderr.text(),
        "pub: shmbus_publisher_new: invalid topic \"a//b\": empty fragment at position 2 \
         (invalid topic or pattern)"
    );
}

#[test]
fn c_server_answers_rust_requesters_in_place_and_abandons_what_it_cannot_parse() {
    let broker = TestBroker::start();
    let server = Proc::spawn(
        &example("calc"),
        &["serve", "--bus", broker.bus(), "--count", "3"],
    );
    server.stderr.wait_for("serving calc/add");
    let bus = Bus::connect(broker.bus()).unwrap();
    let answer = bus
        .request_timeout("calc/add", b"2 3", support::PATIENCE)
        .unwrap();
    assert_eq!(answer.payload(), b"5");
    let mut requester = bus.requester("calc/add").unwrap();
    let answer = requester
        .request_timeout(b"-40 2", support::PATIENCE)
        .unwrap();
    assert_eq!(answer.payload(), b"-38");
    match bus.request_timeout("calc/add", b"two three", support::PATIENCE) {
        Err(shmbus::RequestError::Abandoned { .. }) => {}
        other => panic!("expected Abandoned, got {other:?}"),
    }
    let mut server = server;
    server.expect_success();
    // The server served its count and left: the topic is free again.
    match bus.request_timeout("calc/add", b"1 1", support::PATIENCE) {
        Err(shmbus::RequestError::NoServer { .. }) => {}
        other => panic!("expected NoServer, got {other:?}"),
    }
}

#[test]
fn c_requester_asks_a_rust_server_and_reports_each_error_by_exit_code() {
    let broker = TestBroker::start();
    let ask = |a: &str, b: &str| {
        let mut p = Proc::spawn(&example("calc"), &["ask", "--bus", broker.bus(), a, b]);
        let code = p.wait_code();
        (code, p.stdout.text(), p.stderr.text())
    };
    let (code, _, err) = ask("1", "2");
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("nobody serves the topic"), "{err}");

    let bus = Bus::connect(broker.bus()).unwrap();
    let server = bus
        .serve_with("calc/add", |req| {
            let text = std::str::from_utf8(req.payload()).unwrap();
            let sum: i64 = text.split(' ').map(|n| n.parse::<i64>().unwrap()).sum();
            sum.to_string()
        })
        .unwrap();
    let (code, out, err) = ask("20", "22");
    assert_eq!((code, out.as_str()), (0, "42"), "{err}");
    drop(server);

    let mut held = bus.serve("calc/add").unwrap();
    let asking = Proc::spawn(&example("calc"), &["ask", "--bus", broker.bus(), "1", "1"]);
    let request = held
        .recv_timeout(support::PATIENCE)
        .unwrap()
        .into_responder();
    drop(held); // serving ends with the request unanswered
    let mut asking = asking;
    assert_eq!(asking.wait_code(), 1);
    assert!(
        asking
            .stderr
            .text()
            .contains("the server went away without answering"),
        "{}",
        asking.stderr.text()
    );
    drop(request);
}

#[test]
fn request_response_error_paths_of_the_c_api() {
    let broker = TestBroker::start();
    let mut p = Proc::spawn(&peer(), &["reqrep", broker.bus()]);
    p.expect_success();
    assert_eq!(p.stdout.text(), "ok reqrep");
}

#[test]
fn c_examples_exit_like_the_command_line() {
    // The table of DESIGN.md ("Addresses, CLI and exit codes"), which `shmbus` follows.
    assert_eq!(shmbus_ffi::shmbus_exit_code(0), 0);
    let code = |s: shmbus_ffi::shmbus_status| shmbus_ffi::shmbus_exit_code(s as i32);
    use shmbus_ffi::shmbus_status::*;
    assert_eq!(code(SHMBUS_ERR_INVALID_TOPIC), 2);
    assert_eq!(code(SHMBUS_ERR_UNREACHABLE), 3);
    assert_eq!(code(SHMBUS_ERR_TIMEOUT), 4);
    assert_eq!(code(SHMBUS_ERR_NO_SERVER), 5);
    assert_eq!(code(SHMBUS_ERR_CORRUPT), 1);

    let broker = TestBroker::start();
    let mut sub = Proc::spawn(&example("sub"), &["-b", broker.bus(), "bad//topic"]);
    assert_eq!(sub.wait_code(), 2);
    // SIGTERM stops a subscriber cleanly: exit 0, as `shmbus sub` does.
    let mut sub = Proc::spawn(&example("sub"), &["-b", broker.bus(), "quiet"]);
    sub.stderr.wait_for("subscribed quiet");
    let pid = sub.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(sub.wait_code(), 0);
}

#[test]
fn c_programs_reach_a_remote_bus_over_tcp() {
    let (broker, url) = TestBroker::start_listening("tcp://127.0.0.1:0");
    let local = Bus::connect(broker.bus()).unwrap();

    // A C publisher over TCP, by loan, to a local Rust subscriber.
    let mut sub = local.subscribe("remote/**").unwrap();
    Proc::spawn(&example("pub"), &["-b", &url, "-n", "3", "remote/c"]).expect_success();
    let want: Vec<_> = (0..3)
        .map(|i| ("remote/c".to_string(), format!("remote/c #{i}")))
        .collect();
    assert_eq!(receive(&mut sub, 3), want);

    // A local Rust publisher to a C subscriber over TCP, with a wildcard.
    let mut c_sub = Proc::spawn(&example("sub"), &["-b", &url, "-n", "1", "r2c/*"]);
    c_sub.stderr.wait_for("subscribed r2c/*");
    let mut publisher = local.publisher("r2c/x").unwrap();
    publisher.publish(b"over tcp").unwrap();
    c_sub.expect_success();
    assert_eq!(c_sub.stdout.lines(), ["r2c/x\tover tcp"]);
}
