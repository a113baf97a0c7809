//! Reclaiming chunks no file references: mark and sweep in rounds.
//!
//! Time is cut into rounds of [`DataConfig::gc_round`] (wall clock). Every
//! round, each replica of a live file record marks the file's chunk tree: it sends `Mark { root, depth, round }` to the root's
//! replicas. A replica that holds the chunk records the round; when the
//! chunk is an index chunk and the mark is news, it queues the chunk (in
//! its store, so a crash loses nothing) and marks each child the same way, paced like the
//! anti-entropy sweep. A chunk with no mark is never reclaimed: a new
//! chunk gets its first mark when the sweep first meets it (and a chunk
//! stored again, when it is stored), so a put in progress keeps its chunks
//! before its file record exists; a long put marks them again itself.
//!
//! The sweep deletes a chunk whose last mark is more than
//! [`DataConfig::gc_keep`] rounds old — but only while the node has seen
//! the cluster undisturbed (no member joined, was suspected, died or left,
//! and the node itself was up) for longer than that, and every member it
//! knows is alive. Marks travel on the reliable link and are never dropped
//! for lack of room (they wait), so in an undisturbed cluster of live
//! members every referenced chunk is marked every round; a disturbance
//! that could lose a mark stops reclaiming for `gc_keep` rounds, and a dead
//! member (crashed, or partitioned away and declared dead) stops it until
//! it returns or leaves, since marks cannot cross to or from it.
//!
//! So space of a removed or overwritten file is reclaimed within
//! `gc_keep + 2` rounds of the change in a stable cluster (50 minutes with
//! the defaults), and never while the cluster is disturbed.

use super::*;
use crate::fs::{ChunkId, FileMeta, INDEX_CHUNK};
use crate::member::State;
use crate::repl::{MAX_REPLICAS, RecordKey, Stored};
use crate::store::Space;

/// Prefix of a chunk's mark in the local space: `gm` + id → round (u64 LE).
const MARK: &[u8; 2] = b"gm";
/// Prefix of an index chunk waiting to mark its children: `gx` + id →
/// depth (1) and round (8, LE).
const EXPAND: &[u8; 2] = b"gx";

/// Time between two rounds of child marks.
const TICK: Duration = Duration::from_millis(10);
/// Child marks sent per tick.
const MARKS_PER_TICK: usize = 64;
/// Fragments queued to one peer before marks wait.
const HEADROOM: usize = 8;

fn local_key(prefix: &[u8; 2], id: &ChunkId) -> [u8; 34] {
    let mut k = [0u8; 34];
    k[..2].copy_from_slice(prefix);
    k[2..].copy_from_slice(&id.0);
    k
}

/// Where the expansion of one index chunk stands.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expansion {
    id: ChunkId,
    depth: u8,
    round: u64,
    next: usize,
}

impl<
    St: Storage,
    const M: usize,
    const P: usize,
    const S: usize,
    const E: usize,
    const C: usize,
    const O: usize,
> Engine<St, M, P, S, E, C, O>
{
    /// The current GC round.
    pub(super) fn gc_round(&self, now: Instant) -> u64 {
        let len = self.data.gc_round.as_millis().max(1);
        self.wall_ms(now) / len
    }

    /// The round chunk `id` was last marked in, if ever.
    pub(super) fn mark_of(&self, id: &ChunkId) -> Option<u64> {
        let mut v = [0u8; 8];
        match self.store.get(Space::Local, &local_key(MARK, id), &mut v) {
            Ok(Some(8)) => Some(u64::from_le_bytes(v)),
            _ => None,
        }
    }

    /// Records that chunk `id` is referenced in `round`; whether that was
    /// news (an older mark or none).
    fn set_mark(&mut self, id: &ChunkId, round: u64) -> bool {
        if self.mark_of(id).is_some_and(|m| m >= round) {
            return false;
        }
        self.store
            .put(Space::Local, &local_key(MARK, id), &round.to_le_bytes())
            .is_ok()
    }

    /// Chunk `id` counts as referenced this round. Done when a chunk is
    /// stored again (a new file shares it, and its mark may be old), and by
    /// the sweep for a chunk with no mark. A chunk stored for the first
    /// time gets none then: GC never reclaims an unmarked chunk, so it is
    /// kept until the sweep first meets it and for `gc_keep` rounds after,
    /// and the write path is spared a second write per chunk.
    pub(super) fn born(&mut self, now: Instant, id: &ChunkId) {
        let round = self.gc_round(now);
        self.set_mark(id, round);
    }

    /// A cluster change that could lose marks: no reclaiming for a while.
    pub(super) fn disturbed(&mut self, now: Instant) {
        self.last_disturbance = now;
    }

    /// Serves a `Mark`: records the round, and queues an index chunk so its
    /// children get marked too.
    pub(super) fn on_mark(&mut self, now: Instant, id: ChunkId, depth: u8, round: u64) {
        let mut probe = [0u8; 0];
        // Held here? (`BufferTooSmall` means yes.)
        let held = !matches!(self.store.get(Space::Chunks, &id.0, &mut probe), Ok(None));
        if !held || !self.set_mark(&id, round) || depth == 0 {
            return;
        }
        let mut v = [0u8; 9];
        v[0] = depth;
        v[1..].copy_from_slice(&round.to_le_bytes());
        if self
            .store
            .put(Space::Local, &local_key(EXPAND, &id), &v)
            .is_ok()
        {
            self.expand_at.get_or_insert(now);
        }
    }

    /// Whether chunk `id` may be reclaimed now.
    pub(super) fn reclaimable(&self, now: Instant, id: &ChunkId) -> bool {
        let round = self.gc_round(now);
        let keep = self.data.gc_keep;
        let calm_for = now.saturating_since(self.last_disturbance);
        let calm_rounds = calm_for.as_millis() / self.data.gc_round.as_millis().max(1);
        // Marks travel only between live members: while one is dead (or
        // partitioned away and declared dead), the chunks its side holds or
        // marks are out of reach, however long the view stays unchanged.
        let all_up = self
            .member
            .members()
            .all(|m| matches!(m.state(), State::Alive | State::Left));
        calm_rounds > keep
            && all_up
            && self
                .mark_of(id)
                .is_some_and(|m| m.saturating_add(keep) < round)
    }

    /// Deletes an unreferenced chunk and its mark.
    pub(super) fn reclaim(&mut self, id: &ChunkId) {
        if self.store.remove(Space::Chunks, &id.0).is_ok() {
            let _ = self.store.remove(Space::Local, &local_key(MARK, id));
            self.stats.reclaimed += 1;
        }
    }

    /// The sweep met a chunk with no mark (stored before it was marked, or
    /// by an older version): it counts from now.
    pub(super) fn ensure_mark(&mut self, now: Instant, id: &ChunkId) {
        if self.mark_of(id).is_none() {
            self.born(now, id);
        }
    }

    /// The sweep met a file record: if this node is one of its replicas,
    /// mark the file's tree (every replica does, so a replica that missed
    /// the record costs nothing). False when the link had no room (retry
    /// later).
    pub(super) fn walk_file(
        &mut self,
        now: Instant,
        key: &RecordKey<'_>,
        stored: &Stored<'_>,
        spare: &mut Spare<'_>,
    ) -> bool {
        if stored.tombstone || key.pool != Pool::Meta || key.placement.first() != Some(&b'F') {
            return true;
        }
        let (ranked, q) =
            self.placement::<MAX_REPLICAS>(key.pool, &router::KeyDigest::of(key.placement));
        if !ranked.iter().take(usize::from(q.n)).any(|n| *n == self.id) {
            return true;
        }
        let Some(meta) = FileMeta::decode(stored.value) else {
            return true;
        };
        let Some(root) = meta.root else {
            return true;
        };
        let round = self.gc_round(now);
        self.send_mark(now, root, meta.depth, round, spare)
    }

    /// Sends `Mark` for chunk `id` to its replicas (this node's own copy is
    /// marked directly). False when a replica's queue is full.
    pub(super) fn send_mark(
        &mut self,
        now: Instant,
        id: ChunkId,
        depth: u8,
        round: u64,
        spare: &mut Spare<'_>,
    ) -> bool {
        let (ranked, q) = self.placement::<MAX_REPLICAS>(Pool::Data, &id.digest());
        let owners = &ranked[..usize::from(q.n).min(ranked.len())];
        if owners
            .iter()
            .any(|&n| n != self.id && self.link.outstanding(n) >= HEADROOM)
        {
            return false;
        }
        let r = Request::Mark { id, depth, round };
        for &node in owners {
            if node == self.id {
                self.on_mark(now, id, depth, round);
                continue;
            }
            let req = self.take_request_id();
            if self.send_request(now, node, req, &r, spare) == Sent::NoRoom {
                return false;
            }
        }
        true
    }

    /// Marks the children of queued index chunks, a few per tick.
    pub(super) fn expand_marks(&mut self, now: Instant, spare: &mut Spare<'_>) {
        if self.expand_at.is_none_or(|t| t > now) {
            return;
        }
        // Again next tick, unless the queue turns out empty.
        self.expand_at = Some(now + TICK);
        let mut budget = MARKS_PER_TICK;
        while budget > 0 {
            let cur = match self.expansion {
                Some(e) => e,
                None => {
                    let mut key = [0u8; 34];
                    let Ok(Some(34)) = self.store.next_key(Space::Local, EXPAND, None, &mut key)
                    else {
                        self.expand_at = None;
                        return;
                    };
                    let mut v = [0u8; 9];
                    let mut id = [0u8; 32];
                    id.copy_from_slice(&key[2..]);
                    let id = ChunkId(id);
                    match self.store.get(Space::Local, &key, &mut v) {
                        Ok(Some(9)) => {}
                        _ => {
                            let _ = self.store.remove(Space::Local, &key);
                            continue;
                        }
                    }
                    let mut round = [0u8; 8];
                    round.copy_from_slice(&v[1..]);
                    let e = Expansion {
                        id,
                        depth: v[0],
                        round: u64::from_le_bytes(round),
                        next: 0,
                    };
                    self.expansion = Some(e);
                    e
                }
            };
            let mut index = [0u8; INDEX_CHUNK];
            let children = match self.store.get(Space::Chunks, &cur.id.0, &mut index) {
                Ok(Some(n)) if n % 32 == 0 && cur.id.verifies(&index[..n]) => n / 32,
                // Gone, corrupt or not an index chunk: nothing to expand.
                _ => 0,
            };
            if cur.next >= children || cur.depth == 0 {
                let _ = self.store.remove(Space::Local, &local_key(EXPAND, &cur.id));
                self.expansion = None;
                continue;
            }
            let mut child = [0u8; 32];
            child.copy_from_slice(&index[cur.next * 32..cur.next * 32 + 32]);
            if !self.send_mark(now, ChunkId(child), cur.depth - 1, cur.round, spare) {
                return;
            }
            budget -= 1;
            if let Some(e) = self.expansion.as_mut() {
                e.next += 1;
            }
        }
    }
}
