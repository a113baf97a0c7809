//! Links the image for its board and turns the build-time settings
//! (`SHOAL_KEY_HEX`, `SHOAL_SEEDS`, `SHOAL_PORT`, `SHOAL_STORE_BYTES`,
//! `SHOAL_STORE_ENTRIES`) into checked constants, so a bad setting fails
//! the build, not the boot.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// A development key: every image and host built without `SHOAL_KEY_HEX`
/// shares it. Never use it outside a lab.
const DEV_KEY: &str =
    "5348_4f41_4c2d_6465_762d_6b65_792d_6e6f_742d_7365_6372_6574_2d30_3030_3030_3030";
/// The QEMU user-network gateway, where host nodes listen.
const DEFAULT_SEEDS: &str = "10.0.2.2:7000";
const DEFAULT_PORT: u16 = 7000;
const DEFAULT_STORE_BYTES: usize = 16 * 1024;
/// Entries the RAM store indexes. A stored chunk takes two (the chunk and
/// its GC mark), and the node's identity one.
const DEFAULT_STORE_ENTRIES: usize = 64;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for var in [
        "SHOAL_KEY_HEX",
        "SHOAL_SEEDS",
        "SHOAL_PORT",
        "SHOAL_STORE_BYTES",
        "SHOAL_STORE_ENTRIES",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=memory.x");

    if env::var_os("CARGO_FEATURE_BOARD_QEMU").is_some() {
        // The Nucleo's memory.x comes from embassy-stm32's `memory-x` feature.
        fs::copy("memory.x", out.join("memory.x")).expect("copying memory.x");
        println!("cargo:rustc-link-search={}", out.display());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=--nmagic");
        println!("cargo:rustc-link-arg-bins=-Tlink.x");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }

    let key = env::var("SHOAL_KEY_HEX").unwrap_or_else(|_| DEV_KEY.replace('_', ""));
    let key = parse_key(&key).unwrap_or_else(|| {
        panic!("SHOAL_KEY_HEX must be 64 hexadecimal digits (the form key files hold)")
    });
    let seeds = env::var("SHOAL_SEEDS").unwrap_or_else(|_| DEFAULT_SEEDS.into());
    let seeds: Vec<SocketAddrV4> = seeds
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("SHOAL_SEEDS: {s:?} is not ipv4:port"))
        })
        .collect();
    let port: u16 = env::var("SHOAL_PORT").map_or(DEFAULT_PORT, |p| {
        p.parse().expect("SHOAL_PORT must be a UDP port number")
    });
    let store: usize = env::var("SHOAL_STORE_BYTES").map_or(DEFAULT_STORE_BYTES, |s| {
        s.parse().expect("SHOAL_STORE_BYTES must be a byte count")
    });
    let entries: usize = env::var("SHOAL_STORE_ENTRIES").map_or(DEFAULT_STORE_ENTRIES, |s| {
        s.parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .expect("SHOAL_STORE_ENTRIES must be a positive count")
    });

    let mut code = String::new();
    writeln!(code, "/// The cluster key (`SHOAL_KEY_HEX`).").unwrap();
    writeln!(code, "pub const KEY: [u8; 32] = {key:?};").unwrap();
    writeln!(code, "/// Seed addresses (`SHOAL_SEEDS`).").unwrap();
    write!(code, "pub const SEEDS: [SocketAddrV4; {}] = [", seeds.len()).unwrap();
    for s in &seeds {
        let [a, b, c, d] = s.ip().octets();
        write!(
            code,
            "SocketAddrV4::new(Ipv4Addr::new({a}, {b}, {c}, {d}), {}),",
            s.port()
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
    writeln!(code, "/// The UDP port the node listens on (`SHOAL_PORT`).").unwrap();
    writeln!(code, "pub const PORT: u16 = {port};").unwrap();
    writeln!(
        code,
        "/// Bytes in the RAM store's arena (`SHOAL_STORE_BYTES`)."
    )
    .unwrap();
    writeln!(code, "pub const STORE_BYTES: usize = {store};").unwrap();
    writeln!(
        code,
        "/// Entries the RAM store indexes (`SHOAL_STORE_ENTRIES`)."
    )
    .unwrap();
    writeln!(code, "pub const STORE_ENTRIES: usize = {entries};").unwrap();
    fs::write(out.join("settings.rs"), code).expect("writing settings.rs");
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}
