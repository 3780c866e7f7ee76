//! Who is connected: client records, their ids, and the owner tokens their slots are held under.
//!
//! Owner tokens are how shared memory says who holds a slot. A client's publishers are held
//! under its client token (`client << 32`); the reader slots of each of its subscriptions under
//! the subscription's token (`client << 32 | subscription`), so that unsubscribing frees exactly
//! that subscription's slots. The packing lives here and nowhere else. A token in shared memory
//! is only a claim: the broker believes a writer slot's token if it names a live client, and a
//! reader slot's if it recorded reserving that slot for it.

use std::collections::{BTreeSet, HashMap};

use shmbus_shm::{Owner, ReaderMode};

use super::error;
use crate::broker::access::Identity;
use crate::protocol::seqpacket::PeerCredentials;
use crate::protocol::{ClientId, ErrorCode, ErrorReply, PublisherId, RingId, SubscriptionId};
use crate::topic::Topic;

/// The owner token of client `client`'s publishers.
pub(super) fn client_owner(client: ClientId) -> Owner {
    Owner::new(u64::from(client.get()) << 32).expect("client ids start at 1")
}

/// The owner token of the reader slots of subscription `sub` of client `client`.
pub(super) fn subscription_owner(client: ClientId, sub: SubscriptionId) -> Owner {
    Owner::new((u64::from(client.get()) << 32) | u64::from(sub.get()))
        .expect("client ids start at 1")
}

/// The id under which the broker's state keeper holds its slots: never given to a client.
pub(super) const KEEPER: ClientId = ClientId::from_raw(u32::MAX);

/// The owner token of the keeper's writers (see [`client_owner`]).
pub(super) fn keeper_writer() -> Owner {
    client_owner(KEEPER)
}

/// The owner token of the keeper's readers (its one subscription, see [`subscription_owner`]).
pub(super) fn keeper_reader() -> Owner {
    subscription_owner(KEEPER, SubscriptionId::from_raw(1))
}

/// The client an owner token belongs to.
pub(super) fn owner_client(owner: u64) -> ClientId {
    ClientId::from_raw((owner >> 32) as u32)
}

/// The client and subscription a reader slot's owner token names.
pub(super) fn owner_subscription(owner: u64) -> (ClientId, SubscriptionId) {
    (owner_client(owner), SubscriptionId::from_raw(owner as u32))
}

/// What a subscription reads.
pub(super) enum SubscriptionKind {
    /// Every ring whose topic overlaps the pattern.
    Pattern(Topic),
    /// The request ring of the topic the client serves.
    Serve(Topic),
    /// Every state ring whose collection's topic overlaps the pattern.
    State(Topic),
    /// One of the client's inboxes.
    Inbox(RingId),
}

/// One pattern a client subscribed to, or a ring of request/response it reads.
pub(super) struct Subscription {
    pub kind: SubscriptionKind,
    pub mode: ReaderMode,
    pub doorbell: u32,
    /// Reader slots reserved for it: (topic, slot).
    pub reserved: Vec<(String, u32)>,
}

/// A connected client.
pub(super) struct Client {
    pub name: String,
    pub creds: PeerCredentials,
    /// Its uid and groups, for the access list.
    pub identity: Identity,
    /// The session it holds, if it joined one.
    pub session: Option<String>,
    /// Whether it is the gateway's peer connection, whose subscriptions are not local interest.
    pub peer_link: bool,
    pub greeted: bool,
    /// Publisher id -> ring name (a topic, or a ring of request/response).
    pub publishers: HashMap<PublisherId, String>,
    /// Rings its publishes created that still exist (counted against its quota).
    pub rings_created: usize,
    /// Doorbells it holds.
    pub doorbells: BTreeSet<u32>,
    /// Every ring this client ever published on: repaired when it goes, whatever it unpublished
    /// before (it may die between unpublishing and freeing its slot).
    pub publisher_rings: BTreeSet<String>,
    pub subscriptions: HashMap<SubscriptionId, Subscription>,
}

/// The connected clients, by id.
#[derive(Default)]
pub(super) struct Clients {
    map: HashMap<ClientId, Client>,
    next: u32,
    /// How many completed the handshake.
    greeted: usize,
}

impl Clients {
    /// Registers a connection under a fresh id (ids start at 1 and wrap before [`KEEPER`]'s,
    /// skipping those still in use).
    pub fn insert(&mut self, creds: PeerCredentials, groups: Vec<u32>) -> ClientId {
        let next = |raw: u32| {
            raw.checked_add(1)
                .filter(|&r| r != KEEPER.get())
                .unwrap_or(1)
        };
        let mut raw = self.next.max(1);
        while self.map.contains_key(&ClientId::from_raw(raw)) {
            raw = next(raw);
        }
        self.next = next(raw);
        let id = ClientId::from_raw(raw);
        self.map.insert(
            id,
            Client {
                name: String::new(),
                identity: Identity {
                    uid: creds.uid,
                    gids: std::iter::once(creds.gid).chain(groups).collect(),
                },
                creds,
                session: None,
                peer_link: false,
                greeted: false,
                publishers: HashMap::new(),
                rings_created: 0,
                doorbells: BTreeSet::new(),
                publisher_rings: BTreeSet::new(),
                subscriptions: HashMap::new(),
            },
        );
        id
    }

    pub fn get(&self, id: ClientId) -> Option<&Client> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        self.map.get_mut(&id)
    }

    /// The client `id`, or the error for an unknown one.
    pub fn known(&mut self, id: ClientId) -> Result<&mut Client, ErrorReply> {
        self.map
            .get_mut(&id)
            .ok_or_else(|| error(ErrorCode::Unknown, "no such client"))
    }

    pub fn remove(&mut self, id: ClientId) -> Option<Client> {
        let c = self.map.remove(&id)?;
        if c.greeted {
            self.greeted -= 1;
        }
        Some(c)
    }

    /// Marks client `id` as having completed the handshake, under `name`.
    pub fn greet(&mut self, id: ClientId, name: String) -> Option<&Client> {
        let c = self.map.get_mut(&id)?;
        if !c.greeted {
            c.greeted = true;
            self.greeted += 1;
        }
        c.peer_link = super::interest::is_peer_link(&name, c.creds.pid);
        c.name = name;
        Some(c)
    }

    /// How many clients completed the handshake.
    pub fn greeted(&self) -> usize {
        self.greeted
    }

    pub fn contains(&self, id: ClientId) -> bool {
        self.map.contains_key(&id)
    }

    /// Whether `owner` is the publisher token of a live client: the only writer-slot owners the
    /// broker believes.
    pub fn writer_alive(&self, owner: u64) -> bool {
        owner == keeper_writer().get()
            || owner & 0xffff_ffff == 0 && self.contains(owner_client(owner))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Who client `id` is, for logs: `pid 123, uid 1000, "name"` (or that it is gone).
    pub fn who(&self, id: ClientId) -> String {
        match self.map.get(&id) {
            Some(c) => format!(
                "pid {}, uid {}, {:?}",
                c.creds.pid,
                c.creds.uid,
                c.name.escape_debug().to_string()
            ),
            None => "a client that left".to_string(),
        }
    }

    /// Forgets every publisher on ring `name` (which is gone); returns the clients that had one.
    pub fn forget_ring(&mut self, name: &str) -> Vec<ClientId> {
        let mut had = Vec::new();
        for (&id, c) in &mut self.map {
            let before = c.publishers.len();
            c.publishers.retain(|_, ring| ring != name);
            c.publisher_rings.remove(name);
            if c.publishers.len() != before {
                had.push(id);
            }
        }
        had
    }

    pub fn iter(&self) -> impl Iterator<Item = (ClientId, &Client)> {
        self.map.iter().map(|(&id, c)| (id, c))
    }
}
