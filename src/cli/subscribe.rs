//! `shmbus sub`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmbus_shm::Deadline;

use crate::Subscriber;
use crate::client::pubsub::{Patience, Wait};

use crate::{RecvError, RecvTimeoutError};

use super::format::{Format, write};
use super::{BusArg, Exit, Failure, Outcome};

/// Arguments of `shmbus sub`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// Topic patterns (`*` is one fragment, `**` one or more).
    #[arg(required = true)]
    patterns: Vec<String>,
    /// Exit (0) after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit with code 4 if this many seconds pass first.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Also print the last N messages of each topic published before subscribing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    history: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Never hold publishers back (messages may be lost if this subscriber falls behind).
    #[arg(long)]
    lossy: bool,
}

/// Prints messages until the count is reached or the timeout passes.
pub fn run(args: Args) -> Outcome {
    let deadline = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s >= 0.0 => Some(Instant::now() + Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(Failure::new(
                Exit::Usage,
                format!("--timeout must be a number of seconds, not {s}"),
            ));
        }
    };
    // Installed before anything is printed: a signal that comes after `subscribed` stops cleanly.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Failure::error(format!("install signal handlers: {e}")))?;
    let bus = args.bus.connect()?;
    let (first, rest) = args
        .patterns
        .split_first()
        .ok_or_else(|| Failure::new(Exit::Usage, "give at least one pattern"))?;
    let mut builder = bus.subscriber(first).history(args.history);
    if args.lossy {
        builder = builder.lossy();
    }
    let mut subscriber = builder.create()?;
    let stop = stop_on(signals, &subscriber)?;
    eprintln!("subscribed {first}");
    for pattern in rest {
        subscriber.add_pattern(pattern)?;
        eprintln!("subscribed {pattern}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut received = 0u64;
    let mut losses = Losses::default();
    let patience = Patience::Until(deadline.map_or(Deadline::Never, Deadline::At));
    // Acquire pairs with the Release store of the signal thread.
    while args.count.is_none_or(|n| received < n) && !stop.load(Ordering::Acquire) {
        let sample = match subscriber.receive_or_stop(patience, || stop.load(Ordering::Acquire)) {
            Ok(sample) => Ok(sample),
            // SIGINT or SIGTERM: a clean stop, like `sub` of the C examples.
            Err(Wait::Stopped) => break,
            Err(Wait::Failed(e)) => Err(RecvTimeoutError::Failed(e)),
            Err(Wait::Timeout | Wait::Empty) => Err(RecvTimeoutError::Timeout),
        };
        match sample {
            Ok(sample) => {
                if write(&mut out, args.format, &sample).is_err() {
                    return Ok(()); // the reader of our stdout went away (e.g. `| head`)
                }
                received += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                losses.report();
                let message = timeout_message(received, args.count);
                return Err(Failure::new(Exit::Timeout, message));
            }
            // The broker went, or a broker is back: receiving goes on.
            Err(RecvTimeoutError::Failed(
                e @ (RecvError::BrokerLost
                | RecvError::Lagged {
                    missed: RecvError::MISSED_UNKNOWN,
                    ..
                }),
            )) => eprintln!("shmbus: {e}"),
            // Each concerns one topic; the others go on.
            Err(RecvTimeoutError::Failed(RecvError::Lagged { topic, missed })) => {
                losses.add(topic, missed);
            }
            Err(RecvTimeoutError::Failed(
                e @ (RecvError::Corrupt { .. } | RecvError::Unavailable { .. }),
            )) => eprintln!("shmbus: {e}"),
            Err(e) => return Err(Failure::error(e)),
        }
    }
    let _ = out.flush();
    losses.report();
    Ok(())
}

/// Messages lost by a lossy (or evicted) subscriber, reported at most once a second per run of
/// losses rather than once per gap (a flood can make thousands).
#[derive(Default)]
struct Losses {
    /// Per topic: messages lost and in how many gaps, since the last report.
    pending: std::collections::BTreeMap<crate::Topic, (u64, u64)>,
    last_report: Option<Instant>,
}

impl Losses {
    fn add(&mut self, topic: crate::Topic, missed: u64) {
        let entry = self.pending.entry(topic).or_default();
        entry.0 = entry.0.saturating_add(missed);
        entry.1 += 1;
        if self
            .last_report
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.report();
        }
    }

    /// Prints what was lost since the last report, one line per topic.
    fn report(&mut self) {
        for (topic, (missed, gaps)) in std::mem::take(&mut self.pending) {
            let gaps = if gaps == 1 {
                String::new()
            } else {
                format!(" (in {gaps} gaps)")
            };
            eprintln!(
                "shmbus: topic {topic:?}: {missed} messages were lost before they were read{gaps}"
            );
        }
        self.last_report = Some(Instant::now());
    }
}

/// A flag that `signals` set (waking `subscriber` to look at it).
fn stop_on(
    mut signals: signal_hook::iterator::Signals,
    subscriber: &Subscriber,
) -> Result<Arc<AtomicBool>, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, waker) = (Arc::clone(&stop), subscriber.waker());
    std::thread::Builder::new()
        .name("shmbus-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                // Release pairs with the Acquire load of the receive loop.
                flag.store(true, Ordering::Release);
                waker.wake();
            }
        })
        .map_err(|e| Failure::error(format!("start signal thread: {e}")))?;
    Ok(stop)
}

fn timeout_message(received: u64, count: Option<u64>) -> String {
    match count {
        Some(n) => format!("timed out after {received} of {n} messages"),
        None => format!("timed out after {received} messages"),
    }
}
