//! `shoal demo`: a 3-node cluster on 127.0.0.1 showing each subsystem that
//! exists today, with a check at every step.
//!
//! 1. membership: three nodes join and every one sees all three alive;
//! 2. key-addressed messages: each answer comes from the key's owner as the
//!    router computes it here over the listed members;
//! 3. authentication: a client with another key gets no answer, and the
//!    node counts its datagrams as authentication failures;
//! 4. files: a generated file is put, listed, located on its replicas and
//!    read back byte-identical;
//! 5. failure detection: after `kill -9` of one node the others declare it
//!    dead, and only its keys move.
//!
//! The nodes are stopped on success, on error and on Ctrl-C.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_core::member::{Record, State};
use shoal_core::{NodeId, Pool};

use crate::client::{Client, ClientConfig, ClientError, random_u64};
use crate::cluster::{self, LocalCluster};
use crate::{fs as shoal_fs, http, keyfile, members};

const NODES: usize = 3;
/// The node killed in step 4 (index): not the one the demo's client uses.
const VICTIM: usize = 2;
const KEYS: [&str; 10] = [
    "user:alice",
    "user:bob",
    "user:carol",
    "photo:2024/0001.jpg",
    "photo:2024/0002.jpg",
    "invoice:7731",
    "sensor:boiler-3",
    "sensor:greenhouse-1",
    "table:orders/1042",
    "task:resize-42",
];
const AUTH_DROPS: &str = "shoal_drops_total{reason=\"authentication\"}";
/// The file step's file: its path in the cluster and its size.
const FILE_PATH: &str = "/demo/hello.bin";
const FILE_SIZE: usize = 100 * 1024;

/// What each step found, for the summary.
#[derive(Default)]
struct Summary {
    converged: Option<Duration>,
    owners_ok: usize,
    owners_bad: Vec<String>,
    auth_drops: Option<f64>,
    file: Option<String>,
    dead_after: Vec<(String, Duration)>,
    moved: usize,
    moved_ok: bool,
}

/// Runs the demo; `Ok` only when every check passed.
pub fn run() -> Result<()> {
    let start = Instant::now();
    let bin = cluster::node_binary()?;
    let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    cluster::stop_on_interrupt(Some(dir.clone()));
    println!(
        "shoal demo: a {NODES}-node cluster on 127.0.0.1 (files in {})",
        dir.display()
    );
    let mut summary = Summary::default();
    let result = LocalCluster::create(&dir, bin, false).and_then(|mut c| {
        let r = steps(&mut c, &mut summary);
        println!();
        println!("stopping the nodes");
        for s in c.stop() {
            println!("  {} (pid {}): {}", s.name, s.pid, s.how);
        }
        r
    });
    print_summary(&summary);
    match result {
        Ok(()) => {
            let _ = fs::remove_dir_all(&dir);
            println!("demo passed in {:.1} s", start.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => {
            println!("logs kept in {}", dir.display());
            Err(e)
        }
    }
}

fn steps(c: &mut LocalCluster, s: &mut Summary) -> Result<()> {
    // 1. Membership.
    println!();
    println!("1. membership: starting {NODES} nodes, n2 and n3 join through n1");
    let launched = Instant::now();
    c.start(NODES)?;
    for n in &c.nodes {
        println!(
            "  {}  udp {}  http {}  pid {}",
            n.name, n.addr, n.http, n.pid
        );
    }
    let all_alive = |r: &[Record]| members::alive(r) == NODES;
    let (records, _) = c.wait_for_view(0, Duration::from_secs(20), all_alive)?;
    for i in 1..NODES {
        c.wait_for_view(i, Duration::from_secs(10), all_alive)?;
    }
    let took = launched.elapsed();
    s.converged = Some(took);
    println!(
        "  {:.1} s after launch every node sees all {NODES} alive; n1's table:",
        took.as_secs_f64()
    );
    print_indented(&members::table(&members::rows(&records)));

    // 2. Key-addressed messages.
    println!();
    println!(
        "2. key-addressed messages: {} keys sent through n1 to their owners in pool data",
        KEYS.len()
    );
    let mut client = c.client(0, Duration::from_secs(5))?;
    let records = client.members()?;
    let before = route_all(&mut client, &records, s)?;

    // 3. Authentication.
    println!();
    println!("3. authentication: a client with another key talks to n1");
    let drops_before = auth_drops(c, 0)?;
    let stranger = Client::connect(&ClientConfig {
        contact: c.nodes[0].addr,
        key: keyfile::generate()?,
        timeout: Duration::from_secs(1),
    });
    match stranger {
        Err(ClientError::NoAnswer { .. }) => {}
        Ok(_) => bail!("n1 answered a client holding another key"),
        Err(e) => return Err(e).context("the wrong-key client failed oddly"),
    }
    let drops = auth_drops(c, 0)? - drops_before;
    if drops < 1.0 {
        bail!("n1 did not count the wrong-key client's datagrams as authentication failures");
    }
    s.auth_drops = Some(drops);
    println!(
        "  no answer; n1 dropped its {drops} datagrams as authentication failures ({AUTH_DROPS})"
    );

    // 4. Files.
    println!();
    println!(
        "4. files: put, list, stat and get a {} KiB generated file through n1",
        FILE_SIZE / 1024
    );
    files(c, &mut client, s)?;

    // 5. Failure detection.
    let victim = c.nodes[VICTIM].name.clone();
    let victim_id = records
        .iter()
        .find(|r| r.profile.name.as_str() == victim)
        .map(|r| r.id)
        .with_context(|| format!("n1 does not list {victim}"))?;
    println!();
    println!(
        "5. failure detection: kill -9 {victim} (pid {})",
        c.nodes[VICTIM].pid
    );
    let killed = Instant::now();
    c.kill(VICTIM)?;
    watch_death(c, victim_id, killed, s)?;
    println!("  the same keys again, through n1:");
    let records = client.members()?;
    let after = route_all(&mut client, &records, s)?;
    s.moved = KEYS.iter().filter(|k| before[**k] != after[**k]).count();
    s.moved_ok = KEYS
        .iter()
        .all(|k| (before[*k] == victim_id) == (before[*k] != after[*k]));
    println!(
        "  {} key(s) moved: {}",
        s.moved,
        if s.moved_ok {
            format!("exactly those {victim} owned; the rest stayed put")
        } else {
            "not just the dead node's keys (a routing bug)".into()
        }
    );
    if !s.owners_bad.is_empty() {
        bail!(
            "{} answer(s) did not come from the key's owner: {}",
            s.owners_bad.len(),
            s.owners_bad.join("; ")
        );
    }
    if !s.moved_ok {
        bail!("keys of live nodes moved when {victim} died");
    }
    Ok(())
}

/// Puts a generated file, lists its directory, stats it and gets it back,
/// checking each answer.
fn files(c: &LocalCluster, client: &mut Client, s: &mut Summary) -> Result<()> {
    let remote = shoal_fs::Remote::file(FILE_PATH.into())?;
    let (dir, name) = FILE_PATH.rsplit_once('/').unwrap_or(("/", FILE_PATH));
    let local = c.dir.join("hello.bin");
    let back = c.dir.join("hello.back");
    let data = generated(FILE_SIZE)?;
    fs::write(&local, &data).with_context(|| format!("cannot write {}", local.display()))?;

    let took = Instant::now();
    let meta = shoal_fs::put_from(client, shoal_fs::Source::open(&local)?, &remote)
        .context("the put failed")?;
    println!(
        "  put {FILE_PATH}: {} bytes in {} chunks of {} bytes ({} ms)",
        meta.size,
        meta.chunks,
        meta.chunk_size,
        took.elapsed().as_millis()
    );

    let listed = shoal_fs::list(client, &shoal_fs::Remote::dir(dir.into())?)
        .context("the listing failed")?;
    let row = listed
        .iter()
        .find(|r| r.name == name)
        .with_context(|| format!("ls {dir} does not list {name}"))?;
    if row.size != FILE_SIZE as u64 {
        bail!(
            "ls {dir} lists {name} with {} bytes, not {FILE_SIZE}",
            row.size
        );
    }
    println!("  ls {dir}: {name}, {} bytes", row.size);

    let stat = shoal_fs::stat_of(client, &remote).context("the stat failed")?;
    let mut holders: BTreeMap<usize, usize> = BTreeMap::new();
    for chunk in &stat.data_chunks {
        *holders.entry(chunk.holders.len()).or_default() += 1;
    }
    let spread: Vec<String> = holders
        .iter()
        .rev()
        .map(|(n, k)| format!("{k} on {n} node{}", if *n == 1 { "" } else { "s" }))
        .collect();
    println!(
        "  stat {FILE_PATH}: {} data chunks, tree depth {}; chunks held: {}",
        stat.chunks,
        stat.depth,
        spread.join(", ")
    );
    if stat.data_chunks.len() as u64 != meta.chunks || holders.contains_key(&0) {
        bail!(
            "stat found {} chunks, some on no node",
            stat.data_chunks.len()
        );
    }

    let took = Instant::now();
    shoal_fs::get_to(client, &remote, &back, false).context("the get failed")?;
    let got = fs::read(&back).with_context(|| format!("cannot read {}", back.display()))?;
    if got != data {
        bail!(
            "the file came back different ({} bytes, not {FILE_SIZE})",
            got.len()
        );
    }
    println!(
        "  get {FILE_PATH}: {} bytes, byte-identical to what was put ({} ms)",
        got.len(),
        took.elapsed().as_millis()
    );
    s.file = Some(format!(
        "{} KiB put, listed, located and read back identical",
        FILE_SIZE / 1024
    ));
    Ok(())
}

/// `len` pseudo-random bytes from a random seed.
fn generated(len: usize) -> Result<Vec<u8>> {
    let mut x = random_u64()? | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    Ok(out)
}

/// Sends every demo key through `client`, prints who answered beside the
/// owner the router computes here over `records`, and returns the answers.
fn route_all(
    client: &mut Client,
    records: &[Record],
    s: &mut Summary,
) -> Result<BTreeMap<&'static str, NodeId>> {
    let name = |id| members::name_of(records, id);
    println!(
        "  {:<22} {:<11} {:<5} {:<14} check",
        "key", "answered by", "hops", "router's owner"
    );
    let mut answers = BTreeMap::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for key in KEYS {
        let sent = client
            .send(Pool::Data, key.as_bytes(), b"hello from shoal demo")
            .with_context(|| format!("sending to the owner of {key:?}"))?;
        let expected = members::owner(records, Pool::Data, key.as_bytes());
        let ok = expected == Some(sent.by);
        if ok {
            s.owners_ok += 1;
        } else {
            s.owners_bad.push(format!(
                "{key} answered by {} but the router says {}",
                name(sent.by),
                expected.map_or("nobody".into(), name)
            ));
        }
        println!(
            "  {:<22} {:<11} {:<5} {:<14} {}",
            key,
            name(sent.by),
            sent.hops,
            expected.map_or("-".into(), name),
            if ok { "ok" } else { "MISMATCH" }
        );
        *per_node.entry(name(sent.by)).or_default() += 1;
        answers.insert(key, sent.by);
    }
    let spread: Vec<String> = per_node.iter().map(|(n, k)| format!("{n} {k}")).collect();
    println!("  keys per node: {}", spread.join(", "));
    Ok(answers)
}

/// Polls the survivors until each declares `victim` dead, printing when
/// each first suspected it and declared it dead.
fn watch_death(
    c: &mut LocalCluster,
    victim: NodeId,
    killed: Instant,
    s: &mut Summary,
) -> Result<()> {
    let survivors: Vec<usize> = (0..NODES).filter(|i| *i != VICTIM).collect();
    let mut clients: Vec<Option<Client>> = survivors.iter().map(|_| None).collect();
    let mut suspected: Vec<Option<Duration>> = vec![None; survivors.len()];
    let mut dead: Vec<Option<Duration>> = vec![None; survivors.len()];
    while dead.iter().any(Option::is_none) {
        if killed.elapsed() > Duration::from_secs(20) {
            bail!("the survivors did not declare the killed node dead within 20 s");
        }
        c.check_processes()?;
        for (k, &i) in survivors.iter().enumerate() {
            if dead[k].is_some() {
                continue;
            }
            if clients[k].is_none() {
                clients[k] = c.client(i, Duration::from_secs(1)).ok();
            }
            let Some(client) = clients[k].as_mut() else {
                continue;
            };
            let Ok(records) = client.members() else {
                clients[k] = None;
                continue;
            };
            let state = records.iter().find(|r| r.id == victim).map(|r| r.state);
            let at = killed.elapsed();
            let name = &c.nodes[i].name;
            if state == Some(State::Suspect) && suspected[k].is_none() {
                suspected[k] = Some(at);
                println!("  {:>5.1} s  {name} suspects it", at.as_secs_f64());
            }
            if matches!(state, Some(State::Dead) | None) {
                dead[k] = Some(at);
                println!("  {:>5.1} s  {name} declares it dead", at.as_secs_f64());
                s.dead_after.push((name.clone(), at));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn auth_drops(c: &LocalCluster, i: usize) -> Result<f64> {
    let metrics = http::get(c.nodes[i].http, "/metrics", Duration::from_secs(2))?;
    http::sample(&metrics, AUTH_DROPS)
        .with_context(|| format!("{} /metrics has no {AUTH_DROPS}", c.nodes[i].name))
}

fn print_summary(s: &Summary) {
    println!();
    println!("summary");
    let line = |what: &str, text: String| println!("  {what:<22} {text}");
    match s.converged {
        Some(t) => line(
            "membership",
            format!(
                "{NODES} nodes alive in every view ({:.1} s)",
                t.as_secs_f64()
            ),
        ),
        None => line("membership", "did not converge".into()),
    }
    if s.owners_ok + s.owners_bad.len() > 0 {
        line(
            "key-addressed routing",
            format!(
                "{}/{} answers from the key's owner",
                s.owners_ok,
                s.owners_ok + s.owners_bad.len()
            ),
        );
    }
    if let Some(d) = s.auth_drops {
        line(
            "authentication",
            format!("wrong-key client ignored, {d} datagrams dropped"),
        );
    }
    if let Some(f) = &s.file {
        line("files", f.clone());
    }
    if let Some((_, slowest)) = s.dead_after.iter().max_by_key(|(_, t)| *t) {
        line(
            "failure detection",
            format!(
                "killed node declared dead by every survivor within {:.1} s",
                slowest.as_secs_f64()
            ),
        );
        line(
            "rebalancing",
            format!(
                "{} key(s) moved{}",
                s.moved,
                if s.moved_ok {
                    ", all from the dead node"
                } else {
                    ", some from live nodes (bad)"
                }
            ),
        );
    }
}

fn print_indented(text: &str) {
    for l in text.lines() {
        println!("  {l}");
    }
}
