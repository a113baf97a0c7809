//! `shoal fs stat`: a file's record and where each of its chunks is held.

use std::io::{self, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use shoal_core::NodeId;
use shoal_core::fs::{ChunkId, Step, TreeWalk};
use shoal_core::member::Record;
use shoal_core::node::{OpFailure, RemoteError, Request, Response};

use super::{Remote, file_meta, human, utc};
use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{Access, WINDOW, Work, drive, explain};
use crate::members;

/// What `stat` shows (and prints as JSON).
#[derive(Serialize)]
pub struct StatReport {
    /// The file's path.
    pub path: String,
    /// Its length in bytes.
    pub size: u64,
    /// The chunk size it was cut with.
    pub chunk_size: u32,
    /// Its data chunks.
    pub chunks: u64,
    /// The chunk tree's depth.
    pub depth: u8,
    /// The tree's root, in hex; none for an empty file.
    pub root: Option<String>,
    /// The file record's version.
    pub version: VersionReport,
    /// Modification time, ms since the Unix epoch.
    pub mtime_ms: u64,
    /// The same, as UTC text.
    pub mtime: String,
    /// Each data chunk, in file order.
    pub data_chunks: Vec<ChunkReport>,
    /// Each index chunk of the tree, in the order a walk reads them (the
    /// root first); none for a file of at most one chunk.
    pub index_chunks: Vec<ChunkReport>,
}

/// A record version (a hybrid logical clock reading).
#[derive(Serialize)]
pub struct VersionReport {
    /// The raw reading: milliseconds << 16 | logical counter.
    pub time: u64,
    /// Its wall-clock part.
    pub millis: u64,
    /// Its logical counter.
    pub logical: u16,
    /// The node that issued it.
    pub node: String,
}

/// One data or index chunk.
#[derive(Serialize)]
pub struct ChunkReport {
    /// Its position among the file's data chunks (or among its index
    /// chunks), from 0.
    pub index: u64,
    /// Its id, in hex.
    pub id: String,
    /// The nodes holding a good copy.
    pub holders: Vec<HolderReport>,
}

/// A node holding a chunk.
#[derive(Serialize)]
pub struct HolderReport {
    /// Its id.
    pub id: String,
    /// Its name, from the contact's member table (`?` if unknown).
    pub name: String,
}

/// `shoal fs stat REMOTE`.
pub fn stat(config: &ClientConfig, remote: &Remote, json: bool) -> Result<()> {
    let mut client = Client::connect(config)?;
    let report = stat_of(&mut client, remote)?;
    if json {
        writeln!(io::stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{}", report.path)?;
    writeln!(
        out,
        "  size        {} bytes ({})",
        report.size,
        human(report.size)
    )?;
    writeln!(out, "  chunk size  {} bytes", report.chunk_size)?;
    writeln!(
        out,
        "  chunks      {} data, tree depth {}{}",
        report.chunks,
        report.depth,
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
    let rows = (report.data_chunks.iter().map(|c| (c.index.to_string(), c))).chain(
        report
            .index_chunks
            .iter()
            .map(|c| (format!("i{}", c.index), c)),
    );
    for (label, c) in rows {
        let names: Vec<&str> = c.holders.iter().map(|h| h.name.as_str()).collect();
        let names = if names.is_empty() {
            "none found".to_string()
        } else {
            names.join(" ")
        };
        writeln!(out, "  {label:>8}  {:<16}  {names}", &c.id[..16])?;
    }
    Ok(())
}

/// `remote`'s record and the holders of each of its chunks.
pub fn stat_of(client: &mut Client, remote: &Remote) -> Result<StatReport> {
    let (record, meta) = file_meta(client, remote)?;
    let mut work = StatWork {
        walk: TreeWalk::new(&meta),
        remote,
        index_pending: false,
        walked: false,
        ids: Vec::new(),
        holders: Vec::new(),
        index_ids: Vec::new(),
        index_holders: Vec::new(),
        index_asked: 0,
    };
    drive(client, &mut work, WINDOW).with_context(|| format!("cannot stat {remote}"))?;
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
        data_chunks: chunk_reports(&work.ids, &work.holders, &records),
        index_chunks: chunk_reports(&work.index_ids, &work.index_holders, &records),
    };
    Ok(report)
}

fn chunk_reports(ids: &[ChunkId], holders: &[Vec<NodeId>], records: &[Record]) -> Vec<ChunkReport> {
    ids.iter()
        .zip(holders)
        .enumerate()
        .map(|(i, (id, holders))| ChunkReport {
            index: i as u64,
            id: id.to_string(),
            holders: holders
                .iter()
                .map(|n| HolderReport {
                    id: n.to_string(),
                    name: members::name_of(records, *n),
                })
                .collect(),
        })
        .collect()
}

struct StatWork<'s> {
    walk: TreeWalk,
    remote: &'s Remote,
    index_pending: bool,
    walked: bool,
    ids: Vec<ChunkId>,
    /// Per data chunk, the nodes that hold a good copy.
    holders: Vec<Vec<NodeId>>,
    /// The index chunks met so far, and who holds each.
    index_ids: Vec<ChunkId>,
    index_holders: Vec<Vec<NodeId>>,
    /// Index chunks whose locate was issued.
    index_asked: usize,
}

enum StatJob {
    Index(ChunkId),
    Locate(usize),
    LocateIndex(usize),
}

impl Work for StatWork<'_> {
    type Job = StatJob;

    fn next(&mut self) -> Result<Option<StatJob>> {
        if self.index_asked < self.index_ids.len() {
            self.index_asked += 1;
            return Ok(Some(StatJob::LocateIndex(self.index_asked - 1)));
        }
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
                self.index_ids.push(id);
                self.index_holders.push(Vec::new());
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
            StatJob::LocateIndex(i) => Request::ChunkLocate {
                id: self.index_ids[*i],
            },
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
                self.holders[i] = holding(&nodes);
            }
            (StatJob::LocateIndex(i), Response::Holders { nodes }) => {
                self.index_holders[i] = holding(&nodes);
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

/// The nodes of a locate answer that hold a good copy, in rank order.
fn holding(nodes: &[(NodeId, Option<bool>)]) -> Vec<NodeId> {
    nodes
        .iter()
        .filter(|(_, has)| *has == Some(true))
        .map(|(n, _)| *n)
        .collect()
}
