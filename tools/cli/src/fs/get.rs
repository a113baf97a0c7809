//! `shoal fs get`: walk a file's chunk tree and write its chunks in order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use shoal_core::fs::{ChunkId, FileMeta, PathError, Step, TreeWalk};
use shoal_core::node::{OpFailure, RemoteError, Request, Response};

use super::{Remote, file_meta, human, progress};
use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{Access, WINDOW, Work, chunk_window, drive, explain};

/// `shoal fs get REMOTE LOCAL`.
pub fn get(config: &ClientConfig, remote: &Remote, local: &Path) -> Result<()> {
    let started = Instant::now();
    let to_stdout = local.as_os_str() == "-";
    let dest = if !to_stdout && local.is_dir() {
        let (_, name) = remote
            .split()
            .ok_or_else(|| anyhow!("invalid path \"/\": {}", PathError::Root))?;
        local.join(name)
    } else {
        local.to_path_buf()
    };
    let mut client = Client::connect(config)?;
    let meta = get_to(&mut client, remote, &dest, to_stdout)?;
    if io::stderr().is_terminal() && !to_stdout {
        eprintln!(
            "get {remote}: {} in {:.1} s",
            human(meta.size),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Fetches `remote` through `client` into `dest` (or standard output),
/// and returns its record.
pub fn get_to(
    client: &mut Client,
    remote: &Remote,
    dest: &Path,
    to_stdout: bool,
) -> Result<FileMeta> {
    let (_, meta) = file_meta(client, remote)?;
    let mut sink = if to_stdout {
        Sink::Stdout(BufWriter::with_capacity(256 << 10, io::stdout().lock()))
    } else {
        Sink::file(dest)?
    };
    let bar = progress(Some(meta.size), &format!("get {remote}"));
    let mut work = GetWork {
        walk: TreeWalk::new(&meta),
        meta,
        remote,
        index_pending: false,
        walked: false,
        issued: 0,
        written_chunks: 0,
        written: 0,
        ready: BTreeMap::new(),
        out: sink.writer(),
        bar: bar.clone(),
    };
    drive(client, &mut work, chunk_window(meta.chunk_size))
        .with_context(|| format!("cannot get {remote}"))?;
    let (chunks, written) = (work.written_chunks, work.written);
    drop(work);
    if chunks != meta.chunks || written != meta.size {
        bail!(
            "cannot get {remote}: read {written} bytes in {chunks} chunks, but the file record \
             says {} bytes in {} chunks",
            meta.size,
            meta.chunks
        );
    }
    bar.finish_and_clear();
    sink.finish(meta.mtime_ms)?;
    Ok(meta)
}

/// Where `get` writes: stdout, or a temporary file beside the destination
/// that is renamed over it at the end and removed if the get fails.
enum Sink {
    Stdout(BufWriter<io::StdoutLock<'static>>),
    File {
        tmp: PathBuf,
        dest: PathBuf,
        file: Option<BufWriter<File>>,
    },
}

impl Sink {
    fn file(dest: &Path) -> Result<Sink> {
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow!("{} names no file", dest.display()))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".shoal-{}.part", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Sink::File {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(BufWriter::with_capacity(256 << 10, file)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { file, .. } => match file {
                Some(f) => f,
                None => unreachable!("a finished sink is not written"),
            },
        }
    }

    /// Flushes, and for a file sets its mtime and renames it into place.
    fn finish(mut self, mtime_ms: u64) -> Result<()> {
        match &mut self {
            Sink::Stdout(w) => w.flush().context("cannot write standard output"),
            Sink::File { tmp, dest, file } => {
                let Some(w) = file.take() else {
                    return Ok(());
                };
                let f = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                let _ = f.set_modified(UNIX_EPOCH + Duration::from_millis(mtime_ms));
                f.sync_all()
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                drop(f);
                std::fs::rename(&*tmp, &*dest)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                // Renamed: nothing left to remove.
                tmp.clear();
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { tmp, file, .. } = self {
            drop(file.take());
            if !tmp.as_os_str().is_empty() {
                let _ = std::fs::remove_file(&*tmp);
            }
        }
    }
}

struct GetWork<'g> {
    walk: TreeWalk,
    meta: FileMeta,
    remote: &'g Remote,
    /// An index chunk is being fetched: the walk waits for it.
    index_pending: bool,
    /// The walk is over.
    walked: bool,
    /// Data chunks asked for.
    issued: u64,
    /// Data chunks written out, in order.
    written_chunks: u64,
    written: u64,
    /// Chunks that arrived ahead of their turn.
    ready: BTreeMap<u64, Vec<u8>>,
    out: &'g mut dyn Write,
    bar: ProgressBar,
}

enum GetJob {
    Index(ChunkId),
    Data { seq: u64, id: ChunkId },
}

impl GetWork<'_> {
    /// The length data chunk `seq` must have.
    fn chunk_len(&self, seq: u64) -> u64 {
        let cs = u64::from(self.meta.chunk_size);
        if seq + 1 < self.meta.chunks {
            cs
        } else {
            self.meta.size - cs * (self.meta.chunks - 1)
        }
    }
}

impl Work for GetWork<'_> {
    type Job = GetJob;

    fn next(&mut self) -> Result<Option<GetJob>> {
        // Chunks are written in order; keep the ones waiting for their turn
        // to a couple of windows.
        if self.index_pending
            || self.walked
            || self.issued - self.written_chunks >= 2 * WINDOW as u64
        {
            return Ok(None);
        }
        match self.walk.step() {
            Step::Done => {
                self.walked = true;
                Ok(None)
            }
            Step::NeedIndex(id) => {
                self.index_pending = true;
                Ok(Some(GetJob::Index(id)))
            }
            Step::Data(id) => {
                let seq = self.issued;
                if seq >= self.meta.chunks {
                    bail!(
                        "the chunk tree of {} holds more chunks than its record says ({})",
                        self.remote,
                        self.meta.chunks
                    );
                }
                self.issued += 1;
                Ok(Some(GetJob::Data { seq, id }))
            }
        }
    }

    fn request<'a>(&'a self, job: &'a GetJob) -> Request<'a> {
        match job {
            GetJob::Index(id) | GetJob::Data { id, .. } => Request::ChunkRead { id: *id },
        }
    }

    fn done(&mut self, job: GetJob, reply: Reply) -> Result<()> {
        let Response::Chunk { .. } = reply.response else {
            bail!("the node answered a chunk read with {:?}", reply.response);
        };
        let (id, seq) = match job {
            GetJob::Index(id) => (id, None),
            GetJob::Data { seq, id } => (id, Some(seq)),
        };
        if !id.verifies(&reply.data) {
            bail!("chunk {id} arrived damaged: its bytes do not match its id");
        }
        let Some(seq) = seq else {
            self.walk
                .feed(&reply.data)
                .map_err(|_| anyhow!("index chunk {id} of {} is malformed", self.remote))?;
            self.index_pending = false;
            return Ok(());
        };
        let want = self.chunk_len(seq);
        if reply.data.len() as u64 != want {
            bail!(
                "chunk {seq} of {} holds {} bytes where the file record implies {want}",
                self.remote,
                reply.data.len()
            );
        }
        self.ready.insert(seq, reply.data);
        while let Some(data) = self.ready.remove(&self.written_chunks) {
            self.out.write_all(&data).context("cannot write the file")?;
            self.written_chunks += 1;
            self.written += data.len() as u64;
            self.bar.inc(data.len() as u64);
        }
        Ok(())
    }

    fn failed(&mut self, job: GetJob, failure: OpFailure) -> Result<()> {
        let (what, id) = match job {
            GetJob::Index(id) => ("an index chunk".to_string(), id),
            GetJob::Data { seq, id } => (format!("chunk {seq}"), id),
        };
        match failure {
            OpFailure::Remote(RemoteError::NotFound) => Err(anyhow!(
                "{what} ({id}) is on no replica that answered: the file is damaged, or the \
                 nodes holding it are down"
            )),
            OpFailure::Remote(RemoteError::Corrupt) => Err(anyhow!(
                "every copy of {what} ({id}) that was found is damaged"
            )),
            f => Err(explain(f, Access::Read)),
        }
    }
}
