//! The value of an entry: bytes, aligned for rkyv, cheap to clone.

use std::sync::Arc;

use rkyv::util::AlignedVec;

use crate::client::schema::{self, Schema};

/// An entry's value, as raw bytes (`&*value`) or, for typed values, the validated archive of its
/// type ([`StateValue::archived`]). Cloning shares it.
#[derive(Clone)]
pub struct StateValue(Arc<AlignedVec>);

impl StateValue {
    /// A value holding a copy of `bytes`.
    pub fn copy(bytes: &[u8]) -> StateValue {
        let mut v = AlignedVec::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        StateValue(Arc::new(v))
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
        let archive = expected.strip(&self.0).map_err(|found| {
            format!(
                "the value is not of schema {expected} (found {})",
                schema::found(found)
            )
        })?;
        rkyv::access::<T::Archived, rkyv::rancor::BoxedError>(archive).map_err(|e| e.to_string())
    }
}

impl PartialEq for StateValue {
    fn eq(&self, other: &StateValue) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl Eq for StateValue {}

impl std::ops::Deref for StateValue {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for StateValue {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for StateValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StateValue({:?})",
            self.0.as_slice().escape_ascii().to_string()
        )
    }
}
