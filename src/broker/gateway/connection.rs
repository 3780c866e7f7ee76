//! One remote connection at the gateway: the handshake, then its requests, until it ends.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::Shared;
use super::forward::{Forwarder, Subscription};
use super::identity::{RemoteUser, user_of_certificate};
use super::instances::{Registered, Registration, TAKEOVER_WAIT};
use super::peer::{User, run_link};
use super::requests::{Job, Requests};
use super::serving::{Held, PassOn, ServerThread};
use super::state::{Owners, send_snapshot};
use crate::broker::access::{AccessList, Operation};
use crate::broker::core::AccessSlot;
use crate::client::state::GiveUp;
use crate::client::{AttachError, Bus};
use crate::protocol::ErrorCode;
use crate::protocol::remote::{
    Frame, HANDSHAKE_LIMIT, MAGIC, MAX_PATTERNS, Mode, Own, Peer, REMOTE_VERSION, Refusal,
    Subscribe, Unanswered, Welcome,
};
use crate::sync::lock;
use crate::transport::wire::{Timing, Wire, WireReader};
use crate::transport::{accept_tls, frame_limit};
use crate::{PublishError, PublishTimeoutError};
use crate::{Publisher, ServeError, Topic};

/// Most subscriptions one connection holds.
const MAX_SUBSCRIPTIONS: usize = 256;

/// Most publishers one connection holds.
const MAX_PUBLISHERS: usize = 1024;

/// Most topics one connection serves.
const MAX_SERVERS: usize = 256;

/// How long an answer may wait for room in the connection's output before the connection is
/// given up as not reading.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a reconnected client's session, still held by the connection it replaced, is asked
/// for again.
const TAKEN_RETRY: Duration = Duration::from_millis(10);

/// How long one try of a blocked publish waits, between looks at whether the connection or the
/// gateway ended meanwhile.
const PUBLISH_SLICE: Duration = Duration::from_millis(100);

/// Serves one connection until it ends.
pub(super) fn serve(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer_address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let tls_session = match tls.as_ref().map(accept_tls).transpose() {
        Ok(tls_session) => tls_session,
        Err(e) => {
            debug!(%peer_address, "gateway: no TLS session: {e}");
            return;
        }
    };
    let handshake = Timing {
        idle: shared.hello_timeout,
        keepalive: shared.hello_timeout,
    };
    let (wire, mut reader) = match Wire::establish(stream, tls_session, HANDSHAKE_LIMIT, handshake)
    {
        Ok(established) => established,
        Err(e) => {
            debug!(%peer_address, "gateway: cannot set the connection up: {e}");
            return;
        }
    };
    {
        let mut wires = lock(&shared.wires);
        wires.retain(|w| w.strong_count() > 0);
        wires.push(Arc::downgrade(&wire));
    }
    // Acquire pairs with the Release store in `Gateway::drop`.
    if shared.stop.load(Ordering::Acquire) {
        wire.close("the broker is stopping");
        return;
    }
    let (bus, name, user, registration) = match welcome(shared, &wire, &mut reader) {
        Ok(Welcomed::Client {
            bus,
            name,
            user,
            registration,
        }) => (bus, name, user, registration),
        Ok(Welcomed::Peer { peer, user }) => {
            info!(%peer_address, "peer broker connected");
            let user = User::Checked {
                access: Arc::clone(&shared.access),
                user,
            };
            let reason = run_link(&shared.peering, wire, &mut reader, peer, user);
            info!(%peer_address, "peer broker left: {reason}");
            return;
        }
        Err(reason) => {
            debug!(%peer_address, "gateway: handshake failed: {reason}");
            wire.close(reason);
            return;
        }
    };
    match &user {
        Some(user) => info!(%peer_address, %name, %user, "remote client connected"),
        None => info!(%peer_address, %name, "remote client connected"),
    }
    let requests = Requests::new(bus.clone(), Arc::clone(&wire));
    let ended: GiveUp = {
        let (shared, wire) = (Arc::clone(shared), Arc::clone(&wire));
        // Acquire pairs with the Release store in `Gateway::drop`.
        Arc::new(move || shared.stop.load(Ordering::Acquire) || wire.is_closed())
    };
    let mut connection = Connection {
        bus,
        requests,
        servers: HashMap::new(),
        held: Arc::default(),
        user,
        access: Arc::clone(&shared.access),
        wire: Arc::clone(&wire),
        publishers: HashMap::new(),
        forwarders: HashMap::new(),
        owners: Owners::default(),
        ended,
    };
    let reason = connection.run(shared, &mut reader);
    wire.close(reason.clone());
    // Its forwarders end (the wire is closed, so none waits for room), then its publishers and
    // its bus: a session's subscriptions are then the broker's to keep.
    for (_, (forwarder, _)) in connection.forwarders.drain() {
        forwarder.finish();
    }
    drop(connection);
    // Only now may a reconnection of the same client take its place.
    drop(registration);
    info!(%peer_address, %name, "remote client left: {reason}");
}

/// Who the gateway welcomed.
enum Welcomed {
    /// A remote client: the bus its requests go through, its name, and the user its
    /// certificate names (with an access list in force).
    Client {
        bus: Bus,
        name: String,
        user: Option<RemoteUser>,
        /// Its place among the live client instances, if its hello named one.
        registration: Option<Registration>,
    },
    /// A broker peering with this one.
    Peer {
        peer: Peer,
        user: Option<RemoteUser>,
    },
}

/// Reads the hello and welcomes a client or a peer broker — if the access list in force, if
/// any, admits the user its certificate names.
fn welcome(shared: &Shared, wire: &Arc<Wire>, reader: &mut WireReader) -> Result<Welcomed, String> {
    let hello = match reader.next()? {
        Frame::Hello(hello) => hello,
        other => return Err(format!("expected a hello, got {}", kind(&other))),
    };
    let refuse = |code, message: String| {
        let refusal = Frame::Refused(Refusal::new(code, message.clone()));
        let _ = wire.send_by(&refusal, Some(Instant::now() + ANSWER_TIMEOUT));
        message
    };
    if hello.magic != MAGIC {
        return Err("not a shmbus client".into());
    }
    if hello.version != REMOTE_VERSION {
        return Err(refuse(
            ErrorCode::Version,
            format!(
                "this gateway speaks version {REMOTE_VERSION} of the remote protocol, not {}",
                hello.version
            ),
        ));
    }
    let user = admitted_user(shared, wire).map_err(|(code, message)| refuse(code, message))?;
    let (welcomed, max_payload) = match hello.peer {
        Some(peer) => {
            if peer.node == shared.peering.node() {
                return Err(refuse(
                    ErrorCode::Taken,
                    "a broker does not peer with itself".into(),
                ));
            }
            let max_payload = shared.peering.max_payload().map_err(|e| {
                refuse(
                    ErrorCode::Internal,
                    format!("the gateway cannot reach its broker: {e}"),
                )
            })?;
            (Welcomed::Peer { peer, user }, max_payload)
        }
        None => {
            let user_name = user.as_ref().map(|u| u.name.as_str());
            let (registration, replaced) = match hello.instance {
                0 => (None, false),
                instance => match shared.instances.register(instance, user_name, wire) {
                    Registered::First(registration) => (Some(registration), false),
                    Registered::Replaced(registration) => (Some(registration), true),
                },
            };
            let bus = session_bus_for(shared, hello.session.as_deref(), user.as_ref(), replaced)
                .map_err(|(code, message)| refuse(code, message))?;
            let max_payload = u32::try_from(bus.max_payload()).unwrap_or(u32::MAX);
            let name = hello.name;
            let client = Welcomed::Client {
                bus,
                name,
                user,
                registration,
            };
            (client, max_payload)
        }
    };
    let welcome = Frame::Welcome(Welcome {
        version: REMOTE_VERSION,
        max_payload,
        node: shared.peering.node(),
    });
    wire.send_by(&welcome, Some(Instant::now() + ANSWER_TIMEOUT))
        .map_err(|e| format!("cannot send the welcome: {e:?}"))?;
    let peer = matches!(welcomed, Welcomed::Peer { .. });
    reader.set_limit(frame_limit(max_payload, peer));
    reader.set_timing(Timing::default());
    Ok(welcomed)
}

/// The user the client's certificate names, when an access list is in force and admits it;
/// `None` without an access list. Fails with the refusal to send.
fn admitted_user(shared: &Shared, wire: &Wire) -> Result<Option<RemoteUser>, (ErrorCode, String)> {
    let Some(list) = access_list(&shared.access) else {
        return Ok(None);
    };
    let denied = |message| (ErrorCode::PermissionDenied, message);
    let der = wire.peer_certificate().ok_or_else(|| {
        denied(
            "this bus has an access list: a remote client must present a TLS client \
             certificate whose subject's common name is a user of the broker's host"
                .to_string(),
        )
    })?;
    let user = user_of_certificate(&der).map_err(denied)?;
    if !list.admits(&user.identity) {
        return Err(denied(format!(
            "permission denied: {user} may not connect to this bus"
        )));
    }
    Ok(Some(user))
}

/// The bus the client's requests go through: the gateway's shared one, or, for a client that
/// holds `session`, a connection of its own that joins it. Fails with the refusal to send.
fn bus_for(
    shared: &Shared,
    session: Option<&str>,
    user: Option<&RemoteUser>,
) -> Result<Bus, (ErrorCode, String)> {
    let connected = match session {
        None => shared.bus(),
        Some(name) => {
            // Sessions are the broker's user's, through the gateway: the key keeps remote
            // clients' sessions apart from local ones, and apart by user.
            let key = match user {
                Some(user) => format!("r:{}:{name}", user.identity.uid),
                None => format!("r:{name}"),
            };
            shared.session_bus(&key)
        }
    };
    connected.map_err(|e| match e {
        crate::ConnectError::Refused { message, .. } => (ErrorCode::Taken, message),
        e => (
            ErrorCode::Internal,
            format!("the gateway cannot reach its broker: {e}"),
        ),
    })
}

/// [`bus_for`], for a client that may have just `replaced` its own old connection: the broker
/// frees that connection's session when its event loop sees it go, a moment after the gateway
/// let it go, so a session still taken is asked for again until [`TAKEOVER_WAIT`] has passed.
fn session_bus_for(
    shared: &Shared,
    session: Option<&str>,
    user: Option<&RemoteUser>,
    replaced: bool,
) -> Result<Bus, (ErrorCode, String)> {
    let until = Instant::now() + TAKEOVER_WAIT;
    loop {
        match bus_for(shared, session, user) {
            Err((ErrorCode::Taken, _)) if replaced && Instant::now() < until => {
                std::thread::sleep(TAKEN_RETRY);
            }
            result => return result,
        }
    }
}

/// The access list in force, if any.
fn access_list(slot: &AccessSlot) -> Option<Arc<AccessList>> {
    slot.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// What one connection holds at the gateway.
struct Connection {
    bus: Bus,
    /// Makes the client's requests.
    requests: Requests,
    /// Serves topics for the client.
    servers: HashMap<u32, ServerThread>,
    /// The requests its servers have not answered yet.
    held: Arc<Held>,
    /// The user the client's certificate names, checked against the access list.
    user: Option<RemoteUser>,
    access: AccessSlot,
    wire: Arc<Wire>,
    publishers: HashMap<u32, Publisher>,
    /// Its subscriptions, and how each reads.
    forwarders: HashMap<u32, (Forwarder, Mode)>,
    /// The state collections it owns.
    owners: Owners,
    /// Whether the connection or the gateway ended: what its owners stop waiting for room at.
    ended: GiveUp,
}

impl Connection {
    /// Serves requests until the connection fails; returns why.
    fn run(&mut self, shared: &Shared, reader: &mut WireReader) -> String {
        loop {
            let frame = match reader.next() {
                Ok(frame) => frame,
                Err(reason) => return reason,
            };
            let outcome = match frame {
                Frame::Subscribe(request) => {
                    let id = request.id;
                    let answer = self.subscribe(request);
                    self.answer(id, answer)
                }
                Frame::AddPattern { id, pattern } => match self.add_pattern(id, pattern) {
                    // The forwarder answers once its subscriber has the pattern.
                    Ok(()) => Ok(()),
                    Err(refusal) => self.answer(id, Err(refusal)),
                },
                Frame::Unsubscribe { id } => {
                    self.forwarders.remove(&id);
                    Ok(())
                }
                Frame::Advertise { id, topic } => {
                    let answer = self.advertise(id, &topic);
                    self.answer(id, answer)
                }
                Frame::Withdraw { id } => {
                    if self.publishers.remove(&id).is_none() {
                        self.owners.disown(id);
                    }
                    Ok(())
                }
                Frame::Publish { publisher, payload } => self.publish(shared, publisher, payload),
                Frame::Request {
                    id,
                    stream,
                    timeout_ms,
                    topic,
                    payload,
                } => {
                    let job = Job::new(id, stream, timeout_ms, topic, payload);
                    self.request(job)
                }
                Frame::Serve { id, topic } => {
                    let answer = self.serve(id, &topic);
                    self.answer(id, answer)
                }
                Frame::Unserve { id } => {
                    self.servers.remove(&id);
                    Ok(())
                }
                Frame::Respond {
                    request,
                    kind,
                    payload,
                } => {
                    self.held.respond(request, kind, payload);
                    Ok(())
                }
                Frame::Unanswered { id, .. } => {
                    self.held.abandon(id);
                    Ok(())
                }
                Frame::Snapshot { id, pattern } => self.snapshot(id, &pattern),
                Frame::Own(own) => self.own(own),
                Frame::Change { owner, change } => {
                    let changed = self.owners.change(owner, change);
                    self.report(owner, changed)
                }
                Frame::Settle { owner } => {
                    let settled = self.owners.settle(owner);
                    self.report(owner, settled)
                }
                Frame::SyncState { id, owner } => {
                    let synced = self.owners.sync(owner);
                    self.answer(id, synced)
                }
                other => Err(format!("a client does not send {}", kind(&other))),
            };
            if let Err(reason) = outcome {
                return reason;
            }
        }
    }

    /// Subscribes on the client's behalf and starts forwarding.
    fn subscribe(&mut self, request: Subscribe) -> Result<(), Refusal> {
        if self.forwarders.contains_key(&request.id) {
            return Err(in_use(request.id));
        }
        if self.forwarders.len() >= MAX_SUBSCRIPTIONS {
            return Err(Refusal {
                code: ErrorCode::Exhausted,
                message: format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
            });
        }
        if request.patterns.len() > MAX_PATTERNS {
            return Err(Refusal {
                code: ErrorCode::Exhausted,
                message: format!("at most {MAX_PATTERNS} patterns per subscription"),
            });
        }
        for pattern in &request.patterns {
            self.check(Operation::Subscribe, pattern)?;
        }
        let subscriber = match request.mode {
            Mode::State => {
                let patterns = (request.patterns.iter())
                    .map(|p| Topic::new(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| refusal(e.into()))?;
                self.bus.state_rings(&patterns)
            }
            mode => {
                let mut builder = self
                    .bus
                    .subscriber_builder()
                    .history(request.history)
                    .max_held(1);
                if mode == Mode::Lossy {
                    builder = builder.lossy();
                }
                for pattern in &request.patterns {
                    builder = builder.pattern(pattern);
                }
                builder.create()
            }
        }
        .map_err(refusal)?;
        let forwarder =
            Forwarder::start(subscriber, Subscription(request.id), Arc::clone(&self.wire))
                .map_err(|e| Refusal {
                    code: ErrorCode::Internal,
                    message: format!("cannot start a forwarding thread: {e}"),
                })?;
        self.forwarders
            .insert(request.id, (forwarder, request.mode));
        Ok(())
    }

    /// Adds `pattern` to subscription `id`, if the client may subscribe to it (a state
    /// watcher's patterns are fixed).
    fn add_pattern(&self, id: u32, pattern: String) -> Result<(), Refusal> {
        let Some((forwarder, mode)) = self.forwarders.get(&id) else {
            return Err(unknown(id));
        };
        if *mode == Mode::State {
            return Err(Refusal::new(
                ErrorCode::NotPermitted,
                "a state watcher's patterns are given when it is made",
            ));
        }
        self.check(Operation::Subscribe, &pattern)?;
        forwarder.add_pattern(pattern);
        Ok(())
    }

    /// Attaches a publisher on the client's behalf.
    fn advertise(&mut self, id: u32, topic: &str) -> Result<(), Refusal> {
        if self.publishers.contains_key(&id) {
            return Err(in_use(id));
        }
        if self.publishers.len() >= MAX_PUBLISHERS {
            return Err(Refusal {
                code: ErrorCode::Exhausted,
                message: format!("at most {MAX_PUBLISHERS} publishers per connection"),
            });
        }
        self.check(Operation::Publish, topic)?;
        let publisher = self.bus.publisher(topic).map_err(refusal)?;
        self.publishers.insert(id, publisher);
        Ok(())
    }

    /// Publishes one message of publisher `id` (see [`publish_patiently`]).
    fn publish(&mut self, shared: &Shared, id: u32, payload: &[u8]) -> Result<(), String> {
        let Some(publisher) = self.publishers.get_mut(&id) else {
            // A publisher the gateway refused (after a reconnection, say) is told so once, at
            // its advertisement; its messages go nowhere.
            debug!(id, "gateway: message of an unknown publisher dropped");
            return Ok(());
        };
        // Acquire pairs with the Release store in `Gateway::drop`.
        let stopping = || shared.stop.load(Ordering::Acquire);
        if let Err(e) = publish_patiently(publisher, payload, &self.wire, stopping)? {
            let refusal = Refusal {
                code: ErrorCode::Internal,
                message: e.to_string(),
            };
            return self.answer(id, Err(refusal));
        }
        Ok(())
    }

    /// Serves `topic` on the client's behalf, passing its requests on.
    fn serve(&mut self, id: u32, topic: &str) -> Result<(), Refusal> {
        if self.servers.contains_key(&id) {
            return Err(in_use(id));
        }
        if self.servers.len() >= MAX_SERVERS {
            return Err(Refusal {
                code: ErrorCode::Exhausted,
                message: format!("at most {MAX_SERVERS} servers per connection"),
            });
        }
        self.check(Operation::Serve, topic)?;
        let server = self.bus.serve(topic).map_err(|e| match e {
            ServeError::AlreadyServed { detail, .. } => Refusal::new(ErrorCode::Taken, detail),
            ServeError::Attach(e) => refusal(e),
        })?;
        let thread = ServerThread::start(
            server,
            id,
            Arc::clone(&self.wire),
            Arc::clone(&self.held),
            PassOn::Client,
        )
        .map_err(|e| Refusal {
            code: ErrorCode::Internal,
            message: format!("cannot start a serving thread: {e}"),
        })?;
        self.servers.insert(id, thread);
        Ok(())
    }

    /// Sends the snapshot of the collections `pattern` matches, if the client may watch them.
    fn snapshot(&self, id: u32, pattern: &str) -> Result<(), String> {
        if let Err(refusal) = self.check(Operation::Subscribe, pattern) {
            return self.answer(id, Err(refusal));
        }
        let part = self.bus.max_payload();
        send_snapshot(&self.bus, &self.wire, id, pattern, part, ANSWER_TIMEOUT)
    }

    /// Owns a state collection on the client's behalf, if it may.
    fn own(&mut self, own: Own) -> Result<(), String> {
        let id = own.id;
        let owned = self
            .check(Operation::State, &own.topic)
            .and_then(|()| self.owners.own(&self.bus, own, &self.ended));
        match owned {
            Ok((max_value, max_bytes)) => self.send(&Frame::Owned {
                id,
                max_value,
                max_bytes,
            }),
            Err(refusal) => self.answer(id, Err(refusal)),
        }
    }

    /// Reports a change (or a settle) of owner `id` that failed; success is not answered.
    fn report(&self, id: u32, outcome: Result<(), Refusal>) -> Result<(), String> {
        match outcome {
            Ok(()) => Ok(()),
            Err(refusal) => self.answer(id, Err(refusal)),
        }
    }

    /// Makes a request on the client's behalf, if it may.
    fn request(&self, job: Job) -> Result<(), String> {
        if let Err(refusal) = self.check(Operation::Request, &job.topic) {
            let frame = Frame::Unanswered {
                id: job.id,
                why: Unanswered::Refused(refusal),
            };
            return self
                .wire
                .send_by(&frame, Some(Instant::now() + ANSWER_TIMEOUT))
                .map_err(|e| format!("cannot answer: {e:?}"));
        }
        self.requests.submit(job);
        Ok(())
    }

    /// Whether the access list in force, if any, lets this client do `op` on `topic`.
    fn check(&self, op: Operation, topic: &str) -> Result<(), Refusal> {
        let topic = Topic::new(topic).map_err(|e| refusal(e.into()))?;
        check(&self.access, self.user.as_ref(), op, &topic)
    }

    /// Sends the answer about `id`.
    fn answer(&self, id: u32, answer: Result<(), Refusal>) -> Result<(), String> {
        let frame = match answer {
            Ok(()) => Frame::Done { id },
            Err(refusal) => Frame::Failed { id, refusal },
        };
        self.send(&frame)
    }

    /// Sends `frame`, waiting for room at most [`ANSWER_TIMEOUT`].
    fn send(&self, frame: &Frame<'_>) -> Result<(), String> {
        self.wire
            .send_by(frame, Some(Instant::now() + ANSWER_TIMEOUT))
            .map_err(|e| format!("cannot answer: {e:?}"))
    }
}

/// Publishes `payload`, waiting for room as long as `wire` stays open and the gateway does not
/// stop: meanwhile nothing more is read from the connection, so TCP holds the remote side back.
/// Fails with the reason to end the connection; returns how publishing went otherwise.
pub(super) fn publish_patiently(
    publisher: &mut Publisher,
    payload: &[u8],
    wire: &Wire,
    stopping: impl Fn() -> bool,
) -> Result<Result<(), PublishError>, String> {
    loop {
        match publisher.publish_timeout(payload, PUBLISH_SLICE) {
            Ok(_) => return Ok(Ok(())),
            Err(PublishTimeoutError::Timeout) => {
                if let Some(reason) = wire.closed() {
                    return Err(reason);
                }
                if stopping() {
                    return Err("the broker is stopping".into());
                }
            }
            Err(PublishTimeoutError::Failed(e)) => return Ok(Err(e)),
        }
    }
}

/// Whether the access list in `access`, if one is in force, lets `user` (a remote client or
/// peer) do `op` on `topic`.
pub(super) fn check(
    access: &AccessSlot,
    user: Option<&RemoteUser>,
    op: Operation,
    topic: &Topic,
) -> Result<(), Refusal> {
    let Some(list) = access_list(access) else {
        return Ok(());
    };
    if user.is_some_and(|user| list.allows(&user.identity, op, topic)) {
        return Ok(());
    }
    let who = match user {
        Some(user) => user.to_string(),
        None => "a client that connected before the access list was in force".to_string(),
    };
    Err(Refusal::new(
        ErrorCode::PermissionDenied,
        format!("permission denied: {who} may not {op} {:?}", topic.as_str()),
    ))
}

/// The refusal of an id already in use.
pub(super) fn in_use(id: u32) -> Refusal {
    Refusal {
        code: ErrorCode::Taken,
        message: format!("id {id} is in use on this connection"),
    }
}

/// The refusal of a request about an id not in use.
fn unknown(id: u32) -> Refusal {
    Refusal {
        code: ErrorCode::Unknown,
        message: format!("no subscription {id} on this connection"),
    }
}

/// The refusal for an attach error at the gateway.
pub(super) fn refusal(e: AttachError) -> Refusal {
    let code = match &e {
        AttachError::InvalidTopic(_) => ErrorCode::InvalidTopic,
        AttachError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
        AttachError::Refused { code, .. } => *code,
        _ => ErrorCode::Internal,
    };
    Refusal::new(code, e.to_string())
}

/// A frame's kind, for errors (not its content, which may be large).
pub(super) fn kind(frame: &Frame<'_>) -> &'static str {
    match frame {
        Frame::Hello(_) => "a hello",
        Frame::Welcome(_) => "a welcome",
        Frame::Refused(_) => "a refusal",
        Frame::Subscribe(_) => "a subscribe",
        Frame::AddPattern { .. } => "an add-pattern",
        Frame::Unsubscribe { .. } => "an unsubscribe",
        Frame::Advertise { .. } => "an advertise",
        Frame::Withdraw { .. } => "a withdraw",
        Frame::Publish { .. } => "a publish",
        Frame::Message { .. } => "a message",
        Frame::Lagged { .. } => "a lagged",
        Frame::Done { .. } => "a done",
        Frame::Failed { .. } => "a failed",
        Frame::Interest(_) => "an interest",
        Frame::Relay { .. } => "a relay",
        Frame::Request { .. } => "a request",
        Frame::Answer { .. } => "an answer",
        Frame::Unanswered { .. } => "an unanswered",
        Frame::Serve { .. } => "a serve",
        Frame::Unserve { .. } => "an unserve",
        Frame::Incoming { .. } => "an incoming",
        Frame::Respond { .. } => "a respond",
        Frame::Snapshot { .. } => "a snapshot",
        Frame::SnapshotPart { .. } => "a snapshot part",
        Frame::Own(_) => "an own",
        Frame::Owned { .. } => "an owned",
        Frame::Change { .. } => "a change",
        Frame::Settle { .. } => "a settle",
        Frame::SyncState { .. } => "a sync-state",
        Frame::Ping => "a ping",
        Frame::Pong => "a pong",
    }
}
