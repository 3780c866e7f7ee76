//! Arbitrary bytes into both control-message decoders: they must never panic, and whatever they
//! accept must survive an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::protocol::MAX_MESSAGE_LEN;
use shmbus::protocol::codec::{self, decode_broker, decode_client};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    if let Ok(msg) = decode_client(data) {
        // postcard's decoder also accepts over-long varints, so the bytes need not come back
        // the same; the encoder writes the shortest form, so they can only shrink, and what fit
        // in a datagram re-encodes into one.
        let bytes = codec::encode(&msg, &mut buf).expect("a decoded client message re-encodes");
        assert!(bytes.len() <= data.len(), "re-encoding grew: {msg:?}");
        assert_eq!(decode_client(bytes), Ok(msg));
    }
    if let Ok(msg) = decode_broker(data) {
        let bytes = codec::encode(&msg, &mut buf).expect("a decoded broker message re-encodes");
        assert!(bytes.len() <= data.len(), "re-encoding grew: {msg:?}");
        assert_eq!(decode_broker(bytes), Ok(msg));
    }
});
