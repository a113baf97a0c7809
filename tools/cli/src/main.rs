//! `shoal`: the operator CLI, a protocol client of a Shoal cluster.
//!
//! The client is not a member: it speaks the authenticated protocol to one
//! contact node (`--node`) with the cluster key (`--key`), as a client
//! [`Node`](shoal_core::node::Node) driven by [`client`]. Local clusters of
//! `shoal-node` processes for development, the demo and the benchmark are in
//! [`cluster`]. See `docs/cli.md`.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 3 no answer from the
//! node (unreachable, or the key is wrong).
#![deny(unsafe_code)]

mod bench;
mod client;
mod cluster;
mod commands;
mod demo;
mod drive;
mod fs;
mod fsbench;
mod http;
mod keyfile;
mod members;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::client::{ClientConfig, ClientError};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Operate a Shoal cluster: list its members, send key-addressed messages, store and \
             fetch files, run a local cluster or the demo.",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error, 3 no answer from the node."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(Args, Clone, Debug)]
struct Global {
    /// The node to talk to.
    #[arg(long, env = "SHOAL_NODE", global = true, value_name = "IP:PORT")]
    node: Option<String>,
    /// The cluster key file (64 hex digits).
    #[arg(long, env = "SHOAL_KEY", global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// How long to wait for the node to answer, and for each request.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    timeout: Duration,
    /// Print JSON instead of text (status, send, fs ls, fs stat).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new random cluster key: 64 hex digits, mode 0600.
    Keygen {
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show the member table of the node.
    Status,
    /// Send a message to whichever node owns KEY, and show who answered.
    Send {
        /// The key; the router picks its owner.
        #[arg(value_name = "KEY")]
        routing_key: String,
        /// The message.
        message: String,
        /// The pool whose nodes may own the key.
        #[arg(long, default_value = "data")]
        pool: String,
    },
    /// Declare a dead member gone for good (by name or id, as `status`
    /// shows): it is recorded as left, and garbage collection, which waits
    /// while any member is dead, goes on. If it ever starts again it rejoins.
    Forget {
        /// The member's name or id.
        member: String,
    },
    /// Store, fetch, list and remove files in the cluster's file system.
    Fs {
        #[command(subcommand)]
        command: Fs,
    },
    /// Run a local cluster of shoal-node processes in the background.
    Dev {
        #[command(subcommand)]
        command: Dev,
    },
    /// Start a 3-node cluster, show membership, routing and failure
    /// detection at work, and stop it.
    Demo,
    /// Measure key-addressed request round trips on a 3-node loopback
    /// cluster beside plain UDP echo.
    Bench {
        /// Requests per measurement.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// Measure file-system throughput on a 3-node loopback cluster beside
    /// a plain UDP blast between two processes (prints a Markdown table).
    BenchFs {
        /// Size of the large file put and got, in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// 1 KiB files to put.
        #[arg(long, default_value_t = 4000)]
        files: usize,
        /// Clients putting small files at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The cluster's chunk size in bytes (default: the nodes' default).
        #[arg(long)]
        chunk_size: Option<u32>,
    },
    /// Echo UDP datagrams on 127.0.0.1 (the benchmark's baseline peer).
    #[command(hide = true)]
    UdpEcho,
    /// Count the bytes of UDP datagrams on 127.0.0.1 (the file-system
    /// benchmark's baseline peer).
    #[command(hide = true)]
    UdpSink,
}

#[derive(Subcommand)]
enum Fs {
    /// Store LOCAL (a file, or `-` for standard input) as REMOTE, replacing
    /// any file there.
    Put {
        /// The local file, or `-` for standard input.
        #[arg(value_name = "LOCAL")]
        local: PathBuf,
        /// Where to store it, such as /docs/a.txt (the leading / may be left out).
        #[arg(value_name = "REMOTE")]
        remote: OsString,
    },
    /// Fetch REMOTE into LOCAL (a file, a directory, or `-` for standard output).
    Get {
        /// The file to fetch.
        #[arg(value_name = "REMOTE")]
        remote: OsString,
        /// Where to write it; `-` for standard output.
        #[arg(value_name = "LOCAL")]
        local: PathBuf,
    },
    /// List a directory.
    Ls {
        /// The directory [default: /].
        #[arg(value_name = "DIR")]
        dir: Option<OsString>,
    },
    /// Show a file's size, chunks, version, and which nodes hold each chunk.
    Stat {
        /// The file.
        #[arg(value_name = "REMOTE")]
        remote: OsString,
    },
    /// Remove a file (its directories stay).
    Rm {
        /// The file.
        #[arg(value_name = "REMOTE")]
        remote: OsString,
    },
}

#[derive(Subcommand)]
enum Dev {
    /// Start N nodes on 127.0.0.1 and wait until all are alive.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
        nodes: u16,
        /// The cluster directory: key, data dirs, logs, pids.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// More `shoal-node` flags for every node, after `--` (for example
        /// `-- --chunk-size 8192`).
        #[arg(last = true, value_name = "NODE FLAGS")]
        node_args: Vec<String>,
    },
    /// Stop the nodes a `dev up` started in DIR.
    Down {
        /// The cluster directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// A mistake in how the command was called.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

impl Global {
    /// The contact and key, checked in the order a person fixes them.
    fn client_config(&self) -> Result<ClientConfig> {
        let node = self.node.as_deref().ok_or_else(|| {
            UsageError("no node given: pass --node IP:PORT or set SHOAL_NODE".into())
        })?;
        let contact = parse_addr(node)?;
        let key_path = self.key.as_ref().ok_or_else(|| {
            UsageError(
                "no key given: pass --key FILE or set SHOAL_KEY (create one with `shoal keygen \
                 --out FILE`)"
                    .into(),
            )
        })?;
        let key = keyfile::read(key_path)?;
        Ok(ClientConfig {
            contact,
            key,
            timeout: self.timeout,
        })
    }
}

/// `IP:PORT`, with a usage error that shows the expected form.
fn parse_addr(text: &str) -> Result<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => Err(UsageError(format!(
            "malformed node address {text:?}: expected IP:PORT, such as 127.0.0.1:7000 or \
             [::1]:7000"
        ))
        .into()),
    }
}

fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Keygen { out, force } => commands::keygen(&out, force),
        Command::Status => commands::status(&g.client_config()?, g.json),
        Command::Send {
            routing_key,
            message,
            pool,
        } => {
            let pool = shoal_core::Pool::from_name(&pool).ok_or_else(|| {
                UsageError(format!(
                    "unknown pool {pool:?}: pools are meta, data, runner, sched, mcu"
                ))
            })?;
            commands::send(&g.client_config()?, pool, &routing_key, &message, g.json)
        }
        Command::Forget { member } => commands::forget(&g.client_config()?, &member),
        Command::Fs { command } => run_fs(&g, command),
        Command::Dev {
            command:
                Dev::Up {
                    nodes,
                    dir,
                    node_args,
                },
        } => commands::dev_up(usize::from(nodes), &dir, node_args),
        Command::Dev {
            command: Dev::Down { dir },
        } => commands::dev_down(&dir),
        Command::Demo => demo::run(),
        Command::Bench { requests } => bench::run(requests),
        Command::UdpEcho => bench::udp_echo(),
        Command::BenchFs {
            size_mib,
            files,
            concurrency,
            chunk_size,
        } => fsbench::run(&fsbench::Options {
            size_mib,
            files,
            concurrency,
            chunk_size,
        }),
        Command::UdpSink => fsbench::udp_sink(),
    }
}

/// `shoal fs …`: paths are checked before anything else.
fn run_fs(g: &Global, command: Fs) -> Result<()> {
    match command {
        Fs::Put { local, remote } => {
            let remote = fs::Remote::file(remote)?;
            fs::put(&g.client_config()?, &local, &remote)
        }
        Fs::Get { remote, local } => {
            let remote = fs::Remote::file(remote)?;
            fs::get(&g.client_config()?, &remote, &local)
        }
        Fs::Ls { dir } => {
            let dir = fs::Remote::dir(dir.unwrap_or_else(|| OsString::from("/")))?;
            fs::ls(&g.client_config()?, &dir, g.json)
        }
        Fs::Stat { remote } => {
            let remote = fs::Remote::file(remote)?;
            fs::stat(&g.client_config()?, &remote, g.json)
        }
        Fs::Rm { remote } => {
            let remote = fs::Remote::file(remote)?;
            fs::rm(&g.client_config()?, &remote)
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        2
    } else if let Some(ClientError::NoAnswer { .. }) = e.downcast_ref::<ClientError>() {
        3
    } else {
        1
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Refuses to go on, with a clear message, on a CPU below the x86-64-v3
/// level the host build targets (see `.cargo/config.toml`), rather than
/// dying of an illegal instruction later.
fn check_cpu() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("fma"))
    {
        return Err(
            "this build needs an x86-64-v3 CPU (AVX2, BMI2, FMA); rebuild with \
             RUSTFLAGS=\"-C target-cpu=x86-64\" for this one"
                .into(),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("shoal: internal error: {info}");
    }));
    if let Err(e) = check_cpu() {
        eprintln!("shoal: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    // The client node is built on this thread's stack before it is boxed;
    // give it room whatever the platform's main-thread stack is.
    let worker = std::thread::Builder::new()
        .name("shoal".into())
        .stack_size(64 << 20)
        .spawn(move || run(cli));
    let result = match worker {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the command panicked"))),
        Err(e) => Err(anyhow::anyhow!("cannot start a thread: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`shoal fs ls | head`): nothing to report.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
