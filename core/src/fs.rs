//! The file system's data model: paths, content-addressed chunks, the chunk
//! tree of a file, and the records that name files and directories.
//!
//! A file's bytes are cut into chunks of the cluster's chunk size; each
//! chunk is named by its SHA-256 ([`ChunkId`]) and stored in the `data`
//! pool at `route(id)`, so identical chunks are stored once. The ids are
//! gathered into *index chunks* of at most [`FANOUT`] ids, and those into
//! further index chunks, until one id — the file's root — names the whole
//! file: a Merkle tree, so the root alone verifies every byte.
//!
//! Records (placed in the `meta` pool, see [`crate::repl`]):
//! - the file record, placement `F<path>`: a [`FileMeta`] with the root;
//! - one directory entry per name, placement `D<dir>`, suffix the name:
//!   a [`DirEntry`]. Every entry of a directory shares one placement, so a
//!   listing is one ordered scan on the directory's replicas.
//!
//! Writers and readers are sans-IO: [`TreeBuilder`] turns a stream of data
//! chunk ids into index chunks and a root, [`TreeWalk`] turns a root back
//! into data chunk ids in file order, asking for index chunks as it goes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Pool;
use crate::repl::RecordKey;
use crate::router::KeyDigest;

/// Ids in one index chunk.
pub const FANOUT: usize = 64;
/// Bytes of a full index chunk.
pub const INDEX_CHUNK: usize = FANOUT * 32;
/// Deepest chunk tree: `FANOUT^MAX_DEPTH` data chunks.
pub const MAX_DEPTH: usize = 7;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 400;
/// Smallest and largest chunk sizes a cluster may choose.
pub const CHUNK_SIZES: core::ops::RangeInclusive<u32> = 1024..=15 * 1024;

/// A chunk's name: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(bytes).into())
    }

    /// Where the router places the chunk: its id is already a digest.
    pub const fn digest(&self) -> KeyDigest {
        KeyDigest(self.0)
    }

    /// Whether `bytes` are this chunk.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        ChunkId::of(bytes) == *self
    }
}

impl core::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl core::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PathError {
    /// The path is empty.
    Empty,
    /// Longer than [`MAX_PATH`] bytes.
    TooLong,
    /// An empty, `.` or `..` component, or a NUL or control character.
    BadComponent,
    /// The root `/` names a directory, not a file.
    Root,
}

impl core::fmt::Display for PathError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PathError::Empty => "the path is empty",
            PathError::TooLong => "the path is longer than 400 bytes",
            PathError::BadComponent => {
                "the path has an empty, '.' or '..' component, or a control character"
            }
            PathError::Root => "'/' is a directory, not a file",
        })
    }
}

/// A normalised path: `/` followed by `/`-separated names, none of them
/// empty, `.` or `..`, no trailing `/`. The root is `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsPath<'a>(&'a str);

impl<'a> FsPath<'a> {
    /// Checks `path`, which must already be normalised (see the type docs);
    /// [`FsPath::ROOT`] is allowed.
    pub fn new(path: &'a str) -> Result<FsPath<'a>, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if path == "/" {
            return Ok(FsPath(path));
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(PathError::BadComponent);
        };
        for name in rest.split('/') {
            if name.is_empty() || name == "." || name == ".." || name.chars().any(char::is_control)
            {
                return Err(PathError::BadComponent);
            }
        }
        Ok(FsPath(path))
    }

    /// The root directory.
    pub const ROOT: FsPath<'static> = FsPath("/");

    /// The path as text.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The parent directory and the last name; `None` for the root.
    pub fn split(&self) -> Option<(FsPath<'a>, &'a str)> {
        if self.is_root() {
            return None;
        }
        let i = self.0.rfind('/')?;
        let parent = if i == 0 { "/" } else { &self.0[..i] };
        Some((FsPath(parent), &self.0[i + 1..]))
    }

    /// Placement key of the file record: `F` + path.
    pub fn file_placement<'b>(&self, buf: &'b mut [u8; MAX_PATH + 1]) -> &'b [u8] {
        placement(b'F', self.0, buf)
    }

    /// Placement key of this directory's entries: `D` + path.
    pub fn dir_placement<'b>(&self, buf: &'b mut [u8; MAX_PATH + 1]) -> &'b [u8] {
        placement(b'D', self.0, buf)
    }
}

fn placement<'b>(tag: u8, path: &str, buf: &'b mut [u8; MAX_PATH + 1]) -> &'b [u8] {
    buf[0] = tag;
    buf[1..=path.len()].copy_from_slice(path.as_bytes());
    &buf[..=path.len()]
}

/// The record key of `path`'s file record.
pub fn file_key<'b>(path: FsPath<'_>, buf: &'b mut [u8; MAX_PATH + 1]) -> RecordKey<'b> {
    RecordKey {
        pool: Pool::Meta,
        placement: path.file_placement(buf),
        suffix: &[],
    }
}

/// The record key of entry `name` in directory `dir`.
pub fn entry_key<'b>(
    dir: FsPath<'_>,
    name: &'b str,
    buf: &'b mut [u8; MAX_PATH + 1],
) -> RecordKey<'b> {
    RecordKey {
        pool: Pool::Meta,
        placement: dir.dir_placement(buf),
        suffix: name.as_bytes(),
    }
}

/// A file record: everything needed to read the file back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Length in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub mtime_ms: u64,
    /// The chunk size the file was cut with.
    pub chunk_size: u32,
    /// The file's data chunks.
    pub chunks: u64,
    /// The tree's root, `None` for an empty file.
    pub root: Option<ChunkId>,
    /// The root's depth: 0 when it is the only data chunk.
    pub depth: u8,
}

impl FileMeta {
    /// Whether the fields agree with each other, so a reader may trust the
    /// shape before fetching anything.
    pub fn is_consistent(&self) -> bool {
        let cs = u64::from(self.chunk_size);
        if !CHUNK_SIZES.contains(&self.chunk_size) || usize::from(self.depth) > MAX_DEPTH {
            return false;
        }
        if self.chunks != self.size.div_ceil(cs) {
            return false;
        }
        match self.root {
            None => self.size == 0 && self.depth == 0,
            Some(_) => {
                let capacity = (FANOUT as u64).checked_pow(u32::from(self.depth));
                self.chunks > 0 && capacity.is_none_or(|c| self.chunks <= c)
            }
        }
    }
}

impl FileMeta {
    /// The record value: postcard.
    pub fn encode<'b>(&self, out: &'b mut [u8]) -> Option<&'b mut [u8]> {
        postcard::to_slice(self, out).ok()
    }

    /// Parses a record value; `None` when it does not parse or its fields
    /// disagree ([`FileMeta::is_consistent`]).
    pub fn decode(bytes: &[u8]) -> Option<FileMeta> {
        postcard::from_bytes::<FileMeta>(bytes)
            .ok()
            .filter(FileMeta::is_consistent)
    }
}

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A file.
    File,
    /// A directory: made on the first put below it, kept after its files go.
    Dir,
}

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// File or directory.
    pub kind: EntryKind,
    /// The file's size (0 for a directory).
    pub size: u64,
    /// The file's modification time (0 for a directory).
    pub mtime_ms: u64,
}

impl DirEntry {
    /// The record value: postcard.
    pub fn encode<'b>(&self, out: &'b mut [u8]) -> Option<&'b mut [u8]> {
        postcard::to_slice(self, out).ok()
    }

    /// Parses a record value.
    pub fn decode(bytes: &[u8]) -> Option<DirEntry> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Builds a file's chunk tree from its data chunk ids, in file order.
///
/// Each completed index chunk is handed to the caller's `emit(id, bytes)`
/// to be stored like any other chunk; [`TreeBuilder::finish`] gives the
/// root. Memory: [`MAX_DEPTH`] partial index chunks, about 14 KiB.
#[derive(Clone, Debug, Default)]
pub struct TreeBuilder {
    levels: heapless::Vec<heapless::Vec<ChunkId, FANOUT>, MAX_DEPTH>,
    chunks: u64,
}

/// Why a tree could not grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeFull;

impl TreeBuilder {
    /// An empty tree.
    pub fn new() -> TreeBuilder {
        TreeBuilder::default()
    }

    /// Data chunks pushed so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Appends a data chunk's id.
    pub fn push(
        &mut self,
        id: ChunkId,
        emit: &mut impl FnMut(ChunkId, &[u8]),
    ) -> Result<(), TreeFull> {
        self.push_at(0, id, emit)?;
        self.chunks += 1;
        Ok(())
    }

    fn push_at(
        &mut self,
        level: usize,
        id: ChunkId,
        emit: &mut impl FnMut(ChunkId, &[u8]),
    ) -> Result<(), TreeFull> {
        if level >= MAX_DEPTH {
            return Err(TreeFull);
        }
        while self.levels.len() <= level {
            self.levels
                .push(heapless::Vec::new())
                .map_err(|_| TreeFull)?;
        }
        if self.levels[level].is_full() {
            let parent = seal(&mut self.levels[level], emit);
            self.push_at(level + 1, parent, emit)?;
        }
        self.levels[level].push(id).map_err(|_| TreeFull)
    }

    /// Subtrees that together hold every chunk pushed so far: each id not
    /// yet sealed into an index chunk, with its depth (0: a data chunk).
    /// Marking these for GC ([`Request::ChunkMark`]) keeps a tree still
    /// being built, once the index chunks it emitted are stored.
    ///
    /// [`Request::ChunkMark`]: crate::node::Request::ChunkMark
    pub fn cover(&self) -> impl Iterator<Item = (ChunkId, u8)> + '_ {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(depth, ids)| ids.iter().map(move |id| (*id, depth as u8)))
    }

    /// Closes the tree: the root and its depth (`None` and 0 for no chunks).
    pub fn finish(mut self, emit: &mut impl FnMut(ChunkId, &[u8])) -> (Option<ChunkId>, u8) {
        let mut level = 0;
        while level < self.levels.len() {
            let top = self.levels[level + 1..].iter().all(|l| l.is_empty());
            if top && self.levels[level].len() == 1 {
                return (Some(self.levels[level][0]), level as u8);
            }
            if !self.levels[level].is_empty() {
                let parent = seal(&mut self.levels[level], emit);
                // The level above has room: it was emptied when it last
                // filled, and a full level seals before taking more.
                if self.push_at(level + 1, parent, emit).is_err() {
                    return (None, 0);
                }
            }
            level += 1;
        }
        (None, 0)
    }
}

/// Turns a level into an index chunk, emits it and empties the level.
fn seal(
    level: &mut heapless::Vec<ChunkId, FANOUT>,
    emit: &mut impl FnMut(ChunkId, &[u8]),
) -> ChunkId {
    let mut bytes = [0u8; INDEX_CHUNK];
    for (i, id) in level.iter().enumerate() {
        bytes[i * 32..(i + 1) * 32].copy_from_slice(&id.0);
    }
    let bytes = &bytes[..level.len() * 32];
    let id = ChunkId::of(bytes);
    emit(id, bytes);
    level.clear();
    id
}

/// Walks a file's tree from its root, yielding data chunk ids in file
/// order; index chunks are asked for as they are needed.
#[derive(Clone, Debug)]
pub struct TreeWalk {
    /// Per depth below the root: the ids of the index chunk being walked
    /// and the next position in it.
    stack: heapless::Vec<(heapless::Vec<ChunkId, FANOUT>, usize), MAX_DEPTH>,
    pending: Option<ChunkId>,
    root: Option<(ChunkId, u8)>,
    depth: u8,
    yielded: u64,
}

/// The walk's next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Fetch this index chunk and hand its bytes to [`TreeWalk::feed`].
    NeedIndex(ChunkId),
    /// The next data chunk.
    Data(ChunkId),
    /// No more chunks.
    Done,
}

/// An index chunk that does not parse: wrong length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadIndex;

impl TreeWalk {
    /// A walk over the tree `meta` describes.
    pub fn new(meta: &FileMeta) -> TreeWalk {
        TreeWalk {
            stack: heapless::Vec::new(),
            pending: None,
            root: meta.root.map(|r| (r, meta.depth)),
            depth: meta.depth,
            yielded: 0,
        }
    }

    /// Data chunks yielded so far.
    pub fn yielded(&self) -> u64 {
        self.yielded
    }

    /// The next step. After [`Step::NeedIndex`], call [`TreeWalk::feed`]
    /// with the chunk's verified bytes before stepping again.
    pub fn step(&mut self) -> Step {
        if let Some(p) = self.pending {
            return Step::NeedIndex(p);
        }
        if let Some((root, depth)) = self.root.take() {
            if depth == 0 {
                self.yielded += 1;
                return Step::Data(root);
            }
            self.pending = Some(root);
            return Step::NeedIndex(root);
        }
        loop {
            let depth_below = self.depth_left();
            let Some((ids, pos)) = self.stack.last_mut() else {
                return Step::Done;
            };
            if *pos >= ids.len() {
                self.stack.pop();
                continue;
            }
            let id = ids[*pos];
            *pos += 1;
            if depth_below == 0 {
                self.yielded += 1;
                return Step::Data(id);
            }
            self.pending = Some(id);
            return Step::NeedIndex(id);
        }
    }

    /// How many index levels lie below the innermost open index chunk.
    fn depth_left(&self) -> usize {
        usize::from(self.depth).saturating_sub(self.stack.len())
    }

    /// The bytes of the index chunk last asked for.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), BadIndex> {
        if self.pending.is_none()
            || bytes.is_empty()
            || !bytes.len().is_multiple_of(32)
            || bytes.len() > INDEX_CHUNK
            || self.stack.is_full()
        {
            return Err(BadIndex);
        }
        let ids = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                ChunkId(id)
            })
            .collect();
        self.pending = None;
        self.stack.push((ids, 0)).map_err(|_| BadIndex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    fn data_id(i: u64) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    /// Builds a tree over `n` chunks and walks it back.
    fn round_trip(n: u64) -> (Vec<ChunkId>, u8) {
        let mut index = HashMap::new();
        let mut emit = |id: ChunkId, bytes: &[u8]| {
            assert!(id.verifies(bytes));
            index.insert(id, bytes.to_vec());
        };
        let mut b = TreeBuilder::new();
        for i in 0..n {
            b.push(data_id(i), &mut emit).unwrap();
        }
        let (root, depth) = b.finish(&mut emit);
        let meta = FileMeta {
            size: n * 1024,
            mtime_ms: 0,
            chunk_size: 1024,
            chunks: n,
            root,
            depth,
        };
        assert!(meta.is_consistent(), "{meta:?}");
        let mut walk = TreeWalk::new(&meta);
        let mut out = Vec::new();
        loop {
            match walk.step() {
                Step::Done => break,
                Step::Data(id) => out.push(id),
                Step::NeedIndex(id) => walk.feed(&index[&id]).unwrap(),
            }
        }
        assert_eq!(walk.yielded(), n);
        (out, depth)
    }

    #[test]
    fn trees_of_every_shape_walk_back_in_order() {
        for n in [0, 1, 2, 63, 64, 65, 64 * 64, 64 * 64 + 1, 3 * 64 * 64 + 17] {
            let (ids, depth) = round_trip(n);
            let want: Vec<ChunkId> = (0..n).map(data_id).collect();
            assert_eq!(ids, want, "n = {n}");
            let expect_depth = match n {
                0 | 1 => 0,
                2..=64 => 1,
                65..=4096 => 2,
                _ => 3,
            };
            assert_eq!(depth, expect_depth, "n = {n}");
        }
    }

    #[test]
    fn a_bad_index_chunk_is_refused() {
        let meta = FileMeta {
            size: 3000,
            mtime_ms: 0,
            chunk_size: 1024,
            chunks: 3,
            root: Some(data_id(0)),
            depth: 1,
        };
        let mut w = TreeWalk::new(&meta);
        assert_eq!(w.step(), Step::NeedIndex(data_id(0)));
        assert_eq!(w.feed(&[0; 31]), Err(BadIndex));
        assert_eq!(w.feed(&[]), Err(BadIndex));
        assert_eq!(w.feed(&[0; INDEX_CHUNK + 32]), Err(BadIndex));
        w.feed(&[7; 64]).unwrap();
        assert_eq!(w.step(), Step::Data(ChunkId([7; 32])));
        assert_eq!(w.feed(&[0; 32]), Err(BadIndex), "nothing was asked for");
    }

    #[test]
    fn cover_reaches_every_chunk_pushed_so_far() {
        use std::collections::HashMap;
        let mut index: HashMap<ChunkId, Vec<ChunkId>> = HashMap::new();
        let mut b = TreeBuilder::new();
        let n = FANOUT * FANOUT + 5;
        for i in 0..n {
            b.push(data_id(i as u64), &mut |id, bytes| {
                let children = bytes.chunks(32).map(|c| ChunkId(c.try_into().unwrap()));
                index.insert(id, children.collect());
            })
            .unwrap();
            if i % 997 != 0 && i != n - 1 {
                continue;
            }
            // Expanding the cover through the index chunks emitted so far
            // gives back exactly the data chunks pushed so far.
            let mut leaves = Vec::new();
            let mut stack: Vec<(ChunkId, u8)> = b.cover().collect();
            while let Some((id, depth)) = stack.pop() {
                if depth == 0 {
                    leaves.push(id);
                } else {
                    stack.extend(index[&id].iter().map(|c| (*c, depth - 1)));
                }
            }
            leaves.sort();
            let mut want: Vec<ChunkId> = (0..=i).map(|j| data_id(j as u64)).collect();
            want.sort();
            assert_eq!(leaves, want, "after {} chunks", i + 1);
        }
    }

    #[test]
    fn meta_consistency() {
        let mut m = FileMeta {
            size: 1025,
            mtime_ms: 0,
            chunk_size: 1024,
            chunks: 2,
            root: Some(data_id(1)),
            depth: 1,
        };
        assert!(m.is_consistent());
        m.chunks = 3;
        assert!(!m.is_consistent());
        m.chunks = 2;
        m.root = None;
        assert!(!m.is_consistent());
        let empty = FileMeta {
            size: 0,
            chunks: 0,
            root: None,
            depth: 0,
            ..m
        };
        assert!(empty.is_consistent());
        let tiny = FileMeta {
            chunk_size: 10,
            ..empty
        };
        assert!(!tiny.is_consistent());
    }

    #[test]
    fn paths() {
        assert_eq!(FsPath::new(""), Err(PathError::Empty));
        assert_eq!(FsPath::new("a"), Err(PathError::BadComponent));
        assert_eq!(FsPath::new("/a//b"), Err(PathError::BadComponent));
        assert_eq!(FsPath::new("/a/"), Err(PathError::BadComponent));
        assert_eq!(FsPath::new("/a/../b"), Err(PathError::BadComponent));
        assert_eq!(FsPath::new("/a\nb"), Err(PathError::BadComponent));
        let long = "/".to_string() + &"x".repeat(MAX_PATH);
        assert_eq!(FsPath::new(&long), Err(PathError::TooLong));
        let p = FsPath::new("/docs/a b.txt").unwrap();
        let (dir, name) = p.split().unwrap();
        assert_eq!((dir.as_str(), name), ("/docs", "a b.txt"));
        let (root, name) = dir.split().unwrap();
        assert_eq!((root.as_str(), name), ("/", "docs"));
        assert!(root.split().is_none());
        let mut b1 = [0; MAX_PATH + 1];
        let mut b2 = [0; MAX_PATH + 1];
        assert_ne!(p.file_placement(&mut b1), p.dir_placement(&mut b2));
    }

    proptest! {
        #[test]
        fn any_count_round_trips(n in 0u64..20_000) {
            let (ids, _) = round_trip(n);
            prop_assert_eq!(ids.len() as u64, n);
        }
    }
}
