//! Arbitrary bytes as a state record (what a state ring's frame holds) and as a snapshot (what the
//! keeper's memfd holds): neither parser may panic, and a record it accepts re-encodes to bytes
//! it decodes the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::protocol::state::{Record, snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, record)) = Record::decode(data) {
        let mut buf = vec![0u8; record.encoded_len()];
        record.encode(seq, &mut buf);
        assert_eq!(Record::decode(&buf), Ok((seq, record)));
    }
    if let Ok(collections) = snapshot::parse(data) {
        let mut w = snapshot::Writer::default();
        for c in &collections {
            let entries = c.entries.iter().copied();
            w.collection(c.topic, c.seq, c.restarted, c.persistent, c.owned, entries);
        }
        assert_eq!(snapshot::parse(&w.finish()).as_ref(), Ok(&collections));
    }
});
