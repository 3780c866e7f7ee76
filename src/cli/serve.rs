//! `shmbus serve`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::warn;

use crate::{RecvError, Responder, ServeError};

use super::{BusArg, Failure, Outcome};

/// How many `--exec` commands run at once; requests beyond wait in the request ring.
const MAX_RUNNING: usize = 16;

/// Arguments of `shmbus serve`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("answer").required(true).args(["echo", "exec"])))]
pub struct Args {
    #[command(flatten)]
    bus: BusArg,
    /// The topic to serve (no wildcards).
    topic: String,
    /// Answer each request with its own payload.
    #[arg(long)]
    echo: bool,
    /// Run `sh -c CMD` per request, the payload on its stdin, and answer with its stdout (one
    /// trailing newline removed). Up to 16 run at once.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
}

/// Serves until killed.
pub fn run(args: Args) -> Outcome {
    let bus = args.bus.connect()?;
    let mut server = bus.serve(&args.topic).map_err(|e| match e {
        ServeError::Attach(e) => Failure::from(e),
        e => Failure::error(e),
    })?;
    eprintln!("serving {}", args.topic);
    let running = Arc::new(AtomicUsize::new(0));
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(e @ (RecvError::Lagged { .. } | RecvError::Corrupt { .. })) => {
                eprintln!("shmbus: {e}");
                continue;
            }
            Err(e) => return Err(Failure::error(e)),
        };
        let Some(cmd) = &args.exec else {
            let len = request.payload().len();
            let echo = request.respond_with(len, |req, buf| {
                buf.copy_from_slice(req);
                len
            });
            if let Err(e) = echo {
                warn!("response not delivered: {e}");
            }
            continue;
        };
        // The payload goes to the command's stdin anyway: copied now, the frame is released at
        // once (no limit on requests held in place applies), and only where to answer is kept.
        let payload = request.payload().to_vec();
        let responder = request.into_responder();
        // Only a count (no data rides on it): Acquire pairs with the command threads' AcqRel
        // decrement, so a slot they freed is seen.
        while running.load(Ordering::Acquire) >= MAX_RUNNING {
            std::thread::park();
        }
        running.fetch_add(1, Ordering::AcqRel);
        let (cmd, running, main) = (cmd.clone(), Arc::clone(&running), std::thread::current());
        std::thread::spawn(move || {
            answer_with_command(&cmd, payload, responder);
            // AcqRel pairs with the Acquire load of the serving loop, which may be parked.
            running.fetch_sub(1, Ordering::AcqRel);
            main.unpark();
        });
    }
}

/// Runs `cmd` for one request and answers with its output; a command that fails leaves the
/// request abandoned (the requester is told) and is reported here.
fn answer_with_command(cmd: &str, payload: Vec<u8>, responder: Responder) {
    let child = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("shmbus: cannot run {cmd:?}: {e}");
            return;
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    // Fed from a thread of its own, so a command that answers before reading cannot deadlock.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output();
    let _ = feeder.join();
    match output {
        Ok(out) if out.status.success() => {
            let mut stdout = out.stdout;
            if stdout.last() == Some(&b'\n') {
                stdout.pop();
            }
            if let Err(e) = responder.respond(&stdout) {
                warn!("response not delivered: {e}");
            }
        }
        Ok(out) => eprintln!("shmbus: {cmd:?} failed ({})", out.status),
        Err(e) => eprintln!("shmbus: {cmd:?}: {e}"),
    }
}
