//! Owner tokens: who holds a slot, so that a dead holder's slots can be found and reclaimed.

use std::num::NonZeroU64;

/// A non-zero token naming the holder of writer, reader and doorbell slots.
///
/// The broker gives every client connection its own token, so when the connection dies it can
/// find every slot the client held, whichever process it was. Without a broker,
/// [`Owner::this_process`] derives one from the process id and a random nonce (so a recycled pid
/// does not inherit a dead process's slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner(NonZeroU64);

impl Owner {
    /// The token with value `raw`, or `None` for 0 (which marks a free slot).
    pub fn new(raw: u64) -> Option<Owner> {
        NonZeroU64::new(raw).map(Owner)
    }

    /// A token for the calling process: its pid in the high half, a random nonce in the low half.
    pub fn this_process() -> Owner {
        let low = u64::from(crate::os::random_u32()) | 1;
        let pid = u64::from(std::process::id());
        Owner(NonZeroU64::new((pid << 32) | low).unwrap_or(NonZeroU64::MIN))
    }

    /// The raw value stored in slots.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The process id, for tokens made by [`Owner::this_process`].
    pub fn pid(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}
