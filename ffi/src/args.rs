//! Checking what C passes in: handles, strings, output pointers, timeouts.

use std::ffi::{CStr, c_char};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{Error, SHMBUS_ERR_INVALID_ARGUMENT, shmbus_status};

/// A handle type handed to C as an opaque pointer.
///
/// Each handle starts with a tag that is set when it is created and cleared when it is freed, so
/// that a pointer to something else, or to a handle already freed, is usually caught (passing one
/// is still undefined behaviour; this only makes the common mistakes fail loudly).
pub(crate) trait Handle {
    /// The tag of a live handle of this type.
    const TAG: u64;
    /// The C type name, for messages.
    const NAME: &'static str;
    /// The tag's offset in the handle (`std::mem::offset_of!`).
    const TAG_OFFSET: usize;
}

/// Reads the tag of the handle at `ptr`.
///
/// # Safety
///
/// `ptr` points to a live `T`.
unsafe fn tag_of<T: Handle>(ptr: *const T) -> u64 {
    let tag = ptr.cast::<u8>().wrapping_add(T::TAG_OFFSET).cast::<u64>();
    // SAFETY: `ptr` points to a live `T` by the caller's contract, and its `u64` tag lies at
    // `TAG_OFFSET`, suitably aligned; no reference to the handle is made.
    unsafe { tag.read() }
}

/// Borrows a handle passed by C.
///
/// # Safety
///
/// `ptr` is NULL or points to a live handle of type `T` that nothing else uses for `'a`.
pub(crate) unsafe fn handle_mut<'a, T: Handle>(
    function: &str,
    name: &str,
    ptr: *mut T,
) -> Result<&'a mut T, Error> {
    if ptr.is_null() {
        return Err(Error::null(function, name));
    }
    // SAFETY: `ptr` is non-NULL and, by the caller's contract, points to a live `T`.
    let tag = unsafe { tag_of(ptr) };
    if tag != T::TAG {
        return Err(not_live::<T>(function, name));
    }
    // SAFETY: a live `T` (checked as far as possible above), not used elsewhere for `'a` by the
    // caller's contract.
    Ok(unsafe { &mut *ptr })
}

/// Shared-borrow flavour of [`handle_mut`], for handles used from several threads at once.
///
/// # Safety
///
/// `ptr` is NULL or points to a live handle of type `T` that is not freed during `'a`.
pub(crate) unsafe fn handle_ref<'a, T: Handle>(
    function: &str,
    name: &str,
    ptr: *const T,
) -> Result<&'a T, Error> {
    if ptr.is_null() {
        return Err(Error::null(function, name));
    }
    // SAFETY: `ptr` is non-NULL and, by the caller's contract, points to a live `T`.
    let tag = unsafe { tag_of(ptr) };
    if tag != T::TAG {
        return Err(not_live::<T>(function, name));
    }
    // SAFETY: a live `T` that stays alive for `'a` by the caller's contract; only shared
    // references to it are made by functions documented as thread-safe.
    Ok(unsafe { &*ptr })
}

#[cold]
#[inline(never)]
fn not_live<T: Handle>(function: &str, name: &str) -> Error {
    Error::new(
        SHMBUS_ERR_INVALID_ARGUMENT,
        format!(
            "{function}: {name} is not a live {} (freed already?)",
            T::NAME
        ),
    )
}

/// Checks an output pointer; the caller writes through it with `NonNull::write`.
pub(crate) fn out_ptr<T>(function: &str, name: &str, ptr: *mut T) -> Result<NonNull<T>, Error> {
    NonNull::new(ptr).ok_or_else(|| Error::null(function, name))
}

/// Borrows a NUL-terminated UTF-8 string; `bad_utf8` is the status when it is not UTF-8.
///
/// # Safety
///
/// `ptr` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(
    function: &str,
    name: &str,
    ptr: *const c_char,
    bad_utf8: shmbus_status,
) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(Error::null(function, name));
    }
    // SAFETY: non-NULL and NUL-terminated, unchanged for `'a`, by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|_| {
        Error::new(
            bad_utf8,
            format!(
                "{function}: {name} {:?} is not valid UTF-8",
                c.to_string_lossy()
            ),
        )
    })
}

/// Borrows `len` bytes at `data`; NULL is accepted when `len` is 0.
///
/// # Safety
///
/// `data` is NULL or valid for reading `len` bytes that stay unchanged for `'a`.
pub(crate) unsafe fn bytes_arg<'a>(
    function: &str,
    data: *const u8,
    len: usize,
) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Error::null(function, "data"));
    }
    // SAFETY: non-NULL and valid for `len` bytes for `'a` by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// How long a blocking call waits, from a C `timeout_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Negative: as long as it takes.
    Forever,
    /// Zero: not at all.
    Never,
    /// Positive: up to this long.
    For(Duration),
}

impl Wait {
    pub(crate) fn from_ms(timeout_ms: i32) -> Wait {
        match timeout_ms {
            ..0 => Wait::Forever,
            0 => Wait::Never,
            ms => Wait::For(Duration::from_millis(ms.unsigned_abs().into())),
        }
    }
}

/// Wait strategies as C passes them (`SHMBUS_WAIT_*`).
pub(crate) fn wait_strategy(
    function: &str,
    wait: u32,
    spin_us: u32,
) -> Result<shmbus::WaitStrategy, Error> {
    use crate::{SHMBUS_WAIT_BUSY_SPIN, SHMBUS_WAIT_PARK, SHMBUS_WAIT_SPIN_THEN_PARK};
    match wait {
        SHMBUS_WAIT_SPIN_THEN_PARK if spin_us == 0 => Ok(shmbus::WaitStrategy::default()),
        SHMBUS_WAIT_SPIN_THEN_PARK => Ok(shmbus::WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(spin_us.into()),
        }),
        SHMBUS_WAIT_BUSY_SPIN => Ok(shmbus::WaitStrategy::BusySpin),
        SHMBUS_WAIT_PARK => Ok(shmbus::WaitStrategy::Park),
        other => Err(Error::invalid(
            function,
            format!(
                "unknown wait strategy {other} (use SHMBUS_WAIT_SPIN_THEN_PARK, \
                 SHMBUS_WAIT_BUSY_SPIN or SHMBUS_WAIT_PARK)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_sign_convention() {
        assert_eq!(Wait::from_ms(-1), Wait::Forever);
        assert_eq!(Wait::from_ms(i32::MIN), Wait::Forever);
        assert_eq!(Wait::from_ms(0), Wait::Never);
        assert_eq!(Wait::from_ms(250), Wait::For(Duration::from_millis(250)));
    }
}
