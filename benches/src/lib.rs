//! # benches — sigil's measurements
//!
//! Criterion micro-benches that each compare against a baseline measured in the same run (e.g.
//! the versioned codec against raw bincode), and two load generators on loopback, each against
//! a baseline measured in the same run: `src/bin/loadgen.rs` (an in-process server cluster: SVID
//! signing over the node API and registration writes, against raw ring signing) and
//! `src/bin/wlbench.rs` (an in-process server and agent: Workload API latency, against a unix
//! attestation and a raw round trip). Benchmarks measure; they never gate correctness. Run with
//! `cargo bench -p benches`, `cargo run -p benches --release --bin loadgen -- --help` and
//! `cargo run -p benches --release --bin wlbench -- --help`.
//!
//! This library holds what both load generators share, once: the tool's `main` and the runtime
//! its phases run on against a cluster (here: [`main`], [`run_on_cluster`]); the in-process
//! cluster with its optional agent, and the admin API calls that set it up ([`cluster`]); latency
//! samples, rates and the results table ([`report`]). Processes, ports, config files, the OS
//! clock and task spawning come from `testkit`.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod report;

use std::error::Error as StdError;
use std::process::ExitCode;
use std::time::Duration;

use cluster::Cluster;

/// Any error a load generator reports.
pub type BoxError = Box<dyn StdError + Send + Sync>;
/// A load generator's result.
pub type Res<T> = Result<T, BoxError>;

/// The trust domain of every cluster a load generator starts.
pub const TRUST_DOMAIN: &str = "bench.test";
/// How long a start-up step (a CA commit, a join, a promotion, the agent's first SVID) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// One call's limit: a node API call, or a Workload API call with its connect.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A load generator's `main` after parsing `args`: logs to stderr (`RUST_LOG`, by default
/// warnings), then `check`s the arguments (exit 2) and `run`s (exit 1 on an error); each error
/// is printed as `<tool>: <error>`.
pub fn main<A>(
    tool: &str,
    args: A,
    check: impl FnOnce(&A) -> Res<()>,
    run: impl FnOnce(A) -> Res<()>,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(e) = check(&args) {
        eprintln!("{tool}: {e}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// This machine's cores (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs `phases` against a new, empty [`Cluster`] of `tool` on a multi-threaded tokio runtime,
/// then stops the cluster and prints the shutdown line (`shutdown: <stopped> stopped in …`,
/// [`Cluster::finish`]) and shuts the runtime down (waiting at most 5 s for its tasks). The
/// phases' error, else any shutdown problem.
pub fn run_on_cluster(
    tool: &'static str,
    stopped: impl FnOnce(&Cluster) -> String,
    phases: impl AsyncFnOnce(&mut Cluster) -> Res<()>,
) -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let mut cluster = Cluster::new(tool)?;
        let result = phases(&mut cluster).await;
        let what = stopped(&cluster);
        cluster.finish(result, &what).await
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}
