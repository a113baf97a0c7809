//! `shoal fs` against real `shoal-node` processes on 127.0.0.1: files of
//! every shape come back byte-identical, listings, stat, removal, bad
//! input, and gets racing overwrites.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    DevCluster, Scratch, assert_error, free_udp_port, kill9, run, sha_file, shoal, stderr, stdout,
    write_random,
};
use serde_json::Value;

/// The nodes' default chunk size.
const CHUNK: usize = 2048;

/// A 3-node cluster whose every node sees all three alive.
fn cluster(name: &str) -> DevCluster {
    let c = DevCluster::up(name, 3);
    for i in 0..3 {
        c.wait_status(i, Duration::from_secs(10), |s| {
            s.iter().filter(|m| m["state"] == "alive").count() == 3
        });
    }
    c
}

/// `shoal fs ARGS` through node `i`.
fn fs_via(c: &DevCluster, i: usize, args: &[&OsStr]) -> Output {
    let addr = c.addr(i);
    shoal()
        .arg("fs")
        .args(args)
        .args(["--node", &addr, "--key", &c.key])
        .output()
        .expect("run shoal fs")
}

/// `shoal fs ARGS` through node 1.
fn fs(c: &DevCluster, args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    fs_via(c, 0, &args)
}

/// Asserts success and returns the output.
fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    out
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `stat --json` of `remote`.
fn stat(c: &DevCluster, remote: &str) -> Value {
    let out = ok(fs(c, &["stat", "--json", remote]));
    serde_json::from_slice(&out.stdout).expect("stat --json parses")
}

/// The names `ls` prints (the last word of each line), and their sizes.
fn ls(c: &DevCluster, dir: &str) -> Vec<(String, String)> {
    stdout(&ok(fs(c, &["ls", dir])))
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (
                words.last().expect("a name").to_string(),
                words[0].to_string(),
            )
        })
        .collect()
}

fn names(listing: &[(String, String)]) -> Vec<&str> {
    listing.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn files_of_every_size_come_back_byte_identical() {
    let c = cluster("fs-sizes");
    let dir = &c.scratch;
    let sizes = [
        ("empty", 0),
        ("one-byte", 1),
        ("one-chunk", CHUNK),
        ("one-chunk-and-a-byte", CHUNK + 1),
        // 65 data chunks: two levels of index chunks.
        ("two-levels", 65 * CHUNK + 7),
        ("fifty-mib", 50 << 20),
    ];
    for (seed, (name, len)) in sizes.into_iter().enumerate() {
        let local = dir.path(name);
        let want = write_random(&local, len, seed as u64 + 1);
        let remote = format!("/sizes/{name}");
        let t = Instant::now();
        ok(fs(&c, &["put", text(&local), &remote]));
        let put = t.elapsed();
        let back = dir.path(&format!("{name}.back"));
        let t = Instant::now();
        ok(fs(&c, &["get", &remote, text(&back)]));
        let get = t.elapsed();
        assert_eq!(
            sha_file(&back),
            want,
            "{name} ({len} bytes) came back different"
        );
        eprintln!("{name}: {len} bytes, put {put:.2?}, get {get:.2?}");

        let s = stat(&c, &remote);
        assert_eq!(s["size"], len as u64, "{s}");
        assert_eq!(s["chunk_size"], CHUNK as u64, "{s}");
        assert_eq!(
            s["chunks"],
            len.div_ceil(CHUNK) as u64,
            "{name}: {}",
            s["chunks"]
        );
        if len <= 65 * CHUNK + 7 {
            let depth = match len.div_ceil(CHUNK) {
                0 | 1 => 0,
                2..=64 => 1,
                _ => 2,
            };
            assert_eq!(s["depth"], depth, "{name}");
        }
        std::fs::remove_file(&local).expect("rm");
        std::fs::remove_file(&back).expect("rm");
    }

    // Standard input in, standard output out.
    let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = shoal()
        .args(["fs", "put", "-", "sizes/from-stdin"])
        .args(["--node", &c.node, "--key", &c.key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&data)
        .expect("feed stdin");
    ok(child.wait_with_output().expect("wait"));
    let out = ok(fs(&c, &["get", "/sizes/from-stdin", "-"]));
    assert!(out.stdout == data, "stdout differs from what was put");

    // A directory as LOCAL keeps the file's name; nothing temporary stays.
    let into = dir.path("into");
    std::fs::create_dir(&into).expect("mkdir");
    ok(fs(&c, &["get", "/sizes/from-stdin", text(&into)]));
    assert_eq!(std::fs::read(into.join("from-stdin")).expect("read"), data);
    let left: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("read_dir")
        .chain(std::fs::read_dir(&into).expect("read_dir"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn ls_stat_and_rm() {
    let c = cluster("fs-ls");
    let dir = &c.scratch;
    let small = dir.path("small");
    std::fs::write(&small, b"0123456789").expect("write");
    let five = dir.path("five");
    write_random(&five, 4 * CHUNK + 100, 9);
    ok(fs(&c, &["put", text(&small), "/top.txt"]));
    ok(fs(&c, &["put", text(&five), "docs/b.bin"]));
    ok(fs(&c, &["put", text(&small), "/docs/deep/er/c.txt"]));

    let root = ls(&c, "/");
    assert_eq!(names(&root), ["docs/", "top.txt"], "{root:?}");
    assert_eq!(root[1].1, "10");
    assert_eq!(names(&ls(&c, "docs")), ["b.bin", "deep/"]);
    assert_eq!(names(&ls(&c, "/docs/deep")), ["er/"]);
    assert_eq!(names(&ls(&c, "/docs/deep/er/")), ["c.txt"]);
    let out = ok(fs(&c, &["ls", "--json", "/docs"]));
    let json: Value = serde_json::from_slice(&out.stdout).expect("ls --json parses");
    assert_eq!(json[0]["name"], "b.bin");
    assert_eq!(json[0]["kind"], "file");
    assert_eq!(json[0]["size"], (4 * CHUNK + 100) as u64);
    assert_eq!(json[1]["name"], "deep");
    assert_eq!(json[1]["kind"], "dir");

    // Every chunk on all three nodes (the third copy may land just after
    // the put returned, once two had acknowledged).
    let start = Instant::now();
    loop {
        let s = stat(&c, "/docs/b.bin");
        assert_eq!(s["chunks"], 5);
        let chunks = s["data_chunks"].as_array().expect("data_chunks");
        assert_eq!(chunks.len(), 5, "{s}");
        let held: Vec<usize> = chunks
            .iter()
            .map(|ch| {
                let mut names: Vec<&str> = ch["holders"]
                    .as_array()
                    .expect("holders")
                    .iter()
                    .map(|h| h["name"].as_str().expect("name"))
                    .collect();
                names.sort_unstable();
                names.dedup();
                names.len()
            })
            .collect();
        if held.iter().all(|n| *n == 3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "chunks not on 3 nodes: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text_stat = stdout(&ok(fs(&c, &["stat", "/docs/b.bin"])));
    assert!(text_stat.contains("5 data, tree depth 1"), "{text_stat}");
    assert!(
        text_stat.contains("n1") && text_stat.contains("n3"),
        "{text_stat}"
    );

    // rm: gone from get, stat and ls; its directories stay.
    ok(fs(&c, &["rm", "/docs/b.bin"]));
    assert_eq!(names(&ls(&c, "/docs")), ["deep/"]);
    let back = dir.path("b.back");
    assert_error(
        &fs(&c, &["get", "/docs/b.bin", text(&back)]),
        1,
        "no such file: /docs/b.bin",
    );
    assert!(!back.exists(), "a failed get left a file");
    assert_error(
        &fs(&c, &["stat", "/docs/b.bin"]),
        1,
        "no such file: /docs/b.bin",
    );
    assert_error(
        &fs(&c, &["rm", "/docs/b.bin"]),
        1,
        "no such file: /docs/b.bin",
    );
    ok(fs(&c, &["rm", "docs/deep/er/c.txt"]));
    assert!(ls(&c, "/docs/deep/er").is_empty());
    assert_eq!(names(&ls(&c, "/docs/deep")), ["er/"]);

    // Put back after the removal: the new version wins over the tombstone.
    ok(fs(&c, &["put", text(&small), "/docs/b.bin"]));
    assert_eq!(names(&ls(&c, "/docs")), ["b.bin", "deep/"]);
    assert_eq!(
        ok(fs(&c, &["get", "/docs/b.bin", "-"])).stdout,
        b"0123456789"
    );

    assert_error(&fs(&c, &["get", "/never", "-"]), 1, "no such file: /never");
    assert_error(
        &fs(&c, &["ls", "/nowhere"]),
        1,
        "no such directory: /nowhere",
    );
    assert_error(
        &fs(&c, &["put", text(&small), "/docs"]),
        1,
        "cannot put /docs: it is a directory",
    );
    assert_error(
        &fs(&c, &["put", text(&small), "/top.txt/x"]),
        1,
        "/top.txt is a file",
    );
}

#[test]
fn bad_paths_and_missing_files_are_refused_clearly() {
    let dir = Scratch::new("fs-bad");
    let key = dir.path("k");
    assert!(run(&["keygen", "--out", text(&key)]).status.success());
    let local = dir.path("x");
    std::fs::write(&local, b"x").expect("write");
    // Nothing listens here: each of these is refused before connecting.
    let node = format!("127.0.0.1:{}", free_udp_port());
    let fs = |args: &[&OsStr]| {
        shoal()
            .arg("fs")
            .args(args)
            .args(["--node", &node, "--key", text(&key), "--timeout", "1"])
            .output()
            .expect("run")
    };
    let s = |x: &'static str| OsStr::new(x);
    let l = local.as_os_str();
    assert_error(&fs(&[s("put"), l, s("")]), 2, "the path is empty");
    assert_error(&fs(&[s("get"), s(""), s("-")]), 2, "the path is empty");
    assert_error(
        &fs(&[s("put"), l, s("/a/../b")]),
        2,
        "invalid path \"/a/../b\": the path has an empty, '.' or '..' component",
    );
    assert_error(&fs(&[s("put"), l, s("a//b")]), 2, "invalid path \"/a//b\"");
    assert_error(&fs(&[s("ls"), s("/a/./b")]), 2, "invalid path");
    assert_error(
        &fs(&[s("stat"), s("/")]),
        2,
        "'/' is a directory, not a file",
    );
    assert_error(&fs(&[s("rm"), s("/")]), 2, "'/' is a directory, not a file");
    let long = "/".to_string() + &"a".repeat(400);
    assert_error(
        &fs(&[s("rm"), OsStr::new(&long)]),
        2,
        "longer than 400 bytes",
    );
    let latin1 = OsStr::from_bytes(b"/caf\xe9");
    assert_error(&fs(&[s("put"), l, latin1]), 2, "paths must be valid UTF-8");
    let missing = dir.path("missing");
    assert_error(
        &fs(&[s("put"), missing.as_os_str(), s("/m")]),
        1,
        &format!("cannot read {}", missing.display()),
    );
    assert_error(
        &fs(&[s("put"), dir.0.as_os_str(), s("/m")]),
        1,
        "is a directory",
    );
}

#[test]
fn gets_racing_overwrites_return_one_whole_version() {
    let c = Arc::new(cluster("fs-race"));
    let dir = &c.scratch;
    let a = dir.path("a");
    let b = dir.path("b");
    let sha_a = write_random(&a, 37 * CHUNK + 11, 21);
    let sha_b = write_random(&b, 29 * CHUNK + 5, 22);
    ok(fs(&c, &["put", text(&a), "/race/file"]));

    // One client overwrites through n1 with B, then A, again and again,
    // while another reads through n2.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, done) = (Arc::clone(&c), Arc::clone(&done));
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut puts = 0;
            while start.elapsed() < Duration::from_secs(6) {
                for f in [&b, &a] {
                    let out = fs(&c, &["put", text(f), "/race/file"]);
                    if !out.status.success() {
                        done.store(true, Ordering::Relaxed);
                        return Err(format!("put {puts} failed: {}", stderr(&out)));
                    }
                    puts += 1;
                }
            }
            done.store(true, Ordering::Relaxed);
            Ok(puts)
        })
    };
    let back = dir.path("back");
    let (mut got_a, mut got_b) = (0, 0);
    while !done.load(Ordering::Relaxed) {
        let out = fs_via(
            &c,
            1,
            &[
                OsStr::new("get"),
                OsStr::new("/race/file"),
                back.as_os_str(),
            ],
        );
        ok(out);
        let sha = sha_file(&back);
        if sha == sha_a {
            got_a += 1;
        } else if sha == sha_b {
            got_b += 1;
        } else {
            panic!(
                "a get returned neither version: {} bytes",
                std::fs::metadata(&back).expect("stat").len()
            );
        }
    }
    let puts = writer.join().expect("writer thread").expect("every put");
    eprintln!("{puts} puts; gets saw A {got_a} times and B {got_b} times");
    assert!(got_a + got_b >= 5, "too few gets: {got_a} + {got_b}");
}

/// Stores that fill up refuse politely: a put that cannot find room on any
/// node fails saying so and leaves nothing visible, and files already
/// stored still read back. (The failed put's chunks stay until garbage
/// collection reclaims them.)
#[test]
fn a_full_cluster_refuses_a_put_and_loses_nothing() {
    // 96 KiB per node: a 40 KiB file (3 replicas) fits, a 200 KiB one
    // cannot fit anywhere.
    let c = DevCluster::up_with("fs-full", 3, &["--max-store", "98304"]);
    for i in 0..3 {
        c.wait_status(i, Duration::from_secs(10), |s| {
            s.iter().filter(|m| m["state"] == "alive").count() == 3
        });
    }
    let dir = &c.scratch;
    let kept = dir.path("kept");
    let kept_hash = write_random(&kept, 40 * 1024, 21);
    ok(fs(&c, &["put", text(&kept), "/kept.bin"]));

    let big = dir.path("big");
    write_random(&big, 200 * 1024, 22);
    let out = fs(&c, &["put", text(&big), "/big.bin"]);
    assert!(
        !out.status.success(),
        "a put beyond every store's room succeeded"
    );
    let err = stderr(&out);
    assert!(
        err.contains("no node has room"),
        "the error does not say the stores are full: {err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    // Nothing half-visible: the failed file is neither listed nor readable.
    assert_eq!(names(&ls(&c, "/")), ["kept.bin"]);
    let back = dir.path("big.back");
    let out = fs(&c, &["get", "/big.bin", text(&back)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    // What was stored before is intact.
    let kept_back = dir.path("kept.back");
    ok(fs(&c, &["get", "/kept.bin", text(&kept_back)]));
    assert_eq!(sha_file(&kept_back), kept_hash);
}

/// With two of three nodes dead, a write quorum of two cannot be met: the
/// put fails and says so, while reads (read quorum 1 here) still work;
/// once the nodes are back, nothing of the failed put is visible and what
/// was stored before reads back intact.
#[test]
fn a_put_without_its_write_quorum_fails_and_leaves_nothing_visible() {
    let c = DevCluster::up_with("fs-quorum", 3, &["--read-quorum", "1"]);
    for i in 0..3 {
        c.wait_status(i, Duration::from_secs(10), |s| {
            s.iter().filter(|m| m["state"] == "alive").count() == 3
        });
    }
    let dir = &c.scratch;
    let before = dir.path("before");
    let before_hash = write_random(&before, 3 * CHUNK, 31);
    ok(fs(&c, &["put", text(&before), "/before.bin"]));
    for i in [1, 2] {
        kill9(c.nodes[i]["pid"].as_u64().expect("pid"));
    }
    c.wait_status(0, Duration::from_secs(20), |s| {
        s.iter().filter(|m| m["state"] == "dead").count() == 2
    });
    let file = dir.path("file");
    write_random(&file, 5 * CHUNK, 32);
    let out = fs(&c, &["put", text(&file), "/after.bin"]);
    assert!(!out.status.success(), "a put without its quorum succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("not enough live nodes to meet the write quorum"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(names(&ls(&c, "/")), ["before.bin"]);
    let early = dir.path("early");
    ok(fs(&c, &["get", "/before.bin", text(&early)]));
    assert_eq!(sha_file(&early), before_hash);

    // The two come back with their data.
    for i in [1, 2] {
        let n = &c.nodes[i];
        c.spawn_node(
            n["name"].as_str().expect("name"),
            n["addr"].as_str().expect("addr"),
            n["http"].as_str().expect("http"),
            Path::new(&c.key),
            &[c.addr(0)],
        );
    }
    for i in 0..3 {
        c.wait_status(i, Duration::from_secs(20), |s| {
            s.iter().filter(|m| m["state"] == "alive").count() == 3
        });
    }
    assert_eq!(names(&ls(&c, "/")), ["before.bin"]);
    let out = fs(&c, &["get", "/after.bin", text(&dir.path("after.back"))]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    let back = dir.path("before.back");
    ok(fs(&c, &["get", "/before.bin", text(&back)]));
    assert_eq!(sha_file(&back), before_hash);
}
