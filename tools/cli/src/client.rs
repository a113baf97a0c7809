//! A blocking driver around a client [`Node`]: one UDP socket, one loop.
//!
//! The client is not a cluster member. It says hello to its contact node
//! until the node answers ([`Event::Connected`]), then sends requests over
//! the reliable link and waits for their [`Event::Response`] or
//! [`Event::Failed`]. The loop is the one the core's docs prescribe: feed
//! received datagrams and due timeouts, drain `poll_transmit`, then
//! `poll_event`, then sleep on the socket until `poll_timeout`.
//!
//! Every run picks a fresh random [`NodeId`] and boot epoch 1, so the
//! `(sender, epoch, counter)` nonces it seals under are new
//! (see `docs/protocol.md`).
//!
//! The socket is connected to the contact, so the kernel reports an ICMP
//! "port unreachable" as `ConnectionRefused`. That separates "nothing
//! listens there" from "something listens but never answers", which is what
//! a node does with datagrams sealed under another key.
//!
//! Like a node, the client uses the kernel's UDP offloads (`quinn-udp`):
//! equal fragments of consecutive requests (the chunks of a put) go down
//! the stack as one run (GSO), and a run from the contact (the chunks of a
//! get) comes up as one buffer (GRO), split back into datagrams here.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec};
use shoal_core::link::run::{self, Run};
use std::time::{Duration as StdDuration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

use shoal_core::link::LinkConfig;
use shoal_core::member::{MemberConfig, Profile, Record};
use shoal_core::node::{
    COORDS, CommandError, EVENTS, Event, HOST_OPS, MAX_MESSAGE, Node, NodeConfig, OpFailure, OpId,
    RemoteError, Request, Response, Role,
};
use shoal_core::repl::{Hlc, HlcClock};
use shoal_core::store::RamStore;
use shoal_core::wire::{ClusterKey, MAX_DATAGRAM};
use shoal_core::{Duration, Instant, NodeId, NodeKind, Pool, PoolSet};

/// The client's node: a few member entries (it tracks none), a few link
/// peers (it talks to one), and link slots for many requests in flight.
pub type ClientNode = Node<RamStore<0, 0>, 8, 8, 512, MAX_MESSAGE, EVENTS, COORDS, HOST_OPS>;

/// The socket buffers a client asks for, each way (Linux grants at most
/// `net.core.rmem_max` / `wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Datagrams taken from the socket at one wake-up: taking stops once this
/// many wait (a GRO buffer may bring more).
const RX_BATCH: usize = 32;

/// Most datagrams gathered from the node per send pass.
const TX_BATCH: usize = 64;

/// Most requests one client keeps in flight (its operation table).
pub const MAX_IN_FLIGHT: usize = HOST_OPS;

/// Where to connect and how long to wait.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The contact node's address.
    pub contact: SocketAddr,
    /// The cluster key.
    pub key: ClusterKey,
    /// How long to wait for the hello's answer, and for each request.
    pub timeout: StdDuration,
}

/// Why the client could not do what it was asked.
#[derive(Debug)]
pub enum ClientError {
    /// The contact never answered the hello.
    NoAnswer {
        /// The contact.
        addr: SocketAddr,
        /// How long we waited.
        timeout: StdDuration,
        /// The kernel said nothing listens there (ICMP port unreachable).
        refused: bool,
        /// Datagrams came back that did not verify under our key.
        auth_failed: bool,
    },
    /// A request failed after the contact answered the hello.
    Request {
        /// The contact.
        addr: SocketAddr,
        /// What the core reported.
        reason: OpFailure,
    },
    /// The core refused to send a request.
    Command(CommandError),
    /// The node answered with a response of the wrong kind.
    Unexpected(&'static str),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoAnswer {
                addr,
                auth_failed: true,
                ..
            } => write!(
                f,
                "authentication failed: is this the cluster's key? ({addr} answered with \
                 datagrams that do not verify under it)"
            ),
            ClientError::NoAnswer {
                addr,
                timeout,
                refused: true,
                ..
            } => write!(
                f,
                "no answer from {addr} within {}: is a shoal-node running there?",
                seconds(*timeout)
            ),
            ClientError::NoAnswer { addr, timeout, .. } => write!(
                f,
                "no answer from {addr} within {}: authentication failed: is this the \
                 cluster's key? (a node drops datagrams sealed under another key without a \
                 word; if the key is right, is a shoal-node running there?)",
                seconds(*timeout)
            ),
            ClientError::Request {
                addr,
                reason: OpFailure::TimedOut,
            } => write!(
                f,
                "{addr} answered the hello but not the request in time: the node or the \
                 key's owner may be overloaded or failing; retry, or raise --timeout"
            ),
            ClientError::Request {
                addr,
                reason: OpFailure::Undeliverable,
            } => write!(
                f,
                "the request to {addr} could not be delivered: the node stopped answering"
            ),
            ClientError::Request {
                addr,
                reason: OpFailure::Remote(e),
            } => write!(f, "{addr} could not serve the request: {e}"),
            ClientError::Command(e) => write!(f, "the request was not sent: {e}"),
            ClientError::Unexpected(what) => {
                write!(f, "the node answered with something other than {what}")
            }
            ClientError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// `5 s`, `0.5 s`.
pub fn seconds(d: StdDuration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// A key-addressed request's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The node that took the message (the key's owner in its view).
    pub by: NodeId,
    /// How many times the request was forwarded on the way.
    pub hops: u8,
}

/// One request of a [`Client::send_many`] batch.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The answer, or why there was none.
    pub result: Result<Sent, OpFailure>,
    /// From handing the request to the core to seeing its outcome.
    pub latency: StdDuration,
}

/// The answer to a [`Request`]: the response and a copy of the bytes that
/// came with it (a chunk, a record's value, a page of entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// What the coordinator answered.
    pub response: Response,
    /// The bytes after the response; empty for most responses.
    pub data: Vec<u8>,
}

/// A request's tag and its outcome.
pub type Finished<T> = (T, Result<Reply, OpFailure>);

/// File-system and record requests in flight through one [`Client`], each
/// tagged with a `T` of the caller's.
///
/// [`Requests::send`] hands a request to the core; [`Requests::wait`]
/// feeds the node until some finish and returns each one's tag and
/// outcome, the response's bytes copied out of [`Node::response_data`] as
/// soon as its event is polled (the core keeps them only until the next
/// input or command). Keeping many in flight is the caller's loop: send
/// until the window is full (or the core says it is busy), then wait.
pub struct Requests<T> {
    in_flight: HashMap<OpId, (T, StdInstant)>,
}

impl<T> Default for Requests<T> {
    fn default() -> Self {
        Requests {
            in_flight: HashMap::new(),
        }
    }
}

impl<T> Requests<T> {
    /// Nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Sends `request`. `Ok(Some(op))`: it is in flight; name what it is
    /// for with [`Requests::track`] before waiting. `Ok(None)`: the core's
    /// tables are full (too many requests, or link slots in use); wait for
    /// some to finish and send it again.
    pub fn send(
        &mut self,
        client: &mut Client,
        request: &Request<'_>,
    ) -> Result<Option<OpId>, ClientError> {
        let now = client.now();
        match client.node.fs_request(now, request) {
            Ok(op) => Ok(Some(op)),
            Err(CommandError::Busy) => Ok(None),
            Err(e) => Err(ClientError::Command(e)),
        }
    }

    /// Tags the request [`Requests::send`] sent as `op`.
    pub fn track(&mut self, op: OpId, tag: T) {
        self.in_flight.insert(op, (tag, StdInstant::now()));
    }

    /// Runs the client until at least one request finished, or until
    /// `until` passes (then the list may be empty), and returns every
    /// request that finished.
    ///
    /// Every request ends by the core's request timeout; one whose outcome
    /// the core lost (its event queue overflowed) is reported as timed
    /// out a second after that.
    pub fn wait(
        &mut self,
        client: &mut Client,
        until: Option<StdInstant>,
    ) -> Result<Vec<Finished<T>>, ClientError> {
        let lost_after = client.timeout + StdDuration::from_secs(1);
        let mut done = Vec::new();
        loop {
            client.flush()?;
            self.drain(client, &mut done);
            let now = StdInstant::now();
            let lost: Vec<OpId> = self
                .in_flight
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) > lost_after)
                .map(|(op, _)| *op)
                .collect();
            for op in lost {
                if let Some((tag, _)) = self.in_flight.remove(&op) {
                    done.push((tag, Err(OpFailure::TimedOut)));
                }
            }
            if !done.is_empty() || until.is_some_and(|u| now >= u) {
                return Ok(done);
            }
            let oldest = self.in_flight.values().map(|(_, at)| *at).min();
            let guard = oldest.map_or(now + lost_after, |at| at + lost_after);
            let wake = until.map_or(guard, |u| u.min(guard));
            client.wait(wake)?;
        }
    }

    /// Takes every event the node has queued, copying the response's bytes
    /// before anything else touches the node.
    fn drain(&mut self, client: &mut Client, done: &mut Vec<Finished<T>>) {
        let mut events = Vec::new();
        while let Some(event) = client.node.poll_event() {
            events.push(event);
        }
        // The node keeps the bytes of its latest response only. It delivers
        // at most one per input, so a drain holds at most one response;
        // should it hold more, the bytes of all but the last are gone, and
        // those that carry bytes are asked again.
        let last = events
            .iter()
            .rposition(|e| matches!(e, Event::Response { .. }));
        for (i, event) in events.into_iter().enumerate() {
            let (op, result) = match event {
                Event::Response { op, response } => {
                    let result = if Some(i) == last {
                        Ok(Reply {
                            response,
                            data: client.node.response_data().to_vec(),
                        })
                    } else if carries_data(&response) {
                        Err(OpFailure::Remote(RemoteError::Busy))
                    } else {
                        Ok(Reply {
                            response,
                            data: Vec::new(),
                        })
                    };
                    (op, result)
                }
                Event::Failed { op, reason } => (op, Err(reason)),
                _ => continue,
            };
            if let Some((tag, _)) = self.in_flight.remove(&op) {
                done.push((tag, result));
            }
        }
    }
}

/// Whether bytes follow `response` in its envelope.
fn carries_data(response: &Response) -> bool {
    matches!(
        response,
        Response::Chunk { .. } | Response::Record { .. } | Response::Entries { .. }
    )
}

/// A client connected to one contact node.
pub struct Client {
    node: Box<ClientNode>,
    /// Non-blocking; waits are `poll`s.
    socket: UdpSocket,
    udp: UdpSocketState,
    contact: SocketAddr,
    contact_id: NodeId,
    timeout: StdDuration,
    start: StdInstant,
    /// Datagrams to send, back to back, and their runs (see [`Run`]).
    tx: Vec<u8>,
    runs: Vec<Run>,
    /// One receive buffer, large enough for a GRO run.
    rx: Vec<u8>,
    /// Datagrams taken from the socket but not yet fed to the node, with
    /// their lengths; one is fed per [`Client::wait`].
    received: VecDeque<(Vec<u8>, usize)>,
    /// Buffers for `received`, for reuse.
    spare: Vec<Vec<u8>>,
    refused: bool,
    /// The contact's file-system settings (chunk size, replicas, read
    /// quorum), once asked: they hold for the connection.
    pub fs_info: Option<crate::fs::Info>,
    /// Versions for the writes this client numbers itself.
    hlc: HlcClock,
}

impl Client {
    /// Says hello to the contact until it answers or the timeout passes.
    pub fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let local: SocketAddr = match config.contact {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(config.contact)?;
        // The contact streams up to a link window of answers at once (a get
        // is chunk after chunk); the default buffer would drop some.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
        socket.set_nonblocking(true)?;
        let udp = UdpSocketState::new((&socket).into())?;
        let rx_len = MAX_DATAGRAM * udp.gro_segments().max(1);
        let start = StdInstant::now();
        let node_id = fresh_id()?;
        let node_config = NodeConfig {
            id: node_id,
            epoch: 1,
            key: config.key.clone(),
            profile: Profile {
                name: heapless::String::try_from("shoal-cli").unwrap_or_default(),
                addr: socket.local_addr()?,
                kind: NodeKind::Host,
                weight: 0,
                pools: PoolSet::EMPTY,
                tags: heapless::Vec::new(),
            },
            role: Role::Client {
                contact: config.contact,
            },
            member: MemberConfig::default(),
            link: LinkConfig::host(),
            request_timeout: core_duration(config.timeout),
            data: Default::default(),
        };
        let node = Box::new(ClientNode::new(
            Instant::ZERO,
            node_config,
            random_u64()?,
            RamStore::new(),
        ));
        let mut client = Client {
            node,
            socket,
            udp,
            contact: config.contact,
            contact_id: NodeId(0),
            timeout: config.timeout,
            start,
            tx: vec![0; TX_BATCH * MAX_DATAGRAM],
            runs: Vec::with_capacity(TX_BATCH),
            rx: vec![0; rx_len],
            received: VecDeque::with_capacity(RX_BATCH),
            spare: Vec::new(),
            refused: false,
            fs_info: None,
            hlc: HlcClock::new(node_id),
        };
        let deadline = start + config.timeout;
        let connected = client.wait_for(deadline, |e| match e {
            Event::Connected(id) => Some(id),
            _ => None,
        })?;
        match connected {
            Some(id) => {
                client.contact_id = id;
                Ok(client)
            }
            None => Err(ClientError::NoAnswer {
                addr: config.contact,
                timeout: config.timeout,
                refused: client.refused,
                auth_failed: client.node.stats().drops.authentication > 0,
            }),
        }
    }

    /// A version for writes this client numbers itself (a file record and
    /// its directory entry, written at once under one version): later than
    /// every version in `seen` and every one it issued before, whatever
    /// the clocks say, with this client's id as the tiebreak.
    pub fn version_after(&mut self, seen: impl IntoIterator<Item = Hlc>) -> Hlc {
        for v in seen {
            self.hlc.observe(v);
        }
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.hlc.now(wall_ms)
    }

    /// The contact node's id.
    pub fn contact_id(&self) -> NodeId {
        self.contact_id
    }

    /// The contact node's address.
    pub fn contact(&self) -> SocketAddr {
        self.contact
    }

    /// Asks the contact to forget the dead member `id`
    /// ([`Node::forget_member`]). A refusal arrives as a failed request.
    pub fn forget(&mut self, id: NodeId) -> Result<(), ClientError> {
        match self.request(|node, now| node.forget_member(now, id))? {
            Response::Forgotten => Ok(()),
            _ => Err(ClientError::Unexpected("a forget receipt")),
        }
    }

    /// The contact's whole member table, itself first, paged through
    /// [`Node::members_page`] until its `total`.
    pub fn members(&mut self) -> Result<Vec<Record>, ClientError> {
        let mut records: Vec<Record> = Vec::new();
        let mut from = 0u16;
        loop {
            let response = self.request(|node, now| node.members_page(now, from))?;
            let Response::Members {
                records: page,
                total,
            } = response
            else {
                return Err(ClientError::Unexpected("a member page"));
            };
            let empty = page.is_empty();
            from = from.saturating_add(u16::try_from(page.len()).unwrap_or(u16::MAX));
            for r in page {
                // The table may change between pages; keep one row per id.
                if !records.iter().any(|x| x.id == r.id) {
                    records.push(r);
                }
            }
            if empty || from >= total {
                return Ok(records);
            }
        }
    }

    /// Sends `payload` to the owner of `key` in `pool`.
    pub fn send(&mut self, pool: Pool, key: &[u8], payload: &[u8]) -> Result<Sent, ClientError> {
        match self.request(|node, now| node.send_to_key(now, pool, key, payload))? {
            Response::Sent { by, hops } => Ok(Sent { by, hops }),
            _ => Err(ClientError::Unexpected("a delivery receipt")),
        }
    }

    /// Sends one key-addressed message per key, keeping up to `concurrency`
    /// in flight, and returns each one's outcome and latency in key order.
    pub fn send_many(
        &mut self,
        pool: Pool,
        keys: &[Vec<u8>],
        payload: &[u8],
        concurrency: usize,
    ) -> Result<Vec<Outcome>, ClientError> {
        let concurrency = concurrency.clamp(1, MAX_IN_FLIGHT);
        let mut outcomes: Vec<Option<Outcome>> = vec![None; keys.len()];
        let mut in_flight: HashMap<OpId, (usize, StdInstant)> = HashMap::new();
        let mut next = 0;
        let mut done = 0;
        // Every operation ends by the core's request timeout; this guards
        // against one whose outcome the core lost.
        let stall = self.timeout + StdDuration::from_secs(1);
        let mut last_progress = StdInstant::now();
        while done < keys.len() {
            while in_flight.len() < concurrency && next < keys.len() {
                let now = self.now();
                match self.node.send_to_key(now, pool, &keys[next], payload) {
                    Ok(op) => {
                        in_flight.insert(op, (next, StdInstant::now()));
                        next += 1;
                    }
                    Err(CommandError::Busy) if !in_flight.is_empty() => break,
                    Err(e) => return Err(ClientError::Command(e)),
                }
            }
            self.flush()?;
            while let Some(event) = self.node.poll_event() {
                let (op, result) = match event {
                    Event::Response {
                        op,
                        response: Response::Sent { by, hops },
                    } => (op, Ok(Sent { by, hops })),
                    Event::Response { op, .. } => {
                        (op, Err(OpFailure::Remote(RemoteError::Malformed)))
                    }
                    Event::Failed { op, reason } => (op, Err(reason)),
                    _ => continue,
                };
                if let Some((i, started)) = in_flight.remove(&op) {
                    outcomes[i] = Some(Outcome {
                        result,
                        latency: started.elapsed(),
                    });
                    done += 1;
                    last_progress = StdInstant::now();
                }
            }
            if done == keys.len() {
                break;
            }
            if in_flight.len() < concurrency && next < keys.len() {
                continue;
            }
            if last_progress.elapsed() > stall {
                return Err(ClientError::Request {
                    addr: self.contact,
                    reason: OpFailure::TimedOut,
                });
            }
            self.wait(last_progress + stall)?;
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Issues one request and waits for its outcome.
    fn request(
        &mut self,
        issue: impl FnOnce(&mut ClientNode, Instant) -> Result<OpId, CommandError>,
    ) -> Result<Response, ClientError> {
        let now = self.now();
        let op = issue(&mut self.node, now).map_err(ClientError::Command)?;
        // The core fails the operation at its request timeout; the extra
        // second only guards against an outcome the core lost.
        let deadline = StdInstant::now() + self.timeout + StdDuration::from_secs(1);
        let outcome = self.wait_for(deadline, |e| match e {
            Event::Response { op: o, response } if o == op => Some(Ok(response)),
            Event::Failed { op: o, reason } if o == op => Some(Err(reason)),
            _ => None,
        })?;
        let addr = self.contact;
        match outcome {
            Some(Ok(response)) => Ok(response),
            Some(Err(reason)) => Err(ClientError::Request { addr, reason }),
            None => Err(ClientError::Request {
                addr,
                reason: OpFailure::TimedOut,
            }),
        }
    }

    /// Runs the loop until `pick` accepts an event (`Some`) or `deadline`
    /// passes (`None`). Events `pick` declines are dropped.
    fn wait_for<T>(
        &mut self,
        deadline: StdInstant,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<Option<T>, ClientError> {
        loop {
            self.flush()?;
            while let Some(event) = self.node.poll_event() {
                if let Some(t) = pick(event) {
                    return Ok(Some(t));
                }
            }
            if StdInstant::now() >= deadline {
                return Ok(None);
            }
            self.wait(deadline)?;
        }
    }

    /// Sends every datagram the node has ready, gathered [`TX_BATCH`] at
    /// a time into runs (see [`Run`]): a run of several goes to the kernel
    /// in one call (GSO).
    fn flush(&mut self) -> Result<(), ClientError> {
        loop {
            let now = self.now();
            self.runs.clear();
            let (node, runs, contact) = (&mut self.node, &mut self.runs, self.contact);
            let n = run::gather(
                &mut self.tx,
                MAX_DATAGRAM,
                TX_BATCH,
                self.udp.max_gso_segments().max(1),
                |buf| {
                    let t = node.poll_transmit(now, buf)?;
                    // A client talks to its contact only.
                    Some((t.dst, if t.dst == contact { t.len } else { 0 }))
                },
                |run| runs.push(run),
            );
            for run in &self.runs {
                let transmit = Transmit {
                    destination: run.dst,
                    ecn: None,
                    contents: &self.tx[run.start..run.end],
                    segment_size: run.segment_size(),
                    src_ip: None,
                };
                match self.udp.try_send((&self.socket).into(), &transmit) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.refused = true,
                    // The kernel's buffer is full: the link retransmits.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if n < TX_BATCH {
                return Ok(());
            }
        }
    }

    /// Feeds the node one input: a datagram already taken from the socket,
    /// else the time once its next timer (or `deadline`) is due, else the
    /// first datagram to arrive before then.
    fn wait(&mut self, deadline: StdInstant) -> Result<(), ClientError> {
        // Responses a datagram completed beyond the one it delivered come
        // before the next datagram.
        if self.node.has_undelivered() {
            let now = self.now();
            self.node.handle_timeout(now);
            return Ok(());
        }
        if self.received.is_empty() {
            let mut wake = deadline;
            if let Some(t) = self.node.poll_timeout() {
                wake = wake.min(self.start + StdDuration::from_micros(t.as_micros()));
            }
            let left = wake.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                let now = self.now();
                self.node.handle_timeout(now);
                return Ok(());
            }
            let timeout = Timespec::try_from(left.max(StdDuration::from_millis(1)))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
            self.take_arrived()?;
        }
        let now = self.now();
        match self.received.pop_front() {
            Some((mut datagram, len)) => {
                let contact = self.contact;
                self.node
                    .handle_datagram(now, contact, &mut datagram[..len]);
                self.spare.push(datagram);
            }
            None => self.node.handle_timeout(now),
        }
        Ok(())
    }

    /// Takes the datagrams already waiting in the socket, without blocking,
    /// until [`RX_BATCH`] wait. A bulk read receives bursts: one wake-up
    /// then serves the burst. They are fed to the node one per wait, since
    /// a response's data lasts only until the node's next input.
    fn take_arrived(&mut self) -> Result<(), ClientError> {
        while self.received.len() < RX_BATCH {
            let mut meta = [RecvMeta::default()];
            let received = self.udp.recv(
                (&self.socket).into(),
                &mut [IoSliceMut::new(&mut self.rx)],
                &mut meta,
            );
            match received {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    self.refused = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            let m = &meta[0];
            let (stride, len) = (m.stride.max(1), m.len.min(self.rx.len()));
            for segment in self.rx[..len].chunks(stride) {
                let mut datagram = self.spare.pop().unwrap_or_else(|| vec![0; MAX_DATAGRAM]);
                // A segment is at most a datagram (the contact sends no
                // larger): anything else is not ours to read.
                let Some(into) = datagram.get_mut(..segment.len()) else {
                    self.spare.push(datagram);
                    continue;
                };
                into.copy_from_slice(segment);
                self.received.push_back((datagram, segment.len()));
            }
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        let micros = self.start.elapsed().as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

impl Drop for Client {
    /// Lingers long enough to send the acknowledgements the link still
    /// owes. The link acknowledges after `ack_delay`; a client that exits
    /// sooner leaves the node retransmitting its last response, holding one
    /// of the node's link peer slots until its retransmissions run out.
    fn drop(&mut self) {
        let ack_delay = StdDuration::from_micros(LinkConfig::default().ack_delay.as_micros());
        let deadline = StdInstant::now() + ack_delay + StdDuration::from_millis(15);
        let _ = self.wait_for(deadline, |_| None::<()>);
    }
}

fn core_duration(d: StdDuration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A random 64-bit value from the operating system.
pub fn random_u64() -> io::Result<u64> {
    getrandom::u64().map_err(|e| io::Error::other(format!("no random numbers: {e}")))
}

/// A fresh random node id; never 0, which names no node.
fn fresh_id() -> io::Result<NodeId> {
    loop {
        let id = random_u64()?;
        if id != 0 {
            return Ok(NodeId(id));
        }
    }
}
