//! A deterministic world of many core [`Node`]s in one process.
//!
//! The clock is virtual and jumps to the next thing that happens: a datagram
//! arriving or a node's `poll_timeout`. The network is seeded: loss,
//! duplication, delay (which reorders) and partitions. Nodes can crash and
//! restart with a higher epoch. Everything follows from [`SimConfig::seed`],
//! so a failing run is replayed exactly by its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};

use shoal_core::link::LinkConfig;
use shoal_core::member::{MemberConfig, Profile, State};
use shoal_core::node::{DataConfig, Event, Node, NodeConfig, Role};
use shoal_core::rng::Rng;
use shoal_core::wire::{ClusterKey, MAX_DATAGRAM};
use shoal_core::{Duration, Instant, NodeId, NodeKind, Pool, PoolSet};

use crate::store::SimStore;

/// The node type the simulator runs: room for 64 members, on a simulated
/// disk.
pub type SimNode = Node<SimStore, 64, 96, 128>;

/// The shared cluster key of simulated nodes.
pub const KEY: ClusterKey = ClusterKey([0x5a; 32]);

/// Network and cluster knobs.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// How many nodes the world starts with.
    pub nodes: usize,
    /// Chance a datagram is lost, in parts per million.
    pub loss_ppm: u32,
    /// Chance a datagram is delivered twice, in parts per million.
    pub dup_ppm: u32,
    /// Least one-way delay.
    pub min_delay: Duration,
    /// Most one-way delay; delays are uniform in between, so datagrams reorder.
    pub max_delay: Duration,
}

impl SimConfig {
    /// A clean LAN: no loss, 0.1–1 ms delays.
    pub fn clean(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            loss_ppm: 0,
            dup_ppm: 0,
            min_delay: Duration::from_micros(100),
            max_delay: Duration::from_millis(1),
        }
    }

    /// A lossy network: 5% loss, 1% duplication, 1–50 ms delays.
    pub fn lossy(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            loss_ppm: 50_000,
            dup_ppm: 10_000,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

/// A tracing hook: (time, from, to, datagram).
pub type Tap = Box<dyn FnMut(Instant, usize, usize, &[u8])>;

/// One simulated machine.
pub struct Machine {
    /// The node, while it runs.
    pub node: Option<Box<SimNode>>,
    /// Its id (stable across restarts).
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// Its boot epoch.
    pub epoch: u64,
    /// Partition group: datagrams cross only within a group.
    pub group: u8,
    /// Every event the node reported, with the time.
    pub events: Vec<(Instant, Event)>,
    /// Its disk: kept across crashes, minus what was never flushed.
    pub disk: SimStore,
    /// The bytes of the last response each of the node's commands got.
    pub data: Vec<(shoal_core::node::OpId, Vec<u8>)>,
    /// The node's `poll_timeout`, as of the last time it was driven.
    deadline: Option<Instant>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// The world.
pub struct World {
    /// The run's settings.
    pub config: SimConfig,
    /// The virtual clock.
    pub now: Instant,
    /// The machines, by index.
    pub machines: Vec<Machine>,
    rng: Rng,
    wire: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Datagrams sent in all.
    pub sent: u64,
    /// Datagrams addressed to each machine, delivered or not.
    pub sent_to: Vec<u64>,
    /// Called for every datagram sent, with (time, from, to, bytes), before
    /// the network decides its fate: for tracing a failing seed.
    pub tap: Option<Tap>,
    /// Replication and chunk settings every node starts with.
    pub data: DataConfig,
}

/// Address of machine `i`. Loopback labels only: nothing leaves the process.
pub fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i as u16))
}

/// Id of machine `i`.
pub fn id_of(i: usize) -> NodeId {
    NodeId(0x5000 + i as u64)
}

fn profile(i: usize) -> Profile {
    let mut name = heapless::String::new();
    let _ = core::fmt::write(&mut name, format_args!("sim-{i}"));
    Profile {
        name,
        addr: addr_of(i),
        kind: NodeKind::Host,
        weight: 100,
        pools: PoolSet::all(),
        tags: heapless::Vec::new(),
    }
}

impl World {
    /// A world of `config.nodes` machines, none started.
    pub fn new(config: SimConfig) -> World {
        let machines = (0..config.nodes)
            .map(|i| Machine {
                node: None,
                id: id_of(i),
                addr: addr_of(i),
                epoch: 0,
                group: 0,
                events: Vec::new(),
                disk: SimStore::default(),
                data: Vec::new(),
                deadline: None,
            })
            .collect();
        World {
            config,
            now: Instant::from_millis(1),
            machines,
            rng: Rng::new(config.seed ^ 0x5e1f_5e1f),
            wire: BinaryHeap::new(),
            seq: 0,
            sent: 0,
            sent_to: vec![0; config.nodes],
            tap: None,
            data: DataConfig::default(),
        }
    }

    /// The node config machine `i` starts with.
    pub fn node_config(&self, i: usize) -> NodeConfig {
        NodeConfig {
            id: id_of(i),
            epoch: self.machines[i].epoch,
            key: KEY,
            profile: profile(i),
            role: Role::Member,
            member: MemberConfig::default(),
            link: LinkConfig::host(),
            request_timeout: Duration::from_secs(5),
            data: self.data,
        }
    }

    /// Starts (or restarts, with a higher epoch) machine `i`, joining
    /// through `seeds`.
    pub fn start(&mut self, i: usize, seeds: &[usize]) {
        self.start_as(i, Role::Member, seeds);
    }

    /// Starts machine `i` as a client of machine `contact` (not a member).
    pub fn start_client(&mut self, i: usize, contact: usize) {
        let role = Role::Client {
            contact: addr_of(contact),
        };
        self.start_as(i, role, &[]);
    }

    fn start_as(&mut self, i: usize, role: Role, seeds: &[usize]) {
        self.machines[i].epoch += 1;
        let mut config = self.node_config(i);
        config.role = role;
        let node_seed =
            self.config.seed.wrapping_mul(1_000_003) ^ (i as u64) ^ (self.machines[i].epoch << 32);
        let disk = self.machines[i].disk.clone();
        let mut node = Box::new(SimNode::new(self.now, config, node_seed, disk));
        let seeds: Vec<SocketAddr> = seeds.iter().map(|&s| addr_of(s)).collect();
        node.join(self.now, &seeds);
        self.machines[i].node = Some(node);
        self.flush(i);
    }

    /// Crashes machine `i`: it stops at once, losing all state but what
    /// its store flushed.
    pub fn crash(&mut self, i: usize) {
        self.machines[i].node = None;
        self.machines[i].disk.0.borrow_mut().crash();
        self.machines[i].deadline = None;
    }

    /// Whether machine `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.machines[i].node.is_some()
    }

    /// Puts machine `i` in partition group `g`.
    pub fn set_group(&mut self, i: usize, g: u8) {
        self.machines[i].group = g;
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        for m in &mut self.machines {
            m.group = 0;
        }
    }

    /// Runs a command on machine `i`'s node and sends what it produced.
    pub fn with_node<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut SimNode, Instant) -> R,
    ) -> Option<R> {
        let now = self.now;
        let r = f(self.machines[i].node.as_mut()?, now);
        self.flush(i);
        Some(r)
    }

    /// Runs the world until `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(t) = self.next_time() {
            if t > deadline {
                break;
            }
            self.step(t);
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs until `pred` holds (checked after every step) or `limit` passes.
    /// Returns the time it first held.
    pub fn run_until_pred(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&World) -> bool,
    ) -> Option<Instant> {
        let deadline = self.now + limit;
        if pred(self) {
            return Some(self.now);
        }
        while let Some(t) = self.next_time() {
            if t > deadline {
                break;
            }
            self.step(t);
            if pred(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    fn next_time(&self) -> Option<Instant> {
        let net = self.wire.peek().map(|Reverse(p)| p.at);
        let timers = self.machines.iter().filter_map(|m| m.deadline).min();
        match (net, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn step(&mut self, t: Instant) {
        self.now = self.now.max(t);
        let now = self.now;
        while self.wire.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(mut p)) = self.wire.pop() else {
                break;
            };
            if let Some(node) = self.machines[p.to].node.as_mut() {
                node.handle_datagram(now, p.from, &mut p.bytes);
                self.flush(p.to);
            }
        }
        for i in 0..self.machines.len() {
            if self.machines[i].deadline.is_some_and(|d| d <= now) {
                if let Some(n) = self.machines[i].node.as_mut() {
                    n.handle_timeout(now);
                }
                self.flush(i);
            }
        }
    }

    /// Sends everything machine `i` has to send, and collects its events.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let mut buf = [0u8; MAX_DATAGRAM];
        if let Some(node) = self.machines[i].node.as_mut() {
            node.commit(now);
        }
        loop {
            let Some(node) = self.machines[i].node.as_mut() else {
                return;
            };
            let Some(t) = node.poll_transmit(now, &mut buf) else {
                break;
            };
            self.sent += 1;
            let bytes = buf[..t.len].to_vec();
            self.route(i, t.dst, bytes);
        }
        let m = &mut self.machines[i];
        if let Some(node) = m.node.as_mut() {
            let mut responses = 0;
            while let Some(e) = node.poll_event() {
                if let Event::Response { op, .. } = &e {
                    responses += 1;
                    // A client delivers one response per input, so the
                    // bytes taken here are that response's own.
                    assert!(
                        responses == 1 || node.contact().is_none(),
                        "a client delivered {responses} responses in one input"
                    );
                    if !node.response_data().is_empty() {
                        m.data.push((*op, node.response_data().to_vec()));
                    }
                }
                m.events.push((now, e));
            }
            m.deadline = node.poll_timeout();
        }
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.rng.next_u64() % 1_000_000) < u64::from(ppm)
    }

    fn delay(&mut self) -> Duration {
        let lo = self.config.min_delay.as_micros();
        let span = self.config.max_delay.as_micros().saturating_sub(lo);
        Duration::from_micros(
            lo + if span == 0 {
                0
            } else {
                self.rng.next_u64() % (span + 1)
            },
        )
    }

    fn route(&mut self, from: usize, dst: SocketAddr, bytes: Vec<u8>) {
        let Some(to) = self.machines.iter().position(|m| m.addr == dst) else {
            return;
        };
        self.sent_to[to] += 1;
        if let Some(tap) = self.tap.as_mut() {
            tap(self.now, from, to, &bytes);
        }
        if self.machines[from].group != self.machines[to].group {
            return;
        }
        if self.chance(self.config.loss_ppm) {
            return;
        }
        let copies = if self.chance(self.config.dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.delay();
            self.seq += 1;
            self.wire.push(Reverse(InFlight {
                at,
                seq: self.seq,
                to,
                from: self.machines[from].addr,
                bytes: bytes.clone(),
            }));
        }
    }

    // ---- views, for invariants ----

    /// Machine `i`'s view of member `j`'s state (`None`: unknown or `i` down).
    pub fn view(&self, i: usize, j: usize) -> Option<State> {
        let node = self.machines[i].node.as_ref()?;
        if i == j {
            return Some(node.membership().local().state);
        }
        node.membership().get(id_of(j)).map(|m| m.state())
    }

    /// Whether every running machine sees every other running machine alive
    /// and every stopped machine not alive.
    pub fn converged(&self) -> bool {
        let up: Vec<usize> = (0..self.machines.len())
            .filter(|&i| self.is_up(i))
            .collect();
        up.iter().all(|&i| {
            (0..self.machines.len()).all(|j| {
                let v = self.view(i, j);
                if i == j {
                    return true;
                }
                if self.is_up(j) {
                    v == Some(State::Alive)
                } else {
                    !matches!(v, Some(State::Alive | State::Suspect))
                }
            })
        })
    }

    /// The owner machine `i` computes for `key` in `pool`.
    pub fn owner(&self, i: usize, pool: Pool, key: &[u8]) -> Option<NodeId> {
        self.machines[i].node.as_ref()?.owner(pool, key)
    }
}
