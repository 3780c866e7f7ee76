//! Request/response: `shmbus_request` asks the server of a topic; `shmbus_serve` serves one, and
//! its requests are answered with `shmbus_reply` (a copy) or `shmbus_reply_with` (written in
//! place by a callback, the request read in place: zero copies).
//!
//! # Owned views
//!
//! A `shmbus_response` and a `shmbus_incoming_request` each own their Rust value (a [`Response`], an
//! [`OwnedRequest`]) through a private pointer, so C may hold any number of them, in any order,
//! on any thread, until it releases them (or, for a request, answers it). Their `data` pointers
//! point into shared memory, where the frame stays in place until that moment.

use std::ffi::{c_char, c_int, c_void};

use shmbus::{OwnedRequest, RecvTimeoutError, RequestError, RespondError, Response, Server};

use crate::args::{Handle, Wait, bytes_arg, handle_mut, out_ptr, str_arg, wait_strategy};
use crate::client::client_arg;
use crate::error::{
    Error, SHMBUS_ERR_ABANDONED, SHMBUS_ERR_ALREADY_SERVED, SHMBUS_ERR_BROKER_GONE,
    SHMBUS_ERR_INVALID_TOPIC, SHMBUS_ERR_NO_SERVER, SHMBUS_ERR_REQUESTER_GONE,
    SHMBUS_ERR_SERVER_GONE, SHMBUS_ERR_TIMEOUT, SHMBUS_ERR_TOO_LARGE, guard, guard_void,
};
use crate::shmbus_client;

/// An answer from `shmbus_request`: a view into shared memory, valid until
/// `shmbus_response_release`. The field starting with `_` is private.
#[repr(C)]
#[derive(Debug)]
pub struct shmbus_response {
    /// The response's bytes, read-only, 16-byte aligned; not NUL-terminated.
    pub data: *const c_void,
    /// Its length in bytes (may be 0).
    pub len: usize,
    /// Private: the response itself.
    pub _owner: *mut c_void,
}

/// A request received by `shmbus_serve_recv`: a view into shared memory, valid until it is
/// answered (`shmbus_reply`, `shmbus_reply_with`) or released unanswered
/// (`shmbus_incoming_release`). The field starting with `_` is private.
#[repr(C)]
#[derive(Debug)]
pub struct shmbus_incoming_request {
    /// The request's bytes, read-only, 16-byte aligned; not NUL-terminated.
    pub data: *const c_void,
    /// Its length in bytes (may be 0).
    pub len: usize,
    /// Private: the request itself.
    pub _owner: *mut c_void,
}

/// Writes a response in place for `shmbus_reply_with`: `request` and `request_len` are the
/// request's bytes, `buf` has room for the `len` bytes asked for. Returns how many bytes of `buf`
/// make the response (at most `len`).
#[allow(non_camel_case_types)]
pub type shmbus_reply_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        request: *const c_void,
        request_len: usize,
        buf: *mut c_void,
        len: usize,
    ) -> usize,
>;

/// A server of one topic (opaque).
///
/// Thread safety: `shmbus_serve_recv` from one thread at a time; the requests it returns may be
/// answered from any thread.
#[allow(non_camel_case_types)]
pub struct shmbus_server {
    tag: u64,
    server: Server,
}

impl Handle for shmbus_server {
    const TAG: u64 = u64::from_le_bytes(*b"shmbusSv");
    const NAME: &'static str = "shmbus_server";
    const TAG_OFFSET: usize = std::mem::offset_of!(shmbus_server, tag);
}

impl From<RequestError> for Error {
    #[cold]
    fn from(e: RequestError) -> Error {
        let code = match &e {
            RequestError::InvalidTopic(_) => SHMBUS_ERR_INVALID_TOPIC,
            RequestError::NoServer { .. } => SHMBUS_ERR_NO_SERVER,
            RequestError::Timeout { .. } => SHMBUS_ERR_TIMEOUT,
            RequestError::ServerGone { .. } => SHMBUS_ERR_SERVER_GONE,
            RequestError::Abandoned { .. } => SHMBUS_ERR_ABANDONED,
            RequestError::TooLarge { .. } => SHMBUS_ERR_TOO_LARGE,
            RequestError::Setup { .. } => SHMBUS_ERR_BROKER_GONE,
            RequestError::PermissionDenied { .. } => crate::error::SHMBUS_ERR_PERMISSION_DENIED,
            _ => crate::error::SHMBUS_ERR_OTHER,
        };
        Error::new(code, e.to_string())
    }
}

impl From<RespondError> for Error {
    #[cold]
    fn from(e: RespondError) -> Error {
        let code = match &e {
            RespondError::RequesterGone => SHMBUS_ERR_REQUESTER_GONE,
            RespondError::TooLarge { .. } => SHMBUS_ERR_TOO_LARGE,
            RespondError::Broker(_) => SHMBUS_ERR_BROKER_GONE,
            _ => crate::error::SHMBUS_ERR_SHM,
        };
        Error::new(code, e.to_string())
    }
}

/// Sends `len` bytes at `data` to the server of `topic` (an exact topic, no wildcards) and waits
/// for its answer, which `*response` then describes (zero copy: a view into this client's inbox
/// in shared memory, valid until `shmbus_response_release`).
///
/// `timeout_ms`: negative waits as long as it takes, otherwise at most that many milliseconds
/// (0 gives up at the first wait). Safe to call from many threads on one client at once.
///
/// On failure `*response` is zeroed. Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`
/// (not a live client), `SHMBUS_ERR_INVALID_TOPIC` (also for a wildcard), `SHMBUS_ERR_NO_SERVER`
/// (nobody serves the topic; reported at once), `SHMBUS_ERR_TIMEOUT`, `SHMBUS_ERR_SERVER_GONE`
/// (the server stopped or died without answering; reported at once), `SHMBUS_ERR_ABANDONED`
/// (the server dropped the request unanswered), `SHMBUS_ERR_TOO_LARGE`, `SHMBUS_ERR_BROKER_GONE`
/// (the broker could not set the exchange up).
///
/// Thread safety: any thread; many threads may request on one client at once.
///
/// # Safety
///
/// `client` is NULL or a live client; `topic` is NULL or a NUL-terminated string; `data` is
/// valid for reading `len` bytes (or NULL with `len` 0); `response` is NULL or valid for writing
/// a `shmbus_response`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_request(
    client: *const shmbus_client,
    topic: *const c_char,
    data: *const c_void,
    len: usize,
    response: *mut shmbus_response,
    timeout_ms: i32,
) -> c_int {
    const F: &str = "shmbus_request";
    guard(|| {
        let out = out_ptr(F, "response", response)?;
        // SAFETY: `response` is non-NULL and writable by the caller's contract.
        unsafe { out.write(EMPTY_RESPONSE) };
        // SAFETY: NULL or a live client, by the caller's contract.
        let client = unsafe { client_arg(F, client)? };
        // SAFETY: NULL or NUL-terminated, by the caller's contract.
        let topic = unsafe { str_arg(F, "topic", topic, SHMBUS_ERR_INVALID_TOPIC)? };
        // SAFETY: valid for `len` bytes by the caller's contract.
        let payload = unsafe { bytes_arg(F, data.cast(), len)? };
        let bus = &client.bus;
        let answer = match Wait::from_ms(timeout_ms) {
            Wait::Forever => bus.request(topic, payload),
            Wait::Never => bus.request_timeout(topic, payload, std::time::Duration::ZERO),
            Wait::For(d) => bus.request_timeout(topic, payload, d),
        }?;
        let answer = Box::new(answer);
        let view = shmbus_response {
            data: answer.payload().as_ptr().cast(),
            len: answer.len(),
            _owner: Box::into_raw(answer).cast(),
        };
        // SAFETY: as above.
        unsafe { out.write(view) };
        Ok(())
    })
}

const EMPTY_RESPONSE: shmbus_response = shmbus_response {
    data: std::ptr::null(),
    len: 0,
    _owner: std::ptr::null_mut(),
};

/// Releases a response from `shmbus_request`: its pointers become invalid and the struct is
/// zeroed. Releasing a zeroed struct does nothing and succeeds.
///
/// Errors: `SHMBUS_ERR_NULL`.
///
/// Thread safety: any thread (one at a time per struct).
///
/// # Safety
///
/// `response` is NULL or valid for reading and writing a `shmbus_response` that is zeroed or
/// was filled by `shmbus_request` and not released since (a copy of a released one is not
/// detected).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_response_release(response: *mut shmbus_response) -> c_int {
    const F: &str = "shmbus_response_release";
    guard(|| {
        let mut out = out_ptr(F, "response", response)?;
        // SAFETY: non-NULL, valid for reading and writing, by the caller's contract.
        let view = unsafe { out.as_mut() };
        let owner = std::mem::replace(view, EMPTY_RESPONSE)._owner;
        if !owner.is_null() {
            // SAFETY: made by `Box::into_raw` in `shmbus_request` and not released since, by
            // the caller's contract.
            drop(unsafe { Box::from_raw(owner.cast::<Response>()) });
        }
        Ok(())
    })
}

/// Serves `topic` (an exact topic, no wildcards): only this server receives its requests until
/// `shmbus_server_free` (or this process ends). Another server of the topic gets
/// `SHMBUS_ERR_ALREADY_SERVED`. Receive requests with `shmbus_serve_recv`.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live client),
/// `SHMBUS_ERR_INVALID_TOPIC` (also for a wildcard), `SHMBUS_ERR_ALREADY_SERVED`, and those of
/// `shmbus_subscribe`.
///
/// Thread safety: any thread.
///
/// # Safety
///
/// `client` is NULL or a live client; `topic` is NULL or a NUL-terminated string; `server_out`
/// is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_serve(
    client: *const shmbus_client,
    topic: *const c_char,
    server_out: *mut *mut shmbus_server,
) -> c_int {
    const F: &str = "shmbus_serve";
    guard(|| {
        let out = out_ptr(F, "server_out", server_out)?;
        // SAFETY: `server_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live client, by the caller's contract.
        let client = unsafe { client_arg(F, client)? };
        // SAFETY: NULL or NUL-terminated, by the caller's contract.
        let topic = unsafe { str_arg(F, "topic", topic, SHMBUS_ERR_INVALID_TOPIC)? };
        let server = client.bus.serve(topic).map_err(|e| match e {
            shmbus::ServeError::Attach(e) => Error::from(e),
            e => Error::new(SHMBUS_ERR_ALREADY_SERVED, e.to_string()),
        })?;
        let handle = Box::new(shmbus_server {
            tag: shmbus_server::TAG,
            server,
        });
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Stops serving and frees the server. Requests still unanswered fail at their requesters with
/// `SHMBUS_ERR_SERVER_GONE`; requests received and not yet answered stay valid, and may still be
/// released. NULL does nothing.
///
/// Thread safety: one thread at a time per server.
///
/// # Safety
///
/// `server` is NULL or a live server, not used by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_server_free(server: *mut shmbus_server) {
    guard_void(|| {
        // SAFETY: NULL or a live server, by the caller's contract.
        if unsafe { handle_mut("shmbus_server_free", "server", server) }.is_err() {
            return;
        }
        // SAFETY: a live server made by `Box::into_raw`, given up by the caller here; the tag is
        // cleared first so that a second free is noticed (best effort).
        unsafe {
            (*server).tag = 0;
            drop(Box::from_raw(server));
        }
    });
}

/// How `shmbus_serve_recv` waits: `SHMBUS_WAIT_SPIN_THEN_PARK` (the default, polling `spin_us`
/// microseconds first; 0 means 50), `SHMBUS_WAIT_BUSY_SPIN` or `SHMBUS_WAIT_PARK`.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: one thread at a time per server.
///
/// # Safety
///
/// `server` is NULL or a live server, not used by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_server_set_wait(
    server: *mut shmbus_server,
    wait: u32,
    spin_us: u32,
) -> c_int {
    const F: &str = "shmbus_server_set_wait";
    guard(|| {
        // SAFETY: NULL or a live server used by this thread only, by the caller's contract.
        let server = unsafe { handle_mut(F, "server", server)? };
        server
            .server
            .set_wait_strategy(wait_strategy(F, wait, spin_us)?);
        Ok(())
    })
}

const EMPTY_REQUEST: shmbus_incoming_request = shmbus_incoming_request {
    data: std::ptr::null(),
    len: 0,
    _owner: std::ptr::null_mut(),
};

/// Receives the next request, which `*request` then describes (zero copy: a view into the
/// server's request ring). Answer it with `shmbus_reply` or `shmbus_reply_with`, or release it
/// unanswered with `shmbus_incoming_release` (its requester then gets `SHMBUS_ERR_ABANDONED`);
/// requests may be held and answered in any order, from any thread.
///
/// `timeout_ms` as for `shmbus_recv`. On failure `*request` is zeroed. Errors: `SHMBUS_ERR_NULL`,
/// `SHMBUS_ERR_INVALID_ARGUMENT`, `SHMBUS_ERR_TIMEOUT`, `SHMBUS_ERR_LAGGED` /
/// `SHMBUS_ERR_CORRUPT` (requests were lost or a faulty requester wrote a bad one; call again),
/// `SHMBUS_ERR_STATE` (as many requests are held as the server may hold; answer some).
///
/// Thread safety: one thread at a time per server.
///
/// # Safety
///
/// `server` is NULL or a live server, not used by another thread meanwhile; `request` is NULL or
/// valid for writing a `shmbus_incoming_request`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_serve_recv(
    server: *mut shmbus_server,
    request: *mut shmbus_incoming_request,
    timeout_ms: i32,
) -> c_int {
    const F: &str = "shmbus_serve_recv";
    guard(|| {
        let out = out_ptr(F, "request", request)?;
        // SAFETY: `request` is non-NULL and writable by the caller's contract.
        unsafe { out.write(EMPTY_REQUEST) };
        // SAFETY: NULL or a live server used by this thread only, by the caller's contract.
        let server = unsafe { handle_mut(F, "server", server)? };
        let received = match Wait::from_ms(timeout_ms) {
            Wait::Forever => server.server.recv().map_err(RecvTimeoutError::Failed),
            Wait::Never => server.server.try_recv().map_err(|e| match e {
                shmbus::TryRecvError::Failed(e) => RecvTimeoutError::Failed(e),
                _ => RecvTimeoutError::Timeout,
            }),
            Wait::For(d) => server.server.recv_timeout(d),
        };
        let owned = match received {
            Ok(request) => Box::new(request.detach()),
            Err(RecvTimeoutError::Failed(e)) => return Err(e.into()),
            Err(e) => return Err(Error::new(SHMBUS_ERR_TIMEOUT, format!("{F}: {e}"))),
        };
        let view = shmbus_incoming_request {
            data: owned.payload().as_ptr().cast(),
            len: owned.payload().len(),
            _owner: Box::into_raw(owned).cast(),
        };
        // SAFETY: as above.
        unsafe { out.write(view) };
        Ok(())
    })
}

/// Takes the request a `shmbus_incoming_request` struct owns, zeroing the struct.
///
/// # Safety
///
/// `request` is non-NULL, valid for reading and writing, and zeroed or filled by
/// `shmbus_serve_recv` and not answered or released since.
unsafe fn take_request(
    function: &str,
    request: *mut shmbus_incoming_request,
) -> Result<Box<OwnedRequest>, Error> {
    let mut view = out_ptr(function, "request", request)?;
    // SAFETY: non-NULL, valid for reading and writing, by the caller's contract.
    let owner = std::mem::replace(unsafe { view.as_mut() }, EMPTY_REQUEST)._owner;
    if owner.is_null() {
        return Err(Error::state(
            function,
            "the request was answered or released already (or never received)",
        ));
    }
    // SAFETY: made by `Box::into_raw` in `shmbus_serve_recv` and not taken since, by the
    // caller's contract.
    Ok(unsafe { Box::from_raw(owner.cast::<OwnedRequest>()) })
}

/// Answers a request with `len` bytes at `data` (copied into the requester's inbox); the request
/// is then released and the struct zeroed (also on failure).
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_STATE` (answered or released already),
/// `SHMBUS_ERR_TOO_LARGE`, `SHMBUS_ERR_REQUESTER_GONE` (the requester's process ended or it
/// stopped waiting: the answer goes nowhere), `SHMBUS_ERR_BROKER_GONE`.
///
/// Thread safety: any thread (one at a time per struct).
///
/// # Safety
///
/// `request` is NULL or valid for reading and writing a `shmbus_incoming_request` filled by
/// `shmbus_serve_recv` (or zeroed); `data` is valid for reading `len` bytes (or NULL with `len`
/// 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_reply(
    request: *mut shmbus_incoming_request,
    data: *const c_void,
    len: usize,
) -> c_int {
    const F: &str = "shmbus_reply";
    guard(|| {
        // SAFETY: as the caller's contract says.
        let payload = unsafe { bytes_arg(F, data.cast(), len)? };
        // SAFETY: as the caller's contract says.
        let request = unsafe { take_request(F, request)? };
        request.respond(payload)?;
        Ok(())
    })
}

/// Answers a request in place: `fill(ctx, request_data, request_len, buf, len)` writes the
/// response into `buf` — `len` bytes of the requester's inbox in shared memory — reading the
/// request in place, and returns how many bytes it wrote (at most `len`). Zero copies either
/// way. The request is then released and the struct zeroed (also on failure).
///
/// Errors: those of `shmbus_reply`, and `SHMBUS_ERR_NULL` for a NULL `fill`.
///
/// Thread safety: any thread (one at a time per struct).
///
/// # Safety
///
/// As for `shmbus_reply`; `fill` is a function that writes at most `len` bytes into `buf`,
/// reads at most `request_len` bytes of `request_data`, and does not unwind.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_reply_with(
    request: *mut shmbus_incoming_request,
    len: usize,
    fill: shmbus_reply_fn,
    ctx: *mut c_void,
) -> c_int {
    const F: &str = "shmbus_reply_with";
    guard(|| {
        let fill = fill.ok_or_else(|| Error::null(F, "fill"))?;
        // SAFETY: as the caller's contract says.
        let request = unsafe { take_request(F, request)? };
        request.respond_with(len, |req, buf| {
            // SAFETY: `fill` is valid by the caller's contract; `req` and `buf` are valid for
            // their lengths for the duration of the call.
            let used = unsafe {
                fill(
                    ctx,
                    req.as_ptr().cast(),
                    req.len(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            used.min(buf.len())
        })?;
        Ok(())
    })
}

/// Releases a request unanswered: its requester gets `SHMBUS_ERR_ABANDONED` (or
/// `RequestError::Abandoned`). The struct is zeroed; a zeroed struct does nothing and succeeds.
///
/// Errors: `SHMBUS_ERR_NULL`.
///
/// Thread safety: any thread (one at a time per struct).
///
/// # Safety
///
/// `request` is NULL or valid for reading and writing a `shmbus_incoming_request` filled by
/// `shmbus_serve_recv` (or zeroed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_incoming_release(request: *mut shmbus_incoming_request) -> c_int {
    const F: &str = "shmbus_incoming_release";
    guard(|| {
        let view = out_ptr(F, "request", request)?;
        // SAFETY: non-NULL and valid for reading by the caller's contract.
        if unsafe { view.as_ref() }._owner.is_null() {
            return Ok(());
        }
        // SAFETY: as the caller's contract says.
        drop(unsafe { take_request(F, request)? });
        Ok(())
    })
}
