//! Peered brokers (`--peer`): real broker processes on loopback, linked two by two, as a hub,
//! and in a cycle; one killed with SIGKILL and started again. Clients are local to their own
//! broker (the API in this process, and the CLI).
//!
//! Interest crosses a link a moment after a subscriber appears: each test first publishes
//! probes until one arrives (so it knows the way is open), then checks exactly what arrives.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmbus::{Bus, Publisher, RecvTimeoutError, Subscriber};
use support::pki::Pki;
use support::{Broker, PATIENCE, listen_address, listening_broker, run};

/// The payload of probes, which tests skip.
const PROBE: &[u8] = b"probe";

/// A broker listening on a loopback port of its own, peering with `peers`; and its address.
fn peered_broker(peers: &[&str]) -> (Broker, String) {
    let args: Vec<&str> = peers.iter().flat_map(|peer| ["--peer", peer]).collect();
    listening_broker("tcp://127.0.0.1:0", &args)
}

/// Publishes probes until `sub` receives one: the way from the publisher's broker to the
/// subscriber's is then open.
fn until_routed(publisher: &mut Publisher, sub: &mut Subscriber) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        publisher.publish(PROBE).unwrap();
        match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(sample) if sample.payload() == PROBE => return,
            Ok(sample) => panic!("unexpected message {:?}", sample.payload()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("receiving failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no probe crossed to the subscriber's broker"
        );
    }
}

/// Receives messages `0..count` (as little-endian u32 payloads) from `sub`, after any probes
/// still on their way, each exactly once and in order, then the end marker.
fn expect_exactly_once(sub: &mut Subscriber, topic: &str, count: u32) {
    let mut expected = 0u32;
    loop {
        let sample = sub.recv_timeout(PATIENCE).expect("a message");
        assert_eq!(sample.topic(), topic);
        let payload = sample.payload();
        if payload == PROBE && expected == 0 {
            continue;
        }
        if payload == b"end" {
            break;
        }
        let n = u32::from_le_bytes(payload.try_into().expect("a numbered message"));
        assert_eq!(n, expected, "a message duplicated, lost or out of order");
        expected += 1;
    }
    assert_eq!(expected, count, "messages lost before the end marker");
}

/// Publishes messages `0..count` and the end marker.
fn publish_numbered(publisher: &mut Publisher, count: u32) {
    for i in 0..count {
        publisher.publish(&i.to_le_bytes()).unwrap();
    }
    publisher.publish(b"end").unwrap();
}

/// Nothing more arrives within a while: no copy of a message comes round late. (Absence can
/// only be checked by waiting; every expected message was received before.)
fn expect_nothing_more(sub: &mut Subscriber) {
    match sub.recv_timeout(Duration::from_millis(500)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(sample) => panic!(
            "a message arrived twice: {:?} on {}",
            sample.payload(),
            sample.topic()
        ),
        Err(e) => panic!("receiving failed: {e}"),
    }
}

#[test]
fn two_peered_brokers_share_what_the_other_side_subscribes_to() {
    let (a, a_url) = peered_broker(&[]);
    let (b, _) = peered_broker(&[&a_url]);
    let at_a = Bus::connect(a.bus()).unwrap();
    let at_b = Bus::connect(b.bus()).unwrap();

    // A to B, with a wildcard on the subscriber's side.
    let mut sub = at_b.subscribe("sensors/**").unwrap();
    let mut publisher = at_a.publisher("sensors/kitchen/temp").unwrap();
    until_routed(&mut publisher, &mut sub);
    publish_numbered(&mut publisher, 500);
    expect_exactly_once(&mut sub, "sensors/kitchen/temp", 500);

    // B to A (the broker that was dialed), CLI on both sides.
    let mut cli_sub = a.subscriber(&["cmd/lights", "--count", "1"]);
    let mut probe_sub = at_a.subscribe("cmd/*").unwrap();
    let mut probe = at_b.publisher("cmd/probe").unwrap();
    until_routed(&mut probe, &mut probe_sub);
    let (code, _, err) = run(b.bus(), &["pub", "cmd/lights", "on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cli_sub.wait_code(), 0);
    assert_eq!(cli_sub.stdout.text(), "cmd/lights\ton");

    // A's own subscribers get A's messages once, not again back from B.
    let mut own = at_a.subscribe("sensors/**").unwrap();
    publish_numbered(&mut publisher, 100);
    expect_exactly_once(&mut own, "sensors/kitchen/temp", 100);
    expect_exactly_once(&mut sub, "sensors/kitchen/temp", 100);
    expect_nothing_more(&mut own);
}

#[test]
fn a_hub_passes_messages_between_its_spokes() {
    let (hub, hub_url) = peered_broker(&[]);
    let (left, _) = peered_broker(&[&hub_url]);
    let (right, _) = peered_broker(&[&hub_url]);
    let at_left = Bus::connect(left.bus()).unwrap();
    let at_right = Bus::connect(right.bus()).unwrap();
    let at_hub = Bus::connect(hub.bus()).unwrap();

    let mut sub = at_right.subscribe("orders/*").unwrap();
    let mut publisher = at_left.publisher("orders/new").unwrap();
    until_routed(&mut publisher, &mut sub);
    publish_numbered(&mut publisher, 500);
    expect_exactly_once(&mut sub, "orders/new", 500);

    // The other way, with a subscriber on the hub too.
    let mut back = at_left.subscribe("replies/**").unwrap();
    let mut at_hub_sub = at_hub.subscribe("replies/**").unwrap();
    let mut reply = at_right.publisher("replies/orders/new").unwrap();
    until_routed(&mut reply, &mut back);
    until_routed(&mut reply, &mut at_hub_sub);
    publish_numbered(&mut reply, 200);
    expect_exactly_once(&mut back, "replies/orders/new", 200);
    expect_exactly_once(&mut at_hub_sub, "replies/orders/new", 200);
    expect_nothing_more(&mut back);
}

#[test]
fn a_cycle_of_three_neither_duplicates_nor_loops() {
    // a <- b, a <- c, b <- c: every broker has two ways to each other.
    let (a, a_url) = peered_broker(&[]);
    let (b, b_url) = peered_broker(&[&a_url]);
    let (c, _) = peered_broker(&[&a_url, &b_url]);
    let buses: Vec<Bus> = [&a, &b, &c]
        .iter()
        .map(|broker| Bus::connect(broker.bus()).unwrap())
        .collect();
    let mut subs: Vec<Subscriber> = buses
        .iter()
        .map(|bus| bus.subscribe("ring/**").unwrap())
        .collect();

    for (origin, bus) in buses.iter().enumerate() {
        let topic = format!("ring/from/{origin}");
        let mut publisher = bus.publisher(&topic).unwrap();
        for (at, sub) in subs.iter_mut().enumerate() {
            if at != origin {
                until_routed(&mut publisher, sub);
            }
        }
        // Rounds enough to span refreshes of the brokers' interest (every 2 s).
        for _ in 0..5 {
            publish_numbered(&mut publisher, 2000);
            for sub in &mut subs {
                expect_exactly_once(sub, &topic, 2000);
            }
        }
    }
    for sub in &mut subs {
        expect_nothing_more(sub);
    }
}

#[test]
fn a_peer_killed_and_started_again_is_linked_again_and_the_other_goes_on() {
    let (mut a, a_url) = peered_broker(&[]);
    let (b, _) = peered_broker(&[&a_url]);
    let at_b = Bus::connect(b.bus()).unwrap();
    let mut sub = at_b.subscribe("telemetry/*").unwrap();
    {
        let at_a = Bus::connect(a.bus()).unwrap();
        let mut publisher = at_a.publisher("telemetry/speed").unwrap();
        until_routed(&mut publisher, &mut sub);
    }

    a.proc.signal(Signal::SIGKILL);
    let _ = a.proc.child.wait();

    // B's own bus is untouched by the loss of its peer.
    let mut local = at_b.publisher("telemetry/local").unwrap();
    local.publish(b"still here").unwrap();
    loop {
        let sample = sub.recv_timeout(PATIENCE).unwrap();
        if sample.payload() != PROBE {
            assert_eq!(sample.payload(), b"still here");
            break;
        }
    }

    // A comes back at the same address; B dials it again and the way opens again.
    let address = a_url.trim_start_matches("tcp://").to_string();
    let restarted = Broker::start_at(&a.socket, &["--listen", &format!("tcp://{address}")]);
    assert_eq!(listen_address(&restarted), a_url);
    a.proc = restarted;
    let at_a = Bus::connect(a.bus()).unwrap();
    let mut publisher = at_a.publisher("telemetry/speed").unwrap();
    until_routed(&mut publisher, &mut sub);
    publish_numbered(&mut publisher, 200);
    expect_exactly_once(&mut sub, "telemetry/speed", 200);

    // And the other way, to the restarted broker.
    let mut back = at_a.subscribe("telemetry/*").unwrap();
    until_routed(&mut local, &mut back);
    publish_numbered(&mut local, 100);
    expect_exactly_once(&mut back, "telemetry/local", 100);
}

/// Asks `topic` until its server, on another broker, answers (the way is open then).
fn until_served(bus: &Bus, topic: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match bus.request_timeout(topic, PROBE, PATIENCE) {
            Ok(_) => return,
            Err(shmbus::RequestError::NoServer { .. }) => {}
            Err(e) => panic!("asking {topic} failed: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no server of {topic} became reachable"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_go_to_the_broker_that_serves_the_topic() {
    // hub <- server side, hub <- asking side: two hops.
    let (hub, hub_url) = peered_broker(&[]);
    let (serving, _) = peered_broker(&[&hub_url]);
    let (asking, _) = peered_broker(&[&hub_url]);
    let at_serving = Bus::connect(serving.bus()).unwrap();
    let at_asking = Bus::connect(asking.bus()).unwrap();
    let at_hub = Bus::connect(hub.bus()).unwrap();

    let _double = at_serving
        .serve_with("calc/double", |req| {
            let n = u32::from_le_bytes(req.payload().try_into().unwrap_or_default());
            (2 * n).to_le_bytes()
        })
        .unwrap();
    until_served(&at_asking, "calc/double");
    for n in 0..50u32 {
        let answer = at_asking.request("calc/double", &n.to_le_bytes()).unwrap();
        assert_eq!(answer.payload(), (2 * n).to_le_bytes());
    }
    // One hop, from the hub; and the CLI.
    let answer = at_hub.request("calc/double", &4u32.to_le_bytes()).unwrap();
    assert_eq!(answer.payload(), 8u32.to_le_bytes());

    // Streams of answers cross too.
    let mut counter = at_serving.serve("calc/count").unwrap();
    let streamer = std::thread::spawn(move || {
        let request = counter.recv().unwrap();
        if request.payload() == PROBE {
            request.respond(b"ready").unwrap();
        } else {
            return;
        }
        let request = counter.recv().unwrap();
        let mut stream = request.stream();
        for i in 0..3u8 {
            stream.send(&[i]).unwrap();
        }
        stream.end().unwrap();
    });
    until_served(&at_asking, "calc/count");
    let items: Vec<Vec<u8>> = at_asking
        .request_stream("calc/count", b"go")
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect();
    assert_eq!(items, [[0], [1], [2]]);
    streamer.join().unwrap();

    // A server that stops is no longer reachable from the other brokers.
    drop(_double);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match at_asking.request_timeout("calc/double", &1u32.to_le_bytes(), PATIENCE) {
            Err(shmbus::RequestError::NoServer { .. }) => break,
            _ => assert!(
                Instant::now() < deadline,
                "the stopped server is still reachable"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_broker_told_to_peer_with_itself_says_so_and_keeps_serving() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let broker = Broker::start(&["--listen", &url, "--peer", &url]);
    broker
        .proc
        .stderr
        .wait_for("a broker does not peer with itself");
    let at = Bus::connect(broker.bus()).unwrap();
    let mut sub = at.subscribe("x").unwrap();
    let mut publisher = at.publisher("x").unwrap();
    publisher.publish(b"local").unwrap();
    assert_eq!(sub.recv_timeout(PATIENCE).unwrap().payload(), b"local");
    expect_nothing_more(&mut sub);
}

#[test]
fn peers_link_over_tls_and_a_peer_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let both = [
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    pki.certificate("peer", &both);
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("server.pem"),
        pki.arg("server.key"),
    );
    // `a` takes tls:// peers with a certificate the CA signed.
    let a = Broker::start(&[
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ]);
    let a_url = listen_address(&a.proc);
    // `b` checks `a` against the CA and shows its own certificate.
    let (peer_cert, peer_key) = (pki.arg("peer.pem"), pki.arg("peer.key"));
    let b = Broker::start(&[
        "--tls-cert",
        &peer_cert,
        "--tls-key",
        &peer_key,
        "--peer",
        &a_url,
        "--peer-ca",
        &ca,
    ]);
    // `c` shows none: `a` refuses it, and it says so.
    let c = Broker::start(&["--peer", &a_url, "--peer-ca", &ca]);
    c.proc.stderr.wait_for("cannot reach peer");

    let at_a = Bus::connect(a.bus()).unwrap();
    let at_b = Bus::connect(b.bus()).unwrap();
    let mut sub = at_b.subscribe("secure/*").unwrap();
    let mut publisher = at_a.publisher("secure/news").unwrap();
    until_routed(&mut publisher, &mut sub);
    publish_numbered(&mut publisher, 200);
    expect_exactly_once(&mut sub, "secure/news", 200);
    let mut back = at_a.subscribe("answers/*").unwrap();
    let mut reply = at_b.publisher("answers/b").unwrap();
    until_routed(&mut reply, &mut back);

    // Nothing reaches `c`.
    let at_c = Bus::connect(c.bus()).unwrap();
    let mut outside = at_c.subscribe("secure/*").unwrap();
    publish_numbered(&mut publisher, 10);
    expect_exactly_once(&mut sub, "secure/news", 10);
    expect_nothing_more(&mut outside);
}
