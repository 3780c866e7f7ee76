//! The C ABI of shmbus; its header is `ffi/include/shmbus.h`, generated from this crate by
//! cbindgen (`SHMBUS_BLESS=1 cargo test -p shmbus-ffi --test header` rewrites it; the test fails
//! when the committed header differs from what the code generates).
//!
//! A thin layer over the Rust client ([`shmbus::Bus`] and friends): opaque handles, integer
//! status codes, a thread-local error message, and no unwinding across the boundary — every
//! exported function runs in `error::guard`, which catches panics.
//!
//! Zero copy both ways: `shmbus_loan` hands out a pointer into the ring and `shmbus_recv` a view
//! of the frame in shared memory; the handles keep the Rust loan and sample alive between calls
//! (see the `publisher` and `subscriber` modules for how, and the invariants that make it sound).
//! Request/response (`reqrep`) hands C owned views of requests and responses, answered in any
//! order.

mod args;
mod client;
mod error;
mod publisher;
mod reqrep;
mod subscriber;

use std::ffi::{c_char, c_int};

pub use client::*;
pub use error::shmbus_status;
pub use publisher::*;
pub use reqrep::*;
pub use subscriber::*;

/// Special values of the `timeout_ms` arguments (any other value is a number of milliseconds).
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmbus_timeout {
    /// Wait as long as it takes (any negative value does).
    SHMBUS_WAIT_FOREVER = -1,
    /// Do not wait.
    SHMBUS_NO_WAIT = 0,
}

/// Wait strategy: poll for a while (`spin_us`, default 50 µs), then sleep on a futex until woken.
/// The default: near busy-spin latency under load, no CPU when idle.
pub const SHMBUS_WAIT_SPIN_THEN_PARK: u32 = 0;
/// Wait strategy: poll continuously. Lowest latency, one core at 100 %, no system calls.
pub const SHMBUS_WAIT_BUSY_SPIN: u32 = 1;
/// Wait strategy: sleep on a futex whenever there is nothing to do.
pub const SHMBUS_WAIT_PARK: u32 = 2;

/// A static description of a status code (`"success"`, `"ring full"`, ...; an unknown code gives
/// `"unknown shmbus status code"`). Never NULL; the string must not be freed or modified.
/// `shmbus_last_error` has the detail of the last failure.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// Always safe to call: it takes no pointer.
#[unsafe(no_mangle)]
pub extern "C" fn shmbus_strerror(code: c_int) -> *const c_char {
    error::DESCRIPTIONS
        .iter()
        .find(|(c, _)| *c as c_int == code)
        .map_or(c"unknown shmbus status code", |(_, d)| d)
        .as_ptr()
}

/// The message of the last call that failed on the calling thread — one line naming what was
/// wrong (the topic, the address, the sizes), e.g.
/// `invalid topic "a//b": empty fragment at position 2` — or `""` if none failed yet.
///
/// Never NULL. The string belongs to the library and stays valid until the next shmbus call on
/// the same thread (or the thread's exit); copy it to keep it. Successful calls leave it as it
/// was, so read it right after the call that failed.
///
/// Thread safety: each thread has its own message.
///
/// # Safety
///
/// Always safe to call: it takes no pointer.
#[unsafe(no_mangle)]
pub extern "C" fn shmbus_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// The exit code the `shmbus` command line uses for a failure with status `status`, so that C
/// programs exit like it: 0 success; 2 bad usage (`SHMBUS_ERR_INVALID_TOPIC`,
/// `SHMBUS_ERR_INVALID_ADDRESS`, `SHMBUS_ERR_INVALID_ARGUMENT`, `SHMBUS_ERR_NULL`); 3 the broker
/// cannot be reached (`SHMBUS_ERR_UNREACHABLE`, `SHMBUS_ERR_BROKER_GONE`); 4 timeout
/// (`SHMBUS_ERR_TIMEOUT`); 5 nobody serves the topic (`SHMBUS_ERR_NO_SERVER`); 6 permission
/// denied by the broker's access list (`SHMBUS_ERR_PERMISSION_DENIED`); 1 anything else.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// Always safe to call: it takes no pointer.
#[unsafe(no_mangle)]
pub extern "C" fn shmbus_exit_code(status: c_int) -> c_int {
    use shmbus_status::*;
    let is = |code: shmbus_status| status == code as c_int;
    if is(SHMBUS_OK) {
        0
    } else if is(SHMBUS_ERR_INVALID_TOPIC)
        || is(SHMBUS_ERR_INVALID_ADDRESS)
        || is(SHMBUS_ERR_INVALID_ARGUMENT)
        || is(SHMBUS_ERR_NULL)
    {
        2
    } else if is(SHMBUS_ERR_UNREACHABLE) || is(SHMBUS_ERR_BROKER_GONE) {
        3
    } else if is(SHMBUS_ERR_TIMEOUT) {
        4
    } else if is(SHMBUS_ERR_NO_SERVER) {
        5
    } else if is(SHMBUS_ERR_PERMISSION_DENIED) {
        6
    } else {
        1
    }
}

/// The library's version, e.g. `"0.1.0"`. Never NULL; static.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// Always safe to call: it takes no pointer.
#[unsafe(no_mangle)]
pub extern "C" fn shmbus_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn text(p: *const c_char) -> String {
        // SAFETY: every function tested here returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
    }

    #[test]
    fn strerror_describes_every_code_and_unknown_ones() {
        assert_eq!(text(shmbus_strerror(0)), "success");
        assert_eq!(
            text(shmbus_strerror(shmbus_status::SHMBUS_ERR_FULL as c_int)),
            "ring full"
        );
        assert_eq!(text(shmbus_strerror(12345)), "unknown shmbus status code");
        assert_eq!(text(shmbus_version()), env!("CARGO_PKG_VERSION"));
    }
}
