//! One seeded run: its options, its report, the run itself (safety phase, liveness, checks)
//! and the runtime it runs on.

use std::time::Duration;

use wire::Seed;

use crate::net::NetStats;

use super::{now, Faults, HostileCounts, World};

/// Options of one seeded run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed: it fixes everything.
    pub seed: u64,
    /// Server nodes (3 or 5).
    pub nodes: u64,
    /// Safety-phase steps.
    pub steps: usize,
}

/// The result of one seeded run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Broken invariants (empty: the run passed).
    pub violations: Vec<String>,
    /// Hash of every delivery and the final state: equal for equal seeds.
    pub trace_hash: u64,
    /// Virtual time the run took.
    pub sim_time: Duration,
    /// The fault mix.
    pub faults: Faults,
    /// Acknowledged creates.
    pub acked_creates: usize,
    /// Writes that failed (NoQuorum and the like; expected under faults).
    pub write_errors: u64,
    /// Network counters.
    pub net: NetStats,
    /// SVIDs delivered (each checked against the issuing node's applied bundle).
    pub issued: usize,
    /// Issue attempts refused (no active key yet, stale replica, entry deleted).
    pub issue_refused: u64,
    /// SVIDs issued by a node cut off (hearing no other node) for more than half of `staleness_max`
    /// (the knob's permissive side at work).
    pub issued_while_cut_off: u64,
    /// Workload serves checked.
    pub serves: u64,
    /// Agents whose SVID expired while they reached no node that could renew it (a join-token
    /// agent then needs a new token: documented, not a violation).
    pub agents_expired: usize,
    /// Re-attestations of x509pop agents (their SVID expired offline, or a copy renewed it).
    pub agents_reattested: u64,
    /// Bytes scanned for private keys.
    pub scanned_bytes: u64,
    /// What the hostile actors tried and got.
    pub hostile: HostileCounts,
}

impl Report {
    fn failed(seed: u64, violation: String) -> Report {
        Report {
            seed,
            violations: vec![violation],
            trace_hash: 0,
            sim_time: Duration::ZERO,
            faults: Faults::none(),
            acked_creates: 0,
            write_errors: 0,
            net: NetStats::default(),
            issued: 0,
            issue_refused: 0,
            issued_while_cut_off: 0,
            serves: 0,
            agents_expired: 0,
            agents_reattested: 0,
            scanned_bytes: 0,
            hostile: HostileCounts::default(),
        }
    }
}

/// Runs one seed: safety phase with the seed's faults, then liveness, then the checks.
pub async fn run(opts: &RunOptions) -> Report {
    let mut fault_rng = Seed::from_u64(opts.seed).child("faults").rng();
    let faults = Faults::swarm(&mut fault_rng);
    let start = now();
    let mut world = World::start_with(opts.seed, opts.nodes, &faults).await;
    if world.wait_leader(Duration::from_secs(10)).await.is_none() {
        world
            .violations
            .push("no leader within 10 s after start".into());
    }
    for _ in 0..opts.steps {
        world.step(&faults).await;
    }
    if let Err(e) = world.converge(Duration::from_secs(60)).await {
        world.violations.push(e);
    } else if let Err(e) = world.settle().await {
        world.violations.push(e);
    }
    world.check_oracle();
    world.check_issued();
    world.check_removed_final();
    let (acked_creates, write_errors) = {
        let o = world.oracle();
        (o.create_acked.len(), o.write_errors)
    };
    let report = Report {
        seed: opts.seed,
        violations: world.violations(),
        trace_hash: world.trace_hash(),
        sim_time: now().duration_since(start),
        faults,
        acked_creates,
        write_errors,
        net: world.net.stats(),
        issued: world.svid_check.count(),
        issue_refused: world.issue_refused,
        issued_while_cut_off: world.staleness_check.issued_while_cut_off,
        serves: world.workload_check.serves,
        agents_expired: world
            .agents
            .iter()
            .filter(|a| a.attested && !a.alive())
            .count(),
        agents_reattested: world.agents.iter().map(|a| a.reattested).sum(),
        scanned_bytes: world.secrets.scanned_bytes(),
        hostile: world.hostile_counts(),
    };
    world.shutdown().await;
    report
}

/// Whether this build seeds tokio's RNG, which makes runs reproducible (built with
/// `--cfg tokio_unstable`, as `.cargo/config.toml` does).
pub fn reproducible() -> bool {
    cfg!(tokio_unstable)
}

/// Runs one seed on its own current-thread runtime with paused (virtual) time.
pub fn run_seed(opts: &RunOptions) -> Report {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // The runtime's RNG orders the branches of every unbiased `select!` (openraft's too): seeded
    // from the run's seed, a seed reproduces its run exactly (`.cargo/config.toml`).
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(
        &opts.seed.to_le_bytes(),
    ));
    let rt = builder.build();
    match rt {
        // A panic in the code under test (a security assertion firing) is a violation of this
        // seed, reported with the rest, not the end of a many-seed run.
        Ok(rt) => {
            first_panic::arm();
            // A panic in any task (a node's Raft core, a server loop) ends the run: left alone,
            // the rest of the world would wait for the dead task for ever (seed 720192 on 5
            // nodes spun until killed before its log-hole fix). tokio's own
            // `UnhandledPanic::ShutdownRuntime` aborts the process on a current-thread runtime.
            let watched = async {
                tokio::select! {
                    report = run(opts) => report,
                    msg = first_panic::watch() => Report::failed(opts.seed, format!("panicked: {msg}")),
                }
            };
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(watched)))
                .unwrap_or_else(|panic| {
                    let msg = first_panic::take().unwrap_or_else(|| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                            .unwrap_or_else(|| "unknown panic".into())
                    });
                    Report::failed(opts.seed, format!("panicked: {msg}"))
                })
        }
        Err(e) => Report::failed(
            opts.seed,
            format!("cannot build the simulation runtime: {e}"),
        ),
    }
}

/// The first panic on this thread since [`first_panic::arm`], with where it happened: a task's
/// panic reaches `block_on` only as "the runtime shut down", so the hook keeps the original.
mod first_panic {
    use std::cell::RefCell;
    use std::sync::Once;

    thread_local! {
        static FIRST: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Installs the recording hook (once per process, chained to the previous one) and clears
    /// this thread's record.
    pub(super) fn arm() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                FIRST.with(|f| {
                    let mut f = f.borrow_mut();
                    if f.is_none() {
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        let msg = info
                            .payload()
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| {
                                info.payload()
                                    .downcast_ref::<&str>()
                                    .map(|s| (*s).to_string())
                            })
                            .unwrap_or_else(|| "unknown panic".into());
                        *f = Some(format!("{msg}{at}"));
                    }
                });
                previous(info);
            }));
        });
        FIRST.with(|f| f.borrow_mut().take());
    }

    /// Resolves with this thread's first panic since [`arm`] (polled every simulated 50 ms).
    pub(super) async fn watch() -> String {
        loop {
            if let Some(msg) = take() {
                return msg;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// This thread's first panic since [`arm`], if any.
    pub(super) fn take() -> Option<String> {
        FIRST.with(|f| f.borrow_mut().take())
    }
}
