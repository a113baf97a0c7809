//! `shoal-node`: the Linux host node, a thin Tokio driver around
//! [`shoal_core::node::Node`].
//!
//! Everything a node decides lives in `shoal-core`. This crate holds only what
//! a host adds around it, bottom up:
//! - [`config`]: flags and the TOML config file, checked into [`config::Settings`].
//! - [`key`]: the cluster key file.
//! - [`store`]: the durable [`Storage`](shoal_core::store::Storage), on redb.
//! - [`identity`]: the node id and boot epoch kept in that store.
//! - [`driver`]: the UDP socket loop that feeds the node its inputs and
//!   drains its outputs, and answers status queries.
//! - [`status`]: snapshots of the node, rendered as JSON, Prometheus text and HTML.
//! - [`http`]: the status server; it asks the driver for snapshots over a channel.
//! - [`host`]: runs the driver and the status server on one thread.
//!
//! The binary (`src/main.rs`) turns flags into a running [`host::Host`] and
//! errors into one line on stderr.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod driver;
pub mod host;
pub mod http;
pub mod identity;
pub mod key;
pub mod status;
pub mod store;

use std::io;

/// What went wrong with an OS call, in words for an operator:
/// `address already in use` rather than `Address in use (os error 98)`.
pub fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::AddrInUse => "address already in use".into(),
        K::AddrNotAvailable => "no such address on this host".into(),
        K::PermissionDenied => "permission denied".into(),
        K::NotFound => "no such file or directory".into(),
        K::NotADirectory => "not a directory".into(),
        K::IsADirectory => "is a directory".into(),
        K::ReadOnlyFilesystem => "read-only file system".into(),
        K::StorageFull => "no space left on device".into(),
        K::AlreadyExists => "already exists".into(),
        _ => e.to_string(),
    }
}
