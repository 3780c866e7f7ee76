//! `shmbus state watch|publish|get`.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::format::escape;
use super::{BusArg, Exit, Failure, Outcome};
use crate::{StateEvent, StatePublisher, Topic, WatchError};

/// Arguments of `shmbus state`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print a collection's entries, then its changes, until interrupted.
    ///
    /// Lines: `created KEY VALUE` for each entry, `synchronized`, `restarted N` if the owner
    /// counted restarts, then `created KEY VALUE`, `modified KEY VALUE`, `deleted KEY` and
    /// `restarted N` as they happen (values escaped like `sub`'s payloads). With a wildcard
    /// pattern, keys are printed as `TOPIC/KEY` and restarts as `restarted TOPIC N`.
    Watch {
        #[command(flatten)]
        bus: BusArg,
        /// The collection (or a pattern of collections).
        topic: String,
    },
    /// Own a collection and change it with lines read from stdin.
    ///
    /// Lines: `put KEY VALUE` (the value is the rest of the line), `remove KEY`, `restarted`.
    /// Prints `publishing TOPIC` on stderr once it owns the collection; a line that fails is
    /// reported and the rest go on; at the end of input it waits until the broker has every
    /// change (on disk, with --persistent) and exits, 1 if any line failed. A non-persistent
    /// collection is emptied when this exits.
    Publish {
        #[command(flatten)]
        bus: BusArg,
        /// The collection.
        topic: String,
        /// The broker keeps the collection on disk (it needs --state-dir).
        #[arg(long)]
        persistent: bool,
    },
    /// Print a collection (`KEY VALUE` lines, sorted by key) or one value, and exit.
    ///
    /// Exits 1 when KEY is given and the collection does not hold it.
    Get {
        #[command(flatten)]
        bus: BusArg,
        /// The collection.
        topic: String,
        /// Only this key's value (exit 1 if the collection has no such key).
        key: Option<String>,
    },
}

/// Runs a `state` command.
pub fn run(args: Args) -> Outcome {
    match args.command {
        Command::Watch { bus, topic } => watch(&bus, &topic),
        Command::Publish {
            bus,
            topic,
            persistent,
        } => publish(&bus, &topic, persistent),
        Command::Get { bus, topic, key } => get(&bus, &topic, key.as_deref()),
    }
}

fn watch(bus: &BusArg, pattern: &str) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::error(format!("install signal handlers: {e}")))?;
    }
    let wildcard = Topic::new(pattern).is_ok_and(|t| t.is_wildcard());
    let bus = bus.connect()?;
    let mut watcher = bus.watch_state(pattern)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let name = |topic: &Topic, key: &str| {
        if wildcard {
            escape(format!("{}/{key}", topic.as_str()).as_bytes())
        } else {
            escape(key.as_bytes())
        }
    };
    // Acquire pairs with the signal handler's store.
    while !stop.load(Ordering::Acquire) {
        let line = match watcher.recv_timeout(Duration::from_millis(100)) {
            Ok(StateEvent::Created { topic, key, value }) => {
                format!("created {} {}", name(&topic, &key), escape(&value))
            }
            Ok(StateEvent::Modified {
                topic, key, new, ..
            }) => format!("modified {} {}", name(&topic, &key), escape(&new)),
            Ok(StateEvent::Deleted { topic, key, .. }) => format!("deleted {}", name(&topic, &key)),
            Ok(StateEvent::Synchronized) => "synchronized".to_string(),
            Ok(StateEvent::Restarted { topic, count }) if wildcard => {
                format!("restarted {} {count}", topic.as_str())
            }
            Ok(StateEvent::Restarted { count, .. }) => format!("restarted {count}"),
            Err(WatchError::Timeout | WatchError::Empty) => continue,
            // One collection this watch cannot read; the others go on.
            Err(e @ WatchError::Unavailable { .. }) => {
                eprintln!("shmbus: {e}");
                continue;
            }
            // No snapshot to catch up from (the broker is gone): the watch cannot go on.
            Err(e) => return Err(Failure::error(e)),
        };
        // Standard output is line-buffered: each line goes out as it is written.
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // the reader of our stdout went away
        }
    }
    Ok(())
}

/// One line of `state publish`'s input, applied.
fn apply_line(publisher: &mut StatePublisher, line: &str) -> Result<(), String> {
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    match command {
        "put" => {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            publisher
                .put(key, value.as_bytes())
                .map_err(|e| e.to_string())
        }
        "remove" => publisher.remove(rest).map_err(|e| e.to_string()),
        "restarted" if rest.is_empty() => publisher.signal_restarted().map_err(|e| e.to_string()),
        _ => Err(format!(
            "not a command: {:?} (put KEY VALUE, remove KEY, restarted)",
            line
        )),
    }
}

fn publish(bus: &BusArg, topic: &str, persistent: bool) -> Outcome {
    let bus = bus.connect()?;
    let mut builder = bus.state_publisher_builder(topic);
    if persistent {
        builder = builder.persistent();
    }
    let mut publisher = builder.create()?;
    eprintln!("publishing {topic}");
    let mut failed = 0usize;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| Failure::error(format!("read stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = apply_line(&mut publisher, &line) {
            eprintln!("shmbus: line {}: {e}", n + 1);
            failed += 1;
        }
    }
    // What was published is with the broker (and on disk, if persistent) before this exits.
    publisher.sync().map_err(Failure::error)?;
    if failed > 0 {
        return Err(Failure::error(format!("{failed} lines failed")));
    }
    Ok(())
}

fn get(bus: &BusArg, topic: &str, key: Option<&str>) -> Outcome {
    let bus = bus.connect()?;
    let watcher = bus.watch_state(topic)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match key {
        Some(key) => {
            let value = watcher.get(topic, key).ok_or_else(|| {
                Failure::new(Exit::Error, format!("collection {topic:?}: no key {key:?}"))
            })?;
            writeln!(out, "{}", escape(value))
        }
        None => {
            let mut entries: Vec<_> = watcher.get_all(topic).collect();
            entries.sort_unstable_by_key(|(k, _)| *k);
            entries
                .into_iter()
                .try_for_each(|(k, v)| writeln!(out, "{} {}", escape(k.as_bytes()), escape(v)))
        }
    };
    written.map_err(|e| Failure::error(format!("write stdout: {e}")))
}
