//! The records of a state ring: one frame per change of a collection.
//!
//! A record is a 16-byte header — little-endian: the sequence number (`u64`), the kind (`u8`:
//! 1 put, 2 remove, 3 restart counter, 4 clear), a zero byte, the key's length (`u16`) and the
//! value's length (`u32`) — then the key (UTF-8), zero padding to a multiple of 16, and the value.
//! A restart counter record carries the counter as an 8-byte value and no key. Everything is
//! checked when decoded: records come from another process's writes.

/// Bytes of a record's header.
pub const RECORD_HEADER_LEN: usize = 16;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Bytes a record may take besides its value: the header and the longest key, padded. A state
/// ring's largest payload is this plus its largest value.
pub const RECORD_OVERHEAD: u32 = (RECORD_HEADER_LEN + MAX_KEY_LEN + 1) as u32;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const RESTARTED: u8 = 3;
const CLEAR: u8 = 4;

/// One change of a collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// `key` now holds `value` (created or modified).
    Put {
        /// The key.
        key: &'a str,
        /// Its new value.
        value: &'a [u8],
    },
    /// `key` was removed.
    Remove {
        /// The key.
        key: &'a str,
    },
    /// The restart counter is now this (0: cleared).
    Restarted(u64),
    /// Every entry was removed (the owner of a non-persistent collection went).
    Clear,
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its header says.
    #[error("a state record of {len} bytes is shorter than its header says")]
    Truncated {
        /// The payload's length.
        len: usize,
    },
    /// An unknown kind byte.
    #[error("unknown state record kind {0}")]
    Kind(u8),
    /// The key is not a valid key.
    #[error("state record with a bad key: {0}")]
    Key(String),
}

/// What an entry counts against its collection's quota
/// ([`StateOwned::max_bytes`](super::StateOwned::max_bytes)): its key and its value.
pub fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// Checks a key: 1 to [`MAX_KEY_LEN`] bytes, no `/` and no NUL. The error says what is wrong.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key cannot be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key of {} bytes exceeds {MAX_KEY_LEN} bytes",
            key.len()
        ));
    }
    if key.contains('/') {
        return Err(format!("key {key:?} contains '/'"));
    }
    if key.contains('\0') {
        return Err(format!("key {key:?} contains a NUL byte"));
    }
    Ok(())
}

/// `n` rounded up to a multiple of 16.
fn padded(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl<'a> Record<'a> {
    /// Bytes of the encoded record.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN
            + match self {
                Record::Put { key, value } => padded(key.len()) + value.len(),
                Record::Remove { key } => key.len(),
                Record::Restarted(_) => 8,
                Record::Clear => 0,
            }
    }

    /// Writes the record, numbered `seq`, at the start of `buf` (at least
    /// [`encoded_len`](Record::encoded_len) bytes); returns the bytes written.
    pub fn encode(&self, seq: u64, buf: &mut [u8]) -> usize {
        let len = self.encoded_len();
        let (kind, key, value): (u8, &str, &[u8]) = match self {
            Record::Put { key, value } => (PUT, key, value),
            Record::Remove { key } => (REMOVE, key, &[]),
            Record::Restarted(_) => (RESTARTED, "", &[]),
            Record::Clear => (CLEAR, "", &[]),
        };
        let counter;
        let value = match self {
            Record::Restarted(n) => {
                counter = n.to_le_bytes();
                &counter[..]
            }
            _ => value,
        };
        let buf = &mut buf[..len];
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8] = kind;
        buf[9] = 0;
        buf[10..12].copy_from_slice(&(key.len() as u16).to_le_bytes());
        buf[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let body = &mut buf[RECORD_HEADER_LEN..];
        body[..key.len()].copy_from_slice(key.as_bytes());
        let at = if kind == PUT {
            padded(key.len())
        } else {
            key.len()
        };
        body[key.len()..at].fill(0);
        body[at..at + value.len()].copy_from_slice(value);
        len
    }

    /// Decodes a record: its sequence number and the change.
    pub fn decode(payload: &'a [u8]) -> Result<(u64, Record<'a>), RecordError> {
        let truncated = RecordError::Truncated { len: payload.len() };
        let Some((head, body)) = payload.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(truncated);
        };
        let seq = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let kind = head[8];
        let key_len = usize::from(u16::from_le_bytes([head[10], head[11]]));
        let value_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        let value_at = if kind == PUT {
            padded(key_len)
        } else {
            key_len
        };
        let end = value_at.checked_add(value_len).ok_or(truncated.clone())?;
        if body.len() < end {
            return Err(truncated);
        }
        let key = std::str::from_utf8(&body[..key_len])
            .map_err(|_| RecordError::Key("not UTF-8".into()))?;
        let value = &body[value_at..end];
        let record = match kind {
            PUT | REMOVE => {
                check_key(key).map_err(RecordError::Key)?;
                if kind == PUT {
                    Record::Put { key, value }
                } else {
                    Record::Remove { key }
                }
            }
            RESTARTED => {
                let counter: [u8; 8] = value.try_into().map_err(|_| truncated)?;
                Record::Restarted(u64::from_le_bytes(counter))
            }
            CLEAR => Record::Clear,
            other => return Err(RecordError::Kind(other)),
        };
        Ok((seq, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_every_prefix_is_refused() {
        let records = [
            Record::Put {
                key: "eth0",
                value: b"up",
            },
            Record::Put {
                key: "k",
                value: &[],
            },
            Record::Remove { key: "eth0" },
            Record::Restarted(7),
            Record::Clear,
        ];
        for (i, r) in records.iter().enumerate() {
            let mut buf = vec![0xaa; r.encoded_len()];
            assert_eq!(r.encode(i as u64 + 1, &mut buf), buf.len());
            assert_eq!(Record::decode(&buf), Ok((i as u64 + 1, *r)));
            for cut in 0..buf.len() {
                assert!(Record::decode(&buf[..cut]).is_err(), "{r:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn bad_keys_and_kinds_are_refused() {
        assert!(check_key("").is_err());
        assert!(check_key("a/b").is_err());
        assert!(check_key(&"k".repeat(256)).is_err());
        assert!(check_key(&"k".repeat(255)).is_ok());
        let put = Record::Put {
            key: "a",
            value: b"v",
        };
        let mut buf = vec![0; put.encoded_len()];
        put.encode(1, &mut buf);
        buf[16] = b'/';
        assert!(matches!(Record::decode(&buf), Err(RecordError::Key(_))));
        buf[8] = 9;
        assert_eq!(Record::decode(&buf), Err(RecordError::Kind(9)));
        // A value length that overflows is refused, not wrapped.
        buf[8] = 1;
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Record::decode(&buf).is_err());
    }
}
