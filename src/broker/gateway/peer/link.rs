//! One peer link, the same at both ends: reads the peer's interest and relayed messages, and
//! forwards what the peer wants of this bus. Requests cross too: the link serves here, as a
//! proxy, each topic served on the peer's side (its requests go to the peer as
//! [`Frame::Request`]s), and makes here the requests the peer's proxies send.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Peering;
use super::routes::{self, LinkId};
use crate::broker::access::Operation;
use crate::broker::core::AccessSlot;
use crate::broker::gateway::connection::{check, kind, publish_patiently};
use crate::broker::gateway::forward::{Forwarder, Framing};
use crate::broker::gateway::identity::RemoteUser;
use crate::broker::gateway::requests::{Job, Requests};
use crate::broker::gateway::serving::{Held, PassOn, ServerThread};
use crate::client::AttachError;
use crate::client::pubsub::RecvError;
use crate::protocol::ErrorCode;
use crate::protocol::remote::{self, Frame, NodeId, Peer, Refusal, Unanswered};
use crate::sync::lock;
use crate::transport::wire::{SendError, Wire, WireReader};
use crate::{Sample, Topic};

/// How long a link may keep this broker waiting for room in its output before it is given up
/// as not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most topics one link serves as a proxy (one thread each); the topics served on the peer's
/// side past that are not reachable from here.
const MAX_PROXIES: usize = 256;

/// How many patterns no longer wanted a link's forwarder may keep reading (and more than those
/// wanted) before it is made again with only those wanted.
const COMPACT_AFTER: usize = 64;

/// Most topics a forwarder remembers whether the link wants.
const WANTS_CACHE: usize = 4096;

/// What the peer at the other end of a link may do here.
pub(in crate::broker::gateway) enum User {
    /// A peer this broker dialed (configured by its operator): everything.
    Trusted,
    /// A peer that dialed in: checked against the access list, when one is in force, as the
    /// user its certificate names.
    Checked {
        /// The broker's access list.
        access: AccessSlot,
        /// The user, if the peer presented a certificate that names one.
        user: Option<RemoteUser>,
    },
}

impl User {
    fn allows(&self, op: Operation, topic: &Topic) -> bool {
        match self {
            User::Trusted => true,
            User::Checked { access, user } => check(access, user.as_ref(), op, topic).is_ok(),
        }
    }
}

/// One link, as the rest of peering sees it.
pub(super) struct Link {
    id: LinkId,
    wire: Arc<Wire>,
    remote: Peer,
    user: User,
    wanted: Mutex<Wanted>,
    /// Grows whenever `wanted` changes: forwarders then forget what they cached of it.
    generation: AtomicU64,
    /// Reads the rings for what the peer wants; made when it first wants something.
    forwarder: Mutex<Option<Forwarder>>,
    /// Proxies serving here the topics served on the peer's side, by topic.
    proxies: Mutex<HashMap<String, ServerThread>>,
    /// Proxies of topics no longer served there, answering what they passed on already.
    draining: Mutex<Vec<ServerThread>>,
    /// The requests the proxies passed on, waiting for the peer's answers.
    held: Arc<Held>,
    /// Makes here the requests the peer's proxies pass on; made with the first.
    requests: Mutex<Option<Requests>>,
    next_proxy: AtomicU32,
}

/// The patterns wanted through a link.
#[derive(Default)]
struct Wanted {
    patterns: Vec<Topic>,
    /// Every pattern the forwarder's subscriber has (it only adds; what is no longer wanted is
    /// left out as it is read, until the forwarder is made again without it).
    subscribed: HashSet<String>,
}

impl Wanted {
    /// How many of the subscriber's patterns are wanted.
    fn subscribed_wanted(&self) -> usize {
        self.patterns
            .iter()
            .filter(|p| self.subscribed.contains(p.as_str()))
            .count()
    }
}

impl Link {
    pub(super) fn new(id: LinkId, wire: Arc<Wire>, remote: Peer, user: User) -> Link {
        Link {
            id,
            wire,
            remote,
            user,
            wanted: Mutex::default(),
            generation: AtomicU64::new(0),
            forwarder: Mutex::new(None),
            proxies: Mutex::default(),
            draining: Mutex::default(),
            held: Arc::default(),
            requests: Mutex::new(None),
            next_proxy: AtomicU32::new(1),
        }
    }

    pub(super) fn id(&self) -> LinkId {
        self.id
    }

    /// Sends encoded frames; a peer that leaves no room for them within [`SEND_TIMEOUT`] loses
    /// its link.
    pub(super) fn send(&self, frames: &[u8]) {
        let deadline = Instant::now() + SEND_TIMEOUT;
        if let Err(SendError::Timeout) = self.wire.send_encoded(frames, Some(deadline)) {
            self.close("the peer is not reading");
        }
    }

    /// Sends a relayed message on, unless it is larger than the peer's bus carries.
    fn relay(&self, encoded: &[u8], payload_len: usize) {
        if payload_len <= self.remote.max_payload as usize {
            self.send(encoded);
        }
    }

    pub(super) fn close(&self, reason: &str) {
        self.wire.close(reason);
    }

    /// Stops the forwarder and the proxies (once the wire is closed, so that none can wait for
    /// room).
    pub(super) fn finish(&self) {
        if let Some(forwarder) = lock(&self.forwarder).take() {
            forwarder.finish();
        }
        lock(&self.proxies).clear();
        lock(&self.draining).clear();
        lock(&self.requests).take();
    }

    /// From now on, requests to `topics` (those the peer may serve) go to the peer: a proxy
    /// serves each here, unless a server here has it already.
    pub(super) fn serve(&self, peering: &Peering, topics: Vec<Topic>) {
        let topics: Vec<Topic> = topics
            .into_iter()
            .filter(|t| self.user.allows(Operation::Serve, t))
            .collect();
        let mut proxies = lock(&self.proxies);
        let gone: Vec<String> = proxies
            .keys()
            .filter(|topic| !topics.iter().any(|t| t.as_str() == topic.as_str()))
            .cloned()
            .collect();
        let mut draining = lock(&self.draining);
        draining.retain(|proxy| !proxy.is_finished());
        for topic in gone {
            if let Some(proxy) = proxies.remove(&topic) {
                proxy.drain();
                draining.push(proxy);
            }
        }
        drop(draining);
        for topic in topics {
            if proxies.contains_key(topic.as_str()) {
                continue;
            }
            if proxies.len() >= MAX_PROXIES {
                warn!(
                    link = self.id,
                    "peering: {MAX_PROXIES} topics served through a link; {topic} is not"
                );
                break;
            }
            let served = peering
                .bus()
                .map_err(|e| e.to_string())
                .and_then(|bus| bus.serve(topic.as_str()).map_err(|e| e.to_string()));
            let server = match served {
                Ok(server) => server,
                Err(e) => {
                    // Served here already (that server wins), or the broker refused.
                    debug!(link = self.id, %topic, "peering: no proxy: {e}");
                    continue;
                }
            };
            // Relaxed: a number for the proxy, ordered by nothing else.
            let id = self.next_proxy.fetch_add(1, Ordering::Relaxed);
            let wire = Arc::clone(&self.wire);
            match ServerThread::start(server, id, wire, Arc::clone(&self.held), PassOn::Peer) {
                Ok(proxy) => {
                    proxies.insert(topic.as_str().to_string(), proxy);
                }
                Err(e) => warn!(link = self.id, %topic, "peering: cannot start a proxy: {e}"),
            }
        }
    }

    /// Makes here a request a proxy on the peer's side passed on, if the peer may.
    fn request(&self, peering: &Peering, job: Job) -> Result<(), String> {
        let allowed =
            Topic::new(&job.topic).is_ok_and(|t| self.user.allows(Operation::Request, &t));
        if !allowed {
            let refusal = Refusal::new(ErrorCode::PermissionDenied, "the peer may not ask that");
            let frame = Frame::Unanswered {
                id: job.id,
                why: Unanswered::Refused(refusal),
            };
            let mut encoded = Vec::new();
            remote::encode(&frame, &mut encoded);
            self.send(&encoded);
            return Ok(());
        }
        let mut requests = lock(&self.requests);
        if requests.is_none() {
            let bus = peering.bus().map_err(|e| e.to_string())?;
            *requests = Some(Requests::new(bus, Arc::clone(&self.wire)));
        }
        if let Some(requests) = requests.as_ref() {
            requests.submit(job);
        }
        Ok(())
    }

    /// Whether the peer wants `topic`.
    pub(super) fn wants(&self, topic: &Topic) -> bool {
        routes::wants(&lock(&self.wanted).patterns, topic)
    }

    /// From now on, the peer wants `patterns` (those it may have).
    pub(super) fn want(self: &Arc<Self>, peering: &Arc<Peering>, patterns: Vec<Topic>) {
        let patterns: Vec<Topic> = patterns
            .into_iter()
            .filter(|p| self.user.allows(Operation::Subscribe, p))
            .collect();
        let mut wanted = lock(&self.wanted);
        if wanted.patterns == patterns {
            return;
        }
        wanted.patterns = patterns;
        // Release pairs with the Acquire load in `Outbound::wants`.
        self.generation.fetch_add(1, Ordering::Release);
        let mut forwarder = lock(&self.forwarder);
        let stale = wanted.subscribed.len() - wanted.subscribed_wanted();
        if stale > COMPACT_AFTER && stale > wanted.patterns.len() {
            // Patterns no longer wanted pile up in the subscriber (each a subscription of the
            // peer connection): start again with those wanted. What the old forwarder had not
            // read yet is not sent (a gap like a lost link's); it stops at its next look.
            forwarder.take();
            wanted.subscribed.clear();
        }
        let new: Vec<String> = wanted
            .patterns
            .iter()
            .map(|p| p.as_str().to_string())
            .filter(|p| !wanted.subscribed.contains(p))
            .collect();
        if new.is_empty() {
            return;
        }
        if forwarder.is_none() {
            match self.start_forwarder(peering) {
                Ok(started) => *forwarder = Some(started),
                Err(e) => {
                    warn!(link = self.id, "peering: cannot forward to a peer: {e}");
                    self.close("cannot forward");
                    return;
                }
            }
        }
        let Some(forwarder) = forwarder.as_ref() else {
            return;
        };
        for pattern in new {
            forwarder.add_pattern(pattern.clone());
            wanted.subscribed.insert(pattern);
        }
    }

    fn start_forwarder(self: &Arc<Self>, peering: &Peering) -> Result<Forwarder, String> {
        let bus = peering.bus().map_err(|e| e.to_string())?;
        let subscriber = bus
            .subscriber_builder()
            .max_held(1)
            .create()
            .map_err(|e| e.to_string())?;
        let framing = Outbound {
            node: peering.node(),
            link: Arc::clone(self),
            generation: u64::MAX,
            cache: HashMap::new(),
        };
        Forwarder::start(subscriber, framing, Arc::clone(&self.wire)).map_err(|e| e.to_string())
    }
}

/// Runs a link whose handshake is done, to `remote`, until it ends; returns why it ended.
pub(in crate::broker::gateway) fn run(
    peering: &Arc<Peering>,
    wire: Arc<Wire>,
    reader: &mut WireReader,
    remote: Peer,
    user: User,
) -> String {
    let link = peering.attach(wire, remote, user);
    let reason = loop {
        let frame = match reader.next() {
            Ok(frame) => frame,
            Err(reason) => break reason,
        };
        let outcome = match frame {
            Frame::Interest(interest) => {
                peering.learn(link.id, &interest);
                Ok(())
            }
            Frame::Request {
                id,
                stream,
                timeout_ms,
                topic,
                payload,
            } => {
                let job = Job::new(id, stream, timeout_ms, topic, payload);
                link.request(peering, job)
            }
            Frame::Answer { id, kind, payload } => {
                link.held.respond(id, kind, payload);
                Ok(())
            }
            Frame::Unanswered { id, .. } => {
                link.held.abandon(id);
                Ok(())
            }
            Frame::Relay {
                origin,
                publisher,
                sequence,
                topic,
                payload,
            } => {
                let relay = Relay {
                    origin,
                    publisher,
                    sequence,
                    topic,
                    payload,
                };
                relay.take(peering, &link)
            }
            other => Err(format!("a peer does not send {}", kind(&other))),
        };
        if let Err(reason) = outcome {
            break reason;
        }
    };
    link.close(&reason);
    peering.detach(&link);
    reason
}

/// A relayed message that arrived on a link.
struct Relay<'a> {
    origin: NodeId,
    publisher: u32,
    sequence: u64,
    topic: &'a str,
    payload: &'a [u8],
}

impl Relay<'_> {
    /// Takes the message, if it is new here: passes it on to the other links that want it,
    /// and publishes it into the rings if this broker's subscribers do — all under its topic's
    /// lock (see [`Inbound`](super::inbound)). Fails with the reason to end the link.
    fn take(&self, peering: &Arc<Peering>, from: &Link) -> Result<(), String> {
        let topic = Topic::new(self.topic)
            .ok()
            .filter(|t| !t.is_wildcard())
            .ok_or_else(|| format!("a relayed message on {:?}, not a topic", self.topic))?;
        let slot = peering.inbound.slot(&topic);
        let mut publisher = lock(&slot);
        if !peering.take(self.origin, self.publisher, self.sequence) {
            return Ok(());
        }
        let (local, links) = peering.destinations(from.id, &topic);
        if !links.is_empty() {
            let mut encoded = Vec::new();
            let frame = Frame::Relay {
                origin: self.origin,
                publisher: self.publisher,
                sequence: self.sequence,
                topic: self.topic,
                payload: self.payload,
            };
            remote::encode(&frame, &mut encoded);
            for link in links {
                link.relay(&encoded, self.payload.len());
            }
        }
        if !local {
            return Ok(());
        }
        if !from.user.allows(Operation::Publish, &topic) {
            debug!(link = from.id, %topic, "peering: the peer may not publish here");
            return Ok(());
        }
        if publisher.is_none() {
            let made = peering
                .bus()
                .map_err(|e| e.to_string())
                .and_then(|bus| bus.publisher(topic.as_str()).map_err(|e| e.to_string()));
            match made {
                Ok(made) => *publisher = Some(made),
                Err(e) => {
                    warn!(link = from.id, %topic, "peering: a relayed message is dropped: {e}");
                    return Ok(());
                }
            }
        }
        let Some(publisher) = publisher.as_mut() else {
            return Ok(());
        };
        // Waits for room: TCP then holds the peer back.
        if let Err(e) =
            publish_patiently(publisher, self.payload, &from.wire, || peering.stopping())?
        {
            warn!(link = from.id, %topic, "peering: a relayed message is dropped: {e}");
        }
        Ok(())
    }
}

/// The framing of a link's forwarder: messages published on this bus that the peer wants, as
/// relays from this broker.
struct Outbound {
    node: NodeId,
    link: Arc<Link>,
    /// The link's wanted generation `cache` is of.
    generation: u64,
    /// Whether the link wants each topic seen.
    cache: HashMap<String, bool>,
}

impl Outbound {
    fn wants(&mut self, topic: &str) -> bool {
        // Acquire pairs with the Release increment in `Link::want`.
        let generation = self.link.generation.load(Ordering::Acquire);
        if generation != self.generation || self.cache.len() >= WANTS_CACHE {
            self.cache.clear();
            self.generation = generation;
        }
        if let Some(&wanted) = self.cache.get(topic) {
            return wanted;
        }
        let wanted = Topic::new(topic).is_ok_and(|t| self.link.wants(&t));
        self.cache.insert(topic.to_string(), wanted);
        wanted
    }
}

impl Framing for Outbound {
    fn message(&mut self, sample: &Sample<'_>, batch: &mut Vec<u8>) {
        if sample.publisher().is_relayed()
            || sample.payload().len() > self.link.remote.max_payload as usize
            || !self.wants(sample.topic())
        {
            return;
        }
        let frame = Frame::Relay {
            origin: self.node,
            publisher: sample.publisher().get(),
            sequence: sample.sequence(),
            topic: sample.topic(),
            payload: sample.payload(),
        };
        remote::encode(&frame, batch);
    }

    fn lagged(&mut self, topic: &Topic, missed: u64, _batch: &mut Vec<u8>) {
        warn!(link = self.link.id, %topic, missed, "peering: messages lost on their way to a peer");
    }

    fn failed(&mut self, error: RecvError, _batch: &mut Vec<u8>) {
        warn!(
            link = self.link.id,
            "peering: reading for a peer failed: {error}"
        );
    }

    fn pattern_added(
        &mut self,
        outcome: Result<(), AttachError>,
        _wire: &Wire,
    ) -> Result<(), SendError> {
        if let Err(e) = outcome {
            warn!(
                link = self.link.id,
                "peering: cannot read what a peer wants: {e}"
            );
        }
        Ok(())
    }
}
