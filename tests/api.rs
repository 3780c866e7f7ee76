//! The Rust client API on an embedded broker: options, errors, typed messages, multi-pattern
//! subscribers, and release of what subscribers and publishers held.

use std::time::Duration;

use shmbus::{
    Broker, BrokerBuilder, Bus, OwnedSample, PublishError, RecvError, RecvTimeoutError,
    TryPublishError, TryRecvError,
};

const WAIT: Duration = Duration::from_secs(30);

/// A bus of its own with a broker configured by `broker`.
fn embedded(broker: BrokerBuilder) -> Bus {
    Bus::builder().embedded(broker).connect().unwrap()
}

#[test]
fn samples_carry_topic_publisher_and_sequence() {
    let bus = Bus::embedded().unwrap();
    let mut sub = bus.subscribe("m/*").unwrap();
    let mut a = bus.publisher("m/a").unwrap();
    let mut b = bus.publisher("m/b").unwrap();
    assert_eq!(a.publish(b"one").unwrap(), 0);
    assert_eq!(a.publish(b"two").unwrap(), 1);
    assert_eq!(b.publish(b"three").unwrap(), 0);
    let mut got = Vec::new();
    for _ in 0..3 {
        let s = sub.recv_timeout(WAIT).unwrap();
        got.push((
            s.topic().to_string(),
            s.publisher(),
            s.sequence(),
            s.payload().to_vec(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("m/a".into(), a.id(), 0, b"one".to_vec()),
            ("m/a".into(), a.id(), 1, b"two".to_vec()),
            ("m/b".into(), b.id(), 0, b"three".to_vec()),
        ]
    );
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(20)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
}

#[test]
fn a_topic_matched_by_two_patterns_is_read_once() {
    let bus = Bus::embedded().unwrap();
    let mut sub = bus
        .subscriber("x/*")
        .pattern("x/y")
        .pattern("**")
        .create()
        .unwrap();
    bus.publisher("x/y").unwrap().publish(b"once").unwrap();
    assert_eq!(sub.recv_timeout(WAIT).unwrap().payload(), b"once");
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(50)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert_eq!(sub.topics().collect::<Vec<_>>(), ["x/y"]);
}

#[test]
fn oversized_messages_fail_naming_the_topic_before_anything_is_written() {
    let bus = embedded(Broker::builder().max_payload(1024));
    let mut sub = bus.subscribe("big").unwrap();
    let mut p = bus.publisher("big").unwrap();
    match p.publish(&[0; 1025]) {
        Err(
            e @ PublishError::TooLarge {
                len: 1025,
                max: 1024,
                ..
            },
        ) => assert!(e.to_string().contains("\"big\"")),
        other => panic!("{other:?}"),
    }
    p.publish(&[1; 1024]).unwrap();
    assert_eq!(sub.recv_timeout(WAIT).unwrap().len(), 1024);
}

#[test]
fn a_lossy_subscriber_reports_lag_and_goes_on() {
    let bus = embedded(Broker::builder().ring_capacity(1 << 16).max_payload(4096));
    let mut sub = bus.subscriber("fast").lossy().create().unwrap();
    let mut p = bus.publisher("fast").unwrap();
    for i in 0u32..5000 {
        p.publish(&i.to_le_bytes()).unwrap(); // never blocked by the lossy subscriber
    }
    let missed = match sub.recv_timeout(WAIT) {
        Err(RecvTimeoutError::Failed(RecvError::Lagged { topic, missed })) => {
            assert_eq!(topic, "fast");
            missed
        }
        other => panic!("expected Lagged, got {:?}", other.map(|s| s.sequence())),
    };
    let first = sub.recv_timeout(WAIT).unwrap();
    assert_eq!(
        u64::from(u32::from_le_bytes(first.payload().try_into().unwrap())),
        missed
    );
}

#[test]
fn history_and_late_joining() {
    let bus = Bus::embedded().unwrap();
    let mut p = bus.publisher("h").unwrap();
    for i in 0u8..10 {
        p.publish(&[i]).unwrap();
    }
    let mut with_history = bus.subscriber("h").history(4).create().unwrap();
    let mut late = bus.subscribe("h").unwrap();
    p.publish(&[10]).unwrap();
    for i in 6u8..=10 {
        assert_eq!(with_history.recv_timeout(WAIT).unwrap().payload(), [i]);
    }
    assert_eq!(late.recv_timeout(WAIT).unwrap().payload(), [10]);
}

#[test]
fn dropping_a_subscriber_releases_the_ring() {
    let bus = embedded(Broker::builder().ring_capacity(1 << 16).max_payload(4096));
    let sub = bus.subscribe("r").unwrap();
    let mut p = bus.publisher("r").unwrap();
    let mut sent = 0;
    while p.try_publish(&[0; 1000]).is_ok() {
        sent += 1;
    }
    assert!(sent > 0 && p.try_publish(&[0; 1000]) == Err(TryPublishError::Full));
    drop(sub);
    p.publish_timeout(&[0; 1000], WAIT)
        .expect("no reader holds the ring any more");
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Telemetry {
    name: String,
    samples: Vec<u32>,
    ok: bool,
}

#[test]
fn typed_messages_round_trip_and_invalid_ones_are_reported() {
    let bus = Bus::embedded().unwrap();
    let mut sub = bus.subscriber("t/*").typed::<Telemetry>().create().unwrap();
    let mut p = bus
        .publisher_builder("t/x")
        .typed::<Telemetry>()
        .create()
        .unwrap();
    for n in [0usize, 3, 10_000] {
        let value = Telemetry {
            name: format!("n{n}"),
            samples: (0..n as u32).collect(),
            ok: n % 2 == 0,
        };
        p.publish(&value).unwrap();
        let got = sub.recv().unwrap();
        assert_eq!(got.name, value.name);
        assert_eq!(got.samples.len(), n);
        assert!(
            got.samples
                .iter()
                .enumerate()
                .all(|(i, v)| v.to_native() == i as u32)
        );
        assert_eq!(got.ok, value.ok);
        assert_eq!(got.sample().topic(), "t/x");
    }
    // Bytes published raw on a matching topic: no schema tag.
    bus.publisher("t/raw").unwrap().publish(&[0xff; 5]).unwrap();
    match sub.recv() {
        Err(RecvError::TypeMismatch { topic, found, .. }) => {
            assert_eq!(topic, "t/raw");
            assert!(found.contains("no schema tag"), "{found}");
        }
        Err(e) => panic!("expected TypeMismatch, got {e}"),
        Ok(_) => panic!("expected TypeMismatch, got a value"),
    }
    // The right tag over bytes that are not a Telemetry archive.
    let mut forged = shmbus::Schema::of::<Telemetry>()
        .get()
        .to_le_bytes()
        .to_vec();
    forged.splice(0..0, *b"shmbusT1");
    forged.extend_from_slice(&[0xff; 5]);
    bus.publisher("t/forged").unwrap().publish(&forged).unwrap();
    match sub.recv() {
        Err(RecvError::Invalid { topic, .. }) => assert_eq!(topic, "t/forged"),
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("expected Invalid, got a value"),
    }
}

/// Four `u32`s: bytes of a `Telemetry` archive can pass for one.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Other {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

#[test]
fn a_typed_subscriber_refuses_another_type_by_name_and_raw_ones_see_the_bytes() {
    let bus = Bus::embedded().unwrap();
    let mut other = bus.subscriber("mix").typed::<Other>().create().unwrap();
    let mut raw = bus.subscribe("mix").unwrap();
    let mut p = bus
        .publisher_builder("mix")
        .typed::<Telemetry>()
        .create()
        .unwrap();
    let value = Telemetry {
        name: "temp".into(),
        samples: vec![u32::MAX; 3],
        ok: true,
    };
    p.publish(&value).unwrap();
    match other.recv() {
        Err(e @ RecvError::TypeMismatch { .. }) => {
            let RecvError::TypeMismatch {
                expected, found, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*expected, shmbus::Schema::of::<Other>());
            assert_eq!(
                *found,
                format!("schema {}", shmbus::Schema::of::<Telemetry>())
            );
            assert!(e.is_recoverable());
        }
        Err(e) => panic!("expected TypeMismatch, got {e}"),
        Ok(v) => panic!("read a Telemetry as Other: a={}", v.a),
    }
    // A raw subscriber sees the tag, then the archive.
    let sample = raw.recv().unwrap();
    assert_eq!(&sample.payload()[..8], b"shmbusT1");
    drop(sample);

    // A schema chosen by hand (for a type several programs define) is what both sides check.
    const READING: shmbus::Schema = shmbus::Schema::id(0x5eed);
    let mut by_id = bus
        .subscriber("mix/id")
        .typed::<Telemetry>()
        .schema(READING)
        .create()
        .unwrap();
    let mut p = bus
        .publisher_builder("mix/id")
        .typed::<Telemetry>()
        .schema(READING)
        .create()
        .unwrap();
    p.publish(&value).unwrap();
    assert_eq!(by_id.recv().unwrap().name, "temp");
}

#[test]
fn idle_rings_are_released_and_a_topic_used_again_gets_a_fresh_one() {
    let bus = embedded(Broker::builder().ring_idle(Duration::from_millis(50)));
    let mut first = bus.publisher("gc").unwrap();
    first.publish(b"old").unwrap();
    let old_ring = first.ring_id();
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let probe = bus.publisher("gc").unwrap();
        if probe.ring_id() != old_ring {
            break; // the idle ring was released and this is a new one
        }
        drop(probe);
        assert!(
            std::time::Instant::now() < deadline,
            "the idle ring was never released"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling interval, not synchronisation
    }
    let mut sub = bus.subscriber("gc").history(10).create().unwrap();
    assert_eq!(
        sub.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "a released ring's history is gone"
    );
}

#[test]
fn a_subscriber_that_cannot_get_a_reader_on_a_new_ring_is_told_and_goes_on() {
    let bus = embedded(Broker::builder().subscribers_per_topic(1));
    // Both subscribe before the ring exists; the broker finds one reader slot for two.
    let mut first = bus.subscribe("crowd/*").unwrap();
    let mut second = bus.subscribe("crowd/*").unwrap();
    let mut elsewhere = bus.publisher("other").unwrap();
    let mut other = bus.subscribe("other").unwrap();
    bus.publisher("crowd/x").unwrap().publish(b"hi").unwrap();
    elsewhere.publish(b"still here").unwrap();

    let outcome =
        |sub: &mut shmbus::Subscriber| sub.recv_timeout(WAIT).map(|m| m.payload().to_vec());
    let outcomes = [outcome(&mut first), outcome(&mut second)];
    // The broker attaches in an order of its choosing: one subscriber reads the ring, the other
    // is told it cannot, naming the topic and the cause, instead of waiting forever.
    let [read, told] = match outcomes {
        [read @ Ok(_), told] | [told, read @ Ok(_)] => [read, told],
        other => panic!("expected one subscriber to read: {other:?}"),
    };
    assert_eq!(read.unwrap(), b"hi");
    match told {
        Err(RecvTimeoutError::Failed(RecvError::Unavailable { topic, detail })) => {
            assert_eq!(topic, "crowd/x");
            assert!(detail.contains("reader"), "{detail}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Other topics are unaffected.
    assert_eq!(outcome(&mut other).unwrap(), b"still here");
}

#[test]
fn owned_samples_outlive_their_subscriber_and_cross_threads() {
    let bus = embedded(Broker::builder().ring_capacity(1 << 16).max_payload(4096));
    let mut sub = bus.subscribe("own/*").unwrap();
    let mut p = bus.publisher("own/a").unwrap();
    for i in 0u8..3 {
        p.publish(&[i; 100]).unwrap();
    }
    let kept: Vec<OwnedSample> = (0..3)
        .map(|_| sub.recv_timeout(WAIT).unwrap().detach())
        .collect();
    drop(sub);
    // The frames stay in place: the publisher cannot lap the oldest kept sample.
    let mut sent = 0;
    while p.try_publish(&[9; 1000]).is_ok() {
        sent += 1;
    }
    assert!(sent > 0 && sent < 100, "the kept samples hold the ring");
    let handles: Vec<_> = kept
        .into_iter()
        .map(|s| std::thread::spawn(move || (s.topic().to_string(), s.payload().to_vec())))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), ("own/a".into(), vec![i as u8; 100]));
    }
    // All dropped: the subscription is gone and holds nobody back.
    p.publish_timeout(&[1; 1000], WAIT)
        .expect("nobody holds the ring any more");
}

#[test]
fn a_subscriber_holds_at_most_max_held_owned_samples_per_topic() {
    let bus = Bus::embedded().unwrap();
    let mut sub = bus.subscriber("lim").max_held(2).create().unwrap();
    let mut p = bus.publisher("lim").unwrap();
    for i in 0u8..4 {
        p.publish(&[i]).unwrap();
    }
    let first = sub.recv_timeout(WAIT).unwrap().detach();
    let second = sub.recv_timeout(WAIT).unwrap().detach();
    match sub.try_recv() {
        Err(TryRecvError::Failed(RecvError::HeldLimit { topic, max: 2 })) => {
            assert_eq!(topic, "lim")
        }
        other => panic!("expected HeldLimit, got {:?}", other.map(|s| s.sequence())),
    }
    drop(first);
    assert_eq!(
        sub.recv_timeout(WAIT).unwrap().payload(),
        [2],
        "nothing was lost"
    );
    assert_eq!(second.payload(), [1]);
}

#[test]
fn deadlines_and_subscribers_without_patterns() {
    let bus = Bus::embedded().unwrap();
    let mut sub = bus.subscriber_builder().create().unwrap();
    assert_eq!(sub.patterns().count(), 0);
    let soon = std::time::Instant::now() + Duration::from_millis(20);
    assert_eq!(
        sub.recv_deadline(soon).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert!(std::time::Instant::now() >= soon);
    sub.add_pattern("later").unwrap();
    let mut p = bus.publisher("later").unwrap();
    p.publish_deadline(b"in time", std::time::Instant::now() + WAIT)
        .unwrap();
    let got = sub.recv_deadline(std::time::Instant::now() + WAIT).unwrap();
    assert_eq!(got.payload(), b"in time");
    assert_eq!(got.publisher(), p.id());
}
