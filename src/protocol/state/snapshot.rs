//! The snapshot format: what the keeper writes into the memfd that answers a
//! [`StateSnapshot`](super::StateSnapshot), and what a watcher reads back.
//!
//! Little-endian throughout: the magic `shmbusS1`, the number of collections (`u32`) and a zero
//! `u32`; then per collection its topic's length (`u16`), flags (`u8`: bit 0 persistent, bit 1
//! owned), a zero byte, its number of entries (`u32`), the sequence number it reflects (`u64`),
//! its restart counter (`u64`), the topic; then per entry the key's length (`u16`), the value's
//! length (`u32`), the key and the value. The parser trusts none of it: every length is checked
//! against what is left, and counts never size an allocation beyond what the bytes can hold.

use crate::topic::MAX_TOPIC_LEN;

use super::record::check_key;

const MAGIC: &[u8; 8] = b"shmbusS1";
const PERSISTENT: u8 = 1;
const OWNED: u8 = 2;

/// One collection as a snapshot holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// The sequence number of the last change it reflects.
    pub seq: u64,
    /// Its restart counter.
    pub restarted: u64,
    /// Whether it is persistent.
    pub persistent: bool,
    /// Whether someone owns it now.
    pub owned: bool,
    /// Its entries, in no particular order.
    pub entries: Vec<(&'a str, &'a [u8])>,
}

/// Writes snapshots.
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
    collections: u32,
}

impl Default for Writer {
    fn default() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[0; 8]);
        Writer {
            buf,
            collections: 0,
        }
    }
}

impl Writer {
    /// Adds a collection: its header, then `entries`.
    pub fn collection<'e>(
        &mut self,
        topic: &str,
        seq: u64,
        restarted: u64,
        persistent: bool,
        owned: bool,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e [u8])>,
    ) {
        let flags = (u8::from(persistent) * PERSISTENT) | (u8::from(owned) * OWNED);
        self.buf
            .extend_from_slice(&(topic.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&[flags, 0]);
        self.buf
            .extend_from_slice(&(entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&restarted.to_le_bytes());
        self.buf.extend_from_slice(topic.as_bytes());
        for (key, value) in entries {
            self.buf
                .extend_from_slice(&(key.len() as u16).to_le_bytes());
            self.buf
                .extend_from_slice(&(value.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.extend_from_slice(value);
        }
        self.collections += 1;
    }

    /// The snapshot's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[8..12].copy_from_slice(&self.collections.to_le_bytes());
        self.buf
    }
}

/// Why a snapshot could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed state snapshot at byte {at}: {what}")]
pub struct SnapshotError {
    /// Where.
    pub at: usize,
    /// What was wrong.
    pub what: String,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn fail(&self, what: impl Into<String>) -> SnapshotError {
        SnapshotError {
            at: self.at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.fail(format!("{n} bytes needed, the snapshot ends")))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.array().map(u64::from_le_bytes)
    }

    fn str(&mut self, len: usize, what: &str) -> Result<&'a str, SnapshotError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.fail(format!("{what} is not UTF-8")))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// Reads a snapshot.
pub fn parse(bytes: &[u8]) -> Result<Vec<Collection<'_>>, SnapshotError> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(8)? != MAGIC {
        return Err(c.fail("not a state snapshot (bad magic)"));
    }
    let count = c.u32()?;
    c.u32()?;
    // Each collection takes at least 24 bytes: no more than that many are believed.
    let mut collections = Vec::with_capacity((count as usize).min(c.left() / 24));
    for _ in 0..count {
        let topic_len = usize::from(c.u16()?);
        if topic_len > MAX_TOPIC_LEN {
            return Err(c.fail(format!("topic of {topic_len} bytes")));
        }
        let [flags, _] = c.array()?;
        let entries = c.u32()? as usize;
        let seq = c.u64()?;
        let restarted = c.u64()?;
        let topic = c.str(topic_len, "a topic")?;
        let mut list = Vec::with_capacity(entries.min(c.left() / 6));
        for _ in 0..entries {
            let key_len = usize::from(c.u16()?);
            let value_len = c.u32()? as usize;
            let key = c.str(key_len, "a key")?;
            check_key(key).map_err(|e| c.fail(e))?;
            list.push((key, c.take(value_len)?));
        }
        collections.push(Collection {
            topic,
            seq,
            restarted,
            persistent: flags & PERSISTENT != 0,
            owned: flags & OWNED != 0,
            entries: list,
        });
    }
    if c.left() != 0 {
        return Err(c.fail(format!("{} bytes after the last collection", c.left())));
    }
    Ok(collections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut w = Writer::default();
        let entries: Vec<(&str, &[u8])> = vec![("a", b"1"), ("b", b"")];
        w.collection("cfg/net", 9, 2, true, false, entries.clone().into_iter());
        w.collection("cfg/x", 0, 0, false, true, std::iter::empty());
        let bytes = w.finish();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].topic, "cfg/net");
        assert_eq!((parsed[0].seq, parsed[0].restarted), (9, 2));
        assert!(parsed[0].persistent && !parsed[0].owned);
        assert_eq!(parsed[0].entries, entries);
        assert!(parsed[1].owned && parsed[1].entries.is_empty());
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
    }
}
