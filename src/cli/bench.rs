//! `shmbus bench`: latency, throughput and fan-out across processes, with HDR percentiles.

use std::path::PathBuf;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;

use crate::WaitStrategy;
use crate::bench::{self, BenchError};
use crate::client::Bus;

use super::{Exit, Failure, Outcome};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One-way latency: ping-pong with an echo process (round trip / 2), or with `--rate`, a
    /// paced stream measured from each message's intended send time.
    Latency,
    /// Messages and bytes per second from a publisher process to this one.
    Throughput,
    /// Latency from one publisher to the last of several subscriber processes.
    Fanout,
    /// Request/response round trips to a server process from `--requesters` threads, and
    /// requests per second (latency is the whole round trip, not half).
    Reqrep,
}

/// How the processes wait for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// Busy-poll.
    Busy,
    /// Spin 50 µs, then park.
    SpinPark,
    /// Park at once.
    Park,
}

impl Wait {
    fn strategy(self) -> WaitStrategy {
        match self {
            Wait::Busy => WaitStrategy::BusySpin,
            Wait::SpinPark => WaitStrategy::default(),
            Wait::Park => WaitStrategy::Park,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Wait::Busy => "busy",
            Wait::SpinPark => "spin-park",
            Wait::Park => "park",
        }
    }
}

/// Arguments of `shmbus bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Payload bytes per message (at least 8 with --rate and for fan-out: they carry a timestamp).
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Messages (round trips for latency).
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Send at this fixed rate (messages per second) and measure from the intended send times.
    #[arg(long, value_name = "HZ")]
    rate: Option<f64>,
    /// Subscriber processes for fan-out.
    #[arg(long, default_value_t = 4)]
    subscribers: u32,
    /// Requester threads for reqrep, each with its own inbox.
    #[arg(long, default_value_t = 1)]
    requesters: u32,
    /// Run this many CPU-bound processes (busy loops, not pinned) beside the measurement: the
    /// latency a busy machine gets.
    #[arg(long, value_name = "N", default_value_t = 0)]
    load: u32,
    /// How processes wait for messages.
    #[arg(long, value_enum, default_value_t = Wait::Busy)]
    wait: Wait,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw the latency distribution into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Measure on this bus (default: a private broker started for the run).
    #[arg(long = "bus", value_name = "ADDR")]
    bus: Option<String>,
}

/// Arguments of the hidden `bench-role` command that `bench` starts its child processes with.
#[derive(Debug, clap::Args)]
pub struct RoleArgs {
    /// `echo`, `typed-echo`, `ack`, `reply`, `burn`, `flood` or `fanout-sub`.
    role: String,
    #[arg(long = "bus")]
    bus: String,
    #[arg(long, default_value_t = 8)]
    size: usize,
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Wait::Busy)]
    wait: Wait,
    /// Fan-out subscribers write their latencies (u64 little-endian nanoseconds) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn fail(e: BenchError) -> Failure {
    Failure::error(e)
}

/// Runs a child role; says `ready` on stdout once attached.
pub fn role(args: RoleArgs) -> Outcome {
    if args.role == "burn" {
        // Not pinned: load goes wherever the scheduler puts it, as on a busy machine.
        println!("ready");
        bench::burn();
    }
    bench::pin(1);
    let bus = Bus::connect(&args.bus)?;
    let ready = || println!("ready");
    match args.role.as_str() {
        "echo" => bench::echo(&bus, args.wait.strategy(), ready).map_err(fail),
        "typed-echo" => bench::typed_echo(&bus, args.wait.strategy(), ready).map_err(fail),
        "ack" => bench::acknowledge(&bus, args.wait.strategy(), ready).map_err(fail),
        "reply" => bench::reply(&bus, args.wait.strategy(), ready).map_err(fail),
        "flood" => {
            ready();
            bench::flood(&bus, args.size, args.count, args.rate).map_err(fail)
        }
        "fanout-sub" => {
            let latencies = bench::fanout_subscriber(&bus, args.count, args.wait.strategy(), ready)
                .map_err(fail)?;
            let bytes: Vec<u8> = latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
            let out = args
                .out
                .ok_or_else(|| Failure::new(Exit::Usage, "fanout-sub needs --out"))?;
            std::fs::write(&out, bytes)
                .map_err(|e| Failure::error(format!("write {}: {e}", out.display())))
        }
        other => Err(Failure::new(
            Exit::Usage,
            format!("unknown bench role {other:?}"),
        )),
    }
}

/// The role processes of one measurement, run by this executable.
fn roles() -> Result<bench::Roles, Failure> {
    let exe =
        std::env::current_exe().map_err(|e| Failure::error(format!("find own executable: {e}")))?;
    Ok(bench::Roles::new(exe))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What a run measured.
struct Report {
    what: String,
    latency: Histogram<u64>,
    /// Messages per second and bytes per second, for throughput runs.
    rate: Option<(f64, f64)>,
}

/// Runs `shmbus bench`.
pub fn run(args: Args) -> Outcome {
    let needs_stamp = args.rate.is_some() || args.mode == Mode::Fanout;
    if needs_stamp && args.size < 8 {
        return Err(Failure::new(
            Exit::Usage,
            "--size must be at least 8 with --rate and for fan-out",
        ));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(Failure::new(
            Exit::Usage,
            "--rate must be a positive number",
        ));
    }
    if args.count == 0 {
        return Err(Failure::new(Exit::Usage, "--count must be at least 1"));
    }
    let bus = match &args.bus {
        Some(address) => Bus::connect(address)?,
        None => Bus::embedded()?,
    };
    if args.size > bus.max_payload() {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--size {} exceeds the bus's largest message ({})",
                args.size,
                bus.max_payload()
            ),
        ));
    }
    bench::pin(0);
    let address = bus.address().to_string();
    let mut burners = roles()?;
    for _ in 0..args.load {
        burners
            .start("burn", &address, &[] as &[&str])
            .map_err(fail)?;
    }
    let mut report = match args.mode {
        Mode::Latency if args.rate.is_none() => ping_pong(&bus, &address, &args)?,
        Mode::Latency | Mode::Throughput => stream(&bus, &address, &args)?,
        Mode::Fanout => fanout(&bus, &address, &args)?,
        Mode::Reqrep => reqrep(&bus, &address, &args)?,
    };
    if args.load > 0 {
        report
            .what
            .push_str(&format!(", beside {} CPU-bound processes", args.load));
    }
    drop(burners);
    if let Some(path) = &args.plot {
        plot(&report, path).map_err(|e| Failure::error(format!("plot {}: {e}", path.display())))?;
    }
    print(&report, &args);
    Ok(())
}

fn progress(count: u64) -> ProgressBar {
    // Hidden when stderr is not a terminal.
    ProgressBar::new(count)
}

fn ping_pong(bus: &Bus, address: &str, args: &Args) -> Result<Report, Failure> {
    let wait = args.wait.strategy();
    let mut children = roles()?;
    let mut pongs = bench::subscriber(bus, bench::PONG, wait).map_err(fail)?;
    let mut pings = bench::publisher(bus, bench::PING, wait).map_err(fail)?;
    children
        .start("echo", address, &["--wait", args.wait.name()])
        .map_err(fail)?;
    bench::ping_pong(
        &mut pings,
        &mut pongs,
        args.size,
        (args.count / 10).max(100),
        |_| {},
    )
    .map_err(fail)?;
    let mut latency = histogram();
    let bar = progress(args.count);
    let mut n = 0u64;
    bench::ping_pong(&mut pings, &mut pongs, args.size, args.count, |ns| {
        latency.saturating_record(ns.max(1));
        n += 1;
        if n % 4096 == 0 {
            bar.set_position(n);
        }
    })
    .map_err(fail)?;
    bar.finish_and_clear();
    pings.publish(&[]).map_err(Failure::error)?;
    let what = format!(
        "latency, {} B, {} round trips, {} waits, one-way = round trip / 2",
        args.size,
        args.count,
        args.wait.name()
    );
    Ok(Report {
        what,
        latency,
        rate: None,
    })
}

fn reqrep(bus: &Bus, address: &str, args: &Args) -> Result<Report, Failure> {
    let wait = args.wait.strategy();
    let mut children = roles()?;
    children
        .start("reply", address, &["--wait", args.wait.name()])
        .map_err(fail)?;
    let threads = args.requesters.max(1);
    let per_thread = args.count.div_ceil(u64::from(threads));
    let size = args.size;
    let bar = progress(per_thread * u64::from(threads));
    let (latency, secs) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let bar = bar.clone();
                scope.spawn(move || -> Result<(Histogram<u64>, f64), BenchError> {
                    let mut requester = bench::requester(bus, wait)?;
                    bench::request_round_trips(
                        &mut requester,
                        size,
                        (per_thread / 10).max(100),
                        |_| {},
                    )?;
                    let mut latency = histogram();
                    let mut n = 0u64;
                    let took =
                        bench::request_round_trips(&mut requester, size, per_thread, |ns| {
                            latency.saturating_record(ns.max(1));
                            n += 1;
                            if n % 4096 == 0 {
                                bar.inc(4096);
                            }
                        })?;
                    Ok((latency, took.as_secs_f64()))
                })
            })
            .collect();
        let mut all = histogram();
        let mut longest = 0f64;
        for w in workers {
            let done = w
                .join()
                .map_err(|_| Failure::error("a requester thread panicked"))?;
            let (h, secs) = done.map_err(fail)?;
            all.add(h).map_err(Failure::error)?;
            longest = longest.max(secs);
        }
        Ok::<_, Failure>((all, longest))
    })?;
    bar.finish_and_clear();
    // Each thread's measured loop (after its warm-up); the slowest bounds the rate.
    let requests = (per_thread * u64::from(threads)) as f64 / secs.max(1e-9);
    let what = format!(
        "request/response, {size} B each way, {} requests from {threads} requester threads, {} waits, latency = round trip",
        per_thread * u64::from(threads),
        args.wait.name()
    );
    Ok(Report {
        what,
        latency,
        rate: Some((requests, requests * size as f64)),
    })
}

fn stream(bus: &Bus, address: &str, args: &Args) -> Result<Report, Failure> {
    let mut children = roles()?;
    let mut sub = bench::subscriber(bus, bench::DATA, args.wait.strategy()).map_err(fail)?;
    let mut extra = vec![
        "--size".to_string(),
        args.size.to_string(),
        "--count".into(),
        args.count.to_string(),
    ];
    if let Some(hz) = args.rate {
        extra.extend(["--rate".to_string(), hz.to_string()]);
    }
    children.start("flood", address, &extra).map_err(fail)?;
    let mut latency = histogram();
    let bar = progress(args.count);
    // Messages per latency sample (see `bench::flood`); 4096 is a multiple of either.
    let per_sample = if args.rate.is_some() {
        1
    } else {
        bench::STAMP_EVERY
    };
    let mut n = 0u64;
    let elapsed = bench::drain(&mut sub, args.count, |ns| {
        latency.saturating_record(ns.max(1));
        n += per_sample;
        if n % 4096 == 0 {
            bar.set_position(n);
        }
    })
    .map_err(fail)?;
    bar.finish_and_clear();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let messages = args.count.saturating_sub(1) as f64 / secs;
    let (what, rate) = match args.rate {
        Some(hz) => (
            format!(
                "latency, {} B, {} messages paced at {hz} Hz, measured from intended send times",
                args.size, args.count
            ),
            None,
        ),
        None => (
            format!(
                "throughput, {} B, {} messages, latency of one message in {} (includes queueing)",
                args.size,
                args.count,
                bench::STAMP_EVERY
            ),
            Some((messages, messages * args.size as f64)),
        ),
    };
    Ok(Report {
        what,
        latency,
        rate,
    })
}

fn fanout(bus: &Bus, address: &str, args: &Args) -> Result<Report, Failure> {
    let dir = std::env::temp_dir().join(format!("shmbus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::error(format!("create {}: {e}", dir.display())))?;
    let result = fanout_in(bus, address, args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn fanout_in(
    bus: &Bus,
    address: &str,
    args: &Args,
    dir: &std::path::Path,
) -> Result<Report, Failure> {
    let mut children = roles()?;
    let outs: Vec<PathBuf> = (0..args.subscribers)
        .map(|i| dir.join(format!("sub-{i}")))
        .collect();
    for out in &outs {
        let extra = [
            "--count".to_string(),
            args.count.to_string(),
            "--wait".into(),
            args.wait.name().into(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
        ];
        children
            .start("fanout-sub", address, &extra)
            .map_err(fail)?;
    }
    let mut publisher = bench::publisher(bus, bench::DATA, WaitStrategy::BusySpin).map_err(fail)?;
    // Paced so that latency, not queueing, is measured: 10 kHz unless --rate says otherwise.
    let period = 1e9 / args.rate.unwrap_or(10_000.0);
    let start = bench::now_ns();
    let bar = progress(args.count);
    for i in 0..args.count {
        let intended = start + (i as f64 * period) as u64;
        while bench::now_ns() < intended {
            std::hint::spin_loop();
        }
        bench::send(&mut publisher, args.size, intended).map_err(fail)?;
        if i % 4096 == 0 {
            bar.set_position(i);
        }
    }
    bar.finish_and_clear();
    children.wait().map_err(fail)?;
    let mut last = vec![0u64; args.count as usize];
    for out in &outs {
        let bytes = std::fs::read(out)
            .map_err(|e| Failure::error(format!("read {}: {e}", out.display())))?;
        for (slot, chunk) in last.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = (*slot).max(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        }
    }
    let mut latency = histogram();
    for ns in last {
        latency.saturating_record(ns.max(1));
    }
    let what = format!(
        "fan-out latency to the last of {} subscribers, {} B, {} messages at {} Hz, {} waits",
        args.subscribers,
        args.size,
        args.count,
        1e9 / period,
        args.wait.name()
    );
    Ok(Report {
        what,
        latency,
        rate: None,
    })
}

const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

fn print(report: &Report, args: &Args) {
    let h = &report.latency;
    if args.json {
        let mut obj = serde_json::Map::new();
        obj.insert(
            "mode".into(),
            format!("{:?}", args.mode).to_lowercase().into(),
        );
        obj.insert("description".into(), report.what.clone().into());
        obj.insert("size".into(), args.size.into());
        obj.insert("count".into(), args.count.into());
        for (name, q) in QUANTILES {
            obj.insert(format!("{name}_ns"), h.value_at_quantile(q).into());
        }
        obj.insert("max_ns".into(), h.max().into());
        if let Some((msgs, bytes)) = report.rate {
            obj.insert("messages_per_second".into(), msgs.into());
            obj.insert("bytes_per_second".into(), bytes.into());
        }
        println!("{}", serde_json::Value::Object(obj));
        return;
    }
    println!("{}", report.what);
    let mut line = String::new();
    for (name, q) in QUANTILES {
        line.push_str(&format!("{name} {}  ", human(h.value_at_quantile(q))));
    }
    println!("  {line}max {}", human(h.max()));
    if let Some((msgs, bytes)) = report.rate {
        println!("  {:.2} M messages/s, {:.2} GB/s", msgs / 1e6, bytes / 1e9);
    }
}

fn human(ns: u64) -> String {
    match ns {
        n if n < 10_000 => format!("{n} ns"),
        n if n < 10_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n => format!("{:.1} ms", n as f64 / 1e6),
    }
}

/// Draws the latency distribution: latency against percentile, with the percentile axis
/// stretched towards the tail (as HdrHistogram plots do) so p99.9 is as visible as p50.
fn plot(report: &Report, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let h = &report.latency;
    // x = log10(1 / (1 - q)): 0 at p0, 1 at p90, 2 at p99, 3 at p99.9.
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let x = f64::from(i) / 100.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let top = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&report.what, ("sans-serif", 16))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(950), "950 ns");
        assert_eq!(human(12_500), "12.5 µs");
        assert_eq!(human(25_000_000), "25.0 ms");
    }
}
