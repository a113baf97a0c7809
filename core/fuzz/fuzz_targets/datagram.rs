//! Feeds arbitrary bytes to a running node as datagrams. The first byte
//! picks whether the rest is sealed under the cluster key first, so the
//! fuzzer reaches the decoders behind authentication as well as the header.
#![no_main]

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use shoal_core::link::LinkConfig;
use shoal_core::member::{MemberConfig, Profile};
use shoal_core::node::{Node, NodeConfig, Role};
use shoal_core::store::RamStore;
use shoal_core::wire::{ClusterKey, HEADER_LEN, Kind, MAX_DATAGRAM, Sealer};
use shoal_core::{Duration, Instant, NodeId, NodeKind, PoolSet};

/// A small store, so records and chunks the fuzzer gets through are kept.
type FuzzNode = Node<RamStore<16384, 64>, 16, 16, 32>;
const KEY: ClusterKey = ClusterKey([3; 32]);

fn node() -> Box<FuzzNode> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 7000));
    let config = NodeConfig {
        id: NodeId(1),
        epoch: 1,
        key: KEY,
        profile: Profile {
            name: heapless::String::new(),
            addr,
            kind: NodeKind::Host,
            weight: 1,
            pools: PoolSet::all(),
            tags: heapless::Vec::new(),
        },
        role: Role::Member,
        member: MemberConfig::default(),
        link: LinkConfig::default(),
        request_timeout: Duration::from_secs(1),
        data: Default::default(),
    };
    Box::new(Node::new(Instant::ZERO, config, 1, RamStore::new()))
}

thread_local! {
    static STATE: RefCell<(Box<FuzzNode>, Sealer, u64)> =
        RefCell::new((node(), Sealer::new(&KEY, NodeId(2), 1), 1));
}

fuzz_target!(|data: &[u8]| {
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 7001));
    STATE.with(|s| {
        let (node, sealer, t) = &mut *s.borrow_mut();
        *t += 1000;
        let now = Instant::from_micros(*t);
        let mut buf = [0u8; MAX_DATAGRAM];
        match data.split_first() {
            Some((&mode, body)) if mode & 1 == 1 && body.len() <= MAX_DATAGRAM - HEADER_LEN - 16 => {
                buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
                let kind = if mode & 2 == 0 { Kind::Datagram } else { Kind::Link };
                if let Ok(n) = sealer.seal(kind, &mut buf, body.len()) {
                    node.handle_datagram(now, src, &mut buf[..n]);
                }
            }
            _ => {
                let n = data.len().min(MAX_DATAGRAM + 64);
                let mut bytes = data[..n].to_vec();
                node.handle_datagram(now, src, &mut bytes);
            }
        }
        node.handle_timeout(now);
        while node.poll_transmit(now, &mut buf).is_some() {}
        while node.poll_event().is_some() {}
    });
});
