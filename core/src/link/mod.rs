//! The reliable link: per-peer, acknowledged, windowed delivery of messages
//! up to 16 KiB over sealed datagrams.
//!
//! - **Fragments.** A message is split into up to [`MAX_FRAGMENTS`] data
//!   frames of at most [`FRAGMENT`] bytes with consecutive sequence numbers
//!   ([`frame`] has the layout). Each peer has one sequence space per
//!   direction.
//! - **Acks.** The receiver acknowledges cumulatively plus a 32-bit selective
//!   ack, piggybacked on data frames or sent alone: at once for out-of-order
//!   and duplicate frames and for frames marked *ack now*, otherwise after
//!   `ack_every` frames or `ack_delay`. A sender marks the last fragment it
//!   has to send for now, and every retransmission, so a burst's tail is
//!   never left waiting for the delay.
//! - **Retransmission.** Each fragment has a timer from an RFC 6298 estimate
//!   (Karn's rule: no samples from retransmitted fragments), doubled on every
//!   retransmission up to `rto_max`; three later fragments acknowledged
//!   before it trigger a fast retransmit. After `max_retransmits` the whole
//!   message fails with [`LinkEvent::Failed`] — never a silent drop — and so
//!   does every other unfinished message to that peer. So a message to a
//!   peer that stopped answering fails within [`LinkConfig::failure_bound`]
//!   of its `send`.
//! - **Window.** At most `window` fragments are unacknowledged per peer
//!   (a node lowers it towards a small receiver: an MCU NIC holds ~10 KB),
//!   and none is sent [`SPAN`] or more sequence numbers past the oldest
//!   unacked one, the most a receiver tracks. At most `queue` fragments are
//!   queued or in flight per peer, so one slow peer cannot take every slot.
//! - **Bounded memory, no deadlock.** Sending copies a message into `S`
//!   transmit slots or fails with [`SendError::Full`]. Receiving reserves all
//!   of a message's slots (out of `S` receive slots) when its first fragment
//!   arrives, in any order; a fragment that cannot reserve is dropped unacked
//!   and retransmitted later. An acknowledged fragment is never dropped, and
//!   every reserved message can complete, so the pool cannot deadlock.
//!   Complete messages are handed out by [`Link::poll_received`] in the
//!   order they complete; each exactly once.
//! - **Restarts.** Receive state belongs to the sender's epoch (from the
//!   authenticated header). A higher epoch drops it; a data frame that does
//!   not start a stream (seq ≠ 0) with no receive state is answered with a
//!   `Reset` naming its seq, and a sender that holds that seq renumbers its
//!   unfinished messages from 0 and sends them again. Learning of a peer's
//!   higher epoch (from a frame or from [`Link::send`]) does the same.
//! - **Peer table.** State for up to `P` peers; when full, the least recently
//!   active peer with nothing in flight is forgotten — preferably one quiet
//!   for longer than the failure bound — else the newcomer is refused
//!   (`PeerTableFull`, or a counted drop for an incoming frame).
//!
//! # Call order
//! [`Link::send`] (command) and [`Link::handle_frame`] / [`Link::handle_timeout`]
//! (inputs) in any order; after each, drain [`Link::poll_transmit`],
//! [`Link::poll_received`] and [`Link::poll_event`], then sleep until
//! [`Link::poll_timeout`].

pub mod frame;
mod rtt;
pub mod run;

pub use frame::{FRAGMENT, Frame, MAX_FRAGMENTS, MAX_FRAME};
use frame::{PACK_MAX, PACKED_HEADER, PACKED_PREFIX};
pub use rtt::RttEstimator;

use frame::Ack;

use crate::{Duration, Instant, NodeId};

/// Link settings.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkConfig {
    /// Most unacknowledged fragments in flight per peer (at most [`SPAN`],
    /// the receiver's span).
    pub window: u16,
    /// Most fragments queued or in flight per peer (at most `S`, the
    /// link's slots).
    pub queue: u16,
    /// Retransmission timeout before any RTT sample.
    pub rto_initial: Duration,
    /// Least retransmission timeout.
    pub rto_min: Duration,
    /// Greatest retransmission timeout (backoff stops doubling here).
    pub rto_max: Duration,
    /// Retransmissions of one fragment before its message fails.
    pub max_retransmits: u8,
    /// Longest a receiver delays an acknowledgement.
    pub ack_delay: Duration,
    /// Frames a receiver takes before it acknowledges them (at least 1).
    pub ack_every: u8,
    /// Largest message accepted by `send` (at most `MAX_FRAGMENTS × FRAGMENT`).
    pub max_message: usize,
}

impl Default for LinkConfig {
    /// Tuned for LANs: 8 fragments (≈ 9 KB) in flight fit a microcontroller
    /// NIC; a 200 ms first timeout, 10 ms to 2 s afterwards; 6 retries.
    fn default() -> Self {
        LinkConfig {
            window: 8,
            queue: PEER_QUEUE as u16,
            rto_initial: Duration::from_millis(200),
            rto_min: Duration::from_millis(10),
            rto_max: Duration::from_secs(2),
            max_retransmits: 6,
            ack_delay: Duration::from_millis(5),
            ack_every: 2,
            max_message: 16 * 1024,
        }
    }
}

/// The link window hosts use with each other (and clients with hosts):
/// the receiver's whole span, so a host-to-host link is not bound by round
/// trips below about 140 KB in flight.
pub const HOST_WINDOW: u16 = SPAN as u16;
/// The link queue hosts keep per peer (and clients with hosts): two windows.
pub const HOST_QUEUE: u16 = 2 * HOST_WINDOW;

impl LinkConfig {
    /// The settings hosts use (and clients talking to hosts): the whole
    /// span in flight, [`HOST_QUEUE`] fragments queued per peer, and an ack
    /// every 8 frames, since a wide window needs no prompt acks to keep
    /// flowing and every ack is a sealed datagram each way. A node lowers
    /// the window towards a microcontroller (see `node::MCU_WINDOW`).
    pub fn host() -> Self {
        LinkConfig {
            window: HOST_WINDOW,
            queue: HOST_QUEUE,
            ack_every: 8,
            ..LinkConfig::default()
        }
    }

    /// The longest a message to a silent peer can wait, from `send` until
    /// [`LinkEvent::Failed`]: the sum of every backed-off timeout,
    /// `Σ_{i=0..=max_retransmits} min(rto_max, max(rto_initial, rto_max) · 2^i)`
    /// bounded using the largest timeout the estimator can reach.
    pub fn failure_bound(&self) -> Duration {
        let base = self.rto_initial.max(self.rto_max);
        (0..=u32::from(self.max_retransmits)).fold(Duration::ZERO, |acc, i| {
            acc + Duration::from_micros(
                base.as_micros()
                    .saturating_mul(1u64 << i.min(32))
                    .min(self.rto_max.as_micros()),
            )
        })
    }
}

/// Identifies one message sent with [`Link::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MessageId(pub u64);

/// Why a message failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FailReason {
    /// A fragment was retransmitted `max_retransmits` times unacknowledged.
    TimedOut,
    /// The peer was forgotten (declared dead or left).
    PeerGone,
}

/// What happened to a sent message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkEvent {
    /// Every fragment was acknowledged.
    Delivered {
        /// The peer.
        peer: NodeId,
        /// The message.
        id: MessageId,
    },
    /// The link gave up on the message.
    Failed {
        /// The peer.
        peer: NodeId,
        /// The message.
        id: MessageId,
        /// Why.
        reason: FailReason,
    },
}

/// Why [`Link::send`] refused a message. Nothing was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SendError {
    /// Larger than `max_message`: split it at a higher layer.
    TooLarge,
    /// Not enough free transmit slots: wait for deliveries (events) and retry.
    Full,
    /// No room to track another peer and none idle to evict: retry later.
    PeerTableFull,
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SendError::TooLarge => "message larger than the link's maximum",
            SendError::Full => "link send buffer full; retry after deliveries",
            SendError::PeerTableFull => "link peer table full; retry later",
        })
    }
}

impl core::error::Error for SendError {}

/// A frame that did not parse. The caller counts it and drops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameError;

/// Link counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStats {
    /// Data frames sent, first transmissions.
    pub data_sent: u64,
    /// Data frames sent again.
    pub retransmits: u64,
    /// Pure ack frames sent.
    pub acks_sent: u64,
    /// Data frames received.
    pub data_received: u64,
    /// Data frames received again (suppressed, re-acked).
    pub duplicates: u64,
    /// Data frames dropped: no receive slot could be reserved.
    pub no_slot: u64,
    /// Data frames dropped: beyond the receive window.
    pub out_of_window: u64,
    /// Frames dropped: the peer table was full.
    pub no_peer_room: u64,
    /// Resets sent and obeyed.
    pub resets: u64,
    /// Messages fully acknowledged.
    pub delivered: u64,
    /// Messages that failed.
    pub failed: u64,
    /// Messages handed to the node.
    pub received: u64,
    /// Events lost because nobody drained them.
    pub events_lost: u64,
}

#[derive(Clone, Copy, Debug)]
struct TxSlot {
    msg: MessageId,
    seq: u32,
    index: u16,
    count: u16,
    len: u16,
    sent_at: Option<Instant>,
    deadline: Instant,
    retransmits: u8,
    acked: bool,
    /// Due now because later fragments were acknowledged (fast retransmit),
    /// not because its timer fired.
    fast: bool,
}

#[derive(Clone, Copy, Debug)]
struct RxMsg {
    peer: NodeId,
    first: u32,
    count: u16,
    have: u32,
    slots: [u16; MAX_FRAGMENTS],
    lens: [u16; MAX_FRAGMENTS],
}

impl RxMsg {
    fn complete(&self) -> bool {
        self.have == (1u32 << self.count) - 1
    }
}

/// Most fragments queued or in flight to one peer, by default
/// ([`LinkConfig::queue`]).
pub const PEER_QUEUE: usize = 64;

/// New fragments one peer sends in a row before the next peer with some
/// gets its turn. Fragments to one peer leave back to back, so a host can
/// hand them to the kernel as one run (UDP GSO) rather than one datagram
/// per peer in turn; no peer waits behind more than this many fragments of
/// each other peer.
pub const BURST: u8 = 16;

/// The receiver's span: it takes fragments up to this many sequence numbers
/// past the first it is missing, and a sender keeps every fragment it sends
/// within this many of its oldest unacknowledged one.
pub const SPAN: u32 = 256;

/// Which of the [`SPAN`] sequence numbers from the first one missing were
/// received: a ring of bits indexed by sequence number modulo the span,
/// the bit of a sequence number cleared once the receiver moves past it.
/// 32 bytes per peer; words of 32 bits suit a microcontroller.
#[derive(Clone, Copy, Debug, Default)]
struct RxBits([u32; SPAN as usize / 32]);

impl RxBits {
    fn at(seq: u32) -> (usize, u32) {
        let i = seq % SPAN;
        ((i / 32) as usize, 1 << (i % 32))
    }

    fn has(&self, seq: u32) -> bool {
        let (w, bit) = Self::at(seq);
        self.0[w] & bit != 0
    }

    fn set(&mut self, seq: u32) {
        let (w, bit) = Self::at(seq);
        self.0[w] |= bit;
    }

    fn clear(&mut self, seq: u32) {
        let (w, bit) = Self::at(seq);
        self.0[w] &= !bit;
    }

    /// Bit `k`: sequence number `from + k` was received.
    fn from(&self, from: u32) -> u32 {
        let i = from % SPAN;
        let (w, shift) = ((i / 32) as usize, i % 32);
        let words = self.0.len();
        let low = self.0[w] >> shift;
        let high = match shift {
            0 => 0,
            _ => self.0[(w + 1) % words] << (32 - shift),
        };
        low | high
    }
}

#[derive(Clone, Debug)]
struct Peer<const S: usize> {
    id: NodeId,
    epoch: u64,
    last_active: Instant,
    next_seq: u32,
    /// Transmit slots of this peer's unfinished messages, in sequence order.
    tx: heapless::Deque<u16, S>,
    rtt: RttEstimator,
    /// Generation of this node's stream to the peer.
    tx_stream: u16,
    /// Most unacknowledged fragments in flight to this peer.
    window: u16,
    /// No ack has come back on `tx_stream` yet.
    opening: bool,
    /// Generation of the peer's stream to this node, once opened.
    rx_stream: Option<u16>,
    rx_next: u32,
    /// The fragments received from `rx_next` on (`rx_next`'s never is).
    rx_bits: RxBits,
    ack_pending: bool,
    ack_now: bool,
    ack_due: Option<Instant>,
    rx_since_ack: u8,
    resets: heapless::Vec<(u16, u32), 4>,
    /// No fragment sent to this peer and not yet acknowledged has a
    /// deadline before this (`None`: none has one). A bound, not the
    /// earliest deadline: lowered when a deadline is set, made exact when a
    /// scan of the queue finds it passed. It spares a scan of the whole
    /// queue per fragment sent while no retransmission can be due.
    due_from: Option<Instant>,
}

impl<const S: usize> Peer<S> {
    fn new(id: NodeId, epoch: u64, now: Instant, rto: Duration, stream: u16, window: u16) -> Self {
        Peer {
            id,
            epoch,
            last_active: now,
            next_seq: 0,
            tx: heapless::Deque::new(),
            rtt: RttEstimator::new(rto),
            tx_stream: stream,
            window,
            opening: true,
            rx_stream: None,
            rx_next: 0,
            rx_bits: RxBits::default(),
            ack_pending: false,
            ack_now: false,
            ack_due: None,
            rx_since_ack: 0,
            resets: heapless::Vec::new(),
            due_from: None,
        }
    }

    fn ack(&self) -> Option<Ack> {
        Some(Ack {
            stream: self.rx_stream?,
            next: self.rx_next,
            sack: self.rx_bits.from(self.rx_next.wrapping_add(1)),
        })
    }
}

const EVENTS: usize = 64;

/// Reliable delivery to up to `P` peers with `S` transmit and `S` receive
/// fragment slots.
pub struct Link<const P: usize, const S: usize> {
    config: LinkConfig,
    peers: heapless::Vec<Peer<S>, P>,
    tx: [Option<TxSlot>; S],
    tx_free: heapless::Vec<u16, S>,
    tx_data: [[u8; FRAGMENT]; S],
    rx_data: [[u8; FRAGMENT]; S],
    rx_free: heapless::Vec<u16, S>,
    rx_msgs: heapless::Vec<RxMsg, S>,
    next_msg: u64,
    /// The number of the next stream this link opens, to any peer. Streams
    /// are numbered from one counter so that a peer whose state was
    /// forgotten and made again never reuses a number its receiver still
    /// holds as newer (the receiver ignores streams older than its own).
    next_stream: u16,
    /// The peer whose new fragments go first next time (round robin).
    turn: usize,
    /// New fragments `turn` has sent in a row (at most [`BURST`]).
    burst: u8,
    events: heapless::Deque<LinkEvent, EVENTS>,
    stats: LinkStats,
}

impl<const P: usize, const S: usize> Link<P, S> {
    /// An idle link. `_local_epoch` is this node's own epoch (carried in the
    /// wire header, not by the link).
    pub fn new(config: LinkConfig, _local_epoch: u64) -> Self {
        let mut rx_free = heapless::Vec::new();
        let mut tx_free = heapless::Vec::new();
        for i in (0..S).rev() {
            let _ = rx_free.push(i as u16);
            let _ = tx_free.push(i as u16);
        }
        Link {
            config,
            peers: heapless::Vec::new(),
            tx: [None; S],
            tx_free,
            tx_data: [[0; FRAGMENT]; S],
            rx_data: [[0; FRAGMENT]; S],
            rx_free,
            rx_msgs: heapless::Vec::new(),
            next_msg: 1,
            next_stream: 0,
            turn: 0,
            burst: 0,
            events: heapless::Deque::new(),
            stats: LinkStats::default(),
        }
    }

    // ---- getters ----

    /// Counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The smoothed RTT to `peer`, once measured.
    pub fn srtt(&self, peer: NodeId) -> Option<Duration> {
        self.peers.iter().find(|p| p.id == peer)?.rtt.srtt()
    }

    /// Lowers (or restores) the window to `peer`, at most the configured
    /// one: a microcontroller takes a few fragments at a time, a host many.
    pub fn set_window(&mut self, peer: NodeId, window: u16) {
        let w = window.clamp(1, self.config.window.min(SPAN as u16));
        if let Some(p) = self.peers.iter_mut().find(|p| p.id == peer) {
            p.window = w;
        }
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Free transmit slots: the fragments [`Link::send`] can take now (to a
    /// peer whose own queue has room).
    pub fn tx_room(&self) -> usize {
        self.tx_free.len()
    }

    /// The first fragment of the message [`Link::poll_received`] hands out
    /// next, if one is complete.
    pub fn peek_received(&self) -> Option<&[u8]> {
        let m = self.rx_msgs.iter().find(|m| m.complete())?;
        let n = usize::from(m.lens[0]);
        Some(&self.rx_data[usize::from(m.slots[0])][..n])
    }

    /// Fragments queued or in flight to `peer`.
    pub fn outstanding(&self, peer: NodeId) -> usize {
        self.peers
            .iter()
            .find(|p| p.id == peer)
            .map_or(0, |p| self.slots(p).filter(|t| !t.acked).count())
    }

    /// Unacknowledged fragments on the wire to `peer`.
    pub fn in_flight(&self, peer: NodeId) -> usize {
        self.peers.iter().find(|p| p.id == peer).map_or(0, |p| {
            self.slots(p)
                .filter(|t| !t.acked && t.sent_at.is_some())
                .count()
        })
    }

    fn slots<'a>(&'a self, p: &'a Peer<S>) -> impl Iterator<Item = &'a TxSlot> + 'a {
        p.tx.iter()
            .filter_map(|&i| self.tx.get(usize::from(i))?.as_ref())
    }

    // ---- commands ----

    /// Queues `message` for reliable delivery to `peer`, whose epoch the
    /// caller knows to be `peer_epoch`.
    pub fn send(
        &mut self,
        now: Instant,
        peer: NodeId,
        peer_epoch: u64,
        message: &[u8],
    ) -> Result<MessageId, SendError> {
        let max = self.config.max_message.min(MAX_FRAGMENTS * FRAGMENT);
        if message.len() > max {
            return Err(SendError::TooLarge);
        }
        // Fragments of one size (the last may be shorter), as few as
        // FRAGMENT allows: equal messages then make equal datagrams, which
        // a host hands the kernel as one run (UDP GSO).
        let size = message
            .len()
            .div_ceil(message.len().div_ceil(FRAGMENT).max(1))
            .max(1);
        let count = message.len().div_ceil(size).max(1);
        if self.tx_free.len() < count {
            return Err(SendError::Full);
        }
        let p = self
            .peer_index(now, peer, peer_epoch)
            .ok_or(SendError::PeerTableFull)?;
        let queue = usize::from(self.config.queue).min(S);
        if self.peers[p].tx.len() + count > queue {
            return Err(SendError::Full);
        }
        let id = MessageId(self.next_msg);
        self.next_msg += 1;
        let first = self.peers[p].next_seq;
        self.peers[p].next_seq = first.wrapping_add(count as u32);
        let mut chunks = message.chunks(size);
        for index in 0..count {
            let Some(slot) = self.tx_free.pop() else {
                break;
            };
            let i = usize::from(slot);
            let chunk = chunks.next().unwrap_or(&[]);
            self.tx_data[i][..chunk.len()].copy_from_slice(chunk);
            self.tx[i] = Some(TxSlot {
                msg: id,
                seq: first.wrapping_add(index as u32),
                index: index as u16,
                count: count as u16,
                len: chunk.len() as u16,
                sent_at: None,
                deadline: now,
                retransmits: 0,
                acked: false,
                fast: false,
            });
            let _ = self.peers[p].tx.push_back(slot);
        }
        Ok(id)
    }

    /// Forgets `peer`: its unfinished messages fail with
    /// [`FailReason::PeerGone`] and its slots are freed.
    pub fn forget(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.iter().position(|p| p.id == peer) {
            self.fail_all(p, FailReason::PeerGone);
        }
        self.drop_rx(peer);
        self.peers.retain(|p| p.id != peer);
    }

    /// Fails and frees every unfinished message to peer `p`.
    fn fail_all(&mut self, p: usize, reason: FailReason) {
        let peer = self.peers[p].id;
        let mut failed: heapless::Vec<MessageId, S> = heapless::Vec::new();
        for t in self.slots(&self.peers[p]) {
            if !failed.contains(&t.msg) {
                let _ = failed.push(t.msg);
            }
        }
        for id in failed {
            self.free_message(p, id);
            self.stats.failed += 1;
            self.event(LinkEvent::Failed { peer, id, reason });
        }
    }

    // ---- inputs ----

    /// A link frame from `peer`, whose authenticated header carried
    /// `peer_epoch`. A packed frame's frames are taken in order, up to the
    /// first malformed one.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        peer: NodeId,
        peer_epoch: u64,
        frame: &[u8],
    ) -> Result<(), FrameError> {
        match frame::unpack(frame) {
            Some(mut frames) => frames.try_for_each(|f| {
                let f = f.map_err(|()| FrameError)?;
                self.handle_one(now, peer, peer_epoch, f)
            }),
            None => self.handle_one(now, peer, peer_epoch, frame),
        }
    }

    fn handle_one(
        &mut self,
        now: Instant,
        peer: NodeId,
        peer_epoch: u64,
        frame: &[u8],
    ) -> Result<(), FrameError> {
        let frame = Frame::parse(frame).ok_or(FrameError)?;
        let Some(p) = self.peer_index(now, peer, peer_epoch) else {
            self.stats.no_peer_room += 1;
            return Ok(());
        };
        if peer_epoch < self.peers[p].epoch {
            return Ok(());
        }
        self.peers[p].last_active = now;
        match frame {
            Frame::Data {
                opening,
                ack_now,
                stream,
                seq,
                index,
                count,
                ack,
                payload,
            } => {
                if let Some(ack) = ack {
                    self.on_ack(now, p, ack);
                }
                self.on_data(now, p, (opening, stream), seq, index, count, payload);
                if ack_now {
                    let pe = &mut self.peers[p];
                    pe.ack_now |= pe.ack_pending;
                }
            }
            Frame::Ack(ack) => self.on_ack(now, p, ack),
            Frame::Reset { stream, seq } => {
                let pe = &self.peers[p];
                let holds = stream == pe.tx_stream && self.slots(pe).any(|t| t.seq == seq);
                if holds {
                    self.stats.resets += 1;
                    self.restart_stream(p);
                }
            }
        }
        Ok(())
    }

    /// Fails messages whose retransmissions ran out. Spurious calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max = self.config.max_retransmits;
        for p in 0..self.peers.len() {
            if self.peers[p].due_from.is_none_or(|d| d > now) {
                continue;
            }
            let expired = self.slots(&self.peers[p]).any(|t| {
                !t.acked && t.sent_at.is_some() && t.deadline <= now && t.retransmits >= max
            });
            if !expired {
                // Makes the peer's bound exact, so `poll_timeout` does not
                // keep returning a deadline that has gone.
                let _ = self.due_of(now, p);
            } else {
                // The peer stopped answering: every unfinished message to it
                // fails now, so none waits behind a dead window.
                self.fail_all(p, FailReason::TimedOut);
                self.restart_stream(p);
            }
        }
    }

    // ---- outputs ----

    /// The next frame to send: written to `buf`, returns the peer and length.
    ///
    /// Small frames (a burst of requests, replies or acks) to one peer go
    /// out together as one packed frame when `buf` has room.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(NodeId, usize)> {
        let (peer, first) = self.poll_frame(now, buf)?;
        let p = match self.peers.iter().position(|pe| pe.id == peer) {
            Some(p) if first <= PACK_MAX => p,
            _ => return Some((peer, first)),
        };
        // Packed: the kind, then each frame after its length. Later frames
        // are written where they belong; the first moves into place once a
        // second one comes.
        let mut end = PACKED_HEADER + PACKED_PREFIX + first;
        let mut count = 1;
        loop {
            let start = end + PACKED_PREFIX;
            let limit = buf.len().min(start + PACK_MAX);
            let Some(n) = buf
                .get_mut(start..limit)
                .and_then(|b| self.poll_frame_to(now, p, b))
            else {
                break;
            };
            if count == 1 {
                buf.copy_within(..first, PACKED_HEADER + PACKED_PREFIX);
                buf[0] = frame::PACKED;
                buf[PACKED_HEADER..PACKED_HEADER + PACKED_PREFIX]
                    .copy_from_slice(&(first as u16).to_le_bytes());
            }
            buf[end..start].copy_from_slice(&(n as u16).to_le_bytes());
            end = start + n;
            count += 1;
        }
        Some((peer, if count == 1 { first } else { end }))
    }

    /// One frame: a reset, else data, else an ack, to whichever peer.
    fn poll_frame(&mut self, now: Instant, buf: &mut [u8]) -> Option<(NodeId, usize)> {
        if let Some(r) = self.poll_reset(buf) {
            return Some(r);
        }
        if let Some(r) = self.poll_data(now, buf) {
            return Some(r);
        }
        self.poll_ack(now, buf)
    }

    /// One frame to peer `p` that fits `buf`, in the same order; `None`,
    /// changing nothing, when there is none or it does not fit.
    fn poll_frame_to(&mut self, now: Instant, p: usize, buf: &mut [u8]) -> Option<usize> {
        if let Some(&(stream, seq)) = self.peers[p].resets.last() {
            let n = Frame::Reset { stream, seq }.emit(buf)?;
            self.peers[p].resets.pop();
            return Some(n);
        }
        if let Some((i, more)) = self.next_fragment_of(now, p) {
            // Data that does not fit goes next, not an ack before it.
            return self.emit_data(now, p, i, more, buf);
        }
        self.emit_ack(now, p, buf)
    }

    /// When [`Link::handle_timeout`] or [`Link::poll_transmit`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut earliest = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        // A deadline's bound may be early: a spurious wake-up does nothing
        // but make it exact (see `due_of`).
        for p in &self.peers {
            if let Some(d) = p.due_from {
                earliest(d);
            }
            if let Some(d) = p.ack_due {
                earliest(d);
            }
        }
        t
    }

    /// The next complete message: copied to `out`, returns the peer and length.
    /// `out` must hold `max_message` bytes; a message that does not fit is
    /// dropped and counted.
    pub fn poll_received(&mut self, out: &mut [u8]) -> Option<(NodeId, usize)> {
        loop {
            let i = self.rx_msgs.iter().position(RxMsg::complete)?;
            let m = self.rx_msgs.swap_remove(i);
            let mut len = 0;
            let mut fits = true;
            for f in 0..usize::from(m.count) {
                let (slot, n) = (usize::from(m.slots[f]), usize::from(m.lens[f]));
                match out.get_mut(len..len + n) {
                    Some(dst) => dst.copy_from_slice(&self.rx_data[slot][..n]),
                    None => fits = false,
                }
                len += n;
                let _ = self.rx_free.push(m.slots[f]);
            }
            if fits {
                self.stats.received += 1;
                return Some((m.peer, len));
            }
            self.stats.no_slot += 1;
        }
    }

    /// The next delivery or failure.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn event(&mut self, e: LinkEvent) {
        if self.events.push_back(e).is_err() {
            self.stats.events_lost += 1;
        }
    }

    /// The peer's index, creating its state (evicting an idle peer) if
    /// needed, and resetting streams when its epoch grew.
    fn peer_index(&mut self, now: Instant, peer: NodeId, epoch: u64) -> Option<usize> {
        if let Some(i) = self.peers.iter().position(|p| p.id == peer) {
            if epoch > self.peers[i].epoch {
                // The peer restarted: its receive state for us is gone, and
                // its stream to us starts again at 0.
                self.peers[i].epoch = epoch;
                self.drop_rx(peer);
                self.restart_stream(i);
            }
            return Some(i);
        }
        let stream = self.take_stream();
        let window = self.config.window.clamp(1, SPAN as u16);
        let fresh = Peer::new(peer, epoch, now, self.config.rto_initial, stream, window);
        if self.peers.is_full() {
            // Forget the least recently active peer with nothing in flight.
            // Best is one quiet for longer than any retransmission could
            // last, so no frame of its old stream can still arrive; a peer
            // that went quiet more recently is taken only when none is.
            let idle =
                |p: &Peer<S>| p.tx.is_empty() && !self.rx_msgs.iter().any(|m| m.peer == p.id);
            let quiet = self.config.failure_bound();
            let victim = (0..self.peers.len())
                .filter(|&i| idle(&self.peers[i]))
                .min_by_key(|&i| {
                    let p = &self.peers[i];
                    (now.saturating_since(p.last_active) < quiet, p.last_active)
                })?;
            self.peers[victim] = fresh;
            return Some(victim);
        }
        let _ = self.peers.push(fresh);
        Some(self.peers.len() - 1)
    }

    fn drop_rx(&mut self, peer: NodeId) {
        let mut i = 0;
        while i < self.rx_msgs.len() {
            if self.rx_msgs[i].peer == peer {
                let m = self.rx_msgs.swap_remove(i);
                for f in 0..usize::from(m.count) {
                    let _ = self.rx_free.push(m.slots[f]);
                }
            } else {
                i += 1;
            }
        }
        if let Some(p) = self.peers.iter_mut().find(|p| p.id == peer) {
            p.rx_stream = None;
            p.rx_next = 0;
            p.rx_bits = RxBits::default();
            p.ack_pending = false;
            p.ack_due = None;
        }
    }

    /// Renumbers the peer's unfinished messages from seq 0, in message order,
    /// to be sent again as a new stream.
    fn restart_stream(&mut self, p: usize) {
        let mut seq = 0u32;
        for &i in self.peers[p].tx.iter() {
            if let Some(t) = self.tx.get_mut(usize::from(i)).and_then(Option::as_mut) {
                t.seq = seq;
                t.sent_at = None;
                t.acked = false;
                t.retransmits = 0;
                t.fast = false;
                seq += 1;
            }
        }
        let stream = self.take_stream();
        let pe = &mut self.peers[p];
        pe.next_seq = seq;
        pe.tx_stream = stream;
        pe.opening = true;
    }

    fn take_stream(&mut self) -> u16 {
        let s = self.next_stream;
        self.next_stream = s.wrapping_add(1);
        s
    }

    /// Frees every slot of message `id` of peer `p`.
    fn free_message(&mut self, p: usize, id: MessageId) {
        let pe = &mut self.peers[p];
        let mut kept = heapless::Deque::new();
        while let Some(i) = pe.tx.pop_front() {
            let slot = &mut self.tx[usize::from(i)];
            if slot.is_some_and(|t| t.msg == id) {
                *slot = None;
                let _ = self.tx_free.push(i);
            } else {
                let _ = kept.push_back(i);
            }
        }
        pe.tx = kept;
    }

    fn on_ack(&mut self, now: Instant, p: usize, ack: Ack) {
        if ack.stream != self.peers[p].tx_stream {
            return; // about a stream that was since restarted
        }
        self.peers[p].opening = false;
        let (min, max) = (self.config.rto_min, self.config.rto_max);
        let mut highest_sacked: Option<u32> = None;
        let mut newly_acked = false;
        let pe = &mut self.peers[p];
        for &i in pe.tx.iter() {
            let Some(t) = self.tx.get_mut(usize::from(i)).and_then(Option::as_mut) else {
                continue;
            };
            if t.acked || t.sent_at.is_none() {
                continue;
            }
            let below = ack.next.wrapping_sub(t.seq);
            let cumulative = below != 0 && below <= u32::MAX / 2;
            let off = t.seq.wrapping_sub(ack.next);
            let sacked = (1..=32).contains(&off) && ack.sack & (1 << (off - 1)) != 0;
            if cumulative || sacked {
                t.acked = true;
                newly_acked = true;
                if t.retransmits == 0
                    && let Some(at) = t.sent_at
                {
                    pe.rtt.sample(now - at, min, max);
                }
            }
            if sacked {
                highest_sacked = Some(highest_sacked.map_or(off, |h: u32| h.max(off)));
            }
        }
        // Fast retransmit: three later fragments arrived before this one, and
        // it has been out for at least a round trip (so acks that were already
        // on their way when it was last sent do not trigger it again).
        if let Some(h) = highest_sacked {
            let rtt = self.peers[p].rtt.srtt().unwrap_or(self.config.rto_min);
            let mut fast = false;
            for &i in self.peers[p].tx.iter() {
                if let Some(t) = self.tx.get_mut(usize::from(i)).and_then(Option::as_mut) {
                    let off = t.seq.wrapping_sub(ack.next);
                    let aged = t.sent_at.is_some_and(|at| now.saturating_since(at) >= rtt);
                    if !t.acked && aged && off + 3 <= h && t.deadline > now {
                        t.deadline = now;
                        t.fast = true;
                        fast = true;
                    }
                }
            }
            if fast {
                let pe = &mut self.peers[p];
                pe.due_from = Some(pe.due_from.map_or(now, |d| d.min(now)));
            }
        }
        if !newly_acked {
            return;
        }
        self.deliver_acked(p);
    }

    /// Frees and reports as delivered every message to peer `p` whose
    /// fragments are all acknowledged, in one pass over its queue (a
    /// message's fragments sit next to each other there, in order).
    fn deliver_acked(&mut self, p: usize) {
        let peer = self.peers[p].id;
        let mut queue = core::mem::replace(&mut self.peers[p].tx, heapless::Deque::new());
        let mut kept: heapless::Deque<u16, S> = heapless::Deque::new();
        let mut group: heapless::Vec<u16, MAX_FRAGMENTS> = heapless::Vec::new();
        loop {
            let next = queue.pop_front();
            let msg_of = |i: u16| {
                self.tx
                    .get(usize::from(i))
                    .copied()
                    .flatten()
                    .map(|t| t.msg)
            };
            let ends = match (group.first(), next) {
                (Some(&g), Some(n)) => msg_of(g) != msg_of(n),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if ends {
                let slot = |i: &u16| self.tx.get(usize::from(*i)).copied().flatten();
                let whole = slot(&group[0]).map(|t| (t.msg, usize::from(t.count)));
                let acked = group.iter().all(|i| slot(i).is_some_and(|t| t.acked));
                match whole {
                    Some((msg, count)) if acked && count == group.len() => {
                        for &i in &group {
                            self.tx[usize::from(i)] = None;
                            let _ = self.tx_free.push(i);
                        }
                        self.stats.delivered += 1;
                        self.event(LinkEvent::Delivered { peer, id: msg });
                    }
                    _ => {
                        for &i in &group {
                            let _ = kept.push_back(i);
                        }
                    }
                }
                group.clear();
            }
            match next {
                Some(i) => {
                    // A message has at most MAX_FRAGMENTS fragments, so the
                    // group always has room.
                    let _ = group.push(i);
                }
                None => break,
            }
        }
        self.peers[p].tx = kept;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        now: Instant,
        p: usize,
        (opening, stream): (bool, u16),
        seq: u32,
        index: u16,
        count: u16,
        payload: &[u8],
    ) {
        self.stats.data_received += 1;
        let peer = self.peers[p].id;
        match self.peers[p].rx_stream {
            Some(cur) if cur == stream => {}
            // A frame of a stream older than the one open: stale, ignore.
            Some(cur) if (stream.wrapping_sub(cur) as i16) < 0 => return,
            _ if opening => {
                // A new stream (the first, or one the sender restarted).
                self.drop_rx(peer);
                let pe = &mut self.peers[p];
                pe.rx_stream = Some(stream);
                pe.rx_next = 0;
                pe.rx_bits = RxBits::default();
            }
            _ => {
                // The sender believes in a stream we hold no state for.
                self.stats.resets += 1;
                let resets = &mut self.peers[p].resets;
                if !resets.contains(&(stream, seq)) {
                    let _ = resets.push((stream, seq));
                }
                return;
            }
        }
        let off = seq.wrapping_sub(self.peers[p].rx_next);
        if off > u32::MAX / 2 || (off < SPAN && self.peers[p].rx_bits.has(seq)) {
            self.stats.duplicates += 1;
            self.schedule_ack(now, p, true);
            return;
        }
        if off >= SPAN || payload.len() > FRAGMENT {
            self.stats.out_of_window += 1;
            self.schedule_ack(now, p, true);
            return;
        }
        let first = seq.wrapping_sub(u32::from(index));
        let mi = match self
            .rx_msgs
            .iter()
            .position(|m| m.peer == peer && m.first == first)
        {
            Some(i) if self.rx_msgs[i].count == count => i,
            Some(_) => {
                self.stats.out_of_window += 1;
                return;
            }
            None => {
                // Reserve every slot the message needs, or take nothing.
                if self.rx_free.len() < usize::from(count) || self.rx_msgs.is_full() {
                    self.stats.no_slot += 1;
                    return;
                }
                let mut m = RxMsg {
                    peer,
                    first,
                    count,
                    have: 0,
                    slots: [0; MAX_FRAGMENTS],
                    lens: [0; MAX_FRAGMENTS],
                };
                for f in 0..usize::from(count) {
                    m.slots[f] = self.rx_free.pop().unwrap_or(0);
                }
                let _ = self.rx_msgs.push(m);
                self.rx_msgs.len() - 1
            }
        };
        let m = &mut self.rx_msgs[mi];
        let f = usize::from(index);
        let slot = usize::from(m.slots[f]);
        self.rx_data[slot][..payload.len()].copy_from_slice(payload);
        m.lens[f] = payload.len() as u16;
        m.have |= 1 << f;
        let pe = &mut self.peers[p];
        pe.rx_bits.set(seq);
        while pe.rx_bits.has(pe.rx_next) {
            pe.rx_bits.clear(pe.rx_next);
            pe.rx_next = pe.rx_next.wrapping_add(1);
        }
        self.schedule_ack(now, p, off != 0);
    }

    fn schedule_ack(&mut self, now: Instant, p: usize, immediate: bool) {
        let delay = self.config.ack_delay;
        let pe = &mut self.peers[p];
        pe.ack_pending = true;
        pe.rx_since_ack = pe.rx_since_ack.saturating_add(1);
        pe.ack_now |= immediate || pe.rx_since_ack >= self.config.ack_every.max(1);
        if pe.ack_due.is_none() {
            pe.ack_due = Some(now + delay);
        }
    }

    fn poll_reset(&mut self, buf: &mut [u8]) -> Option<(NodeId, usize)> {
        for p in self.peers.iter_mut() {
            if let Some((stream, seq)) = p.resets.pop() {
                let n = Frame::Reset { stream, seq }.emit(buf)?;
                return Some((p.id, n));
            }
        }
        None
    }

    fn poll_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<(NodeId, usize)> {
        let (p, i, more) = self.next_fragment(now)?;
        let n = self.emit_data(now, p, i, more, buf)?;
        Some((self.peers[p].id, n))
    }

    /// Writes fragment slot `i` to peer `p` into `buf` and marks it sent;
    /// `None`, changing nothing, when it does not fit.
    fn emit_data(
        &mut self,
        now: Instant,
        p: usize,
        i: usize,
        more: bool,
        buf: &mut [u8],
    ) -> Option<usize> {
        let t = self.tx[i]?;
        let frame = Frame::Data {
            opening: self.peers[p].opening,
            ack_now: !more || t.sent_at.is_some(),
            stream: self.peers[p].tx_stream,
            seq: t.seq,
            index: t.index,
            count: t.count,
            ack: self.peers[p].ack(),
            payload: &self.tx_data[i][..usize::from(t.len)],
        };
        let n = frame.emit(buf)?;
        let rto_max = self.config.rto_max;
        let slot = self.tx[i].as_mut()?;
        if slot.sent_at.is_some() {
            slot.retransmits += 1;
            self.stats.retransmits += 1;
            if !slot.fast {
                self.peers[p].rtt.back_off(rto_max);
            }
            slot.fast = false;
        } else {
            self.stats.data_sent += 1;
        }
        slot.sent_at = Some(now);
        let rto = self.peers[p].rtt.rto();
        let slot = self.tx[i].as_mut()?;
        let backoff = rto.saturating_mul(1 << slot.retransmits.min(16));
        slot.deadline = now + backoff.min(rto_max.max(rto));
        let deadline = slot.deadline;
        let pe = &mut self.peers[p];
        pe.due_from = Some(pe.due_from.map_or(deadline, |d| d.min(deadline)));
        pe.ack_pending = false;
        pe.ack_now = false;
        pe.ack_due = None;
        pe.rx_since_ack = 0;
        Some(n)
    }

    /// The fragment to send next: a due retransmission (earliest deadline
    /// first), else the first unsent fragment of a peer whose window has room,
    /// peers taken in turn. Returns (peer index, slot, whether another new
    /// fragment to that peer could follow it now).
    fn next_fragment(&mut self, now: Instant) -> Option<(usize, usize, bool)> {
        let mut due: Option<(usize, usize, Instant)> = None;
        for p in 0..self.peers.len() {
            if let Some((i, deadline)) = self.due_of(now, p)
                && due.is_none_or(|(_, _, d)| deadline < d)
            {
                due = Some((p, i, deadline));
            }
        }
        if let Some((p, i, _)) = due {
            return Some((p, i, false));
        }
        let n = self.peers.len();
        for k in 0..n {
            let p = (self.turn + k) % n;
            if let Some((i, more)) = self.unsent_of(p) {
                self.burst = if k == 0 && self.burst < BURST {
                    self.burst + 1
                } else {
                    1
                };
                self.turn = if self.burst < BURST { p } else { (p + 1) % n };
                return Some((p, i, more));
            }
        }
        None
    }

    /// [`Link::next_fragment`] for peer `p` alone.
    fn next_fragment_of(&mut self, now: Instant, p: usize) -> Option<(usize, bool)> {
        match self.due_of(now, p) {
            Some((i, _)) => Some((i, false)),
            None => self.unsent_of(p),
        }
    }

    /// Peer `p`'s retransmission due soonest, if one is due: its slot and
    /// deadline. Scans the peer's queue only once a deadline may have
    /// passed, and then makes `due_from` exact.
    fn due_of(&mut self, now: Instant, p: usize) -> Option<(usize, Instant)> {
        if self.peers[p].due_from.is_none_or(|d| d > now) {
            return None;
        }
        let max = self.config.max_retransmits;
        let mut due: Option<(usize, Instant)> = None;
        let mut earliest: Option<Instant> = None;
        for &i in self.peers[p].tx.iter() {
            let Some(t) = self.tx.get(usize::from(i)).and_then(Option::as_ref) else {
                continue;
            };
            if t.acked || t.sent_at.is_none() {
                continue;
            }
            earliest = Some(earliest.map_or(t.deadline, |e| e.min(t.deadline)));
            if t.deadline <= now && t.retransmits < max && due.is_none_or(|(_, d)| t.deadline < d) {
                due = Some((usize::from(i), t.deadline));
            }
        }
        self.peers[p].due_from = earliest;
        due
    }

    /// Peer `p`'s first unsent fragment, if its window has room: its slot,
    /// and whether another could follow it now.
    fn unsent_of(&self, p: usize) -> Option<(usize, bool)> {
        let pe = &self.peers[p];
        let window = usize::from(pe.window);
        let mut in_flight = 0;
        let mut base = None;
        let mut first_unsent = None;
        let mut second_unsent = None;
        for &i in pe.tx.iter() {
            let Some(t) = self.tx.get(usize::from(i)).and_then(Option::as_ref) else {
                continue;
            };
            if t.acked {
                continue;
            }
            base.get_or_insert(t.seq);
            if t.sent_at.is_some() {
                in_flight += 1;
            } else if first_unsent.is_none() {
                first_unsent = Some((usize::from(i), t.seq));
            } else if second_unsent.is_none() {
                second_unsent = Some(t.seq);
            }
        }
        let (i, seq) = first_unsent?;
        let base = base?;
        if in_flight >= window || seq.wrapping_sub(base) >= SPAN {
            return None;
        }
        let more =
            second_unsent.is_some_and(|s| in_flight + 1 < window && s.wrapping_sub(base) < SPAN);
        Some((i, more))
    }

    fn poll_ack(&mut self, now: Instant, buf: &mut [u8]) -> Option<(NodeId, usize)> {
        for p in 0..self.peers.len() {
            if let Some(n) = self.emit_ack(now, p, buf) {
                return Some((self.peers[p].id, n));
            }
        }
        None
    }

    /// Writes peer `p`'s ack into `buf` if one is due; `None`, changing
    /// nothing but a stale timer, when none is or it does not fit.
    fn emit_ack(&mut self, now: Instant, p: usize, buf: &mut [u8]) -> Option<usize> {
        let pe = &mut self.peers[p];
        let due = pe.ack_now || pe.ack_due.is_some_and(|d| d <= now);
        if let (true, true, Some(ack)) = (pe.ack_pending, due, pe.ack()) {
            let n = Frame::Ack(ack).emit(buf)?;
            pe.ack_pending = false;
            pe.ack_now = false;
            pe.ack_due = None;
            pe.rx_since_ack = 0;
            self.stats.acks_sent += 1;
            return Some(n);
        }
        if !pe.ack_pending {
            pe.ack_due = None;
        }
        None
    }
}
