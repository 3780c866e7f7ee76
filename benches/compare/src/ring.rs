//! `shmbus-ring`: the `shmbus_shm` rings on their own, without broker or client — two rings
//! (there and back) sharing one doorbell table, set up as in `shm/benches/ring.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Child;
use std::sync::Arc;

use shmbus_shm::{
    Deadline, DoorbellTable, Owner, Reader, ReaderOptions, Ring, RingConfig, WaitStrategy, Writer,
};

use crate::harness::{self, Endpoint};

/// A writer on one ring and a tethered, busy-spinning reader on the other.
pub struct RingEnd {
    writer: Writer,
    reader: Reader,
    // Declared last, so dropped after the publisher and reader attached to them.
    _rings: [Ring; 2],
    _doorbells: DoorbellTable,
}

impl Endpoint for RingEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let mut loan = self
            .writer
            .loan(len, Deadline::Never)
            .expect("loan from the ring");
        loan.as_mut_slice().fill(fill);
        loan.commit().expect("commit to the ring");
    }

    fn recv(&mut self) -> (usize, u64) {
        let sample = self
            .reader
            .read(WaitStrategy::BusySpin, Deadline::Never)
            .expect("read the ring");
        (sample.len(), harness::read_all(sample.payload()))
    }
}

/// 1 MiB rings for 64 KiB payloads: the broker's default ring.
fn config() -> RingConfig {
    RingConfig {
        capacity: 1 << 20,
        max_payload: 64 * 1024,
        writer_slots: 4,
        reader_slots: 4,
    }
}

fn attach(there: Ring, back: Ring, doorbells: DoorbellTable, writer_id: u32) -> RingEnd {
    let me = Owner::this_process();
    let bell = Arc::new(doorbells.claim(me).expect("claim a doorbell"));
    let reader = back
        .reader(ReaderOptions::default(), &bell, me)
        .expect("attach a reader");
    let mut writer = there.writer(writer_id, me).expect("attach a writer");
    writer.set_wait_strategy(WaitStrategy::BusySpin);
    RingEnd {
        writer,
        reader,
        _rings: [there, back],
        _doorbells: doorbells,
    }
}

/// Parent side: creates the rings, attaches (its reader before the child can publish) and starts
/// the child with the rings' descriptors.
pub fn parent() -> (RingEnd, Child) {
    let doorbells = DoorbellTable::create(8).expect("create the doorbell table");
    let there = Ring::create(&config(), &doorbells).expect("create a ring");
    let back = Ring::create(&config(), &doorbells).expect("create a ring");
    let fds: [OwnedFd; 5] = [
        there
            .data_fd_read_only()
            .expect("read-only data fd")
            .expect("a shared ring has a data fd"),
        there
            .readers_fd()
            .expect("readers fd")
            .try_clone_to_owned()
            .unwrap(),
        back.data_fd()
            .expect("data fd")
            .try_clone_to_owned()
            .unwrap(),
        back.readers_fd()
            .expect("readers fd")
            .try_clone_to_owned()
            .unwrap(),
        doorbells
            .fd()
            .expect("doorbell fd")
            .try_clone_to_owned()
            .unwrap(),
    ];
    let end = attach(there, back, doorbells, 1);
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let child = harness::spawn_child("shmbus-ring", &borrowed, "");
    (end, child)
}

/// Child side: opens the rings it was passed, the other way round.
pub fn child() {
    let [
        there_data,
        there_readers,
        back_data,
        back_readers,
        doorbells,
    ]: [OwnedFd; 5] = harness::inherited_fds()
        .try_into()
        .expect("five ring descriptors");
    let doorbells = DoorbellTable::open(doorbells).expect("open the doorbell table");
    let there = Ring::open(there_data, there_readers, &doorbells).expect("open a ring");
    let back = Ring::open(back_data, back_readers, &doorbells).expect("open a ring");
    harness::serve(&mut attach(back, there, doorbells, 2));
}
