//! Request/response against a real broker process: the API and the CLI (`req`, `serve`), every
//! error (no server, timeout, server gone, abandoned, too large, already served), crashes of
//! servers and requesters (kill -9), concurrency, streams, late answers, callbacks, and no timer
//! left behind.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use nix::sys::signal::Signal;
use shmbus::{Bus, RequestError, RespondError, ServeError};
use support::{Broker, Proc, run, shmbus};

/// Long enough never to be the reason a test passes: a result that needed this long to come
/// means the thing tested did not happen.
const LONG: Duration = Duration::from_secs(60);

/// `shmbus serve ARGS` in a process group of its own (so killing the group takes its `--exec`
/// children too), once it said it serves.
fn serve(broker: &Broker, args: &[&str]) -> Proc {
    let mut full = vec!["serve"];
    full.extend_from_slice(args);
    let mut cmd = shmbus(broker.bus(), &full);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let p = Proc::spawn(cmd);
    p.stderr.wait_for(&format!("serving {}", args[0]));
    p
}

/// How many descriptors the broker process holds (2 per ring, 1 per connection, and its own).
fn broker_fds(broker: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", broker.proc.child.id()))
        .unwrap()
        .count()
}

/// Waits (at most [`LONG`]) until the broker holds no more descriptors than `baseline`.
fn wait_for_broker_fds(broker: &Broker, baseline: usize) {
    let deadline = std::time::Instant::now() + LONG;
    while broker_fds(broker) > baseline {
        assert!(
            std::time::Instant::now() < deadline,
            "broker holds {} fds, had {baseline}",
            broker_fds(broker)
        );
        std::thread::yield_now();
    }
}

/// Kills process `p`'s whole group with SIGKILL and reaps it.
fn kill_group(p: &mut Proc) {
    nix::sys::signal::killpg(p.pid(), Signal::SIGKILL).unwrap();
    let _ = p.child.wait();
}

#[test]
fn cli_server_answers_cli_and_api_requesters() {
    let broker = Broker::start(&[]);
    let _echo = serve(&broker, &["calc/echo", "--echo"]);
    let (code, out, err) = run(broker.bus(), &["req", "calc/echo", "hello\tthere"]);
    assert_eq!((code, out.as_str()), (0, "hello\\tthere"), "{err}");

    let bus = Bus::connect(broker.bus()).unwrap();
    let answer = bus
        .request_timeout("calc/echo", b"\x00binary\xff", LONG)
        .unwrap();
    assert_eq!(answer.payload(), b"\x00binary\xff");

    let _upper = serve(&broker, &["calc/upper", "--exec", "tr a-z A-Z"]);
    let answer = bus.request_timeout("calc/upper", b"shout", LONG).unwrap();
    assert_eq!(answer.payload(), b"SHOUT");
}

#[test]
fn exit_codes_and_errors_of_the_cli() {
    let broker = Broker::start(&[]);
    let (code, _, err) = run(broker.bus(), &["req", "nobody/home", "x"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("nobody/home"), "{err}");

    let _slow = serve(&broker, &["slow", "--exec", "sleep 30"]);
    let (code, _, err) = run(broker.bus(), &["req", "slow", "x", "--timeout", "0.2"]);
    assert_eq!(code, 4, "{err}");

    let (code, _, err) = run(broker.bus(), &["serve", "slow", "--echo"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"slow\"") && err.contains("already served"),
        "{err}"
    );

    let (code, _, err) = run(broker.bus(), &["serve", "a/*", "--echo"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(broker.bus(), &["req", "a/**", "x"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn no_server_is_reported_at_once_and_a_second_server_is_refused() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    match bus.request_timeout("svc/a", b"x", LONG) {
        Err(RequestError::NoServer { topic }) => assert_eq!(topic, "svc/a"),
        other => panic!("expected NoServer, got {other:?}"),
    }
    let server = bus.serve("svc/a").unwrap();
    let other = Bus::connect(broker.bus()).unwrap();
    match other.serve("svc/a") {
        Err(ServeError::AlreadyServed { topic, .. }) => assert_eq!(topic, "svc/a"),
        other => panic!("expected AlreadyServed, got {other:?}"),
    }
    drop(server);
    // Serving ended with the handle: another may serve at once.
    let _again = other.serve("svc/a").unwrap();
}

#[test]
fn many_requesters_in_threads_and_processes_get_their_own_answers() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let _server = bus
        .serve_with("math/square", |req| {
            let n = u64::from_le_bytes(req.payload().try_into().expect("8 bytes"));
            (n * n).to_le_bytes()
        })
        .unwrap();
    let _echo = serve(&broker, &["calc/echo", "--echo"]);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let n = t * 1_000_000 + i;
                    let answer = bus.request_timeout("math/square", &n.to_le_bytes(), LONG);
                    let answer = answer.unwrap();
                    assert_eq!(answer.payload(), (n * n).to_le_bytes());
                }
            })
        })
        .collect();
    let mut clis: Vec<Proc> = (0..3)
        .map(|i| {
            let payload = format!("process {i}");
            Proc::spawn(shmbus(broker.bus(), &["req", "calc/echo", &payload]))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (i, p) in clis.iter_mut().enumerate() {
        p.expect_success();
        assert_eq!(p.stdout.text(), format!("process {i}"));
    }
}

#[test]
fn killing_a_server_fails_its_requests_at_once_and_frees_the_topic() {
    let broker = Broker::start(&[]);
    let mut server = serve(&broker, &["held", "--exec", "echo started >&2; sleep 600"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let bus = bus.clone();
            std::thread::spawn(move || bus.request_timeout("held", b"x", LONG))
        })
        .collect();
    for _ in 0..3 {
        server.stderr.wait_for("started");
    }
    kill_group(&mut server);
    for w in waiting {
        match w.join().unwrap() {
            Err(RequestError::ServerGone { topic }) => assert_eq!(topic, "held"),
            other => panic!("expected ServerGone, got {other:?}"),
        }
    }
    let _next = serve(&broker, &["held", "--echo"]);
    assert_eq!(
        bus.request_timeout("held", b"y", LONG).unwrap().payload(),
        b"y"
    );
}

#[test]
fn a_server_dropped_with_requests_open_fails_them_and_one_dropped_request_is_abandoned() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("drop/me").unwrap();
    let requester = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let first = bus.request_timeout("drop/me", b"one", LONG);
            let second = bus.request_timeout("drop/me", b"two", LONG);
            (first, second)
        })
    };
    let one = server.recv().unwrap();
    assert_eq!(one.payload(), b"one");
    drop(one); // unanswered: the requester hears it was abandoned
    let two = server.recv().unwrap().into_responder();
    drop(server); // serving ends with `two` unanswered...
    let (first, second) = requester.join().unwrap();
    assert!(
        matches!(first, Err(RequestError::Abandoned { .. })),
        "{first:?}"
    );
    // ...and its requester learns the server went, though the responder still exists.
    assert!(
        matches!(second, Err(RequestError::ServerGone { .. })),
        "{second:?}"
    );
    drop(two);
}

#[test]
fn killing_a_requester_sends_the_answer_nowhere_and_leaks_nothing() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("answer/later").unwrap();
    let baseline = broker_fds(&broker);
    let mut requester = Proc::spawn(shmbus(
        broker.bus(),
        &["req", "answer/later", "x", "--timeout", "600"],
    ));
    let request = server.recv().unwrap().into_responder();
    requester.signal(Signal::SIGKILL);
    let _ = requester.child.wait();
    // The broker retires the dead requester's inbox; until it has noticed, an answer still lands
    // in the orphaned inbox, which then goes too.
    match request.respond(b"too late") {
        Ok(()) | Err(RespondError::RequesterGone) => {}
        Err(e) => panic!("unexpected {e}"),
    }
    // Everything the requester made the broker create (its inbox's descriptors) is released,
    // and the server's writer on the inbox is dropped at its next answer to anyone.
    wait_for_broker_fds(&broker, baseline);
    let other = Bus::connect(broker.bus()).unwrap();
    let asker = std::thread::spawn(move || other.request_timeout("answer/later", b"ok?", LONG));
    server.recv().unwrap().respond(b"ok").unwrap();
    assert_eq!(asker.join().unwrap().unwrap().payload(), b"ok");
}

#[test]
fn a_late_answer_never_reaches_a_later_request() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("late").unwrap();
    let requester = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let first = bus.request_timeout("late", b"first", Duration::from_millis(100));
            (first, bus)
        })
    };
    let first = server.recv().unwrap().into_responder();
    let (outcome, bus) = requester.join().unwrap();
    assert!(
        matches!(outcome, Err(RequestError::Timeout { .. })),
        "{outcome:?}"
    );
    // The answer comes after the requester gave up: it must not be taken for the next one.
    let _ = first.respond(b"stale");
    let second = std::thread::spawn(move || bus.request_timeout("late", b"second", LONG));
    let request = server.recv().unwrap();
    assert_eq!(request.payload(), b"second");
    request.respond(b"fresh").unwrap();
    assert_eq!(second.join().unwrap().unwrap().payload(), b"fresh");
}

#[test]
fn streams_arrive_in_order_and_end_with_the_marker() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("count").unwrap();
    let serving = std::thread::spawn(move || {
        for _ in 0..4 {
            let request = server.recv().unwrap();
            let n: u32 = std::str::from_utf8(request.payload())
                .unwrap()
                .parse()
                .unwrap();
            let mut stream = request.stream();
            for i in 0..n {
                stream.send(i.to_string().as_bytes()).unwrap();
            }
            stream.end().unwrap();
        }
    });
    let answers: Vec<String> = bus
        .request_stream_timeout("count", b"1000", LONG)
        .unwrap()
        .map(|r| String::from_utf8(r.unwrap().payload().to_vec()).unwrap())
        .collect();
    assert_eq!(
        answers,
        (0..1000).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    let (code, out, err) = run(broker.bus(), &["req", "count", "3"]);
    assert_eq!((code, out.as_str()), (0, "0\n1\n2"), "{err}");
    // A requester's streams, one after the other on its inbox.
    let mut requester = bus.requester("count").unwrap();
    for _ in 0..2 {
        let stream = requester.request_stream(b"5", Some(LONG)).unwrap();
        assert_eq!(stream.map(|r| r.unwrap().len()).sum::<usize>(), 5);
    }
    serving.join().unwrap();
}

#[test]
fn requests_beyond_the_limit_are_too_large_before_anything_is_sent() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let _server = bus
        .serve_with("big", |req| req.payload().len().to_le_bytes())
        .unwrap();
    let too_big = vec![0u8; bus.max_payload()];
    match bus.request_timeout("big", &too_big, LONG) {
        Err(RequestError::TooLarge { len, max, .. }) => assert!(len > max),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let fits = vec![0u8; 4096];
    let answer = bus.request_timeout("big", &fits, LONG).unwrap();
    assert_eq!(answer.payload(), 4096usize.to_le_bytes());
}

#[test]
fn panicking_handlers_are_reported_and_the_dispatchers_go_on() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let server = bus
        .serve_with("fragile", |req| {
            assert_ne!(req.payload(), b"boom", "handler refuses boom");
            req.payload().to_vec()
        })
        .unwrap();
    let answer = bus.request_timeout("fragile", b"boom", LONG);
    assert!(
        matches!(answer, Err(RequestError::Abandoned { .. })),
        "{answer:?}"
    );
    assert_eq!(
        bus.request_timeout("fragile", b"fine", LONG)
            .unwrap()
            .payload(),
        b"fine"
    );
    assert_eq!(server.panics(), 1);

    let (tx, rx) = mpsc::channel();
    let seen = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&seen);
    let listener = bus
        .on("events/*", move |sample| {
            counter.fetch_add(1, Ordering::Relaxed);
            assert_ne!(sample.payload(), b"boom", "handler refuses boom");
            tx.send(sample.payload().to_vec()).unwrap();
        })
        .unwrap();
    let mut publisher = bus.publisher("events/a").unwrap();
    publisher.publish(b"boom").unwrap();
    publisher.publish(b"after").unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), b"after");
    assert_eq!(listener.panics(), 1);
    drop(listener);
    // The dispatcher thread ended and dropped the handler with it.
    assert_eq!(Arc::strong_count(&seen), 1);
}

#[test]
fn no_timer_is_left_behind_by_answered_and_timed_out_requests() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("timers").unwrap();
    let (late_tx, late_rx) = mpsc::channel();
    let serving = std::thread::spawn(move || {
        // A burst: answered requests, abandoned streams, and requests left to time out (their
        // answers go after the requester gave up).
        for i in 0..200 {
            let request = server.recv().unwrap();
            match i % 10 {
                0 => drop(request.stream()),
                1 => late_tx.send(request.into_responder()).unwrap(),
                _ => request.respond(b"ok").unwrap(),
            }
        }
        server
    });
    for i in 0..200 {
        if i % 10 == 1 {
            let outcome = bus.request_timeout("timers", b"x", Duration::from_millis(50));
            assert!(
                matches!(outcome, Err(RequestError::Timeout { .. })),
                "{outcome:?}"
            );
            let _ = late_rx.recv().unwrap().respond(b"late");
            continue;
        }
        let outcome = bus.request_timeout("timers", b"x", LONG);
        match i % 10 {
            0 => assert!(
                matches!(outcome, Err(RequestError::Abandoned { .. })),
                "{outcome:?}"
            ),
            _ => assert_eq!(outcome.unwrap().payload(), b"ok"),
        }
    }
    let mut server = serving.join().unwrap();
    // t2_bus's server-side timer fired 30 s after an answered request and killed the bus; here,
    // 40 s later, the same server and bus still serve.
    std::thread::sleep(Duration::from_secs(40));
    let asker = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.request_timeout("timers", b"still?", LONG))
    };
    server.recv().unwrap().respond(b"yes").unwrap();
    assert_eq!(asker.join().unwrap().unwrap().payload(), b"yes");
    assert!(bus.is_connected());
}

#[test]
fn dropping_a_bus_after_requests_releases_everything_at_the_broker() {
    let broker = Broker::start(&[]);
    let server_bus = Bus::connect(broker.bus()).unwrap();
    let _server = server_bus
        .serve_with("echo", |req| req.payload().to_vec())
        .unwrap();
    let baseline = broker_fds(&broker);
    let bus = Bus::connect(broker.bus()).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let bus = bus.clone();
            std::thread::spawn(move || bus.request_timeout("echo", b"x", LONG).unwrap().len())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    // The pooled inboxes go with the last handle, and with them the connection (an inbox that
    // kept the connection alive would keep its socket and rings at the broker forever).
    drop(bus);
    wait_for_broker_fds(&broker, baseline);
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Query {
    name: String,
    limit: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Rows {
    names: Vec<String>,
}

#[test]
fn typed_requests_and_responses_are_validated_in_place() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut server = bus.serve("db/query").unwrap();
    let serving = std::thread::spawn(move || {
        let request = server.recv().unwrap();
        let rows = {
            let query = request.payload_typed::<Query>().unwrap();
            let n = query.limit.to_native();
            Rows {
                names: (0..n).map(|i| format!("{}-{i}", query.name)).collect(),
            }
        };
        request.respond_typed(&rows).unwrap();
        // An answer of another type (raw bytes, no schema tag).
        let request = server.recv().unwrap();
        assert_eq!(request.payload_typed::<Query>().unwrap().limit, 0);
        request.respond(&[0xff; 3]).unwrap();
        // An answer tagged as Rows whose bytes are no Rows archive.
        let request = server.recv().unwrap();
        let mut forged = b"shmbusT1".to_vec();
        forged.extend_from_slice(&shmbus::Schema::of::<Rows>().get().to_le_bytes());
        forged.extend_from_slice(&[0xff; 3]);
        request.respond(&forged).unwrap();
        // A request that is not a query.
        let request = server.recv().unwrap();
        assert!(matches!(
            request.payload_typed::<Query>(),
            Err(shmbus::RecvError::TypeMismatch { .. })
        ));
        request.respond(b"rejected").unwrap();
    });
    let mut requester = bus.requester("db/query").unwrap();
    let query = Query {
        name: "row".into(),
        limit: 3,
    };
    let rows = requester
        .request_typed::<Query, Rows>(&query, Some(LONG))
        .unwrap();
    let names: Vec<&str> = rows.names.iter().map(|n| n.as_str()).collect();
    assert_eq!(names, ["row-0", "row-1", "row-2"]);
    drop(rows);
    let empty = Query {
        name: String::new(),
        limit: 0,
    };
    match requester.request_typed::<Query, Rows>(&empty, Some(LONG)) {
        Err(RequestError::TypeMismatch { topic, .. }) => assert_eq!(topic, "db/query"),
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    match requester.request_typed::<Query, Rows>(&empty, Some(LONG)) {
        Err(RequestError::Invalid { topic, .. }) => assert_eq!(topic, "db/query"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let answer = requester.request_timeout(b"not a query", LONG).unwrap();
    assert_eq!(answer.payload(), b"rejected");
    serving.join().unwrap();
}

#[test]
fn busy_requester_and_server_make_no_system_call_per_request() {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(strace) = strace else {
        assert!(
            std::env::var_os("SHMBUS_REQUIRE_STRACE").is_none(),
            "strace is required (SHMBUS_REQUIRE_STRACE) but not installed"
        );
        println!("skipping: strace is not installed");
        return;
    };
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("strace.txt");
    let requests: u64 = 200_000;
    // `bench reqrep` runs a busy-polling server process and a busy-polling requester; `-f`
    // counts both (the broker, a separate process, is not traced).
    let mut cmd = std::process::Command::new(strace);
    cmd.args(["-f", "-c", "-o"])
        .arg(&summary)
        .arg(support::bin())
        .args(["bench", "reqrep", "--wait", "busy", "--count"])
        .arg(requests.to_string())
        .args(["--bus", broker.bus()])
        .env("RUST_LOG", "warn");
    let mut p = Proc::spawn(cmd);
    p.expect_success();
    let text = std::fs::read_to_string(&summary).unwrap();
    let calls: u64 = text
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no total in the strace summary:\n{text}"));
    println!("{calls} system calls for {requests} requests, start-up included");
    assert!(
        calls < requests / 20,
        "{calls} system calls for {requests} requests:\n{text}"
    );
}

#[test]
fn serve_exec_answers_more_requests_than_it_runs_commands_at_once() {
    let broker = Broker::start(&[]);
    let mut server = serve(&broker, &["slow/echo", "--exec", "sleep 0.3; cat"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    // More than the 16 commands it runs at once, and than the requests a server may hold.
    let askers: Vec<_> = (0..40)
        .map(|i| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let payload = format!("request {i}");
                let answer = bus.request_timeout("slow/echo", payload.as_bytes(), LONG);
                (payload, answer.map(|a| a.payload().to_vec()))
            })
        })
        .collect();
    for asker in askers {
        let (payload, answer) = asker.join().unwrap();
        assert_eq!(answer.unwrap(), payload.as_bytes());
    }
    kill_group(&mut server);
}

#[test]
fn answers_kept_while_more_requests_are_made_do_not_block_the_bus() {
    let bus = Bus::embedded().unwrap();
    let _echo = bus
        .serve_with("svc/echo", |req| req.payload().to_vec())
        .unwrap();
    // An answer kept (by this thread or another) while the bus makes many more requests: the
    // inbox it came through is not reused until it is dropped, so the others do not pile up
    // behind it.
    let kept = bus.request("svc/echo", b"kept").unwrap();
    for n in 0..100u32 {
        let answer = bus.request("svc/echo", &n.to_le_bytes()).unwrap();
        assert_eq!(answer.payload(), n.to_le_bytes());
    }
    assert_eq!(kept.payload(), b"kept");
    let others = std::thread::spawn({
        let bus = bus.clone();
        move || {
            for n in 0..100u32 {
                bus.request("svc/echo", &n.to_le_bytes()).unwrap();
            }
        }
    });
    others.join().unwrap();
    drop(kept);
}
