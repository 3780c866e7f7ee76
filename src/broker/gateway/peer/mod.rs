//! Peering: this broker's gateway linked to other brokers' gateways, so that a message published
//! on one bus reaches subscribers on the others.
//!
//! A link is one TCP or TLS connection, dialed by the broker given `--peer` (again, with backoff,
//! after every loss) and accepted by the other's listener; both ends then run the same code
//! ([`link`]). Each broker tells its peers its **interest** — the patterns its own subscribers
//! hold, from the broker's [`InterestBoard`] — and passes on what it learns of others' (see
//! [`routes`]); a link carries a message only when some broker reached through it wants its
//! topic. A link's forwarder reads the rings for what is wanted through it and sends each
//! message as a relay, named by this broker's node id, its publisher and its sequence. A broker
//! that receives a relay takes it once ([`seen`]): it publishes it into its own rings if its
//! subscribers want it, and passes it straight on to the other links that want it. Its
//! publishers of relayed messages have ids the core marks
//! ([`PublisherId::is_relayed`](crate::protocol::PublisherId::is_relayed)), which the forwarders
//! leave out, so a relayed message never comes back as this broker's own.
//! Around a cycle a message may arrive twice; the second is dropped, so nobody receives it
//! twice and it never loops.

mod inbound;
mod link;
mod routes;
mod seen;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use self::inbound::Inbound;
use self::link::Link;
use self::routes::{LinkId, Routes};
use self::seen::Seen;
use crate::Topic;
use crate::address::BusAddress;
use crate::broker::core::interest::{InterestBoard, PEER_LINK_NAME, Snapshot};
use crate::client::Bus;
use crate::protocol::remote::{self, Frame, Interest, MAX_INTEREST_PATTERNS, NodeId, Peer};
use crate::sync::lock;
use crate::transport::wire::Wire;
use crate::transport::{self, Caller, DialError};

pub(super) use self::link::{User, run as run_link};

/// How often a broker tells its peers its interest even when it has not changed: what finds a
/// new way around a lost link, and keeps the others from forgetting it.
const REFRESH: Duration = Duration::from_secs(2);

/// How long an origin not heard of is remembered.
const EXPIRY: Duration = Duration::from_secs(7);

/// How long dialing a peer may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The first and the longest pause between attempts to reach a peer.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The peering side of a gateway, shared by its links, dialers and refresher.
pub(super) struct Peering {
    node: NodeId,
    board: Arc<InterestBoard>,
    socket: BusAddress,
    /// The connection (named [`PEER_LINK_NAME`]) through which peering reads and writes the
    /// rings; made on first use, when the event loop runs.
    bus: Mutex<Option<Bus>>,
    state: Mutex<State>,
    /// Serialises updates of the links' wanted patterns, so that none applies an older one
    /// after a newer.
    updating: Mutex<()>,
    seen: Mutex<Seen>,
    /// The publishers of relayed messages, by topic.
    inbound: Inbound,
    stopping: Mutex<bool>,
    stopped: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// What the links share and change.
struct State {
    routes: Routes,
    links: HashMap<LinkId, Arc<Link>>,
    next_link: LinkId,
    /// This broker's newest interest, as told to its peers.
    own: Interest,
    /// Its patterns, parsed: whether a relayed message goes into the rings here.
    local: Vec<Topic>,
}

impl Peering {
    /// Peering for the broker whose socket is `socket` and whose subscribers' patterns `board`
    /// holds. Nothing runs until [`Peering::start`].
    pub(super) fn new(socket: BusAddress, board: Arc<InterestBoard>) -> Peering {
        let node: NodeId = transport::random_id();
        Peering {
            node,
            board,
            socket,
            bus: Mutex::new(None),
            state: Mutex::new(State {
                routes: Routes::default(),
                links: HashMap::new(),
                next_link: 1,
                own: Interest {
                    origin: node,
                    version: 0,
                    patterns: Vec::new(),
                    served: Vec::new(),
                },
                local: Vec::new(),
            }),
            updating: Mutex::new(()),
            seen: Mutex::default(),
            inbound: Inbound::default(),
            stopping: Mutex::new(false),
            stopped: Condvar::new(),
            threads: Mutex::default(),
        }
    }

    /// Starts the refresher, and a dialer for each of `peers`.
    pub(super) fn start(
        self: &Arc<Self>,
        peers: Vec<BusAddress>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<()> {
        let mut threads = lock(&self.threads);
        let peering = Arc::clone(self);
        threads.push(
            std::thread::Builder::new()
                .name("shmbus-peer-refresh".into())
                .spawn(move || peering.refresh())?,
        );
        for address in peers {
            let peering = Arc::clone(self);
            let tls = tls.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("shmbus-peer-dial".into())
                    .spawn(move || peering.dial(&address, tls.as_ref()))?,
            );
        }
        Ok(())
    }

    /// This broker's node id.
    pub(super) fn node(&self) -> NodeId {
        self.node
    }

    /// The connection peering uses, connecting on first use.
    fn bus(&self) -> Result<Bus, crate::ConnectError> {
        super::connected_once(&self.bus, &self.socket, PEER_LINK_NAME)
    }

    /// The largest payload this bus carries.
    pub(super) fn max_payload(&self) -> Result<u32, crate::ConnectError> {
        let bus = self.bus()?;
        Ok(u32::try_from(bus.max_payload()).unwrap_or(u32::MAX))
    }

    /// Whether the gateway is stopping.
    fn stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    /// Waits for `pause`, or less if the gateway stops meanwhile; returns whether it stops.
    fn pause(&self, pause: Duration) -> bool {
        let stopping = lock(&self.stopping);
        let (stopping, _) = self
            .stopped
            .wait_timeout_while(stopping, pause, |stopping| !*stopping)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopping
    }

    /// Stops everything: closes every link, and joins the dialers and the refresher.
    pub(super) fn stop(&self) {
        *lock(&self.stopping) = true;
        self.stopped.notify_all();
        self.board.wake();
        let links: Vec<_> = lock(&self.state).links.values().cloned().collect();
        for link in links {
            link.close("the broker is stopping");
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
        self.inbound.clear();
    }

    /// Dials `address` until the gateway stops, running the link whenever it is up.
    fn dial(self: Arc<Self>, address: &BusAddress, tls: Option<&Arc<rustls::ClientConfig>>) {
        let mut backoff = BACKOFF.0;
        let mut reported = false;
        while !self.stopping() {
            let began = Instant::now();
            match self.dial_once(address, tls) {
                Ok(reason) => {
                    info!(peer = %address, "peer link lost: {reason}");
                    reported = false;
                }
                Err(e) if !reported => {
                    warn!(peer = %address, "cannot reach peer (trying again): {e}");
                    reported = true;
                }
                Err(_) => {}
            }
            backoff = match began.elapsed() > BACKOFF.1 {
                true => BACKOFF.0,
                false => (backoff * 2).min(BACKOFF.1),
            };
            if self.pause(backoff) {
                return;
            }
        }
    }

    /// One link to `address`, run until it ends; returns why it ended, or why it never began.
    fn dial_once(
        self: &Arc<Self>,
        address: &BusAddress,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<String, String> {
        let max_payload = self.max_payload().map_err(|e| e.to_string())?;
        let caller = Caller {
            name: "shmbus broker",
            session: None,
            peer: Some(Peer {
                node: self.node,
                max_payload,
            }),
            instance: 0,
        };
        let dialed = transport::dial(address, tls, &caller, DIAL_TIMEOUT).map_err(|e| match e {
            DialError::Unreachable(e) => e.to_string(),
            DialError::Refused { message, .. } | DialError::Protocol(message) => message,
        })?;
        info!(peer = %address, "peer link up");
        let mut reader = dialed.reader;
        let remote = Peer {
            node: dialed.welcome.node,
            max_payload: dialed.welcome.max_payload,
        };
        Ok(link::run(
            self,
            dialed.wire,
            &mut reader,
            remote,
            User::Trusted,
        ))
    }

    /// Tells the peers this broker's interest whenever it changes, and every [`REFRESH`]
    /// anyway; forgets origins not heard of for [`EXPIRY`].
    fn refresh(self: Arc<Self>) {
        let mut seen = 0;
        loop {
            self.board.wait_past(seen, REFRESH);
            if self.stopping() {
                return;
            }
            let Snapshot {
                generation,
                mut patterns,
                mut served,
            } = self.board.snapshot();
            seen = generation;
            if patterns.len() > MAX_INTEREST_PATTERNS {
                // More patterns than an interest carries: wanting everything is never wrong,
                // only wasteful.
                patterns = vec!["**".to_string()];
            }
            if served.len() > MAX_INTEREST_PATTERNS {
                warn!(
                    "peering: {} topics served here; peers are told of the first {MAX_INTEREST_PATTERNS}",
                    served.len()
                );
                served.truncate(MAX_INTEREST_PATTERNS);
            }
            let (frame, wires) = {
                let mut state = lock(&self.state);
                state.local = patterns.iter().filter_map(|p| Topic::new(p).ok()).collect();
                state.own.version += 1;
                state.own.patterns = patterns;
                state.own.served = served;
                state.routes.expire(Instant::now(), EXPIRY);
                let mut frame = Vec::new();
                remote::encode(&Frame::Interest(state.own.clone()), &mut frame);
                (frame, state.links.values().cloned().collect::<Vec<_>>())
            };
            for link in wires {
                link.send(&frame);
            }
            self.update_wanted();
        }
    }

    /// Takes on a new link to `remote`: tells it everything this broker knows of interest.
    fn attach(&self, wire: Arc<Wire>, remote: Peer, user: User) -> Arc<Link> {
        let mut state = lock(&self.state);
        let id = state.next_link;
        state.next_link += 1;
        let link = Arc::new(Link::new(id, wire, remote, user));
        let mut frames = Vec::new();
        remote::encode(&Frame::Interest(state.own.clone()), &mut frames);
        for interest in state.routes.interests() {
            remote::encode(&Frame::Interest(interest.clone()), &mut frames);
        }
        state.links.insert(id, Arc::clone(&link));
        drop(state);
        link.send(&frames);
        link
    }

    /// Lets go of a link that ended (its wire is closed).
    fn detach(&self, link: &Link) {
        let mut state = lock(&self.state);
        state.links.remove(&link.id());
        state.routes.forget_via(link.id());
        drop(state);
        link.finish();
    }

    /// Takes `interest`, arrived on `from`: if it is news, passes it on to the other links and
    /// updates what each wants.
    fn learn(self: &Arc<Self>, from: LinkId, interest: &Interest) {
        if interest.origin == self.node {
            return;
        }
        let others: Vec<_> = {
            let mut state = lock(&self.state);
            if !state.routes.learn(interest, from, Instant::now()) {
                return;
            }
            state
                .links
                .values()
                .filter(|l| l.id() != from)
                .cloned()
                .collect()
        };
        let mut frame = Vec::new();
        remote::encode(&Frame::Interest(interest.clone()), &mut frame);
        for link in others {
            link.send(&frame);
        }
        self.update_wanted();
    }

    /// Gives every link the patterns wanted, and the topics served, through it now.
    fn update_wanted(self: &Arc<Self>) {
        let _updating = lock(&self.updating);
        let routes: Vec<_> = {
            let state = lock(&self.state);
            state
                .links
                .values()
                .map(|l| {
                    let wanted = state.routes.wanted_via(l.id());
                    (Arc::clone(l), wanted, state.routes.served_via(l.id()))
                })
                .collect()
        };
        for (link, patterns, served) in routes {
            link.want(self, patterns);
            link.serve(self, served);
        }
    }

    /// Whether a relayed message of message `(origin, publisher, sequence)` is new here.
    fn take(&self, origin: NodeId, publisher: u32, sequence: u64) -> bool {
        origin != self.node && lock(&self.seen).take(origin, publisher, sequence)
    }

    /// Whether this broker's subscribers want `topic`, and the links other than `from` that
    /// want it.
    fn destinations(&self, from: LinkId, topic: &Topic) -> (bool, Vec<Arc<Link>>) {
        let state = lock(&self.state);
        let local = routes::wants(&state.local, topic);
        let links = state
            .links
            .values()
            .filter(|l| l.id() != from && l.wants(topic))
            .cloned()
            .collect();
        (local, links)
    }
}
