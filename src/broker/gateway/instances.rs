//! Remote clients by instance
//! ([`Hello::instance`](crate::protocol::remote::Hello::instance)): a client that reconnects
//! while the gateway still holds its old connection replaces that connection at once.
//!
//! A client notices a lost link before the gateway does when the loss is on its side (its
//! network went down and up again, a middlebox reset its end): the gateway's end of the old
//! connection then looks alive until its idle timeout (30 s), holding the client's session and
//! state collections, and the reconnected client would be refused them (`Taken`) until then.
//! Its hello names the instance it drew when it first connected; when a live connection of the
//! same instance and the same user (the access list's, if one is in force) is registered here,
//! the gateway closes it and waits, a bounded time, until it has given back what it held.
//!
//! Naming another client's instance needs its random 64-bit number, which only travels on that
//! client's own connections, and then only replaces connections of the same user.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use tracing::{info, warn};

use crate::sync::lock;
use crate::transport::wire::Wire;

/// How long a new connection waits for the connection it replaces to give back what it held.
pub(super) const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A client instance, as one user.
type Key = (u64, Option<String>);

/// The live connections of client instances.
#[derive(Default)]
pub(super) struct Instances {
    live: Mutex<HashMap<Key, Arc<Held>>>,
}

/// One registered connection.
struct Held {
    wire: Weak<Wire>,
    /// Set once the connection gave back what it held.
    released: Mutex<bool>,
    done: Condvar,
}

/// A connection's place among the live instances, given up (and the connection known to have
/// released what it held) when it drops.
pub(super) struct Registration {
    instances: Arc<Instances>,
    key: Key,
    held: Arc<Held>,
}

/// What registering found.
pub(super) enum Registered {
    /// No connection of the instance was live.
    First(Registration),
    /// One was, and was closed, and released what it held, or [`TAKEOVER_WAIT`] passed.
    Replaced(Registration),
}

impl Instances {
    /// Registers `wire` as the connection of client `instance` (not 0) as `user`, replacing
    /// the one registered before, if any: that one is closed, and waited for.
    pub(super) fn register(
        self: &Arc<Self>,
        instance: u64,
        user: Option<&str>,
        wire: &Arc<Wire>,
    ) -> Registered {
        let key = (instance, user.map(str::to_string));
        let held = Arc::new(Held {
            wire: Arc::downgrade(wire),
            released: Mutex::new(false),
            done: Condvar::new(),
        });
        let before = lock(&self.live).insert(key.clone(), Arc::clone(&held));
        let registration = Registration {
            instances: Arc::clone(self),
            key,
            held,
        };
        let Some(before) = before else {
            return Registered::First(registration);
        };
        if let Some(old) = before.wire.upgrade() {
            info!(
                instance,
                "a client reconnected: its old connection is replaced"
            );
            old.close("replaced by a new connection of the same client");
        }
        if !before.wait_released(TAKEOVER_WAIT) {
            warn!(instance, "the replaced connection did not let go in time");
        }
        Registered::Replaced(registration)
    }
}

impl Held {
    /// Waits until the connection released what it held, for at most `timeout`; returns
    /// whether it did.
    fn wait_released(&self, timeout: Duration) -> bool {
        let released = lock(&self.released);
        let (released, _) = self
            .done
            .wait_timeout_while(released, timeout, |released| !*released)
            .unwrap_or_else(PoisonError::into_inner);
        *released
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut live = lock(&self.instances.live);
            if live
                .get(&self.key)
                .is_some_and(|h| Arc::ptr_eq(h, &self.held))
            {
                live.remove(&self.key);
            }
        }
        *lock(&self.held.released) = true;
        self.held.done.notify_all();
    }
}
