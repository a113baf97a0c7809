//! The datagram format: a small plaintext header, an AEAD-sealed body.
//!
//! ```text
//! offset  size  field
//!      0     1  version        (VERSION = 1)
//!      1     1  kind           (Kind, append-only numbering)
//!      2     8  sender         NodeId, little-endian
//!     10     8  epoch          sender's boot epoch, little-endian
//!     18     8  counter        per-(sender, epoch) datagram counter, little-endian
//!     26     n  body           XChaCha20-Poly1305 ciphertext
//!   26+n    16  tag            Poly1305 tag over header (as AAD) and body
//! ```
//!
//! The nonce is `sender ‖ epoch ‖ counter` (24 bytes). It never repeats under
//! one cluster key as long as every node id is unique, a node's epoch strictly
//! grows across restarts (host nodes persist it; see [`Sealer`]) and the
//! counter strictly grows within an epoch. The whole header is the AEAD's
//! associated data and the sender id is part of the nonce, so a datagram is
//! bound to its sender: changing the id, epoch, counter or kind in flight fails
//! authentication. (Every holder of the cluster key is trusted alike; the key
//! keeps outsiders out, it does not tell members apart.)
//!
//! Receivers open a datagram in three steps, each of which can drop it and
//! count the reason in [`DropStats`]: [`Header::parse`] (malformed), AEAD
//! verification (authentication), then the per-sender [`ReplayWindow`]
//! (replay). Nothing is allocated and no state is created before all three pass.

mod header;
mod replay;
mod seal;

pub use header::{HEADER_LEN, Header, Kind, VERSION};
pub use replay::{REPLAY_WINDOW, ReplayTable, ReplayVerdict, ReplayWindow};
pub use seal::{Cipher, ClusterKey, OpenError, SealError, Sealer, TAG_LEN, open};

/// Largest datagram Shoal sends or accepts. Fits every MTU and an MCU's
/// receive buffer.
pub const MAX_DATAGRAM: usize = 1200;

/// Bytes a sealed datagram adds around its body.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Largest body one datagram carries.
pub const MAX_BODY: usize = MAX_DATAGRAM - OVERHEAD;

/// Why an incoming datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DropReason {
    /// Too short or too long, an unknown version or kind.
    Malformed,
    /// The tag did not verify: a wrong cluster key or a corrupted datagram.
    Authentication,
    /// Already seen, or too old for the sender's replay window.
    Replay,
    /// Authentic, but its body did not decode.
    BadBody,
    /// Authentic and well-formed, but the node had no room to take it.
    NoRoom,
}

/// Counts of dropped datagrams, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DropStats {
    /// See [`DropReason::Malformed`].
    pub malformed: u64,
    /// See [`DropReason::Authentication`].
    pub authentication: u64,
    /// See [`DropReason::Replay`].
    pub replay: u64,
    /// See [`DropReason::BadBody`].
    pub bad_body: u64,
    /// See [`DropReason::NoRoom`].
    pub no_room: u64,
}

impl DropStats {
    /// Counts one drop.
    pub fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::Authentication => &mut self.authentication,
            DropReason::Replay => &mut self.replay,
            DropReason::BadBody => &mut self.bad_body,
            DropReason::NoRoom => &mut self.no_room,
        };
        *c = c.saturating_add(1);
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.malformed
            .saturating_add(self.authentication)
            .saturating_add(self.replay)
            .saturating_add(self.bad_body)
            .saturating_add(self.no_room)
    }
}
