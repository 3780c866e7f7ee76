//! Remote clients: a broker's gateway (`--listen tcp://` and `tls://`) serves clients on other
//! hosts through the same API. Real broker processes on loopback, remote clients in this process
//! (the API) and in child processes (the CLI), certificates made by rcgen for each test.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmbus::{
    Bus, ConnectError, RecvError, RecvTimeoutError, RequestError, Subscriber, TlsClientFiles,
};
use support::pki::Pki;
use support::{Broker, PATIENCE, Proc, eventually, listen_address, listening_broker, run, shmbus};

/// Receives the next message, failing after [`PATIENCE`].
fn next(sub: &mut Subscriber) -> (String, Vec<u8>) {
    let sample = sub.recv_timeout(PATIENCE).expect("a message");
    (sample.topic().to_string(), sample.payload().to_vec())
}

#[test]
fn remote_and_local_clients_exchange_messages_both_ways() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    assert!(remote.is_remote() && !local.is_remote());
    assert_eq!(remote.address().to_string(), url);
    assert_eq!(remote.max_payload(), local.max_payload());

    // Local publisher, remote subscriber, with a wildcard.
    let mut remote_sub = remote.subscribe("sensors/**").unwrap();
    let mut local_pub = local.publisher("sensors/kitchen/temp").unwrap();
    for i in 0..100u32 {
        local_pub.publish(&i.to_le_bytes()).unwrap();
    }
    for i in 0..100u32 {
        let sample = remote_sub.recv_timeout(PATIENCE).unwrap();
        assert_eq!(sample.topic(), "sensors/kitchen/temp");
        assert_eq!(sample.payload(), i.to_le_bytes());
        assert_eq!(sample.publisher(), local_pub.id());
        assert!(!sample.is_in_place());
    }

    // Remote publisher, local subscriber; loans work as locally.
    let mut local_sub = local.subscribe("cmd/*").unwrap();
    let mut remote_pub = remote.publisher("cmd/lights").unwrap();
    remote_pub.publish(b"on").unwrap();
    let mut loan = remote_pub.loan(3).unwrap();
    loan.as_mut_slice().copy_from_slice(b"off");
    loan.commit().unwrap();
    assert_eq!(next(&mut local_sub), ("cmd/lights".into(), b"on".to_vec()));
    assert_eq!(next(&mut local_sub), ("cmd/lights".into(), b"off".to_vec()));

    // Remote to remote, through the rings; a pattern added later.
    let mut other = remote.subscriber_builder().create().unwrap();
    other.add_pattern("chat/*").unwrap();
    let mut chat = remote.publisher("chat/lobby").unwrap();
    chat.publish(b"hello").unwrap();
    assert_eq!(next(&mut other), ("chat/lobby".into(), b"hello".to_vec()));
    assert_eq!(other.patterns().collect::<Vec<_>>(), ["chat/*"]);
}

#[test]
fn history_lossy_and_typed_messages_cross_the_network() {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    #[rkyv(crate = shmbus::rkyv)]
    struct Reading {
        sensor: String,
        values: Vec<f64>,
    }

    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();

    let mut before = local.publisher("log/app").unwrap();
    before.publish(b"old").unwrap();
    let mut sub = remote
        .subscriber("log/*")
        .lossy()
        .history(1)
        .create()
        .unwrap();
    before.publish(b"new").unwrap();
    assert_eq!(next(&mut sub).1, b"old");
    assert_eq!(next(&mut sub).1, b"new");

    let mut typed_sub = local
        .subscriber("readings")
        .typed::<Reading>()
        .create()
        .unwrap();
    let mut typed_pub = remote
        .publisher_builder("readings")
        .typed::<Reading>()
        .create()
        .unwrap();
    let reading = Reading {
        sensor: "t1".into(),
        values: vec![1.5, -2.0],
    };
    typed_pub.publish(&reading).unwrap();
    let got = typed_sub.recv_timeout(PATIENCE).unwrap();
    assert_eq!(got.sensor.as_str(), "t1");
    assert_eq!(got.values.as_slice(), [1.5, -2.0]);

    // Messages too large for the bus are refused at the remote publisher.
    let mut big = remote.publisher("big").unwrap();
    let too_large = vec![0u8; remote.max_payload() + 1];
    assert!(matches!(
        big.publish(&too_large),
        Err(shmbus::PublishError::TooLarge { .. })
    ));
}

#[test]
fn the_cli_publishes_and_subscribes_over_tcp() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let remote_sub = Proc::spawn(shmbus(&url, &["sub", "a/*", "--count", "2"]));
    remote_sub.stderr.wait_for("subscribed a/*");
    let (code, _, err) = run(broker.bus(), &["pub", "a/b", "one"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&url, &["pub", "a/c", "two"]);
    assert_eq!(code, 0, "{err}");
    let mut remote_sub = remote_sub;
    remote_sub.expect_success();
    assert_eq!(remote_sub.stdout.lines(), ["a/b\tone", "a/c\ttwo"]);

    // The same through $SHMBUS_BUS.
    let local_sub = broker.subscriber(&["x/y", "--count", "1"]);
    let mut cmd = std::process::Command::new(support::bin());
    cmd.args(["pub", "x/y", "from-env"])
        .env("SHMBUS_BUS", &url)
        .env("RUST_LOG", "warn");
    let mut publisher = Proc::spawn(cmd);
    publisher.expect_success();
    let mut local_sub = local_sub;
    local_sub.expect_success();
    assert_eq!(local_sub.stdout.lines(), ["x/y\tfrom-env"]);
}

#[test]
fn remote_servers_answer_local_requesters() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();

    // A callback server on the remote side.
    let _double = remote
        .serve_with("calc/double", |req| {
            let n = u32::from_le_bytes(req.payload().try_into().unwrap_or_default());
            (2 * n).to_le_bytes()
        })
        .unwrap();
    let answer = local.request("calc/double", &21u32.to_le_bytes()).unwrap();
    assert_eq!(answer.payload(), 42u32.to_le_bytes());
    // The topic is taken, for local and remote servers alike.
    assert!(matches!(
        local.serve("calc/double"),
        Err(shmbus::ServeError::AlreadyServed { .. })
    ));
    assert!(matches!(
        remote.serve("calc/double"),
        Err(shmbus::ServeError::AlreadyServed { .. })
    ));

    // A server that answers later, from another thread, and with streams; one that drops a
    // request.
    let mut server = remote.serve("calc/work").unwrap();
    let worker = std::thread::spawn(move || {
        for _ in 0..3 {
            let request = server.recv().unwrap();
            match request.payload() {
                b"later" => {
                    let owned = request.detach();
                    std::thread::spawn(move || owned.respond(b"done").unwrap())
                        .join()
                        .unwrap();
                }
                b"count" => {
                    let mut stream = request.stream();
                    for i in 0..3u8 {
                        stream.send(&[i]).unwrap();
                    }
                    stream.end().unwrap();
                }
                _ => drop(request),
            }
        }
        server
    });
    assert_eq!(
        local.request("calc/work", b"later").unwrap().payload(),
        b"done"
    );
    let items: Vec<Vec<u8>> = local
        .request_stream("calc/work", b"count")
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect();
    assert_eq!(items, [[0], [1], [2]]);
    assert!(matches!(
        local.request("calc/work", b"drop"),
        Err(RequestError::Abandoned { .. })
    ));
    let server = worker.join().unwrap();

    // A remote client may ask a remote server too (through the gateway twice).
    let asker = Bus::connect(&url).unwrap();
    let mut requests = server;
    let answering = std::thread::spawn(move || {
        let request = requests.recv().unwrap();
        let echo = request.payload().to_vec();
        request.respond(&echo).unwrap();
        requests
    });
    assert_eq!(
        asker.request("calc/work", b"echo").unwrap().payload(),
        b"echo"
    );
    let server = answering.join().unwrap();

    // When it stops serving (the gateway hears so a moment later), the topic is free again.
    drop(server);
    eventually("the topic is free again", || {
        local.serve("calc/work").is_ok()
    });
}

#[test]
fn a_killed_remote_server_fails_its_requests_and_frees_its_topic() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let server = Proc::spawn(shmbus(&url, &["serve", "svc/echo", "--echo"]));
    server.stderr.wait_for("serving svc/echo");
    let (code, out, err) = run(broker.bus(), &["req", "svc/echo", "over tcp"]);
    assert_eq!((code, out.as_str()), (0, "over tcp"), "{err}");

    // A remote server that holds a request when it is killed: the requester hears so. Its
    // command says when it has the request (and which process to clean up after).
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pid");
    let command = format!("echo $$ > {}; exec sleep 60", marker.display());
    let holder = Proc::spawn(shmbus(&url, &["serve", "svc/hold", "--exec", &command]));
    holder.stderr.wait_for("serving svc/hold");
    let local = Bus::connect(broker.bus()).unwrap();
    let asking = std::thread::spawn(move || local.request_timeout("svc/hold", b"?", PATIENCE));
    eventually("the remote server has the request", || {
        std::fs::read_to_string(&marker).is_ok_and(|pid| pid.ends_with('\n'))
    });
    holder.signal(Signal::SIGKILL);
    let failed = asking.join().unwrap();
    // Its held request is dropped with it: the requester is told at once, as the server gone
    // or the request abandoned, whichever the broker or the gateway says first.
    assert!(
        matches!(
            failed,
            Err(RequestError::ServerGone { .. } | RequestError::Abandoned { .. })
        ),
        "{failed:?}"
    );
    let sleeper: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleeper), Signal::SIGKILL);
    // The topic is free for another server.
    let again = Bus::connect(&url).unwrap();
    eventually("the killed server's topic is free", || {
        again.serve("svc/hold").is_ok()
    });
}

#[test]
fn remote_clients_ask_local_servers() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    let _double = local
        .serve_with("calc/double", |req| {
            let n = u32::from_le_bytes(req.payload().try_into().unwrap_or_default());
            (2 * n).to_le_bytes()
        })
        .unwrap();

    let answer = remote.request("calc/double", &21u32.to_le_bytes()).unwrap();
    assert_eq!(answer.payload(), 42u32.to_le_bytes());
    let answer = remote
        .request_timeout("calc/double", &5u32.to_le_bytes(), PATIENCE)
        .unwrap();
    assert_eq!(answer.payload(), 10u32.to_le_bytes());
    // A requester handle, writing its request in place as locally.
    let mut requester = remote.requester("calc/double").unwrap();
    assert_eq!(requester.topic(), "calc/double");
    let answer = requester
        .request_with(4, |buf| {
            buf.copy_from_slice(&7u32.to_le_bytes());
            4
        })
        .unwrap();
    assert_eq!(answer.payload(), 14u32.to_le_bytes());
    let answer = requester.request(&8u32.to_le_bytes()).unwrap();
    assert_eq!(answer.payload(), 16u32.to_le_bytes());
    // Many in a row, far more than an inbox holds answers at once: each is let go.
    for n in 0..2000u32 {
        let answer = requester.request(&n.to_le_bytes()).unwrap();
        assert_eq!(answer.payload(), (2 * n).to_le_bytes());
    }

    // What can go wrong is reported as locally.
    assert!(matches!(
        remote.request("calc/nobody", b"x"),
        Err(RequestError::NoServer { .. })
    ));
    assert!(matches!(
        remote.request("calc/*", b"x"),
        Err(RequestError::InvalidTopic(_))
    ));
    let too_large = vec![0u8; remote.max_payload() + 1];
    assert!(matches!(
        remote.request("calc/double", &too_large),
        Err(RequestError::TooLarge { .. })
    ));
    let mut silent = local.serve("calc/silent").unwrap();
    let timed_out = remote.request_timeout("calc/silent", b"x", Duration::from_millis(200));
    assert!(
        matches!(timed_out, Err(RequestError::Timeout { .. })),
        "{timed_out:?}"
    );
    // The server drops a request unanswered: the remote requester hears of it.
    let dropper = std::thread::spawn(move || {
        // The timed-out request may come first; every request is dropped unanswered.
        loop {
            let request = silent.recv().unwrap();
            if request.payload() == b"y" {
                break;
            }
        }
    });
    let abandoned = remote.request_timeout("calc/silent", b"y", PATIENCE);
    assert!(
        matches!(abandoned, Err(RequestError::Abandoned { .. })),
        "{abandoned:?}"
    );
    dropper.join().unwrap();

    // Streams of answers.
    let mut counter = local.serve("calc/count").unwrap();
    let streamer = std::thread::spawn(move || {
        let request = counter.recv().unwrap();
        let n = request.payload()[0];
        let mut sender = request.stream();
        for i in 0..n {
            sender.send(&[i]).unwrap();
        }
        sender.end().unwrap();
    });
    let answers: Vec<Vec<u8>> = remote
        .request_stream("calc/count", &[5])
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect();
    assert_eq!(answers, [[0], [1], [2], [3], [4]]);
    streamer.join().unwrap();
}

#[test]
fn typed_requests_and_answers_cross_the_network_both_ways() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct Pair {
        a: i64,
        b: i64,
    }
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    // Each server validates the request in place and answers with a typed value.
    let serve = |bus: &Bus, topic: &str, op: fn(i64, i64) -> i64| {
        let mut server = bus.serve(topic).unwrap();
        std::thread::spawn(move || {
            let request = server.recv().unwrap();
            let value = {
                let pair = request.payload_typed::<Pair>().unwrap();
                op(pair.a.to_native(), pair.b.to_native())
            };
            request.respond_typed(&value).unwrap();
        })
    };
    let local_server = serve(&local, "calc/add", |a, b| a + b);
    let remote_server = serve(&remote, "calc/sub", |a, b| a - b);

    let mut to_local = remote.requester("calc/add").unwrap();
    let sum = to_local
        .request_typed::<Pair, i64>(&Pair { a: 40, b: 2 }, Some(PATIENCE))
        .unwrap();
    assert_eq!(*sum, 42);
    let mut to_remote = local.requester("calc/sub").unwrap();
    let difference = to_remote
        .request_typed::<Pair, i64>(&Pair { a: 40, b: 2 }, Some(PATIENCE))
        .unwrap();
    assert_eq!(*difference, 38);
    local_server.join().unwrap();
    remote_server.join().unwrap();
}

#[test]
fn a_slow_server_does_not_hold_up_other_requests_on_the_same_connection() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    let mut slow = local.serve("svc/slow").unwrap();
    let _fast = local.serve_with("svc/fast", |_| *b"fast").unwrap();

    let asker = {
        let remote = remote.clone();
        std::thread::spawn(move || remote.request_timeout("svc/slow", b"?", PATIENCE))
    };
    // The slow server holds its request while the same connection asks the fast one.
    let held = slow.recv_timeout(PATIENCE).unwrap().detach();
    for _ in 0..20 {
        assert_eq!(remote.request("svc/fast", b"?").unwrap().payload(), b"fast");
    }
    held.respond(b"slow").unwrap();
    assert_eq!(asker.join().unwrap().unwrap().payload(), b"slow");

    // Many at once, from many threads, each gets its own answer.
    let _echo = local
        .serve_with("svc/echo", |req| req.payload().to_vec())
        .unwrap();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let remote = remote.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let question = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    let answer = remote.request("svc/echo", &question).unwrap();
                    assert_eq!(answer.payload(), question);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn the_cli_asks_a_local_server_over_tcp() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let server = Proc::spawn(shmbus(broker.bus(), &["serve", "greet/hello", "--echo"]));
    server.stderr.wait_for("serving greet/hello");
    let (code, out, err) = run(&url, &["req", "greet/hello", "hi there"]);
    assert_eq!((code, out.as_str()), (0, "hi there"), "{err}");
    let (code, _, err) = run(&url, &["req", "greet/nobody", "hi"]);
    assert_eq!(code, 5, "{err}");
}

/// A broker listening at `listen` with the PKI's server certificate, and `extra` flags.
fn tls_broker(pki: &Pki, listen: &str, extra: &[&str]) -> (Broker, String) {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    listening_broker(listen, &args)
}

fn connect_tls(url: &str, files: TlsClientFiles) -> Result<Bus, ConnectError> {
    Bus::builder()
        .address(shmbus::BusAddress::parse(url).unwrap())
        .tls(files)
        .connect_timeout(Duration::from_secs(10))
        .connect()
}

#[test]
fn tls_with_client_certificates_admits_only_clients_the_ca_signed() {
    let pki = Pki::new();
    let ca = pki.arg("ca.pem");
    let (broker, url) = tls_broker(&pki, "tls://127.0.0.1:0", &["--tls-client-ca", &ca]);
    assert!(url.starts_with("tls://127.0.0.1:"), "{url}");
    let local = Bus::connect(broker.bus()).unwrap();

    let remote = connect_tls(&url, pki.client("client")).unwrap();
    let mut sub = remote.subscribe("secure/*").unwrap();
    let mut publisher = local.publisher("secure/a").unwrap();
    let payload = vec![7u8; 40_000];
    publisher.publish(&payload).unwrap();
    assert_eq!(next(&mut sub), ("secure/a".into(), payload));

    // No certificate, one from another CA, or a gateway certificate not trusted: refused.
    let anonymous = TlsClientFiles::default().ca(pki.path("ca.pem"));
    assert!(connect_tls(&url, anonymous).is_err());
    let rogue = pki.client("rogue");
    assert!(connect_tls(&url, rogue).is_err());
    let wrong_ca = TlsClientFiles::default()
        .ca(pki.path("rogue-ca.pem"))
        .identity(pki.path("client.pem"), pki.path("client.key"));
    assert!(connect_tls(&url, wrong_ca).is_err());

    // Plain TCP to a TLS listener is not a way in either.
    assert!(Bus::connect(&url.replace("tls://", "tcp://")).is_err());

    // The CLI, with its flags; the admitted client still works after all of that.
    let (code, _, err) = run(
        &url,
        &[
            "pub",
            "secure/a",
            "from-cli",
            "--tls-ca",
            &pki.arg("ca.pem"),
            "--tls-cert",
            &pki.arg("client.pem"),
            "--tls-key",
            &pki.arg("client.key"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(next(&mut sub), ("secure/a".into(), b"from-cli".to_vec()));
    let (code, _, _) = run(
        &url,
        &["pub", "secure/a", "x", "--tls-ca", &pki.arg("ca.pem")],
    );
    assert_eq!(
        code, 3,
        "a client without a certificate cannot reach the bus"
    );
}

#[test]
fn tls_without_client_ca_admits_any_client_that_trusts_the_gateway() {
    let pki = Pki::new();
    let (_broker, url) = tls_broker(&pki, "tls://localhost:0", &[]);
    let remote = connect_tls(&url, TlsClientFiles::default().ca(pki.path("ca.pem"))).unwrap();
    let mut sub = remote.subscribe("t").unwrap();
    remote.publisher("t").unwrap().publish(b"x").unwrap();
    assert_eq!(next(&mut sub).1, b"x");
}

#[test]
fn a_stopped_remote_subscriber_holds_local_publishers_back_no_longer_than_eviction() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &["--evict-after", "1"]);
    let remote_sub = Proc::spawn(shmbus(&url, &["sub", "flood"]));
    remote_sub.stderr.wait_for("subscribed flood");
    remote_sub.signal(Signal::SIGSTOP);

    // Far more than the ring, the connection's buffers and the inbox hold together.
    let local = Bus::connect(broker.bus()).unwrap();
    let mut publisher = local.publisher("flood").unwrap();
    let payload = vec![1u8; 4096];
    for _ in 0..20_000 {
        publisher
            .publish_timeout(&payload, PATIENCE)
            .expect("the stopped remote subscriber was evicted");
    }

    // Woken, the remote subscriber reports what it missed.
    remote_sub.signal(Signal::SIGCONT);
    remote_sub.stderr.wait_for("were lost");
    remote_sub.signal(Signal::SIGKILL);
}

#[test]
fn a_remote_subscriber_that_stops_reading_holds_its_connection_back_once() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    let mut idle = remote.subscribe("flood").unwrap();
    let mut busy = remote.subscribe("ping").unwrap();

    // Far more than the idle subscriber's inbox holds, while it does not read.
    const SENT: u32 = 20_000;
    let mut publisher = local.publisher("flood").unwrap();
    for i in 0..SENT {
        publisher
            .publish_timeout(&i.to_le_bytes(), PATIENCE)
            .unwrap();
    }
    // The other subscription on the connection goes on.
    local.publisher("ping").unwrap().publish(b"after").unwrap();
    assert_eq!(next(&mut busy).1, b"after");

    // The idle one gets what was kept, in order, and every loss reported and counted.
    let (mut received, mut missed, mut last) = (0u64, 0u64, None);
    while last != Some(SENT - 1) {
        match idle.recv_timeout(PATIENCE) {
            Ok(sample) => {
                let n = u32::from_le_bytes(sample.payload().try_into().unwrap());
                assert!(last.is_none_or(|l| n > l), "{n} after {last:?}");
                last = Some(n);
                received += 1;
            }
            Err(RecvTimeoutError::Failed(RecvError::Lagged { missed: m, .. })) => {
                assert_ne!(m, RecvError::MISSED_UNKNOWN, "a loss not counted");
                missed += m;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(missed > 0, "nothing was lost");
    assert_eq!(received + missed, u64::from(SENT));
}

#[test]
fn a_killed_remote_client_costs_nobody_anything() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let victim = Proc::spawn(shmbus(&url, &["sub", "work"]));
    victim.stderr.wait_for("subscribed work");
    let mut remote_pub = Proc::start(shmbus(&url, &["pub", "work"]), std::process::Stdio::piped());
    remote_pub.send("one\n");
    victim.stdout.wait_for("one");
    victim.signal(Signal::SIGKILL);
    remote_pub.signal(Signal::SIGKILL);
    broker.proc.stderr.wait_for("remote client left");

    // The gateway dropped the victim's reader: local publishing never waits for it.
    let mut publisher = local.publisher("work").unwrap();
    let payload = vec![0u8; 8192];
    for _ in 0..2_000 {
        publisher.publish_timeout(&payload, PATIENCE).unwrap();
    }
    let remote = Bus::connect(&url).unwrap();
    let mut sub = remote.subscribe("work").unwrap();
    publisher.publish(b"after").unwrap();
    assert_eq!(next(&mut sub).1, b"after");
}

/// Whether the gateway closed `stream` (a read returns end of file or an error).
fn closed_by_gateway(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn garbage_and_slow_connections_are_closed_and_others_go_on() {
    let (_broker, url) = listening_broker("tcp://127.0.0.1:0", &["--hello-timeout", "1"]);
    let host_port = url.trim_start_matches("tcp://").to_string();
    let remote = Bus::connect(&url).unwrap();
    let mut sub = remote.subscribe("alive").unwrap();
    let mut publisher = remote.publisher("alive").unwrap();

    // Not a shmbus client: an HTTP request.
    let mut http = TcpStream::connect(&host_port).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually("the gateway closed the HTTP connection", || {
        closed_by_gateway(&mut http)
    });

    // A length prefix far beyond any limit.
    let mut huge = TcpStream::connect(&host_port).unwrap();
    huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
    eventually(
        "the gateway closed the oversized frame's connection",
        || closed_by_gateway(&mut huge),
    );

    // One byte a second of an otherwise valid-looking frame: closed by the hello timeout.
    let mut slow = TcpStream::connect(&host_port).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in [16u8, 0, 0, 0, 1, b'S', b'H', b'M', b'B']
        .iter()
        .cycle()
        .take(60)
    {
        if closed_by_gateway(&mut slow) || slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // Pacing the attack, not waiting for anything: the point is that it is slow.
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        closed,
        "a connection dribbling one byte a second was still open after 60 s"
    );
    eprintln!("slow connection closed after {:?}", started.elapsed());

    // A silent connection (half-open from the gateway's point of view) is closed too.
    let mut silent = TcpStream::connect(&host_port).unwrap();
    eventually("the gateway closed the silent connection", || {
        closed_by_gateway(&mut silent)
    });

    // The good client noticed nothing.
    publisher.publish(b"still here").unwrap();
    assert_eq!(next(&mut sub).1, b"still here");
}

#[test]
fn remote_clients_reconnect_to_a_restarted_gateway_and_subscribe_again() {
    let (mut broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let listen = url.clone();
    let remote = Bus::connect(&url).unwrap();
    let mut sub = remote.subscribe("news/*").unwrap();
    let mut remote_pub = remote.publisher("news/remote").unwrap();
    remote_pub.publish(b"before").unwrap();
    assert_eq!(next(&mut sub).1, b"before");

    broker.proc.signal(Signal::SIGKILL);
    let _ = broker.proc.child.wait();
    let lost = sub.recv_timeout(PATIENCE).unwrap_err();
    assert_eq!(lost, RecvTimeoutError::Failed(RecvError::BrokerLost));
    eventually("the remote bus saw the loss", || !remote.is_connected());

    // A new broker at the same addresses.
    let restarted = Broker::start_at(&broker.socket, &["--listen", &listen]);
    assert_eq!(listen_address(&restarted), listen);
    broker.proc = restarted;
    match sub.recv_timeout(PATIENCE) {
        Err(RecvTimeoutError::Failed(RecvError::Lagged { missed, .. })) => {
            assert_eq!(missed, RecvError::MISSED_UNKNOWN);
        }
        other => panic!("expected the gap to be reported, got {other:?}"),
    }
    eventually("the remote bus reconnected", || remote.is_connected());

    // Both the subscription and the publisher were registered again.
    remote_pub.publish(b"after").unwrap();
    assert_eq!(next(&mut sub).1, b"after");
    let local = Bus::connect(broker.bus()).unwrap();
    local
        .publisher("news/local")
        .unwrap()
        .publish(b"local")
        .unwrap();
    assert_eq!(next(&mut sub), ("news/local".into(), b"local".to_vec()));
}

#[test]
fn listen_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let bus = socket.to_str().unwrap();
    let (code, _, err) = run(bus, &["broker", "--listen", "tls://127.0.0.1:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    let (code, _, err) = run(bus, &["broker", "--listen", "/tmp/x.sock"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn with_an_access_list_remote_clients_are_the_users_their_certificates_name() {
    let pki = Pki::new();
    pki.client_certificate("nobody");
    pki.client_certificate("no-such-user-here");
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[allow]]\nuser = \"nobody\"\npublish = [\"public/**\"]\nsubscribe = [\"public/**\"]\n\
         state = [\"public/**\"]\n",
    )
    .unwrap();
    let broker = Broker::start(&[
        "--acl",
        acl.to_str().unwrap(),
        "--listen",
        "tls://127.0.0.1:0",
        "--listen",
        "tcp://127.0.0.1:0",
        "--tls-cert",
        &pki.arg("server.pem"),
        "--tls-key",
        &pki.arg("server.key"),
        "--tls-client-ca",
        &pki.arg("ca.pem"),
    ]);
    let tls = listen_address(&broker.proc);
    let tcp = listen_address(&broker.proc);

    // `nobody` may use public/**, and only that.
    let nobody = connect_tls(&tls, pki.client("nobody")).unwrap();
    let mut sub = nobody.subscribe("public/*").unwrap();
    nobody
        .publisher("public/news")
        .unwrap()
        .publish(b"hi")
        .unwrap();
    assert_eq!(next(&mut sub), ("public/news".into(), b"hi".to_vec()));
    let denied = nobody.subscribe("secret/**").unwrap_err();
    assert!(
        matches!(denied, shmbus::AttachError::PermissionDenied { .. }),
        "{denied}"
    );
    assert!(denied.to_string().contains("user nobody"), "{denied}");
    let denied = nobody.publisher("secret/plans").unwrap_err();
    assert!(
        matches!(denied, shmbus::AttachError::PermissionDenied { .. }),
        "{denied}"
    );
    // A pattern added later is checked as one subscribed at first.
    let mut sub = nobody.subscriber_builder().create().unwrap();
    sub.add_pattern("public/more").unwrap();
    let denied = sub.add_pattern("secret/**").unwrap_err();
    assert!(
        matches!(denied, shmbus::AttachError::PermissionDenied { .. }),
        "{denied}"
    );
    // State collections: owned and watched as the rule says.
    let mut owned = nobody.state_publisher("public/status").unwrap();
    owned.put("up", b"yes").unwrap();
    let mut watcher = nobody.watch_state("public/*").unwrap();
    assert!(matches!(
        watcher.recv_timeout(PATIENCE).unwrap(),
        shmbus::StateEvent::Created { .. }
    ));
    for denied in [
        nobody.state_publisher("secret/status").unwrap_err(),
        nobody.watch_state("secret/*").unwrap_err(),
    ] {
        assert!(
            matches!(denied, shmbus::AttachError::PermissionDenied { .. }),
            "{denied}"
        );
    }
    // Requests are checked too (the rule grants none), before anyone is asked.
    let denied = nobody.request("public/ask", b"?").unwrap_err();
    assert!(
        matches!(&denied, RequestError::PermissionDenied { message, .. } if message.contains("user nobody")),
        "{denied}"
    );

    // A certificate naming no user of this host, and plain TCP (no certificate): refused.
    match connect_tls(&tls, pki.client("no-such-user-here")) {
        Err(ConnectError::PermissionDenied { message, .. }) => {
            assert!(message.contains("no-such-user-here"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match Bus::connect(&tcp) {
        Err(ConnectError::PermissionDenied { message, .. }) => {
            assert!(message.contains("certificate"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn publishers_on_many_threads_share_one_connection_in_order() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut sub = local.subscribe("par/*").unwrap();
    let remote = Bus::connect(&url).unwrap();
    const THREADS: u32 = 4;
    const EACH: u32 = 2_000;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let remote = remote.clone();
            std::thread::spawn(move || {
                let mut publisher = remote.publisher(&format!("par/{t}")).unwrap();
                for i in 0..EACH {
                    publisher.publish(&i.to_le_bytes()).unwrap();
                }
            })
        })
        .collect();
    let mut next_of = [0u32; THREADS as usize];
    for _ in 0..THREADS * EACH {
        let (topic, payload) = next(&mut sub);
        let t: usize = topic.trim_start_matches("par/").parse().unwrap();
        assert_eq!(payload, next_of[t].to_le_bytes(), "out of order on {topic}");
        next_of[t] += 1;
    }
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(next_of, [EACH; THREADS as usize]);
}

#[test]
fn a_burst_published_just_before_its_remote_bus_closes_arrives_whole() {
    // A remote client's stream of small messages goes out in batches, written by a flusher
    // after `publish` returned: closing the bus writes what is left first.
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut sub = local.subscribe("tail").unwrap();
    const TOTAL: u32 = 20_000;
    let sender = std::thread::spawn(move || {
        let remote = Bus::connect(&url).unwrap();
        let mut publisher = remote.publisher("tail").unwrap();
        for i in 0..TOTAL {
            publisher.publish(&i.to_le_bytes()).unwrap();
        }
        // The publisher and the bus go here, right after the last publish.
    });
    for i in 0..TOTAL {
        let (_, payload) = next(&mut sub);
        assert_eq!(payload, i.to_le_bytes(), "message {i}");
    }
    sender.join().unwrap();
}

#[test]
fn a_lossy_remote_subscriber_that_does_not_read_loses_messages_and_says_how_many() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let remote = Bus::connect(&url).unwrap();
    let mut sub = remote.subscriber("burst").lossy().create().unwrap();
    let local = Bus::connect(broker.bus()).unwrap();
    let mut publisher = local.publisher("burst").unwrap();
    // Far more than the subscriber's inbox holds; the publisher never waits for it.
    let total = 30_000u64;
    for i in 0..total {
        publisher.try_publish(&i.to_le_bytes()).unwrap();
    }
    publisher.publish(b"last").unwrap();
    let mut received = 0u64;
    let mut missed = 0u64;
    loop {
        match sub.recv_timeout(PATIENCE) {
            Ok(sample) if sample.payload() == b"last" => break,
            Ok(_) => received += 1,
            Err(RecvTimeoutError::Failed(RecvError::Lagged { missed: n, .. })) => missed += n,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(missed > 0, "nothing was lost, so the test proved nothing");
    assert_eq!(
        received + missed,
        total,
        "every message is either received or counted"
    );
}

#[test]
fn a_remote_session_keeps_its_subscriptions_while_its_client_is_away() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut publisher = local.publisher("orders/eu").unwrap();
    let first = Proc::spawn(shmbus(&url, &["sub", "orders/**", "--session", "billing"]));
    first.stderr.wait_for("subscribed orders/**");
    publisher.publish(b"a").unwrap();
    first.stdout.wait_for("orders/eu\ta");

    let long = "s".repeat(49);
    let (code, _, err) = run(&url, &["sub", "x", "--session", &long, "--count", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 to 48 bytes"), "{err}");

    // While it holds the session, nobody else may.
    let (code, _, err) = run(&url, &["sub", "x", "--session", "billing", "--count", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("session"), "{err}");

    first.signal(Signal::SIGKILL);
    broker.proc.stderr.wait_for("remote client left");
    publisher.publish(b"b").unwrap();
    publisher.publish(b"c").unwrap();

    // Back within the grace period: what was published meanwhile is still delivered. The
    // gateway may not have released `a` yet when the client was killed: then it comes again.
    let mut again = Proc::spawn(shmbus(&url, &["sub", "orders/**", "--session", "billing"]));
    again.stdout.wait_for("orders/eu\tc");
    again.signal(Signal::SIGTERM);
    again.expect_success();
    let lines = again.stdout.lines();
    assert!(
        lines == ["orders/eu\tb", "orders/eu\tc"]
            || lines == ["orders/eu\ta", "orders/eu\tb", "orders/eu\tc"],
        "{lines:?}"
    );
}

#[test]
fn a_client_that_reconnects_before_the_gateway_noticed_replaces_its_old_connection() {
    use shmbus::ErrorCode;
    use shmbus::protocol::remote::{Frame, decode};
    use support::raw_remote::{RawRemote, hello};

    let refusal = |answer: Option<Vec<u8>>| match decode(&answer.expect("an answer")).unwrap() {
        Frame::Refused(refusal) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    // The old connection holds the session, and to the gateway it looks alive: the test keeps
    // it open, as a client's end that vanished without the gateway knowing would be.
    let (mut old, answer) = RawRemote::greet(&url, &hello(7, Some("roaming")));
    assert!(matches!(answer.as_deref(), Some([2, ..])), "welcomed");
    // Another client may not take the session.
    let (_, answer) = RawRemote::greet(&url, &hello(8, Some("roaming")));
    assert_eq!(refusal(answer).code, ErrorCode::Taken);
    // The same client, reconnecting: welcomed at once with its session, and its old
    // connection closed by the gateway.
    let (_new, answer) = RawRemote::greet(&url, &hello(7, Some("roaming")));
    assert!(matches!(answer.as_deref(), Some([2, ..])), "welcomed again");
    assert!(old.closed_by_gateway());
    broker
        .proc
        .stderr
        .wait_for("its old connection is replaced");

    // A client of another version is told so, whatever its hello holds after the version.
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("tcp://")).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // Version 1's hello: kind, magic, version, name, session, peer (postcard).
    let body = [&[1u8][..], b"SHMB", &[1, 3], b"old", &[0, 0]].concat();
    let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).unwrap();
    let mut answer = vec![0; u32::from_le_bytes(prefix) as usize];
    stream.read_exact(&mut answer).unwrap();
    let refused = refusal(Some(answer));
    assert_eq!(refused.code, ErrorCode::Version);
    assert!(refused.message.contains("not 1"), "{}", refused.message);
}

#[test]
fn a_session_client_whose_own_side_of_the_link_failed_is_back_while_its_old_connection_lives() {
    // The client's end of its connection goes, the gateway's stays open and alive (the proxy
    // keeps pinging on it): only the client's reconnection replacing that connection can give
    // the session back while the old connection lives.
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let proxy = support::proxy::Proxy::start(&url);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut publisher = local.publisher("roam/a").unwrap();
    let remote = Bus::builder()
        .address(shmbus::BusAddress::parse(proxy.address()).unwrap())
        .session("roaming")
        .connect()
        .unwrap();
    let mut sub = remote.subscribe("roam/*").unwrap();
    publisher.publish(b"before").unwrap();
    assert_eq!(next(&mut sub).1, b"before");

    proxy.cut_client_side_of_first();
    // The old connection may still take this one and send it where nobody reads any more.
    publisher.publish(b"meanwhile").unwrap();
    broker
        .proc
        .stderr
        .wait_for("its old connection is replaced");
    eventually("the client is back", || remote.is_connected());
    publisher.publish(b"after").unwrap();
    let mut got = Vec::new();
    while got.last().is_none_or(|last| last != b"after") {
        match sub.recv_timeout(PATIENCE) {
            Ok(sample) => got.push(sample.payload().to_vec()),
            // The reconnection is reported as a gap.
            Err(RecvTimeoutError::Failed(RecvError::Lagged { .. } | RecvError::BrokerLost)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        got == [b"after".to_vec()] || got == [b"meanwhile".to_vec(), b"after".to_vec()],
        "{got:?}"
    );
}
