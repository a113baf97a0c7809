//! Shoal's firmware: the same [`shoal_core::node::Node`] host nodes run,
//! driven by embassy on a microcontroller.
//!
//! The firmware holds only what a board must supply; every protocol
//! decision is the core's.
//! - [`settings`]: the cluster key, seeds, port and store size fixed at build
//!   time, and per-instance overrides (a QEMU command line).
//! - [`identity`]: the node id and boot epoch, from the board's MAC or unique
//!   id.
//! - [`driver`]: the UDP loop — datagrams in, `poll_transmit` out, sleep
//!   until `poll_timeout` — and the RAM store.
//! - One program per board in `src/bin/`, with its board support beside it
//!   ([`qemu`] for the `mps2-an385` machine).
#![no_std]

pub mod driver;
pub mod identity;
#[cfg(feature = "board-qemu")]
pub mod qemu;
pub mod settings;

defmt::timestamp!("{=u64:us}", embassy_time::Instant::now().as_micros());
