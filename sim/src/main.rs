//! `sim`: run seeded simulations of a sigil Raft cluster.
//!
//! ```text
//! cargo run -p sim --release -- --seeds 1000 [--first-seed S] [--nodes 3|5] [--steps N]
//! cargo run -p sim --release -- --seed S [--nodes 3|5] [--steps N]
//! ```
//! Prints one line per seed; on a violation prints the seed and the command that reproduces it,
//! and exits 1.

use std::process::ExitCode;

use sim::{run_seed, RunOptions};

struct Args {
    first_seed: u64,
    seeds: u64,
    nodes: u64,
    steps: usize,
    verbose: bool,
}

const USAGE: &str =
    "usage: sim [--seeds N] [--first-seed S | --seed S] [--nodes 3|5] [--steps N] [--verbose]
  --seeds N       how many consecutive seeds to run (default 1)
  --first-seed S  first seed (default: derived from the process ID, and printed)
  --seed S        run exactly seed S
  --nodes N       server nodes, 3 or 5 (default 3)
  --steps N       safety-phase steps per seed (default 200)
  --verbose       print every seed, not only failures and a summary";

fn parse() -> Result<Args, String> {
    let mut args = Args {
        first_seed: u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        seeds: 1,
        nodes: 3,
        steps: 200,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
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
            "--seeds" => args.seeds = value("--seeds")?,
            "--first-seed" => args.first_seed = value("--first-seed")?,
            "--seed" => {
                args.first_seed = value("--seed")?;
                args.seeds = 1;
                args.verbose = true;
            }
            "--nodes" => {
                args.nodes = value("--nodes")?;
                if args.nodes != 3 && args.nodes != 5 {
                    return Err("--nodes must be 3 or 5".into());
                }
            }
            "--steps" => args.steps = usize::try_from(value("--steps")?).unwrap_or(usize::MAX),
            "--verbose" => args.verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        // e.g. SIM_LOG=openraft=debug: the nodes' own logs, for reproducing a seed.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "sim: {} seed(s) from {} on {} nodes, {} steps each",
        args.seeds, args.first_seed, args.nodes, args.steps
    );
    #[allow(clippy::disallowed_methods)] // wall time of the whole batch, for the report only
    let wall_start = std::time::Instant::now();
    let mut sim_total = std::time::Duration::ZERO;
    let mut failed = 0u64;
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        let opts = RunOptions {
            seed,
            nodes: args.nodes,
            steps: args.steps,
        };
        let report = run_seed(&opts);
        sim_total += report.sim_time;
        let ok = report.violations.is_empty();
        if args.verbose || !ok {
            println!(
                "seed {seed}: {} trace={:016x} sim={:.1}s acked={} write_errors={} issued={} refused={} net={:?} faults={:?}",
                if ok { "ok" } else { "VIOLATION" },
                report.trace_hash,
                report.sim_time.as_secs_f64(),
                report.acked_creates,
                report.write_errors,
                report.issued,
                report.issue_refused,
                report.net,
                report.faults
            );
        }
        if !ok {
            failed += 1;
            for v in &report.violations {
                println!("  violation: {v}");
            }
            println!(
                "  reproduce: cargo run -p sim --release -- --seed {seed} --nodes {} --steps {}",
                args.nodes, args.steps
            );
        }
    }
    let wall = wall_start.elapsed();
    println!(
        "sim: {} seed(s), {failed} failed; {:.1} s simulated in {:.1} s wall ({:.0}x)",
        args.seeds,
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
