//! `nats`: NATS request/reply through a local `nats-server` over TCP loopback.
//!
//! The benchmark starts `nats-server` (from `PATH`) on a free loopback port, on any CPU, for the
//! whole run (see `nats_server.rs`). The child subscribes to a subject and publishes each answer
//! to the request's reply subject; the parent asks with `Client::request` (async-nats, which
//! waits on one shared inbox subscription). Both clients run on a current-thread Tokio runtime and sleep in `epoll` while
//! they wait; async-nats sets `TCP_NODELAY`, and so does the Go server.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::AsyncRequester;
use crate::harness;
use crate::nats_server::Server;
use crate::process::{current_thread_runtime, ready_pipe, say_ready, wait_ready};

/// The subject served.
const SUBJECT: &str = "bench.rpc";

/// The parent's requester.
struct NatsRequester {
    client: async_nats::Client,
}

impl AsyncRequester for NatsRequester {
    async fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64) {
        let response = self
            .client
            .request(SUBJECT, Bytes::from(vec![fill; len]))
            .await
            .expect("request over NATS");
        (response.payload.len(), harness::read_all(&response.payload))
    }
}

/// One case: starts the responding child, connects, times the round trips.
pub fn measure(server: &Server, len: usize, warmup: usize, rounds: usize) -> Histogram<u64> {
    let url = server.url();
    let (ready, ready_w) = ready_pipe();
    let child = harness::spawn_child("nats", &[ready_w.as_fd()], &url);
    drop(ready_w);
    wait_ready(ready, "the NATS responder");
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .expect("connect to nats-server");
        // The responder has flushed its subscription; ask until the server has it too (a
        // request with no subscriber fails at once with "no responders").
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = client.request(SUBJECT, Bytes::from_static(b"?")).await {
            assert!(Instant::now() < deadline, "no NATS responder: {e}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut end = NatsRequester { client };
        let rtt = crate::run_async(&mut end, child, len, warmup, rounds).await;
        drop(end);
        rtt
    })
}

/// The child: answers until the empty request, which it answers (and flushes) before it
/// returns.
pub fn child() {
    let url = harness::child_arg();
    current_thread_runtime().block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .expect("connect to nats-server");
        let mut requests = client.subscribe(SUBJECT).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        say_ready();
        while let Some(request) = requests.next().await {
            let len = request.payload.len();
            let reply = request.reply.expect("a request carries a reply subject");
            let fill = harness::reply_fill(harness::read_all(&request.payload));
            client
                .publish(reply, Bytes::from(vec![fill; len]))
                .await
                .expect("publish the answer");
            if len == 0 {
                client.flush().await.expect("flush the last answer");
                return;
            }
        }
        panic!("the NATS subscription ended before the empty request");
    });
}
