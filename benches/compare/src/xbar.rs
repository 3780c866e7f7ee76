//! `crossbar` (1.2): each side publishes into a region it creates (one topic, `/m`) and
//! subscribes to the other side's region, over crossbar's zero-copy path: `loan` → write every
//! byte in place → `set_len` → `publish`; the receiver loops on `try_recv()` until it returns a
//! sample and reads it in place.
//!
//! crossbar has no backpressure (a slow subscriber is overrun, not waited for); in a ping-pong only
//! one message is ever in flight, so nothing is overrun here. Its regions have no history: a
//! subscriber sees only what is published after it subscribed, so each side waits, before its
//! first message, until the other has subscribed to its topic (`subscriber_count`).

use std::process::Child;
use std::time::{Duration, Instant};

use crossbar::{Config, Publisher, Stream, Subscriber, Topic};

use crate::harness::{self, Endpoint};

/// The topic of both regions.
const URI: &str = "/m";

/// How long a side waits for the other's region or subscription before giving up.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// A publisher into this side's region and a subscription to the other side's.
pub struct XbarEnd {
    stream: Stream,
    topic: Topic,
    publisher: Publisher,
    _subscriber: Subscriber,
}

impl Endpoint for XbarEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let mut loan = self.publisher.loan(&self.topic).expect("loan from crossbar");
        loan.as_mut_slice()[..len].fill(fill);
        loan.set_len(len).expect("payload within the block");
        loan.publish();
    }

    fn recv(&mut self) -> (usize, u64) {
        loop {
            if let Some(sample) = self.stream.try_recv() {
                return (sample.len(), harness::read_all(&sample));
            }
            std::hint::spin_loop();
        }
    }
}

/// The region of `side` for this run.
fn region(prefix: &str, side: &str) -> String {
    format!("{prefix}-{side}")
}

/// Creates this side's region (`mine`), subscribes to the other's (`theirs`, waiting for it to
/// appear), and waits until the other side has subscribed to this one.
fn attach(prefix: &str, max_len: usize, mine: &str, theirs: &str) -> XbarEnd {
    let config = Config {
        // One block holds a payload and crossbar's 8-byte header.
        block_size: ((max_len + 8).next_power_of_two().max(4096)) as u32,
        ..Config::default()
    };
    let mut publisher =
        Publisher::create(&region(prefix, mine), config).expect("create a crossbar region");
    let topic = publisher.register(URI).expect("register the crossbar topic");
    let deadline = Instant::now() + SETUP_LIMIT;
    let (subscriber, stream) = loop {
        let attempt = Subscriber::connect(&region(prefix, theirs))
            .and_then(|s| s.subscribe(URI).map(|stream| (s, stream)));
        match attempt {
            Ok(pair) => break pair,
            Err(e) if Instant::now() > deadline => panic!("the other side's region: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    while publisher.subscriber_count(&topic).expect("our own topic") == 0 {
        assert!(Instant::now() < deadline, "the other side never subscribed");
        std::thread::sleep(Duration::from_millis(1));
    }
    XbarEnd {
        stream,
        topic,
        publisher,
        _subscriber: subscriber,
    }
}

/// Parent side: regions named after this process and the payload size, so no two cases (nor a
/// leftover from an earlier killed run) share one.
pub fn parent(len: usize) -> (XbarEnd, Child) {
    let prefix = format!("shmbus-compare-{}-{len}", std::process::id());
    let child = harness::spawn_child("crossbar", &[], &format!("{len} {prefix}"));
    (attach(&prefix, len, "ping", "pong"), child)
}

/// Child side.
pub fn child() {
    let arg = harness::child_arg();
    let (len, prefix) = arg.split_once(' ').expect("LEN PREFIX");
    let len: usize = len.parse().expect("payload length");
    harness::echo(&mut attach(prefix, len, "pong", "ping"));
}
