//! State collections over the network: remote watchers and remote owners through a broker's
//! gateway, beside local ones. Real broker processes on loopback; remote clients in this
//! process (the API) and in child processes (the CLI).

mod support;

use std::collections::BTreeMap;

use nix::sys::signal::Signal;
use shmbus::{AttachError, Bus, StateError, StateEvent, StateWatcher};
use support::raw_remote::RawRemote;
use support::{Broker, PATIENCE, Proc, listen_address, listening_broker, run};

/// The next event, failing after [`PATIENCE`].
fn event(watcher: &mut StateWatcher) -> StateEvent {
    watcher.recv_timeout(PATIENCE).expect("a state event")
}

/// A created or modified entry's key and value, or a deleted one's key.
fn change(event: StateEvent) -> (String, Option<Vec<u8>>) {
    match event {
        StateEvent::Created { key, value, .. } => (key.to_string(), Some(value.to_vec())),
        StateEvent::Modified { key, new, .. } => (key.to_string(), Some(new.to_vec())),
        StateEvent::Deleted { key, .. } => (key.to_string(), None),
        other => panic!("expected a change, got {other:?}"),
    }
}

/// What a watcher's mirror holds of collection `topic`.
fn mirror(watcher: &StateWatcher, topic: &str) -> BTreeMap<String, Vec<u8>> {
    watcher
        .get_all(topic)
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Receives events until the watcher's mirror of `topic` is `expected`, failing after
/// [`PATIENCE`] without an event.
fn until_mirrored(watcher: &mut StateWatcher, topic: &str, expected: &[(&str, &[u8])]) {
    let expected: BTreeMap<String, Vec<u8>> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    while mirror(watcher, topic) != expected {
        event(watcher);
    }
}

#[test]
fn remote_watchers_and_owners_work_beside_local_ones() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();

    // A local owner, a remote watcher: first the content, then the changes, with old values.
    let mut links = local.state_publisher("net/links").unwrap();
    links.put("eth0", b"up").unwrap();
    links.put("eth1", b"up").unwrap();
    let mut watcher = remote.watch_state("net/*").unwrap();
    assert_eq!(
        change(event(&mut watcher)),
        ("eth0".into(), Some(b"up".to_vec()))
    );
    assert_eq!(
        change(event(&mut watcher)),
        ("eth1".into(), Some(b"up".to_vec()))
    );
    assert_eq!(event(&mut watcher), StateEvent::Synchronized);
    links.put("eth0", b"down").unwrap();
    links.remove("eth1").unwrap();
    links.signal_restarted().unwrap();
    match event(&mut watcher) {
        StateEvent::Modified { key, old, new, .. } => {
            assert_eq!((&*key, &*old, &*new), ("eth0", &b"up"[..], &b"down"[..]));
        }
        other => panic!("{other:?}"),
    }
    match event(&mut watcher) {
        StateEvent::Deleted { key, value, .. } => {
            assert_eq!((&*key, &*value), ("eth1", &b"up"[..]))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        event(&mut watcher),
        StateEvent::Restarted { count: 1, .. }
    ));
    assert_eq!(
        watcher.get("net/links", "eth0").map(|v| v.to_vec()),
        Some(b"down".to_vec())
    );
    assert_eq!(watcher.restarted("net/links"), 1);

    // A remote owner: seen by a local watcher and by the remote one.
    let mut local_watcher = local.watch_state("net/routes").unwrap();
    assert_eq!(event(&mut local_watcher), StateEvent::Synchronized);
    let mut routes = remote.state_publisher("net/routes").unwrap();
    assert!(routes.is_empty());
    routes.put("default", b"10.0.0.1").unwrap();
    routes.put("lan", b"10.0.1.0/24").unwrap();
    routes.put("default", b"10.0.0.254").unwrap();
    routes.remove("lan").unwrap();
    routes.signal_restarted().unwrap();
    routes.sync().unwrap();
    assert_eq!(routes.get("default"), Some(&b"10.0.0.254"[..]));
    let expected = [
        ("default".to_string(), Some(b"10.0.0.1".to_vec())),
        ("lan".to_string(), Some(b"10.0.1.0/24".to_vec())),
        ("default".to_string(), Some(b"10.0.0.254".to_vec())),
        ("lan".to_string(), None),
    ];
    for watcher in [&mut local_watcher, &mut watcher] {
        for want in &expected {
            assert_eq!(&change(event(watcher)), want);
        }
        assert!(matches!(
            event(watcher),
            StateEvent::Restarted { count: 1, .. }
        ));
    }

    // What an owner checks, over the network as here.
    let taken = remote.state_publisher("net/links").unwrap_err();
    assert!(
        matches!(
            &taken,
            AttachError::Refused {
                code: shmbus::ErrorCode::Taken,
                ..
            }
        ),
        "{taken}"
    );
    let too_large = vec![0; local.max_payload() + 1];
    assert!(matches!(
        routes.put("big", &too_large),
        Err(StateError::TooLarge { .. })
    ));
    assert!(matches!(
        routes.remove("nothing"),
        Err(StateError::MissingKey { .. })
    ));
    assert!(matches!(
        routes.put("a/b", b"x"),
        Err(StateError::InvalidKey { .. })
    ));

    // The remote owner goes: its collection (not persistent) is emptied for every watcher.
    drop(routes);
    assert_eq!(change(event(&mut local_watcher)), ("default".into(), None));
    assert_eq!(change(event(&mut watcher)), ("default".into(), None));
}

#[test]
fn a_remote_owner_starts_from_a_persistent_collections_content() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_str().unwrap();
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &["--state-dir", state_dir]);
    let local = Bus::connect(broker.bus()).unwrap();
    {
        let mut config = local
            .state_publisher_builder("app/config")
            .persistent()
            .create()
            .unwrap();
        config.put("level", b"debug").unwrap();
        config.put("port", b"8080").unwrap();
        config.signal_restarted().unwrap();
        config.sync().unwrap();
    }
    let remote = Bus::connect(&url).unwrap();
    let mut config = remote
        .state_publisher_builder("app/config")
        .persistent()
        .create()
        .unwrap();
    assert_eq!(config.len(), 2);
    assert_eq!(config.get("level"), Some(&b"debug"[..]));
    assert_eq!(config.restarted(), 1);
    config.put("level", b"info").unwrap();
    config.sync().unwrap();
    drop(config);

    // Kept by the broker after its remote owner went, as after a local one.
    let (code, out, err) = run(broker.bus(), &["state", "get", "app/config"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "level info\nport 8080");
}

#[test]
fn the_state_cli_works_over_tcp() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut watcher = local.watch_state("jobs").unwrap();
    assert_eq!(event(&mut watcher), StateEvent::Synchronized);
    let cmd = support::shmbus(&url, &["state", "publish", "jobs"]);
    let mut publish = Proc::start(cmd, std::process::Stdio::piped());
    publish.stderr.wait_for("publishing jobs");
    publish.send("put build running\nput test queued\n");
    until_mirrored(
        &mut watcher,
        "jobs",
        &[("build", b"running"), ("test", b"queued")],
    );
    let (code, out, err) = run(&url, &["state", "get", "jobs", "build"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "running");
    // End of input: the publisher syncs, exits, and its collection is emptied.
    assert_eq!(publish.wait_code(), 0);
    until_mirrored(&mut watcher, "jobs", &[]);
}

#[test]
fn remote_owners_and_watchers_carry_on_after_the_broker_is_killed_and_restarted() {
    let (mut broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let remote = Bus::connect(&url).unwrap();
    let mut owner = remote.state_publisher("fleet/robots").unwrap();
    owner.put("r1", b"idle").unwrap();
    owner.put("r2", b"busy").unwrap();
    let mut watcher = remote.watch_state("fleet/*").unwrap();
    until_mirrored(
        &mut watcher,
        "fleet/robots",
        &[("r1", b"idle"), ("r2", b"busy")],
    );

    broker.proc.signal(Signal::SIGKILL);
    let _ = broker.proc.child.wait();
    support::eventually("the remote bus sees the gateway gone", || {
        !remote.is_connected()
    });
    // Changes made meanwhile are kept by the owner.
    owner.put("r3", b"charging").unwrap();
    owner.remove("r2").unwrap();

    let address = url.trim_start_matches("tcp://").to_string();
    let restarted = Broker::start_at(&broker.socket, &["--listen", &format!("tcp://{address}")]);
    assert_eq!(listen_address(&restarted), url);
    broker.proc = restarted;
    support::eventually("the remote bus is linked again", || remote.is_connected());

    // The next change owns the collection again at the new broker, with the whole content.
    owner.put("r1", b"busy").unwrap();
    owner.sync().unwrap();
    let local = Bus::connect(broker.bus()).unwrap();
    let expected: [(&str, &[u8]); 2] = [("r1", b"busy"), ("r3", b"charging")];
    let mut local_watcher = local.watch_state("fleet/robots").unwrap();
    until_mirrored(&mut local_watcher, "fleet/robots", &expected);
    // The remote watcher catches up from the new broker's snapshot.
    until_mirrored(&mut watcher, "fleet/robots", &expected);
    owner.put("r4", b"new").unwrap();
    let expected: [(&str, &[u8]); 3] = [("r1", b"busy"), ("r3", b"charging"), ("r4", b"new")];
    until_mirrored(&mut watcher, "fleet/robots", &expected);
    until_mirrored(&mut local_watcher, "fleet/robots", &expected);
}

#[test]
fn a_remote_watcher_that_stops_reading_holds_nothing_back_and_catches_up() {
    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let remote = Bus::connect(&url).unwrap();
    let mut owner = local.state_publisher("load/cpu").unwrap();
    let mut watcher = remote.watch_state("load/*").unwrap();
    assert_eq!(event(&mut watcher), StateEvent::Synchronized);
    let mut sub = remote.subscribe("ping").unwrap();
    let mut ping = local.publisher("ping").unwrap();

    // Far more changes than the watcher's inbox holds, while it does not read.
    const CORES: u32 = 64;
    const CHANGES: u32 = 20_000;
    for i in 0..CHANGES {
        owner
            .put(&format!("core{}", i % CORES), &i.to_le_bytes())
            .unwrap();
    }
    // The connection carries on meanwhile.
    ping.publish(b"after").unwrap();
    let sample = sub.recv_timeout(PATIENCE).unwrap();
    assert_eq!(sample.payload(), b"after");

    // The watcher catches up with the owner's content, then follows its changes again.
    let last: Vec<(String, Vec<u8>)> = (CHANGES - CORES..CHANGES)
        .map(|i| (format!("core{}", i % CORES), i.to_le_bytes().to_vec()))
        .collect();
    let expected: Vec<(&str, &[u8])> = last.iter().map(|(k, v)| (&**k, &**v)).collect();
    until_mirrored(&mut watcher, "load/cpu", &expected);
    owner.put("core0", b"idle").unwrap();
    loop {
        if let StateEvent::Modified { key, new, .. } = event(&mut watcher) {
            if &*key == "core0" && &*new == b"idle" {
                break;
            }
        }
    }
}

#[test]
fn a_broker_stops_while_a_remote_owner_waits_for_room_in_its_ring() {
    // A small state ring, and a stuck watcher that the broker would not evict for ten minutes.
    let flags = [
        "--ring-capacity",
        "65536",
        "--max-payload",
        "4096",
        "--max-state-value",
        "1024",
        "--evict-after",
        "600",
    ];
    let (mut broker, url) = listening_broker("tcp://127.0.0.1:0", &flags);
    let stuck = Proc::spawn(support::shmbus(broker.bus(), &["state", "watch", "stuck"]));
    stuck.stdout.wait_for("synchronized");
    stuck.signal(Signal::SIGSTOP);

    // Far more changes than the ring holds: the gateway's owner waits for room.
    let remote = Bus::connect(&url).unwrap();
    let mut owner = remote.state_publisher("stuck").unwrap();
    let (sent, all_sent) = std::sync::mpsc::channel();
    let putter = std::thread::spawn(move || {
        for i in 0..2_000u32 {
            owner
                .put(&format!("k{}", i % 100), &[i as u8; 1000])
                .unwrap();
        }
        sent.send(()).unwrap();
        // Never answered while the gateway waits; fails when the broker goes.
        assert!(owner.sync().is_err());
    });
    all_sent.recv_timeout(PATIENCE).unwrap();

    // The broker stops anyway, and its gateway with it.
    broker.proc.signal(Signal::SIGTERM);
    assert_eq!(broker.proc.wait_code(), 0);
    putter.join().unwrap();
    stuck.signal(Signal::SIGKILL);
}

#[test]
fn state_frames_a_gateway_cannot_take_cost_only_their_connection() {
    use shmbus::ErrorCode;
    use shmbus::protocol::remote::{Frame, Own};
    use shmbus::protocol::state::Record;

    let (broker, url) = listening_broker("tcp://127.0.0.1:0", &[]);
    let local = Bus::connect(broker.bus()).unwrap();
    let mut owner = local.state_publisher("shared/config").unwrap();
    owner.put("mode", b"auto").unwrap();
    let remote = Bus::connect(&url).unwrap();
    let mut watcher = remote.watch_state("shared/*").unwrap();
    until_mirrored(&mut watcher, "shared/config", &[("mode", b"auto")]);

    // Refused, each with a clear error naming the id asked about; the connection goes on.
    let mut raw = RawRemote::connect(&url);
    let put = Record::Put {
        key: "mode",
        value: b"manual",
    };
    raw.send(&Frame::Change {
        owner: 99,
        change: put,
    });
    assert_eq!(raw.next_failed(), Some((99, ErrorCode::Unknown)));
    let own = |id, topic: &str| {
        Frame::Own(Own {
            id,
            topic: topic.into(),
            persistent: false,
            replace: false,
        })
    };
    raw.send(&own(1, "shared/config"));
    assert_eq!(raw.next_failed(), Some((1, ErrorCode::Taken)));
    raw.send(&own(2, "shared/*"));
    assert_eq!(raw.next_failed(), Some((2, ErrorCode::InvalidTopic)));
    raw.send(&Frame::SyncState { id: 3, owner: 42 });
    assert_eq!(raw.next_failed(), Some((3, ErrorCode::Unknown)));
    raw.send(&Frame::Snapshot {
        id: 4,
        pattern: "bad//pattern".into(),
    });
    assert_eq!(raw.next_failed(), Some((4, ErrorCode::InvalidTopic)));

    // An owner does not clear: such a frame is malformed, and closes that connection alone.
    let mut clear = vec![0u8; 4 + 1 + 4 + Record::Clear.encoded_len()];
    let len = (clear.len() - 4) as u32;
    clear[..4].copy_from_slice(&len.to_le_bytes());
    clear[4] = 29; // Change
    Record::Clear.encode(0, &mut clear[9..]);
    raw.send_bytes(&clear);
    while let Some(body) = raw.next() {
        assert_eq!(body, [14], "only pings before the close");
    }

    // Nobody else noticed: the collection is whole, and changes still flow.
    owner.put("mode", b"eco").unwrap();
    until_mirrored(&mut watcher, "shared/config", &[("mode", b"eco")]);
}
