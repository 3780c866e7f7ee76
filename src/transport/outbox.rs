//! [`Outbox`]: write coalescing, for a wire whose senders send many small frames in a row (a
//! client's publishers).
//!
//! A sender that finds the wire idle writes its frame to the socket itself, as on a wire without
//! an outbox: a lone message or a request pays no thread hop. A sender that comes while another
//! write is under way, while frames wait in the outbox, or within [`COALESCE_WITHIN`] of the last
//! write ends (a stream: the next message follows the last one's system call at once) appends its
//! frame to the outbox instead and returns. The wire's flusher thread writes everything that
//! accumulated in one write, and again as long as more comes. So a stream of small messages
//! costs one write per batch rather than one per message, and the last frame of a burst waits for
//! at most one thread wake-up and the write before it: no timer holds it back.
//!
//! The outbox is bounded ([`OUTBOX_LIMIT`] bytes, or one frame when it is empty): a sender beyond
//! it waits for the flusher to take the batch, as long as its deadline allows, and the flusher's
//! write waits for the socket as any write does. So a peer that stops reading holds senders back,
//! and nothing is buffered without bound on the way.
//!
//! Order: a frame goes straight to the socket only when nobody is writing and the outbox is
//! empty, so every frame its thread sent before is already written; any other frame is appended
//! behind those waiting. Writes never overlap: whoever writes (a direct sender or the flusher)
//! holds the turn, `writing`, until its bytes are all out.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::wire::SendError;
use crate::sync::lock;

/// A send this soon after the last write ended is taken for part of a stream, and left to the
/// flusher. Longer than the gap between two messages of a tight loop (well under a microsecond
/// after the previous write returns), shorter than a round trip even over loopback (raw TCP's is
/// about 8 µs busy-polling), so a request answered before the next is sent goes straight out.
pub(crate) const COALESCE_WITHIN: Duration = Duration::from_micros(10);

/// Most bytes of frames left in the outbox (one frame larger than that is let into an empty one).
pub(crate) const OUTBOX_LIMIT: usize = 256 * 1024;

/// Frames left for a wire's flusher thread, and the turn to write.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Signalled when frames wait for the flusher, or the outbox closes.
    work: Condvar,
    /// Signalled when a batch is taken (room for senders) or a write ends (for [`Outbox::drain`]).
    freed: Condvar,
}

struct State {
    /// Encoded frames, each with its length prefix, in the order they were sent.
    frames: Vec<u8>,
    /// Someone holds the turn to write: the flusher with a batch, or a sender with its frame.
    writing: bool,
    /// When the last write ended.
    last_write: Instant,
    /// The flusher sleeps on `work` and nobody woke it yet (so a sender must).
    flusher_waits: bool,
    /// Why the wire closed, once it has.
    closed: Option<String>,
}

/// Where a sender's frame goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Into the outbox: the flusher writes it.
    Left,
    /// To the socket, written by the sender, which holds the turn until [`Outbox::wrote`].
    Direct,
}

impl Outbox {
    /// An empty outbox whose wire has not written yet.
    pub(crate) fn new() -> Outbox {
        Outbox {
            state: Mutex::new(State {
                frames: Vec::new(),
                writing: false,
                // As if the last write ended long ago: the first frame goes straight out.
                last_write: Instant::now()
                    .checked_sub(COALESCE_WITHIN)
                    .unwrap_or_else(Instant::now),
                flusher_waits: false,
                closed: None,
            }),
            work: Condvar::new(),
            freed: Condvar::new(),
        }
    }

    /// Routes a frame, which `encode` appends to a buffer: into the outbox (encoded there), or
    /// back to the caller to write with the turn. Waits for room, until `deadline` (`None`: as
    /// long as it takes); fails if the wire closed, or with [`SendError::Timeout`], nothing
    /// queued, if no room came in time.
    pub(crate) fn route(
        &self,
        encode: &dyn Fn(&mut Vec<u8>),
        deadline: Option<Instant>,
    ) -> Result<Route, SendError> {
        let mut state = lock(&self.state);
        loop {
            if let Some(reason) = &state.closed {
                return Err(SendError::Closed(reason.clone()));
            }
            let busy = state.writing || !state.frames.is_empty();
            if !busy && state.last_write.elapsed() >= COALESCE_WITHIN {
                state.writing = true;
                return Ok(Route::Direct);
            }
            let before = state.frames.len();
            encode(&mut state.frames);
            if before == 0 || state.frames.len() <= OUTBOX_LIMIT {
                if !state.writing {
                    self.wake_flusher(&mut state);
                }
                return Ok(Route::Left);
            }
            // Full: wait for the flusher to take the batch.
            state.frames.truncate(before);
            state = match deadline {
                None => wait(&self.freed, state, None),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SendError::Timeout);
                    }
                    wait(&self.freed, state, Some(left))
                }
            };
        }
    }

    /// Gives back the turn, after a write of a sender routed [`Route::Direct`] or of the
    /// flusher; wakes the flusher if frames came meanwhile.
    pub(crate) fn wrote(&self) {
        let mut state = lock(&self.state);
        state.writing = false;
        state.last_write = Instant::now();
        if !state.frames.is_empty() {
            self.wake_flusher(&mut state);
        }
        drop(state);
        self.freed.notify_all();
    }

    /// Wakes the flusher if it sleeps, once: until it looks again, frames left meanwhile need
    /// no other wake-up (each would cost a system call).
    fn wake_flusher(&self, state: &mut State) {
        if state.flusher_waits {
            state.flusher_waits = false;
            self.work.notify_one();
        }
    }

    /// The flusher's next batch, moved into `batch` (empty): waits until frames are left and
    /// nobody writes, then takes the turn (given back with [`Outbox::wrote`]). `false` once the
    /// outbox is closed.
    pub(crate) fn take(&self, batch: &mut Vec<u8>) -> bool {
        let mut state = lock(&self.state);
        while state.closed.is_none() && (state.writing || state.frames.is_empty()) {
            state.flusher_waits = true;
            state = wait(&self.work, state, None);
        }
        state.flusher_waits = false;
        if state.closed.is_some() {
            return false;
        }
        state.writing = true;
        std::mem::swap(&mut state.frames, batch);
        drop(state);
        self.freed.notify_all();
        true
    }

    /// Waits until every frame left is written (or the outbox closed), until `deadline` at the
    /// latest; returns whether it is.
    pub(crate) fn drain(&self, deadline: Instant) -> bool {
        let state = lock(&self.state);
        let left = deadline.saturating_duration_since(Instant::now());
        let (state, _) = self
            .freed
            .wait_timeout_while(state, left, |state| !state.settled())
            .unwrap_or_else(PoisonError::into_inner);
        state.settled()
    }

    /// Closes the outbox for `reason`: what is left in it is dropped (as what is in flight is
    /// when a connection fails), senders are refused, the flusher ends.
    pub(crate) fn close(&self, reason: &str) {
        let mut state = lock(&self.state);
        if state.closed.is_none() {
            state.closed = Some(reason.to_string());
            state.frames = Vec::new();
        }
        drop(state);
        self.work.notify_all();
        self.freed.notify_all();
    }
}

impl State {
    /// Nothing is left to write, or nothing will be: the outbox is closed.
    fn settled(&self) -> bool {
        self.closed.is_some() || (!self.writing && self.frames.is_empty())
    }
}

/// Waits on `condvar`, at most `timeout` (`None`: until signalled).
fn wait<'a>(
    condvar: &Condvar,
    state: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    match timeout {
        None => condvar.wait(state).unwrap_or_else(PoisonError::into_inner),
        Some(t) => {
            condvar
                .wait_timeout(state, t)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(byte: u8) -> impl Fn(&mut Vec<u8>) {
        move |out: &mut Vec<u8>| out.push(byte)
    }

    #[test]
    fn an_idle_outbox_lets_the_sender_write_and_a_busy_one_keeps_the_frame() {
        let outbox = Outbox::new();
        assert_eq!(outbox.route(&frame(1), None), Ok(Route::Direct));
        // While that write is under way, frames are left, in order.
        assert_eq!(outbox.route(&frame(2), None), Ok(Route::Left));
        assert_eq!(outbox.route(&frame(3), None), Ok(Route::Left));
        outbox.wrote();
        let mut batch = Vec::new();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch, [2, 3]);
        // The flusher holds the turn: the next frame waits behind.
        assert_eq!(outbox.route(&frame(4), None), Ok(Route::Left));
        outbox.wrote();
        assert!(!outbox.drain(Instant::now()), "frame 4 is not written yet");
    }

    /// Senders on several threads and a flusher, writing to a shared "socket": every frame
    /// arrives once, each thread's in order, and the last ones are written with nobody sending
    /// after them (no wake-up of the flusher is lost).
    #[test]
    fn frames_of_many_threads_arrive_whole_and_in_order() {
        const THREADS: u8 = 4;
        const EACH: u32 = 20_000;
        let outbox = std::sync::Arc::new(Outbox::new());
        let socket = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let flusher = {
            let (outbox, socket) = (outbox.clone(), socket.clone());
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                while outbox.take(&mut batch) {
                    lock(&socket).extend_from_slice(&batch);
                    batch.clear();
                    outbox.wrote();
                }
            })
        };
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let (outbox, socket) = (outbox.clone(), socket.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let encode = |out: &mut Vec<u8>| {
                            out.push(t);
                            out.extend_from_slice(&i.to_le_bytes());
                        };
                        if outbox.route(&encode, None).unwrap() == Route::Direct {
                            encode(&mut lock(&socket));
                            outbox.wrote();
                        }
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        assert!(
            outbox.drain(Instant::now() + Duration::from_secs(60)),
            "the flusher writes what was left last"
        );
        outbox.close("done");
        flusher.join().unwrap();
        let mut next = [0u32; THREADS as usize];
        for frame in lock(&socket).chunks(5) {
            let t = usize::from(frame[0]);
            let i = u32::from_le_bytes(frame[1..].try_into().unwrap());
            assert_eq!(i, next[t], "thread {t}'s frames in order");
            next[t] += 1;
        }
        assert_eq!(next, [EACH; THREADS as usize]);
    }

    #[test]
    fn a_full_outbox_refuses_at_the_deadline_and_a_closed_one_at_once() {
        let outbox = Outbox::new();
        assert_eq!(outbox.route(&frame(0), None), Ok(Route::Direct));
        let big = |out: &mut Vec<u8>| out.resize(out.len() + OUTBOX_LIMIT, 7);
        assert_eq!(
            outbox.route(&big, None),
            Ok(Route::Left),
            "one frame always fits"
        );
        assert_eq!(
            outbox.route(&frame(1), Some(Instant::now())),
            Err(SendError::Timeout)
        );
        outbox.close("gone");
        assert_eq!(
            outbox.route(&frame(1), None),
            Err(SendError::Closed("gone".into()))
        );
        assert!(!outbox.take(&mut Vec::new()));
        assert!(outbox.drain(Instant::now()));
    }
}
