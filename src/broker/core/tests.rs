//! The core's decisions, driven directly: no sockets, no event loop, real rings in memfds.

use std::time::{Duration, Instant};

use shmbus_shm::{DoorbellTable, ReaderMode, ReaderState, Ring, RingConfig};

use super::clients::client_owner;
use super::*;
use crate::protocol::pubsub::{
    Publish, Publishing, RingAttachment, Subscribe, Subscribed, Unpublish, Unsubscribe,
};
use crate::protocol::{ErrorCode, PublisherId, SubscriptionId};

const EVICT_AFTER: Duration = Duration::from_secs(5);

fn core() -> Core {
    let limits = Limits {
        ring: RingConfig {
            capacity: 1 << 16,
            max_payload: 1024,
            writer_slots: 4,
            reader_slots: 4,
        },
        evict_after: EVICT_AFTER,
    };
    Core::new(limits, DoorbellTable::create(64).unwrap())
}

fn creds() -> PeerCredentials {
    PeerCredentials {
        pid: 1,
        uid: 1000,
        gid: 1000,
    }
}

/// A connected, greeted client.
fn client(core: &mut Core) -> ClientId {
    let id = core.connect(creds());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: "test".into(),
    };
    let (welcome, keep) = core.hello(id, hello);
    assert!(keep);
    assert!(matches!(welcome.msg, BrokerMessage::Welcome(_)));
    id
}

fn call(core: &mut Core, client: ClientId, body: Request) -> Vec<Outgoing> {
    core.request(client, RequestId::from_raw(7), body)
}

/// The reply to `client` among `out`.
fn reply(out: &[Outgoing], client: ClientId) -> &Result<Reply, ErrorReply> {
    out.iter()
        .find_map(|o| match &o.msg {
            BrokerMessage::Reply { result, .. } if o.client == client => Some(result),
            _ => None,
        })
        .expect("a reply")
}

/// The attachments in `out`, as (client, attachment).
fn attachments(out: &[Outgoing]) -> Vec<(ClientId, RingAttachment)> {
    out.iter()
        .filter_map(|o| match &o.msg {
            BrokerMessage::RingAttached(a) => Some((o.client, a.clone())),
            _ => None,
        })
        .collect()
}

fn publish(core: &mut Core, client: ClientId, topic: &str) -> (Publishing, Vec<Outgoing>) {
    let mut out = call(
        core,
        client,
        Request::Publish(Publish {
            topic: topic.into(),
            max_payload: 1024,
        }),
    );
    let Ok(Reply::Publishing(p)) = reply(&out, client).clone() else {
        panic!("expected Publishing");
    };
    // The reply carries the ring's data and readers descriptors.
    let pos = out
        .iter()
        .position(|o| o.client == client && matches!(o.msg, BrokerMessage::Reply { .. }));
    assert_eq!(out[pos.unwrap()].fds.len(), 2);
    out.retain(|o| !(o.client == client && matches!(o.msg, BrokerMessage::Reply { .. })));
    (p, out)
}

/// Subscribes `client` to `pattern` with a doorbell of its own; returns the subscription and
/// what the broker sent.
fn subscribe(core: &mut Core, client: ClientId, pattern: &str) -> (SubscriptionId, Vec<Outgoing>) {
    let doorbell = core.doorbells.claim(client_owner(client)).unwrap();
    let index = doorbell.index();
    std::mem::forget(doorbell); // held by the client until the core reclaims it
    let out = call(
        core,
        client,
        Request::Subscribe(Subscribe {
            pattern: pattern.into(),
            mode: ReaderMode::Tethered,
            history: 0,
            doorbell: index,
        }),
    );
    let Ok(Reply::Subscribed(Subscribed {
        subscription,
        rings,
    })) = reply(&out, client).clone()
    else {
        panic!("expected Subscribed, got {:?}", reply(&out, client));
    };
    assert_eq!(rings as usize, attachments(&out).len());
    (subscription, out)
}

fn ring(core: &Core, topic: &str) -> Ring {
    core.rings[topic].ring.clone()
}

#[test]
fn clients_get_distinct_ids_and_a_wrong_version_is_refused() {
    let mut core = core();
    let a = client(&mut core);
    let b = client(&mut core);
    assert_ne!(a, b);
    assert!(core.greeted(a) && core.greeted(b));
    let c = core.connect(creds());
    assert!(!core.greeted(c));
    let future = Hello {
        version: PROTOCOL_VERSION + 1,
        name: "future".into(),
    };
    let (refusal, keep) = core.hello(c, future);
    assert!(!keep);
    match refusal.msg {
        BrokerMessage::Refused(e) => assert_eq!(e.code, ErrorCode::Version),
        other => panic!("{other:?}"),
    }
    assert_eq!(core.client_count(), 3);
    core.disconnect(c, &DisconnectReason::Refused);
    assert_eq!(core.client_count(), 2);
}

#[test]
fn publishing_creates_a_topic_ring_once_and_checks_topic_and_size() {
    let mut core = core();
    let a = client(&mut core);
    let (first, _) = publish(&mut core, a, "s/x");
    let (second, _) = publish(&mut core, a, "s/x");
    assert_eq!(first.ring, second.ring, "one ring per topic");
    assert_ne!(first.publisher, second.publisher);
    let (other, _) = publish(&mut core, a, "s/y");
    assert_ne!(other.ring, first.ring);

    let out = call(
        &mut core,
        a,
        Request::Publish(Publish {
            topic: "s//x".into(),
            max_payload: 10,
        }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::InvalidTopic));
    let out = call(
        &mut core,
        a,
        Request::Publish(Publish {
            topic: "s/x".into(),
            max_payload: 4096,
        }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::TooLarge));
    let out = call(
        &mut core,
        a,
        Request::Unpublish(Unpublish {
            publisher: PublisherId::from_raw(9999),
        }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::Unknown));
}

#[test]
fn subscriptions_are_attached_to_matching_rings_now_and_later() {
    let mut core = core();
    let (p, s1, s2) = (client(&mut core), client(&mut core), client(&mut core));
    publish(&mut core, p, "a/b");
    publish(&mut core, p, "x/y");
    // An existing matching ring is attached before the reply; others are not.
    let (sub1, out) = subscribe(&mut core, s1, "a/*");
    let got = attachments(&out);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1.subscription), (s1, sub1));
    assert_eq!(got[0].1.topic, "a/b");
    let attached_at = out
        .iter()
        .position(|o| matches!(o.msg, BrokerMessage::RingAttached(_)));
    let replied_at = out
        .iter()
        .position(|o| matches!(o.msg, BrokerMessage::Reply { .. }));
    assert!(
        attached_at < replied_at,
        "attachments come before the reply"
    );
    // A pattern matching nothing yet.
    let (sub2, out) = subscribe(&mut core, s2, "a/**");
    assert_eq!(attachments(&out).len(), 1);
    let (sub3, out) = subscribe(&mut core, s2, "new/*");
    assert!(attachments(&out).is_empty());
    // A ring created later reaches every matching subscription, after the publisher's reply.
    let (_, out) = publish(&mut core, p, "a/c");
    let mut got: Vec<_> = attachments(&out)
        .into_iter()
        .map(|(c, a)| (c, a.subscription, a.topic))
        .collect();
    got.sort();
    let mut want = vec![(s1, sub1, "a/c".to_string()), (s2, sub2, "a/c".to_string())];
    want.sort();
    assert_eq!(got, want);
    let (_, out) = publish(&mut core, p, "new/z");
    assert_eq!(attachments(&out)[0].1.subscription, sub3);
    // Each attachment reserved a tethered reader slot on its ring for its subscription.
    let readers = ring(&core, "a/c").readers();
    assert_eq!(readers.len(), 2);
    assert!(readers.iter().all(|r| r.state == ReaderState::Tethered));
}

#[test]
fn a_subscription_needs_a_doorbell_its_client_holds() {
    let mut core = core();
    let (a, b) = (client(&mut core), client(&mut core));
    let theirs = core.doorbells.claim(client_owner(b)).unwrap();
    let out = call(
        &mut core,
        a,
        Request::Subscribe(Subscribe {
            pattern: "q".into(),
            mode: ReaderMode::Lossy,
            history: 0,
            doorbell: theirs.index(),
        }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::NotPermitted));
}

#[test]
fn unsubscribing_and_disconnecting_reclaim_what_was_reserved() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    publish(&mut core, p, "r/1");
    let (sub, _) = subscribe(&mut core, s, "r/*");
    subscribe(&mut core, s, "r/1");
    let ring = ring(&core, "r/1");
    assert_eq!(ring.readers().len(), 2);
    let out = call(
        &mut core,
        s,
        Request::Unsubscribe(Unsubscribe { subscription: sub }),
    );
    assert!(matches!(reply(&out, s), Ok(Reply::Done)));
    assert_eq!(
        ring.readers().len(),
        1,
        "only that subscription's slot went"
    );
    assert!(!core.doorbells.held_by(client_owner(s)).is_empty());
    core.disconnect(s, &DisconnectReason::Closed);
    assert!(
        ring.readers().is_empty(),
        "the client's other slots went with it"
    );
    assert!(core.doorbells.held_by(client_owner(s)).is_empty());
    assert!(core.clients.get(s).is_none());
}

#[test]
fn a_dead_publishers_slot_is_released_by_repair() {
    let mut core = core();
    let p = client(&mut core);
    let (publishing, _) = publish(&mut core, p, "w");
    let ring = ring(&core, "w");
    let writer = ring
        .writer(publishing.publisher.get(), client_owner(p))
        .unwrap();
    std::mem::forget(writer); // the process "dies" holding the slot
    assert_eq!(ring.writers().len(), 1);
    core.disconnect(p, &DisconnectReason::Closed);
    assert!(ring.writers().is_empty());
    assert!(!core.repairs_pending());
}

#[test]
fn a_stalled_tethered_reader_is_evicted_after_the_timeout_and_only_then() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    let (publishing, _) = publish(&mut core, p, "stall");
    subscribe(&mut core, s, "stall");
    let ring = ring(&core, "stall");
    let mut writer = ring
        .writer(publishing.publisher.get(), client_owner(p))
        .unwrap();
    let t0 = Instant::now();
    // Not blocking anyone yet: no stall is recorded, whatever the time.
    core.evict_stalled(t0);
    core.evict_stalled(t0 + 10 * EVICT_AFTER);
    assert_eq!(ring.readers()[0].state, ReaderState::Tethered);
    while writer.try_publish(&[0; 1000]).is_ok() {}
    // Blocking now: the clock starts at the first look.
    core.evict_stalled(t0);
    core.evict_stalled(t0 + EVICT_AFTER - Duration::from_millis(1));
    assert_eq!(ring.readers()[0].state, ReaderState::Tethered);
    core.evict_stalled(t0 + EVICT_AFTER);
    assert_eq!(ring.readers()[0].state, ReaderState::Evicted);
    writer
        .try_publish(&[0; 1000])
        .expect("an evicted reader holds nobody back");
}

#[test]
fn idle_rings_are_released_only_after_the_idle_time_with_nobody_on_them() {
    let mut core = core();
    let p = client(&mut core);
    let (publishing, _) = publish(&mut core, p, "idle");
    let idle = Duration::from_secs(60);
    let t0 = Instant::now();
    core.collect_idle_rings(t0, idle);
    core.collect_idle_rings(t0 + 2 * idle, idle);
    assert!(
        core.rings.contains_key("idle"),
        "a registered publisher keeps it"
    );
    call(
        &mut core,
        p,
        Request::Unpublish(Unpublish {
            publisher: publishing.publisher,
        }),
    );
    core.collect_idle_rings(t0, idle);
    core.collect_idle_rings(t0 + idle - Duration::from_secs(1), idle);
    assert!(core.rings.contains_key("idle"));
    core.collect_idle_rings(t0 + idle, idle);
    assert!(!core.rings.contains_key("idle"));
}
