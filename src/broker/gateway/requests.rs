//! Remote clients' requests at the gateway: each is made on the bus on the client's behalf, by
//! a worker of the connection, and its answers are written back as they come.
//!
//! A connection's workers are started as needed, up to [`MAX_WORKERS`], and each waits for one
//! exchange at a time, so requests to a slow server do not hold up the others. Requests beyond
//! [`MAX_PENDING`] waiting or in progress are refused. Each worker asks through requesters of
//! its own, one per topic: no worker waits for another's inbox, and a topic's server is looked
//! up once per worker, not once per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

use crate::client::Bus;
use crate::protocol::ErrorCode;
use crate::protocol::remote::{AnswerKind, Frame, Refusal, Unanswered};
use crate::sync::lock;
use crate::transport::wire::Wire;
use crate::{RequestError, Requester, Response};

/// Most workers one connection has.
const MAX_WORKERS: usize = 32;

/// Most requests of one connection waiting or in progress.
const MAX_PENDING: usize = 256;

/// Most topics a worker keeps a requester (and its inbox) for; past that it lets them all go.
const REQUESTERS: usize = 16;

/// One request to make.
pub(super) struct Job {
    /// The client's id for it.
    pub(super) id: u32,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    /// Answers as a stream.
    pub(super) stream: bool,
    /// How long to wait for (each) answer; `None`: as long as it takes.
    pub(super) timeout: Option<Duration>,
}

impl Job {
    /// The job a [`Frame::Request`]'s fields ask for (`timeout_ms` `u64::MAX`: no timeout).
    pub(super) fn new(id: u32, stream: bool, timeout_ms: u64, topic: &str, payload: &[u8]) -> Job {
        Job {
            id,
            topic: topic.to_string(),
            payload: payload.to_vec(),
            stream,
            timeout: (timeout_ms != u64::MAX).then(|| Duration::from_millis(timeout_ms)),
        }
    }
}

/// One connection's request workers. Dropping it lets idle workers end; busy ones end after
/// their exchange (whose answers then go nowhere, the connection being closed).
pub(super) struct Requests {
    bus: Bus,
    wire: Arc<Wire>,
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    workers: AtomicUsize,
    idle: AtomicUsize,
    pending: AtomicUsize,
}

impl Requests {
    /// Workers that request on `bus` and answer on `wire`.
    pub(super) fn new(bus: Bus, wire: Arc<Wire>) -> Requests {
        let (jobs, queue) = mpsc::channel();
        Requests {
            bus,
            wire,
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            counts: Arc::default(),
        }
    }

    /// Hands `job` to a worker, starting one if none is idle; refuses it (on the wire) when the
    /// connection has too many requests already.
    pub(super) fn submit(&self, job: Job) {
        // Relaxed: counts for limits and for whether to start a worker, ordered by nothing else
        // (a worker started needlessly just waits; one not started leaves the job to the next
        // idle one).
        if self.counts.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING {
            self.counts.pending.fetch_sub(1, Ordering::Relaxed);
            let refusal = Refusal::new(
                ErrorCode::Exhausted,
                format!("at most {MAX_PENDING} requests per connection at once"),
            );
            send_unanswered(&self.wire, job.id, Unanswered::Refused(refusal));
            return;
        }
        if self.counts.idle.load(Ordering::Relaxed) == 0
            && self.counts.workers.load(Ordering::Relaxed) < MAX_WORKERS
        {
            self.start_worker();
        }
        // The receiver lives as long as any worker or `self`.
        let _ = self.jobs.send(job);
    }

    fn start_worker(&self) {
        let bus = self.bus.clone();
        let wire = Arc::clone(&self.wire);
        let queue = Arc::clone(&self.queue);
        let counts = Arc::clone(&self.counts);
        counts.workers.fetch_add(1, Ordering::Relaxed);
        let started = std::thread::Builder::new()
            .name("shmbus-gw-req".into())
            .spawn(move || work(&bus, &wire, &queue, &counts));
        if let Err(e) = started {
            self.counts.workers.fetch_sub(1, Ordering::Relaxed);
            debug!("gateway: cannot start a request worker: {e}");
        }
    }
}

/// A worker: takes jobs until the connection's [`Requests`] is dropped. It asks through
/// requesters of its own, one per topic (up to [`REQUESTERS`]), each with its own inbox.
fn work(bus: &Bus, wire: &Wire, queue: &Mutex<mpsc::Receiver<Job>>, counts: &Counts) {
    let mut requesters = HashMap::new();
    loop {
        counts.idle.fetch_add(1, Ordering::Relaxed);
        let job = lock(queue).recv();
        counts.idle.fetch_sub(1, Ordering::Relaxed);
        let Ok(job) = job else {
            counts.workers.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        exchange(bus, &mut requesters, wire, &job);
        counts.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes the request with the worker's requester of its topic and writes its answers (or why
/// there are none) to the client.
fn exchange(bus: &Bus, requesters: &mut HashMap<String, Requester>, wire: &Wire, job: &Job) {
    if !requesters.contains_key(&job.topic) {
        if requesters.len() >= REQUESTERS {
            requesters.clear();
        }
        match bus.requester(&job.topic) {
            Ok(requester) => {
                requesters.insert(job.topic.clone(), requester);
            }
            Err(e) => return send_unanswered(wire, job.id, unanswered(e)),
        }
    }
    let Some(requester) = requesters.get_mut(&job.topic) else {
        return;
    };
    if !job.stream {
        let answer = match job.timeout {
            Some(timeout) => requester.request_timeout(&job.payload, timeout),
            None => requester.request(&job.payload),
        };
        match answer {
            Ok(response) => {
                send_answer(wire, job.id, AnswerKind::Single, &response);
            }
            Err(e) => send_unanswered(wire, job.id, unanswered(e)),
        }
        return;
    }
    let mut stream = match requester.request_stream(&job.payload, job.timeout) {
        Ok(stream) => stream,
        Err(e) => return send_unanswered(wire, job.id, unanswered(e)),
    };
    loop {
        match stream.next_answer() {
            Some(Ok((kind, response))) => {
                // A single answer ends the exchange; a stream's items are followed by its end.
                if !send_answer(wire, job.id, kind, &response) || kind == AnswerKind::Single {
                    return;
                }
            }
            Some(Err(e)) => return send_unanswered(wire, job.id, unanswered(e)),
            None => {
                let end = Frame::Answer {
                    id: job.id,
                    kind: AnswerKind::End,
                    payload: &[],
                };
                let _ = wire.send(&end);
                return;
            }
        }
    }
}

/// Sends one answer; returns whether the connection took it.
fn send_answer(wire: &Wire, id: u32, kind: AnswerKind, response: &Response) -> bool {
    let frame = Frame::Answer {
        id,
        kind,
        payload: response.payload(),
    };
    wire.send(&frame).is_ok()
}

fn send_unanswered(wire: &Wire, id: u32, why: Unanswered) {
    let _ = wire.send(&Frame::Unanswered { id, why });
}

/// What the client is told of a request error at the gateway.
pub(super) fn unanswered(e: RequestError) -> Unanswered {
    match e {
        RequestError::NoServer { .. } => Unanswered::NoServer,
        RequestError::Timeout { .. } => Unanswered::Timeout,
        RequestError::ServerGone { .. } => Unanswered::ServerGone,
        RequestError::Abandoned { .. } => Unanswered::Abandoned,
        RequestError::TooLarge { len, max, .. } => Unanswered::TooLarge {
            len: len as u64,
            max: max as u64,
        },
        RequestError::InvalidTopic(e) => {
            Unanswered::Refused(Refusal::new(ErrorCode::InvalidTopic, e.to_string()))
        }
        RequestError::PermissionDenied { message, .. } => {
            Unanswered::Refused(Refusal::new(ErrorCode::PermissionDenied, message))
        }
        other => Unanswered::Refused(Refusal::new(ErrorCode::Internal, other.to_string())),
    }
}
