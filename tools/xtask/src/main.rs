//! `cargo xtask`: Shoal's development tasks.
//!
//! - `cargo xtask test` — everything CI runs, installing missing targets first.
//! - `cargo xtask sim SCENARIO --seed S --nodes N` — replays one simulator run.
//! - `cargo xtask bench router` — the router benchmark.
//! - `cargo xtask bench fs` — file-system put/get throughput and small-file
//!   puts on a 3-node loopback cluster, beside a plain UDP blast.
//! - `cargo xtask bench net` — key-addressed round trips on a 3-node loopback
//!   cluster beside plain UDP echo (release build).
//! - `cargo xtask demo` — builds `shoal-node` and `shoal` in release and runs
//!   `shoal demo`: a 3-node local cluster showing every subsystem at work.
//! - `cargo xtask sizes` — builds the firmware images and prints their
//!   flash and static RAM against the budgets.
//! - `cargo xtask qemu ELF [WORDS…]` — boots one QEMU firmware image and
//!   decodes its log (the firmware's cargo runner).
//! - `cargo xtask fleet --hosts 3 --mcus 2` — a mixed fleet of host nodes
//!   and QEMU microcontrollers on this machine.

#![deny(unsafe_code)]

mod firmware;
mod fleet;
mod mixed;
mod qemu;
mod smoke;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Shoal development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every check and test CI runs (installs the thumb target if missing).
    Test,
    /// Replay one simulator scenario for one seed, or summarise many seeds.
    Sim {
        /// Scenario: join, crash, stable, partition, restart.
        scenario: String,
        /// The seed to replay.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run seeds 0..K instead and print the spread of the measured time.
        #[arg(long)]
        seeds: Option<u64>,
        /// How many nodes.
        #[arg(long, default_value_t = 32)]
        nodes: usize,
    },
    /// Run a benchmark and print its table.
    Bench {
        /// Which benchmark: router, net, fs.
        which: String,
        /// Extra arguments for the benchmark (`net`: `--requests N`; `fs`:
        /// `--size-mib N --files N --concurrency N --chunk-size B`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the node and the CLI in release and run `shoal demo`.
    Demo,
    /// Build every firmware image in release and print its flash and static
    /// RAM; fails when the QEMU image is over budget.
    Sizes,
    /// Boot a QEMU firmware image (mps2-an385) and print its decoded log.
    Qemu {
        /// The firmware ELF.
        elf: PathBuf,
        /// Settings for the firmware, as `name=value` (e.g. `epoch=7`).
        words: Vec<String>,
    },
    /// Boot the QEMU image beside a core node here; check it joins as an
    /// `mcu` member and answers a key placed on it.
    Smoke,
    /// Start host nodes and QEMU microcontrollers that form one cluster.
    Fleet(fleet::FleetArgs),
    /// Run the mixed-fleet test alone (3 hosts, 2 QEMU MCUs).
    MixedFleet,
}

/// Targets the tests build for: the core and the QEMU image (Cortex-M3),
/// the Nucleo-F429ZI image (Cortex-M4F).
const TARGETS: &[&str] = &["thumbv7m-none-eabi", "thumbv7em-none-eabihf"];

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test => test(),
        Task::Sim {
            scenario,
            seed,
            seeds,
            nodes,
        } => {
            let (seed, nodes) = (seed.to_string(), nodes.to_string());
            let mut args = vec![
                "run",
                "--quiet",
                "--profile",
                "sim",
                "-p",
                "shoal-tests",
                "--bin",
                "sim",
                "--",
                &scenario,
                "--nodes",
                &nodes,
            ];
            let count = seeds.map(|k| k.to_string());
            match &count {
                Some(k) => args.extend(["--seeds", k.as_str()]),
                None => args.extend(["--seed", seed.as_str()]),
            }
            cargo(&args)
        }
        Task::Bench { which, args } => match which.as_str() {
            "router" => cargo(&["bench", "-p", "shoal-core", "--bench", "router"]),
            "net" => shoal(&["bench"], &args),
            "fs" => shoal(&["bench-fs"], &args),
            other => bail!("unknown benchmark {other:?}; try: router, net, fs"),
        },
        Task::Demo => shoal(&["demo"], &[]),
        Task::Sizes => {
            ensure_targets()?;
            firmware::sizes()
        }
        Task::Qemu { elf, words } => {
            ensure_qemu()?;
            qemu::run(elf, words)
        }
        Task::Smoke => qemu_smoke(),
        Task::Fleet(args) => {
            ensure_qemu()?;
            fleet::run(args)
        }
        Task::MixedFleet => {
            ensure_qemu()?;
            mixed::run(&firmware::root().join("target/mixed-fleet"))
        }
    }
}

/// Builds `shoal-node` and `shoal` in release, then runs `shoal ARGS…`
/// with `SHOAL_NODE_BIN` naming the node binary just built.
fn shoal(args: &[&str], extra: &[String]) -> Result<()> {
    let bins = build_release(&[("shoal-node", "shoal-node"), ("shoal-cli", "shoal")])?;
    let status = Command::new(&bins["shoal"])
        .args(args)
        .args(extra)
        .env("SHOAL_NODE_BIN", &bins["shoal-node"])
        .status()
        .context("running shoal")?;
    if !status.success() {
        // shoal has said what went wrong; pass its exit code on.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Builds `(package, binary)` pairs in release and returns each binary's
/// path, as cargo reports it (so `CARGO_TARGET_DIR` and config are honoured).
fn build_release(bins: &[(&str, &str)]) -> Result<HashMap<String, PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release exited with {}", out.status);
    }
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for (_, bin) in bins {
        if !found.contains_key(*bin) {
            bail!("cargo built no {bin} executable");
        }
    }
    Ok(found)
}

fn test() -> Result<()> {
    ensure_targets()?;
    step("format", &["fmt", "--all", "--check"])?;
    step(
        "lint",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step(
        "core for thumbv7m (no_std, no alloc)",
        &[
            "build",
            "-p",
            "shoal-core",
            "--target",
            "thumbv7m-none-eabi",
        ],
    )?;
    step(
        "core unit and property tests",
        &["test", "-p", "shoal-core"],
    )?;
    step(
        "core's wire tests with ring sealing (the hosts' build)",
        &[
            "test",
            "-p",
            "shoal-core",
            "--features",
            "ring",
            "--lib",
            "wire::",
        ],
    )?;
    step(
        "fuzz targets compile (running them needs nightly: see docs/testing.md)",
        &["check", "--manifest-path", "core/fuzz/Cargo.toml", "--bins"],
    )?;
    step(
        "workspace tests and simulation",
        &[
            "test",
            "--workspace",
            "--exclude",
            "shoal-core",
            "--profile",
            "sim",
        ],
    )?;
    println!("== firmware images and their sizes");
    firmware::sizes().context("step failed: firmware sizes")?;
    println!("== QEMU: a firmware image joins a core node over UDP");
    qemu_smoke().context("step failed: QEMU smoke")?;
    println!("== mixed fleet: 3 host nodes and 2 QEMU microcontrollers");
    mixed::run(&firmware::root().join("target/mixed-fleet")).context("step failed: mixed fleet")?;
    step(
        "firmware lint (QEMU board)",
        &[
            "clippy",
            "--manifest-path",
            "node-embedded/Cargo.toml",
            "--release",
            "--features",
            "board-qemu",
            "--target",
            "thumbv7m-none-eabi",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step(
        "firmware lint (Nucleo board)",
        &[
            "clippy",
            "--manifest-path",
            "node-embedded/Cargo.toml",
            "--release",
            "--features",
            "board-nucleo",
            "--target",
            "thumbv7em-none-eabihf",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step(
        "firmware format",
        &[
            "fmt",
            "--manifest-path",
            "node-embedded/Cargo.toml",
            "--check",
        ],
    )?;
    println!("xtask test: all steps passed");
    Ok(())
}

fn qemu_smoke() -> Result<()> {
    ensure_qemu()?;
    let elf = fleet::build_image()?;
    smoke::run(&elf)
}

/// Installs `qemu-system-arm` with apt when it is missing (CI runs as root
/// on Debian).
fn ensure_qemu() -> Result<()> {
    if Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    println!("xtask: installing qemu-system-arm with apt-get");
    for args in [&["update"][..], &["install", "-y", "qemu-system-arm"][..]] {
        let ok = Command::new("apt-get")
            .args(args)
            .status()
            .context("running apt-get (install qemu-system-arm by hand)")?
            .success();
        if !ok {
            bail!("apt-get {} failed", args.join(" "));
        }
    }
    Ok(())
}

fn ensure_targets() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (install Rust with rustup: https://rustup.rs)")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    for t in TARGETS {
        if !installed.lines().any(|l| l.trim() == *t) {
            println!("xtask: installing Rust target {t}");
            let ok = Command::new("rustup")
                .args(["target", "add", t])
                .status()?
                .success();
            if !ok {
                bail!("rustup target add {t} failed");
            }
        }
    }
    Ok(())
}

fn step(name: &str, args: &[&str]) -> Result<()> {
    println!("== {name}: cargo {}", args.join(" "));
    cargo(args).with_context(|| format!("step failed: {name}"))
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).args(args).status()?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}
