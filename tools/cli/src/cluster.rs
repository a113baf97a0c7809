//! Local clusters: `shoal-node` processes on 127.0.0.1 sharing one
//! directory, for `shoal dev`, `shoal demo` and `shoal bench`.
//!
//! ```text
//! DIR/cluster.key      the cluster key (mode 0600)
//! DIR/cluster.json     each node's name, addresses, data dir, log and pid
//! DIR/nI/data/         node I's data dir (its id and boot counter live here)
//! DIR/nI/node.log      its stdout and stderr
//! DIR/nI/pid           its process id, for `shoal dev down`
//! ```

use std::fs::{self, OpenOptions};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process, test_kill_process};
use serde::Serialize;
use shoal_core::member::Record;
use shoal_core::wire::ClusterKey;

use crate::client::{Client, ClientConfig, ClientError};
use crate::keyfile;

/// How long a node gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Process ids of the nodes this process started and has not stopped yet,
/// for the interrupt handler.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// A directory the interrupt handler removes.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Where the `shoal-node` binary is: `SHOAL_NODE_BIN`, else next to the
/// running `shoal`, else on `PATH`.
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_NODE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "SHOAL_NODE_BIN names {}, which is not a file; build the node with \
                 `cargo build --release -p shoal-node`",
                p.display()
            );
        }
        return Ok(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("shoal-node")));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("shoal-node"));
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .context(
            "cannot find the shoal-node binary: build it with `cargo build --release -p \
         shoal-node` and put it next to `shoal` or on PATH, or name it in SHOAL_NODE_BIN",
        )
}

/// One node of a [`LocalCluster`].
pub struct LocalNode {
    /// `n1`, `n2`, …
    pub name: String,
    /// Its UDP address (listen and advertise).
    pub addr: SocketAddr,
    /// Its HTTP status address.
    pub http: SocketAddr,
    /// Its folder: `DIR/nI`.
    pub dir: PathBuf,
    /// Its process id.
    pub pid: u32,
    child: Option<Child>,
}

impl LocalNode {
    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Its data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

#[derive(Serialize)]
struct NodeEntry<'a> {
    name: &'a str,
    addr: String,
    http: String,
    data: String,
    log: String,
    pid: u32,
}

/// `shoal-node` processes on 127.0.0.1 under one directory.
pub struct LocalCluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// `DIR/cluster.key`.
    pub key_path: PathBuf,
    /// The key in it.
    pub key: ClusterKey,
    /// The nodes started, running or not.
    pub nodes: Vec<LocalNode>,
    bin: PathBuf,
    detached: bool,
    /// Flags every node started from now on gets.
    extra: Vec<String>,
}

impl LocalCluster {
    /// Prepares `dir` (created if missing) with a fresh key. Refuses when a
    /// node started there earlier still runs. `detached` nodes get their own
    /// process group, so they outlive this process and ignore its terminal's
    /// Ctrl-C.
    pub fn create(dir: &Path, bin: PathBuf, detached: bool) -> Result<LocalCluster> {
        if let Some((name, pid)) = running_in(dir).first() {
            bail!(
                "{name} of a cluster in {} still runs (pid {pid}); stop it with `shoal dev \
                 down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let key_path = dir.join("cluster.key");
        let key = keyfile::generate()?;
        keyfile::write(&key_path, &key, true)?;
        Ok(LocalCluster {
            dir,
            key_path,
            key,
            nodes: Vec::new(),
            bin,
            detached,
            extra: Vec::new(),
        })
    }

    /// Adds flags that every node started from now on gets.
    pub fn node_args(&mut self, args: impl IntoIterator<Item = String>) {
        self.extra.extend(args);
    }

    /// Starts `n` nodes: the first alone, once it answers the others
    /// joining through it.
    pub fn start(&mut self, n: usize) -> Result<()> {
        self.start_node(&[])?;
        let first = self.nodes[0].addr;
        self.client(0, Duration::from_secs(10))
            .map_err(|e| self.explain(0, e.into()))?;
        for _ in 1..n {
            self.start_node(&[first])?;
        }
        Ok(())
    }

    /// Starts one more node joining through `seeds` and returns its index.
    pub fn start_node(&mut self, seeds: &[SocketAddr]) -> Result<usize> {
        let i = self.nodes.len();
        let name = format!("n{}", i + 1);
        let taken: Vec<u16> = self
            .nodes
            .iter()
            .flat_map(|n| [n.addr.port(), n.http.port()])
            .collect();
        let (udp, http) = free_ports(&taken)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], udp));
        let http = SocketAddr::from(([127, 0, 0, 1], http));
        let dir = self.dir.join(&name);
        let data = dir.join("data");
        fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .with_context(|| format!("cannot open {}", dir.join("node.log").display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&name)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--advertise")
            .arg(addr.to_string())
            .arg("--data")
            .arg(&data)
            .arg("--key")
            .arg(&self.key_path)
            .arg("--http")
            .arg(http.to_string());
        for s in seeds {
            cmd.arg("--join").arg(s.to_string());
        }
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.detached {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let pid = child.id();
        if let Ok(mut r) = RUNNING.lock() {
            r.push(pid);
        }
        fs::write(dir.join("pid"), format!("{pid}\n"))?;
        self.nodes.push(LocalNode {
            name,
            addr,
            http,
            dir,
            pid,
            child: Some(child),
        });
        self.write_manifest()?;
        Ok(i)
    }

    fn write_manifest(&self) -> Result<()> {
        let entries: Vec<NodeEntry> = self
            .nodes
            .iter()
            .map(|n| NodeEntry {
                name: &n.name,
                addr: n.addr.to_string(),
                http: n.http.to_string(),
                data: n.data().display().to_string(),
                log: n.log().display().to_string(),
                pid: n.pid,
            })
            .collect();
        let json = serde_json::to_string_pretty(&entries)?;
        fs::write(self.dir.join("cluster.json"), json + "\n")?;
        Ok(())
    }

    /// A client of node `i`.
    pub fn client(&mut self, i: usize, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect(&ClientConfig {
            contact: self.nodes[i].addr,
            key: self.key.clone(),
            timeout,
        })
    }

    /// Fails with the node's last log lines when a node this process started
    /// has exited on its own.
    pub fn check_processes(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                node.child = None;
                forget(node.pid);
                bail!(
                    "{} exited ({status}); its log {} ends with:\n{}",
                    node.name,
                    node.log().display(),
                    tail(&node.log(), 8)
                );
            }
        }
        Ok(())
    }

    /// Adds node `i`'s exit or log tail to `e` when the node is why `e`
    /// happened.
    pub fn explain(&mut self, i: usize, e: anyhow::Error) -> anyhow::Error {
        match self.check_processes() {
            Err(exited) => exited,
            Ok(()) => e.context(format!(
                "{} does not answer; see {}",
                self.nodes[i].name,
                self.nodes[i].log().display()
            )),
        }
    }

    /// Polls node `viewer`'s member table until `done` accepts it, for at
    /// most `within`. Returns the table and how long it took.
    pub fn wait_for_view(
        &mut self,
        viewer: usize,
        within: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<(Vec<Record>, Duration)> {
        let start = Instant::now();
        let mut client: Option<Client> = None;
        let mut last: Vec<Record> = Vec::new();
        loop {
            self.check_processes()?;
            if client.is_none() {
                client = self.client(viewer, Duration::from_secs(1)).ok();
            }
            if let Some(c) = client.as_mut() {
                match c.members() {
                    Ok(records) => {
                        if done(&records) {
                            return Ok((records, start.elapsed()));
                        }
                        last = records;
                    }
                    Err(_) => client = None,
                }
            }
            if start.elapsed() > within {
                let seen: Vec<String> = crate::members::rows(&last)
                    .iter()
                    .map(|r| format!("{} {}", r.name, r.state))
                    .collect();
                bail!(
                    "{} did not see the expected members within {} s (last view: {}); \
                     logs are in {}",
                    self.nodes[viewer].name,
                    within.as_secs(),
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    },
                    self.dir.display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        forget(node.pid);
        let _ = fs::remove_file(node.dir.join("pid"));
        Ok(())
    }

    /// Stops every node still running: SIGTERM, then SIGKILL after a grace
    /// period.
    pub fn stop(&mut self) -> Vec<Stopped> {
        let mut procs: Vec<Proc> = self
            .nodes
            .iter_mut()
            .filter_map(|n| {
                let child = n.child.take()?;
                Some(Proc {
                    name: n.name.clone(),
                    pid: n.pid,
                    child: Some(child),
                    pid_file: n.dir.join("pid"),
                })
            })
            .collect();
        terminate(&mut procs)
    }

    /// Leaves the nodes running when this value is dropped (`shoal dev up`).
    pub fn detach(mut self) {
        for n in &mut self.nodes {
            n.child = None;
            forget(n.pid);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a node was stopped.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// What happened.
    pub how: StopHow,
}

/// See [`Stopped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopHow {
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM and was killed.
    Killed,
    /// It was not running.
    NotRunning,
}

impl std::fmt::Display for StopHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopHow::Terminated => "stopped",
            StopHow::Killed => "killed (it ignored SIGTERM for 5 s)",
            StopHow::NotRunning => "was not running",
        })
    }
}

struct Proc {
    name: String,
    pid: u32,
    child: Option<Child>,
    pid_file: PathBuf,
}

impl Proc {
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => pid_running(self.pid),
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = pid(self.pid) {
            let _ = kill_process(pid, sig);
        }
    }
}

/// Stops the nodes a cluster directory's pid files name (`shoal dev down`).
pub fn stop_dir(dir: &Path) -> Result<Vec<Stopped>> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut procs = Vec::new();
    let mut absent = Vec::new();
    for (name, pid_file) in pid_files(dir)? {
        let Some(pid) = read_pid(&pid_file) else {
            continue;
        };
        if pid_file.parent().is_some_and(|d| is_node_of(pid, d)) {
            procs.push(Proc {
                name,
                pid,
                child: None,
                pid_file,
            });
        } else {
            let _ = fs::remove_file(&pid_file);
            absent.push(Stopped {
                name,
                pid,
                how: StopHow::NotRunning,
            });
        }
    }
    let mut stopped = terminate(&mut procs);
    stopped.extend(absent);
    stopped.sort_by_key(|s| natural(&s.name));
    Ok(stopped)
}

fn terminate(procs: &mut [Proc]) -> Vec<Stopped> {
    for p in procs.iter() {
        p.signal(Signal::TERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && procs.iter_mut().any(Proc::running) {
        thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    for p in procs.iter_mut() {
        let how = if p.running() {
            p.signal(Signal::KILL);
            if let Some(c) = p.child.as_mut() {
                let _ = c.wait();
            }
            StopHow::Killed
        } else {
            StopHow::Terminated
        };
        forget(p.pid);
        let _ = fs::remove_file(&p.pid_file);
        out.push(Stopped {
            name: p.name.clone(),
            pid: p.pid,
            how,
        });
    }
    out
}

/// `(name, DIR/name/pid)` for every node folder in `dir`.
fn pid_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let pid_file = entry.path().join("pid");
        if pid_file.is_file() {
            out.push((entry.file_name().to_string_lossy().into_owned(), pid_file));
        }
    }
    out.sort_by_key(|(name, _)| natural(name));
    Ok(out)
}

/// Nodes of `dir` whose pid file names their running process.
fn running_in(dir: &Path) -> Vec<(String, u32)> {
    pid_files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, f)| {
            let pid = read_pid(&f)?;
            is_node_of(pid, f.parent()?).then_some((name, pid))
        })
        .collect()
}

/// Sorts `n2` before `n10`.
fn natural(name: &str) -> (usize, String) {
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(usize::MAX), name.to_string())
}

fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn pid(raw: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(raw).ok()?)
}

/// Whether `pid` is a live process (not a zombie awaiting its parent).
fn pid_running(raw: u32) -> bool {
    let Some(p) = pid(raw) else { return false };
    if test_kill_process(p).is_err() {
        return false;
    }
    // `/proc/PID/stat`: "PID (comm) S ...", state after the last ')'.
    match fs::read_to_string(format!("/proc/{raw}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// Whether `pid` is the node whose folder is `node_dir`: a live process
/// started with `--data node_dir/data`. So a recycled pid is never
/// signalled, whatever the node binary is called. Where `/proc` is missing,
/// any live process counts.
fn is_node_of(raw: u32, node_dir: &Path) -> bool {
    if !pid_running(raw) {
        return false;
    }
    let cmdline = match fs::read(format!("/proc/{raw}/cmdline")) {
        Ok(c) => c,
        Err(_) => return !Path::new("/proc/self").exists(),
    };
    let Ok(want) = node_dir.join("data").canonicalize() else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"--data"
            && Path::new(&*String::from_utf8_lossy(w[1]))
                .canonicalize()
                .is_ok_and(|p| p == want)
    })
}

fn forget(pid: u32) {
    if let Ok(mut r) = RUNNING.lock() {
        r.retain(|p| *p != pid);
    }
}

/// A UDP port and a TCP port free on 127.0.0.1 now, outside `taken`.
///
/// They are picked below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), which outgoing connections draw from:
/// a port from inside it, free now, may be taken by a connection (a status
/// poll, say) while its node is down, and the node restarted on it would
/// fail with "address already in use".
fn free_ports(taken: &[u16]) -> Result<(u16, u16)> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Above the well-known and most registered ports.
    let start = 10_000.min(low / 2);
    let span = u64::from(low.saturating_sub(start).max(1));
    let pick = || -> Result<u16> { Ok(start + (crate::client::random_u64()? % span) as u16) };
    for _ in 0..256 {
        let (udp, tcp) = (pick()?, pick()?);
        if udp == tcp || taken.contains(&udp) || taken.contains(&tcp) {
            continue;
        }
        if UdpSocket::bind(("127.0.0.1", udp)).is_ok()
            && TcpListener::bind(("127.0.0.1", tcp)).is_ok()
        {
            return Ok((udp, tcp));
        }
    }
    bail!("cannot find free ports on 127.0.0.1 below {low}")
}

/// The last `n` lines of `file`, indented.
pub fn tail(file: &Path, n: usize) -> String {
    let text = fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return "    (empty)".into();
    }
    lines[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// On Ctrl-C or SIGTERM, stops every node this process started, removes
/// `scratch` if given, and exits with status 130.
pub fn stop_on_interrupt(scratch: Option<PathBuf>) {
    if let Ok(mut s) = SCRATCH.lock() {
        *s = scratch;
    }
    let _ = ctrlc::set_handler(|| {
        let pids: Vec<u32> = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
        let mut procs: Vec<Proc> = pids
            .iter()
            .map(|&pid| Proc {
                name: String::new(),
                pid,
                child: None,
                pid_file: PathBuf::new(),
            })
            .collect();
        let stopped = terminate(&mut procs);
        if let Some(dir) = SCRATCH.lock().ok().and_then(|mut s| s.take()) {
            let _ = fs::remove_dir_all(dir);
        }
        eprintln!("shoal: interrupted; stopped {} node(s)", stopped.len());
        std::process::exit(130);
    });
}
