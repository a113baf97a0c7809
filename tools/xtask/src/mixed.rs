//! The mixed-fleet test: three host nodes and two QEMU microcontrollers form
//! one cluster, driven and observed through the `shoal` CLI.
//!
//! It checks that the cluster converges with the MCUs listed as kind `mcu`,
//! that keys the router places on an MCU are answered by that MCU, that a
//! file put through a host has its chunks on the MCUs in proportion to
//! their weight, that a killed QEMU node is marked dead by every other node
//! within 10 s while the file still reads back intact, and that the
//! restarted image rejoins.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use shoal_core::fs::ChunkId;
use shoal_core::repl::{MAX_REPLICAS, Quorum};
use shoal_core::router::{self, Candidate, KeyDigest};
use shoal_core::{NodeId, Pool, PoolSet};

use crate::fleet::{self, HOST_PORT, MCU_PORT};

const HOSTS: u16 = 3;
const MCUS: u16 = 2;

/// The test file: 100 chunks of the default 2048 bytes, the last one
/// short, and 3 index chunks (two of 64 and 36 ids, and the root). Each MCU
/// (weight 1 beside three hosts of weight 4) is expected to hold a copy of
/// about 30 of the 103 (see [`inclusion`]).
const FILE_BYTES: usize = 99 * 2048 + 1000;
/// Where the file goes in the cluster.
const REMOTE: &str = "/mixed/weights.bin";

/// Every process the test started; all are killed when it ends, however it ends.
#[derive(Default)]
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cli {
    bin: PathBuf,
    key: PathBuf,
}

impl Cli {
    /// `shoal ARGS…` against the node at `port`: its standard output, or
    /// an error carrying its standard error.
    fn run<S: AsRef<OsStr>>(&self, port: u16, args: &[S]) -> Result<Vec<u8>> {
        let out = Command::new(&self.bin)
            .args(["--node", &format!("127.0.0.1:{port}"), "--key"])
            .arg(&self.key)
            .args(args)
            .output()
            .context("running shoal")?;
        if !out.status.success() {
            let what: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            bail!(
                "shoal {} on :{port}: {}",
                what.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// `shoal --json status` against the node at `port`: its member rows.
    fn status(&self, port: u16) -> Result<Vec<Value>> {
        let out = self.run(port, &["--timeout", "2", "--json", "status"])?;
        let rows: Value = serde_json::from_slice(&out)?;
        Ok(rows.as_array().cloned().unwrap_or_default())
    }

    /// `shoal --json send --pool mcu KEY hello`: the id that answered.
    fn send_mcu(&self, key: &str) -> Result<String> {
        let out = self.run(
            HOST_PORT,
            &[
                "--timeout",
                "5",
                "--json",
                "send",
                "--pool",
                "mcu",
                key,
                "hello",
            ],
        )?;
        let v: Value = serde_json::from_slice(&out)?;
        Ok(v["by"].as_str().unwrap_or_default().to_string())
    }
}

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or_default()
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
fn wait(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn candidates(rows: &[Value]) -> Vec<Candidate> {
    rows.iter()
        .filter(|r| field(r, "state") == "alive")
        .filter_map(|r| {
            let id = u64::from_str_radix(field(r, "id"), 16).ok()?;
            let pools: PoolSet = r["pools"]
                .as_array()?
                .iter()
                .filter_map(|p| Pool::from_name(p.as_str()?))
                .collect();
            let weight = u32::try_from(r["weight"].as_u64()?).ok()?;
            Some(Candidate {
                id: NodeId(id),
                weight,
                pools,
            })
        })
        .collect()
}

/// Runs the test; `dir` holds the hosts' data and the key.
pub fn run(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let build = fleet::build(dir, true)?;
    let cli = Cli {
        bin: fleet::release_dir().join("shoal"),
        key: build.key_file.clone(),
    };
    let mut procs = Processes::default();
    for i in 0..HOSTS {
        procs.0.push((
            format!("host-{i}"),
            fleet::spawn_host(&build, dir, i, true)?,
        ));
        // The first host is everyone's seed: let it bind before the rest join.
        wait(Duration::from_secs(5), || cli.status(HOST_PORT + i).is_ok());
    }
    for j in 0..MCUS {
        let (child, _log) = fleet::spawn_mcu(&build, j, HOST_PORT)?;
        procs.0.push((format!("mcu-{j}"), child));
    }

    // 1. Everyone converges; the MCUs are listed as kind mcu.
    let total = usize::from(HOSTS + MCUS);
    let converged = |cli: &Cli| {
        cli.status(HOST_PORT)
            .map(|rows| rows.iter().filter(|r| field(r, "state") == "alive").count() == total)
            .unwrap_or(false)
    };
    let Some(t) = wait(Duration::from_secs(30), || converged(&cli)) else {
        bail!(
            "the mixed fleet did not converge within 30 s: {:?}",
            cli.status(HOST_PORT)
        );
    };
    let rows = cli.status(HOST_PORT)?;
    let mcus: Vec<&Value> = rows.iter().filter(|r| field(r, "kind") == "mcu").collect();
    if mcus.len() != usize::from(MCUS) {
        bail!("expected {MCUS} members of kind mcu, saw {}", mcus.len());
    }
    println!(
        "mixed fleet: {total} members alive after {:.1} s; {MCUS} of kind mcu",
        t.as_secs_f64()
    );
    if let Some((_, qemu)) = procs.0.iter().find(|(n, _)| n == "mcu-0")
        && let Some(share) = cpu_share(qemu.id(), Duration::from_secs(3))
    {
        println!(
            "mixed fleet: an idle QEMU node used {:.1}% of a core over 3 s",
            share * 100.0
        );
    }

    // 2. Keys the router places on an MCU are answered by that MCU.
    let view = candidates(&rows);
    let mut answered = std::collections::BTreeSet::new();
    for k in 0..12 {
        let key = format!("sensor/{k}");
        let by = cli.send_mcu(&key)?;
        let owner = router::primary(
            view.iter().copied(),
            Pool::Mcu,
            &KeyDigest::of(key.as_bytes()),
        )
        .map(|id| id.to_string())
        .unwrap_or_default();
        if by != owner {
            bail!("{key} was answered by {by}, but the router places it on {owner}");
        }
        answered.insert(by);
    }
    if answered.len() != usize::from(MCUS) {
        bail!("expected both MCUs to own and answer some of 12 keys; answered by {answered:?}");
    }
    println!("mixed fleet: 12 mcu-pool keys answered by their owners, both MCUs among them");

    // 3. A file put through a host: its chunks land on the MCUs in
    //    proportion to their weight.
    let (local, sum) = put_file(&cli, dir)?;
    check_shares(&cli, &view, &rows)?;

    // 4. Kill one QEMU: every other node marks it dead within 10 s, and
    //    meanwhile the file reads back intact through a host.
    let victim = field(mcus[1], "id").to_string();
    let (name, child) = procs
        .0
        .iter_mut()
        .find(|(n, _)| n == "mcu-1")
        .context("mcu-1")?;
    child.kill().with_context(|| format!("killing {name}"))?;
    let _ = child.wait();
    let killed = Instant::now();
    let survivors: Vec<u16> = (0..HOSTS)
        .map(|i| HOST_PORT + i)
        .chain([MCU_PORT])
        .collect();
    let all_see_dead = || {
        survivors.iter().all(|&port| {
            cli.status(port).is_ok_and(|rows| {
                rows.iter()
                    .any(|r| field(r, "id") == victim && field(r, "state") == "dead")
            })
        })
    };
    let back = dir.join("weights.out");
    let (dead, got) = std::thread::scope(|s| {
        // Read while the victim is still a member: its chunk loads time out
        // and the coordinator moves on to the next replica in rank.
        let get = s.spawn(|| -> Result<Duration> {
            let start = Instant::now();
            cli.run(
                HOST_PORT + 1,
                &[
                    OsStr::new("fs"),
                    "get".as_ref(),
                    REMOTE.as_ref(),
                    back.as_os_str(),
                ],
            )?;
            Ok(start.elapsed())
        });
        let dead = wait(Duration::from_secs(10), all_see_dead).map(|_| killed.elapsed());
        (dead, get.join())
    });
    let Some(t) = dead else {
        bail!("the killed MCU {victim} was not marked dead by every other node within 10 s");
    };
    println!(
        "mixed fleet: killed mcu-1 marked dead by all 4 others after {:.1} s",
        t.as_secs_f64()
    );
    let took = match got {
        Ok(r) => r.context("reading the file back with mcu-1 killed")?,
        Err(_) => bail!("the fs get thread panicked"),
    };
    let read = std::fs::read(&back).with_context(|| format!("reading {}", back.display()))?;
    let read_sum = ChunkId::of(&read);
    if read_sum != sum {
        bail!(
            "{REMOTE} read back with mcu-1 killed differs from {}: {} bytes, sha256 {read_sum}, \
             expected {} bytes, sha256 {sum}",
            local.display(),
            read.len(),
            FILE_BYTES
        );
    }
    println!(
        "mixed fleet: {REMOTE} read back byte-identical (sha256 {}…) through host-1 \
         in {:.1} s, started right after mcu-1 was killed",
        &sum.to_string()[..16],
        took.as_secs_f64()
    );

    // 5. The restarted image rejoins (same id, newer epoch).
    let (child, _log) = fleet::spawn_mcu(&build, 1, HOST_PORT)?;
    procs.0.push(("mcu-1 (restarted)".into(), child));
    let rejoined = || {
        cli.status(HOST_PORT).is_ok_and(|rows| {
            rows.iter()
                .any(|r| field(r, "id") == victim && field(r, "state") == "alive")
                && rows.iter().filter(|r| field(r, "state") == "alive").count() == total
        })
    };
    let Some(t) = wait(Duration::from_secs(20), rejoined) else {
        bail!("the restarted MCU {victim} did not rejoin within 20 s");
    };
    println!(
        "mixed fleet: restarted mcu-1 rejoined as {victim} after {:.1} s",
        t.as_secs_f64()
    );
    Ok(())
}

/// Writes the test file (pseudo-random bytes, so no two chunks are alike)
/// and puts it through host 0; its local path and SHA-256.
fn put_file(cli: &Cli, dir: &Path) -> Result<(PathBuf, ChunkId)> {
    let seed = fleet::epoch_now();
    let mut state = seed;
    let mut bytes = Vec::with_capacity(FILE_BYTES + 8);
    while bytes.len() < FILE_BYTES {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(FILE_BYTES);
    let local = dir.join("weights.bin");
    std::fs::write(&local, &bytes)?;
    // A chunk id is the SHA-256 of its bytes: here, of the whole file.
    let sum = ChunkId::of(&bytes);
    let start = Instant::now();
    cli.run(
        HOST_PORT,
        &[
            OsStr::new("fs"),
            "put".as_ref(),
            local.as_os_str(),
            REMOTE.as_ref(),
        ],
    )?;
    println!(
        "mixed fleet: put {REMOTE} ({FILE_BYTES} bytes, content seed {seed}) through host-0 \
         in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok((local, sum))
}

/// The chunks of [`REMOTE`] (data and index) and, for each, the ids of the
/// nodes holding a good copy (`shoal fs stat --json`).
fn holders(cli: &Cli) -> Result<Vec<(ChunkId, Vec<String>)>> {
    let out = cli.run(HOST_PORT, &["--json", "fs", "stat", REMOTE])?;
    let stat: Value = serde_json::from_slice(&out).context("parsing fs stat --json")?;
    let data = stat["data_chunks"]
        .as_array()
        .context("fs stat --json has no data_chunks")?;
    if data.len() as u64 != stat["chunks"].as_u64().unwrap_or(0) {
        bail!(
            "fs stat listed {} data chunks of {}",
            data.len(),
            stat["chunks"]
        );
    }
    let index = stat["index_chunks"]
        .as_array()
        .context("fs stat --json has no index_chunks")?;
    data.iter()
        .chain(index)
        .map(|c| {
            let id = chunk_id(c["id"].as_str().unwrap_or_default())
                .with_context(|| format!("bad chunk id in fs stat: {}", c["id"]))?;
            let nodes = c["holders"]
                .as_array()
                .map(|hs| hs.iter().map(|h| field(h, "id").to_string()).collect())
                .unwrap_or_default();
            Ok((id, nodes))
        })
        .collect()
}

fn chunk_id(hex: &str) -> Option<ChunkId> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(ChunkId(id))
}

/// For each node, the probability that the router puts a given key on it
/// when it picks `n` distinct nodes of these `weights`.
///
/// Weighted rendezvous hashing ranks the nodes like a race of exponential
/// clocks with rates proportional to weight (`router`'s module docs): the
/// first place goes to node `i` with probability `wᵢ / Σw`, the next to `j`
/// among the rest with `wⱼ / (Σw - wᵢ)`, and so on. The sum runs over every
/// ordering of the first `n` places (a handful of nodes here).
fn inclusion(weights: &[f64], n: usize) -> Vec<f64> {
    fn walk(weights: &[f64], taken: &mut Vec<usize>, p: f64, n: usize, out: &mut [f64]) {
        if taken.len() == n {
            return;
        }
        let rest: f64 = (0..weights.len())
            .filter(|i| !taken.contains(i))
            .map(|i| weights[i])
            .sum();
        for i in 0..weights.len() {
            if taken.contains(&i) || weights[i] <= 0.0 {
                continue;
            }
            let q = p * weights[i] / rest;
            out[i] += q;
            taken.push(i);
            walk(weights, taken, q, n, out);
            taken.pop();
        }
    }
    let mut out = vec![0.0; weights.len()];
    walk(
        weights,
        &mut Vec::new(),
        1.0,
        n.min(weights.len()),
        &mut out,
    );
    out
}

/// Counts the copies of [`REMOTE`]'s data chunks on each node and checks
/// them against the router and the weights in `view` (`rows`: the member
/// table, for names).
fn check_shares(cli: &Cli, view: &[Candidate], rows: &[Value]) -> Result<()> {
    let data: Vec<Candidate> = view
        .iter()
        .copied()
        .filter(|c| c.weight > 0 && c.pools.contains(Pool::Data))
        .collect();
    let n = usize::from(Quorum::default().for_pool(data.len()).n);
    // The last copies may still be on their way when the put returns (it
    // waits for W of N): give them a moment.
    let full = |c: &[(ChunkId, Vec<String>)]| c.iter().all(|(_, h)| h.len() >= n);
    let mut chunks = Vec::new();
    let mut error = None;
    wait(Duration::from_secs(5), || match holders(cli) {
        Ok(c) => {
            let done = full(&c);
            chunks = c;
            done
        }
        Err(e) => {
            error = Some(e);
            false
        }
    });
    if chunks.is_empty() {
        return Err(error.unwrap_or_else(|| anyhow::anyhow!("{REMOTE} has no data chunks")));
    }
    let k = chunks.len();
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    let mut off_rank = 0;
    for (id, nodes) in &chunks {
        for node in nodes {
            *held.entry(node.clone()).or_default() += 1;
        }
        let ranked =
            router::replicas::<MAX_REPLICAS>(data.iter().copied(), Pool::Data, &id.digest());
        let top: Vec<String> = ranked.iter().take(n).map(|r| r.to_string()).collect();
        for node in &top {
            *placed.entry(node.clone()).or_default() += 1;
        }
        if nodes.len() != top.len() || !top.iter().all(|t| nodes.contains(t)) {
            off_rank += 1;
        }
    }
    let short = chunks.iter().filter(|(_, h)| h.len() < n).count();
    let weights: Vec<f64> = data.iter().map(|c| f64::from(c.weight)).collect();
    let total_weight: f64 = weights.iter().sum();
    let p = inclusion(&weights, n);
    println!(
        "mixed fleet: {k} chunks (data and index), {} copies ({short} chunks with fewer \
         than {n}, {off_rank} not on the router's first {n}); per node:",
        held.values().sum::<usize>()
    );
    println!(
        "    {:<16}  {:<5}  {:>6}  {:>6}  {:>6}  {:>11}  {:>12}",
        "node", "kind", "weight", "holds", "router", "model ± 4.5σ", "weight share"
    );
    let mut problems = Vec::new();
    for (c, p) in data.iter().zip(&p) {
        let id = c.id.to_string();
        let row = rows.iter().find(|r| field(r, "id") == id);
        let name = row.map_or("?", |r| field(r, "name"));
        let kind = row.map_or("?", |r| field(r, "kind"));
        let holds = held.get(&id).copied().unwrap_or(0);
        let router_says = placed.get(&id).copied().unwrap_or(0);
        // Each chunk id is a SHA-256, so whether a chunk has a copy on this
        // node is a coin flip of probability p, independent across chunks:
        // the count is binomial, mean k·p, standard deviation √(k·p·(1-p)).
        let mean = k as f64 * p;
        let sd = (k as f64 * p * (1.0 - p)).sqrt();
        // The naive share, total copies × weight / total weight, which a
        // node could reach only if it could hold several copies of a chunk:
        // the copies of a chunk go to distinct nodes, so the heavy hosts
        // saturate (at most one copy each) and the MCUs' share is larger.
        let naive = (k * n) as f64 * f64::from(c.weight) / total_weight;
        println!(
            "    {name:<16}  {kind:<5}  {:>6}  {holds:>6}  {router_says:>6}  {mean:>5.1} ± {:<4.1}  {naive:>12.1}",
            c.weight,
            4.5 * sd
        );
        // The fleet must place what the router says: each chunk write goes
        // to the first N nodes in rank. The exception is a store that
        // refuses a chunk for want of room: the write then goes to the next
        // node in rank (and the anti-entropy sweep may move it later). The
        // MCU stores are sized to hold more than twice their expected share
        // (`fleet::MCU_STORE_BYTES`), so this should not happen; up to
        // 2 + 10% of the router's count is allowed either way.
        if holds.abs_diff(router_says) > 2 + router_says / 10 {
            problems.push(format!(
                "{name} holds {holds} chunks, but the router places {router_says} on it"
            ));
        }
        // And the router's placement must follow the weights: within 4.5
        // standard deviations of the binomial mean, a false alarm in about
        // 1 of 150,000 runs per node. (With 103 chunks that is ±21 around
        // an MCU's 30: it tells weight 1 from the hosts' 4, where an equal
        // weight would give 62 and the default host weight of 100 would
        // give 2; the exact match with the router above is the tight check.)
        if (router_says as f64 - mean).abs() > 4.5 * sd {
            problems.push(format!(
                "the router places {router_says} chunks on {name} (weight {}); its weight \
                 gives {mean:.1} ± {:.1}",
                c.weight,
                4.5 * sd
            ));
        }
        if kind == "mcu" && holds == 0 {
            problems.push(format!("MCU {name} holds no chunk of {REMOTE}"));
        }
    }
    if !problems.is_empty() {
        bail!("chunks are not placed by weight: {}", problems.join("; "));
    }
    println!("mixed fleet: every node holds its weight's share of {REMOTE}, both MCUs some");
    Ok(())
}

/// The share of one core process `pid` used over `span` (from /proc).
fn cpu_share(pid: u32, span: Duration) -> Option<f64> {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let before = ticks()?;
    std::thread::sleep(span);
    let after = ticks()?;
    Some((after - before) as f64 / hz / span.as_secs_f64())
}
