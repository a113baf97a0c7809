//! Replays one simulator scenario for one seed: `cargo xtask sim NAME --seed S --nodes N`.

use std::process::ExitCode;

use shoal_tests::scenarios;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut name = None;
    let mut seed = 0u64;
    let mut nodes = 32usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let parsed = match a.as_str() {
            "--seed" => it.next().and_then(|v| v.parse().ok()).map(|v| seed = v),
            "--nodes" => it.next().and_then(|v| v.parse().ok()).map(|v| nodes = v),
            n if !n.starts_with('-') && name.is_none() => {
                name = Some(n.to_string());
                Some(())
            }
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("usage: sim SCENARIO [--seed S] [--nodes N]");
            return ExitCode::from(2);
        }
    }
    let names: Vec<&str> = scenarios::ALL.iter().map(|(n, _)| *n).collect();
    let Some(f) = name.as_deref().and_then(scenarios::by_name) else {
        eprintln!("sim: name a scenario: {}", names.join(", "));
        return ExitCode::from(2);
    };
    if !(3..=64).contains(&nodes) {
        eprintln!("sim: --nodes must be between 3 and 64");
        return ExitCode::from(2);
    }
    match f(seed, nodes) {
        Ok(r) => {
            println!(
                "{} seed {seed} nodes {nodes}: ok, {:.3} s, {} datagrams",
                name.unwrap_or_default(),
                r.elapsed.as_micros() as f64 / 1e6,
                r.datagrams
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{} seed {seed} nodes {nodes}: FAILED: {e}",
                name.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}
