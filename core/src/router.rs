//! Placeholder until the router lands.
use crate::{NodeId, PoolSet};
/// One node as the router sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Id.
    pub id: NodeId,
    /// Weight.
    pub weight: u32,
    /// Pools.
    pub pools: PoolSet,
}
