//! Running a scenario over many seeds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many seeds a scenario runs: `SHOAL_SIM_SEEDS` or `default`.
pub fn seed_count(default: u64) -> u64 {
    std::env::var("SHOAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `scenario` for seeds `0..count` on all cores (or only the seed in
/// `SHOAL_SIM_SEED`); panics listing every failing seed and how to replay it.
pub fn for_seeds(name: &str, count: u64, scenario: impl Fn(u64) -> Result<(), String> + Sync) {
    let only: Option<u64> = std::env::var("SHOAL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let (first, count) = match only {
        Some(s) => (s, s + 1),
        None => (0, count),
    };
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= count {
                        break;
                    }
                    if let Err(e) = scenario(seed) {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((seed, e));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort();
    if !failures.is_empty() {
        let mut msg = format!(
            "{name}: {} of {} seeds failed\n",
            failures.len(),
            count - first
        );
        let test = std::thread::current().name().unwrap_or("TEST").to_string();
        for (seed, e) in &failures {
            let replay = if crate::scenarios::by_name(name).is_some() {
                format!("cargo xtask sim {name} --seed {seed}")
            } else {
                format!("SHOAL_SIM_SEED={seed} cargo test --profile sim -p shoal-tests -- {test}")
            };
            msg += &format!("  seed {seed}: {e}\n    replay: {replay}\n");
        }
        panic!("{msg}");
    }
}
