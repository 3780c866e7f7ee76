//! `iceoryx2`: two publish-subscribe services (ping and pong) with `[u8]` slice payloads, over
//! the zero-copy path: `loan_slice_uninit` → write every byte in place → `assume_init` → `send`;
//! the receiver loops on `receive()` until it returns a sample and reads it in place.

use std::process::Child;

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;

use crate::harness::{self, Endpoint};

/// The subscriber's buffer in throughput mode, in samples.
const STREAM_BUFFER: usize = 256;

/// A publisher on one service and a subscriber to the other.
pub struct IoxEnd {
    publisher: Publisher<ipc::Service, [u8], ()>,
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    // Declared last: the ports go before their node.
    _node: Node<ipc::Service>,
}

impl Endpoint for IoxEnd {
    fn send(&mut self, len: usize, fill: u8) {
        let mut sample = self
            .publisher
            .loan_slice_uninit(len)
            .expect("loan from iceoryx2");
        let payload = sample.payload_mut();
        assert_eq!(payload.len(), len);
        // SAFETY: `payload` is `len` writable `MaybeUninit<u8>` in the loaned chunk; writing a
        // byte into each is what initializing them means.
        unsafe { std::ptr::write_bytes(payload.as_mut_ptr().cast::<u8>(), fill, len) };
        // SAFETY: every element was written just above.
        let sample = unsafe { sample.assume_init() };
        sample.send().expect("send with iceoryx2");
    }

    fn recv(&mut self) -> (usize, u64) {
        loop {
            if let Some(sample) = self.subscriber.receive().expect("receive from iceoryx2") {
                let payload = sample.payload();
                return (payload.len(), harness::read_all(payload));
            }
            std::hint::spin_loop();
        }
    }
}

/// Opens (or creates) the two services under `prefix` and attaches a publisher to `send_to` and
/// a subscriber to `receive_from`.
fn attach(prefix: &str, max_len: usize, send_to: &str, receive_from: &str) -> IoxEnd {
    let streaming = harness::stream_count().is_some();
    // Only errors: iceoryx2 would otherwise log every node and service it creates.
    set_log_level(LogLevel::Error);
    // The subscriber's `receive` scans a slot map sized by this buffer (128 by default) on every
    // call; 2, the fewest it accepts with the default of 2 borrowed samples, makes busy polling
    // cheaper. This is in iceoryx2's favour: with the default, its p50 is about 10 % higher here.
    let mut config = Config::global_config().clone();
    config
        .defaults
        .publish_subscribe
        .subscriber_expired_connection_buffer = 2;
    let node = NodeBuilder::new()
        .config(&config)
        // Ctrl-C should end the benchmark, not be swallowed by iceoryx2's handler.
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .expect("create an iceoryx2 node");
    let service = |name: &str| {
        let name = ServiceName::new(&format!("{prefix}/{name}")).expect("service name");
        // The quality of service iceoryx2's own publish-subscribe benchmark uses: one publisher,
        // one subscriber, no history, a one-sample subscriber buffer.
        // In throughput mode: a subscriber buffer of 256 samples and no overflow, so that the
        // publisher waits (RetryUntilDelivered) instead of dropping — iceoryx2's backpressure.
        node.service_builder(&name)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size(if streaming { STREAM_BUFFER } else { 1 })
            .enable_safe_overflow(!streaming)
            .open_or_create()
            .expect("open or create an iceoryx2 service")
    };
    let (out, inbound) = (service(send_to), service(receive_from));
    let subscriber = inbound
        .subscriber_builder()
        .buffer_size(if streaming { STREAM_BUFFER } else { 1 })
        .create()
        .expect("create an iceoryx2 subscriber");
    let publisher = out
        .publisher_builder()
        .initial_max_slice_len(max_len.max(1))
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("create an iceoryx2 publisher");
    IoxEnd {
        publisher,
        subscriber,
        _node: node,
    }
}

/// Parent side: services named after this process and the payload size, so no two cases (nor
/// a leftover from an earlier killed run) share one. The parent subscribes to pong before the
/// child exists, so the child's "ready" cannot be missed.
pub fn parent(len: usize) -> (IoxEnd, Child) {
    let prefix = format!("shmbus-compare/{}/{len}", std::process::id());
    let end = attach(&prefix, len, "ping", "pong");
    let child = harness::spawn_child("iceoryx2", &[], &format!("{len} {prefix}"));
    (end, child)
}

/// Child side: subscribes to ping before announcing readiness.
pub fn child() {
    let arg = harness::child_arg();
    let (len, prefix) = arg.split_once(' ').expect("LEN PREFIX");
    let len: usize = len.parse().expect("payload length");
    harness::serve(&mut attach(prefix, len, "pong", "ping"));
}
