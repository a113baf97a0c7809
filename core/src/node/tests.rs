//! A microcontroller-sized node (small message buffer and event queue) in a
//! cluster with a host-sized one, on a lossless in-memory network.

use core::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::store::RamStore;
use crate::wire::MAX_DATAGRAM;
use crate::{NodeKind, PoolSet};

/// The firmware's shape: 2 fragments per message, 4 queued events.
type Small = Node<RamStore<4096, 16>, 8, 4, 4, { 2 * crate::link::FRAGMENT }, 4, 2>;
type Large = Node<RamStore<4096, 16>, 8, 4, 16>;

const KEY: ClusterKey = ClusterKey([7; 32]);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, i), 7000))
}

fn config(i: u8, kind: NodeKind, weight: u32, pools: PoolSet, max_message: usize) -> NodeConfig {
    NodeConfig {
        id: NodeId(u64::from(i)),
        epoch: 1,
        key: KEY,
        profile: Profile {
            name: heapless::String::new(),
            addr: addr(i),
            kind,
            weight,
            pools,
            tags: heapless::Vec::new(),
        },
        role: Role::Member,
        member: MemberConfig::default(),
        link: LinkConfig {
            max_message,
            ..LinkConfig::default()
        },
        request_timeout: Duration::from_secs(2),
        data: DataConfig::default(),
    }
}

/// Moves datagrams between the two nodes and runs timers, for `ms` of
/// virtual time in 1 ms steps; returns the events each reported.
fn run(
    now: &mut Instant,
    small: &mut Small,
    large: &mut Large,
    ms: u64,
) -> (Vec<Event>, Vec<Event>) {
    run_cut(now, small, large, ms, false)
}

/// [`run`], losing every datagram from the small node when `cut`.
fn run_cut(
    now: &mut Instant,
    small: &mut Small,
    large: &mut Large,
    ms: u64,
    cut: bool,
) -> (Vec<Event>, Vec<Event>) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let (mut se, mut le) = (Vec::new(), Vec::new());
    for _ in 0..ms {
        *now += Duration::from_millis(1);
        small.handle_timeout(*now);
        large.handle_timeout(*now);
        loop {
            let mut moved = false;
            while let Some(t) = small.poll_transmit(*now, &mut buf) {
                assert_eq!(t.dst, addr(2));
                if !cut {
                    large.handle_datagram(*now, addr(1), &mut buf[..t.len]);
                    moved = true;
                }
            }
            while let Some(t) = large.poll_transmit(*now, &mut buf) {
                assert_eq!(t.dst, addr(1));
                small.handle_datagram(*now, addr(2), &mut buf[..t.len]);
                moved = true;
            }
            se.extend(core::iter::from_fn(|| small.poll_event()));
            le.extend(core::iter::from_fn(|| large.poll_event()));
            if !moved {
                break;
            }
        }
    }
    (se, le)
}

#[test]
fn small_node_joins_serves_its_keys_and_refuses_what_it_cannot_hold() {
    let mut now = Instant::from_millis(1);
    let mcu = PoolSet::EMPTY.with(Pool::Data).with(Pool::Mcu);
    let host: PoolSet = Pool::ALL.into_iter().filter(|p| *p != Pool::Mcu).collect();
    let mut small = Small::new(
        now,
        config(1, NodeKind::Mcu, 1, mcu, 2 * 1128),
        1,
        RamStore::new(),
    );
    let mut large = Large::new(
        now,
        config(2, NodeKind::Host, 100, host, MAX_MESSAGE),
        2,
        RamStore::new(),
    );
    small.join(now, &[addr(2)]);
    run(&mut now, &mut small, &mut large, 3000);
    assert_eq!(large.owner(Pool::Mcu, b"sensor/1"), Some(NodeId(1)));
    assert_eq!(small.owner(Pool::Mcu, b"sensor/1"), Some(NodeId(1)));

    // The host sends to a key only the MCU serves; the MCU answers.
    let op = large
        .send_to_key(now, Pool::Mcu, b"sensor/1", &[9; 1500])
        .unwrap();
    let (se, le) = run(&mut now, &mut small, &mut large, 500);
    assert!(se.iter().any(|e| matches!(
        e,
        Event::KeyMessage {
            from: NodeId(2),
            len: 1500,
            ..
        }
    )));
    assert!(le.iter().any(|e| *e
        == Event::Response {
            op,
            response: Response::Sent {
                by: NodeId(1),
                hops: 0
            }
        }));

    // A message larger than the MCU's buffer is refused by the MCU's
    // commands, and never delivered to it.
    assert_eq!(
        small.send_to_key(now, Pool::Data, b"k", &[0; 3000]),
        Err(CommandError::TooLarge)
    );
    let op = large
        .send_to_key(now, Pool::Mcu, b"sensor/1", &[1; 4000])
        .unwrap();
    let (se, le) = run(&mut now, &mut small, &mut large, 20_000);
    assert!(!se.iter().any(|e| matches!(e, Event::KeyMessage { .. })));
    assert!(
        le.iter()
            .any(|e| matches!(e, Event::Failed { op: o, .. } if *o == op))
    );
    // The MCU is still a member in good standing.
    assert_eq!(
        large.membership().get(NodeId(1)).map(|m| m.state()),
        Some(State::Alive)
    );
}

/// A small node and a large one, joined.
fn pair(now: &mut Instant) -> (Small, Large) {
    let mcu = PoolSet::EMPTY.with(Pool::Data).with(Pool::Mcu);
    let host: PoolSet = Pool::ALL.into_iter().filter(|p| *p != Pool::Mcu).collect();
    let mut small = Small::new(
        *now,
        config(1, NodeKind::Mcu, 1, mcu, 2 * 1128),
        1,
        RamStore::new(),
    );
    let mut large = Large::new(
        *now,
        config(2, NodeKind::Host, 100, host, MAX_MESSAGE),
        2,
        RamStore::new(),
    );
    small.join(*now, &[addr(2)]);
    run(now, &mut small, &mut large, 3000);
    (small, large)
}

/// `count` requests from the large node to keys the small one serves.
fn burst(now: Instant, large: &mut Large, count: usize) -> Vec<OpId> {
    (0..count)
        .map(|i| {
            large
                .send_to_key(now, Pool::Mcu, format!("sensor/{i}").as_bytes(), b"hi")
                .unwrap()
        })
        .collect()
}

#[test]
fn small_node_answers_a_burst_of_requests_larger_than_its_transmit_slots() {
    let mut now = Instant::from_millis(1);
    let (mut small, mut large) = pair(&mut now);
    // Three times the MCU's four transmit slots of requests at once: each
    // answer needs a slot until the host acknowledges it, so the MCU must
    // take requests no faster than its answers leave, not drop answers.
    let ops = burst(now, &mut large, 12);
    let (_, le) = run(&mut now, &mut small, &mut large, 1000);
    let answered = ops
        .iter()
        .filter(|op| {
            le.iter()
                .any(|e| matches!(e, Event::Response { op: o, .. } if o == *op))
        })
        .count();
    assert_eq!(answered, ops.len(), "events: {le:?}");
    assert_eq!(small.stats().busy, 0);
}

#[test]
fn small_node_waits_for_room_to_answer_only_so_long() {
    let mut now = Instant::from_millis(1);
    let (mut small, mut large) = pair(&mut now);
    // Nothing the MCU sends arrives, so its answers are never acknowledged
    // and its transmit slots stay full: it takes the requests it cannot
    // answer all the same after a short wait, well before the link gives
    // up on the host (whose window lets 8 requests through unacknowledged).
    burst(now, &mut large, 12);
    let (se, _) = run_cut(&mut now, &mut small, &mut large, 500, true);
    let served = se
        .iter()
        .filter(|e| matches!(e, Event::KeyMessage { .. }))
        .count();
    assert_eq!(served, 8, "events: {se:?}");
}
