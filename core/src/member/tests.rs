//! Unit tests of merge precedence, refutation, timers and message sizes.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::id::{MAX_TAGS, NAME_LEN, TAG_LEN, Tags};
use crate::{NodeKind, PoolSet};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9000 + i))
}

fn profile(i: u16) -> Profile {
    Profile {
        name: heapless::String::try_from("n").unwrap(),
        addr: addr(i),
        kind: NodeKind::Host,
        weight: 1,
        pools: PoolSet::all(),
        tags: heapless::Vec::new(),
    }
}

fn node() -> Membership<8> {
    Membership::new(
        Instant::ZERO,
        NodeId(1),
        1,
        profile(1),
        MemberConfig::default(),
        7,
    )
}

fn alive(id: u64, epoch: u64, incarnation: u32) -> Update {
    Update::Alive {
        id: NodeId(id),
        version: Version { epoch, incarnation },
        profile: profile(id as u16),
    }
}

fn gossip(updates: &[Update]) -> Message {
    Message::Gossip {
        gossip: updates.iter().cloned().collect(),
    }
}

fn events(m: &mut Membership<8>) -> heapless::Vec<MemberEvent, 16> {
    core::iter::from_fn(|| m.poll_event()).collect()
}

fn drain(m: &mut Membership<8>) -> heapless::Vec<(SocketAddr, Message), 32> {
    let mut buf = [0u8; crate::wire::MAX_BODY];
    core::iter::from_fn(|| {
        let (to, n) = m.poll_transmit(&mut buf)?;
        Some((to, Message::decode(&buf[..n]).unwrap()))
    })
    .collect()
}

const T: Instant = Instant::ZERO;

#[test]
fn alive_suspect_dead_precedence() {
    let mut m = node();
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 0)]));
    assert_eq!(events(&mut m)[..], [MemberEvent::Up(NodeId(2))]);
    let v0 = Version {
        epoch: 1,
        incarnation: 0,
    };
    let suspect = Update::Suspect {
        id: NodeId(2),
        version: v0,
    };
    m.handle_message(
        T,
        NodeId(3),
        addr(3),
        gossip(core::slice::from_ref(&suspect)),
    );
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Suspect);
    assert_eq!(events(&mut m)[..], [MemberEvent::Suspect(NodeId(2))]);
    // The same-incarnation alive does not clear suspicion; a higher one does.
    m.handle_message(T, NodeId(3), addr(3), gossip(&[alive(2, 1, 0)]));
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Suspect);
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 1)]));
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Alive);
    // Dead at an older incarnation is stale; at the current one it applies.
    m.handle_message(
        T,
        NodeId(3),
        addr(3),
        gossip(&[Update::Dead {
            id: NodeId(2),
            version: v0,
        }]),
    );
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Alive);
    let v1 = Version {
        epoch: 1,
        incarnation: 1,
    };
    m.handle_message(
        T,
        NodeId(3),
        addr(3),
        gossip(&[Update::Dead {
            id: NodeId(2),
            version: v1,
        }]),
    );
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Dead);
    assert!(m.candidates().all(|c| c.id != NodeId(2)));
    // A restart (higher epoch) beats any incarnation of the previous life.
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 2, 0)]));
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Alive);
    assert_eq!(events(&mut m).last(), Some(&MemberEvent::Up(NodeId(2))));
}

#[test]
fn stale_news_is_corrected_at_once() {
    let mut m = node();
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 3)]));
    drain(&mut m);
    let stale = Update::Suspect {
        id: NodeId(2),
        version: Version {
            epoch: 1,
            incarnation: 1,
        },
    };
    m.handle_message(T, NodeId(3), addr(3), gossip(&[alive(3, 1, 0), stale]));
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Alive);
    let out = drain(&mut m);
    let answer = out
        .iter()
        .find(|(to, _)| *to == addr(3))
        .expect("a reply to the sender");
    let Message::Gossip { gossip } = &answer.1 else {
        panic!("expected gossip, got {answer:?}");
    };
    assert!(gossip.contains(&alive(2, 1, 3)));
}

#[test]
fn suspicion_of_self_is_refuted() {
    let mut m = node();
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 0)]));
    drain(&mut m);
    let accusation = Update::Suspect {
        id: NodeId(1),
        version: Version {
            epoch: 1,
            incarnation: 4,
        },
    };
    m.handle_message(T, NodeId(2), addr(2), gossip(&[accusation]));
    assert_eq!(m.local().version.incarnation, 5);
    assert_eq!(m.local().state, State::Alive);
    assert_eq!(m.stats().refutations, 1);
    let out = drain(&mut m);
    assert!(out.iter().any(|(to, msg)| *to == addr(2)
        && matches!(msg, Message::Gossip { gossip } if gossip.iter().any(|u| u.id() == NodeId(1)))));
}

#[test]
fn unanswered_probe_leads_to_suspicion_then_death() {
    let mut m = node();
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 0)]));
    let mut now = T;
    let mut dead_at = None;
    while now < Instant::from_millis(10_000) && dead_at.is_none() {
        now = m.poll_timeout().unwrap().max(now);
        m.handle_timeout(now);
        drain(&mut m);
        if events(&mut m).contains(&MemberEvent::Dead(NodeId(2))) {
            dead_at = Some(now);
        }
    }
    let dead_at = dead_at.expect("declared dead");
    let c = MemberConfig::default();
    // First probe within one interval, suspect at its end, dead after the timeout.
    let bound = Instant::ZERO + c.probe_interval.saturating_mul(2) + c.suspicion_timeout(2);
    assert!(dead_at <= bound, "{dead_at:?} > {bound:?}");
}

#[test]
fn probe_ack_keeps_member_alive() {
    let mut m = node();
    m.handle_message(T, NodeId(2), addr(2), gossip(&[alive(2, 1, 0)]));
    let mut now = T;
    while now < Instant::from_millis(30_000) {
        now = m.poll_timeout().unwrap().max(now);
        m.handle_timeout(now);
        for (to, msg) in drain(&mut m) {
            if let (true, Message::Ping { seq, .. }) = (to == addr(2), msg) {
                let ack = Message::Ack {
                    seq,
                    gossip: Gossip::new(),
                };
                m.handle_message(now, NodeId(2), addr(2), ack);
            }
        }
    }
    assert_eq!(m.get(NodeId(2)).unwrap().state(), State::Alive);
    assert!(m.stats().probes >= 25);
    assert_eq!(m.stats().suspicions, 0);
}

#[test]
fn full_table_keeps_live_members_and_counts_refusals() {
    let mut m: Membership<2> =
        Membership::new(T, NodeId(1), 1, profile(1), MemberConfig::default(), 1);
    for id in 2..=4 {
        m.handle_message(T, NodeId(id), addr(id as u16), gossip(&[alive(id, 1, 0)]));
    }
    assert_eq!(m.members().count(), 2);
    assert_eq!(m.stats().table_full, 1);
}

#[test]
fn largest_messages_fit_one_datagram() {
    let mut tags = Tags::new();
    for _ in 0..MAX_TAGS {
        tags.push(heapless::String::try_from("t".repeat(TAG_LEN).as_str()).unwrap())
            .unwrap();
    }
    let big = Profile {
        name: heapless::String::try_from("n".repeat(NAME_LEN).as_str()).unwrap(),
        addr: SocketAddr::from((
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
            65535,
        )),
        kind: NodeKind::Mcu,
        weight: u32::MAX,
        pools: PoolSet(u16::MAX),
        tags,
    };
    let version = Version {
        epoch: u64::MAX,
        incarnation: u32::MAX,
    };
    let update = Update::Alive {
        id: NodeId(u64::MAX),
        version,
        profile: big.clone(),
    };
    let record = Record {
        id: NodeId(u64::MAX),
        profile: big,
        version,
        state: State::Suspect,
    };
    let full: Gossip = core::iter::repeat_n(update, MAX_GOSSIP).collect();
    let mut buf = [0u8; crate::wire::MAX_BODY];
    for msg in [
        Message::Ping {
            seq: u32::MAX,
            target: NodeId(u64::MAX),
            gossip: full.clone(),
        },
        Message::Ack {
            seq: u32::MAX,
            gossip: full.clone(),
        },
        Message::PingReq {
            seq: u32::MAX,
            target: NodeId(u64::MAX),
            addr: record.profile.addr,
            gossip: full.clone(),
        },
        Message::Gossip { gossip: full },
        Message::Sync {
            reply: true,
            records: core::iter::repeat_n(record.clone(), SYNC_PAGE).collect(),
        },
    ] {
        let n = msg.encode(&mut buf).expect("fits in MAX_BODY");
        assert_eq!(Message::decode(&buf[..n]), Some(msg));
    }
}

#[test]
fn pinned_ping_bytes() {
    let ping = Message::Ping {
        seq: 300,
        target: NodeId(2),
        gossip: core::iter::once(Update::Suspect {
            id: NodeId(5),
            version: Version {
                epoch: 1,
                incarnation: 2,
            },
        })
        .collect(),
    };
    let mut buf = [0u8; 64];
    let n = ping.encode(&mut buf).unwrap();
    // variant 0, seq 300 (varint), target 2, one update: Suspect (1), id 5, epoch 1, incarnation 2
    assert_eq!(&buf[..n], &[0, 0xac, 0x02, 2, 1, 1, 5, 1, 2]);
}

fn dead(id: u64, epoch: u64, incarnation: u32) -> Update {
    Update::Dead {
        id: NodeId(id),
        version: Version { epoch, incarnation },
    }
}

/// An operator's forget turns a dead member `Left` under a higher
/// incarnation, which overrides `Dead` at the other members; it refuses
/// live members, unknown ones and the node itself; and a forgotten node
/// that restarts (a new epoch) is taken back.
#[test]
fn forget_turns_a_dead_member_left_everywhere_and_a_restart_overrides_it() {
    let mut a = node();
    a.handle_message(
        T,
        NodeId(2),
        addr(2),
        gossip(&[alive(2, 1, 0), alive(3, 1, 0)]),
    );
    assert_eq!(a.forget(NodeId(2)), Err(ForgetError::NotDead));
    assert_eq!(a.forget(NodeId(9)), Err(ForgetError::Unknown));
    assert_eq!(a.forget(NodeId(1)), Err(ForgetError::IsSelf));
    a.handle_message(T, NodeId(2), addr(2), gossip(&[dead(3, 1, 0)]));
    events(&mut a);
    drain(&mut a);

    assert_eq!(a.forget(NodeId(3)), Ok(()));
    assert_eq!(a.get(NodeId(3)).unwrap().state(), State::Left);
    assert_eq!(events(&mut a)[..], [MemberEvent::Left(NodeId(3))]);
    assert_eq!(a.forget(NodeId(3)), Ok(()), "forgetting twice is no error");

    // What `a` gossips turns `b`'s dead record into a departed one.
    let mut b = node();
    b.handle_message(
        T,
        NodeId(2),
        addr(2),
        gossip(&[alive(2, 1, 0), alive(3, 1, 0)]),
    );
    b.handle_message(T, NodeId(2), addr(2), gossip(&[dead(3, 1, 0)]));
    a.handle_timeout(T + crate::Duration::from_millis(200));
    let news: heapless::Vec<Update, 16> = drain(&mut a)
        .into_iter()
        .filter_map(|(_, msg)| match msg {
            Message::Gossip { gossip } => Some(gossip),
            _ => None,
        })
        .flatten()
        .filter(|u| u.id() == NodeId(3))
        .collect();
    assert!(!news.is_empty(), "the forget is gossiped");
    b.handle_message(T, NodeId(1), addr(1), gossip(&news));
    assert_eq!(b.get(NodeId(3)).unwrap().state(), State::Left);

    // The node comes back after a restart: a new epoch wins.
    b.handle_message(T, NodeId(3), addr(3), gossip(&[alive(3, 2, 0)]));
    assert_eq!(b.get(NodeId(3)).unwrap().state(), State::Alive);
}
