//! A simulated cluster of server nodes (Raft replicas on [`SimNet`] and [`MemKv`] with crash
//! semantics), the seeded swarm run over it, and its checks.
//!
//! A run has a **safety phase** (random writes and deletes at random nodes while the seed's fault
//! mix is on: delay, loss, duplication, isolation, random splits, asymmetric cuts, crashes and
//! restarts) and a **liveness phase** (faults off, every node back) that must converge in
//! bounded virtual time. Checks: a node leads only under its own committed vote, acknowledged
//! writes survive, no phantom
//! entries, all replicas equal after heal, minority writes answer `NoQuorum` in bounded time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use raft::replica::{Replica, ReplicaConfig, WriteError};
use raft::{MemKv, State};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use wire::{Command, EntryId, Outcome, RegistrationEntry, Response, Seed};

use attest::x509::validate_x509_svid;
use node::server::{ServerConfig, ServerNode};
use wire::{AgentRecord, AttestationMethod, Env, KeyAlg, SpiffeId, TrustDomain, UnixTime};

use crate::env::SimEnv;
use crate::net::{fnv, NetConfig, NetStats, SimEndpoint, SimNet};

/// The simulated trust domain.
pub const SIM_TRUST_DOMAIN: &str = "sim.test";
/// The agent every simulated workload runs under.
pub const SIM_AGENT: &str = "spiffe://sim.test/sigil/agent/sim/1";
/// Wall-clock time at the start of every run.
const WALL_AT_START_SECS: u64 = 1_800_000_000;
/// CA/JWT key lifetime in the simulator: short (the keyring's minimum), so keys rotate within a
/// run — long pauses in the safety phase carry runs past several rotations.
pub const SIM_KEY_TTL: Duration = Duration::from_secs(60);
/// `staleness_max` in the simulator.
pub const SIM_STALENESS_MAX: Duration = Duration::from_secs(10);

/// The registration entry simulated workloads are issued SVIDs for.
fn issuing_entry_id() -> EntryId {
    EntryId::from_random([0xee; 16])
}

/// An SVID a node issued during the run.
#[derive(Debug, Clone)]
struct Issued {
    node: u64,
    cert_der: Vec<u8>,
    not_after: UnixTime,
}

/// The fault mix of one run, chosen from its seed ("swarm testing").
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Network delays, loss and duplication during the safety phase.
    pub net: NetConfig,
    /// Isolate nodes and split the cluster.
    pub partitions: bool,
    /// Cut single directions of links.
    pub asymmetric: bool,
    /// Crash and restart nodes (losing unflushed writes).
    pub crashes: bool,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults {
            net: NetConfig::calm(),
            partitions: false,
            asymmetric: false,
            crashes: false,
        }
    }

    /// A random mix drawn from `rng`.
    pub fn swarm(rng: &mut ChaCha20Rng) -> Faults {
        let delay_max_ms = [5, 20, 80, 200][rng.gen_range(0..4)];
        Faults {
            net: NetConfig {
                delay_min_ms: 1,
                delay_max_ms,
                loss: [0.0, 0.01, 0.05, 0.2][rng.gen_range(0..4)],
                duplicate: [0.0, 0.01, 0.1][rng.gen_range(0..3)],
                in_flight_max: 10_000,
            },
            partitions: rng.gen_bool(0.6),
            asymmetric: rng.gen_bool(0.4),
            crashes: rng.gen_bool(0.5),
        }
    }
}

/// What happened to writes, as the clients saw it (the oracle).
#[derive(Debug, Default)]
pub struct Oracle {
    /// Entries some client tried to create.
    pub create_attempted: BTreeSet<EntryId>,
    /// Creates acknowledged as successful.
    pub create_acked: BTreeSet<EntryId>,
    /// Entries some client tried to delete.
    pub delete_attempted: BTreeSet<EntryId>,
    /// Deletes acknowledged (the entry was removed).
    pub delete_acked: BTreeSet<EntryId>,
    /// Writes that ended in `NoQuorum` or another write error.
    pub write_errors: u64,
}

struct SimNode {
    kv: MemKv,
    replica: Option<Arc<Replica<SimEndpoint>>>,
}

/// A simulated cluster.
pub struct World {
    seed: Seed,
    rng: ChaCha20Rng,
    net: SimNet,
    config: ReplicaConfig,
    nodes: BTreeMap<u64, SimNode>,
    oracle: Arc<Mutex<Oracle>>,
    leaders_by_term: BTreeMap<u64, BTreeSet<u64>>,
    /// Per node: the highest (term, applied index) seen, across restarts.
    high_water: BTreeMap<u64, (u64, u64)>,
    violations: Vec<String>,
    writes: Vec<tokio::task::JoinHandle<()>>,
    /// Each node's environment (kept across restarts: the wall clock goes on).
    envs: BTreeMap<u64, Arc<SimEnv>>,
    /// Each running node's server logic (CA rotation, issuer).
    servers: BTreeMap<u64, ServerNode<SimEndpoint>>,
    issued: Vec<Issued>,
    issue_refused: u64,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("seed", &self.seed).finish()
    }
}

/// Prints a simulator event when `SIM_TRACE` is set (for reproducing a failing seed).
fn event(msg: impl FnOnce() -> String) {
    if std::env::var_os("SIM_TRACE").is_some() {
        eprintln!("[{:>8} ms] {}", now().elapsed_ms_since_start(), msg());
    }
}

trait SinceStart {
    fn elapsed_ms_since_start(&self) -> u128;
}

impl SinceStart for tokio::time::Instant {
    fn elapsed_ms_since_start(&self) -> u128 {
        START.with(|s| self.duration_since(*s.get_or_init(now)).as_millis())
    }
}

thread_local! {
    static START: std::cell::OnceCell<tokio::time::Instant> = const { std::cell::OnceCell::new() };
}

/// The virtual clock (the simulator owns it).
fn now() -> tokio::time::Instant {
    #[allow(clippy::disallowed_methods)]
    tokio::time::Instant::now()
}

/// A member's address in the simulated world.
fn sim_node(id: u64) -> BasicNode {
    BasicNode {
        addr: format!("sim-{id}"),
    }
}

impl World {
    /// Starts `n` nodes from `seed` and initializes the cluster on node 1. Must run inside a
    /// current-thread tokio runtime with paused time (see [`run_seed`]).
    pub async fn start(seed: u64, n: u64, net_config: NetConfig) -> World {
        let seed = Seed::from_u64(seed);
        raft::runtime::seed_this_thread(seed.child("raft"));
        let config = ReplicaConfig {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            write_timeout_ms: 2_000,
            snapshot_after_entries: 64,
            keep_entries_after_snapshot: 16,
        };
        let mut world = World {
            seed,
            rng: seed.child("world").rng(),
            net: SimNet::new(seed, net_config),
            config,
            nodes: BTreeMap::new(),
            oracle: Arc::default(),
            leaders_by_term: BTreeMap::new(),
            high_water: BTreeMap::new(),
            violations: Vec::new(),
            writes: Vec::new(),
            envs: BTreeMap::new(),
            servers: BTreeMap::new(),
            issued: Vec::new(),
            issue_refused: 0,
        };
        for id in 1..=n {
            world.nodes.insert(
                id,
                SimNode {
                    kv: MemKv::new(),
                    replica: None,
                },
            );
            world.boot(id).await;
        }
        let members = (1..=n).map(|id| (id, sim_node(id))).collect();
        if let Some(r) = world.replica(1) {
            if let Err(e) = r.initialize(members).await {
                world.violations.push(format!("initialize failed: {e}"));
            }
        }
        world.register_issuing_entry().await;
        world
    }

    /// Registers the agent and the entry that `issue` uses (retried while the network is bad).
    async fn register_issuing_entry(&mut self) {
        let agent: SpiffeId = SIM_AGENT.parse().expect("valid by construction");
        let entry = RegistrationEntry {
            id: issuing_entry_id(),
            spiffe_id: "spiffe://sim.test/issued"
                .parse()
                .expect("valid by construction"),
            parent_id: agent.clone(),
            selectors: ["unix:uid:0".parse().expect("valid by construction")]
                .into_iter()
                .collect(),
            x509_svid_ttl_secs: 15,
            jwt_svid_ttl_secs: 0,
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            revision: 0,
            created_at_secs: 0,
            expires_at_secs: None,
        };
        self.oracle().create_attempted.insert(entry.id.clone());
        let commands = [
            Command::RegisterAgent {
                agent: AgentRecord {
                    spiffe_id: agent,
                    method: AttestationMethod::JoinToken,
                    selectors: vec![],
                    banned: false,
                    svid_serial: String::new(),
                    svid_not_after: UnixTime::EPOCH,
                },
            },
            Command::CreateEntries {
                entries: vec![entry],
            },
        ];
        for cmd in commands {
            for _ in 0..10 {
                if let Some(r) = self.replica(1) {
                    let result = r.write(cmd.clone()).await;
                    event(|| format!("registration write: {result:?}"));
                    if result.is_ok() {
                        break;
                    }
                }
            }
        }
    }

    /// Node `id` issues an X.509-SVID for the issuing entry; a success must chain to the bundle
    /// applied on that node at that moment (publish before use).
    pub fn issue(&mut self, id: u64) {
        let (Some(server), Some(env)) = (self.servers.get(&id), self.envs.get(&id)) else {
            return;
        };
        let key = match env.keys().generate(KeyAlg::EcP256) {
            Ok(k) => k,
            Err(e) => {
                self.violations.push(format!("key generation failed: {e}"));
                return;
            }
        };
        let agent: SpiffeId = SIM_AGENT.parse().expect("valid by construction");
        match server.issue_x509(&agent, &issuing_entry_id(), key.public_key_der()) {
            Ok(svid) => {
                let td: TrustDomain = SIM_TRUST_DOMAIN.parse().expect("valid by construction");
                let wall = env.wall();
                if let Err(e) =
                    validate_x509_svid(&[svid.cert_der.as_slice()], &(td, server.bundle()), wall)
                {
                    self.violations.push(format!(
                        "node {id} issued an SVID that does not chain to its applied bundle: {e}"
                    ));
                }
                event(|| format!("node {id} issued an SVID until {:?}", svid.not_after));
                self.issued.push(Issued {
                    node: id,
                    cert_der: svid.cert_der,
                    not_after: svid.not_after,
                });
            }
            Err(e) => {
                event(|| format!("node {id} refused to issue: {e}"));
                self.issue_refused += 1;
            }
        }
    }

    /// After convergence: every issued SVID that has not expired still chains to the converged
    /// bundle (no authority left the bundle while an SVID it signed was valid).
    pub fn check_issued(&mut self) {
        let Some((id, server)) = self.servers.iter().next() else {
            return;
        };
        let Some(env) = self.envs.get(id) else { return };
        let td: TrustDomain = SIM_TRUST_DOMAIN.parse().expect("valid by construction");
        let bundle = server.bundle();
        let wall = env.wall();
        let mut found = Vec::new();
        for svid in self.issued.iter().filter(|s| s.not_after > wall) {
            if let Err(e) = validate_x509_svid(
                &[svid.cert_der.as_slice()],
                &(td.clone(), bundle.clone()),
                wall,
            ) {
                found.push(format!(
                    "an SVID from node {} valid until {:?} no longer chains to the bundle: {e}",
                    svid.node, svid.not_after
                ));
            }
        }
        self.violations.extend(found);
    }

    async fn boot(&mut self, id: u64) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let endpoint = self.net.endpoint(id);
        match Replica::start(id, &self.config, node.kv.clone(), endpoint).await {
            Ok(r) => {
                let replica = Arc::new(r);
                let seed = self.seed;
                let env = self
                    .envs
                    .entry(id)
                    .or_insert_with(|| {
                        Arc::new(SimEnv::new(
                            seed,
                            id,
                            UnixTime::from_secs(WALL_AT_START_SECS),
                        ))
                    })
                    .clone();
                let td: TrustDomain = SIM_TRUST_DOMAIN.parse().expect("valid by construction");
                let mut cfg = ServerConfig::new(id, td);
                cfg.key_ttl = SIM_KEY_TTL;
                cfg.issuer.staleness_max = SIM_STALENESS_MAX;
                let dyn_env: Arc<dyn Env> = env;
                self.servers
                    .insert(id, ServerNode::start(cfg, dyn_env, replica.clone()));
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.replica = Some(replica);
                }
            }
            Err(e) => self
                .violations
                .push(format!("node {id} failed to start: {e}")),
        }
    }

    /// The network (to cut links in targeted tests).
    pub fn net(&self) -> &SimNet {
        &self.net
    }

    /// Node `id`'s replica, if it is running.
    pub fn replica(&self, id: u64) -> Option<Arc<Replica<SimEndpoint>>> {
        self.nodes.get(&id).and_then(|n| n.replica.clone())
    }

    /// IDs of running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.replica.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// The client oracle.
    pub fn oracle(&self) -> std::sync::MutexGuard<'_, Oracle> {
        self.oracle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records who leads in which term, checks that a node leads only under its own committed
    /// vote, and that no node's term or applied index ever goes backwards, restarts included.
    pub fn observe_leaders(&mut self) {
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            let m = r.raft().metrics().borrow().clone();
            if m.current_term == 0 && m.last_log_index.is_none() {
                // The core has not reported its restored state yet (metrics start empty).
                continue;
            }
            let applied = m.last_applied.map_or(0, |l| l.index);
            let (term_max, applied_max) = self.high_water.get(&id).copied().unwrap_or((0, 0));
            if m.current_term < term_max || applied < applied_max {
                self.violations.push(format!(
                    "node {id} went backwards: term {term_max} -> {}, applied {applied_max} -> {applied}",
                    m.current_term
                ));
            }
            self.high_water
                .insert(id, (term_max.max(m.current_term), applied_max.max(applied)));
            if m.state == ServerState::Leader {
                event(|| {
                    format!(
                        "node {id} leads: term {} vote {:?} last_log {:?} applied {:?}",
                        m.current_term, m.vote, m.last_log_index, m.last_applied
                    )
                });
                // openraft's leader ID is (term, node): a later candidate with a higher node ID
                // may lead in the same term (its entries carry the full leader ID, so the log
                // stays consistent). What must hold is that a node only leads under its own
                // committed vote.
                if m.vote.leader_id().voted_for() != Some(id) || !m.vote.is_committed() {
                    self.violations.push(format!(
                        "node {id} leads without its own committed vote: {:?}",
                        m.vote
                    ));
                }
                self.leaders_by_term
                    .entry(m.current_term)
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// The node that a majority of live nodes currently sees as leader, if it leads.
    pub fn leader(&self) -> Option<u64> {
        self.live().into_iter().find(|id| {
            self.replica(*id)
                .is_some_and(|r| r.raft().metrics().borrow().state == ServerState::Leader)
        })
    }

    /// Waits (virtual time) until some node leads; `None` after `limit`.
    pub async fn wait_leader(&mut self, limit: Duration) -> Option<u64> {
        let start = now();
        while now().duration_since(start) < limit {
            self.observe_leaders();
            if let Some(l) = self.leader() {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// A fresh, valid entry with a seeded ID.
    pub fn new_entry(&mut self) -> RegistrationEntry {
        let bits: [u8; 16] = self.rng.gen();
        let id = EntryId::from_random(bits);
        let n = self.rng.gen_range(0..1000u32);
        RegistrationEntry {
            spiffe_id: format!("spiffe://sim.test/w/{id}")
                .parse()
                .expect("valid by construction"),
            parent_id: "spiffe://sim.test/sigil/agent/sim/1"
                .parse()
                .expect("valid by construction"),
            selectors: [format!("unix:uid:{n}")
                .parse()
                .expect("valid by construction")]
            .into_iter()
            .collect(),
            id,
            x509_svid_ttl_secs: 0,
            jwt_svid_ttl_secs: 0,
            dns_names: vec![],
            federates_with: BTreeSet::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            revision: 0,
            created_at_secs: 0,
            expires_at_secs: None,
        }
    }

    /// Writes `cmd` at node `id` and waits for the answer.
    pub async fn write(&self, id: u64, cmd: Command) -> Result<Response, WriteError> {
        match self.replica(id) {
            Some(r) => r.write(cmd).await,
            None => Err(WriteError::Stopped(format!("node {id} is down"))),
        }
    }

    /// Starts a create of a fresh entry at node `id` in the background, recording it in the
    /// oracle.
    pub fn spawn_create(&mut self, id: u64) {
        let entry = self.new_entry();
        let Some(r) = self.replica(id) else { return };
        let oracle = self.oracle.clone();
        oracle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .create_attempted
            .insert(entry.id.clone());
        #[allow(clippy::disallowed_methods)] // the simulated clients
        let task = tokio::task::spawn(async move {
            let eid = entry.id.clone();
            let result = r
                .write(Command::CreateEntries {
                    entries: vec![entry],
                })
                .await;
            event(|| format!("create {eid} at node {id}: {result:?}"));
            let mut o = oracle.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(Ok(Outcome::Created(rs))) if rs.iter().all(Result::is_ok) => {
                    o.create_acked.insert(eid);
                }
                Ok(_) => {}
                Err(_) => o.write_errors += 1,
            }
        });
        self.writes.push(task);
    }

    /// Starts a delete of a random attempted entry at node `id` in the background.
    pub fn spawn_delete(&mut self, id: u64) {
        let keep = issuing_entry_id();
        let candidates: Vec<EntryId> = self
            .oracle()
            .create_attempted
            .iter()
            .filter(|id| **id != keep)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let victim = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let Some(r) = self.replica(id) else { return };
        self.oracle().delete_attempted.insert(victim.clone());
        let oracle = self.oracle.clone();
        #[allow(clippy::disallowed_methods)] // the simulated clients
        let task = tokio::task::spawn(async move {
            let result = r
                .write(Command::DeleteEntries {
                    ids: vec![victim.clone()],
                })
                .await;
            let mut o = oracle.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(Ok(Outcome::Deleted { deleted: 1, .. })) => {
                    o.delete_acked.insert(victim);
                }
                Ok(_) => {}
                Err(_) => o.write_errors += 1,
            }
        });
        self.writes.push(task);
    }

    /// Crashes node `id`: Raft stops, unflushed writes are lost, the network drops its frames.
    pub async fn crash(&mut self, id: u64) {
        self.observe_leaders();
        event(|| format!("crash node {id}"));
        if let Some(server) = self.servers.remove(&id) {
            server.stop();
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if let Some(r) = node.replica.take() {
            r.shutdown().await;
        }
        node.kv.crash();
        self.net.set_down(id, true);
    }

    /// Restarts a crashed node from its disk.
    pub async fn restart(&mut self, id: u64) {
        if self.replica(id).is_some() {
            return;
        }
        self.net.set_down(id, false);
        event(|| format!("restart node {id}"));
        self.boot(id).await;
        // Right after restart: the node must be back at (at least) where it was.
        self.observe_leaders();
    }

    /// Waits for every write started so far to finish (each is bounded by the write timeout).
    pub async fn settle_writes(&mut self) {
        for task in std::mem::take(&mut self.writes) {
            let _ = task.await;
        }
    }

    /// Heals everything, then waits until all nodes agree on the applied index and the state.
    pub async fn converge(&mut self, limit: Duration) -> Result<(), String> {
        self.net.heal();
        self.net.set_config(NetConfig::calm());
        let down: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| self.replica(*id).is_none())
            .collect();
        for id in down {
            self.restart(id).await;
        }
        self.settle_writes().await;
        let start = now();
        let mut last = String::new();
        while now().duration_since(start) < limit {
            self.observe_leaders();
            match self.agreement() {
                Ok(()) if self.leader().is_some() => return Ok(()),
                Ok(()) => last = "no leader".into(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "did not converge within {} s of virtual time: {last}",
            limit.as_secs()
        ))
    }

    fn agreement(&self) -> Result<(), String> {
        let mut seen: Option<(u64, Option<u64>, State)> = None;
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            let (applied, state) = r.read(|a| (a.last_applied.map(|l| l.index), a.state.clone()));
            match &seen {
                None => seen = Some((id, applied, state)),
                Some((first, first_applied, first_state)) => {
                    if *first_applied != applied {
                        return Err(format!(
                            "applied index differs: node {first} at {first_applied:?}, node {id} at {applied:?}"
                        ));
                    }
                    if *first_state != state {
                        return Err(format!("state differs between node {first} and node {id}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the oracle against every node's state: acknowledged creates that nobody tried to
    /// delete are present, acknowledged deletes are absent, and nothing nobody wrote exists.
    pub fn check_oracle(&mut self) {
        let o = self.oracle.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            r.read(|a| {
                for eid in &o.create_acked {
                    if !o.delete_attempted.contains(eid) && a.state.entry(eid).is_none() {
                        found.push(format!("node {id} lost acknowledged entry {eid}"));
                    }
                }
                for eid in &o.delete_acked {
                    if a.state.entry(eid).is_some() {
                        found.push(format!("node {id} still has deleted entry {eid}"));
                    }
                }
                for e in a.state.entries() {
                    if !o.create_attempted.contains(&e.id) {
                        found.push(format!("node {id} has phantom entry {}", e.id));
                    }
                }
            });
        }
        drop(o);
        self.violations.extend(found);
    }

    /// The run's trace hash: every network delivery plus the final state.
    pub fn trace_hash(&self) -> u64 {
        let mut h = self.net.trace_hash();
        if let Some(r) = self.live().first().and_then(|id| self.replica(*id)) {
            let bytes = r.read(|a| wire::codec::encode_snapshot(&a.state).unwrap_or_default());
            h = fnv(h, &bytes);
        }
        h
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for server in std::mem::take(&mut self.servers).into_values() {
            server.stop();
        }
        for id in self.live() {
            if let Some(r) = self.replica(id) {
                r.shutdown().await;
            }
        }
    }

    /// One step of the safety phase: a client action or a fault, then a pause.
    async fn step(&mut self, faults: &Faults) {
        let live = self.live();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let roll = self.rng.gen_range(0..100);
        let pick = |rng: &mut ChaCha20Rng, from: &[u64]| from[rng.gen_range(0..from.len())];
        match roll {
            0..=54 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.spawn_create(id);
            }
            55..=64 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.spawn_delete(id);
            }
            65..=72 if faults.partitions => match self.rng.gen_range(0..3) {
                0 => {
                    let victim = pick(&mut self.rng, &ids);
                    let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != victim).collect();
                    self.net.partition(&[vec![victim], rest]);
                }
                1 => {
                    let mut a = Vec::new();
                    let mut b = Vec::new();
                    for id in &ids {
                        if self.rng.gen_bool(0.5) {
                            a.push(*id);
                        } else {
                            b.push(*id);
                        }
                    }
                    self.net.partition(&[a, b]);
                }
                _ => self.net.heal(),
            },
            73..=77 if faults.asymmetric => {
                let from = pick(&mut self.rng, &ids);
                let to = pick(&mut self.rng, &ids);
                if from != to {
                    self.net.cut(from, to);
                }
            }
            82..=91 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.issue(id);
            }
            92..=94 => {
                // A quiet stretch: time passes (keys prepare, activate, expire, get pruned).
                let secs = self.rng.gen_range(3..12);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            78..=81 if faults.crashes => {
                let id = pick(&mut self.rng, &ids);
                if self.replica(id).is_some() {
                    self.crash(id).await;
                } else {
                    self.restart(id).await;
                }
            }
            _ => {}
        }
        let pause = self.rng.gen_range(5..100);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        self.observe_leaders();
    }
}

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
    /// SVIDs issued (each checked against the issuing node's applied bundle).
    pub issued: usize,
    /// Issue attempts refused (no active key yet, stale replica, entry deleted).
    pub issue_refused: u64,
}

/// Runs one seed: safety phase with the seed's faults, then liveness, then the checks.
pub async fn run(opts: &RunOptions) -> Report {
    let mut fault_rng = Seed::from_u64(opts.seed).child("faults").rng();
    let faults = Faults::swarm(&mut fault_rng);
    let start = now();
    let mut world = World::start(opts.seed, opts.nodes, faults.net.clone()).await;
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
    }
    world.check_oracle();
    world.check_issued();
    let (acked_creates, write_errors) = {
        let o = world.oracle();
        (o.create_acked.len(), o.write_errors)
    };
    let report = Report {
        seed: opts.seed,
        violations: world.violations.clone(),
        trace_hash: world.trace_hash(),
        sim_time: now().duration_since(start),
        faults,
        acked_creates,
        write_errors,
        net: world.net.stats(),
        issued: world.issued.len(),
        issue_refused: world.issue_refused,
    };
    world.shutdown().await;
    report
}

/// Runs one seed on its own current-thread runtime with paused (virtual) time.
pub fn run_seed(opts: &RunOptions) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    match rt {
        Ok(rt) => rt.block_on(run(opts)),
        Err(e) => Report {
            seed: opts.seed,
            violations: vec![format!("cannot build the simulation runtime: {e}")],
            trace_hash: 0,
            sim_time: Duration::ZERO,
            faults: Faults::none(),
            acked_creates: 0,
            write_errors: 0,
            net: NetStats::default(),
            issued: 0,
            issue_refused: 0,
        },
    }
}
