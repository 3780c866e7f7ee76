//! Arbitrary bytes as a stream of remote-protocol frames, read the way a connection reads them
//! (length prefix checked against the limit, then the body decoded): nothing may panic, and
//! every frame accepted must survive an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::protocol::remote::{LENGTH_PREFIX, decode, encode, frame_length};

/// The frame limit of a connection to a gateway with 64 KiB payloads.
const LIMIT: usize = 64 * 1024 + shmbus::protocol::remote::FRAME_OVERHEAD;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    while let Some(prefix) = rest.first_chunk::<LENGTH_PREFIX>() {
        let Ok(len) = frame_length(*prefix, LIMIT) else {
            return;
        };
        let Some(body) = rest.get(LENGTH_PREFIX..LENGTH_PREFIX + len) else {
            return;
        };
        if let Ok(frame) = decode(body) {
            out.clear();
            encode(&frame, &mut out);
            let again = decode(&out[LENGTH_PREFIX..]).expect("an encoded frame decodes");
            assert_eq!(again, frame);
        }
        rest = &rest[LENGTH_PREFIX + len..];
    }
});
