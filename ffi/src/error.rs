//! Status codes, the thread-local error message, and the guard every entry point runs in.
//!
//! Every exported function runs its body through [`guard`]: a returned [`Error`] becomes its
//! status code and its message becomes [`shmbus_last_error`](crate::shmbus_last_error) on the
//! calling thread; a panic is caught (it never unwinds into C) and becomes
//! [`SHMBUS_ERR_PANIC`].

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};

pub(crate) use shmbus_status::*;
use std::panic::{AssertUnwindSafe, catch_unwind};

use shmbus::{
    AttachError, ConnectError, ControlError, ErrorCode, PublishError, PublishTimeoutError,
    RecvError, TryPublishError,
};

/// The status every function returns as an `int`: `SHMBUS_OK` (0) or a negative error.
/// `shmbus_strerror` describes each one; `shmbus_last_error` has the detail of the last failure.
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmbus_status {
    /// Success. Every other status is negative and has its own constant below.
    SHMBUS_OK = 0,
    /// A required pointer argument (a handle, a string, an output pointer) was NULL.
    SHMBUS_ERR_NULL = -1,
    /// An argument is out of range or not what the function accepts (an unknown wait strategy, a
    /// commit longer than its loan, a handle of the wrong kind or already freed, ...).
    SHMBUS_ERR_INVALID_ARGUMENT = -2,
    /// A topic or pattern is not valid (see the topic rules at the top of this header); the message
    /// names the topic and what is wrong with it.
    SHMBUS_ERR_INVALID_TOPIC = -3,
    /// A bus address could not be parsed (not a name, a socket path or a `tcp://`/`tls://` URL).
    SHMBUS_ERR_INVALID_ADDRESS = -4,
    /// No broker answers at the address (no socket file, or nobody listening on it).
    SHMBUS_ERR_UNREACHABLE = -5,
    /// The broker refused the request (a limit was reached, permission denied, ...); the message
    /// has its reason.
    SHMBUS_ERR_REFUSED = -6,
    /// The broker closed the connection or died. Publishers and subscribers already attached keep
    /// working; creating new ones fails with this code until the client has reconnected, which it
    /// does by itself once a broker is back. `shmbus_recv` returns it once when the broker is
    /// lost, and receiving goes on (after the reconnection, `SHMBUS_ERR_LAGGED` with an unknown
    /// count for each pattern: messages may have been lost meanwhile).
    SHMBUS_ERR_BROKER_GONE = -7,
    /// The broker's answer made no sense (a different shmbus version?).
    SHMBUS_ERR_PROTOCOL = -8,
    /// Shared memory could not be mapped or attached to.
    SHMBUS_ERR_SHM = -9,
    /// The operation is not available in this version (for example request/response on a
    /// remote bus).
    SHMBUS_ERR_UNSUPPORTED = -10,
    /// The timeout passed first: no message arrived (`shmbus_recv`), the ring stayed full
    /// (`shmbus_publish_timeout`, `shmbus_loan_timeout`), or the broker did not answer.
    SHMBUS_ERR_TIMEOUT = -11,
    /// The ring is full right now: a tethered subscriber has not caught up (`shmbus_try_publish`,
    /// `shmbus_try_loan`).
    SHMBUS_ERR_FULL = -12,
    /// The payload is larger than the ring's largest frame; nothing was written.
    SHMBUS_ERR_TOO_LARGE = -13,
    /// Messages were lost before this subscriber read them (a lossy subscriber overrun, or a stalled
    /// one the broker untethered). Receiving goes on; `shmbus_subscriber_lagged` tells how many.
    SHMBUS_ERR_LAGGED = -14,
    /// A ring held a frame that breaks the layout rules (a faulty publisher wrote it); the
    /// subscriber skipped to that topic's newest message and goes on. Also returned by a publish
    /// whose ring was found corrupt and could not be replaced.
    SHMBUS_ERR_CORRUPT = -15,
    /// The call is not allowed in the handle's current state: commit or abort without a loan,
    /// a second loan, publishing while a loan is outstanding, receiving while a sample is held,
    /// releasing a sample that was already released.
    SHMBUS_ERR_STATE = -16,
    /// A bug inside the library was caught (a Rust panic); the message has the details. The handle
    /// involved should be freed.
    SHMBUS_ERR_PANIC = -17,
    /// An operating-system call failed (for example starting an embedded broker).
    SHMBUS_ERR_IO = -18,
    /// An error this version of the header has no specific code for; the message says what.
    SHMBUS_ERR_OTHER = -19,
    /// A topic matching the subscription appeared, but this subscriber cannot read it (its ring
    /// has no free reader slot, or could not be mapped); the message names the topic. That
    /// topic's messages are not delivered; call again to go on with the others.
    SHMBUS_ERR_UNAVAILABLE = -20,
    /// The loan was held uncommitted longer than the broker's unblock timeout (the process was
    /// stopped between loan and commit), so the broker took it back; nothing was published.
    /// Publishing again works.
    SHMBUS_ERR_REVOKED = -21,
    /// What listens at the bus address is not trusted to be the broker (its socket's directory,
    /// or its process, belongs to another user).
    SHMBUS_ERR_UNTRUSTED = -22,
    /// Nobody serves the topic of the request (reported at once, without waiting).
    SHMBUS_ERR_NO_SERVER = -23,
    /// The server stopped serving, or its process died, with the request unanswered.
    SHMBUS_ERR_SERVER_GONE = -24,
    /// The server released the request without answering it (its handler failed, say).
    SHMBUS_ERR_ABANDONED = -25,
    /// Another server serves the topic already.
    SHMBUS_ERR_ALREADY_SERVED = -26,
    /// The requester is gone (its process ended, or it stopped waiting): the answer goes
    /// nowhere.
    SHMBUS_ERR_REQUESTER_GONE = -27,
    /// The broker's access list does not allow this process's user the operation on the topic
    /// (or to connect); the message names the operation, the topic and the uid.
    SHMBUS_ERR_PERMISSION_DENIED = -28,
}

/// Every status code with its description, for `shmbus_strerror`.
pub(crate) const DESCRIPTIONS: &[(shmbus_status, &CStr)] = &[
    (SHMBUS_OK, c"success"),
    (SHMBUS_ERR_NULL, c"a required pointer argument was NULL"),
    (SHMBUS_ERR_INVALID_ARGUMENT, c"invalid argument"),
    (SHMBUS_ERR_INVALID_TOPIC, c"invalid topic or pattern"),
    (SHMBUS_ERR_INVALID_ADDRESS, c"invalid bus address"),
    (SHMBUS_ERR_UNREACHABLE, c"cannot reach the broker"),
    (SHMBUS_ERR_REFUSED, c"the broker refused the request"),
    (SHMBUS_ERR_BROKER_GONE, c"the broker is gone"),
    (SHMBUS_ERR_PROTOCOL, c"protocol error with the broker"),
    (SHMBUS_ERR_SHM, c"shared memory could not be mapped"),
    (SHMBUS_ERR_UNSUPPORTED, c"not supported by this version"),
    (SHMBUS_ERR_TIMEOUT, c"timed out"),
    (SHMBUS_ERR_FULL, c"ring full"),
    (SHMBUS_ERR_TOO_LARGE, c"payload too large"),
    (
        SHMBUS_ERR_LAGGED,
        c"messages were lost before they were read",
    ),
    (SHMBUS_ERR_CORRUPT, c"corrupt ring"),
    (
        SHMBUS_ERR_STATE,
        c"call not allowed in the handle's current state",
    ),
    (SHMBUS_ERR_PANIC, c"internal error (caught panic)"),
    (SHMBUS_ERR_IO, c"operating-system error"),
    (SHMBUS_ERR_OTHER, c"other error"),
    (
        SHMBUS_ERR_UNAVAILABLE,
        c"a matching topic cannot be read by this subscriber",
    ),
    (
        SHMBUS_ERR_REVOKED,
        c"the broker took back a loan held too long",
    ),
    (
        SHMBUS_ERR_UNTRUSTED,
        c"the process at the bus address is not trusted to be the broker",
    ),
    (SHMBUS_ERR_NO_SERVER, c"nobody serves the topic"),
    (
        SHMBUS_ERR_SERVER_GONE,
        c"the server went away without answering",
    ),
    (
        SHMBUS_ERR_ABANDONED,
        c"the server dropped the request without answering",
    ),
    (SHMBUS_ERR_ALREADY_SERVED, c"the topic is already served"),
    (SHMBUS_ERR_REQUESTER_GONE, c"the requester is gone"),
    (
        SHMBUS_ERR_PERMISSION_DENIED,
        c"permission denied by the broker's access list",
    ),
];

/// A failed call: its status code and the message for `shmbus_last_error`.
///
/// Boxed, so that the `Result<_, Error>` of every hot path is one pointer wide; errors are the
/// cold path, and their constructors are kept out of line.
#[derive(Debug)]
pub(crate) struct Error(Box<ErrorInner>);

#[derive(Debug)]
pub(crate) struct ErrorInner {
    pub(crate) code: shmbus_status,
    pub(crate) message: String,
}

impl Error {
    #[cold]
    pub(crate) fn new(code: shmbus_status, message: impl Into<String>) -> Error {
        Error(Box::new(ErrorInner {
            code,
            message: message.into(),
        }))
    }

    /// `what` (a parameter name) was NULL.
    #[cold]
    #[inline(never)]
    pub(crate) fn null(function: &str, what: &str) -> Error {
        Error::new(SHMBUS_ERR_NULL, format!("{function}: {what} is NULL"))
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn state(function: &str, why: &str) -> Error {
        Error::new(SHMBUS_ERR_STATE, format!("{function}: {why}"))
    }

    #[cold]
    pub(crate) fn invalid(function: &str, why: impl std::fmt::Display) -> Error {
        Error::new(SHMBUS_ERR_INVALID_ARGUMENT, format!("{function}: {why}"))
    }
}

impl From<ConnectError> for Error {
    #[cold]
    fn from(e: ConnectError) -> Error {
        let code = match &e {
            ConnectError::Address(_) => SHMBUS_ERR_INVALID_ADDRESS,
            ConnectError::Unreachable { .. } => SHMBUS_ERR_UNREACHABLE,
            ConnectError::Refused { .. } => SHMBUS_ERR_REFUSED,
            ConnectError::PermissionDenied { .. } => SHMBUS_ERR_PERMISSION_DENIED,
            ConnectError::Untrusted { .. } => SHMBUS_ERR_UNTRUSTED,
            ConnectError::Protocol { .. } => SHMBUS_ERR_PROTOCOL,
            ConnectError::Shm(_) => SHMBUS_ERR_SHM,
            ConnectError::Embedded(_) => SHMBUS_ERR_IO,
            _ => SHMBUS_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<AttachError> for Error {
    #[cold]
    fn from(e: AttachError) -> Error {
        let code = match &e {
            AttachError::InvalidTopic(_) => SHMBUS_ERR_INVALID_TOPIC,
            AttachError::Broker {
                source: ControlError::BrokerGone,
                ..
            } => SHMBUS_ERR_BROKER_GONE,
            AttachError::Broker {
                source: ControlError::Timeout,
                ..
            } => SHMBUS_ERR_TIMEOUT,
            AttachError::Broker { .. } => SHMBUS_ERR_BROKER_GONE,
            AttachError::Refused {
                code: ErrorCode::InvalidTopic,
                ..
            } => SHMBUS_ERR_INVALID_TOPIC,
            AttachError::Refused {
                code: ErrorCode::TooLarge,
                ..
            } => SHMBUS_ERR_TOO_LARGE,
            AttachError::Refused {
                code: ErrorCode::Version,
                ..
            } => SHMBUS_ERR_PROTOCOL,
            AttachError::Refused { .. } => SHMBUS_ERR_REFUSED,
            AttachError::Shm { .. } => SHMBUS_ERR_SHM,
            AttachError::PermissionDenied { .. } => SHMBUS_ERR_PERMISSION_DENIED,
            AttachError::LocalOnly { .. } => SHMBUS_ERR_UNSUPPORTED,
            _ => SHMBUS_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<PublishError> for Error {
    #[cold]
    fn from(e: PublishError) -> Error {
        let code = match &e {
            PublishError::TooLarge { .. } => SHMBUS_ERR_TOO_LARGE,
            PublishError::Revoked { .. } => SHMBUS_ERR_REVOKED,
            PublishError::RingReplaced { .. } | PublishError::RingLost { .. } => SHMBUS_ERR_CORRUPT,
            _ => SHMBUS_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<TryPublishError> for Error {
    #[cold]
    fn from(e: TryPublishError) -> Error {
        match e {
            TryPublishError::Failed(e) => e.into(),
            e @ TryPublishError::Full => Error::new(SHMBUS_ERR_FULL, e.to_string()),
            e => Error::new(SHMBUS_ERR_OTHER, e.to_string()),
        }
    }
}

impl From<PublishTimeoutError> for Error {
    #[cold]
    fn from(e: PublishTimeoutError) -> Error {
        match e {
            PublishTimeoutError::Failed(e) => e.into(),
            e @ PublishTimeoutError::Timeout => Error::new(SHMBUS_ERR_TIMEOUT, e.to_string()),
            e => Error::new(SHMBUS_ERR_OTHER, e.to_string()),
        }
    }
}

impl From<RecvError> for Error {
    #[cold]
    fn from(e: RecvError) -> Error {
        let code = match &e {
            RecvError::Lagged { .. } => SHMBUS_ERR_LAGGED,
            RecvError::BrokerLost => SHMBUS_ERR_BROKER_GONE,
            RecvError::Corrupt { .. } => SHMBUS_ERR_CORRUPT,
            RecvError::Unavailable { .. } => SHMBUS_ERR_UNAVAILABLE,
            RecvError::HeldLimit { .. } => SHMBUS_ERR_STATE,
            _ => SHMBUS_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error. Interior NULs (impossible in our messages,
/// but cheap to rule out) are escaped so the message is never dropped.
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slot may be gone; the message is then simply not kept.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

/// A pointer to this thread's last error message (`""` if none). It stays valid until the next
/// failed call on this thread replaces the message, or the thread exits.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Runs the body of an exported function: maps its error to a status code and records the
/// message; catches any panic so that it never unwinds into C.
#[inline(always)]
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SHMBUS_OK as c_int,
        Ok(Err(e)) => fail(e),
        Err(payload) => {
            set_last_error(&format!(
                "internal error, please report it: {}",
                panic_message(&*payload)
            ));
            drop_payload(payload);
            SHMBUS_ERR_PANIC as c_int
        }
    }
}

/// Records a failure as this thread's last error and returns its status.
#[cold]
#[inline(never)]
fn fail(e: Error) -> c_int {
    set_last_error(&e.0.message);
    e.0.code as c_int
}

/// Runs the body of a function that returns nothing (the `_free` functions): a panic is caught
/// and recorded as the last error.
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = guard(|| {
        body();
        Ok(())
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Drops a panic payload without letting a panicking destructor unwind: such a second payload
/// is leaked rather than risk unwinding into C.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: `last_error_ptr` returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let code = guard(|| panic!("boom {}", 42));
        assert_eq!(code, SHMBUS_ERR_PANIC as c_int);
        assert_eq!(last_error(), "internal error, please report it: boom 42");
        let code = guard(|| std::panic::panic_any(7u32));
        assert_eq!(code, SHMBUS_ERR_PANIC as c_int);
        assert!(last_error().contains("non-string payload"));
    }

    #[test]
    fn an_error_sets_the_message_and_success_keeps_it() {
        assert_eq!(
            guard(|| Err(Error::state("shmbus_commit", "no loan"))),
            SHMBUS_ERR_STATE as c_int
        );
        assert_eq!(last_error(), "shmbus_commit: no loan");
        assert_eq!(guard(|| Ok(())), SHMBUS_OK as c_int);
        assert_eq!(last_error(), "shmbus_commit: no loan");
        set_last_error("with\0nul");
        assert_eq!(last_error(), "with\\0nul");
    }

    #[test]
    fn the_message_is_per_thread() {
        set_last_error("main thread");
        std::thread::spawn(|| {
            assert_eq!(last_error(), "");
            set_last_error("other thread");
        })
        .join()
        .unwrap();
        assert_eq!(last_error(), "main thread");
    }

    #[test]
    fn every_code_is_distinct_and_described() {
        let mut codes: Vec<c_int> = DESCRIPTIONS.iter().map(|(c, _)| *c as c_int).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DESCRIPTIONS.len());
        assert!(DESCRIPTIONS.iter().all(|(_, d)| !d.is_empty()));
    }
}
