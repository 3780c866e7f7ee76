//! `shmbus demo`: a broker, a publisher and a subscriber, each in its own process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::WaitStrategy;
use crate::bench::now_ns;

use super::{BusArg, Failure, Outcome};

/// The demo gives up (and says so) after this long.
const DEMO_DEADLINE: Duration = Duration::from_secs(14);

/// Arguments of `shmbus demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Latency probes to send (paced at 10 kHz).
    #[arg(long, default_value_t = 10_000)]
    probes: u64,
    /// Messages in the throughput burst.
    #[arg(long, default_value_t = 1_000_000)]
    burst: u64,
}

/// Arguments of the demo's child processes.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[command(flatten)]
    bus: BusArg,
    #[arg(long)]
    probes: u64,
    #[arg(long)]
    burst: u64,
    /// Busy-poll (subscriber) and spin (publisher's pacing); else spin-then-park and sleep.
    #[arg(long)]
    busy: bool,
}

/// Whether this machine has room for two busy-polling processes (the subscriber, and the
/// publisher pacing its probes) beside what already runs: at least two CPUs free by the load
/// average. Returns the decision and the line that says why.
fn room_to_spin() -> (bool, String) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let free = cpus as f64 - load;
    if free >= 2.0 {
        let why = format!("{cpus} CPUs, load {load:.1}: busy-polling, as low-latency users run it");
        (true, why)
    } else {
        let why = format!(
            "{cpus} CPUs, load {load:.1}: too few free CPUs for two busy-polling processes, so the \
             subscriber waits spin-then-park and the publisher sleeps between probes (the latency \
             includes wake-ups; `shmbus bench latency --wait busy` on an idle machine measures \
             busy-polling)"
        );
        (false, why)
    }
}

struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(exe: &Path, args: &[&str], stderr: Stdio) -> Result<Child, Failure> {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(stderr)
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| Failure::error(format!("start {}: {e}", args[0])))
}

/// Reads `child`'s stderr until a line starts with `prefix`; forwards the rest to our stderr
/// in the background.
fn await_line(child: &mut Child, prefix: &str, name: &'static str) -> Result<String, Failure> {
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Failure::error("no stderr pipe"))?;
    let mut lines = BufReader::new(stderr).lines();
    let found = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(prefix) => break line,
            Some(Ok(line)) => eprintln!("[{name}] {line}"),
            _ => {
                return Err(Failure::error(format!(
                    "the {name} exited before saying {prefix:?}"
                )));
            }
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Ok(found)
}

/// Runs the demo.
pub fn run(args: Args) -> Outcome {
    let deadline = Instant::now() + DEMO_DEADLINE;
    let exe =
        std::env::current_exe().map_err(|e| Failure::error(format!("find own executable: {e}")))?;
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("shmbus-demo-{}", std::process::id()));
    let socket = dir.join("bus.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir,
    };

    println!("shmbus demo: a broker, a publisher and a subscriber, each its own process");
    let mut broker = spawn(&exe, &["broker", "--bus", &socket_arg], Stdio::piped())?;
    let ready = await_line(&mut broker, "shmbus broker ready on", "broker");
    cleanup.children.push(broker);
    println!("[broker] {}", ready?);

    let (busy, why) = room_to_spin();
    println!("[demo] {why}");
    let mut counts = vec![
        "--probes".to_string(),
        args.probes.to_string(),
        "--burst".into(),
        args.burst.to_string(),
    ];
    if busy {
        counts.push("--busy".into());
    }
    let child_args = |role: &'static str| {
        let mut v = vec![role, "--bus", socket_arg.as_str()];
        v.extend(counts.iter().map(String::as_str));
        v
    };
    let mut subscriber = spawn(&exe, &child_args("demo-subscriber"), Stdio::piped())?;
    let subscribed = await_line(&mut subscriber, "subscribed", "subscriber");
    let (done_tx, done_rx) = mpsc::channel();
    let sub_pid = subscriber.id();
    cleanup.children.push(subscriber);
    subscribed?;
    let publisher = spawn(&exe, &child_args("demo-publisher"), Stdio::inherit())?;
    let pub_pid = publisher.id();
    cleanup.children.push(publisher);

    // Wait for both clients on threads, so the deadline holds even if one hangs.
    for child in cleanup.children.drain(1..) {
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut child = child;
            let status = child.wait();
            let _ = tx.send((child.id(), status));
        });
    }
    for _ in 0..2 {
        let (pid, status) = done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| Failure::error("the demo did not finish in time"))?;
        let name = if pid == sub_pid {
            "subscriber"
        } else if pid == pub_pid {
            "publisher"
        } else {
            "client"
        };
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(Failure::error(format!("the demo {name} failed ({s})"))),
            Err(e) => return Err(Failure::error(format!("wait for the demo {name}: {e}"))),
        }
    }
    let broker = &mut cleanup.children[0];
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(broker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = broker.wait();
    println!("[broker] stopped; demo finished");
    Ok(())
}

/// The demo's publisher: a few chat lines, latency probes, a burst, goodbye.
pub fn publisher(args: ChildArgs) -> Outcome {
    let bus = args.bus.connect()?;
    let mut chat = bus.publisher("demo/chat").map_err(Failure::error)?;
    let mut probes = bus.publisher("demo/latency").map_err(Failure::error)?;
    let mut burst = bus.publisher("demo/burst").map_err(Failure::error)?;
    for i in 1..=3 {
        let line = format!("hello #{i} from the publisher (pid {})", std::process::id());
        chat.publish(line.as_bytes()).map_err(Failure::error)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let period = Duration::from_micros(100);
    let start = Instant::now();
    let mut payload = [0u8; 64];
    for i in 0..args.probes {
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        if args.busy {
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        payload[..8].copy_from_slice(&now_ns().to_le_bytes());
        probes.publish(&payload).map_err(Failure::error)?;
    }
    for i in 0..args.burst {
        let mut loan = burst.loan(8).map_err(Failure::error)?;
        loan.as_mut_slice().copy_from_slice(&i.to_le_bytes());
        loan.commit().map_err(Failure::error)?;
    }
    chat.publish(b"bye").map_err(Failure::error)?;
    Ok(())
}

/// The demo's subscriber: prints chat lines and a summary of the probes and the burst.
pub fn subscriber(args: ChildArgs) -> Outcome {
    let bus = args.bus.connect()?;
    let wait = if args.busy {
        WaitStrategy::BusySpin
    } else {
        WaitStrategy::default()
    };
    let mut sub = bus
        .subscriber("demo/**")
        .wait(wait)
        .create()
        .map_err(Failure::error)?;
    eprintln!("subscribed demo/**");
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(Failure::error)?;
    let (mut probes, mut burst, mut bye) = (0u64, 0u64, false);
    let (mut burst_start, mut burst_end) = (None, None);
    while !bye || probes < args.probes || burst < args.burst {
        let sample = sub.recv().map_err(Failure::error)?;
        let now = now_ns();
        match sample.topic() {
            "demo/chat" => {
                let text = String::from_utf8_lossy(sample.payload());
                println!("[subscriber] {}: {text}", sample.topic());
                bye |= text == "bye";
            }
            "demo/latency" => {
                let sent = u64::from_le_bytes(sample.payload()[..8].try_into().unwrap_or_default());
                latency.saturating_record(now.saturating_sub(sent).max(1));
                probes += 1;
            }
            _ => {
                burst_start.get_or_insert(now);
                burst_end = Some(now);
                burst += 1;
            }
        }
    }
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "[subscriber] latency, publish to receive, {} messages of 64 B at 10 kHz, {}: \
         p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs",
        latency.len(),
        if args.busy {
            "busy-polling"
        } else {
            "spin-then-park"
        },
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        latency.max() as f64 / 1000.0
    );
    if let (Some(a), Some(b)) = (burst_start, burst_end) {
        let secs = (b - a).max(1) as f64 / 1e9;
        println!(
            "[subscriber] throughput: {burst} messages of 8 B in {:.3} s = {:.1} M messages/s",
            secs,
            burst as f64 / secs / 1e6
        );
    }
    Ok(())
}
