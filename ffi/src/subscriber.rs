//! `shmbus_subscriber`: receiving messages in place, as views into shared memory.
//!
//! # The sample inside the handle
//!
//! C holds a sample across calls, between `shmbus_recv` and `shmbus_sample_release`. The handle
//! keeps it as an [`OwnedSample`], which borrows nothing: it keeps its frame in place (and the
//! reader's slot alive) until it drops, so the pointers C gets (`data` into shared memory or the
//! sample's private copy, `topic` into the sample's shared topic string) stay valid while it is
//! held, whatever happens to the subscriber meanwhile. A handle holds one sample at a time;
//! `shmbus_recv_next` releases it and receives the next in one call. `shmbus_sample` carries the
//! handle and a token naming the sample, so that releasing it twice — through a copy of the
//! struct — is caught instead of releasing a later sample.

use std::ffi::{c_char, c_int, c_void};

use shmbus::{
    OwnedSample, RecvError, RecvTimeoutError, Subscriber, SubscriberBuilder, TryRecvError,
};

use crate::args::{Handle, Wait, handle_mut, out_ptr, str_arg, wait_strategy};
use crate::client::{client_arg, shmbus_client};
use crate::error::{Error, SHMBUS_ERR_INVALID_TOPIC, SHMBUS_ERR_TIMEOUT, guard, guard_void};

/// How a subscriber reads. A zero-initialised struct (`shmbus_subscriber_options opts = {0};`)
/// holds the defaults: tethered, no history, spin 50 µs then park.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct shmbus_subscriber_options {
    /// false (default): tethered — lossless; publishers wait for this subscriber (up to the
    /// broker's eviction timeout when it makes no progress). true: lossy — never holds
    /// publishers back; when overrun, `shmbus_recv` returns `SHMBUS_ERR_LAGGED` and goes on from
    /// the oldest message still in the ring (messages are then copied out and checked rather
    /// than read in place).
    pub lossy: bool,
    /// Also deliver up to this many messages published before subscribing, per topic, as far as
    /// the ring still holds them. Default 0: only messages published after `shmbus_subscribe`
    /// returned.
    pub history: u32,
    /// How `shmbus_recv` waits: `SHMBUS_WAIT_SPIN_THEN_PARK` (0, the default),
    /// `SHMBUS_WAIT_BUSY_SPIN` or `SHMBUS_WAIT_PARK`.
    pub wait: u32,
    /// With `SHMBUS_WAIT_SPIN_THEN_PARK`: microseconds to poll before sleeping; 0 means the
    /// default, 50.
    pub spin_us: u32,
}

/// One received message: a view into shared memory, valid until `shmbus_sample_release` (or
/// `shmbus_subscriber_free`). Filled by `shmbus_recv`; the fields starting with `_` are private.
#[repr(C)]
#[derive(Debug)]
pub struct shmbus_sample {
    /// The topic it was published on, exactly as its publisher wrote it (wildcards included),
    /// NUL-terminated.
    pub topic: *const c_char,
    /// `strlen(topic)`.
    pub topic_len: usize,
    /// The payload: `len` bytes, 16-byte aligned, read-only. For a tethered subscriber it is the
    /// frame itself in shared memory, which no publisher overwrites until the sample is released.
    /// Not NUL-terminated.
    pub data: *const c_void,
    /// Payload length in bytes (may be 0).
    pub len: usize,
    /// The message's sequence number in its topic's ring (increasing in publication order).
    pub sequence: u64,
    /// The bus-wide id of the publisher that sent it (see `shmbus_publisher_id`).
    pub publisher: u32,
    /// Private: the subscriber holding the sample.
    pub _subscriber: *mut shmbus_subscriber,
    /// Private: which of its samples this is.
    pub _token: u64,
}

impl shmbus_sample {
    const EMPTY: shmbus_sample = shmbus_sample {
        topic: std::ptr::null(),
        topic_len: 0,
        data: std::ptr::null(),
        len: 0,
        sequence: 0,
        publisher: 0,
        _subscriber: std::ptr::null_mut(),
        _token: 0,
    };
}

/// A subscriber to one or more topic patterns (opaque).
///
/// Thread safety: one thread at a time. A subscriber may be handed to another thread between
/// calls, but two threads must not call functions on the same subscriber at once. Different
/// subscribers are independent.
#[allow(non_camel_case_types)]
pub struct shmbus_subscriber {
    tag: u64,
    /// The sample C holds (see the module documentation).
    held: Option<OwnedSample>,
    /// The token of the last sample handed out (of `held`, while it is `Some`).
    token: u64,
    subscriber: Subscriber,
    /// `missed` of the last `SHMBUS_ERR_LAGGED`.
    lagged: u64,
}

impl Handle for shmbus_subscriber {
    const TAG: u64 = u64::from_le_bytes(*b"shmbusSu");
    const NAME: &'static str = "shmbus_subscriber";
    const TAG_OFFSET: usize = std::mem::offset_of!(shmbus_subscriber, tag);
}

impl shmbus_subscriber {
    fn new(subscriber: Subscriber) -> shmbus_subscriber {
        shmbus_subscriber {
            tag: Self::TAG,
            held: None,
            token: 0,
            subscriber,
            lagged: 0,
        }
    }

    /// Fails while a sample is held (for the calls that keep one sample at a time).
    fn check_not_holding(&self, function: &str) -> Result<(), Error> {
        if self.held.is_some() {
            return Err(Error::state(
                function,
                "a sample is still held: shmbus_sample_release it first",
            ));
        }
        Ok(())
    }

    /// Receives the next message into `held` and describes it in `out`; `this` is the pointer C
    /// passed for `self`, which the sample records for `shmbus_sample_release`. A sample still
    /// held is given back (after the next one is read, so that its handle can be reused).
    #[inline]
    fn recv(
        &mut self,
        this: *mut shmbus_subscriber,
        function: &str,
        wait: Wait,
        out: &mut shmbus_sample,
    ) -> Result<(), Error> {
        let shmbus_subscriber {
            subscriber, held, ..
        } = self;
        let received = match wait {
            Wait::Forever => subscriber.recv().map_err(RecvTimeoutError::Failed),
            Wait::Never => subscriber.try_recv().map_err(|e| match e {
                TryRecvError::Failed(e) => RecvTimeoutError::Failed(e),
                _ => RecvTimeoutError::Timeout,
            }),
            Wait::For(d) => subscriber.recv_timeout(d),
        }
        .map(|sample| sample.detach_into(held));
        match received {
            Ok(()) => {
                self.describe(this, out);
                Ok(())
            }
            Err(e) => {
                drop(held.take());
                *out = shmbus_sample::EMPTY;
                Err(self.recv_failed(function, e))
            }
        }
    }

    /// The error for a failed receive; remembers how many messages a lag lost.
    #[cold]
    #[inline(never)]
    fn recv_failed(&mut self, function: &str, e: RecvTimeoutError) -> Error {
        match e {
            RecvTimeoutError::Failed(e) => {
                if let RecvError::Lagged { missed, .. } = e {
                    self.lagged = missed;
                }
                e.into()
            }
            _ => Error::new(
                SHMBUS_ERR_TIMEOUT,
                format!("{function}: no message before the timeout"),
            ),
        }
    }

    /// Describes the held sample in `out`, under a new token.
    #[inline]
    fn describe(&mut self, this: *mut shmbus_subscriber, out: &mut shmbus_sample) {
        let Some(sample) = &self.held else {
            return;
        };
        let payload = sample.payload();
        self.token = self.token.wrapping_add(1);
        *out = shmbus_sample {
            topic: sample.topic_c_str().as_ptr(),
            topic_len: sample.topic().len(),
            data: payload.as_ptr().cast(),
            len: payload.len(),
            sequence: sample.sequence(),
            publisher: sample.publisher().get(),
            _subscriber: this,
            _token: self.token,
        };
    }
}

/// Borrows a subscriber handle.
///
/// # Safety
///
/// `subscriber` is NULL or a live subscriber that no other thread uses during `'a`.
unsafe fn subscriber_arg<'a>(
    function: &str,
    subscriber: *mut shmbus_subscriber,
) -> Result<&'a mut shmbus_subscriber, Error> {
    // SAFETY: forwarded contract.
    unsafe { handle_mut(function, "subscriber", subscriber) }
}

/// Applies C options (NULL: defaults) to a subscriber builder.
///
/// # Safety
///
/// `options` is NULL or valid for reading a `shmbus_subscriber_options`.
unsafe fn with_options(
    function: &str,
    builder: SubscriberBuilder,
    options: *const shmbus_subscriber_options,
) -> Result<SubscriberBuilder, Error> {
    // SAFETY: NULL or readable by the caller's contract.
    let options = unsafe { options.as_ref() }.copied().unwrap_or_default();
    let wait = wait_strategy(function, options.wait, options.spin_us)?;
    let builder = builder.history(options.history).wait(wait);
    Ok(if options.lossy {
        builder.lossy()
    } else {
        builder
    })
}

/// Subscribes to every topic matching `pattern` (wildcards `*`: one fragment, `**`: one or more),
/// with default options: tethered, no history, spin then park. Rings created later that match
/// join the subscription on their own. Every message published after this call returns is
/// delivered. The string is only read during the call.
///
/// On success `*subscriber_out` receives a new subscriber that the caller owns and frees with
/// `shmbus_subscriber_free`; on failure it is set to NULL.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live client),
/// `SHMBUS_ERR_INVALID_TOPIC`, `SHMBUS_ERR_BROKER_GONE`, `SHMBUS_ERR_TIMEOUT` (the broker did
/// not answer), `SHMBUS_ERR_REFUSED`, `SHMBUS_ERR_SHM`.
///
/// Thread safety: may be called from any thread, also concurrently on the same client.
///
/// # Safety
///
/// `client` is NULL or a live client; `pattern` is NULL or a NUL-terminated string;
/// `subscriber_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscribe(
    client: *const shmbus_client,
    pattern: *const c_char,
    subscriber_out: *mut *mut shmbus_subscriber,
) -> c_int {
    // SAFETY: forwarded contract (NULL options are the defaults).
    unsafe { shmbus_subscribe_with(client, pattern, std::ptr::null(), subscriber_out) }
}

/// `shmbus_subscribe` with options; `options` may be NULL for the defaults and is only read
/// during the call.
///
/// Errors: those of `shmbus_subscribe`, and `SHMBUS_ERR_INVALID_ARGUMENT` for an unknown
/// `options->wait`.
///
/// Thread safety: may be called from any thread, also concurrently on the same client.
///
/// # Safety
///
/// As for `shmbus_subscribe`; `options` is NULL or valid for reading.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscribe_with(
    client: *const shmbus_client,
    pattern: *const c_char,
    options: *const shmbus_subscriber_options,
    subscriber_out: *mut *mut shmbus_subscriber,
) -> c_int {
    const F: &str = "shmbus_subscribe_with";
    guard(|| {
        let out = out_ptr(F, "subscriber_out", subscriber_out)?;
        // SAFETY: `subscriber_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { client_arg(F, client)? };
        // SAFETY: NULL or NUL-terminated by the caller's contract; read during the call only.
        let pattern = unsafe { str_arg(F, "pattern", pattern, SHMBUS_ERR_INVALID_TOPIC)? };
        // SAFETY: NULL or readable by the caller's contract.
        let builder = unsafe { with_options(F, client.bus.subscriber(pattern), options)? };
        let subscriber = builder.create()?;
        let handle = Box::new(shmbus_subscriber::new(subscriber));
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// One subscriber for `count` patterns (`patterns[0]` to `patterns[count - 1]`); a topic matched
/// by several of them is delivered once. `count` may be 0 (add patterns later with
/// `shmbus_subscriber_add_pattern`); `options` may be NULL for the defaults. The strings and
/// the array are only read during the call.
///
/// Errors: those of `shmbus_subscribe_with`; `SHMBUS_ERR_NULL` also when `patterns` (with
/// `count` > 0) or one of its strings is NULL.
///
/// Thread safety: may be called from any thread, also concurrently on the same client.
///
/// # Safety
///
/// As for `shmbus_subscribe_with`; `patterns` is NULL or valid for reading `count` pointers,
/// each NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscribe_all(
    client: *const shmbus_client,
    patterns: *const *const c_char,
    count: usize,
    options: *const shmbus_subscriber_options,
    subscriber_out: *mut *mut shmbus_subscriber,
) -> c_int {
    const F: &str = "shmbus_subscribe_all";
    guard(|| {
        let out = out_ptr(F, "subscriber_out", subscriber_out)?;
        // SAFETY: `subscriber_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { client_arg(F, client)? };
        let pointers: &[*const c_char] = if count == 0 {
            &[]
        } else if patterns.is_null() {
            return Err(Error::null(F, "patterns"));
        } else {
            // SAFETY: non-NULL and valid for `count` pointers by the caller's contract.
            unsafe { std::slice::from_raw_parts(patterns, count) }
        };
        let mut list = Vec::with_capacity(count);
        for (i, &p) in pointers.iter().enumerate() {
            let name = format!("patterns[{i}]");
            // SAFETY: NULL or NUL-terminated by the caller's contract; read during the call.
            list.push(unsafe { str_arg(F, &name, p, SHMBUS_ERR_INVALID_TOPIC)? });
        }
        let builder = list
            .into_iter()
            .fold(client.bus.subscriber_builder(), |b, p| b.pattern(p));
        // SAFETY: NULL or readable by the caller's contract.
        let subscriber = unsafe { with_options(F, builder, options)? }.create()?;
        let handle = Box::new(shmbus_subscriber::new(subscriber));
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Also receives the topics matching `pattern`, from now on (with the subscriber's options).
///
/// Errors: those of `shmbus_subscribe`, and `SHMBUS_ERR_STATE` while a sample is held.
///
/// Thread safety: one thread at a time per subscriber.
///
/// # Safety
///
/// `subscriber` is NULL or a live subscriber; `pattern` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscriber_add_pattern(
    subscriber: *mut shmbus_subscriber,
    pattern: *const c_char,
) -> c_int {
    const F: &str = "shmbus_subscriber_add_pattern";
    guard(|| {
        // SAFETY: NULL or a live subscriber used by this thread only, by the caller's contract.
        let subscriber = unsafe { subscriber_arg(F, subscriber)? };
        // SAFETY: NULL or NUL-terminated by the caller's contract; read during the call only.
        let pattern = unsafe { str_arg(F, "pattern", pattern, SHMBUS_ERR_INVALID_TOPIC)? };
        subscriber.check_not_holding(F)?;
        subscriber.subscriber.add_pattern(pattern)?;
        Ok(())
    })
}

/// Frees a subscriber. NULL is ignored. A held sample is released: its pointers become invalid.
/// A tethered subscriber stops holding publishers back.
///
/// Thread safety: no other thread may be using `subscriber` during or after this call.
///
/// # Safety
///
/// `subscriber` is NULL or a subscriber from one of the `shmbus_subscribe` functions not freed
/// yet; it, and any sample it filled, must not be used afterwards (not even released).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscriber_free(subscriber: *mut shmbus_subscriber) {
    guard_void(|| {
        // SAFETY: NULL or a live subscriber by the caller's contract.
        if unsafe { subscriber_arg("shmbus_subscriber_free", subscriber) }.is_err() {
            return;
        }
        // SAFETY: a live subscriber created by `Box::into_raw`, given up by the caller here.
        // Clearing the tag first lets a second free be noticed (best effort).
        unsafe {
            (*subscriber).tag = 0;
            drop(Box::from_raw(subscriber));
        }
    });
}

/// Receives the next message from any topic the subscriber matches, as a zero-copy view.
///
/// `timeout_ms`: negative waits as long as it takes (`SHMBUS_WAIT_FOREVER`), 0 does not wait
/// (`SHMBUS_NO_WAIT`), positive waits up to that many milliseconds. How it waits follows the
/// subscriber's `wait` option.
///
/// On success `*sample` describes the message; its pointers are valid until
/// `shmbus_sample_release(sample)` (or `shmbus_subscriber_free`). Release every sample, and soon:
/// a tethered subscriber holding a sample holds back publishers on that topic once the ring
/// fills, and one sample at a time can be held per subscriber.
///
/// Messages of one publisher arrive in order; messages of different topics interleave.
///
/// On failure `*sample` is zeroed (except with `SHMBUS_ERR_NULL` and `SHMBUS_ERR_STATE`, which
/// leave it untouched). Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live
/// subscriber), `SHMBUS_ERR_TIMEOUT` (no message in time, also with a timeout of 0),
/// `SHMBUS_ERR_LAGGED` (messages were lost; call again to go on; `shmbus_subscriber_lagged` says
/// how many), `SHMBUS_ERR_CORRUPT` (a ring broke the layout rules; that topic is dropped, call
/// again to go on with the others), `SHMBUS_ERR_UNAVAILABLE` (a new matching topic cannot be
/// read, reported once; call again to go on with the others), `SHMBUS_ERR_STATE` (a sample is
/// still held).
///
/// Thread safety: one thread at a time per subscriber.
///
/// # Safety
///
/// `subscriber` is NULL or a live subscriber; `sample` is NULL or valid for reading and writing
/// a `shmbus_sample`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_recv(
    subscriber: *mut shmbus_subscriber,
    sample: *mut shmbus_sample,
    timeout_ms: i32,
) -> c_int {
    const F: &str = "shmbus_recv";
    guard(|| {
        let mut out = out_ptr(F, "sample", sample)?;
        let this = subscriber;
        // SAFETY: NULL or a live subscriber used by this thread only, by the caller's contract.
        let subscriber = unsafe { subscriber_arg(F, this)? };
        // SAFETY: `sample` is non-NULL, valid for reading and writing, and not aliased during the
        // call, by the caller's contract.
        let out = unsafe { out.as_mut() };
        subscriber.check_not_holding(F)?;
        subscriber.recv(this, F, Wait::from_ms(timeout_ms), out)
    })
}

/// Releases the sample the subscriber holds, if any, and receives the next message into
/// `*sample`: `shmbus_sample_release` and `shmbus_recv` in one call, for loops that handle one
/// message at a time.
///
/// ```c
/// shmbus_sample s = {0};
/// while (shmbus_recv_next(sub, &s, SHMBUS_WAIT_FOREVER) == SHMBUS_OK) {
///     handle(s.topic, s.data, s.len);   // valid until the next call
/// }
/// shmbus_sample_release(&s);
/// ```
///
/// The sample released is the one the subscriber holds, whichever struct describes it; its
/// pointers become invalid. Timeouts, errors and the state of `*sample` afterwards are as for
/// `shmbus_recv` (on failure nothing is held).
///
/// Errors: those of `shmbus_recv`, except `SHMBUS_ERR_STATE`.
///
/// Thread safety: one thread at a time per subscriber.
///
/// # Safety
///
/// `subscriber` is NULL or a live subscriber; `sample` is NULL or valid for reading and writing
/// a `shmbus_sample`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_recv_next(
    subscriber: *mut shmbus_subscriber,
    sample: *mut shmbus_sample,
    timeout_ms: i32,
) -> c_int {
    const F: &str = "shmbus_recv_next";
    guard(|| {
        let mut out = out_ptr(F, "sample", sample)?;
        let this = subscriber;
        // SAFETY: NULL or a live subscriber used by this thread only, by the caller's contract.
        let subscriber = unsafe { subscriber_arg(F, this)? };
        // SAFETY: `sample` is non-NULL, valid for reading and writing, and not aliased during the
        // call, by the caller's contract.
        let out = unsafe { out.as_mut() };
        subscriber.recv(this, F, Wait::from_ms(timeout_ms), out)
    })
}

/// Releases a sample filled by `shmbus_recv`: its pointers become invalid, the subscriber may
/// receive again, and a tethered subscriber lets publishers reuse the frame. The struct is
/// zeroed. Releasing a zeroed struct (never filled, or released already) does nothing and
/// succeeds.
///
/// Errors: `SHMBUS_ERR_NULL` (`sample` is NULL), `SHMBUS_ERR_STATE` (a copy of a sample that was
/// released already).
///
/// Thread safety: on the thread that uses the sample's subscriber.
///
/// # Safety
///
/// `sample` is NULL or valid for reading and writing a `shmbus_sample` that is zeroed or was
/// filled by `shmbus_recv` on a subscriber that has not been freed since.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_sample_release(sample: *mut shmbus_sample) -> c_int {
    const F: &str = "shmbus_sample_release";
    guard(|| {
        let mut sample = out_ptr(F, "sample", sample)?;
        // SAFETY: non-NULL, valid for reading and writing, not aliased during the call, by the
        // caller's contract.
        let sample = unsafe { sample.as_mut() };
        if sample._subscriber.is_null() {
            return Ok(());
        }
        // SAFETY: a filled sample names a live subscriber, used by this thread only, by the
        // caller's contract.
        let subscriber = unsafe { subscriber_arg(F, sample._subscriber)? };
        if subscriber.held.is_none() || subscriber.token != sample._token {
            return Err(Error::state(
                F,
                "this sample was released already (through a copy of the struct)",
            ));
        }
        *sample = shmbus_sample::EMPTY;
        drop(subscriber.held.take());
        Ok(())
    })
}

/// How many messages the last `SHMBUS_ERR_LAGGED` from `shmbus_recv` on this subscriber
/// reported lost, into `*missed_out` (0 if it never lagged; `UINT64_MAX` when the count is
/// unknown: messages published while the broker was away).
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: one thread at a time per subscriber.
///
/// # Safety
///
/// `subscriber` is NULL or a live subscriber; `missed_out` is NULL or valid for writing a
/// `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_subscriber_lagged(
    subscriber: *mut shmbus_subscriber,
    missed_out: *mut u64,
) -> c_int {
    const F: &str = "shmbus_subscriber_lagged";
    guard(|| {
        let out = out_ptr(F, "missed_out", missed_out)?;
        // SAFETY: NULL or a live subscriber used by this thread only, by the caller's contract.
        let subscriber = unsafe { subscriber_arg(F, subscriber)? };
        // SAFETY: `missed_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(subscriber.lagged) };
        Ok(())
    })
}

/// The Rust handles must be movable between threads, since C may hand them over between calls.
const _: () = {
    const fn send<T: Send>() {}
    send::<Subscriber>();
    send::<shmbus::Publisher>();
};
