//! Runs simulator scenarios: `cargo xtask sim NAME --seed S --nodes N`
//! replays one seed; `--seeds K` runs seeds 0..K and prints the spread of
//! what the scenario measures.

use std::process::ExitCode;

use shoal_tests::scenarios;

struct Args {
    name: String,
    seed: u64,
    seeds: Option<u64>,
    nodes: usize,
}

fn parse() -> Option<Args> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        name: String::new(),
        seed: 0,
        seeds: None,
        nodes: 32,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => parsed.seed = args.next()?.parse().ok()?,
            "--seeds" => parsed.seeds = Some(args.next()?.parse().ok()?),
            "--nodes" => parsed.nodes = args.next()?.parse().ok()?,
            n if !n.starts_with('-') && parsed.name.is_empty() => parsed.name = n.to_string(),
            _ => return None,
        }
    }
    Some(parsed)
}

fn secs(d: shoal_core::Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

fn main() -> ExitCode {
    let names: Vec<&str> = scenarios::ALL.iter().map(|(n, _)| *n).collect();
    let Some(args) = parse() else {
        eprintln!("usage: sim SCENARIO [--seed S | --seeds K] [--nodes N]");
        return ExitCode::from(2);
    };
    let Some(f) = scenarios::by_name(&args.name) else {
        eprintln!("sim: name a scenario: {}", names.join(", "));
        return ExitCode::from(2);
    };
    if !(3..=64).contains(&args.nodes) {
        eprintln!("sim: --nodes must be between 3 and 64");
        return ExitCode::from(2);
    }
    let (name, nodes) = (&args.name, args.nodes);
    let Some(count) = args.seeds else {
        return match f(args.seed, nodes) {
            Ok(r) => {
                println!(
                    "{name} seed {} nodes {nodes}: ok, {:.3} s, {} datagrams",
                    args.seed,
                    secs(r.elapsed),
                    r.datagrams
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{name} seed {} nodes {nodes}: FAILED: {e}", args.seed);
                ExitCode::FAILURE
            }
        };
    };
    let mut times = Vec::new();
    let mut failed = 0;
    for seed in 0..count {
        match f(seed, nodes) {
            Ok(r) => times.push(secs(r.elapsed)),
            Err(e) => {
                failed += 1;
                eprintln!("{name} seed {seed}: FAILED: {e}");
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{name}, {nodes} nodes, {count} seeds: {} ok, {failed} failed; seconds min {:.2} p50 {:.2} p90 {:.2} max {:.2}",
        times.len(),
        pick(0.0),
        pick(0.5),
        pick(0.9),
        pick(1.0)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
