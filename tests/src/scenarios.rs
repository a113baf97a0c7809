//! Membership scenarios, shared by the test suite and `cargo xtask sim`.
//!
//! Each takes a seed and a node count, runs a [`World`] and returns what it
//! measured, or a description of the invariant that broke.

use shoal_core::member::{MemberEvent, State};
use shoal_core::node::Event;
use shoal_core::rng::Rng;
use shoal_core::{Duration, Instant};

use crate::sim::{SimConfig, World, id_of};

/// What a scenario measured.
#[derive(Debug, Default)]
pub struct Report {
    /// The figure the scenario is about (convergence or detection time).
    pub elapsed: Duration,
    /// Datagrams sent during the run.
    pub datagrams: u64,
}

/// A scenario: given a seed and a node count, what it measured or what broke.
pub type Scenario = fn(u64, usize) -> Result<Report, String>;

/// Every scenario, by name.
pub const ALL: &[(&str, Scenario)] = &[
    ("join", join),
    ("crash", crash),
    ("stable", |seed, nodes| {
        stable(seed, nodes, Duration::from_secs(10_000))
    }),
    ("partition", partition),
    ("restart", restart),
    ("leave", leave),
];

/// Looks a scenario up by name.
pub fn by_name(name: &str) -> Option<Scenario> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn secs(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

/// Starts all machines, each joining through machine 0, staggered over
/// 100 ms, and waits up to `limit` for convergence.
fn boot(w: &mut World, limit: Duration) -> Result<Duration, String> {
    w.start(0, &[]);
    let mut rng = Rng::new(w.config.seed);
    for i in 1..w.machines.len() {
        w.run_for(Duration::from_micros(
            rng.below(100_000 / w.machines.len()) as u64
        ));
        w.start(i, &[0]);
    }
    let started = w.now;
    match w.run_until_pred(limit, World::converged) {
        Some(t) => Ok(t - started),
        None => Err(format!(
            "membership did not converge within {:.1} s of the last join; views: {}",
            secs(limit),
            describe(w)
        )),
    }
}

fn describe(w: &World) -> String {
    let n = w.machines.len();
    let mut s = String::new();
    for i in 0..n {
        if !w.is_up(i) {
            continue;
        }
        let alive = (0..n)
            .filter(|&j| w.view(i, j) == Some(State::Alive))
            .count();
        s += &format!("[{i}: {alive} alive] ");
    }
    s
}

/// Any member-down event naming a machine that was running at the time.
fn false_deaths(w: &World, after: Instant, crashed: &[usize]) -> Option<String> {
    for (i, m) in w.machines.iter().enumerate() {
        for (t, e) in &m.events {
            if *t < after {
                continue;
            }
            if let Event::Member(MemberEvent::Dead(id)) = e {
                let j = (0..w.machines.len()).find(|&j| id_of(j) == *id);
                if let Some(j) = j
                    && !crashed.contains(&j)
                {
                    return Some(format!(
                        "machine {i} declared live machine {j} dead at {:.3} s",
                        secs(*t - Instant::ZERO)
                    ));
                }
            }
        }
    }
    None
}

/// `nodes` nodes join through one seed over a lossy network; every node
/// must see every other alive within 10 s of the last join.
pub fn join(seed: u64, nodes: usize) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    let elapsed = boot(&mut w, Duration::from_secs(10))?;
    Ok(Report {
        elapsed,
        datagrams: w.sent,
    })
}

/// After convergence one random node crashes; every live node must mark it
/// dead within 10 s, and no live node may be marked dead.
pub fn crash(seed: u64, nodes: usize) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    boot(&mut w, Duration::from_secs(30))?;
    let settled = w.now;
    w.run_for(Duration::from_secs(5));
    let victim = 1 + Rng::new(seed ^ 0xdead).below(nodes - 1);
    w.crash(victim);
    let crashed_at = w.now;
    let seen_dead = |w: &World| {
        (0..w.machines.len())
            .filter(|&i| w.is_up(i))
            .all(|i| matches!(w.view(i, victim), Some(State::Dead) | None))
    };
    let Some(t) = w.run_until_pred(Duration::from_secs(10), seen_dead) else {
        let laggards: Vec<usize> = (0..nodes)
            .filter(|&i| w.is_up(i) && !matches!(w.view(i, victim), Some(State::Dead)))
            .collect();
        return Err(format!(
            "crashed machine {victim} not marked dead within 10 s by {laggards:?}"
        ));
    };
    if let Some(e) = false_deaths(&w, settled, &[victim]) {
        return Err(e);
    }
    Ok(Report {
        elapsed: t - crashed_at,
        datagrams: w.sent,
    })
}

/// A converged cluster runs for `length` over a lossy network: no live node
/// may ever be marked dead.
pub fn stable(seed: u64, nodes: usize, length: Duration) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    boot(&mut w, Duration::from_secs(30))?;
    let settled = w.now;
    // Check as we go, so a failure names the first false death.
    let step = Duration::from_secs(100);
    let end = settled + length;
    while w.now < end {
        w.run_for(step);
        if let Some(e) = false_deaths(&w, settled, &[]) {
            return Err(e);
        }
        for m in &mut w.machines {
            m.events.retain(|(t, _)| *t >= end);
        }
    }
    Ok(Report {
        elapsed: length,
        datagrams: w.sent,
    })
}

/// 40% of the nodes are cut off until both sides declare the other dead,
/// then the partition heals; membership must converge within 30 s.
pub fn partition(seed: u64, nodes: usize) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    boot(&mut w, Duration::from_secs(30))?;
    let mut order: Vec<usize> = (0..nodes).collect();
    Rng::new(seed ^ 0x9a27).shuffle(&mut order);
    let minority = &order[..nodes * 2 / 5];
    for &i in minority {
        w.set_group(i, 1);
    }
    // Long enough for both sides to declare the other dead.
    let cut_off = |w: &World| {
        (0..w.machines.len()).all(|i| {
            (0..w.machines.len()).all(|j| {
                w.machines[i].group == w.machines[j].group
                    || matches!(w.view(i, j), Some(State::Dead) | None)
            })
        })
    };
    if w.run_until_pred(Duration::from_secs(60), cut_off).is_none() {
        return Err("the two sides of the partition never declared each other dead".into());
    }
    w.heal();
    let healed = w.now;
    match w.run_until_pred(Duration::from_secs(30), World::converged) {
        Some(t) => Ok(Report {
            elapsed: t - healed,
            datagrams: w.sent,
        }),
        None => Err(format!(
            "no convergence within 30 s of healing; views: {}",
            describe(&w)
        )),
    }
}

/// A node crashes and restarts with a higher epoch: the others mark it dead,
/// then alive again, and it sees them all.
pub fn restart(seed: u64, nodes: usize) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    boot(&mut w, Duration::from_secs(30))?;
    let victim = 1 + Rng::new(seed ^ 0x7e57).below(nodes - 1);
    w.crash(victim);
    w.run_for(Duration::from_secs(12));
    w.start(victim, &[0]);
    let back = w.now;
    match w.run_until_pred(Duration::from_secs(15), World::converged) {
        Some(t) => Ok(Report {
            elapsed: t - back,
            datagrams: w.sent,
        }),
        None => Err(format!(
            "restarted machine {victim} not rejoined within 15 s; views: {}",
            describe(&w)
        )),
    }
}

/// A node leaves voluntarily: every other node marks it left (not dead)
/// within 5 s, and nobody is declared dead.
pub fn leave(seed: u64, nodes: usize) -> Result<Report, String> {
    let mut w = World::new(SimConfig::lossy(seed, nodes));
    boot(&mut w, Duration::from_secs(30))?;
    let settled = w.now;
    let leaver = 1 + Rng::new(seed ^ 0x1ea7e).below(nodes - 1);
    w.with_node(leaver, |n, now| n.leave(now));
    // Keep it running briefly so the announcement spreads, then stop it.
    w.run_for(Duration::from_millis(500));
    w.crash(leaver);
    let left_at = w.now;
    let all_know = |w: &World| {
        (0..w.machines.len())
            .filter(|&i| w.is_up(i))
            .all(|i| w.view(i, leaver) == Some(State::Left))
    };
    let Some(t) = w.run_until_pred(Duration::from_secs(5), all_know) else {
        return Err(format!(
            "machine {leaver}'s leave did not reach everyone within 5 s"
        ));
    };
    if let Some(e) = false_deaths(&w, settled, &[]) {
        return Err(e);
    }
    Ok(Report {
        elapsed: t - left_at,
        datagrams: w.sent,
    })
}
