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

/// How a blocking call waits when there is nothing to do yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Poll continuously: lowest latency, one core at 100 %. No system calls.
    BusySpin,
    /// Poll for `spin`, then sleep on a futex until woken. The default: near busy-spin latency
    /// under load, no CPU when idle. While polling it yields the CPU every 64 empty polls, so
    /// that threads sharing the CPU are not starved for the whole `spin`.
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
            // Lets a thread that shares this CPU run (say, the next of many subscribers a
            // publish woke on a small machine) instead of spinning it out; returns at once if
            // none is waiting. One system call per 64 empty polls, while spinning only.
            std::thread::yield_now();
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
