//! State collections across real processes: a broker process, `shmbus state` commands, and
//! clients of the Rust API in this process. Each rule of the contract has its test.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use shmbus::{Bus, ErrorCode, StateError, StateEvent, WatchError};
use support::raw::RawClient;
use support::{Broker, Proc, run, shmbus};

/// `shmbus state publish TOPIC [extra]` with its stdin open, once it owns the collection.
fn state_publisher(bus: &str, topic: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["state", "publish", topic];
    args.extend_from_slice(extra);
    let p = Proc::start(shmbus(bus, &args), Stdio::piped());
    p.stderr.wait_for(&format!("publishing {topic}"));
    p
}

/// `shmbus state watch PATTERN`, once it printed `synchronized`.
fn watcher(bus: &str, pattern: &str) -> Proc {
    let p = Proc::spawn(shmbus(bus, &["state", "watch", pattern]));
    p.stdout.wait_for("synchronized");
    p
}

fn event(w: &mut shmbus::StateWatcher) -> StateEvent {
    w.recv_timeout(Duration::from_secs(60))
        .expect("an event within a minute")
}

/// Watchers that join while the owner changes the collection as fast as it can each see one
/// unbroken history: the snapshot's value, `Synchronized`, then every later change exactly once,
/// in order.
#[test]
fn snapshot_and_live_changes_join_without_loss_or_reordering() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut owner = bus.state_publisher("race/counter").unwrap();
    const LAST: u64 = 20_000;
    owner.put("n", &0u64.to_le_bytes()).unwrap();
    let address = broker.bus().to_string();
    let watchers: Vec<_> = (0..4)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let bus = Bus::connect(&address).unwrap();
                // Join at different moments of the run.
                std::thread::sleep(Duration::from_millis(5 * i));
                let mut w = bus.watch_state("race/*").unwrap();
                let value = |v: &[u8]| u64::from_le_bytes(v.try_into().unwrap());
                let mut current = match event(&mut w) {
                    StateEvent::Created { key, value: v, .. } if &*key == "n" => value(&v),
                    other => panic!("expected the snapshot's entry, got {other:?}"),
                };
                assert_eq!(event(&mut w), StateEvent::Synchronized);
                while current < LAST {
                    match event(&mut w) {
                        StateEvent::Modified { old, new, .. } => {
                            assert_eq!(value(&old), current, "a change was lost or reordered");
                            assert_eq!(value(&new), current + 1, "a change was lost or repeated");
                            current += 1;
                        }
                        other => panic!("unexpected {other:?} at {current}"),
                    }
                }
                assert_eq!(value(w.get("race/counter", "n").unwrap()), LAST);
            })
        })
        .collect();
    for n in 1..=LAST {
        owner.put("n", &n.to_le_bytes()).unwrap();
    }
    for w in watchers {
        w.join().unwrap();
    }
}

#[test]
fn equal_puts_change_nothing_and_removing_a_missing_key_fails() {
    let broker = Broker::start(&[]);
    let mut w = watcher(broker.bus(), "cfg/net");
    let mut p = state_publisher(broker.bus(), "cfg/net", &[]);
    p.send("put eth0 up\nput eth0 up\nput eth0 down now\nremove wlan0\nremove eth0\nrestarted\n");
    w.stdout.wait_for("restarted 1");
    p.close_stdin();
    assert_eq!(p.wait_code(), 1, "a failed line makes the exit code 1");
    let err = p.stderr.text();
    assert!(
        err.contains("line 4") && err.contains("\"cfg/net\"") && err.contains("\"wlan0\""),
        "the failed line names collection and key: {err}"
    );
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_code(), 0);
    assert_eq!(
        w.stdout.lines(),
        [
            "synchronized",
            "created eth0 up",
            "modified eth0 down now",
            "deleted eth0",
            "restarted 1"
        ],
        "the equal put made no event"
    );
}

#[test]
fn keys_and_values_are_checked_with_errors_that_name_them() {
    let broker = Broker::start(&["--max-state-value", "100", "--max-state-bytes", "400"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut p = bus.state_publisher("limits").unwrap();
    for bad in ["", "a/b", &"k".repeat(256)] {
        let e = p.put(bad, b"v").unwrap_err();
        assert!(matches!(e, StateError::InvalidKey { .. }), "{bad:?}: {e}");
        assert!(e.to_string().contains("\"limits\""), "{e}");
    }
    p.put(&"k".repeat(255), b"longest key").unwrap();
    p.put("big", &[7; 100]).unwrap();
    let e = p.put("big", &[7; 101]).unwrap_err();
    assert!(
        matches!(&e, StateError::TooLarge { key, len: 101, max: 100, .. } if key == "big"),
        "{e}"
    );
    let e = p.remove("nothing").unwrap_err();
    assert!(
        matches!(&e, StateError::MissingKey { key, .. } if key == "nothing"),
        "{e}"
    );
    // 266 + 103 bytes held: 104 more exceed the collection's 400; shrinking makes room.
    let e = p.put("more", &[1; 100]).unwrap_err();
    assert!(
        matches!(&e, StateError::Full { key, max: 400, .. } if key == "more"),
        "{e}"
    );
    p.put("big", &[7; 10]).unwrap();
    p.put("more", &[1; 60]).unwrap();
    // A second owner is refused, naming the collection.
    let second = Bus::connect(broker.bus()).unwrap();
    let e = second.state_publisher("limits").unwrap_err();
    assert!(
        matches!(
            &e,
            shmbus::AttachError::Refused {
                code: ErrorCode::Taken,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("\"limits\""), "{e}");
    let (code, _, err) = run(broker.bus(), &["state", "publish", "limits"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already published"), "{err}");
    // Ownership ends with the handle: another client may own the collection at once.
    drop(p);
    second.state_publisher("limits").unwrap();
}

#[test]
fn a_watcher_may_start_before_the_publisher_exists() {
    let broker = Broker::start(&[]);
    let w = watcher(broker.bus(), "late/**");
    let mut p = state_publisher(broker.bus(), "late/a/b", &[]);
    p.send("put k v\n");
    assert_eq!(w.stdout.wait_for("created"), "created late/a/b/k v");
    p.send("restarted\n");
    assert_eq!(w.stdout.wait_for("restarted"), "restarted late/a/b 1");
    assert_eq!(
        w.stdout.lines()[0],
        "synchronized",
        "synchronized as empty first"
    );
}

#[test]
fn a_killed_publisher_takes_its_non_persistent_collection_along() {
    let broker = Broker::start(&[]);
    let w = watcher(broker.bus(), "eph");
    let mut p = state_publisher(broker.bus(), "eph", &[]);
    p.send("put a 1\nput b 2\n");
    w.stdout.wait_for("created b 2");
    p.signal(Signal::SIGKILL);
    w.stdout.wait_for("deleted a");
    w.stdout.wait_for("deleted b");
    // The collection is empty for newcomers, and someone else may own it now.
    let (code, out, err) = run(broker.bus(), &["state", "get", "eph"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let mut next = state_publisher(broker.bus(), "eph", &[]);
    next.send("put c 3\n");
    w.stdout.wait_for("created c 3");
}

/// Puts `lines` into persistent collection `topic` with `shmbus state publish`, which returns
/// once the broker has them on disk.
fn publish_persistent(bus: &str, topic: &str, lines: &str) {
    let mut p = state_publisher(bus, topic, &["--persistent"]);
    p.send(lines);
    p.expect_success();
}

#[test]
fn persistent_collections_survive_the_broker_killed() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus.sock");
    let state_dir = dir.path().join("state");
    let state = ["--state-dir", state_dir.to_str().unwrap()];
    let bus = socket.to_str().unwrap();
    let broker = Broker::start_at(&socket, &state);
    publish_persistent(
        bus,
        "cfg/app",
        "put name shmbus\nput mode fast\nrestarted\nrestarted\n",
    );
    drop(broker); // kill -9
    let _broker = Broker::start_at(&socket, &state);
    let (code, out, err) = run(bus, &["state", "get", "cfg/app"]);
    assert_eq!((code, out.as_str()), (0, "mode fast\nname shmbus"), "{err}");
    let w = watcher(bus, "cfg/app");
    w.stdout.wait_for("restarted 2");
    assert_eq!(
        w.stdout.lines(),
        [
            "created mode fast",
            "created name shmbus",
            "synchronized",
            "restarted 2"
        ]
    );
    // A publisher that comes back takes the collection over, content included.
    publish_persistent(bus, "cfg/app", "remove mode\n");
    w.stdout.wait_for("deleted mode");
    let (_, out, _) = run(bus, &["state", "get", "cfg/app", "name"]);
    assert_eq!(out, "shmbus");
}

/// A crash of the broker at each step of writing a value leaves the old value or the new one,
/// and the next broker removes what the write left behind.
#[test]
fn a_crash_in_the_middle_of_a_write_leaves_the_old_or_the_new_value() {
    for (step, expected) in [("written", "old"), ("synced", "old"), ("renamed", "new")] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus.sock");
        let state_dir = dir.path().join("state");
        let bus = socket.to_str().unwrap();
        let state = ["--state-dir", state_dir.to_str().unwrap()];
        let mut cmd = shmbus(bus, &["broker", state[0], state[1]]);
        // The second file written is the new value.
        cmd.env("SHMBUS_STATE_FAILPOINT", format!("{step}:2"));
        let mut broker = Proc::spawn(cmd);
        broker.stderr.wait_for("ready on");
        publish_persistent(bus, "torn", "put k old\n");
        let mut p = state_publisher(bus, "torn", &["--persistent"]);
        p.send("put k new\n");
        broker.stderr.wait_for(&format!("failpoint {step}:2"));
        let status = broker.child.wait().unwrap();
        assert!(!status.success(), "{step}: the broker aborted");
        assert_eq!(p.wait_code(), 1, "{step}: the sync saw the broker go");
        let leftovers = std::fs::read_dir(state_dir.join("torn")).unwrap().count();
        let _broker = Broker::start_at(&socket, &state);
        let (code, out, err) = run(bus, &["state", "get", "torn", "k"]);
        assert_eq!((code, out.trim()), (0, expected), "{step}: {err}");
        let files: Vec<_> = std::fs::read_dir(state_dir.join("torn"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            files,
            ["kk"],
            "{step}: the temporary is gone ({leftovers} files before)"
        );
    }
}

#[test]
fn restart_counters_reach_watchers_and_typed_values_are_checked() {
    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut p = bus.state_publisher("svc").unwrap();
    p.put_typed("port", &8080u32).unwrap();
    p.signal_restarted().unwrap();
    p.signal_restarted().unwrap();
    let mut w = bus.watch_state("svc").unwrap();
    let StateEvent::Created { value, .. } = event(&mut w) else {
        panic!("the entry first");
    };
    assert_eq!(*value.archived::<u32>().unwrap(), 8080);
    let wrong = value.archived::<u64>().unwrap_err();
    assert!(wrong.contains("schema"), "{wrong}");
    assert_eq!(event(&mut w), StateEvent::Synchronized);
    let restarted = StateEvent::Restarted {
        topic: shmbus::Topic::new("svc").unwrap(),
        count: 2,
    };
    assert_eq!(event(&mut w), restarted);
    p.clear_restarted().unwrap();
    assert!(matches!(
        event(&mut w),
        StateEvent::Restarted { count: 0, .. }
    ));
    assert_eq!(w.try_recv(), Err(WatchError::Empty));
    assert_eq!(w.restarted("svc"), 0);
}

/// A faulty owner writing straight into its collection's ring — garbage, a key with a `/`, a
/// jump in the sequence — costs the watchers nothing: they skip what is malformed, catch up
/// from a snapshot after a gap, and the broker's mirror agrees with them.
#[test]
fn a_faulty_owner_s_malformed_records_are_skipped_and_gaps_caught_up() {
    use shmbus::protocol::Request;
    use shmbus::protocol::state::{OwnState, Record};
    use shmbus_shm::{DoorbellTable, Owner, Ring, RingSpec};

    let broker = Broker::start(&[]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut w = bus.watch_state("bad").unwrap();
    assert_eq!(event(&mut w), StateEvent::Synchronized);

    let mut raw = RawClient::connect(&broker.socket);
    let own = OwnState {
        topic: "bad".into(),
        persistent: false,
    };
    let (reply, mut fds) = raw.request(Request::OwnState(own));
    let Ok(shmbus::protocol::Reply::StateOwned(owned)) = reply else {
        panic!("expected StateOwned, got {reply:?}");
    };
    let readers = fds.pop().unwrap();
    let data = fds.pop().unwrap();
    let table =
        DoorbellTable::attach(raw.doorbells.try_clone().unwrap(), raw.welcome.doorbells).unwrap();
    let spec = RingSpec::from(owned.publishing.ring);
    let ring = Ring::attach(data, readers, &table, &spec).unwrap();
    let owner = Owner::new(raw.welcome.owner).unwrap();
    let mut writer = ring
        .writer(owned.publishing.publisher.get(), owner)
        .unwrap();
    let mut write = |bytes: &[u8]| {
        let mut loan = writer.try_loan(bytes.len()).unwrap();
        loan.as_mut_slice().copy_from_slice(bytes);
        loan.commit().unwrap();
    };
    let record = |seq, key, value: &[u8]| {
        let r = Record::Put { key, value };
        let mut buf = vec![0; r.encoded_len()];
        r.encode(seq, &mut buf);
        buf
    };
    let key = |k: &str| -> std::sync::Arc<str> { k.into() };
    let topic = shmbus::Topic::new("bad").unwrap();
    let value = |v: &[u8]| shmbus::StateValue::copy(v);
    let modified = |old: &[u8], new: &[u8]| StateEvent::Modified {
        topic: topic.clone(),
        key: key("k"),
        old: value(old),
        new: value(new),
    };
    write(&record(1, "k", b"1"));
    let created = StateEvent::Created {
        topic: topic.clone(),
        key: key("k"),
        value: value(b"1"),
    };
    assert_eq!(event(&mut w), created);
    // Whether the watcher reads the next valid record or takes it from the snapshot it asks
    // for after the garbage, it reports the same change.
    write(&[0xff; 40]);
    write(&record(2, "k", b"2"));
    assert_eq!(event(&mut w), modified(b"1", b"2"));
    let mut slash = record(3, "a", b"x");
    slash[16] = b'/';
    write(&slash); // a key with a '/': skipped by the watcher and the keeper alike
    write(&record(5, "k", b"5")); // 3 and 4 never come: a gap
    assert_eq!(event(&mut w), modified(b"2", b"5"));
    // The broker's mirror, which newcomers get, says the same.
    let (code, out, err) = run(broker.bus(), &["state", "get", "bad"]);
    assert_eq!((code, out.as_str()), (0, "k 5"), "{err}");
}
