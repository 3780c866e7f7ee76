//! `shmbus req`.

use std::io::Write;
use std::time::Duration;

use crate::RequestError;

use super::format::escape;
use super::{BusArg, Exit, Failure, Outcome};

/// Arguments of `shmbus req`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// The topic served (no wildcards).
    topic: String,
    /// The request's payload.
    message: String,
    /// Exit with code 4 if no (further) response comes within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

/// Sends one request and prints each response on its own line (escaped like `sub`'s payloads).
pub fn run(args: Args) -> Outcome {
    let timeout = args.timeout;
    if !(timeout.is_finite() && timeout >= 0.0) {
        return Err(Failure::new(
            Exit::Usage,
            format!("--timeout must be a number of seconds, not {timeout}"),
        ));
    }
    let bus = args.bus.connect()?;
    let timeout = Duration::from_secs_f64(timeout);
    let responses = bus
        .request_stream_timeout(&args.topic, args.message.as_bytes(), timeout)
        .map_err(failure)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for response in responses {
        let response = response.map_err(failure)?;
        if writeln!(out, "{}", escape(response.payload())).is_err() {
            return Ok(()); // the reader of our stdout went away
        }
    }
    Ok(())
}

/// The exit code and line for a failed request.
fn failure(e: RequestError) -> Failure {
    let code = match &e {
        RequestError::NoServer { .. } => Exit::NoServer,
        RequestError::Timeout { .. } => Exit::Timeout,
        RequestError::InvalidTopic(_) => Exit::Usage,
        RequestError::PermissionDenied { .. } => Exit::PermissionDenied,
        _ => Exit::Error,
    };
    Failure::new(code, e)
}
