//! `shoal` errors a person can act on, and `keygen`, without a cluster.

mod common;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;

use common::{Scratch, assert_error, free_udp_port, run, shoal, stderr};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = Scratch::new("keygen");
    let key = dir.path("cluster.key");
    let k = key.to_str().expect("utf-8");

    let out = run(&["keygen", "--out", k]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = std::fs::read_to_string(&key).expect("key written");
    assert_eq!(first.len(), 65, "64 hex digits and a newline: {first:?}");
    assert!(first.ends_with('\n'));
    assert!(first.trim_end().chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(mode(&key), 0o600);

    let out = run(&["keygen", "--out", k]);
    assert_error(&out, 1, "already exists; pass --force");
    assert_eq!(std::fs::read_to_string(&key).expect("key"), first);

    // --force replaces it, and a file others could read becomes private.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&["keygen", "--out", k, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = std::fs::read_to_string(&key).expect("key");
    assert_ne!(second, first);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn malformed_address_is_a_usage_error() {
    let dir = Scratch::new("addr");
    let key = dir.path("k");
    run(&["keygen", "--out", key.to_str().expect("utf-8")]);
    for bad in [
        "localhost",
        "127.0.0.1",
        "127.0.0.1:notaport",
        "1.2.3.4:0",
        "",
    ] {
        let out = run(&[
            "status",
            "--node",
            bad,
            "--key",
            key.to_str().expect("utf-8"),
        ]);
        assert_error(&out, 2, "malformed node address");
    }
    let out = shoal()
        .args(["status", "--key", key.to_str().expect("utf-8")])
        .env("SHOAL_NODE", "nonsense:1:2")
        .output()
        .expect("run");
    assert_error(&out, 2, "expected IP:PORT");
}

#[test]
fn missing_node_and_key_are_explained() {
    let dir = Scratch::new("missing");
    let out = run(&["status", "--key", "k"]);
    assert_error(
        &out,
        2,
        "no node given: pass --node IP:PORT or set SHOAL_NODE",
    );
    let out = run(&["status", "--node", "127.0.0.1:7000"]);
    assert_error(&out, 2, "no key given");
    let missing = dir.path("nope.key");
    let out = run(&[
        "status",
        "--node",
        "127.0.0.1:7000",
        "--key",
        missing.to_str().expect("utf-8"),
    ]);
    assert_error(&out, 1, "does not exist; create one with `shoal keygen");
    let garbage = dir.path("garbage.key");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let out = run(&[
        "status",
        "--node",
        "127.0.0.1:7000",
        "--key",
        garbage.to_str().expect("utf-8"),
    ]);
    assert_error(&out, 1, "does not hold a cluster key (64 hex digits)");
}

#[test]
fn unreachable_node_is_reported() {
    let dir = Scratch::new("unreachable");
    let key = dir.path("k");
    run(&["keygen", "--out", key.to_str().expect("utf-8")]);
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let out = run(&[
        "status",
        "--node",
        &addr,
        "--key",
        key.to_str().expect("utf-8"),
        "--timeout",
        "1",
    ]);
    assert_error(
        &out,
        3,
        &format!("no answer from {addr} within 1 s: is a shoal-node running there?"),
    );
}

#[test]
fn silent_listener_is_reported_as_a_likely_wrong_key() {
    let dir = Scratch::new("silent");
    let key = dir.path("k");
    run(&["keygen", "--out", key.to_str().expect("utf-8")]);
    // Something listens but never answers: what a node does with datagrams
    // sealed under another key.
    let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let out = run(&[
        "send",
        "k",
        "m",
        "--node",
        &addr,
        "--key",
        key.to_str().expect("utf-8"),
        "--timeout",
        "0.5",
    ]);
    assert_error(&out, 3, "authentication failed: is this the cluster's key?");
    assert!(stderr(&out).contains("is a shoal-node running there?"));
    let mut buf = [0u8; 2048];
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.recv(&mut buf).is_ok(), "the client said hello");
}

#[test]
fn missing_node_binary_says_how_to_build_it() {
    let dir = Scratch::new("nobin");
    let out = shoal()
        .args(["dev", "up", "--dir", dir.path("c").to_str().expect("utf-8")])
        .env("SHOAL_NODE_BIN", dir.path("no-such-binary"))
        .output()
        .expect("run");
    assert_error(&out, 1, "cargo build --release -p shoal-node");
}
