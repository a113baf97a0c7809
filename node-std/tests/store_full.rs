//! A full disk: the store refuses with `Full`, keeps every flushed write,
//! drops only the batch not yet flushed (and its next flush says so), keeps
//! its usage right, and takes writes again once space is freed.
//!
//! The disk fills up for a child process (this test binary, run again) under
//! a file-size limit: with `SIGXFSZ` ignored, a write past it fails with
//! `EFBIG`, which the store reports as [`StoreError::Full`].
#![cfg(unix)]

use std::process::Command;

use shoal_core::store::{Space, Storage, StoreError};
use shoal_node::store::DiskStore;

/// Set in the child: the data dir to fill.
const FILL_DIR: &str = "SHOAL_TEST_FILL_DIR";
const TEST_NAME: &str = "a_full_disk_keeps_flushed_data";
/// The child's file-size limit for `ulimit -f` (a few MB).
const LIMIT_BLOCKS: u64 = 8192;
/// Writes per flush.
const BATCH: u64 = 5;
/// Keys written once space has been freed.
const LATER: std::ops::Range<u64> = 1000..1010;

fn value(i: u64) -> Vec<u8> {
    (0..16_000u64).map(|j| (i * 31 + j) as u8).collect()
}

fn get(store: &DiskStore, i: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 20_000];
    let len = store
        .get(Space::Records, &i.to_le_bytes(), &mut buf)
        .unwrap()?;
    Some(buf[..len].to_vec())
}

/// The child: fills the disk in flushed batches, checks what the store says
/// after the failure, frees half and writes again; prints how many batches
/// of writes were flushed before the disk filled.
fn fill(dir: &str) {
    let mut store = DiskStore::open(dir.as_ref()).unwrap();
    let mut flushed = 0u64;
    // Whether the failed batch had writes the store took before failing.
    let (error, lost) = 'fill: loop {
        for i in flushed..flushed + BATCH {
            if let Err(e) = store.put(Space::Records, &i.to_le_bytes(), &value(i)) {
                break 'fill (e, i > flushed);
            }
        }
        if let Err(e) = store.flush() {
            // This flush reported the loss itself.
            break 'fill (e, false);
        }
        flushed += BATCH;
        assert!(flushed < 10_000, "the file-size limit never hit");
    };
    assert_eq!(error, StoreError::Full);
    assert!(flushed > 0, "full before the first flush");

    // The failed batch is gone, the flushed ones are whole, and usage
    // counts exactly the flushed ones.
    for i in flushed..flushed + BATCH {
        assert_eq!(get(&store, i), None, "unflushed write {i} still seen");
    }
    assert_eq!(get(&store, 0), Some(value(0)));
    assert_eq!(get(&store, flushed - 1), Some(value(flushed - 1)));
    assert_eq!(store.usage().entries, flushed);
    assert_eq!(store.usage().bytes, flushed * (8 + 16_000));
    let expected = if lost { Err(StoreError::Full) } else { Ok(()) };
    assert_eq!(store.flush(), expected, "the loss is reported once");
    assert_eq!(store.flush(), Ok(()));

    // Freeing space makes room again.
    for i in 0..flushed / 2 {
        assert_eq!(store.remove(Space::Records, &i.to_le_bytes()), Ok(true));
    }
    store.flush().unwrap();
    for i in LATER {
        store
            .put(Space::Records, &i.to_le_bytes(), &value(i))
            .unwrap();
    }
    store.flush().unwrap();
    assert_eq!(store.usage().entries, flushed - flushed / 2 + 10);
    println!("flushed {flushed}");
}

#[test]
fn a_full_disk_keeps_flushed_data() {
    if let Ok(dir) = std::env::var(FILL_DIR) {
        fill(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"trap "" XFSZ; ulimit -f {LIMIT_BLOCKS} && exec "$0" "$@""#
        ))
        .arg(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(FILL_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flushed: u64 = stdout
        .lines()
        // After libtest's "test NAME ... " on the same line.
        .find_map(|l| l.rsplit_once("flushed ").map(|(_, n)| n))
        .and_then(|n| n.trim().parse().ok())
        .expect("the child reports what it flushed");

    // What the child flushed last is what a reopen finds.
    let store = DiskStore::open(dir.path()).unwrap();
    for i in 0..flushed / 2 {
        assert_eq!(get(&store, i), None, "removed {i} came back");
    }
    for i in (flushed / 2..flushed).chain(LATER) {
        assert_eq!(get(&store, i), Some(value(i)), "write {i}");
    }
    for i in flushed..flushed + BATCH {
        assert_eq!(get(&store, i), None, "lost write {i} came back");
    }
    assert_eq!(store.usage().entries, flushed - flushed / 2 + 10);
}
