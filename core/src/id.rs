//! Identities and roles: node ids, node kinds, pools and tags.

use serde::{Deserialize, Serialize};

/// A node's identity in the cluster. Stable across restarts of the same node
/// (host nodes keep it in their data dir; firmware derives it from the board).
///
/// Id `0` is reserved and never names a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NodeId(pub u64);

impl core::fmt::Display for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What kind of machine a node runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NodeKind {
    /// A Linux host running `shoal-node`.
    Host,
    /// A microcontroller running the Shoal firmware.
    Mcu,
}

/// A named group of nodes that the router places keys on.
///
/// Pools are a small closed set so a node's pools fit in one `PoolSet` word on
/// the wire. New pools are appended, never renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Pool {
    /// File and table metadata.
    Meta = 0,
    /// File chunks and table rows.
    Data = 1,
    /// Nodes that run tasks.
    Runner = 2,
    /// Nodes that own task placement.
    Sched = 3,
    /// Microcontrollers.
    Mcu = 4,
}

impl Pool {
    /// Every pool, in wire order.
    pub const ALL: [Pool; 5] = [Pool::Meta, Pool::Data, Pool::Runner, Pool::Sched, Pool::Mcu];

    /// The pool's name as operators write it.
    pub const fn name(self) -> &'static str {
        match self {
            Pool::Meta => "meta",
            Pool::Data => "data",
            Pool::Runner => "runner",
            Pool::Sched => "sched",
            Pool::Mcu => "mcu",
        }
    }

    /// Parses an operator-written pool name.
    pub fn from_name(name: &str) -> Option<Pool> {
        Pool::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The pool with wire number `n`.
    pub fn from_u8(n: u8) -> Option<Pool> {
        Pool::ALL.get(usize::from(n)).copied()
    }
}

/// A set of pools, one bit per [`Pool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolSet(pub u16);

impl PoolSet {
    /// No pools.
    pub const EMPTY: PoolSet = PoolSet(0);

    /// Every known pool.
    pub const fn all() -> PoolSet {
        PoolSet((1 << Pool::ALL.len()) - 1)
    }

    /// This set plus `pool`.
    pub const fn with(self, pool: Pool) -> PoolSet {
        PoolSet(self.0 | (1 << pool as u8))
    }

    /// Whether `pool` is in the set.
    pub const fn contains(self, pool: Pool) -> bool {
        self.0 & (1 << pool as u8) != 0
    }

    /// The pools in the set, in wire order.
    pub fn iter(self) -> impl Iterator<Item = Pool> {
        Pool::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Pool> for PoolSet {
    fn from_iter<I: IntoIterator<Item = Pool>>(iter: I) -> Self {
        iter.into_iter().fold(PoolSet::EMPTY, PoolSet::with)
    }
}

/// Longest tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Most tags one node carries.
pub const MAX_TAGS: usize = 4;
/// Longest node name, in bytes.
pub const NAME_LEN: usize = 24;

/// A free-form label such as `gpu` or `sensor`, used by the scheduler.
pub type Tag = heapless::String<TAG_LEN>;
/// A node's tags.
pub type Tags = heapless::Vec<Tag, MAX_TAGS>;
/// A node's human-readable name.
pub type Name = heapless::String<NAME_LEN>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_round_trip() {
        for p in Pool::ALL {
            assert_eq!(Pool::from_name(p.name()), Some(p));
            assert_eq!(Pool::from_u8(p as u8), Some(p));
        }
        assert_eq!(Pool::from_name("nope"), None);
        assert_eq!(Pool::from_u8(200), None);
    }

    #[test]
    fn pool_sets() {
        let s: PoolSet = [Pool::Meta, Pool::Mcu].into_iter().collect();
        assert!(s.contains(Pool::Meta) && s.contains(Pool::Mcu) && !s.contains(Pool::Data));
        assert_eq!(s.iter().count(), 2);
        assert!(Pool::ALL.iter().all(|p| PoolSet::all().contains(*p)));
    }
}
