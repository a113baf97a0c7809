//! The [`Node`]: wire, link, membership, router and subsystems behind one
//! sans-IO API.
//!
//! # Call order
//! - Construct with [`Node::new`], then [`Node::join`] (members) — clients
//!   built with [`Role::Client`] say hello to their contact on their own.
//! - Inputs: [`Node::handle_datagram`] for every datagram received,
//!   [`Node::handle_timeout`] whenever [`Node::poll_timeout`] is due (early
//!   or repeated calls are harmless).
//! - Commands: [`Node::send_to_key`], [`Node::members_page`], [`Node::leave`],
//!   [`Node::fs_request`]; each returns an [`OpId`] whose outcome arrives as
//!   an [`Event`] (and, for responses that carry bytes, in
//!   [`Node::response_data`] until the next input or command).
//! - After a batch of inputs (every datagram that was ready), call
//!   [`Node::commit`]: it flushes the store once and releases the
//!   acknowledgements of the writes the batch made (group commit).
//! - Outputs, after every input or command: drain [`Node::poll_transmit`]
//!   until `None`, then [`Node::poll_event`], then sleep until
//!   [`Node::poll_timeout`].
//!
//! The node never reads a clock, a socket or a random source, and never
//! allocates; every table is bounded by a const generic or a constant, and a
//! full table answers with a typed error or a counted drop.

mod coord;
mod envelope;
mod event;
mod gc;
mod sweep;

pub use coord::DataConfig;
pub use envelope::{
    EnvelopeKind, MAX_KEY, MEMBERS_PAGE, PREFIX_LEN, Prefix, RemoteError, Request, Response,
    Target, decode_request, decode_response, encode_request, encode_response,
};
pub use event::{Event, NodeStats, OpFailure, OpId};

use core::net::SocketAddr;

use crate::link::{FRAGMENT, Link, LinkConfig, LinkEvent, MAX_FRAME};
use crate::member::{ForgetError, MemberConfig, MemberEvent, Membership, Message, Profile, State};
use crate::repl::HlcClock;
use crate::router::{self, KeyDigest};
use crate::store::Storage;
use crate::wire::{
    self, ClusterKey, DropReason, HEADER_LEN, Kind, ReplayTable, ReplayVerdict, Sealer,
};
use crate::{Duration, Instant, NodeId, Pool};

// Every link frame, sealed, fits one datagram.
const _: () = assert!(MAX_FRAME + wire::OVERHEAD <= wire::MAX_DATAGRAM);

/// Largest message a host node sends or accepts over the link: the default
/// size of [`Node`]'s message buffer.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Events a host node queues between two drains: the default length of
/// [`Node`]'s event queue.
pub const EVENTS: usize = 16;
/// The link window this node uses towards a microcontroller peer.
pub const MCU_WINDOW: u16 = 8;
pub use crate::link::{HOST_QUEUE, HOST_WINDOW};
/// Most forwarding hops a key-addressed request takes before the node it
/// reaches serves it regardless (views can briefly disagree).
pub const MAX_HOPS: u8 = 3;

/// Coordinated operations (quorum reads and writes) a host node runs at
/// once: the default of [`Node`]'s `C`.
pub const COORDS: usize = 32;

/// Requests a node has out at once, waiting for their answers (a client's
/// commands among them): the default of [`Node`]'s `O`. Hosts and clients
/// keep more, to fill a wider link window (see `HOST_OPS`).
pub const OPS: usize = 64;

/// Requests in flight hosts and clients keep: enough to fill a link window
/// ([`HOST_WINDOW`] fragments) with 2 KiB chunks, two fragments each.
pub const HOST_OPS: usize = 128;
const FORWARDS: usize = 64;
const STRANGERS: usize = 32;

/// Longest a received request waits for transmit room for its answer
/// (see `Engine::room_to_answer`).
const HOLD: Duration = Duration::from_millis(100);

/// Whether the node is a cluster member or a client of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A full member: probes, gossips, owns keys.
    Member,
    /// A client (the CLI, tests): not a member; talks to `contact` only.
    Client {
        /// The node that coordinates this client's requests.
        contact: SocketAddr,
    },
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's id; never 0.
    pub id: NodeId,
    /// Boot epoch: strictly greater than at any earlier start of this id.
    pub epoch: u64,
    /// The cluster key.
    pub key: ClusterKey,
    /// What the node says about itself.
    pub profile: Profile,
    /// Member or client.
    pub role: Role,
    /// SWIM settings.
    pub member: MemberConfig,
    /// Link settings.
    pub link: LinkConfig,
    /// How long an operation waits for its response.
    pub request_timeout: Duration,
    /// Replication, chunk size and clock for the file system and records.
    pub data: DataConfig,
}

/// Why a command was refused. Nothing was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandError {
    /// Too many operations in flight: wait for some to finish.
    Busy,
    /// The key or payload is too large for one message.
    TooLarge,
    /// A client has not reached its contact yet: wait for
    /// [`Event::Connected`].
    NotConnected,
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CommandError::Busy => "too many operations in flight; wait for some to finish",
            CommandError::TooLarge => "key or payload too large for one message",
            CommandError::NotConnected => "not connected to a node yet",
        })
    }
}

impl core::error::Error for CommandError {}

/// A datagram to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub dst: SocketAddr,
    /// Its length at the front of the caller's buffer.
    pub len: usize,
}

/// What became of a request this node sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// Queued on the link as this message.
    Queued(u64),
    /// The link had no room (or no address): try again later.
    NoRoom,
    /// It does not fit a message: trying again will not help.
    Unencodable,
}

/// Where a request goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// Serve it on this node.
    Here,
    /// Forward it to the key's owner.
    Forward(NodeId),
    /// No live node serves the key's pool.
    NoOwner,
}

#[derive(Clone, Copy, Debug)]
struct Op {
    id: OpId,
    deadline: Instant,
    link_msg: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Forward {
    id: u64,
    origin: NodeId,
    origin_id: u64,
    deadline: Instant,
    link_msg: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Contact {
    addr: SocketAddr,
    id: Option<NodeId>,
    hello_seq: u32,
    next_hello: Instant,
}

/// One Shoal node over store `St`: `M` member-table entries, `P` link
/// peers, `S` link slots, `B`-byte message buffers, an event queue of `E`
/// and `C` coordinated operations.
///
/// `B` bounds every message the node receives, builds or forwards; make
/// [`LinkConfig::max_message`] no larger. Host nodes keep the defaults; a
/// microcontroller picks a smaller `B` (and `E`, since an [`Event`] holding
/// a `Members` page is nearly a kilobyte) to fit its RAM. A message larger
/// than `B` is dropped on arrival and counted in [`LinkStats::no_slot`];
/// a command that does not fit answers [`CommandError::TooLarge`].
///
/// [`LinkStats::no_slot`]: crate::link::LinkStats::no_slot
pub struct Node<
    St: Storage,
    const M: usize,
    const P: usize,
    const S: usize,
    const B: usize = MAX_MESSAGE,
    const E: usize = EVENTS,
    const C: usize = COORDS,
    const O: usize = OPS,
> {
    scratch: [u8; B],
    aux: [u8; B],
    inbox: [u8; B],
    inbox_len: usize,
    engine: Engine<St, M, P, S, E, C, O>,
}

/// The node's spare buffers, lent to the engine while it works.
struct Spare<'a> {
    /// Room to build a second message while the first is in use.
    aux: &'a mut [u8],
    /// The bytes of the last response to one of this node's commands.
    inbox: &'a mut [u8],
    inbox_len: &'a mut usize,
}

struct Engine<
    St: Storage,
    const M: usize,
    const P: usize,
    const S: usize,
    const E: usize,
    const C: usize,
    const O: usize,
> {
    id: NodeId,
    sealer: Sealer,
    replay: ReplayTable<P>,
    member: Membership<M>,
    link: Link<P, S>,
    role: Role,
    contact: Option<Contact>,
    strangers: heapless::Vec<(NodeId, SocketAddr), STRANGERS>,
    ops: heapless::Vec<Op, O>,
    forwards: heapless::Vec<Forward, FORWARDS>,
    next_request: u64,
    events: heapless::Deque<Event, E>,
    request_timeout: Duration,
    stats: NodeStats,
    store: St,
    data: DataConfig,
    hlc: HlcClock,
    coords: heapless::Vec<coord::Coord, C>,
    // The tables below track messages in flight, of which the link holds
    // at most `S`: they are sized by it, so a microcontroller's stay small.
    subs: heapless::Vec<coord::Sub, S>,
    /// Answers waiting for their writes to be durable.
    held: heapless::Vec<coord::Held, S>,
    /// The flush running in the background, if any (see
    /// [`Storage::flush_begin`]).
    flushing: Option<u64>,
    // Nodes a coordinator skips (full) or tries last (slow); only a node
    // that coordinates needs them, so they are sized like its operations.
    full: heapless::Vec<(NodeId, Instant), C>,
    slow: heapless::Vec<(NodeId, Instant), C>,
    sweep: sweep::Sweep,
    probes: heapless::Vec<sweep::Probe, S>,
    handoffs: heapless::Vec<sweep::Handoff, S>,
    last_disturbance: Instant,
    expansion: Option<gc::Expansion>,
    expand_at: Option<Instant>,
    /// Since when a received request has waited for transmit room.
    stalled: Option<Instant>,
    /// A client delivered a message since the last input (it delivers one
    /// per input: see [`Node::response_data`]).
    delivered: bool,
}

impl<
    St: Storage,
    const M: usize,
    const P: usize,
    const S: usize,
    const B: usize,
    const E: usize,
    const C: usize,
    const O: usize,
> Node<St, M, P, S, B, E, C, O>
{
    /// A node that knows only itself, keeping its data in `store`. `seed`
    /// fixes every random choice it makes (probe order, gossip targets).
    pub fn new(now: Instant, config: NodeConfig, seed: u64, store: St) -> Self {
        let contact = match config.role {
            Role::Member => None,
            Role::Client { contact } => Some(Contact {
                addr: contact,
                id: None,
                hello_seq: 1,
                next_hello: now,
            }),
        };
        Node {
            scratch: [0; B],
            aux: [0; B],
            inbox: [0; B],
            inbox_len: 0,
            engine: Engine {
                id: config.id,
                sealer: Sealer::new(&config.key, config.id, config.epoch),
                replay: ReplayTable::new(),
                member: Membership::new(
                    now,
                    config.id,
                    config.epoch,
                    config.profile,
                    config.member,
                    seed,
                ),
                link: Link::new(config.link, config.epoch),
                role: config.role,
                contact,
                strangers: heapless::Vec::new(),
                ops: heapless::Vec::new(),
                forwards: heapless::Vec::new(),
                // Start somewhere random so a restarted node's request ids
                // do not repeat those of its previous life.
                next_request: seed.rotate_left(23) | 1,
                events: heapless::Deque::new(),
                request_timeout: config.request_timeout,
                stats: NodeStats::default(),
                store,
                data: config.data,
                hlc: HlcClock::new(config.id),
                coords: heapless::Vec::new(),
                subs: heapless::Vec::new(),
                held: heapless::Vec::new(),
                flushing: None,
                full: heapless::Vec::new(),
                slow: heapless::Vec::new(),
                sweep: sweep::Sweep::new(now),
                probes: heapless::Vec::new(),
                handoffs: heapless::Vec::new(),
                last_disturbance: now,
                expansion: None,
                // Index chunks queued before a restart are expanded again.
                expand_at: Some(now),
                stalled: None,
                delivered: false,
            },
        }
    }

    /// The message buffer, the spare buffers and the engine, borrowed apart.
    fn parts(&mut self) -> (&mut [u8], Spare<'_>, &mut Engine<St, M, P, S, E, C, O>) {
        let Node {
            scratch,
            aux,
            inbox,
            inbox_len,
            engine,
        } = self;
        let spare = Spare {
            aux: &mut aux[..],
            inbox: &mut inbox[..],
            inbox_len,
        };
        (&mut scratch[..], spare, engine)
    }

    /// Stops the node and hands back its store (flushed).
    pub fn into_store(mut self) -> St {
        let _ = self.engine.store.flush();
        self.engine.store
    }

    /// The node's store.
    pub fn store(&self) -> &St {
        &self.engine.store
    }

    /// The node's store, to change directly (tests, tools). Writes made
    /// here bypass replication.
    pub fn store_mut(&mut self) -> &mut St {
        &mut self.engine.store
    }

    /// The bytes that came with the last [`Event::Response`] (a chunk, a
    /// record's value, a page of entries); valid until the next input or
    /// command. A client delivers at most one response per input, so
    /// draining [`Node::poll_event`] after each input sees every
    /// response's bytes.
    pub fn response_data(&self) -> &[u8] {
        &self.inbox[..self.inbox_len]
    }

    /// Whether writes wait for [`Node::commit`].
    pub fn needs_commit(&self) -> bool {
        !self.engine.held.is_empty()
    }

    /// Group commit: releases the acknowledgements of the writes that are
    /// now durable, and starts a flush for the rest ([`Storage::flush_begin`];
    /// one with a store that syncs in the background, which this call later
    /// collects through [`Storage::flush_poll`]). Call after each batch of
    /// inputs, and whenever the store says a background flush ended.
    pub fn commit(&mut self, now: Instant) {
        let (scratch, mut spare, engine) = self.parts();
        engine.commit(now, &mut spare);
        engine.drain_internal(now, scratch, &mut spare);
    }

    /// Sends a file-system or record request (see [`Request`]) to this
    /// node's contact (clients) or serves it here (members).
    pub fn fs_request(
        &mut self,
        now: Instant,
        request: &Request<'_>,
    ) -> Result<OpId, CommandError> {
        self.request(now, Target::Here, request)
    }

    // ---- getters ----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.engine.id
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership<M> {
        &self.engine.member
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let mut s = self.engine.stats;
        s.link = *self.engine.link.stats();
        s.member = *self.engine.member.stats();
        s
    }

    /// The primary owner of `key` in `pool` in this node's current view.
    pub fn owner(&self, pool: Pool, key: &[u8]) -> Option<NodeId> {
        router::primary(self.engine.member.candidates(), pool, &KeyDigest::of(key))
    }

    /// Link fragments queued or in flight to `peer` (for status pages).
    pub fn queued_to(&self, peer: NodeId) -> usize {
        self.engine.link.outstanding(peer)
    }

    /// For a client: the contact node's id, once it answered.
    pub fn contact(&self) -> Option<NodeId> {
        self.engine.contact.and_then(|c| c.id)
    }

    // ---- commands ----

    /// Joins the cluster through `seeds`. See [`Membership::join`].
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        if self.engine.role == Role::Member {
            self.engine.member.join(now, seeds);
        }
    }

    /// Announces a voluntary leave; keep polling transmits briefly after.
    pub fn leave(&mut self, now: Instant) {
        if self.engine.role == Role::Member {
            self.engine.member.leave(now);
        }
    }

    /// Sends `payload` to the primary owner of `key` in `pool`; the outcome
    /// is an [`Event::Response`] with [`Response::Sent`] naming the owner.
    pub fn send_to_key(
        &mut self,
        now: Instant,
        pool: Pool,
        key: &[u8],
        payload: &[u8],
    ) -> Result<OpId, CommandError> {
        if key.len() > MAX_KEY {
            return Err(CommandError::TooLarge);
        }
        let target = Target::Key {
            pool,
            digest: KeyDigest::of(key),
        };
        self.request(now, target, &Request::Send { key, payload })
    }

    /// Asks the contact node (clients) or this node (members) to forget the
    /// dead member `id` ([`crate::member::Membership::forget`]).
    pub fn forget_member(&mut self, now: Instant, id: NodeId) -> Result<OpId, CommandError> {
        self.request(now, Target::Here, &Request::Forget { id })
    }

    /// Asks for a page of the member table of the contact node (clients) or
    /// of this node (members), starting at `from`.
    pub fn members_page(&mut self, now: Instant, from: u16) -> Result<OpId, CommandError> {
        self.request(now, Target::Here, &Request::Members { from })
    }

    fn request(
        &mut self,
        now: Instant,
        target: Target,
        request: &Request<'_>,
    ) -> Result<OpId, CommandError> {
        let (scratch, mut spare, engine) = self.parts();
        *spare.inbox_len = 0;
        if engine.ops.is_full() {
            return Err(CommandError::Busy);
        }
        let id = engine.take_request_id();
        let len = envelope::encode_request(scratch, id, &target, request)
            .ok_or(CommandError::TooLarge)?;
        let op = Op {
            id: OpId(id),
            deadline: now + engine.request_timeout,
            link_msg: None,
        };
        let first_hop = match engine.role {
            Role::Client { .. } => match engine.contact.and_then(|c| c.id) {
                Some(c) => Hop::Forward(c),
                None => return Err(CommandError::NotConnected),
            },
            Role::Member => engine.next_hop(&target, 0),
        };
        let _ = engine.ops.push(op);
        match first_hop {
            Hop::Here | Hop::NoOwner => {
                // Served (or refused) here: feed the request to ourselves.
                engine.serve(now, engine.id, &mut scratch[..], len, &mut spare);
            }
            Hop::Forward(peer) => match engine.link_send(now, peer, &scratch[..len]) {
                Some(m) => {
                    if let Some(o) = engine.ops.iter_mut().find(|o| o.id.0 == id) {
                        o.link_msg = Some(m);
                    }
                }
                None => {
                    engine.ops.retain(|o| o.id.0 != id);
                    return Err(CommandError::Busy);
                }
            },
        }
        engine.drain_internal(now, scratch, &mut spare);
        Ok(OpId(id))
    }

    // ---- inputs ----

    /// A datagram arrived from `src`. `data` is decrypted in place. Never
    /// panics; a bad datagram is dropped and counted in [`NodeStats::drops`].
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &mut [u8]) {
        let (scratch, mut spare, engine) = self.parts();
        *spare.inbox_len = 0;
        engine.delivered = false;
        engine.stats.datagrams_in += 1;
        engine.stats.bytes_in += data.len() as u64;
        if let Err(reason) = engine.receive(now, src, data) {
            engine.stats.drops.count(reason);
        }
        engine.drain_internal(now, scratch, &mut spare);
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (scratch, mut spare, engine) = self.parts();
        *spare.inbox_len = 0;
        engine.delivered = false;
        if engine.role == Role::Member {
            engine.member.handle_timeout(now);
        }
        engine.link.handle_timeout(now);
        engine.expire(now, &mut spare);
        engine.expire_probes(now);
        engine.sweep_tick(now, &mut spare);
        engine.expand_marks(now, &mut spare);
        engine.drain_internal(now, scratch, &mut spare);
    }

    // ---- outputs ----

    /// The next datagram to send, written to the front of `buf` (at least
    /// [`wire::MAX_DATAGRAM`] bytes).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let e = &mut self.engine;
        let t = e.poll_transmit(now, buf)?;
        e.stats.datagrams_out += 1;
        e.stats.bytes_out += t.len as u64;
        Some(t)
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let e = &self.engine;
        let mut t = e.link.poll_timeout();
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if e.role == Role::Member
            && let Some(m) = e.member.poll_timeout()
        {
            earliest(m);
        }
        if e.role == Role::Member {
            earliest(e.sweep.next_at);
        }
        for p in &e.probes {
            earliest(p.deadline);
        }
        if let Some(t) = e.expand_at {
            earliest(t);
        }
        for o in &e.ops {
            earliest(o.deadline);
        }
        for f in &e.forwards {
            earliest(f.deadline);
        }
        for c in &e.coords {
            earliest(c.deadline);
        }
        for s in &e.subs {
            earliest(s.deadline);
        }
        if let Some(c) = e.contact
            && c.id.is_none()
        {
            earliest(c.next_hello);
        }
        if let Some(since) = e.stalled {
            earliest(since + HOLD);
        }
        if self.has_undelivered() {
            earliest(Instant::ZERO);
        }
        t
    }

    /// Whether a client holds messages already received but not yet
    /// delivered (it delivers one per input, see [`Node::response_data`]):
    /// [`Node::handle_timeout`] delivers the next, and
    /// [`Node::poll_timeout`] says it is due.
    pub fn has_undelivered(&self) -> bool {
        let e = &self.engine;
        matches!(e.role, Role::Client { .. }) && e.link.peek_received().is_some()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.engine.events.pop_front()
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
    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        id
    }

    fn event(&mut self, e: Event) {
        if self.events.push_back(e).is_err() {
            self.stats.events_lost += 1;
        }
    }

    /// Where a request for `target` goes next.
    fn next_hop(&self, target: &Target, hops: u8) -> Hop {
        let Target::Key { pool, digest } = target else {
            return Hop::Here;
        };
        if self.role != Role::Member {
            return Hop::Here;
        }
        match router::primary(self.member.candidates(), *pool, digest) {
            None => Hop::NoOwner,
            Some(owner) if owner == self.id => Hop::Here,
            // Views can briefly disagree; after MAX_HOPS the request is
            // served where it is rather than bounced around.
            Some(_) if hops >= MAX_HOPS => Hop::Here,
            Some(owner) => Hop::Forward(owner),
        }
    }

    fn addr_of(&self, peer: NodeId) -> Option<SocketAddr> {
        if let Some(c) = self.contact
            && c.id == Some(peer)
        {
            return Some(c.addr);
        }
        match self.member.get(peer) {
            Some(m) if m.state() != State::Left => Some(m.profile().addr),
            _ => self
                .strangers
                .iter()
                .find(|(id, _)| *id == peer)
                .map(|(_, a)| *a),
        }
    }

    fn epoch_of(&self, peer: NodeId) -> Option<u64> {
        let heard = self.replay.epoch_of(peer);
        let gossiped = self.member.get(peer).map(|m| m.record.version.epoch);
        heard.max(gossiped)
    }

    /// Builds request `id` in the spare buffer and queues it to `node`.
    fn send_request(
        &mut self,
        now: Instant,
        node: NodeId,
        id: u64,
        request: &Request<'_>,
        spare: &mut Spare<'_>,
    ) -> Sent {
        let Some(len) = envelope::encode_request(spare.aux, id, &Target::Here, request) else {
            return Sent::Unencodable;
        };
        let aux = core::mem::take(&mut spare.aux);
        let sent = self.link_send(now, node, &aux[..len]);
        spare.aux = aux;
        sent.map_or(Sent::NoRoom, Sent::Queued)
    }

    fn link_send(&mut self, now: Instant, peer: NodeId, msg: &[u8]) -> Option<u64> {
        let epoch = self.epoch_of(peer)?;
        let id = self.link.send(now, peer, epoch, msg).ok().map(|m| m.0)?;
        // A microcontroller's NIC and link slots take a few fragments at a
        // time, whatever window this node uses with hosts.
        if self
            .member
            .get(peer)
            .is_some_and(|m| m.profile().kind == crate::NodeKind::Mcu)
        {
            self.link.set_window(peer, MCU_WINDOW);
        }
        Some(id)
    }

    fn receive(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &mut [u8],
    ) -> Result<(), DropReason> {
        let (header, body) = self.sealer.open(data)?;
        if header.sender == self.id || header.sender == NodeId(0) {
            return Err(DropReason::Malformed);
        }
        if self
            .replay
            .check(header.sender, header.epoch, header.counter)
            == ReplayVerdict::Replay
        {
            return Err(DropReason::Replay);
        }
        if self.member.get(header.sender).is_none() {
            self.remember_stranger(header.sender, src);
        }
        match header.kind {
            Kind::Datagram => {
                let msg = Message::decode(body).ok_or(DropReason::BadBody)?;
                match self.role {
                    Role::Member => self.member.handle_message(now, header.sender, src, msg),
                    Role::Client { .. } => self.client_hello_reply(header.sender, &msg),
                }
            }
            Kind::Link => self
                .link
                .handle_frame(now, header.sender, header.epoch, body)
                .map_err(|_| DropReason::BadBody)?,
        }
        Ok(())
    }

    fn remember_stranger(&mut self, id: NodeId, src: SocketAddr) {
        if let Some(s) = self.strangers.iter_mut().find(|(s, _)| *s == id) {
            s.1 = src;
            return;
        }
        if self.strangers.is_full() {
            self.strangers.remove(0);
        }
        let _ = self.strangers.push((id, src));
    }

    fn client_hello_reply(&mut self, from: NodeId, msg: &Message) {
        if let (Some(c), Message::Ack { seq, .. }) = (self.contact.as_mut(), msg)
            && c.id.is_none()
            && *seq == c.hello_seq
        {
            c.id = Some(from);
            self.event(Event::Connected(from));
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let body_end = buf.len().min(wire::MAX_DATAGRAM - wire::TAG_LEN);
        // A client's hello: a ping to whoever listens at the contact address.
        if let Some(c) = self.contact.as_mut()
            && c.id.is_none()
            && now >= c.next_hello
        {
            c.next_hello = now + Duration::from_millis(500);
            let hello = Message::Ping {
                seq: c.hello_seq,
                target: NodeId(0),
                gossip: Default::default(),
            };
            let dst = c.addr;
            if let Some(len) = hello.encode(buf.get_mut(HEADER_LEN..body_end)?)
                && let Ok(n) = self.sealer.seal(Kind::Datagram, buf, len)
            {
                return Some(Transmit { dst, len: n });
            }
        }
        if self.role == Role::Member {
            while let Some((dst, len)) = self
                .member
                .poll_transmit(buf.get_mut(HEADER_LEN..body_end)?)
            {
                if let Ok(n) = self.sealer.seal(Kind::Datagram, buf, len) {
                    return Some(Transmit { dst, len: n });
                }
            }
        }
        let frame_end = body_end.min(HEADER_LEN + MAX_FRAME);
        while let Some((peer, len)) = self
            .link
            .poll_transmit(now, buf.get_mut(HEADER_LEN..frame_end)?)
        {
            let Some(dst) = self.addr_of(peer) else {
                self.stats.unaddressable += 1;
                continue;
            };
            if let Ok(n) = self.sealer.seal(Kind::Link, buf, len) {
                return Some(Transmit { dst, len: n });
            }
        }
        None
    }

    /// Processes what the inputs produced inside the node: delivered link
    /// messages, link and member events.
    fn drain_internal(&mut self, now: Instant, scratch: &mut [u8], spare: &mut Spare<'_>) {
        let client = matches!(self.role, Role::Client { .. });
        loop {
            let Some(first) = self.link.peek_received() else {
                self.stalled = None;
                break;
            };
            // A client keeps the bytes of one response at a time
            // (`response_data`), and one datagram may complete several:
            // the others wait in the link for the next input (a command
            // between the two delivers none).
            if client && self.delivered {
                break;
            }
            let request = Prefix::parse(first).is_some_and(|p| p.kind == EnvelopeKind::Request);
            if request && !self.room_to_answer(now) {
                break;
            }
            let Some((peer, len)) = self.link.poll_received(scratch) else {
                break;
            };
            self.on_message(now, peer, scratch, len, spare);
            self.delivered = client;
        }
        while let Some(e) = self.link.poll_event() {
            if let LinkEvent::Failed { id, .. } = e {
                self.on_link_failed(now, id.0, spare);
            }
        }
        while let Some(e) = self.member.poll_event() {
            if let MemberEvent::Dead(id) | MemberEvent::Left(id) = e {
                self.link.forget(id);
            }
            if !matches!(e, MemberEvent::Suspect(_)) {
                self.sweep_soon(now);
            }
            self.disturbed(now);
            self.event(Event::Member(e));
        }
    }

    /// Whether to serve the next received request now.
    ///
    /// A request served while the link has no room for its answer loses
    /// the answer, and its sender waits out a timeout for nothing. A node
    /// with few transmit slots (a microcontroller has four) runs out of
    /// them whenever requests arrive faster than its answers are
    /// acknowledged. So a request is served only while the link can queue
    /// the largest answer; until then it stays in the link, holding its
    /// receive slots, so that the sender's next fragments wait for room
    /// (they are retransmitted): backpressure. Acknowledgements free
    /// transmit slots without any message being taken, so the wait
    /// normally ends within a round trip. It is bounded by [`HOLD`] all the
    /// same: two nodes whose answers wait for room in each other's receive
    /// slots, full of requests, would otherwise wait for good. After it,
    /// the waiting requests are served as before, room or not.
    fn room_to_answer(&mut self, now: Instant) -> bool {
        let answer = self.link.config().max_message.div_ceil(FRAGMENT).max(1);
        // Held write acknowledgements take a fragment each at the next commit.
        if self.link.tx_room().saturating_sub(self.held.len()) >= answer {
            self.stalled = None;
            return true;
        }
        let since = *self.stalled.get_or_insert(now);
        now.saturating_since(since) >= HOLD
    }

    fn on_link_failed(&mut self, now: Instant, msg: u64, spare: &mut Spare<'_>) {
        if let Some(i) = self.subs.iter().position(|s| s.link_msg == Some(msg)) {
            let sub = self.subs.swap_remove(i);
            self.sub_failed(now, sub, spare);
        }
        if let Some(i) = self.ops.iter().position(|o| o.link_msg == Some(msg)) {
            let op = self.ops.swap_remove(i);
            self.event(Event::Failed {
                op: op.id,
                reason: OpFailure::Undeliverable,
            });
        }
        if let Some(i) = self.forwards.iter().position(|f| f.link_msg == Some(msg)) {
            let f = self.forwards.swap_remove(i);
            self.reply_error(now, f.origin, f.origin_id, RemoteError::Unreachable, spare);
        }
    }

    fn expire(&mut self, now: Instant, spare: &mut Spare<'_>) {
        self.expire_coords(now, spare);
        let mut i = 0;
        while i < self.ops.len() {
            if self.ops[i].deadline <= now {
                let op = self.ops.swap_remove(i);
                self.event(Event::Failed {
                    op: op.id,
                    reason: OpFailure::TimedOut,
                });
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.forwards.len() {
            if self.forwards[i].deadline <= now {
                let f = self.forwards.swap_remove(i);
                self.reply_error(now, f.origin, f.origin_id, RemoteError::Unreachable, spare);
            } else {
                i += 1;
            }
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        peer: NodeId,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        let Some(prefix) = buf.get(..len).and_then(Prefix::parse) else {
            self.stats.drops.count(DropReason::BadBody);
            return;
        };
        match prefix.kind {
            EnvelopeKind::Request => self.serve(now, peer, buf, len, spare),
            EnvelopeKind::Response => self.on_response(now, peer, prefix.id, buf, len, spare),
        }
    }

    /// Serves or forwards the request envelope in `buf[..len]` from `from`.
    fn serve(
        &mut self,
        now: Instant,
        from: NodeId,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        let Some(prefix) = Prefix::parse(&buf[..len]) else {
            return;
        };
        let Some((target, request)) = envelope::decode_request(&buf[PREFIX_LEN..len]) else {
            self.reply_error(now, from, prefix.id, RemoteError::Malformed, spare);
            return;
        };
        match self.next_hop(&target, prefix.hops) {
            Hop::Here => {}
            Hop::Forward(owner) => return self.forward(now, from, prefix, owner, buf, len, spare),
            Hop::NoOwner => {
                return self.reply_error(now, from, prefix.id, RemoteError::NoOwner, spare);
            }
        }
        let response = match request {
            Request::Send { key, payload } => {
                let digest = KeyDigest::of(key);
                self.event(Event::KeyMessage {
                    from,
                    key: digest,
                    len: payload.len(),
                });
                Response::Sent {
                    by: self.id,
                    hops: prefix.hops,
                }
            }
            Request::Members { from: start } => self.members_response(start),
            Request::Forget { id } => match self.member.forget(id) {
                Ok(()) => Response::Forgotten,
                Err(e) => Response::Error(match e {
                    ForgetError::Unknown => RemoteError::UnknownMember,
                    ForgetError::NotDead => RemoteError::NotDead,
                    ForgetError::IsSelf => RemoteError::IsSelf,
                }),
            },
            other => return self.serve_data(now, from, prefix.id, other, spare),
        };
        self.reply(now, from, prefix.id, &response, spare);
    }

    fn members_response(&self, from: u16) -> Response {
        let mut records = heapless::Vec::new();
        let all =
            core::iter::once(self.member.local()).chain(self.member.members().map(|m| &m.record));
        let mut total = 0u16;
        for (i, r) in all.enumerate() {
            total = total.saturating_add(1);
            if i >= usize::from(from) && !records.is_full() {
                let _ = records.push(r.clone());
            }
        }
        Response::Members { records, total }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Instant,
        origin: NodeId,
        prefix: Prefix,
        owner: NodeId,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        if self.forwards.is_full() {
            self.stats.busy += 1;
            self.reply_error(now, origin, prefix.id, RemoteError::Busy, spare);
            return;
        }
        let id = self.take_request_id();
        let patched = Prefix {
            kind: EnvelopeKind::Request,
            id,
            hops: prefix.hops.saturating_add(1),
        };
        if patched.emit(buf).is_none() {
            return;
        }
        match self.link_send(now, owner, &buf[..len]) {
            Some(m) => {
                let _ = self.forwards.push(Forward {
                    id,
                    origin,
                    origin_id: prefix.id,
                    deadline: now + self.request_timeout,
                    link_msg: Some(m),
                });
            }
            None => {
                self.stats.busy += 1;
                self.reply_error(now, origin, prefix.id, RemoteError::Busy, spare);
            }
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        peer: NodeId,
        id: u64,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        if let Some(i) = self.forwards.iter().position(|f| f.id == id) {
            let f = self.forwards.swap_remove(i);
            let patched = Prefix {
                kind: EnvelopeKind::Response,
                id: f.origin_id,
                hops: 0,
            };
            if patched.emit(buf).is_some() {
                self.deliver_response(now, f.origin, buf, len, spare);
            }
            return;
        }
        if let Some(i) = self
            .probes
            .iter()
            .position(|p| p.id == id && p.node == peer)
        {
            let probe = self.probes.swap_remove(i);
            return self.probe_answered(now, probe, &buf[..len], spare);
        }
        if let Some(i) = self.subs.iter().position(|s| s.id == id && s.node == peer) {
            let sub = self.subs.swap_remove(i);
            return self.sub_answered(now, sub, buf, len, spare);
        }
        let Some(i) = self.ops.iter().position(|o| o.id.0 == id) else {
            return;
        };
        let op = self.ops.swap_remove(i);
        let event = match envelope::decode_response(&buf[PREFIX_LEN..len]) {
            Some((Response::Error(e), _)) => Event::Failed {
                op: op.id,
                reason: OpFailure::Remote(e),
            },
            Some((response, data)) => {
                // Fits: both buffers are `B` bytes.
                let n = data.len().min(spare.inbox.len());
                spare.inbox[..n].copy_from_slice(&data[..n]);
                *spare.inbox_len = n;
                Event::Response {
                    op: op.id,
                    response,
                }
            }
            None => Event::Failed {
                op: op.id,
                reason: OpFailure::Remote(RemoteError::Malformed),
            },
        };
        self.event(event);
    }

    /// Sends a response envelope already in `buf[..len]` to `to` (or takes
    /// it here when `to` is this node).
    fn deliver_response(
        &mut self,
        now: Instant,
        to: NodeId,
        buf: &mut [u8],
        len: usize,
        spare: &mut Spare<'_>,
    ) {
        if to == self.id {
            if let Some(p) = Prefix::parse(&buf[..len]) {
                self.on_response(now, to, p.id, buf, len, spare);
            }
            return;
        }
        if self.link_send(now, to, &buf[..len]).is_some() {
            return;
        }
        self.stats.busy += 1;
        // No room for the answer (a chunk is many fragments): say `Busy` in
        // one fragment instead, so the asker retries now rather than waiting
        // out its timeout.
        if len > crate::link::FRAGMENT
            && let Some(p) = Prefix::parse(&buf[..len])
        {
            let mut small = [0u8; 32];
            if let Some(n) =
                envelope::encode_response(&mut small, p.id, &Response::Error(RemoteError::Busy))
            {
                let _ = self.link_send(now, to, &small[..n]);
            }
        }
    }

    fn reply(
        &mut self,
        now: Instant,
        to: NodeId,
        id: u64,
        response: &Response,
        spare: &mut Spare<'_>,
    ) {
        let mut buf = [0u8; 4096];
        if let Some(len) = envelope::encode_response(&mut buf, id, response) {
            self.deliver_response(now, to, &mut buf, len, spare);
        }
    }

    fn reply_error(
        &mut self,
        now: Instant,
        to: NodeId,
        id: u64,
        e: RemoteError,
        spare: &mut Spare<'_>,
    ) {
        self.reply(now, to, id, &Response::Error(e), spare);
    }
}

#[cfg(test)]
mod tests;
