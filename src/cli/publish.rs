//! `shmbus pub`.

use std::io::BufRead;
use std::time::{Duration, Instant};

use super::{BusArg, Exit, Failure, Outcome};

/// Arguments of `shmbus pub`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// The topic to publish on.
    topic: String,
    /// Messages, one per argument; without any, each line of stdin is one message.
    messages: Vec<String>,
    /// Send each message this many times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Send at most this many messages per second.
    #[arg(long, value_name = "HZ")]
    rate: Option<f64>,
}

/// Publishes and exits once every message is in the ring.
pub fn run(args: Args) -> Outcome {
    let interval = match args.rate {
        None => None,
        Some(hz) if hz.is_finite() && hz > 0.0 => Some(Duration::from_secs_f64(1.0 / hz)),
        Some(hz) => {
            return Err(Failure::new(
                Exit::Usage,
                format!("--rate must be a positive number, not {hz}"),
            ));
        }
    };
    let bus = args.bus.connect()?;
    let mut publisher = bus.publisher(&args.topic)?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut send = |payload: &[u8]| -> Outcome {
        for _ in 0..args.count {
            if let Some(interval) = interval {
                let due = start + interval.saturating_mul(u32::try_from(sent).unwrap_or(u32::MAX));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            publisher.publish(payload).map_err(Failure::error)?;
            sent += 1;
        }
        Ok(())
    };
    if args.messages.is_empty() {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| Failure::error(format!("read stdin: {e}")))?;
            send(line.as_bytes())?;
        }
    } else {
        for message in &args.messages {
            send(message.as_bytes())?;
        }
    }
    Ok(())
}
