//! The socket loop: a thin driver around the sans-IO [`Node`], in the shape
//! of quinn's endpoint driver.
//!
//! One loop waits on four things at once: a datagram on the UDP socket
//! ([`Node::handle_datagram`]), the node's next timer
//! ([`Node::poll_timeout`] → [`Node::handle_timeout`]), the end of a
//! store commit running in the background, and a [`Command`] from the
//! status server or the shutdown signal. Datagrams are taken in batches
//! (every one the socket has ready, up to [`BATCH`]). After each wake it
//! drains [`Node::poll_transmit`] onto the socket, calls [`Node::commit`]
//! — group commit: it answers the writes a finished commit covered and
//! starts the next commit, which runs while the loop goes on — drains the
//! answers that released, then [`Node::poll_event`] into the log. Nothing
//! here decides anything about the protocol.
//!
//! Time is `start.elapsed()` in microseconds, with `start` taken once when
//! the node is built. A [`HostNode`] is several hundred KB: build it on a
//! thread with a large stack and keep it boxed (see [`crate::host`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use shoal_core::Instant;
use shoal_core::link::run::{self, Run};
use shoal_core::member::MemberEvent;
use shoal_core::node::{EVENTS, Event, HOST_OPS, MAX_MESSAGE, Node};
use shoal_core::store::Storage;
use shoal_core::wire::MAX_DATAGRAM;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info};

use crate::status::{MemberView, Snapshot};

/// The node as hosts run it on store `S`: 256 members, 288 link peers,
/// 1024 link slots, 128 quorum operations coordinated at once.
pub type HostNode<S> = Node<S, 256, 288, 1024, MAX_MESSAGE, EVENTS, 256, HOST_OPS>;

/// Most datagrams gathered before they go to the socket.
const TX_BATCH: usize = 64;

/// Buffers filled by one receive call (`recvmmsg`); each holds one
/// datagram, or with GRO up to the kernel's 64 segments of a burst.
const RX_BUFS: usize = 8;

/// Most datagrams handled between two store flushes.
pub const BATCH: usize = 64;

/// How long a leaving node keeps running so its leave reaches the others.
pub const LEAVE_GRACE: Duration = Duration::from_millis(300);

/// Room for one received datagram. Larger than [`MAX_DATAGRAM`] so an
/// oversized one arrives whole enough to be counted as malformed.
const RECV_BUF: usize = 2048;

/// The socket buffers a node asks for, each way. A host link keeps up to
/// [`HOST_WINDOW`](shoal_core::node::HOST_WINDOW) fragments in flight per
/// peer, so a contact taking a client's writes while its replicas answer
/// receives several windows at once; the default buffer (about 200 KB)
/// drops the excess, and every drop costs a retransmission timeout.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Asks the kernel for [`SOCKET_BUFFER`] bytes of receive and send buffer.
/// Linux grants at most `net.core.rmem_max` / `wmem_max`; a smaller grant
/// only costs throughput, so it is logged, not refused.
pub fn widen_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    let _ = sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER);
    let _ = sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER);
    let granted = sockopt::socket_recv_buffer_size(socket).unwrap_or(0);
    debug!(granted, asked = SOCKET_BUFFER, "socket receive buffer");
}

/// What other tasks may ask of the driver.
#[derive(Debug)]
pub enum Command {
    /// Reply with a snapshot of the node.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Announce a leave, keep running for [`LEAVE_GRACE`], then stop.
    Shutdown,
}

/// Runs one node on one UDP socket.
pub struct Driver<S: Storage> {
    node: Box<HostNode<S>>,
    start: std::time::Instant,
    socket: UdpSocket,
    commands: mpsc::Receiver<Command>,
    flushed: Arc<Notify>,
    /// GSO, GRO and `recvmmsg` on the socket, where the kernel has them.
    udp: UdpSocketState,
    /// [`RX_BUFS`] receive buffers of `rx_len` bytes each.
    rx: Vec<u8>,
    rx_len: usize,
    /// Datagrams gathered to send, back to back, grouped into runs (see
    /// [`Run`]): a run of several goes to the kernel in one call (GSO),
    /// single ones many per call (`sendmmsg`).
    tx: Vec<u8>,
    runs: Vec<Run>,
}

impl<S: Storage> Driver<S> {
    /// A driver for `node`, whose clock started at `start`. The node's
    /// store is handed back by [`Driver::run`].
    pub fn new(
        node: Box<HostNode<S>>,
        start: std::time::Instant,
        socket: UdpSocket,
        commands: mpsc::Receiver<Command>,
        flushed: Arc<Notify>,
    ) -> io::Result<Self> {
        let udp = UdpSocketState::new((&socket).into())?;
        let rx_len = RECV_BUF * udp.gro_segments().max(1);
        debug!(
            gso = udp.max_gso_segments(),
            gro = udp.gro_segments(),
            "socket offloads"
        );
        Ok(Driver {
            node,
            start,
            socket,
            commands,
            flushed,
            udp,
            rx: vec![0; RX_BUFS * rx_len],
            rx_len,
            tx: vec![0; TX_BATCH * MAX_DATAGRAM],
            runs: Vec::with_capacity(TX_BATCH),
        })
    }

    /// The node's clock.
    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    /// The wall-clock moment of node time `t`; far ahead when there is none.
    fn wake_at(&self, t: Option<Instant>) -> tokio::time::Instant {
        let far = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
        t.and_then(|t| self.start.checked_add(Duration::from_micros(t.as_micros())))
            .map_or(far, |at| tokio::time::Instant::from_std(at).min(far))
    }

    /// Drives the node until a [`Command::Shutdown`] has run its course;
    /// returns the store so the caller can close it.
    pub async fn run(mut self) -> S {
        // Whatever the node queued at birth (join requests) goes out first.
        self.flush().await;
        let mut leave_by: Option<tokio::time::Instant> = None;
        let mut commands_open = true;
        // One timer for the whole loop, moved only when the node's next
        // deadline moves: registering a fresh one per turn showed up in
        // profiles of bulk transfers, which turn the loop per burst.
        let timer = tokio::time::sleep_until(self.wake_at(self.node.poll_timeout()));
        tokio::pin!(timer);
        loop {
            let wake = self.wake_at(self.node.poll_timeout());
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let stop = leave_by.unwrap_or(wake);
            tokio::select! {
                ready = self.socket.readable() => match ready {
                    Ok(()) => self.receive(),
                    Err(e) => debug!(error = %e, "socket not readable"),
                },
                // A background flush ended: the commit below answers the
                // writes it covered.
                () = self.flushed.notified() => {}
                () = &mut timer => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(Command::Snapshot(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Some(Command::Shutdown) if leave_by.is_none() => {
                        info!("leaving the cluster");
                        let now = self.now();
                        self.node.leave(now);
                        leave_by = Some(tokio::time::Instant::now() + LEAVE_GRACE);
                    }
                    Some(Command::Shutdown) => {}
                    None => commands_open = false,
                },
                () = tokio::time::sleep_until(stop), if leave_by.is_some() => break,
            }
            self.flush().await;
        }
        self.node.into_store()
    }

    /// Commits the batch's writes, sends every datagram the node has
    /// queued, then logs its events.
    async fn flush(&mut self) {
        let now = self.now();
        // Link acks and forwarded requests need not wait for the disk; the
        // answers a commit releases go out after it.
        self.transmit(now).await;
        self.node.commit(now);
        self.transmit(now).await;
        while let Some(event) = self.node.poll_event() {
            self.log(event);
        }
    }

    /// Feeds the node what the socket has ready: up to [`BATCH`]
    /// datagrams, [`RX_BUFS`] buffers per system call, each buffer split
    /// into its datagrams when GRO joined several. A failed receive (an
    /// ICMP error and the like) is only logged: the node's timers recover.
    fn receive(&mut self) {
        let mut handled = 0;
        while handled < BATCH {
            let mut meta = [RecvMeta::default(); RX_BUFS];
            let received = {
                let mut bufs: Vec<IoSliceMut<'_>> = self
                    .rx
                    .chunks_mut(self.rx_len)
                    .map(IoSliceMut::new)
                    .collect();
                let (socket, udp) = (&self.socket, &self.udp);
                socket.try_io(Interest::READABLE, || {
                    udp.recv(socket.into(), &mut bufs, &mut meta)
                })
            };
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "receive failed");
                    return;
                }
            };
            let now = self.now();
            for (m, buf) in meta[..n].iter().zip(self.rx.chunks_mut(self.rx_len)) {
                let (stride, len) = (m.stride.max(1), m.len.min(buf.len()));
                for datagram in buf[..len].chunks_mut(stride) {
                    self.node.handle_datagram(now, m.addr, datagram);
                    handled += 1;
                }
            }
        }
    }

    /// Sends every datagram the node has queued, gathered [`TX_BATCH`] at
    /// a time into runs per destination (see [`Run`]).
    async fn transmit(&mut self, now: Instant) {
        loop {
            self.runs.clear();
            let (node, runs) = (&mut self.node, &mut self.runs);
            let n = run::gather(
                &mut self.tx,
                MAX_DATAGRAM,
                TX_BATCH,
                self.udp.max_gso_segments().max(1),
                |buf| node.poll_transmit(now, buf).map(|t| (t.dst, t.len)),
                |run| runs.push(run),
            );
            // Runs of several datagrams go one per call (GSO); single
            // datagrams between them, many per call (`sendmmsg`).
            let mut i = 0;
            while i < self.runs.len() {
                let singles = self.runs[i..].iter().take_while(|r| r.count == 1).count();
                if singles > 0 {
                    self.send_singles(i, i + singles).await;
                    i += singles;
                } else {
                    let run = self.runs[i];
                    self.send_run(run).await;
                    i += 1;
                }
            }
            if n < TX_BATCH {
                return;
            }
        }
    }

    /// Sends the single datagrams `runs[from..to]` with `sendmmsg`,
    /// waiting while the socket's buffer is full.
    async fn send_singles(&mut self, from: usize, to: usize) {
        let mut sent = from;
        while sent < to {
            let runs = &self.runs[sent..to];
            let addrs: Vec<SocketAddrAny> =
                runs.iter().map(|r| SocketAddrAny::from(r.dst)).collect();
            let iovs: Vec<[IoSlice<'_>; 1]> = runs
                .iter()
                .map(|r| [IoSlice::new(&self.tx[r.start..r.end])])
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = runs
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: Vec<MMsgHdr<'_>> = addrs
                .iter()
                .zip(&iovs)
                .zip(controls.iter_mut())
                .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
                .collect();
            let socket = &self.socket;
            let result = socket.try_io(Interest::WRITABLE, || {
                sendmmsg(socket, &mut msgs, SendFlags::empty()).map_err(io::Error::from)
            });
            match result {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(msgs);
                    if let Err(e) = self.socket.writable().await {
                        debug!(error = %e, "socket not writable");
                        return;
                    }
                }
                Err(e) => {
                    // The first datagram failed (an ICMP error, say): lost
                    // like any datagram; probes and retransmits cover it.
                    debug!(dst = %self.runs[sent].dst, error = %e, "send failed");
                    sent += 1;
                }
            }
        }
    }

    /// Sends one run, waiting while the socket's buffer is full. A failed
    /// send is only logged: the link retransmits what was not acknowledged.
    async fn send_run(&mut self, run: Run) {
        loop {
            let transmit = Transmit {
                destination: run.dst,
                ecn: None,
                contents: &self.tx[run.start..run.end],
                segment_size: run.segment_size(),
                src_ip: None,
            };
            let (socket, udp) = (&self.socket, &self.udp);
            let result = socket.try_io(Interest::WRITABLE, || {
                udp.try_send(socket.into(), &transmit)
            });
            match result {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.socket.writable().await {
                        debug!(error = %e, "socket not writable");
                        return;
                    }
                }
                Err(e) => {
                    debug!(dst = %run.dst, error = %e, "send failed");
                    return;
                }
            }
        }
    }

    fn log(&self, event: Event) {
        match event {
            Event::Member(change) => {
                let id = match change {
                    MemberEvent::Up(id)
                    | MemberEvent::Suspect(id)
                    | MemberEvent::Dead(id)
                    | MemberEvent::Left(id) => id,
                };
                let member = self.node.membership().get(id);
                let name = member.map_or("", |m| m.profile().name.as_str());
                let addr = member.map(|m| tracing::field::display(m.profile().addr));
                match change {
                    MemberEvent::Up(_) => info!(member = %id, name, addr, "member alive"),
                    MemberEvent::Suspect(_) => info!(member = %id, name, addr, "member suspect"),
                    MemberEvent::Dead(_) => info!(member = %id, name, addr, "member dead"),
                    MemberEvent::Left(_) => info!(member = %id, name, addr, "member left"),
                }
            }
            Event::KeyMessage { from, key, len } => {
                let key = u64::from_be_bytes(key.0[..8].try_into().unwrap_or_default());
                debug!(%from, key = format_args!("{key:016x}"), len, "key message");
            }
            Event::Connected(id) => debug!(contact = %id, "connected"),
            Event::Response { op, response } => debug!(op = op.0, ?response, "response"),
            Event::Failed { op, reason } => debug!(op = op.0, %reason, "operation failed"),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let membership = self.node.membership();
        let mut members: Vec<MemberView> = membership
            .members()
            .map(|m| MemberView::of(&m.record))
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            node: MemberView::of(membership.local()),
            members,
            stats: self.node.stats(),
            store: self.node.store().usage(),
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}
