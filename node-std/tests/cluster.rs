//! Real `shoal-node` processes on 127.0.0.1 finding each other, noticing a
//! crash, welcoming a restart, keeping strangers out and seeing a leave.

mod common;

use std::time::{Duration, Instant};

use common::{Node, key_file, wait_until};

const CONVERGE: Duration = Duration::from_secs(10);

/// Whether every node lists every other as `state`.
fn all_see(nodes: &[&Node], ids: &[String], state: &str) -> bool {
    nodes.iter().enumerate().all(|(i, n)| {
        ids.iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .all(|(_, id)| n.state_of(id).as_deref() == Some(state))
    })
}

#[test]
fn three_nodes_converge_notice_a_crash_and_take_the_restart_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 0x11);
    let a = Node::start(dir.path(), "a", &key, &[]);
    let b = Node::start(dir.path(), "b", &key, &[a.udp]);
    let mut c = Node::start(dir.path(), "c", &key, &[a.udp, b.udp]);
    let ids: Vec<String> = [&a, &b, &c].iter().map(|n| n.identity().0).collect();

    let t = Instant::now();
    wait_until(CONVERGE, "every node sees the others alive", || {
        all_see(&[&a, &b, &c], &ids, "alive")
    });
    eprintln!("converged in {:?}", t.elapsed());

    let (c_id, c_epoch) = c.identity();
    c.kill9();
    let t = Instant::now();
    wait_until(CONVERGE, "a and b mark the killed node dead", || {
        [&a, &b]
            .iter()
            .all(|n| n.state_of(&c_id).as_deref() == Some("dead"))
    });
    eprintln!("crash noticed in {:?}", t.elapsed());

    c.restart();
    let (id, epoch) = c.identity();
    assert_eq!(id, c_id, "same data dir, same node id");
    assert!(epoch > c_epoch, "a restart raises the epoch");
    let t = Instant::now();
    wait_until(CONVERGE, "the restarted node is alive everywhere", || {
        all_see(&[&a, &b, &c], &ids, "alive")
    });
    eprintln!("restart welcomed in {:?}", t.elapsed());
    let s = a.status().unwrap();
    let entry = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == c_id.as_str())
        .unwrap();
    assert_eq!(entry["epoch"].as_u64(), Some(epoch));
    assert_eq!(entry["name"], "c");
}

#[test]
fn a_node_with_another_key_is_never_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 0x22);
    let other = key_file(dir.path(), "other", 0x33);
    let a = Node::start(dir.path(), "a", &key, &[]);
    let b = Node::start(dir.path(), "b", &key, &[a.udp]);
    let ids = [a.identity().0, b.identity().0];
    wait_until(CONVERGE, "a and b see each other", || {
        all_see(&[&a, &b], &ids, "alive")
    });

    let x = Node::start(dir.path(), "x", &other, &[a.udp, b.udp]);
    let (x_id, _) = x.identity();
    let watch = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch {
        for n in [&a, &b] {
            let s = n.status().unwrap();
            let members = s["members"].as_array().unwrap();
            assert_eq!(members.len(), 1, "{} admitted a stranger: {s}", n.name);
            assert_ne!(members[0]["id"], x_id.as_str());
        }
        assert!(
            x.status().unwrap()["members"]
                .as_array()
                .unwrap()
                .is_empty(),
            "the stranger learnt of members"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = a.metrics().unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_drops_total{reason=\"authentication\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(refused > 0, "no authentication drops counted:\n{metrics}");
}

#[test]
fn sigterm_leaves_the_cluster_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "key", 0x44);
    let a = Node::start(dir.path(), "a", &key, &[]);
    let mut b = Node::start(dir.path(), "b", &key, &[a.udp]);
    let ids = [a.identity().0, b.identity().0];
    wait_until(CONVERGE, "a and b see each other", || {
        all_see(&[&a, &b], &ids, "alive")
    });

    b.terminate();
    let status = b.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "log:\n{}", b.log());
    assert!(b.log().contains("leaving the cluster"));
    // Seen at once from the leave itself, not after a suspicion timeout.
    wait_until(Duration::from_secs(2), "a sees b left", || {
        a.state_of(&ids[1]).as_deref() == Some("left")
    });
}
