//! One running node: the driver and the status server on a thread of their own.
//!
//! The thread has a 16 MiB stack and a single-threaded Tokio runtime. The
//! [`HostNode`] (several hundred KB) is built there and boxed, and every task
//! (driver, HTTP connections, the shutdown watcher) runs on that same stack,
//! so no small worker stack ever holds a node or one of its temporaries.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use shoal_core::Instant;
use shoal_core::node::NodeConfig;
use shoal_core::store::Storage;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::driver::{Command, Driver, HostNode};
use crate::status::Snapshot;

/// Stack of the node's thread.
pub const STACK_BYTES: usize = 16 << 20;

/// Everything a node needs, made ready (and every error reported) before it
/// starts.
pub struct Host<S> {
    /// The node's settings and identity.
    pub config: NodeConfig,
    /// Seed for the node's random choices, from the OS.
    pub seed: u64,
    /// Members to join through.
    pub join: Vec<SocketAddr>,
    /// The bound UDP socket.
    pub socket: std::net::UdpSocket,
    /// The bound status listener, if any.
    pub http: Option<std::net::TcpListener>,
    /// The node's store.
    pub store: S,
    /// Notified when the store ends a flush it ran in the background (see
    /// [`DiskStore::on_flushed`](crate::store::DiskStore::on_flushed)), so
    /// the node answers the writes it covered at once.
    pub flushed: Arc<Notify>,
}

/// A node running on its own thread.
pub struct HostHandle<S> {
    commands: mpsc::Sender<Command>,
    thread: JoinHandle<io::Result<S>>,
}

impl<S: Storage + Send + 'static> Host<S> {
    /// Starts the node. It leaves the cluster and stops when `shutdown`
    /// completes (or on [`HostHandle::shutdown`]); the thread then returns
    /// the store.
    pub fn spawn(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<HostHandle<S>> {
        self.socket.set_nonblocking(true)?;
        crate::driver::widen_buffers(&self.socket);
        if let Some(l) = &self.http {
            l.set_nonblocking(true)?;
        }
        let (commands, receiver) = mpsc::channel(64);
        let own = commands.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-node".into())
            .stack_size(STACK_BYTES)
            .spawn(move || self.run(own, receiver, shutdown))?;
        Ok(HostHandle { commands, thread })
    }

    fn run(
        self,
        commands: mpsc::Sender<Command>,
        receiver: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<S> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let start = std::time::Instant::now();
        let mut node = Box::new(HostNode::new(
            Instant::ZERO,
            self.config,
            self.seed,
            self.store,
        ));
        node.join(Instant::ZERO, &self.join);
        let (socket, http) = (self.socket, self.http);
        runtime.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            if let Some(listener) = http {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let commands = commands.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::http::serve(listener, commands).await {
                        tracing::error!(error = %e, "status server stopped");
                    }
                });
            }
            tokio::spawn(async move {
                shutdown.await;
                let _ = commands.send(Command::Shutdown).await;
            });
            Ok(Driver::new(node, start, socket, receiver, self.flushed)?
                .run()
                .await)
        })
    }
}

impl<S> HostHandle<S> {
    /// Asks the node for a snapshot, blocking; `None` once it has stopped.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let (reply, answer) = oneshot::channel();
        self.commands.blocking_send(Command::Snapshot(reply)).ok()?;
        answer.blocking_recv().ok()
    }

    /// Makes the node leave and stop.
    pub fn shutdown(&self) {
        let _ = self.commands.blocking_send(Command::Shutdown);
    }

    /// Waits for the node to stop and returns its store.
    pub fn join(self) -> io::Result<S> {
        drop(self.commands);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the node thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use shoal_core::id::{Name, Tags};
    use shoal_core::member::{MemberConfig, Profile};
    use shoal_core::node::Role;
    use shoal_core::store::RamStore;
    use shoal_core::wire::ClusterKey;
    use shoal_core::{NodeId, NodeKind, PoolSet};

    fn host(id: u64, join: Vec<SocketAddr>) -> (Host<RamStore<64, 4>>, SocketAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let config = NodeConfig {
            id: NodeId(id),
            epoch: 1,
            key: ClusterKey([7; 32]),
            profile: Profile {
                name: Name::try_from("t").unwrap(),
                addr,
                kind: NodeKind::Host,
                weight: 100,
                pools: PoolSet::all(),
                tags: Tags::new(),
            },
            role: Role::Member,
            member: MemberConfig::default(),
            link: Default::default(),
            request_timeout: shoal_core::Duration::from_secs(5),
            data: Default::default(),
        };
        let host = Host {
            config,
            seed: id,
            join,
            socket,
            http: None,
            store: RamStore::new(),
            flushed: Arc::default(),
        };
        (host, addr)
    }

    /// Two nodes in one process, each built and driven on its own thread.
    /// They are started from a thread whose stack is half a node's size (in
    /// a debug build), which overflows if a node ever lands on the caller's
    /// stack instead of the node thread's.
    #[test]
    fn two_nodes_meet_and_one_leaves() {
        let node_bytes = std::mem::size_of::<HostNode<RamStore<64, 4>>>();
        eprintln!("HostNode is {} KiB", node_bytes / 1024);
        let (stop_a, stopped_a) = oneshot::channel::<()>();
        let (a, b) = std::thread::Builder::new()
            .stack_size((node_bytes / 2).max(64 << 10))
            .spawn(move || {
                let (a, a_addr) = host(1, vec![]);
                let (b, _) = host(2, vec![a_addr]);
                let a = a
                    .spawn(async {
                        let _ = stopped_a.await;
                    })
                    .unwrap();
                let b = b.spawn(std::future::pending()).unwrap();
                (a, b)
            })
            .unwrap()
            .join()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let sees = |h: &HostHandle<_>, state: &str| {
            h.snapshot()
                .is_some_and(|s| s.members.iter().any(|m| m.state == state))
        };
        while !(sees(&a, "alive") && sees(&b, "alive")) {
            assert!(std::time::Instant::now() < deadline, "no convergence");
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = a.snapshot().unwrap();
        assert_eq!(s.members[0].id, NodeId(2).to_string());
        assert!(s.stats.datagrams_in > 0 && s.stats.datagrams_out > 0);

        stop_a.send(()).unwrap();
        a.join().unwrap();
        while !sees(&b, "left") {
            assert!(std::time::Instant::now() < deadline, "leave not seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        b.shutdown();
        b.join().unwrap();
    }
}
