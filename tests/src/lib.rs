//! Shoal's test harness.
//!
//! - [`sim`]: a deterministic simulator running many core nodes in one
//!   process on a virtual clock and a seeded, faulty network.
//! - [`seeds`]: running a scenario over many seeds in parallel and
//!   reporting the seeds that fail, with the command that replays them.

pub mod fsim;
pub mod scenarios;
pub mod seeds;
pub mod sim;
pub mod store;
