//! `shoal fs` under faults, with real `shoal-node` processes on 127.0.0.1:
//! a node killed with SIGKILL right after a put was acknowledged loses no
//! file, and the survivors copy its chunks back up to three live holders; a
//! chunk corrupted on disk is caught on read, answered from a good copy, and
//! the bad copies are repaired.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{DevCluster, kill9, metric, running, sha_file, shoal, stderr, stop, write_random};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The nodes' default chunk size.
const CHUNK: usize = 2048;
/// Replicas kept of every chunk (the nodes' default).
const REPLICAS: usize = 3;
/// How long after a death is declared every chunk must be back on
/// `REPLICAS` live nodes.
const HEAL_BOUND: Duration = Duration::from_secs(60);

/// `shoal fs ARGS` through node `i`.
fn fs_via(c: &DevCluster, i: usize, args: &[&str]) -> Output {
    shoal()
        .arg("fs")
        .args(args)
        .args(["--node", &c.addr(i), "--key", &c.key])
        .output()
        .expect("run shoal fs")
}

/// Asserts that `out` succeeded.
fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    out
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A file put in the cluster, and its content's SHA-256.
struct Put {
    remote: String,
    /// The local file it was put from.
    local: PathBuf,
    sha: [u8; 32],
    len: usize,
}

/// Writes `len` random bytes from `seed` to a scratch file and puts them as
/// `remote` through node `contact`.
fn put(c: &DevCluster, contact: usize, remote: &str, len: usize, seed: u64) -> Put {
    let local = c.scratch.path(&format!("put-{seed}"));
    let sha = write_random(&local, len, seed);
    ok(
        fs_via(c, contact, &["put", text(&local), remote]),
        &format!("put {remote} through {}", c.name(contact)),
    );
    Put {
        remote: remote.to_string(),
        local,
        sha,
        len,
    }
}

/// Gets every file through node `i` and compares it with what was put.
fn get_all(c: &DevCluster, i: usize, files: &[Put]) {
    let back = c.scratch.path("back");
    for f in files {
        ok(
            fs_via(c, i, &["get", &f.remote, text(&back)]),
            &format!("get {} through {}", f.remote, c.name(i)),
        );
        assert!(
            sha_file(&back) == f.sha,
            "{} ({} bytes) came back different through {}",
            f.remote,
            f.len,
            c.name(i)
        );
    }
}

/// `stat --json REMOTE` through node `i`, or its error.
fn try_stat(c: &DevCluster, i: usize, remote: &str) -> Result<Value, String> {
    let out = fs_via(c, i, &["stat", "--json", remote]);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    Ok(serde_json::from_slice(&out.stdout).expect("stat --json parses"))
}

/// Every chunk of a `stat --json` report, data then index chunks: a label
/// and its holders' names, in rank order.
fn chunks_of(stat: &Value) -> Vec<(String, Vec<String>)> {
    let path = stat["path"].as_str().expect("path");
    let mut out = Vec::new();
    for (kind, field) in [("data", "data_chunks"), ("index", "index_chunks")] {
        for ch in stat[field].as_array().expect(field) {
            let names = ch["holders"]
                .as_array()
                .expect("holders")
                .iter()
                .map(|h| h["name"].as_str().expect("name").to_string())
                .collect();
            out.push((format!("{path} {kind} chunk {}", ch["index"]), names));
        }
    }
    out
}

/// Every chunk of every file in `files`, as `stat` through node `i` sees it
/// now; `Err` when a stat failed (the cluster may be changing).
fn all_chunks(
    c: &DevCluster,
    i: usize,
    files: &[Put],
) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut all = Vec::new();
    for f in files {
        let s = try_stat(c, i, &f.remote)?;
        let data = s["data_chunks"].as_array().expect("data_chunks").len();
        assert_eq!(data, f.len.div_ceil(CHUNK), "{}: {s}", f.remote);
        all.extend(chunks_of(&s));
    }
    Ok(all)
}

/// What [`wait_replicated`] saw.
struct Replicated {
    /// How long after `since` it held.
    took: Duration,
    /// Chunks short of holders at the first look (a failed stat counts 1).
    short_at_first: usize,
    /// Every chunk and its holders, as last seen.
    chunks: Vec<(String, Vec<String>)>,
}

/// Polls `stat` through node `i` until every chunk of every file has at
/// least `REPLICAS` holders other than `excluded`, for at most `within`
/// after `since`.
fn wait_replicated(
    c: &DevCluster,
    i: usize,
    files: &[Put],
    excluded: Option<&str>,
    since: Instant,
    within: Duration,
) -> Replicated {
    let mut short_at_first = None;
    loop {
        let seen = all_chunks(c, i, files);
        let short: Vec<String> = match &seen {
            Ok(chunks) => chunks
                .iter()
                .filter_map(|(label, holders)| {
                    let live = holders
                        .iter()
                        .filter(|h| Some(h.as_str()) != excluded)
                        .count();
                    (live < REPLICAS).then(|| format!("{label}: {holders:?}"))
                })
                .collect(),
            Err(e) => vec![format!("stat failed: {e}")],
        };
        let short_at_first = *short_at_first.get_or_insert(short.len());
        if short.is_empty() {
            return Replicated {
                took: since.elapsed(),
                short_at_first,
                chunks: seen.expect("stat succeeded"),
            };
        }
        assert!(
            since.elapsed() < within,
            "after {within:?}, {} chunks have fewer than {REPLICAS} holders (not counting \
             {excluded:?}), e.g. {:#?}",
            short.len(),
            &short[..short.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until each of `nodes` lists exactly `n` members, all alive.
fn wait_alive(c: &DevCluster, nodes: &[usize], n: usize) {
    for &i in nodes {
        c.wait_status(i, Duration::from_secs(20), |s| {
            s.len() == n && s.iter().all(|m| m["state"] == "alive")
        });
    }
}

/// Asserts that node `i` still runs shortly after a (re)start, showing its
/// log if not.
fn assert_started(c: &DevCluster, i: usize) {
    std::thread::sleep(Duration::from_millis(300));
    let log = c.dir.join(c.name(i)).join("node.log");
    assert!(
        running(c.pid(i)),
        "{} exited after its restart; its log:\n{}",
        c.name(i),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// SIGKILLs node `i` and waits until the process is gone.
fn kill_node(c: &DevCluster, i: usize) {
    let pid = c.pid(i);
    kill9(u64::from(pid));
    let start = Instant::now();
    while running(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "pid {pid} survived kill -9"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_after_an_acknowledged_put_loses_no_file_and_replicas_heal() {
    const NODES: usize = 5;
    let c = DevCluster::up("faults-kill", NODES);
    let all: Vec<usize> = (0..NODES).collect();
    wait_alive(&c, &all, NODES);
    let started = Instant::now();

    // A few files before the first fault.
    let mut files = vec![
        put(&c, 0, "/big.bin", 150 * CHUNK, 1),
        put(&c, 1, "/small/a.txt", 13, 2),
        put(&c, 2, "/small/b.bin", CHUNK + 1, 3),
    ];
    let mut chunks =
        wait_replicated(&c, 0, &files, None, Instant::now(), Duration::from_secs(20)).chunks;

    // Each node in turn: the put's contact itself on even rounds, another
    // node on odd ones.
    let mut heals = Vec::new();
    let mut short_at_deaths = 0;
    for victim in 0..NODES {
        let name = c.name(victim);
        let contact = if victim % 2 == 0 {
            victim
        } else {
            (victim + 2) % NODES
        };
        let observer = (victim + 1) % NODES;

        // Killing it must cost copies: stat shows it holding some.
        let held = chunks.iter().filter(|(_, h)| h.contains(&name)).count();
        assert!(held > 0, "{name} holds no chunk: {chunks:#?}");

        let remote = format!("/rounds/{victim}.bin");
        let len = 150 * CHUNK - 1000 + 777 * victim;
        files.push(put(&c, contact, &remote, len, 10 + victim as u64));
        // The put exited 0: it was acknowledged. At once:
        kill_node(&c, victim);
        let killed = Instant::now();
        eprintln!(
            "round {victim}: put {remote} through {}, then kill -9 {name} (it held {held} \
             chunks of the earlier files)",
            c.name(contact)
        );

        // Two things at once. Nothing acknowledged is lost, even before the
        // death is declared: every file comes back through a live node. And
        // from the moment the death is declared, every chunk goes back to
        // three live holders within the bound.
        let reader = (victim + 3) % NODES;
        let (gets_took, died, healed) = std::thread::scope(|scope| {
            let gets = scope.spawn(|| {
                get_all(&c, reader, &files);
                killed.elapsed()
            });
            c.wait_status(observer, Duration::from_secs(30), |s| {
                s.iter()
                    .any(|m| m["name"] == name.as_str() && m["state"] == "dead")
            });
            let dead_at = Instant::now();
            let healed = wait_replicated(&c, observer, &files, Some(&name), dead_at, HEAL_BOUND);
            let gets_took = gets.join().expect("the gets after the kill failed");
            (gets_took, dead_at - killed, healed)
        });
        assert!(
            healed.chunks.iter().all(|(_, h)| !h.contains(&name)),
            "a dead node was reported holding a chunk"
        );
        eprintln!(
            "  all {} files back byte-identical through {} {gets_took:.2?} after the kill",
            files.len(),
            c.name(reader),
        );
        eprintln!(
            "  {} declared {name} dead {died:.2?} after the kill; {} chunks were short of \
             {REPLICAS} live holders then; every chunk of every file ({}) on {REPLICAS} live \
             nodes {:.2?} after the death",
            c.name(observer),
            healed.short_at_first,
            healed.chunks.len(),
            healed.took
        );
        heals.push(healed.took);
        short_at_deaths += healed.short_at_first;

        // Back with the same data dir, before the next node goes.
        c.restart(victim, &[observer, (victim + 2) % NODES]);
        assert_started(&c, victim);
        wait_alive(&c, &all, NODES);
        chunks = wait_replicated(
            &c,
            observer,
            &files,
            None,
            Instant::now(),
            Duration::from_secs(30),
        )
        .chunks;
    }
    // The bound was measured against real work: copies had gone.
    assert!(short_at_deaths > 0, "no chunk was ever short of holders");
    get_all(&c, 0, &files);
    eprintln!(
        "heal times after each death: {heals:.2?}; slowest {:.2?}; test body took {:.2?}",
        heals.iter().max().expect("five rounds"),
        started.elapsed()
    );
}

/// Flips the bytes of every copy of `needle` in the file at `path`;
/// returns how many it found.
fn corrupt(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("read the store file");
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(p) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        found.push(at + p);
        at += p + 1;
    }
    for &p in &found {
        for b in &mut bytes[p..p + needle.len()] {
            *b ^= 0xff;
        }
    }
    std::fs::write(path, &bytes).expect("write the store file");
    found.len()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls node `i`'s `shoal_sweep_keys_total` until it has grown by at
/// least `min` and then not moved for longer than a sweep's settling delay
/// (2 s): its sweeps are over and none is pending.
fn wait_sweeps_over(c: &DevCluster, i: usize, from: f64, min: f64) {
    let start = Instant::now();
    let mut last = (from, Instant::now());
    loop {
        let now = metric(&c.metrics(i), "shoal_sweep_keys_total");
        if now != last.0 {
            last = (now, Instant::now());
        } else if now >= from + min && last.1.elapsed() > Duration::from_secs(3) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}'s sweep did not finish: {from} -> {now} keys",
            c.name(i)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn chunk_corrupted_on_disk_is_caught_on_read_answered_and_repaired() {
    let c = DevCluster::up("faults-corrupt", 3);
    let all = [0, 1, 2];
    wait_alive(&c, &all, 3);

    // The anti-entropy sweep also replaces bad copies, 2 s after the
    // restarts below, walking each node's chunks in id order. So that the
    // read meets the corruption first, the corrupted chunk is the file's
    // data chunk with the highest id, and a padding file puts thousands of
    // chunks before it in that walk.
    let pad_len = 4096 * CHUNK;
    let pad = put(&c, 0, "/pad.bin", pad_len, 31);
    let file = put(&c, 0, "/target.bin", 6 * CHUNK + 100, 32);
    let bytes = std::fs::read(&file.local).expect("read target");
    let ids: Vec<[u8; 32]> = bytes.chunks(CHUNK).map(sha256).collect();
    let (k, id) = ids
        .iter()
        .enumerate()
        .max_by_key(|(_, id)| **id)
        .expect("chunks");
    let pad = std::fs::read(&pad.local).expect("read padding");
    let before_it = pad.chunks(CHUNK).filter(|ch| sha256(ch) < *id).count();
    assert!(
        before_it >= 2000,
        "only {before_it} padding chunks sort before the target chunk"
    );

    let chunks = wait_replicated(
        &c,
        0,
        std::slice::from_ref(&file),
        None,
        Instant::now(),
        Duration::from_secs(20),
    )
    .chunks;
    assert!(chunks.iter().all(|(_, h)| h.len() == 3), "{chunks:#?}");
    let s = try_stat(&c, 0, &file.remote).expect("stat");
    let target = &s["data_chunks"][k];
    assert_eq!(target["id"], hex(id), "stat and the local file disagree");
    // Holders in rank order: corrupt every copy but the last-ranked one.
    let ranked: Vec<usize> = chunks_of(&s)[k]
        .1
        .iter()
        .map(|n| {
            (0..3)
                .find(|&i| c.name(i) == *n)
                .expect("a node of the cluster")
        })
        .collect();
    let (bad, good) = (&ranked[..2], ranked[2]);
    let names = |v: &[usize]| v.iter().map(|&i| c.name(i)).collect::<Vec<_>>();
    eprintln!(
        "data chunk {k} ({}…) ranks {:?}; corrupting it on {:?}; {before_it} padding chunks \
         sort before it",
        &hex(id)[..16],
        names(&ranked),
        names(bad)
    );

    let swept = metric(&c.metrics(good), "shoal_sweep_keys_total");
    for &i in bad {
        stop(c.pid(i));
    }
    // The survivor sweeps after they leave; were that sweep still running
    // when they come back, it would reach the bad copies before the read.
    wait_sweeps_over(&c, good, swept, 4096.0);

    let middle = k * CHUNK + CHUNK / 2;
    let needle = &bytes[middle - 32..middle + 32];
    for &i in bad {
        // Chunk bytes live in the log segments under chunks/ (and, in
        // stores from before the log, in the database file).
        let dir = c.data_dir(i);
        let mut files = vec![dir.join("shoal.redb")];
        for entry in std::fs::read_dir(dir.join("chunks")).expect("the chunk log") {
            files.push(entry.expect("a segment").path());
        }
        let found: usize = files.iter().map(|f| corrupt(f, needle)).sum();
        assert!(
            found > 0,
            "the chunk's bytes are not in {}: nothing was corrupted",
            dir.display()
        );
        eprintln!(
            "flipped 64 bytes in {found} place(s) under {}",
            dir.display()
        );
    }
    for &i in bad {
        c.restart(i, &[good]);
    }
    let restarted = Instant::now();
    for &i in bad {
        assert_started(&c, i);
    }
    wait_alive(&c, &all, 3);

    // A node reports a copy only if it verifies: the good one alone, so
    // both bad copies are in place and nothing repaired them yet.
    let s = try_stat(&c, good, &file.remote).expect("stat");
    assert_eq!(
        chunks_of(&s)[k].1,
        [c.name(good)],
        "before the read, only the uncorrupted copy should verify"
    );

    // Read through the first-ranked (corrupted) node: it finds its own copy
    // bad, then the second's, then takes the third and repairs both.
    let coordinator = bad[0];
    let repairs = |i| metric(&c.metrics(i), "shoal_repairs_total");
    let before = repairs(coordinator);
    get_all(&c, coordinator, std::slice::from_ref(&file));
    let after = repairs(coordinator);
    eprintln!(
        "get through {} returned the right bytes {:.2?} after the restarts; its repairs {before} \
         -> {after}",
        c.name(coordinator),
        restarted.elapsed()
    );
    assert!(
        after >= before + 2.0,
        "{} repaired {} copies on the read, not the 2 bad ones",
        c.name(coordinator),
        after - before
    );

    // Both bad copies replaced by the read's repairs, which land within
    // milliseconds (the sweep would get there seconds later): all three
    // verify again.
    let Replicated { took, chunks, .. } = wait_replicated(
        &c,
        good,
        std::slice::from_ref(&file),
        None,
        Instant::now(),
        Duration::from_secs(2),
    );
    assert_eq!(
        chunks[k].1.len(),
        3,
        "chunk {k} is not on all three nodes: {:?}",
        chunks[k].1
    );
    eprintln!("all three copies verify {took:.2?} after the read");
    // And each once-bad node serves the file.
    for &i in bad {
        get_all(&c, i, std::slice::from_ref(&file));
    }
}
