//! The broker under abuse: garbage on the control socket, a thousand clients, processes killed
//! or stopped mid-stream, fifty subscribers, and the broker itself dying under its clients.

mod support;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use shmbus::protocol::pubsub::{Unpublish, Unsubscribe};
use shmbus::protocol::seqpacket as socket;
use shmbus::protocol::{
    BrokerMessage, ClientMessage, Hello, MAX_MESSAGE_LEN, PROTOCOL_VERSION, PublisherId, Request,
    RequestId, SubscriptionId, codec,
};
use shmbus::{Bus, WaitStrategy};
use support::raw::{self, closed, hello, recv, send};
use support::{Broker, Proc, run, shmbus};

/// A deterministic byte source (xorshift64*), so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn connect(broker: &Broker) -> OwnedFd {
    raw::connect(&broker.socket)
}

#[test]
fn garbage_on_the_control_socket_costs_only_that_connection() {
    let broker = Broker::start(&[]);
    let mut sub = broker.subscriber(&["survivor", "--count", "1"]);
    let mut noise = Noise(0x5eed_1234_abcd_0001);

    // Random datagrams of every size up to well past the limit, each on a fresh connection.
    for i in 0..200 {
        let sock = connect(&broker);
        let len = 1 + (noise.next() as usize % (MAX_MESSAGE_LEN + 200));
        let bytes = noise.bytes(len);
        if i % 2 == 1 {
            hello(&sock); // garbage after a good handshake too
        }
        socket::send_bytes(sock.as_fd(), &bytes, &[]).unwrap();
        closed(&sock);
    }
    // Absurd length prefixes: a Hello whose name claims gigabytes.
    for prefix in [
        &[0u8, 1, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
        &[
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ] {
        let sock = connect(&broker);
        socket::send_bytes(sock.as_fd(), prefix, &[]).unwrap();
        closed(&sock);
    }
    // Protocol misuse: no Hello first, a second Hello, a wrong version, descriptors sent.
    let sock = connect(&broker);
    send(
        &sock,
        &ClientMessage::Request {
            id: RequestId::from_raw(1),
            body: Request::Unpublish(Unpublish {
                publisher: PublisherId::from_raw(1),
            }),
        },
    );
    closed(&sock);
    let sock = connect(&broker);
    hello(&sock);
    send(
        &sock,
        &ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            name: "again".into(),
        }),
    );
    closed(&sock);
    let sock = connect(&broker);
    send(
        &sock,
        &ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION + 1,
            name: "future".into(),
        }),
    );
    assert!(matches!(recv(&sock), Some(BrokerMessage::Refused(_))));
    closed(&sock);
    let sock = connect(&broker);
    hello(&sock);
    let (r, _w) = nix::unistd::pipe().unwrap();
    let mut buf = [0; MAX_MESSAGE_LEN];
    let goodbye = codec::encode(&ClientMessage::Goodbye, &mut buf).unwrap();
    socket::send_bytes(sock.as_fd(), goodbye, &[r.as_fd()]).unwrap();
    closed(&sock);
    // Clients that vanish mid-handshake.
    for _ in 0..50 {
        drop(connect(&broker));
    }

    // Through all of it, the bus kept working for everyone else.
    assert_eq!(run(broker.bus(), &["pub", "survivor", "still here"]).0, 0);
    assert_eq!(sub.wait_code(), 0, "{}", sub.stderr.text());
    assert_eq!(sub.stdout.text(), "survivor\tstill here");
    assert!(
        broker.proc.stderr.text().contains("protocol violation"),
        "the broker logs why it closed connections"
    );
}

#[test]
fn a_thousand_clients_at_once() {
    let broker = Broker::start(&[]);
    let clients: Vec<OwnedFd> = (0..1000)
        .map(|_| {
            let sock = connect(&broker);
            hello(&sock);
            sock
        })
        .collect();
    // The bus serves newcomers while they are all connected...
    let mut sub = broker.subscriber(&["crowd", "--count", "1"]);
    assert_eq!(run(broker.bus(), &["pub", "crowd", "hello crowd"]).0, 0);
    assert_eq!(sub.wait_code(), 0);
    // ...and every one of them is still served.
    for (i, sock) in clients.iter().enumerate() {
        let id = RequestId::from_raw(i as u32);
        send(
            sock,
            &ClientMessage::Request {
                id,
                body: Request::Unsubscribe(Unsubscribe {
                    subscription: SubscriptionId::from_raw(999_999),
                }),
            },
        );
        match recv(sock) {
            Some(BrokerMessage::Reply {
                id: got,
                result: Err(_),
            }) => assert_eq!(got, id),
            other => panic!("client {i}: {other:?}"),
        }
    }
}

#[test]
fn killing_publishers_and_subscribers_mid_stream_wedges_nothing() {
    // No eviction during this test: only the death of a process may free the ring.
    let broker = Broker::start(&["--evict-after", "600"]);
    let mut sub = broker.subscriber(&["stream"]);
    // A publisher killed while it publishes as fast as it can (possibly mid-frame).
    let mut victim = Proc::spawn(shmbus(
        broker.bus(),
        &["pub", "stream", "flood", "--count", "100000000"],
    ));
    sub.stdout.wait_for("stream\tflood");
    victim.signal(Signal::SIGKILL);
    let _ = victim.child.wait();
    assert_eq!(
        run(broker.bus(), &["pub", "stream", "after the publisher died"]).0,
        0
    );
    sub.stdout.wait_for("after the publisher died");

    // A subscriber that stops reading holds the 1 MiB ring full against 5 MB of messages, and
    // eviction is off: only its death, noticed by the broker, can let the publisher finish.
    sub.signal(Signal::SIGSTOP);
    let mut blocked = Proc::spawn(shmbus(
        broker.bus(),
        &["pub", "stream", &"x".repeat(1000), "--count", "5000"],
    ));
    sub.signal(Signal::SIGKILL);
    let _ = sub.child.wait();
    assert_eq!(
        blocked.wait_code(),
        0,
        "the dead subscriber's slot was reclaimed: {}",
        blocked.stderr.text()
    );
}

#[test]
fn a_stopped_subscriber_is_evicted_and_sees_lagged_when_it_resumes() {
    let broker = Broker::start(&["--evict-after", "1"]);
    let stuck = broker.subscriber(&["slow"]);
    stuck.signal(Signal::SIGSTOP);
    // 5 MB through a 1 MiB ring: completes only once the broker untethers the stopped reader.
    let mut publisher = Proc::spawn(shmbus(
        broker.bus(),
        &["pub", "slow", &"y".repeat(1000), "--count", "5000"],
    ));
    assert_eq!(publisher.wait_code(), 0, "{}", publisher.stderr.text());
    broker.proc.stderr.wait_for("reader evicted");
    stuck.signal(Signal::SIGCONT);
    let lost = stuck.stderr.wait_for("were lost");
    assert!(lost.contains("topic \"slow\""), "{lost}");
}

#[test]
fn a_slow_subscriber_that_keeps_reading_is_not_evicted_by_a_busy_spinning_publisher() {
    // Readers that keep up publish their position once per sixteenth of the ring; this one
    // reads 400 messages 2 ms apart while a busy-spinning publisher waits on the full ring, so
    // at that rate a sixteenth (512 messages) would take a second, and the broker evicts after
    // 0.3 s without progress. The starving publisher makes the reader show every frame.
    const TOTAL: u64 = 20_000;
    let broker = Broker::start(&["--evict-after", "0.3"]);
    let bus = Bus::connect(broker.bus()).unwrap();
    let mut sub = bus.subscribe("slowly").unwrap();
    let publishing = std::thread::spawn({
        let bus = bus.clone();
        move || {
            let mut publisher = bus
                .publisher_builder("slowly")
                .wait(WaitStrategy::BusySpin)
                .create()
                .unwrap();
            for n in 0..TOTAL {
                publisher.publish(&n.to_le_bytes()).unwrap();
            }
        }
    });
    for expected in 0..TOTAL {
        let sample = sub
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("message {expected}: {e}"));
        let n = u64::from_le_bytes(sample.payload().try_into().unwrap());
        assert_eq!(n, expected, "messages lost or out of order");
        drop(sample);
        if expected < 400 {
            // The application's work on each message (not a synchronisation).
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    publishing.join().unwrap();
    assert!(
        !broker.proc.stderr.text().contains("reader evicted"),
        "{}",
        broker.proc.stderr.text()
    );
}

#[test]
fn fifty_subscriber_processes_on_one_topic() {
    let broker = Broker::start(&[]);
    let mut subs: Vec<Proc> = (0..50)
        .map(|_| broker.subscriber(&["fan", "--count", "100"]))
        .collect();
    assert_eq!(
        run(
            broker.bus(),
            &["pub", "fan", "to everyone", "--count", "100"]
        )
        .0,
        0
    );
    for s in &mut subs {
        assert_eq!(s.wait_code(), 0, "{}", s.stderr.text());
        assert_eq!(s.stdout.text().lines().count(), 100);
    }
}
