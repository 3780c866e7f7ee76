//! The core's decisions, driven directly: no sockets, no event loop, real rings in memfds.

use std::time::{Duration, Instant};

use shmbus_shm::{DoorbellTable, Owner, ReaderMode, ReaderOptions, ReaderState, Ring, RingConfig};

use super::clients::client_owner;
use super::*;
use crate::protocol::pubsub::{
    ClaimDoorbell, Publish, Publishing, ReleaseDoorbell, RingAttachment, Subscribe, Subscribed,
    Unpublish, Unsubscribe,
};
use crate::protocol::{ErrorCode, PublisherId, RingId, SubscriptionId};

#[path = "../../../tests/support/hostile.rs"]
mod hostile;

const EVICT_AFTER: Duration = Duration::from_secs(5);
const UNBLOCK_AFTER: Duration = Duration::from_secs(15);

fn limits() -> Limits {
    Limits {
        ring: RingConfig {
            capacity: 1 << 16,
            max_payload: 1024,
            writer_slots: 4,
            reader_slots: 4,
        },
        evict_after: EVICT_AFTER,
        unblock_after: UNBLOCK_AFTER,
        quotas: Quotas::default(),
        max_state_value: 64 << 10,
        max_state_bytes: 1 << 20,
        session_grace: Duration::from_secs(60),
    }
}

fn core() -> Core {
    core_with(limits())
}

fn core_with(limits: Limits) -> Core {
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
    let id = core.connect(creds(), Vec::new());
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

fn publish_request(topic: &str, replace: Option<RingId>) -> Request {
    Request::Publish(Publish {
        topic: topic.into(),
        max_payload: 1024,
        replace,
    })
}

fn publish(core: &mut Core, client: ClientId, topic: &str) -> (Publishing, Vec<Outgoing>) {
    let mut out = call(core, client, publish_request(topic, None));
    let Ok(Reply::Publishing(p)) = reply(&out, client).clone() else {
        panic!("expected Publishing");
    };
    // The reply carries the ring's data and readers descriptors.
    let pos = out
        .iter()
        .position(|o| o.client == client && matches!(o.msg, BrokerMessage::Reply { .. }));
    assert_eq!(out[pos.unwrap()].fds.count(), 2);
    out.retain(|o| !(o.client == client && matches!(o.msg, BrokerMessage::Reply { .. })));
    (p, out)
}

/// Claims a doorbell for `client`.
fn doorbell(core: &mut Core, client: ClientId) -> u32 {
    let out = call(core, client, Request::ClaimDoorbell(ClaimDoorbell));
    match reply(&out, client) {
        Ok(Reply::DoorbellClaimed(d)) => d.index,
        other => panic!("expected a doorbell, got {other:?}"),
    }
}

/// Subscribes `client` to `pattern` with a doorbell of its own; returns the subscription and
/// what the broker sent.
fn subscribe(core: &mut Core, client: ClientId, pattern: &str) -> (SubscriptionId, Vec<Outgoing>) {
    let index = doorbell(core, client);
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
    let c = core.connect(creds(), Vec::new());
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

    let out = call(&mut core, a, publish_request("s//x", None));
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::InvalidTopic));
    let out = call(
        &mut core,
        a,
        Request::Publish(Publish {
            topic: "s/x".into(),
            max_payload: 4096,
            replace: None,
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
    let theirs = doorbell(&mut core, b);
    let out = call(
        &mut core,
        a,
        Request::Subscribe(Subscribe {
            pattern: "q".into(),
            mode: ReaderMode::Lossy,
            history: 0,
            doorbell: theirs,
        }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::NotPermitted));
    let out = call(
        &mut core,
        a,
        Request::ReleaseDoorbell(ReleaseDoorbell { index: theirs }),
    );
    assert!(matches!(reply(&out, a), Err(e) if e.code == ErrorCode::Unknown));
}

#[test]
fn doorbells_are_handed_out_once_and_come_back() {
    let mut core = core();
    let (a, b) = (client(&mut core), client(&mut core));
    let mine = doorbell(&mut core, a);
    let theirs = doorbell(&mut core, b);
    assert_ne!(mine, theirs);
    let out = call(
        &mut core,
        a,
        Request::ReleaseDoorbell(ReleaseDoorbell { index: mine }),
    );
    assert!(matches!(reply(&out, a), Ok(Reply::Done)));
    assert_eq!(
        doorbell(&mut core, b),
        mine,
        "a released doorbell is handed out again"
    );
    // A doorbell a subscription parks on cannot be released under it.
    let (_, _) = subscribe(&mut core, a, "d");
    let used = core
        .clients
        .get(a)
        .unwrap()
        .doorbells
        .iter()
        .copied()
        .next()
        .unwrap();
    let out = call(
        &mut core,
        a,
        Request::ReleaseDoorbell(ReleaseDoorbell { index: used }),
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
    let free_before = core.doorbells.free_count();
    core.disconnect(s, &DisconnectReason::Closed);
    assert!(
        ring.readers().is_empty(),
        "the client's other slots went with it"
    );
    assert_eq!(
        core.doorbells.free_count(),
        free_before + 2,
        "and its doorbells"
    );
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
    assert!(core.repairs_pending.is_empty());
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

#[test]
fn quotas_are_enforced_with_errors_that_name_them() {
    let mut limits = limits();
    limits.quotas.rings = 3;
    limits.quotas.rings_per_client = 2;
    limits.quotas.publishers_per_client = 3;
    limits.quotas.subscriptions_per_client = 1;
    limits.quotas.doorbells_per_client = 2;
    let mut core = core_with(limits);
    let (a, b) = (client(&mut core), client(&mut core));
    publish(&mut core, a, "q/1");
    publish(&mut core, a, "q/2");
    let out = call(&mut core, a, publish_request("q/3", None));
    assert!(
        matches!(reply(&out, a), Err(e) if e.code == ErrorCode::Exhausted
        && e.message.contains("created 2 rings"))
    );
    // Another client is still served, up to the bus-wide limit.
    publish(&mut core, b, "q/3");
    let out = call(&mut core, b, publish_request("q/4", None));
    assert!(
        matches!(reply(&out, b), Err(e) if e.code == ErrorCode::Exhausted
        && e.message.contains("the bus has 3 rings"))
    );
    // Existing rings take more publishers, up to the client's quota.
    publish(&mut core, a, "q/3");
    let out = call(&mut core, a, publish_request("q/1", None));
    assert!(matches!(reply(&out, a), Err(e) if e.message.contains("3 publishers")));
    subscribe(&mut core, b, "q/*");
    let bell = doorbell(&mut core, b);
    let out = call(
        &mut core,
        b,
        Request::Subscribe(Subscribe {
            pattern: "x".into(),
            mode: ReaderMode::Tethered,
            history: 0,
            doorbell: bell,
        }),
    );
    assert!(matches!(reply(&out, b), Err(e) if e.message.contains("1 subscriptions")));
    let out = call(&mut core, b, Request::ClaimDoorbell(ClaimDoorbell));
    assert!(matches!(reply(&out, b), Err(e) if e.message.contains("2 doorbells")));
    // A departed creator's rings no longer count against anyone; released rings free the bus.
    core.disconnect(a, &DisconnectReason::Closed);
    assert!(core.rings.values().all(|e| e.creator != Some(a)));
}

#[test]
fn slots_held_under_tokens_the_broker_never_gave_out_are_freed() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    publish(&mut core, p, "f");
    subscribe(&mut core, s, "f");
    let ring = ring(&core, "f");
    // A faulty client claims a reader slot directly, and a writer slot under a made-up token.
    let bell = std::sync::Arc::new(core.doorbells.table().bell(0).unwrap());
    let bogus_reader = Owner::new(0xdead_beef).unwrap();
    let squatter = ring
        .reader(ReaderOptions::default(), &bell, bogus_reader)
        .unwrap();
    std::mem::forget(squatter);
    let bogus_writer = Owner::new((77 << 32) | 5).unwrap();
    std::mem::forget(ring.writer(1, bogus_writer).unwrap());
    assert_eq!((ring.readers().len(), ring.writers().len()), (2, 1));
    core.tick(Instant::now());
    assert_eq!(
        ring.readers().len(),
        1,
        "the reserved reader stays, the squatter goes"
    );
    assert_eq!(
        ring.readers()[0].owner & 0xffff_ffff_0000_0000,
        u64::from(s.get()) << 32
    );
    assert!(ring.writers().is_empty());
}

/// Fills `ring` through a writer of client `p` until the tethered reader blocks it.
fn fill(ring: &Ring, p: ClientId, publisher: PublisherId) -> shmbus_shm::Writer {
    let mut writer = ring.writer(publisher.get(), client_owner(p)).unwrap();
    while writer.try_publish(&[0; 1000]).is_ok() {}
    writer
}

#[test]
fn a_reader_position_that_goes_back_and_forth_is_no_progress() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    let (publishing, _) = publish(&mut core, p, "osc");
    let (_, out) = subscribe(&mut core, s, "osc");
    let slot = attachments(&out)[0].1.slot;
    let ring = ring(&core, "osc");
    let mut writer = fill(&ring, p, publishing.publisher);
    let damage = scribbler(&ring);
    let t0 = Instant::now();
    core.evict_stalled(t0);
    // The reader's slot says it moved, then moved back, every look: only the first move is
    // progress.
    for i in 1..=20u32 {
        damage.reader_position(slot, if i % 2 == 0 { 0 } else { 32 });
        core.evict_stalled(t0 + EVICT_AFTER * i / 10);
    }
    assert_eq!(ring.readers()[0].state, ReaderState::Evicted);
    writer.try_publish(&[0; 1000]).expect("no longer held back");
    // Tethering itself again does not restart the cycle: it is untethered at the next look.
    damage.reader_mode(slot, 1);
    core.evict_stalled(t0 + EVICT_AFTER * 3);
    assert_eq!(ring.readers()[0].state, ReaderState::Evicted);
}

/// The broker's ring mapped as a faulty publisher would.
fn scribbler(ring: &Ring) -> hostile::RingScribbler {
    hostile::RingScribbler::map(&ring.config(), ring.readers_fd().unwrap(), ring.data_fd()).unwrap()
}

#[test]
fn a_corrupt_claim_cursor_retires_the_ring_and_the_topic_gets_a_fresh_one() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    let (first, _) = publish(&mut core, p, "c");
    let (sub, _) = subscribe(&mut core, s, "c");
    let old = ring(&core, "c");
    // Two writers, so that this one claims through the cursor (a writer alone on a ring owns
    // the cursor and does not read it back; its next claim would repair the damage).
    let _other = old.writer(7, client_owner(p)).unwrap();
    let mut writer = old.writer(first.publisher.get(), client_owner(p)).unwrap();
    scribbler(&old).head(4 + (1 << 40), 0);
    assert_eq!(
        writer.try_publish(b"x").unwrap_err(),
        shmbus_shm::TryLoanError::Corrupt
    );
    // The publisher asks for the topic's ring again, naming the one it found corrupt.
    let out = call(&mut core, p, publish_request("c", Some(first.ring.id)));
    let Ok(Reply::Publishing(second)) = reply(&out, p).clone() else {
        panic!("expected Publishing");
    };
    assert_ne!(second.ring.id, first.ring.id, "a fresh ring");
    assert!(old.is_retired());
    assert!(out.iter().any(|o| o.client == s
        && matches!(o.msg, BrokerMessage::RingRetired { subscription, ring }
            if subscription == sub && ring == first.ring.id)));
    let fresh = attachments(&out);
    assert_eq!(
        fresh.len(),
        1,
        "the subscriber is attached to the fresh ring"
    );
    assert_eq!(fresh[0].1.ring.id, second.ring.id);
    // Naming a healthy ring replaces nothing.
    let (third, _) = publish(&mut core, p, "c");
    let out = call(&mut core, p, publish_request("c", Some(second.ring.id)));
    assert!(matches!(reply(&out, p), Ok(Reply::Publishing(q)) if q.ring.id == third.ring.id));
    // The tick finds damage by itself too.
    scribbler(&ring(&core, "c")).head(8, 0);
    let out = core.tick(Instant::now());
    assert!(
        out.iter()
            .any(|o| matches!(o.msg, BrokerMessage::RingRetired { .. }))
    );
    assert!(!core.rings.contains_key("c"));
}

#[test]
fn a_claim_held_too_long_by_a_live_publisher_is_taken_back_and_its_commit_fails() {
    let mut core = core();
    let (p, s) = (client(&mut core), client(&mut core));
    let (publishing, _) = publish(&mut core, p, "u");
    subscribe(&mut core, s, "u");
    let ring = ring(&core, "u");
    let mut stuck = ring
        .writer(publishing.publisher.get(), client_owner(p))
        .unwrap();
    let mut other = ring.writer(99, client_owner(p)).unwrap();
    let mut loan = stuck.try_loan(16).unwrap();
    loan.as_mut_slice().fill(1);
    other.try_publish(b"behind the held claim").unwrap();
    let t0 = Instant::now();
    core.tick(t0);
    core.tick(t0 + UNBLOCK_AFTER - Duration::from_millis(1));
    assert_eq!(
        ring.writers()
            .iter()
            .filter(|w| w.claiming.is_some())
            .count(),
        1
    );
    core.tick(t0 + UNBLOCK_AFTER + Duration::from_secs(1));
    assert!(
        ring.writers().iter().all(|w| w.claiming.is_none()),
        "the claim was padded and its intent cleared"
    );
    assert_eq!(loan.commit().unwrap_err(), shmbus_shm::CommitError::Revoked);
    // The writer goes on with new claims.
    stuck.try_publish(b"after").unwrap();
}

mod reqrep {
    use super::*;
    use crate::protocol::reqrep::{InboxOpened, OpenInbox, Respond, Serve, Serving, Target};

    fn serve(core: &mut Core, client: ClientId, topic: &str) -> Result<Reply, ErrorReply> {
        let doorbell = doorbell(core, client);
        let body = Request::Serve(Serve {
            topic: topic.into(),
            doorbell,
        });
        reply(&call(core, client, body), client).clone()
    }

    fn target(core: &mut Core, client: ClientId, topic: &str) -> Result<Reply, ErrorReply> {
        let body = Request::Target(Target {
            topic: topic.into(),
        });
        reply(&call(core, client, body), client).clone()
    }

    fn open_inbox(core: &mut Core, client: ClientId) -> (InboxOpened, Vec<RingAttachment>) {
        let doorbell = doorbell(core, client);
        let out = call(core, client, Request::OpenInbox(OpenInbox { doorbell }));
        let Ok(Reply::InboxOpened(opened)) = reply(&out, client).clone() else {
            panic!("expected InboxOpened");
        };
        let attached = attachments(&out).into_iter().map(|(_, a)| a).collect();
        (opened, attached)
    }

    #[test]
    fn serving_is_exclusive_and_ends_with_the_client() {
        let mut core = core();
        let (a, b) = (client(&mut core), client(&mut core));
        assert!(matches!(target(&mut core, b, "calc"), Err(e) if e.code == ErrorCode::NoServer));
        let Ok(Reply::Serving(Serving { .. })) = serve(&mut core, a, "calc") else {
            panic!("expected Serving");
        };
        assert!(matches!(serve(&mut core, b, "calc"), Err(e) if e.code == ErrorCode::Taken));
        assert!(matches!(serve(&mut core, b, "a/*"), Err(e) if e.code == ErrorCode::InvalidTopic));
        let Ok(Reply::Publishing(link)) = target(&mut core, b, "calc") else {
            panic!("expected Publishing");
        };
        core.disconnect(a, &DisconnectReason::Closed);
        // The server's ring was retired and forgotten, with the requester's publisher on it.
        assert!(matches!(target(&mut core, b, "calc"), Err(e) if e.code == ErrorCode::NoServer));
        assert!(
            !core
                .clients
                .get(b)
                .unwrap()
                .publishers
                .contains_key(&link.publisher)
        );
        assert!(matches!(serve(&mut core, b, "calc"), Ok(Reply::Serving(_))));
    }

    #[test]
    fn an_inbox_is_attached_to_its_client_only_and_closed_with_it() {
        let mut core = core();
        let (requester, server) = (client(&mut core), client(&mut core));
        // A subscriber of everything never gets a ring of request/response.
        let (_, out) = subscribe(&mut core, server, "**");
        assert!(attachments(&out).is_empty());
        let (opened, attached) = open_inbox(&mut core, requester);
        assert_eq!(attached.len(), 1);
        assert_eq!(attached[0].topic, format!("inbox/{}", opened.inbox));
        assert_eq!(attached[0].ring.id, opened.inbox);
        let body = Request::Respond(Respond {
            inbox: opened.inbox,
        });
        // Only a server may answer into an inbox.
        let refused = reply(&call(&mut core, server, body.clone()), server).clone();
        assert!(matches!(refused, Err(e) if e.code == ErrorCode::NotPermitted));
        assert!(matches!(
            serve(&mut core, server, "svc"),
            Ok(Reply::Serving(_))
        ));
        let out = call(&mut core, server, body.clone());
        let Ok(Reply::Publishing(writer)) = reply(&out, server).clone() else {
            panic!("expected Publishing");
        };
        let rings = core.rings.len();
        let unsubscribe = Request::Unsubscribe(Unsubscribe {
            subscription: opened.subscription,
        });
        call(&mut core, requester, unsubscribe);
        assert_eq!(core.rings.len(), rings - 1);
        assert!(
            !core
                .clients
                .get(server)
                .unwrap()
                .publishers
                .contains_key(&writer.publisher)
        );
        let closed = reply(&call(&mut core, server, body), server).clone();
        assert!(matches!(closed, Err(e) if e.code == ErrorCode::Unknown));
        // Retired again at the next sweeps, then forgotten.
        assert_eq!(core.retired.len(), 1);
        core.keep_retired();
        core.keep_retired();
        assert!(core.retired.is_empty());
    }
}

mod state {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::{Receiver, channel};

    use super::*;
    use crate::protocol::state::{OwnState, StateSnapshot, SyncState, WatchState};

    /// A core with a keeper link whose jobs the test reads.
    fn core_with_keeper(persistence: bool) -> (Core, Receiver<KeeperJob>) {
        let mut core = core();
        let bell = core.keeper_doorbell().expect("a doorbell for the keeper");
        let (tx, rx) = channel();
        let link = KeeperLink::new(tx, Arc::new(AtomicBool::new(false)), bell.index());
        core.set_keeper(link, persistence);
        (core, rx)
    }

    fn own(core: &mut Core, client: ClientId, topic: &str, persistent: bool) -> Vec<Outgoing> {
        let request = OwnState {
            topic: topic.into(),
            persistent,
        };
        call(core, client, Request::OwnState(request))
    }

    fn watch(core: &mut Core, client: ClientId, pattern: &str) -> Vec<Outgoing> {
        let doorbell = doorbell(core, client);
        let request = WatchState {
            pattern: pattern.into(),
            doorbell,
        };
        call(core, client, Request::WatchState(request))
    }

    #[test]
    fn a_collection_has_one_owner_and_its_ring_a_keeper_reader_first() {
        let (mut core, jobs) = core_with_keeper(false);
        let (a, b) = (client(&mut core), client(&mut core));
        let out = own(&mut core, a, "cfg/net", false);
        let Ok(Reply::StateOwned(owned)) = reply(&out, a) else {
            panic!("expected StateOwned, got {:?}", reply(&out, a));
        };
        let p = owned.publishing;
        assert_eq!(owned.max_bytes, 1 << 20);
        // The keeper was told of the ring (with its reader) before the owner could write.
        assert!(
            matches!(jobs.try_recv(), Ok(KeeperJob::Track { topic, .. }) if topic.as_str() == "cfg/net")
        );
        assert!(matches!(
            jobs.try_recv(),
            Ok(KeeperJob::Own {
                persistent: false,
                ..
            })
        ));
        let out = own(&mut core, b, "cfg/net", false);
        assert!(
            matches!(reply(&out, b), Err(e) if e.code == ErrorCode::Taken && e.message.contains("cfg/net"))
        );
        // Wildcards, and persistence without a state directory, are refused.
        let out = own(&mut core, b, "cfg/*", false);
        assert!(matches!(reply(&out, b), Err(e) if e.code == ErrorCode::InvalidTopic));
        let out = own(&mut core, b, "cfg/disk", true);
        assert!(matches!(reply(&out, b), Err(e) if e.code == ErrorCode::NotPermitted));
        // Ownership ends with the publisher; then another may own it (the same ring).
        let unpublish = Request::Unpublish(Unpublish {
            publisher: p.publisher,
        });
        assert!(reply(&call(&mut core, a, unpublish), a).is_ok());
        assert!(matches!(jobs.try_recv(), Ok(KeeperJob::Disown { .. })));
        let out = own(&mut core, b, "cfg/net", false);
        assert!(
            matches!(reply(&out, b), Ok(Reply::StateOwned(q)) if q.publishing.ring.id == p.ring.id)
        );
        assert!(matches!(jobs.try_recv(), Ok(KeeperJob::Own { .. })));
        core.disconnect(b, &DisconnectReason::Closed);
        assert!(matches!(jobs.try_recv(), Ok(KeeperJob::Disown { .. })));
    }

    #[test]
    fn watchers_get_state_rings_only_and_snapshots_go_to_the_keeper() {
        let (mut core, jobs) = core_with_keeper(true);
        let (owner, watcher, subscriber) =
            (client(&mut core), client(&mut core), client(&mut core));
        // A watcher first: attached to the collection's ring when it appears.
        let out = watch(&mut core, watcher, "cfg/**");
        assert!(matches!(reply(&out, watcher), Ok(Reply::Subscribed(s)) if s.rings == 0));
        let (_, _) = subscribe(&mut core, subscriber, "**");
        let out = own(&mut core, owner, "cfg/app", true);
        let attached = attachments(&out);
        assert_eq!(
            attached.len(),
            1,
            "only the watcher, not the `**` subscriber"
        );
        assert_eq!(attached[0].0, watcher);
        assert_eq!(attached[0].1.topic, "cfg/app");
        // A pub/sub subscription never matches a state ring, nor a watcher a topic's ring.
        let (_, out) = publish(&mut core, owner, "cfg/plain");
        assert!(attachments(&out).iter().all(|(c, _)| *c == subscriber));
        let out = watch(&mut core, subscriber, "cfg/*");
        assert!(matches!(reply(&out, subscriber), Ok(Reply::Subscribed(s)) if s.rings == 1));
        // Snapshots and syncs are answered by the keeper, not now.
        while jobs.try_recv().is_ok() {}
        let snapshot = Request::StateSnapshot(StateSnapshot {
            pattern: "cfg/*".into(),
        });
        assert!(call(&mut core, watcher, snapshot).is_empty());
        assert!(
            matches!(jobs.try_recv(), Ok(KeeperJob::Snapshot { client, .. }) if client == watcher)
        );
        let sync = |topic: &str| {
            Request::SyncState(SyncState {
                topic: topic.into(),
            })
        };
        assert!(call(&mut core, owner, sync("cfg/app")).is_empty());
        assert!(matches!(jobs.try_recv(), Ok(KeeperJob::Sync { .. })));
        // Only the owner syncs.
        let out = call(&mut core, watcher, sync("cfg/app"));
        assert!(matches!(reply(&out, watcher), Err(e) if e.code == ErrorCode::NotPermitted));
    }

    #[test]
    fn the_keepers_reader_is_never_evicted_nor_freed_as_foreign() {
        let (mut core, _jobs) = core_with_keeper(false);
        let owner = client(&mut core);
        let out = own(&mut core, owner, "slow", false);
        assert!(reply(&out, owner).is_ok());
        let ring = ring(&core, "?state/slow");
        // Nobody reads: the keeper's reader holds the owner back, as long as it likes.
        let id = PublisherId::from_raw(1);
        let _writer = fill(&ring, owner, id);
        let start = Instant::now();
        core.tick(start);
        core.tick(start + EVICT_AFTER * 3);
        let readers = ring.readers();
        assert_eq!(readers.len(), 1);
        assert_eq!(readers[0].state, ReaderState::Tethered);
    }
}
