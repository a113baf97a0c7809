//! What the router promises, measured over many keys: joins and leaves move
//! only the changed node's keys, and loads follow weights.
//!
//! Keys are `key-0`, `key-1`, …; weights come from a fixed SplitMix64 stream.
//! Nothing here is random, so every run checks the same numbers.

use std::sync::OnceLock;

use shoal_core::router::{Candidate, KeyDigest, primary, replicas, score};
use shoal_core::{NodeId, Pool, PoolSet};

/// Keys for the load tests.
const LOAD_KEYS: usize = 1_000_000;
/// Keys for the movement tests.
const MOVE_KEYS: usize = 100_000;

/// Digests of `key-0` .. `key-999999`, computed once for all tests.
fn digests() -> &'static [KeyDigest] {
    static DIGESTS: OnceLock<Vec<KeyDigest>> = OnceLock::new();
    DIGESTS.get_or_init(|| {
        (0..LOAD_KEYS)
            .map(|i| KeyDigest::of(format!("key-{i}").as_bytes()))
            .collect()
    })
}

/// `n` equal-weight nodes with ids `1..=n`, serving every pool.
fn equal_view(n: u64) -> Vec<Candidate> {
    (1..=n)
        .map(|id| Candidate::new(NodeId(id), 100, PoolSet::all()))
        .collect()
}

fn owners(view: &[Candidate], keys: &[KeyDigest]) -> Vec<Option<NodeId>> {
    keys.iter()
        .map(|key| primary(view.iter().copied(), Pool::Data, key))
        .collect()
}

fn check_join(n: u64) {
    let keys = &digests()[..MOVE_KEYS];
    let mut view = equal_view(n);
    let before = owners(&view, keys);
    let newcomer = NodeId(n + 1);
    view.push(Candidate::new(newcomer, 100, PoolSet::all()));
    let after = owners(&view, keys);

    let mut moved = 0usize;
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            moved += 1;
            assert_eq!(*new, Some(newcomer), "a key moved between old nodes");
        }
    }
    let share = moved as f64 / keys.len() as f64;
    let fair = 1.0 / (n + 1) as f64;
    println!(
        "join {n} -> {}: {moved} keys moved ({:.3}%, fair share {:.3}%)",
        n + 1,
        share * 100.0,
        fair * 100.0
    );
    assert!(share <= fair + 0.01, "too many keys moved: {share}");
    // The newcomer really takes its share; it does not just sit idle.
    assert!(share >= fair - 0.01, "too few keys moved: {share}");
}

fn check_leave(n: u64) {
    let keys = &digests()[..MOVE_KEYS];
    let view = equal_view(n);
    let before = owners(&view, keys);
    let leaver = NodeId(n / 2);
    let rest: Vec<Candidate> = view.iter().copied().filter(|c| c.id != leaver).collect();
    let after = owners(&rest, keys);

    let mut moved = 0usize;
    for (old, new) in before.iter().zip(&after) {
        if *old == Some(leaver) {
            moved += 1;
            assert_ne!(*new, Some(leaver));
        } else {
            assert_eq!(old, new, "a key not on the departed node moved");
        }
    }
    println!(
        "leave {n} -> {}: {moved} keys moved ({:.3}%)",
        n - 1,
        moved as f64 / keys.len() as f64 * 100.0
    );
}

#[test]
fn join_moves_keys_only_to_the_new_node() {
    for n in [8, 64, 256] {
        check_join(n);
    }
}

#[test]
fn leave_moves_only_the_departed_nodes_keys() {
    for n in [8, 64, 256] {
        check_leave(n);
    }
}

#[test]
fn replica_sets_change_only_by_the_changed_node() {
    let keys = &digests()[..20_000];
    let view = equal_view(64);
    let newcomer = Candidate::new(NodeId(1000), 100, PoolSet::all());
    let grown: Vec<Candidate> = view.iter().copied().chain([newcomer]).collect();
    let leaver = NodeId(7);
    let shrunk: Vec<Candidate> = view.iter().copied().filter(|c| c.id != leaver).collect();
    for key in keys {
        let before = replicas::<3>(view.iter().copied(), Pool::Data, key);

        // Join: the newcomer is inserted somewhere or nowhere; the others keep
        // their order.
        let after = replicas::<3>(grown.iter().copied(), Pool::Data, key);
        let others: Vec<NodeId> = after
            .iter()
            .copied()
            .filter(|id| *id != newcomer.id)
            .collect();
        assert_eq!(others[..], before[..others.len()]);

        // Leave: the departed node drops out, the rest move up in order and
        // one more node joins at the end.
        let after = replicas::<3>(shrunk.iter().copied(), Pool::Data, key);
        let kept: Vec<NodeId> = before.iter().copied().filter(|id| *id != leaver).collect();
        assert_eq!(after[..kept.len()], kept[..]);
    }
}

/// Keys per node of `view` over all load keys, counted at the primary owner.
fn loads(view: &[Candidate]) -> Vec<u32> {
    let mut load = vec![0u32; view.len()];
    for key in digests() {
        // The primary by `score` directly, as `primary` does it, without the
        // iterator plumbing (this loop runs 10⁸ times in debug builds).
        let (mut best, mut best_score) = (0, 0);
        for (i, c) in view.iter().enumerate() {
            let s = score(key, c.id, c.weight);
            if s > best_score {
                (best, best_score) = (i, s);
            }
        }
        load[best] += 1;
    }
    load
}

fn max_over_mean(view: &[Candidate]) -> f64 {
    let max = f64::from(*loads(view).iter().max().unwrap());
    let mean = LOAD_KEYS as f64 / view.len() as f64;
    max / mean
}

fn check_balance(n: u64) {
    let ratio = max_over_mean(&equal_view(n));
    println!("{n} nodes, {LOAD_KEYS} keys: max/mean load {ratio:.4}");
    assert!(ratio <= 1.06, "max/mean load {ratio} over {n} nodes");
}

#[test]
fn equal_weights_balance_8() {
    check_balance(8);
}

#[test]
fn equal_weights_balance_64() {
    check_balance(64);
}

#[test]
fn equal_weights_balance_256() {
    check_balance(256);
}

#[test]
fn primary_by_score_agrees_with_primary() {
    // `loads` picks owners by `score` for speed; check that it is the
    // same choice as `primary` (ties aside, which do not occur here).
    let view = equal_view(64);
    for key in &digests()[..2_000] {
        let by_score = view
            .iter()
            .max_by_key(|c| score(key, c.id, c.weight))
            .map(|c| c.id);
        assert_eq!(by_score, primary(view.iter().copied(), Pool::Data, key));
    }
}

/// SplitMix64, to draw test weights from a fixed seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn shares_follow_weights() {
    let mut rng = 0x5109a1;
    let view: Vec<Candidate> = (1..=50)
        .map(|id| {
            let weight = (splitmix(&mut rng) % 100 + 1) as u32;
            Candidate::new(NodeId(id), weight, PoolSet::all())
        })
        .collect();
    let total: u32 = view.iter().map(|c| c.weight).sum();

    let load = loads(&view);

    let mut worst = 0f64;
    let mut checked = 0;
    for (c, keys) in view.iter().zip(&load) {
        let weight_share = f64::from(c.weight) / f64::from(total);
        let key_share = f64::from(*keys) / LOAD_KEYS as f64;
        let error = (key_share / weight_share - 1.0).abs();
        if weight_share >= 0.01 {
            checked += 1;
            worst = worst.max(error);
            assert!(
                error <= 0.05,
                "node {} weight {} ({:.3}%) got {:.3}% of keys",
                c.id.0,
                c.weight,
                weight_share * 100.0,
                key_share * 100.0
            );
        }
    }
    println!("{checked} of 50 nodes hold >= 1% of the weight; worst relative error {worst:.4}");
    assert!(checked >= 30);
}

#[test]
fn pools_partition_the_view() {
    // Nodes outside the pool, or with weight 0, never own a key; those inside
    // share the keys as if the others did not exist.
    let meta = PoolSet::EMPTY.with(Pool::Meta);
    let data = PoolSet::EMPTY.with(Pool::Data);
    let mut view = Vec::new();
    for id in 1..=32 {
        view.push(Candidate::new(
            NodeId(id),
            10,
            if id % 2 == 0 { meta } else { data },
        ));
    }
    view.push(Candidate::new(NodeId(99), 0, PoolSet::all()));
    let meta_only: Vec<Candidate> = view
        .iter()
        .copied()
        .filter(|c| c.pools.contains(Pool::Meta) && c.weight > 0)
        .collect();
    for key in &digests()[..10_000] {
        let owners = replicas::<3>(view.iter().copied(), Pool::Meta, key);
        assert_eq!(owners.len(), 3);
        assert!(owners.iter().all(|id| id.0 % 2 == 0));
        assert_eq!(
            owners,
            replicas::<3>(meta_only.iter().copied(), Pool::Meta, key)
        );
    }
}
