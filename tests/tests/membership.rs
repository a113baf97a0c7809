//! Membership under the simulator, each scenario over many seeds
//! (`SHOAL_SIM_SEEDS` overrides the count). A failure lists its seeds and
//! the `cargo xtask sim` command that replays each.

use shoal_core::Duration;
use shoal_tests::scenarios;
use shoal_tests::seeds::{for_seeds, seed_count};

const NODES: usize = 32;

#[test]
fn thirty_two_nodes_join_through_one_seed_within_10_s() {
    for_seeds("join", seed_count(100), |seed| {
        scenarios::join(seed, NODES).map(drop)
    });
}

#[test]
fn crashed_node_is_marked_dead_by_all_within_10_s() {
    for_seeds("crash", seed_count(100), |seed| {
        scenarios::crash(seed, NODES).map(drop)
    });
}

#[test]
fn no_live_node_is_marked_dead_over_10000_s_of_loss() {
    for_seeds("stable", seed_count(100), |seed| {
        scenarios::stable(seed, NODES, Duration::from_secs(10_000)).map(drop)
    });
}

#[test]
fn healed_partition_converges_within_30_s() {
    for_seeds("partition", seed_count(100), |seed| {
        scenarios::partition(seed, NODES).map(drop)
    });
}

#[test]
fn restarted_node_rejoins() {
    for_seeds("restart", seed_count(100), |seed| {
        scenarios::restart(seed, NODES).map(drop)
    });
}

#[test]
fn a_node_that_leaves_is_marked_left_not_dead() {
    for_seeds("leave", seed_count(100), |seed| {
        scenarios::leave(seed, NODES).map(drop)
    });
}
