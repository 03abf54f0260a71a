//! Real-process chaos: `sigil server` processes, one `sigil agent` and a workload on loopback,
//! put through repeated fault cycles — `kill -9` and restart, `SIGSTOP`/`SIGCONT`, isolation,
//! splits and one-way cuts through the [`crate::relay::Relay`] in front of every node — while
//! registrations are written through random nodes and a workload keeps fetching its SVID.
//!
//! Checks, after every cycle and throughout:
//! - **no acknowledged registration is lost**: every entry a node acknowledged is listed by every
//!   node once the cycle healed;
//! - **convergence**: after heal, all nodes list the same entries and agree on one leader within
//!   [`CONVERGE_WAIT`];
//! - **the workload always holds a valid SVID**: every fetch (every [`FETCH_EVERY`]) succeeds
//!   with an SVID that has not expired, and at the end of every cycle the SVID chains to the
//!   bundle the agent serves (`openssl verify`).
//!
//! Faults are chosen by a seeded RNG, so a run's fault schedule (not its timing) repeats with its
//! seed.
//! Everything binds 127.0.0.1 and stops what it started (also on panic: drop guards).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;
use testkit::{
    json_of, now, status_id, try_run_bounded, unix_now_secs, AgentToml, Join, Proc, ServerNode,
};

use crate::relay::Relay;

/// The trust domain of a chaos run.
pub const TRUST_DOMAIN: &str = "chaos.test";
/// Bound on convergence after a cycle heals.
pub const CONVERGE_WAIT: Duration = Duration::from_secs(40);
/// How often the workload fetches its SVID.
pub const FETCH_EVERY: Duration = Duration::from_millis(250);
/// Bound on one `sigil` CLI call.
const CALL_LIMIT: Duration = Duration::from_secs(15);
/// Bound on start-up steps (a node up, joined, the agent attested).
const START_WAIT: Duration = Duration::from_secs(60);
/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `sigil` binary.
    pub sigil: PathBuf,
    /// Server nodes (3 or 5).
    pub nodes: u64,
    /// Fault cycles.
    pub cycles: u64,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Where to put the data (kept afterwards only on a violation).
    pub dir: PathBuf,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Cycles run.
    pub cycles: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Registrations acknowledged (all must survive).
    pub acked: u64,
    /// Registration writes refused or timed out (allowed during faults).
    pub refused: u64,
    /// Workload fetches, and the longest time between two successful ones.
    pub fetches: u64,
    /// Longest gap between two successful workload fetches.
    pub longest_gap: Duration,
    /// Longest convergence after heal.
    pub longest_converge: Duration,
    /// Broken invariants.
    pub violations: Vec<String>,
}

/// How often the harness polls the plane.
const POLL: Duration = Duration::from_millis(100);

fn wait_for(limit: Duration, f: impl FnMut() -> bool) -> bool {
    testkit::wait_for_every(limit, POLL, f)
}

/// Runs `sigil ARGS` to completion within [`CALL_LIMIT`] (killed after); a failure to run it is
/// a failed `Output` saying why.
fn sigil(bin: &Path, args: &[&str]) -> Output {
    try_run_bounded(
        Command::new(bin)
            .args(args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET"),
        CALL_LIMIT,
    )
    .unwrap_or_else(|e| Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: e.into_bytes(),
    })
}

/// One server node: its process and files, and its relay.
struct Node {
    server: ServerNode,
    relay: Relay,
    stopped: bool,
}

/// The workload: fetches its SVID every [`FETCH_EVERY`] on a thread and records failures.
struct Workload {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<WorkloadState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WorkloadState {
    fetches: u64,
    last_ok: Option<Instant>,
    longest_gap: Duration,
    failures: Vec<String>,
}

impl Workload {
    fn start(bin: PathBuf, socket: PathBuf, want: String) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(WorkloadState::default()));
        let (s, st) = (stop.clone(), state.clone());
        #[allow(clippy::disallowed_methods)] // the harness's workload runs on its own thread
        let thread = std::thread::spawn(move || {
            let sock = socket.to_string_lossy().into_owned();
            while !s.load(Ordering::Relaxed) {
                let out = sigil(&bin, &["api", "fetch", "x509", "--json", "--socket", &sock]);
                let verdict = json_of(&out)
                    .and_then(|v| {
                        let svid = v["svids"].as_array()?.first()?.clone();
                        Some((
                            svid["spiffe_id"].as_str()? == want,
                            svid["not_after_secs"].as_u64()?,
                        ))
                    })
                    .map_or_else(
                        || {
                            Err(format!(
                                "fetch failed: {}",
                                String::from_utf8_lossy(&out.stderr).trim()
                            ))
                        },
                        |(right, not_after)| match (right, not_after > unix_now_secs()) {
                            (true, true) => Ok(()),
                            (false, _) => Err("an SVID for another SPIFFE ID".to_owned()),
                            (_, false) => Err(format!("an expired SVID (not after {not_after})")),
                        },
                    );
                let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                st.fetches += 1;
                match verdict {
                    Ok(()) => {
                        let at = now();
                        if let Some(prev) = st.last_ok {
                            st.longest_gap = st.longest_gap.max(at.duration_since(prev));
                        }
                        st.last_ok = Some(at);
                    }
                    Err(e) => st.failures.push(e),
                }
                drop(st);
                std::thread::sleep(FETCH_EVERY);
            }
        });
        Workload {
            stop,
            state,
            thread: Some(thread),
        }
    }

    fn take_failures(&self) -> Vec<String> {
        std::mem::take(
            &mut self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failures,
        )
    }

    fn finish(mut self) -> (u64, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.fetches, st.longest_gap, st.failures.clone())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The plane under test.
struct Plane {
    opts: Options,
    nodes: Vec<Node>,
    agent: Option<Proc>,
    agent_id: String,
    socket: PathBuf,
    _rt: tokio::runtime::Runtime,
}

type Res<T> = Result<T, String>;

impl Plane {
    fn start(opts: &Options) -> Res<Plane> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let mut plane = Plane {
            opts: opts.clone(),
            nodes: Vec::new(),
            agent: None,
            agent_id: String::new(),
            socket: opts.dir.join("agent.sock"),
            _rt: rt,
        };
        for id in 1..=opts.nodes {
            plane.add_node_retrying(id)?;
        }
        plane.start_agent()?;
        Ok(plane)
    }

    /// Adds node `id`; a process that exits while starting (its port taken between choosing and
    /// binding it, say) is started again once, on a new port with a new join token.
    fn add_node_retrying(&mut self, id: u64) -> Res<()> {
        match self.add_node(id) {
            Err(e) if e.starts_with(&format!("node {id} exited")) => {
                eprintln!("chaos real: {e}\nchaos real: starting node {id} again");
                if let Some(mut gone) = self.nodes.pop() {
                    gone.server.kill();
                }
                let home = self.opts.dir.join(format!("node-{id}"));
                let _ = std::fs::rename(&home, home.with_extension("failed-start"));
                self.add_node(id)
            }
            other => other,
        }
    }

    fn add_node(&mut self, id: u64) -> Res<()> {
        let home = self.opts.dir.join(format!("node-{id}"));
        let mut server = ServerNode::new(&self.opts.sigil, id, home)
            .map_err(|e| format!("node {id}: {e}"))?
            .cli_limit(CALL_LIMIT);
        let relay = self
            ._rt
            .block_on(Relay::start(0, server.addr))
            .map_err(|e| format!("relay for node {id}: {e}"))?;
        let mut config = server.toml(TRUST_DOMAIN).advertise(relay.addr());
        if id == 1 {
            config = config.bootstrap();
        }
        if let Some(seed) = self.nodes.first() {
            // A token for this node's ID; one that re-admits it if an earlier start already
            // joined it (a start that failed after its join).
            let node_id = id.to_string();
            let generate = |rejoin: bool| {
                let mut args = vec!["token", "generate", "--server", "--node-id", &node_id];
                if rejoin {
                    args.push("--rejoin");
                }
                args.push("--json");
                json_of(&sigil(&self.opts.sigil, &seed.server.admin_args(&args)))
            };
            let token = generate(false)
                .or_else(|| generate(true))
                .ok_or("could not generate a server join token")?;
            config = config.join(Join {
                token: token["token"].as_str().unwrap_or_default().to_owned(),
                seeds: vec![seed.relay.addr().to_string()],
                bundle_sha256: token["bundle_sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        config.write(&server.config).map_err(|e| e.to_string())?;
        server
            .start()
            .map_err(|e| format!("starting node {id}: {e}"))?;
        self.nodes.push(Node {
            server,
            relay,
            stopped: false,
        });
        let n = self.nodes.len();
        let mut exited = None;
        let up = wait_for(START_WAIT, || {
            exited = self.nodes[n - 1].server.exited();
            exited.is_some()
                || self.status(0).is_some_and(|s| {
                    s["members"].as_array().is_some_and(|m| {
                        m.iter().filter(|m| m["voter"] == true).count() == n
                            && m.iter().all(|m| !m["x509_authority"].is_null())
                    })
                })
        });
        if up && exited.is_none() {
            return Ok(());
        }
        // A test's temp dir is gone by the time anyone reads the failure: the logs go with it.
        let what = match exited {
            Some(status) => format!("node {id} exited ({status}) while starting"),
            None => format!("node {id} did not come up as a voter with a CA within {START_WAIT:?}"),
        };
        let status = self
            .status(0)
            .map_or_else(|| "unavailable".to_owned(), |s| s.to_string());
        let mut logs = String::new();
        for node in [&self.nodes[0], &self.nodes[n - 1]] {
            logs.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                node.server.log.display(),
                node.server.log_tail(40)
            ));
        }
        Err(format!(
            "{what}; cluster status from node 1: {status}{logs}"
        ))
    }

    fn status(&self, i: usize) -> Option<Value> {
        self.nodes.get(i)?.server.status()
    }

    fn start_agent(&mut self) -> Res<()> {
        let first = &self.nodes[0];
        let token = json_of(&sigil(
            &self.opts.sigil,
            &first.server.admin_args(&["token", "generate", "--json"]),
        ))
        .ok_or("could not generate an agent join token")?;
        let hash = json_of(&sigil(
            &self.opts.sigil,
            &first
                .server
                .admin_args(&["bundle", "show", "--hash", "--json"]),
        ))
        .and_then(|v| v["bundle_sha256"].as_str().map(str::to_owned))
        .ok_or("could not read the bundle hash")?;
        self.agent_id = token["agent_spiffe_id"]
            .as_str()
            .ok_or("no agent ID")?
            .to_owned();
        let servers: Vec<SocketAddr> = self.nodes.iter().map(|n| n.relay.addr()).collect();
        let home = self.opts.dir.join("agent");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let config = home.join("agent.toml");
        AgentToml::new(TRUST_DOMAIN, &servers, home.join("data"), &self.socket)
            .join_token(token["token"].as_str().unwrap_or_default())
            .bundle_sha256(&hash)
            .write(&config)
            .map_err(|e| e.to_string())?;
        let agent = Proc::try_start(&self.opts.sigil, "agent", &config, home.join("log"))
            .map_err(|e| format!("starting the agent: {e}"))?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Creates an entry through node `i`; its ID when acknowledged.
    fn create_entry(&self, i: usize, name: &str) -> Option<String> {
        let n = &self.nodes[i];
        let id = format!("spiffe://{TRUST_DOMAIN}/chaos/{name}");
        let out = sigil(
            &self.opts.sigil,
            &n.server.admin_args(&[
                "entry",
                "create",
                "--spiffe-id",
                &id,
                "--parent-id",
                &self.agent_id,
                "--selector",
                "unix:uid:4242",
                "--json",
            ]),
        );
        json_of(&out).and_then(|v| v["id"].as_str().map(str::to_owned))
    }

    fn entries(&self, i: usize) -> Option<BTreeSet<String>> {
        let n = &self.nodes[i];
        let v = json_of(&sigil(
            &self.opts.sigil,
            &n.server.admin_args(&["entry", "list", "--json"]),
        ))?;
        Some(
            v["entries"]
                .as_array()?
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Undoes every network fault and resumes stopped processes; restarts killed nodes.
    fn heal(&mut self) -> Res<()> {
        for n in &mut self.nodes {
            n.relay.heal();
            if n.stopped {
                n.server.signal("CONT");
                n.stopped = false;
            }
            if !n.server.running() {
                n.server
                    .start()
                    .map_err(|e| format!("restarting node {}: {e}", n.server.id))?;
            }
        }
        Ok(())
    }

    /// Cuts node `a` from node `b` in both directions.
    fn cut(&self, a: usize, b: usize) {
        self.nodes[a].relay.block(self.nodes[b].server.addr);
        self.nodes[b].relay.block(self.nodes[a].server.addr);
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if n.stopped {
                n.server.signal("CONT");
            }
        }
        if let Some(a) = &mut self.agent {
            a.stop(STOP_LIMIT);
        }
        for n in &mut self.nodes {
            n.server.stop(STOP_LIMIT);
        }
    }
}

/// The fault kinds a cycle picks from.
const FAULTS: [&str; 6] = [
    "kill -9 a node",
    "kill -9 the leader",
    "SIGSTOP a node",
    "isolate a node",
    "split the cluster",
    "one-way cut",
];

/// Runs the whole chaos session; `progress` gets one line per step.
pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Res<Report> {
    if !opts.sigil.exists() {
        return Err(format!(
            "{} does not exist: build it first (cargo build --release -p node)",
            opts.sigil.display()
        ));
    }
    let mut report = Report::default();
    let started = now();
    let mut plane = Plane::start(opts)?;
    progress(&format!(
        "{} nodes up behind relays, agent {} started ({:.1} s)",
        opts.nodes,
        plane.agent_id,
        started.elapsed().as_secs_f64()
    ));
    let me = own_uid()?;
    let want = format!("spiffe://{TRUST_DOMAIN}/workload");
    let out = sigil(
        &opts.sigil,
        &plane.nodes[0].server.admin_args(&[
            "entry",
            "create",
            "--spiffe-id",
            &want,
            "--parent-id",
            &plane.agent_id,
            "--selector",
            &format!("unix:uid:{me}"),
            "--json",
        ]),
    );
    if json_of(&out).is_none() {
        return Err(format!(
            "could not register the workload: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sock = plane.socket.to_string_lossy().into_owned();
    if !wait_for(START_WAIT, || {
        sigil(&opts.sigil, &["api", "fetch", "x509", "--socket", &sock])
            .status
            .success()
    }) {
        return Err("the workload never got its SVID".into());
    }
    progress("workload holds its SVID; starting fault cycles");
    let workload = Workload::start(opts.sigil.clone(), plane.socket.clone(), want.clone());
    // The fault schedule has its own RNG: how many writes fit in a fault depends on timing, and
    // must not shift the faults of later cycles.
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let mut write_rng = ChaCha20Rng::seed_from_u64(opts.seed ^ 0x5eed_f0a1_10c0);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let n = plane.nodes.len();
    let minority = (n - 1) / 2;
    for cycle in 1..=opts.cycles {
        let kind = FAULTS[rng.gen_range(0..FAULTS.len())];
        *report.faults.entry(kind).or_default() += 1;
        let hold = Duration::from_millis(rng.gen_range(1_000..4_000));
        let leader = plane
            .status(0)
            .or_else(|| plane.status(1))
            .and_then(|s| s["leader_id"].as_u64())
            .and_then(|l| plane.nodes.iter().position(|x| x.server.id == l));
        let mut victims: Vec<usize> = Vec::new();
        match kind {
            "kill -9 a node" | "kill -9 the leader" => {
                let mut pick = if kind == "kill -9 the leader" {
                    leader.unwrap_or(0)
                } else {
                    rng.gen_range(0..n)
                };
                for _ in 0..rng.gen_range(1..=minority) {
                    if !victims.contains(&pick) {
                        victims.push(pick);
                        plane.nodes[pick].server.kill();
                    }
                    pick = rng.gen_range(0..n);
                }
            }
            "SIGSTOP a node" => {
                let v = rng.gen_range(0..n);
                if plane.nodes[v].server.running() {
                    plane.nodes[v].server.signal("STOP");
                    plane.nodes[v].stopped = true;
                }
                victims.push(v);
            }
            "isolate a node" => {
                let v = rng.gen_range(0..n);
                plane.nodes[v].relay.isolate(true);
                for o in 0..n {
                    if o != v {
                        plane.nodes[o].relay.block(plane.nodes[v].server.addr);
                    }
                }
                victims.push(v);
            }
            "split the cluster" => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                let small = &order[..minority.max(1)];
                for &a in small {
                    for &b in &order[minority.max(1)..] {
                        plane.cut(a, b);
                    }
                }
                victims.extend_from_slice(small);
            }
            _ => {
                // One-way: b stops hearing a (a still hears b).
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                plane.nodes[b].relay.block(plane.nodes[a].server.addr);
                victims.push(a);
            }
        }
        // Writes during the fault, through random nodes (minority ones may refuse).
        let writes_until = now() + hold;
        let mut w = 0;
        while now() < writes_until {
            let via = write_rng.gen_range(0..n);
            if plane.nodes[via].server.running() && !plane.nodes[via].stopped {
                match plane.create_entry(via, &format!("c{cycle}-w{w}")) {
                    Some(id) => {
                        acked.insert(id);
                        report.acked += 1;
                    }
                    None => report.refused += 1,
                }
                w += 1;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        plane.heal()?;
        // Converge: every node lists every acknowledged entry, all lists equal, one leader.
        let t = now();
        let mut last = String::new();
        let converged = wait_for(CONVERGE_WAIT, || {
            let lists: Vec<Option<BTreeSet<String>>> = (0..n).map(|i| plane.entries(i)).collect();
            let leaders: BTreeSet<Option<u64>> = (0..n)
                .map(|i| plane.status(i).and_then(|s| s["leader_id"].as_u64()))
                .collect();
            let ok = lists
                .iter()
                .all(|l| l.as_ref().is_some_and(|l| acked.is_subset(l)))
                && lists.windows(2).all(|w| w[0] == w[1])
                && leaders.len() == 1
                && leaders.iter().all(Option::is_some);
            if !ok {
                let missing: Vec<usize> = lists
                    .iter()
                    .map(|l| {
                        l.as_ref()
                            .map_or(usize::MAX, |l| acked.difference(l).count())
                    })
                    .collect();
                last =
                    format!("acked entries missing per node {missing:?}, leaders seen {leaders:?}");
            }
            ok
        });
        let took = t.elapsed();
        report.longest_converge = report.longest_converge.max(took);
        if !converged {
            report.violations.push(format!(
                "cycle {cycle} ({kind}, nodes {victims:?}): no convergence within {CONVERGE_WAIT:?}: {last}"
            ));
        }
        // The workload's SVID chains to the bundle the agent serves.
        if let Err(e) = verify_svid(&opts.sigil, &plane.socket, &opts.dir.join("check")) {
            report.violations.push(format!(
                "cycle {cycle}: the workload's SVID does not verify: {e}"
            ));
        }
        for f in workload.take_failures() {
            report
                .violations
                .push(format!("cycle {cycle} ({kind}): workload: {f}"));
        }
        report.cycles = cycle;
        progress(&format!(
            "cycle {cycle}/{}: {kind} (nodes {:?}) for {:.1} s, {w} writes; converged in {:.1} s; {} acked so far{}",
            opts.cycles,
            victims.iter().map(|&v| plane.nodes[v].server.id).collect::<Vec<_>>(),
            hold.as_secs_f64(),
            took.as_secs_f64(),
            acked.len(),
            if report.violations.is_empty() { "" } else { "; VIOLATIONS" }
        ));
        if !report.violations.is_empty() {
            break;
        }
    }
    let (fetches, gap, failures) = workload.finish();
    report.fetches = fetches;
    report.longest_gap = gap;
    for f in failures {
        report.violations.push(format!("workload: {f}"));
    }
    drop(plane);
    Ok(report)
}

fn own_uid() -> Res<u32> {
    status_id("Uid:").ok_or_else(|| "cannot read this process's uid".to_owned())
}

/// Writes the workload's SVID and bundle to `dir` and checks the chain with `openssl verify`.
fn verify_svid(bin: &Path, socket: &Path, dir: &Path) -> Res<()> {
    let sock = socket.to_string_lossy();
    let d = dir.to_string_lossy();
    let out = sigil(
        bin,
        &["api", "fetch", "x509", "--socket", &sock, "--write", &d],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let verify = Command::new("openssl")
        .args(["verify", "-partial_chain", "-CAfile"])
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if verify.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&verify.stdout).trim().to_owned()
            + String::from_utf8_lossy(&verify.stderr).trim())
    }
}
