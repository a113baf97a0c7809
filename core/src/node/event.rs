//! What a node reports to its driver.

use crate::NodeId;
use crate::link::LinkStats;
use crate::member::{MemberEvent, MemberStats};
use crate::router::KeyDigest;
use crate::wire::DropStats;

use super::envelope::{RemoteError, Response};

/// Identifies a command's operation; its outcome arrives as an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OpId(pub u64);

/// Something the driver may want to act on or log.
///
/// Sized by its largest variant, a `Members` response page (see
/// [`Response`]); the node's event queue is short for that reason.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The member table changed.
    Member(MemberEvent),
    /// A client node reached its contact node and may send requests.
    Connected(NodeId),
    /// A key-addressed message arrived here, the key's owner.
    KeyMessage {
        /// The node or client that handed it to this node.
        from: NodeId,
        /// The key's digest.
        key: KeyDigest,
        /// The payload's length.
        len: usize,
    },
    /// An operation finished with the remote node's response.
    Response {
        /// The operation.
        op: OpId,
        /// What the remote node answered.
        response: Response,
    },
    /// An operation failed.
    Failed {
        /// The operation.
        op: OpId,
        /// Why.
        reason: OpFailure,
    },
}

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OpFailure {
    /// No response within the request timeout: the node or the key's owner
    /// may be down or partitioned. Retrying is safe for idempotent requests.
    TimedOut,
    /// The link gave up delivering the request (retransmits exhausted).
    Undeliverable,
    /// The remote node answered with an error.
    Remote(RemoteError),
}

impl core::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpFailure::TimedOut => f.write_str("no response in time"),
            OpFailure::Undeliverable => f.write_str("the request could not be delivered"),
            OpFailure::Remote(e) => write!(f, "{e}"),
        }
    }
}

/// Counters for the whole node.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_in: u64,
    /// Datagrams produced by `poll_transmit`.
    pub datagrams_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Incoming datagrams dropped, by reason.
    pub drops: DropStats,
    /// Link frames with no known address to send to.
    pub unaddressable: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Requests refused for lack of room.
    pub busy: u64,
    /// Replicas sent a copy they lacked (chunk repairs, read repairs).
    pub repairs: u64,
    /// Keys the anti-entropy sweep visited.
    pub swept: u64,
    /// Chunks deleted here after their current replicas confirmed a copy.
    pub handed_off: u64,
    /// Chunks deleted here because no file referenced them.
    pub reclaimed: u64,
    /// Reliable link counters.
    pub link: LinkStats,
    /// Membership counters.
    pub member: MemberStats,
}
