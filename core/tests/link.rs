//! The reliable link over a simulated lossy channel: exactly-once delivery
//! under loss, duplication and reordering; failure within the documented
//! bound; the window; restarts; bounded memory without deadlock; garbage.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use proptest::prelude::*;
use shoal_core::link::{FailReason, Frame, Link, LinkConfig, LinkEvent, MAX_FRAME};
use shoal_core::rng::Rng;
use shoal_core::{Duration, Instant, NodeId};

const MAX_MSG: usize = 16 * 1024;

struct End<const S: usize> {
    id: NodeId,
    epoch: u64,
    link: Box<Link<8, S>>,
    received: Vec<(NodeId, Vec<u8>)>,
    events: Vec<(Instant, LinkEvent)>,
    /// Drop everything this end would send or receive.
    silent: bool,
}

impl<const S: usize> End<S> {
    fn new(id: u64, epoch: u64, config: LinkConfig) -> Self {
        End {
            id: NodeId(id),
            epoch,
            link: Box::new(Link::new(config, epoch)),
            received: Vec::new(),
            events: Vec::new(),
            silent: false,
        }
    }
}

/// A frame on the wire: (arrival, tie-break, to, from, sender epoch, bytes).
type InFlight = (Instant, u64, usize, usize, u64, Vec<u8>);

struct Net {
    rng: Rng,
    loss_ppm: u64,
    dup_ppm: u64,
    max_delay_us: u64,
    seq: u64,
    wire: BinaryHeap<Reverse<InFlight>>,
}

impl Net {
    fn new(seed: u64, loss_ppm: u64, dup_ppm: u64, max_delay: Duration) -> Net {
        Net {
            rng: Rng::new(seed),
            loss_ppm,
            dup_ppm,
            max_delay_us: max_delay.as_micros(),
            seq: 0,
            wire: BinaryHeap::new(),
        }
    }
}

/// Advances to the next event and handles it; false when nothing is left.
fn step<const S: usize>(
    ends: &mut [End<S>],
    net: &mut Net,
    now: &mut Instant,
    window: usize,
) -> bool {
    let next_net = net.wire.peek().map(|Reverse(p)| p.0);
    let next_timer = ends.iter().filter_map(|e| e.link.poll_timeout()).min();
    let Some(t) = [next_net, next_timer].into_iter().flatten().min() else {
        return false;
    };
    *now = (*now).max(t);
    while net.wire.peek().is_some_and(|Reverse(p)| p.0 <= *now) {
        let Some(Reverse((_, _, to, from, epoch, bytes))) = net.wire.pop() else {
            break;
        };
        if ends[to].silent {
            continue;
        }
        let from_id = ends[from].id;
        ends[to]
            .link
            .handle_frame(*now, from_id, epoch, &bytes)
            .expect("well-formed frame");
    }
    for e in ends.iter_mut() {
        if e.link.poll_timeout().is_some_and(|d| d <= *now) {
            e.link.handle_timeout(*now);
        }
    }
    flush(ends, net, *now, window);
    true
}

fn flush<const S: usize>(ends: &mut [End<S>], net: &mut Net, now: Instant, window: usize) {
    let mut buf = [0u8; MAX_FRAME];
    let mut out = vec![0u8; MAX_MSG];
    for from in 0..ends.len() {
        while let Some((peer, n)) = ends[from].link.poll_transmit(now, &mut buf) {
            assert!(n <= MAX_FRAME);
            assert!(
                ends[from].link.in_flight(peer) <= window,
                "more than {window} fragments in flight"
            );
            if ends[from].silent {
                continue;
            }
            let Some(to) = ends.iter().position(|e| e.id == peer) else {
                continue;
            };
            if net.rng.next_u64() % 1_000_000 < net.loss_ppm {
                continue;
            }
            let copies = if net.rng.next_u64() % 1_000_000 < net.dup_ppm {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = 100 + net.rng.next_u64() % net.max_delay_us.max(1);
                net.seq += 1;
                let epoch = ends[from].epoch;
                net.wire.push(Reverse((
                    now + Duration::from_micros(delay),
                    net.seq,
                    to,
                    from,
                    epoch,
                    buf[..n].to_vec(),
                )));
            }
        }
        while let Some((peer, n)) = ends[from].link.poll_received(&mut out) {
            ends[from].received.push((peer, out[..n].to_vec()));
        }
        while let Some(e) = ends[from].link.poll_event() {
            ends[from].events.push((now, e));
        }
    }
}

/// A message whose content is fixed by (seed, index) and says its index.
fn message(seed: u64, index: u32, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ u64::from(index) << 20);
    let mut m: Vec<u8> = (0..len.max(4)).map(|_| rng.next_u64() as u8).collect();
    m[..4].copy_from_slice(&index.to_le_bytes());
    m
}

fn index_of(m: &[u8]) -> u32 {
    u32::from_le_bytes([m[0], m[1], m[2], m[3]])
}

fn exchange<const S: usize>(seed: u64, config: LinkConfig) {
    let window = usize::from(config.window);
    let mut ends = [End::<S>::new(1, 1, config), End::<S>::new(2, 1, config)];
    // 10% loss, 5% duplication, up to 30 ms of delay (so heavy reordering).
    let mut net = Net::new(seed, 100_000, 50_000, Duration::from_millis(30));
    let mut rng = Rng::new(seed);
    let mut now = Instant::ZERO;
    let per_side = 500u32;
    let mut next = [0u32; 2];
    let mut sent: BTreeMap<(usize, u32), Vec<u8>> = BTreeMap::new();
    let limit = Instant::from_millis(3_600_000);
    loop {
        for side in 0..2 {
            while next[side] < per_side {
                let i = next[side];
                let len = rng.below(MAX_MSG + 1);
                let m = message(seed ^ side as u64, i, len);
                let peer = ends[1 - side].id;
                match ends[side].link.send(now, peer, 1, &m) {
                    Ok(_) => {
                        sent.insert((side, i), m);
                        next[side] += 1;
                    }
                    Err(_) => break, // back-pressure: wait for deliveries
                }
            }
        }
        flush(&mut ends, &mut net, now, window);
        let done = ends.iter().map(|e| e.received.len()).sum::<usize>() == 2 * per_side as usize;
        if done {
            break;
        }
        assert!(now < limit, "seed {seed}: stalled");
        assert!(
            step(&mut ends, &mut net, &mut now, window),
            "seed {seed}: nothing left to do"
        );
    }
    for (side, end) in ends.iter().enumerate() {
        let from = 1 - side;
        let mut seen = vec![false; per_side as usize];
        for (peer, m) in &end.received {
            assert_eq!(*peer, ends[from].id);
            let i = index_of(m);
            assert!(
                !seen[i as usize],
                "seed {seed}: message {i} delivered twice"
            );
            seen[i as usize] = true;
            assert_eq!(m, &sent[&(from, i)], "seed {seed}: message {i} corrupted");
        }
        assert!(seen.iter().all(|s| *s));
        assert!(
            end.events
                .iter()
                .all(|(_, e)| matches!(e, LinkEvent::Delivered { .. }))
        );
    }
}

#[test]
fn thousand_messages_over_loss_duplication_and_reordering_arrive_exactly_once() {
    for seed in 1..=3 {
        exchange::<64>(seed, LinkConfig::default());
    }
}

/// The same with the hosts' settings: 128 fragments in flight (far past
/// the 32 the selective ack covers) and an ack every 8 frames.
#[test]
fn the_same_with_the_host_window_and_sparse_acks() {
    // A link with 512 slots is built on the stack first.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            for seed in 1..=3 {
                exchange::<512>(seed, LinkConfig::host());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// With acks every 8 frames, a burst costs a few acks, and its tail (marked
/// "ack now") is acknowledged at once rather than after the ack delay.
#[test]
fn sparse_acks_still_acknowledge_a_burst_tail_at_once() {
    for (config, most_acks) in [(LinkConfig::host(), 3), (LinkConfig::default(), 16)] {
        let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
        // No loss and a fixed delay: frames arrive in order (a frame out of
        // order is acked at once, whatever the setting).
        let mut net = Net::new(5, 0, 0, Duration::from_micros(1));
        let mut now = Instant::ZERO;
        let mut ids = Vec::new();
        for i in 0..2 {
            let m = message(5, i, 8 * shoal_core::link::FRAGMENT);
            ids.push(ends[0].link.send(now, NodeId(2), 1, &m).unwrap());
        }
        ids.push(
            ends[0]
                .link
                .send(now, NodeId(2), 1, b"one fragment")
                .unwrap(),
        );
        flush(&mut ends, &mut net, now, usize::from(config.window));
        while ends[0].events.len() < ids.len() {
            assert!(step(
                &mut ends,
                &mut net,
                &mut now,
                usize::from(config.window)
            ));
        }
        let acks = ends[1].link.stats().acks_sent;
        assert!(acks <= most_acks, "{acks} acks for 17 frames");
        // Well within the 5 ms ack delay: nothing waited for it.
        assert!(now < Instant::from_millis(2), "delivered at {now:?}");
        assert_eq!(ends[1].received.len(), 3);
    }
}

#[test]
fn silent_peer_fails_every_message_within_the_bound() {
    let config = LinkConfig::default();
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    ends[1].silent = true;
    let mut net = Net::new(7, 0, 0, Duration::from_millis(1));
    let mut now = Instant::ZERO;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            ends[0]
                .link
                .send(now, NodeId(2), 1, &message(7, i, 3000))
                .unwrap(),
        );
    }
    flush(&mut ends, &mut net, now, 8);
    while step(&mut ends, &mut net, &mut now, 8) {}
    let bound = config.failure_bound();
    assert_eq!(bound, Duration::from_secs(14));
    for id in ids {
        let (at, reason) = ends[0]
            .events
            .iter()
            .find_map(|(t, e)| match e {
                LinkEvent::Failed { id: f, reason, .. } if *f == id => Some((*t, *reason)),
                _ => None,
            })
            .expect("every message fails");
        assert_eq!(reason, FailReason::TimedOut);
        assert!(at - Instant::ZERO <= bound, "{id:?} failed after {at:?}");
    }
    assert!(
        ends[0]
            .events
            .iter()
            .all(|(_, e)| !matches!(e, LinkEvent::Delivered { .. }))
    );
}

/// A window lowered for one peer (a microcontroller) holds for that peer,
/// whatever the configured window.
#[test]
fn a_window_lowered_for_one_peer_is_never_exceeded() {
    let config = LinkConfig {
        window: 32,
        ..LinkConfig::default()
    };
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    let mut net = Net::new(4, 50_000, 0, Duration::from_millis(5));
    let mut now = Instant::ZERO;
    for i in 0..3 {
        ends[0]
            .link
            .send(now, NodeId(2), 1, &message(4, i, MAX_MSG))
            .unwrap();
    }
    ends[0].link.set_window(NodeId(2), 2);
    flush(&mut ends, &mut net, now, 2);
    while ends[1].received.len() < 3 {
        assert!(step(&mut ends, &mut net, &mut now, 2));
    }
}

#[test]
fn a_small_window_is_never_exceeded() {
    let config = LinkConfig {
        window: 2,
        ..LinkConfig::default()
    };
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    let mut net = Net::new(3, 50_000, 0, Duration::from_millis(5));
    let mut now = Instant::ZERO;
    for i in 0..3 {
        ends[0]
            .link
            .send(now, NodeId(2), 1, &message(3, i, MAX_MSG))
            .unwrap();
    }
    flush(&mut ends, &mut net, now, 2);
    while ends[1].received.len() < 3 {
        assert!(step(&mut ends, &mut net, &mut now, 2));
    }
}

#[test]
fn a_restarted_receiver_gets_later_messages_exactly_once() {
    let config = LinkConfig::default();
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    let mut net = Net::new(11, 20_000, 10_000, Duration::from_millis(5));
    let mut now = Instant::ZERO;
    for i in 0..20 {
        ends[0]
            .link
            .send(now, NodeId(2), 1, &message(11, i, 2000))
            .unwrap();
    }
    flush(&mut ends, &mut net, now, 8);
    let all_acked = |e: &End<64>| {
        e.events
            .iter()
            .filter(|(_, e)| matches!(e, LinkEvent::Delivered { .. }))
            .count()
            == 20
    };
    while ends[1].received.len() < 20 || !all_acked(&ends[0]) {
        assert!(step(&mut ends, &mut net, &mut now, 8));
    }
    // The receiver restarts: a fresh link, a higher epoch, no memory.
    ends[1] = End::new(2, 2, config);
    // The sender has not heard of the restart; it keeps its old stream.
    for i in 100..120 {
        ends[0]
            .link
            .send(now, NodeId(2), 1, &message(11, i, 2000))
            .unwrap();
    }
    flush(&mut ends, &mut net, now, 8);
    while ends[1].received.len() < 20 {
        assert!(
            step(&mut ends, &mut net, &mut now, 8),
            "stalled after restart"
        );
    }
    // Let any stragglers arrive, then check nothing came twice.
    for _ in 0..10_000 {
        if !step(&mut ends, &mut net, &mut now, 8) {
            break;
        }
    }
    let mut got: Vec<u32> = ends[1].received.iter().map(|(_, m)| index_of(m)).collect();
    got.sort();
    assert_eq!(got, (100..120).collect::<Vec<_>>());
    assert!(
        ends[1].link.stats().resets >= 1,
        "the restarted receiver asked for a new stream"
    );
}

/// A sender that forgets its peer (as a node does when membership declares
/// the peer dead) and later talks to it again opens a stream its receiver,
/// which forgot nothing, takes as new rather than as a stale old one.
#[test]
fn a_sender_that_forgot_its_peer_reaches_it_again() {
    let config = LinkConfig::default();
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    let mut net = Net::new(5, 0, 0, Duration::from_millis(2));
    let mut now = Instant::ZERO;
    let mut sent = 0u32;
    let deliver = |ends: &mut [End<64>; 2], net: &mut Net, now: &mut Instant, sent: &mut u32| {
        ends[0]
            .link
            .send(*now, NodeId(2), 1, &message(5, *sent, 100))
            .unwrap();
        *sent += 1;
        flush(ends, net, *now, 8);
        let want = *sent as usize;
        while ends[1].received.len() < want {
            assert!(step(ends, net, now, 8), "stalled at message {want}");
        }
    };
    // Some streams come and go: the receiver goes silent, the sender's
    // messages time out and it opens a new stream each time.
    for _ in 0..3 {
        deliver(&mut ends, &mut net, &mut now, &mut sent);
        ends[1].silent = true;
        ends[0].link.send(now, NodeId(2), 1, b"lost").unwrap();
        flush(&mut ends, &mut net, now, 8);
        while !ends[0]
            .events
            .iter()
            .any(|(t, e)| *t >= now && matches!(e, LinkEvent::Failed { .. }))
        {
            assert!(step(&mut ends, &mut net, &mut now, 8));
        }
        ends[1].silent = false;
    }
    deliver(&mut ends, &mut net, &mut now, &mut sent);
    // The sender forgets the peer; the receiver still holds its stream.
    ends[0].link.forget(NodeId(2));
    deliver(&mut ends, &mut net, &mut now, &mut sent);
    deliver(&mut ends, &mut net, &mut now, &mut sent);
    let got: Vec<u32> = ends[1].received.iter().map(|(_, m)| index_of(m)).collect();
    assert_eq!(got, (0..sent).collect::<Vec<_>>());
}

#[test]
fn a_stale_reset_is_ignored() {
    let config = LinkConfig::default();
    let mut a: Link<4, 16> = Link::new(config, 1);
    let now = Instant::ZERO;
    a.send(now, NodeId(2), 1, b"hello").unwrap();
    let mut buf = [0u8; MAX_FRAME];
    let (_, n) = a.poll_transmit(now, &mut buf).unwrap();
    let Some(Frame::Data { stream, seq, .. }) = Frame::parse(&buf[..n]) else {
        panic!("a data frame");
    };
    // A reset for another stream generation, or a seq it does not hold.
    for (s, q) in [(stream.wrapping_add(1), seq), (stream, seq + 5)] {
        let mut r = [0u8; 7];
        let n = Frame::Reset { stream: s, seq: q }.emit(&mut r).unwrap();
        a.handle_frame(now, NodeId(2), 1, &r[..n]).unwrap();
    }
    assert_eq!(a.stats().resets, 0);
    // The genuine one restarts the stream: the fragment goes out again.
    let mut r = [0u8; 7];
    let n = Frame::Reset { stream, seq }.emit(&mut r).unwrap();
    a.handle_frame(now, NodeId(2), 1, &r[..n]).unwrap();
    assert_eq!(a.stats().resets, 1);
    let (_, n) = a.poll_transmit(now, &mut buf).unwrap();
    let Some(Frame::Data {
        stream: s2,
        opening,
        ..
    }) = Frame::parse(&buf[..n])
    else {
        panic!("a data frame");
    };
    assert_eq!(s2, stream.wrapping_add(1));
    assert!(opening);
}

#[test]
fn many_senders_share_a_small_pool_without_deadlock() {
    // 20 receive slots: room for one whole 16-fragment message and a bit.
    let config = LinkConfig::default();
    let mut ends: Vec<End<20>> = (1..=5).map(|i| End::new(i, 1, config)).collect();
    let mut net = Net::new(5, 50_000, 10_000, Duration::from_millis(10));
    let mut now = Instant::ZERO;
    let mut pending: Vec<(usize, u32)> = (1..5).flat_map(|s| (0..3).map(move |i| (s, i))).collect();
    while ends[0].received.len() < 12 {
        pending.retain(|&(s, i)| {
            let m = message(s as u64, i, MAX_MSG);
            ends[s].link.send(now, NodeId(1), 1, &m).is_err()
        });
        flush(&mut ends, &mut net, now, 8);
        assert!(now < Instant::from_millis(600_000), "stalled");
        assert!(step(&mut ends, &mut net, &mut now, 8) || ends[0].received.len() == 12);
    }
    let mut got: Vec<(NodeId, u32)> = ends[0]
        .received
        .iter()
        .map(|(p, m)| (*p, index_of(m)))
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 12);
}

proptest! {
    #[test]
    fn random_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1300), 1..40)) {
        let mut l: Link<4, 16> = Link::new(LinkConfig::default(), 1);
        let mut now = Instant::ZERO;
        let mut buf = [0u8; MAX_FRAME];
        let mut out = vec![0u8; MAX_MSG];
        l.send(now, NodeId(2), 1, b"x").unwrap();
        for f in frames {
            now += Duration::from_millis(3);
            let _ = l.handle_frame(now, NodeId(2), 1, &f);
            l.handle_timeout(now);
            while l.poll_transmit(now, &mut buf).is_some() {}
            while l.poll_received(&mut out).is_some() {}
            while l.poll_event().is_some() {}
        }
    }
}

/// A message is cut into fragments of one size (the last may be shorter),
/// as few as `FRAGMENT` allows, so equal messages make equal frames: a
/// host hands runs of equal datagrams to the kernel at once (UDP GSO).
#[test]
fn fragments_of_a_message_are_equal_but_the_last_and_as_few_as_possible() {
    use shoal_core::link::FRAGMENT;
    let mut a = End::<64>::new(1, 1, LinkConfig::host());
    let now = Instant::ZERO;
    let lens = [4, FRAGMENT, FRAGMENT + 1, 2 * FRAGMENT + 2, 2101, 2101];
    for (i, &len) in lens.iter().enumerate() {
        a.link
            .send(now, NodeId(2), 1, &message(9, i as u32, len))
            .unwrap();
    }
    let mut frames = Vec::new();
    let mut buf = [0u8; MAX_FRAME];
    while let Some((_, n)) = a.link.poll_transmit(now, &mut buf) {
        if let Some(Frame::Data { payload, .. }) = Frame::parse(&buf[..n]) {
            frames.push(payload.len());
        }
    }
    let mut at = 0;
    let mut per_message = Vec::new();
    for &len in &lens {
        let count = len.div_ceil(FRAGMENT);
        let sizes = frames[at..at + count].to_vec();
        assert_eq!(sizes.iter().sum::<usize>(), len, "{len}: {sizes:?}");
        assert!(
            sizes.windows(2).all(|w| w[1] <= w[0])
                && sizes[..count - 1].iter().all(|&s| s == sizes[0]),
            "{len}: fragments {sizes:?}"
        );
        assert!(sizes[0] - sizes[count - 1] < count, "{len}: {sizes:?}");
        per_message.push(sizes);
        at += count;
    }
    assert_eq!(at, frames.len(), "no frame beyond the messages'");
    assert_eq!(per_message[4], [1051, 1050]);
    assert_eq!(
        per_message[4], per_message[5],
        "equal messages, equal frames"
    );
}

#[test]
fn a_burst_of_small_messages_shares_datagrams_and_arrives_exactly_once() {
    use shoal_core::link::frame::{PACK_MAX, PACKED, unpack};
    let config = LinkConfig::host();
    let mut ends = [End::<64>::new(1, 1, config), End::<64>::new(2, 1, config)];
    let now = Instant::ZERO;
    let lens = [1, 40, 200, 64, 500, 3000, 8, 90];
    let msgs: Vec<Vec<u8>> = (0..40)
        .map(|i| message(5, i, lens[i as usize % lens.len()]))
        .collect();
    for m in &msgs {
        ends[0].link.send(now, NodeId(2), 1, m).unwrap();
    }
    // The first burst: small frames packed, never past a frame's size, and
    // large ones (the 3000-byte messages' fragments) alone.
    let mut buf = [0u8; MAX_FRAME];
    let mut datagrams = Vec::new();
    while let Some((peer, n)) = ends[0].link.poll_transmit(now, &mut buf) {
        assert_eq!(peer, NodeId(2));
        datagrams.push(buf[..n].to_vec());
    }
    let frames: usize = msgs
        .iter()
        .map(|m| m.len().div_ceil(shoal_core::link::FRAGMENT))
        .sum();
    let packed: Vec<&Vec<u8>> = datagrams.iter().filter(|d| d[0] == PACKED).collect();
    assert!(!packed.is_empty());
    assert!(
        datagrams.len() < frames / 2,
        "{} datagrams",
        datagrams.len()
    );
    let mut carried = datagrams.len() - packed.len();
    for d in packed {
        for f in unpack(d).unwrap() {
            let f = f.unwrap();
            assert!(f.len() <= PACK_MAX);
            assert!(Frame::parse(f).is_some());
            carried += 1;
        }
    }
    assert_eq!(carried, frames, "every frame sent once");

    // Delivered whole and once each (in the order they complete), over
    // 20% loss.
    let mut net = Net::new(7, 200_000, 50_000, Duration::from_millis(5));
    for d in datagrams {
        net.seq += 1;
        if !net.rng.next_u64().is_multiple_of(5) {
            net.wire.push(Reverse((now, net.seq, 1, 0, 1, d)));
        }
    }
    let mut now = now;
    while ends[1].received.len() < msgs.len() {
        assert!(now < Instant::from_millis(60_000), "stalled");
        assert!(step(&mut ends, &mut net, &mut now, 128));
    }
    let mut got: Vec<&Vec<u8>> = ends[1].received.iter().map(|(_, m)| m).collect();
    got.sort_by_key(|m| index_of(m));
    assert_eq!(got.len(), msgs.len());
    assert!(
        got.iter().zip(&msgs).all(|(g, m)| *g == m),
        "a message changed"
    );
}

#[test]
fn new_fragments_leave_in_bursts_per_peer_and_every_peer_gets_turns() {
    use shoal_core::link::BURST;
    let mut a = End::<256>::new(1, 1, LinkConfig::host());
    let now = Instant::ZERO;
    // Three peers, each with 20 two-fragment messages queued (80 fragments,
    // within the window).
    for i in 0..20 {
        for peer in 2..=4 {
            a.link
                .send(now, NodeId(peer), 1, &message(peer, i, 2101))
                .unwrap();
        }
    }
    let mut order = Vec::new();
    let mut buf = [0u8; MAX_FRAME];
    while let Some((peer, _)) = a.link.poll_transmit(now, &mut buf) {
        order.push(peer.0);
    }
    assert_eq!(order.len(), 3 * 40);
    // Runs of one peer: BURST long, but where a peer ran out.
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &p in &order {
        match runs.last_mut() {
            Some((q, n)) if *q == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    let burst = usize::from(BURST);
    assert!(runs.iter().all(|&(_, n)| n <= burst), "{runs:?}");
    assert!(
        runs[..runs.len() - 3].iter().all(|&(_, n)| n == burst),
        "{runs:?}"
    );
    // Round robin between bursts: each peer's first burst comes before any
    // peer's second.
    let firsts: Vec<u64> = runs[..3].iter().map(|&(p, _)| p).collect();
    let mut sorted = firsts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [2, 3, 4], "{runs:?}");
}
