//! The durable store: [`Storage`] on a redb database in the data dir.
//!
//! One redb table per [`Space`], named by [`Space::name`], except chunks:
//! their bytes are appended to segment files under `DIR/chunks/` and redb
//! holds only where each one is (the `chunk_index` table; see [`log`]),
//! or, for a chunk under 2 KiB, the bytes themselves.
//!
//! Group commit, in the background: puts and removes gather in memory,
//! visible at once to `get` and `next_key`; a flush hands the batch to a
//! committer thread, which appends the batch's chunks to the log and syncs
//! them, then writes the rest into one redb transaction and commits it with
//! redb's `Immediate` durability (synced before the commit returns), while
//! the node goes on. A batch of chunk appends only commits no transaction:
//! the log is the index's journal, and the index entries wait in memory
//! for the next transaction (see [`log`]). A batch costs one sync per log
//! segment it appended to, plus one of redb if it commits a transaction. A
//! committed write survives `kill -9` and power loss; one not yet committed
//! may be lost, which is why the node acknowledges a write only after the
//! commit that covers it ([`Storage::flush_poll`]). Closing or dropping the
//! store flushes too.
//!
//! redb locks the file while it is open: a second process on the same data
//! dir gets [`OpenError::Locked`].

mod log;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use shoal_core::store::{FlushBegun, Space, Storage, StoreError, Usage};

use log::{Appends, ChunkLog, LiveChange, Loc, Position};
use smallvec::SmallVec;

/// The database file inside the data dir.
pub const FILE_NAME: &str = "shoal.redb";

/// Most memory redb caches pages in.
const CACHE_BYTES: usize = 64 << 20;

type Bytes = &'static [u8];

/// The table of `space`: for chunks, their index ([`ChunkEntry`]).
fn table(space: Space) -> TableDefinition<'static, Bytes, Bytes> {
    TableDefinition::new(match space {
        Space::Chunks => "chunk_index",
        other => other.name(),
    })
}

/// Where the chunk log's replay starts: the position up to which the
/// `chunk_index` table names every record (under [`INDEXED_TO`]).
const CHUNK_LOG: TableDefinition<'static, &'static str, Bytes> = TableDefinition::new("chunk_log");
const INDEXED_TO: &str = "indexed-to";

/// Most chunk index entries kept in memory only (their records are in the
/// log, synced) before a batch commits them to redb anyway: about 6 MiB of
/// memory, and 128 MiB of 2 KiB chunks to replay after a crash.
const CHECKPOINT_ENTRIES: usize = 1 << 16;

/// Chunks smaller than this stay in the index itself rather than the log:
/// two or more fit a 4 KiB B-tree page, and a commit of only such chunks
/// (small files) syncs redb alone, not a log segment as well.
const INLINE_BELOW: usize = 2048;

/// An entry of the chunk index: where the chunk's bytes are, or the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkEntry<'a> {
    Log(Loc),
    Inline(&'a [u8]),
}

impl<'a> ChunkEntry<'a> {
    const LOG: u8 = 0;
    const INLINE: u8 = 1;

    fn encode(self) -> Vec<u8> {
        match self {
            ChunkEntry::Log(loc) => [&[Self::LOG][..], &loc.encode()].concat(),
            ChunkEntry::Inline(bytes) => [&[Self::INLINE][..], bytes].concat(),
        }
    }

    /// `None` for bytes that are no entry.
    fn decode(bytes: &'a [u8]) -> Option<ChunkEntry<'a>> {
        match bytes.split_first()? {
            (&Self::LOG, loc) => Loc::decode(loc).map(ChunkEntry::Log),
            (&Self::INLINE, bytes) => Some(ChunkEntry::Inline(bytes)),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            ChunkEntry::Log(loc) => loc.len as usize,
            ChunkEntry::Inline(bytes) => bytes.len(),
        }
    }
}

/// Whether a chunk stays in the index itself: when small, or when its key
/// is too long for a log record.
fn goes_inline(key: &[u8], value: &[u8]) -> bool {
    value.len() < INLINE_BELOW || key.len() > usize::from(u8::MAX)
}

/// The index entry for `value`: inline when small, else appended to `log`
/// (in `appends`).
fn chunk_entry(
    log: &mut ChunkLog,
    appends: &mut Appends,
    key: &[u8],
    value: &[u8],
) -> io::Result<Vec<u8>> {
    if goes_inline(key, value) {
        return Ok(ChunkEntry::Inline(value).encode());
    }
    Ok(ChunkEntry::Log(log.append(appends, key, value)?).encode())
}

/// Where stores before the chunk log kept chunk bytes; moved into the log
/// at open.
const LEGACY_CHUNKS: TableDefinition<'static, Bytes, Bytes> = TableDefinition::new("chunks");

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

/// A key held in memory. A chunk's (32 bytes) sits inside the map's node,
/// so a lookup compares keys without following a pointer per key: in a map
/// of 65,536 entries that was a cache miss at each of its 16 steps.
type Key = SmallVec<[u8; 32]>;

/// Writes not yet committed: per space, the newest state of each key
/// (`None`: removed).
type Layer = [BTreeMap<Key, Option<Vec<u8>>>; 3];

/// Chunk index entries whose records are durable in the log but not yet in
/// redb, by key.
type Unindexed = BTreeMap<Key, Loc>;

/// Per space, its table in the newest committed snapshot, once read.
type Snapshot = [Option<ReadOnlyTable<Bytes, Bytes>>; 3];

/// A [`Storage`] kept in `DIR/shoal.redb`.
///
/// **Group commit in the background.** Puts and removes go to an in-memory
/// batch, visible at once to `get` and `next_key`. [`Storage::flush_begin`]
/// writes the batch into a redb write transaction and hands it to a
/// committer thread, which commits it with redb's `Immediate` durability
/// (synced before the commit returns) while the node goes on; writes made
/// meanwhile form the next batch. [`Storage::flush_poll`] reports the
/// commit's end, and [`DiskStore::on_flushed`] wakes the caller when it
/// comes. Reads look through the batch being built, then the one being
/// committed, then the database. [`Storage::flush`] does the same and waits.
///
/// **Failures.** A batch that fails to commit (a full disk, say) is lost,
/// and so is the batch built on top of it meanwhile: its writes may depend
/// on the lost ones (a record merge, say), so the next flush reports it
/// lost too. Committed data is untouched. After an I/O error redb refuses
/// every later operation until the database is reopened; the store reopens
/// it at once, so freeing space (a `remove`) works and later writes can
/// succeed again.
pub struct DiskStore {
    path: PathBuf,
    /// Writes since the last flush began.
    pending: Layer,
    /// The batch being committed, until it ends.
    inflight: Option<Inflight>,
    /// The tables reads go to, opened at the first read after a commit
    /// ends and kept until the next one ends or begins, so a lookup is one
    /// B-tree walk rather than a read transaction and a table open.
    /// Dropped before the database is reopened or closed: it keeps it
    /// open.
    snapshot: RefCell<Snapshot>,
    /// The segment files chunk bytes live in.
    log: ChunkLog,
    next_ticket: u64,
    /// Why the writes since the last flush began were thrown away; the
    /// next flush returns it.
    lost: Option<StoreError>,
    committer: Committer,
    /// `None` only while a reopen after a failure has itself failed; the
    /// next flush tries again.
    db: Option<Database>,
    /// What the store holds, counting writes not yet committed.
    usage: Usage,
    /// Most bytes of chunks and records it takes, if limited.
    quota: Option<u64>,
    /// Chunks committed to the log whose index entries are not yet in
    /// redb: reads look here before the database. Shared with the
    /// committer while a checkpoint writes them into redb.
    unindexed: Arc<Unindexed>,
    /// Most entries `unindexed` holds before a batch commits them.
    checkpoint_entries: usize,
    /// The next batch must commit a transaction: after a lost batch (the
    /// log may hold a torn record, which would end a replay early), or when
    /// the store closes.
    must_checkpoint: bool,
    /// Chunks in `pending` that replaced an earlier committed version,
    /// whose location the batch frees.
    replaced: BTreeSet<Key>,
    /// `pending` holds compaction's rewrites, which commit a transaction.
    compaction_pending: bool,
}

/// A batch handed to the committer.
struct Inflight {
    ticket: u64,
    layer: Layer,
    /// What it changes in the chunk log's live bytes, once committed.
    change: LiveChange,
    /// For a batch that keeps its chunks' index entries in memory, those
    /// entries; `None` for a checkpoint.
    appended: Option<Appended>,
    /// It commits a redb transaction (a checkpoint, or writes to other
    /// spaces).
    transaction: bool,
}

/// Index entries of chunks a batch appends to the log.
type Appended = Vec<(Key, Loc)>;

/// Chunk index entries a checkpoint writes into its transaction, on the
/// committer thread (tens of milliseconds for 65,536 entries, which the
/// node's thread does not wait for): every entry kept in memory but those
/// of `skip`, the batch's own chunk writes, which are newer.
struct Fold {
    entries: Arc<Unindexed>,
    skip: BTreeSet<Key>,
}

/// A transaction to commit, and what to fold into it first.
type Txn = (WriteTransaction, Option<Fold>);

/// What the committer is given: the chunk bytes to write and sync, then
/// the transaction to commit, if any.
type Job = (u64, Appends, Option<Txn>);

/// Called by the committer thread when a commit ends.
type Waker = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// The thread that commits batches, one at a time, in order.
struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<(u64, Result<(), redb::Error>)>,
    wake: Waker,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start() -> io::Result<Committer> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        let wake: Waker = Arc::default();
        let waker = wake.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-store".into())
            .spawn(move || {
                for (ticket, mut appends, txn) in inbox {
                    let result = commit(&mut appends, txn);
                    if outbox.send((ticket, result)).is_err() {
                        return;
                    }
                    if let Some(wake) = waker.lock().ok().as_deref().and_then(Option::as_ref) {
                        wake();
                    }
                }
            })?;
        Ok(Committer {
            jobs: Some(jobs),
            done,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread once it has committed what it was given.
    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes and syncs the chunk bytes, then commits the index that names
/// them, if any (never the other way round: see [`log`]).
fn commit(appends: &mut Appends, txn: Option<Txn>) -> Result<(), redb::Error> {
    appends.write_and_sync()?;
    let Some((txn, fold)) = txn else {
        return Ok(());
    };
    if let Some(fold) = fold {
        let mut t = txn.open_table(table(Space::Chunks))?;
        for (key, loc) in fold.entries.iter() {
            if !fold.skip.contains(key) {
                t.insert(key.as_slice(), ChunkEntry::Log(*loc).encode().as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

impl DiskStore {
    /// Opens the store in `dir`, creating the folder and the database when
    /// missing. Fails with [`OpenError::Locked`] while another process has it.
    pub fn open(dir: &Path) -> Result<DiskStore, OpenError> {
        Self::open_in(dir, log::SEGMENT_BYTES)
    }

    /// [`DiskStore::open`], with chunk log segments of `segment_bytes`.
    fn open_in(dir: &Path, segment_bytes: u64) -> Result<DiskStore, OpenError> {
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
        let mut log = ChunkLog::open(dir, segment_bytes).map_err(io_error)?;
        let usage = Self::prepare(&db, &mut log).map_err(|e| OpenError::of(dir, e))?;
        log.reclaim().map_err(io_error)?;
        Ok(DiskStore {
            path,
            pending: Layer::default(),
            inflight: None,
            snapshot: RefCell::default(),
            log,
            next_ticket: 1,
            lost: None,
            committer: Committer::start().map_err(io_error)?,
            db: Some(db),
            usage,
            quota: None,
            unindexed: Arc::default(),
            checkpoint_entries: CHECKPOINT_ENTRIES,
            must_checkpoint: false,
            replaced: Default::default(),
            compaction_pending: false,
        })
    }

    /// Limits the bytes (keys and values) the store holds: a chunk or record
    /// put that would go beyond it fails with [`StoreError::Full`], as on a
    /// full disk. The node's own small state (identity, GC marks) counts
    /// but is never refused. `None` lifts the limit.
    pub fn set_quota(&mut self, quota: Option<u64>) {
        self.quota = quota;
    }

    /// Calls `wake` (on the committer thread) whenever a background commit
    /// ends, so the owner knows to call [`Storage::flush_poll`].
    pub fn on_flushed(&self, wake: impl Fn() + Send + 'static) {
        if let Ok(mut w) = self.committer.wake.lock() {
            *w = Some(Box::new(wake));
        }
    }

    fn open_file(path: &Path) -> Result<Database, redb::DatabaseError> {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
    }

    /// Creates every table, so reads never meet a missing one, moves the
    /// chunks of an older store into the log, indexes the log's records a
    /// crash left unindexed, and totals what the store holds.
    fn prepare(db: &Database, log: &mut ChunkLog) -> Result<Usage, redb::Error> {
        let txn = db.begin_write()?;
        for space in Space::ALL {
            txn.open_table(table(space))?;
        }
        txn.open_table(CHUNK_LOG)?;
        txn.commit()?;
        Self::migrate(db, log)?;
        Self::recover(db, log)?;
        Self::measure(db, log, &Unindexed::new())
    }

    /// Indexes every chunk record after the position the index covers (a
    /// batch of appends only, committed before a crash), then moves that
    /// position to the end of the log, past any torn record, so later
    /// appends are never behind one.
    fn recover(db: &Database, log: &mut ChunkLog) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut marks = txn.open_table(CHUNK_LOG)?;
            let from = match marks.get(INDEXED_TO)? {
                Some(v) => Position::decode(v.value()).ok_or_else(|| {
                    redb::Error::Corrupted("the chunk log's indexed position is malformed".into())
                })?,
                // A store from before the log was a journal: its index
                // names everything it committed.
                None => log.end(),
            };
            let mut index = txn.open_table(table(Space::Chunks))?;
            let mut inserted = Ok(0usize);
            log.replay(from, |key, loc| {
                if let Ok(n) = &mut inserted {
                    match index.insert(key, ChunkEntry::Log(loc).encode().as_slice()) {
                        Ok(_) => *n += 1,
                        Err(e) => inserted = Err(e),
                    }
                }
            })?;
            let replayed = inserted?;
            if replayed > 0 {
                tracing::info!(
                    chunks = replayed,
                    "indexed chunks the log held past its last index commit"
                );
            }
            marks.insert(INDEXED_TO, log.end().encode().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Moves chunk bytes kept in redb itself (stores written before the
    /// chunk log) into the log, in one commit.
    fn migrate(db: &Database, log: &mut ChunkLog) -> Result<(), redb::Error> {
        let read = db.begin_read()?;
        let legacy = match read.open_table(LEGACY_CHUNKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut appends = Appends::default();
        let txn = db.begin_write()?;
        {
            let mut index = txn.open_table(table(Space::Chunks))?;
            for entry in legacy.iter()? {
                let (key, value) = entry?;
                let entry = chunk_entry(log, &mut appends, key.value(), value.value())?;
                index.insert(key.value(), entry.as_slice())?;
            }
        }
        txn.delete_table(LEGACY_CHUNKS)?;
        drop(legacy);
        drop(read);
        commit(&mut appends, Some((txn, None)))
    }

    /// Totals what the committed tables and `unindexed` hold, and counts
    /// the chunk bytes each log segment holds for the index.
    fn measure(
        db: &Database,
        log: &mut ChunkLog,
        unindexed: &Unindexed,
    ) -> Result<Usage, redb::Error> {
        let txn = db.begin_read()?;
        let mut usage = Usage::default();
        for space in [Space::Local, Space::Records] {
            let t = txn.open_table(table(space))?;
            usage.bytes += t.stats()?.stored_bytes();
            usage.entries += t.len()?;
        }
        log.reset_live();
        let index = txn.open_table(table(Space::Chunks))?;
        for entry in index.iter()? {
            let (key, value) = entry?;
            if unindexed.contains_key(key.value()) {
                continue; // replaced by a newer record, counted below
            }
            let entry = ChunkEntry::decode(value.value())
                .ok_or_else(|| redb::Error::Corrupted("a chunk index entry is malformed".into()))?;
            if let ChunkEntry::Log(loc) = entry {
                log.count_live(loc);
            }
            usage.bytes += (key.value().len() + entry.len()) as u64;
            usage.entries += 1;
        }
        for (key, &loc) in unindexed {
            log.count_live(loc);
            usage.bytes += (key.len() + loc.len as usize) as u64;
            usage.entries += 1;
        }
        Ok(usage)
    }

    /// Bytes the chunk log's files take on disk, live or not (at most about
    /// twice the live chunk bytes, plus two segments: see [`log`]).
    pub fn chunk_log_bytes(&self) -> u64 {
        self.log.disk_bytes()
    }

    /// Flushes, indexing every chunk in redb, then closes the database
    /// cleanly (the next open has nothing to recover). A failed flush is
    /// reported after the close.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.must_checkpoint = true;
        let flushed = self.flush();
        self.committer.stop();
        self.snapshot.take();
        let closed = match self.db.take() {
            Some(db) => db.close().map_err(store_error),
            None => Ok(()),
        };
        flushed.and(closed)
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or(StoreError::Io)
    }

    /// The newest state of `key` among the batches not yet committed:
    /// `Some(None)` when the newest is a removal, `None` when neither
    /// batch touched it.
    fn uncommitted(&self, space: Space, key: &[u8]) -> Option<Option<&[u8]>> {
        let i = space as usize;
        let newest = self.pending[i]
            .get(key)
            .or_else(|| self.inflight.as_ref().and_then(|b| b.layer[i].get(key)))?;
        Some(newest.as_deref())
    }

    /// The length of the value under `key`, if any.
    fn len_of(&self, space: Space, key: &[u8]) -> Result<Option<usize>, StoreError> {
        if let Some(v) = self.uncommitted(space, key) {
            return Ok(v.map(<[u8]>::len));
        }
        self.committed(space, key, |v| match (space, v) {
            (Space::Chunks, Some(v)) => Ok(Some(chunk_entry_of(v)?.len())),
            (_, v) => Ok(v.map(<[u8]>::len)),
        })
    }

    /// Hands `f` the committed value under `key` (for chunks, its
    /// encoded location).
    fn committed<R>(
        &self,
        space: Space,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if space == Space::Chunks
            && let Some(&loc) = self.unindexed.get(key)
        {
            return f(Some(&ChunkEntry::Log(loc).encode()));
        }
        self.with_snapshot(space, |t| {
            let value = t.get(key).map_err(store_error)?;
            f(value.as_ref().map(|v| v.value()))
        })
    }

    /// Hands `f` the table of `space` in the newest committed snapshot
    /// (`f` must not read the store again).
    fn with_snapshot<R>(
        &self,
        space: Space,
        f: impl FnOnce(&ReadOnlyTable<Bytes, Bytes>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut snapshot = self.snapshot.borrow_mut();
        let slot = &mut snapshot[space as usize];
        if slot.is_none() {
            let txn = self.db()?.begin_read().map_err(store_error)?;
            *slot = Some(txn.open_table(table(space)).map_err(store_error)?);
        }
        match slot {
            Some(t) => f(t),
            None => Err(StoreError::Io),
        }
    }

    /// Ends the commit in flight, waiting for it.
    fn wait_inflight(&mut self) -> Result<(), StoreError> {
        if self.inflight.is_none() {
            return Ok(());
        }
        match self.committer.done.recv() {
            Ok((ticket, result)) => self.ended(ticket, result),
            // The committer is gone: so is what it held.
            Err(_) => self.ended(0, Err(redb::Error::PreviousIo)),
        }
    }

    /// Takes note that the commit `ticket` ended with `result`. After a
    /// success, deletes the log segments no chunk lives in any more and
    /// starts compacting the sparse ones.
    fn ended(&mut self, ticket: u64, result: Result<(), redb::Error>) -> Result<(), StoreError> {
        let batch = self.inflight.take();
        debug_assert!(
            batch
                .as_ref()
                .is_none_or(|b| b.ticket == ticket || ticket == 0)
        );
        if let Err(e) = result {
            return Err(self.lose(e));
        }
        if let Some(batch) = batch {
            // Reads must see what this commit made durable, as the batch
            // they looked through goes.
            if batch.transaction {
                self.snapshot.take();
            }
            match batch.appended {
                // Unshared: the job that held it has ended.
                Some(entries) => Arc::make_mut(&mut self.unindexed).extend(entries),
                None => {
                    self.unindexed = Arc::default();
                    self.must_checkpoint = false;
                }
            }
            self.log.committed(&batch.change);
        }
        // Neither failure loses a write: a segment left behind is deleted
        // or compacted after a later commit.
        if let Err(e) = self.log.reclaim() {
            tracing::warn!(error = %e, "cannot delete an empty chunk log segment");
        }
        if let Err(e) = self.compact() {
            tracing::warn!(?e, "cannot compact the chunk log");
            self.log.compaction_failed();
        }
        Ok(())
    }

    /// Writes the live chunks of sparse log segments again, as uncommitted
    /// writes of the same values: the next commit moves them to the active
    /// segment, after which the old segments hold nothing and are deleted.
    fn compact(&mut self) -> Result<(), StoreError> {
        // Only once every live chunk's entry is in redb, where it looks.
        if !self.unindexed.is_empty() {
            return Ok(());
        }
        let picked = self.log.pick_for_compaction();
        if picked.is_empty() {
            return Ok(());
        }
        let txn = self.db()?.begin_read().map_err(store_error)?;
        let index = txn.open_table(table(Space::Chunks)).map_err(store_error)?;
        let mut moved = Vec::new();
        for entry in index.iter().map_err(store_error)? {
            let (key, value) = entry.map_err(store_error)?;
            let ChunkEntry::Log(loc) = chunk_entry_of(value.value())? else {
                continue;
            };
            if !picked.contains(&loc.segment)
                || self.uncommitted(Space::Chunks, key.value()).is_some()
            {
                continue;
            }
            let mut bytes = vec![0; loc.len as usize];
            self.log.read(loc, &mut bytes).map_err(log_error)?;
            moved.push((key.value().to_vec(), bytes));
        }
        tracing::debug!(segments = ?picked, chunks = moved.len(), "compacting the chunk log");
        let layer = &mut self.pending[Space::Chunks as usize];
        for (key, bytes) in moved {
            layer.insert(Key::from_vec(key), Some(bytes));
        }
        self.compaction_pending = true;
        Ok(())
    }

    /// Throws away every write not committed after `e` (see the type's
    /// docs), reopening the database after an I/O error; the error, for
    /// the store's user.
    fn lose(&mut self, e: redb::Error) -> StoreError {
        let poisoned = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
        let mapped = store_error(e);
        self.inflight = None;
        // The log may now hold a torn record, or a gap where a lost batch's
        // appends were placed: later appends must not sit behind it, where
        // a replay stops, so the next batch records the log's end as
        // indexed.
        self.must_checkpoint = true;
        self.snapshot.take();
        // The rewrites of compacting segments were lost with the batch.
        self.log.compaction_failed();
        self.compaction_pending = false;
        self.replaced.clear();
        if self.pending.iter().any(|l| !l.is_empty()) {
            self.pending = Layer::default();
            self.lost.get_or_insert(mapped);
        }
        if poisoned {
            self.reopen();
        } else if let Some(db) = &self.db
            && let Ok(usage) = Self::measure(db, &mut self.log, &self.unindexed)
        {
            self.usage = usage;
        }
        mapped
    }

    fn reopen(&mut self) {
        // The old handle holds the file lock: it must go first. Nothing is
        // being committed (a commit's end is what brings us here).
        self.snapshot.take();
        self.db = None;
        match Self::open_file(&self.path) {
            Ok(db) => {
                if let Ok(usage) = Self::measure(&db, &mut self.log, &self.unindexed) {
                    self.usage = usage;
                }
                self.db = Some(db);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reopen the store; retrying at the next flush")
            }
        }
    }

    /// Whether the batch in `pending` must write every chunk index entry
    /// into redb (a checkpoint), rather than append its chunks to the log
    /// and keep their entries in memory: when it removes a chunk or keeps
    /// one inline (both in redb, which a replay must not undo), rewrites
    /// chunks for compaction, or would pass the entries kept in memory.
    fn needs_checkpoint(&self) -> bool {
        let chunks = &self.pending[Space::Chunks as usize];
        self.must_checkpoint
            || self.compaction_pending
            || self.unindexed.len() + chunks.len() > self.checkpoint_entries
            || chunks
                .iter()
                .any(|(key, value)| value.as_ref().is_none_or(|v| goes_inline(key, v)))
    }

    /// Appends the batch's chunks (every one bound for the log) to log
    /// appends, for the committer; the entries to index once they are
    /// synced.
    fn prepare_appends(&mut self) -> io::Result<(Appends, LiveChange, Appended)> {
        let chunks = &self.pending[Space::Chunks as usize];
        let bytes = chunks
            .iter()
            .map(|(key, value)| ChunkLog::record_len(key, value.as_deref().unwrap_or_default()))
            .sum();
        let mut appends = Appends::with_capacity(bytes);
        let mut change = LiveChange::default();
        let mut entries = Vec::new();
        for (key, value) in &self.pending[Space::Chunks as usize] {
            let value = value.as_deref().ok_or(io::ErrorKind::InvalidInput)?;
            let loc = self.log.append(&mut appends, key, value)?;
            change.added.push(loc);
            let old = match self.unindexed.get(key) {
                Some(&old) => Some(old),
                None if self.replaced.contains(key) => self.committed_loc(key),
                None => None,
            };
            change.freed.extend(old);
            entries.push((key.clone(), loc));
        }
        self.replaced.clear();
        Ok((appends, change, entries))
    }

    /// Where redb's index puts the chunk under `key`, if in the log. A
    /// failed lookup only leaves its bytes counted live until the next open.
    fn committed_loc(&self, key: &[u8]) -> Option<Loc> {
        let loc = self.committed(Space::Chunks, key, |v| {
            Ok(match v.map(chunk_entry_of).transpose()? {
                Some(ChunkEntry::Log(loc)) => Some(loc),
                _ => None,
            })
        });
        loc.ok().flatten()
    }

    /// Writes the batch into a fresh write transaction, for the committer.
    /// With `checkpoint`, also the batch's chunks (their bytes into log
    /// appends) and the end of the log as indexed, and hands the committer
    /// every chunk index entry still only in memory to write in too;
    /// without, the batch's chunks are left to
    /// [`DiskStore::prepare_appends`].
    fn prepare_batch(
        &mut self,
        checkpoint: bool,
    ) -> Result<(Txn, Appends, LiveChange), redb::Error> {
        if self.db.is_none() {
            self.reopen();
        }
        let db = self.db.as_ref().ok_or(redb::Error::PreviousIo)?;
        // Immediate durability (redb's default): the commit returns only
        // once the data is synced.
        let txn = db.begin_write()?;
        let mut appends = Appends::default();
        let mut change = LiveChange::default();
        for space in Space::ALL {
            let layer = &self.pending[space as usize];
            if layer.is_empty() || (space == Space::Chunks && !checkpoint) {
                continue;
            }
            let mut t = txn.open_table(table(space))?;
            for (key, value) in layer {
                let old = match (space, value) {
                    (Space::Chunks, Some(v)) => {
                        let entry = chunk_entry(&mut self.log, &mut appends, key, v)?;
                        if let Some(ChunkEntry::Log(loc)) = ChunkEntry::decode(&entry) {
                            change.added.push(loc);
                        }
                        t.insert(key.as_slice(), entry.as_slice())?
                    }
                    (_, Some(v)) => t.insert(key.as_slice(), v.as_slice())?,
                    (_, None) => t.remove(key.as_slice())?,
                };
                if space != Space::Chunks {
                    continue;
                }
                // An entry still in memory is the one this write replaces;
                // redb's older one was freed when that entry's append was
                // committed.
                if let Some(&loc) = self.unindexed.get(key) {
                    change.freed.push(loc);
                } else if let Some(old) = old.as_ref()
                    && let Some(ChunkEntry::Log(loc)) = ChunkEntry::decode(old.value())
                {
                    change.freed.push(loc);
                }
            }
        }
        let mut fold = None;
        if checkpoint {
            txn.open_table(CHUNK_LOG)?
                .insert(INDEXED_TO, self.log.end().encode().as_slice())?;
            self.replaced.clear();
            self.compaction_pending = false;
            if !self.unindexed.is_empty() {
                // Their locations were counted live, and the ones they
                // replaced freed, when their appends were committed.
                let skip = self.pending[Space::Chunks as usize]
                    .keys()
                    .filter(|key| self.unindexed.contains_key(key.as_slice()))
                    .cloned()
                    .collect();
                fold = Some(Fold {
                    entries: self.unindexed.clone(),
                    skip,
                });
            }
        }
        Ok(((txn, fold), appends, change))
    }
}

#[cfg(test)]
impl DiskStore {
    /// Closes the store as a crash would: writes not yet flushed are lost
    /// (one already being committed lands or not, as the disk decides).
    fn abandon(mut self) {
        self.pending = Layer::default();
        self.unindexed = Arc::default();
        let _ = self.wait_inflight();
        self.committer.stop();
        self.snapshot.take();
        self.db = None;
    }
}

/// Decodes an entry of the chunk index.
fn chunk_entry_of(bytes: &[u8]) -> Result<ChunkEntry<'_>, StoreError> {
    ChunkEntry::decode(bytes).ok_or_else(|| {
        tracing::warn!("an entry of the chunk index is malformed");
        StoreError::Corrupt
    })
}

/// Maps a failed read of the chunk log.
fn log_error(e: io::Error) -> StoreError {
    tracing::warn!(error = %e, "cannot read the chunk log");
    match e.kind() {
        // The index names bytes the segment does not have.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound => StoreError::Corrupt,
        _ => StoreError::Io,
    }
}

/// Copies `value` into `out`; its length.
fn copy_out(value: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
    out.get_mut(..value.len())
        .ok_or(StoreError::BufferTooSmall)?
        .copy_from_slice(value);
    Ok(Some(value.len()))
}

/// Copies the smallest key in `t` with `prefix` that is above `after`. Keys
/// with a prefix are contiguous, so that key is the first at or above the
/// larger of `prefix` and just-above-`after`, if it has the prefix: one
/// range lookup, reading one entry.
fn next_key_in(
    t: &impl ReadableTable<Bytes, Bytes>,
    prefix: &[u8],
    after: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, StoreError> {
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
    Ok(key.starts_with(prefix).then(|| key.to_vec()))
}

/// The same in a map kept in memory (an uncommitted batch, removals
/// included, or the unindexed chunks).
fn next_key_in_layer<V>(
    layer: &BTreeMap<Key, V>,
    prefix: &[u8],
    after: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let from = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let (key, _) = layer.range::<[u8], _>((from, Bound::Unbounded)).next()?;
    key.starts_with(prefix).then(|| key.to_vec())
}

impl Storage for DiskStore {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        if let Some(v) = self.uncommitted(space, key) {
            return v.map_or(Ok(None), |v| copy_out(v, out));
        }
        self.committed(space, key, |v| match (space, v) {
            (_, None) => Ok(None),
            (Space::Chunks, Some(v)) => match chunk_entry_of(v)? {
                ChunkEntry::Inline(bytes) => copy_out(bytes, out),
                ChunkEntry::Log(loc) => {
                    if out.len() < loc.len as usize {
                        return Err(StoreError::BufferTooSmall);
                    }
                    self.log.read(loc, out).map_err(log_error)?;
                    Ok(Some(loc.len as usize))
                }
            },
            (_, Some(v)) => copy_out(v, out),
        })
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.insert(space, key, value).map(drop)
    }

    fn insert(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let old = self.len_of(space, key)?;
        let i = space as usize;
        let added = (key.len() + value.len()) as u64;
        let freed = old.map_or(0, |n| (key.len() + n) as u64);
        if let Some(quota) = self.quota
            && space != Space::Local
            // Replacing a value frees the old one's room.
            && self.usage.bytes.saturating_sub(freed) + added > quota
        {
            return Err(StoreError::Full);
        }
        if space == Space::Chunks && old.is_some() && !self.pending[i].contains_key(key) {
            // A committed version it replaces: a batch of appends only
            // looks up its location, to free it.
            self.replaced.insert(Key::from_slice(key));
        }
        self.pending[i].insert(Key::from_slice(key), Some(value.to_vec()));
        self.usage.bytes = (self.usage.bytes + added).saturating_sub(freed);
        if old.is_none() {
            self.usage.entries += 1;
        }
        Ok(old.is_some())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        let Some(len) = self.len_of(space, key)? else {
            return Ok(false);
        };
        let i = space as usize;
        if space == Space::Chunks && !self.pending[i].contains_key(key) {
            // As in `insert`: a put later in this batch replaces the
            // committed version, not this removal.
            self.replaced.insert(Key::from_slice(key));
        }
        self.pending[i].insert(Key::from_slice(key), None);
        self.usage.bytes = self.usage.bytes.saturating_sub((key.len() + len) as u64);
        self.usage.entries = self.usage.entries.saturating_sub(1);
        Ok(true)
    }

    /// Commits every write so far and waits for the sync. Fails when it
    /// cannot, or when writes were already thrown away after a failure;
    /// either way none of them is durable for sure.
    fn flush(&mut self) -> Result<(), StoreError> {
        let before = self.wait_inflight();
        let now = match self.flush_begin() {
            FlushBegun::Done(result) => result,
            FlushBegun::Running(_) => self.wait_inflight(),
        };
        before.and(now)
    }

    fn flush_begin(&mut self) -> FlushBegun {
        if self.inflight.is_some() {
            // One commit at a time: finish the one running first.
            if let Err(e) = self.wait_inflight() {
                return FlushBegun::Done(Err(self.lost.take().unwrap_or(e)));
            }
        }
        if let Some(e) = self.lost.take() {
            return FlushBegun::Done(Err(e));
        }
        let nothing_pending = self.pending.iter().all(BTreeMap::is_empty);
        // With nothing pending, only a checkpoint that is due has work.
        if nothing_pending && (!self.must_checkpoint || self.unindexed.is_empty()) {
            return FlushBegun::Done(Ok(()));
        }
        let checkpoint = self.needs_checkpoint();
        let others = Space::ALL
            .into_iter()
            .any(|space| space != Space::Chunks && !self.pending[space as usize].is_empty());
        if checkpoint || others {
            // redb reuses the pages a commit frees only once no reader
            // holds that commit's snapshot or an older one: let go of ours,
            // so space just freed (on a full disk, say) is there for this
            // batch.
            self.snapshot.take();
        }
        let prepared = if checkpoint {
            self.prepare_batch(true)
                .map(|(txn, appends, change)| (Some(txn), appends, change, None))
        } else {
            // The chunks' entries stay in memory; the other spaces' writes,
            // if any, go into a transaction.
            self.prepare_appends().map_err(redb::Error::from).and_then(
                |(appends, change, entries)| {
                    let txn = if others {
                        Some(self.prepare_batch(false)?.0)
                    } else {
                        None
                    };
                    Ok((txn, appends, change, Some(entries)))
                },
            )
        };
        let (txn, appends, change, appended) = match prepared {
            Ok(batch) => batch,
            Err(e) => {
                let e = self.lose(e);
                return FlushBegun::Done(Err(self.lost.take().unwrap_or(e)));
            }
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.inflight = Some(Inflight {
            ticket,
            layer: std::mem::take(&mut self.pending),
            change,
            appended,
            transaction: txn.is_some(),
        });
        let sent = match &self.committer.jobs {
            Some(jobs) => jobs.send((ticket, appends, txn)).map_err(|e| e.0),
            None => Err((ticket, appends, txn)),
        };
        match sent {
            Ok(()) => FlushBegun::Running(ticket),
            // No committer thread (it panicked): commit here.
            Err((_, mut appends, txn)) => {
                let result = commit(&mut appends, txn);
                FlushBegun::Done(self.ended(ticket, result))
            }
        }
    }

    fn flush_poll(&mut self) -> Option<(u64, Result<(), StoreError>)> {
        self.inflight.as_ref()?;
        let (ticket, result) = self.committer.done.try_recv().ok()?;
        Some((ticket, self.ended(ticket, result)))
    }

    /// Merges the batches not yet committed with the database: the
    /// smallest candidate key from each, skipped while its newest state is
    /// a removal.
    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        let i = space as usize;
        self.with_snapshot(space, |t| {
            let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
            loop {
                let after = cursor.as_deref();
                let candidates = [
                    next_key_in_layer(&self.pending[i], prefix, after),
                    self.inflight
                        .as_ref()
                        .and_then(|b| next_key_in_layer(&b.layer[i], prefix, after)),
                    if space == Space::Chunks {
                        next_key_in_layer(&self.unindexed, prefix, after)
                    } else {
                        None
                    },
                    next_key_in(t, prefix, after)?,
                ];
                let Some(key) = candidates.into_iter().flatten().min() else {
                    return Ok(None);
                };
                let live = match self.uncommitted(space, &key) {
                    Some(v) => v.is_some(),
                    None => true,
                };
                if live {
                    out.get_mut(..key.len())
                        .ok_or(StoreError::BufferTooSmall)?
                        .copy_from_slice(&key);
                    return Ok(Some(key.len()));
                }
                cursor = Some(key);
            }
        })
    }

    fn usage(&self) -> Usage {
        Usage {
            capacity: self.quota,
            ..self.usage
        }
    }
}

/// Flushes what it can (writes a failed flush loses were never promised),
/// then stops the committer.
impl Drop for DiskStore {
    fn drop(&mut self) {
        if self.db.is_some() {
            self.must_checkpoint = true;
            let _ = self.flush();
        }
        self.committer.stop();
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
    use std::os::unix::fs::FileExt;

    /// Segments of 1 MiB: a store the tests open prepares a spare of that.
    const TEST_SEGMENT: u64 = 1 << 20;

    fn open(dir: &Path) -> Result<DiskStore, OpenError> {
        DiskStore::open_in(dir, TEST_SEGMENT)
    }

    #[test]
    fn a_quota_refuses_like_a_full_disk_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
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
        let mut s = open(dir.path()).unwrap();
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

        let s = open(dir.path()).unwrap();
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
    fn insert_says_whether_the_key_was_there_in_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        let big = vec![7u8; 4096]; // held in the chunk log, not inline
        assert_eq!(s.insert(Space::Chunks, b"log", &big), Ok(false));
        assert_eq!(s.insert(Space::Chunks, b"inline", b"small"), Ok(false));
        // Unflushed.
        assert_eq!(s.insert(Space::Chunks, b"log", &big), Ok(true));
        // Being committed in the background.
        assert!(matches!(s.flush_begin(), FlushBegun::Running(_)));
        assert_eq!(s.insert(Space::Chunks, b"inline", b"small"), Ok(true));
        s.flush().unwrap();
        // Committed, in the log and inline.
        assert_eq!(s.insert(Space::Chunks, b"log", &big), Ok(true));
        assert_eq!(s.insert(Space::Chunks, b"inline", b"small"), Ok(true));
        assert_eq!(s.insert(Space::Records, b"log", b"other space"), Ok(false));
        assert_eq!(s.usage().entries, 3);
        assert_eq!(s.remove(Space::Chunks, b"log"), Ok(true));
        assert_eq!(s.insert(Space::Chunks, b"log", &big), Ok(false));
        s.close().unwrap();
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
        let mut s = open(dir.path()).unwrap();
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
        let s = open(dir.path()).unwrap();
        assert_eq!(walk(&s, Space::Records, b"", None), all);
    }

    #[test]
    fn flushed_writes_survive_a_reopen_and_unflushed_ones_need_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = [0u8; 16];
        let mut s = open(dir.path()).unwrap();
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
        let mut s = open(dir.path()).unwrap();
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
        let s = open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(None));
        assert_eq!(s.get(Space::Records, b"b", &mut out), Ok(Some(3)));
        assert_eq!(s.usage().entries, 2);
    }

    #[test]
    fn a_background_flush_is_seen_at_once_and_durable_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        s.on_flushed(move || {
            let _ = tx.send(());
        });
        s.put(Space::Records, b"a", b"1").unwrap();
        s.put(Space::Records, b"c", b"3").unwrap();
        s.flush().unwrap();
        // Batch 1, being committed: removes `a`, adds `b`.
        assert_eq!(s.remove(Space::Records, b"a"), Ok(true));
        s.put(Space::Records, b"b", b"2").unwrap();
        let FlushBegun::Running(ticket) = s.flush_begin() else {
            panic!("a disk store flushes in the background");
        };
        // Batch 2, built meanwhile: adds `d`, removes `c`.
        s.put(Space::Records, b"d", b"4").unwrap();
        assert_eq!(s.remove(Space::Records, b"c"), Ok(true));
        assert_eq!(walk(&s, Space::Records, b"", None), keys(&[b"b", b"d"]));
        let mut out = [0u8; 4];
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(None));
        assert_eq!(s.get(Space::Records, b"b", &mut out), Ok(Some(1)));
        assert_eq!(s.usage().entries, 2);
        // The committer says when batch 1 is durable (it also woke us for
        // the earlier, blocking flush).
        let ended = loop {
            if let Some(ended) = s.flush_poll() {
                break ended;
            }
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        };
        assert_eq!(ended, (ticket, Ok(())));
        assert_eq!(s.flush_poll(), None);
        s.abandon();
        // Batch 1 survived; batch 2 was never flushed.
        let s = open(dir.path()).unwrap();
        assert_eq!(walk(&s, Space::Records, b"", None), keys(&[b"b", b"c"]));
    }

    /// The chunk log under churn: removed chunks' segments are compacted
    /// and deleted, the disk holds at most about twice the live bytes plus
    /// a segment, and every live chunk reads back, before and after a
    /// reopen.
    #[test]
    fn removed_chunks_space_is_reclaimed_and_live_ones_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        const SEGMENT: u64 = 64 << 10;
        let mut s = DiskStore::open_in(dir.path(), SEGMENT).unwrap();
        let value = |i: u32| -> Vec<u8> {
            let mut v = vec![(i % 251) as u8; 2048];
            v[..4].copy_from_slice(&i.to_le_bytes());
            v
        };
        let key = |i: u32| format!("chunk-{i:05}").into_bytes();
        // 640 chunks of 2 KiB, 32 to a segment, 20 segments; flushed in
        // batches of 40 as a node would.
        for i in 0..640u32 {
            s.put(Space::Chunks, &key(i), &value(i)).unwrap();
            if i % 40 == 39 {
                s.flush().unwrap();
            }
        }
        assert!(s.log.segment_count() >= 20);
        let full = s.chunk_log_bytes();
        // Remove three in four, in batches; every ended commit may compact.
        for i in (0..640u32).filter(|i| i % 4 != 0) {
            assert!(s.remove(Space::Chunks, &key(i)).unwrap());
            if i % 40 == 39 {
                s.flush().unwrap();
            }
        }
        // Two more commits: one carries the rewrites, the next deletes.
        s.flush().unwrap();
        s.put(Space::Local, b"tick", b"1").unwrap();
        s.flush().unwrap();
        s.put(Space::Local, b"tick", b"2").unwrap();
        s.flush().unwrap();
        let live = 160 * 2048;
        let on_disk = s.chunk_log_bytes();
        assert!(
            on_disk <= 2 * live + 2 * SEGMENT,
            "{on_disk} bytes on disk for {live} live (was {full})"
        );
        let files = std::fs::read_dir(dir.path().join(log::DIR_NAME))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count();
        assert_eq!(
            files,
            s.log.segment_count(),
            "deleted segments are gone from disk"
        );
        let check = |s: &DiskStore| {
            let mut out = [0u8; 2048];
            for i in 0..640u32 {
                let got = s.get(Space::Chunks, &key(i), &mut out).unwrap();
                if i % 4 == 0 {
                    assert_eq!(got, Some(2048), "chunk {i}");
                    assert_eq!(out[..], value(i)[..], "chunk {i}");
                } else {
                    assert_eq!(got, None, "chunk {i} was removed");
                }
            }
            assert_eq!(s.usage().entries, 161);
        };
        check(&s);
        s.close().unwrap();
        let s = open(dir.path()).unwrap();
        check(&s);
    }

    /// A store written before the chunk log kept chunk bytes in redb; the
    /// first open moves them into the log.
    fn chunk(byte: u8, len: usize) -> Vec<u8> {
        vec![byte; len]
    }

    fn read(s: &DiskStore, key: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 8192];
        let len = s.get(Space::Chunks, key, &mut out).unwrap()?;
        out.truncate(len);
        Some(out)
    }

    #[test]
    fn chunk_appends_commit_no_transaction_and_come_back_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.put(Space::Chunks, b"a", &chunk(1, 3000)).unwrap();
        s.put(Space::Chunks, b"b", &chunk(2, 2048)).unwrap();
        s.flush().unwrap();
        assert_eq!(
            s.unindexed.len(),
            2,
            "appends only: the entries wait in memory"
        );
        assert_eq!(read(&s, b"a"), Some(chunk(1, 3000)));
        s.put(Space::Chunks, b"c", &chunk(3, 4096)).unwrap();
        s.flush().unwrap();
        let usage = s.usage();
        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut buf = [0u8; 8];
        while let Some(n) = s
            .next_key(Space::Chunks, b"", after.as_deref(), &mut buf)
            .unwrap()
        {
            keys.push(buf[..n].to_vec());
            after = Some(buf[..n].to_vec());
        }
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        s.abandon(); // a crash: the entries in memory are gone

        let mut s = open(dir.path()).unwrap();
        assert!(s.unindexed.is_empty(), "open indexes what it replays");
        assert_eq!(read(&s, b"a"), Some(chunk(1, 3000)));
        assert_eq!(read(&s, b"b"), Some(chunk(2, 2048)));
        assert_eq!(read(&s, b"c"), Some(chunk(3, 4096)));
        assert_eq!(s.usage(), usage);

        // A removal commits a transaction, with the entries still in
        // memory: a replay after it does not bring the chunk back.
        s.put(Space::Chunks, b"d", &chunk(4, 2500)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.unindexed.len(), 1);
        assert!(s.remove(Space::Chunks, b"d").unwrap());
        assert!(s.remove(Space::Chunks, b"a").unwrap());
        s.flush().unwrap();
        assert!(s.unindexed.is_empty());
        s.abandon();
        let s = open(dir.path()).unwrap();
        assert_eq!(read(&s, b"a"), None);
        assert_eq!(read(&s, b"d"), None);
        assert_eq!(read(&s, b"c"), Some(chunk(3, 4096)));
        assert_eq!(s.usage().entries, 2);
    }

    #[test]
    fn the_newest_value_wins_across_appends_transactions_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        for (round, value) in [
            chunk(1, 3000),
            chunk(2, 2100), // replaces an entry in memory
            chunk(3, 100),  // inline: a transaction
            chunk(4, 2200), // replaces an inline entry from the log
        ]
        .into_iter()
        .enumerate()
        {
            s.put(Space::Chunks, b"k", &value).unwrap();
            s.flush().unwrap();
            assert_eq!(read(&s, b"k").as_ref(), Some(&value), "round {round}");
            s.abandon();
            s = open(dir.path()).unwrap();
            assert_eq!(read(&s, b"k"), Some(value), "round {round}, reopened");
            assert_eq!(s.usage().entries, 1);
        }
        // Every replaced value was freed: one live chunk in the log.
        s.put(Space::Chunks, b"k", &chunk(5, 2300)).unwrap();
        s.flush().unwrap();
        s.put(Space::Chunks, b"k", &chunk(6, 2400)).unwrap();
        s.flush().unwrap();
        let live: u64 = s.log.live_bytes();
        assert_eq!(live, 2400);
    }

    #[test]
    fn a_checkpoint_keeps_its_own_writes_over_the_entries_it_folds_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.put(Space::Chunks, b"k", &chunk(1, 3000)).unwrap();
        s.put(Space::Chunks, b"gone", &chunk(2, 3000)).unwrap();
        s.put(Space::Chunks, b"kept", &chunk(3, 3000)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.unindexed.len(), 3);
        // An inline value and a removal: a checkpoint, whose own writes
        // are newer than the entries in memory it writes into redb.
        s.put(Space::Chunks, b"k", &chunk(4, 100)).unwrap();
        s.remove(Space::Chunks, b"gone").unwrap();
        s.flush().unwrap();
        assert!(s.unindexed.is_empty());
        for reopened in [false, true] {
            assert_eq!(read(&s, b"k"), Some(chunk(4, 100)), "reopened: {reopened}");
            assert_eq!(read(&s, b"gone"), None, "reopened: {reopened}");
            assert_eq!(
                read(&s, b"kept"),
                Some(chunk(3, 3000)),
                "reopened: {reopened}"
            );
            assert_eq!(s.log.live_bytes(), 3000, "reopened: {reopened}");
            s.abandon();
            s = open(dir.path()).unwrap();
        }
    }

    #[test]
    fn entries_in_memory_reach_the_index_at_the_checkpoint_size_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.checkpoint_entries = 4;
        for k in 0..3u8 {
            s.put(Space::Chunks, &[k], &chunk(k, 2048)).unwrap();
        }
        s.flush().unwrap();
        assert_eq!(s.unindexed.len(), 3);
        for k in 3..5u8 {
            s.put(Space::Chunks, &[k], &chunk(k, 2048)).unwrap();
        }
        s.flush().unwrap();
        assert!(
            s.unindexed.is_empty(),
            "five would pass four: a transaction"
        );
        s.put(Space::Chunks, &[9], &chunk(9, 2048)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.unindexed.len(), 1);
        s.close().unwrap();

        // Closed cleanly, the index names everything: nothing to replay.
        let db = DiskStore::open_file(&dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let index = txn.open_table(table(Space::Chunks)).unwrap();
        assert_eq!(index.len().unwrap(), 6);
        let marks = txn.open_table(CHUNK_LOG).unwrap();
        let indexed = Position::decode(marks.get(INDEXED_TO).unwrap().unwrap().value()).unwrap();
        drop((marks, index, txn, db));
        let mut log = ChunkLog::open(dir.path(), TEST_SEGMENT).unwrap();
        let mut replayed = 0;
        log.replay(indexed, |_, _| replayed += 1).unwrap();
        assert_eq!(replayed, 0);
        assert_eq!(indexed, log.end());
    }

    /// The segment file of `n` in the store in `dir`.
    fn segment_path(dir: &Path, n: u32) -> PathBuf {
        dir.join(log::DIR_NAME).join(format!("{n:08}.log"))
    }

    /// Where the chunk log's records end in `segment`: walking from its
    /// start record by record, the first place holding a zero byte (a
    /// record starts with 0xc5).
    fn records_end(segment: &Path) -> u64 {
        let bytes = std::fs::read(segment).unwrap();
        let mut at = 0;
        while at < bytes.len() && bytes[at] != 0 {
            let value_len = u32::from_le_bytes(bytes[at + 2..at + 6].try_into().unwrap());
            at += log::HEADER_LEN + usize::from(bytes[at + 1]) + value_len as usize;
        }
        at as u64
    }

    #[test]
    fn appends_after_a_torn_record_survive_the_next_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.put(Space::Chunks, b"a", &chunk(1, 3000)).unwrap();
        s.flush().unwrap();
        s.abandon();
        // A crash mid-append left half a record after the last one.
        let segment = segment_path(dir.path(), 1);
        let end = records_end(&segment);
        let record = std::fs::read(&segment).unwrap()[..end as usize].to_vec();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.write_all_at(&record[..record.len() / 2], end).unwrap();
        drop(file);

        let mut s = open(dir.path()).unwrap();
        assert_eq!(read(&s, b"a"), Some(chunk(1, 3000)));
        s.put(Space::Chunks, b"b", &chunk(2, 3000)).unwrap();
        s.flush().unwrap();
        assert_eq!(s.unindexed.len(), 1, "appended after the torn record");
        s.abandon();
        let s = open(dir.path()).unwrap();
        assert_eq!(read(&s, b"a"), Some(chunk(1, 3000)));
        assert_eq!(
            read(&s, b"b"),
            Some(chunk(2, 3000)),
            "replay starts past the torn record"
        );
    }

    /// Appends go into a spare prepared at full size; after a crash the
    /// replay finds where its records end (not the file's end), and later
    /// appends continue there, in the same segment.
    #[test]
    fn appends_fill_a_prepared_segment_across_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        assert!(s.log.wait_for_spare(), "a spare is prepared at open");
        s.put(Space::Chunks, b"a", &chunk(1, 3000)).unwrap();
        s.flush().unwrap();
        let segment = segment_path(dir.path(), 1);
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            TEST_SEGMENT,
            "segment 1 is the spare, at its full size"
        );
        s.abandon();
        for round in 2..6u8 {
            let mut s = open(dir.path()).unwrap();
            for k in 1..round {
                assert_eq!(
                    read(&s, &[b'a' + k - 1]),
                    Some(chunk(k, 3000)),
                    "round {round}"
                );
            }
            s.put(Space::Chunks, &[b'a' + round - 1], &chunk(round, 3000))
                .unwrap();
            s.flush().unwrap();
            s.abandon();
        }
        let files: Vec<_> = std::fs::read_dir(dir.path().join(log::DIR_NAME))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert_eq!(files, ["00000001.log"], "every append went to segment 1");
        let record = (log::HEADER_LEN + 1 + 3000) as u64;
        assert_eq!(records_end(&segment), 5 * record);
    }

    /// A crash can leave a batch's records intact behind one it cut short.
    /// They were never acknowledged, and later appends must never be
    /// followed by them: a replay would take them for newer writes.
    #[test]
    fn records_a_crash_left_behind_a_torn_one_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.log.wait_for_spare();
        s.put(Space::Chunks, b"a", &chunk(1, 3000)).unwrap();
        s.flush().unwrap();
        // The batch the crash cuts: x, damaged below, then y, intact.
        s.put(Space::Chunks, b"x", &chunk(2, 3000)).unwrap();
        s.put(Space::Chunks, b"y", &chunk(3, 3000)).unwrap();
        s.flush().unwrap();
        s.abandon();
        let segment = segment_path(dir.path(), 1);
        let record = (log::HEADER_LEN + 1 + 3000) as u64;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.write_all_at(&[0xff], record + 100).unwrap();
        drop(file);

        let mut s = open(dir.path()).unwrap();
        assert_eq!(read(&s, b"a"), Some(chunk(1, 3000)));
        assert_eq!(read(&s, b"y"), None, "the replay stops at the torn record");
        // A new y, the same size as x: where x was, it would sit right
        // before the old y.
        s.put(Space::Chunks, b"y", &chunk(4, 3000)).unwrap();
        s.flush().unwrap();
        s.abandon();
        let s = open(dir.path()).unwrap();
        assert_eq!(read(&s, b"y"), Some(chunk(4, 3000)), "the newest y");
    }

    /// One step of the model test below.
    #[derive(Clone, Debug)]
    enum Step {
        /// A chunk value: under 2 KiB it stays inline, else it goes to the log.
        Put {
            key: u8,
            len: usize,
            fill: u8,
        },
        Remove {
            key: u8,
        },
        Flush,
        /// A background flush: begun, and ended at a later `Poll` (or a
        /// step that waits for it).
        Begin,
        Poll,
        /// `kill -9`: what was not flushed is gone.
        Crash,
        /// A clean close and open.
        Reopen,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..6, prop_oneof![Just(100usize), 2048usize..4000], any::<u8>())
                .prop_map(|(key, len, fill)| Step::Put { key, len, fill }),
            1 => (0u8..6).prop_map(|key| Step::Remove { key }),
            2 => Just(Step::Flush),
            2 => Just(Step::Begin),
            2 => Just(Step::Poll),
            1 => Just(Step::Crash),
            1 => Just(Step::Reopen),
        ]
    }

    /// Opens the store with small segments and checkpoints, so a few steps
    /// roll segments over, compact them and checkpoint.
    fn open_small(dir: &Path) -> DiskStore {
        let mut s = DiskStore::open_in(dir, 12 * 1024).unwrap();
        s.checkpoint_entries = 3;
        s
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Against a map: every read sees the newest write, a crash keeps
        /// exactly what was flushed, and the live byte count of the chunk
        /// log, the usage and a `next_key` walk agree with it, through
        /// appends, checkpoints, replays and compaction.
        #[test]
        fn the_store_matches_a_map_through_flushes_crashes_and_reopens(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = open_small(dir.path());
            let mut now: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut durable = now.clone();
            // The state a background flush in flight makes durable.
            let mut inflight: Option<BTreeMap<Vec<u8>, Vec<u8>>> = None;
            for step in steps {
                match step {
                    Step::Put { key, len, fill } => {
                        let value = vec![fill; len];
                        s.put(Space::Chunks, &[key], &value).unwrap();
                        now.insert(vec![key], value);
                    }
                    Step::Remove { key } => {
                        let had = s.remove(Space::Chunks, &[key]).unwrap();
                        proptest::prop_assert_eq!(had, now.remove(&vec![key]).is_some());
                    }
                    Step::Flush => {
                        s.flush().unwrap();
                        inflight = None;
                        durable = now.clone();
                    }
                    Step::Begin => {
                        // The one in flight ends first.
                        durable = inflight.take().unwrap_or(durable);
                        match s.flush_begin() {
                            FlushBegun::Running(_) => inflight = Some(now.clone()),
                            FlushBegun::Done(result) => {
                                result.unwrap();
                                durable = now.clone();
                            }
                        }
                    }
                    Step::Poll => {
                        if inflight.is_some() {
                            // Waits for the commit, as the node's wake-up does.
                            let ended = loop {
                                if let Some(ended) = s.flush_poll() {
                                    break ended;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(1));
                            };
                            ended.1.unwrap();
                            durable = inflight.take().unwrap_or(durable);
                        } else {
                            proptest::prop_assert_eq!(s.flush_poll(), None);
                        }
                    }
                    Step::Crash => {
                        // A commit in flight lands (`abandon` waits for it).
                        durable = inflight.take().unwrap_or(durable);
                        s.abandon();
                        s = open_small(dir.path());
                        now = durable.clone();
                    }
                    Step::Reopen => {
                        s.close().unwrap();
                        s = open_small(dir.path());
                        inflight = None;
                        durable = now.clone();
                    }
                }
                for key in 0u8..6 {
                    proptest::prop_assert_eq!(read(&s, &[key]), now.get(&vec![key]).cloned());
                }
                proptest::prop_assert_eq!(walk(&s, Space::Chunks, b"", None), now.keys().cloned().collect::<Vec<_>>());
                proptest::prop_assert_eq!(s.usage().entries, now.len() as u64);
            }
            // Every flushed log value counted live once, and nothing else.
            s.flush().unwrap();
            let live: usize = now.values().filter(|v| v.len() >= INLINE_BELOW).map(Vec::len).sum();
            proptest::prop_assert_eq!(s.log.live_bytes(), live as u64);
        }
    }

    #[test]
    fn chunks_kept_in_the_database_move_into_the_log_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LEGACY_CHUNKS).unwrap();
                t.insert(b"old-a".as_slice(), [1u8; 3000].as_slice())
                    .unwrap();
                t.insert(b"old-b".as_slice(), [2u8; 50].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = open(dir.path()).unwrap();
        let mut out = [0u8; 4096];
        assert_eq!(s.get(Space::Chunks, b"old-a", &mut out), Ok(Some(3000)));
        assert_eq!(out[..3000], [1u8; 3000]);
        assert_eq!(s.get(Space::Chunks, b"old-b", &mut out), Ok(Some(50)));
        assert_eq!(out[..50], [2u8; 50]);
        assert_eq!(s.usage().entries, 2);
        let record = log::HEADER_LEN + b"old-a".len();
        assert_eq!(
            s.log.appended_bytes(),
            (record + 3000) as u64,
            "the small chunk stays inline"
        );
        s.close().unwrap();
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(
            txn.open_table(LEGACY_CHUNKS).is_err(),
            "the old table is gone"
        );
    }

    #[test]
    fn flush_without_changes_and_drop_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path()).unwrap();
        s.flush().unwrap();
        // A removal that finds nothing opens a transaction that changed
        // nothing; the flush lets it go.
        assert_eq!(s.remove(Space::Records, b"none"), Ok(false));
        s.flush().unwrap();
        assert_eq!(s.usage(), Usage::default());
        s.put(Space::Records, b"k", b"v").unwrap();
        drop(s);
        let s = open(dir.path()).unwrap();
        assert_eq!(s.get(Space::Records, b"k", &mut [0u8; 1]), Ok(Some(1)));
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        let e = open(dir.path()).err().unwrap();
        assert!(matches!(e, OpenError::Locked(_)));
        assert_eq!(
            e.to_string(),
            format!(
                "data dir {} is in use by another shoal-node (lock held)",
                dir.path().display()
            )
        );
        drop(first);
        open(dir.path()).unwrap();
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
