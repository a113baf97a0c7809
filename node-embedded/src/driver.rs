//! The UDP loop around the core [`Node`], and the node's RAM store.
//!
//! One task owns the node and its socket. It follows the core's call order:
//! feed a datagram or a due timeout, drain `poll_transmit` onto the socket,
//! drain `poll_event` into the log, then sleep until a datagram arrives or
//! `poll_timeout` is due.

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use embassy_futures::select::{Either, select};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Stack};
use embassy_time::Timer;
use shoal_core::link::{FRAGMENT, LinkConfig};
use shoal_core::member::{MemberConfig, Profile};
use shoal_core::node::{Event, Node, NodeConfig, Role};
use shoal_core::store::{RamStore, Space, Storage};
use shoal_core::wire::{ClusterKey, MAX_DATAGRAM};
use shoal_core::{Duration, Instant, NodeKind, Pool, PoolSet};

use crate::identity::Identity;
use static_cell::StaticCell;

use crate::settings::{Settings, built};

/// Member-table entries: the cluster sizes an MCU takes part in.
pub const MEMBERS: usize = 16;
/// Link peers: members plus clients talking to this node at once.
pub const PEERS: usize = 8;
/// Link slots (each way): a received message needs one per 1128 bytes.
pub const SLOTS: usize = 4;
/// Largest message the MCU sends or accepts: two link fragments. A larger
/// request to an MCU is dropped on arrival and fails at its sender.
pub const MAX_MESSAGE: usize = 2 * FRAGMENT;
/// Events queued between two drains (the loop drains after every input).
/// The MCU only logs them; a burst beyond two is counted in
/// `NodeStats::events_lost`.
pub const EVENTS: usize = 2;
/// Entries the RAM store indexes (`SHOAL_STORE_ENTRIES`): a stored chunk
/// takes two, itself and its GC mark.
pub const STORE_ENTRIES: usize = built::STORE_ENTRIES;

/// The node an MCU runs.
pub type McuNode = Node<&'static mut McuStore, MEMBERS, PEERS, SLOTS, MAX_MESSAGE, EVENTS, COORDS>;
/// Quorum operations an MCU coordinates at once: none. An MCU is a
/// replica (it stores and serves chunks); clients talk to hosts, and an MCU
/// asked to coordinate answers `Busy`.
pub const COORDS: usize = 0;
/// The MCU's store: a RAM arena of `SHOAL_STORE_BYTES` indexing
/// `SHOAL_STORE_ENTRIES` entries.
pub type McuStore = RamStore<{ built::STORE_BYTES }, STORE_ENTRIES>;

/// Router weight of an MCU: a small store next to hosts' 100.
pub const WEIGHT: u32 = 1;

/// Full datagrams the UDP socket buffers on receipt: most of a peer's
/// link window; the loop drains it after every datagram.
pub const RX_PACKETS: usize = 6;
/// Full datagrams buffered for sending: the loop waits for room, so a few
/// suffice.
pub const TX_PACKETS: usize = 3;

/// Memory the UDP socket borrows; place it in a `static`.
pub struct SocketBuffers {
    rx_meta: [PacketMetadata; RX_PACKETS],
    rx: [u8; RX_PACKETS * MAX_DATAGRAM],
    tx_meta: [PacketMetadata; TX_PACKETS],
    tx: [u8; TX_PACKETS * MAX_DATAGRAM],
}

impl SocketBuffers {
    /// Empty buffers.
    pub const fn new() -> Self {
        SocketBuffers {
            rx_meta: [PacketMetadata::EMPTY; RX_PACKETS],
            rx: [0; RX_PACKETS * MAX_DATAGRAM],
            tx_meta: [PacketMetadata::EMPTY; TX_PACKETS],
            tx: [0; TX_PACKETS * MAX_DATAGRAM],
        }
    }
}

impl Default for SocketBuffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The core's clock: embassy's monotonic microseconds.
pub fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

/// The node's configuration: a member of kind `mcu` in pools `data` and
/// `mcu`, advertising `addr`.
pub fn node_config(identity: Identity, name: &str, addr: SocketAddr) -> NodeConfig {
    let mut n = heapless::String::new();
    for c in name.chars() {
        if n.push(c).is_err() {
            break;
        }
    }
    NodeConfig {
        id: identity.id,
        epoch: identity.epoch,
        key: ClusterKey(built::KEY),
        profile: Profile {
            name: n,
            addr,
            kind: NodeKind::Mcu,
            weight: WEIGHT,
            pools: PoolSet::EMPTY.with(Pool::Data).with(Pool::Mcu),
            tags: heapless::Vec::new(),
        },
        role: Role::Member,
        member: MemberConfig::default(),
        link: LinkConfig {
            max_message: MAX_MESSAGE,
            ..LinkConfig::default()
        },
        request_timeout: Duration::from_secs(5),
        data: Default::default(),
    }
}

/// Records this boot in the store's local space, so the store holds the
/// node's identity like a host's does.
pub fn record_boot(store: &mut McuStore, identity: Identity) {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&identity.id.0.to_le_bytes());
    v[8..].copy_from_slice(&identity.epoch.to_le_bytes());
    if let Err(e) = store.put(Space::Local, b"identity", &v) {
        defmt::warn!("store: {}", e);
    }
}

static NODE: StaticCell<McuNode> = StaticCell::new();
static STORE: StaticCell<McuStore> = StaticCell::new();
static SOCKET: StaticCell<SocketBuffers> = StaticCell::new();

/// What every board does once its network is up: names the node after its
/// MAC, advertises `settings.advertise` (or `ip` and the node's port),
/// records the boot in the store, builds the node and serves forever.
pub async fn start(
    stack: Stack<'static>,
    mac: [u8; 6],
    ip: Ipv4Addr,
    identity: Identity,
    seed: u64,
    settings: &'static Settings,
) -> ! {
    let advertise = settings
        .advertise
        .unwrap_or(SocketAddr::V4(SocketAddrV4::new(ip, settings.port)));
    let mut name = heapless::String::<24>::new();
    let _ = core::fmt::write(
        &mut name,
        format_args!("mcu-{:02x}{:02x}{:02x}", mac[3], mac[4], mac[5]),
    );
    defmt::info!(
        "shoal mcu {=u64:016x} epoch {=u64} mac {=[u8]:02x} ip {} advertising {}; store arena {=usize} bytes, {=usize} entries",
        identity.id.0,
        identity.epoch,
        mac,
        defmt::Debug2Format(&ip),
        defmt::Debug2Format(&advertise),
        built::STORE_BYTES,
        STORE_ENTRIES
    );
    // The store is a static of its own, so `cargo xtask sizes` can report
    // it apart from the node; the node borrows it for good.
    let store = STORE.init_with(McuStore::new);
    record_boot(store, identity);
    let config = node_config(identity, &name, advertise);
    let node = NODE.init_with(|| McuNode::new(now(), config, seed, store));
    let socket = SOCKET.init_with(SocketBuffers::new);
    run(stack, node, socket, settings).await
}

/// Runs `node` on `stack` forever: binds the port, joins through `seeds`,
/// then serves.
pub async fn run(
    stack: Stack<'static>,
    node: &'static mut McuNode,
    buffers: &'static mut SocketBuffers,
    settings: &Settings,
) -> ! {
    let SocketBuffers {
        rx_meta,
        rx,
        tx_meta,
        tx,
    } = buffers;
    let mut socket = UdpSocket::new(stack, rx_meta, rx, tx_meta, tx);
    if let Err(e) = socket.bind(settings.port) {
        defmt::panic!("binding UDP port {}: {}", settings.port, e);
    }
    node.join(now(), &settings.seeds);
    defmt::info!(
        "node {=u64:016x} joining through {} seed(s)",
        node.id().0,
        settings.seeds.len()
    );
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        flush(node, &socket, &mut buf, settings.loopback_via).await;
        let wake = match node.poll_timeout() {
            Some(t) => embassy_time::Instant::from_micros(t.as_micros()),
            None => embassy_time::Instant::MAX,
        };
        match select(socket.recv_from(&mut buf), Timer::at(wake)).await {
            Either::First(Ok((n, meta))) => {
                let src = SocketAddr::from(meta.endpoint);
                node.handle_datagram(now(), src, &mut buf[..n]);
            }
            // Longer than any Shoal datagram: not ours.
            Either::First(Err(_)) => {}
            Either::Second(()) => node.handle_timeout(now()),
        }
    }
}

/// Sends what the node has to send, then logs its events.
///
/// With `loopback_via`, datagrams for 127.0.0.0/8 go to that address instead:
/// under QEMU user networking the gateway stands for the host's loopback,
/// where host nodes and the other MCUs' forwarded ports advertise.
async fn flush(
    node: &mut McuNode,
    socket: &UdpSocket<'_>,
    buf: &mut [u8; MAX_DATAGRAM],
    loopback_via: Option<Ipv4Addr>,
) {
    // The RAM store has nothing to sync; this releases held write acks.
    node.commit(now());
    while let Some(t) = node.poll_transmit(now(), buf) {
        // The firmware speaks IPv4 only; a peer advertising IPv6 is
        // unreachable from here and the core counts its failures.
        let SocketAddr::V4(mut dst) = t.dst else {
            continue;
        };
        if let Some(gw) = loopback_via
            && dst.ip().is_loopback()
        {
            dst.set_ip(gw);
        }
        if let Err(e) = socket.send_to(&buf[..t.len], IpEndpoint::from(dst)).await {
            // The link retransmits what matters; membership tolerates loss.
            defmt::debug!("send to {}: {}", defmt::Debug2Format(&t.dst), e);
        }
    }
    while let Some(e) = node.poll_event() {
        match e {
            Event::Member(m) => defmt::info!("member {}", m),
            Event::KeyMessage { from, key, len } => defmt::info!(
                "key message from {=u64:016x}: {=usize} bytes for {=[u8]:02x}",
                from.0,
                len,
                key.0[..8]
            ),
            Event::Connected(_) | Event::Response { .. } | Event::Failed { .. } => {}
        }
    }
}
