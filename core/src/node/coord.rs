//! Coordinating quorum operations for clients, and serving the replicas'
//! side of them.
//!
//! A client's contact node coordinates: it ranks the key's replicas with
//! the router, asks the first `N` of them (itself included, served
//! directly from its store), counts answers in a [`Tally`] and answers the
//! client once `W` writes or `R` reads agree. A replica acknowledges a
//! write only after its store flushed ([`Node::commit`](super::Node::commit)).
//!
//! - **Chunk writes** skip nodes that recently refused for want of room;
//!   when a refusal costs the quorum, the client hears `Full` and retries,
//!   and the retry lands on the next node in rank.
//! - **Chunk reads** try replicas in rank order; every copy is verified
//!   against its id, and the ranked replicas that had no good copy are sent
//!   one (repair).
//! - **Record reads** keep the newest version among the answers and send
//!   it to every replica that answered with something older (read repair).
//! - **Listings** are relayed from one replica at a time: the caller merges
//!   the replicas' pages, newest version per name.

use super::*;
use crate::fs::ChunkId;
use crate::repl::{
    self, Answer, Hlc, MAX_REPLICAS, MAX_STORE_KEY, MAX_VALUE, Quorum, RecordKey, STORED_HEADER,
    Stored, Tally,
};
use crate::store::{FlushBegun, Space, StoreError};

/// Replicas a chunk read tries before it gives up.
const RANKED: usize = 8;
/// How long a replica that let a chunk read time out is tried last.
const SLOW_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes of one page of a listing.
const PAGE: usize = 8 * 1024;

/// Replication, chunk size and clock settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataConfig {
    /// Replicas and quorums.
    pub quorum: Quorum,
    /// Bytes per file chunk that this node tells its clients to use.
    pub chunk_size: u32,
    /// Wall-clock milliseconds since the Unix epoch at [`Instant::ZERO`];
    /// 0 when the node has no wall clock (versions then follow causality
    /// alone).
    pub wall_ms_at_zero: u64,
    /// How long a node that refused a chunk for want of room is skipped.
    pub full_backoff: Duration,
    /// Length of a garbage-collection round (see `node::gc`).
    pub gc_round: Duration,
    /// Rounds a chunk stays after its last mark, and rounds of calm a node
    /// needs before it reclaims anything.
    pub gc_keep: u64,
}

/// Default chunk size: the largest that a microcontroller's 2256-byte
/// message buffer carries in one `ChunkStore` request.
pub const DEFAULT_CHUNK: u32 = 2048;

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            quorum: Quorum::default(),
            chunk_size: DEFAULT_CHUNK,
            wall_ms_at_zero: 0,
            full_backoff: Duration::from_secs(30),
            gc_round: Duration::from_secs(600),
            gc_keep: 3,
        }
    }
}

/// One coordinated operation.
pub(super) struct Coord {
    id: u64,
    origin: NodeId,
    origin_id: u64,
    pub(super) deadline: Instant,
    replied: bool,
    tally: Tally,
    kind: Kind,
}

// Without an allocator the record read's buffers cannot be boxed; the
// table is small (`C` entries) instead.
#[allow(clippy::large_enum_variant)]
enum Kind {
    ChunkWrite {
        id: ChunkId,
        need: u8,
    },
    ChunkRead {
        id: ChunkId,
        ranked: heapless::Vec<NodeId, RANKED>,
        next: usize,
        /// Ranked replicas (within the first `n`) without a good copy.
        bad: heapless::Vec<NodeId, RANKED>,
        n: usize,
        corrupt: bool,
    },
    ChunkLocate,
    RecordWrite {
        version: Hlc,
        need: u8,
    },
    RecordRead {
        need: u8,
        key: heapless::Vec<u8, MAX_STORE_KEY>,
        best: Option<(Hlc, bool)>,
        value: heapless::Vec<u8, MAX_VALUE>,
    },
}

/// An answer waiting for its write to be durable.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    /// Who asked.
    pub to: NodeId,
    /// The request.
    pub req: u64,
    /// A chunk's `Has(true)`, else a write's `Stored`.
    pub has: bool,
    /// The flush that covers it, once one began.
    pub flush: Option<u64>,
}

/// A request a coordinator sent one replica.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sub {
    pub(super) id: u64,
    coord: u64,
    pub(super) node: NodeId,
    pub(super) deadline: Instant,
    pub(super) link_msg: Option<u64>,
}

fn store_error(e: StoreError) -> RemoteError {
    match e {
        StoreError::Full | StoreError::TooLarge => RemoteError::Full,
        StoreError::Corrupt => RemoteError::Corrupt,
        StoreError::BufferTooSmall | StoreError::Io => RemoteError::Io,
    }
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
    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        self.data.wall_ms_at_zero + now.as_micros() / 1000
    }

    /// Live members of `pool`, ranked for `digest`, and the quorum for them.
    pub(super) fn placement<const N: usize>(
        &self,
        pool: Pool,
        digest: &KeyDigest,
    ) -> (heapless::Vec<NodeId, N>, Quorum) {
        let ranked = router::replicas::<N>(self.member.candidates(), pool, digest);
        // The quorum follows the pool's size, dead members included: a
        // member that died still counts until it leaves, so losing nodes
        // makes writes fail for want of live replicas rather than quietly
        // keep fewer copies. Only a pool that never had N members (or saw
        // them leave) runs with fewer.
        let serves = |p: &crate::member::Profile| p.weight > 0 && p.pools.contains(pool);
        let local = self.member.local();
        let known = usize::from(serves(&local.profile))
            + self
                .member
                .members()
                .filter(|m| m.state() != State::Left && serves(m.profile()))
                .count();
        (ranked, self.data.quorum.for_pool(known))
    }

    fn is_slow(&self, node: NodeId, now: Instant) -> bool {
        self.slow.iter().any(|&(n, until)| n == node && until > now)
    }

    fn mark_slow(&mut self, node: NodeId, now: Instant) {
        let until = now + SLOW_BACKOFF;
        self.slow.retain(|&(_, u)| u > now);
        if let Some(e) = self.slow.iter_mut().find(|(n, _)| *n == node) {
            e.1 = until;
        } else if self.slow.push((node, until)).is_err() && !self.slow.is_empty() {
            self.slow.remove(0);
            let _ = self.slow.push((node, until));
        }
    }

    fn is_full(&self, node: NodeId, now: Instant) -> bool {
        self.full.iter().any(|&(n, until)| n == node && until > now)
    }

    fn mark_full(&mut self, node: NodeId, now: Instant) {
        let until = now + self.data.full_backoff;
        self.full.retain(|&(_, u)| u > now);
        if let Some(e) = self.full.iter_mut().find(|(n, _)| *n == node) {
            e.1 = until;
        } else if self.full.push((node, until)).is_err() && !self.full.is_empty() {
            self.full.remove(0);
            let _ = self.full.push((node, until));
        }
    }

    // ---- serving ----

    /// Serves a file-system or record request from `from`.
    pub(super) fn serve_data(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        request: Request<'_>,
        spare: &mut Spare<'_>,
    ) {
        match request {
            Request::FsInfo => {
                let q = self.data.quorum;
                let r = Response::FsInfo {
                    chunk_size: self.data.chunk_size,
                    n: q.n,
                    w: q.w,
                    r: q.r,
                    gc_round_ms: self.data.gc_round.as_millis(),
                };
                self.reply(now, from, req, &r, spare);
            }
            Request::ChunkMark { id, depth } => {
                let round = self.gc_round(now);
                if self.send_mark(now, id, depth, round, spare) {
                    self.reply(now, from, req, &Response::Stored, spare);
                } else {
                    self.stats.busy += 1;
                    self.reply_error(now, from, req, RemoteError::Busy, spare);
                }
            }
            Request::ChunkWrite { data } => self.chunk_write(now, from, req, data, spare),
            Request::ChunkRead { id } => {
                let (mut ranked, q) = self.placement::<RANKED>(Pool::Data, &id.digest());
                // A replica that just let a read time out (it may have died
                // without being declared dead yet) is tried last for a while.
                let slow: heapless::Vec<NodeId, RANKED> = ranked
                    .iter()
                    .copied()
                    .filter(|n| self.is_slow(*n, now))
                    .collect();
                ranked.retain(|n| !slow.contains(n));
                let _ = ranked.extend_from_slice(&slow);
                // A copy held here costs no hop: try it first.
                if let Some(i) = ranked.iter().position(|n| *n == self.id) {
                    ranked[..=i].rotate_right(1);
                }
                let kind = Kind::ChunkRead {
                    id,
                    n: usize::from(q.n),
                    ranked,
                    next: 0,
                    bad: heapless::Vec::new(),
                    corrupt: false,
                };
                if let Some(c) = self.open(now, from, req, Tally::default(), kind, spare) {
                    self.chunk_read_next(now, c, spare);
                }
            }
            Request::ChunkLocate { id } => {
                let (ranked, _) = self.placement::<MAX_REPLICAS>(Pool::Data, &id.digest());
                let Some(c) = self.open(
                    now,
                    from,
                    req,
                    Tally::new(&ranked),
                    Kind::ChunkLocate,
                    spare,
                ) else {
                    return;
                };
                for node in ranked {
                    let r = Request::ChunkHas { id, handoff: false };
                    self.ask(now, c, node, &r, spare);
                }
                self.progress(now, c, spare);
            }
            Request::RecordWrite {
                key,
                after,
                exact,
                tombstone,
                value,
            } => {
                let version = if exact && after != Hlc::ZERO {
                    self.hlc.observe(after);
                    after
                } else {
                    self.hlc.observe(after);
                    self.hlc.now(self.wall_ms(now))
                };
                self.record_write(now, from, req, key, version, tombstone, value, spare)
            }
            Request::RecordRead { key } => self.record_read(now, from, req, key, spare),
            Request::RecordList {
                prefix,
                after,
                replica,
            } => self.record_list(now, from, req, prefix, after, replica, spare),
            Request::ChunkStore { id, data } => {
                // This node's own coordinator asks only with an id it has
                // just computed from these bytes (`chunk_write`); a datagram
                // claiming this node as its sender never gets here
                // (`Engine::receive` drops it).
                if from != self.id && !id.verifies(data) {
                    return self.reply_error(now, from, req, RemoteError::Corrupt, spare);
                }
                match self.store.insert(Space::Chunks, &id.0, data) {
                    Ok(had) => {
                        // A chunk new here carries no mark, and keeps none
                        // until the sweep meets it (see `born`); one stored
                        // before, or marked before (its copy since handed
                        // off), may carry an old mark, which must not date
                        // it.
                        if had || self.mark_of(&id).is_some() {
                            self.born(now, &id);
                        }
                        self.hold(now, from, req, spare)
                    }
                    Err(e) => self.reply_error(now, from, req, store_error(e), spare),
                }
            }
            Request::ChunkLoad { id } => self.chunk_load(now, from, req, id, spare),
            Request::ChunkHas { id, handoff } => {
                // A copy counts once it is durable: the asker may delete its
                // own on the strength of this answer (handoff). It counts
                // for a handoff only from a node that keeps it: two holders
                // whose views each name the other as owner must not both
                // delete.
                if !self.has_chunk(id, spare.aux) {
                    self.reply(now, from, req, &Response::Has(false), spare);
                } else if handoff && !self.owns_chunk(&id) {
                    self.reply_error(now, from, req, RemoteError::NotOwner, spare);
                } else {
                    self.hold_answer(now, from, req, true, spare);
                }
            }
            Request::RecordStore {
                key,
                version,
                tombstone,
                value,
            } => {
                if RecordKey::decode(key).is_none() {
                    return self.reply_error(now, from, req, RemoteError::Malformed, spare);
                }
                self.hlc.observe(version);
                let s = Stored {
                    version,
                    tombstone,
                    value,
                };
                match repl::apply(&mut self.store, key, &s) {
                    Ok(_) => self.hold(now, from, req, spare),
                    Err(e) => self.reply_error(now, from, req, store_error(e), spare),
                }
            }
            Request::RecordLoad { key } => {
                let mut buf = [0u8; STORED_HEADER + MAX_VALUE];
                let (r, value) = match repl::load(&self.store, key, &mut buf) {
                    Ok(Some(s)) => (
                        Response::Record {
                            version: s.version,
                            tombstone: s.tombstone,
                        },
                        s.value,
                    ),
                    Ok(None) => (
                        Response::Record {
                            version: Hlc::ZERO,
                            tombstone: true,
                        },
                        &[][..],
                    ),
                    Err(e) => return self.reply_error(now, from, req, store_error(e), spare),
                };
                self.reply_with(now, from, req, &r, value, spare);
            }
            Request::RecordScan {
                prefix,
                after,
                replicas,
            } => {
                let aux = core::mem::take(&mut spare.aux);
                match self.scan_page(req, prefix, after, replicas, aux) {
                    Some(len) => self.deliver_response(now, from, aux, len, spare),
                    None => self.reply_error(now, from, req, RemoteError::Io, spare),
                }
                spare.aux = aux;
            }
            Request::Mark { id, depth, round } => self.on_mark(now, id, depth, round),
            Request::Send { .. } | Request::Members { .. } | Request::Forget { .. } => {
                self.reply_error(now, from, req, RemoteError::Malformed, spare)
            }
        }
    }

    /// Holds the acknowledgement of a write until the next commit.
    fn hold(&mut self, now: Instant, to: NodeId, req: u64, spare: &mut Spare<'_>) {
        self.hold_answer(now, to, req, false, spare);
    }

    /// Holds an answer until the writes before it are durable: `Has(true)`
    /// when `has`, else `Stored`.
    fn hold_answer(
        &mut self,
        now: Instant,
        to: NodeId,
        req: u64,
        has: bool,
        spare: &mut Spare<'_>,
    ) {
        if self.held.is_full() {
            self.commit_all(now, spare);
        }
        let _ = self.held.push(Held {
            to,
            req,
            has,
            flush: None,
        });
    }

    /// Group commit: answers the held writes that are now durable (or
    /// reports their failure: they may be lost), and starts a flush for the
    /// rest. A store that syncs in the background runs one flush at a time,
    /// so writes made while it runs wait for the next, which begins as soon
    /// as it ends; the node serves on meanwhile.
    pub(super) fn commit(&mut self, now: Instant, spare: &mut Spare<'_>) {
        while let Some((ticket, result)) = self.store.flush_poll() {
            if self.flushing == Some(ticket) {
                self.flushing = None;
            }
            self.release(now, |h| h.flush == Some(ticket), result, spare);
        }
        if self.flushing.is_some() || !self.held.iter().any(|h| h.flush.is_none()) {
            return;
        }
        match self.store.flush_begin() {
            FlushBegun::Done(result) => self.release(now, |h| h.flush.is_none(), result, spare),
            FlushBegun::Running(ticket) => {
                self.flushing = Some(ticket);
                for h in self.held.iter_mut().filter(|h| h.flush.is_none()) {
                    h.flush = Some(ticket);
                }
            }
        }
    }

    /// Makes every write durable now, waiting for the disk, and answers
    /// every held write: for when the table of held answers is full.
    pub(super) fn commit_all(&mut self, now: Instant, spare: &mut Spare<'_>) {
        let result = self.store.flush();
        self.flushing = None;
        self.release(now, |_| true, result, spare);
    }

    /// Answers the held writes `which` picks with `result`.
    fn release(
        &mut self,
        now: Instant,
        which: impl Fn(&Held) -> bool,
        result: Result<(), StoreError>,
        spare: &mut Spare<'_>,
    ) {
        // Take them all first: an answer to this node itself is served at
        // once and may hold a new write, which this flush does not cover.
        let mut taken: heapless::Vec<Held, S> = heapless::Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            if which(&self.held[i]) {
                // In the order they were held.
                let _ = taken.push(self.held.remove(i));
            } else {
                i += 1;
            }
        }
        for h in taken {
            let ok = if h.has {
                Response::Has(true)
            } else {
                Response::Stored
            };
            match result {
                Ok(()) => self.reply(now, h.to, h.req, &ok, spare),
                Err(e) => self.reply_error(now, h.to, h.req, store_error(e), spare),
            }
        }
    }

    /// Whether this node is one of `id`'s owners in its view.
    pub(super) fn owns_chunk(&self, id: &ChunkId) -> bool {
        let (ranked, q) = self.placement::<MAX_REPLICAS>(Pool::Data, &id.digest());
        ranked[..usize::from(q.n).min(ranked.len())].contains(&self.id)
    }

    fn has_chunk(&mut self, id: ChunkId, buf: &mut [u8]) -> bool {
        matches!(self.store.get(Space::Chunks, &id.0, buf), Ok(Some(n)) if id.verifies(&buf[..n]))
    }

    /// Writes the chunk `id` held here, as a [`Response::Chunk`] envelope
    /// with request id `req`, into `out`; a copy that fails its check is
    /// removed.
    fn chunk_envelope(
        &mut self,
        req: u64,
        id: ChunkId,
        out: &mut [u8],
    ) -> Result<usize, RemoteError> {
        let head = envelope::encode_response(out, req, &Response::Chunk { by: self.id })
            .ok_or(RemoteError::Io)?;
        let n = match self.store.get(Space::Chunks, &id.0, &mut out[head..]) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(RemoteError::NotFound),
            Err(e) => return Err(store_error(e)),
        };
        if !id.verifies(&out[head..head + n]) {
            // A bad copy is worse than none: drop it so a repair replaces it.
            let _ = self.store.remove(Space::Chunks, &id.0);
            return Err(RemoteError::Corrupt);
        }
        Ok(head + n)
    }

    fn chunk_load(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        id: ChunkId,
        spare: &mut Spare<'_>,
    ) {
        let aux = core::mem::take(&mut spare.aux);
        match self.chunk_envelope(req, id, aux) {
            Ok(len) => self.deliver_response(now, from, aux, len, spare),
            Err(e) => self.reply_error(now, from, req, e, spare),
        }
        spare.aux = aux;
    }

    /// A page of the records under `prefix` held here, as a
    /// [`Response::Entries`] envelope in `out`.
    fn scan_page(
        &mut self,
        req: u64,
        prefix: &[u8],
        after: &[u8],
        replicas: u8,
        out: &mut [u8],
    ) -> Option<usize> {
        let head = |more| Response::Entries {
            by: self.id,
            replicas,
            more,
        };
        let start = envelope::encode_response(out, req, &head(false))?;
        let limit = out.len().min(start + PAGE);
        let mut key = [0u8; MAX_STORE_KEY];
        let mut klen = after.len().min(MAX_STORE_KEY);
        key[..klen].copy_from_slice(&after[..klen]);
        let mut first = after.is_empty();
        let mut at = start;
        let mut more = false;
        let mut value = [0u8; STORED_HEADER + MAX_VALUE];
        loop {
            let prev = if first { None } else { Some(&key[..klen]) };
            let mut next = [0u8; MAX_STORE_KEY];
            let Ok(Some(n)) = self.store.next_key(Space::Records, prefix, prev, &mut next) else {
                break;
            };
            first = false;
            let Ok(Some(vn)) = self.store.get(Space::Records, &next[..n], &mut value) else {
                key[..n].copy_from_slice(&next[..n]);
                klen = n;
                continue;
            };
            let suffix = &next[prefix.len()..n];
            let need = 4 + suffix.len() + vn;
            if at + need > limit {
                more = true;
                break;
            }
            out[at..at + 2].copy_from_slice(&(suffix.len() as u16).to_le_bytes());
            out[at + 2..at + 4].copy_from_slice(&(vn as u16).to_le_bytes());
            out[at + 4..at + 4 + suffix.len()].copy_from_slice(suffix);
            out[at + 4 + suffix.len()..at + need].copy_from_slice(&value[..vn]);
            at += need;
            key[..n].copy_from_slice(&next[..n]);
            klen = n;
        }
        if more {
            // Same length: only the flag changed.
            envelope::encode_response(out, req, &head(true))?;
        }
        Some(at)
    }

    // ---- coordinating ----

    fn open(
        &mut self,
        now: Instant,
        origin: NodeId,
        origin_id: u64,
        tally: Tally,
        kind: Kind,
        spare: &mut Spare<'_>,
    ) -> Option<u64> {
        if self.coords.is_full() {
            self.stats.busy += 1;
            self.reply_error(now, origin, origin_id, RemoteError::Busy, spare);
            return None;
        }
        let id = self.take_request_id();
        // Answer the client before its own timeout fires.
        let patience = self.request_timeout.as_micros() / 10 * 9;
        let _ = self.coords.push(Coord {
            id,
            origin,
            origin_id,
            deadline: now + Duration::from_micros(patience),
            replied: false,
            tally,
            kind,
        });
        Some(id)
    }

    fn coord(&mut self, id: u64) -> Option<&mut Coord> {
        self.coords.iter_mut().find(|c| c.id == id)
    }

    /// Sends `request` to replica `node` for coordinated operation `coord`
    /// (a request for this node itself is served at once); false when it
    /// could not be sent, which the tally then counts as a failure.
    fn ask(
        &mut self,
        now: Instant,
        coord: u64,
        node: NodeId,
        request: &Request<'_>,
        spare: &mut Spare<'_>,
    ) -> bool {
        let id = self.take_request_id();
        // A read that finds a replica slow moves on to the next one; a
        // write waits longer, but answers its client before the client's
        // own timeout.
        let patience = match request {
            Request::ChunkLoad { .. } => self.request_timeout.as_micros() / 5,
            _ => self.request_timeout.as_micros() / 2,
        };
        let mut sub = Sub {
            id,
            coord,
            node,
            deadline: now + Duration::from_micros(patience),
            link_msg: None,
        };
        if self.subs.is_full() {
            self.stats.busy += 1;
            if let Some(c) = self.coord(coord) {
                c.tally.answer(node, Answer::Failed);
            }
            return false;
        }
        if node == self.id {
            let _ = self.subs.push(sub);
            self.serve_data(now, node, id, *request, spare);
            return true;
        }
        match self.send_request(now, node, id, request, spare) {
            Sent::Queued(m) => {
                sub.link_msg = Some(m);
                let _ = self.subs.push(sub);
                true
            }
            Sent::NoRoom | Sent::Unencodable => {
                self.stats.busy += 1;
                if let Some(c) = self.coord(coord) {
                    c.tally.answer(node, Answer::Failed);
                }
                false
            }
        }
    }

    fn chunk_write(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        data: &[u8],
        spare: &mut Spare<'_>,
    ) {
        // Index chunks may be larger than data chunks.
        let max = (self.data.chunk_size as usize).max(crate::fs::INDEX_CHUNK);
        if data.is_empty() || data.len() > max {
            return self.reply_error(now, from, req, RemoteError::TooLarge, spare);
        }
        let id = ChunkId::of(data);
        let (ranked, q) = self.placement::<RANKED>(Pool::Data, &id.digest());
        if ranked.is_empty() {
            return self.reply_error(now, from, req, RemoteError::NoOwner, spare);
        }
        let mut targets = heapless::Vec::<NodeId, MAX_REPLICAS>::new();
        for &n in &ranked {
            if !self.is_full(n, now) && targets.len() < usize::from(q.n) {
                let _ = targets.push(n);
            }
        }
        if targets.len() < usize::from(q.w) {
            let e = if targets.len() < ranked.len().min(usize::from(q.n)) {
                RemoteError::Full
            } else {
                RemoteError::Quorum { got: 0, need: q.w }
            };
            return self.reply_error(now, from, req, e, spare);
        }
        let kind = Kind::ChunkWrite { id, need: q.w };
        let Some(c) = self.open(now, from, req, Tally::new(&targets), kind, spare) else {
            return;
        };
        for node in targets {
            self.ask(now, c, node, &Request::ChunkStore { id, data }, spare);
        }
        self.progress(now, c, spare);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_write(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: &[u8],
        version: Hlc,
        tombstone: bool,
        value: &[u8],
        spare: &mut Spare<'_>,
    ) {
        let Some(rk) = RecordKey::decode(key) else {
            return self.reply_error(now, from, req, RemoteError::Malformed, spare);
        };
        if value.len() > MAX_VALUE || (tombstone && !value.is_empty()) {
            return self.reply_error(now, from, req, RemoteError::TooLarge, spare);
        }
        let (ranked, q) = self.placement::<MAX_REPLICAS>(rk.pool, &KeyDigest::of(rk.placement));
        if ranked.is_empty() {
            return self.reply_error(now, from, req, RemoteError::NoOwner, spare);
        }
        let targets = &ranked[..usize::from(q.n).min(ranked.len())];
        let kind = Kind::RecordWrite { version, need: q.w };
        let Some(c) = self.open(now, from, req, Tally::new(targets), kind, spare) else {
            return;
        };
        let r = Request::RecordStore {
            key,
            version,
            tombstone,
            value,
        };
        for &node in targets {
            self.ask(now, c, node, &r, spare);
        }
        self.progress(now, c, spare);
    }

    fn record_read(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: &[u8],
        spare: &mut Spare<'_>,
    ) {
        let Some(rk) = RecordKey::decode(key) else {
            return self.reply_error(now, from, req, RemoteError::Malformed, spare);
        };
        let (ranked, q) = self.placement::<MAX_REPLICAS>(rk.pool, &KeyDigest::of(rk.placement));
        if ranked.is_empty() {
            return self.reply_error(now, from, req, RemoteError::NoOwner, spare);
        }
        let targets = &ranked[..usize::from(q.n).min(ranked.len())];
        let kind = Kind::RecordRead {
            need: q.r,
            // Fits: a decoded record key is at most MAX_STORE_KEY bytes.
            key: heapless::Vec::from_slice(key).unwrap_or_default(),
            best: None,
            value: heapless::Vec::new(),
        };
        let Some(c) = self.open(now, from, req, Tally::new(targets), kind, spare) else {
            return;
        };
        for &node in targets {
            self.ask(now, c, node, &Request::RecordLoad { key }, spare);
        }
        self.progress(now, c, spare);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_list(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        prefix: &[u8],
        after: &[u8],
        replica: u8,
        spare: &mut Spare<'_>,
    ) {
        let Some(rk) = RecordKey::decode(prefix).filter(|k| k.suffix.is_empty()) else {
            return self.reply_error(now, from, req, RemoteError::Malformed, spare);
        };
        if !after.is_empty() && !after.starts_with(prefix) {
            return self.reply_error(now, from, req, RemoteError::Malformed, spare);
        }
        let (ranked, q) = self.placement::<MAX_REPLICAS>(rk.pool, &KeyDigest::of(rk.placement));
        let n = usize::from(q.n).min(ranked.len());
        let Some(&node) = ranked[..n].get(usize::from(replica)) else {
            return self.reply_error(now, from, req, RemoteError::NotFound, spare);
        };
        let replicas = n as u8;
        if node == self.id {
            let aux = core::mem::take(&mut spare.aux);
            match self.scan_page(req, prefix, after, replicas, aux) {
                Some(len) => self.deliver_response(now, from, aux, len, spare),
                None => self.reply_error(now, from, req, RemoteError::Io, spare),
            }
            spare.aux = aux;
            return;
        }
        if self.forwards.is_full() {
            self.stats.busy += 1;
            return self.reply_error(now, from, req, RemoteError::Busy, spare);
        }
        let id = self.take_request_id();
        let r = Request::RecordScan {
            prefix,
            after,
            replicas,
        };
        let aux = core::mem::take(&mut spare.aux);
        let sent = envelope::encode_request(aux, id, &Target::Here, &r)
            .and_then(|len| self.link_send(now, node, &aux[..len]));
        spare.aux = aux;
        match sent {
            Some(m) => {
                let _ = self.forwards.push(Forward {
                    id,
                    origin: from,
                    origin_id: req,
                    deadline: now + self.request_timeout,
                    link_msg: Some(m),
                });
            }
            None => {
                self.stats.busy += 1;
                self.reply_error(now, from, req, RemoteError::Busy, spare);
            }
        }
    }

    /// Asks the next ranked replica for a chunk, or gives up.
    fn chunk_read_next(&mut self, now: Instant, coord: u64, spare: &mut Spare<'_>) {
        let me = self.id;
        loop {
            let Some(c) = self.coord(coord) else { return };
            let origin_id = c.origin_id;
            let Kind::ChunkRead {
                id,
                ranked,
                next,
                corrupt,
                ..
            } = &mut c.kind
            else {
                return;
            };
            let (id, corrupt) = (*id, *corrupt);
            let Some(&node) = ranked.get(*next) else {
                let e = if corrupt {
                    RemoteError::Corrupt
                } else {
                    RemoteError::NotFound
                };
                return self.finish(now, coord, Some(e), spare);
            };
            *next += 1;
            let _ = c.tally.asked.push((node, Answer::Waiting));
            if node != me {
                if self.ask(now, coord, node, &Request::ChunkLoad { id }, spare) {
                    return;
                }
                self.chunk_missing(coord, node, false);
                continue;
            }
            // Served here: build the client's answer straight from the store.
            let aux = core::mem::take(&mut spare.aux);
            let got = self.chunk_envelope(origin_id, id, aux);
            spare.aux = aux;
            match got {
                Ok(len) => return self.chunk_found(now, coord, node, len, spare),
                Err(e) => self.chunk_missing(coord, node, e == RemoteError::Corrupt),
            }
        }
    }

    fn chunk_missing(&mut self, coord: u64, node: NodeId, corrupt: bool) {
        if let Some(c) = self.coord(coord) {
            c.tally.answer(node, Answer::Failed);
            if let Kind::ChunkRead {
                ranked,
                bad,
                n,
                corrupt: any_corrupt,
                ..
            } = &mut c.kind
            {
                *any_corrupt |= corrupt;
                if ranked.iter().take(*n).any(|r| *r == node) {
                    let _ = bad.push(node);
                }
            }
        }
    }

    /// A verified chunk envelope for the client is in `spare.aux[..len]`:
    /// send it, and repair the replicas that lacked it (built in the inbox,
    /// which only answers to this node's own commands use).
    fn chunk_found(
        &mut self,
        now: Instant,
        coord: u64,
        by: NodeId,
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        let Some(i) = self.coords.iter().position(|c| c.id == coord) else {
            return;
        };
        let c = self.coords.swap_remove(i);
        let aux = core::mem::take(&mut spare.aux);
        if let Kind::ChunkRead { id, bad, .. } = &c.kind {
            let head = envelope::decode_response(&aux[PREFIX_LEN..len]).map(|(_, d)| len - d.len());
            if let Some(head) = head {
                let data = &aux[head..len];
                for &node in bad.iter().filter(|n| **n != by) {
                    self.repair_chunk(now, node, *id, data, spare.inbox);
                }
            }
        }
        self.deliver_response(now, c.origin, aux, len, spare);
        spare.aux = aux;
    }

    fn repair_chunk(
        &mut self,
        now: Instant,
        node: NodeId,
        id: ChunkId,
        data: &[u8],
        buf: &mut [u8],
    ) {
        self.stats.repairs += 1;
        if node == self.id {
            if self.store.put(Space::Chunks, &id.0, data).is_ok() {
                self.born(now, &id);
            }
            return;
        }
        let req = self.take_request_id();
        if let Some(len) =
            envelope::encode_request(buf, req, &Target::Here, &Request::ChunkStore { id, data })
        {
            let _ = self.link_send(now, node, &buf[..len]);
        }
    }

    /// A replica answered sub-request `sub`; the answer is in `buf[..len]`.
    pub(super) fn sub_answered(
        &mut self,
        now: Instant,
        sub: Sub,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        let Some(i) = self.coords.iter().position(|c| c.id == sub.coord) else {
            return;
        };
        let answer = envelope::decode_response(&buf[PREFIX_LEN..len]);
        let c = &mut self.coords[i];
        let answer = match (&mut c.kind, answer) {
            (Kind::ChunkRead { id, .. }, Some((Response::Chunk { .. }, data))) => {
                let id = *id;
                let head = len - data.len();
                if !id.verifies(data) {
                    self.chunk_missing(sub.coord, sub.node, true);
                    return self.chunk_read_next(now, sub.coord, spare);
                }
                let c = self.coords.swap_remove(i);
                // Relay in place: only the prefix's request id changes.
                let patched = Prefix {
                    kind: EnvelopeKind::Response,
                    id: c.origin_id,
                    hops: 0,
                };
                if patched.emit(buf).is_none() {
                    return;
                }
                if let Kind::ChunkRead { bad, .. } = &c.kind {
                    for &node in bad.iter().filter(|n| **n != sub.node) {
                        let aux = core::mem::take(&mut spare.aux);
                        self.repair_chunk(now, node, id, &buf[head..len], aux);
                        spare.aux = aux;
                    }
                }
                return self.deliver_response(now, c.origin, buf, len, spare);
            }
            (Kind::ChunkRead { .. }, other) => {
                let corrupt = matches!(other, Some((Response::Error(RemoteError::Corrupt), _)));
                self.chunk_missing(sub.coord, sub.node, corrupt);
                return self.chunk_read_next(now, sub.coord, spare);
            }
            (Kind::ChunkWrite { .. } | Kind::RecordWrite { .. }, answer) => match answer {
                Some((Response::Stored, _)) => Answer::Ok(None),
                Some((Response::Error(RemoteError::Full), _)) => Answer::Full,
                _ => Answer::Failed,
            },
            (Kind::ChunkLocate, answer) => match answer {
                Some((Response::Has(true), _)) => Answer::Ok(Some(Hlc::ZERO)),
                Some((Response::Has(false), _)) => Answer::Ok(None),
                _ => Answer::Failed,
            },
            (
                Kind::RecordRead { best, value, .. },
                Some((Response::Record { version, tombstone }, data)),
            ) => {
                let have = (version != Hlc::ZERO).then_some(version);
                if have.is_some()
                    && best.is_none_or(|(b, _)| version > b)
                    && data.len() <= MAX_VALUE
                {
                    *best = Some((version, tombstone));
                    value.clear();
                    let _ = value.extend_from_slice(data);
                }
                Answer::Ok(have)
            }
            (Kind::RecordRead { .. }, _) => Answer::Failed,
        };
        c.tally.answer(sub.node, answer);
        if answer == Answer::Full {
            self.mark_full(sub.node, now);
        }
        self.progress(now, sub.coord, spare);
    }

    /// A sub-request was lost (link failure or timeout).
    pub(super) fn sub_failed(&mut self, now: Instant, sub: Sub, spare: &mut Spare<'_>) {
        let Some(c) = self.coord(sub.coord) else {
            return;
        };
        c.tally.answer(sub.node, Answer::Failed);
        if matches!(c.kind, Kind::ChunkRead { .. }) {
            self.mark_slow(sub.node, now);
            return self.chunk_read_next(now, sub.coord, spare);
        }
        self.progress(now, sub.coord, spare);
    }

    /// Answers the origin once the tally decides, and retires the operation
    /// once every replica answered.
    fn progress(&mut self, now: Instant, coord: u64, spare: &mut Spare<'_>) {
        let Some(c) = self.coords.iter_mut().find(|c| c.id == coord) else {
            return;
        };
        let oks = c.tally.oks();
        let done = c.tally.waiting() == 0;
        let (origin, origin_id) = (c.origin, c.origin_id);
        let quorum_error = |need: u8, full: bool| {
            if full {
                RemoteError::Full
            } else {
                RemoteError::Quorum {
                    got: oks as u8,
                    need,
                }
            }
        };
        // What to answer now, if anything; an error retires the operation.
        let mut answer: Option<(Response, heapless::Vec<u8, MAX_VALUE>)> = None;
        let mut error = None;
        match &c.kind {
            Kind::ChunkRead { .. } => return,
            Kind::ChunkWrite { need, .. } | Kind::RecordWrite { need, .. } if !c.replied => {
                if oks >= usize::from(*need) {
                    let r = match c.kind {
                        Kind::ChunkWrite { id, .. } => Response::ChunkWritten {
                            id,
                            holders: c
                                .tally
                                .asked
                                .iter()
                                .filter(|(_, a)| matches!(a, Answer::Ok(_)))
                                .map(|(n, _)| *n)
                                .collect(),
                        },
                        Kind::RecordWrite { version, .. } => Response::RecordWritten { version },
                        _ => return,
                    };
                    answer = Some((r, heapless::Vec::new()));
                } else if !c.tally.can_reach(usize::from(*need)) {
                    error = Some(quorum_error(*need, c.tally.any_full()));
                }
            }
            Kind::RecordRead {
                need, best, value, ..
            } if !c.replied => {
                if oks >= usize::from(*need) {
                    let (version, tombstone) = best.unwrap_or((Hlc::ZERO, true));
                    answer = Some((Response::Record { version, tombstone }, value.clone()));
                } else if !c.tally.can_reach(usize::from(*need)) {
                    error = Some(quorum_error(*need, false));
                }
            }
            Kind::ChunkLocate if done && !c.replied => {
                let nodes = c
                    .tally
                    .asked
                    .iter()
                    .map(|(n, a)| {
                        let has = match a {
                            Answer::Ok(v) => Some(v.is_some()),
                            _ => None,
                        };
                        (*n, has)
                    })
                    .collect();
                answer = Some((Response::Holders { nodes }, heapless::Vec::new()));
            }
            _ => {}
        }
        if answer.is_some() {
            c.replied = true;
        }
        if let Some((r, data)) = answer {
            self.reply_with(now, origin, origin_id, &r, &data, spare);
        }
        if error.is_some() || done {
            self.finish(now, coord, error, spare);
        }
    }

    /// Retires an operation: answers `error` if nobody was answered yet, and
    /// sends the read-repairs a record read found.
    fn finish(
        &mut self,
        now: Instant,
        coord: u64,
        error: Option<RemoteError>,
        spare: &mut Spare<'_>,
    ) {
        let Some(i) = self.coords.iter().position(|c| c.id == coord) else {
            return;
        };
        let c = self.coords.swap_remove(i);
        self.subs.retain(|s| s.coord != coord);
        if !c.replied {
            let e = error.unwrap_or(RemoteError::Unreachable);
            self.reply_error(now, c.origin, c.origin_id, e, spare);
        }
        if let Kind::RecordRead {
            key,
            best: Some((version, tombstone)),
            value,
            ..
        } = &c.kind
        {
            for node in c.tally.stale(*version) {
                self.stats.repairs += 1;
                let r = Request::RecordStore {
                    key,
                    version: *version,
                    tombstone: *tombstone,
                    value,
                };
                if node == self.id {
                    let s = Stored {
                        version: *version,
                        tombstone: *tombstone,
                        value,
                    };
                    let _ = repl::apply(&mut self.store, key, &s);
                    continue;
                }
                let req = self.take_request_id();
                let _ = self.send_request(now, node, req, &r, spare);
            }
        }
    }

    /// Times out sub-requests and operations.
    pub(super) fn expire_coords(&mut self, now: Instant, spare: &mut Spare<'_>) {
        while let Some(i) = self.subs.iter().position(|s| s.deadline <= now) {
            let sub = self.subs.swap_remove(i);
            self.sub_failed(now, sub, spare);
        }
        while let Some(c) = self.coords.iter().find(|c| c.deadline <= now) {
            let e = RemoteError::Quorum {
                got: c.tally.oks() as u8,
                need: match c.kind {
                    Kind::ChunkWrite { need, .. }
                    | Kind::RecordWrite { need, .. }
                    | Kind::RecordRead { need, .. } => need,
                    _ => 1,
                },
            };
            let id = c.id;
            self.finish(now, id, Some(e), spare);
        }
    }

    fn reply_with(
        &mut self,
        now: Instant,
        to: NodeId,
        id: u64,
        r: &Response,
        data: &[u8],
        spare: &mut Spare<'_>,
    ) {
        let mut buf = [0u8; 64 + MAX_VALUE];
        let Some(head) = envelope::encode_response(&mut buf, id, r) else {
            return;
        };
        let Some(out) = buf.get_mut(head..head + data.len()) else {
            return;
        };
        out.copy_from_slice(data);
        self.deliver_response(now, to, &mut buf, head + data.len(), spare);
    }
}
