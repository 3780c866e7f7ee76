//! The ring's behaviour within one process: process-local rings (heap-backed, also run under
//! Miri) and memfd rings opened through their descriptors.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use shmbus_shm::{
    Deadline, Doorbell, DoorbellTable, LayoutError, LoanError, OpenError, OwnedFrame, Owner,
    ReadError, ReadTimeoutError, Reader, ReaderMode, ReaderOptions, ReaderSet, RepairOutcome, Ring,
    RingConfig, SlotError, TryLoanError, WaitStrategy, Writer,
};

const ME: fn() -> Owner = || Owner::new(7).unwrap();

/// A process-local ring with `capacity` bytes and payloads up to `max_payload`.
fn local_ring(capacity: u64, max_payload: u32) -> (Ring, Arc<Doorbell>) {
    let doorbells = DoorbellTable::create_local(8).unwrap();
    let config = RingConfig {
        capacity,
        max_payload,
        writer_slots: 4,
        reader_slots: 4,
    };
    let ring = Ring::create_local(&config, &doorbells).unwrap();
    let bell = Arc::new(doorbells.claim(ME()).unwrap());
    (ring, bell)
}

fn tethered(ring: &Ring, bell: &Arc<Doorbell>) -> Reader {
    ring.reader(ReaderOptions::default(), bell, ME()).unwrap()
}

fn lossy(ring: &Ring, bell: &Arc<Doorbell>) -> Reader {
    let options = ReaderOptions::default().mode(ReaderMode::Lossy);
    ring.reader(options, bell, ME()).unwrap()
}

/// A payload of `len` bytes derived from `n`, so any mix-up shows.
fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (n.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .collect()
}

/// Reads the next message and returns (payload, sequence), or panics.
fn next(reader: &mut Reader) -> (Vec<u8>, u64) {
    let sample = reader
        .try_read()
        .expect("read failed")
        .expect("nothing to read");
    (sample.payload().to_vec(), sample.sequence())
}

#[test]
fn frames_are_read_in_place_in_order_with_their_metadata() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(42, ME()).unwrap();
    assert!(reader.try_read().unwrap().is_none());
    for n in 0..10u64 {
        assert_eq!(writer.try_publish(&payload(n, n as usize * 7)).unwrap(), n);
    }
    for n in 0..10u64 {
        let sample = reader.try_read().unwrap().unwrap();
        assert_eq!(sample.payload(), &payload(n, n as usize * 7)[..]);
        assert_eq!(sample.sequence(), n);
        assert_eq!(sample.writer(), 42);
        assert!(sample.is_in_place());
        assert_eq!(
            sample.payload().as_ptr() as usize % 16,
            0,
            "payloads are 16-byte aligned"
        );
    }
    assert!(reader.try_read().unwrap().is_none());
}

#[test]
fn wrap_around_keeps_every_frame_whole() {
    // Frame sizes that do not divide the capacity force padding at every lap.
    let (ring, bell) = local_ring(4096, 1000);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    let sizes = [1000usize, 3, 517, 64, 999, 0, 250];
    let total = if cfg!(miri) { 40 } else { 2000 };
    for n in 0..total {
        let len = sizes[n as usize % sizes.len()];
        writer.try_publish(&payload(n, len)).unwrap();
        let (got, seq) = next(&mut reader);
        assert_eq!(got, payload(n, len), "frame {n}");
        assert_eq!(seq, n);
    }
    assert!(
        ring.head().position > 3 * 4096,
        "the ring wrapped several times"
    );
}

#[test]
fn a_dropped_loan_never_becomes_a_message() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    {
        let mut loan = writer.try_loan(100).unwrap();
        loan.as_mut_slice().fill(0xee);
        assert_eq!(loan.sequence(), 0);
    } // dropped: skipped
    writer.try_publish(b"after").unwrap();
    let (got, seq) = next(&mut reader);
    assert_eq!((got.as_slice(), seq), (&b"after"[..], 1));
    assert!(reader.try_read().unwrap().is_none());
}

#[test]
fn commit_prefix_publishes_only_the_prefix() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    let mut loan = writer.try_loan(200).unwrap();
    loan.as_mut_slice()[..3].copy_from_slice(b"abc");
    loan.commit_prefix(3).unwrap();
    writer.try_publish(b"next").unwrap();
    assert_eq!(next(&mut reader).0, b"abc");
    assert_eq!(next(&mut reader).0, b"next");
}

#[test]
fn oversized_frames_fail_before_anything_is_written() {
    let (ring, _bell) = local_ring(4096, 256);
    let mut writer = ring.writer(1, ME()).unwrap();
    let before = ring.head();
    assert_eq!(
        writer.try_loan(257).unwrap_err(),
        TryLoanError::TooLarge { len: 257, max: 256 }
    );
    assert_eq!(
        writer
            .publish(&[0; 300], Deadline::After(Duration::ZERO))
            .unwrap_err(),
        LoanError::TooLarge { len: 300, max: 256 }
    );
    assert_eq!(ring.head(), before);
}

#[test]
fn a_tethered_reader_holds_writers_back_until_it_releases() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    let mut published = 0u64;
    while writer.try_publish(&payload(published, 200)).is_ok() {
        published += 1;
    }
    assert_eq!(writer.try_loan(200).unwrap_err(), TryLoanError::Full);
    assert_eq!(
        writer
            .publish(&[1; 200], Deadline::After(Duration::from_millis(10)))
            .unwrap_err(),
        LoanError::Timeout
    );
    // Nothing was overwritten: every frame is intact, and reading frees room.
    assert_eq!(next(&mut reader).0, payload(0, 200));
    writer.try_publish(&payload(published, 200)).unwrap();
    for n in 1..=published {
        assert_eq!(next(&mut reader).0, payload(n, 200), "frame {n}");
    }
}

#[test]
fn a_lossy_reader_reports_exactly_what_it_missed_and_resumes_at_the_oldest_frame() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = lossy(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    // 224-byte frames, 18 per 4096-byte lap (with padding): 100 of them lap it several times.
    for n in 0..100u64 {
        writer.try_publish(&payload(n, 192)).unwrap();
    }
    let missed = match reader.try_read() {
        Err(ReadError::Lagged { missed }) => missed,
        other => panic!(
            "expected Lagged, got {:?}",
            other.map(|s| s.map(|s| s.sequence()))
        ),
    };
    // Then the rest arrive intact and in order, starting with the oldest one still held.
    let (first, seq) = next(&mut reader);
    assert_eq!(seq, missed, "resumes right after what it missed");
    assert_eq!(first, payload(seq, 192));
    let mut expected = seq + 1;
    while let Some(sample) = reader.try_read().unwrap() {
        assert!(!sample.is_in_place(), "lossy reads are copies");
        assert_eq!(sample.sequence(), expected);
        assert_eq!(sample.payload(), &payload(expected, 192)[..]);
        expected += 1;
    }
    assert_eq!(expected, 100);
    assert!(
        100 - missed <= 4096 / 224 + 1,
        "only what one lap holds survived"
    );
}

#[test]
fn late_joiners_see_nothing_earlier_unless_they_ask_for_history() {
    let (ring, bell) = local_ring(4096, 256);
    let mut writer = ring.writer(1, ME()).unwrap();
    for n in 0..10u64 {
        writer.try_publish(&payload(n, 10)).unwrap();
    }
    let mut late = tethered(&ring, &bell);
    let options = ReaderOptions::default().history(3);
    let mut with_history = ring.reader(options, &bell, ME()).unwrap();
    let options = ReaderOptions::default()
        .mode(ReaderMode::Lossy)
        .history(100);
    let mut lossy_all = ring.reader(options, &bell, ME()).unwrap();
    writer.try_publish(&payload(10, 10)).unwrap();

    assert_eq!(next(&mut late), (payload(10, 10), 10));
    assert!(late.try_read().unwrap().is_none());
    for n in 7..=10u64 {
        assert_eq!(next(&mut with_history), (payload(n, 10), n));
    }
    assert!(with_history.try_read().unwrap().is_none());
    for n in 0..=10u64 {
        assert_eq!(
            next(&mut lossy_all),
            (payload(n, 10), n),
            "history asks for more than exists"
        );
    }
}

#[test]
fn an_evicted_reader_lets_writers_go_on_and_sees_lagged_when_it_resumes() {
    let (ring, bell) = local_ring(4096, 256);
    let mut stuck = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    let mut n = 0;
    while writer.try_publish(&payload(n, 200)).is_ok() {
        n += 1;
    }
    assert!(ring.untether_reader(stuck.slot()));
    assert!(
        !ring.untether_reader(stuck.slot()),
        "only tethered readers can be untethered"
    );
    for _ in 0..40 {
        writer
            .try_publish(&payload(n, 200))
            .expect("no longer held back");
        n += 1;
    }
    let missed = match stuck.try_read() {
        Err(ReadError::Lagged { missed }) => missed,
        other => panic!(
            "expected Lagged, got {:?}",
            other.map(|s| s.map(|s| s.sequence()))
        ),
    };
    let mut expected = missed;
    while let Some(sample) = stuck.try_read().unwrap() {
        assert_eq!(sample.sequence(), expected);
        assert_eq!(sample.payload(), &payload(expected, 200)[..]);
        expected += 1;
    }
    assert_eq!(expected, n);
    // An evicted reader stays lossy: it never holds writers back again (so a reader that keeps
    // stalling cannot stall them over and over), and reports what it misses.
    for _ in 0..100 {
        writer
            .try_publish(&payload(n, 200))
            .expect("an evicted reader never holds writers back again");
        n += 1;
    }
    assert!(matches!(stuck.try_read(), Err(ReadError::Lagged { .. })));
    let sample = stuck.try_read().unwrap().unwrap();
    assert_eq!(sample.payload(), &payload(sample.sequence(), 200)[..]);
}

#[test]
fn a_dead_writers_claim_is_repaired_into_a_skip() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let dead = Owner::new(99).unwrap();
    let mut victim = ring.writer(9, dead).unwrap();
    let loan = victim.try_loan(100).unwrap();
    // The writer "dies" mid-write: neither its loan nor its handle ever runs again.
    std::mem::forget(loan);
    std::mem::forget(victim);
    let mut live = ring.writer(1, ME()).unwrap();
    live.try_publish(b"behind the dead claim").unwrap();
    assert!(
        reader.try_read().unwrap().is_none(),
        "stuck at the uncommitted claim"
    );

    let repairs = ring.repair_dead_writers(|owner| owner != dead);
    assert_eq!(repairs.len(), 1);
    assert!(matches!(
        repairs[0].outcome,
        RepairOutcome::Skipped { pos: 0, seq: 0, .. }
    ));
    assert_eq!(next(&mut reader), (b"behind the dead claim".to_vec(), 1));
    assert!(
        ring.writers().iter().all(|p| p.owner != dead.get()),
        "slot freed"
    );
    assert!(ring.repair_dead_writers(|owner| owner != dead).is_empty());
}

#[test]
fn a_dead_writer_between_claims_is_just_released() {
    let (ring, _bell) = local_ring(4096, 256);
    let dead = Owner::new(99).unwrap();
    let mut victim = ring.writer(9, dead).unwrap();
    victim.try_publish(b"done").unwrap();
    std::mem::forget(victim);
    let repairs = ring.repair_dead_writers(|owner| owner != dead);
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].outcome, RepairOutcome::Released);
}

#[test]
fn reclaiming_a_dead_readers_slot_frees_writers() {
    let (ring, bell) = local_ring(4096, 256);
    let dead = Owner::new(98).unwrap();
    let stuck = ring.reader(ReaderOptions::default(), &bell, dead).unwrap();
    let slot = stuck.slot();
    std::mem::forget(stuck);
    let mut writer = ring.writer(1, ME()).unwrap();
    while writer.try_publish(&[0; 200]).is_ok() {}
    assert!(
        !ring.reclaim_reader(slot, ME()),
        "only the holder's token frees a slot"
    );
    assert!(ring.reclaim_reader(slot, dead));
    writer.try_publish(&[0; 200]).expect("no longer held back");
}

#[test]
fn a_parked_reader_is_woken_by_a_publish() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let waiter = std::thread::spawn(move || {
        let sample = reader
            .read(WaitStrategy::Park, Deadline::After(Duration::from_secs(60)))
            .unwrap();
        Some(sample.payload().to_vec())
    });
    let mut writer = ring.writer(1, ME()).unwrap();
    // Keep publishing until the waiter has its message (whether it parked before the first
    // publish or not, it must wake and return the first one).
    writer.try_publish(b"wake up").unwrap();
    assert_eq!(waiter.join().unwrap().as_deref(), Some(&b"wake up"[..]));
}

#[test]
fn read_times_out_when_nothing_comes() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    for wait in [
        WaitStrategy::BusySpin,
        WaitStrategy::default(),
        WaitStrategy::Park,
    ] {
        assert_eq!(
            reader
                .read(wait, Deadline::After(Duration::from_millis(5)))
                .unwrap_err(),
            ReadTimeoutError::Timeout
        );
    }
}

#[test]
fn several_writer_threads_lose_and_duplicate_nothing() {
    let (ring, bell) = local_ring(1 << 14, 512);
    let per_writer: u64 = if cfg!(miri) { 30 } else { 20_000 };
    let mut reader = tethered(&ring, &bell);
    let writers: Vec<_> = (0..3u32)
        .map(|id| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut p: Writer = ring
                    .writer(id, Owner::new(100 + u64::from(id)).unwrap())
                    .unwrap();
                for n in 0..per_writer {
                    let mut body = payload(n, (n % 97) as usize + 16);
                    body[..8].copy_from_slice(&n.to_le_bytes());
                    p.publish(&body, Deadline::Never).unwrap();
                }
            })
        })
        .collect();
    let mut next_from = [0u64; 3];
    let mut last_seq = None;
    while next_from.iter().sum::<u64>() < 3 * per_writer {
        let sample = reader
            .read(
                WaitStrategy::default(),
                Deadline::After(Duration::from_secs(60)),
            )
            .unwrap_or_else(|e| panic!("{e} with {next_from:?}"));
        let id = sample.writer() as usize;
        let n = u64::from_le_bytes(sample.payload()[..8].try_into().unwrap());
        assert_eq!(n, next_from[id], "writer {id} out of order");
        let mut expected = payload(n, (n % 97) as usize + 16);
        expected[..8].copy_from_slice(&n.to_le_bytes());
        assert_eq!(sample.payload(), &expected[..]);
        assert!(last_seq.is_none_or(|l| sample.sequence() > l));
        last_seq = Some(sample.sequence());
        next_from[id] += 1;
    }
    for p in writers {
        p.join().unwrap();
    }
}

#[test]
#[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
fn read_only_handles_cannot_publish() {
    let doorbells = DoorbellTable::create(4).unwrap();
    let ring = Ring::create(&RingConfig::default(), &doorbells).unwrap();
    let ro = Ring::open(
        ring.data_fd_read_only().unwrap().unwrap(),
        ring.readers_fd().unwrap().try_clone_to_owned().unwrap(),
        &doorbells,
    )
    .unwrap();
    assert!(!ro.is_writable());
    assert_eq!(ro.writer(1, ME()).unwrap_err(), SlotError::ReadOnly);
    let bell = Arc::new(doorbells.claim(ME()).unwrap());
    let mut reader = ro.reader(ReaderOptions::default(), &bell, ME()).unwrap();
    ring.writer(1, ME())
        .unwrap()
        .try_publish(b"via the writable handle")
        .unwrap();
    assert_eq!(next(&mut reader).0, b"via the writable handle");

    let other = DoorbellTable::create_local(1).unwrap();
    let foreign = Arc::new(other.claim(ME()).unwrap());
    assert_eq!(
        ring.reader(ReaderOptions::default(), &foreign, ME())
            .unwrap_err(),
        SlotError::ForeignDoorbell
    );
}

#[test]
#[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
fn foreign_truncated_newer_and_mismatched_segments_are_refused() {
    use std::os::fd::OwnedFd;
    let doorbells = DoorbellTable::create(4).unwrap();
    let a = Ring::create(&RingConfig::default(), &doorbells).unwrap();
    let b = Ring::create(&RingConfig::default(), &doorbells).unwrap();
    let fd = |f: std::os::fd::BorrowedFd<'_>| -> OwnedFd { f.try_clone_to_owned().unwrap() };
    let open = |data: OwnedFd, readers: OwnedFd| Ring::open(data, readers, &doorbells).unwrap_err();

    let swapped = open(fd(a.readers_fd().unwrap()), fd(a.data_fd().unwrap()));
    assert!(
        matches!(swapped, OpenError::Layout(LayoutError::WrongKind { .. })),
        "{swapped}"
    );

    let mixed = open(fd(a.data_fd().unwrap()), fd(b.readers_fd().unwrap()));
    assert!(
        matches!(mixed, OpenError::Layout(LayoutError::Mismatch { .. })),
        "{mixed}"
    );

    let foreign = sealed_memfd(&[0xab; 8192]);
    let err = open(foreign, fd(a.readers_fd().unwrap()));
    assert!(
        matches!(err, OpenError::Layout(LayoutError::Foreign { .. })),
        "{err}"
    );

    let truncated = sealed_memfd(&[0; 100]);
    let err = open(truncated, fd(a.readers_fd().unwrap()));
    assert!(
        matches!(err, OpenError::Layout(LayoutError::Truncated { .. })),
        "{err}"
    );

    // A segment from a future layout: same bytes, version + 1.
    let mut bytes = read_all(a.data_fd().unwrap());
    bytes[8] += 1;
    let err = open(sealed_memfd(&bytes), fd(a.readers_fd().unwrap()));
    assert!(
        matches!(err, OpenError::Layout(LayoutError::NewerVersion { .. })),
        "{err}"
    );

    // A header whose recorded length exceeds the real file.
    let mut short = read_all(a.data_fd().unwrap());
    short.truncate(short.len() - 4096);
    let err = open(sealed_memfd(&short), fd(a.readers_fd().unwrap()));
    assert!(
        matches!(err, OpenError::Layout(LayoutError::Truncated { .. })),
        "{err}"
    );
}

fn read_all(fd: std::os::fd::BorrowedFd<'_>) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    file.rewind().unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    bytes
}

fn sealed_memfd(bytes: &[u8]) -> std::os::fd::OwnedFd {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::Write;
    let fd = memfd_create(
        "shmbus-test",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).unwrap();
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .unwrap();
    file.into()
}

#[test]
#[cfg_attr(miri, ignore = "memfd and mmap are not available under Miri")]
fn a_corrupt_header_is_an_error_not_a_crash() {
    use std::os::fd::AsRawFd;
    let doorbells = DoorbellTable::create(4).unwrap();
    let config = RingConfig {
        capacity: 4096,
        max_payload: 256,
        writer_slots: 4,
        reader_slots: 4,
    };
    let ring = Ring::create(&config, &doorbells).unwrap();
    let bell = Arc::new(doorbells.claim(ME()).unwrap());
    let mut reader = tethered(&ring, &bell);
    ring.writer(1, ME()).unwrap().try_publish(b"fine").unwrap();
    // A hostile writer rewrites the committed header: size 0, which would loop a naive reader.
    let data = ring.data_fd().unwrap();
    let len = read_all(data).len();
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(data.as_raw_fd())
        .unwrap();
    let frame = len - 4096; // the frame buffer is the last `capacity` bytes; frame 0 starts it
    // SAFETY: in bounds of a mapping this test owns; the reader is not running concurrently.
    unsafe {
        map.as_mut_ptr()
            .add(frame + 12)
            .cast::<u32>()
            .write_volatile(0)
    };
    match reader.try_read() {
        Err(ReadError::Corrupt(c)) => assert_eq!(c.pos, 0),
        other => panic!(
            "expected Corrupt, got {:?}",
            other.map(|s| s.map(|s| s.sequence()))
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 64 }, ..ProptestConfig::default() })]

    /// Any sequence of frame sizes, with the reader trailing the writer by up to a random
    /// number of frames, comes out exactly as it went in, across many laps.
    #[test]
    fn frames_survive_wrap_around(
        sizes in prop::collection::vec(0usize..=300, 1..200),
        lead in 1usize..20,
    ) {
        let (ring, bell) = local_ring(4096, 300);
        let mut reader = tethered(&ring, &bell);
        let mut writer = ring.writer(1, ME()).unwrap();
        let mut in_flight = std::collections::VecDeque::new();
        for (n, &len) in sizes.iter().enumerate() {
            let body = payload(n as u64, len);
            loop {
                match writer.try_publish(&body) {
                    Ok(seq) => { prop_assert_eq!(seq, n as u64); break; }
                    Err(TryLoanError::Full) => {
                        let expected = in_flight.pop_front().expect("full with nothing unread");
                        prop_assert_eq!(next(&mut reader).0, expected);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            in_flight.push_back(body);
            while in_flight.len() > lead {
                let expected = in_flight.pop_front().unwrap();
                prop_assert_eq!(next(&mut reader).0, expected);
            }
        }
        while let Some(expected) = in_flight.pop_front() {
            prop_assert_eq!(next(&mut reader).0, expected);
        }
        prop_assert!(reader.try_read().unwrap().is_none());
    }
}

#[test]
fn a_reserved_reader_misses_nothing_published_before_it_is_adopted() {
    let (ring, bell) = local_ring(4096, 256);
    let client = Owner::new(55).unwrap();
    let reserved = ring
        .reserve_reader(ReaderMode::Tethered, client, bell.index())
        .unwrap();
    let mut writer = ring.writer(1, ME()).unwrap();
    writer.try_publish(b"before adoption").unwrap();
    assert_eq!(
        ring.adopt_reader(reserved, ReaderOptions::default(), &bell, ME(), ())
            .unwrap_err(),
        SlotError::NotReserved {
            slot: reserved.slot
        },
        "another owner cannot take it"
    );
    let mut reader = ring
        .adopt_reader(reserved, ReaderOptions::default(), &bell, client, ())
        .unwrap();
    assert_eq!(next(&mut reader).0, b"before adoption");
    // Reserved slots hold writers back like any tethered reader.
    while writer.try_publish(&[0; 200]).is_ok() {}
    assert_eq!(writer.try_loan(200).unwrap_err(), TryLoanError::Full);
}

#[test]
fn a_reader_resumes_where_a_gone_one_stood_or_reports_what_was_overwritten() {
    let (ring, bell) = local_ring(4096, 256);
    let mut writer = ring.writer(1, ME()).unwrap();
    let mut gone = tethered(&ring, &bell);
    for n in 0..6u64 {
        writer.try_publish(&payload(n, 100)).unwrap();
    }
    assert_eq!(next(&mut gone).1, 0);
    assert_eq!(next(&mut gone).1, 1);
    let slot = gone.slot();
    drop(gone);
    // Its slot says where it stopped, and the frame there is the one it expects next.
    let stood = ring.reader_position(slot).unwrap();
    assert!(
        ring.readers().iter().all(|r| r.slot != slot),
        "the slot is free"
    );
    assert_eq!(ring.sequence_at(stood), Some(2));
    assert_eq!(
        ring.sequence_at(stood + 32),
        None,
        "not where a frame starts"
    );
    let head = ring.head();
    assert_eq!(ring.sequence_at(head.position), Some(head.sequence));
    let resume = |ring: &Ring| {
        let reserved = ring
            .reserve_reader(ReaderMode::Tethered, ME(), bell.index())
            .unwrap();
        let options = ReaderOptions::default().resume_at(stood, 2);
        ring.adopt_reader(reserved, options, &bell, ME(), ())
            .unwrap()
    };
    let mut resumed = resume(&ring);
    for n in 2..6u64 {
        assert_eq!(next(&mut resumed), (payload(n, 100), n));
    }
    assert!(resumed.try_read().unwrap().is_none());
    drop(resumed);
    // Lapped: what was overwritten is reported, then the rest comes in order.
    for n in 6..200u64 {
        writer.try_publish(&payload(n, 100)).unwrap();
    }
    let mut late = resume(&ring);
    let missed = match late.try_read() {
        Err(ReadError::Lagged { missed }) => missed,
        other => panic!(
            "expected Lagged, got {:?}",
            other.map(|s| s.map(|s| s.sequence()))
        ),
    };
    let (first, seq) = next(&mut late);
    assert_eq!(seq, 2 + missed, "lost exactly what is between");
    assert_eq!(first, payload(seq, 100));
}

/// Fills the ring with 200-byte frames until the writer is refused; returns how many fit.
fn fill(writer: &mut Writer, from: u64) -> u64 {
    let mut n = from;
    while writer.try_publish(&payload(n, 200)).is_ok() {
        n += 1;
    }
    n - from
}

#[test]
fn owned_frames_keep_the_tether_until_the_oldest_is_given_back_in_any_order() {
    let (ring, bell) = local_ring(4096, 256);
    let options = ReaderOptions::default().max_held(4);
    let mut reader = ring.reader(options, &bell, ME()).unwrap();
    let mut writer = ring.writer(1, ME()).unwrap();
    let published = fill(&mut writer, 0);
    let owned: Vec<OwnedFrame> = (0..3)
        .map(|_| reader.try_read().unwrap().unwrap().detach())
        .collect();
    assert_eq!(reader.lent(), 3);
    // Borrowed reads go on past the owned frames, but the tether stays below the first.
    for n in 3..published {
        assert_eq!(next(&mut reader).0, payload(n, 200));
    }
    assert_eq!(writer.try_loan(200).unwrap_err(), TryLoanError::Full);
    let [first, second, third]: [OwnedFrame; 3] = owned.try_into().unwrap();
    assert_eq!(
        second.payload(),
        payload(1, 200),
        "intact while the ring is full"
    );
    drop(third);
    drop(second);
    assert!(reader.try_read().unwrap().is_none()); // collects what came back
    assert_eq!(
        writer.try_loan(200).unwrap_err(),
        TryLoanError::Full,
        "the oldest is still out"
    );
    assert_eq!(first.payload(), payload(0, 200));
    assert_eq!((first.sequence(), first.writer()), (0, 1));
    assert!(first.is_in_place());
    drop(first);
    assert!(reader.try_read().unwrap().is_none());
    assert_eq!(reader.lent(), 0);
    // Everything was read and given back: the whole ring is free again (but for padding).
    assert!(fill(&mut writer, published) >= published - 1);
}

#[test]
fn a_reader_lends_at_most_max_held_frames() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = ring
        .reader(ReaderOptions::default().max_held(2), &bell, ME())
        .unwrap();
    let mut writer = ring.writer(1, ME()).unwrap();
    for n in 0..4 {
        writer.try_publish(&payload(n, 10)).unwrap();
    }
    let a = reader.try_read().unwrap().unwrap().detach();
    let _b = reader.try_read().unwrap().unwrap().detach();
    assert_eq!(
        reader.try_read().unwrap_err(),
        ReadError::HeldLimit { max: 2 }
    );
    drop(a);
    assert_eq!(
        next(&mut reader),
        (payload(2, 10), 2),
        "nothing was consumed"
    );
}

#[test]
fn a_reader_knows_whether_frames_it_lent_are_still_held() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    assert!(!reader.holds_lent());
    for n in 0..2 {
        writer.try_publish(&payload(n, 10)).unwrap();
    }
    let first = reader.try_read().unwrap().unwrap().detach();
    let second = reader.try_read().unwrap().unwrap().detach();
    // Given back out of order: the first still holds the queue.
    drop(second);
    assert!(reader.holds_lent());
    // Given back from another thread: collected by the look, without a read.
    std::thread::spawn(move || drop(first)).join().unwrap();
    assert!(!reader.holds_lent());
    assert_eq!(reader.lent(), 0);
}

#[test]
fn owned_frames_given_back_on_another_thread_free_a_blocked_writer() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    let published = fill(&mut writer, 0);
    let owned: Vec<OwnedFrame> = (0..published)
        .map(|_| reader.try_read().unwrap().unwrap().detach())
        .collect();
    let writer = std::thread::spawn(move || {
        writer
            .publish(&[9; 200], Deadline::After(Duration::from_secs(60)))
            .map(|_| ())
    });
    let holder = std::thread::spawn(move || drop(owned));
    holder.join().unwrap();
    // The reader parks, comes back for what was given back, and sees the writer's frame.
    let frame = reader
        .read(WaitStrategy::Park, Deadline::After(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(frame.payload(), [9; 200]);
    drop(frame);
    writer.join().unwrap().unwrap();
}

#[test]
fn an_owned_frame_outlives_its_reader_and_keeps_the_slot_until_it_drops() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = tethered(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    writer.try_publish(b"kept").unwrap();
    let owned = reader.try_read().unwrap().unwrap().detach();
    drop(reader);
    assert_eq!(ring.readers().len(), 1, "the slot holds the frame");
    fill(&mut writer, 0);
    assert_eq!(owned.payload(), b"kept");
    drop(owned);
    assert!(ring.readers().is_empty());
    writer.try_publish(b"room again").unwrap();
}

#[test]
fn owned_frames_of_lossy_readers_are_private_copies() {
    let (ring, bell) = local_ring(4096, 256);
    let mut reader = lossy(&ring, &bell);
    let mut writer = ring.writer(1, ME()).unwrap();
    writer.try_publish(b"copied").unwrap();
    let owned = reader.try_read().unwrap().unwrap().detach();
    assert!(!owned.is_in_place());
    for n in 0..100 {
        writer.try_publish(&payload(n, 200)).unwrap(); // laps the ring: lossy holds nobody
    }
    assert_eq!(owned.payload(), b"copied");
    assert_eq!(reader.lent(), 0);
}

#[test]
fn a_reader_set_reads_every_ring_round_robin_and_parks_on_one_doorbell() {
    let doorbells = DoorbellTable::create_local(4).unwrap();
    let config = RingConfig {
        capacity: 4096,
        max_payload: 256,
        writer_slots: 2,
        reader_slots: 2,
    };
    let rings: Vec<Ring> = (0..2)
        .map(|_| Ring::create_local(&config, &doorbells).unwrap())
        .collect();
    let bell = Arc::new(doorbells.claim(ME()).unwrap());
    let mut set = ReaderSet::new(Arc::clone(&bell));
    for (i, ring) in rings.iter().enumerate() {
        let reserved = ring
            .reserve_reader(ReaderMode::Tethered, ME(), bell.index())
            .unwrap();
        let reader = ring
            .adopt_reader(reserved, ReaderOptions::default(), &bell, ME(), i)
            .unwrap();
        set.insert(reader);
    }
    let mut writers: Vec<Writer> = rings.iter().map(|r| r.writer(1, ME()).unwrap()).collect();
    for n in 0..3 {
        for w in &mut writers {
            w.try_publish(&payload(n, 8)).unwrap();
        }
    }
    let mut order = Vec::new();
    while let Some(i) = set.poll().unwrap() {
        let frame = set.frame(i).unwrap();
        order.push((*frame.label(), frame.sequence()));
    }
    assert_eq!(order, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);

    // A commit on either ring wakes the set.
    for ring_index in [1usize, 0] {
        let ring = rings[ring_index].clone();
        let waker = std::thread::spawn(move || {
            ring.writer(2, ME()).unwrap().try_publish(b"wake").unwrap();
        });
        let i = loop {
            if let Some(i) = set.poll().unwrap() {
                break i;
            }
            set.park(None, &|| false);
        };
        assert_eq!(*set.frame(i).unwrap().label(), ring_index);
        waker.join().unwrap();
    }
}
