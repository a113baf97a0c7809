//! `cargo xtask`: Shoal's development tasks.
//!
//! - `cargo xtask test` — everything CI runs, installing missing targets first.
//! - `cargo xtask sim SCENARIO --seed S --nodes N` — replays one simulator run.
//! - `cargo xtask bench router` — the router benchmark.

use std::process::Command;

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
        /// Which benchmark: router.
        which: String,
    },
}

/// Targets the tests build for.
const TARGETS: &[&str] = &["thumbv7m-none-eabi"];

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
        Task::Bench { which } => match which.as_str() {
            "router" => cargo(&["bench", "-p", "shoal-core", "--bench", "router"]),
            other => bail!("unknown benchmark {other:?}; try: router"),
        },
    }
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
    println!("xtask test: all steps passed");
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
