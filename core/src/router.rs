//! The hash router: from a key to an ordered replica set.
//!
//! Every placement decision in Shoal — file metadata, chunks, table rows,
//! tasks — asks this module which nodes own a key. The answer depends only on
//! the key and on the membership view passed in, so every node with the same
//! view computes the same owners without talking to anyone.
//!
//! # Algorithm: weighted rendezvous hashing
//!
//! Each key is reduced to a [`KeyDigest`] (SHA-256, as in the seed design).
//! For each candidate node the router computes a [`score`] from the key, the
//! node's id and the node's weight, and ranks the candidates by score
//! ([`replicas`]); the highest is the key's [`primary`] owner. This is
//! *highest random weight* (rendezvous) hashing, weighted as in Schindelhauer
//! and Schomaker's "logarithmic method" (and Ceph's `straw2`):
//!
//! ```text
//! u     = draw(key, node) ∈ (0, 1)      uniform, independent per (key, node)
//! score = weight / -log2(u)
//! ```
//!
//! `-log2(u)` is exponentially distributed, so `-log2(u) / weight` is
//! exponential with rate proportional to `weight`, and the smallest of several
//! such variables belongs to node `i` with probability `weightᵢ / Σ weight`.
//! Taking the largest `weight / -log2(u)` picks the same node, so each node
//! owns a share of the keys equal to its share of the total weight. (The usual
//! statement uses `ln`; `log2` differs by a constant factor that cancels out
//! of every comparison.)
//!
//! # Why only the changed node's keys move
//!
//! A node's score for a key depends on that key and that node only — never on
//! which other nodes are in the view. When a node joins, every other node's
//! score is unchanged, so a key's owner changes only if the newcomer outscores
//! it: moved keys all move *to* the new node, and it takes its weight's share
//! of them. When a node leaves, keys it did not own still have the same best
//! scorer; only its own keys move, each to its next-ranked node. The same holds
//! position by position for replica sets: a join inserts the newcomer into
//! some keys' rankings and a leave removes the departed node, the relative
//! order of everyone else is untouched. Compare the seed design's
//! `sha256(key) mod N`, which moves about `N/(N+1)` of all keys on one join.
//!
//! # Integer arithmetic only
//!
//! Placement must be identical on an x86-64 host and a Cortex-M3, so the
//! placement path uses no floating point; every step is integer math with a
//! single exactly specified result:
//!
//! 1. **Draw.** The first 8 bytes of the digest (little-endian) seed a
//!    SplitMix64 generator and the node id selects its output:
//!    `h = mix(k + id·γ)`, with SplitMix64's golden-ratio increment `γ` and its
//!    64-bit avalanche finaliser `mix` (two multiplies, three xor-shifts).
//!    A SHA-256 of (digest, id) per candidate would also do, but costs
//!    several times the whole score on a host with SHA instructions and far
//!    more on a microcontroller. The draw is `u = x / 2⁶⁴` with `x = h | 1`,
//!    an odd integer, so `u` is never 0 or 1.
//! 2. **Logarithm.** `-log2(u) = 64 - log2(x)`. The integer part of `log2(x)`
//!    is the position of the leading one bit. The mantissa `m ∈ [1, 2)` is
//!    split as `m = cᵢ · (1 + r)` where `cᵢ = 1 + i/128` comes from the 7 bits
//!    after the leading one, `1 + r` is found by multiplying with a stored
//!    reciprocal of `cᵢ` (so `0 ≤ r < 2⁻⁷`), `log2(cᵢ)` is read from a
//!    128-entry table (holding the logarithm of the stored reciprocal itself,
//!    so the reciprocal's rounding cancels), and `log2(1 + r)` is the series
//!    `(r - r²/2 + r³/3 - … - r⁶/6) / ln 2`. Both tables are computed by the
//!    compiler from their definitions (`const fn`, bit-by-bit logarithm).
//!    The result `L = -log2(u)` is kept in unsigned fixed point with 57
//!    fraction bits (`Q7.57`, since `L ≤ 64`).
//! 3. **Score.** `score = ⌊weight · 2⁹⁶ / L⌋`, as `u128`: `weight < 2³²` and
//!    `L ≥ 2⁻⁵⁷` keep it in range, and one integer division has one answer
//!    on every platform.
//!
//! **Precision.** The series is cut after `r⁶`; the first omitted term is
//! below `2⁻⁴⁹ / (7 ln 2) < 2⁻⁵¹`, and the table entries and fixed-point
//! rounding add a few units of `2⁻⁶²`. So `L` is within about `2⁻⁵⁰` of the
//! exact `-log2(u)` (the tests check `2⁻⁴⁸` against `f64`), and the score has
//! at least 39 fraction bits. Winning values of `L` are about
//! `weight / Σ weight`, so for any realistic cluster the relative error of a
//! winning score is below `2⁻³⁰` — far below anything a share of keys could
//! show. Exact ties are broken by [`NodeId`], lower id first.
//!
//! # Cost
//!
//! One lookup costs one draw, one logarithm and one 128-by-64-bit division per
//! candidate in the pool, and [`replicas`] keeps a sorted top-`N` array on the
//! stack: `O(candidates × N)` time, no allocation. `docs/BENCHMARKS.md` has
//! measured numbers beside `sha256(key) mod N`.

use core::num::NonZeroU128;

use sha2::{Digest, Sha256};

use crate::id::{NodeId, Pool, PoolSet};

/// SHA-256 of the key, as in the seed design (`sha256(key)`), kept whole.
///
/// The router reads only its first eight bytes; the rest stays available to
/// callers that want a content address (file chunks are named by theirs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// The digest of one key: `sha256(key)`.
    pub fn of(key: &[u8]) -> KeyDigest {
        KeyDigest(Sha256::digest(key).into())
    }

    /// The digest of a key made of several parts, such as (table, primary key).
    ///
    /// Each part is prefixed with its length as a little-endian `u64`, so
    /// `["ab", "c"]` and `["a", "bc"]` differ. This is a different encoding
    /// from [`KeyDigest::of`]: a key space should be addressed through one of
    /// the two, not both.
    pub fn of_parts(parts: &[&[u8]]) -> KeyDigest {
        let mut hasher = Sha256::new();
        for part in parts {
            // `usize` is 32 bits on the firmware and 64 on hosts; the prefix
            // is fixed at 64 bits so both produce the same digest.
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        KeyDigest(hasher.finalize().into())
    }

    /// The 64 bits of the digest that seed the router's per-node draws: its
    /// first eight bytes, little-endian.
    pub const fn seed(&self) -> u64 {
        let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = &self.0;
        u64::from_le_bytes([*b0, *b1, *b2, *b3, *b4, *b5, *b6, *b7])
    }
}

/// One node as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its capacity relative to the others; a node with twice the weight owns
    /// twice the keys. `0` means "never place here".
    pub weight: u32,
    /// The pools it serves; it is a candidate only for keys routed in these.
    pub pools: PoolSet,
}

impl Candidate {
    /// A node with the given weight, serving `pools`.
    pub const fn new(id: NodeId, weight: u32, pools: PoolSet) -> Candidate {
        Candidate { id, weight, pools }
    }
}

/// An ordered replica set: the key's primary owner first, then its fallbacks.
pub type ReplicaSet<const N: usize> = heapless::Vec<NodeId, N>;

/// The node's score for a key: higher wins.
///
/// `⌊weight · 2⁹⁶ / L⌋`, where `L` is `-log2` of the node's uniform draw for
/// the key in `Q7.57` fixed point (see the [module docs](self)). Deterministic
/// integer math: the same inputs give the same `u128` on every platform.
/// Weight `0` scores `0`; any positive weight scores at least `2³³`.
pub fn score(key: &KeyDigest, id: NodeId, weight: u32) -> u128 {
    score_seeded(key.seed(), id, weight)
}

/// [`score`] for a key given by its [`seed`](KeyDigest::seed).
fn score_seeded(seed: u64, id: NodeId, weight: u32) -> u128 {
    let l = neg_log2_q57(draw(seed, id));
    // `neg_log2_q57` never returns 0; the fallback only keeps the division
    // visibly total.
    let l = NonZeroU128::new(u128::from(l)).unwrap_or(NonZeroU128::MIN);
    (u128::from(weight) << 96) / l
}

/// The ranked replica set for `key`: up to `N` candidates that serve `pool`
/// and have a positive weight, best [`score`] first, exact ties broken by
/// lower [`NodeId`].
///
/// A node listed more than once counts once, at its best score. Runs in
/// `O(candidates × N)` with no allocation.
pub fn replicas<const N: usize>(
    candidates: impl IntoIterator<Item = Candidate>,
    pool: Pool,
    key: &KeyDigest,
) -> ReplicaSet<N> {
    let seed = key.seed();
    let mut ranking = Ranking::<N>::new();
    for c in eligible(candidates, pool) {
        ranking.offer(Ranked {
            score: score_seeded(seed, c.id, c.weight),
            id: c.id,
        });
    }
    ranking.into_replica_set()
}

/// The key's primary owner: the first entry of [`replicas`], or `None` when
/// no candidate serves `pool` with a positive weight.
pub fn primary(
    candidates: impl IntoIterator<Item = Candidate>,
    pool: Pool,
    key: &KeyDigest,
) -> Option<NodeId> {
    let seed = key.seed();
    eligible(candidates, pool)
        .map(|c| Ranked {
            score: score_seeded(seed, c.id, c.weight),
            id: c.id,
        })
        .reduce(|best, next| if next.beats(&best) { next } else { best })
        .map(|best| best.id)
}

/// The candidates that may hold keys routed in `pool`.
fn eligible(
    candidates: impl IntoIterator<Item = Candidate>,
    pool: Pool,
) -> impl Iterator<Item = Candidate> {
    candidates
        .into_iter()
        .filter(move |c| c.weight > 0 && c.pools.contains(pool))
}

/// A candidate's place in one key's ranking.
#[derive(Clone, Copy)]
struct Ranked {
    score: u128,
    id: NodeId,
}

impl Ranked {
    /// Whether `self` ranks above `other`: higher score, then lower id.
    fn beats(&self, other: &Ranked) -> bool {
        self.score > other.score || (self.score == other.score && self.id < other.id)
    }
}

/// The best `N` entries seen so far, best first, one per node.
struct Ranking<const N: usize> {
    entries: [Ranked; N],
    len: usize,
}

impl<const N: usize> Ranking<N> {
    fn new() -> Self {
        Ranking {
            entries: [Ranked {
                score: 0,
                id: NodeId(0),
            }; N],
            len: 0,
        }
    }

    /// Takes `entry` if it is among the best `N`, keeping the order.
    fn offer(&mut self, entry: Ranked) {
        let len = self.len;
        // Most candidates lose to the current last place: stop before
        // looking for their id (a node already listed holds at least that
        // place, so it cannot improve either).
        if len == N && self.entries.last().is_some_and(|last| !entry.beats(last)) {
            return;
        }
        let at = match self.entries.iter().take(len).position(|e| e.id == entry.id) {
            // The same node again: it may only improve its own entry.
            Some(at) => at,
            // Room left: the next free slot.
            None if len < N => len,
            // Full: it may only replace the last entry.
            None => len.saturating_sub(1),
        };
        let Some(slot) = self.entries.get_mut(at) else {
            return; // N = 0
        };
        if at < len && !entry.beats(slot) {
            return;
        }
        *slot = entry;
        self.len = len.max(at + 1);
        if let Some(filled) = self.entries.get_mut(..self.len) {
            bubble_up(filled, at);
        }
    }

    fn into_replica_set(self) -> ReplicaSet<N> {
        let mut set = ReplicaSet::new();
        for entry in self.entries.iter().take(self.len) {
            // At most `N` entries are kept, so every push fits.
            let _ = set.push(entry.id);
        }
        set
    }
}

/// Moves `entries[at]` towards the front while it beats its predecessor;
/// `entries` is otherwise sorted.
fn bubble_up(entries: &mut [Ranked], at: usize) {
    let mut i = at.min(entries.len());
    while i > 0 {
        match (entries.get(i), entries.get(i - 1)) {
            (Some(this), Some(prev)) if this.beats(prev) => entries.swap(i, i - 1),
            _ => break,
        }
        i -= 1;
    }
}

// ---------------------------------------------------------------------------
// Draw: one uniform 64-bit value per (key, node).

/// SplitMix64's increment, `2⁶⁴ / φ` rounded to odd.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The node's draw for the key: output number `id` of a SplitMix64 generator
/// seeded with the key's [`seed`](KeyDigest::seed).
fn draw(seed: u64, id: NodeId) -> u64 {
    mix64(seed.wrapping_add(id.0.wrapping_mul(GAMMA)))
}

/// SplitMix64's finaliser (Stafford's "Mix13"): a bijection on `u64` in which
/// every input bit affects every output bit.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------
// Fixed-point logarithm.

/// Fraction bits of `L = -log2(u)` as [`score`] uses it.
const L_FRAC: u32 = 57;

/// `-log2(x / 2⁶⁴)` for the odd draw `x = h | 1`, in `Q7.57`, never 0.
fn neg_log2_q57(h: u64) -> u64 {
    let x = h | 1;
    let lz = x.leading_zeros(); // 0..=63, since x != 0
    // log2(x) = (63 - lz) + log2(m), so -log2(x / 2⁶⁴) = (1 + lz) - log2(m).
    let frac = log2_mantissa_q63(x << lz);
    let frac = (frac + (1 << (63 - L_FRAC - 1))) >> (63 - L_FRAC);
    (u64::from(1 + lz) << L_FRAC).saturating_sub(frac).max(1)
}

/// Bits of the mantissa that select a table row.
const TABLE_BITS: u32 = 7;
/// Rows in the tables.
const TABLE_LEN: usize = 1 << TABLE_BITS;

/// `RECIP[i] = ⌈2⁶³ / cᵢ⌉` with `cᵢ = 1 + i/128`: `1/cᵢ` in `Q1.63`, rounded
/// up so that `m · RECIP[i] ≥ 1` whenever `m ≥ cᵢ`.
///
/// The tables are `static`, not `const`, so that each has one copy in flash
/// rather than one per use.
static RECIP: [u64; TABLE_LEN] = recip_table();

/// `LOG[i] = -log2(RECIP[i] / 2⁶³)` in `Q0.63`: the exact logarithm of the
/// reciprocal actually used, so its rounding cancels.
static LOG: [u64; TABLE_LEN] = log_table();

const fn recip_table() -> [u64; TABLE_LEN] {
    let mut table = [0u64; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        let c = (TABLE_LEN + i) as u128; // cᵢ · 128
        let q = (1u128 << (63 + TABLE_BITS)).div_ceil(c);
        table[i] = q as u64;
        i += 1;
    }
    table
}

const fn log_table() -> [u64; TABLE_LEN] {
    let recip = recip_table();
    let mut table = [0u64; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        // RECIP[i] / 2⁶³ ∈ (1/2, 1], so -log2 of it is 1 - log2(RECIP[i] / 2⁶²),
        // with RECIP[i] / 2⁶² ∈ (1, 2].
        let r = recip[i] as u128;
        table[i] = if r == 1 << 63 {
            0
        } else {
            (1u64 << 63) - log2_q63_bitwise(r << 1)
        };
        i += 1;
    }
    table
}

/// `log2(z / 2⁶³)` in `Q0.63` for `z / 2⁶³ ∈ [1, 2)`, one bit at a time:
/// square the value, and each time it reaches 2 emit a one and halve it.
/// Exact to about `2⁻⁶⁰`; used only by the compiler to build [`LOG`].
const fn log2_q63_bitwise(mut z: u128) -> u64 {
    let mut out = 0u64;
    let mut bit = 62;
    loop {
        // z ∈ [2⁶³, 2⁶⁴), so z² < 2¹²⁸.
        z = (z * z + (1 << 62)) >> 63;
        if z >= 1 << 64 {
            out |= 1 << bit;
            z >>= 1;
        }
        if bit == 0 {
            return out;
        }
        bit -= 1;
    }
}

/// `log2(e)` in `Q1.62`.
const LOG2_E_Q62: u64 = 0x5c55_1d94_ae0b_f85e;

/// `1 / (k ln 2)` in `Q1.62`, the coefficients of `log2(1 + r)`.
const fn series(k: u64) -> u64 {
    (LOG2_E_Q62 + k / 2) / k
}
const C1: u64 = series(1);
const C2: u64 = series(2);
const C3: u64 = series(3);
const C4: u64 = series(4);
const C5: u64 = series(5);
const C6: u64 = series(6);

/// `(a · b) / 2^shift` for fixed-point `a`, `b`.
const fn mul_shift(a: u64, b: u64, shift: u32) -> u64 {
    ((a as u128 * b as u128) >> shift) as u64
}

/// `log2(m / 2⁶³)` in `Q0.63`, for `m` with its top bit set (`m / 2⁶³ ∈ [1, 2)`).
fn log2_mantissa_q63(m: u64) -> u64 {
    // The 7 bits after the leading one choose cᵢ ≤ m; the mask keeps the
    // row index below TABLE_LEN.
    let i = (m >> (63 - TABLE_BITS)) as usize & (TABLE_LEN - 1);
    let (recip, log_c) = (RECIP[i], LOG[i]);
    // y = m / cᵢ ∈ [1, 1 + 2⁻⁷) in Q1.63; r = y - 1.
    let y = mul_shift(m, recip, 63);
    let r = y.saturating_sub(1 << 63);
    // log2(1 + r) = r (c₁ - r (c₂ - r (c₃ - r (c₄ - r (c₅ - r c₆))))),
    // cₖ = 1 / (k ln 2); every bracket stays positive for r < 2⁻⁷.
    let mut acc = C6;
    acc = C5.saturating_sub(mul_shift(r, acc, 63));
    acc = C4.saturating_sub(mul_shift(r, acc, 63));
    acc = C3.saturating_sub(mul_shift(r, acc, 63));
    acc = C2.saturating_sub(mul_shift(r, acc, 63));
    acc = C1.saturating_sub(mul_shift(r, acc, 63));
    mul_shift(r, acc, 62).saturating_add(log_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_f64() {
        for i in 0..TABLE_LEN {
            let recip = RECIP[i] as f64 / 2f64.powi(63);
            let c = 1.0 + i as f64 / 128.0;
            assert!((recip * c - 1.0).abs() < 1e-15, "RECIP[{i}]");
            let log = LOG[i] as f64 / 2f64.powi(63);
            assert!((log + recip.log2()).abs() < 1e-15, "LOG[{i}]");
        }
        assert!((LOG2_E_Q62 as f64 / 2f64.powi(62) - core::f64::consts::LOG2_E).abs() < 1e-16);
    }

    /// Draws to check: edge cases, table-row boundaries and a SplitMix64 stream.
    fn sample_draws() -> impl Iterator<Item = u64> {
        let edges = [0, 1, 2, 3, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1];
        let powers = (0..64).flat_map(|k| {
            let p = 1u64 << k;
            [p, p.wrapping_sub(1), p | (p >> 1), u64::MAX - p]
        });
        let rows = (0..TABLE_LEN as u64).flat_map(|i| {
            let row = (1 << 63) | (i << (63 - TABLE_BITS));
            [row, row - 1, row + 1, row >> 20, (row - 1) >> 40]
        });
        let stream = (0..200_000u64).map(|n| mix64(n.wrapping_mul(GAMMA)));
        edges.into_iter().chain(powers).chain(rows).chain(stream)
    }

    /// The error of `neg_log2_q57(h)` against `f64`, and the exact value.
    ///
    /// Away from `u = 1` the integer part is taken out exactly first, so the
    /// comparison is not limited by `f64`'s spacing near 64.
    fn neg_log2_error(h: u64) -> (f64, f64) {
        let ours = neg_log2_q57(h);
        let x = h | 1;
        if x < 1 << 63 {
            let lz = x.leading_zeros();
            let whole = u64::from(1 + lz) << L_FRAC;
            let frac = -((ours as i128 - whole as i128) as f64) / 2f64.powi(L_FRAC as i32);
            let m = (x << lz) as f64 / 2f64.powi(63);
            let exact = f64::from(1 + lz) - m.log2();
            ((frac - m.log2()).abs(), exact)
        } else {
            // Near u = 1, go through 1 - u, which is exact as an integer.
            let v = (u64::MAX - x) as f64 + 1.0;
            let exact = -(-v / 2f64.powi(64)).ln_1p() / core::f64::consts::LN_2;
            let ours = ours as f64 / 2f64.powi(L_FRAC as i32);
            ((ours - exact).abs(), exact)
        }
    }

    #[test]
    fn mantissa_log_is_accurate() {
        let mut worst = 0f64;
        for h in sample_draws() {
            let m = h | (1 << 63);
            let ours = log2_mantissa_q63(m) as f64 / 2f64.powi(63);
            let exact = (m as f64 / 2f64.powi(63)).log2();
            worst = worst.max((ours - exact).abs());
        }
        // f64's own rounding is about 2⁻⁵³ here.
        assert!(worst < 2f64.powi(-50), "worst error {worst:e}");
    }

    #[test]
    fn neg_log2_is_accurate() {
        let mut worst_abs = 0f64;
        let mut worst_rel = 0f64;
        for h in sample_draws() {
            let (err, exact) = neg_log2_error(h);
            worst_abs = worst_abs.max(err);
            if exact > 2f64.powi(-20) {
                worst_rel = worst_rel.max(err / exact);
            }
        }
        assert!(
            worst_abs < 2f64.powi(-48),
            "worst absolute error {worst_abs:e}"
        );
        assert!(
            worst_rel < 2f64.powi(-28),
            "worst relative error {worst_rel:e}"
        );
        // The extremes of the range.
        assert_eq!(neg_log2_q57(0), 64 << L_FRAC);
        assert_eq!(neg_log2_q57(1 << 63), 1 << L_FRAC);
        assert!(neg_log2_q57(u64::MAX) >= 1);
    }

    /// Exact outputs, pinned so that any change of placement — on another
    /// platform, compiler or version of this module — fails here. The values
    /// agree with a 50-digit decimal evaluation of `weight · 2³⁹ / -log2(u)` to
    /// within the stated precision.
    #[test]
    fn pinned_scores_and_orders() {
        let cases: [(&[u8], [u128; 4], [u64; 4]); 3] = [
            (
                b"",
                [
                    0x294_cf4a_4b31,
                    0x101_f585_b13b,
                    0x1d15_0a65_dbb8,
                    0x0163_5976_5e4d_6b22_4b1e,
                ],
                [6, 7, 9, 10],
            ),
            (
                b"key-0",
                [
                    0xcf_07d6_aa6e,
                    0x65_c714_f9b5,
                    0x30dc_a007_b4dd,
                    0x021b_f093_eaf1_63ec_931c,
                ],
                [4, 9, 10, 8],
            ),
            (
                b"/etc/shoal.toml",
                [
                    0x37_eaf5_80be,
                    0x3b_8a09_adb7,
                    0xec8_ee19_63a8,
                    0x0259_882f_c3df_3956_11ef,
                ],
                [9, 8, 6, 4],
            ),
        ];
        let nodes = [
            (1, 1),
            (2, 1),
            (0xdead_beef_cafe_f00d, 100),
            (u64::MAX, u32::MAX),
        ];
        for (key, scores, order) in cases {
            let digest = KeyDigest::of(key);
            for ((id, weight), expected) in nodes.into_iter().zip(scores) {
                assert_eq!(
                    score(&digest, NodeId(id), weight),
                    expected,
                    "{key:?} {id:#x}"
                );
            }
            // Ten nodes, node n with weight n.
            let view = (1..=10).map(|n| Candidate::new(NodeId(n), n as u32, PoolSet::all()));
            let ranked = replicas::<4>(view, Pool::Data, &digest);
            assert_eq!(ranked, order.map(NodeId), "{key:?}");
        }
    }

    #[test]
    fn digests() {
        // sha256("") as in the seed design.
        assert_eq!(KeyDigest::of(b"").0[..4], [0xe3, 0xb0, 0xc4, 0x42],);
        assert_eq!(
            KeyDigest::of_parts(&[b"users", b"alice"]).0[..8],
            [0x7e, 0x59, 0xc0, 0xbd, 0x58, 0x93, 0x5c, 0x9d],
        );
        assert_ne!(
            KeyDigest::of_parts(&[b"ab", b"c"]),
            KeyDigest::of_parts(&[b"a", b"bc"])
        );
        assert_ne!(
            KeyDigest::of_parts(&[b"abc"]),
            KeyDigest::of_parts(&[b"abc", b""])
        );
        assert_ne!(KeyDigest::of_parts(&[]), KeyDigest::of_parts(&[b""]));
        assert_eq!(KeyDigest([7; 32]).seed(), 0x0707_0707_0707_0707);
    }

    #[test]
    fn weight_zero_and_empty_views() {
        let key = KeyDigest::of(b"k");
        assert_eq!(score(&key, NodeId(1), 0), 0);
        assert!(score(&key, NodeId(1), 1) >= 1 << 33);
        let zero = [Candidate::new(NodeId(1), 0, PoolSet::all())];
        assert_eq!(primary(zero, Pool::Meta, &key), None);
        assert!(replicas::<3>(zero, Pool::Meta, &key).is_empty());
        let elsewhere = [Candidate::new(
            NodeId(1),
            5,
            PoolSet::EMPTY.with(Pool::Data),
        )];
        assert_eq!(primary(elsewhere, Pool::Meta, &key), None);
        let one = [Candidate::new(NodeId(1), 5, PoolSet::all())];
        assert!(replicas::<0>(one, Pool::Meta, &key).is_empty());
        assert_eq!(replicas::<3>(one, Pool::Meta, &key), [NodeId(1)]);
    }

    #[test]
    fn ranking_breaks_ties_by_lower_id_and_keeps_one_entry_per_node() {
        let r = |score, id| Ranked {
            score,
            id: NodeId(id),
        };
        let mut ranking = Ranking::<3>::new();
        for entry in [
            r(5, 9),
            r(5, 3),
            r(7, 4),
            r(1, 1),
            r(5, 6),
            r(2, 3),
            r(9, 3),
        ] {
            ranking.offer(entry);
        }
        // Node 3 at its best (9); then 7; then the tie at 5 goes to id 6 over 9.
        assert_eq!(
            ranking.into_replica_set(),
            [NodeId(3), NodeId(4), NodeId(6)]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Small id and weight ranges, so duplicates, ties and zero weights occur.
        fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
            proptest::collection::vec(
                (
                    0u64..24,
                    prop_oneof![Just(0u32), 1u32..4, any::<u32>()],
                    0u16..32,
                )
                    .prop_map(|(id, weight, pools)| {
                        Candidate::new(NodeId(id), weight, PoolSet(pools))
                    }),
                0..40,
            )
        }

        fn pool() -> impl Strategy<Value = Pool> {
            (0u8..5).prop_map(|n| Pool::from_u8(n).unwrap_or(Pool::Meta))
        }

        /// Each eligible node at its best score, ranked: what `replicas` must
        /// return a prefix of.
        fn reference(view: &[Candidate], pool: Pool, key: &KeyDigest) -> Vec<NodeId> {
            let mut best: Vec<Ranked> = Vec::new();
            for c in view
                .iter()
                .filter(|c| c.weight > 0 && c.pools.contains(pool))
            {
                let entry = Ranked {
                    score: score(key, c.id, c.weight),
                    id: c.id,
                };
                match best.iter_mut().find(|e| e.id == c.id) {
                    Some(e) if entry.beats(e) => *e = entry,
                    Some(_) => {}
                    None => best.push(entry),
                }
            }
            best.sort_by(|a, b| (b.score, a.id).cmp(&(a.score, b.id)));
            best.into_iter().map(|e| e.id).collect()
        }

        proptest! {
            #[test]
            fn replicas_are_the_ranked_eligible_nodes(
                view in candidates(),
                pool in pool(),
                key in proptest::collection::vec(any::<u8>(), 0..16),
            ) {
                let key = KeyDigest::of(&key);
                let expected = reference(&view, pool, &key);
                let top5 = replicas::<5>(view.iter().copied(), pool, &key);
                let top1 = replicas::<1>(view.iter().copied(), pool, &key);
                // Sorted by (score desc, id asc), unique, and complete.
                prop_assert_eq!(&top5[..], &expected[..expected.len().min(5)]);
                prop_assert_eq!(&top1[..], &expected[..expected.len().min(1)]);
                prop_assert_eq!(primary(view.iter().copied(), pool, &key), expected.first().copied());
                for id in &top5 {
                    let eligible = view
                        .iter()
                        .any(|c| c.id == *id && c.weight > 0 && c.pools.contains(pool));
                    prop_assert!(eligible, "{id:?} is out of the pool or has weight 0");
                }
            }
        }
    }
}
