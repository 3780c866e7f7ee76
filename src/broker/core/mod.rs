//! What the broker knows and decides: clients, rings by topic, publishers and subscriptions,
//! and the recovery of dead and stalled participants. No socket is touched here: every decision
//! returns the messages to send ([`Outgoing`]), so the event loop stays a thin shell around it
//! and the decisions are unit-tested directly (`tests` below).
//!
//! One file per concern: [`clients`] (who is connected, their ids and owner tokens),
//! [`doorbells`] (who holds which doorbell), [`rings`] (creating, retiring and releasing rings),
//! [`pubsub`] (the publish/subscribe requests), [`reqrep`] (serving, inboxes, and the writers
//! on their rings), [`recovery`] (what the periodic tick does:
//! repairing dead publishers' claims, taking back claims held too long, freeing slots nobody was
//! given, evicting stalled readers).
//!
//! Nothing in shared memory is trusted here: who holds which slot and doorbell is what the core
//! recorded, geometry is what it configured, and every value read from a ring is checked before
//! it decides anything.

mod clients;
mod descriptors;
mod doorbells;
pub(crate) mod interest;
mod pubsub;
mod recovery;
mod reqrep;
mod rings;
mod sessions;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shmbus_shm::{DoorbellTable, RingConfig};
use tracing::{debug, info, warn};

use crate::broker::access::{AccessList, Operation};
use crate::protocol::seqpacket::PeerCredentials;
use crate::protocol::{
    BrokerMessage, ClientId, ErrorCode, ErrorReply, Hello, MAX_ERROR_LEN, PROTOCOL_VERSION, Reply,
    Request, RequestId, Welcome,
};
use clients::{Client, Clients, client_owner};
pub(crate) use descriptors::Descriptors;
use doorbells::Doorbells;
use rings::{Retired, RingEntry};
pub(crate) use state::{KeeperJob, KeeperLink};

/// A message for one client, with the descriptors it carries.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub client: ClientId,
    pub msg: BrokerMessage,
    pub fds: Descriptors,
}

impl Outgoing {
    fn to(client: ClientId, msg: BrokerMessage) -> Outgoing {
        Outgoing {
            client,
            msg,
            fds: Descriptors::None,
        }
    }
}

/// The outcome of one request: its reply and the descriptors that go with it.
type Handled<T = Reply> = Result<(T, Descriptors), ErrorReply>;

/// Ring geometry, timeouts and quotas, as the broker was configured.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Geometry of every ring the broker creates.
    pub ring: RingConfig,
    /// A tethered reader that holds publishers back without progress for this long is untethered.
    pub evict_after: Duration,
    /// A claim a live publisher holds uncommitted for this long is taken back.
    pub unblock_after: Duration,
    /// What clients may make the broker spend.
    pub quotas: Quotas,
    /// Largest value of a state collection's entry.
    pub max_state_value: u32,
    /// Most bytes (keys and values) of one state collection.
    pub max_state_bytes: u64,
    /// How long a session's subscriptions are kept after its client went.
    pub session_grace: Duration,
}

/// What one client, and all clients together, may make the broker spend. The request bounds
/// answer with an `Exhausted` error that names them; the client limit with a refusal; the
/// connection bounds (Hello timeout, pending connections, outbox) close the connection.
#[derive(Clone, Debug)]
pub(crate) struct Quotas {
    /// Connected clients, greeted or not.
    pub clients: usize,
    /// Connections that have not completed the handshake; beyond it the oldest is dropped.
    pub unwelcomed: usize,
    /// How long a connection may take to say Hello.
    pub hello_timeout: Duration,
    /// Rings on the bus.
    pub rings: usize,
    /// Rings one client's publishes created (and that still exist).
    pub rings_per_client: usize,
    /// Publishers of one client.
    pub publishers_per_client: usize,
    /// Subscriptions (patterns) of one client.
    pub subscriptions_per_client: usize,
    /// Doorbells one client holds.
    pub doorbells_per_client: usize,
    /// Bytes of messages waiting in one client's outbox.
    pub outbox_bytes: usize,
    /// Descriptors waiting in one client's outbox.
    pub outbox_fds: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            clients: 10_000,
            unwelcomed: 1_024,
            hello_timeout: Duration::from_secs(5),
            rings: 8_192,
            rings_per_client: 2_048,
            publishers_per_client: 4_096,
            subscriptions_per_client: 1_024,
            doorbells_per_client: 256,
            outbox_bytes: 8 << 20,
            outbox_fds: 32_768,
        }
    }
}

/// Why a client's connection ended. Faults of the client are logged as warnings, ordinary
/// departures as information.
#[derive(Debug)]
pub(crate) enum DisconnectReason {
    /// It said goodbye.
    Goodbye,
    /// It closed the connection (or its process ended).
    Closed,
    /// The broker refused it at the handshake (and told it why).
    Refused,
    /// It broke the protocol: what it did.
    Protocol(String),
    /// It sent a message longer than the protocol allows.
    Oversized,
    /// It sent file descriptors, which clients never do.
    SentDescriptors,
    /// It did not read its socket while the broker's messages for it piled up.
    NotReading,
    /// The connection could not be watched or used.
    Io(std::io::Error),
}

impl DisconnectReason {
    /// Whether the client did something wrong (rather than leave).
    pub(crate) fn is_fault(&self) -> bool {
        !matches!(
            self,
            DisconnectReason::Goodbye | DisconnectReason::Closed | DisconnectReason::Refused
        )
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::Goodbye => f.write_str("said goodbye"),
            DisconnectReason::Closed => f.write_str("closed the connection"),
            DisconnectReason::Refused => f.write_str("refused at the handshake"),
            DisconnectReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            DisconnectReason::Oversized => f.write_str("sent an oversized message"),
            DisconnectReason::SentDescriptors => {
                f.write_str("sent file descriptors, which clients never do")
            }
            DisconnectReason::NotReading => f.write_str("not reading its socket (outbox full)"),
            DisconnectReason::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

/// The broker's state and decisions.
pub(crate) struct Core {
    limits: Limits,
    doorbells: Doorbells,
    rings: BTreeMap<String, RingEntry>,
    /// Rings retired while writers were still on them: retired again at every sweep, until the
    /// last writer has left (see `Ring::retire`) or, for rings of request/response, a few times.
    retired: Vec<Retired>,
    /// Served topics: the server's client and subscription.
    served: std::collections::HashMap<String, (ClientId, crate::protocol::SubscriptionId)>,
    /// Owned state collections, by topic.
    owned: std::collections::HashMap<String, state::StateOwner>,
    /// The state keeper, if the broker runs one.
    keeper: Option<KeeperLink>,
    /// Whether the keeper has a state directory (collections may be persistent).
    persistence: bool,
    clients: Clients,
    next_publisher: u32,
    next_subscription: u32,
    /// Rings where dead publishers' claims still wait for repair: since when, and whether the
    /// wait was reported.
    repairs_pending: BTreeMap<String, recovery::PendingRepair>,
    /// When the last sweep for slots nobody was given ran.
    last_sweep: Option<std::time::Instant>,
    /// Whether this system can take claims back from live writers (cleared when it cannot).
    unblock_supported: bool,
    /// Whether clients are being refused at the client limit (logged once per episode).
    refusing: bool,
    /// The access list in force (none: the socket is private to the broker's user).
    access: AccessSlot,
    sessions: sessions::Sessions,
    /// The patterns local subscribers hold, for peering.
    interest: Arc<interest::InterestBoard>,
}

/// Where the broker's access list is; replaced whole when it is reloaded.
pub(crate) type AccessSlot = Arc<RwLock<Option<Arc<AccessList>>>>;

/// An error reply, its message cut to [`MAX_ERROR_LEN`] bytes.
fn error(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    let mut message = message.into();
    if message.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    ErrorReply { code, message }
}

/// `s` as a topic or pattern, or the `InvalidTopic` error that names it.
fn parse_topic(s: &str) -> Result<crate::topic::Topic, ErrorReply> {
    crate::topic::Topic::new(s).map_err(|e| error(ErrorCode::InvalidTopic, e.to_string()))
}

/// `s` as a concrete topic (no wildcards), for what `what` names in the error otherwise
/// (`serve`, `own collection`).
fn exact_topic(s: &str, what: &str) -> Result<crate::topic::Topic, ErrorReply> {
    let topic = parse_topic(s)?;
    if topic.is_wildcard() {
        return Err(error(
            ErrorCode::InvalidTopic,
            format!("cannot {what} {topic:?}: it must be a topic without wildcards"),
        ));
    }
    Ok(topic)
}

impl Core {
    pub(crate) fn new(limits: Limits, doorbells: DoorbellTable) -> Core {
        Core {
            limits,
            doorbells: Doorbells::new(doorbells),
            rings: BTreeMap::new(),
            retired: Vec::new(),
            served: std::collections::HashMap::new(),
            owned: std::collections::HashMap::new(),
            keeper: None,
            persistence: false,
            clients: Clients::default(),
            next_publisher: 1,
            next_subscription: 1,
            repairs_pending: BTreeMap::new(),
            last_sweep: None,
            unblock_supported: true,
            refusing: false,
            access: AccessSlot::default(),
            sessions: sessions::Sessions::default(),
            interest: Arc::default(),
        }
    }

    /// The board of what local subscribers want, which the core keeps up to date.
    pub(crate) fn interest(&self) -> Arc<interest::InterestBoard> {
        Arc::clone(&self.interest)
    }

    /// Checks clients against the access list in `slot` from now on.
    pub(crate) fn set_access(&mut self, slot: AccessSlot) {
        self.access = slot;
    }

    /// The configured limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes a doorbell for the state keeper to park on (never given to a client).
    pub(crate) fn keeper_doorbell(&mut self) -> Option<shmbus_shm::Doorbell> {
        let index = self.doorbells.take()?;
        self.doorbells.table().bell(index)
    }

    /// Hands state collections to the keeper at the end of `link`.
    pub(crate) fn set_keeper(&mut self, link: KeeperLink, persistence: bool) {
        self.keeper = Some(link);
        self.persistence = persistence;
    }

    /// The owner tokens of the keeper's readers and writers.
    pub(crate) fn keeper_owners() -> (shmbus_shm::Owner, shmbus_shm::Owner) {
        (clients::keeper_reader(), clients::keeper_writer())
    }

    /// Registers a new connection, of a process with `creds` in supplementary `groups`, and
    /// returns its client id.
    pub(crate) fn connect(&mut self, creds: PeerCredentials, groups: Vec<u32>) -> ClientId {
        self.clients.insert(creds, groups)
    }

    /// The access list in force, if there is one.
    fn access_list(&self) -> Option<Arc<AccessList>> {
        self.access
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refuses a request the access list does not allow the client.
    fn permit(&self, client: ClientId, body: &Request) -> Result<(), ErrorReply> {
        let Some(acl) = self.access_list() else {
            return Ok(());
        };
        let (op, topic) = match body {
            Request::Publish(r) => (Operation::Publish, &r.topic),
            Request::Subscribe(r) => (Operation::Subscribe, &r.pattern),
            Request::Serve(r) => (Operation::Serve, &r.topic),
            Request::Target(r) => (Operation::Request, &r.topic),
            Request::OwnState(r) => (Operation::State, &r.topic),
            Request::WatchState(r) => (Operation::Subscribe, &r.pattern),
            Request::StateSnapshot(r) => (Operation::Subscribe, &r.pattern),
            _ => return Ok(()),
        };
        let topic = parse_topic(topic)?;
        let Some(who) = self.clients.get(client).map(|c| &c.identity) else {
            return Ok(()); // refused as unknown when carried out
        };
        if acl.allows(who, op, &topic) {
            return Ok(());
        }
        info!(client = %client, uid = who.uid, "refused: may not {op} {topic:?}");
        Err(error(
            ErrorCode::PermissionDenied,
            format!(
                "permission denied: uid {} may not {op} {:?}",
                who.uid,
                topic.as_str()
            ),
        ))
    }

    /// Number of connected clients.
    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Handles `Hello`. Returns the answer and whether to keep the connection.
    pub(crate) fn hello(&mut self, client: ClientId, hello: Hello) -> (Outgoing, bool) {
        let refuse = |code, message: String| {
            let refusal = BrokerMessage::Refused(error(code, message));
            (Outgoing::to(client, refusal), false)
        };
        if hello.version != PROTOCOL_VERSION {
            return refuse(
                ErrorCode::Version,
                format!(
                    "protocol version {} is not supported (this broker speaks {PROTOCOL_VERSION})",
                    hello.version
                ),
            );
        }
        let limit = self.limits.quotas.clients;
        let full = self.clients.greeted() >= limit;
        if full != self.refusing {
            self.refusing = full;
            if full {
                warn!("refusing clients: the broker serves {limit} clients, its limit");
            } else {
                info!("accepting clients again");
            }
        }
        if full {
            return refuse(
                ErrorCode::Exhausted,
                format!("the broker serves {limit} clients, its limit"),
            );
        }
        if let (Some(acl), Some(c)) = (self.access_list(), self.clients.get(client)) {
            if !acl.admits(&c.identity) {
                let uid = c.identity.uid;
                info!(client = %client, uid, "refused: no rule of the access list matches");
                return refuse(
                    ErrorCode::PermissionDenied,
                    format!("permission denied: uid {uid} may not connect to this bus"),
                );
            }
        }
        let Some(c) = self.clients.greet(client, hello.name) else {
            return refuse(ErrorCode::Internal, "unknown client".into());
        };
        debug!(client = %client, name = %c.name.escape_debug(), pid = c.creds.pid, uid = c.creds.uid, "client connected");
        let welcome = BrokerMessage::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            client,
            owner: client_owner(client).get(),
            max_payload: self.limits.ring.max_payload,
            doorbells: self.doorbells.table().len(),
        });
        match self
            .doorbells
            .table()
            .fd()
            .map(|fd| fd.try_clone_to_owned())
        {
            Some(Ok(fd)) => (
                Outgoing {
                    client,
                    msg: welcome,
                    fds: Descriptors::Owned(vec![fd]),
                },
                true,
            ),
            Some(Err(e)) => refuse(
                ErrorCode::Internal,
                format!("cannot share the doorbell table: {e}"),
            ),
            None => refuse(
                ErrorCode::Internal,
                "the doorbell table has no descriptor".into(),
            ),
        }
    }

    /// Whether `client` has completed the handshake.
    pub(crate) fn greeted(&self, client: ClientId) -> bool {
        self.clients.get(client).is_some_and(|c| c.greeted)
    }

    /// Handles a request; returns the reply and any messages for other clients. The client's own
    /// messages come first, its reply after them (a subscriber must have all its existing rings
    /// before it hears that it is subscribed), then the rest.
    pub(crate) fn request(
        &mut self,
        client: ClientId,
        id: RequestId,
        body: Request,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let result = match self.permit(client, &body) {
            Err(e) => Some(Err(e)),
            Ok(()) => self.dispatch(client, id, body, &mut out),
        };
        let result = match result {
            Some(result) => result,
            // Answered later, by the keeper.
            None => return out,
        };
        let (result, fds) = match result {
            Ok((reply, fds)) => (Ok(reply), fds),
            Err(e) => (Err(e), Descriptors::None),
        };
        let (mut ordered, others): (Vec<_>, Vec<_>) =
            out.into_iter().partition(|o| o.client == client);
        ordered.push(Outgoing {
            client,
            msg: BrokerMessage::Reply { id, result },
            fds,
        });
        ordered.extend(others);
        ordered
    }

    /// Carries a permitted request out; `None` when the keeper answers it later.
    fn dispatch(
        &mut self,
        client: ClientId,
        id: RequestId,
        body: Request,
        out: &mut Vec<Outgoing>,
    ) -> Option<Handled> {
        Some(match body {
            Request::Publish(r) => self.publish(client, r, out),
            Request::Unpublish(r) => self.unpublish(client, r),
            Request::Subscribe(r) => self.subscribe(client, r, out),
            Request::Unsubscribe(r) => self.unsubscribe(client, r),
            Request::ClaimDoorbell(_) => self.claim_doorbell(client),
            Request::ReleaseDoorbell(r) => self.release_doorbell(client, r.index),
            Request::Serve(r) => self.serve(client, r, out),
            Request::OpenInbox(r) => self.open_inbox(client, r, out),
            Request::Target(r) => self.target(client, r),
            Request::Respond(r) => self.respond(client, r),
            Request::WhoHolds(r) => self.who_holds(r),
            Request::OwnState(r) => self.own_state(client, r, out),
            Request::WatchState(r) => self.watch_state(client, r, out),
            // Answered by the keeper, later, unless refused now.
            Request::StateSnapshot(r) => match self.state_snapshot(client, id, r) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Request::SyncState(r) => match self.sync_state(client, id, r) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Request::JoinSession(r) => self.join_session(client, r),
        })
    }

    /// Forgets a client that left or died, freeing everything it held: its reserved and adopted
    /// reader slots, its doorbells, and — through repair — its publishers' slots and any frame one
    /// of them was writing. Returns what that makes the broker tell other clients.
    pub(crate) fn disconnect(
        &mut self,
        client: ClientId,
        reason: &DisconnectReason,
    ) -> Vec<Outgoing> {
        let Some(c) = self.clients.remove(client) else {
            return Vec::new();
        };
        let name = c.name.escape_debug();
        let (pid, uid) = (c.creds.pid, c.creds.uid);
        if reason.is_fault() {
            warn!(client = %client, name = %name, pid, uid, "connection closed: {reason}");
        } else {
            info!(client = %client, name = %name, pid, uid, "client left: {reason}");
        }
        self.release(client, c)
    }

    /// Frees what a departed client held.
    fn release(&mut self, client: ClientId, c: Client) -> Vec<Outgoing> {
        self.end_ownership(client, None);
        if let Some(session) = &c.session {
            for s in c.subscriptions.values() {
                self.keep_subscription(session, s);
            }
            self.leave_session(session, std::time::Instant::now());
        }
        for (sub, s) in c.subscriptions {
            self.count_interest(c.peer_link, &s.kind, false);
            self.reclaim_reserved(client, sub, &s);
            self.end_exchange(client, sub, &s.kind);
        }
        for index in c.doorbells {
            self.doorbells.free(index);
        }
        if c.rings_created > 0 {
            for entry in self.rings.values_mut() {
                if entry.creator == Some(client) {
                    entry.creator = None;
                }
            }
        }
        let now = std::time::Instant::now();
        for topic in c.publisher_rings {
            self.repairs_pending
                .entry(topic)
                .or_insert_with(|| recovery::PendingRepair::since(now));
        }
        let mut out = Vec::new();
        self.repair(&mut out);
        out
    }
}

#[cfg(test)]
mod tests;
