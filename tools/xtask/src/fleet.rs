//! `cargo xtask fleet`: host nodes and QEMU microcontrollers on this
//! machine, in one cluster.
//!
//! Addressing: every node advertises a 127.0.0.1 address. Host nodes listen
//! on 127.0.0.1:7000+i. MCU `j` runs behind its own QEMU user network with
//! its port 7000 forwarded from 127.0.0.1:7100+j, which it advertises. The
//! firmware sends datagrams for 127.0.0.0/8 to the user-network gateway
//! 10.0.2.2, which QEMU maps to this machine's loopback — so MCUs reach
//! hosts and each other's forwarded ports, and hosts reach MCUs, all at the
//! addresses they advertise.
//!
//! Weights and stores: hosts join with router weight [`HOST_WEIGHT`] and
//! MCUs weigh 1 (the firmware's `WEIGHT`), so the MCUs hold a share of the
//! `data` pool's chunks that a test can measure; their images are built
//! with a RAM store ([`MCU_STORE_BYTES`], [`MCU_STORE_ENTRIES`]) that holds
//! that share with room to spare.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{firmware, qemu};

/// First host node port; host `i` listens on `HOST_PORT + i`.
pub const HOST_PORT: u16 = 7000;
/// First MCU forwarded port; MCU `j` is reached at `MCU_PORT + j`.
pub const MCU_PORT: u16 = 7100;
/// First host HTTP status port.
pub const HTTP_PORT: u16 = 8000;

/// `cargo xtask fleet` options.
#[derive(Args, Debug)]
pub struct FleetArgs {
    /// How many host nodes (`shoal-node`).
    #[arg(long, default_value_t = 3)]
    pub hosts: u16,
    /// How many QEMU microcontrollers.
    #[arg(long, default_value_t = 2)]
    pub mcus: u16,
    /// Where host nodes keep their data and the cluster key file.
    #[arg(long, default_value = "target/fleet")]
    pub dir: PathBuf,
}

/// The MAC QEMU gives MCU `j` (QEMU's own scheme: 52:54:00:12:34:5N).
pub fn mac_of(j: u16) -> String {
    format!("52:54:00:12:34:{:02x}", 0x51 + j)
}

/// A boot epoch that grows across restarts: the wall clock in ms.
pub fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// The semihosting words MCU `j` boots with.
pub fn mcu_words(j: u16, seed_port: u16) -> Vec<String> {
    vec![
        format!("epoch={}", epoch_now()),
        format!("advertise=127.0.0.1:{}", MCU_PORT + j),
        format!("seeds=127.0.0.1:{seed_port}"),
    ]
}

/// A fixed lab key the fleet's hosts and images share.
pub const FLEET_KEY: &str = "5348414c2d666c6565742d6b65792d6e6f742d7365637265742d303030303030";

/// Router weight of the fleet's hosts. Beside MCUs of weight 1, a host of
/// the default weight 100 would leave each MCU a copy of about 2% of the
/// chunks; at 4, with 3 hosts and 2 MCUs, each MCU holds a copy of about
/// 29% of them (see `mixed.rs`).
pub const HOST_WEIGHT: u32 = 4;

/// The RAM store arena of the fleet's MCU images (`SHOAL_STORE_BYTES`):
/// room for 77 chunks of 2048 bytes (each also costs its 32-byte key and a
/// 42-byte GC mark). The mixed-fleet test's file (100 data chunks and 3
/// index chunks) puts about 30 on each MCU, and about 35 on the survivor
/// once the other is dead. QEMU's mps2-an385 has 4 MiB of RAM; the arena is
/// outside the image's 64 KiB static-RAM budget.
pub const MCU_STORE_BYTES: usize = 160 * 1024;

/// Entries the fleet's MCU stores index (`SHOAL_STORE_ENTRIES`): a chunk
/// takes two (itself and its mark), so 160 entries hold 79 chunks, as many
/// as the arena and more.
pub const MCU_STORE_ENTRIES: usize = 160;

/// Builds the QEMU image the fleet, the mixed-fleet test and the smoke test
/// boot: the fleet key and the fleet's store. (One set of settings, so
/// the steps of `cargo xtask test` share one build.)
pub fn build_image() -> Result<PathBuf> {
    firmware::QEMU.build_with(&[
        ("SHOAL_KEY_HEX", FLEET_KEY.to_string()),
        ("SHOAL_STORE_BYTES", MCU_STORE_BYTES.to_string()),
        ("SHOAL_STORE_ENTRIES", MCU_STORE_ENTRIES.to_string()),
    ])
}

/// What a fleet runs: the firmware image (built with the fleet key), the
/// host node binary, and the key file.
pub struct Build {
    /// The QEMU firmware ELF.
    pub elf: PathBuf,
    /// The release `shoal-node`.
    pub node_bin: PathBuf,
    /// The cluster key file hosts read.
    pub key_file: PathBuf,
}

/// Builds the firmware (with the fleet key) and, when `hosts`, the release
/// host node; writes the key file into `dir`.
pub fn build(dir: &Path, hosts: bool) -> Result<Build> {
    let root = firmware::root();
    std::fs::create_dir_all(dir)?;
    let key_file = dir.join("cluster.key");
    std::fs::write(&key_file, format!("{FLEET_KEY}\n"))?;
    // The image carries the cluster key; build it with the fleet's.
    let elf = build_image()?;
    if hosts {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "shoal-node", "-p", "shoal-cli"])
            .status()?
            .success();
        if !ok {
            bail!("building shoal-node and shoal failed");
        }
    }
    let node_bin = release_dir().join("shoal-node");
    Ok(Build {
        elf,
        node_bin,
        key_file,
    })
}

/// Where release binaries land.
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| firmware::root().join("target"))
        .join("release")
}

/// Starts host node `i` (data under `dir/host-i`, weight
/// [`HOST_WEIGHT`]), joining host 0.
pub fn spawn_host(b: &Build, dir: &Path, i: u16, quiet: bool) -> Result<Child> {
    let port = HOST_PORT + i;
    let data = dir.join(format!("host-{i}"));
    std::fs::create_dir_all(&data)?;
    let mut cmd = Command::new(&b.node_bin);
    cmd.arg("--name")
        .arg(format!("host-{i}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--advertise")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(&data)
        .arg("--weight")
        .arg(HOST_WEIGHT.to_string())
        .arg("--key")
        .arg(&b.key_file)
        .arg("--http")
        .arg(format!("127.0.0.1:{}", HTTP_PORT + i));
    if i > 0 {
        cmd.arg("--join").arg(format!("127.0.0.1:{HOST_PORT}"));
    }
    if quiet {
        cmd.stderr(Stdio::null()).stdout(Stdio::null());
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", b.node_bin.display()))
}

/// Starts MCU `j` in QEMU, joining through `seed_port`; its decoded log is
/// printed with an `mcu-j |` prefix.
pub fn spawn_mcu(b: &Build, j: u16, seed_port: u16) -> Result<(Child, JoinHandle<()>)> {
    let instance = qemu::Instance {
        elf: b.elf.clone(),
        mac: mac_of(j),
        host_port: MCU_PORT + j,
        args: mcu_words(j, seed_port),
    };
    qemu::spawn(&instance, format!("mcu-{j} | "))
}

/// Runs the fleet until Ctrl-C.
pub fn run(args: FleetArgs) -> Result<()> {
    let dir = firmware::root().join(&args.dir);
    let b = build(&dir, args.hosts > 0)?;
    let key_file = b.key_file.clone();
    let mut children: Vec<(String, Child)> = Vec::new();
    for i in 0..args.hosts {
        children.push((format!("host-{i}"), spawn_host(&b, &dir, i, false)?));
    }
    let mut logs = Vec::new();
    for j in 0..args.mcus {
        let seed = if args.hosts > 0 { HOST_PORT } else { MCU_PORT };
        let (child, log) = spawn_mcu(&b, j, seed)?;
        children.push((format!("mcu-{j}"), child));
        logs.push(log);
    }

    println!();
    println!("fleet: {} host node(s), {} MCU(s)", args.hosts, args.mcus);
    for i in 0..args.hosts {
        println!(
            "  host-{i}: udp 127.0.0.1:{}  status http://127.0.0.1:{}/",
            HOST_PORT + i,
            HTTP_PORT + i
        );
    }
    for j in 0..args.mcus {
        println!(
            "  mcu-{j}:  udp 127.0.0.1:{} (QEMU, mac {})",
            MCU_PORT + j,
            mac_of(j)
        );
    }
    println!(
        "  cluster key: {}\n  try: shoal --node 127.0.0.1:{HOST_PORT} --key {} status",
        key_file.display(),
        key_file.display()
    );
    println!("  Ctrl-C stops the fleet.");

    // Wait for any process to end; then stop the rest.
    loop {
        for (name, child) in &mut children {
            if let Some(status) = child.try_wait()? {
                println!("fleet: {name} exited with {status}; stopping the fleet");
                for (_, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
