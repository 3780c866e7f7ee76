//! `shmbus-bus`: the public client API. The parent hosts an embedded broker; the child connects
//! to its address. Topics `compare/ping` and `compare/pong`, zero-copy loans, busy-spinning
//! tethered subscribers. The `remote` benchmark attaches the same way to a bus reached over TCP
//! or TLS, and starts the same child on a socket path (a local client) or a `tcp://` URL (a
//! remote one).

use std::process::Child;

use shmbus::{Bus, Publisher, Subscriber, WaitStrategy};

use crate::harness::{self, Endpoint};

/// A publisher on one topic and a subscriber to the other.
pub struct BusEnd {
    publisher: Publisher,
    subscriber: Subscriber,
    // Declared last: for the parent, dropping the last `Bus` stops the embedded broker.
    _bus: Bus,
}

impl Endpoint for BusEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let mut loan = self.publisher.loan(len).expect("loan from the bus");
        loan.as_mut_slice().fill(fill);
        loan.commit().expect("publish on the bus");
    }

    fn recv(&mut self) -> (usize, u64) {
        let sample = self.subscriber.recv().expect("receive from the bus");
        (sample.len(), harness::read_all(sample.payload()))
    }
}

/// A publisher on `send_to` and a busy-spinning tethered subscriber to `receive_from`.
pub fn attach(bus: Bus, send_to: &str, receive_from: &str) -> BusEnd {
    let subscriber = bus
        .subscriber(receive_from)
        .wait(WaitStrategy::BusySpin)
        .create()
        .expect("subscribe");
    let publisher = bus
        .publisher_builder(send_to)
        .wait(WaitStrategy::BusySpin)
        .create()
        .expect("attach a publisher");
    BusEnd {
        publisher,
        subscriber,
        _bus: bus,
    }
}

/// Parent side: starts the embedded broker, subscribes to the replies before the child exists
/// (so its "ready" cannot be missed) and starts the child on the bus's address.
pub fn parent() -> (BusEnd, Child) {
    let bus = Bus::embedded().expect("start an embedded broker");
    let address = bus.address().to_string();
    let end = attach(bus, "compare/ping", "compare/pong");
    let child = harness::spawn_child("shmbus-bus", &[], &address);
    (end, child)
}

/// Child side: connects to the address it was given, and subscribes before announcing readiness,
/// so it misses nothing the parent sends.
pub fn child() {
    let bus = Bus::connect(&harness::child_arg()).expect("connect to the parent's bus");
    harness::serve(&mut attach(bus, "compare/pong", "compare/ping"));
}
