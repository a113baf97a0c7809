//! Real `shoal-node` processes on 127.0.0.1, driven by the `shoal` binary:
//! membership, failure detection, restarts, authentication and
//! key-addressed routing, checked against the router run here.

mod common;

use std::time::{Duration, Instant};

use common::{
    DevCluster, assert_error, free_tcp_port, free_udp_port, http_get, kill9, metric, run, stderr,
    stdout,
};
use serde_json::Value;
use shoal_core::router::{self, Candidate, KeyDigest};
use shoal_core::{NodeId, Pool, PoolSet};

const AUTH_DROPS: &str = "shoal_drops_total{reason=\"authentication\"}";

fn alive(status: &[Value]) -> usize {
    status.iter().filter(|m| m["state"] == "alive").count()
}

fn by_name<'a>(status: &'a [Value], name: &str) -> Option<&'a Value> {
    status.iter().find(|m| m["name"] == name)
}

fn id_of(member: &Value) -> NodeId {
    let hex = member["id"].as_str().expect("id");
    assert_eq!(hex.len(), 16, "ids are 16 hex digits: {hex}");
    NodeId(u64::from_str_radix(hex, 16).expect("hex id"))
}

/// The router's candidates over a `status --json` listing: live members.
fn candidates(status: &[Value]) -> Vec<Candidate> {
    status
        .iter()
        .filter(|m| m["state"] == "alive" || m["state"] == "suspect")
        .map(|m| {
            let pools: PoolSet = m["pools"]
                .as_array()
                .expect("pools")
                .iter()
                .map(|p| Pool::from_name(p.as_str().expect("pool name")).expect("known pool"))
                .collect();
            let weight = u32::try_from(m["weight"].as_u64().expect("weight")).expect("u32");
            Candidate::new(id_of(m), weight, pools)
        })
        .collect()
}

#[test]
fn three_nodes_converge_and_status_lists_them_alive() {
    let c = DevCluster::up("converge", 3);
    for i in 0..3 {
        let (_, status) = c.wait_status(i, Duration::from_secs(10), |s| alive(s) == 3);
        assert_eq!(status.len(), 3, "{status:#?}");
        for (k, node) in c.nodes.iter().enumerate() {
            let m = by_name(&status, &format!("n{}", k + 1)).expect("listed by name");
            assert_eq!(m["addr"], node["addr"]);
            assert_eq!(m["state"], "alive");
            assert_eq!(m["kind"], "host");
            assert!(m["weight"].as_u64().expect("weight") > 0);
            assert!(m["pools"].as_array().is_some() && m["tags"].as_array().is_some());
        }
    }
    // The text table lists the same nodes.
    let out = run(&["status", "--node", &c.node, "--key", &c.key]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ID "), "{text}");
    for n in ["n1", "n2", "n3"] {
        assert!(text.contains(n), "{text}");
    }
}

#[test]
fn killed_node_is_declared_dead_and_rejoins_with_its_id_after_restart() {
    let c = DevCluster::up("restart", 3);
    let status = c
        .wait_status(0, Duration::from_secs(10), |s| alive(s) == 3)
        .1;
    let victim = by_name(&status, "n3").expect("n3 listed");
    let id = victim["id"].clone();
    let epoch = victim["epoch"].as_u64().expect("epoch");

    kill9(c.nodes[2]["pid"].as_u64().expect("pid"));
    let killed = Instant::now();
    for i in [0, 1] {
        let left = Duration::from_secs(10).saturating_sub(killed.elapsed());
        c.wait_status(i, left, |s| {
            by_name(s, "n3").is_none_or(|m| m["state"] == "dead")
        });
        eprintln!(
            "n{} declared n3 dead {:?} after the kill",
            i + 1,
            killed.elapsed()
        );
    }

    // Same data dir, same address: the same node, in a later epoch.
    let n3 = &c.nodes[2];
    c.spawn_node(
        "n3",
        n3["addr"].as_str().expect("addr"),
        n3["http"].as_str().expect("http"),
        std::path::Path::new(&c.key),
        &[c.addr(0)],
    );
    for i in [0, 1] {
        let (_, status) = c.wait_status(i, Duration::from_secs(10), |s| {
            by_name(s, "n3").is_some_and(|m| m["state"] == "alive")
        });
        let back = by_name(&status, "n3").expect("n3 listed");
        assert_eq!(back["id"], id, "n3 rejoined under another id");
        assert!(back["epoch"].as_u64().expect("epoch") > epoch, "{back}");
        assert_eq!(status.len(), 3, "one record per node: {status:#?}");
    }
}

#[test]
fn node_with_another_key_is_never_admitted() {
    let c = DevCluster::up("intruder", 3);
    c.wait_status(0, Duration::from_secs(10), |s| alive(s) == 3);
    let before: Vec<f64> = (0..2)
        .map(|i| metric(&http_get(c.http(i), "/metrics"), AUTH_DROPS))
        .collect();

    let other_key = c.scratch.path("other.key");
    let out = run(&["keygen", "--out", other_key.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let http = format!("127.0.0.1:{}", free_tcp_port());
    c.spawn_node("n4", &addr, &http, &other_key, &[c.addr(0), c.addr(1)]);

    // Give it several join retries (one a second).
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..3 {
        let status = c.status(i);
        assert!(by_name(&status, "n4").is_none(), "n4 admitted: {status:#?}");
        assert_eq!(status.len(), 3);
    }
    for (i, b) in before.iter().enumerate() {
        let after = metric(&http_get(c.http(i), "/metrics"), AUTH_DROPS);
        assert!(
            after > *b,
            "n{} counted no authentication drops ({b} -> {after})",
            i + 1
        );
    }
    // The intruder answers nobody holding the cluster's key either.
    let out = run(&["status", "--node", &addr, "--key", &c.key, "--timeout", "1"]);
    assert_error(&out, 3, "authentication failed: is this the cluster's key?");
}

#[test]
fn wrong_key_client_gets_a_clear_error() {
    let c = DevCluster::up("wrongkey", 1);
    let key = c.scratch.path("wrong.key");
    run(&["keygen", "--out", key.to_str().expect("utf-8")]);
    let out = run(&[
        "status",
        "--node",
        &c.node,
        "--key",
        key.to_str().expect("utf-8"),
        "--timeout",
        "1",
    ]);
    assert_error(&out, 3, "authentication failed: is this the cluster's key?");
    let metrics = http_get(c.http(0), "/metrics");
    assert!(metric(&metrics, AUTH_DROPS) >= 1.0, "{metrics}");
}

#[test]
fn send_is_answered_by_the_owner_of_each_of_100_keys() {
    let c = DevCluster::up("send", 3);
    for i in 0..3 {
        c.wait_status(i, Duration::from_secs(10), |s| alive(s) == 3);
    }
    let status = c.status(0);
    let candidates = candidates(&status);
    let mut answered_by = std::collections::BTreeMap::<String, usize>::new();
    for k in 0..100 {
        let key = format!("key-{k}");
        let out = run(&[
            "send", &key, "hello", "--json", "--node", &c.node, "--key", &c.key,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).expect("send --json parses");
        let owner = router::primary(
            candidates.iter().copied(),
            Pool::Data,
            &KeyDigest::of(key.as_bytes()),
        )
        .expect("an owner");
        assert_eq!(answer["by"], owner.to_string(), "{key}: {answer}");
        assert_eq!(answer["key"], key.as_str());
        assert_eq!(answer["pool"], "data");
        let name = answer["name"].as_str().expect("name").to_string();
        let hops = answer["hops"].as_u64().expect("hops");
        // Through n1: one hop to another owner, none when n1 owns it.
        assert_eq!(hops, u64::from(name != "n1"), "{key}: {answer}");
        *answered_by.entry(name).or_default() += 1;
    }
    assert_eq!(
        answered_by.len(),
        3,
        "every node owns some keys: {answered_by:?}"
    );
}

/// `shoal forget`: a live member and an unknown one are refused with a
/// clear error; a dead one is recorded as left, and that spreads to the
/// other members.
#[test]
fn a_dead_member_forgotten_is_left_everywhere() {
    let c = DevCluster::up("forget", 3);
    c.wait_status(0, Duration::from_secs(10), |s| alive(s) == 3);
    let forget = |member: &str| run(&["forget", member, "--node", &c.addr(0), "--key", &c.key]);
    assert_error(&forget("n2"), 1, "not dead");
    assert_error(&forget("n9"), 1, "no member \"n9\"");

    kill9(c.nodes[2]["pid"].as_u64().expect("pid"));
    for i in [0, 1] {
        c.wait_status(i, Duration::from_secs(15), |s| {
            by_name(s, "n3").is_some_and(|m| m["state"] == "dead")
        });
    }
    let out = forget("n3");
    assert!(out.status.success(), "forget failed: {}", stderr(&out));
    assert!(stdout(&out).contains("forgot n3"), "{}", stdout(&out));
    for i in [0, 1] {
        let (took, _) = c.wait_status(i, Duration::from_secs(10), |s| {
            by_name(s, "n3").is_some_and(|m| m["state"] == "left")
        });
        eprintln!("n{} lists n3 as left {took:?} after the forget", i + 1);
    }
}
