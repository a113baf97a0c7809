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
    Record, Remote, ancestors, entry_key, file_key, human, info, now_ms, progress, read_records,
    system_ms, write_record, write_records,
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
    // The version the file has now: the new one is written after it, so
    // puts from different clients order as they happened even when the
    // nodes' clocks disagree.
    let current = check_put_target(client, remote, dir, name, &up)?;

    let bar = progress(source.len, &format!("put {remote}"));
    let mtime_ms = source.mtime_ms;
    let mut work = PutWork {
        input: source.input,
        source: &source.name,
        chunk_size: info.chunk_size as usize,
        tree: Some(TreeBuilder::new()),
        index: VecDeque::new(),
        root: None,
        chunks: 0,
        size: 0,
        bar: bar.clone(),
    };
    drive(client, &mut work, chunk_window(info.chunk_size))
        .with_context(|| format!("cannot put {remote} (nothing was changed)"))?;
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

    // The commit point: the file record.
    let mut value = [0u8; 128];
    let value = meta
        .encode(&mut value)
        .ok_or_else(|| anyhow!("the file record does not encode"))?;
    let key = file_key(remote.path())?;
    let version = write_record(
        client,
        Request::RecordWrite {
            key: &key,
            after: current,
            exact: false,
            tombstone: false,
            value,
        },
    )
    .with_context(|| format!("cannot put {remote}"))?;

    // Its entry, under the same version, then the directories above it.
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
    let keys = up
        .iter()
        .map(|(parent, name, _)| entry_key(*parent, name))
        .collect::<Result<Vec<_>>>()?;
    // The file's entry and its directories' entries at once.
    let mut writes = vec![Request::RecordWrite {
        key: &key,
        after: version,
        exact: true,
        tombstone: false,
        value,
    }];
    writes.extend(keys.iter().map(|key| Request::RecordWrite {
        key,
        after: Hlc::ZERO,
        exact: false,
        tombstone: false,
        value: dir_value,
    }));
    write_records(client, &writes).with_context(|| {
        format!(
            "wrote {remote} but could not list it in {}; put it again",
            dir.as_str()
        )
    })?;
    Ok(meta)
}

/// Refuses a put over a directory, or below a file; the file record's
/// current version otherwise.
fn check_put_target(
    client: &mut Client,
    remote: &Remote,
    dir: FsPath<'_>,
    name: &str,
    up: &[(FsPath<'_>, &str, FsPath<'_>)],
) -> Result<Hlc> {
    let mut keys = vec![file_key(remote.path())?, entry_key(dir, name)?];
    for (parent, name, _) in up {
        keys.push(entry_key(*parent, name)?);
    }
    let records = read_records(client, &keys)?;
    let kind = |r: &Record| {
        r.live()
            .then(|| DirEntry::decode(&r.value).map(|e| e.kind))
            .flatten()
    };
    if kind(&records[1]) == Some(EntryKind::Dir) {
        bail!("cannot put {remote}: it is a directory");
    }
    for ((_, _, path), r) in up.iter().zip(&records[2..]) {
        if kind(r) == Some(EntryKind::File) {
            bail!("cannot put {remote}: {} is a file", path.as_str());
        }
    }
    Ok(records[0].version)
}

struct PutWork<'p> {
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
}

struct PutJob {
    id: ChunkId,
    data: Vec<u8>,
    /// File bytes it carries (0 for an index chunk).
    file_bytes: u64,
}

impl Work for PutWork<'_> {
    type Job = PutJob;

    fn next(&mut self) -> Result<Option<PutJob>> {
        if let Some((id, data)) = self.index.pop_front() {
            return Ok(Some(PutJob {
                id,
                data,
                file_bytes: 0,
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
            return Ok(index.pop_front().map(|(id, data)| PutJob {
                id,
                data,
                file_bytes: 0,
            }));
        }
        data.truncate(n);
        let id = ChunkId::of(&data);
        builder
            .push(id, &mut emit)
            .map_err(|_| anyhow!("the file is too large for one chunk tree"))?;
        *chunks += 1;
        *size += n as u64;
        Ok(Some(PutJob {
            id,
            data,
            file_bytes: n as u64,
        }))
    }

    fn request<'a>(&'a self, job: &'a PutJob) -> Request<'a> {
        Request::ChunkWrite { data: &job.data }
    }

    fn done(&mut self, job: PutJob, reply: Reply) -> Result<()> {
        match reply.response {
            Response::ChunkWritten { id, .. } if id == job.id => {
                self.bar.inc(job.file_bytes);
                Ok(())
            }
            other => bail!("the node answered a chunk write with {other:?}"),
        }
    }

    fn failed(&mut self, _: PutJob, failure: OpFailure) -> Result<()> {
        Err(explain(failure, Access::Write))
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
