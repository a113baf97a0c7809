//! `shoal fs put`: stream a file into chunks, then commit its record.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use shoal_core::fs::{ChunkId, DirEntry, EntryKind, FileMeta, FsPath, PathError, TreeBuilder};
use shoal_core::node::{OpFailure, Request, Response};
use shoal_core::repl::Hlc;

use super::{
    Record, Remote, ancestors, entry_key, file_key, human, info, now_ms, progress, system_ms,
    write_records,
};
use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{Access, Work, chunk_window, drive, explain};

/// What `put` reads: a local file or standard input.
pub struct Source {
    input: Box<dyn Read>,
    /// What to call it in messages.
    name: String,
    /// Its length, when known.
    len: Option<u64>,
    mtime_ms: u64,
}

impl Source {
    /// Opens `local`; `-` is standard input (its mtime is now).
    pub fn open(local: &Path) -> Result<Source> {
        if local.as_os_str() == "-" {
            return Ok(Source {
                input: Box::new(io::stdin().lock()),
                name: "standard input".into(),
                len: None,
                mtime_ms: now_ms(),
            });
        }
        let name = local.display().to_string();
        let file = File::open(local).with_context(|| format!("cannot read {name}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {name}"))?;
        if meta.is_dir() {
            bail!("{name} is a directory; put takes a file");
        }
        Ok(Source {
            input: Box::new(BufReader::with_capacity(256 << 10, file)),
            name,
            len: Some(meta.len()),
            mtime_ms: meta.modified().map_or_else(|_| now_ms(), system_ms),
        })
    }
}

/// `shoal fs put LOCAL REMOTE`.
pub fn put(config: &ClientConfig, local: &Path, remote: &Remote) -> Result<()> {
    let started = Instant::now();
    // The input is opened first: a missing file needs no cluster to say so.
    let source = Source::open(local)?;
    let mut client = Client::connect(config)?;
    let meta = put_from(&mut client, source, remote)?;
    if io::stderr().is_terminal() {
        eprintln!(
            "put {remote}: {} in {} chunk{} in {:.1} s",
            human(meta.size),
            meta.chunks,
            if meta.chunks == 1 { "" } else { "s" },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Stores `source` as `remote` through `client`, and returns its record.
pub fn put_from(client: &mut Client, source: Source, remote: &Remote) -> Result<FileMeta> {
    let (dir, name) = remote
        .split()
        .ok_or_else(|| anyhow!("invalid path \"/\": {}", PathError::Root))?;
    let up = ancestors(remote.path());
    let info = info(client)?;

    let bar = progress(source.len, &format!("put {remote}"));
    let mtime_ms = source.mtime_ms;
    let window = chunk_window(info.chunk_size);
    let mut work = PutWork {
        target: Target::new(remote, dir, name, &up)?,
        window,
        input: source.input,
        source: &source.name,
        chunk_size: info.chunk_size as usize,
        tree: Some(TreeBuilder::new()),
        index: VecDeque::new(),
        root: None,
        chunks: 0,
        size: 0,
        bar: bar.clone(),
        refresh_every: info.gc_round / 2,
        refreshed: Instant::now(),
        marks: VecDeque::new(),
        index_in_flight: 0,
    };
    let driven = drive(client, &mut work, window);
    if let Some(refusal) = work.target.refusal.take() {
        return Err(refusal);
    }
    driven.with_context(|| format!("cannot put {remote} (nothing was changed)"))?;
    work.target.verdict()?;
    // The new version follows every version the target's records have now
    // (the file's above all), so puts from different clients order as they
    // happened even when the clocks disagree.
    let version = client.version_after(work.target.records.iter().flatten().map(|r| r.version));
    let (root, depth) = work.root.unwrap_or((None, 0));
    let meta = FileMeta {
        size: work.size,
        mtime_ms,
        chunk_size: info.chunk_size,
        chunks: work.chunks,
        root,
        depth,
    };
    if !meta.is_consistent() {
        bail!("cannot put {remote}: the chunk tree came out inconsistent ({meta:?})");
    }
    bar.finish_and_clear();
    // Chunks no file record names are kept only a few GC rounds: a put
    // that took long marks its tree once more before naming it.
    if let Some(root) = root
        && work.refreshed.elapsed() >= work.refresh_every
    {
        super::call(
            client,
            Request::ChunkMark { id: root, depth },
            Access::Write,
        )
        .with_context(|| format!("cannot put {remote} (nothing was changed)"))?;
    }

    // The commit point: the file record, and its entry under the same
    // version, with the entries of the directories above it, all at once.
    // Under one version the file and its entry order the same against
    // every other put or remove, so `ls` and `get` agree however they race.
    let mut file_value = [0u8; 128];
    let file_value = meta
        .encode(&mut file_value)
        .ok_or_else(|| anyhow!("the file record does not encode"))?;
    let file = file_key(remote.path())?;
    let entry = DirEntry {
        kind: EntryKind::File,
        size: meta.size,
        mtime_ms,
    };
    let mut buf = [0u8; 64];
    let value = entry
        .encode(&mut buf)
        .ok_or_else(|| anyhow!("the directory entry does not encode"))?;
    let key = entry_key(dir, name)?;
    let dir_entry = DirEntry {
        kind: EntryKind::Dir,
        size: 0,
        mtime_ms: 0,
    };
    let mut buf = [0u8; 64];
    let dir_value = dir_entry
        .encode(&mut buf)
        .ok_or_else(|| anyhow!("the directory entry does not encode"))?;
    // Directories are never removed, so an ancestor already listed as a
    // directory needs no write.
    let listed = work.target.listed_dirs();
    let keys = up
        .iter()
        .zip(listed)
        .filter(|(_, listed)| !listed)
        .map(|((parent, name, _), _)| entry_key(*parent, name))
        .collect::<Result<Vec<_>>>()?;
    let mut writes = vec![
        Request::RecordWrite {
            key: &file,
            after: version,
            exact: true,
            tombstone: false,
            value: file_value,
        },
        Request::RecordWrite {
            key: &key,
            after: version,
            exact: true,
            tombstone: false,
            value,
        },
    ];
    writes.extend(keys.iter().map(|key| Request::RecordWrite {
        key,
        after: Hlc::ZERO,
        exact: false,
        tombstone: false,
        value: dir_value,
    }));
    write_records(client, &writes).with_context(|| {
        format!("cannot put {remote} (it may be partly written: put it again, or remove it)")
    })?;
    Ok(meta)
}

/// What a put checks before it commits: the file record (its version is
/// the one to write after), the file's directory entry (a directory there
/// refuses the put) and the entries of the directories above it (a file
/// there refuses it). The reads go out with the first chunks, not before
/// them, so a small put costs one round trip less.
struct Target {
    /// The file, for messages.
    remote: String,
    /// The directories above it, innermost first, for messages.
    up: Vec<String>,
    keys: Vec<Vec<u8>>,
    /// Reads sent so far.
    sent: usize,
    /// Their answers, by key.
    records: Vec<Option<Record>>,
    /// Why the put is refused, once the answers say so.
    refusal: Option<anyhow::Error>,
}

impl Target {
    fn new(
        remote: &Remote,
        dir: FsPath<'_>,
        name: &str,
        up: &[(FsPath<'_>, &str, FsPath<'_>)],
    ) -> Result<Target> {
        let mut keys = vec![file_key(remote.path())?, entry_key(dir, name)?];
        for (parent, name, _) in up {
            keys.push(entry_key(*parent, name)?);
        }
        let records = vec![None; keys.len()];
        Ok(Target {
            remote: remote.to_string(),
            up: up.iter().map(|(_, _, p)| p.as_str().to_string()).collect(),
            keys,
            sent: 0,
            records,
            refusal: None,
        })
    }

    /// For each directory above the file, innermost first: whether its
    /// parent already lists it as a directory.
    fn listed_dirs(&self) -> Vec<bool> {
        self.records
            .iter()
            .skip(2)
            .map(|r| {
                r.as_ref()
                    .is_some_and(|r| entry_kind(r) == Some(EntryKind::Dir))
            })
            .collect()
    }

    /// Every read answered.
    fn known(&self) -> bool {
        self.records.iter().all(Option::is_some)
    }

    /// Refuses a put over a directory, or below a file; the file record's
    /// current version otherwise.
    fn verdict(&self) -> Result<Hlc> {
        let remote = &self.remote;
        let records: Vec<&Record> = self.records.iter().flatten().collect();
        if records.len() != self.keys.len() {
            bail!("cannot put {remote}: a record read went unanswered");
        }
        let kind = entry_kind;
        if kind(records[1]) == Some(EntryKind::Dir) {
            bail!("cannot put {remote}: it is a directory");
        }
        for (path, r) in self.up.iter().zip(&records[2..]) {
            if kind(r) == Some(EntryKind::File) {
                bail!("cannot put {remote}: {path} is a file");
            }
        }
        Ok(records[0].version)
    }
}

/// The kind of a live directory entry.
fn entry_kind(r: &Record) -> Option<EntryKind> {
    r.live()
        .then(|| DirEntry::decode(&r.value).map(|e| e.kind))
        .flatten()
}

struct PutWork<'p> {
    target: Target,
    /// Chunks sent before the target's reads are answered: at most one
    /// window, so a put the target refuses wastes little.
    window: usize,
    input: Box<dyn Read>,
    source: &'p str,
    chunk_size: usize,
    /// `None` once the input ended and the tree was closed.
    tree: Option<TreeBuilder>,
    /// Index chunks the tree emitted, still to write.
    index: VecDeque<(ChunkId, Vec<u8>)>,
    root: Option<(Option<ChunkId>, u8)>,
    chunks: u64,
    size: u64,
    bar: ProgressBar,
    /// How often the chunks written so far are marked again for GC: every
    /// half round, so none is reclaimed before the file record names it.
    refresh_every: std::time::Duration,
    refreshed: Instant,
    /// Marks of the latest refresh still to send.
    marks: VecDeque<(ChunkId, u8)>,
    /// Index chunks sent but not yet stored: a mark reaches the children
    /// of an index chunk only once it is stored, so a refresh waits for
    /// these (and for those still queued in `index`).
    index_in_flight: usize,
}

enum PutJob {
    /// Read the target's record `i`.
    Check(usize),
    Chunk(ChunkJob),
    /// Mark a subtree written so far for GC.
    Mark(ChunkId, u8),
}

struct ChunkJob {
    id: ChunkId,
    data: Vec<u8>,
    /// File bytes it carries (0 for an index chunk).
    file_bytes: u64,
    index: bool,
}

impl Work for PutWork<'_> {
    type Job = PutJob;

    fn next(&mut self) -> Result<Option<PutJob>> {
        let t = &mut self.target;
        if t.sent < t.keys.len() {
            t.sent += 1;
            return Ok(Some(PutJob::Check(t.sent - 1)));
        }
        if !t.known() && self.chunks as usize >= self.window {
            return Ok(None);
        }
        if self.marks.is_empty()
            && self.index.is_empty()
            && self.index_in_flight == 0
            && self.refreshed.elapsed() >= self.refresh_every
            && let Some(tree) = &self.tree
        {
            self.marks.extend(tree.cover());
            self.refreshed = Instant::now();
        }
        if let Some((id, depth)) = self.marks.pop_front() {
            return Ok(Some(PutJob::Mark(id, depth)));
        }
        let chunk = self.next_chunk()?;
        if chunk.as_ref().is_some_and(|c| c.index) {
            self.index_in_flight += 1;
        }
        Ok(chunk.map(PutJob::Chunk))
    }

    fn request<'a>(&'a self, job: &'a PutJob) -> Request<'a> {
        match job {
            PutJob::Check(i) => Request::RecordRead {
                key: &self.target.keys[*i],
            },
            PutJob::Chunk(c) => Request::ChunkWrite { data: &c.data },
            PutJob::Mark(id, depth) => Request::ChunkMark {
                id: *id,
                depth: *depth,
            },
        }
    }

    fn done(&mut self, job: PutJob, reply: Reply) -> Result<()> {
        match (job, reply.response) {
            (PutJob::Check(i), Response::Record { version, tombstone }) => {
                let t = &mut self.target;
                t.records[i] = Some(Record {
                    version,
                    tombstone,
                    value: reply.data,
                });
                // A refused put stops here, before more of its chunks go out.
                if t.known()
                    && let Err(e) = t.verdict()
                {
                    t.refusal = Some(e);
                    bail!("refused");
                }
                Ok(())
            }
            (PutJob::Chunk(c), Response::ChunkWritten { id, .. }) if id == c.id => {
                self.bar.inc(c.file_bytes);
                if c.index {
                    self.index_in_flight -= 1;
                }
                Ok(())
            }
            (PutJob::Mark(..), Response::Stored) => Ok(()),
            (PutJob::Mark(..), other) => bail!("the node answered a chunk mark with {other:?}"),
            (PutJob::Check(_), other) => bail!("the node answered a record read with {other:?}"),
            (PutJob::Chunk(_), other) => bail!("the node answered a chunk write with {other:?}"),
        }
    }

    fn failed(&mut self, job: PutJob, failure: OpFailure) -> Result<()> {
        let access = match job {
            PutJob::Check(_) => Access::Read,
            PutJob::Chunk(_) | PutJob::Mark(..) => Access::Write,
        };
        Err(explain(failure, access))
    }
}

impl PutWork<'_> {
    /// The next chunk to write: a pending index chunk, else the next data
    /// chunk of the input (closing the tree at its end).
    fn next_chunk(&mut self) -> Result<Option<ChunkJob>> {
        if let Some((id, data)) = self.index.pop_front() {
            return Ok(Some(ChunkJob {
                id,
                data,
                file_bytes: 0,
                index: true,
            }));
        }
        let PutWork {
            input,
            source,
            chunk_size,
            tree,
            index,
            root,
            chunks,
            size,
            ..
        } = self;
        let Some(builder) = tree.as_mut() else {
            return Ok(None);
        };
        let mut data = vec![0u8; *chunk_size];
        let n = read_full(input, &mut data).with_context(|| format!("cannot read {source}"))?;
        let mut emit = |id: ChunkId, bytes: &[u8]| index.push_back((id, bytes.to_vec()));
        if n == 0 {
            if let Some(builder) = tree.take() {
                *root = Some(builder.finish(&mut emit));
            }
            return Ok(index.pop_front().map(|(id, data)| ChunkJob {
                id,
                data,
                file_bytes: 0,
                index: true,
            }));
        }
        data.truncate(n);
        let id = ChunkId::of(&data);
        builder
            .push(id, &mut emit)
            .map_err(|_| anyhow!("the file is too large for one chunk tree"))?;
        *chunks += 1;
        *size += n as u64;
        Ok(Some(ChunkJob {
            id,
            data,
            file_bytes: n as u64,
            index: false,
        }))
    }
}

/// Fills `buf` from `input` unless it ends first; the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
