//! The file system under the simulator's faults, over many seeds
//! (`SHOAL_SIM_SEEDS` overrides the count; `SHOAL_SIM_SEED` replays one).

use shoal_tests::fsim::{self, FaultPlan};
use shoal_tests::seeds::{for_seeds, seed_count};

#[test]
fn acknowledged_files_survive_crashes_restarts_partitions_and_loss() {
    for_seeds("fs-faults", seed_count(200), |seed| {
        fsim::faults(seed, FaultPlan::default()).map(drop)
    });
}

#[test]
fn unreferenced_chunks_are_reclaimed_and_referenced_ones_never() {
    for_seeds("fs-reclaim", seed_count(20), |seed| {
        fsim::reclaim(seed).map(drop)
    });
}
