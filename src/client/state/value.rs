//! The value of an entry: bytes, aligned for rkyv, in one shared allocation.

use std::sync::Arc;

use crate::client::schema::{self, Schema};

/// An entry's value, as raw bytes (`&*value`) or, for typed values, the validated archive of its
/// type ([`StateValue::archived`]). Cloning shares it.
#[derive(Clone)]
pub struct StateValue {
    /// The bytes, in 16-byte words (so they are aligned for any archive), zero-padded.
    words: Arc<[u128]>,
    len: usize,
}

impl StateValue {
    /// A value holding a copy of `bytes` (one allocation).
    pub fn copy(bytes: &[u8]) -> StateValue {
        let mut words = Arc::<[u128]>::new_uninit_slice(bytes.len().div_ceil(16));
        let slots = Arc::get_mut(&mut words).expect("not shared yet");
        for (slot, chunk) in slots.iter_mut().zip(bytes.chunks(16)) {
            let mut word = [0u8; 16];
            word[..chunk.len()].copy_from_slice(chunk);
            slot.write(u128::from_ne_bytes(word));
        }
        // SAFETY: `bytes.chunks(16)` yields `len.div_ceil(16)` chunks, one per slot, so every
        // slot was written above.
        let words = unsafe { words.assume_init() };
        StateValue {
            words,
            len: bytes.len(),
        }
    }

    /// The value read as an archived `T` written by a typed `put`: its schema tag is checked,
    /// then the archive validated. The error says what was wrong.
    pub fn archived<T>(&self) -> Result<&T::Archived, String>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>,
            > + rkyv::Portable,
    {
        let expected = Schema::of::<T>();
        let archive = expected.strip(self).map_err(|found| {
            format!(
                "the value is not of schema {expected} (found {})",
                schema::found(found)
            )
        })?;
        rkyv::access::<T::Archived, rkyv::rancor::BoxedError>(archive).map_err(|e| e.to_string())
    }
}

impl std::ops::Deref for StateValue {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `words` is an initialised `[u128]` (no padding bytes) of at least `len` bytes
        // (`copy` made `len.div_ceil(16)` words); `u8` has no alignment requirement, and the
        // bytes live as long as `self` borrows them.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

impl AsRef<[u8]> for StateValue {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for StateValue {
    fn eq(&self, other: &StateValue) -> bool {
        **self == **other
    }
}

impl Eq for StateValue {}

impl std::fmt::Debug for StateValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateValue({:?})", self.escape_ascii().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_bytes_and_alignment() {
        for len in [0, 1, 15, 16, 17, 100] {
            let bytes: Vec<u8> = (0..len as u8).collect();
            let v = StateValue::copy(&bytes);
            assert_eq!(&*v, &bytes[..]);
            assert_eq!(v.as_ptr() as usize % 16, 0);
            assert_eq!(v.clone(), v);
        }
    }
}
