//! The replicated record layer: small mutable records placed by the router,
//! replicated `N` ways with write and read quorums, versioned by hybrid
//! logical clocks and merged last-writer-wins.
//!
//! This module holds the pieces every replica and coordinator agree on:
//! - [`Hlc`] and [`HlcClock`]: versions that follow causality even when wall
//!   clocks disagree;
//! - [`RecordKey`]: how a record names its pool and placement key inside the
//!   store key, so any holder can recompute where the record belongs;
//! - [`Stored`]: the bytes a replica keeps (version, tombstone, value) and
//!   [`apply`], the merge rule;
//! - [`Quorum`]: `N`, `W` and `R`, shrunk for a small pool;
//! - [`Tally`]: a coordinator's count of answers for one quorum operation.
//!
//! The [`Node`](crate::node::Node) sends the messages; see `docs/fs.md` for
//! the protocol as a whole.

use serde::{Deserialize, Serialize};

use crate::store::{Space, Storage, StoreError};
use crate::{NodeId, Pool};

/// Largest value of one record.
pub const MAX_VALUE: usize = 1024;
/// Longest placement key (a path, a directory, a table and row key).
pub const MAX_PLACEMENT: usize = 512;
/// Longest suffix after the placement key (a directory entry's name).
pub const MAX_SUFFIX: usize = 256;
/// Longest store key of a record: pool, length, placement, suffix.
pub const MAX_STORE_KEY: usize = 3 + MAX_PLACEMENT + MAX_SUFFIX;
/// Most replicas a record or chunk is kept on.
pub const MAX_REPLICAS: usize = 5;

/// A hybrid logical clock reading: 48 bits of wall-clock milliseconds and a
/// 16-bit logical counter in `time`, with the writing node as tiebreak.
///
/// Ordered by `time`, then `node`: two writes never compare equal unless
/// they are the same write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Hlc {
    /// `millis << 16 | logical`.
    pub time: u64,
    /// The node that issued it.
    pub node: NodeId,
}

impl Hlc {
    /// The zero version, older than any write.
    pub const ZERO: Hlc = Hlc {
        time: 0,
        node: NodeId(0),
    };

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub const fn millis(&self) -> u64 {
        self.time >> 16
    }
}

/// Issues [`Hlc`] readings for one node.
#[derive(Clone, Copy, Debug)]
pub struct HlcClock {
    last: u64,
    node: NodeId,
}

impl HlcClock {
    /// A clock for `node` that has seen nothing yet.
    pub const fn new(node: NodeId) -> HlcClock {
        HlcClock { last: 0, node }
    }

    /// A reading later than every reading issued or observed so far, and
    /// no earlier than `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let wall = wall_ms << 16;
        self.last = if wall > self.last {
            wall
        } else {
            self.last.saturating_add(1)
        };
        Hlc {
            time: self.last,
            node: self.node,
        }
    }

    /// Takes note of a reading from elsewhere, so later readings follow it.
    pub fn observe(&mut self, seen: Hlc) {
        self.last = self.last.max(seen.time);
    }
}

/// A record's identity: the pool and placement key the router places it by,
/// and a suffix that tells records with one placement apart (the names in
/// one directory share their directory's placement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordKey<'a> {
    /// The pool whose members hold it.
    pub pool: Pool,
    /// What the router hashes.
    pub placement: &'a [u8],
    /// The rest of the key.
    pub suffix: &'a [u8],
}

impl<'a> RecordKey<'a> {
    /// The store key: `pool (1) | placement length (2, BE) | placement | suffix`.
    ///
    /// Every record with one placement shares the prefix up to the suffix,
    /// which [`RecordKey::prefix`] gives, so a directory lists by one scan.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let n = self.prefix(out)?;
        let end = n.checked_add(self.suffix.len())?;
        if self.suffix.len() > MAX_SUFFIX {
            return None;
        }
        out.get_mut(n..end)?.copy_from_slice(self.suffix);
        Some(end)
    }

    /// The store-key prefix shared by every record with this pool and
    /// placement.
    pub fn prefix(&self, out: &mut [u8]) -> Option<usize> {
        if self.placement.len() > MAX_PLACEMENT {
            return None;
        }
        let len = self.placement.len() as u16;
        let n = 3 + self.placement.len();
        let out = out.get_mut(..n)?;
        out[0] = self.pool as u8;
        out[1..3].copy_from_slice(&len.to_be_bytes());
        out[3..].copy_from_slice(self.placement);
        Some(n)
    }

    /// Parses a store key written by [`RecordKey::encode`].
    pub fn decode(key: &'a [u8]) -> Option<RecordKey<'a>> {
        let (&pool, rest) = key.split_first()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len > MAX_PLACEMENT || rest.len() - len.min(rest.len()) > MAX_SUFFIX {
            return None;
        }
        let placement = rest.get(..len)?;
        Some(RecordKey {
            pool: Pool::from_u8(pool)?,
            placement,
            suffix: &rest[len..],
        })
    }
}

/// What a replica keeps for one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored<'a> {
    /// The write that produced it.
    pub version: Hlc,
    /// A removal: kept (as a tombstone) so the removal wins over older
    /// copies that anti-entropy may still meet.
    pub tombstone: bool,
    /// The value; empty for a tombstone.
    pub value: &'a [u8],
}

/// Bytes of [`Stored`]'s fixed header in the store.
pub const STORED_HEADER: usize = 17;

impl<'a> Stored<'a> {
    /// `time (8, LE) | node (8, LE) | flags (1) | value`.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let end = STORED_HEADER.checked_add(self.value.len())?;
        let out = out.get_mut(..end)?;
        out[..8].copy_from_slice(&self.version.time.to_le_bytes());
        out[8..16].copy_from_slice(&self.version.node.0.to_le_bytes());
        out[16] = u8::from(self.tombstone);
        out[STORED_HEADER..].copy_from_slice(self.value);
        Some(end)
    }

    /// Parses bytes written by [`Stored::encode`].
    pub fn decode(bytes: &'a [u8]) -> Option<Stored<'a>> {
        let (time, rest) = bytes.split_first_chunk::<8>()?;
        let (node, rest) = rest.split_first_chunk::<8>()?;
        let (&flags, value) = rest.split_first()?;
        if flags > 1 || value.len() > MAX_VALUE {
            return None;
        }
        Some(Stored {
            version: Hlc {
                time: u64::from_le_bytes(*time),
                node: NodeId(u64::from_le_bytes(*node)),
            },
            tombstone: flags == 1,
            value,
        })
    }
}

/// Walks a page of entries as a replica's `Entries` answer carries them:
/// `suffix length (u16 LE) | stored length (u16 LE) | suffix | stored`.
/// Yields `None` (and stops) at the first malformed entry.
pub fn page_entries(page: &[u8]) -> impl Iterator<Item = Option<(&[u8], Stored<'_>)>> {
    let mut rest = page;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let (sl, r) = rest.split_first_chunk::<2>()?;
            let (vl, r) = r.split_first_chunk::<2>()?;
            let (sl, vl) = (
                usize::from(u16::from_le_bytes(*sl)),
                usize::from(u16::from_le_bytes(*vl)),
            );
            let suffix = r.get(..sl)?;
            let stored = Stored::decode(r.get(sl..sl + vl)?)?;
            Some(((suffix, stored), &r[sl + vl..]))
        })();
        match parsed {
            Some((entry, r)) => {
                rest = r;
                Some(Some(entry))
            }
            None => {
                rest = &[];
                Some(None)
            }
        }
    })
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The incoming record was newer and is now stored.
    Stored,
    /// The store already held this version or a newer one, named here.
    Kept(Hlc),
}

/// Merges `incoming` into `store` under `key`: last writer (highest
/// [`Hlc`]) wins. Idempotent and commutative, so replicas that see the same
/// writes in any order and any number of times agree.
pub fn apply(
    store: &mut impl Storage,
    key: &[u8],
    incoming: &Stored<'_>,
) -> Result<Applied, StoreError> {
    let mut buf = [0u8; STORED_HEADER + MAX_VALUE];
    if let Some(have) = load(store, key, &mut buf)?
        && have.version >= incoming.version
    {
        return Ok(Applied::Kept(have.version));
    }
    let n = incoming.encode(&mut buf).ok_or(StoreError::TooLarge)?;
    store.put(Space::Records, key, &buf[..n])?;
    Ok(Applied::Stored)
}

/// Reads the record under `key` into `buf`. A stored value that does not
/// parse is reported as [`StoreError::Corrupt`].
pub fn load<'b>(
    store: &impl Storage,
    key: &[u8],
    buf: &'b mut [u8; STORED_HEADER + MAX_VALUE],
) -> Result<Option<Stored<'b>>, StoreError> {
    match store.get(Space::Records, key, buf)? {
        None => Ok(None),
        Some(n) => Stored::decode(&buf[..n])
            .map(Some)
            .ok_or(StoreError::Corrupt),
    }
}

/// Replication factor and quorums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quorum {
    /// Replicas of each record or chunk.
    pub n: u8,
    /// Acknowledgements a write needs.
    pub w: u8,
    /// Answers a read needs.
    pub r: u8,
}

impl Default for Quorum {
    /// `N = 3, W = 2, R = 2`: one replica may be down for reads and writes,
    /// and every read quorum meets every write quorum.
    fn default() -> Self {
        Quorum { n: 3, w: 2, r: 2 }
    }
}

impl Quorum {
    /// The quorum for a pool of `members` members (live or dead, not
    /// left): `N` shrinks to the pool, and `W` and `R` shrink with it, so a
    /// one-node cluster works and `W + R > N` still holds whenever it held
    /// for the configured values.
    pub fn for_pool(&self, members: usize) -> Quorum {
        let n = self.n.min(members.min(MAX_REPLICAS) as u8).max(1);
        Quorum {
            n,
            w: self.w.clamp(1, n),
            r: self.r.clamp(1, n),
        }
    }

    /// Whether the values make sense: `1 ≤ W, R ≤ N ≤` [`MAX_REPLICAS`].
    pub fn is_valid(&self) -> bool {
        let n = usize::from(self.n);
        (1..=MAX_REPLICAS).contains(&n)
            && (1..=self.n).contains(&self.w)
            && (1..=self.n).contains(&self.r)
    }
}

/// A coordinator's view of one quorum operation: who was asked, who
/// answered, and how.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Each replica asked, with its answer so far.
    pub asked: heapless::Vec<(NodeId, Answer), MAX_REPLICAS>,
}

/// One replica's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not yet.
    Waiting,
    /// Yes (a write stored, or a read answered), with the version it holds.
    Ok(Option<Hlc>),
    /// Refused: out of room.
    Full,
    /// Failed: unreachable, an I/O error, or a bad answer.
    Failed,
}

impl Tally {
    /// A tally over `replicas`, none answered.
    pub fn new(replicas: &[NodeId]) -> Tally {
        let mut t = Tally::default();
        for &r in replicas.iter().take(MAX_REPLICAS) {
            let _ = t.asked.push((r, Answer::Waiting));
        }
        t
    }

    /// Records `node`'s answer; whether it was one of those asked and had
    /// not answered yet.
    pub fn answer(&mut self, node: NodeId, answer: Answer) -> bool {
        match self
            .asked
            .iter_mut()
            .find(|(n, a)| *n == node && *a == Answer::Waiting)
        {
            Some(slot) => {
                slot.1 = answer;
                true
            }
            None => false,
        }
    }

    /// Answers that said yes.
    pub fn oks(&self) -> usize {
        self.asked
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Ok(_)))
            .count()
    }

    /// Replicas that have not answered.
    pub fn waiting(&self) -> usize {
        self.asked
            .iter()
            .filter(|(_, a)| *a == Answer::Waiting)
            .count()
    }

    /// Whether `need` yeses can still arrive.
    pub fn can_reach(&self, need: usize) -> bool {
        self.oks() + self.waiting() >= need
    }

    /// The newest version any replica answered with.
    pub fn newest(&self) -> Option<Hlc> {
        self.asked
            .iter()
            .filter_map(|(_, a)| match a {
                Answer::Ok(v) => *v,
                _ => None,
            })
            .max()
    }

    /// Replicas that answered with something older than `version` (or
    /// nothing): read repair sends them the newest record.
    pub fn stale(&self, version: Hlc) -> impl Iterator<Item = NodeId> + '_ {
        self.asked.iter().filter_map(move |(n, a)| match a {
            Answer::Ok(v) if v.is_none_or(|v| v < version) => Some(*n),
            _ => None,
        })
    }

    /// Whether some replica refused for want of room.
    pub fn any_full(&self) -> bool {
        self.asked.iter().any(|(_, a)| *a == Answer::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RamStore;
    use proptest::prelude::*;

    fn v(time: u64, node: u64) -> Hlc {
        Hlc {
            time,
            node: NodeId(node),
        }
    }

    #[test]
    fn clock_follows_wall_and_observed_readings() {
        let mut c = HlcClock::new(NodeId(1));
        let a = c.now(10);
        assert_eq!(a.millis(), 10);
        let b = c.now(10);
        assert!(b > a, "same millisecond still advances");
        let c2 = c.now(5);
        assert!(c2 > b, "a wall clock that steps back does not");
        c.observe(v(100 << 16 | 7, 2));
        let d = c.now(50);
        assert!(d.time > 100 << 16 | 7, "later than what it observed");
    }

    #[test]
    fn record_key_round_trip_and_prefix() {
        let k = RecordKey {
            pool: Pool::Meta,
            placement: b"D/photos",
            suffix: b"cat.jpg",
        };
        let mut buf = [0u8; 64];
        let n = k.encode(&mut buf).unwrap();
        assert_eq!(RecordKey::decode(&buf[..n]), Some(k));
        let mut pre = [0u8; 64];
        let p = k.prefix(&mut pre).unwrap();
        assert!(buf[..n].starts_with(&pre[..p]));
        assert!(RecordKey::decode(&[1, 0, 9, b'x']).is_none());
        assert!(RecordKey::decode(&[200, 0, 0]).is_none());
    }

    #[test]
    fn stored_rejects_bad_flags() {
        let mut buf = [0u8; 64];
        let s = Stored {
            version: v(5, 1),
            tombstone: false,
            value: b"abc",
        };
        let n = s.encode(&mut buf).unwrap();
        assert_eq!(Stored::decode(&buf[..n]), Some(s));
        buf[16] = 2;
        assert_eq!(Stored::decode(&buf[..n]), None);
        assert_eq!(Stored::decode(&buf[..10]), None);
    }

    #[test]
    fn pages_parse_and_stop_at_garbage() {
        let mut page = [0u8; 128];
        let s = Stored {
            version: v(3, 1),
            tombstone: false,
            value: b"x",
        };
        let mut at = 0;
        for name in [&b"a"[..], b"bc"] {
            let mut st = [0u8; 32];
            let n = s.encode(&mut st).unwrap();
            page[at..at + 2].copy_from_slice(&(name.len() as u16).to_le_bytes());
            page[at + 2..at + 4].copy_from_slice(&(n as u16).to_le_bytes());
            page[at + 4..at + 4 + name.len()].copy_from_slice(name);
            page[at + 4 + name.len()..at + 4 + name.len() + n].copy_from_slice(&st[..n]);
            at += 4 + name.len() + n;
        }
        let got: heapless::Vec<_, 4> = page_entries(&page[..at]).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Some((&b"bc"[..], s)));
        let bad: heapless::Vec<_, 4> = page_entries(&page[..at - 1]).collect();
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[1], None);
    }

    #[test]
    fn quorum_shrinks_with_the_pool() {
        let q = Quorum::default();
        assert_eq!(q.for_pool(10), Quorum { n: 3, w: 2, r: 2 });
        assert_eq!(q.for_pool(2), Quorum { n: 2, w: 2, r: 2 });
        assert_eq!(q.for_pool(1), Quorum { n: 1, w: 1, r: 1 });
        assert_eq!(q.for_pool(0), Quorum { n: 1, w: 1, r: 1 });
        assert!(q.is_valid());
        assert!(!Quorum { n: 2, w: 3, r: 1 }.is_valid());
    }

    #[test]
    fn tally_counts_and_finds_stale() {
        let mut t = Tally::new(&[NodeId(1), NodeId(2), NodeId(3)]);
        assert!(t.answer(NodeId(1), Answer::Ok(Some(v(9, 1)))));
        assert!(!t.answer(NodeId(1), Answer::Ok(None)), "one answer each");
        assert!(!t.answer(NodeId(7), Answer::Ok(None)), "only those asked");
        assert!(t.answer(NodeId(2), Answer::Ok(None)));
        assert_eq!(t.oks(), 2);
        assert_eq!(t.newest(), Some(v(9, 1)));
        let stale: heapless::Vec<NodeId, 3> = t.stale(v(9, 1)).collect();
        assert_eq!(&stale[..], &[NodeId(2)]);
        assert!(t.answer(NodeId(3), Answer::Full));
        assert!(t.any_full());
        assert!(!t.can_reach(3));
    }

    proptest! {
        /// Replicas that receive the same writes in different orders, some
        /// twice, end up holding the same record: the newest. (A version
        /// names one write, so its content is a function of the version.)
        #[test]
        fn apply_converges(writes in proptest::collection::vec((0u64..50, 1u64..4), 1..20),
                           rotate in 0usize..20) {
            let mut a = RamStore::<8192, 8>::new();
            let mut b = RamStore::<8192, 8>::new();
            let values: heapless::Vec<(Hlc, bool, [u8; 1]), 20> = writes
                .iter()
                .map(|&(t, n)| (v(t, n), (t + n) % 3 == 0, [(t * 4 + n) as u8]))
                .collect();
            for (ver, tomb, val) in &values {
                let s = Stored { version: *ver, tombstone: *tomb, value: if *tomb { &[] } else { val } };
                apply(&mut a, b"k", &s).unwrap();
            }
            let r = rotate % values.len();
            for (ver, tomb, val) in values[r..].iter().chain(&values[..r]).chain(&values[..1]) {
                let s = Stored { version: *ver, tombstone: *tomb, value: if *tomb { &[] } else { val } };
                apply(&mut b, b"k", &s).unwrap();
            }
            let (mut ba, mut bb) = ([0u8; STORED_HEADER + MAX_VALUE], [0u8; STORED_HEADER + MAX_VALUE]);
            let ra = load(&a, b"k", &mut ba).unwrap().unwrap();
            let rb = load(&b, b"k", &mut bb).unwrap().unwrap();
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(ra.version, values.iter().map(|x| x.0).max().unwrap());
        }
    }
}
