//! `t2_bus`: t2_bus 0.2.0 publish/subscribe through its bus server over TCP loopback.
//!
//! The server (`ServerBuilder::serve_tcp`, as `t2 serve tcp:…` does) runs in a process of its
//! own on any CPU (see `t2_server.rs`), started afresh for every case. The parent connects with
//! `Connector::new_tcp`, subscribes with `Client::subscribe::<Blob>`, and only then starts the
//! publishing child, which connects the same way and calls `Client::publish` for every message.
//!
//! Every t2_bus publish is acknowledged by the server (the call returns the number of
//! receivers), so a publisher that awaited each call before the next would send one message per
//! round trip to the server. The child keeps up to [`IN_FLIGHT`] publish calls going at once
//! instead (`StreamExt::buffered`, which starts them in order; one connection keeps them in
//! order), the most its API allows. Payloads are CBOR byte strings (`serde_bytes`); t2_bus gzips
//! payloads above 5,000 bytes, so the 64 KiB messages are compressed, and since every byte of
//! one holds the same value they shrink to a few hundred bytes on the wire. Both clients run on
//! a current-thread Tokio runtime.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use t2_bus::prelude::{PublishProtocol, Subscription};

use crate::harness;
use crate::process::current_thread_runtime;
use crate::t2_server::{Broker, Listen};
use crate::{AsyncSubscriber, Streamed};

/// The topic (t2_bus topics are words of `a-z` and `_`), under the protocol's prefix.
const TOPIC: &str = "stream";

/// How many publish calls the child keeps going at once.
const IN_FLIGHT: usize = 128;

/// A message: bytes, encoded as one CBOR byte string.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

impl PublishProtocol for Blob {
    fn prefix() -> &'static str {
        "bench"
    }
}

/// The parent's subscription.
struct T2Subscriber {
    subscription: Subscription<(String, Blob)>,
}

impl AsyncSubscriber for T2Subscriber {
    async fn recv(&mut self, patience: Duration) -> Option<(usize, u64)> {
        let (_topic, message) = tokio::time::timeout(patience, self.subscription.recv())
            .await
            .ok()??;
        Some((message.0.len(), harness::read_all(&message.0)))
    }
}

/// One case: starts the broker, subscribes, starts the publishing child, receives the stream.
pub fn stream(len: usize, count: u64) -> Streamed {
    let broker = Broker::start(Listen::tcp());
    current_thread_runtime().block_on(async {
        let client = broker.listen.connect().await;
        let subscription = client
            .subscribe::<Blob>(TOPIC)
            .await
            .expect("subscribe over t2_bus");
        let arg = format!("{len} {}", broker.listen.to_arg());
        let child = harness::spawn_child("t2_bus", &[], &arg);
        let mut end = T2Subscriber { subscription };
        let streamed = crate::stream_async(&mut end, child, len, count).await;
        drop(end);
        client.stop().await.expect("stop the t2_bus client");
        streamed
    })
    // The broker stops here.
}

/// The child: publishes `count` messages of `len` bytes, then stops its client.
pub fn child() {
    let arg = harness::child_arg();
    let (len, listen) = arg.split_once(' ').expect("a length and an address");
    let len: usize = len.parse().expect("a message length");
    let listen = Listen::parse(listen);
    let count = harness::stream_count().expect("a message count");
    current_thread_runtime().block_on(async {
        let client = listen.connect().await;
        let client = &client;
        futures::stream::iter(0..count)
            .map(|i| async move {
                let message = Blob(vec![harness::stream_fill(i); len]);
                client.publish(TOPIC, &message).await
            })
            .buffered(IN_FLIGHT)
            .for_each(|receivers| async move {
                let receivers = receivers.expect("publish over t2_bus");
                assert_eq!(receivers, 1, "the parent subscribed before this started");
            })
            .await;
    });
}
