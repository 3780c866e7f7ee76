//! `t2_bus`: t2_bus 0.2.0 request/response over its Unix-socket transport.
//!
//! Its documented setup: a bus server (`ServerBuilder::serve_unix_socket`, as `t2 serve unix:…`
//! does) that every message passes through, here in a process of its own on a multi-thread
//! Tokio runtime (`#[tokio::main]`'s default, as in the `t2` tool) and on any CPU (see
//! `t2_server.rs`), started afresh for every case: t2_bus 0.2.0's server stops 30 s after its
//! first answered request (each request's 30-second timeout fires even when it was answered,
//! finds no pending request, and the error ends the server's task), and a case takes less than
//! that; clients connect with `Connector::new_unix`. The child serves a `RequestProtocol` with
//! `Client::serve` and answers with `Client::respond`; the parent asks with `Client::request`.
//! Payloads are CBOR byte strings (`serde_bytes`), so a request of n bytes is n bytes plus a few
//! on the wire; t2_bus gzips payloads above 5,000 bytes, so neither size here is compressed.
//! Both clients run on a current-thread Tokio runtime and sleep in `epoll` while they wait.

use std::os::fd::AsFd;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use t2_bus::prelude::{Client, RequestProtocol};

use crate::AsyncRequester;
use crate::harness;
use crate::process::{current_thread_runtime, ready_pipe, say_ready, wait_ready};
use crate::t2_server::{Broker, Listen};

/// The topic served (t2_bus topics are words of `a-z` and `_`), under the protocol's prefix.
const TOPIC: &str = "rpc";

/// The request and the response: bytes, encoded as one CBOR byte string.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

impl RequestProtocol for Blob {
    type Rsp = Blob;

    fn prefix() -> &'static str {
        "bench"
    }
}

/// The parent's requester.
struct T2Requester {
    client: Client,
    /// The request, refilled for every round trip.
    request: Blob,
}

impl AsyncRequester for T2Requester {
    async fn round_trip(&mut self, len: usize, fill: u8) -> (usize, u64) {
        self.request.0.clear();
        self.request.0.resize(len, fill);
        let response = self.client.request(TOPIC, &self.request).await.expect(
            "request over t2_bus (its server stops 30 s after the first request: see above)",
        );
        (response.0.len(), harness::read_all(&response.0))
    }
}

/// One case: starts the broker and the serving child, connects, times the round trips.
pub fn measure(len: usize, warmup: usize, rounds: usize) -> Histogram<u64> {
    let broker = Broker::start(Listen::unix());
    let (ready, ready_w) = ready_pipe();
    let child = harness::spawn_child("t2_bus", &[ready_w.as_fd()], &broker.listen.to_arg());
    drop(ready_w);
    wait_ready(ready, "the t2_bus responder");
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let client = broker.listen.connect().await;
        let mut end = T2Requester {
            client,
            request: Blob(Vec::with_capacity(len)),
        };
        let rtt = crate::run_async(&mut end, child, len, warmup, rounds).await;
        end.client.stop().await.expect("stop the t2_bus client");
        rtt
    })
    // The broker stops here.
}

/// The child: serves until the empty request, which it answers before it returns.
pub fn child() {
    let listen = Listen::parse(&harness::child_arg());
    current_thread_runtime().block_on(async {
        let client = listen.connect().await;
        let mut requests = client.serve::<Blob>(TOPIC).await.expect("serve the topic");
        say_ready();
        let mut response = Blob(Vec::new());
        loop {
            let (_topic, id, request) = requests.recv().await.expect("receive a request");
            let len = request.0.len();
            response.0.clear();
            response
                .0
                .resize(len, harness::reply_fill(harness::read_all(&request.0)));
            client
                .respond::<Blob>(id, &response)
                .await
                .expect("respond over t2_bus");
            if len == 0 {
                break;
            }
        }
        drop(requests);
        client.stop().await.expect("stop the t2_bus client");
    });
}
