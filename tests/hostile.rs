//! Faulty clients against a real broker process: garbage in every segment a client can write,
//! another user holding a read-only descriptor, and clients that try to exhaust the broker or
//! make it (or a topic) wait forever. Honest clients must go on through all of it.

mod support;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shmbus::protocol::pubsub::Publish;
use shmbus::protocol::{ErrorCode, Reply, Request};
use shmbus::{AttachError, Bus, BusAddress, Publisher, RecvTimeoutError, Subscriber};
use shmbus_shm::RingConfig;
use support::hostile::{RingScribbler, Scribbler};
use support::raw::{self, RawClient};
use support::{Broker, Proc, run, shmbus};

/// The claim cursor's position in a ring the broker retired.
const RETIRED: u64 = (1 << 62) + 32;

/// How long an honest client may need to get through (generous: tests run on loaded machines).
const PATIENCE: Duration = Duration::from_secs(60);

/// Values a faulty process writes where positions, counts and tokens belong: misaligned, just
/// past the buffer, huge, wrapping, the retired marker, zero.
fn garbage(capacity: u64) -> Vec<u64> {
    vec![
        capacity - 4,
        capacity + 4,
        3,
        u64::MAX,
        u64::MAX - 7,
        1 << 63,
        (1 << 62) + 32,
        1 << 62,
        capacity * 1000 + 12,
        0,
    ]
}

fn connect(broker: &Broker) -> Bus {
    Bus::connect(broker.bus()).expect("connect")
}

/// Publishes a fresh marker on `publisher` until `subscriber` receives one, tolerating what
/// damage may cause on the way (lost messages, a ring replaced). Panics if nothing gets
/// through in time.
fn flows(publisher: &mut Publisher, subscriber: &mut Subscriber, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let marker = format!("{what} {n}");
        // A full ring (a damaged slot holding writers back until eviction) is not a failure.
        let _ = publisher.publish_timeout(marker.as_bytes(), Duration::from_millis(200));
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            match subscriber.recv_deadline(until) {
                Ok(sample) if sample.payload().starts_with(what.as_bytes()) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Failed(_)) => {} // lagged, or a replaced ring: go on
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
    panic!("{what}: nothing got through in {PATIENCE:?}");
}

/// Waits until `done` holds; panics after [`PATIENCE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not in {PATIENCE:?}");
        std::thread::yield_now();
    }
}

/// A raw client's ring on `topic`, mapped read-write as its publisher.
fn publish_raw(client: &mut RawClient, topic: &str) -> RingScribbler {
    let (reply, fds) = client.request(Request::Publish(Publish {
        topic: topic.into(),
        max_payload: 1024,
        replace: None,
    }));
    let Ok(Reply::Publishing(p)) = reply else {
        panic!("publish {topic}: {reply:?}");
    };
    let config = RingConfig {
        capacity: p.ring.capacity,
        max_payload: p.ring.max_payload,
        writer_slots: p.ring.writer_slots,
        reader_slots: p.ring.reader_slots,
    };
    RingScribbler::map(&config, fds[1].as_fd(), Some(fds[0].as_fd())).unwrap()
}

#[test]
fn garbage_in_every_segment_a_client_can_write_harms_nobody_else() {
    let broker = Broker::start(&[
        "--ring-capacity",
        "65536",
        "--max-payload",
        "1024",
        "--evict-after",
        "1",
        "--unblock-after",
        "2",
    ]);
    let honest = connect(&broker);
    let mut victim_sub = honest.subscribe("victim").unwrap();
    let mut victim_pub = honest.publisher("victim").unwrap();
    let mut bystander_sub = honest.subscribe("bystander").unwrap();
    let mut bystander_pub = honest.publisher("bystander").unwrap();
    flows(&mut victim_pub, &mut victim_sub, "before");

    let mut faulty = RawClient::connect(&broker.socket);
    let doorbells = Scribbler::map(faulty.doorbells.as_fd()).unwrap();
    let (slots, writers) = (128, 64);
    for (round, value) in garbage(65536).into_iter().enumerate() {
        // The topic's current ring (the broker replaces one it retires).
        let ring = publish_raw(&mut faulty, "victim");
        let word = value as u32;
        // The readers segment, which every subscriber maps read-write: every slot's every
        // field (the honest subscriber's included), and the counters.
        for slot in 0..slots {
            ring.reader_position(slot, value);
            ring.reader_mode(slot, [0, 1, 2, 3, 7, u32::MAX][round % 6]);
            ring.reader_doorbell(slot, word);
            ring.reader_parked(slot, word);
            if round % 2 == 1 {
                ring.reader_owner(slot, value);
            }
        }
        ring.readers_control(word, word);
        // The doorbell table, header included.
        doorbells.fill_u64(0, doorbells.len(), value);
        // The data segment, as a faulty publisher: writer slots, then on some rounds the
        // cursor and the frames themselves.
        for slot in 0..writers {
            ring.writer_owner(slot, value);
            ring.writer_intent(slot, value, value, value.wrapping_add(64));
        }
        if round % 3 == 2 {
            ring.head(value, value);
        }
        if round % 4 == 3 {
            ring.frames(value);
        }
        // The broker's sweep finds the slots held under tokens it never gave out, repairs the
        // writers' garbage intents (writing into the ring) and frees them all — or it retires
        // the ring, if its cursor is beyond repair.
        if value != 0 {
            wait_until(&format!("round {round}: slots swept"), || {
                ring.head_position() == RETIRED
                    || ((0..writers).all(|s| ring.writer_owner_of(s) != value)
                        && (round % 2 == 0 || (0..slots).all(|s| ring.reader_owner_of(s) != value)))
            });
        }
        // The honest pair on the damaged topic goes on (its ring may be replaced), the other
        // topic never notices, and newcomers are served.
        flows(&mut victim_pub, &mut victim_sub, &format!("victim {round}"));
        flows(
            &mut bystander_pub,
            &mut bystander_sub,
            &format!("bystander {round}"),
        );
        let newcomer = connect(&broker);
        let mut sub = newcomer.subscribe("victim").unwrap();
        let mut publisher = newcomer.publisher("victim").unwrap();
        flows(&mut publisher, &mut sub, &format!("newcomer {round}"));
    }
    // The whole readers segment at once, then the faulty client dies.
    publish_raw(&mut faulty, "victim").whole_readers_segment(u64::MAX);
    drop(faulty);
    flows(&mut victim_pub, &mut victim_sub, "after");
    assert_eq!(run(broker.bus(), &["pub", "victim", "from the cli"]).0, 0);
    let log = broker.proc.stderr.text();
    assert!(!log.contains("panicked"), "the broker panicked: {log}");
}

#[test]
fn a_read_only_descriptor_cannot_be_reopened_or_mapped_writable() {
    let broker = Broker::start(&[]);
    let honest = connect(&broker);
    let _publisher = honest.publisher("secret").unwrap();
    let mut faulty = RawClient::connect(&broker.socket);
    let fds = faulty.subscribe("secret");
    let data = &fds[0];
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", data.as_raw_fd())).unwrap();
    let root = nix::unistd::geteuid().is_root();
    // Another user (as root, drop to nobody in a child); the same user otherwise, whom the
    // segment's mode 0400 refuses too.
    let code = if root {
        // SAFETY: the child only makes system calls (no allocation, no locks) before _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: async-signal-safe calls on values prepared before the fork.
                let code = unsafe {
                    if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                        90
                    } else {
                        support::hostile::attempt_writable(path.as_ptr(), data.as_raw_fd())
                    }
                };
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child: {other:?}"),
                }
            }
        }
    } else {
        // SAFETY: plain system calls on a path and descriptor owned by this test.
        unsafe { support::hostile::attempt_writable(path.as_ptr(), data.as_raw_fd()) }
    };
    assert_eq!(
        code, 0,
        "step {code} got write access (see attempt_writable)"
    );
}

#[test]
fn a_hundred_thousand_topics_from_one_client_meet_its_quota_while_others_are_served() {
    let broker = Broker::start(&[
        "--ring-capacity",
        "4096",
        "--max-payload",
        "1024",
        "--max-rings-per-client",
        "500",
    ]);
    let greedy = connect(&broker);
    let mut refused = 0;
    for i in 0..100_000 {
        match greedy.publisher(&format!("greedy/{i}")) {
            Ok(_) => {}
            Err(AttachError::Refused { code, message, .. }) => {
                assert_eq!(code, ErrorCode::Exhausted);
                assert!(message.contains("500 rings"), "{message}");
                refused += 1;
            }
            Err(e) => panic!("topic {i}: {e}"),
        }
    }
    assert_eq!(refused, 100_000 - 500);
    let other = connect(&broker);
    let mut sub = other.subscribe("others/welcome").unwrap();
    let mut publisher = other.publisher("others/welcome").unwrap();
    flows(&mut publisher, &mut sub, "served");
}

#[test]
fn a_wildcard_subscriber_over_five_thousand_rings_attaches_to_all() {
    let broker = Broker::start(&[
        "--ring-capacity",
        "4096",
        "--max-payload",
        "1024",
        "--max-rings-per-client",
        "10000",
    ]);
    let creator = connect(&broker);
    for i in 0..5_000 {
        creator.publisher(&format!("many/{i}")).unwrap();
    }
    let bus = connect(&broker);
    let mut everything = bus.subscribe("**").unwrap();
    let mut last = creator.publisher("many/4999").unwrap();
    flows(&mut last, &mut everything, "the last of five thousand");
    assert_eq!(everything.topics().count(), 5_000);
}

#[test]
fn two_thousand_silent_connections_do_not_keep_newcomers_out() {
    raise_descriptor_limit();
    let broker = Broker::start(&["--hello-timeout", "30"]);
    let silent: Vec<OwnedFd> = (0..2_000).map(|_| raw::connect(&broker.socket)).collect();
    // A newcomer is served at once, long before the Hello timeout.
    let started = Instant::now();
    let bus = connect(&broker);
    let mut sub = bus.subscribe("hello").unwrap();
    let mut publisher = bus.publisher("hello").unwrap();
    flows(&mut publisher, &mut sub, "served");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The oldest silent connections made room (the pending-connection limit is 1,024).
    raw::closed(&silent[0]);
}

/// Raises this process's descriptor limit to its hard limit (the test holds thousands).
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn a_stopped_broker_makes_pub_exit_3_within_its_connect_timeout() {
    let broker = Broker::start(&[]);
    broker.proc.signal(Signal::SIGSTOP);
    let (code, _, stderr) = run(
        broker.bus(),
        &["pub", "anything", "hello", "--connect-timeout", "1"],
    );
    broker.proc.signal(Signal::SIGCONT);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
}

#[test]
fn a_stopped_publisher_holding_a_claim_is_unblocked_and_its_commit_fails() {
    let broker = Broker::start(&["--unblock-after", "1"]);
    let bus = connect(&broker);
    let mut sub = bus.subscribe("held").unwrap();
    let mut holder = Proc::start(helper(broker.bus(), "hold_a_loan"), Stdio::piped());
    holder.stdout.wait_for("holding a loan");
    holder.signal(Signal::SIGSTOP);
    // Another publisher's messages queue behind the held claim until the broker takes it back.
    let mut other = bus.publisher("held").unwrap();
    other.publish(b"behind the held claim").unwrap();
    let sample = sub
        .recv_timeout(PATIENCE)
        .expect("the claim was taken back");
    assert_eq!(sample.payload(), b"behind the held claim");
    drop(sample);
    broker.proc.stderr.wait_for("took back a claim");
    holder.signal(Signal::SIGCONT);
    holder.expect_success();
    assert!(holder.stdout.text().contains("commit revoked"));
}

/// This test binary run as a helper process: `role` is one of the ignored tests below.
fn helper(bus: &str, role: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        role,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SHMBUS_TEST_HELPER_BUS", bus);
    cmd
}

/// Helper role: loans a message on `held` and commits it only once told to go on (stdin
/// closed), printing what the commit said.
#[test]
#[ignore = "a helper process for a_stopped_publisher_holding_a_claim_is_unblocked"]
fn hold_a_loan() {
    let bus = Bus::builder()
        .address(BusAddress::parse(&std::env::var("SHMBUS_TEST_HELPER_BUS").unwrap()).unwrap())
        .connect()
        .unwrap();
    let mut publisher = bus.publisher("held").unwrap();
    let mut loan = publisher.loan(16).unwrap();
    loan.as_mut_slice().fill(b'h');
    println!("holding a loan");
    // Stopped here by the test, and continued after the broker took the claim back.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    match loan.commit() {
        Err(shmbus::PublishError::Revoked { .. }) => println!("commit revoked"),
        other => println!("commit: {other:?}"),
    }
}

#[test]
fn connections_are_refused_beyond_the_client_limit_and_served_again_below_it() {
    let broker = Broker::start(&["--max-clients", "3"]);
    let first = connect(&broker);
    let second = connect(&broker);
    let third = connect(&broker);
    match Bus::connect(broker.bus()) {
        Err(shmbus::ConnectError::Refused { message, .. }) => {
            assert!(message.contains("3 clients"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(third);
    // The broker notices the departure; then a newcomer is served again.
    let deadline = Instant::now() + PATIENCE;
    let fourth = loop {
        match Bus::connect(broker.bus()) {
            Ok(bus) => break bus,
            Err(_) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    let mut sub = fourth.subscribe("t").unwrap();
    let mut publisher = first.publisher("t").unwrap();
    flows(&mut publisher, &mut sub, "served");
    drop(second);
}

#[test]
fn the_cli_reports_an_untrusted_socket_directory() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("bus.sock");
    let mut proc = Proc::spawn(shmbus(socket.to_str().unwrap(), &["pub", "t", "x"]));
    let code = proc.wait_code();
    assert_eq!(code, 1);
    assert!(
        proc.stderr.text().contains("writable by others"),
        "{}",
        proc.stderr.text()
    );
}
