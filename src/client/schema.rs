//! Type fingerprints of typed messages: a typed publisher (or requester, or server) heads every
//! archive with a 16-byte tag naming its [`Schema`], and a typed receiver checks the tag before
//! it validates anything, so frames of another type are refused by name
//! (`RecvError::TypeMismatch`) instead of being read as the wrong type when their bytes happen
//! to pass validation.
//!
//! The tag is two little-endian `u64`s: [`TAG_MAGIC`] (`"shmbusT1"`), then the schema id. The
//! archive follows it, still aligned for rkyv (16 bytes keep the frames' 16-byte alignment). Raw
//! receivers see the tag as the first 16 bytes of the payload.

use std::any::type_name;
use std::fmt;

use rkyv::Archive;

/// Bytes of the tag that heads a typed message.
pub const TAG_LEN: usize = 16;

/// First word of every tag: `"shmbusT1"` in little-endian byte order.
pub const TAG_MAGIC: u64 = u64::from_le_bytes(*b"shmbusT1");

/// What type a typed message holds: by default a fingerprint of the Rust type (its name and the
/// size and alignment of its archived form, so renaming or reshaping the type changes it), or an
/// id chosen by the user (for a type defined in several programs or languages, which must then
/// agree on it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schema(u64);

impl Schema {
    /// The fingerprint of `T`.
    pub fn of<T: Archive>() -> Schema {
        // FNV-1a over the type's name and its archived layout: stable within a build of a
        // program and across programs built from the same type definitions with the same compiler.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let size = std::mem::size_of::<T::Archived>() as u64;
        let align = std::mem::align_of::<T::Archived>() as u64;
        let bytes = type_name::<T>()
            .bytes()
            .chain(size.to_le_bytes())
            .chain(align.to_le_bytes());
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Schema(hash)
    }

    /// A schema id chosen by the user.
    pub const fn id(id: u64) -> Schema {
        Schema(id)
    }

    /// The id.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The tag that heads a message of this schema.
    pub(crate) fn tag(self) -> [u8; TAG_LEN] {
        let mut tag = [0; TAG_LEN];
        tag[..8].copy_from_slice(&TAG_MAGIC.to_le_bytes());
        tag[8..].copy_from_slice(&self.0.to_le_bytes());
        tag
    }

    /// Checks that `payload` is headed by this schema's tag; returns the archive after it, or
    /// the schema found instead (`None`: no tag at all).
    pub(crate) fn strip(self, payload: &[u8]) -> Result<&[u8], Option<Schema>> {
        let Some((tag, archive)) = payload.split_first_chunk::<TAG_LEN>() else {
            return Err(None);
        };
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        if word(&tag[..8]) != TAG_MAGIC {
            return Err(None);
        }
        match word(&tag[8..]) {
            id if id == self.0 => Ok(archive),
            other => Err(Some(Schema(other))),
        }
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({self})")
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Describes a schema found in a message, for errors: its id, or that there was none.
pub(crate) fn found(found: Option<Schema>) -> String {
    match found {
        Some(s) => format!("schema {s}"),
        None => "no schema tag (not a typed message)".to_string(),
    }
}

/// Writes `value` into `buf` as a typed message: the schema tag of `T`, then its rkyv archive.
/// Returns the bytes used, or why it did not fit.
pub(crate) fn serialize_tagged<T>(value: &T, buf: &mut [u8]) -> Result<usize, String>
where
    T: Archive + for<'b, 'a> rkyv::Serialize<crate::RingSerializer<'b, 'a>>,
{
    let max = buf.len();
    let Some((tag, archive)) = buf.split_first_chunk_mut::<TAG_LEN>() else {
        return Err(format!(
            "the largest message ({max} bytes) cannot hold a schema tag"
        ));
    };
    *tag = Schema::of::<T>().tag();
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(
        value,
        rkyv::ser::writer::Buffer::from(archive),
    )
    .map(|written| TAG_LEN + written.len())
    .map_err(|e| format!("{e} (the largest message is {max} bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_name_what_they_found() {
        let a = Schema::of::<u32>();
        let b = Schema::of::<(u32, u32)>();
        assert_ne!(a, b);
        assert_eq!(a, Schema::of::<u32>());
        let mut msg = a.tag().to_vec();
        msg.extend_from_slice(b"archive");
        assert_eq!(a.strip(&msg), Ok(&b"archive"[..]));
        assert_eq!(b.strip(&msg), Err(Some(a)));
        assert_eq!(a.strip(b"short"), Err(None));
        assert_eq!(a.strip(&[0u8; 32]), Err(None));
        assert_eq!(Schema::id(7).to_string(), "0000000000000007");
    }
}
