//! `crossbar` (1.2): each side publishes into a region it creates (one topic, `/m`) and
//! subscribes to the other side's region, over crossbar's zero-copy path: `loan` → write every
//! byte in place → `set_len` → `publish`; the receiver loops on `try_recv()` until it returns a
//! sample and reads it in place.
//!
//! crossbar has no backpressure (a slow subscriber is overrun, not waited for); in a ping-pong only
//! one message is ever in flight, so nothing is overrun here. In throughput mode a [`Credit`]
//! window of half the topic's ring depth (256 instead of the default 8) keeps the sender from
//! overrunning the receiver. Its regions have no history: a
//! subscriber sees only what is published after it subscribed, so each side waits, before its
//! first message, until the other has subscribed to its topic (`subscriber_count`).

use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;
use std::time::{Duration, Instant};

use crossbar::{Config, Publisher, Stream, Subscriber, Topic};

use crate::credit::Credit;
use crate::harness::{self, Endpoint};

/// A topic's ring depth in throughput mode (crossbar's default is 8)...
const STREAM_RING_DEPTH: u32 = 256;
/// ...and the credit window: a message is overwritten `STREAM_RING_DEPTH` publishes later, so the
/// sender stays well within that of what the receiver has read.
const STREAM_WINDOW: u64 = STREAM_RING_DEPTH as u64 / 2;

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
    /// Flow control, in throughput mode.
    credit: Option<Credit>,
}

impl Endpoint for XbarEnd {
    fn send(&mut self, len: usize, fill: u8) {
        if let Some(credit) = &mut self.credit {
            credit.before_send();
        }
        let mut loan = self
            .publisher
            .loan(&self.topic)
            .expect("loan from crossbar");
        loan.as_mut_slice()[..len].fill(fill);
        loan.set_len(len).expect("payload within the block");
        loan.publish();
    }

    fn recv(&mut self) -> (usize, u64) {
        loop {
            if let Some(sample) = self.stream.try_recv() {
                let got = (sample.len(), harness::read_all(&sample));
                drop(sample);
                if let Some(credit) = &mut self.credit {
                    credit.after_recv();
                }
                return got;
            }
            if let Some(credit) = &mut self.credit {
                credit.idle();
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
fn attach(
    prefix: &str,
    max_len: usize,
    mine: &str,
    theirs: &str,
    credit: Option<Credit>,
) -> XbarEnd {
    let mut config = Config {
        // One block holds a payload and crossbar's 8-byte header.
        block_size: ((max_len + 8).next_power_of_two().max(4096)) as u32,
        ..Config::default()
    };
    if credit.is_some() {
        config.ring_depth = STREAM_RING_DEPTH;
        // The ring's blocks, the loan and the sample being read.
        config.block_count = 2 * STREAM_RING_DEPTH;
    }
    let mut publisher =
        Publisher::create(&region(prefix, mine), config).expect("create a crossbar region");
    let topic = publisher
        .register(URI)
        .expect("register the crossbar topic");
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
        credit,
    }
}

/// Parent side: regions named after this process and the payload size, so no two cases (nor a
/// leftover from an earlier killed run) share one.
pub fn parent(len: usize) -> (XbarEnd, Child) {
    let prefix = format!("shmbus-compare-{}-{len}", std::process::id());
    let (credit, fds): (Option<Credit>, Vec<OwnedFd>) = match harness::stream_count() {
        Some(_) => {
            let (credit, fd) = Credit::create(STREAM_WINDOW);
            (Some(credit), vec![fd])
        }
        None => (None, Vec::new()),
    };
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let child = harness::spawn_child("crossbar", &borrowed, &format!("{len} {prefix}"));
    (attach(&prefix, len, "ping", "pong", credit), child)
}

/// Child side.
pub fn child() {
    let arg = harness::child_arg();
    let (len, prefix) = arg.split_once(' ').expect("LEN PREFIX");
    let len: usize = len.parse().expect("payload length");
    let credit = harness::inherited_fds()
        .pop()
        .map(|fd| Credit::map(&fd, 1, STREAM_WINDOW));
    harness::serve(&mut attach(prefix, len, "pong", "ping", credit));
}
