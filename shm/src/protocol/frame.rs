//! Frame headers: encoding, commit stamps and validation.
//!
//! A frame is a 32-byte header followed by its payload, padded to [`FRAME_ALIGN`]. The header is
//! four 64-bit words, each accessed atomically:
//!
//! | word | bytes | content |
//! | --- | --- | --- |
//! | 0 | 0..8 | commit stamp: [`stamp`]`(position)` once the frame is committed |
//! | 1 | 8..16 | payload length (low 32 bits), frame size in bytes (high 32 bits) |
//! | 2 | 16..24 | ring-wide sequence number of the claim |
//! | 3 | 24..32 | writer id (low 32 bits), kind (high 32 bits) |
//!
//! Words 1–3 are written before the stamp is stored with release ordering, so a reader that
//! loads the expected stamp with acquire ordering sees the whole header and payload.

use crate::protocol::layout::{FRAME_ALIGN, FRAME_HEADER_LEN, Geometry};

/// Frame kinds (high half of header word 3).
pub(crate) mod kind {
    /// A message.
    pub const DATA: u32 = 1;
    /// A claim that carries no message: a loan dropped without commit, or a dead writer's
    /// claim repaired by the broker. Consumes its sequence number.
    pub const SKIP: u32 = 2;
    /// Filler from a claim's start to the end of the buffer, so that the claim's frame starts at
    /// offset 0 and stays contiguous. Shares the sequence number of the frame that follows it.
    pub const PAD: u32 = 3;
}

/// The commit stamp of the frame starting at absolute position `pos` in a ring keyed `key`.
///
/// The stamp is the frame's own position run through a keyed bijective mixer (the splitmix64
/// finaliser). A reader waiting at `pos` accepts the frame only when word 0 equals this value.
/// Stale bytes at `pos` are either an older frame's stamp — the stamp of a different position,
/// hence a different value, since the mixer is a bijection — or payload bytes an earlier
/// writer of this ring wrote; those match only by a 2^-64 accident (the key is random per ring,
/// so no payload is crafted to match by mistake), and a writer of this ring could corrupt the
/// ring's messages anyway. See the crate documentation, "Why an in-band stamp".
#[inline]
pub(crate) fn stamp(pos: u64, key: u64) -> u64 {
    let mut z = pos ^ key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The decoded words 1–3 of a frame header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Payload bytes (0 for SKIP and PAD).
    pub len: u32,
    /// Whole frame in bytes, header included; a multiple of [`FRAME_ALIGN`].
    pub size: u32,
    /// Ring-wide sequence number of the claim this frame belongs to.
    pub seq: u64,
    /// Bus-wide id of the writer that wrote it (0 for repairs).
    pub writer: u32,
    /// One of [`kind`]'s values.
    pub kind: u32,
}

impl FrameHeader {
    /// Header words 1, 2 and 3.
    #[inline]
    pub(crate) fn encode(&self) -> [u64; 3] {
        [
            u64::from(self.len) | (u64::from(self.size) << 32),
            self.seq,
            u64::from(self.writer) | (u64::from(self.kind) << 32),
        ]
    }

    /// Decodes words 1, 2 and 3. Any bit pattern decodes; [`FrameHeader::validate`] judges it.
    #[inline]
    pub(crate) fn decode(words: [u64; 3]) -> Self {
        // The casts split each word into its two 32-bit halves.
        FrameHeader {
            len: words[0] as u32,
            size: (words[0] >> 32) as u32,
            seq: words[1],
            writer: words[2] as u32,
            kind: (words[2] >> 32) as u32,
        }
    }

    /// Checks a header read from shared memory at absolute position `pos` against the ring's
    /// geometry, so that nothing a faulty or hostile writer wrote makes a reader step outside
    /// the frame, outside the buffer, or loop in place.
    pub(crate) fn validate(&self, pos: u64, g: &Geometry) -> Result<(), CorruptFrame> {
        let corrupt = |why: &'static str| Err(CorruptFrame { pos, why });
        let size = u64::from(self.size);
        let offset = pos & (g.capacity - 1);
        if size < FRAME_HEADER_LEN || size % FRAME_ALIGN != 0 {
            return corrupt("frame size is not a positive multiple of the frame alignment");
        }
        match self.kind {
            kind::DATA => {
                if self.len > g.max_payload {
                    return corrupt("payload longer than the ring's largest payload");
                }
                if FRAME_HEADER_LEN + u64::from(self.len) > size || size > g.max_frame {
                    return corrupt("data frame size does not fit its payload");
                }
                if offset + size > g.capacity {
                    return corrupt("data frame runs past the end of the buffer");
                }
            }
            kind::PAD => {
                if offset + size != g.capacity {
                    return corrupt("padding does not end at the end of the buffer");
                }
            }
            kind::SKIP => {
                // A repaired claim may cover padding and frame together, so it may wrap; it is
                // never read, only stepped over, and a claim never exceeds half the buffer.
                if size > g.capacity / 2 + g.max_frame {
                    return corrupt("skipped frame larger than any claim");
                }
            }
            _ => return corrupt("unknown frame kind"),
        }
        Ok(())
    }
}

/// A frame header in shared memory that breaks the ring's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt frame at ring position {pos}: {why}")]
pub struct CorruptFrame {
    /// Absolute ring position of the frame.
    pub pos: u64,
    /// Which rule it breaks.
    pub why: &'static str,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::protocol::layout::{RingConfig, frame_size};
    use proptest::prelude::*;

    fn geometry() -> Geometry {
        Geometry::new(&RingConfig {
            capacity: 1 << 16,
            max_payload: 1000,
            writer_slots: 4,
            reader_slots: 4,
        })
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            ..ProptestConfig::default()
        })]

        #[test]
        fn header_words_round_trip(len: u32, size: u32, seq: u64, writer: u32, kind: u32) {
            let h = FrameHeader { len, size, seq, writer, kind };
            prop_assert_eq!(FrameHeader::decode(h.encode()), h);
        }

        #[test]
        fn stamps_of_distinct_positions_differ(a: u64, b: u64, key: u64) {
            prop_assume!(a != b);
            prop_assert_ne!(stamp(a, key), stamp(b, key));
        }

        #[test]
        fn validate_never_accepts_a_frame_outside_the_buffer(words: [u64; 3], pos in 0u64..1 << 40) {
            let g = geometry();
            let pos = pos & !(FRAME_ALIGN - 1);
            let h = FrameHeader::decode(words);
            if h.validate(pos, &g).is_ok() {
                let offset = pos % g.capacity;
                let size = u64::from(h.size);
                prop_assert!(size >= FRAME_HEADER_LEN && size % FRAME_ALIGN == 0);
                if h.kind != kind::SKIP {
                    prop_assert!(offset + size <= g.capacity);
                }
                if h.kind == kind::DATA {
                    prop_assert!(FRAME_HEADER_LEN + u64::from(h.len) <= size);
                }
            }
        }
    }

    #[test]
    fn validate_accepts_what_writers_write() {
        let g = geometry();
        let data = FrameHeader {
            len: 1000,
            size: frame_size(1000) as u32,
            seq: 3,
            writer: 1,
            kind: kind::DATA,
        };
        assert_eq!(data.validate(0, &g), Ok(()));
        assert!(
            data.validate(g.capacity - 64, &g).is_err(),
            "data may not wrap"
        );
        let pad = FrameHeader {
            len: 0,
            size: 64,
            seq: 3,
            writer: 1,
            kind: kind::PAD,
        };
        assert_eq!(pad.validate(g.capacity * 5 - 64, &g), Ok(()));
        assert!(
            pad.validate(g.capacity * 5 - 96, &g).is_err(),
            "padding must reach the end"
        );
        let skip = FrameHeader {
            len: 0,
            size: 2048,
            seq: 3,
            writer: 0,
            kind: kind::SKIP,
        };
        assert_eq!(skip.validate(g.capacity - 64, &g), Ok(()));
        let zero = FrameHeader {
            len: 0,
            size: 0,
            seq: 0,
            writer: 0,
            kind: kind::SKIP,
        };
        assert!(
            zero.validate(0, &g).is_err(),
            "a zero-size frame would loop a reader in place"
        );
    }
}
