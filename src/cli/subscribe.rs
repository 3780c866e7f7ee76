//! `shmbus sub`.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::{RecvError, RecvTimeoutError};

use super::format::{Format, line};
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
    eprintln!("subscribed {first}");
    for pattern in rest {
        subscriber.add_pattern(pattern)?;
        eprintln!("subscribed {pattern}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut received = 0u64;
    while args.count.is_none_or(|n| received < n) {
        let sample = match deadline {
            Some(d) => subscriber.recv_deadline(d),
            None => subscriber.recv().map_err(RecvTimeoutError::Failed),
        };
        match sample {
            Ok(sample) => {
                if writeln!(out, "{}", line(args.format, &sample)).is_err() {
                    return Ok(()); // the reader of our stdout went away (e.g. `| head`)
                }
                received += 1;
            }
            Err(RecvTimeoutError::Timeout) => {
                let message = timeout_message(received, args.count);
                return Err(Failure::new(Exit::Timeout, message));
            }
            // Each concerns one topic; the others go on.
            Err(RecvTimeoutError::Failed(
                e @ (RecvError::Lagged { .. }
                | RecvError::Corrupt { .. }
                | RecvError::Unavailable { .. }),
            )) => eprintln!("shmbus: {e}"),
            Err(e) => return Err(Failure::error(e)),
        }
    }
    Ok(())
}

fn timeout_message(received: u64, count: Option<u64>) -> String {
    match count {
        Some(n) => format!("timed out after {received} of {n} messages"),
        None => format!("timed out after {received} messages"),
    }
}
