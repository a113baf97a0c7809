//! The chunk log: chunk bytes appended to segment files, located by an
//! index the store keeps in redb.
//!
//! A chunk is written once, sequentially, into the active segment
//! `DIR/chunks/NNNNNNNN.log`; redb holds only its [`Loc`] (16 bytes, and a
//! tag, under the chunk's key; chunks under 2 KiB stay in redb whole).
//! Inserting 2 KiB values under random keys straight into redb's B-tree
//! rewrote about five 4 KiB pages per chunk at every commit; an append
//! writes each byte about once.
//!
//! **Order of writes.** A commit first writes the batch's appends and syncs
//! each segment it touched ([`Appends::write_and_sync`]), then commits the
//! index. An index entry therefore never names bytes that are not on disk.
//! A crash between the two leaves bytes no entry names: dead space, which
//! compaction reclaims like any other.
//!
//! **Space.** The store counts, per segment, the bytes its committed index
//! entries name (`live`) beside the segment's length. A segment that is not
//! the active one and holds no live bytes is deleted; one whose live bytes
//! fell below half its length is compacted: the store writes its live
//! chunks again (they land in the active segment) and the segment, empty
//! once that commit lands, is deleted after it. So the chunk log takes at
//! most about twice the live chunk bytes, plus one segment.

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
    /// Bytes appended so far, committed or not.
    len: u64,
    /// Bytes the committed index names.
    live: u64,
}

/// One batch's appends, written by the committer before the index commit.
#[derive(Default)]
pub struct Appends {
    /// Per segment touched: the file, where the run starts, its bytes.
    runs: Vec<(Arc<File>, u64, Vec<u8>)>,
}

impl Appends {
    /// Writes every run and syncs each file it wrote.
    pub fn write_and_sync(&self) -> io::Result<()> {
        for (file, offset, bytes) in &self.runs {
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
    /// [`SEGMENT_BYTES`], but for tests.
    segment_bytes: u64,
}

impl ChunkLog {
    /// Opens (creating when missing) `DIR/chunks` under the data dir and
    /// every segment in it. Live counts start at zero: the store adds what
    /// its index names with [`ChunkLog::count_live`].
    pub fn open(data_dir: &Path) -> io::Result<ChunkLog> {
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
                },
            );
        }
        let mut log = ChunkLog {
            dir,
            segments,
            active: 0,
            compacting: BTreeSet::new(),
            segment_bytes: SEGMENT_BYTES,
        };
        match log.segments.last_key_value() {
            Some((&n, _)) => log.active = n,
            None => log.start_segment(1)?,
        }
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

    /// Creates segment `n` and makes it the active one. The folder is
    /// synced, so the file's name is durable before any index entry names it.
    fn start_segment(&mut self, n: u32) -> io::Result<()> {
        let file = Self::open_segment(&self.dir, n, true)?;
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                len: 0,
                live: 0,
            },
        );
        self.active = n;
        Ok(())
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

    /// Places `value` at the end of the active segment, starting the next
    /// segment first when it would pass [`SEGMENT_BYTES`], and adds it to
    /// `batch`.
    pub fn append(&mut self, batch: &mut Appends, value: &[u8]) -> io::Result<Loc> {
        let len = u32::try_from(value.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let active_len = self.segments.get(&self.active).map_or(0, |s| s.len);
        if active_len > 0 && active_len + u64::from(len) > self.segment_bytes {
            self.start_segment(self.active + 1)?;
        }
        let segment = self
            .segments
            .get_mut(&self.active)
            .ok_or(io::ErrorKind::NotFound)?;
        let loc = Loc {
            segment: self.active,
            offset: segment.len,
            len,
        };
        segment.len += u64::from(len);
        match batch.runs.last_mut() {
            Some((file, start, bytes))
                if Arc::ptr_eq(file, &segment.file)
                    && *start + bytes.len() as u64 == loc.offset =>
            {
                bytes.extend_from_slice(value);
            }
            _ => batch
                .runs
                .push((segment.file.clone(), loc.offset, value.to_vec())),
        }
        Ok(loc)
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

    /// Bytes in every segment, live or not.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    #[cfg(test)]
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }
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
        let mut log = ChunkLog::open(dir.path()).unwrap();
        let big = vec![0xabu8; (SEGMENT_BYTES / 2 + 1) as usize];
        let mut batch = Appends::default();
        let a = log.append(&mut batch, b"hello").unwrap();
        let b = log.append(&mut batch, &big).unwrap();
        let c = log.append(&mut batch, &big).unwrap();
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

        // Reopened, the segment is still there with its bytes.
        drop(log);
        let mut log = ChunkLog::open(dir.path()).unwrap();
        log.count_live(c);
        log.read(c, &mut out).unwrap();
        assert_eq!(out, big);
        let mut batch = Appends::default();
        let d = log.append(&mut batch, b"more").unwrap();
        assert_eq!((d.segment, d.offset), (2, big.len() as u64));
    }
}
