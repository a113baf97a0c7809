//! The durable store: [`Storage`] on a redb database in the data dir.
//!
//! One redb table per [`Space`], named by [`Space::name`].
//!
//! Group commit: puts and removes go into one redb write transaction, begun
//! at the first write after a flush and visible at once to `get` and
//! `next_key`, which read through it. [`Storage::flush`] commits it with
//! redb's `Immediate` durability (fsync before the commit returns), so one
//! sync covers every write since the previous flush. A flushed write
//! survives `kill -9` and power loss; one not yet flushed may be lost, which
//! is why the node acknowledges a write only after the flush that covers it.
//! Closing or dropping the store flushes too.
//!
//! redb locks the file while it is open: a second process on the same data
//! dir gets [`OpenError::Locked`].

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use shoal_core::store::{Space, Storage, StoreError, Usage};

/// The database file inside the data dir.
pub const FILE_NAME: &str = "shoal.redb";

/// Most memory redb caches pages in.
const CACHE_BYTES: usize = 64 << 20;

type Bytes = &'static [u8];

fn table(space: Space) -> TableDefinition<'static, Bytes, Bytes> {
    TableDefinition::new(space.name())
}

/// Why the store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process has this data dir open: stop it, or pick another `--data`.
    Locked(PathBuf),
    /// The data dir could not be created, written or read.
    Io {
        /// The data dir.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The database file could not be used (damaged, or from an incompatible version).
    Database {
        /// The data dir.
        dir: PathBuf,
        /// What redb said.
        source: redb::Error,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Locked(dir) => write!(
                f,
                "data dir {} is in use by another shoal-node (lock held)",
                dir.display()
            ),
            OpenError::Io { dir, source } => write!(
                f,
                "cannot use data dir {}: {}",
                dir.display(),
                crate::io_reason(source)
            ),
            OpenError::Database { dir, source } => write!(
                f,
                "cannot open the store {}: {source}",
                dir.join(FILE_NAME).display()
            ),
        }
    }
}

/// The message carries the cause, so there is no separate source.
impl std::error::Error for OpenError {}

impl OpenError {
    fn of(dir: &Path, e: impl Into<redb::Error>) -> OpenError {
        let dir = dir.to_owned();
        match e.into() {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                OpenError::Locked(dir)
            }
            redb::Error::Io(source) => OpenError::Io { dir, source },
            source => OpenError::Database { dir, source },
        }
    }
}

/// A [`Storage`] kept in `DIR/shoal.redb`.
///
/// Puts and removes go into one open write transaction, begun at the first
/// write after a flush; [`Storage::flush`] commits it. Reads look through
/// that transaction, so they see writes not yet flushed.
///
/// After an I/O error (a full disk, say) redb refuses every later operation
/// until the database is reopened; the store reopens it at once, so freeing
/// space (a `remove`) works and later writes can succeed again. A failure
/// inside the open transaction throws away every write since the last flush:
/// flushed data is untouched, and the next `flush` reports the loss, so no
/// write from that batch is ever taken as durable.
pub struct DiskStore {
    path: PathBuf,
    /// Every put and remove since the last flush. Before `db`: it keeps the
    /// database, and its file lock, open until it ends.
    txn: Option<WriteTransaction>,
    /// Whether `txn` changed anything (a commit with nothing in it would
    /// still sync).
    dirty: bool,
    /// Why writes made since the last flush were thrown away; the next flush
    /// returns it.
    lost: Option<StoreError>,
    /// `None` only while a reopen after a failure has itself failed; the
    /// next write tries again.
    db: Option<Database>,
    /// What the store holds, counting writes not yet flushed.
    usage: Usage,
    /// Most bytes of chunks and records it takes, if limited.
    quota: Option<u64>,
}

impl DiskStore {
    /// Opens the store in `dir`, creating the folder and the database when
    /// missing. Fails with [`OpenError::Locked`] while another process has it.
    pub fn open(dir: &Path) -> Result<DiskStore, OpenError> {
        let io_error = |source| OpenError::Io {
            dir: dir.to_owned(),
            source,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(io_error(io::ErrorKind::NotADirectory.into()));
        }
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let path = dir.join(FILE_NAME);
        let db = Self::open_file(&path).map_err(|e| OpenError::of(dir, e))?;
        let usage = Self::prepare(&db).map_err(|e| OpenError::of(dir, e))?;
        Ok(DiskStore {
            path,
            txn: None,
            dirty: false,
            lost: None,
            db: Some(db),
            usage,
            quota: None,
        })
    }

    /// Limits the bytes (keys and values) the store holds: a chunk or record
    /// put that would go beyond it fails with [`StoreError::Full`], as on a
    /// full disk. The node's own small state (identity, GC marks) counts
    /// but is never refused. `None` lifts the limit.
    pub fn set_quota(&mut self, quota: Option<u64>) {
        self.quota = quota;
    }

    fn open_file(path: &Path) -> Result<Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
    }

    /// Creates every table, so reads never meet a missing one, and totals
    /// what they hold.
    fn prepare(db: &Database) -> Result<Usage, redb::Error> {
        let txn = db.begin_write()?;
        for space in Space::ALL {
            txn.open_table(table(space))?;
        }
        txn.commit()?;
        Self::measure(db)
    }

    /// Totals what the committed tables hold.
    fn measure(db: &Database) -> Result<Usage, redb::Error> {
        let txn = db.begin_read()?;
        let mut usage = Usage::default();
        for space in Space::ALL {
            let t = txn.open_table(table(space))?;
            usage.bytes += t.stats()?.stored_bytes();
            usage.entries += t.len()?;
        }
        Ok(usage)
    }

    /// Flushes, then closes the database cleanly (the next open skips
    /// recovery). A failed flush is reported after the close.
    pub fn close(mut self) -> Result<(), StoreError> {
        let flushed = self.flush();
        let closed = match self.db.take() {
            Some(db) => db.close().map_err(store_error),
            None => Ok(()),
        };
        flushed.and(closed)
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or(StoreError::Io)
    }

    /// Runs `f` in the open write transaction, beginning one if there is
    /// none; a failure goes through [`DiskStore::failed`].
    fn write<R>(
        &mut self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, StoreError> {
        if self.db.is_none() {
            self.reopen();
        }
        let txn = match &self.txn {
            Some(txn) => txn,
            None => match self.db()?.begin_write() {
                // Immediate durability (redb's default): the commit in
                // `flush` returns only once the data is synced.
                Ok(txn) => self.txn.insert(txn),
                Err(e) => return Err(self.failed(e.into())),
            },
        };
        f(txn).map_err(|e| self.failed(e))
    }

    /// Handles a failed write: unless the open transaction is known to be
    /// intact, throws it away (noting the loss for the next flush), reopens
    /// the database after an I/O error, and totals the usage afresh, since
    /// the writes it counted are gone.
    fn failed(&mut self, e: redb::Error) -> StoreError {
        // Refused before anything changed: the transaction is still good.
        let intact = matches!(e, redb::Error::ValueTooLarge(_));
        let poisoned = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
        let mapped = store_error(e);
        if intact {
            return mapped;
        }
        if self.txn.take().is_some() && std::mem::take(&mut self.dirty) {
            self.lost.get_or_insert(mapped);
        }
        if poisoned {
            self.reopen();
        } else if let Some(db) = &self.db
            && let Ok(usage) = Self::measure(db)
        {
            self.usage = usage;
        }
        mapped
    }

    fn reopen(&mut self) {
        // The open transaction and the old handle hold the file lock: both
        // must go first.
        if self.txn.take().is_some() && std::mem::take(&mut self.dirty) {
            self.lost.get_or_insert(StoreError::Io);
        }
        self.db = None;
        match Self::open_file(&self.path) {
            Ok(db) => {
                if let Ok(usage) = Self::measure(&db) {
                    self.usage = usage;
                }
                self.db = Some(db);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reopen the store; retrying at the next write")
            }
        }
    }
}

#[cfg(test)]
impl DiskStore {
    /// Closes the store as a crash would: writes not yet flushed are lost.
    fn abandon(mut self) {
        self.txn = None;
        self.dirty = false;
    }
}

/// Copies the value under `key` in `t` into `out`.
fn value_in(
    t: &impl ReadableTable<Bytes, Bytes>,
    key: &[u8],
    out: &mut [u8],
) -> Result<Option<usize>, StoreError> {
    let Some(value) = t.get(key).map_err(store_error)? else {
        return Ok(None);
    };
    let value = value.value();
    out.get_mut(..value.len())
        .ok_or(StoreError::BufferTooSmall)?
        .copy_from_slice(value);
    Ok(Some(value.len()))
}

/// Copies the smallest key in `t` with `prefix` that is above `after` into
/// `out`. Keys with a prefix are contiguous, so that key is the first at or
/// above the larger of `prefix` and just-above-`after`, if it has the prefix:
/// one range lookup, reading one entry.
fn next_key_in(
    t: &impl ReadableTable<Bytes, Bytes>,
    prefix: &[u8],
    after: Option<&[u8]>,
    out: &mut [u8],
) -> Result<Option<usize>, StoreError> {
    let from = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut range = t
        .range::<&[u8]>((from, Bound::Unbounded))
        .map_err(store_error)?;
    let Some(entry) = range.next() else {
        return Ok(None);
    };
    let (key, _) = entry.map_err(store_error)?;
    let key = key.value();
    if !key.starts_with(prefix) {
        return Ok(None);
    }
    out.get_mut(..key.len())
        .ok_or(StoreError::BufferTooSmall)?
        .copy_from_slice(key);
    Ok(Some(key.len()))
}

impl Storage for DiskStore {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        if let Some(txn) = &self.txn {
            let t = txn.open_table(table(space)).map_err(store_error)?;
            return value_in(&t, key, out);
        }
        let txn = self.db()?.begin_read().map_err(store_error)?;
        let t = txn.open_table(table(space)).map_err(store_error)?;
        value_in(&t, key, out)
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if let Some(quota) = self.quota
            && space != Space::Local
        {
            // Replacing a value frees the old one's room.
            let mut probe = [0u8; 0];
            let old = match self.get(space, key, &mut probe) {
                Ok(None) => 0,
                Ok(Some(n)) => (key.len() + n) as u64,
                Err(StoreError::BufferTooSmall) => {
                    let mut buf = vec![0u8; 64 << 10];
                    self.get(space, key, &mut buf)?
                        .map_or(0, |n| (key.len() + n) as u64)
                }
                Err(e) => return Err(e),
            };
            let after =
                self.usage.bytes - old.min(self.usage.bytes) + (key.len() + value.len()) as u64;
            if after > quota {
                return Err(StoreError::Full);
            }
        }
        let old = self.write(|txn| {
            Ok(txn
                .open_table(table(space))?
                .insert(key, value)?
                .map(|v| v.value().len()))
        })?;
        self.dirty = true;
        let added = (key.len() + value.len()) as u64;
        match old {
            Some(len) => {
                self.usage.bytes =
                    (self.usage.bytes + added).saturating_sub((key.len() + len) as u64)
            }
            None => {
                self.usage.bytes += added;
                self.usage.entries += 1;
            }
        }
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        let old = self.write(|txn| {
            Ok(txn
                .open_table(table(space))?
                .remove(key)?
                .map(|v| v.value().len()))
        })?;
        let Some(len) = old else {
            return Ok(false);
        };
        self.dirty = true;
        self.usage.bytes = self.usage.bytes.saturating_sub((key.len() + len) as u64);
        self.usage.entries = self.usage.entries.saturating_sub(1);
        Ok(true)
    }

    /// Commits the open transaction and syncs it to disk. Fails when it
    /// cannot, or when writes since the last flush were already thrown away
    /// after a failure; either way none of them is durable for sure.
    fn flush(&mut self) -> Result<(), StoreError> {
        let lost = self.lost.take();
        if let Some(txn) = self.txn.take() {
            let result = if std::mem::take(&mut self.dirty) {
                txn.commit().map_err(redb::Error::from)
            } else {
                // Nothing changed: let the transaction go without a sync.
                txn.abort().map_err(redb::Error::from)
            };
            // The transaction is gone, committed or not: `failed` only
            // reopens and totals the usage afresh.
            result.map_err(|e| self.failed(e))?;
        }
        lost.map_or(Ok(()), Err)
    }

    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        if let Some(txn) = &self.txn {
            let t = txn.open_table(table(space)).map_err(store_error)?;
            return next_key_in(&t, prefix, after, out);
        }
        let txn = self.db()?.begin_read().map_err(store_error)?;
        let t = txn.open_table(table(space)).map_err(store_error)?;
        next_key_in(&t, prefix, after, out)
    }

    fn usage(&self) -> Usage {
        Usage {
            capacity: self.quota,
            ..self.usage
        }
    }
}

/// Flushes what it can; writes a failed flush loses were never promised.
impl Drop for DiskStore {
    fn drop(&mut self) {
        if self.txn.is_some() {
            let _ = self.flush();
        }
    }
}

/// Maps a redb error to the store's: a full disk or quota is `Full`, a value
/// redb cannot hold is `TooLarge`, a failed checksum is `Corrupt`, anything
/// else `Io`. The details go to the log, since [`StoreError`] keeps none.
pub fn store_error(e: impl Into<redb::Error>) -> StoreError {
    let e = e.into();
    tracing::warn!(error = %e, "store operation failed");
    match &e {
        redb::Error::Io(io) => match io.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => StoreError::Full,
            _ => StoreError::Io,
        },
        redb::Error::ValueTooLarge(_) => StoreError::TooLarge,
        redb::Error::Corrupted(_) => StoreError::Corrupt,
        _ => StoreError::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_like_a_full_disk_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(dir.path()).unwrap();
        s.set_quota(Some(100));
        s.put(Space::Chunks, b"a", &[1; 60]).unwrap();
        assert_eq!(s.put(Space::Chunks, b"b", &[2; 60]), Err(StoreError::Full));
        // Replacing a value counts only the difference.
        s.put(Space::Chunks, b"a", &[3; 90]).unwrap();
        // The node's own state is never refused, but counts.
        s.put(Space::Local, b"identity", &[4; 20]).unwrap();
        assert_eq!(s.put(Space::Chunks, b"c", &[5; 1]), Err(StoreError::Full));
        s.flush().unwrap();
        let mut out = [0u8; 128];
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(90)));
        assert_eq!(s.get(Space::Chunks, b"b", &mut out), Ok(None));
        assert_eq!(s.usage().capacity, Some(100));
        s.remove(Space::Chunks, b"a").unwrap();
        s.put(Space::Chunks, b"b", &[2; 60]).unwrap();
    }

    #[test]
    fn put_get_remove_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(dir.path()).unwrap();
        let mut out = [0u8; 16];
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(None));
        s.put(Space::Records, b"a", b"one").unwrap();
        s.put(Space::Chunks, b"a", b"two").unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"one");
        s.put(Space::Records, b"a", b"three").unwrap();
        assert_eq!(s.usage().bytes, 6 + 4);
        assert_eq!(s.usage().entries, 2);
        assert_eq!(
            s.get(Space::Records, b"a", &mut [0u8; 2]),
            Err(StoreError::BufferTooSmall)
        );
        assert_eq!(s.remove(Space::Records, b"a"), Ok(true));
        assert_eq!(s.remove(Space::Records, b"a"), Ok(false));
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(3)));
        assert_eq!(s.usage().bytes, 4);
        assert_eq!(s.usage().entries, 1);
        s.close().unwrap();

        let s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"two");
        assert_eq!(
            s.usage(),
            Usage {
                bytes: 4,
                entries: 1,
                capacity: None
            }
        );
    }

    /// Walks `prefix` in `space` with `next_key`, from `after`.
    fn walk(s: &DiskStore, space: Space, prefix: &[u8], after: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut out = [0u8; 16];
        let mut seen = Vec::new();
        let mut after = after.map(<[u8]>::to_vec);
        while let Some(n) = s
            .next_key(space, prefix, after.as_deref(), &mut out)
            .unwrap()
        {
            seen.push(out[..n].to_vec());
            after = Some(out[..n].to_vec());
        }
        seen
    }

    fn keys(keys: &[&[u8]]) -> Vec<Vec<u8>> {
        keys.iter().map(|k| k.to_vec()).collect()
    }

    #[test]
    fn next_key_walks_a_prefix_in_order_over_flushed_and_unflushed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(dir.path()).unwrap();
        for k in [&b"d/b"[..], b"d/d", b"c", b"e"] {
            s.put(Space::Records, k, b"v").unwrap();
        }
        s.flush().unwrap();
        // Unflushed: one added inside the prefix, one flushed key removed,
        // one key just past the prefix, and one in another space.
        s.put(Space::Records, b"d/a", b"v").unwrap();
        s.put(Space::Records, b"d/c\xff", b"v").unwrap();
        s.remove(Space::Records, b"d/d").unwrap();
        s.put(Space::Records, b"d0", b"v").unwrap();
        s.put(Space::Chunks, b"d/0", b"v").unwrap();
        let expect = keys(&[b"d/a", b"d/b", b"d/c\xff"]);
        assert_eq!(walk(&s, Space::Records, b"d/", None), expect);
        // `after` below the prefix starts at the prefix; inside it, past it.
        assert_eq!(walk(&s, Space::Records, b"d/", Some(b"a")), expect);
        assert_eq!(walk(&s, Space::Records, b"d/", Some(b"d/")), expect);
        assert_eq!(walk(&s, Space::Records, b"d/", Some(b"d/a")), expect[1..]);
        assert_eq!(walk(&s, Space::Records, b"d/", Some(b"d/c")), expect[2..]);
        assert_eq!(walk(&s, Space::Records, b"d/", Some(b"d0")), keys(&[]));
        assert_eq!(walk(&s, Space::Records, b"x", None), keys(&[]));
        assert_eq!(walk(&s, Space::Chunks, b"d/", None), keys(&[b"d/0"]));
        let all = keys(&[b"c", b"d/a", b"d/b", b"d/c\xff", b"d0", b"e"]);
        assert_eq!(walk(&s, Space::Records, b"", None), all);
        assert_eq!(
            s.next_key(Space::Records, b"d/", None, &mut [0u8; 2]),
            Err(StoreError::BufferTooSmall)
        );
        // The same once flushed, and after a reopen.
        s.flush().unwrap();
        assert_eq!(walk(&s, Space::Records, b"", None), all);
        s.close().unwrap();
        let s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(walk(&s, Space::Records, b"", None), all);
    }

    #[test]
    fn flushed_writes_survive_a_reopen_and_unflushed_ones_need_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = [0u8; 16];
        let mut s = DiskStore::open(dir.path()).unwrap();
        s.put(Space::Records, b"a", b"one").unwrap();
        s.put(Space::Records, b"b", b"two").unwrap();
        s.put(Space::Local, b"c", b"three").unwrap();
        s.flush().unwrap();
        s.remove(Space::Records, b"a").unwrap();
        s.put(Space::Records, b"b", b"changed").unwrap();
        s.put(Space::Records, b"d", b"four").unwrap();
        // Seen at once, before any flush.
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(None));
        assert_eq!(s.get(Space::Records, b"b", &mut out), Ok(Some(7)));
        assert_eq!(s.usage().entries, 3);
        s.abandon();

        // Only the flushed state came back.
        let mut s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"one");
        assert_eq!(s.get(Space::Records, b"b", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"two");
        assert_eq!(s.get(Space::Records, b"d", &mut out), Ok(None));
        assert_eq!(s.get(Space::Local, b"c", &mut out), Ok(Some(5)));
        assert_eq!(
            s.usage(),
            Usage {
                bytes: 4 + 4 + 6,
                entries: 3,
                capacity: None
            }
        );

        // A removal, once flushed, stays removed.
        assert_eq!(s.remove(Space::Records, b"a"), Ok(true));
        s.flush().unwrap();
        s.abandon();
        let s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(None));
        assert_eq!(s.get(Space::Records, b"b", &mut out), Ok(Some(3)));
        assert_eq!(s.usage().entries, 2);
    }

    #[test]
    fn flush_without_changes_and_drop_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(dir.path()).unwrap();
        s.flush().unwrap();
        // A removal that finds nothing opens a transaction that changed
        // nothing; the flush lets it go.
        assert_eq!(s.remove(Space::Records, b"none"), Ok(false));
        s.flush().unwrap();
        assert_eq!(s.usage(), Usage::default());
        s.put(Space::Records, b"k", b"v").unwrap();
        drop(s);
        let s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Records, b"k", &mut [0u8; 1]), Ok(Some(1)));
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DiskStore::open(dir.path()).unwrap();
        let e = DiskStore::open(dir.path()).err().unwrap();
        assert!(matches!(e, OpenError::Locked(_)));
        assert_eq!(
            e.to_string(),
            format!(
                "data dir {} is in use by another shoal-node (lock held)",
                dir.path().display()
            )
        );
        drop(first);
        DiskStore::open(dir.path()).unwrap();
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = DiskStore::open(&file).err().unwrap().to_string();
        assert!(e.ends_with("not a directory"), "{e}");
        let e = DiskStore::open(&file.join("data"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.ends_with("not a directory"), "{e}");
    }

    #[test]
    fn full_disk_maps_to_full() {
        let full = redb::StorageError::Io(io::ErrorKind::StorageFull.into());
        assert_eq!(store_error(full), StoreError::Full);
        let quota = redb::StorageError::Io(io::Error::from_raw_os_error(122)); // EDQUOT
        assert_eq!(store_error(quota), StoreError::Full);
        let other = redb::StorageError::Io(io::ErrorKind::BrokenPipe.into());
        assert_eq!(store_error(other), StoreError::Io);
        assert_eq!(
            store_error(redb::StorageError::ValueTooLarge(1 << 40)),
            StoreError::TooLarge
        );
    }
}
