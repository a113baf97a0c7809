//! `shoal-node`: runs one Shoal host node (see `docs/node.md`).
//!
//! Startup checks everything a person can get wrong (flags, key file, data
//! dir, ports) before the node exists, and reports the first problem as one
//! line on stderr with a non-zero exit. SIGINT or SIGTERM makes the node
//! leave the cluster, keep running briefly so the leave spreads, close its
//! store and exit 0.
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::num::NonZeroU64;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use shoal_core::link::LinkConfig;
use shoal_core::member::{MemberConfig, Profile};
use shoal_core::node::{DataConfig, NodeConfig, Role};
use shoal_core::{Duration, NodeKind};
use shoal_node::config::Flags;
use shoal_node::host::Host;
use shoal_node::store::DiskStore;
use shoal_node::{identity, io_reason, key};
use tokio::sync::Notify;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

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

/// How long a request to another node waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    if let Err(e) = check_cpu() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> Result<()> {
    let settings = flags.settings()?;
    let key = key::read(&settings.key)?;
    if key::readable_by_others(&settings.key) {
        warn!(
            file = %settings.key.display(),
            "the key file is readable by other users; chmod 600 it"
        );
    }
    let mut store = DiskStore::open(&settings.data)?;
    store.set_quota(settings.max_store);
    let socket = std::net::UdpSocket::bind(settings.listen)
        .map_err(|e| anyhow!("cannot listen on {}: {}", settings.listen, io_reason(&e)))?;
    let bound = socket.local_addr()?;
    let http = match settings.http {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow!("cannot serve HTTP on {addr}: {}", io_reason(&e)))?,
        ),
        None => None,
    };
    // The epoch is raised and on disk before the node exists, so before it
    // seals its first datagram.
    let me = identity::boot(&mut store, nonzero_random()?).with_context(|| {
        format!(
            "cannot record the node's identity in data dir {}",
            settings.data.display()
        )
    })?;
    let advertise = settings.advertised(bound);
    info!(
        id = %me.id,
        epoch = me.epoch,
        name = settings.name.as_str(),
        listen = %bound,
        %advertise,
        chunk_size = settings.chunk_size,
        replicas = settings.quorum.n,
        write_quorum = settings.quorum.w,
        read_quorum = settings.quorum.r,
        "node starting"
    );
    if let Some(l) = &http {
        info!(http = %l.local_addr()?, "status server listening");
    }
    let config = NodeConfig {
        id: me.id,
        epoch: me.epoch,
        key,
        profile: Profile {
            name: settings.name.clone(),
            addr: advertise,
            kind: NodeKind::Host,
            weight: settings.weight,
            pools: settings.pools,
            tags: settings.tags.clone(),
        },
        role: Role::Member,
        member: MemberConfig::default(),
        link: LinkConfig::host(),
        request_timeout: REQUEST_TIMEOUT,
        data: DataConfig {
            quorum: settings.quorum,
            chunk_size: settings.chunk_size,
            wall_ms_at_zero: wall_ms(),
            ..DataConfig::default()
        },
    };
    let flushed = Arc::new(Notify::new());
    let wake = flushed.clone();
    store.on_flushed(move || wake.notify_one());
    let host = Host {
        config,
        seed: random()?,
        join: settings.join.clone(),
        socket,
        http,
        store,
        flushed,
    };
    let store = host
        .spawn(stop_signal())
        .context("cannot start the node's thread")?
        .join()
        .context("the node stopped")?;
    store.close().context("cannot close the store cleanly")?;
    info!("stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "cannot watch for SIGINT/SIGTERM; stop the node with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Milliseconds since the Unix epoch, for record versions.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random() -> Result<u64> {
    getrandom::u64().map_err(|e| anyhow!("cannot read random numbers from the OS: {e}"))
}

fn nonzero_random() -> Result<NonZeroU64> {
    loop {
        if let Some(n) = NonZeroU64::new(random()?) {
            return Ok(n);
        }
    }
}
