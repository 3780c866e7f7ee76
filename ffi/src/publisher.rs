//! `shmbus_publisher`: publishing raw bytes, by copy or through a zero-copy loan.
//!
//! # The loan inside the handle
//!
//! The Rust [`Loan<'a>`] mutably borrows its [`Publisher`] for `'a`, but C holds a loan across
//! calls: between `shmbus_loan` and `shmbus_commit` the handle keeps it in `loan` as a
//! `Loan<'static>`. That lifetime is a promise this module keeps by hand:
//!
//! * the `Publisher` lives in its own heap allocation (`publisher`, from `Box::into_raw`), which
//!   does not move when the handle does and is freed only in `Drop`, after `loan` was dropped;
//! * while `loan` is `Some`, nothing else touches the `Publisher`: every function that needs it
//!   goes through [`shmbus_publisher::publisher_mut`], which refuses with `SHMBUS_ERR_STATE`;
//!   what may be asked during a loan (id, maximum payload, last sequence) is copied into the
//!   handle when it is created or updated;
//! * so at most one `&mut Publisher` exists at any time: the one inside the loan, or the one
//!   `publisher_mut` hands out for the duration of a call.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;

use shmbus::{Loan, Publisher};

use crate::args::{Handle, Wait, bytes_arg, handle_mut, out_ptr, str_arg, wait_strategy};
use crate::client::{client_arg, shmbus_client};
use crate::error::{Error, SHMBUS_ERR_INVALID_TOPIC, guard, guard_void};

/// A publisher on one topic (opaque).
///
/// Thread safety: one thread at a time. A publisher may be handed to another thread between
/// calls, but two threads must not call functions on the same publisher at once. Different
/// publishers (even on the same topic) are independent.
#[allow(non_camel_case_types)]
pub struct shmbus_publisher {
    tag: u64,
    /// The outstanding loan, borrowing `*publisher` (see the module documentation).
    loan: Option<Loan<'static>>,
    /// Owned (from `Box::into_raw`); freed in `Drop` after `loan`.
    publisher: NonNull<Publisher>,
    id: u32,
    max_payload: usize,
    /// The sequence number of the last message published through this handle.
    last_sequence: Option<u64>,
}

impl Handle for shmbus_publisher {
    const TAG: u64 = u64::from_le_bytes(*b"shmbusPu");
    const NAME: &'static str = "shmbus_publisher";
    const TAG_OFFSET: usize = std::mem::offset_of!(shmbus_publisher, tag);
}

impl shmbus_publisher {
    fn new(publisher: Publisher) -> shmbus_publisher {
        shmbus_publisher {
            tag: Self::TAG,
            loan: None,
            id: publisher.id().get(),
            max_payload: publisher.max_payload(),
            publisher: NonNull::from(Box::leak(Box::new(publisher))),
            last_sequence: None,
        }
    }

    /// The publisher, unless a loan borrows it.
    fn publisher_mut(&mut self, function: &str) -> Result<&mut Publisher, Error> {
        if self.loan.is_some() {
            return Err(Error::state(
                function,
                "a loan is outstanding: shmbus_commit or shmbus_abort it first",
            ));
        }
        // SAFETY: `publisher` is live until `Drop` and, with no loan out, no other reference to
        // it exists; the returned borrow is tied to `&mut self`, so none can be made meanwhile.
        Ok(unsafe { self.publisher.as_mut() })
    }

    fn publish(&mut self, function: &str, payload: &[u8], wait: Wait) -> Result<(), Error> {
        let publisher = self.publisher_mut(function)?;
        let sequence = match wait {
            Wait::Forever => publisher.publish(payload)?,
            Wait::Never => publisher.try_publish(payload)?,
            Wait::For(d) => publisher.publish_timeout(payload, d)?,
        };
        self.last_sequence = Some(sequence);
        Ok(())
    }

    /// Takes a loan of `len` bytes and returns where to write them.
    #[inline]
    fn loan(&mut self, function: &str, len: usize, wait: Wait) -> Result<*mut u8, Error> {
        self.publisher_mut(function)?;
        // SAFETY: the `Publisher` stays allocated until `Drop`, which drops `self.loan` first,
        // so a `'static` borrow outlives every use of it; no loan is out (checked just above),
        // so this is the only reference to the `Publisher`, and none is made while the loan it
        // creates is kept in `self.loan` (see `publisher_mut`).
        let publisher: &'static mut Publisher = unsafe { &mut *self.publisher.as_ptr() };
        let result: Result<Loan<'static>, Error> = match wait {
            Wait::Forever => publisher.loan(len).map_err(Error::from),
            Wait::Never => publisher.try_loan(len).map_err(Error::from),
            Wait::For(d) => publisher.loan_timeout(len, d).map_err(Error::from),
        };
        let mut loan = result?;
        let buf = loan.as_mut_slice().as_mut_ptr();
        self.loan = Some(loan);
        Ok(buf)
    }
}

impl Drop for shmbus_publisher {
    fn drop(&mut self) {
        // An outstanding loan is aborted: its frame becomes a skipped frame no reader sees. This
        // also ends the loan's borrow of the `Publisher` before it is freed.
        drop(self.loan.take());
        // SAFETY: `publisher` came from `Box::leak` in `new` and is freed only here; the loan
        // borrowing it was dropped above, so no reference to it remains.
        drop(unsafe { Box::from_raw(self.publisher.as_ptr()) });
    }
}

/// Borrows a publisher handle.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher that no other thread uses during `'a`.
unsafe fn publisher_arg<'a>(
    function: &str,
    publisher: *mut shmbus_publisher,
) -> Result<&'a mut shmbus_publisher, Error> {
    // SAFETY: forwarded contract.
    unsafe { handle_mut(function, "publisher", publisher) }
}

/// Creates a publisher on `topic`.
///
/// The topic may contain wildcards: subscribers whose pattern overlaps it receive its messages,
/// and see the topic exactly as written here. The string is only read during the call.
///
/// On success `*publisher_out` receives a new publisher that the caller owns and frees with
/// `shmbus_publisher_free`; on failure it is set to NULL.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live client),
/// `SHMBUS_ERR_INVALID_TOPIC` (the message names the topic and the fault),
/// `SHMBUS_ERR_BROKER_GONE`, `SHMBUS_ERR_TIMEOUT` (the broker did not answer),
/// `SHMBUS_ERR_REFUSED` (e.g. no publisher slot left on the topic), `SHMBUS_ERR_SHM`.
///
/// Thread safety: may be called from any thread, also concurrently on the same client.
///
/// # Safety
///
/// `client` is NULL or a live client; `topic` is NULL or a NUL-terminated string;
/// `publisher_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_new(
    client: *const shmbus_client,
    topic: *const c_char,
    publisher_out: *mut *mut shmbus_publisher,
) -> c_int {
    const F: &str = "shmbus_publisher_new";
    guard(|| {
        let out = out_ptr(F, "publisher_out", publisher_out)?;
        // SAFETY: `publisher_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { client_arg(F, client)? };
        // SAFETY: NULL or NUL-terminated by the caller's contract; read during the call only.
        let topic = unsafe { str_arg(F, "topic", topic, SHMBUS_ERR_INVALID_TOPIC)? };
        let publisher = client.bus.publisher(topic)?;
        let handle = Box::new(shmbus_publisher::new(publisher));
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Frees a publisher. NULL is ignored. An outstanding loan is aborted (nothing is published).
/// Messages already published stay in the ring for subscribers to read.
///
/// Thread safety: no other thread may be using `publisher` during or after this call.
///
/// # Safety
///
/// `publisher` is NULL or a publisher from `shmbus_publisher_new` not freed yet; it, and any
/// buffer from `shmbus_loan`, must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_free(publisher: *mut shmbus_publisher) {
    guard_void(|| {
        // SAFETY: NULL or a live publisher by the caller's contract.
        if unsafe { publisher_arg("shmbus_publisher_free", publisher) }.is_err() {
            return;
        }
        // SAFETY: a live publisher created by `Box::into_raw`, given up by the caller here.
        // Clearing the tag first lets a second free be noticed (best effort).
        unsafe {
            (*publisher).tag = 0;
            drop(Box::from_raw(publisher));
        }
    });
}

/// Publishes `len` bytes from `data` (one copy, into the ring), waiting as long as it takes for
/// room: a tethered subscriber that has not caught up holds publishers back (at most the
/// broker's eviction timeout, 5 s by default, if it makes no progress).
///
/// `data` may be NULL when `len` is 0 (an empty message). The bytes are only read during the
/// call.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live publisher),
/// `SHMBUS_ERR_TOO_LARGE` (over the largest payload; nothing is written), `SHMBUS_ERR_STATE` (a
/// loan is outstanding).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; `data` is NULL or valid for reading `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publish(
    publisher: *mut shmbus_publisher,
    data: *const c_void,
    len: usize,
) -> c_int {
    const F: &str = "shmbus_publish";
    // SAFETY: forwarded contract.
    unsafe { publish(F, publisher, data, len, Wait::Forever) }
}

/// `shmbus_publish`, waiting at most `timeout_ms` milliseconds for room in the ring (negative:
/// as long as it takes; 0: not at all, like `shmbus_try_publish`).
///
/// Errors: those of `shmbus_publish`, and `SHMBUS_ERR_TIMEOUT` when the ring stayed full (or
/// `SHMBUS_ERR_FULL` with a timeout of 0). Nothing is written then.
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// As for `shmbus_publish`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publish_timeout(
    publisher: *mut shmbus_publisher,
    data: *const c_void,
    len: usize,
    timeout_ms: i32,
) -> c_int {
    const F: &str = "shmbus_publish_timeout";
    // SAFETY: forwarded contract.
    unsafe { publish(F, publisher, data, len, Wait::from_ms(timeout_ms)) }
}

/// `shmbus_publish` if there is room in the ring now; never waits.
///
/// Errors: those of `shmbus_publish`, and `SHMBUS_ERR_FULL` when a tethered subscriber has not
/// caught up (nothing is written; try again later).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// As for `shmbus_publish`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_try_publish(
    publisher: *mut shmbus_publisher,
    data: *const c_void,
    len: usize,
) -> c_int {
    const F: &str = "shmbus_try_publish";
    // SAFETY: forwarded contract.
    unsafe { publish(F, publisher, data, len, Wait::Never) }
}

/// # Safety
///
/// As for `shmbus_publish`.
unsafe fn publish(
    function: &str,
    publisher: *mut shmbus_publisher,
    data: *const c_void,
    len: usize,
    wait: Wait,
) -> c_int {
    guard(|| {
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(function, publisher)? };
        // SAFETY: NULL or valid for `len` bytes during the call, by the caller's contract.
        let payload = unsafe { bytes_arg(function, data.cast(), len)? };
        publisher.publish(function, payload, wait)
    })
}

/// Claims room for a `len`-byte message in the ring, waiting as long as it takes, and writes to
/// `*buf_out` where to put its bytes: straight in shared memory (zero copy). Fill the buffer,
/// then `shmbus_commit` (publish) or `shmbus_abort` (discard). The buffer's initial contents are
/// unspecified.
///
/// The buffer is valid for writing (and reading back) `len` bytes until `shmbus_commit`,
/// `shmbus_abort` or `shmbus_publisher_free`, whichever comes first; it is aligned to 16 bytes.
/// One loan at a time per publisher. Keep loans short: the frame blocks subscribers from
/// reading past it until it is committed or aborted.
///
/// On failure `*buf_out` is set to NULL and no loan is outstanding.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live publisher),
/// `SHMBUS_ERR_TOO_LARGE` (`len` over the largest payload), `SHMBUS_ERR_STATE` (a loan is
/// already outstanding).
///
/// Thread safety: one thread at a time per publisher. The buffer may be filled by any thread.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; `buf_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_loan(
    publisher: *mut shmbus_publisher,
    len: usize,
    buf_out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { loan("shmbus_loan", publisher, len, buf_out, Wait::Forever) }
}

/// `shmbus_loan`, waiting at most `timeout_ms` milliseconds for room (negative: as long as it
/// takes; 0: not at all, like `shmbus_try_loan`).
///
/// Errors: those of `shmbus_loan`, and `SHMBUS_ERR_TIMEOUT` (or `SHMBUS_ERR_FULL` with a timeout
/// of 0) when the ring stayed full.
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// As for `shmbus_loan`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_loan_timeout(
    publisher: *mut shmbus_publisher,
    len: usize,
    timeout_ms: i32,
    buf_out: *mut *mut c_void,
) -> c_int {
    let wait = Wait::from_ms(timeout_ms);
    // SAFETY: forwarded contract.
    unsafe { loan("shmbus_loan_timeout", publisher, len, buf_out, wait) }
}

/// `shmbus_loan` if there is room in the ring now; never waits.
///
/// Errors: those of `shmbus_loan`, and `SHMBUS_ERR_FULL`.
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// As for `shmbus_loan`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_try_loan(
    publisher: *mut shmbus_publisher,
    len: usize,
    buf_out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { loan("shmbus_try_loan", publisher, len, buf_out, Wait::Never) }
}

/// # Safety
///
/// As for `shmbus_loan`.
unsafe fn loan(
    function: &str,
    publisher: *mut shmbus_publisher,
    len: usize,
    buf_out: *mut *mut c_void,
    wait: Wait,
) -> c_int {
    guard(|| {
        let out = out_ptr(function, "buf_out", buf_out)?;
        // SAFETY: `buf_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(function, publisher)? };
        let buf = publisher.loan(function, len, wait)?;
        // SAFETY: as above.
        unsafe { out.write(buf.cast()) };
        Ok(())
    })
}

/// Publishes the outstanding loan's first `len` bytes (`len` may be less than the loan, for
/// writers that learn the size as they go; the frame keeps the room it claimed). The loan's
/// buffer must not be used afterwards.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live publisher, or `len`
/// larger than the loan: the loan then stays outstanding), `SHMBUS_ERR_STATE` (no loan).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; the loan's buffer was written only within its
/// bounds.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_commit(publisher: *mut shmbus_publisher, len: usize) -> c_int {
    const F: &str = "shmbus_commit";
    guard(|| {
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        let loan = publisher
            .loan
            .take()
            .ok_or_else(|| Error::state(F, "no loan is outstanding (shmbus_loan first)"))?;
        if len > loan.len() {
            let loaned = loan.len();
            publisher.loan = Some(loan);
            return Err(Error::invalid(
                F,
                format!("commit of {len} bytes exceeds the loan of {loaned} bytes"),
            ));
        }
        publisher.last_sequence = Some(loan.commit_prefix(len)?);
        Ok(())
    })
}

/// Discards the outstanding loan: nothing is published (subscribers skip its frame). The loan's
/// buffer must not be used afterwards.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`, `SHMBUS_ERR_STATE` (no loan).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_abort(publisher: *mut shmbus_publisher) -> c_int {
    const F: &str = "shmbus_abort";
    guard(|| {
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        let loan = publisher
            .loan
            .take()
            .ok_or_else(|| Error::state(F, "no loan is outstanding"))?;
        drop(loan);
        Ok(())
    })
}

/// The publisher's bus-wide id, into `*id_out`: subscribers see it as `shmbus_sample.publisher`
/// on its messages (so a program can recognise its own messages).
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; `id_out` is NULL or valid for writing a `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_id(
    publisher: *mut shmbus_publisher,
    id_out: *mut u32,
) -> c_int {
    const F: &str = "shmbus_publisher_id";
    guard(|| {
        let out = out_ptr(F, "id_out", id_out)?;
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        // SAFETY: `id_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(publisher.id) };
        Ok(())
    })
}

/// The largest payload one message on this publisher's topic can carry, in bytes, into
/// `*max_out`. Larger publishes and loans fail with `SHMBUS_ERR_TOO_LARGE`.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; `max_out` is NULL or valid for writing a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_max_payload(
    publisher: *mut shmbus_publisher,
    max_out: *mut usize,
) -> c_int {
    const F: &str = "shmbus_publisher_max_payload";
    guard(|| {
        let out = out_ptr(F, "max_out", max_out)?;
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        // SAFETY: `max_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(publisher.max_payload) };
        Ok(())
    })
}

/// The sequence number of the last message this publisher published (through any of the
/// publish functions or `shmbus_commit`), into `*sequence_out`. Sequence numbers count the
/// frames of the topic's ring, in publication order.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`, `SHMBUS_ERR_STATE` (nothing
/// published yet).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher; `sequence_out` is NULL or valid for writing a
/// `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_last_sequence(
    publisher: *mut shmbus_publisher,
    sequence_out: *mut u64,
) -> c_int {
    const F: &str = "shmbus_publisher_last_sequence";
    guard(|| {
        let out = out_ptr(F, "sequence_out", sequence_out)?;
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        let sequence = publisher
            .last_sequence
            .ok_or_else(|| Error::state(F, "nothing was published yet"))?;
        // SAFETY: `sequence_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(sequence) };
        Ok(())
    })
}

/// How the blocking publish and loan functions wait for room in a full ring: `wait` is one of
/// `SHMBUS_WAIT_SPIN_THEN_PARK` (the default; `spin_us` microseconds of polling, 0 for the
/// default 50, then sleep until woken), `SHMBUS_WAIT_BUSY_SPIN` (poll, one core at 100 %) or
/// `SHMBUS_WAIT_PARK` (sleep at once).
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (unknown `wait`), `SHMBUS_ERR_STATE`
/// (a loan is outstanding).
///
/// Thread safety: one thread at a time per publisher.
///
/// # Safety
///
/// `publisher` is NULL or a live publisher.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_publisher_set_wait(
    publisher: *mut shmbus_publisher,
    wait: u32,
    spin_us: u32,
) -> c_int {
    const F: &str = "shmbus_publisher_set_wait";
    guard(|| {
        // SAFETY: NULL or a live publisher used by this thread only, by the caller's contract.
        let publisher = unsafe { publisher_arg(F, publisher)? };
        let strategy = wait_strategy(F, wait, spin_us)?;
        publisher.publisher_mut(F)?.set_wait_strategy(strategy);
        Ok(())
    })
}
