//! Wait strategies: busy-spin, spin-then-park, park.
//!
//! A [`Waiter`] turns a strategy and a deadline into a sequence of decisions for a poll loop:
//! poll again now, park until some instant, or give up. Parking itself is the caller's business —
//! readers sleep on their doorbell ([`ReaderSet::park`](crate::ReaderSet::park)), writers on
//! their ring's space word — so one policy serves every loop and knows nothing of either.

use std::time::{Duration, Instant};

/// Empty polls between two looks at the clock while spinning (a clock read costs more than a
/// poll).
const SPINS_PER_CLOCK_CHECK: u32 = 64;

/// A yield that kept the thread off the CPU this long gave the CPU to a process that uses whole
/// time slices (a CPU-bound one), not to a peer that runs briefly and sleeps again. Measured on
/// 2 vCPUs: beside one busy loop per CPU, yields of a ping-pong took 3–10 ms; among five
/// spin-then-park processes of a fan-out, under 100 µs, and one in 10,000 over 700 µs (with 17
/// processes, a few in a row over 1 ms).
const YIELD_TOO_LONG: Duration = Duration::from_micros(1500);

/// After this many such yields in a row...
const LONG_YIELDS_TO_STOP: u32 = 4;

/// ...the thread spins without yielding for this long.
const NO_YIELD_FOR: Duration = Duration::from_secs(1);

thread_local! {
    /// Yields in a row that took [`YIELD_TOO_LONG`] or more.
    static LONG_YIELDS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Until when the thread spins without yielding.
    static NO_YIELD_UNTIL: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// While spin-then-park spins: lets a thread that shares this CPU run — say, the next of many
/// subscribers a publish woke on a small machine, which runs briefly and parks again — instead of
/// spinning it out. But a yield to a CPU-bound process costs it a whole time slice; once
/// [`LONG_YIELDS_TO_STOP`] yields in a row did, the thread stops yielding for [`NO_YIELD_FOR`],
/// so that a ping-pong beside busy processes waits nanoseconds most of the time rather than a
/// time slice per message.
fn yield_unless_costly(now: Instant) {
    if yields_allowed(now) {
        std::thread::yield_now();
        note_yield(now, Instant::now());
    }
}

/// Whether this thread's spinning yields at `now`.
fn yields_allowed(now: Instant) -> bool {
    NO_YIELD_UNTIL.get().is_none_or(|until| now >= until)
}

/// Takes note of a yield from `before` to `after`.
fn note_yield(before: Instant, after: Instant) {
    if after.saturating_duration_since(before) < YIELD_TOO_LONG {
        LONG_YIELDS.set(0);
        return;
    }
    LONG_YIELDS.set(LONG_YIELDS.get() + 1);
    if LONG_YIELDS.get() >= LONG_YIELDS_TO_STOP {
        LONG_YIELDS.set(0);
        NO_YIELD_UNTIL.set(Some(after + NO_YIELD_FOR));
    }
}

/// How a blocking call waits when there is nothing to do yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Poll continuously: lowest latency, one core at 100 %. No system calls.
    BusySpin,
    /// Poll for `spin`, then sleep on a futex until woken. The default: near busy-spin latency
    /// under load, no CPU when idle. While polling it yields the CPU every 64 empty polls, so
    /// that threads sharing the CPU are not starved for the whole `spin` — except for a second
    /// after yields gave the CPU to a CPU-bound process for whole time slices.
    SpinThenPark {
        /// How long to poll before parking.
        spin: Duration,
    },
    /// Sleep on a futex whenever there is nothing to do.
    Park,
}

impl Default for WaitStrategy {
    /// Spin for 50 µs, then park.
    fn default() -> Self {
        WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(50),
        }
    }
}

/// What a poll loop should do after a poll that found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Poll again now.
    Retry,
    /// Park until woken, or until the instant if one is given, then poll again.
    Park(Option<Instant>),
    /// The deadline passed.
    TimedOut,
}

/// How long a blocking call may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// As long as it takes.
    Never,
    /// For this long, counted from the first time there was nothing to do (so a call that finds
    /// work at once reads no clock).
    After(Duration),
    /// Until this instant.
    At(Instant),
}

impl From<Option<Instant>> for Deadline {
    /// `None` is [`Deadline::Never`].
    fn from(at: Option<Instant>) -> Deadline {
        at.map_or(Deadline::Never, Deadline::At)
    }
}

/// Drives one blocking call's wait strategy.
///
/// The clock is read only once the first poll came back empty, and then only every
/// 64 spins, so a call that finds work at once costs no clock read.
#[derive(Debug)]
pub struct Waiter {
    strategy: WaitStrategy,
    limit: Deadline,
    /// Set at the first empty poll: `(deadline, spin until)`.
    started: Option<(Option<Instant>, Option<Instant>)>,
    spins: u32,
}

impl Waiter {
    /// Starts waiting with `strategy` until `limit`.
    pub fn new(strategy: WaitStrategy, limit: Deadline) -> Waiter {
        Waiter {
            strategy,
            limit,
            started: None,
            spins: 0,
        }
    }

    /// Decides what to do after an empty poll.
    pub fn idle(&mut self) -> Idle {
        let (deadline, spin_until) = *self.started.get_or_insert_with(|| {
            let now = Instant::now();
            let spin_until = match self.strategy {
                WaitStrategy::BusySpin => None,
                WaitStrategy::SpinThenPark { spin } => Some(now + spin),
                WaitStrategy::Park => Some(now),
            };
            let deadline = match self.limit {
                Deadline::Never => None,
                Deadline::After(t) => Some(now + t),
                Deadline::At(at) => Some(at),
            };
            (deadline, spin_until)
        });
        let spinning = match self.strategy {
            WaitStrategy::BusySpin => true,
            WaitStrategy::SpinThenPark { .. } => spin_until.is_some(),
            WaitStrategy::Park => false,
        };
        if spinning {
            std::hint::spin_loop();
            self.spins = self.spins.wrapping_add(1);
            if self.spins % SPINS_PER_CLOCK_CHECK != 0 {
                return Idle::Retry;
            }
        }
        if deadline.is_none() && self.strategy == WaitStrategy::BusySpin {
            return Idle::Retry;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Idle::TimedOut;
        }
        if self.strategy == WaitStrategy::BusySpin {
            return Idle::Retry;
        }
        if spin_until.is_some_and(|s| now < s) {
            // One system call per 64 empty polls, while spinning only; returns at once if no
            // other thread waits for this CPU.
            yield_unless_costly(now);
            return Idle::Retry;
        }
        self.started = Some((deadline, None));
        Idle::Park(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn park_strategy_parks_at_once_and_times_out() {
        let mut w = Waiter::new(
            WaitStrategy::Park,
            Deadline::After(Duration::from_millis(5)),
        );
        assert!(matches!(w.idle(), Idle::Park(Some(_))));
        std::thread::sleep(Duration::from_millis(6));
        assert_eq!(w.idle(), Idle::TimedOut);
    }

    #[test]
    fn spin_then_park_spins_first() {
        let mut w = Waiter::new(
            WaitStrategy::SpinThenPark {
                spin: Duration::from_secs(60),
            },
            Deadline::Never,
        );
        for _ in 0..1000 {
            assert_eq!(w.idle(), Idle::Retry);
        }
        let mut w = Waiter::new(
            WaitStrategy::SpinThenPark {
                spin: Duration::ZERO,
            },
            Deadline::Never,
        );
        let first_park = (0..=SPINS_PER_CLOCK_CHECK)
            .map(|_| w.idle())
            .position(|i| i != Idle::Retry);
        assert_eq!(first_park, Some(SPINS_PER_CLOCK_CHECK as usize - 1));
        assert_eq!(w.idle(), Idle::Park(None), "once parking, keeps parking");
    }

    #[test]
    fn yields_stop_for_a_while_after_long_ones_in_a_row_only() {
        let t0 = Instant::now();
        let long = t0 + YIELD_TOO_LONG;
        // Long yields broken by a short one do not count as a row.
        for _ in 0..LONG_YIELDS_TO_STOP - 1 {
            note_yield(t0, long);
        }
        note_yield(t0, t0);
        for _ in 0..LONG_YIELDS_TO_STOP - 1 {
            note_yield(t0, long);
        }
        assert!(yields_allowed(long));
        note_yield(t0, long);
        assert!(!yields_allowed(long));
        assert!(!yields_allowed(long + NO_YIELD_FOR / 2));
        assert!(yields_allowed(long + NO_YIELD_FOR));
    }

    #[test]
    fn busy_spin_never_parks_and_honours_the_timeout() {
        let mut w = Waiter::new(
            WaitStrategy::BusySpin,
            Deadline::After(Duration::from_millis(2)),
        );
        let start = Instant::now();
        loop {
            match w.idle() {
                Idle::Retry => continue,
                Idle::Park(_) => panic!("busy-spin parked"),
                Idle::TimedOut => break,
            }
        }
        assert!(start.elapsed() >= Duration::from_millis(2));
    }
}
