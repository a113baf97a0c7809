//! `shoal fs stat`: a file's record and where each of its chunks is held.

use std::io::{self, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use shoal_core::NodeId;
use shoal_core::fs::{ChunkId, Step, TreeWalk};
use shoal_core::node::{OpFailure, RemoteError, Request, Response};

use super::{Remote, file_meta, human, utc};
use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{Access, WINDOW, Work, drive, explain};
use crate::members;

#[derive(Serialize)]
struct StatReport {
    path: String,
    size: u64,
    chunk_size: u32,
    chunks: u64,
    depth: u8,
    root: Option<String>,
    version: VersionReport,
    mtime_ms: u64,
    mtime: String,
    data_chunks: Vec<ChunkReport>,
}

#[derive(Serialize)]
struct VersionReport {
    time: u64,
    millis: u64,
    logical: u16,
    node: String,
}

#[derive(Serialize)]
struct ChunkReport {
    index: u64,
    id: String,
    holders: Vec<HolderReport>,
}

#[derive(Serialize)]
struct HolderReport {
    id: String,
    name: String,
}

/// `shoal fs stat REMOTE`.
pub fn stat(config: &ClientConfig, remote: &Remote, json: bool) -> Result<()> {
    let mut client = Client::connect(config)?;
    let (record, meta) = file_meta(&mut client, remote)?;
    let mut work = StatWork {
        walk: TreeWalk::new(&meta),
        remote,
        index_pending: false,
        walked: false,
        ids: Vec::new(),
        holders: Vec::new(),
    };
    drive(&mut client, &mut work, WINDOW).with_context(|| format!("cannot stat {remote}"))?;
    let records = client.members().unwrap_or_default();
    let report = StatReport {
        path: remote.to_string(),
        size: meta.size,
        chunk_size: meta.chunk_size,
        chunks: meta.chunks,
        depth: meta.depth,
        root: meta.root.map(|r| r.to_string()),
        version: VersionReport {
            time: record.version.time,
            millis: record.version.millis(),
            logical: (record.version.time & 0xffff) as u16,
            node: record.version.node.to_string(),
        },
        mtime_ms: meta.mtime_ms,
        mtime: utc(meta.mtime_ms),
        data_chunks: work
            .ids
            .iter()
            .zip(&work.holders)
            .enumerate()
            .map(|(i, (id, holders))| ChunkReport {
                index: i as u64,
                id: id.to_string(),
                holders: holders
                    .iter()
                    .map(|n| HolderReport {
                        id: n.to_string(),
                        name: members::name_of(&records, *n),
                    })
                    .collect(),
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{}", report.path)?;
    writeln!(
        out,
        "  size        {} bytes ({})",
        meta.size,
        human(meta.size)
    )?;
    writeln!(out, "  chunk size  {} bytes", meta.chunk_size)?;
    writeln!(
        out,
        "  chunks      {} data, tree depth {}{}",
        meta.chunks,
        meta.depth,
        report
            .root
            .as_ref()
            .map_or(String::new(), |r| format!(", root {}", &r[..16]))
    )?;
    writeln!(
        out,
        "  version     {}.{} by {}",
        utc(report.version.millis),
        report.version.logical,
        report.version.node
    )?;
    writeln!(out, "  mtime       {}", report.mtime)?;
    if !report.data_chunks.is_empty() {
        writeln!(out, "  {:>8}  {:<16}  holders", "chunk", "id")?;
    }
    for c in &report.data_chunks {
        let names: Vec<&str> = c.holders.iter().map(|h| h.name.as_str()).collect();
        let names = if names.is_empty() {
            "none found".to_string()
        } else {
            names.join(" ")
        };
        writeln!(out, "  {:>8}  {:<16}  {names}", c.index, &c.id[..16])?;
    }
    Ok(())
}

struct StatWork<'s> {
    walk: TreeWalk,
    remote: &'s Remote,
    index_pending: bool,
    walked: bool,
    ids: Vec<ChunkId>,
    /// Per data chunk, the nodes that hold a good copy.
    holders: Vec<Vec<NodeId>>,
}

enum StatJob {
    Index(ChunkId),
    Locate(usize),
}

impl Work for StatWork<'_> {
    type Job = StatJob;

    fn next(&mut self) -> Result<Option<StatJob>> {
        if self.index_pending || self.walked {
            return Ok(None);
        }
        match self.walk.step() {
            Step::Done => {
                self.walked = true;
                Ok(None)
            }
            Step::NeedIndex(id) => {
                self.index_pending = true;
                Ok(Some(StatJob::Index(id)))
            }
            Step::Data(id) => {
                self.ids.push(id);
                self.holders.push(Vec::new());
                Ok(Some(StatJob::Locate(self.ids.len() - 1)))
            }
        }
    }

    fn request<'a>(&'a self, job: &'a StatJob) -> Request<'a> {
        match job {
            StatJob::Index(id) => Request::ChunkRead { id: *id },
            StatJob::Locate(i) => Request::ChunkLocate { id: self.ids[*i] },
        }
    }

    fn done(&mut self, job: StatJob, reply: Reply) -> Result<()> {
        match (job, reply.response) {
            (StatJob::Index(id), Response::Chunk { .. }) => {
                if !id.verifies(&reply.data) {
                    bail!("index chunk {id} arrived damaged");
                }
                self.walk
                    .feed(&reply.data)
                    .map_err(|_| anyhow!("index chunk {id} of {} is malformed", self.remote))?;
                self.index_pending = false;
            }
            (StatJob::Locate(i), Response::Holders { nodes }) => {
                self.holders[i] = nodes
                    .iter()
                    .filter(|(_, has)| *has == Some(true))
                    .map(|(n, _)| *n)
                    .collect();
            }
            (_, other) => bail!("unexpected answer {other:?}"),
        }
        Ok(())
    }

    fn failed(&mut self, job: StatJob, failure: OpFailure) -> Result<()> {
        match (job, failure) {
            (StatJob::Index(id), OpFailure::Remote(RemoteError::NotFound)) => Err(anyhow!(
                "index chunk {id} is on no replica that answered: the file is damaged, or the \
                 nodes holding it are down"
            )),
            (_, f) => Err(explain(f, Access::Read)),
        }
    }
}
