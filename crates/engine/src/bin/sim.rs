//! The whole-node simulation's command line: sweeps seeds of a profile, or replays one with a trace.
//!
//! ```text
//! sim --from A --to B --profile NAME   # seeds A..B (B excluded); non-zero exit on any failure
//! sim --seed N --profile NAME --trace  # one seed, every event printed
//! sim --seed N --profile NAME --twice  # one seed run twice: the fingerprints must match
//! ```
//! The last line printed is always a one-line summary.

use std::process::ExitCode;
use std::time::Instant;

use peer_buckets_engine::sim::{run, Profile, PROFILES};

fn usage() -> ExitCode {
    let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
    eprintln!(
        "usage: sim (--from A --to B | --seed N [--trace] [--twice]) [--profile {}]",
        names.join("|")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut from = None;
    let mut to = None;
    let mut seed = None;
    let mut profile = "heavy".to_string();
    let mut trace = false;
    let mut twice = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        let number = || value.as_deref().and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--from" => from = number(),
            "--to" => to = number(),
            "--seed" => seed = number(),
            "--profile" => profile = value.clone().unwrap_or_default(),
            "--trace" => {
                trace = true;
                i += 1;
                continue;
            }
            "--twice" => {
                twice = true;
                i += 1;
                continue;
            }
            _ => return usage(),
        }
        if value.is_none() {
            return usage();
        }
        i += 2;
    }
    let Some(p) = Profile::named(&profile) else {
        return usage();
    };
    let seeds: Vec<u64> = match (seed, from, to) {
        (Some(s), None, None) => vec![s],
        (None, Some(a), Some(b)) if a < b => (a..b).collect(),
        _ => return usage(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut steps = 0;
    let mut ops = 0;
    let mut faults = 0;
    for &s in &seeds {
        let report = run(&p, s, trace || twice);
        if trace {
            for line in &report.trace {
                println!("{line}");
            }
        }
        steps += report.steps;
        ops += report.ops;
        faults += report.faults;
        let mut bad = report.violations.clone();
        if twice {
            let again = run(&p, s, true);
            if again.fingerprint != report.fingerprint {
                let at = report
                    .trace
                    .iter()
                    .zip(&again.trace)
                    .position(|(a, b)| a != b);
                bad.push(format!(
                    "not deterministic: fingerprint {:016x} then {:016x}; first difference: {:?} / {:?}",
                    report.fingerprint,
                    again.fingerprint,
                    at.map(|i| &report.trace[i]),
                    at.map(|i| &again.trace[i]),
                ));
            }
        }
        if bad.is_empty() {
            println!(
                "seed {s}: ok ({} ms simulated, {} ops, {} faults, fingerprint {:016x})",
                report.steps, report.ops, report.faults, report.fingerprint
            );
        } else {
            println!("seed {s}: FAILED ({} ms simulated)", report.steps);
            for v in &bad {
                println!("  {v}");
            }
            failed.push(s);
        }
    }
    println!(
        "sim profile={} seeds={} failed={} {:?} steps={} ops={} faults={} wall={:.1}s",
        p.name,
        seeds.len(),
        failed.len(),
        failed,
        steps,
        ops,
        faults,
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
