//! A node fed garbage: random bytes, mutated and truncated datagrams,
//! datagrams sealed under a wrong key, and replays. It must never panic,
//! its membership must not change, and every drop must be counted.

use std::net::{Ipv4Addr, SocketAddr};

use shoal_core::NodeId;
use shoal_core::member::{Gossip, Message, Record};
use shoal_core::rng::Rng;
use shoal_core::wire::{ClusterKey, HEADER_LEN, Kind, MAX_DATAGRAM, Sealer};
use shoal_tests::sim::{KEY, SimConfig, World};

const ROUNDS: usize = 100_000;

fn snapshot(w: &World) -> Vec<Record> {
    let m = w.machines[0]
        .node
        .as_ref()
        .expect("node 0 runs")
        .membership();
    let mut v: Vec<Record> = std::iter::once(m.local().clone())
        .chain(m.members().map(|m| m.record.clone()))
        .collect();
    v.sort_by_key(|r| r.id);
    v
}

fn seal(sealer: &mut Sealer, msg: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = msg.encode(&mut buf[HEADER_LEN..]).expect("fits");
    let len = sealer.seal(Kind::Datagram, &mut buf, n).expect("seals");
    buf[..len].to_vec()
}

#[test]
fn garbage_never_panics_nor_changes_membership() {
    let mut w = World::new(SimConfig::clean(1, 3));
    w.start(0, &[]);
    w.start(1, &[0]);
    w.start(2, &[0]);
    assert!(
        w.run_until_pred(shoal_core::Duration::from_secs(10), World::converged)
            .is_some()
    );
    let before = snapshot(&w);
    let stats_before = w.machines[0].node.as_ref().unwrap().stats().drops;

    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
    let ping = Message::Ping {
        seq: 1,
        target: NodeId(0),
        gossip: Gossip::new(),
    };
    // Valid datagrams to mutate: sealed under the right key by a stranger.
    let mut stranger = Sealer::new(&KEY, NodeId(0xbad), 1);
    let templates: Vec<Vec<u8>> = (0..16).map(|_| seal(&mut stranger, &ping)).collect();
    let mut wrong = Sealer::new(&ClusterKey([0x11; 32]), NodeId(0x5001), 99);

    let mut rng = Rng::new(0xfeed);
    let (mut wrong_key, mut replays) = (0u64, 0u64);
    // One genuine delivery, so later copies of it are replays.
    let genuine = seal(&mut stranger, &ping);
    w.with_node(0, |n, now| {
        n.handle_datagram(now, src, &mut genuine.clone())
    });

    for round in 0..ROUNDS {
        let mut bytes = match round % 5 {
            0 => {
                let len = rng.below(MAX_DATAGRAM + 100);
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
            1 => {
                // A valid datagram with one to four distinct bytes changed.
                let mut d = templates[rng.below(templates.len())].clone();
                let start = rng.below(d.len());
                for j in 0..1 + rng.below(4) {
                    let i = (start + j) % d.len();
                    d[i] ^= 1 + rng.below(255) as u8;
                }
                d
            }
            2 => {
                // Truncated or extended.
                let mut d = templates[rng.below(templates.len())].clone();
                if rng.below(2) == 0 {
                    d.truncate(rng.below(d.len()));
                } else {
                    d.extend((0..1 + rng.below(64)).map(|_| rng.next_u64() as u8));
                }
                d
            }
            3 => {
                wrong_key += 1;
                seal(&mut wrong, &ping)
            }
            _ => {
                replays += 1;
                genuine.clone()
            }
        };
        w.with_node(0, |n, now| n.handle_datagram(now, src, &mut bytes));
    }

    assert_eq!(snapshot(&w), before, "membership changed under garbage");
    let drops = w.machines[0].node.as_ref().unwrap().stats().drops;
    assert!(drops.authentication - stats_before.authentication >= wrong_key);
    assert_eq!(
        drops.replay - stats_before.replay,
        replays,
        "every replay counted"
    );
    assert!(drops.total() - stats_before.total() >= (ROUNDS as u64) * 4 / 5);
}
