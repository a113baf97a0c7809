//! Who this node is across restarts: its id and boot epoch, kept in
//! [`Space::Local`].
//!
//! - `node-id`: a `u64` (little-endian) chosen at random on the first start,
//!   never 0, and never changed after.
//! - `epoch`: a `u64` boot counter. [`boot`] raises it and writes it durably
//!   before the node exists, so before it sends anything. Datagram nonces are
//!   `sender ‖ epoch ‖ counter` with the counter restarting at every boot;
//!   a strictly growing epoch is what keeps them from repeating (see
//!   `docs/protocol.md`).

use std::num::NonZeroU64;

use shoal_core::NodeId;
use shoal_core::store::{Space, Storage, StoreError};

/// Key of the node id in [`Space::Local`].
pub const NODE_ID: &[u8] = b"node-id";
/// Key of the boot epoch in [`Space::Local`].
pub const EPOCH: &[u8] = b"epoch";

/// This start's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node's id, the same at every start from one data dir.
    pub id: NodeId,
    /// This start's epoch, higher than at any earlier start.
    pub epoch: u64,
}

/// Loads the node id (taking `fresh_id`, drawn at random by the caller, on
/// the first start) and durably raises the boot epoch.
pub fn boot(store: &mut impl Storage, fresh_id: NonZeroU64) -> Result<Identity, StoreError> {
    let id = match read_u64(store, NODE_ID)? {
        Some(0) => return Err(StoreError::Corrupt),
        Some(id) => id,
        None => {
            let id = fresh_id.get();
            store.put(Space::Local, NODE_ID, &id.to_le_bytes())?;
            id
        }
    };
    let last = read_u64(store, EPOCH)?.unwrap_or(0);
    let epoch = last.checked_add(1).ok_or(StoreError::Corrupt)?;
    store.put(Space::Local, EPOCH, &epoch.to_le_bytes())?;
    // On disk before the node exists: a crash after this start's first
    // datagram must not bring back an epoch that already sealed one.
    store.flush()?;
    Ok(Identity {
        id: NodeId(id),
        epoch,
    })
}

fn read_u64(store: &impl Storage, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let mut buf = [0u8; 8];
    match store.get(Space::Local, key, &mut buf) {
        Ok(Some(8)) => Ok(Some(u64::from_le_bytes(buf))),
        Ok(Some(_)) | Err(StoreError::BufferTooSmall) => Err(StoreError::Corrupt),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::store::RamStore;

    fn id(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn same_id_higher_epoch() {
        let mut store = RamStore::<256, 8>::new();
        let first = boot(&mut store, id(42)).unwrap();
        assert_eq!(
            first,
            Identity {
                id: NodeId(42),
                epoch: 1
            }
        );
        let second = boot(&mut store, id(43)).unwrap();
        assert_eq!(
            second,
            Identity {
                id: NodeId(42),
                epoch: 2
            }
        );
    }

    #[test]
    fn damaged_identity_is_refused() {
        let mut store = RamStore::<256, 8>::new();
        store.put(Space::Local, NODE_ID, b"short").unwrap();
        assert_eq!(boot(&mut store, id(1)), Err(StoreError::Corrupt));
        store
            .put(Space::Local, NODE_ID, &0u64.to_le_bytes())
            .unwrap();
        assert_eq!(boot(&mut store, id(1)), Err(StoreError::Corrupt));
    }

    /// A store that counts the writes no flush has covered yet.
    struct Unflushed(RamStore<256, 8>, usize);

    impl Storage for Unflushed {
        fn get(&self, s: Space, k: &[u8], out: &mut [u8]) -> Result<Option<usize>, StoreError> {
            self.0.get(s, k, out)
        }
        fn put(&mut self, s: Space, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
            self.1 += 1;
            self.0.put(s, k, v)
        }
        fn remove(&mut self, s: Space, k: &[u8]) -> Result<bool, StoreError> {
            self.1 += 1;
            self.0.remove(s, k)
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            self.1 = 0;
            Ok(())
        }
        fn next_key(
            &self,
            s: Space,
            prefix: &[u8],
            after: Option<&[u8]>,
            out: &mut [u8],
        ) -> Result<Option<usize>, StoreError> {
            self.0.next_key(s, prefix, after, out)
        }
        fn usage(&self) -> shoal_core::store::Usage {
            self.0.usage()
        }
    }

    #[test]
    fn boot_leaves_nothing_unflushed() {
        let mut store = Unflushed(RamStore::new(), 0);
        boot(&mut store, id(5)).unwrap();
        assert_eq!(store.1, 0, "first boot");
        boot(&mut store, id(6)).unwrap();
        assert_eq!(store.1, 0, "second boot");
    }

    #[test]
    fn survives_reopening_the_disk_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::store::DiskStore::open(dir.path()).unwrap();
        let a = boot(&mut s, id(7)).unwrap();
        drop(s);
        let mut s = crate::store::DiskStore::open(dir.path()).unwrap();
        let b = boot(&mut s, id(8)).unwrap();
        assert_eq!((a.id, b.id), (NodeId(7), NodeId(7)));
        assert!(b.epoch > a.epoch);
    }
}
