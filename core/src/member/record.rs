//! Member records, their versions, and the gossip updates that change them.

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{Name, Tags};
use crate::{Instant, NodeId, NodeKind, PoolSet};

/// What a node says about itself. Changes only when the node restarts or
/// bumps its incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Profile {
    /// Human-readable name, for operators.
    pub name: Name,
    /// Where peers reach this node. Never replaced by a datagram's source
    /// address: NAT and QEMU user networking rewrite those.
    pub addr: SocketAddr,
    /// Host or microcontroller.
    pub kind: NodeKind,
    /// Relative capacity for the router; 0 means "place nothing here".
    pub weight: u32,
    /// Pools the node serves.
    pub pools: PoolSet,
    /// Free-form labels for the scheduler.
    pub tags: Tags,
}

/// The version of a member's record. Ordered by epoch, then incarnation: a
/// restarted node (higher epoch) wins over anything said about its previous
/// life, and within a life a node refutes suspicion by raising its incarnation.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Version {
    /// The node's boot epoch.
    pub epoch: u64,
    /// SWIM incarnation within that epoch.
    pub incarnation: u32,
}

impl Version {
    /// The next incarnation above both `self` and `other` in this epoch.
    pub fn refuting(self, other: Version) -> Version {
        let incarnation = if other.epoch == self.epoch {
            self.incarnation.max(other.incarnation).saturating_add(1)
        } else {
            self.incarnation.saturating_add(1)
        };
        Version {
            epoch: self.epoch,
            incarnation,
        }
    }
}

/// A member's liveness as this node believes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Answering probes.
    Alive,
    /// Missed a probe; dead unless it refutes before the suspicion timeout.
    Suspect,
    /// Declared dead after a suspicion timeout.
    Dead,
    /// Left voluntarily.
    Left,
}

impl State {
    /// Alive or suspect: still placed on by the router.
    pub fn is_live(self) -> bool {
        matches!(self, State::Alive | State::Suspect)
    }

    /// The operator-facing name.
    pub fn name(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Left => "left",
        }
    }
}

/// A full member record, as kept in the table and sent in sync pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Record {
    /// The member's id.
    pub id: NodeId,
    /// What it says about itself.
    pub profile: Profile,
    /// Its record version.
    pub version: Version,
    /// Its state.
    pub state: State,
}

/// A change to one member, piggybacked on protocol messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Update {
    /// The member is alive at `version` with this profile.
    Alive {
        /// The member.
        id: NodeId,
        /// Its version.
        version: Version,
        /// Its profile.
        profile: Profile,
    },
    /// The member is suspected of failure at `version`.
    Suspect {
        /// The member.
        id: NodeId,
        /// The version suspected.
        version: Version,
    },
    /// The member was declared dead at `version`.
    Dead {
        /// The member.
        id: NodeId,
        /// The version declared dead.
        version: Version,
    },
    /// The member left at `version`.
    Left {
        /// The member.
        id: NodeId,
        /// Its final version.
        version: Version,
    },
}

impl Update {
    /// The member the update is about.
    pub fn id(&self) -> NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => *id,
        }
    }

    /// The update that says what `record` says.
    pub fn from_record(record: &Record) -> Update {
        let (id, version) = (record.id, record.version);
        match record.state {
            State::Alive => Update::Alive {
                id,
                version,
                profile: record.profile.clone(),
            },
            State::Suspect => Update::Suspect { id, version },
            State::Dead => Update::Dead { id, version },
            State::Left => Update::Left { id, version },
        }
    }
}

/// A member as this node tracks it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The record as last merged.
    pub record: Record,
    /// When the record's state last changed.
    pub since: Instant,
    /// When a suspect member is declared dead.
    pub(crate) suspect_deadline: Option<Instant>,
}

impl Member {
    /// The member's id.
    pub fn id(&self) -> NodeId {
        self.record.id
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.record.state
    }

    /// Its profile.
    pub fn profile(&self) -> &Profile {
        &self.record.profile
    }
}
