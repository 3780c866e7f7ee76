//! Who holds which doorbell. The table in shared memory is writable by every client, so the
//! broker hands doorbells out from its own free list and records the holder of each in the
//! client's record; nothing in the table decides who holds what.

use shmbus_shm::DoorbellTable;

use super::{Core, Descriptors, Handled, error};
use crate::protocol::pubsub::DoorbellClaimed;
use crate::protocol::{ClientId, ErrorCode, Reply};

/// The bus's doorbell table and the doorbells nobody holds.
pub(super) struct Doorbells {
    table: DoorbellTable,
    /// Free indices; the lowest is handed out first (popped from the end).
    free: Vec<u32>,
}

impl Doorbells {
    pub(super) fn new(table: DoorbellTable) -> Doorbells {
        let free = (0..table.len()).rev().collect();
        Doorbells { table, free }
    }

    /// The table, to share with clients.
    pub(super) fn table(&self) -> &DoorbellTable {
        &self.table
    }

    /// Hands out a free doorbell.
    pub(super) fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// How many doorbells nobody holds.
    #[cfg(test)]
    pub(super) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes back doorbell `index` (the caller checked that a client held it).
    pub(super) fn free(&mut self, index: u32) {
        debug_assert!(!self.free.contains(&index));
        self.free.push(index);
    }
}

impl Core {
    pub(super) fn claim_doorbell(&mut self, client: ClientId) -> Handled {
        let quota = self.limits.quotas.doorbells_per_client;
        let c = self.clients.known(client)?;
        if c.doorbells.len() >= quota {
            return Err(error(
                ErrorCode::Exhausted,
                format!("this client holds {quota} doorbells, its quota (one per subscriber)"),
            ));
        }
        let slots = self.doorbells.table().len();
        let index = self.doorbells.take().ok_or_else(|| {
            error(
                ErrorCode::Exhausted,
                format!("all {slots} doorbells of the bus are in use (one per subscriber)"),
            )
        })?;
        c.doorbells.insert(index);
        Ok((
            Reply::DoorbellClaimed(DoorbellClaimed { index }),
            Descriptors::None,
        ))
    }

    pub(super) fn release_doorbell(&mut self, client: ClientId, index: u32) -> Handled {
        let c = self.clients.known(client)?;
        if c.subscriptions.values().any(|s| s.doorbell == index) {
            return Err(error(
                ErrorCode::NotPermitted,
                format!("doorbell {index} is still used by a subscription"),
            ));
        }
        if !c.doorbells.remove(&index) {
            return Err(error(
                ErrorCode::Unknown,
                format!("doorbell {index} is not held by this client"),
            ));
        }
        self.doorbells.free(index);
        Ok((Reply::Done, Descriptors::None))
    }
}
