//! The many-seed runner behind `sim` and `chaos` (the same flags on both):
//!
//! ```text
//! cargo run -p chaos --release -- --seeds 1000 [--first-seed S] [--nodes 3|5] [--steps N] [--twice]
//! cargo run -p chaos --release -- --seed S [--nodes 3|5] [--steps N]
//! ```
//! Prints the first seed (random when not given), a line per failing seed with its violations
//! and the exact command that reproduces it, and a summary; returns exit code 1 on a violation.

use std::process::ExitCode;

use crate::world::{run_seed, RunOptions};

/// A batch without `--verbose` reports its progress every this many seeds.
const PROGRESS_EVERY: u64 = 500;

struct Args {
    first_seed: u64,
    seeds: u64,
    nodes: u64,
    steps: usize,
    verbose: bool,
    twice: bool,
}

/// The runner's usage text; `prog` is how it was invoked (`sim`, `chaos`).
pub fn usage(prog: &str) -> String {
    format!(
        "usage: {prog} [--seeds N] [--first-seed S | --seed S] [--nodes 3|5] [--steps N] [--twice] [--verbose]
  --seeds N       how many consecutive seeds to run (default 1)
  --first-seed S  first seed (default: derived from the process ID, and printed)
  --seed S        run exactly seed S, verbosely
  --nodes N       server nodes, 3 or 5 (default 3)
  --steps N       safety-phase steps per seed (default 200)
  --twice         run every seed twice and compare trace hashes (determinism check)
  --verbose       print every seed, not only failures and a summary (without it, progress
                  goes to stderr every 500 seeds)"
    )
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        first_seed: u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        seeds: 1,
        nodes: 3,
        steps: 200,
        verbose: false,
        twice: false,
    };
    let mut it = args;
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}: not a number: {v}"))
                })
        };
        match flag.as_str() {
            "--seeds" => out.seeds = value("--seeds")?,
            "--first-seed" => out.first_seed = value("--first-seed")?,
            "--seed" => {
                out.first_seed = value("--seed")?;
                out.seeds = 1;
                out.verbose = true;
            }
            "--nodes" => {
                out.nodes = value("--nodes")?;
                if out.nodes != 3 && out.nodes != 5 {
                    return Err("--nodes must be 3 or 5".into());
                }
            }
            "--steps" => out.steps = usize::try_from(value("--steps")?).unwrap_or(usize::MAX),
            "--twice" => out.twice = true,
            "--verbose" => out.verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

/// Runs the seeds `args` ask for (`args` without the program name) and prints the results.
pub fn main_with_args(prog: &str, args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{}", usage(prog));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{}", usage(prog));
            return ExitCode::from(2);
        }
    };
    println!(
        "{prog}: {} seed(s) from {} on {} nodes, {} steps each{}",
        args.seeds,
        args.first_seed,
        args.nodes,
        args.steps,
        if args.twice { ", each run twice" } else { "" }
    );
    if !crate::world::reproducible() {
        eprintln!("{prog}: warning: built without `--cfg tokio_unstable` (a RUSTFLAGS environment variable replaces the one in .cargo/config.toml), so tokio's RNG is not seeded and a seed may not reproduce its run exactly");
    }
    #[allow(clippy::disallowed_methods)] // wall time of the whole batch, for the report only
    let wall_start = std::time::Instant::now();
    let mut sim_total = std::time::Duration::ZERO;
    let mut failed = 0u64;
    // Delivered SVIDs, serves, issued while cut off, expired agents, re-attestations.
    let mut totals = [0u64; 5];
    let mut hostile = crate::world::HostileCounts::default();
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        let opts = RunOptions {
            seed,
            nodes: args.nodes,
            steps: args.steps,
        };
        let mut report = run_seed(&opts);
        if args.twice {
            let again = run_seed(&opts);
            if again.trace_hash != report.trace_hash {
                report.violations.push(format!(
                    "not deterministic: trace {:016x} then {:016x}",
                    report.trace_hash, again.trace_hash
                ));
            }
        }
        sim_total += report.sim_time;
        totals[0] += report.issued as u64;
        totals[1] += report.serves;
        totals[2] += report.issued_while_cut_off;
        totals[3] += report.agents_expired as u64;
        totals[4] += report.agents_reattested;
        let h = &report.hostile;
        hostile.replays += h.replays;
        hostile.probes += h.probes;
        hostile.copy_tries += h.copy_tries;
        hostile.copy_renewed_in_bound += h.copy_renewed_in_bound;
        hostile.copy_served += h.copy_served;
        hostile.ban_tries += h.ban_tries;
        hostile.ban_served_before += h.ban_served_before;
        hostile.removed_proposals += h.removed_proposals;
        hostile.refused += h.refused;
        let ok = report.violations.is_empty();
        if args.verbose || !ok {
            println!(
                "seed {seed}: {} trace={:016x} sim={:.1}s acked={} write_errors={} svids={} refused={} cut_off_issued={} serves={} agents_expired={} reattested={} scanned={}B hostile_refused={} hostile={:?} net={:?} faults={:?}",
                if ok { "ok" } else { "VIOLATION" },
                report.trace_hash,
                report.sim_time.as_secs_f64(),
                report.acked_creates,
                report.write_errors,
                report.issued,
                report.issue_refused,
                report.issued_while_cut_off,
                report.serves,
                report.agents_expired,
                report.agents_reattested,
                report.scanned_bytes,
                report.hostile.refused,
                report.hostile,
                report.net,
                report.faults
            );
        }
        let done = seed - args.first_seed + 1;
        if !args.verbose && done % PROGRESS_EVERY == 0 && done < args.seeds {
            // A long batch says how far it is (on stderr: stdout stays the report).
            eprintln!(
                "{prog}: {done}/{} seeds, {} failed so far, {:.0} s",
                args.seeds,
                failed + u64::from(!ok),
                wall_start.elapsed().as_secs_f64()
            );
        }
        if !ok {
            failed += 1;
            for v in &report.violations {
                println!("  violation: {v}");
            }
            println!(
                "  reproduce: cargo run -p {prog} --release -- --seed {seed} --nodes {} --steps {}",
                args.nodes, args.steps
            );
        }
    }
    let wall = wall_start.elapsed();
    println!(
        "{prog}: hostile actors: {} replayed tokens, {} entitlement probes, {} copied-SVID requests ({} renewals within their bound, {} syncs/signs served), {} requests of banned agents ({} served before the ban applied), {} proposals of removed servers; hostile_refused={}",
        hostile.replays,
        hostile.probes,
        hostile.copy_tries,
        hostile.copy_renewed_in_bound,
        hostile.copy_served,
        hostile.ban_tries,
        hostile.ban_served_before,
        hostile.removed_proposals,
        hostile.refused
    );
    println!(
        "{prog}: {} seed(s), {failed} failed; {} SVIDs delivered, {} workload serves, {} SVIDs issued by cut-off nodes within staleness_max, {} agents expired, {} x509pop re-attestations; {:.1} s simulated in {:.1} s wall ({:.0}x)",
        args.seeds,
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        sim_total.as_secs_f64(),
        wall.as_secs_f64(),
        sim_total.as_secs_f64() / wall.as_secs_f64().max(1e-9)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
