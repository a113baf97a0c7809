//! Real `shoal-node` processes on 127.0.0.1 for the integration tests.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal-node");

/// A port nobody listens on now (the OS picks it; the test binds it next).
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A TCP port nobody listens on now.
pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Writes a key file (mode 600, as operators should) holding `byte` × 32.
pub fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Polls `check` every 50 ms until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over HTTP/1.1; the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// One `shoal-node` process, killed (SIGKILL) when dropped.
pub struct Node {
    pub name: String,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub data: PathBuf,
    pub key: PathBuf,
    pub join: Vec<SocketAddr>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a node named `name` with its data dir and log under `dir`,
    /// and waits until it answers `/status` (so it can be joined through).
    pub fn start(dir: &Path, name: &str, key: &Path, join: &[SocketAddr]) -> Node {
        let mut n = Node {
            name: name.to_owned(),
            udp: free_udp(),
            http: free_tcp(),
            data: dir.join(name),
            key: key.to_owned(),
            join: join.to_vec(),
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        n.spawn();
        n.identity();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--listen")
            .arg(self.udp.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--data")
            .arg(&self.data)
            .arg("--key")
            .arg(&self.key);
        for j in &self.join {
            cmd.arg("--join").arg(j.to_string());
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Starts the node again from the same data dir and UDP address, and
    /// waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} still runs", self.name);
        self.http = free_tcp();
        self.spawn();
        self.identity();
    }

    /// SIGKILL: no leave, no clean close.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid} failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> Option<Value> {
        let (code, body) = http_get(self.http, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Option<String> {
        let (code, body) = http_get(self.http, "/metrics")?;
        (code == 200).then_some(body)
    }

    /// This node's own id and epoch, once it answers.
    pub fn identity(&self) -> (String, u64) {
        let mut out = None;
        wait_until(Duration::from_secs(10), "node answers /status", || {
            out = self.status().map(|s| {
                (
                    s["node"]["id"].as_str().unwrap().to_owned(),
                    s["node"]["epoch"].as_u64().unwrap(),
                )
            });
            out.is_some()
        });
        out.unwrap()
    }

    /// The state this node gives member `id`, if it lists it.
    pub fn state_of(&self, id: &str) -> Option<String> {
        let s = self.status()?;
        s["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["state"].as_str().unwrap_or("").to_owned())
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// Runs `shoal-node` with `args` expecting it to fail at startup.
pub fn run_expecting_failure(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("shoal-node {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}
