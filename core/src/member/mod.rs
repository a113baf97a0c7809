//! SWIM membership: who is in the cluster, and whether they are alive.
//!
//! Each node probes one member every `probe_interval`: a direct ping, then
//! after `probe_timeout` a second ping plus ping-requests through
//! `indirect_checks` other members. A member that answers none of them by the
//! end of the interval becomes *suspect*; unless it refutes (by gossiping a
//! higher incarnation) within the suspicion timeout, which grows with the
//! cluster's size, it is declared *dead*. Updates spread by piggybacking on
//! pings and acks and by gossip rounds, each sent a bounded number of times.
//! A periodic push-pull sync of the whole table with one random member (dead
//! ones included, for a while) makes restarted and partitioned nodes converge.
//!
//! Records are versioned by `(epoch, incarnation)`: a restarted node's higher
//! epoch beats anything said about its previous life.
//!
//! [`Membership`] is sans-IO. Call order: construct, [`Membership::join`];
//! then feed [`Membership::handle_message`] and [`Membership::handle_timeout`]
//! (when [`Membership::poll_timeout`] is due), and after each input drain
//! [`Membership::poll_transmit`] and [`Membership::poll_event`].

mod broadcast;
mod config;
mod message;
mod record;

pub use broadcast::Broadcasts;
pub use config::MemberConfig;
pub use message::{Gossip, MAX_GOSSIP, Message, SYNC_PAGE};
pub use record::{Member, Profile, Record, State, Update, Version};

use core::net::SocketAddr;

use crate::rng::Rng;
use crate::router::Candidate;
use crate::{Instant, NodeId};

/// Most seed addresses a node joins through.
pub const MAX_SEEDS: usize = 8;
const MAX_RELAYS: usize = 16;
const OUTBOX: usize = 64;
const EVENTS: usize = 64;

/// A change in the member table, for the node to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemberEvent {
    /// A member joined, came back, or restarted with a new epoch.
    Up(NodeId),
    /// A member is suspected of having failed.
    Suspect(NodeId),
    /// A member was declared dead.
    Dead(NodeId),
    /// A member left voluntarily.
    Left(NodeId),
}

/// Why [`Membership::forget`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ForgetError {
    /// No such member in this node's table.
    Unknown,
    /// The member is alive or suspect here: only a dead one can be forgotten.
    NotDead,
    /// A node cannot forget itself (stop it cleanly instead: it leaves).
    IsSelf,
}

/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemberStats {
    /// Probes started.
    pub probes: u64,
    /// Probes that fell back to indirect checks.
    pub indirect_probes: u64,
    /// Suspicions this node raised.
    pub suspicions: u64,
    /// Times this node refuted suspicion of itself.
    pub refutations: u64,
    /// New members refused because the table was full of live members.
    pub table_full: u64,
    /// Messages not sent because the outbox was full.
    pub outbox_full: u64,
    /// Events lost because nobody drained them.
    pub events_lost: u64,
}

#[derive(Clone, Copy, Debug)]
enum Intent {
    Ping {
        to: SocketAddr,
        seq: u32,
        target: NodeId,
    },
    Ack {
        to: SocketAddr,
        seq: u32,
    },
    PingReq {
        to: SocketAddr,
        seq: u32,
        target: NodeId,
        addr: SocketAddr,
    },
    Gossip {
        to: SocketAddr,
    },
    Sync {
        to: SocketAddr,
        reply: bool,
        from: usize,
    },
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    target: NodeId,
    seq: u32,
    started: Instant,
    indirect_sent: bool,
    acked: bool,
}

#[derive(Clone, Copy, Debug)]
struct Relay {
    seq: u32,
    requester: SocketAddr,
    requester_seq: u32,
    deadline: Instant,
}

/// The SWIM state machine for one node, tracking up to `N` other members.
pub struct Membership<const N: usize> {
    config: MemberConfig,
    rng: Rng,
    local: Record,
    members: heapless::Vec<Member, N>,
    broadcasts: Broadcasts<N>,
    probe: Option<Probe>,
    next_probe: Instant,
    probe_order: heapless::Vec<NodeId, N>,
    relays: heapless::Vec<Relay, MAX_RELAYS>,
    next_seq: u32,
    next_gossip: Instant,
    next_sync: Instant,
    seeds: heapless::Vec<SocketAddr, MAX_SEEDS>,
    next_join: Option<Instant>,
    outbox: heapless::Deque<Intent, OUTBOX>,
    events: heapless::Deque<MemberEvent, EVENTS>,
    stats: MemberStats,
    /// Set while handling a message whose sender holds stale news.
    correct_sender: bool,
    /// Quick syncs left after joining, so a lost sync page costs seconds.
    early_syncs: u8,
}

impl<const N: usize> Membership<N> {
    /// A membership that knows only itself, alive at `(epoch, 0)`.
    pub fn new(
        now: Instant,
        id: NodeId,
        epoch: u64,
        profile: Profile,
        config: MemberConfig,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        // Spread the first probe so nodes started together do not probe in lockstep.
        let jitter = rng.below(config.probe_interval.as_micros() as usize) as u64;
        Membership {
            config,
            rng,
            local: Record {
                id,
                profile,
                version: Version {
                    epoch,
                    incarnation: 0,
                },
                state: State::Alive,
            },
            members: heapless::Vec::new(),
            broadcasts: Broadcasts::new(),
            probe: None,
            next_probe: now + crate::Duration::from_micros(jitter),
            probe_order: heapless::Vec::new(),
            relays: heapless::Vec::new(),
            next_seq: 1,
            next_gossip: now + config.gossip_interval,
            next_sync: now + config.sync_interval,
            seeds: heapless::Vec::new(),
            next_join: None,
            outbox: heapless::Deque::new(),
            events: heapless::Deque::new(),
            stats: MemberStats::default(),
            correct_sender: false,
            early_syncs: 0,
        }
    }

    // ---- getters ----

    /// This node's own record.
    pub fn local(&self) -> &Record {
        &self.local
    }

    /// Every other member this node knows of, in any state.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter()
    }

    /// One member by id.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id() == id)
    }

    /// The advertised address of `id` (this node's own too).
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.local.id {
            return Some(self.local.profile.addr);
        }
        self.get(id).map(|m| m.record.profile.addr)
    }

    /// Live members (alive or suspect), this node included, as the router
    /// sees them.
    pub fn candidates(&self) -> impl Iterator<Item = Candidate> + '_ {
        let me = core::iter::once(&self.local).filter(|r| r.state.is_live());
        me.chain(
            self.members
                .iter()
                .map(|m| &m.record)
                .filter(|r| r.state.is_live()),
        )
        .map(|r| Candidate {
            id: r.id,
            weight: r.profile.weight,
            pools: r.profile.pools,
        })
    }

    /// Live members, this node included.
    pub fn live_count(&self) -> usize {
        1 + self.members.iter().filter(|m| m.state().is_live()).count()
    }

    /// Counters.
    pub fn stats(&self) -> &MemberStats {
        &self.stats
    }

    /// The member this node is probing now, if any.
    pub fn probing(&self) -> Option<NodeId> {
        self.probe.map(|p| p.target)
    }

    /// Whether this node has heard from at least one other member.
    pub fn is_joined(&self) -> bool {
        self.next_join.is_none()
    }

    // ---- commands ----

    /// Starts joining through `seeds` (addresses of any current members).
    /// Retries every `join_retry` until a member answers. Seeds equal to this
    /// node's own address are skipped; with no other seeds the node starts a
    /// new cluster.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        self.seeds.clear();
        for s in seeds {
            if *s != self.local.profile.addr && !self.seeds.contains(s) {
                let _ = self.seeds.push(*s);
            }
        }
        if self.seeds.is_empty() {
            self.next_join = None;
        } else {
            self.next_join = Some(now);
            self.send_join();
        }
    }

    /// Announces a voluntary leave. Keep driving the node for a few gossip
    /// intervals so the announcement spreads, then stop it.
    pub fn leave(&mut self, now: Instant) {
        self.local.version.incarnation = self.local.version.incarnation.saturating_add(1);
        self.local.state = State::Left;
        self.broadcasts.push(self.local.id);
        self.next_join = None;
        self.gossip_round(now, self.config.gossip_nodes.saturating_mul(2));
    }

    /// Declares the dead member `id` gone for good, as if it had left: its
    /// record turns `Left` under the next incarnation and spreads. Only an
    /// operator knows a dead node will not come back; the cluster then stops
    /// waiting for it (a dead member holds back GC, see `docs/fs.md`). A
    /// node that was forgotten but does come back overrides this: a restart
    /// brings a new boot epoch, and a running node refutes it.
    pub fn forget(&mut self, id: NodeId) -> Result<(), ForgetError> {
        if id == self.local.id {
            return Err(ForgetError::IsSelf);
        }
        let m = self
            .members
            .iter_mut()
            .find(|m| m.id() == id)
            .ok_or(ForgetError::Unknown)?;
        match m.record.state {
            State::Dead => {}
            State::Left => return Ok(()),
            State::Alive | State::Suspect => return Err(ForgetError::NotDead),
        }
        m.record.version.incarnation = m.record.version.incarnation.saturating_add(1);
        m.record.state = State::Left;
        self.broadcasts.push(id);
        self.event(MemberEvent::Left(id));
        Ok(())
    }

    /// Changes what this node says about itself (weight, pools, tags) and
    /// spreads it.
    pub fn set_profile(&mut self, profile: Profile) {
        self.local.profile = profile;
        self.local.version.incarnation = self.local.version.incarnation.saturating_add(1);
        self.broadcasts.push(self.local.id);
    }

    // ---- inputs ----

    /// A membership message from `from`, whose datagram came from `src`.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, src: SocketAddr, msg: Message) {
        self.correct_sender = false;
        self.dispatch(now, from, src, msg);
        if self.correct_sender {
            // The sender believes something older than we know (that we
            // failed, or a stale suspicion of another member): answer it at
            // once rather than waiting for gossip to find it.
            let to = self.reply_addr(from, src);
            self.emit(Intent::Gossip { to });
        }
    }

    fn dispatch(&mut self, now: Instant, from: NodeId, src: SocketAddr, msg: Message) {
        match msg {
            Message::Ping {
                seq,
                target,
                gossip,
            } => {
                self.merge_all(now, gossip.iter());
                if target == self.local.id || target == NodeId(0) {
                    let to = self.reply_addr(from, src);
                    self.emit(Intent::Ack { to, seq });
                }
            }
            Message::Ack { seq, gossip } => {
                self.merge_all(now, gossip.iter());
                self.handle_ack(seq);
            }
            Message::PingReq {
                seq,
                target,
                addr,
                gossip,
            } => {
                self.merge_all(now, gossip.iter());
                let requester = self.reply_addr(from, src);
                let my_seq = self.take_seq();
                let relay = Relay {
                    seq: my_seq,
                    requester,
                    requester_seq: seq,
                    deadline: now + self.config.probe_timeout,
                };
                if self.relays.push(relay).is_ok() {
                    self.emit(Intent::Ping {
                        to: addr,
                        seq: my_seq,
                        target,
                    });
                }
            }
            Message::Gossip { gossip } => self.merge_all(now, gossip.iter()),
            Message::Sync { reply, records } => {
                for r in records.iter() {
                    // As memberlist does: a peer's "dead" only makes us
                    // suspect, so a member we still hear from can refute.
                    let update = match r.state {
                        State::Dead => Update::Suspect {
                            id: r.id,
                            version: r.version,
                        },
                        _ => Update::from_record(r),
                    };
                    self.merge(now, &update);
                }
                if self.next_join.is_some() && from != self.local.id {
                    self.next_join = None;
                    self.early_syncs = 2;
                    self.next_sync = now + self.config.join_retry;
                }
                if reply {
                    let to = self.reply_addr(from, src);
                    self.emit(Intent::Sync {
                        to,
                        reply: false,
                        from: 0,
                    });
                }
            }
        }
    }

    /// Runs whatever timers are due at `now`. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.next_join
            && now >= at
        {
            self.send_join();
            self.next_join = Some(now + self.config.join_retry);
        }
        if let Some(p) = self.probe
            && !p.acked
            && !p.indirect_sent
            && now >= p.started + self.config.probe_timeout
        {
            self.indirect_probe(p);
        }
        if now >= self.next_probe {
            self.next_probe = now + self.config.probe_interval;
            if let Some(p) = self.probe.take()
                && !p.acked
            {
                self.suspect(now, p.target);
            }
            self.start_probe(now);
        }
        self.expire_suspicions(now);
        self.relays.retain(|r| r.deadline > now);
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            if !self.broadcasts.is_empty() {
                self.gossip_round(now, self.config.gossip_nodes);
            }
        }
        if now >= self.next_sync {
            // Jittered (0.5–1.5 intervals) so nodes started together do not
            // sync in lockstep, which would leave long quiet gaps.
            let interval = self.config.sync_interval.as_micros() as usize;
            let jitter = interval / 2 + self.rng.below(interval.max(1));
            self.next_sync = now + crate::Duration::from_micros(jitter as u64);
            if self.early_syncs > 0 {
                self.early_syncs -= 1;
                self.next_sync = now + self.config.join_retry;
            }
            self.sync_round(now);
        }
    }

    // ---- outputs ----

    /// The next message to send: encodes its body into `buf` and returns
    /// the destination and length.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(intent) = self.outbox.pop_front() {
            let (to, msg) = self.message_for(intent);
            if let Some(len) = msg.encode(buf) {
                return Some((to, len));
            }
        }
        None
    }

    /// When [`Membership::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_probe.min(self.next_gossip).min(self.next_sync);
        if let Some(j) = self.next_join {
            t = t.min(j);
        }
        if let Some(p) = self.probe
            && !p.acked
            && !p.indirect_sent
        {
            t = t.min(p.started + self.config.probe_timeout);
        }
        for m in &self.members {
            if let Some(d) = m.suspect_deadline {
                t = t.min(d);
            }
        }
        for r in &self.relays {
            t = t.min(r.deadline);
        }
        Some(t)
    }

    /// The next change in the member table.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    fn emit(&mut self, intent: Intent) {
        if self.outbox.push_back(intent).is_err() {
            self.stats.outbox_full += 1;
        }
    }

    fn event(&mut self, e: MemberEvent) {
        if self.events.push_back(e).is_err() {
            self.stats.events_lost += 1;
        }
    }

    /// Members are answered at their advertised address; only strangers
    /// (clients, nodes not yet merged) at the datagram's source.
    fn reply_addr(&self, from: NodeId, src: SocketAddr) -> SocketAddr {
        match self.get(from) {
            Some(m) if m.state() != State::Left => m.record.profile.addr,
            _ => src,
        }
    }

    fn send_join(&mut self) {
        for i in 0..self.seeds.len() {
            let to = self.seeds[i];
            self.emit(Intent::Sync {
                to,
                reply: true,
                from: 0,
            });
        }
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let Some(to) = self.addr_of(target) else {
            return;
        };
        let seq = self.take_seq();
        self.stats.probes += 1;
        self.probe = Some(Probe {
            target,
            seq,
            started: now,
            indirect_sent: false,
            acked: false,
        });
        self.emit(Intent::Ping { to, seq, target });
    }

    /// Round-robin over a shuffled list of live members, reshuffled each
    /// round (SWIM's time-bounded completeness).
    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while let Some(id) = self.probe_order.pop() {
                if self.get(id).is_some_and(|m| m.state().is_live()) {
                    return Some(id);
                }
            }
            for m in &self.members {
                if m.state().is_live() {
                    let _ = self.probe_order.push(m.id());
                }
            }
            let mut order = core::mem::take(&mut self.probe_order);
            self.rng.shuffle(&mut order);
            self.probe_order = order;
        }
        None
    }

    /// Puts a new (or returning) member at a random place in the current
    /// probe round, as memberlist does, so it is probed this round rather
    /// than after everyone else's round ends.
    fn add_to_probe_order(&mut self, id: NodeId) {
        if self.probe_order.contains(&id) {
            return;
        }
        let at = self.rng.below(self.probe_order.len() + 1);
        if self.probe_order.insert(at, id).is_err() {
            // Full: the member joins at the next reshuffle.
        }
    }

    fn indirect_probe(&mut self, p: Probe) {
        if let Some(pr) = self.probe.as_mut() {
            pr.indirect_sent = true;
        }
        self.stats.indirect_probes += 1;
        let Some(addr) = self.addr_of(p.target) else {
            return;
        };
        // A second direct try, then ask k random others.
        self.emit(Intent::Ping {
            to: addr,
            seq: p.seq,
            target: p.target,
        });
        let mut helpers = heapless::Vec::<NodeId, N>::new();
        for m in &self.members {
            if m.state() == State::Alive && m.id() != p.target {
                let _ = helpers.push(m.id());
            }
        }
        self.rng.shuffle(&mut helpers);
        for &h in helpers
            .iter()
            .take(usize::from(self.config.indirect_checks))
        {
            if let Some(to) = self.addr_of(h) {
                self.emit(Intent::PingReq {
                    to,
                    seq: p.seq,
                    target: p.target,
                    addr,
                });
            }
        }
    }

    fn handle_ack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut()
            && p.seq == seq
        {
            p.acked = true;
            return;
        }
        if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
            let r = self.relays.swap_remove(i);
            self.emit(Intent::Ack {
                to: r.requester,
                seq: r.requester_seq,
            });
        }
    }

    fn suspect(&mut self, now: Instant, id: NodeId) {
        let Some(version) = self
            .get(id)
            .filter(|m| m.state() == State::Alive)
            .map(|m| m.record.version)
        else {
            return;
        };
        self.stats.suspicions += 1;
        let update = Update::Suspect { id, version };
        self.merge(now, &update);
        // Tell the suspect directly, so it can refute at once.
        if let Some(to) = self.addr_of(id) {
            self.emit(Intent::Gossip { to });
        }
    }

    fn expire_suspicions(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.members.len() {
            let m = &self.members[i];
            if let Some(d) = m.suspect_deadline
                && now >= d
            {
                let update = Update::Dead {
                    id: m.id(),
                    version: m.record.version,
                };
                self.merge(now, &update);
            }
            i += 1;
        }
    }

    /// Live members and those dead for less than `gossip_to_dead`: the
    /// ones gossip and sync reach.
    fn reachable(&self, now: Instant) -> heapless::Vec<NodeId, N> {
        let mut out = heapless::Vec::new();
        for m in &self.members {
            let recently_dead = m.state() == State::Dead
                && now.saturating_since(m.since) < self.config.gossip_to_dead;
            if m.state().is_live() || recently_dead {
                let _ = out.push(m.id());
            }
        }
        out
    }

    fn gossip_round(&mut self, now: Instant, fanout: u8) {
        let mut targets = self.reachable(now);
        self.rng.shuffle(&mut targets);
        for &t in targets.iter().take(usize::from(fanout)) {
            if let Some(to) = self.addr_of(t) {
                self.emit(Intent::Gossip { to });
            }
        }
    }

    fn sync_round(&mut self, now: Instant) {
        let has_dead = self.members.iter().any(|m| {
            m.state() == State::Dead
                && now.saturating_since(m.since) < self.config.reconnect_timeout
        });
        let reconnect = has_dead && self.early_syncs == 0 && self.rng.below(2) == 0;
        let mut targets = heapless::Vec::<NodeId, N>::new();
        for m in &self.members {
            let wanted = if reconnect {
                m.state() == State::Dead
                    && now.saturating_since(m.since) < self.config.reconnect_timeout
            } else {
                m.state().is_live()
            };
            if wanted {
                let _ = targets.push(m.id());
            }
        }
        let Some(&t) = targets.get(self.rng.below(targets.len())) else {
            return;
        };
        if let Some(to) = self.addr_of(t) {
            self.emit(Intent::Sync {
                to,
                reply: true,
                from: 0,
            });
        }
    }

    fn gossip(&mut self) -> Gossip {
        let limit = self.config.retransmit_limit(self.live_count());
        let mut ids = heapless::Vec::<NodeId, MAX_GOSSIP>::new();
        self.broadcasts.take(limit, &mut ids);
        let mut out = Gossip::new();
        for id in ids {
            let record = if id == self.local.id {
                Some(&self.local)
            } else {
                self.get(id).map(|m| &m.record)
            };
            if let Some(r) = record {
                let _ = out.push(Update::from_record(r));
            }
        }
        out
    }

    fn message_for(&mut self, intent: Intent) -> (SocketAddr, Message) {
        match intent {
            Intent::Ping { to, seq, target } => (
                to,
                Message::Ping {
                    seq,
                    target,
                    gossip: self.gossip(),
                },
            ),
            Intent::Ack { to, seq } => (
                to,
                Message::Ack {
                    seq,
                    gossip: self.gossip(),
                },
            ),
            Intent::PingReq {
                to,
                seq,
                target,
                addr,
            } => (
                to,
                Message::PingReq {
                    seq,
                    target,
                    addr,
                    gossip: self.gossip(),
                },
            ),
            Intent::Gossip { to } => (
                to,
                Message::Gossip {
                    gossip: self.gossip(),
                },
            ),
            Intent::Sync { to, reply, from } => {
                let mut records = heapless::Vec::new();
                // Index 0 is this node; 1.. are the table.
                let total = self.members.len() + 1;
                let mut i = from;
                while i < total && !records.is_full() {
                    let r = if i == 0 {
                        self.local.clone()
                    } else {
                        self.members[i - 1].record.clone()
                    };
                    let _ = records.push(r);
                    i += 1;
                }
                if i < total {
                    // More pages follow; `reply` rides on the first only.
                    self.emit(Intent::Sync {
                        to,
                        reply: false,
                        from: i,
                    });
                }
                (to, Message::Sync { reply, records })
            }
        }
    }

    fn merge_all<'a>(&mut self, now: Instant, updates: impl Iterator<Item = &'a Update>) {
        for u in updates {
            self.merge(now, u);
        }
    }

    /// Applies one update by SWIM's precedence rules.
    fn merge(&mut self, now: Instant, update: &Update) {
        let id = update.id();
        if id == self.local.id {
            self.merge_about_self(update);
            return;
        }
        if id == NodeId(0) {
            return;
        }
        let suspicion = self.config.suspicion_timeout(self.live_count());
        let Some(i) = self.members.iter().position(|m| m.id() == id) else {
            // Unknown member: only a full record can introduce it.
            let (version, state, profile) = match update {
                Update::Alive {
                    version, profile, ..
                } => (*version, State::Alive, profile),
                _ => return,
            };
            self.insert(Member {
                record: Record {
                    id,
                    profile: profile.clone(),
                    version,
                    state,
                },
                since: now,
                suspect_deadline: None,
            });
            return;
        };
        let m = &mut self.members[i];
        let cur = m.record.version;
        let version = match update {
            Update::Alive { version, .. }
            | Update::Suspect { version, .. }
            | Update::Dead { version, .. }
            | Update::Left { version, .. } => *version,
        };
        if version < cur && m.state() != State::Left {
            self.broadcasts.push(id);
            self.correct_sender = true;
            return;
        }
        let event = match update {
            Update::Alive {
                version, profile, ..
            } => {
                if *version <= cur {
                    return;
                }
                let was = m.record.state;
                m.record.version = *version;
                m.record.profile = profile.clone();
                m.record.state = State::Alive;
                m.suspect_deadline = None;
                if was != State::Alive {
                    m.since = now;
                }
                if !was.is_live() {
                    self.add_to_probe_order(id);
                }
                (was != State::Alive || version.epoch != cur.epoch).then_some(MemberEvent::Up(id))
            }
            Update::Suspect { version, .. } => {
                let applies = match m.record.state {
                    State::Alive => *version >= cur,
                    State::Suspect => *version > cur,
                    State::Dead | State::Left => false,
                };
                if !applies {
                    return;
                }
                let was = m.record.state;
                m.record.version = *version;
                m.record.state = State::Suspect;
                m.suspect_deadline = Some(now + suspicion);
                m.since = now;
                (was != State::Suspect).then_some(MemberEvent::Suspect(id))
            }
            Update::Dead { version, .. } | Update::Left { version, .. } => {
                let new_state = if matches!(update, Update::Left { .. }) {
                    State::Left
                } else {
                    State::Dead
                };
                let applies = match m.record.state {
                    State::Alive | State::Suspect => *version >= cur,
                    State::Dead | State::Left => *version > cur,
                };
                if !applies {
                    return;
                }
                let was = m.record.state;
                m.record.version = *version;
                m.record.state = new_state;
                m.suspect_deadline = None;
                m.since = now;
                self.probe_order.retain(|p| *p != id);
                match (was.is_live(), new_state) {
                    (true, State::Left) => Some(MemberEvent::Left(id)),
                    (true, _) => Some(MemberEvent::Dead(id)),
                    _ => None,
                }
            }
        };
        self.broadcasts.push(id);
        if let Some(e) = event {
            self.event(e);
        }
    }

    fn merge_about_self(&mut self, update: &Update) {
        let version = match update {
            Update::Alive { .. } => return,
            Update::Suspect { version, .. }
            | Update::Dead { version, .. }
            | Update::Left { version, .. } => *version,
        };
        if self.local.state == State::Left || version < self.local.version {
            return;
        }
        // Someone thinks we are failing (or gone): refute with a higher incarnation.
        self.local.version = self.local.version.refuting(version);
        self.stats.refutations += 1;
        self.broadcasts.push(self.local.id);
        self.correct_sender = true;
    }

    fn insert(&mut self, member: Member) {
        let id = member.id();
        if self.members.is_full() {
            // Make room by forgetting the longest-gone dead or departed member.
            let victim = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.state().is_live())
                .min_by_key(|(_, m)| m.since)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    let gone = self.members.swap_remove(i).id();
                    self.broadcasts.remove(gone);
                }
                None => {
                    self.stats.table_full += 1;
                    return;
                }
            }
        }
        let _ = self.members.push(member);
        self.add_to_probe_order(id);
        self.broadcasts.push(id);
        self.event(MemberEvent::Up(id));
    }
}

#[cfg(test)]
mod tests;
