//! `shoal fs`: put, get, ls, stat and rm, run as `docs/fs.md` describes
//! the client's side of the file system.
//!
//! Every command asks its contact node, which coordinates the replicas.
//! Chunk transfers keep [`WINDOW`] requests in flight through [`drive`];
//! records are read and written one operation (or one small batch) at a
//! time.

mod get;
mod ls;
mod put;
mod stat;

pub use get::{get, get_to};
pub use ls::{list, ls};
pub use put::{Source, put, put_from};
pub use stat::{stat, stat_of};

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use shoal_core::fs::{FileMeta, FsPath, MAX_PATH, PathError};
use shoal_core::node::{OpFailure, Request, Response};
use shoal_core::repl::{self, Hlc, MAX_STORE_KEY, RecordKey};

use crate::UsageError;
use crate::client::{Client, ClientConfig, Reply};
use crate::drive::{Access, WINDOW, Work, drive, explain};

/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_MIN: u64 = 4 << 20;

// ---- paths ----
/// A checked remote path: `/` followed by names (see [`FsPath`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote(String);

impl Remote {
    /// A file's path, from the command line: made absolute, checked, and
    /// never the root.
    pub fn file(arg: OsString) -> Result<Remote, UsageError> {
        let r = Remote::parse(arg, false)?;
        if r.path().is_root() {
            return Err(UsageError(format!(
                "invalid path \"/\": {}",
                PathError::Root
            )));
        }
        Ok(r)
    }

    /// A directory's path: like [`Remote::file`], but `/` is allowed and a
    /// trailing `/` is dropped.
    pub fn dir(arg: OsString) -> Result<Remote, UsageError> {
        Remote::parse(arg, true)
    }

    fn parse(arg: OsString, dir: bool) -> Result<Remote, UsageError> {
        let text = arg.into_string().map_err(|raw| {
            UsageError(format!(
                "invalid path {:?}: paths must be valid UTF-8",
                raw.to_string_lossy()
            ))
        })?;
        if text.is_empty() {
            return Err(UsageError(format!(
                "invalid path \"\": {}",
                PathError::Empty
            )));
        }
        let mut path = if text.starts_with('/') {
            text
        } else {
            format!("/{text}")
        };
        if dir && path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        match FsPath::new(&path) {
            Ok(_) => Ok(Remote(path)),
            Err(e) => Err(UsageError(format!("invalid path {path:?}: {e}"))),
        }
    }

    fn path(&self) -> FsPath<'_> {
        // Checked when made.
        FsPath::new(&self.0).unwrap_or(FsPath::ROOT)
    }

    /// The parent directory and the last name; `None` for the root.
    fn split(&self) -> Option<(FsPath<'_>, &str)> {
        self.path().split()
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The store key of a record.
fn store_key(key: RecordKey<'_>) -> Result<Vec<u8>> {
    let mut buf = [0u8; MAX_STORE_KEY];
    let n = key.encode(&mut buf).ok_or_else(|| {
        anyhow!(
            "a name in the path is longer than {} bytes",
            repl::MAX_SUFFIX
        )
    })?;
    Ok(buf[..n].to_vec())
}

fn file_key(path: FsPath<'_>) -> Result<Vec<u8>> {
    let mut buf = [0u8; MAX_PATH + 1];
    store_key(shoal_core::fs::file_key(path, &mut buf))
}

fn entry_key(dir: FsPath<'_>, name: &str) -> Result<Vec<u8>> {
    let mut buf = [0u8; MAX_PATH + 1];
    store_key(shoal_core::fs::entry_key(dir, name, &mut buf))
}

/// The directories above `path`, innermost first, each with its parent
/// and name: `/a/b/c` gives `(/a, b, /a/b)`, then `(/, a, /a)`.
fn ancestors(path: FsPath<'_>) -> Vec<(FsPath<'_>, &str, FsPath<'_>)> {
    let mut out = Vec::new();
    let mut dir = path.split().map(|(d, _)| d);
    while let Some(d) = dir {
        match d.split() {
            Some((parent, name)) => {
                out.push((parent, name, d));
                dir = Some(parent);
            }
            None => break,
        }
    }
    out
}

// ---- one-off requests ----
/// A record as read: [`Hlc::ZERO`] when no replica had it.
#[derive(Clone, Debug)]
struct Record {
    version: Hlc,
    tombstone: bool,
    value: Vec<u8>,
}

impl Record {
    /// Neither absent nor removed.
    fn live(&self) -> bool {
        self.version != Hlc::ZERO && !self.tombstone
    }
}

/// Requests sent all at once, each retried as [`drive`] does.
struct Batch<'r> {
    requests: &'r [Request<'r>],
    next: usize,
    replies: Vec<Option<Reply>>,
    access: Access,
}

impl Work for Batch<'_> {
    type Job = usize;

    fn next(&mut self) -> Result<Option<usize>> {
        let i = self.next;
        if i >= self.requests.len() {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(i))
    }

    fn request<'a>(&'a self, job: &'a usize) -> Request<'a> {
        self.requests[*job]
    }

    fn done(&mut self, job: usize, reply: Reply) -> Result<()> {
        if let Response::Error(e) = reply.response {
            return Err(explain(OpFailure::Remote(e), self.access));
        }
        self.replies[job] = Some(reply);
        Ok(())
    }

    fn failed(&mut self, _: usize, failure: OpFailure) -> Result<()> {
        Err(explain(failure, self.access))
    }
}

/// Sends `requests` together and returns their replies in order.
fn batch(client: &mut Client, requests: &[Request<'_>], access: Access) -> Result<Vec<Reply>> {
    let mut work = Batch {
        requests,
        next: 0,
        replies: vec![None; requests.len()],
        access,
    };
    drive(client, &mut work, WINDOW)?;
    work.replies
        .into_iter()
        .map(|r| r.ok_or_else(|| anyhow!("a request went unanswered")))
        .collect()
}

fn call(client: &mut Client, request: Request<'_>, access: Access) -> Result<Reply> {
    let mut replies = batch(client, &[request], access)?;
    replies
        .pop()
        .ok_or_else(|| anyhow!("a request went unanswered"))
}

/// The contact's file-system settings.
#[derive(Clone, Copy, Debug)]
pub struct Info {
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Replicas.
    pub n: u8,
    /// Read quorum.
    pub r: u8,
    /// Length of a GC round: chunks no file record names yet are kept for
    /// a few rounds, so a put marks its chunks again every half round.
    pub gc_round: std::time::Duration,
}

/// Asks the contact for its file-system settings.
pub fn info(client: &mut Client) -> Result<Info> {
    // Asked once per connection: a put of many small files would otherwise
    // spend a round trip of each on it.
    if let Some(info) = client.fs_info {
        return Ok(info);
    }
    match call(client, Request::FsInfo, Access::Read)?.response {
        Response::FsInfo {
            chunk_size,
            n,
            r,
            gc_round_ms,
            ..
        } => {
            if !shoal_core::fs::CHUNK_SIZES.contains(&chunk_size) {
                bail!("the node asks for chunks of {chunk_size} bytes, which this client refuses");
            }
            let info = Info {
                chunk_size,
                n,
                r,
                gc_round: std::time::Duration::from_millis(gc_round_ms.max(1)),
            };
            client.fs_info = Some(info);
            Ok(info)
        }
        other => bail!("the node answered FsInfo with {other:?}"),
    }
}

fn read_records(client: &mut Client, keys: &[Vec<u8>]) -> Result<Vec<Record>> {
    let requests: Vec<Request<'_>> = keys.iter().map(|key| Request::RecordRead { key }).collect();
    batch(client, &requests, Access::Read)?
        .into_iter()
        .map(|reply| match reply.response {
            Response::Record { version, tombstone } => Ok(Record {
                version,
                tombstone,
                value: reply.data,
            }),
            other => bail!("the node answered a record read with {other:?}"),
        })
        .collect()
}

fn read_record(client: &mut Client, key: &[u8]) -> Result<Record> {
    let mut r = read_records(client, &[key.to_vec()])?;
    r.pop()
        .ok_or_else(|| anyhow!("a record read went unanswered"))
}

/// Writes records together; the version each was written under.
fn write_records(client: &mut Client, writes: &[Request<'_>]) -> Result<Vec<Hlc>> {
    batch(client, writes, Access::Write)?
        .into_iter()
        .map(|reply| match reply.response {
            Response::RecordWritten { version } => Ok(version),
            other => bail!("the node answered a record write with {other:?}"),
        })
        .collect()
}

fn write_record(client: &mut Client, write: Request<'_>) -> Result<Hlc> {
    let mut v = write_records(client, &[write])?;
    v.pop()
        .ok_or_else(|| anyhow!("a record write went unanswered"))
}

/// The file record of `path`, or "no such file".
fn file_meta(client: &mut Client, remote: &Remote) -> Result<(Record, FileMeta)> {
    let record = read_record(client, &file_key(remote.path())?)?;
    if !record.live() {
        bail!("no such file: {remote}");
    }
    let meta = FileMeta::decode(&record.value)
        .ok_or_else(|| anyhow!("the file record of {remote} is damaged: it does not parse"))?;
    Ok((record, meta))
}

// ---- progress ----
/// A progress bar on stderr when it is a terminal and the transfer is
/// large (or of unknown size); hidden otherwise.
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() || len.is_some_and(|l| l < PROGRESS_MIN) {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(l) => (
            ProgressBar::with_draw_target(Some(l), ProgressDrawTarget::stderr()),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar.with_finish(ProgressFinish::AndClear)
}

// ---- rm ----
/// `shoal fs rm REMOTE`.
pub fn rm(config: &ClientConfig, remote: &Remote) -> Result<()> {
    let (dir, name) = remote
        .split()
        .ok_or_else(|| anyhow!("invalid path \"/\": {}", PathError::Root))?;
    let mut client = Client::connect(config)?;
    let key = file_key(remote.path())?;
    let record = read_record(&mut client, &key)?;
    if !record.live() {
        bail!("no such file: {remote}");
    }
    let version = write_record(
        &mut client,
        Request::RecordWrite {
            key: &key,
            after: record.version,
            exact: false,
            tombstone: true,
            value: &[],
        },
    )
    .with_context(|| format!("cannot remove {remote}"))?;
    let key = entry_key(dir, name)?;
    write_record(
        &mut client,
        Request::RecordWrite {
            key: &key,
            after: version,
            exact: true,
            tombstone: true,
            value: &[],
        },
    )
    .with_context(|| {
        format!(
            "removed {remote} but not its entry in {}; rm it again",
            dir.as_str()
        )
    })?;
    Ok(())
}

// ---- formatting ----
fn now_ms() -> u64 {
    system_ms(SystemTime::now())
}

fn system_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Year, month, day, hour, minute, second and millisecond (UTC) of
/// `ms` after the Unix epoch.
fn civil(ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        (ms % 1000) as u32,
    )
}

/// `2024-05-01T12:34:56.789Z`.
fn utc(ms: u64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// `2024-05-01 12:34`, UTC.
fn utc_minutes(ms: u64) -> String {
    let (y, mo, d, h, mi, _, _) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths() {
        let ok = |s: &str| Remote::file(OsString::from(s)).unwrap().0;
        assert_eq!(ok("a/b.txt"), "/a/b.txt");
        assert_eq!(ok("/a/b.txt"), "/a/b.txt");
        let err = |s: &str| Remote::file(OsString::from(s)).unwrap_err().0;
        assert!(err("").contains("the path is empty"), "{}", err(""));
        assert!(err("/a/../b").contains("'..'"), "{}", err("/a/../b"));
        assert!(err("/").contains("is a directory"), "{}", err("/"));
        assert!(err("a//b").contains("empty"));
        assert_eq!(Remote::dir(OsString::from("/")).unwrap().0, "/");
        assert_eq!(Remote::dir(OsString::from("docs/")).unwrap().0, "/docs");
        assert!(Remote::dir(OsString::from("")).is_err());
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'a', 0xff]);
        assert!(Remote::file(bad).unwrap_err().0.contains("UTF-8"));
    }

    #[test]
    fn ancestors_innermost_first() {
        let p = FsPath::new("/a/b/c").unwrap();
        let up: Vec<(&str, &str, &str)> = ancestors(p)
            .iter()
            .map(|(d, n, full)| (d.as_str(), *n, full.as_str()))
            .collect();
        assert_eq!(up, vec![("/a", "b", "/a/b"), ("/", "a", "/a")]);
        assert!(ancestors(FsPath::new("/x").unwrap()).is_empty());
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_minutes(1_700_000_000_000), "2023-11-14 22:13");
    }

    #[test]
    fn sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(50 << 20), "50.0 MiB");
    }
}
