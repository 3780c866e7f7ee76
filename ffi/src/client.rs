//! `shmbus_client`: a connection to a bus.

use std::ffi::{CString, c_char, c_int};

use shmbus::Bus;

use crate::args::{Handle, handle_ref, out_ptr, str_arg};
use crate::error::{Error, SHMBUS_ERR_INVALID_ADDRESS, guard, guard_void};

/// A connection to a bus (opaque).
///
/// Thread safety: a client may be used by several threads at once (creating publishers and
/// subscribers, querying it). Publishers and subscribers keep the connection alive on their own,
/// so a client may be freed before them.
#[allow(non_camel_case_types)]
pub struct shmbus_client {
    tag: u64,
    pub(crate) bus: Bus,
    /// The address it reached, as text (for `shmbus_client_address`).
    address: CString,
}

impl Handle for shmbus_client {
    const TAG: u64 = u64::from_le_bytes(*b"shmbusCl");
    const NAME: &'static str = "shmbus_client";
    const TAG_OFFSET: usize = std::mem::offset_of!(shmbus_client, tag);
}

impl shmbus_client {
    fn new(bus: Bus) -> shmbus_client {
        let address = CString::new(bus.address().to_string().replace('\0', "")).unwrap_or_default();
        shmbus_client {
            tag: Self::TAG,
            bus,
            address,
        }
    }
}

/// Writes a new client to `client_out`, or NULL on failure.
fn connect_with(
    function: &str,
    client_out: *mut *mut shmbus_client,
    connect: impl FnOnce() -> Result<Bus, Error>,
) -> c_int {
    guard(|| {
        let out = out_ptr(function, "client_out", client_out)?;
        // SAFETY: `client_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let client = Box::new(shmbus_client::new(connect()?));
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(client)) };
        Ok(())
    })
}

/// Connects to the broker of a bus.
///
/// `address` is a bus name (`"default"` maps to `$XDG_RUNTIME_DIR/shmbus/default.sock`, else
/// `/tmp/shmbus-UID/default.sock`), a socket path (anything containing `/`), a broker's
/// gateway (`tcp://HOST:PORT`, or `tls://HOST:PORT` with the CA and client certificate named by
/// `SHMBUS_TLS_CA`, `SHMBUS_TLS_CERT` and `SHMBUS_TLS_KEY`), or NULL for the default bus: the
/// environment variable `SHMBUS_BUS` if set, else the name `default`. The string is only read
/// during the call.
///
/// On success `*client_out` receives a new client that the caller owns and frees with
/// `shmbus_client_free`; on failure `*client_out` is set to NULL.
///
/// Errors: `SHMBUS_ERR_NULL` (`client_out` is NULL), `SHMBUS_ERR_INVALID_ADDRESS`,
/// `SHMBUS_ERR_UNREACHABLE` (no broker there), `SHMBUS_ERR_REFUSED`, `SHMBUS_ERR_PROTOCOL`,
/// `SHMBUS_ERR_SHM`.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// `address` is NULL or a NUL-terminated string; `client_out` is NULL or valid for writing one
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_connect(
    address: *const c_char,
    client_out: *mut *mut shmbus_client,
) -> c_int {
    const F: &str = "shmbus_connect";
    connect_with(F, client_out, || {
        if address.is_null() {
            return Ok(Bus::connect_default()?);
        }
        // SAFETY: non-NULL and NUL-terminated by the caller's contract; read during the call.
        let address = unsafe { str_arg(F, "address", address, SHMBUS_ERR_INVALID_ADDRESS)? };
        Ok(Bus::connect(address)?)
    })
}

/// Starts a broker on a thread of this process, on a private socket, and connects to it: a bus
/// of the program's own, for tests and self-contained applications. Other processes can join it
/// at the address `shmbus_client_address` returns. The broker stops when this client and every
/// publisher and subscriber made from it are freed.
///
/// On success `*client_out` receives a new client (free it with `shmbus_client_free`); on
/// failure it is set to NULL.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_IO` (the broker could not start), and those of
/// `shmbus_connect`.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// `client_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_connect_embedded(client_out: *mut *mut shmbus_client) -> c_int {
    connect_with("shmbus_connect_embedded", client_out, || {
        Ok(Bus::embedded()?)
    })
}

/// Frees a client. NULL is ignored.
///
/// Publishers and subscribers made from it stay valid: they keep the connection open until the
/// last of them is freed.
///
/// Thread safety: no other thread may be using `client` during or after this call.
///
/// # Safety
///
/// `client` is NULL or a client from `shmbus_connect`/`shmbus_connect_embedded` not freed yet;
/// it must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_client_free(client: *mut shmbus_client) {
    guard_void(|| {
        // SAFETY: NULL or a live client by the caller's contract.
        if unsafe { handle_ref("shmbus_client_free", "client", client) }.is_err() {
            return;
        }
        // SAFETY: a live client created by `Box::into_raw`, owned by the caller, who gives it
        // up here. Clearing the tag first lets a second free be noticed (best effort).
        unsafe {
            (*client).tag = 0;
            drop(Box::from_raw(client));
        }
    });
}

/// The address of the bus the client is connected to: the broker's socket path for a local
/// bus. The string belongs to the client and stays valid until `shmbus_client_free`.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT` (not a live client).
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// `client` is NULL or a live client; `address_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_client_address(
    client: *const shmbus_client,
    address_out: *mut *const c_char,
) -> c_int {
    const F: &str = "shmbus_client_address";
    guard(|| {
        let out = out_ptr(F, "address_out", address_out)?;
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { handle_ref(F, "client", client)? };
        // SAFETY: `address_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(client.address.as_ptr()) };
        Ok(())
    })
}

/// Whether the broker is still connected: `*connected_out` is set to true or false. When it is
/// gone, publishers and subscribers already attached keep working, but new ones cannot be made
/// (`SHMBUS_ERR_BROKER_GONE`); connect again to continue.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// `client` is NULL or a live client; `connected_out` is NULL or valid for writing a `bool`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_client_is_connected(
    client: *const shmbus_client,
    connected_out: *mut bool,
) -> c_int {
    const F: &str = "shmbus_client_is_connected";
    guard(|| {
        let out = out_ptr(F, "connected_out", connected_out)?;
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { handle_ref(F, "client", client)? };
        // SAFETY: `connected_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(client.bus.is_connected()) };
        Ok(())
    })
}

/// The largest payload one message can carry on this bus, in bytes, into `*max_out`.
///
/// Errors: `SHMBUS_ERR_NULL`, `SHMBUS_ERR_INVALID_ARGUMENT`.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
///
/// `client` is NULL or a live client; `max_out` is NULL or valid for writing a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmbus_client_max_payload(
    client: *const shmbus_client,
    max_out: *mut usize,
) -> c_int {
    const F: &str = "shmbus_client_max_payload";
    guard(|| {
        let out = out_ptr(F, "max_out", max_out)?;
        // SAFETY: NULL or a live client by the caller's contract.
        let client = unsafe { handle_ref(F, "client", client)? };
        // SAFETY: `max_out` is non-NULL and writable by the caller's contract.
        unsafe { out.write(client.bus.max_payload()) };
        Ok(())
    })
}

/// Borrows the client a publisher or subscriber is made from.
///
/// # Safety
///
/// `client` is NULL or a live client that is not freed during `'a`.
pub(crate) unsafe fn client_arg<'a>(
    function: &str,
    client: *const shmbus_client,
) -> Result<&'a shmbus_client, Error> {
    // SAFETY: forwarded contract.
    unsafe { handle_ref(function, "client", client) }
}

// A client is used from several threads at once; the Rust `Bus` must allow that.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Bus>();
};
