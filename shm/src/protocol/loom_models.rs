//! Loom models of the ring protocol: claim, commit, read, overrun, release, join, park, repair,
//! taking back a held claim.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p shmbus-shm --release --lib loom` (see
//! `.ci/loom.sh`). Each model is small (a 128-byte ring of 64-byte frames, two or three threads)
//! so loom can explore every interleaving and every weak-memory outcome it models within CI time.
//! Payload words are written with Relaxed stores and checked by readers, so a missing
//! release/acquire shows up as a reader seeing a stale payload.

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU32};
use loom::thread;

use crate::protocol::claim::{Claim, ClaimError, WriterCore};
use crate::protocol::frame::kind;
use crate::protocol::layout::{FRAME_HEADER_LEN, Geometry, RingConfig};
use crate::protocol::memory::{CopyBuf, RingMemory};
use crate::protocol::read::{Poll, ReaderCore};
use crate::protocol::recovery::{
    RepairOutcome, UnblockOutcome, repair_dead_writers, unblock_claim,
};
use crate::protocol::sync::Ordering;

/// Payload bytes per frame: two words, so a frame is 64 bytes and two fill the ring.
const PAYLOAD: u32 = 16;

fn ring() -> Arc<RingMemory> {
    let base = Geometry::new(&RingConfig {
        capacity: 4096,
        max_payload: PAYLOAD,
        writer_slots: 2,
        reader_slots: 2,
    })
    .unwrap();
    // Models need a tiny buffer to wrap within a few steps; the protocol does not care about
    // the size limit, which exists for real workloads.
    let g = Geometry {
        capacity: 128,
        ..base
    };
    Arc::new(RingMemory::zeroed(g, 0x5eed))
}

/// Claims, retrying (with a yield) while the ring is full.
fn claim(p: &mut WriterCore, mem: &RingMemory) -> Claim {
    loop {
        match p.try_claim(mem, PAYLOAD) {
            Ok(c) => return c,
            Err(ClaimError::Full) => thread::yield_now(),
            Err(ClaimError::TooLarge | ClaimError::Corrupt | ClaimError::Retired) => {
                unreachable!()
            }
        }
    }
}

/// Publishes a frame whose two payload words both hold `value`.
fn publish(p: &mut WriterCore, mem: &RingMemory, value: u64, ring_doorbell: &dyn Fn(u32)) {
    let c = claim(p, mem);
    for i in 0..2 {
        mem.word(c.frame + FRAME_HEADER_LEN + 8 * i)
            .store(value, Ordering::Relaxed);
    }
    p.commit(mem, &c, kind::DATA, PAYLOAD, ring_doorbell)
        .expect("nobody takes claims back here");
}

/// Both payload words of a frame read in place.
fn in_place_payload(mem: &RingMemory, pos: u64) -> [u64; 2] {
    let w = |i: u64| {
        mem.word(pos + FRAME_HEADER_LEN + 8 * i)
            .load(Ordering::Relaxed)
    };
    [w(0), w(1)]
}

fn copied_payload(buf: &CopyBuf) -> [u64; 2] {
    let b = buf.as_slice();
    let w = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
    [w(0), w(1)]
}

/// Reads until `n` messages arrived, returning their payload values; yields while empty.
fn read_n(r: &mut ReaderCore, mem: &RingMemory, n: usize) -> Vec<u64> {
    let mut buf = CopyBuf::default();
    let mut got = Vec::new();
    while got.len() < n {
        match r.poll(mem, &mut buf).unwrap() {
            Poll::Empty => thread::yield_now(),
            Poll::Lagged(_) => panic!("a tethered reader lagged"),
            Poll::Frame(f) => {
                let payload = if r.reads_in_place() {
                    in_place_payload(mem, f.pos)
                } else {
                    copied_payload(&buf)
                };
                assert_eq!(payload[0], payload[1], "torn payload");
                got.push(payload[0]);
                r.consume(mem, &f);
            }
        }
    }
    got
}

const NO_WAKE: &dyn Fn(u32) = &|_| {};

/// Runs a model with room for the waits some executions contain (a revoker waiting for the
/// cursor's owner, a reader waiting for a commit): each wait is a loop of yields, and loom counts
/// every yield as a branch.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    builder.check(f);
}

#[test]
fn loom_commit_publishes_header_and_payload() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let m = mem.clone();
        let writer = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 1, 7).unwrap();
            publish(&mut p, &m, 42, NO_WAKE);
        });
        assert_eq!(read_n(&mut r, &mem, 1), vec![42]);
        writer.join().unwrap();
    });
}

#[test]
fn loom_two_writers_neither_lose_nor_mix_frames() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let spawn = |owner: u64, value: u64| {
            let m = mem.clone();
            thread::spawn(move || {
                let mut p = WriterCore::attach(&m, owner, owner as u32).unwrap();
                publish(&mut p, &m, value, NO_WAKE);
            })
        };
        let (a, b) = (spawn(1, 100), spawn(2, 200));
        // Reading waits for both: the writers race each other (one may own the cursor and be
        // revoked by the other); concurrent readers are the subject of the other models, and a
        // third spinning thread would make this one too large to explore.
        a.join().unwrap();
        b.join().unwrap();
        let mut got = read_n(&mut r, &mem, 2);
        got.sort_unstable();
        assert_eq!(got, vec![100, 200]);
    });
}

#[test]
fn loom_tethered_reader_is_never_overwritten() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let m = mem.clone();
        // Three 64-byte frames through a 128-byte ring: the third reuses the first's room and
        // must wait for the reader to release it.
        let writer = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 1, 1).unwrap();
            for v in 1..=3 {
                publish(&mut p, &m, v, NO_WAKE);
            }
        });
        assert_eq!(read_n(&mut r, &mem, 3), vec![1, 2, 3]);
        writer.join().unwrap();
    });
}

#[test]
fn loom_lossy_reader_never_hands_out_a_torn_frame() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, false, 0).unwrap();
        let m = mem.clone();
        let writer = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 1, 1).unwrap();
            for v in 1..=3 {
                publish(&mut p, &m, v, NO_WAKE);
            }
        });
        let mut buf = CopyBuf::default();
        let mut last = 0;
        for _ in 0..4 {
            match r.poll(&mem, &mut buf).unwrap() {
                Poll::Empty => thread::yield_now(),
                Poll::Lagged(missed) => assert!(missed > 0),
                Poll::Frame(f) => {
                    assert!(!r.reads_in_place(), "lossy readers read by copy");
                    let [a, b] = copied_payload(&buf);
                    assert_eq!(a, b, "torn frame handed out");
                    assert_eq!(a, f.header.seq + 1, "payload belongs to another frame");
                    assert!(a > last, "out of order");
                    last = a;
                    r.consume(&mem, &f);
                }
            }
        }
        writer.join().unwrap();
    });
}

#[test]
fn loom_joining_reader_is_never_overrun() {
    model(|| {
        let mem = ring();
        let m = mem.clone();
        let writer = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 1, 1).unwrap();
            for v in 1..=3 {
                publish(&mut p, &m, v, NO_WAKE);
            }
        });
        // Joins at whatever point the writer reached; must then read consecutive, intact
        // frames up to the last one without ever lagging.
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let remaining = 3 - r.next_seq() as usize;
        let got = read_n(&mut r, &mem, remaining);
        let expected: Vec<u64> = (4 - remaining as u64..=3).collect();
        assert_eq!(got, expected);
        writer.join().unwrap();
    });
}

#[test]
fn loom_commit_never_misses_a_parking_reader() {
    model(|| {
        let mem = ring();
        let r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let rung = Arc::new(AtomicU32::new(0));
        let m = mem.clone();
        let bell = rung.clone();
        let writer = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 1, 1).unwrap();
            publish(&mut p, &m, 5, &|index| {
                assert_eq!(index, 0);
                bell.fetch_add(1, Ordering::SeqCst);
            });
        });
        r.prepare_park(&mem);
        assert!(crate::protocol::read::park_fence());
        let would_sleep = !r.ready(&mem);
        writer.join().unwrap();
        if would_sleep {
            assert_eq!(
                rung.load(Ordering::SeqCst),
                1,
                "reader slept through a commit"
            );
        }
        r.cancel_park(&mem);
    });
}

#[test]
fn loom_repair_never_races_a_live_writer() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        // Writer 1 claims and dies before committing.
        let mut dead = WriterCore::attach(&mem, 1, 1).unwrap();
        let _ = claim(&mut dead, &mem);
        let m = mem.clone();
        let live = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 2, 2).unwrap();
            publish(&mut p, &m, 77, NO_WAKE);
        });
        let m = mem.clone();
        let repaired = Arc::new(AtomicBool::new(false));
        let done = repaired.clone();
        let broker = thread::spawn(move || {
            let repairs = repair_dead_writers(&m, &|owner| owner != 1, NO_WAKE);
            if repairs
                .iter()
                .any(|r| matches!(r.outcome, RepairOutcome::Skipped { .. }))
            {
                done.store(true, Ordering::SeqCst);
            }
        });
        broker.join().unwrap();
        live.join().unwrap();
        if !repaired.load(Ordering::SeqCst) {
            // Deferred (a live intent named the same position while it raced); retry now that
            // the live writer is done.
            let repairs = repair_dead_writers(&mem, &|owner| owner != 1, NO_WAKE);
            assert!(
                repairs
                    .iter()
                    .any(|r| matches!(r.outcome, RepairOutcome::Skipped { .. }))
            );
        }
        assert_eq!(read_n(&mut r, &mem, 1), vec![77]);
    });
}

#[test]
fn loom_exclusive_owner_is_revoked_without_losing_a_frame() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        // Alone on the ring: takes the cursor and claims with plain stores.
        let mut owner = WriterCore::attach(&mem, 1, 1).unwrap();
        let m = mem.clone();
        let other = thread::spawn(move || {
            let mut p = WriterCore::attach(&m, 2, 2).unwrap();
            publish(&mut p, &m, 200, NO_WAKE);
        });
        publish(&mut owner, &mem, 100, NO_WAKE);
        other.join().unwrap();
        let mut got = read_n(&mut r, &mem, 2);
        got.sort_unstable();
        assert_eq!(got, vec![100, 200]);
    });
}

#[test]
fn loom_a_taken_back_claim_is_never_also_committed() {
    model(|| {
        let mem = ring();
        let mut r = ReaderCore::attach(&mem, 9, true, 0).unwrap();
        let mut p = WriterCore::attach(&mem, 1, 1).unwrap();
        let c = claim(&mut p, &mem);
        for i in 0..2 {
            mem.word(c.frame + FRAME_HEADER_LEN + 8 * i)
                .store(55, Ordering::Relaxed);
        }
        let m = mem.clone();
        // The broker decides the claim was held too long while its writer commits it.
        let broker = thread::spawn(move || unblock_claim(&m, 0, c.start, NO_WAKE));
        let committed = p.commit(&mem, &c, kind::DATA, PAYLOAD, NO_WAKE).is_ok();
        let mut outcome = broker.join().unwrap();
        if outcome == UnblockOutcome::Deferred {
            // It saw the commit under way; looking again after it settled decides.
            outcome = unblock_claim(&mem, 0, c.start, NO_WAKE);
        }
        match outcome {
            UnblockOutcome::Unblocked { .. } => {
                assert!(!committed, "a claim was both committed and taken back");
                // Readers step over the padding; the writer claims again once it is in place.
                let mut buf = CopyBuf::default();
                assert!(matches!(r.poll(&mem, &mut buf), Ok(Poll::Empty)));
                assert_eq!(r.position().pos, c.end);
                publish(&mut p, &mem, 66, NO_WAKE);
                assert_eq!(read_n(&mut r, &mem, 1), vec![66]);
            }
            UnblockOutcome::Gone => {
                assert!(committed, "a claim neither committed nor taken back");
                assert_eq!(read_n(&mut r, &mem, 1), vec![55]);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    });
}
