//! The chunk log: chunk bytes appended to segment files, located by an
//! index the store keeps in redb and, for the newest appends, in memory.
//!
//! A chunk is written once, sequentially, into the active segment
//! `DIR/chunks/NNNNNNNN.log`, as a record: a header (a magic byte, the
//! key's length, the value's length, a CRC-32 of those, the key and the
//! value), the key, the value. redb holds only its [`Loc`] (16 bytes, and a
//! tag, under the chunk's key; chunks under 2 KiB stay in redb whole).
//! Inserting 2 KiB values under random keys straight into redb's B-tree
//! rewrote about five 4 KiB pages per chunk at every commit; an append
//! writes each byte about once.
//!
//! **The log is the index's journal.** A batch of chunk appends only is
//! durable once its segments are synced: its index entries stay in memory,
//! and reach redb later, many at once, with any other write (a checkpoint).
//! redb records the log position its index covers; at open, the records
//! after that position are read back ([`ChunkLog::replay`]) and indexed.
//! A record cut short by a crash, or damaged, ends a segment's replay.
//!
//! **Order of writes.** A commit first writes the batch's appends and syncs
//! each segment it touched ([`Appends::write_and_sync`]), then commits the
//! index, if it commits one. An index entry therefore never names bytes
//! that are not on disk. A crash between the two leaves records the replay
//! indexes at the next open.
//!
//! **Prepared segments.** A segment is written into a file that already
//! has its full size, its blocks allocated and zeroed, and all of that
//! synced: a background thread prepares the next one (`DIR/chunks/spare`)
//! while the active one fills. An append then changes no file metadata, so
//! the sync that makes a batch durable writes the batch's bytes and
//! nothing else (on ext4 an `fdatasync` after an append to a growing file
//! also writes the inode, and takes about twice as long). A segment's
//! records therefore end before its file does, in zeros: after a crash,
//! [`ChunkLog::replay`] finds where the active segment's records end, and
//! appends go on from there. When the bytes after them are not all zeros
//! (a batch the crash cut short), they might hold records of that batch,
//! intact but never acknowledged, that a later replay would take for new
//! ones: appends then go to a fresh segment instead. When the disk has too
//! little room for a spare (less than two segments free), or preparing one
//! fails, the next segment is an empty file that grows as it is appended
//! to, as a segment of an earlier store is.
//!
//! **Space.** The store counts, per segment, the bytes its index entries
//! name (`live`) beside the segment's length. A segment that is not the
//! active one and holds no live bytes is deleted; one whose live bytes fell
//! below half its length is compacted: the store writes its live chunks
//! again (they land in the active segment) and the segment, empty once that
//! commit lands, is deleted after it. So the chunk log takes at most about
//! twice the live chunk bytes, plus two segments: the active one, whose
//! file has its full size from the start, and the spare.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The folder of segments inside the data dir.
pub const DIR_NAME: &str = "chunks";

/// A segment is sealed, and the next one started, once it reaches this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The prepared segment waiting to become the next active one.
const SPARE_NAME: &str = "spare";

/// A spare is written and synced this many bytes at a time.
const PREPARE_PIECE: usize = 512 << 10;

/// The page size appends are padded to, and a spare's size a multiple of
/// (as direct I/O needs).
const PAGE: u64 = 4096;

/// A spare being prepared; renamed to [`SPARE_NAME`] once whole and synced.
const SPARE_TMP: &str = "spare.tmp";

/// The first byte of every record.
const RECORD_MAGIC: u8 = 0xc5;

/// A record's header: magic, key length (u8), value length (u32), CRC-32
/// of those, the key and the value (u32), little-endian.
pub const HEADER_LEN: usize = 10;

/// A place in the log: a segment and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u32,
    pub offset: u64,
}

impl Position {
    pub const LEN: usize = 12;

    pub fn encode(self) -> [u8; Position::LEN] {
        let mut out = [0u8; Position::LEN];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..].copy_from_slice(&self.offset.to_le_bytes());
        out
    }

    /// `None` for bytes that are not an encoded position.
    pub fn decode(bytes: &[u8]) -> Option<Position> {
        let bytes: &[u8; Position::LEN] = bytes.try_into().ok()?;
        let (segment, offset) = bytes.split_at(4);
        Some(Position {
            segment: u32::from_le_bytes(segment.try_into().ok()?),
            offset: u64::from_le_bytes(offset.try_into().ok()?),
        })
    }
}

/// The header of a record holding `key` and `value`; `None` when the key
/// is too long for it (over 255 bytes) or the value over 4 GiB.
fn header(key: &[u8], value: &[u8]) -> Option<[u8; HEADER_LEN]> {
    let key_len = u8::try_from(key.len()).ok()?;
    let value_len = u32::try_from(value.len()).ok()?;
    let mut out = [0u8; HEADER_LEN];
    out[0] = RECORD_MAGIC;
    out[1] = key_len;
    out[2..6].copy_from_slice(&value_len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..6]);
    crc.update(key);
    crc.update(value);
    out[6..].copy_from_slice(&crc.finalize().to_le_bytes());
    Some(out)
}

/// The record at the start of `bytes`: its key, its value's offset in
/// `bytes` and length, and its whole length. `None` when `bytes` do not
/// start with a whole, intact record.
fn parse_record(bytes: &[u8]) -> Option<(&[u8], usize, u32, usize)> {
    let head = bytes.get(..HEADER_LEN)?;
    if head[0] != RECORD_MAGIC {
        return None;
    }
    let key_len = usize::from(head[1]);
    let value_len = u32::from_le_bytes(head[2..6].try_into().ok()?);
    let crc = u32::from_le_bytes(head[6..].try_into().ok()?);
    let value_at = HEADER_LEN + key_len;
    let end = value_at.checked_add(usize::try_from(value_len).ok()?)?;
    let key = bytes.get(HEADER_LEN..value_at)?;
    let value = bytes.get(value_at..end)?;
    let mut check = crc32fast::Hasher::new();
    check.update(&head[..6]);
    check.update(key);
    check.update(value);
    (check.finalize() == crc).then_some((key, value_at, value_len, end))
}

/// Where a chunk's bytes are: segment, offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    /// Encoded length, as stored in the index.
    pub const LEN: usize = 16;

    pub fn encode(self) -> [u8; Loc::LEN] {
        let mut out = [0u8; Loc::LEN];
        out[..4].copy_from_slice(&self.segment.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// `None` for bytes that are not an encoded location.
    pub fn decode(bytes: &[u8]) -> Option<Loc> {
        let bytes: &[u8; Loc::LEN] = bytes.try_into().ok()?;
        let (segment, rest) = bytes.split_at(4);
        let (offset, len) = rest.split_at(8);
        Some(Loc {
            segment: u32::from_le_bytes(segment.try_into().ok()?),
            offset: u64::from_le_bytes(offset.try_into().ok()?),
            len: u32::from_le_bytes(len.try_into().ok()?),
        })
    }
}

struct Segment {
    file: Arc<File>,
    /// Bytes appended so far, committed or not. For a prepared segment
    /// opened again, its file's length until [`ChunkLog::replay`] finds
    /// where its records end.
    len: u64,
    /// Bytes the committed index names.
    live: u64,
    /// The file's length when it was opened or started (a prepared
    /// segment's is its full size).
    size: u64,
}

/// The next segment's file, prepared ahead.
enum Spare {
    /// None on disk: none prepared yet, or no room for one.
    Missing,
    /// Being written by a background thread, which says whether it made one.
    Preparing(std::thread::JoinHandle<io::Result<bool>>),
    /// `DIR/chunks/spare`, whole and synced.
    Ready,
}

/// One batch's appends, written by the committer before the index commit.
#[derive(Default)]
pub struct Appends {
    /// Per segment touched: the file, where the run starts, its bytes.
    runs: Vec<(Arc<File>, u64, Vec<u8>)>,
    /// The bytes a new run reserves room for.
    expect: usize,
}

impl Appends {
    /// Appends of about `records` bytes of records (a run reserves them
    /// at once, rather than growing, and copying, as they come).
    pub fn with_capacity(records: usize) -> Appends {
        Appends {
            runs: Vec::new(),
            expect: records,
        }
    }

    /// Writes every run and syncs each file it wrote. A run is padded with
    /// zeros to the end of its last page: a write that ended inside a page
    /// the kernel does not hold (a spare is written around its cache) would
    /// first read that page from disk. The next run starts where its
    /// records end, over the padding.
    pub fn write_and_sync(&mut self) -> io::Result<()> {
        for (file, offset, bytes) in &mut self.runs {
            let end = *offset + bytes.len() as u64;
            bytes.resize(bytes.len() + (end.next_multiple_of(PAGE) - end) as usize, 0);
            file.write_all_at(bytes, *offset)?;
        }
        for (file, _, _) in &self.runs {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// A commit's change to the live bytes: locations it made live, and the
/// ones it replaced or removed.
#[derive(Default)]
pub struct LiveChange {
    pub added: Vec<Loc>,
    pub freed: Vec<Loc>,
}

/// The segment files.
pub struct ChunkLog {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    /// The segment appends go to; always in `segments`.
    active: u32,
    /// Segments whose live chunks were handed out for rewriting, until the
    /// commit that carries them ends.
    compacting: BTreeSet<u32>,
    /// The size of a segment: [`SEGMENT_BYTES`], but for tests.
    segment_bytes: u64,
    spare: Spare,
    /// The active segment takes no more appends: its records are followed
    /// by bytes a crash left (see the module's documentation).
    sealed: bool,
}

impl ChunkLog {
    /// Opens (creating when missing) `DIR/chunks` under the data dir and
    /// every segment in it, with segments of `segment_bytes`, and starts
    /// preparing a spare if there is none. Live counts start at zero: the
    /// store adds what its index names with [`ChunkLog::count_live`]. The
    /// active segment's end is known once [`ChunkLog::replay`] has read it:
    /// replay from the indexed position before the first append.
    pub fn open(data_dir: &Path, segment_bytes: u64) -> io::Result<ChunkLog> {
        let dir = data_dir.join(DIR_NAME);
        std::fs::create_dir_all(&dir)?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let file = Self::open_segment(&dir, n, false)?;
            let len = file.metadata()?.len();
            segments.insert(
                n,
                Segment {
                    file: Arc::new(file),
                    len,
                    live: 0,
                    size: len,
                },
            );
        }
        // A preparation a crash cut short.
        match std::fs::remove_file(dir.join(SPARE_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let spare = match std::fs::metadata(dir.join(SPARE_NAME)) {
            Ok(_) => Spare::Ready,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Spare::Missing,
            Err(e) => return Err(e),
        };
        let mut log = ChunkLog {
            dir,
            // The first segment is started by the first append, so that a
            // new store's can be a spare prepared meanwhile.
            active: segments.last_key_value().map_or(1, |(&n, _)| n),
            segments,
            compacting: BTreeSet::new(),
            segment_bytes,
            spare,
            sealed: false,
        };
        log.prepare_spare();
        Ok(log)
    }

    fn path(dir: &Path, n: u32) -> PathBuf {
        dir.join(format!("{n:08}.log"))
    }

    fn open_segment(dir: &Path, n: u32, create: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(Self::path(dir, n))
    }

    /// Starts segment `n` and makes it the active one: the spare, renamed,
    /// if one is ready, or else an empty file. The folder is synced, so the
    /// file's name is durable before any index entry names it.
    fn start_segment(&mut self, n: u32) -> io::Result<()> {
        let path = Self::path(&self.dir, n);
        let prepared = self.spare_ready() && {
            // Taken, or gone: either way the next one is prepared anew.
            self.spare = Spare::Missing;
            match std::fs::rename(self.dir.join(SPARE_NAME), &path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the prepared chunk log segment");
                    false
                }
            }
        };
        let file = Self::open_segment(&self.dir, n, !prepared)?;
        let size = file.metadata()?.len();
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                len: 0,
                live: 0,
                size,
            },
        );
        self.active = n;
        self.sealed = false;
        self.prepare_spare();
        Ok(())
    }

    /// Whether a spare is on disk, ready to be renamed; takes note of a
    /// preparation that has ended.
    fn spare_ready(&mut self) -> bool {
        if matches!(&self.spare, Spare::Preparing(h) if h.is_finished()) {
            let Spare::Preparing(h) = std::mem::replace(&mut self.spare, Spare::Missing) else {
                return false;
            };
            match h.join() {
                Ok(Ok(true)) => self.spare = Spare::Ready,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot prepare a chunk log segment"),
                Err(_) => tracing::warn!("preparing a chunk log segment panicked"),
            }
        }
        matches!(self.spare, Spare::Ready)
    }

    /// Starts preparing a spare in the background, unless one is ready or
    /// being prepared.
    fn prepare_spare(&mut self) {
        if !matches!(self.spare, Spare::Missing) {
            return;
        }
        let dir = self.dir.clone();
        let bytes = self.segment_bytes;
        match std::thread::Builder::new()
            .name("shoal-log-spare".into())
            .spawn(move || prepare(&dir, bytes))
        {
            Ok(h) => self.spare = Spare::Preparing(h),
            Err(e) => tracing::warn!(error = %e, "cannot start preparing a chunk log segment"),
        }
    }

    #[cfg(test)]
    pub fn wait_for_spare(&mut self) -> bool {
        if let Spare::Preparing(h) = &self.spare {
            while !h.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.spare_ready()
    }

    /// Counts `loc` as named by the committed index (at open).
    pub fn count_live(&mut self, loc: Loc) {
        if let Some(s) = self.segments.get_mut(&loc.segment) {
            s.live += u64::from(loc.len);
        }
    }

    /// Forgets every live count (before counting again after a failure).
    pub fn reset_live(&mut self) {
        for s in self.segments.values_mut() {
            s.live = 0;
        }
    }

    /// The bytes of a record holding `key` and `value`.
    pub fn record_len(key: &[u8], value: &[u8]) -> usize {
        HEADER_LEN + key.len() + value.len()
    }

    /// Places a record of `key` and `value` at the end of the active
    /// segment, starting the next segment first when it would pass
    /// [`SEGMENT_BYTES`], and adds it to `batch`. The location is the
    /// value's.
    pub fn append(&mut self, batch: &mut Appends, key: &[u8], value: &[u8]) -> io::Result<Loc> {
        let header = header(key, value).ok_or(io::ErrorKind::InvalidInput)?;
        let record = Self::record_len(key, value) as u64;
        match self.segments.get(&self.active).map(|s| s.len) {
            None => self.start_segment(self.active)?,
            Some(len) if self.sealed || (len > 0 && len + record > self.segment_bytes) => {
                self.start_segment(self.active + 1)?
            }
            Some(_) => {}
        }
        let segment = self
            .segments
            .get_mut(&self.active)
            .ok_or(io::ErrorKind::NotFound)?;
        let start = segment.len;
        let loc = Loc {
            segment: self.active,
            offset: start + (HEADER_LEN + key.len()) as u64,
            len: value.len() as u32,
        };
        segment.len += record;
        let run = match batch.runs.last_mut() {
            Some((file, at, bytes))
                if Arc::ptr_eq(file, &segment.file) && *at + bytes.len() as u64 == start =>
            {
                bytes
            }
            _ => {
                let room = batch.expect.next_multiple_of(PAGE as usize);
                batch
                    .runs
                    .push((segment.file.clone(), start, Vec::with_capacity(room)));
                &mut batch.runs.last_mut().ok_or(io::ErrorKind::NotFound)?.2
            }
        };
        run.extend_from_slice(&header);
        run.extend_from_slice(key);
        run.extend_from_slice(value);
        Ok(loc)
    }

    /// The end of the log: where the next append goes, unless it starts a
    /// segment.
    pub fn end(&self) -> Position {
        Position {
            segment: self.active,
            offset: self.segments.get(&self.active).map_or(0, |s| s.len),
        }
    }

    /// Hands `found` every intact record from `from` to the end of the log,
    /// in order: its key and its value's location. A segment's replay ends
    /// at its first record that is cut short or damaged, or at the zeros
    /// of a prepared segment's unwritten tail. Reads each segment once,
    /// from `from` on. Appends then go on after the active segment's last
    /// intact record, or to a new segment when bytes other than zeros
    /// follow it.
    pub fn replay(&mut self, from: Position, mut found: impl FnMut(&[u8], Loc)) -> io::Result<()> {
        let active = self.active;
        for (&n, segment) in self.segments.range_mut(from.segment..) {
            let start = if n == from.segment { from.offset } else { 0 };
            if start >= segment.len {
                continue;
            }
            let mut bytes = vec![0u8; (segment.len - start) as usize];
            segment.file.read_exact_at(&mut bytes, start)?;
            let mut at = 0usize;
            while let Some((key, value_at, len, end)) = bytes.get(at..).and_then(parse_record) {
                let loc = Loc {
                    segment: n,
                    offset: start + (at + value_at) as u64,
                    len,
                };
                found(key, loc);
                at += end;
            }
            let clean = bytes[at..].iter().all(|&b| b == 0);
            if !clean {
                tracing::warn!(
                    segment = n,
                    offset = start + at as u64,
                    bytes = bytes.len() - at,
                    "the chunk log ends in a record cut short or damaged; replay skips it"
                );
            }
            if n == active {
                if clean {
                    segment.len = start + at as u64;
                } else {
                    self.sealed = true;
                }
            }
        }
        Ok(())
    }

    /// Reads the bytes at `loc` into `out` (at least `loc.len` long).
    pub fn read(&self, loc: Loc, out: &mut [u8]) -> io::Result<()> {
        let segment = self
            .segments
            .get(&loc.segment)
            .ok_or(io::ErrorKind::NotFound)?;
        let out = out
            .get_mut(..loc.len as usize)
            .ok_or(io::ErrorKind::InvalidInput)?;
        segment.file.read_exact_at(out, loc.offset)
    }

    /// Applies a committed batch's change to the live counts.
    pub fn committed(&mut self, change: &LiveChange) {
        for loc in &change.added {
            if let Some(s) = self.segments.get_mut(&loc.segment) {
                s.live += u64::from(loc.len);
            }
        }
        for loc in &change.freed {
            if let Some(s) = self.segments.get_mut(&loc.segment) {
                s.live = s.live.saturating_sub(u64::from(loc.len));
            }
        }
    }

    /// A commit that would have rewritten compacting segments' chunks
    /// failed: they may be picked again.
    pub fn compaction_failed(&mut self) {
        self.compacting.clear();
    }

    /// Deletes every segment but the active one that holds no live bytes.
    /// Call only while no commit is in flight (its appends may be all a
    /// segment holds).
    pub fn reclaim(&mut self) -> io::Result<()> {
        let empty: Vec<u32> = self
            .segments
            .iter()
            .filter(|&(&n, s)| n != self.active && s.live == 0)
            .map(|(&n, _)| n)
            .collect();
        for n in empty {
            match std::fs::remove_file(Self::path(&self.dir, n)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.segments.remove(&n);
            self.compacting.remove(&n);
        }
        Ok(())
    }

    /// Sealed segments less than half live and not already being
    /// compacted; they count as compacting from now on.
    pub fn pick_for_compaction(&mut self) -> BTreeSet<u32> {
        let picked: BTreeSet<u32> = self
            .segments
            .iter()
            .filter(|&(&n, s)| {
                n != self.active && s.live * 2 < s.len && !self.compacting.contains(&n)
            })
            .map(|(&n, _)| n)
            .collect();
        self.compacting.extend(picked.iter().copied());
        picked
    }

    /// Bytes the segment files take, live or not, and the spare's.
    pub fn disk_bytes(&self) -> u64 {
        let spare = match self.spare {
            Spare::Ready => self.segment_bytes,
            _ => 0,
        };
        let segments: u64 = self.segments.values().map(|s| s.len.max(s.size)).sum();
        segments + spare
    }

    #[cfg(test)]
    pub fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live).sum()
    }

    #[cfg(test)]
    pub fn appended_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Drop for ChunkLog {
    fn drop(&mut self) {
        // Not left writing into a folder its owner may be about to delete.
        if let Spare::Preparing(h) = std::mem::replace(&mut self.spare, Spare::Missing) {
            let _ = h.join();
        }
    }
}

/// Writes a segment's worth of zeros (`bytes`, to a whole page) into
/// `DIR/spare.tmp`, syncs it, and renames it `DIR/spare`. Makes none
/// (`Ok(false)`) when the file system would keep less than a segment free
/// after it: that room is for the chunks themselves.
fn prepare(dir: &Path, bytes: u64) -> io::Result<bool> {
    let bytes = bytes.next_multiple_of(PAGE);
    let fs = rustix::fs::statvfs(dir)?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free < bytes.saturating_mul(2) {
        return Ok(false);
    }
    // Beside a busy node: at the lowest CPU priority.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
    let tmp = dir.join(SPARE_TMP);
    let written = match write_zeros(&tmp, bytes, true) {
        // No direct I/O on this file system.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            write_zeros(&tmp, bytes, false)
        }
        other => other,
    }
    .and_then(|()| std::fs::rename(&tmp, dir.join(SPARE_NAME)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| true)
}

/// Creates `path` with `bytes` of zeros, synced. With `direct`, around the
/// page cache: copying zeros into it costs more than the disk write, and a
/// spare's pages are not read before they are written again. A piece at a
/// time, each synced, so its writes never queue far ahead of the log's
/// syncs (which would wait for them).
fn write_zeros(path: &Path, bytes: u64, direct: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if direct {
        rustix::fs::OFlags::DIRECT.bits()
    } else {
        0
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags as i32)
        .open(path)?;
    // Reserve the blocks first, so a disk filling meanwhile fails this at
    // once rather than midway (where unsupported, the zeros do it).
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Err(rustix::io::Errno::OPNOTSUPP) | Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    // Direct I/O wants a buffer aligned to the page.
    let buffer = vec![0u8; PREPARE_PIECE + PAGE as usize];
    let start = buffer.as_ptr().align_offset(PAGE as usize);
    let zeros = &buffer[start..start + PREPARE_PIECE];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        file.sync_data()?;
        at += n;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_round_trips_and_junk_is_refused() {
        let loc = Loc {
            segment: 7,
            offset: 1 << 40,
            len: 2048,
        };
        assert_eq!(Loc::decode(&loc.encode()), Some(loc));
        assert_eq!(Loc::decode(&[0u8; 15]), None);
        assert_eq!(Loc::decode(&[0u8; 17]), None);
    }

    #[test]
    fn appends_read_back_roll_over_and_empty_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        const SEGMENT: u64 = 64 << 10;
        let mut log = ChunkLog::open(dir.path(), SEGMENT).unwrap();
        let big = vec![0xabu8; (SEGMENT / 2 + 1) as usize];
        let mut batch = Appends::default();
        let a = log.append(&mut batch, b"a", b"hello").unwrap();
        let b = log.append(&mut batch, b"b", &big).unwrap();
        let c = log.append(&mut batch, b"c", &big).unwrap();
        assert_eq!((a.segment, b.segment), (1, 1), "a and b fit segment 1");
        assert_eq!(c.segment, 2, "c would pass the segment size: a new one");
        assert_eq!(batch.runs.len(), 2, "one run per segment");
        batch.write_and_sync().unwrap();
        let mut out = vec![0u8; big.len()];
        log.read(a, &mut out).unwrap();
        assert_eq!(&out[..5], b"hello");
        log.read(c, &mut out).unwrap();
        assert_eq!(out, big);

        // Only c is live: segment 1 is sealed and empty, so it goes.
        log.committed(&LiveChange {
            added: vec![c],
            freed: vec![],
        });
        assert!(log.pick_for_compaction().contains(&1));
        log.reclaim().unwrap();
        assert_eq!(log.segment_count(), 1);
        assert!(log.read(a, &mut out).is_err(), "segment 1 is gone");

        // Reopened, the segment is still there with its bytes, and the
        // replay finds where they end.
        drop(log);
        let mut log = ChunkLog::open(dir.path(), SEGMENT).unwrap();
        let mut found = Vec::new();
        log.replay(
            Position {
                segment: 2,
                offset: 0,
            },
            |key, loc| found.push((key.to_vec(), loc)),
        )
        .unwrap();
        assert_eq!(found, [(b"c".to_vec(), c)]);
        log.count_live(c);
        log.read(c, &mut out).unwrap();
        assert_eq!(out, big);
        let mut batch = Appends::default();
        let d = log.append(&mut batch, b"d", b"more").unwrap();
        let record = (HEADER_LEN + 1) as u64;
        assert_eq!(
            (d.segment, d.offset),
            (2, record + big.len() as u64 + record)
        );
    }

    #[test]
    fn replay_finds_every_intact_record_and_stops_at_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ChunkLog::open(dir.path(), 110).unwrap(); // two records of 52 bytes
        let mut batch = Appends::default();
        let first = log.append(&mut batch, b"k1", &[1; 40]).unwrap();
        let from = log.end();
        let second = log.append(&mut batch, b"k2", &[2; 40]).unwrap();
        let third = log.append(&mut batch, b"k3", &[3; 40]).unwrap();
        assert_eq!((first.segment, second.segment, third.segment), (1, 1, 2));
        batch.write_and_sync().unwrap();

        let replayed = |log: &mut ChunkLog, from| {
            let mut found = Vec::new();
            log.replay(from, |key, loc| found.push((key.to_vec(), loc)))
                .unwrap();
            found
        };
        let all = replayed(
            &mut log,
            Position {
                segment: 1,
                offset: 0,
            },
        );
        assert_eq!(
            all,
            [
                (b"k1".to_vec(), first),
                (b"k2".to_vec(), second),
                (b"k3".to_vec(), third)
            ]
        );
        assert_eq!(replayed(&mut log, from), all[1..]);
        let mut out = [0u8; 40];
        log.read(third, &mut out).unwrap();
        assert_eq!(out, [3; 40]);

        // A flipped value byte fails the record's checksum: replay of
        // segment 1 stops there, and segment 2 is replayed on its own.
        let path = ChunkLog::path(&dir.path().join(DIR_NAME), 1);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[9], second.offset + 3).unwrap();
        // A record cut short at the end of segment 2.
        let mut torn = Appends::default();
        log.append(&mut torn, b"k4", &[4; 20]).unwrap();
        let (file, at, bytes) = &torn.runs[0];
        file.write_all_at(&bytes[..bytes.len() - 1], *at).unwrap();
        drop(torn);
        let mut log = ChunkLog::open(dir.path(), 110).unwrap();
        let found = replayed(
            &mut log,
            Position {
                segment: 1,
                offset: 0,
            },
        );
        assert_eq!(found, [(b"k1".to_vec(), first), (b"k3".to_vec(), third)]);
    }

    #[test]
    fn records_parse_only_when_whole_and_intact() {
        let value = [7u8; 30];
        let mut record = header(b"key", &value).unwrap().to_vec();
        record.extend_from_slice(b"key");
        record.extend_from_slice(&value);
        let (key, at, len, end) = parse_record(&record).unwrap();
        assert_eq!(
            (key, at, len, end),
            (&b"key"[..], HEADER_LEN + 3, 30, record.len())
        );
        for cut in 0..record.len() {
            assert_eq!(parse_record(&record[..cut]), None, "cut at {cut}");
        }
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x10;
            assert_eq!(parse_record(&bad), None, "byte {i} flipped");
        }
        assert_eq!(
            header(&[0; 256], b"v"),
            None,
            "a key over 255 bytes has no header"
        );
        assert_eq!(
            Position::decode(
                &Position {
                    segment: 3,
                    offset: 9
                }
                .encode()
            ),
            Some(Position {
                segment: 3,
                offset: 9
            })
        );
        assert_eq!(Position::decode(&[0; 11]), None);
    }
}
