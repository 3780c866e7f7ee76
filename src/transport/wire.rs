//! [`Wire`]: one TCP connection, plain or TLS, carrying frames of the remote protocol both ways.
//!
//! Any number of threads send ([`Wire::send`]); one thread receives ([`WireReader::next`]) and,
//! while it waits for input, also moves queued output to the socket. The socket is non-blocking:
//! a sender writes straight to it (no thread hop on the way out), and what the socket does not
//! take is queued, up to [`OUT_LIMIT`] bytes; beyond that, senders wait for room. So a peer that
//! stops reading holds its senders back — a publisher is backpressured, a gateway's forwarding
//! thread stops reading its ring — and nothing is buffered without bound. Frames never interleave:
//! a frame, once begun, is finished before the next.
//!
//! A client's wire also coalesces ([`Wire::coalesce`]): a sender that comes while the wire is busy
//! leaves its frame in an [`Outbox`] that a flusher thread writes in batches.
//!
//! Input is bounded too: the reader holds at most one frame of the limit in force plus one read's
//! worth. A connection is closed, alone, when its peer sends a frame that is too long or
//! malformed, when it sends no complete frame for the idle timeout (a peer that trickles bytes or
//! vanished without a FIN), or when the socket fails. Quiet connections send [`Frame::Ping`] every
//! keepalive interval, and TCP keepalive is on as well.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::outbox::{Outbox, Route};
use crate::protocol::remote::{self, Frame, LENGTH_PREFIX};
use crate::sync::lock;

/// Most output bytes queued for the socket before senders wait.
pub(crate) const OUT_LIMIT: usize = 512 * 1024;

/// How often a sender waiting for room tries the socket itself.
const RETRY: Duration = Duration::from_millis(5);

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// How a wire's timing is set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// Close when no complete frame arrived for this long.
    pub(crate) idle: Duration,
    /// Send a ping after this long without sending anything.
    pub(crate) keepalive: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            idle: Duration::from_secs(30),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The wire is closed, for this reason.
    Closed(String),
    /// No room before the deadline; nothing of the frame was sent.
    Timeout,
}

/// The sending side of a connection, shared by every thread that sends on it.
pub(crate) struct Wire {
    io: Mutex<Io>,
    /// Signalled when queued output went out, or the wire closed.
    room: Condvar,
    /// The frame being sent: held for the whole of one frame, so frames never interleave.
    scratch: Mutex<Vec<u8>>,
    /// Wakes the reader's poll: output is queued, or the wire closed.
    wake: UnixStream,
    /// Who is at the other end, for logs.
    peer: String,
    /// Frames left for the flusher thread, once [`Wire::coalesce`] started it.
    outbox: OnceLock<Arc<Outbox>>,
    /// Whether the wire is closed (its reason is in [`Io`]), read without its lock.
    is_closed: AtomicBool,
}

/// The socket and what is queued for it.
struct Io {
    stream: TcpStream,
    tls: Option<Box<rustls::Connection>>,
    /// Plain TCP only: bytes the socket did not take yet (TLS queues in its session, bounded by
    /// its buffer limit).
    queued: Vec<u8>,
    closed: Option<String>,
    last_sent: Instant,
}

/// The receiving side of a connection: one thread's.
pub(crate) struct WireReader {
    wire: Arc<Wire>,
    stream: TcpStream,
    woken: UnixStream,
    /// Whether the wire speaks TLS (its session is in the shared [`Io`]).
    tls: bool,
    /// Bytes read: those of `start..end` are not handed out yet; the rest is room for the next
    /// reads, zeroed once when it was first allocated (not at every read).
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
    /// Bytes of `buf` read so far.
    end: usize,
    /// The largest frame accepted now.
    limit: usize,
    timing: Timing,
    last_frame: Instant,
}

impl Wire {
    /// Takes over a connected socket (made non-blocking here), with a TLS session or none.
    /// Frames are limited to `limit` bytes until [`WireReader::set_limit`].
    pub(crate) fn establish(
        stream: TcpStream,
        tls: Option<rustls::Connection>,
        limit: usize,
        timing: Timing,
    ) -> io::Result<(Arc<Wire>, WireReader)> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tune_keepalive(&stream);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        let reader_stream = stream.try_clone()?;
        let is_tls = tls.is_some();
        let tls = tls.map(|mut session| {
            session.set_buffer_limit(Some(OUT_LIMIT));
            Box::new(session)
        });
        let now = Instant::now();
        let wire = Arc::new(Wire {
            io: Mutex::new(Io {
                stream,
                tls,
                queued: Vec::new(),
                closed: None,
                last_sent: now,
            }),
            room: Condvar::new(),
            scratch: Mutex::new(Vec::new()),
            wake,
            peer,
            outbox: OnceLock::new(),
            is_closed: AtomicBool::new(false),
        });
        let reader = WireReader {
            wire: Arc::clone(&wire),
            stream: reader_stream,
            woken,
            tls: is_tls,
            buf: Vec::new(),
            start: 0,
            end: 0,
            limit,
            timing,
            last_frame: now,
        };
        Ok((wire, reader))
    }

    /// The certificate the peer presented first (its own), in DER: TLS only, once the
    /// handshake is through.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        let io = lock(&self.io);
        let certificates = io.tls.as_ref()?.peer_certificates()?;
        certificates.first().map(|c| c.as_ref().to_vec())
    }

    /// Coalesces this wire's output from now on (see [`Outbox`]): starts its flusher thread,
    /// which ends when the wire closes or goes.
    pub(crate) fn coalesce(self: &Arc<Self>) -> io::Result<()> {
        let outbox = Arc::new(Outbox::new());
        if self.outbox.set(Arc::clone(&outbox)).is_err() {
            return Ok(()); // it coalesces already
        }
        let wire = Arc::downgrade(self);
        let flusher = std::thread::Builder::new()
            .name("shmbus-flush".into())
            .spawn(move || flush(&wire, &outbox));
        if let Err(e) = flusher {
            self.close(format!("cannot start the flusher: {e}"));
            return Err(e);
        }
        Ok(())
    }

    /// Sends `frame`, waiting for room as long as it takes.
    pub(crate) fn send(&self, frame: &Frame<'_>) -> Result<(), SendError> {
        self.send_by(frame, None)
    }

    /// Sends `frame`, waiting for room until `deadline` (`None`: as long as it takes). A frame
    /// of which some bytes went out is always finished, whatever the deadline. On a wire that
    /// coalesces, the frame may be left in its outbox, for the flusher to write.
    pub(crate) fn send_by(
        &self,
        frame: &Frame<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        self.send_with(&|out| remote::encode(frame, out), deadline)
    }

    /// Sends frames already encoded (each with its length prefix), as [`Wire::send_by`] sends
    /// one: a batch of messages costs one write.
    pub(crate) fn send_encoded(
        &self,
        frames: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        self.send_with(&|out| out.extend_from_slice(frames), deadline)
    }

    /// Sends the frames `encode` appends to a buffer, through the outbox if there is one.
    fn send_with(
        &self,
        encode: &dyn Fn(&mut Vec<u8>),
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        let Some(outbox) = self.outbox.get() else {
            return self.write_turn(encode, deadline);
        };
        match outbox.route(encode, deadline)? {
            Route::Left => Ok(()),
            Route::Direct => {
                let sent = self.write_turn(encode, deadline);
                outbox.wrote();
                sent
            }
        }
    }

    /// Writes the frames `encode` appends to the scratch buffer. The scratch lock is the
    /// sender's turn: frames never interleave.
    fn write_turn(
        &self,
        encode: &dyn Fn(&mut Vec<u8>),
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        let mut scratch = lock(&self.scratch);
        scratch.clear();
        encode(&mut scratch);
        self.push_all(&scratch, deadline)
    }

    /// Moves all of `scratch` out, waiting for room as [`Wire::send_by`] says; called with
    /// the sender's turn (the scratch lock) held.
    fn push_all(&self, scratch: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        let mut io = lock(&self.io);
        let mut sent = 0;
        loop {
            if let Some(reason) = &io.closed {
                return Err(SendError::Closed(reason.clone()));
            }
            match io.push(&scratch[sent..]) {
                Ok(n) => sent += n,
                Err(e) => {
                    self.shut(&mut io, format!("cannot write: {e}"));
                    return Err(SendError::Closed(format!("cannot write: {e}")));
                }
            }
            if io.has_queued() {
                // The reader's poll must watch for room now.
                self.nudge();
            }
            if sent == scratch.len() {
                io.last_sent = Instant::now();
                return Ok(());
            }
            // The reader signals room as it flushes; a sender also looks again every
            // `RETRY`, for when the reader is busy elsewhere.
            let wait = match deadline {
                Some(d) if sent == 0 => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SendError::Timeout);
                    }
                    left.min(RETRY)
                }
                _ => RETRY,
            };
            io = self
                .room
                .wait_timeout(io, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Closes the connection, giving `reason` to whoever sends or receives next.
    pub(crate) fn close(&self, reason: impl Into<String>) {
        let mut io = lock(&self.io);
        self.shut(&mut io, reason.into());
    }

    /// Closes the connection as [`Wire::close`] does, once what was sent is written: the frames
    /// left in the outbox and the bytes the socket has not taken yet, waiting for them until
    /// `deadline` at the latest (a peer that does not read loses them then).
    pub(crate) fn finish(&self, reason: impl Into<String>, deadline: Instant) {
        if let Some(outbox) = self.outbox.get() {
            outbox.drain(deadline);
        }
        let mut io = lock(&self.io);
        while io.closed.is_none() && io.has_queued() && Instant::now() < deadline {
            if io.flush().is_err() {
                break;
            }
            if io.has_queued() {
                io = self
                    .room
                    .wait_timeout(io, RETRY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        self.shut(&mut io, reason.into());
    }

    /// Why the wire is closed, if it is.
    pub(crate) fn closed(&self) -> Option<String> {
        lock(&self.io).closed.clone()
    }

    /// Whether the wire is closed: [`Wire::closed`] without taking the lock a write holds (for
    /// every message a client sends).
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire pairs with the Release store in `shut`: the reason is set before.
        self.is_closed.load(Ordering::Acquire)
    }

    fn shut(&self, io: &mut Io, reason: String) {
        if io.closed.is_none() {
            if let Some(tls) = &mut io.tls {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut io.stream);
            }
            let _ = io.stream.shutdown(Shutdown::Both);
            if let Some(outbox) = self.outbox.get() {
                outbox.close(&reason);
            }
            io.closed = Some(reason);
            // Release pairs with the Acquire load in `is_closed`.
            self.is_closed.store(true, Ordering::Release);
        }
        self.room.notify_all();
        self.nudge();
    }

    /// Wakes the reader's poll.
    fn nudge(&self) {
        // A full pipe already holds a wake-up; nothing else can fail here that matters.
        let _ = (&self.wake).write(&[1]);
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Ends the flusher, which holds the wire only while it writes.
        if let Some(outbox) = self.outbox.get() {
            outbox.close("the connection is gone");
        }
    }
}

/// The flusher of a wire that coalesces: writes what senders leave in `outbox`, a batch at a
/// time, until the wire closes or goes.
fn flush(wire: &Weak<Wire>, outbox: &Outbox) {
    let mut batch = Vec::new();
    while outbox.take(&mut batch) {
        let Some(wire) = wire.upgrade() else {
            return;
        };
        let sent = {
            let _turn = lock(&wire.scratch);
            wire.push_all(&batch, None)
        };
        batch.clear();
        outbox.wrote();
        if sent.is_err() {
            return; // closed, which closed the outbox
        }
    }
}

impl Io {
    /// Moves as much of `bytes` toward the socket as the bound allows; returns how many bytes
    /// were taken.
    fn push(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => {
                let taken = tls.writer().write(bytes)?;
                flush_tls(tls, &mut self.stream)?;
                Ok(taken)
            }
            None => {
                // Whoever sends moves what is queued too: the reader may be busy elsewhere.
                if !self.queued.is_empty() {
                    self.flush()?;
                }
                let mut taken = 0;
                if self.queued.is_empty() {
                    taken = write_some(&mut self.stream, bytes)?;
                }
                let room = OUT_LIMIT.saturating_sub(self.queued.len());
                let more = room.min(bytes.len() - taken);
                self.queued.extend_from_slice(&bytes[taken..taken + more]);
                Ok(taken + more)
            }
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => flush_tls(tls, &mut self.stream),
            None => {
                let n = write_some(&mut self.stream, &self.queued)?;
                self.queued.drain(..n);
                Ok(())
            }
        }
    }

    fn has_queued(&self) -> bool {
        match &self.tls {
            Some(tls) => tls.wants_write(),
            None => !self.queued.is_empty(),
        }
    }
}

/// Writes what the socket takes without blocking.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes the session's TLS records, as far as the socket takes them.
fn flush_tls(tls: &mut rustls::Connection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Turns TCP keepalive on, so that a peer gone without a FIN is noticed by the kernel too. Best
/// effort: the idle timeout notices it anyway.
fn tune_keepalive(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &10);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &5);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

impl WireReader {
    /// The sending side.
    pub(crate) fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }

    /// Accepts frames of up to `limit` bytes from now on.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Uses `timing` from now on (a handshake is given less time than an idle connection).
    pub(crate) fn set_timing(&mut self, timing: Timing) {
        self.timing = timing;
    }

    /// The next frame; answers pings on the way. Fails with the reason once the wire is closed
    /// (by either side, a timeout, or a bad frame — which also closes it).
    pub(crate) fn next(&mut self) -> Result<Frame<'_>, String> {
        let body = self.next_body()?;
        match remote::decode(&self.buf[body]) {
            Ok(frame) => Ok(frame),
            Err(e) => Err(self.fail(format!("bad frame: {e}"))),
        }
    }

    /// The byte range of the next frame's body (pings and pongs are handled here).
    fn next_body(&mut self) -> Result<Range<usize>, String> {
        loop {
            let have = &self.buf[self.start..self.end];
            if have.len() >= LENGTH_PREFIX {
                let prefix = have[..LENGTH_PREFIX].try_into().expect("four bytes");
                let len = match remote::frame_length(prefix, self.limit) {
                    Ok(len) => len,
                    Err(e) => return Err(self.fail(format!("bad frame: {e}"))),
                };
                if have.len() >= LENGTH_PREFIX + len {
                    let body = self.start + LENGTH_PREFIX..self.start + LENGTH_PREFIX + len;
                    self.start = body.end;
                    self.last_frame = Instant::now();
                    match remote::keepalive(&self.buf[body.clone()]) {
                        Some(Frame::Ping) => {
                            // A peer that does not read its pongs is caught by its own idle
                            // timeout; never wait for room here.
                            let _ = self.wire.send_by(&Frame::Pong, Some(Instant::now()));
                        }
                        Some(_) => {}
                        // Decoded once, by `next`.
                        None => return Ok(body),
                    }
                    continue;
                }
            }
            self.fill()?;
        }
    }

    /// Closes the wire for `reason` and returns it.
    fn fail(&self, reason: String) -> String {
        tracing::debug!(peer = %self.wire.peer, "closing: {reason}");
        self.wire.close(reason.clone());
        reason
    }

    /// Reads more bytes, waiting for them as long as the idle timeout allows, sending pings and
    /// moving queued output meanwhile.
    fn fill(&mut self) -> Result<(), String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            if let Some(reason) = self.wire.closed() {
                return Err(reason);
            }
            match self.read_some() {
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            }
            let now = Instant::now();
            let quiet = now.duration_since(self.last_frame);
            if quiet >= self.timing.idle {
                return Err(self.fail(format!(
                    "no complete frame for {:.1} s",
                    quiet.as_secs_f64()
                )));
            }
            let since_sent = now.duration_since(lock(&self.wire.io).last_sent);
            if since_sent >= self.timing.keepalive {
                let _ = self.wire.send_by(&Frame::Ping, Some(now));
            }
            let wait = (self.timing.idle - quiet)
                .min(self.timing.keepalive.saturating_sub(since_sent))
                .max(Duration::from_millis(1));
            self.wait(wait).map_err(|e| self.fail(e))?;
        }
    }

    /// Waits until the socket is readable, writable while output is queued, or the wire is
    /// nudged, for at most `wait`; moves queued output if it can.
    fn wait(&mut self, wait: Duration) -> Result<(), String> {
        let queued = lock(&self.wire.io).has_queued();
        let mut socket_events = PollFlags::POLLIN;
        if queued {
            socket_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(self.stream.as_fd(), socket_events),
            PollFd::new(self.woken.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let mut sink = [0u8; 64];
            while matches!((&self.woken).read(&mut sink), Ok(n) if n > 0) {}
        }
        let writable = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT));
        if writable || queued {
            let mut io = lock(&self.wire.io);
            if io.closed.is_none() {
                io.flush().map_err(|e| format!("cannot write: {e}"))?;
            }
            self.wire.room.notify_all();
        }
        Ok(())
    }

    /// Reads what is there without waiting; returns how many bytes of frames arrived.
    fn read_some(&mut self) -> Result<usize, String> {
        let old = self.end;
        let cap = self.limit + LENGTH_PREFIX + READ_CHUNK;
        if old >= cap {
            return Ok(0);
        }
        let want = READ_CHUNK.min(cap - old);
        if self.buf.len() < old + want {
            self.buf.resize(old + want, 0);
        }
        let result = self.read_into(old, want);
        self.end = old + *result.as_ref().unwrap_or(&0);
        result
    }

    fn read_into(&mut self, at: usize, want: usize) -> Result<usize, String> {
        let spare = &mut self.buf[at..at + want];
        if self.tls {
            let mut io = lock(&self.wire.io);
            let Io { stream, tls, .. } = &mut *io;
            let tls = tls.as_mut().expect("a TLS wire has a session");
            let read = read_tls_into(tls, stream, spare);
            // Records written on the way (the handshake, say) may have made room for senders.
            self.wire.room.notify_all();
            return read;
        }
        loop {
            match self.stream.read(spare) {
                Ok(0) => return Err("the peer closed the connection".into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read: {e}")),
            }
        }
    }
}

/// Reads plaintext out of a TLS session into `spare`, feeding it from the socket when it has none.
fn read_tls_into(
    tls: &mut rustls::Connection,
    stream: &mut TcpStream,
    spare: &mut [u8],
) -> Result<usize, String> {
    loop {
        match tls.reader().read(spare) {
            Ok(0) => return Err("the peer closed the TLS session".into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("TLS: {e}")),
        }
        match tls.read_tls(stream) {
            Ok(0) => return Err("the peer closed the connection".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read: {e}")),
        }
        let processed = tls.process_new_packets();
        // Handshake messages and alerts go out whether or not the records were good.
        let _ = flush_tls(tls, stream);
        if let Err(e) = processed {
            return Err(format!("TLS: {e}"));
        }
    }
}
