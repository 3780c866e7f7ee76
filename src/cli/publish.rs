//! `shmbus pub`.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{BusArg, Exit, Failure, Outcome};

/// Arguments of `shmbus pub`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// The topic to publish on.
    topic: String,
    /// Messages, one per argument; without any (and without --file), each line of stdin is one
    /// message.
    #[arg(conflicts_with = "file")]
    messages: Vec<String>,
    /// Publish each file's whole content as one message, any bytes (`-`: all of stdin).
    #[arg(long, value_name = "PATH")]
    file: Vec<PathBuf>,
    /// With stdin: messages end at a NUL byte instead of a newline (binary-safe with
    /// `find -print0`-style producers; a newline is then part of the message).
    #[arg(long, conflicts_with = "file")]
    null: bool,
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
    let mut told = false;
    let mut send = |payload: &[u8]| -> Outcome {
        for _ in 0..args.count {
            if let Some(interval) = interval {
                let due = start + interval.saturating_mul(u32::try_from(sent).unwrap_or(u32::MAX));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            publish_telling_who_holds(&mut publisher, payload, &mut told)?;
            sent += 1;
        }
        Ok(())
    };
    if !args.file.is_empty() {
        for path in &args.file {
            send(&read_whole(path)?)?;
        }
    } else if !args.messages.is_empty() {
        for message in &args.messages {
            send(message.as_bytes())?;
        }
    } else {
        // Bytes, not text: any payload passes, only the delimiter is taken off.
        let delimiter = if args.null { b'\0' } else { b'\n' };
        for message in std::io::stdin().lock().split(delimiter) {
            let message = message.map_err(|e| Failure::error(format!("read stdin: {e}")))?;
            send(&message)?;
        }
    }
    Ok(())
}

/// How long a publish waits before `pub` says who holds it back.
const PATIENCE: Duration = Duration::from_secs(1);

/// Publishes `payload`; if that waits longer than [`PATIENCE`] for tethered subscribers, says
/// once (per wait, `told`) which ones, then waits on.
fn publish_telling_who_holds(
    publisher: &mut crate::Publisher,
    payload: &[u8],
    told: &mut bool,
) -> Outcome {
    match publisher.publish_timeout(payload, PATIENCE) {
        Ok(_) => {
            *told = false;
            return Ok(());
        }
        Err(crate::PublishTimeoutError::Timeout) => {}
        Err(e) => return Err(Failure::error(e)),
    }
    if !*told {
        *told = true;
        let topic = publisher.topic().to_string();
        let who = match publisher.holders() {
            Ok(holders) if !holders.is_empty() => holders
                .iter()
                .map(|h| {
                    format!(
                        "pid {} ({:?}, uid {}, {} bytes behind)",
                        h.pid, h.name, h.uid, h.behind
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            Ok(_) => "no subscriber the broker knows of".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        eprintln!(
            "shmbus: topic {topic:?}: waiting for room: held back by {who}; the broker evicts \
             a subscriber that does not read for its --evict-after (5 s by default); \
             subscribe with --lossy to never hold publishers back"
        );
    }
    publisher.publish(payload).map_err(Failure::error)?;
    Ok(())
}

/// The whole content of `path` (`-`: stdin).
fn read_whole(path: &PathBuf) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::error(format!("read {}: {e}", path.display())))?;
    Ok(bytes)
}
