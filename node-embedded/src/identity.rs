//! Who this node is: its id and boot epoch.
//!
//! The core requires that an id's epoch strictly grows across restarts
//! (epochs are part of every datagram nonce). The firmware has no persistent
//! storage yet, so it cannot count boots itself:
//! - When the runner supplies an epoch (the QEMU fleet passes the wall clock
//!   in milliseconds), the id is stable — derived from the MAC or unique id —
//!   and a restarted image rejoins as the same member in a new epoch.
//! - Otherwise the id mixes in a per-boot nonce and the epoch is 1: every
//!   boot joins as a new member, and the old one is declared dead as usual.

use shoal_core::NodeId;

/// A node's identity for one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Identity {
    /// The node id; never 0.
    pub id: NodeId,
    /// The boot epoch.
    pub epoch: u64,
}

/// FNV-1a, 64-bit: enough to spread a unique id over an id's bits.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Identity {
    /// The identity of a board with unique bytes `unique` (its MAC or chip
    /// id), booting with `epoch` from the runner or else a per-boot `nonce`.
    pub fn new(unique: &[u8], epoch: Option<u64>, nonce: u64) -> Identity {
        let (id, epoch) = match epoch {
            Some(e) => (fnv1a(&[b"shoal-mcu", unique]), e.max(1)),
            None => (fnv1a(&[b"shoal-mcu", unique, &nonce.to_le_bytes()]), 1),
        };
        Identity {
            id: NodeId(id.max(1)),
            epoch,
        }
    }
}
