//! `cargo xtask`: Shoal's development tasks.

fn main() {}
