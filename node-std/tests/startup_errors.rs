//! Mistakes a person can make starting a node: each ends the process with a
//! non-zero code and one line on stderr saying what to do, never a panic.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use common::{Node, key_file, run_expecting_failure, wait_until};

/// Runs `shoal-node args` and returns its one-line complaint.
fn complaint(args: &[&str]) -> String {
    let out = run_expecting_failure(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr.trim_end().to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_key_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert_eq!(
        complaint(&["--data", s(&data)]),
        "error: no cluster key: create one with 'shoal keygen --out FILE' and pass --key FILE"
    );
    let missing = dir.path().join("nope");
    let e = complaint(&["--data", s(&data), "--key", s(&missing)]);
    assert!(
        e.contains("does not exist") && e.contains("shoal keygen"),
        "{e}"
    );
}

#[test]
fn malformed_key_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "0123").unwrap();
    let e = complaint(&["--data", s(&dir.path().join("d")), "--key", s(&bad)]);
    assert!(e.ends_with("expected 64 hex digits"), "{e}");
}

#[test]
fn bad_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 1);
    let data = dir.path().join("d");
    assert_eq!(
        complaint(&["--data", s(&data), "--key", s(&key), "--listen", "nope"]),
        "error: invalid --listen address 'nope': expected IP:PORT"
    );
    let e = complaint(&[
        "--data",
        s(&data),
        "--key",
        s(&key),
        "--listen",
        "0.0.0.0:7000",
    ]);
    assert!(e.contains("cannot advertise 0.0.0.0:7000"), "{e}");
}

#[test]
fn port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 1);
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("d");
    assert_eq!(
        complaint(&["--data", s(&data), "--key", s(&key), "--listen", &addr]),
        format!("error: cannot listen on {addr}: address already in use")
    );
}

#[test]
fn second_node_on_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 1);
    let first = Node::start(dir.path(), "first", &key, &[]);
    wait_until(Duration::from_secs(10), "first node up", || {
        first.status().is_some()
    });
    let e = complaint(&[
        "--data",
        s(&first.data),
        "--key",
        s(&key),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        e,
        format!(
            "error: data dir {} is in use by another shoal-node (lock held)",
            first.data.display()
        )
    );
}

#[test]
fn unusable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 1);
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("data");
    let e = complaint(&["--data", s(&under_file), "--key", s(&key)]);
    assert_eq!(
        e,
        format!(
            "error: cannot use data dir {}: not a directory",
            under_file.display()
        )
    );
}
