//! The durable store: [`Storage`] on a redb database in the data dir.
//!
//! One redb table per [`Space`], named by [`Space::name`]. Every `put` and
//! `remove` is its own write transaction committed with redb's `Immediate`
//! durability (fsync before the commit returns), so a write the node
//! acknowledged survives `kill -9` and power loss. redb locks the file while
//! it is open: a second process on the same data dir gets [`OpenError::Locked`].

use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
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
/// After an I/O error (a full disk, say) redb refuses every later operation
/// until the database is reopened; the store reopens it at once, so freeing
/// space (a `remove`) works and later writes can succeed again.
pub struct DiskStore {
    path: PathBuf,
    /// `None` only while a reopen after a failure has itself failed; the
    /// next write tries again.
    db: Option<Database>,
    usage: Usage,
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
            db: Some(db),
            usage,
        })
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

    /// Closes the database cleanly (the next open skips recovery).
    pub fn close(mut self) -> Result<(), StoreError> {
        match self.db.take() {
            Some(db) => db.close().map_err(store_error),
            None => Ok(()),
        }
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or(StoreError::Io)
    }

    /// Runs one write transaction; after an I/O failure, reopens the database.
    fn write<R>(
        &mut self,
        f: impl FnOnce(&Database) -> Result<R, redb::Error>,
    ) -> Result<R, StoreError> {
        if self.db.is_none() {
            self.reopen();
        }
        let result = f(self.db()?);
        result.map_err(|e| {
            let poisoned = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
            let mapped = store_error(e);
            if poisoned {
                self.reopen();
            }
            mapped
        })
    }

    fn reopen(&mut self) {
        // The old handle holds the file lock: it must go first.
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

impl Storage for DiskStore {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        let txn = self.db()?.begin_read().map_err(store_error)?;
        let t = txn.open_table(table(space)).map_err(store_error)?;
        let Some(value) = t.get(key).map_err(store_error)? else {
            return Ok(None);
        };
        let value = value.value();
        out.get_mut(..value.len())
            .ok_or(StoreError::BufferTooSmall)?
            .copy_from_slice(value);
        Ok(Some(value.len()))
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let old = self.write(|db| {
            let txn = db.begin_write()?;
            let old = txn
                .open_table(table(space))?
                .insert(key, value)?
                .map(|v| v.value().len());
            txn.commit()?;
            Ok(old)
        })?;
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
        let old = self.write(|db| {
            let txn = db.begin_write()?;
            let old = txn
                .open_table(table(space))?
                .remove(key)?
                .map(|v| v.value().len());
            if old.is_some() {
                txn.commit()?;
            } else {
                // Nothing changed: let the empty transaction go without a sync.
                txn.abort()?;
            }
            Ok(old)
        })?;
        let Some(len) = old else {
            return Ok(false);
        };
        self.usage.bytes = self.usage.bytes.saturating_sub((key.len() + len) as u64);
        self.usage.entries = self.usage.entries.saturating_sub(1);
        Ok(true)
    }

    fn usage(&self) -> Usage {
        self.usage
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
