//! Anti-entropy and handoff: a node walks every record and chunk it holds
//! and makes sure the replicas the router now names have a copy.
//!
//! A sweep starts [`SETTLE`] after a membership change (so a burst of
//! changes costs one sweep), at start-up, and every [`PERIOD`] regardless.
//! It visits [`BATCH`] keys every [`TICK`], which bounds the background
//! traffic; when the link's queues are full it waits and retries the key.
//!
//! - **Records** are pushed to each current replica as a `RecordStore`; the
//!   replica merges by version, so a push it does not need changes nothing.
//! - **Chunks** are offered with a `ChunkHas` probe; a replica that lacks
//!   the chunk is sent a `ChunkStore`. A node that holds a chunk the router
//!   no longer places on it deletes its copy once every current replica has
//!   confirmed holding one (handoff).
//!
//! So after a node dies, the survivors copy its records and chunks to the
//! nodes that replace it; after a node joins, it is handed what the router
//! now places on it; and writes that landed on stand-in replicas during a
//! partition reach their proper replicas once it heals.

use super::*;
use crate::fs::ChunkId;
use crate::repl::{MAX_REPLICAS, MAX_STORE_KEY, RecordKey, STORED_HEADER, Stored};
use crate::store::Space;

/// Wait after a membership change before a sweep starts.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Keys visited per tick.
pub const BATCH: usize = 32;
/// Time between two batches.
pub const TICK: Duration = Duration::from_millis(10);
/// A sweep runs at least this often.
pub const PERIOD: Duration = Duration::from_secs(600);

/// Fragments the sweep lets queue to one peer: about one window, so the
/// background never delays foreground requests by more than that.
const HEADROOM: usize = 8;

/// Where the node's sweep stands.
pub(super) struct Sweep {
    /// The space being walked; `None` while idle.
    space: Option<Space>,
    /// The last key visited in it.
    after: heapless::Vec<u8, MAX_STORE_KEY>,
    /// When the next batch runs (or the next periodic sweep starts).
    pub(super) next_at: Instant,
    /// The membership changed during this sweep: sweep again after.
    again: bool,
}

impl Sweep {
    pub(super) fn new(now: Instant) -> Sweep {
        Sweep {
            space: Some(Space::Records),
            after: heapless::Vec::new(),
            next_at: now + SETTLE,
            again: false,
        }
    }
}

/// A `ChunkHas` this node sent while sweeping.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    pub(super) id: u64,
    pub(super) node: NodeId,
    chunk: ChunkId,
    pub(super) deadline: Instant,
}

/// A chunk this node holds but no longer owns: the current replicas that
/// must confirm a copy before it is deleted here, and the probes sent to
/// them for this handoff that have not yet confirmed. Only those probes
/// count, each once: an answer to an older probe (from a sweep under an
/// earlier view, when the owners were others) confirms nothing.
#[derive(Clone, Debug)]
pub(super) struct Handoff {
    chunk: ChunkId,
    owners: heapless::Vec<NodeId, MAX_REPLICAS>,
    waiting: heapless::Vec<u64, MAX_REPLICAS>,
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
    /// The membership changed: sweep soon.
    pub(super) fn sweep_soon(&mut self, now: Instant) {
        if self.sweep.space.is_some() {
            self.sweep.again = true;
            return;
        }
        self.sweep.space = Some(Space::Records);
        self.sweep.after.clear();
        self.sweep.next_at = now + SETTLE;
    }

    /// Runs a batch when one is due.
    pub(super) fn sweep_tick(&mut self, now: Instant, spare: &mut Spare<'_>) {
        if self.role != Role::Member || now < self.sweep.next_at {
            return;
        }
        let Some(mut space) = self.sweep.space else {
            // Idle until now: the periodic sweep is due.
            self.sweep.space = Some(Space::Records);
            self.sweep.after.clear();
            return;
        };
        self.sweep.next_at = now + TICK;
        let mut key = [0u8; MAX_STORE_KEY];
        for _ in 0..BATCH {
            let after = (!self.sweep.after.is_empty()).then_some(&self.sweep.after[..]);
            let n = match self.store.next_key(space, b"", after, &mut key) {
                Ok(Some(n)) => n,
                Ok(None) | Err(_) => {
                    // This space is done.
                    self.sweep.after.clear();
                    if space == Space::Records {
                        space = Space::Chunks;
                        self.sweep.space = Some(space);
                        continue;
                    }
                    if core::mem::take(&mut self.sweep.again) {
                        self.sweep.space = Some(Space::Records);
                        self.sweep.next_at = now + SETTLE;
                    } else {
                        self.sweep.space = None;
                        self.sweep.next_at = now + self.data.gc_round.min(PERIOD);
                    }
                    return;
                }
            };
            let done = match space {
                Space::Records => self.sweep_record(now, &key[..n], spare),
                Space::Chunks => self.sweep_chunk(now, &key[..n], spare),
                Space::Local => true,
            };
            if !done {
                // Queues are full: this key again next tick.
                return;
            }
            self.stats.swept += 1;
            self.sweep.after.clear();
            let _ = self.sweep.after.extend_from_slice(&key[..n]);
        }
    }

    /// Pushes one record to its current replicas; false when the link had
    /// no room (retry later).
    fn sweep_record(&mut self, now: Instant, key: &[u8], spare: &mut Spare<'_>) -> bool {
        let Some(rk) = RecordKey::decode(key) else {
            return true;
        };
        let mut buf = [0u8; STORED_HEADER + crate::repl::MAX_VALUE];
        let Ok(Some(n)) = self.store.get(Space::Records, key, &mut buf) else {
            return true;
        };
        let Some(stored) = Stored::decode(&buf[..n]) else {
            return true;
        };
        if !self.walk_file(now, &rk, &stored, spare) {
            return false;
        }
        let (ranked, q) =
            self.placement::<MAX_REPLICAS>(rk.pool, &router::KeyDigest::of(rk.placement));
        let r = Request::RecordStore {
            key,
            version: stored.version,
            tombstone: stored.tombstone,
            value: stored.value,
        };
        let owners = &ranked[..usize::from(q.n).min(ranked.len())];
        if owners
            .iter()
            .any(|&n| n != self.id && self.link.outstanding(n) >= HEADROOM)
        {
            return false;
        }
        for &node in owners {
            if node == self.id {
                continue;
            }
            let id = self.take_request_id();
            if self.send_request(now, node, id, &r, spare) == Sent::NoRoom {
                return false;
            }
        }
        true
    }

    /// Probes one chunk's current replicas; false when there is no room for
    /// the probes (retry later).
    fn sweep_chunk(&mut self, now: Instant, key: &[u8], spare: &mut Spare<'_>) -> bool {
        let Ok(id) = <[u8; 32]>::try_from(key) else {
            return true;
        };
        let chunk = ChunkId(id);
        if self.reclaimable(now, &chunk) {
            self.reclaim(&chunk);
            return true;
        }
        self.ensure_mark(now, &chunk);
        let (ranked, q) = self.placement::<MAX_REPLICAS>(Pool::Data, &chunk.digest());
        let owners = &ranked[..usize::from(q.n).min(ranked.len())];
        let others = owners.iter().filter(|n| **n != self.id).count();
        if self.probes.capacity() - self.probes.len() < others
            || owners
                .iter()
                .any(|&n| n != self.id && self.link.outstanding(n) >= HEADROOM)
        {
            return false;
        }
        // Not an owner any more: the copy here goes once the owners confirm.
        let handoff = !owners.contains(&self.id) && others > 0;
        if handoff {
            if self.handoffs.iter().any(|h| h.chunk == chunk) {
                return true;
            }
            if self.handoffs.is_full() {
                return false;
            }
            let _ = self.handoffs.push(Handoff {
                chunk,
                owners: owners.iter().copied().collect(),
                waiting: heapless::Vec::new(),
            });
        }
        for &node in owners {
            if node == self.id {
                continue;
            }
            let id = self.take_request_id();
            let r = Request::ChunkHas { id: chunk, handoff };
            match self.send_request(now, node, id, &r, spare) {
                Sent::Queued(_) => {}
                Sent::Unencodable => {
                    self.handoffs.retain(|h| h.chunk != chunk);
                    return true;
                }
                Sent::NoRoom => {
                    self.handoffs.retain(|h| h.chunk != chunk);
                    return false;
                }
            }
            let _ = self.probes.push(Probe {
                id,
                node,
                chunk,
                deadline: now + self.request_timeout,
            });
            if handoff && let Some(h) = self.handoffs.iter_mut().find(|h| h.chunk == chunk) {
                let _ = h.waiting.push(id);
            }
        }
        true
    }

    /// A replica answered a probe.
    pub(super) fn probe_answered(
        &mut self,
        now: Instant,
        probe: Probe,
        buf: &[u8],
        spare: &mut Spare<'_>,
    ) {
        let chunk = probe.chunk;
        match envelope::decode_response(buf.get(PREFIX_LEN..).unwrap_or_default()) {
            Some((Response::Has(true), _)) => {
                let Some(i) = self
                    .handoffs
                    .iter()
                    .position(|h| h.chunk == chunk && h.waiting.contains(&probe.id))
                else {
                    return;
                };
                self.handoffs[i].waiting.retain(|id| *id != probe.id);
                if !self.handoffs[i].waiting.is_empty() {
                    return;
                }
                let h = self.handoffs.swap_remove(i);
                // The owners that confirmed must still be the owners, and
                // this node still not one of them.
                let (ranked, q) = self.placement::<MAX_REPLICAS>(Pool::Data, &chunk.digest());
                let owners = &ranked[..usize::from(q.n).min(ranked.len())];
                let same =
                    owners.len() == h.owners.len() && owners.iter().all(|n| h.owners.contains(n));
                if same
                    && !owners.contains(&self.id)
                    && self.store.remove(Space::Chunks, &chunk.0).is_ok()
                {
                    self.stats.handed_off += 1;
                }
            }
            Some((Response::Has(false), _)) => {
                self.handoffs.retain(|h| h.chunk != chunk);
                let Ok(Some(n)) = self.store.get(Space::Chunks, &chunk.0, spare.inbox) else {
                    return;
                };
                if !chunk.verifies(&spare.inbox[..n]) {
                    return;
                }
                let id = self.take_request_id();
                let r = Request::ChunkStore {
                    id: chunk,
                    data: &spare.inbox[..n],
                };
                let Some(len) = envelope::encode_request(spare.aux, id, &Target::Here, &r) else {
                    return;
                };
                self.stats.repairs += 1;
                let aux = core::mem::take(&mut spare.aux);
                let sent = self.link_send(now, probe.node, &aux[..len]);
                spare.aux = aux;
                // A copy that finds no room is not lost: the sweep runs again.
                if sent.is_none() {
                    self.sweep_soon(now);
                }
            }
            _ => self.handoffs.retain(|h| h.chunk != chunk),
        }
    }

    /// Forgets probes that went unanswered.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        while let Some(i) = self.probes.iter().position(|p| p.deadline <= now) {
            let p = self.probes.swap_remove(i);
            self.handoffs.retain(|h| h.chunk != p.chunk);
        }
    }
}
