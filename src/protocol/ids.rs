//! Ids the broker hands out, as newtypes: one type per kind of thing, so that a publisher id is
//! never passed where a subscription id belongs, and packing them lives in one place.

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($raw:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($raw);

        impl $name {
            /// The id with raw value `raw` (as carried on the wire and in shared memory).
            pub const fn from_raw(raw: $raw) -> $name {
                $name(raw)
            }

            /// The raw value.
            pub const fn get(self) -> $raw {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A client connection of one broker (unique among its live connections).
    ClientId(u32)
);
id!(
    /// A publisher, bus-wide: stamped into every frame it writes, so subscribers see who wrote
    /// each message.
    PublisherId(u32)
);
id!(
    /// One pattern of a subscriber (unique per client).
    SubscriptionId(u32)
);
id!(
    /// A ring, as recorded in its segment headers; a topic's ring released when idle and created
    /// again gets a new id.
    RingId(u64)
);
id!(
    /// A request, chosen by the client to match its reply.
    RequestId(u32)
);

impl PublisherId {
    /// What a publisher on a remote bus reports as its id: the gateway publishes on its behalf
    /// under an id of the gateway's (which subscribers see). The broker never hands out 0.
    pub const REMOTE: PublisherId = PublisherId(0);

    /// The bit set in the ids of the publishers through which a broker's gateway puts messages
    /// relayed from peer brokers into its rings, and in no other: its forwarders tell those
    /// messages (which travel between peers by relay) from messages published on this bus.
    pub const RELAYED: u32 = 1 << 31;

    /// Whether this is the id of a publisher of messages relayed from peer brokers.
    pub const fn is_relayed(self) -> bool {
        self.0 & Self::RELAYED != 0
    }
}

impl RingId {
    /// What a publisher on a remote bus reports as its ring: it writes into none itself.
    pub const REMOTE: RingId = RingId(0);
}
