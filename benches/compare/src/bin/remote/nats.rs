//! `nats`: NATS core publish/subscribe through a local `nats-server` over TCP loopback.
//!
//! The server runs for the whole run, on any CPU (see `nats_server.rs`). The parent subscribes
//! to a subject and flushes (so the server has the subscription), then starts the publishing
//! child, which calls `Client::publish` for every message (async-nats queues it for its
//! connection task, which writes in batches) and flushes at the end. NATS core has no flow
//! control from subscriber to publisher: the server drops messages for a subscriber that falls
//! too far behind (a slow consumer), and so does async-nats when a subscription's queue (65,536
//! messages by default) is full. On the parent's current-thread runtime, async-nats's
//! connection task parses whole socket reads into that queue before the subscriber gets to run,
//! and with the default queue most of an 8-byte stream was dropped (1.73 M of 2 M messages in
//! one run); the parent's queue therefore holds a whole stream (`subscription_capacity`), so
//! that what is measured is delivery, not loss. The parent counts what arrives and the table
//! reports what was lost all the same. Both clients run on a current-thread Tokio runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::harness;
use crate::nats_server::Server;
use crate::process::current_thread_runtime;
use crate::{AsyncSubscriber, Streamed};

/// The subject.
const SUBJECT: &str = "bench.stream";

/// async-nats's default subscription queue, in messages; the parent's is made large enough for
/// a whole stream.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// The parent's subscription.
struct NatsSubscriber {
    subscriber: async_nats::Subscriber,
}

impl AsyncSubscriber for NatsSubscriber {
    async fn recv(&mut self, patience: Duration) -> Option<(usize, u64)> {
        let message = tokio::time::timeout(patience, self.subscriber.next())
            .await
            .ok()??;
        Some((message.payload.len(), harness::read_all(&message.payload)))
    }
}

/// One case: subscribes, starts the publishing child, receives the stream. Says on stderr where
/// messages were lost, as far as async-nats tells: its own slow-consumer events (a full
/// subscription queue; it may drop some of these events too) and disconnections (the server
/// closes a slow consumer's connection).
pub fn stream(server: &Server, len: usize, count: u64) -> Streamed {
    let url = server.url();
    let slow = Arc::new(AtomicU64::new(0));
    let disconnected = Arc::new(AtomicU64::new(0));
    let streamed = current_thread_runtime().block_on(async {
        let (slow, disconnected) = (Arc::clone(&slow), Arc::clone(&disconnected));
        let client = async_nats::ConnectOptions::new()
            // Room for the whole stream: see the module's documentation.
            .subscription_capacity(SUBSCRIPTION_CAPACITY.max(count as usize))
            .event_callback(move |event| {
                let counter = match event {
                    async_nats::Event::SlowConsumer(_) => Some(&slow),
                    async_nats::Event::Disconnected => Some(&disconnected),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                async {}
            })
            .connect(url.as_str())
            .await
            .expect("connect to nats-server");
        let subscriber = client.subscribe(SUBJECT).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        let child = harness::spawn_child("nats", &[], &format!("{len} {url}"));
        let mut end = NatsSubscriber { subscriber };
        let streamed = crate::stream_async(&mut end, child, len, count).await;
        drop(end);
        streamed
    });
    if streamed.lost > 0 {
        eprintln!(
            "nats: {} of {count} messages lost; async-nats reported {} slow-consumer events \
             (its subscription queue full) and {} disconnections",
            streamed.lost,
            slow.load(Ordering::Relaxed),
            disconnected.load(Ordering::Relaxed)
        );
    }
    streamed
}

/// The child: publishes `count` messages of `len` bytes, then flushes.
pub fn child() {
    let arg = harness::child_arg();
    let (len, url) = arg.split_once(' ').expect("a length and a URL");
    let len: usize = len.parse().expect("a message length");
    let count = harness::stream_count().expect("a message count");
    current_thread_runtime().block_on(async {
        let client = async_nats::connect(url)
            .await
            .expect("connect to nats-server");
        for i in 0..count {
            client
                .publish(SUBJECT, Bytes::from(vec![harness::stream_fill(i); len]))
                .await
                .expect("publish over NATS");
        }
        client.flush().await.expect("flush the stream");
    });
}
