//! Callbacks, for programs written around events (LEAP's register/emit style): a closure runs
//! on a dispatcher thread for each message ([`Bus::on`](crate::Bus::on)) or request
//! ([`Bus::serve_with`](crate::Bus::serve_with)), until the returned [`Dispatcher`] drops. A
//! handler that panics is reported (logged, and counted by [`Dispatcher::panics`]); the
//! dispatcher goes on with the next one, and a request whose handler panicked is answered as
//! abandoned.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use shmbus_shm::Deadline;
use tracing::{debug, error, warn};

use super::server::{Request, Server};
use crate::client::pubsub::{Patience, Sample, Subscriber, Wait, Waker};

/// A running dispatcher thread; dropping it stops the thread (after the handler call in
/// progress, if any) and ends the subscription or the serving.
#[must_use = "the dispatcher stops when this guard drops"]
pub struct Dispatcher {
    what: String,
    stop: Arc<AtomicBool>,
    panics: Arc<AtomicU64>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("what", &self.what)
            .field("panics", &self.panics())
            .finish()
    }
}

impl Dispatcher {
    /// How many handler calls panicked so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Release pairs with the Acquire load of the dispatcher's stop check.
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            // A handler that drops its own guard cannot wait for itself; the thread ends after it.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// What a panic said, for the log.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Starts a dispatcher thread named `name` that runs `turn` until stopped. `turn` gets the stop
/// check and returns whether to go on.
fn spawn(
    what: String,
    waker: Waker,
    mut turn: impl FnMut(&dyn Fn() -> bool, &AtomicU64) -> bool + Send + 'static,
) -> std::io::Result<Dispatcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let panics = Arc::new(AtomicU64::new(0));
    let thread = {
        let (stop, panics) = (Arc::clone(&stop), Arc::clone(&panics));
        std::thread::Builder::new()
            .name("shmbus-dispatch".into())
            .spawn(move || {
                // Acquire pairs with the Release store of the guard's `drop`.
                let stopped = || stop.load(Ordering::Acquire);
                while !stopped() && turn(&stopped, &panics) {}
            })?
    };
    Ok(Dispatcher {
        what,
        stop,
        panics,
        waker,
        thread: Some(thread),
    })
}

/// Runs `handler` for every message `sub` receives; see [`Bus::on`](crate::Bus::on).
pub(crate) fn on(
    mut sub: Subscriber,
    mut handler: impl FnMut(Sample<'_>) + Send + 'static,
) -> std::io::Result<Dispatcher> {
    let what = sub.patterns().collect::<Vec<_>>().join(" ");
    let label = what.clone();
    spawn(what, sub.waker(), move |stopped, panics| {
        match sub.receive_or_stop(Patience::Until(Deadline::Never), stopped) {
            Ok(sample) => {
                let topic = sample.topic_ref().clone();
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| handler(sample))) {
                    panics.fetch_add(1, Ordering::Relaxed);
                    error!(pattern = label, topic = %topic, "message handler panicked: {}", panic_message(&*p));
                }
                true
            }
            Err(Wait::Failed(e)) => {
                warn!(pattern = label, "{e}");
                true
            }
            Err(_) => false,
        }
    })
}

/// Answers every request `server` receives with what `handler` returns; see
/// [`Bus::serve_with`](crate::Bus::serve_with).
pub(crate) fn serve_with<R: AsRef<[u8]>>(
    mut server: Server,
    mut handler: impl FnMut(&Request<'_>) -> R + Send + 'static,
) -> std::io::Result<Dispatcher> {
    let topic = server.topic().to_string();
    let label = topic.clone();
    spawn(topic, server.waker(), move |stopped, panics| {
        match server.receive(Patience::Until(Deadline::Never), stopped) {
            Ok(request) => {
                match catch_unwind(AssertUnwindSafe(|| handler(&request))) {
                    Ok(response) => {
                        if let Err(e) = request.respond(response.as_ref()) {
                            debug!(topic = label, "response not delivered: {e}");
                        }
                    }
                    Err(p) => {
                        panics.fetch_add(1, Ordering::Relaxed);
                        error!(
                            topic = label,
                            "request handler panicked: {}",
                            panic_message(&*p)
                        );
                        // Dropping the request tells its requester it was abandoned.
                    }
                }
                true
            }
            Err(Wait::Failed(e)) => {
                warn!(topic = label, "{e}");
                true
            }
            Err(_) => false,
        }
    })
}
