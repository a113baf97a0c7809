//! Helpers for tests that drive the `shoal` binary and real `shoal-node`
//! processes on 127.0.0.1.
//!
//! `shoal` is the binary cargo builds for these tests. `shoal-node` is
//! `SHOAL_NODE_BIN` when set; otherwise it is built here, once per test
//! binary, with the same profile and target dir as `shoal` (so `cargo test
//! -p shoal-cli` and `cargo test --workspace` need nothing else).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `shoal` binary under test, with no cluster settings inherited from
/// the environment.
pub fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.env_remove("SHOAL_NODE")
        .env_remove("SHOAL_KEY")
        .env_remove("SHOAL_NODE_BIN")
        .stdin(Stdio::null());
    cmd
}

/// Runs `shoal ARGS`.
pub fn run(args: &[&str]) -> Output {
    shoal().args(args).output().expect("run shoal")
}

/// Runs `shoal ARGS` with `SHOAL_NODE_BIN` naming the node binary.
pub fn run_with_node(args: &[&str]) -> Output {
    shoal()
        .env("SHOAL_NODE_BIN", node_bin())
        .args(args)
        .output()
        .expect("run shoal")
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `out` failed with `code` and one line on stderr containing
/// `needle`, and no panic.
pub fn assert_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The `shoal-node` binary.
pub fn node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SHOAL_NODE_BIN") {
            return PathBuf::from(p);
        }
        build_node()
    })
}

/// Builds `shoal-node` with the profile `shoal` was built with.
fn build_node() -> PathBuf {
    let shoal = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let profile_dir = shoal.parent().expect("shoal has a folder");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => "dev".to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "shoal-node",
            "--bin",
            "shoal-node",
            "--profile",
            &profile,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build -p shoal-node");
    assert!(out.status.success(), "cargo build -p shoal-node failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "shoal-node")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the shoal-node executable")
}

/// A scratch folder, removed when the test passes and kept (and named)
/// when it fails.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shoal-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A cluster started by `shoal dev up`, stopped by `shoal dev down` on drop.
pub struct DevCluster {
    pub scratch: Scratch,
    pub dir: PathBuf,
    /// `SHOAL_NODE` as `dev up` printed it.
    pub node: String,
    /// `SHOAL_KEY` as `dev up` printed it.
    pub key: String,
    /// `cluster.json`: name, addr, http, data, log, pid per node.
    pub nodes: Vec<Value>,
}

impl DevCluster {
    pub fn up(name: &str, n: usize) -> DevCluster {
        Self::up_with(name, n, &[])
    }

    /// Like [`DevCluster::up`], every node started with `node_args` too.
    pub fn up_with(name: &str, n: usize, node_args: &[&str]) -> DevCluster {
        let scratch = Scratch::new(name);
        let dir = scratch.path("cluster");
        let count = n.to_string();
        let mut args = vec![
            "dev",
            "up",
            "--nodes",
            &count,
            "--dir",
            dir.to_str().expect("utf-8 path"),
        ];
        if !node_args.is_empty() {
            args.push("--");
            args.extend_from_slice(node_args);
        }
        let out = run_with_node(&args);
        assert!(out.status.success(), "dev up failed: {}", stderr(&out));
        let text = stdout(&out);
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("dev up printed no {name}: {text}"))
                .to_string()
        };
        let (node, key) = (var("SHOAL_NODE"), var("SHOAL_KEY"));
        let manifest = std::fs::read_to_string(dir.join("cluster.json")).expect("cluster.json");
        let nodes: Vec<Value> = serde_json::from_str(&manifest).expect("cluster.json parses");
        assert_eq!(nodes.len(), n);
        DevCluster {
            scratch,
            dir,
            node,
            key,
            nodes,
        }
    }

    /// Node `i`'s UDP address.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i]["addr"].as_str().expect("addr").to_string()
    }

    /// Node `i`'s HTTP address.
    pub fn http(&self, i: usize) -> SocketAddr {
        self.nodes[i]["http"]
            .as_str()
            .expect("http")
            .parse()
            .expect("http addr")
    }

    /// `shoal status --json` through node `i`.
    pub fn status(&self, i: usize) -> Vec<Value> {
        self.try_status(i)
            .unwrap_or_else(|e| panic!("status through n{} failed: {e}", i + 1))
    }

    /// `shoal status --json` through node `i`, or its error message.
    pub fn try_status(&self, i: usize) -> Result<Vec<Value>, String> {
        let out = run(&[
            "status",
            "--json",
            "--timeout",
            "2",
            "--node",
            &self.addr(i),
            "--key",
            &self.key,
        ]);
        if !out.status.success() {
            return Err(stderr(&out));
        }
        Ok(serde_json::from_slice(&out.stdout).expect("status --json parses"))
    }

    /// Polls node `i`'s status until `done` holds, for at most `within`;
    /// returns the elapsed time and the last status.
    pub fn wait_status(
        &self,
        i: usize,
        within: Duration,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> (Duration, Vec<Value>) {
        let start = Instant::now();
        loop {
            // A request may time out while the cluster changes; keep asking.
            let s = self.try_status(i);
            if let Ok(s) = &s
                && done(s)
            {
                return (start.elapsed(), s.clone());
            }
            assert!(
                start.elapsed() < within,
                "condition not met within {within:?}; last status: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts another `shoal-node` in this cluster's folder, recorded in
    /// `DIR/NAME/pid` so `dev down` stops it.
    pub fn spawn_node(&self, name: &str, addr: &str, http: &str, key: &Path, join: &[String]) {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join("data")).expect("node dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("node log");
        let mut cmd = Command::new(node_bin());
        cmd.args([
            "--name",
            name,
            "--listen",
            addr,
            "--advertise",
            addr,
            "--http",
            http,
        ])
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--key")
        .arg(key);
        for j in join {
            cmd.args(["--join", j]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start shoal-node");
        std::fs::write(dir.join("pid"), format!("{}\n", child.id())).expect("pid file");
        // `dev down` stops it; a reaper thread keeps it from lingering as a
        // zombie that would look alive.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
    }
}

impl DevCluster {
    /// Node `i`'s name (`n1`, `n2`, …).
    pub fn name(&self, i: usize) -> String {
        self.nodes[i]["name"].as_str().expect("name").to_string()
    }

    /// Node `i`'s process id now: its pid file, which a restart rewrites.
    pub fn pid(&self, i: usize) -> u32 {
        let file = self.dir.join(self.name(i)).join("pid");
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        text.trim().parse().expect("pid file holds a pid")
    }

    /// Node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(self.nodes[i]["data"].as_str().expect("data"))
    }

    /// Starts node `i` again on its data dir, address and HTTP port,
    /// joining through `join`.
    pub fn restart(&self, i: usize, join: &[usize]) {
        let join: Vec<String> = join.iter().map(|&j| self.addr(j)).collect();
        let n = &self.nodes[i];
        self.spawn_node(
            &self.name(i),
            n["addr"].as_str().expect("addr"),
            n["http"].as_str().expect("http"),
            Path::new(&self.key),
            &join,
        );
    }

    /// Node `i`'s `/metrics`.
    pub fn metrics(&self, i: usize) -> String {
        http_get(self.http(i), "/metrics")
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let out = run_with_node(&[
            "dev",
            "down",
            "--dir",
            self.dir.to_str().unwrap_or_default(),
        ]);
        if !out.status.success() {
            eprintln!("dev down failed: {}", stderr(&out));
        }
    }
}

/// Kills `pid` with SIGKILL.
pub fn kill9(pid: u64) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Sends SIGTERM to `pid` and waits (up to 10 s) until it has exited.
pub fn stop(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
    let start = Instant::now();
    while running(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pid {pid} still runs 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A port free on 127.0.0.1 for UDP now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// A port free on 127.0.0.1 for TCP now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// The body of `GET path` from `addr`.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(request.as_bytes()).expect("send request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of one Prometheus sample, 0 when absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Writes `len` pseudo-random bytes (splitmix64 from `seed`) to `path`,
/// streaming; returns their SHA-256.
pub fn write_random(path: &Path, len: usize, seed: u64) -> [u8; 32] {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hash = Sha256::new();
    let mut state = seed;
    let mut left = len;
    let mut block = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = left.min(block.len());
        for word in block[..n].chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        file.write_all(&block[..n]).expect("write");
        hash.update(&block[..n]);
        left -= n;
    }
    file.flush().expect("flush");
    hash.finalize().into()
}

/// The SHA-256 of the file at `path`.
pub fn sha_file(path: &Path) -> [u8; 32] {
    let mut file = std::fs::File::open(path).expect("open");
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            return hash.finalize().into();
        }
        hash.update(&buf[..n]);
    }
}
