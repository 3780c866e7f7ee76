//! Serving on a remote bus: the gateway serves the topic on the client's behalf and passes each
//! request on; they wait in a bounded inbox here, numbered by the gateway, which the answers
//! name (see `Outbound` in the server module).

use std::sync::Arc;

use shmbus_shm::WaitStrategy;

use super::error::ServeError;
use crate::client::pubsub::remote::{Inbox, RemoteMessage, Taken};
use crate::client::pubsub::{Patience, Wait, Waker};
use crate::client::remote::{RemoteCallError, RemoteInner};
use crate::protocol::ErrorCode;
use crate::protocol::remote::{Mode, Refusal};
use crate::topic::Topic;

/// The requests of a topic a remote client serves, as the gateway passes them on.
pub(crate) struct RemoteRequests {
    bus: Arc<RemoteInner>,
    inbox: Arc<Inbox>,
    /// Requests taken, and the one handed out last (a [`Request`](super::Request) borrows it).
    taken: Taken,
    wait: WaitStrategy,
}

impl RemoteRequests {
    /// Serves `topic` (already checked) through the gateway of `bus`.
    pub(crate) fn open(bus: Arc<RemoteInner>, topic: &Topic) -> Result<RemoteRequests, ServeError> {
        let id = bus.bus.next_id();
        let inbox = Inbox::new(id, vec![topic.as_str().to_string()], Mode::Tethered, 0);
        bus.bus.serve(&inbox, topic.as_str()).map_err(|e| match e {
            RemoteCallError::Refused(Refusal {
                code: ErrorCode::Taken,
                message,
            }) => ServeError::AlreadyServed {
                topic: topic.as_str().to_string(),
                detail: message,
            },
            e => ServeError::Attach(e.attach(topic.as_str())),
        })?;
        Ok(RemoteRequests {
            bus,
            inbox,
            taken: Taken::default(),
            wait: WaitStrategy::default(),
        })
    }

    /// The next request: its payload behind room for the exchange header, its sequence the
    /// gateway's number for it.
    pub(crate) fn next(
        &mut self,
        patience: Patience,
        stop: impl Fn() -> bool,
    ) -> Result<&Arc<RemoteMessage>, Wait> {
        self.inbox.next(&mut self.taken, patience, self.wait, stop)
    }

    /// How to wait for requests.
    pub(crate) fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
    }

    /// What wakes a wait for a request.
    pub(crate) fn waker(&self) -> Waker {
        Waker::Inbox(Arc::clone(&self.inbox))
    }

    /// The remote bus, where answers go.
    pub(crate) fn bus(&self) -> &Arc<RemoteInner> {
        &self.bus
    }
}

impl Drop for RemoteRequests {
    fn drop(&mut self) {
        self.bus.bus.unserve(self.inbox.id);
    }
}
