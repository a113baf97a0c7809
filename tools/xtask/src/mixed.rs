//! The mixed-fleet test: three host nodes and two QEMU microcontrollers form
//! one cluster, driven and observed through the `shoal` CLI.
//!
//! It checks that the cluster converges with the MCUs listed as kind `mcu`,
//! that keys the router places on an MCU are answered by that MCU, that a
//! killed QEMU node is marked dead by every other node within 10 s, and that
//! the restarted image rejoins.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use shoal_core::router::{self, Candidate, KeyDigest};
use shoal_core::{NodeId, Pool, PoolSet};

use crate::fleet::{self, HOST_PORT, MCU_PORT};

const HOSTS: u16 = 3;
const MCUS: u16 = 2;

/// Every process the test started; all are killed when it ends, however it ends.
#[derive(Default)]
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cli {
    bin: PathBuf,
    key: PathBuf,
}

impl Cli {
    /// `shoal --json status` against the node at `port`: its member rows.
    fn status(&self, port: u16) -> Result<Vec<Value>> {
        let out = Command::new(&self.bin)
            .args(["--node", &format!("127.0.0.1:{port}"), "--key"])
            .arg(&self.key)
            .args(["--timeout", "2", "--json", "status"])
            .output()
            .context("running shoal")?;
        if !out.status.success() {
            bail!(
                "shoal status on :{port}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let rows: Value = serde_json::from_slice(&out.stdout)?;
        Ok(rows.as_array().cloned().unwrap_or_default())
    }

    /// `shoal --json send --pool mcu KEY hello`: the id that answered.
    fn send_mcu(&self, key: &str) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(["--node", &format!("127.0.0.1:{HOST_PORT}"), "--key"])
            .arg(&self.key)
            .args([
                "--timeout",
                "5",
                "--json",
                "send",
                "--pool",
                "mcu",
                key,
                "hello",
            ])
            .output()
            .context("running shoal")?;
        if !out.status.success() {
            bail!(
                "shoal send {key}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["by"].as_str().unwrap_or_default().to_string())
    }
}

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or_default()
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
fn wait(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn candidates(rows: &[Value]) -> Vec<Candidate> {
    rows.iter()
        .filter(|r| field(r, "state") == "alive")
        .filter_map(|r| {
            let id = u64::from_str_radix(field(r, "id"), 16).ok()?;
            let pools: PoolSet = r["pools"]
                .as_array()?
                .iter()
                .filter_map(|p| Pool::from_name(p.as_str()?))
                .collect();
            let weight = u32::try_from(r["weight"].as_u64()?).ok()?;
            Some(Candidate {
                id: NodeId(id),
                weight,
                pools,
            })
        })
        .collect()
}

/// Runs the test; `dir` holds the hosts' data and the key.
pub fn run(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let build = fleet::build(dir, true)?;
    let cli = Cli {
        bin: fleet::release_dir().join("shoal"),
        key: build.key_file.clone(),
    };
    let mut procs = Processes::default();
    for i in 0..HOSTS {
        procs.0.push((
            format!("host-{i}"),
            fleet::spawn_host(&build, dir, i, true)?,
        ));
        // The first host is everyone's seed: let it bind before the rest join.
        wait(Duration::from_secs(5), || cli.status(HOST_PORT + i).is_ok());
    }
    for j in 0..MCUS {
        let (child, _log) = fleet::spawn_mcu(&build, j, HOST_PORT)?;
        procs.0.push((format!("mcu-{j}"), child));
    }

    // 1. Everyone converges; the MCUs are listed as kind mcu.
    let total = usize::from(HOSTS + MCUS);
    let converged = |cli: &Cli| {
        cli.status(HOST_PORT)
            .map(|rows| rows.iter().filter(|r| field(r, "state") == "alive").count() == total)
            .unwrap_or(false)
    };
    let Some(t) = wait(Duration::from_secs(30), || converged(&cli)) else {
        bail!(
            "the mixed fleet did not converge within 30 s: {:?}",
            cli.status(HOST_PORT)
        );
    };
    let rows = cli.status(HOST_PORT)?;
    let mcus: Vec<&Value> = rows.iter().filter(|r| field(r, "kind") == "mcu").collect();
    if mcus.len() != usize::from(MCUS) {
        bail!("expected {MCUS} members of kind mcu, saw {}", mcus.len());
    }
    println!(
        "mixed fleet: {total} members alive after {:.1} s; {MCUS} of kind mcu",
        t.as_secs_f64()
    );
    if let Some((_, qemu)) = procs.0.iter().find(|(n, _)| n == "mcu-0")
        && let Some(share) = cpu_share(qemu.id(), Duration::from_secs(3))
    {
        println!(
            "mixed fleet: an idle QEMU node used {:.1}% of a core over 3 s",
            share * 100.0
        );
    }

    // 2. Keys the router places on an MCU are answered by that MCU.
    let view = candidates(&rows);
    let mut answered = std::collections::BTreeSet::new();
    for k in 0..12 {
        let key = format!("sensor/{k}");
        let by = cli.send_mcu(&key)?;
        let owner = router::primary(
            view.iter().copied(),
            Pool::Mcu,
            &KeyDigest::of(key.as_bytes()),
        )
        .map(|id| id.to_string())
        .unwrap_or_default();
        if by != owner {
            bail!("{key} was answered by {by}, but the router places it on {owner}");
        }
        answered.insert(by);
    }
    if answered.len() != usize::from(MCUS) {
        bail!("expected both MCUs to own and answer some of 12 keys; answered by {answered:?}");
    }
    println!("mixed fleet: 12 mcu-pool keys answered by their owners, both MCUs among them");

    // 3. Kill one QEMU: every other node marks it dead within 10 s.
    let victim = field(mcus[1], "id").to_string();
    let (name, child) = procs
        .0
        .iter_mut()
        .find(|(n, _)| n == "mcu-1")
        .context("mcu-1")?;
    child.kill().with_context(|| format!("killing {name}"))?;
    let _ = child.wait();
    let survivors: Vec<u16> = (0..HOSTS)
        .map(|i| HOST_PORT + i)
        .chain([MCU_PORT])
        .collect();
    let all_see_dead = || {
        survivors.iter().all(|&port| {
            cli.status(port).is_ok_and(|rows| {
                rows.iter()
                    .any(|r| field(r, "id") == victim && field(r, "state") == "dead")
            })
        })
    };
    let Some(t) = wait(Duration::from_secs(10), all_see_dead) else {
        bail!("the killed MCU {victim} was not marked dead by every other node within 10 s");
    };
    println!(
        "mixed fleet: killed mcu-1 marked dead by all 4 others after {:.1} s",
        t.as_secs_f64()
    );

    // 4. The restarted image rejoins (same id, newer epoch).
    let (child, _log) = fleet::spawn_mcu(&build, 1, HOST_PORT)?;
    procs.0.push(("mcu-1 (restarted)".into(), child));
    let rejoined = || {
        cli.status(HOST_PORT).is_ok_and(|rows| {
            rows.iter()
                .any(|r| field(r, "id") == victim && field(r, "state") == "alive")
                && rows.iter().filter(|r| field(r, "state") == "alive").count() == total
        })
    };
    let Some(t) = wait(Duration::from_secs(20), rejoined) else {
        bail!("the restarted MCU {victim} did not rejoin within 20 s");
    };
    println!(
        "mixed fleet: restarted mcu-1 rejoined as {victim} after {:.1} s",
        t.as_secs_f64()
    );
    Ok(())
}

/// The share of one core process `pid` used over `span` (from /proc).
fn cpu_share(pid: u32, span: Duration) -> Option<f64> {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let before = ticks()?;
    std::thread::sleep(span);
    let after = ticks()?;
    Some((after - before) as f64 / hz / span.as_secs_f64())
}
