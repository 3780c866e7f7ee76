//! Sessions (after PubSubX's lost-client retention): a client that joined a session keeps its
//! pattern subscriptions for the grace period after it goes or unsubscribes. While it is away
//! its reader slots are free — it holds no publisher back — and the session remembers where each
//! reader stood. A client of the same uid that joins the session again within the grace period
//! and subscribes to the same pattern is attached where the readers stood: it reads what the
//! rings still hold, and learns what was overwritten (`Resume`). After the grace period the
//! session is forgotten.

use std::collections::HashMap;
use std::time::Instant;

use shmbus_shm::ReaderMode;
use tracing::{debug, info};

use super::clients::{Subscription, SubscriptionKind};
use super::{Core, Descriptors, Handled, error};
use crate::protocol::pubsub::Resume;
use crate::protocol::{
    ClientId, ErrorCode, JoinSession, MAX_SESSION_LEN, Reply, RingId, SessionJoined,
};
use crate::topic::Topic;

/// A session, held by a live client or away.
pub(super) struct Session {
    uid: u32,
    /// The client holding it, if one does.
    holder: Option<ClientId>,
    /// Since when nobody holds it (it is forgotten after the grace period).
    away_since: Option<Instant>,
    /// Subscriptions kept for the session, not taken up yet.
    kept: Vec<Kept>,
}

/// A subscription a session kept: its pattern and mode, and where its reader stood on each ring.
struct Kept {
    pattern: Topic,
    mode: ReaderMode,
    stood: HashMap<String, Stood>,
}

/// Where a kept subscription's reader stood on one ring.
struct Stood {
    ring: RingId,
    position: u64,
    /// The sequence number of the frame there, if the broker could check it.
    sequence: Option<u64>,
}

/// The sessions of a broker, by name.
#[derive(Default)]
pub(super) struct Sessions {
    map: HashMap<String, Session>,
}

/// A kept subscription taken up: where each of its rings is to be read from.
pub(super) struct TakenUp {
    stood: HashMap<String, Stood>,
}

impl TakenUp {
    /// Where a reader of ring `topic` (whose id is `ring`) starts.
    pub(super) fn resume(&self, topic: &str, ring: RingId) -> Resume {
        match self.stood.get(topic) {
            Some(s) if s.ring == ring => match s.sequence {
                Some(sequence) => Resume::At {
                    position: s.position,
                    sequence,
                },
                None => Resume::Gap,
            },
            // The ring was released or replaced while the session was away.
            Some(_) => Resume::Gap,
            // The ring appeared while the session was away.
            None => Resume::Oldest,
        }
    }
}

impl Core {
    /// Gives `client` session `request.name`: a new one, or one away (of the same uid).
    pub(super) fn join_session(&mut self, client: ClientId, request: JoinSession) -> Handled {
        let name = request.name;
        if name.is_empty() || name.len() > MAX_SESSION_LEN {
            return Err(error(
                ErrorCode::InvalidTopic,
                format!("a session name has 1 to {MAX_SESSION_LEN} bytes"),
            ));
        }
        let c = self.clients.known(client)?;
        if c.session.is_some() {
            return Err(error(
                ErrorCode::NotPermitted,
                "this client holds a session already",
            ));
        }
        let uid = c.identity.uid;
        let session = self.sessions.map.entry(name.clone()).or_insert(Session {
            uid,
            holder: None,
            away_since: None,
            kept: Vec::new(),
        });
        if session.uid != uid {
            return Err(error(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: session {name:?} belongs to uid {}, not uid {uid}",
                    session.uid
                ),
            ));
        }
        if let Some(holder) = session.holder {
            let pid = self.clients.get(holder).map_or(0, |h| h.creds.pid);
            return Err(error(
                ErrorCode::Taken,
                format!("session {name:?} is held by another live client (pid {pid})"),
            ));
        }
        session.holder = Some(client);
        session.away_since = None;
        let kept = u32::try_from(session.kept.len()).unwrap_or(u32::MAX);
        info!(client = %client, session = name, kept, "session joined");
        self.clients.known(client)?.session = Some(name);
        Ok((
            Reply::SessionJoined(SessionJoined { kept }),
            Descriptors::None,
        ))
    }

    /// Remembers where the readers of subscription `s` of a session client stand, so that the
    /// session can take it up again (pattern subscriptions only). The caller frees its slots.
    pub(super) fn keep_subscription(&mut self, name: &str, s: &Subscription) {
        let SubscriptionKind::Pattern(pattern) = &s.kind else {
            return;
        };
        let mut stood = HashMap::new();
        for (topic, slot) in &s.reserved {
            let Some(entry) = self.rings.get(topic) else {
                continue;
            };
            let Some(position) = entry.ring.reader_position(*slot) else {
                continue;
            };
            let stand = Stood {
                ring: entry.id(),
                position,
                sequence: entry.ring.sequence_at(position),
            };
            stood.insert(topic.clone(), stand);
        }
        let Some(session) = self.sessions.map.get_mut(name) else {
            return;
        };
        // One kept subscription per pattern and mode: the latest.
        session
            .kept
            .retain(|k| !(k.pattern == *pattern && k.mode == s.mode));
        debug!(session = name, pattern = %pattern, rings = stood.len(), "subscription kept");
        session.kept.push(Kept {
            pattern: pattern.clone(),
            mode: s.mode,
            stood,
        });
    }

    /// The session of `client` is away from `now` on.
    pub(super) fn leave_session(&mut self, session: &str, now: Instant) {
        if let Some(s) = self.sessions.map.get_mut(session) {
            s.holder = None;
            s.away_since = Some(now);
            info!(session, kept = s.kept.len(), "session away");
        }
    }

    /// The subscription to `pattern` in `mode` that `client`'s session kept, if any, taken up.
    pub(super) fn take_up(
        &mut self,
        client: ClientId,
        pattern: &Topic,
        mode: ReaderMode,
    ) -> Option<TakenUp> {
        let name = self.clients.get(client)?.session.as_ref()?;
        let session = self.sessions.map.get_mut(name)?;
        let i = session
            .kept
            .iter()
            .position(|k| k.pattern == *pattern && k.mode == mode)?;
        let kept = session.kept.swap_remove(i);
        Some(TakenUp { stood: kept.stood })
    }

    /// Forgets the sessions away for longer than the grace period.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        let grace = self.limits.session_grace;
        self.sessions.map.retain(|name, s| {
            let expired = s
                .away_since
                .is_some_and(|since| now.duration_since(since) >= grace);
            if expired {
                info!(session = name, kept = s.kept.len(), "session expired");
            }
            !expired
        });
    }
}
