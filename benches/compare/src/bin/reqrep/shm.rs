//! `shmbus-reqrep`: shmbus request/response. The parent hosts an embedded broker and asks with a
//! `Requester`, the request written in place (`request_with`); the child connects to the
//! broker's address, serves the topic and answers in place (`respond_with`), reading the request
//! where it lies. Both busy-poll (`WaitStrategy::BusySpin`).

use hdrhistogram::Histogram;
use shmbus::{Bus, WaitStrategy};
use std::os::fd::AsFd;

use crate::Requester;
use crate::harness;
use crate::process::{ready_pipe, say_ready, wait_ready};

/// The topic served.
const TOPIC: &str = "bench/rpc";

/// The parent's requester.
struct ShmRequester {
    requester: shmbus::Requester,
    // Declared last: dropping the last `Bus` stops the embedded broker.
    _bus: Bus,
}

impl Requester for ShmRequester {
    fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64) {
        let response = self
            .requester
            .request_with(len, |buf| {
                buf.fill(fill);
                len
            })
            .expect("request over shmbus");
        let payload = response.payload();
        (payload.len(), harness::read_all(payload))
    }
}

/// One case: starts the broker and the serving child, then times the round trips.
pub fn measure(len: usize, warmup: usize, rounds: usize) -> Histogram<u64> {
    let bus = Bus::embedded().expect("start an embedded broker");
    let (ready, ready_w) = ready_pipe();
    let child = harness::spawn_child(
        "shmbus-reqrep",
        &[ready_w.as_fd()],
        &bus.address().to_string(),
    );
    drop(ready_w);
    wait_ready(ready, "the shmbus server");
    let mut requester = bus.requester(TOPIC).expect("a requester");
    requester.set_wait_strategy(WaitStrategy::BusySpin);
    let mut end = ShmRequester {
        requester,
        _bus: bus,
    };
    crate::run(&mut end, child, len, warmup, rounds)
}

/// The child: serves until the empty request, which it answers before it returns.
pub fn child() {
    let bus = Bus::connect(&harness::child_arg()).expect("connect to the parent's bus");
    let mut server = bus.serve(TOPIC).expect("serve the topic");
    server.set_wait_strategy(WaitStrategy::BusySpin);
    say_ready();
    loop {
        let request = server.recv().expect("receive a request");
        let len = request.payload().len();
        request
            .respond_with(len, |request, buf| {
                buf.fill(harness::reply_fill(harness::read_all(request)));
                len
            })
            .expect("respond");
        if len == 0 {
            return;
        }
    }
}
