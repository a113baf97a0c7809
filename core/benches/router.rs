//! The router beside the seed design's placement, `int(sha256(key)) mod N`.
//!
//! `cargo bench -p shoal-core --bench router` prints a Markdown table for
//! N = 8, 64 and 256 equal-weight nodes:
//! - keys moved when one node joins (N → N+1) and when one leaves
//!   (N → N−1, the last node in the list), over 100,000 keys;
//! - max/mean keys per node over 1,000,000 keys;
//! - lookup time per key from a precomputed digest, for `primary`,
//!   `replicas::<3>` and mod-N.
//!
//! Keys are `key-0`, `key-1`, …; only the timings change between runs.

use std::hint::black_box;
use std::time::Instant;

use sha2::{Digest, Sha256};
use shoal_core::router::{Candidate, KeyDigest, primary, replicas, score};
use shoal_core::{NodeId, Pool, PoolSet};

const MOVE_KEYS: usize = 100_000;
const LOAD_KEYS: usize = 1_000_000;
const TIMED_KEYS: usize = 100_000;
const SIZES: [usize; 3] = [8, 64, 256];

/// `n` equal-weight nodes with ids `1..=n`.
fn view(n: usize) -> Vec<Candidate> {
    (1..=n as u64)
        .map(|id| Candidate::new(NodeId(id), 100, PoolSet::all()))
        .collect()
}

/// The seed design's placement: the digest read as a big-endian integer,
/// modulo the number of servers (`int(hexdigest, 16) % len(servers)`).
fn mod_n(key: &KeyDigest, n: usize) -> usize {
    let n = n as u128;
    let rem = key.0.chunks_exact(8).fold(0u128, |rem, chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        ((rem << 64) | u128::from(u64::from_be_bytes(word))) % n
    });
    rem as usize
}

/// Rendezvous owner as an index into `view`.
fn owner(view: &[Candidate], key: &KeyDigest) -> usize {
    primary(view.iter().copied(), Pool::Data, key).map_or(0, |id| id.0 as usize - 1)
}

fn moved(
    keys: &[KeyDigest],
    before: impl Fn(&KeyDigest) -> usize,
    after: impl Fn(&KeyDigest) -> usize,
) -> usize {
    keys.iter().filter(|k| before(k) != after(k)).count()
}

fn max_over_mean(keys: &[KeyDigest], n: usize, place: impl Fn(&KeyDigest) -> usize) -> f64 {
    let mut load = vec![0u32; n];
    for key in keys {
        load[place(key)] += 1;
    }
    let max = load.iter().copied().max().unwrap_or(0);
    f64::from(max) * n as f64 / keys.len() as f64
}

/// Mean nanoseconds per call of `f` over `keys`, best of three passes.
fn time_per_key<T>(keys: &[KeyDigest], mut f: impl FnMut(&KeyDigest) -> T) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for key in keys {
                black_box(f(black_box(key)));
            }
            start.elapsed().as_nanos() as f64 / keys.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn moved_cell(count: usize, total: usize) -> String {
    format!("{count} ({:.2}%)", count as f64 * 100.0 / total as f64)
}

fn main() {
    let started = Instant::now();
    let keys: Vec<KeyDigest> = (0..LOAD_KEYS)
        .map(|i| KeyDigest::of(format!("key-{i}").as_bytes()))
        .collect();
    let move_keys = &keys[..MOVE_KEYS];
    let timed_keys = &keys[..TIMED_KEYS];

    println!("## Router: weighted rendezvous vs `sha256(key) mod N`\n");
    println!(
        "{MOVE_KEYS} keys for movement, {LOAD_KEYS} for load, equal weights; \
         lookup times are per key from a precomputed digest, best of 3 passes.\n"
    );
    println!("| N | measure | rendezvous | sha256 mod N |");
    println!("|---:|---|---:|---:|");
    for n in SIZES {
        let nodes = view(n + 1);
        let (small, same, big) = (&nodes[..n - 1], &nodes[..n], &nodes[..]);

        let join_hrw = moved(move_keys, |k| owner(same, k), |k| owner(big, k));
        let join_mod = moved(move_keys, |k| mod_n(k, n), |k| mod_n(k, n + 1));
        println!(
            "| {n} | keys moved, join {n}→{} (fair share {:.2}%) | {} | {} |",
            n + 1,
            100.0 / (n + 1) as f64,
            moved_cell(join_hrw, MOVE_KEYS),
            moved_cell(join_mod, MOVE_KEYS),
        );
        let leave_hrw = moved(move_keys, |k| owner(same, k), |k| owner(small, k));
        let leave_mod = moved(move_keys, |k| mod_n(k, n), |k| mod_n(k, n - 1));
        println!(
            "| {n} | keys moved, leave {n}→{} (fair share {:.2}%) | {} | {} |",
            n - 1,
            100.0 / n as f64,
            moved_cell(leave_hrw, MOVE_KEYS),
            moved_cell(leave_mod, MOVE_KEYS),
        );

        let load_hrw = max_over_mean(&keys, n, |k| owner(same, k));
        let load_mod = max_over_mean(&keys, n, |k| mod_n(k, n));
        println!("| {n} | max/mean load | {load_hrw:.3} | {load_mod:.3} |");

        let t_primary = time_per_key(timed_keys, |k| primary(same.iter().copied(), Pool::Data, k));
        let t_replicas = time_per_key(timed_keys, |k| {
            replicas::<3>(same.iter().copied(), Pool::Data, k)
        });
        let t_mod = time_per_key(timed_keys, |k| mod_n(k, n));
        println!("| {n} | lookup ns/key, `primary` | {t_primary:.0} | {t_mod:.0} |");
        println!("| {n} | lookup ns/key, `replicas::<3>` | {t_replicas:.0} | — |");
    }

    // What both schemes pay before the lookup, and why the per-node draw is
    // not a SHA-256 of (key, node).
    let names: Vec<String> = (0..TIMED_KEYS).map(|i| format!("key-{i}")).collect();
    let start = Instant::now();
    for name in &names {
        black_box(KeyDigest::of(black_box(name.as_bytes())));
    }
    let t_digest = start.elapsed().as_nanos() as f64 / TIMED_KEYS as f64;
    let t_score = time_per_key(timed_keys, |k| score(k, NodeId(black_box(42)), 100));
    let t_sha_draw = time_per_key(timed_keys, |k| {
        let mut h = Sha256::new();
        h.update(k.0);
        h.update(42u64.to_le_bytes());
        h.finalize()
    });
    println!();
    println!("| per key or per candidate | ns |");
    println!("|---|---:|");
    println!("| `KeyDigest::of` (sha256 of the key, both schemes) | {t_digest:.0} |");
    println!(
        "| `score` for one candidate (SplitMix64 draw, fixed-point log2, division) | {t_score:.1} |"
    );
    println!("| SHA-256 of (digest, node id) alone, the alternative draw | {t_sha_draw:.0} |");
    eprintln!("\n(ran in {:.1} s)", started.elapsed().as_secs_f64());
}
