//! Shoal's core: everything a node decides, with no I/O of its own.
//!
//! The crate is `#![no_std]` and never allocates. It is driven by a host node
//! (Tokio), a firmware image (embassy) or the simulator, which differ only in
//! how they move bytes, keep time and store data.
//!
//! Layers, bottom up:
//! - [`time`], [`id`]: the driver-supplied clock and the names of things.
//! - [`wire`]: datagram header, AEAD sealing under the cluster key, replay window.
//! - [`link`]: per-peer reliable delivery (sequence numbers, acks, RTO, window,
//!   fragmentation) on top of sealed datagrams.
//! - [`router`]: weighted rendezvous hashing from a key to an ordered replica set.
//! - [`member`]: SWIM membership — who is in the cluster, and alive.
//! - [`repl`]: the replicated record layer — versions, quorums, merge.
//! - [`fs`]: the file system's data model — chunks, chunk trees, paths.
//! - [`node`]: the [`Node`](node::Node) that composes them behind one sans-IO API.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod fs;
pub mod id;
pub mod link;
pub mod member;
pub mod node;
pub mod repl;
pub mod rng;
pub mod router;
pub mod store;
pub mod time;
pub mod wire;

pub use id::{NodeId, NodeKind, Pool, PoolSet};
pub use time::{Duration, Instant};
