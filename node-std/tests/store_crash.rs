//! A flushed write survives `kill -9`: a child process (this test binary,
//! run again) writes in batches, flushes each batch and only then reports
//! its keys as acknowledged, as the node does; it is killed mid-stream, and
//! every key it reported is there when the store reopens. Batches alternate
//! between records (a redb transaction) and chunks bound for the chunk log
//! (appends only, indexed by replay at the next open).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_core::store::{Space, Storage};
use shoal_node::store::DiskStore;

/// Set in the child: the data dir to write to.
const WRITER_DIR: &str = "SHOAL_TEST_WRITER_DIR";
const TEST_NAME: &str = "acknowledged_writes_survive_kill_9";
/// How many acknowledged writes the parent waits for before the kill.
const BEFORE_KILL: u64 = 40;
/// Writes per flush.
const BATCH: u64 = 7;

/// Where write `i` goes: records in even batches, chunks in odd ones.
fn space(i: u64) -> Space {
    if (i / BATCH).is_multiple_of(2) {
        Space::Records
    } else {
        Space::Chunks
    }
}

fn value(i: u64) -> Vec<u8> {
    let len = match space(i) {
        Space::Chunks => 3000,
        _ => 1000,
    };
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// The child: writes until killed, printing each write once a `flush`
/// after it returned.
fn write_until_killed(dir: &str) {
    let mut store = DiskStore::open(dir.as_ref()).unwrap();
    let mut out = std::io::stdout();
    for batch in (0..100_000u64).step_by(BATCH as usize) {
        let writes = batch..batch + BATCH;
        for i in writes.clone() {
            store.put(space(i), &i.to_le_bytes(), &value(i)).unwrap();
        }
        store.flush().unwrap();
        for i in writes {
            writeln!(out, "acked {i}").unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(WRITER_DIR) {
        write_until_killed(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(WRITER_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let acked = |line: &str| {
        line.strip_prefix("acked ")
            .and_then(|n| n.parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    // A few batches of each kind are acknowledged before the kill.
    while last.is_none_or(|n| n < BEFORE_KILL) {
        assert!(Instant::now() < deadline, "the writer is too slow");
        let line = lines.next().expect("writer ended early").unwrap();
        last = acked(&line).or(last);
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acknowledgements already in the pipe count too.
    let last = lines
        .map_while(Result::ok)
        .filter_map(|l| acked(&l))
        .fold(last.unwrap(), u64::max);

    let store = DiskStore::open(dir.path()).expect("the store reopens after kill -9");
    let mut buf = vec![0u8; 4000];
    for i in 0..=last {
        let len = store
            .get(space(i), &i.to_le_bytes(), &mut buf)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {i} of {last} lost"));
        assert_eq!(buf[..len], value(i), "write {i} damaged");
    }
    assert!(store.usage().entries > last);
}
