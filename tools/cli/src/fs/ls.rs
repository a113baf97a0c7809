//! `shoal fs ls`: merge the replicas' pages of a directory.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use shoal_core::fs::{DirEntry, EntryKind, MAX_PATH};
use shoal_core::node::{OpFailure, RemoteError, Request, Response};
use shoal_core::repl::{self, Hlc, RecordKey};

use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{WINDOW, Work, drive};

/// How long `ls` waits for the other replicas once enough have answered.
const LS_GRACE: Duration = Duration::from_millis(250);
use super::{Remote, entry_key, info, read_record, store_key, utc_minutes};

/// One name in a listing.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// The name.
    pub name: String,
    /// `file` or `dir`.
    pub kind: &'static str,
    /// A file's size.
    pub size: u64,
    /// A file's modification time.
    pub mtime_ms: u64,
}

/// `shoal fs ls [DIR]`.
pub fn ls(config: &ClientConfig, dir: &Remote, json: bool) -> Result<()> {
    let mut client = Client::connect(config)?;
    let rows = list(&mut client, dir)?;
    if json {
        writeln!(io::stdout(), "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let mut out = io::stdout().lock();
    for r in &rows {
        let (size, mtime, slash) = match r.kind {
            "dir" => ("-".to_string(), "-".to_string(), "/"),
            _ => (r.size.to_string(), utc_minutes(r.mtime_ms), ""),
        };
        writeln!(out, "{size:>12}  {mtime:<16}  {}{slash}", r.name)?;
    }
    Ok(())
}

/// The names in `dir`, sorted; a file's path lists that file.
pub fn list(client: &mut Client, dir: &Remote) -> Result<Vec<Listed>> {
    let info = info(client)?;
    let mut buf = [0u8; MAX_PATH + 1];
    let prefix = store_key(RecordKey {
        pool: shoal_core::Pool::Meta,
        placement: dir.path().dir_placement(&mut buf),
        suffix: &[],
    })?;
    let asked = info.n.clamp(1, repl::MAX_REPLICAS as u8);
    let mut work = LsWork {
        prefix: &prefix,
        asked,
        started: 0,
        pages: VecDeque::new(),
        replicas: None,
        state: vec![Replica::Listing; usize::from(asked)],
        names: BTreeMap::new(),
        r: info.r,
        enough_at: None,
    };
    drive(client, &mut work, WINDOW).with_context(|| format!("cannot list {dir}"))?;
    let total = usize::from(work.replicas.unwrap_or(asked));
    let need = usize::from(work.r).clamp(1, total.max(1));
    let complete = work.complete();
    if complete < need {
        bail!(
            "cannot list {dir}: not enough live nodes to meet the read quorum ({complete} of \
             {need} replicas answered)"
        );
    }
    let mut rows: Vec<Listed> = work
        .names
        .into_iter()
        .filter(|(_, (_, tombstone, _))| !tombstone)
        .filter_map(|(name, (_, _, value))| {
            let entry = DirEntry::decode(&value)?;
            Some(Listed {
                name: String::from_utf8_lossy(&name).into_owned(),
                kind: match entry.kind {
                    EntryKind::File => "file",
                    EntryKind::Dir => "dir",
                },
                size: entry.size,
                mtime_ms: entry.mtime_ms,
            })
        })
        .collect();
    if rows.is_empty() && !dir.path().is_root() {
        // An empty listing: an empty directory, a file, or nothing at all.
        let (parent, name) = dir
            .split()
            .ok_or_else(|| anyhow!("the root has no parent"))?;
        let entry = read_record(client, &entry_key(parent, name)?)?;
        match entry
            .live()
            .then(|| DirEntry::decode(&entry.value))
            .flatten()
        {
            Some(DirEntry {
                kind: EntryKind::Dir,
                ..
            }) => {}
            Some(e) => rows.push(Listed {
                name: name.to_string(),
                kind: "file",
                size: e.size,
                mtime_ms: e.mtime_ms,
            }),
            None => bail!("no such directory: {dir}"),
        }
    }
    Ok(rows)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replica {
    Listing,
    Complete,
    /// Failed, or not a replica of the placement at all.
    Out,
}

struct LsWork<'p> {
    prefix: &'p [u8],
    /// Replicas asked for: the configured N.
    asked: u8,
    /// First pages sent.
    started: u8,
    /// Further pages to ask for: replica and the key to list after.
    pages: VecDeque<(u8, Vec<u8>)>,
    /// How many replicas the placement has, from the first answer.
    replicas: Option<u8>,
    state: Vec<Replica>,
    /// Newest version of each name: version, tombstone, value.
    names: BTreeMap<Vec<u8>, (Hlc, bool, Vec<u8>)>,
    r: u8,
    /// When enough replicas had answered.
    enough_at: Option<Instant>,
}

impl LsWork<'_> {
    fn complete(&self) -> usize {
        self.state
            .iter()
            .filter(|s| **s == Replica::Complete)
            .count()
    }

    fn note_progress(&mut self) {
        let total = usize::from(self.replicas.unwrap_or(self.asked));
        let need = usize::from(self.r).clamp(1, total.max(1));
        if self.enough_at.is_none() && self.complete() >= need {
            self.enough_at = Some(Instant::now());
        }
    }
}

impl Work for LsWork<'_> {
    type Job = (u8, Vec<u8>);

    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        if let Some(p) = self.pages.pop_front() {
            return Ok(Some(p));
        }
        let limit = self.replicas.unwrap_or(self.asked).min(self.asked);
        if self.started < limit {
            self.started += 1;
            return Ok(Some((self.started - 1, Vec::new())));
        }
        Ok(None)
    }

    fn request<'a>(&'a self, job: &'a (u8, Vec<u8>)) -> Request<'a> {
        Request::RecordList {
            prefix: self.prefix,
            after: &job.1,
            replica: job.0,
        }
    }

    fn done(&mut self, (replica, _): (u8, Vec<u8>), reply: Reply) -> Result<()> {
        let Response::Entries { replicas, more, .. } = reply.response else {
            bail!("the node answered a listing with {:?}", reply.response);
        };
        self.replicas = Some(replicas.min(self.asked));
        for i in usize::from(replicas)..self.state.len() {
            self.state[i] = Replica::Out;
        }
        let i = usize::from(replica);
        if i >= self.state.len() || self.state[i] != Replica::Listing {
            return Ok(());
        }
        let mut last = None;
        for entry in repl::page_entries(&reply.data) {
            let Some((suffix, stored)) = entry else {
                // A malformed page: this replica does not count.
                self.state[i] = Replica::Out;
                return Ok(());
            };
            let newer = self
                .names
                .get(suffix)
                .is_none_or(|(v, _, _)| stored.version > *v);
            if newer {
                self.names.insert(
                    suffix.to_vec(),
                    (stored.version, stored.tombstone, stored.value.to_vec()),
                );
            }
            last = Some(suffix);
        }
        match (more, last) {
            (true, Some(suffix)) => {
                let mut after = self.prefix.to_vec();
                after.extend_from_slice(suffix);
                self.pages.push_back((replica, after));
            }
            // `more` with an empty page cannot advance: stop here.
            (true, None) => self.state[i] = Replica::Out,
            (false, _) => self.state[i] = Replica::Complete,
        }
        self.note_progress();
        Ok(())
    }

    fn failed(&mut self, (replica, _): (u8, Vec<u8>), _: OpFailure) -> Result<()> {
        // Counted against the read quorum after the listing.
        if let Some(s) = self.state.get_mut(usize::from(replica)) {
            *s = Replica::Out;
        }
        self.pages.retain(|(r, _)| *r != replica);
        Ok(())
    }

    fn retry(&self, _: &(u8, Vec<u8>), failure: &OpFailure) -> bool {
        // A replica that does not exist, or that its contact cannot reach,
        // is left out rather than waited for.
        matches!(
            failure,
            OpFailure::Remote(RemoteError::Busy) | OpFailure::TimedOut
        )
    }

    fn stop(&self) -> bool {
        let settled = self.state.iter().all(|s| *s != Replica::Listing);
        self.enough_at
            .is_some_and(|at| settled || at.elapsed() >= LS_GRACE)
    }

    fn wake(&self) -> Option<Instant> {
        self.enough_at.map(|at| at + LS_GRACE)
    }
}
