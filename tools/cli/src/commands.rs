//! The small commands: `keygen`, `status`, `send`, `forget`, `dev up`,
//! `dev down`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use shoal_core::Pool;

use crate::client::{Client, ClientConfig};
use crate::cluster::{self, LocalCluster};
use crate::{keyfile, members};

/// `shoal keygen --out FILE [--force]`.
pub fn keygen(out: &Path, force: bool) -> Result<()> {
    let key = keyfile::generate()?;
    keyfile::write(out, &key, force)?;
    eprintln!("wrote a new cluster key to {} (mode 0600)", out.display());
    Ok(())
}

/// `shoal status [--json]`.
pub fn status(config: &ClientConfig, json: bool) -> Result<()> {
    let mut client = Client::connect(config)?;
    let records = client.members()?;
    let rows = members::rows(&records);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", members::table(&rows));
    println!(
        "{} members, {} alive, as seen by {} ({})",
        rows.len(),
        members::alive(&records),
        members::name_of(&records, client.contact_id()),
        client.contact()
    );
    Ok(())
}

/// `shoal forget MEMBER`: MEMBER is a name or an id, as `status` shows.
pub fn forget(config: &ClientConfig, member: &str) -> Result<()> {
    let mut client = Client::connect(config)?;
    let records = client.members()?;
    let matching: Vec<_> = records
        .iter()
        .filter(|r| r.id.to_string() == member || r.profile.name.as_str() == member)
        .collect();
    let record = match matching[..] {
        [r] => r,
        [] => anyhow::bail!(
            "no member {member:?} in the member table of {}: `shoal status` lists names and ids",
            client.contact()
        ),
        _ => anyhow::bail!(
            "{} members are named {member:?}: give the id of the one to forget ({})",
            matching.len(),
            matching
                .iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    client.forget(record.id)?;
    println!(
        "forgot {} ({}): it is recorded as left, and the cluster no longer waits for it",
        record.profile.name, record.id
    );
    Ok(())
}

#[derive(Serialize)]
struct SendReport<'a> {
    key: &'a str,
    pool: &'static str,
    by: String,
    name: String,
    hops: u8,
}

/// `shoal send KEY MESSAGE [--pool P] [--json]`.
pub fn send(config: &ClientConfig, pool: Pool, key: &str, message: &str, json: bool) -> Result<()> {
    let mut client = Client::connect(config)?;
    let sent = client.send(pool, key.as_bytes(), message.as_bytes())?;
    // The receipt names the owner by id; the member table has its name.
    let records = client.members().unwrap_or_default();
    let report = SendReport {
        key,
        pool: pool.name(),
        by: sent.by.to_string(),
        name: members::name_of(&records, sent.by),
        hops: sent.hops,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{key}: answered by {} ({}) after {} hop{}",
            report.name,
            report.by,
            report.hops,
            if report.hops == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `shoal dev up --nodes N --dir DIR`.
pub fn dev_up(n: usize, dir: &Path, node_args: Vec<String>) -> Result<()> {
    let bin = cluster::node_binary()?;
    let mut c = LocalCluster::create(dir, bin, true)?;
    c.node_args(node_args);
    eprintln!("starting {n} shoal-node processes in {}", c.dir.display());
    let launched = std::time::Instant::now();
    c.start(n)?;
    c.wait_for_view(0, Duration::from_secs(30), |r| members::alive(r) >= n)
        .context("the cluster did not come up; its nodes were stopped")?;
    for node in &c.nodes {
        eprintln!(
            "  {}  udp {}  http {}  pid {}  log {}",
            node.name,
            node.addr,
            node.http,
            node.pid,
            node.log().display()
        );
    }
    eprintln!(
        "all {n} alive {:.1} s after launch; stop them with: shoal dev down --dir {}",
        launched.elapsed().as_secs_f64(),
        shell_quote(&c.dir.display().to_string())
    );
    println!("export SHOAL_NODE={}", c.nodes[0].addr);
    println!(
        "export SHOAL_KEY={}",
        shell_quote(&c.key_path.display().to_string())
    );
    c.detach();
    Ok(())
}

/// `shoal dev down --dir DIR`.
pub fn dev_down(dir: &Path) -> Result<()> {
    let stopped = cluster::stop_dir(dir)?;
    if stopped.is_empty() {
        println!("no nodes recorded in {}", dir.display());
    }
    for s in stopped {
        println!("{} (pid {}): {}", s.name, s.pid, s.how);
    }
    Ok(())
}

/// `text` as one shell word.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
