//! `chaos`: seeded whole-deployment simulation runs, and real-process chaos.
//!
//! ```text
//! cargo run -p chaos --release -- --seeds N [--first-seed S] [--nodes 3|5] [--steps N] [--twice]
//! cargo run -p chaos --release -- --seed S [--nodes 3|5]
//! cargo build --release -p node && cargo run -p chaos --release -- real [--nodes 3|5] [--cycles N] [--seed S] [--sigil PATH] [--dir DIR]
//! ```
//! Seed mode is the simulator's runner ([`sim::runner`]): per-seed results, the failing seed and
//! the exact command that reproduces it. `real` prints one line per cycle and a summary; on a
//! violation it prints it with the seed and the command that repeats the schedule, keeps the data
//! dir (logs of every process), and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;

use chaos::real::{run, Options};

const USAGE: &str = "usage: chaos real [--nodes 3|5] [--cycles N] [--seed S] [--sigil PATH] [--dir DIR]
       chaos --seeds N [--first-seed S] [--nodes 3|5] [--steps N] [--twice]   (seeded simulation; chaos --help-seeds)
  --nodes N     server nodes, 3 or 5 (default 3)
  --cycles N    fault cycles (default 50)
  --seed S      seed of the fault schedule (default: derived from the process ID, and printed)
  --sigil PATH  the sigil binary (default: `sigil` next to this executable)
  --dir DIR     data dir (default: a new directory under the system temp dir; removed after a clean run)";

fn parse() -> Result<Options, String> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("real") => {}
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown mode {other:?}")),
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let pid = std::process::id();
    let mut opts = Options {
        sigil: exe_dir.join("sigil"),
        nodes: 3,
        cycles: 50,
        seed: u64::from(pid).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        dir: std::env::temp_dir().join(format!("sigil-chaos-{pid}")),
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "--nodes" => {
                opts.nodes = number("--nodes", value("--nodes")?)?;
                if opts.nodes != 3 && opts.nodes != 5 {
                    return Err("--nodes must be 3 or 5".into());
                }
            }
            "--cycles" => opts.cycles = number("--cycles", value("--cycles")?)?,
            "--seed" => opts.seed = number("--seed", value("--seed")?)?,
            "--sigil" => opts.sigil = PathBuf::from(value("--sigil")?),
            "--dir" => opts.dir = PathBuf::from(value("--dir")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    match first.as_deref() {
        Some("real") | None => {}
        Some("-h" | "--help") => {
            println!("{USAGE}\n\n{}", sim::runner::usage("chaos"));
            return ExitCode::SUCCESS;
        }
        Some("--help-seeds") => {
            println!("{}", sim::runner::usage("chaos"));
            return ExitCode::SUCCESS;
        }
        Some(_) => return sim::runner::main_with_args("chaos", std::env::args().skip(1)),
    }
    let opts = match parse() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.dir.exists() {
        eprintln!(
            "error: {} already exists; pass another --dir",
            opts.dir.display()
        );
        return ExitCode::from(2);
    }
    println!(
        "chaos real: {} nodes, {} cycles, seed {}, data under {}",
        opts.nodes,
        opts.cycles,
        opts.seed,
        opts.dir.display()
    );
    #[allow(clippy::disallowed_methods)] // wall time of the session, for the report only
    let started = std::time::Instant::now();
    let result = run(&opts, |line| println!("{line}"));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: {e} (data and logs kept under {})",
                opts.dir.display()
            );
            return ExitCode::from(1);
        }
    };
    println!(
        "chaos real: {} cycles in {:.0} s; faults {:?}; {} registrations acknowledged (all present on every node after each heal), {} refused during faults; workload: {} fetches, longest gap between valid SVIDs {:.2} s; longest convergence {:.1} s",
        report.cycles,
        started.elapsed().as_secs_f64(),
        report.faults,
        report.acked,
        report.refused,
        report.fetches,
        report.longest_gap.as_secs_f64(),
        report.longest_converge.as_secs_f64()
    );
    if report.violations.is_empty() {
        let _ = std::fs::remove_dir_all(&opts.dir);
        println!("no violations");
        ExitCode::SUCCESS
    } else {
        for v in &report.violations {
            println!("VIOLATION: {v}");
        }
        println!(
            "repeat the schedule: cargo run -p chaos --release -- real --nodes {} --cycles {} --seed {} (logs kept under {})",
            opts.nodes,
            opts.cycles,
            opts.seed,
            opts.dir.display()
        );
        ExitCode::from(1)
    }
}
