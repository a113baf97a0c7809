//! `cargo xtask test`'s QEMU step: one firmware image joins a core node
//! running here over real UDP, and answers a key the router places on it.
//!
//! The node here is the same `shoal_core::node::Node` host nodes run,
//! driven by a plain blocking socket loop.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use anyhow::{Context, Result, bail};
use shoal_core::link::LinkConfig;
use shoal_core::member::{MemberConfig, Profile, State};
use shoal_core::node::{Event, Node, NodeConfig, Response, Role};
use shoal_core::store::RamStore;
use shoal_core::wire::{ClusterKey, MAX_DATAGRAM};
use shoal_core::{Duration, Instant, NodeId, NodeKind, Pool};

use crate::{fleet, qemu};

type HostNode = Node<RamStore<0, 0>, 16, 16, 32>;

struct Harness {
    node: Box<HostNode>,
    socket: UdpSocket,
    start: StdInstant,
}

impl Harness {
    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    /// Drives the node until `until` holds for an event or the view, or
    /// `limit` passes.
    fn drive(
        &mut self,
        limit: StdDuration,
        mut until: impl FnMut(&HostNode, Option<&Event>) -> bool,
    ) -> Result<bool> {
        let deadline = StdInstant::now() + limit;
        let mut buf = [0u8; MAX_DATAGRAM];
        while StdInstant::now() < deadline {
            let now = self.now();
            while let Some(t) = self.node.poll_transmit(now, &mut buf) {
                let _ = self.socket.send_to(&buf[..t.len], t.dst);
            }
            while let Some(e) = self.node.poll_event() {
                if until(&self.node, Some(&e)) {
                    return Ok(true);
                }
            }
            if until(&self.node, None) {
                return Ok(true);
            }
            let wait = self
                .node
                .poll_timeout()
                .map_or(StdDuration::from_millis(50), |t| {
                    StdDuration::from_micros(t.as_micros().saturating_sub(now.as_micros()))
                })
                .clamp(StdDuration::from_millis(1), StdDuration::from_millis(50));
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, src)) => self.node.handle_datagram(self.now(), src, &mut buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            self.node.handle_timeout(self.now());
        }
        Ok(false)
    }
}

/// Boots `elf` (built with [`fleet::FLEET_KEY`]) and checks it joins a
/// core node here as an `mcu` member and serves its key.
pub fn run(elf: &Path) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding UDP")?;
    let addr = socket.local_addr()?;
    let key = ClusterKey::from_hex(fleet::FLEET_KEY).context("fleet key")?;
    let start = StdInstant::now();
    let mut name = heapless::String::new();
    let _ = name.push_str("xtask-host");
    let config = NodeConfig {
        id: NodeId(0x7e57),
        epoch: fleet::epoch_now(),
        key,
        profile: Profile {
            name,
            addr,
            kind: NodeKind::Host,
            weight: 100,
            pools: Pool::ALL.into_iter().filter(|p| *p != Pool::Mcu).collect(),
            tags: heapless::Vec::new(),
        },
        role: Role::Member,
        member: MemberConfig::default(),
        link: LinkConfig::default(),
        request_timeout: Duration::from_secs(5),
        data: Default::default(),
    };
    let node = Box::new(HostNode::new(
        Instant::ZERO,
        config,
        0x5eed,
        RamStore::new(),
    ));
    let mut h = Harness {
        node,
        socket,
        start,
    };
    let instance = qemu::Instance {
        elf: elf.to_path_buf(),
        mac: fleet::mac_of(0),
        host_port: fleet::MCU_PORT + 50,
        args: fleet::mcu_words(50, addr.port()),
    };
    let (mut child, log) = qemu::spawn(&instance, "  mcu | ".into())?;
    let result = check(&mut h);
    let _ = child.kill();
    let _ = child.wait();
    let _ = log.join();
    result
}

fn check(h: &mut Harness) -> Result<()> {
    let mcu_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, fleet::MCU_PORT + 50));
    let mut mcu = None;
    let joined = h.drive(StdDuration::from_secs(30), |node, _| {
        mcu = node
            .membership()
            .members()
            .find(|m| m.profile().addr == mcu_addr && m.state() == State::Alive)
            .map(|m| (m.record.id, m.profile().kind));
        mcu.is_some()
    })?;
    let Some((id, kind)) = mcu.filter(|_| joined) else {
        bail!("the QEMU node did not join within 30 s");
    };
    if kind != NodeKind::Mcu {
        bail!("the QEMU node joined as {kind:?}, not Mcu");
    }
    println!("smoke: QEMU node {id} joined as an mcu member");
    let now = h.now();
    let op = h
        .node
        .send_to_key(now, Pool::Mcu, b"sensor/1", b"hello")
        .map_err(|e| anyhow::anyhow!("send_to_key: {e}"))?;
    let mut answer = None;
    h.drive(StdDuration::from_secs(10), |_, e| match e {
        Some(Event::Response { op: o, response }) if *o == op => {
            answer = Some(Ok(response.clone()));
            true
        }
        Some(Event::Failed { op: o, reason }) if *o == op => {
            answer = Some(Err(*reason));
            true
        }
        _ => false,
    })?;
    match answer {
        Some(Ok(Response::Sent { by, .. })) if by == id => {
            println!("smoke: key sensor/1 in pool mcu answered by the QEMU node");
            Ok(())
        }
        other => bail!("key sensor/1 was not answered by the QEMU node: {other:?}"),
    }
}
