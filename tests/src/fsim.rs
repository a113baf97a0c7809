//! The file system under the simulator: clients that put, overwrite, remove
//! and get files while nodes crash, restart and partition, and a checker
//! that every acknowledged file reads back as it should once faults heal.
//!
//! A client runs one [`Task`] at a time, following the client algorithms of
//! `docs/fs.md` one request after another.

use shoal_core::fs::{
    ChunkId, DirEntry, EntryKind, FileMeta, FsPath, MAX_PATH, Step, TreeBuilder, TreeWalk,
    entry_key, file_key,
};
use shoal_core::node::{Event, OpFailure, OpId, RemoteError, Request, Response};
use shoal_core::repl::{Hlc, HlcClock, MAX_STORE_KEY};
use shoal_core::rng::Rng;
use shoal_core::{Duration, Instant, NodeId};

use crate::sim::{SimConfig, World};

/// A request a task asks for, owning its bytes.
#[derive(Clone, Debug)]
enum Ask {
    ChunkWrite(Vec<u8>),
    ChunkRead(ChunkId),
    RecordWrite {
        key: Vec<u8>,
        after: Hlc,
        exact: bool,
        tombstone: bool,
        value: Vec<u8>,
    },
    RecordRead(Vec<u8>),
    ChunkMark(ChunkId, u8),
}

impl Ask {
    fn request(&self) -> Request<'_> {
        match self {
            Ask::ChunkWrite(d) => Request::ChunkWrite { data: d },
            Ask::ChunkRead(id) => Request::ChunkRead { id: *id },
            Ask::RecordWrite {
                key,
                after,
                exact,
                tombstone,
                value,
            } => Request::RecordWrite {
                key,
                after: *after,
                exact: *exact,
                tombstone: *tombstone,
                value,
            },
            Ask::RecordRead(key) => Request::RecordRead { key },
            Ask::ChunkMark(id, depth) => Request::ChunkMark {
                id: *id,
                depth: *depth,
            },
        }
    }
}

type Answer = Result<(Response, Vec<u8>), OpFailure>;

/// What a file operation ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A put or remove was acknowledged.
    Acked,
    /// A get returned these bytes.
    Read(Vec<u8>),
    /// A get or remove found no such file.
    NotFound,
    /// The operation failed; its effect is unknown.
    Failed(String),
}

fn encode_key(k: shoal_core::repl::RecordKey<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_STORE_KEY];
    let n = k.encode(&mut buf).expect("keys fit");
    buf[..n].to_vec()
}

fn file_key_of(path: &str) -> Vec<u8> {
    let mut b = [0u8; MAX_PATH + 1];
    encode_key(file_key(FsPath::new(path).expect("valid path"), &mut b))
}

fn entry_key_of(path: &str) -> Vec<u8> {
    let p = FsPath::new(path).expect("valid path");
    let (dir, name) = p.split().expect("not the root");
    let mut b = [0u8; MAX_PATH + 1];
    encode_key(entry_key(dir, name, &mut b))
}

/// One file operation, a request at a time.
#[derive(Debug)]
pub struct Task {
    path: String,
    kind: TaskKind,
    retries: u32,
    last: Option<Ask>,
    /// The client running it: the tiebreak of the versions it numbers.
    writer: NodeId,
    /// When it began, and how long a put's chunks may wait for their file
    /// record before it marks them again (half a GC round), as `shoal fs
    /// put` does.
    begun: Instant,
    refresh_after: Duration,
}

#[derive(Debug)]
enum TaskKind {
    Put {
        /// Chunks still to write (data and index chunks), in order.
        chunks: Vec<Vec<u8>>,
        meta: FileMeta,
        stage: PutStage,
    },
    Get {
        stage: GetStage,
        walk: Option<Box<TreeWalk>>,
        out: Vec<u8>,
        size: u64,
    },
    Remove {
        stage: RemoveStage,
    },
}

#[derive(Debug, Clone, Copy)]
enum PutStage {
    ReadVersion,
    Chunks(usize, Hlc),
    /// Marking the tree again before the file record names it.
    Mark(Hlc),
    Meta,
    Entry,
}

#[derive(Debug, Clone, Copy)]
enum GetStage {
    Meta,
    Chunks,
}

#[derive(Debug, Clone, Copy)]
enum RemoveStage {
    Read,
    Meta,
    Entry,
}

/// Retries of one request before the operation gives up.
const RETRIES: u32 = 3;

impl Task {
    /// A put of `data` to `path`, cut into `chunk_size` chunks.
    pub fn put(path: &str, data: &[u8], chunk_size: u32, mtime_ms: u64) -> Task {
        let mut chunks = Vec::new();
        let mut tree = TreeBuilder::new();
        let mut emit = |_: ChunkId, bytes: &[u8]| chunks.push(bytes.to_vec());
        let mut data_chunks = Vec::new();
        for c in data.chunks(chunk_size as usize) {
            data_chunks.push(c.to_vec());
        }
        for c in &data_chunks {
            emit(ChunkId::of(c), c);
            tree.push(ChunkId::of(c), &mut emit).expect("small files");
        }
        let n = tree.chunks();
        let (root, depth) = tree.finish(&mut emit);
        let meta = FileMeta {
            size: data.len() as u64,
            mtime_ms,
            chunk_size,
            chunks: n,
            root,
            depth,
        };
        Task {
            path: path.to_string(),
            kind: TaskKind::Put {
                chunks,
                meta,
                stage: PutStage::ReadVersion,
            },
            retries: 0,
            last: None,
            writer: NodeId(0),
            begun: Instant::ZERO,
            refresh_after: Duration::from_secs(1),
        }
    }

    /// A get of `path`.
    pub fn get(path: &str) -> Task {
        Task {
            path: path.to_string(),
            kind: TaskKind::Get {
                stage: GetStage::Meta,
                walk: None,
                out: Vec::new(),
                size: 0,
            },
            retries: 0,
            last: None,
            writer: NodeId(0),
            begun: Instant::ZERO,
            refresh_after: Duration::from_secs(1),
        }
    }

    /// A remove of `path`.
    pub fn remove(path: &str) -> Task {
        Task {
            path: path.to_string(),
            kind: TaskKind::Remove {
                stage: RemoveStage::Read,
            },
            retries: 0,
            last: None,
            writer: NodeId(0),
            begun: Instant::ZERO,
            refresh_after: Duration::from_secs(1),
        }
    }

    /// The first request.
    fn start(&mut self) -> Result<Ask, Outcome> {
        let ask = Ask::RecordRead(file_key_of(&self.path));
        self.last = Some(ask.clone());
        Ok(ask)
    }

    /// Feeds the answer to the last request; the next request, or the end.
    fn advance(&mut self, answer: Answer, now: Instant) -> Result<Ask, Outcome> {
        let answer = match answer {
            Ok((Response::Error(e), _)) => Err(OpFailure::Remote(e)),
            other => other,
        };
        let (response, data) = match answer {
            Ok(a) => {
                self.retries = 0;
                a
            }
            Err(e) => {
                let retryable = !matches!(
                    e,
                    OpFailure::Remote(RemoteError::NotFound | RemoteError::Malformed)
                );
                // Record writes are not retried: a retry would write
                // under a new version, which is a different operation.
                let is_write = matches!(self.last, Some(Ask::RecordWrite { .. }));
                if retryable && !is_write && self.retries < RETRIES {
                    self.retries += 1;
                    return self
                        .last
                        .clone()
                        .ok_or(Outcome::Failed("no request".into()));
                }
                return Err(Outcome::Failed(format!("{e}")));
            }
        };
        let next = self.next(response, data, now)?;
        self.last = Some(next.clone());
        Ok(next)
    }

    fn next(&mut self, response: Response, data: Vec<u8>, now: Instant) -> Result<Ask, Outcome> {
        let path = self.path.clone();
        let unexpected = |what: &str| Outcome::Failed(format!("unexpected answer, wanted {what}"));
        match &mut self.kind {
            TaskKind::Put {
                chunks,
                meta,
                stage,
            } => {
                match (*stage, response) {
                    (PutStage::ReadVersion, Response::Record { version, .. }) => {
                        *stage = PutStage::Chunks(0, version);
                    }
                    (PutStage::Chunks(i, v), Response::ChunkWritten { .. }) => {
                        *stage = PutStage::Chunks(i + 1, v);
                    }
                    (PutStage::Mark(after), Response::Stored) => {
                        *stage = PutStage::Chunks(chunks.len(), after);
                        self.begun = now;
                    }
                    (PutStage::Meta, Response::RecordWritten { version }) => {
                        *stage = PutStage::Entry;
                        let entry = DirEntry {
                            kind: EntryKind::File,
                            size: meta.size,
                            mtime_ms: meta.mtime_ms,
                        };
                        let mut buf = [0u8; 64];
                        let value = entry.encode(&mut buf).expect("fits").to_vec();
                        return Ok(Ask::RecordWrite {
                            key: entry_key_of(&path),
                            after: version,
                            exact: true,
                            tombstone: false,
                            value,
                        });
                    }
                    (PutStage::Entry, Response::RecordWritten { .. }) => {
                        return Err(Outcome::Acked);
                    }
                    _ => return Err(unexpected("a put step")),
                }
                let PutStage::Chunks(i, after) = *stage else {
                    return Err(unexpected("chunks"));
                };
                if let Some(c) = chunks.get(i) {
                    return Ok(Ask::ChunkWrite(c.clone()));
                }
                if now.saturating_since(self.begun) >= self.refresh_after
                    && let Some(root) = meta.root
                {
                    *stage = PutStage::Mark(after);
                    return Ok(Ask::ChunkMark(root, meta.depth));
                }
                *stage = PutStage::Meta;
                let mut buf = [0u8; 256];
                let value = meta.encode(&mut buf).expect("fits").to_vec();
                // The client numbers the version itself, after the one it
                // read, as `shoal fs put` does, and writes the file record
                // and then its entry under it.
                let mut clock = HlcClock::new(self.writer);
                clock.observe(after);
                Ok(Ask::RecordWrite {
                    key: file_key_of(&path),
                    after: clock.now(meta.mtime_ms),
                    exact: true,
                    tombstone: false,
                    value,
                })
            }
            TaskKind::Get {
                stage,
                walk,
                out,
                size,
            } => {
                match (*stage, response) {
                    (GetStage::Meta, Response::Record { version, tombstone }) => {
                        if version == Hlc::ZERO || tombstone {
                            return Err(Outcome::NotFound);
                        }
                        let meta = FileMeta::decode(&data)
                            .ok_or_else(|| Outcome::Failed("bad file record".into()))?;
                        *size = meta.size;
                        *walk = Some(Box::new(TreeWalk::new(&meta)));
                        *stage = GetStage::Chunks;
                    }
                    (GetStage::Chunks, Response::Chunk { .. }) => {
                        let Some(Ask::ChunkRead(id)) = self.last else {
                            return Err(unexpected("a chunk"));
                        };
                        if !id.verifies(&data) {
                            return Err(Outcome::Failed("chunk failed its check".into()));
                        }
                        let w = walk.as_mut().ok_or_else(|| unexpected("a walk"))?;
                        match w.step() {
                            Step::NeedIndex(_) => {
                                w.feed(&data)
                                    .map_err(|_| Outcome::Failed("bad index chunk".into()))?;
                            }
                            Step::Data(_) => out.extend_from_slice(&data),
                            Step::Done => return Err(unexpected("no more chunks")),
                        }
                    }
                    _ => return Err(unexpected("a get step")),
                }
                let w = walk.as_mut().ok_or_else(|| unexpected("a walk"))?;
                // Peek: `step` repeats a pending index request and yields
                // data ids once, so the walk is re-stepped on the answer.
                let mut probe = w.clone();
                match probe.step() {
                    Step::NeedIndex(id) | Step::Data(id) => Ok(Ask::ChunkRead(id)),
                    Step::Done => {
                        if out.len() as u64 != *size {
                            return Err(Outcome::Failed("wrong size".into()));
                        }
                        Err(Outcome::Read(std::mem::take(out)))
                    }
                }
            }
            TaskKind::Remove { stage } => match (*stage, response) {
                (RemoveStage::Read, Response::Record { version, tombstone }) => {
                    if version == Hlc::ZERO || tombstone {
                        return Err(Outcome::NotFound);
                    }
                    *stage = RemoveStage::Meta;
                    Ok(Ask::RecordWrite {
                        key: file_key_of(&path),
                        after: version,
                        exact: false,
                        tombstone: true,
                        value: Vec::new(),
                    })
                }
                (RemoveStage::Meta, Response::RecordWritten { version }) => {
                    *stage = RemoveStage::Entry;
                    Ok(Ask::RecordWrite {
                        key: entry_key_of(&path),
                        after: version,
                        exact: true,
                        tombstone: true,
                        value: Vec::new(),
                    })
                }
                (RemoveStage::Entry, Response::RecordWritten { .. }) => Err(Outcome::Acked),
                _ => Err(unexpected("a remove step")),
            },
        }
    }
}

/// A client machine running one task at a time.
#[derive(Debug)]
pub struct Client {
    /// Its machine.
    pub machine: usize,
    task: Option<(Task, OpId)>,
    seen: usize,
}

impl Client {
    /// A client on `machine` (already started with [`World::start_client`]).
    pub fn new(machine: usize) -> Client {
        Client {
            machine,
            task: None,
            seen: 0,
        }
    }

    /// Whether it has no task.
    pub fn idle(&self) -> bool {
        self.task.is_none()
    }

    /// Starts `task`; fails at once if the node refuses the command.
    pub fn begin(&mut self, w: &mut World, mut task: Task) -> Option<Outcome> {
        self.seen = w.machines[self.machine].events.len();
        task.writer = crate::sim::id_of(self.machine);
        task.begun = w.now;
        task.refresh_after = Duration::from_micros(w.data.gc_round.as_micros() / 2);
        let ask = match task.start() {
            Ok(a) => a,
            Err(o) => return Some(o),
        };
        match submit(w, self.machine, &ask) {
            Ok(op) => {
                self.task = Some((task, op));
                None
            }
            Err(e) => Some(Outcome::Failed(e)),
        }
    }

    /// Feeds answers that arrived; the outcome when the task ended.
    pub fn poll(&mut self, w: &mut World) -> Option<Outcome> {
        let (task, op) = self.task.as_mut()?;
        let m = &w.machines[self.machine];
        let mut answer = None;
        for (_, e) in &m.events[self.seen..] {
            match e {
                Event::Response { op: o, response } if o == op => {
                    let data = m
                        .data
                        .iter()
                        .rev()
                        .find(|(d, _)| d == o)
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default();
                    answer = Some(Ok((response.clone(), data)));
                }
                Event::Failed { op: o, reason } if o == op => answer = Some(Err(*reason)),
                _ => {}
            }
        }
        self.seen = m.events.len();
        let answer = answer?;
        match task.advance(answer, w.now) {
            Ok(ask) => match submit(w, self.machine, &ask) {
                Ok(new) => {
                    if let Some((_, op)) = self.task.as_mut() {
                        *op = new;
                    }
                    None
                }
                Err(e) => {
                    self.task = None;
                    Some(Outcome::Failed(e))
                }
            },
            Err(outcome) => {
                self.task = None;
                Some(outcome)
            }
        }
    }

    /// Drops the running task (its machine went away).
    pub fn abandon(&mut self) -> bool {
        self.task.take().is_some()
    }
}

fn submit(w: &mut World, machine: usize, ask: &Ask) -> Result<OpId, String> {
    match w.with_node(machine, |n, now| n.fs_request(now, &ask.request())) {
        Some(Ok(op)) => Ok(op),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("client down".into()),
    }
}

/// One operation in the history, for the checker.
#[derive(Clone, Debug)]
struct Done {
    path: String,
    /// What the operation would leave: the bytes put, or `None` for a remove.
    effect: Option<Vec<u8>>,
    start: Instant,
    end: Instant,
    acked: bool,
}

/// A client's operation in progress: path, effect, start, whether a read.
type Running = (String, Option<Vec<u8>>, Instant, bool);

/// Settings of the file-system fault scenario.
#[derive(Clone, Copy, Debug)]
pub struct FaultPlan {
    /// Member nodes.
    pub nodes: usize,
    /// Client machines.
    pub clients: usize,
    /// How long clients work while faults come and go.
    pub busy: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            nodes: 5,
            clients: 2,
            busy: Duration::from_secs(40),
        }
    }
}

/// What a fault run did, for the summary.
#[derive(Debug, Default)]
pub struct FaultReport {
    /// Operations acknowledged.
    pub acked: usize,
    /// Operations that failed.
    pub failed: usize,
    /// Faults injected.
    pub faults: usize,
}

const PATHS: [&str; 4] = ["/d/a", "/d/b", "/d/c", "/e/f/g"];

/// Clients put, overwrite, remove and get a few files while members crash,
/// restart and partition on a lossy network; then every fault heals and
/// each file must read back as the history allows: the bytes of an
/// operation that no acknowledged operation started after (or absent, when
/// that operation was a remove).
pub fn faults(seed: u64, plan: FaultPlan) -> Result<FaultReport, String> {
    let total = plan.nodes + plan.clients;
    let mut w = World::new(SimConfig::lossy(seed, total));
    w.data.chunk_size = 1024;
    // Short GC rounds, so reclaiming runs (and must not hurt) after the
    // faults heal.
    w.data.gc_round = Duration::from_secs(3);
    w.data.gc_keep = 2;
    // Odd seeds flush in the background, as hosts do: a write is answered
    // only after a later input, and a crash in between loses it.
    for m in &w.machines {
        m.disk.0.borrow_mut().background = seed % 2 == 1;
    }
    let mut rng = Rng::new(seed ^ 0xf11e);
    w.start(0, &[]);
    for i in 1..plan.nodes {
        w.start(i, &[0]);
    }
    for c in 0..plan.clients {
        w.start_client(plan.nodes + c, c % plan.nodes);
    }
    let settle = |w: &mut World| {
        w.run_until_pred(Duration::from_secs(30), |w| {
            (0..w.machines.len()).filter(|&i| i < plan.nodes).all(|i| {
                !w.is_up(i)
                    || (0..plan.nodes)
                        .all(|j| !w.is_up(j) || w.view(i, j).is_some_and(|s| s.is_live()))
            })
        })
    };
    if settle(&mut w).is_none() {
        return Err("the cluster did not form".into());
    }
    let mut clients: Vec<Client> = (0..plan.clients)
        .map(|c| Client::new(plan.nodes + c))
        .collect();
    let mut contacts: Vec<usize> = (0..plan.clients).map(|c| c % plan.nodes).collect();
    let mut running: Vec<Option<Running>> = vec![None; plan.clients];
    let mut history: Vec<Done> = Vec::new();
    let mut report = FaultReport::default();
    let mut next_fault = w.now + Duration::from_secs(2);
    let end = w.now + plan.busy;
    let mut down: Vec<usize> = Vec::new();
    let mut version = 0u32;
    while w.now < end {
        // Faults.
        if w.now >= next_fault {
            next_fault = w.now + Duration::from_millis(1000 + rng.below(4000) as u64);
            report.faults += 1;
            match rng.below(5) {
                0 | 1 if down.len() < 2 => {
                    let i = rng.below(plan.nodes);
                    if !down.contains(&i) {
                        w.crash(i);
                        down.push(i);
                    }
                }
                2 if !down.is_empty() => {
                    let i = down.remove(rng.below(down.len()));
                    let seeds: Vec<usize> = (0..plan.nodes)
                        .filter(|j| !down.contains(j) && *j != i)
                        .collect();
                    w.start(i, &seeds);
                }
                3 => {
                    for i in 0..plan.nodes {
                        w.set_group(i, rng.below(2) as u8);
                    }
                }
                _ => w.heal(),
            }
            // A client whose contact is down moves to a live one.
            for (c, client) in clients.iter_mut().enumerate() {
                if !down.contains(&contacts[c]) {
                    continue;
                }
                let Some(live) = (0..plan.nodes).find(|j| !down.contains(j)) else {
                    continue;
                };
                if client.abandon()
                    && let Some((path, effect, start, _)) = running[c].take()
                {
                    history.push(Done {
                        path,
                        effect,
                        start,
                        end: w.now,
                        acked: false,
                    });
                    report.failed += 1;
                }
                contacts[c] = live;
                w.start_client(client.machine, live);
            }
        }
        // Clients start work.
        for (c, client) in clients.iter_mut().enumerate() {
            if !client.idle() || !w.is_up(client.machine) {
                continue;
            }
            let path = PATHS[rng.below(PATHS.len())];
            let roll = rng.below(100);
            let (task, effect, is_read) = if roll < 55 {
                version += 1;
                let len = rng.below(4000);
                let mut data = vec![0u8; len];
                for b in data.iter_mut() {
                    *b = rng.next_u64() as u8;
                }
                // Name the version in the first bytes, so a mix would show.
                if data.len() >= 4 {
                    data[..4].copy_from_slice(&version.to_le_bytes());
                }
                let t = Task::put(path, &data, w.data.chunk_size, w.now.as_micros() / 1000);
                (t, Some(data), false)
            } else if roll < 75 {
                (Task::remove(path), None, false)
            } else {
                (Task::get(path), None, true)
            };
            let start = w.now;
            if client.begin(&mut w, task).is_some() {
                // Refused before anything was sent (not connected yet).
                continue;
            }
            running[c] = Some((path.to_string(), effect, start, is_read));
        }
        w.run_for(Duration::from_millis(5));
        for (c, client) in clients.iter_mut().enumerate() {
            if let Some(outcome) = client.poll(&mut w) {
                let Some((path, effect, start, is_read)) = running[c].take() else {
                    continue;
                };
                if is_read {
                    // Operations still running may be seen too.
                    let mut seen = history.clone();
                    for (path, effect, start, is_read) in running.iter().flatten() {
                        if !is_read {
                            let (path, effect, start) = (path.clone(), effect.clone(), *start);
                            seen.push(Done {
                                path,
                                effect,
                                start,
                                end: Instant::MAX,
                                acked: false,
                            });
                        }
                    }
                    // While faults last, a read may be stale (a partition
                    // may hide the newest write) but never a mix: it must
                    // be some put's whole bytes.
                    if let Outcome::Read(bytes) = &outcome
                        && !seen.iter().any(|d| {
                            d.path == path
                                && d.start <= w.now
                                && d.effect.as_deref() == Some(&bytes[..])
                        })
                    {
                        return Err(format!(
                            "a get of {path} ({:.3}-{:.3}) returned {}, which no put wrote; history: {}",
                            secs(start),
                            secs(w.now),
                            describe_bytes(Some(bytes)),
                            describe_history(&seen, &path)
                        ));
                    }
                    continue;
                }
                match outcome {
                    Outcome::Acked => report.acked += 1,
                    Outcome::NotFound => continue,
                    _ => report.failed += 1,
                }
                history.push(Done {
                    path,
                    effect,
                    start,
                    end: w.now,
                    acked: outcome == Outcome::Acked,
                });
            }
        }
    }
    // Heal everything, let the clients' last operations end, then check.
    w.heal();
    for i in down.drain(..) {
        w.start(i, &[(i + 1) % plan.nodes]);
    }
    // Long enough for several calm GC rounds: anything unreferenced may go,
    // and nothing referenced may.
    let stop = w.now + Duration::from_secs(40);
    while w.now < stop {
        w.run_for(Duration::from_millis(5));
        for (c, client) in clients.iter_mut().enumerate() {
            if let Some(outcome) = client.poll(&mut w)
                && let Some((path, effect, start, is_read)) = running[c].take()
                && !is_read
            {
                let acked = outcome == Outcome::Acked;
                history.push(Done {
                    path,
                    effect,
                    start,
                    end: w.now,
                    acked,
                });
            }
        }
    }
    for (c, client) in clients.iter_mut().enumerate() {
        if client.abandon()
            && let Some((path, effect, start, false)) = running[c].take()
        {
            history.push(Done {
                path,
                effect,
                start,
                end: w.now,
                acked: false,
            });
        }
    }
    if report.acked < 10 {
        return Err(format!(
            "only {} operations were acknowledged: the run tested too little",
            report.acked
        ));
    }
    if settle(&mut w).is_none() {
        return Err("the cluster did not re-form after the faults healed".into());
    }
    let reader = &mut clients[0];
    w.start_client(reader.machine, 0);
    let connected = w.run_until_pred(Duration::from_secs(10), |w| {
        w.machines[reader.machine]
            .node
            .as_ref()
            .is_some_and(|n| n.contact().is_some())
    });
    if connected.is_none() {
        return Err("the reader never reached its contact".into());
    }
    for path in PATHS {
        let mut outcome = None;
        for _attempt in 0..3 {
            let start = w.now;
            if let Some(o) = reader.begin(&mut w, Task::get(path)) {
                outcome = Some(o);
                break;
            }
            let o = loop {
                w.run_for(Duration::from_millis(5));
                if let Some(o) = reader.poll(&mut w) {
                    break o;
                }
                if w.now > start + Duration::from_secs(30) {
                    break Outcome::Failed("no answer".into());
                }
            };
            let failed = matches!(o, Outcome::Failed(_));
            outcome = Some(o);
            if !failed {
                break;
            }
        }
        let bytes = match outcome {
            Some(Outcome::Read(b)) => Some(b),
            Some(Outcome::NotFound) => None,
            other => {
                let views: Vec<String> = (0..plan.nodes)
                    .map(|i| {
                        let v: Vec<String> = (0..plan.nodes)
                            .map(|j| format!("{:?}", w.view(i, j)))
                            .collect();
                        format!("[{i} sees {}]", v.join(","))
                    })
                    .collect();
                return Err(format!(
                    "the final get of {path} failed: {other:?}; views {}",
                    views.join(" ")
                ));
            }
        };
        if !possible(&history, path, w.now, w.now, bytes.as_deref()) {
            return Err(format!(
                "{path} reads back as {} after the faults healed; history: {}",
                describe_bytes(bytes.as_deref()),
                describe_history(&history, path)
            ));
        }
    }
    Ok(report)
}

/// Whether `got` (bytes, or `None` for absent) is a state of `path` that
/// the history allows for a read that ran from `read_start` to `read_end`:
/// the effect of some operation that had started by the read's end and that
/// no acknowledged operation strictly follows (started after it ended and
/// ended before the read started) — or absent, if no acknowledged put
/// strictly precedes the read.
fn possible(
    history: &[Done],
    path: &str,
    read_start: Instant,
    read_end: Instant,
    got: Option<&[u8]>,
) -> bool {
    let ops: Vec<&Done> = history.iter().filter(|d| d.path == path).collect();
    let overridden = |o: &Done| {
        ops.iter()
            .any(|x| x.acked && x.start > o.end && x.end <= read_start)
    };
    let candidates = ops.iter().filter(|o| o.start <= read_end && !overridden(o));
    let mut any = false;
    for o in candidates {
        any = true;
        if o.effect.as_deref() == got {
            return true;
        }
    }
    // Nothing yet (or only removes): absent is possible when no acknowledged
    // put came before the read with nothing after it.
    got.is_none() && !any
        || got.is_none()
            && !ops
                .iter()
                .any(|o| o.acked && o.effect.is_some() && o.end <= read_start && !overridden(o))
}

fn secs(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

fn describe_bytes(b: Option<&[u8]>) -> String {
    match b {
        None => "absent".into(),
        Some(b) if b.len() >= 4 => format!(
            "v{} ({} B)",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            b.len()
        ),
        Some(b) => format!("{} B", b.len()),
    }
}

fn describe_history(history: &[Done], path: &str) -> String {
    let mine: Vec<&Done> = history.iter().filter(|d| d.path == path).collect();
    let ops: Vec<String> = mine[mine.len().saturating_sub(12)..]
        .iter()
        .map(|d| {
            format!(
                "{} {} {:.3}-{:.3}",
                if d.acked { "acked" } else { "failed" },
                match &d.effect {
                    Some(b) => format!("put {}", describe_bytes(Some(b))),
                    None => "rm".into(),
                },
                secs(d.start),
                if d.end == Instant::MAX {
                    f64::INFINITY
                } else {
                    secs(d.end)
                }
            )
        })
        .collect();
    ops.join("; ")
}

/// Every chunk id a file of `data` consists of: data chunks and index
/// chunks.
pub fn file_chunks(data: &[u8], chunk_size: u32) -> Vec<ChunkId> {
    let mut ids = Vec::new();
    let mut tree = TreeBuilder::new();
    let mut emit = |id: ChunkId, _: &[u8]| ids.push(id);
    for c in data.chunks(chunk_size as usize) {
        emit(ChunkId::of(c), c);
        tree.push(ChunkId::of(c), &mut emit).expect("small files");
    }
    tree.finish(&mut emit);
    ids
}

/// Runs `task` on `client` to its end.
fn run_task(w: &mut World, client: &mut Client, task: Task) -> Outcome {
    if let Some(o) = client.begin(w, task) {
        return o;
    }
    let limit = w.now + Duration::from_secs(60);
    loop {
        w.run_for(Duration::from_millis(5));
        if let Some(o) = client.poll(w) {
            return o;
        }
        if w.now > limit {
            return Outcome::Failed("no answer in 60 s".into());
        }
    }
}

/// Garbage collection in a calm cluster: after files are overwritten and
/// removed, every chunk no file references is reclaimed within the
/// documented bound, every referenced chunk keeps its replicas (chunks
/// shared with a removed file included), and every file reads back.
pub fn reclaim(seed: u64) -> Result<usize, String> {
    let nodes = 5;
    let mut config = SimConfig::clean(seed, nodes + 1);
    config.max_delay = Duration::from_millis(5);
    let mut w = World::new(config);
    w.data.chunk_size = 1024;
    w.data.gc_round = Duration::from_secs(5);
    w.data.gc_keep = 2;
    let round = w.data.gc_round;
    let mut rng = Rng::new(seed ^ 0x6c);
    w.start(0, &[]);
    for i in 1..nodes {
        w.start(i, &[0]);
    }
    w.start_client(nodes, 0);
    w.run_until_pred(Duration::from_secs(30), |w| {
        (0..nodes).all(|i| (0..nodes).all(|j| w.view(i, j).is_some_and(|s| s.is_live())))
    })
    .ok_or("the cluster did not form")?;
    w.run_until_pred(Duration::from_secs(10), |w| {
        w.machines[nodes]
            .node
            .as_ref()
            .is_some_and(|n| n.contact().is_some())
    })
    .ok_or("the client never reached its contact")?;
    let mut client = Client::new(nodes);
    let random =
        |rng: &mut Rng, len: usize| -> Vec<u8> { (0..len).map(|_| rng.next_u64() as u8).collect() };
    // A file deep enough to have two levels of index chunks, a file that
    // will be removed, and a file that shares most chunks with it.
    let extra = rng.below(4096);
    let big = random(&mut rng, 70 * 1024 + extra);
    let gone = random(&mut rng, 8 * 1024);
    let mut shares = gone[..6 * 1024].to_vec();
    shares.extend(random(&mut rng, 1000));
    let old = random(&mut rng, 5 * 1024);
    let new = random(&mut rng, 3 * 1024 + 7);
    let mtime = w.now.as_micros() / 1000;
    for (path, data) in [
        ("/g/big", &big),
        ("/g/gone", &gone),
        ("/g/shares", &shares),
        ("/g/over", &old),
    ] {
        let o = run_task(&mut w, &mut client, Task::put(path, data, 1024, mtime));
        if o != Outcome::Acked {
            return Err(format!("put {path}: {o:?}"));
        }
    }
    for (task, what) in [
        (Task::put("/g/over", &new, 1024, mtime), "overwrite"),
        (Task::remove("/g/gone"), "remove"),
    ] {
        let o = run_task(&mut w, &mut client, task);
        if o != Outcome::Acked {
            return Err(format!("{what}: {o:?}"));
        }
    }
    let live: std::collections::BTreeSet<ChunkId> = [&big, &shares, &new]
        .iter()
        .flat_map(|d| file_chunks(d, 1024))
        .collect();
    let garbage: std::collections::BTreeSet<ChunkId> = [&gone, &old]
        .iter()
        .flat_map(|d| file_chunks(d, 1024))
        .filter(|id| !live.contains(id))
        .collect();
    // The documented bound: gc_keep + 2 rounds after the change.
    let bound = round.saturating_mul(w.data.gc_keep + 2);
    let start = w.now;
    let held = |w: &World| -> Vec<ChunkId> {
        (0..nodes)
            .flat_map(|i| {
                w.machines[i]
                    .disk
                    .0
                    .borrow()
                    .keys(shoal_core::store::Space::Chunks)
            })
            .map(|k| ChunkId(k.try_into().expect("chunk keys are ids")))
            .collect()
    };
    let reclaimed = w.run_until_pred(bound, |w| held(w).iter().all(|id| !garbage.contains(id)));
    if reclaimed.is_none() {
        let left = held(&w).iter().filter(|id| garbage.contains(id)).count();
        return Err(format!(
            "{left} copies of unreferenced chunks remain {:.0} s after the change",
            (w.now - start).as_micros() as f64 / 1e6
        ));
    }
    // Two more rounds: nothing referenced goes.
    w.run_for(round.saturating_mul(2));
    let copies = held(&w);
    for id in &live {
        let n = copies.iter().filter(|c| *c == id).count();
        if n < 3 {
            return Err(format!("referenced chunk {id:?} has {n} copies, not 3"));
        }
    }
    for (path, data) in [("/g/big", &big), ("/g/shares", &shares), ("/g/over", &new)] {
        match run_task(&mut w, &mut client, Task::get(path)) {
            Outcome::Read(b) if b == *data => {}
            other => return Err(format!("{path} reads back as {other:?}")),
        }
    }
    if run_task(&mut w, &mut client, Task::get("/g/gone")) != Outcome::NotFound {
        return Err("the removed file reappeared".into());
    }
    if garbage.is_empty() {
        return Err("the run made no garbage to reclaim".into());
    }
    Ok(garbage.len())
}

/// Summary line for `cargo xtask sim`-style output.
pub fn summary(r: &FaultReport) -> String {
    format!(
        "{} acked, {} failed, {} faults",
        r.acked, r.failed, r.faults
    )
}
