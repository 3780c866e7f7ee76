//! `shmbus broker`.

use std::time::Duration;

use crate::broker::{Broker, BrokerError};

use super::{BusArg, Exit, Failure, Outcome};

/// Arguments of `shmbus broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// Untether a subscriber that holds publishers back without reading for this long.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    evict_after: f64,
    /// Release a topic's ring after this long without publishers or subscribers.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    ring_idle: f64,
    /// Bytes of each topic's ring (a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    ring_capacity: u64,
    /// Largest message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_payload: u32,
}

/// Runs a broker until SIGINT or SIGTERM.
pub fn run(args: Args) -> Outcome {
    let address = args.bus.address()?;
    let socket = address.socket_path().ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!("a broker serves a local socket; {address} is not one"),
        )
    })?;
    if !(args.evict_after.is_finite() && args.evict_after > 0.0) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--evict-after must be a positive number of seconds, not {}",
                args.evict_after
            ),
        ));
    }
    if !(args.ring_idle.is_finite() && args.ring_idle >= 0.0) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--ring-idle must be a number of seconds, not {}",
                args.ring_idle
            ),
        ));
    }
    let broker = Broker::builder()
        .socket(socket)
        .ring_idle(Duration::from_secs_f64(args.ring_idle))
        .evict_after(Duration::from_secs_f64(args.evict_after))
        .ring_capacity(args.ring_capacity)
        .max_payload(args.max_payload)
        .bind()
        .map_err(|e| match e {
            BrokerError::Config(_) => Failure::new(Exit::Usage, e),
            other => Failure::error(other),
        })?;
    let handle = broker.handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Failure::error(format!("install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("shmbus-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                handle.stop();
            }
        })
        .map_err(|e| Failure::error(format!("start signal thread: {e}")))?;
    eprintln!("shmbus broker ready on {}", broker.socket_path().display());
    broker
        .run()
        .map_err(|e| Failure::error(format!("broker failed: {e}")))
}
