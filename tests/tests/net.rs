//! Key-addressed delivery in the simulator: requests reach the key's owner,
//! are forwarded a bounded number of hops, and are answered, over a lossy
//! network and while views disagree.

use shoal_core::node::{Event, OpId, Response};
use shoal_core::{Duration, NodeId, Pool};
use shoal_tests::seeds::{for_seeds, seed_count};
use shoal_tests::sim::{SimConfig, World};

/// Sends `keys` requests from machine `from`, at most 32 in flight, and
/// waits for every answer; returns (key index, answering node, hops) for each.
fn send_all(w: &mut World, from: usize, keys: usize) -> Result<Vec<(usize, NodeId, u8)>, String> {
    let mut ops: Vec<(OpId, usize)> = Vec::new();
    let mut out = Vec::new();
    let mut seen = w.machines[from].events.len();
    let mut next = 0;
    let deadline = w.now + Duration::from_secs(60);
    while out.len() < keys {
        while next < keys && ops.len() < 32 {
            let key = format!("key-{next}");
            let op = w
                .with_node(from, |n, now| {
                    n.send_to_key(now, Pool::Data, key.as_bytes(), b"hello")
                })
                .ok_or("sender is down")?
                .map_err(|e| format!("send_to_key({key}): {e}"))?;
            ops.push((op, next));
            next += 1;
        }
        let answered = |w: &World| {
            w.machines[from].events[seen..]
                .iter()
                .any(|(_, e)| matches!(e, Event::Response { .. } | Event::Failed { .. }))
        };
        if w.now > deadline
            || w.run_until_pred(Duration::from_secs(30), answered)
                .is_none()
        {
            return Err(format!(
                "only {} of {keys} requests answered in time",
                out.len()
            ));
        }
        let events: Vec<Event> = w.machines[from].events[seen..]
            .iter()
            .map(|(_, e)| e.clone())
            .collect();
        seen = w.machines[from].events.len();
        for e in events {
            match e {
                Event::Response {
                    op,
                    response: Response::Sent { by, hops },
                } => {
                    let at = ops.iter().position(|(o, _)| *o == op).ok_or("unknown op")?;
                    out.push((ops.swap_remove(at).1, by, hops));
                }
                Event::Failed { op, reason } => {
                    let mut msg = format!("{op:?} failed: {reason}");
                    if std::env::var("SHOAL_SIM_VERBOSE").is_ok() {
                        for (i, m) in w.machines.iter().enumerate() {
                            if let Some(n) = m.node.as_ref() {
                                let s = n.stats();
                                msg += &format!("\n  machine {i}: {:?}\n    {:?}", s.drops, s.link);
                            }
                        }
                    }
                    return Err(msg);
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn converge(w: &mut World, n: usize) -> Result<(), String> {
    w.start(0, &[]);
    for i in 1..n {
        w.start(i, &[0]);
    }
    w.run_until_pred(Duration::from_secs(30), World::converged)
        .map(drop)
        .ok_or_else(|| "no convergence".to_string())
}

#[test]
fn requests_reach_the_owner_over_a_lossy_network() {
    for_seeds("net-owner", seed_count(20), |seed| {
        let mut w = World::new(SimConfig::lossy(seed, 8));
        converge(&mut w, 8)?;
        let answers = send_all(&mut w, 3, 200)?;
        for (k, by, hops) in answers {
            let owner = w.owner(3, Pool::Data, format!("key-{k}").as_bytes());
            if Some(by) != owner {
                return Err(format!("key-{k} answered by {by}, owner is {owner:?}"));
            }
            if hops > 0 {
                return Err(format!(
                    "a member reached key-{k}'s owner in {hops} hops, not directly"
                ));
            }
        }
        Ok(())
    });
}

#[test]
fn a_client_is_answered_through_its_contact() {
    for_seeds("net-client", seed_count(20), |seed| {
        let mut w = World::new(SimConfig::lossy(seed, 6));
        converge(&mut w, 5)?;
        w.start_client(5, 2);
        let connected = |w: &World| {
            w.machines[5]
                .events
                .iter()
                .any(|(_, e)| matches!(e, Event::Connected(_)))
        };
        w.run_until_pred(Duration::from_secs(5), connected)
            .ok_or("client never connected")?;
        let answers = send_all(&mut w, 5, 100)?;
        let mut forwarded = 0;
        for (k, by, hops) in answers {
            let owner = w.owner(2, Pool::Data, format!("key-{k}").as_bytes());
            if Some(by) != owner {
                return Err(format!("key-{k} answered by {by}, owner is {owner:?}"));
            }
            forwarded += usize::from(hops > 0);
        }
        // The contact owns about a fifth of the keys; the rest were forwarded.
        if forwarded < 50 {
            return Err(format!("only {forwarded} of 100 requests were forwarded"));
        }
        Ok(())
    });
}

#[test]
fn requests_are_answered_while_views_disagree() {
    for_seeds("net-churn", seed_count(20), |seed| {
        let mut w = World::new(SimConfig::lossy(seed, 9));
        converge(&mut w, 8)?;
        // A ninth node joins; send at once, before everyone has heard of it.
        w.start(8, &[0]);
        w.run_for(Duration::from_millis(20));
        let answers = send_all(&mut w, 4, 100)?;
        if let Some((k, _, hops)) = answers.iter().find(|(_, _, h)| *h > 3) {
            return Err(format!("key-{k} took {hops} hops"));
        }
        Ok(())
    });
}
