//! Membership messages: the bodies of unreliable datagrams.

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::{Record, Update};
use crate::NodeId;

/// Most gossip updates piggybacked on one message.
pub const MAX_GOSSIP: usize = 6;
/// Most records in one sync page.
pub const SYNC_PAGE: usize = 6;

/// Updates piggybacked on a message.
pub type Gossip = heapless::Vec<Update, MAX_GOSSIP>;

/// One unreliable datagram's body. Variants are append-only on the wire
/// (postcard numbers them in order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A probe. `target` is the node the sender means to reach, or
    /// `NodeId(0)` for whoever listens at the address (clients say hello so).
    Ping {
        /// Probe sequence number, echoed in the ack.
        seq: u32,
        /// Intended receiver.
        target: NodeId,
        /// Piggybacked updates.
        gossip: Gossip,
    },
    /// The answer to a ping, direct or relayed.
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// Piggybacked updates.
        gossip: Gossip,
    },
    /// Asks the receiver to probe `target` at `addr` and relay its ack.
    PingReq {
        /// Sequence number the relayed ack will carry.
        seq: u32,
        /// The member to probe.
        target: NodeId,
        /// Its advertised address.
        addr: SocketAddr,
        /// Piggybacked updates.
        gossip: Gossip,
    },
    /// Updates alone, sent on the gossip interval.
    Gossip {
        /// The updates.
        gossip: Gossip,
    },
    /// A page of the sender's full member table (push-pull sync, and join).
    Sync {
        /// Whether the receiver should answer with its own table.
        reply: bool,
        /// The page.
        records: heapless::Vec<Record, SYNC_PAGE>,
    },
}

impl Message {
    /// Decodes a datagram body. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        postcard::from_bytes(bytes).ok()
    }

    /// Encodes into `buf`, returning the length, or `None` when it does not fit.
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        postcard::to_slice(self, buf).ok().map(|b| b.len())
    }
}
