//! Storage: the one trait every node's store implements, and a RAM store.
//!
//! Values live in a few key spaces. A host node stores them durably (redb
//! in node-std); firmware keeps them in a fixed RAM arena.
//!
//! # Durability: group commit
//! A `put` or `remove` is visible to every later `get` at once, but is only
//! promised to survive a crash after the next successful [`Storage::flush`].
//! The node never acknowledges a replicated write before that flush: it
//! holds the acknowledgement and the driver flushes once per batch of
//! inputs ([`crate::node::Node::commit`]), so one fsync covers every write
//! the batch made.

/// A key space within a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Space {
    /// The node's own small state: identity, boot epoch.
    Local = 0,
    /// Replicated records (file metadata, rows, tasks).
    Records = 1,
    /// Content-addressed chunks.
    Chunks = 2,
}

impl Space {
    /// Every space, in wire order.
    pub const ALL: [Space; 3] = [Space::Local, Space::Records, Space::Chunks];

    /// A stable name, for on-disk tables and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Space::Local => "local",
            Space::Records => "records",
            Space::Chunks => "chunks",
        }
    }
}

/// Why a store refused an operation. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StoreError {
    /// No room left: free space (remove data) or place the value elsewhere.
    Full,
    /// The key or value exceeds what this store takes in one entry.
    TooLarge,
    /// The caller's buffer is smaller than the stored value.
    BufferTooSmall,
    /// The medium failed (I/O error); the operator should look at the disk.
    Io,
    /// Stored bytes failed their integrity check.
    Corrupt,
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StoreError::Full => "store full",
            StoreError::TooLarge => "key or value too large for this store",
            StoreError::BufferTooSmall => "buffer smaller than the stored value",
            StoreError::Io => "storage I/O error",
            StoreError::Corrupt => "stored data failed its integrity check",
        })
    }
}

impl core::error::Error for StoreError {}

/// How full a store is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Usage {
    /// Bytes of keys and values held.
    pub bytes: u64,
    /// Entries held.
    pub entries: u64,
    /// Bytes the store may hold in all, if bounded.
    pub capacity: Option<u64>,
}

/// How a flush began ([`Storage::flush_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushBegun {
    /// It is over: the writes are durable (`Ok`) or may be lost (`Err`).
    Done(Result<(), StoreError>),
    /// It runs in the background; [`Storage::flush_poll`] reports its end
    /// under this ticket.
    Running(u64),
}

/// A node's local store.
pub trait Storage {
    /// Copies the value under `key` into `out`, returning its length, or
    /// `None` when absent.
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError>;

    /// Stores `value` under `key`, replacing any old value. Visible at once;
    /// durable after the next [`Storage::flush`].
    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Stores `value` under `key` as [`Storage::put`] does; whether `key`
    /// held a value before (or could not be read: an unreadable value
    /// counts as there). The default looks first; a store that learns it
    /// while writing answers without the second lookup.
    fn insert(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let had = !matches!(self.get(space, key, &mut []), Ok(None));
        self.put(space, key, value)?;
        Ok(had)
    }

    /// Removes `key`; whether it was there. Durable after the next flush.
    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError>;

    /// Makes every earlier `put` and `remove` durable. A store that is
    /// always durable (or never, like RAM) returns `Ok` at once.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts making every earlier `put` and `remove` durable, without
    /// waiting for the disk if the store can sync in the background: group
    /// commit that lets the node go on serving while the disk works. A
    /// store runs one such flush at a time; the node begins the next only
    /// after [`Storage::flush_poll`] reported the last one's end. The
    /// default flushes at once.
    fn flush_begin(&mut self) -> FlushBegun {
        FlushBegun::Done(self.flush())
    }

    /// The end of the flush running in the background, once it has ended:
    /// its ticket and whether its writes are durable. An `Err` means they
    /// may be lost — and so may every write made since, which the next
    /// flush then reports.
    fn flush_poll(&mut self) -> Option<(u64, Result<(), StoreError>)> {
        None
    }

    /// The smallest key in `space` that starts with `prefix` and is greater
    /// than `after` (any key with the prefix when `after` is `None`), copied
    /// into `out`; its length, or `None` when there is no such key. Keys
    /// compare as byte strings. Iterating with this visits every key once
    /// even while keys are added or removed between calls.
    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError>;

    /// How full the store is.
    fn usage(&self) -> Usage;
}

/// A store the caller owns elsewhere (a firmware's `static`), lent to the
/// node for its lifetime.
impl<T: Storage + ?Sized> Storage for &mut T {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        (**self).get(space, key, out)
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (**self).put(space, key, value)
    }

    fn insert(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        (**self).insert(space, key, value)
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        (**self).remove(space, key)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        (**self).flush()
    }

    fn flush_begin(&mut self) -> FlushBegun {
        (**self).flush_begin()
    }

    fn flush_poll(&mut self) -> Option<(u64, Result<(), StoreError>)> {
        (**self).flush_poll()
    }

    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        (**self).next_key(space, prefix, after, out)
    }

    fn usage(&self) -> Usage {
        (**self).usage()
    }
}

/// A store in a fixed RAM arena of `BYTES` bytes and at most `ENTRIES`
/// entries. Values are kept packed; a removal compacts the arena.
pub struct RamStore<const BYTES: usize, const ENTRIES: usize> {
    arena: [u8; BYTES],
    used: usize,
    /// (space, offset, key length, value length), in arena order.
    index: heapless::Vec<(Space, usize, usize, usize), ENTRIES>,
}

impl<const BYTES: usize, const ENTRIES: usize> Default for RamStore<BYTES, ENTRIES> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const BYTES: usize, const ENTRIES: usize> RamStore<BYTES, ENTRIES> {
    /// An empty store.
    pub const fn new() -> Self {
        RamStore {
            arena: [0; BYTES],
            used: 0,
            index: heapless::Vec::new(),
        }
    }

    fn find(&self, space: Space, key: &[u8]) -> Option<usize> {
        self.index
            .iter()
            .position(|&(s, off, kl, _)| s == space && self.arena.get(off..off + kl) == Some(key))
    }

    fn remove_at(&mut self, i: usize) {
        let (_, off, kl, vl) = self.index.remove(i);
        let len = kl + vl;
        self.arena.copy_within(off + len..self.used, off);
        self.used -= len;
        for e in self.index.iter_mut().skip(i) {
            e.1 -= len;
        }
    }
}

impl<const BYTES: usize, const ENTRIES: usize> Storage for RamStore<BYTES, ENTRIES> {
    fn get(&self, space: Space, key: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
        let Some(i) = self.find(space, key) else {
            return Ok(None);
        };
        let (_, off, kl, vl) = self.index[i];
        let dst = out.get_mut(..vl).ok_or(StoreError::BufferTooSmall)?;
        dst.copy_from_slice(&self.arena[off + kl..off + kl + vl]);
        Ok(Some(vl))
    }

    fn put(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let len = key.len() + value.len();
        if len > BYTES {
            return Err(StoreError::TooLarge);
        }
        let old = self.find(space, key);
        let freed = old.map_or(0, |i| self.index[i].2 + self.index[i].3);
        if self.used - freed + len > BYTES {
            return Err(StoreError::Full);
        }
        if old.is_none() && self.index.is_full() {
            return Err(StoreError::Full);
        }
        if let Some(i) = old {
            self.remove_at(i);
        }
        let off = self.used;
        self.arena[off..off + key.len()].copy_from_slice(key);
        self.arena[off + key.len()..off + len].copy_from_slice(value);
        self.used += len;
        // Cannot fail: an entry was removed above, or there was room.
        let _ = self.index.push((space, off, key.len(), value.len()));
        Ok(())
    }

    fn remove(&mut self, space: Space, key: &[u8]) -> Result<bool, StoreError> {
        match self.find(space, key) {
            Some(i) => {
                self.remove_at(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn next_key(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        // Linear: a RAM store holds few entries.
        let mut best: Option<&[u8]> = None;
        for &(s, off, kl, _) in &self.index {
            let key = &self.arena[off..off + kl];
            if s != space || !key.starts_with(prefix) || after.is_some_and(|a| key <= a) {
                continue;
            }
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let Some(key) = best else {
            return Ok(None);
        };
        let dst = out.get_mut(..key.len()).ok_or(StoreError::BufferTooSmall)?;
        dst.copy_from_slice(key);
        Ok(Some(key.len()))
    }

    fn usage(&self) -> Usage {
        Usage {
            bytes: self.used as u64,
            entries: self.index.len() as u64,
            capacity: Some(BYTES as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_says_whether_the_key_was_there() {
        let mut s = RamStore::<64, 4>::new();
        assert_eq!(s.insert(Space::Chunks, b"a", b"one"), Ok(false));
        assert_eq!(s.insert(Space::Chunks, b"a", b"two"), Ok(true));
        assert_eq!(s.insert(Space::Records, b"a", b"one"), Ok(false));
        let mut out = [0u8; 4];
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"two");
        assert_eq!(s.remove(Space::Chunks, b"a"), Ok(true));
        assert_eq!(s.insert(Space::Chunks, b"a", b"one"), Ok(false));
    }

    #[test]
    fn put_get_replace_remove() {
        let mut s = RamStore::<64, 4>::new();
        let mut out = [0u8; 16];
        s.put(Space::Records, b"a", b"one").unwrap();
        s.put(Space::Chunks, b"a", b"two").unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"one");
        s.put(Space::Records, b"a", b"three").unwrap();
        assert_eq!(s.get(Space::Records, b"a", &mut out), Ok(Some(5)));
        assert_eq!(&out[..5], b"three");
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(3)));
        assert_eq!(&out[..3], b"two");
        assert_eq!(s.remove(Space::Records, b"a"), Ok(true));
        assert_eq!(s.remove(Space::Records, b"a"), Ok(false));
        assert_eq!(s.get(Space::Chunks, b"a", &mut out), Ok(Some(3)));
        assert_eq!(s.usage().bytes, 4);
    }

    #[test]
    fn next_key_walks_a_prefix_in_order() {
        let mut s = RamStore::<256, 16>::new();
        for k in [&b"d/b"[..], b"d/a", b"e/a", b"d/c", b"c"] {
            s.put(Space::Records, k, b"v").unwrap();
        }
        s.put(Space::Chunks, b"d/0", b"v").unwrap();
        let mut out = [0u8; 8];
        let mut seen = heapless::Vec::<heapless::Vec<u8, 8>, 8>::new();
        let mut after: Option<heapless::Vec<u8, 8>> = None;
        while let Some(n) = s
            .next_key(Space::Records, b"d/", after.as_deref(), &mut out)
            .unwrap()
        {
            let k = heapless::Vec::from_slice(&out[..n]).unwrap();
            seen.push(k.clone()).unwrap();
            after = Some(k);
        }
        let seen: heapless::Vec<&[u8], 8> = seen.iter().map(|k| &k[..]).collect();
        assert_eq!(&seen[..], &[&b"d/a"[..], b"d/b", b"d/c"]);
        assert_eq!(
            s.next_key(Space::Records, b"d", None, &mut [0u8; 2]),
            Err(StoreError::BufferTooSmall)
        );
    }

    #[test]
    fn full_store_refuses_and_keeps_what_it_had() {
        let mut s = RamStore::<10, 2>::new();
        s.put(Space::Local, b"k", b"12345678").unwrap();
        assert_eq!(s.put(Space::Local, b"j", b"12"), Err(StoreError::Full));
        assert_eq!(
            s.put(Space::Local, b"j", &[0; 20]),
            Err(StoreError::TooLarge)
        );
        let mut out = [0u8; 4];
        assert_eq!(
            s.get(Space::Local, b"k", &mut out),
            Err(StoreError::BufferTooSmall)
        );
        let mut out = [0u8; 8];
        assert_eq!(s.get(Space::Local, b"k", &mut out), Ok(Some(8)));
        // Replacing in place may use the room the old value frees.
        s.put(Space::Local, b"k", b"abcdefgh").unwrap();
        s.put(Space::Local, b"k", b"x").unwrap();
        s.put(Space::Local, b"j", b"y").unwrap();
        assert_eq!(s.put(Space::Local, b"i", b"z"), Err(StoreError::Full));
    }
}
