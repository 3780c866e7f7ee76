//! The ring across real processes: many writers and subscribers, lossy readers, `kill -9`
//! mid-write and mid-read, read-only mappings, and the system calls of the data path.
//!
//! This test binary is its own child: started with `SHM_ROLE` set, `main` runs that role instead
//! of the tests. The parent creates the segments (standing in for the broker), hands them to each
//! child as file descriptors 3 (data), 4 (readers) and 5 (doorbells), passes an owner token, and
//! talks to the child through its stdout, one line per event. Children that expect something that
//! never comes give up after a timeout and exit non-zero, so no test hangs.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

#[path = "support/spawn.rs"]
mod spawn;
use shmbus_shm::{
    Deadline, DoorbellTable, Owner, ReadError, ReadTimeoutError, ReaderMode, ReaderOptions, Ring,
    RingConfig, TryLoanError, WaitStrategy,
};

/// How long a child waits for anything before giving up.
const CHILD_PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    if let Ok(role) = std::env::var("SHM_ROLE") {
        let code = match child::run(&role) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("child {role} failed: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test(
            "three_writers_four_subscribers_lose_and_duplicate_nothing",
            many_to_many,
        ),
        Trial::test(
            "lossy_subscriber_reports_lag_and_never_a_corrupt_frame",
            lossy_behind_fast_writer,
        ),
        Trial::test(
            "writer_killed_between_claim_and_commit_is_repaired",
            writer_killed_mid_write,
        ),
        Trial::test(
            "subscriber_killed_holding_frames_is_reclaimed",
            subscriber_killed_holding,
        ),
        Trial::test(
            "subscribers_map_data_read_only_and_writes_fault",
            read_only_mapping,
        ),
        Trial::test(
            "busy_polling_pair_makes_no_system_calls_per_message",
            syscall_count,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Frames per writer in the many-to-many test.
fn frames_per_writer() -> u64 {
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

/// The segments of one ring plus its doorbell table, as the parent (the "broker") holds them.
struct Bus {
    doorbells: DoorbellTable,
    ring: Ring,
}

impl Bus {
    fn new(capacity: u64, max_payload: u32) -> Bus {
        let doorbells = DoorbellTable::create(64).unwrap();
        let config = RingConfig {
            capacity,
            max_payload,
            writer_slots: 8,
            reader_slots: 16,
        };
        let ring = Ring::create(&config, &doorbells).unwrap();
        Bus { doorbells, ring }
    }

    /// Spawns this binary in `role`, with the ring's descriptors (data read-only if `read_only`).
    fn spawn(&self, role: &str, owner: u64, args: &[String], read_only: bool) -> Child {
        self.spawn_with(
            Command::new(std::env::current_exe().unwrap()),
            role,
            owner,
            args,
            read_only,
        )
    }

    fn spawn_with(
        &self,
        mut cmd: Command,
        role: &str,
        owner: u64,
        args: &[String],
        read_only: bool,
    ) -> Child {
        let data: OwnedFd = if read_only {
            self.ring.data_fd_read_only().unwrap().unwrap()
        } else {
            self.ring.data_fd().unwrap().try_clone_to_owned().unwrap()
        };
        let fds = spawn::pass_fds(
            &mut cmd,
            &[
                data.as_fd(),
                self.ring.readers_fd().unwrap(),
                self.doorbells.fd().unwrap(),
            ],
        );
        cmd.env("SHM_ROLE", role)
            .env("SHM_OWNER", owner.to_string())
            .env("SHM_ARGS", args.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = cmd.spawn().expect("spawn child");
        let stdout = BufReader::new(process.stdout.take().unwrap());
        drop(fds);
        Child {
            process,
            stdout,
            role: role.to_string(),
        }
    }
}

struct Child {
    process: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
    role: String,
}

impl Child {
    /// The child's next line; fails if it exits first.
    fn line(&mut self) -> Result<String, Failed> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.role))?;
        if line.is_empty() {
            return Err(format!("{} exited before saying anything more", self.role).into());
        }
        Ok(line.trim_end().to_string())
    }

    /// Waits for a line starting with `prefix` and returns the rest of it.
    fn expect(&mut self, prefix: &str) -> Result<String, Failed> {
        let line = self.line()?;
        line.strip_prefix(prefix)
            .map(str::to_string)
            .ok_or_else(|| format!("{}: expected {prefix:?}, got {line:?}", self.role).into())
    }

    fn pid(&self) -> i32 {
        self.process.id() as i32
    }

    fn kill9(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.process.wait().unwrap();
    }

    /// Waits for exit and requires success; returns the rest of its stdout.
    fn succeed(mut self) -> Result<String, Failed> {
        let status = self.process.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        if status.success() {
            Ok(rest)
        } else {
            Err(format!("{} failed ({status}); output: {rest}", self.role).into())
        }
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg().into()) }
}

fn many_to_many() -> Result<(), Failed> {
    let bus = Bus::new(1 << 20, 1024);
    let n = frames_per_writer();
    let writers = 3u32;
    let mut subscribers: Vec<Child> = (0..4)
        .map(|i| {
            bus.spawn(
                "subscriber",
                100 + i,
                &[writers.to_string(), n.to_string()],
                true,
            )
        })
        .collect();
    for s in &mut subscribers {
        s.expect("ready")?;
    }
    let pubs: Vec<Child> = (0..writers)
        .map(|id| {
            bus.spawn(
                "writer",
                200 + u64::from(id),
                &[id.to_string(), n.to_string()],
                false,
            )
        })
        .collect();
    for p in pubs {
        p.succeed()?;
    }
    for s in subscribers {
        let out = s.succeed()?;
        let want = format!("received {}", u64::from(writers) * n);
        check(out.contains(&want), || {
            format!("subscriber said {out:?}, wanted {want:?}")
        })?;
    }
    Ok(())
}

fn lossy_behind_fast_writer() -> Result<(), Failed> {
    let bus = Bus::new(1 << 16, 1024);
    let n: u64 = 200_000;
    let mut sub = bus.spawn("lossy_subscriber", 100, &[n.to_string()], true);
    sub.expect("ready")?;
    bus.spawn("writer", 200, &["0".into(), n.to_string()], false)
        .succeed()?;
    let out = sub.succeed()?;
    // "received R missed M lags L": every frame is accounted for, exactly once.
    let nums: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [received, missed, lags] = nums[..] else {
        return Err(format!("unexpected report {out:?}").into());
    };
    check(received + missed == n, || {
        format!("received {received} + missed {missed} != {n}")
    })?;
    check(lags > 0 && missed > 0, || {
        format!("the subscriber never lagged: {out}")
    })?;
    Ok(())
}

fn writer_killed_mid_write() -> Result<(), Failed> {
    let bus = Bus::new(1 << 16, 1024);
    let per: u64 = 5_000;
    let mut subs: Vec<Child> = (0..2)
        .map(|i| bus.spawn("subscriber", 100 + i, &["2".into(), per.to_string()], true))
        .collect();
    for s in &mut subs {
        s.expect("ready")?;
    }
    // Writer 0 publishes everything, then claims one more frame and stops between claim and
    // commit, saying so; we kill it there.
    let victim_owner = 200;
    let mut victim = bus.spawn(
        "claim_and_hang",
        victim_owner,
        &["0".into(), per.to_string()],
        false,
    );
    let seq: u64 = victim.expect("claimed ")?.parse()?;
    victim.kill9();
    // Writer 1's frames are stuck behind the dead claim until the repair.
    let mut other = bus.spawn("writer", 201, &["1".into(), per.to_string()], false);
    let head = bus.ring.head();
    check(head.sequence > seq, || {
        "the dead claim was never made".into()
    })?;
    let repairs = bus.ring.repair_dead_writers(|o| o.get() != victim_owner);
    let skipped = repairs.iter().any(
        |r| matches!(r.outcome, shmbus_shm::RepairOutcome::Skipped { seq: s, .. } if s == seq),
    );
    check(skipped, || {
        format!("repair did not skip claim {seq}: {repairs:?}")
    })?;
    let _ = other.line(); // the writer's "done" (or its exit)
    for s in subs {
        let out = s.succeed()?;
        check(out.contains(&format!("received {}", 2 * per)), || out)?;
    }
    Ok(())
}

fn subscriber_killed_holding() -> Result<(), Failed> {
    let bus = Bus::new(1 << 14, 256);
    let holder_owner = 100;
    let mut holder = bus.spawn("hold_sample", holder_owner, &[], true);
    holder.expect("ready")?;
    let me = Owner::new(1).unwrap();
    let mut writer = bus.ring.writer(9, me).unwrap();
    writer.try_publish(b"held").unwrap();
    holder.expect("holding")?;
    let mut n = 0;
    while writer.try_publish(&[0; 200]).is_ok() {
        n += 1;
    }
    check(n > 0, || "nothing fit after the held frame".into())?;
    check(
        writer.try_loan(200).unwrap_err() == TryLoanError::Full,
        || "not full".into(),
    )?;
    holder.kill9();
    check(
        writer.try_loan(200).unwrap_err() == TryLoanError::Full,
        || "a dead tethered reader still holds the ring until it is reclaimed".into(),
    )?;
    let dead: Vec<_> = bus
        .ring
        .readers()
        .into_iter()
        .filter(|r| r.owner == holder_owner)
        .collect();
    check(dead.len() == 1, || {
        format!("expected one slot of the dead reader: {dead:?}")
    })?;
    check(
        bus.ring
            .reclaim_reader(dead[0].slot, Owner::new(holder_owner).unwrap()),
        || "reclaim failed".into(),
    )?;
    for _ in 0..100 {
        writer
            .try_publish(&[0; 200])
            .map_err(|e| format!("still held back: {e}"))?;
    }
    Ok(())
}

fn read_only_mapping() -> Result<(), Failed> {
    let bus = Bus::new(1 << 14, 256);
    let mut child = bus.spawn("write_through_sample", 100, &[], true);
    child.expect("ready")?;
    let mut writer = bus.ring.writer(9, Owner::new(1).unwrap()).unwrap();
    writer.try_publish(b"read me, don't write me").unwrap();
    child.expect("read ok")?;
    let status = child.process.wait().unwrap();
    check(status.signal() == Some(libc::SIGSEGV), || {
        format!("the write to a read-only mapping did not fault: {status}")
    })?;
    Ok(())
}

fn syscall_count() -> Result<(), Failed> {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(strace) = strace else {
        if std::env::var_os("SHMBUS_REQUIRE_STRACE").is_some() {
            return Err("strace is required (SHMBUS_REQUIRE_STRACE) but not installed".into());
        }
        println!("skipping the system call count: strace is not installed");
        return Ok(());
    };
    let frames: u64 = 1_000_000;
    let bus = Bus::new(1 << 20, 1024);
    let dir = std::env::temp_dir().join(format!("shmbus-strace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let traced = |role: &str, owner: u64, args: &[String], read_only: bool| {
        let mut cmd = Command::new(strace);
        cmd.arg("-f")
            .arg("-c")
            .arg("-o")
            .arg(dir.join(role))
            .arg(std::env::current_exe().unwrap());
        bus.spawn_with(cmd, role, owner, args, read_only)
    };
    let mut sub = traced("busy_subscriber", 100, &[frames.to_string()], true);
    sub.expect("ready")?;
    let writer = traced("busy_writer", 200, &["0".into(), frames.to_string()], false);
    writer.succeed()?;
    sub.succeed()?;
    let mut total = 0;
    for role in ["busy_subscriber", "busy_writer"] {
        let summary = std::fs::read_to_string(dir.join(role)).unwrap();
        let calls = summary
            .lines()
            .find(|l| l.trim_end().ends_with("total"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| format!("no total in strace summary:\n{summary}"))?;
        println!("{role}: {calls} system calls in all, start-up included");
        total += calls;
    }
    std::fs::remove_dir_all(&dir).ok();
    check(total < 1000, || {
        format!("{total} system calls for {frames} frames")
    })?;
    Ok(())
}

/// What the children do.
mod child {
    use super::*;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    struct Env {
        ring: Ring,
        doorbells: DoorbellTable,
        owner: Owner,
        args: Vec<u64>,
    }

    fn env() -> Result<Env> {
        let [data, readers, doorbells]: [OwnedFd; 3] = spawn::inherited_fds(3)
            .try_into()
            .map_err(|_| "three descriptors")?;
        let doorbells = DoorbellTable::open(doorbells)?;
        let ring = Ring::open(data, readers, &doorbells)?;
        let owner = Owner::new(std::env::var("SHM_OWNER")?.parse()?).ok_or("owner 0")?;
        let args = std::env::var("SHM_ARGS")?
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        Ok(Env {
            ring,
            doorbells,
            owner,
            args,
        })
    }

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }

    pub(super) fn run(role: &str) -> Result {
        let e = env()?;
        match role {
            "writer" => writer(&e, WaitStrategy::default()),
            "busy_writer" => writer(&e, WaitStrategy::BusySpin),
            "claim_and_hang" => claim_and_hang(&e),
            "subscriber" => subscriber(&e),
            "busy_subscriber" => busy_subscriber(&e),
            "lossy_subscriber" => lossy_subscriber(&e),
            "hold_sample" => hold_sample(&e),
            "write_through_sample" => write_through_sample(&e),
            _ => Err(format!("unknown role {role}").into()),
        }
    }

    fn bell(e: &Env) -> Result<Arc<shmbus_shm::Doorbell>> {
        Ok(Arc::new(e.doorbells.claim(e.owner)?))
    }

    fn publish_all(p: &mut shmbus_shm::Writer, id: u32, count: u64) -> Result {
        let mut body = vec![0u8; 1024];
        for n in 0..count {
            let len = frame::fill(&mut body, id, n);
            p.publish(&body[..len], Deadline::After(CHILD_PATIENCE))?;
        }
        Ok(())
    }

    fn writer(e: &Env, wait: WaitStrategy) -> Result {
        let (id, count) = (e.args[0] as u32, e.args[1]);
        let mut p = e.ring.writer(id, e.owner)?;
        p.set_wait_strategy(wait);
        publish_all(&mut p, id, count)?;
        say("done");
        Ok(())
    }

    fn claim_and_hang(e: &Env) -> Result {
        let (id, count) = (e.args[0] as u32, e.args[1]);
        let mut p = e.ring.writer(id, e.owner)?;
        publish_all(&mut p, id, count)?;
        let mut loan = p.loan(500, Deadline::After(CHILD_PATIENCE))?;
        loan.as_mut_slice()[..250].fill(0xdd); // half-written
        say(&format!("claimed {}", loan.sequence()));
        std::thread::sleep(CHILD_PATIENCE); // killed here
        Err("was not killed".into())
    }

    fn subscriber(e: &Env) -> Result {
        let (writers, per) = (e.args[0] as usize, e.args[1]);
        let mut reader = e
            .ring
            .reader(ReaderOptions::default(), &bell(e)?, e.owner)?;
        say("ready");
        let mut next = vec![0u64; writers];
        let mut received = 0u64;
        while received < writers as u64 * per {
            let sample = reader.read(WaitStrategy::default(), Deadline::After(CHILD_PATIENCE))?;
            let (id, n) = frame::check(sample.payload())?;
            let expected = next.get(id as usize).ok_or("unknown writer")?;
            if n != *expected {
                return Err(format!("writer {id}: got frame {n}, expected {expected}").into());
            }
            next[id as usize] += 1;
            received += 1;
        }
        say(&format!("received {received}"));
        Ok(())
    }

    fn busy_subscriber(e: &Env) -> Result {
        let count = e.args[0];
        let mut reader = e
            .ring
            .reader(ReaderOptions::default(), &bell(e)?, e.owner)?;
        say("ready");
        for expected in 0..count {
            let sample = reader.read(WaitStrategy::BusySpin, Deadline::After(CHILD_PATIENCE))?;
            let (_, n) = frame::check(sample.payload())?;
            if n != expected {
                return Err(format!("got frame {n}, expected {expected}").into());
            }
        }
        Ok(())
    }

    fn lossy_subscriber(e: &Env) -> Result {
        let total = e.args[0];
        let options = ReaderOptions::default().mode(ReaderMode::Lossy);
        let mut reader = e.ring.reader(options, &bell(e)?, e.owner)?;
        say("ready");
        let (mut received, mut missed, mut lags, mut last) = (0u64, 0u64, 0u64, None);
        let deadline = Instant::now() + CHILD_PATIENCE;
        while last != Some(total - 1) {
            if Instant::now() > deadline {
                return Err("timed out".into());
            }
            match reader.read(WaitStrategy::default(), Deadline::After(CHILD_PATIENCE)) {
                Ok(sample) => {
                    let (_, n) = frame::check(sample.payload())?;
                    if last.is_some_and(|l| n <= l) {
                        return Err(format!("frame {n} after {last:?}").into());
                    }
                    last = Some(n);
                    received += 1;
                    // Fall behind on purpose: a slow consumer.
                    if received % 64 == 0 {
                        std::thread::yield_now();
                        for _ in 0..20_000 {
                            std::hint::spin_loop();
                        }
                    }
                }
                Err(ReadTimeoutError::Timeout) => return Err("timed out".into()),
                Err(ReadTimeoutError::Failed(ReadError::Lagged { missed: m })) => {
                    missed += m;
                    lags += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        say(&format!("received {received} missed {missed} lags {lags}"));
        Ok(())
    }

    fn hold_sample(e: &Env) -> Result {
        let mut reader = e
            .ring
            .reader(ReaderOptions::default(), &bell(e)?, e.owner)?;
        say("ready");
        let sample = reader.read(WaitStrategy::default(), Deadline::After(CHILD_PATIENCE))?;
        say("holding");
        std::thread::sleep(CHILD_PATIENCE); // killed here, sample held
        drop(sample);
        Err("was not killed".into())
    }

    fn write_through_sample(e: &Env) -> Result {
        if e.ring.is_writable() {
            return Err("expected a read-only mapping".into());
        }
        let mut reader = e
            .ring
            .reader(ReaderOptions::default(), &bell(e)?, e.owner)?;
        say("ready");
        let sample = reader.read(WaitStrategy::default(), Deadline::After(CHILD_PATIENCE))?;
        if sample.payload() != b"read me, don't write me" {
            return Err("wrong payload".into());
        }
        say("read ok");
        let ptr = sample.payload().as_ptr().cast_mut();
        // SAFETY: deliberately not sound: this writes through a shared reference into a
        // read-only mapping to show that the kernel refuses it (the process dies of SIGSEGV
        // here, before anything could observe the write).
        unsafe { ptr.write_volatile(b'X') };
        Err("wrote into read-only shared memory".into())
    }

    /// Checksummed test payloads.
    mod frame {
        /// FNV-1a over `bytes`.
        fn fnv(bytes: &[u8]) -> u64 {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        }

        /// Writes frame `n` of writer `id` into `buf`: id, n, filler whose length varies with
        /// n, and a checksum of all that. Returns its length.
        pub(super) fn fill(buf: &mut [u8], id: u32, n: u64) -> usize {
            let len = 20 + (n.wrapping_mul(2_654_435_761) % 480) as usize;
            buf[..4].copy_from_slice(&id.to_le_bytes());
            buf[4..12].copy_from_slice(&n.to_le_bytes());
            for (i, b) in buf[12..len - 8].iter_mut().enumerate() {
                *b = (n as usize).wrapping_add(i).wrapping_mul(id as usize + 3) as u8;
            }
            let sum = fnv(&buf[..len - 8]);
            buf[len - 8..len].copy_from_slice(&sum.to_le_bytes());
            len
        }

        /// Verifies a payload made by [`fill`]; returns (id, n).
        pub(super) fn check(payload: &[u8]) -> Result<(u32, u64), String> {
            if payload.len() < 20 {
                return Err(format!("short payload ({} bytes)", payload.len()));
            }
            let (body, sum) = payload.split_at(payload.len() - 8);
            if fnv(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
                return Err("checksum mismatch: corrupt frame".into());
            }
            let id = u32::from_le_bytes(body[..4].try_into().unwrap());
            let n = u64::from_le_bytes(body[4..12].try_into().unwrap());
            Ok((id, n))
        }
    }
}
