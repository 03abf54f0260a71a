//! A simulated sigil deployment — server nodes (Raft replicas on [`SimNet`] and [`MemKv`] with
//! crash semantics, each with its production [`ServerNode`] and [`NodeService`]), agents with
//! workloads ([`crate::agent`]) — the seeded swarm run over it, and the hand-off of everything
//! observed to the checkers ([`crate::check`]).
//!
//! A run has a **safety phase** (entry creates, deletes and storms at random nodes, agents
//! syncing and signing, while the seed's fault mix is on: delay, loss, duplication, isolation,
//! random splits with agents on either side, asymmetric cuts, crashes and restarts that lose
//! unflushed writes, per-node clock skew and cluster-wide clock steps that force early CA
//! rotation, short CA and SVID lifetimes; and the hostile actors of [`hostile`]: token
//! replayers, entitlement probers, copied agent SVIDs, a banned agent that keeps asking, a
//! removed server that keeps proposing) and a **liveness phase** (faults off, every node back)
//! that must converge in bounded virtual time: one leader, equal replicas, every node able to
//! issue, every workload of a live agent holding an SVID that verifies against the converged
//! bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use raft::replica::{Replica, ReplicaConfig, WriteError};
use raft::{MemKv, State};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use wire::{Command, EntryId, Outcome, RegistrationEntry, Response, Seed};

use node::server::{ServerConfig, ServerNode};
use node::service::{join_token_agent_id, NodeService};
use wire::{
    AgentRecord, AttestationMethod, Env, JoinToken, KeyAlg, PeerId, Selector, SpiffeId,
    TokenPurpose, TrustDomain, UnixTime,
};

use crate::agent::{Links, SimAgent, SimMethod, Workload, AGENT_PEER_BASE};
use crate::check::bans::BanChecker;
use crate::check::hostile::{CopyChecker, HostileChecker};
use crate::check::raft::RaftChecker;
use crate::check::removed::RemovalChecker;
use crate::check::secrets::SecretScan;
use crate::check::staleness::StalenessChecker;
use crate::check::svids::SvidChecker;
use crate::check::workloads::WorkloadChecker;
use crate::check::Delivered;
use crate::env::SimEnv;
use crate::net::{fnv, NetConfig, NetStats, SimEndpoint, SimNet};
use crate::x509pop::PopCa;

pub use crate::check::registrations::Oracle;
pub use hostile::{HostileCounts, Hostility};

pub mod hostile;

/// The simulated trust domain.
pub const SIM_TRUST_DOMAIN: &str = "sim.test";
/// The peer whose seeded keys make the x509pop CA.
const POP_CA_PEER: PeerId = AGENT_PEER_BASE + 99;

/// The agent every simulated workload runs under.
pub const SIM_AGENT: &str = "spiffe://sim.test/sigil/agent/sim/1";
/// Wall-clock time at the start of every run.
const WALL_AT_START_SECS: u64 = 1_800_000_000;
/// CA/JWT key lifetime in the simulator: short (the keyring's minimum), so keys rotate within a
/// run — long pauses in the safety phase carry runs past several rotations. Some seeds double it.
pub const SIM_KEY_TTL: Duration = Duration::from_secs(60);
/// `staleness_max` in the simulator.
pub const SIM_STALENESS_MAX: Duration = Duration::from_secs(10);
/// Agent SVID lifetime in the simulator (agents renew at half life).
pub const SIM_AGENT_TTL: Duration = Duration::from_secs(40);
/// Largest per-node wall-clock skew (well inside the 10 s NotBefore cushion).
pub const SIM_SKEW_MAX_MS: i64 = 3_000;
/// How long the liveness phase gives agents to settle after the cluster converged.
pub const SIM_SETTLE_MAX: Duration = Duration::from_secs(30);

/// The registration entry simulated workloads are issued SVIDs for.
fn issuing_entry_id() -> EntryId {
    EntryId::from_random([0xee; 16])
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
    /// Per-node wall-clock skew and cluster-wide clock steps (forcing early CA rotation).
    pub clocks: bool,
    /// Bursts of entry creates and deletes.
    pub storms: bool,
    /// Short SVID lifetimes (2–15 s, 8–15 s with skewed clocks) on new entries.
    pub tiny_ttls: bool,
    /// CA and JWT key lifetime.
    pub key_ttl: Duration,
    /// Agents (each with workloads).
    pub agents: u64,
    /// Hostile actors (see [`Hostility`]).
    pub hostile: Hostility,
    /// How many of the agents attest with x509pop (the others with a join token); x509pop
    /// agents attest again when their SVID expired offline or a copy renewed it.
    pub x509pop_agents: u64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults {
            net: NetConfig::calm(),
            partitions: false,
            asymmetric: false,
            crashes: false,
            clocks: false,
            storms: false,
            tiny_ttls: false,
            key_ttl: SIM_KEY_TTL,
            agents: 1,
            hostile: Hostility::default(),
            x509pop_agents: 0,
        }
    }

    /// A random mix drawn from `rng`.
    pub fn swarm(rng: &mut ChaCha20Rng) -> Faults {
        let delay_max_ms = [5, 20, 80, 200][rng.gen_range(0..4)];
        let mut faults = Faults {
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
            clocks: rng.gen_bool(0.4),
            storms: rng.gen_bool(0.3),
            tiny_ttls: rng.gen_bool(0.4),
            key_ttl: SIM_KEY_TTL * rng.gen_range(1..=2),
            agents: rng.gen_range(1..=3),
            // Drawn late: the other faults of a seed stay what they were before hostile actors.
            hostile: Hostility::swarm(rng),
            x509pop_agents: 0,
        };
        faults.x509pop_agents = rng.gen_range(0..=faults.agents);
        faults
    }
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
    /// Deletes acknowledged, with the virtual time of the acknowledgement (for staleness).
    deletes_acked_at: Arc<Mutex<Vec<(EntryId, tokio::time::Instant)>>>,
    violations: Vec<String>,
    writes: Vec<tokio::task::JoinHandle<()>>,
    /// Each node's environment (kept across restarts: the wall clock goes on).
    envs: BTreeMap<u64, Arc<SimEnv>>,
    /// Each running node's server logic (CA rotation, issuer).
    servers: BTreeMap<u64, ServerNode<SimEndpoint>>,
    /// Each running node's node API.
    services: BTreeMap<u64, NodeService<SimEndpoint>>,
    agents: Vec<SimAgent>,
    /// The CA the nodes trust for x509pop, and that signs the x509pop agents' certificates.
    pop_ca: Option<PopCa>,
    key_ttl: Duration,
    /// Shortest SVID lifetime of new entries (seconds); 0: the default lifetime.
    tiny_ttl_min: u32,
    start: tokio::time::Instant,
    issue_refused: u64,
    raft_check: RaftChecker,
    svid_check: SvidChecker,
    staleness_check: StalenessChecker,
    workload_check: WorkloadChecker,
    secrets: Arc<SecretScan>,
    /// The hostile actors' own RNG (so they do not shift the swarm's draws).
    hostile_rng: ChaCha20Rng,
    /// Every entry ever proposed → its parent (entries never change parent in the simulator).
    entry_parents: BTreeMap<EntryId, SpiffeId>,
    /// The banned agent (index into `agents`), once the world banned one.
    banned: Option<usize>,
    /// A removal whose write was not acknowledged (it may still commit): the node.
    removal_pending: Option<u64>,
    /// Whether the world tried to remove a server (at most once a run).
    removal_tried: bool,
    /// The removed node's node API: honest agents no longer reach it.
    removed_service: Option<NodeService<SimEndpoint>>,
    /// A removed node still in Raft's voting membership (the world plays the production
    /// shell's membership reconciler, which the simulator does not run).
    membership_pending: Option<u64>,
    /// Copied agent SVIDs held by the copier.
    copies: Vec<hostile::HeldCopy>,
    /// Answers to the removed node's proposals: entry → committed.
    removal_answers: Arc<Mutex<Vec<(EntryId, bool)>>>,
    hostile_check: HostileChecker,
    copy_check: CopyChecker,
    ban_check: BanChecker,
    removal_check: RemovalChecker,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("seed", &self.seed).finish()
    }
}

/// Prints a simulator event when `SIM_TRACE` is set (for reproducing a failing seed).
pub(crate) fn event(msg: impl FnOnce() -> String) {
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

fn td() -> TrustDomain {
    SIM_TRUST_DOMAIN.parse().expect("valid by construction")
}

impl World {
    /// Starts `n` nodes from `seed` and initializes the cluster on node 1. Must run inside a
    /// current-thread tokio runtime with paused time (see [`run_seed`]).
    pub async fn start(seed: u64, n: u64, net_config: NetConfig) -> World {
        let mut faults = Faults::none();
        faults.net = net_config;
        faults.agents = 0;
        World::start_with(seed, n, &faults).await
    }

    /// Starts `n` nodes and the agents of `faults` from `seed`, initializes the cluster on
    /// node 1, registers the agents' join tokens and the entry `issue` uses.
    pub async fn start_with(seed: u64, n: u64, faults: &Faults) -> World {
        let net_config = faults.net.clone();
        let seed = Seed::from_u64(seed);
        let clock_error = if faults.clocks {
            // Two skews, plus a backward step while a tick is in flight.
            Duration::from_millis(2 * SIM_SKEW_MAX_MS.unsigned_abs() + 2_000)
        } else {
            Duration::ZERO
        };
        let staleness_slack =
            crate::check::staleness::slack(ServerConfig::new(1, td()).quorum_ack_max, clock_error);
        raft::runtime::seed_this_thread(seed.child("raft"));
        // Election timeouts well above the network's delays, as an operator would set them
        // (with 200 ms delays and a 150 ms timeout the cluster never keeps a leader).
        let election_min = (net_config.delay_max_ms * 4).max(150);
        let config = ReplicaConfig {
            heartbeat_ms: election_min / 3,
            election_timeout_min_ms: election_min,
            election_timeout_max_ms: election_min * 2,
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
            deletes_acked_at: Arc::default(),
            violations: Vec::new(),
            writes: Vec::new(),
            envs: BTreeMap::new(),
            servers: BTreeMap::new(),
            services: BTreeMap::new(),
            agents: Vec::new(),
            pop_ca: None,
            key_ttl: faults.key_ttl,
            // Skewed clocks (up to 6 s apart) would see a 2 s SVID expire on arrival.
            tiny_ttl_min: match (faults.tiny_ttls, faults.clocks) {
                (false, _) => 0,
                (true, false) => 2,
                (true, true) => 8,
            },
            start: now(),
            issue_refused: 0,
            raft_check: RaftChecker::default(),
            svid_check: SvidChecker::new(td()),
            staleness_check: StalenessChecker::new(SIM_STALENESS_MAX, staleness_slack),
            workload_check: WorkloadChecker::new(td()),
            secrets: Arc::default(),
            hostile_rng: seed.child("hostile").rng(),
            entry_parents: BTreeMap::new(),
            banned: None,
            removal_pending: None,
            removal_tried: false,
            membership_pending: None,
            removed_service: None,
            copies: Vec::new(),
            removal_answers: Arc::default(),
            hostile_check: HostileChecker::default(),
            copy_check: CopyChecker::new(
                clock_error + Duration::from_secs(1),
                SIM_STALENESS_MAX,
                staleness_slack,
            ),
            ban_check: BanChecker::new(SIM_STALENESS_MAX, staleness_slack),
            removal_check: RemovalChecker::default(),
        };
        let scan = world.secrets.clone();
        world.net.set_tap(Arc::new(move |from, to, frame| {
            scan.scan(|| format!("a frame from {from} to {to}"), frame);
        }));
        if faults.clocks {
            let agents = (0..faults.agents).map(|i| AGENT_PEER_BASE + i);
            for id in (1..=n).chain(agents) {
                let skew = world.rng.gen_range(-SIM_SKEW_MAX_MS..=SIM_SKEW_MAX_MS);
                world.env(id).set_skew_ms(skew);
            }
        }
        if faults.x509pop_agents > 0 {
            let env = world.env(POP_CA_PEER);
            match PopCa::new(env.keys()) {
                Ok(ca) => world.pop_ca = Some(ca),
                Err(e) => world.violations.push(e),
            }
        }
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
            .add_agents(n, faults.agents, faults.x509pop_agents)
            .await;
        world
    }

    /// Peer `id`'s environment (made on first use, its wall clock reading true time then; kept
    /// across restarts: its clock goes on).
    fn env(&mut self, id: u64) -> Arc<SimEnv> {
        let seed = self.seed;
        let elapsed = u64::try_from(now().duration_since(self.start).as_millis()).unwrap_or(0);
        let wall = UnixTime::from_millis(WALL_AT_START_SECS * 1000 + elapsed);
        self.envs
            .entry(id)
            .or_insert_with(|| Arc::new(SimEnv::new(seed, id, wall)))
            .clone()
    }

    /// Registers a join token per join-token agent, issues a certificate per x509pop agent
    /// (the last `x509pop` of `count`), and creates the agents with their workloads: uid 1,
    /// uid 2, and uid 1 in group 5.
    async fn add_agents(&mut self, n: u64, count: u64, x509pop: u64) {
        for i in 0..count {
            let peer = AGENT_PEER_BASE + i;
            let env = self.env(peer);
            self.secrets.watch(env.clone());
            let made = if i + x509pop >= count {
                self.x509pop_agent(&env, peer)
            } else {
                self.join_token_agent().await
            };
            let (method, spiffe_id) = match made {
                Ok(m) => m,
                Err(e) => {
                    self.violations.push(e);
                    return;
                }
            };
            let mut preference: Vec<u64> = (1..=n).collect();
            for k in (1..preference.len()).rev() {
                let j = self.rng.gen_range(0..=k);
                preference.swap(k, j);
            }
            let workloads = [
                &["unix:uid:1"][..],
                &["unix:uid:2"],
                &["unix:uid:1", "unix:gid:5"],
            ]
            .iter()
            .map(|sels| Workload {
                selectors: sels
                    .iter()
                    .map(|s| s.parse::<Selector>().expect("valid by construction"))
                    .collect(),
            })
            .collect();
            match SimAgent::new(peer, env, method, spiffe_id, preference, workloads) {
                Ok(agent) => self.agents.push(agent),
                Err(e) => self.violations.push(e),
            }
        }
    }

    /// A join token, registered.
    async fn join_token_agent(&mut self) -> Result<(SimMethod, SpiffeId), String> {
        let token = format!("sim-token-{:016x}", self.rng.gen::<u64>());
        let token_sha256 = attest::sha256_hex(token.as_bytes());
        let spiffe_id = join_token_agent_id(&td(), &token_sha256)
            .map_err(|_| "cannot name a join-token agent".to_owned())?;
        let cmd = Command::CreateJoinToken {
            token: JoinToken {
                token_sha256,
                expires_at: UnixTime::from_secs(WALL_AT_START_SECS + 86_400),
                consumed_by: None,
                purpose: TokenPurpose::Agent,
                consumer_key_sha256: String::new(),
                node_id: None,
                rejoin: false,
                created_at: UnixTime::from_secs(WALL_AT_START_SECS),
                consumed_at: None,
            },
        };
        self.write_retrying(cmd).await;
        Ok((SimMethod::JoinToken(token), spiffe_id))
    }

    /// An x509pop certificate for agent `peer` from the world's CA.
    fn x509pop_agent(&self, env: &SimEnv, peer: PeerId) -> Result<(SimMethod, SpiffeId), String> {
        let ca = self.pop_ca.as_ref().ok_or("no x509pop CA")?;
        let cred = ca.issue(env.keys(), &format!("sim-host-{peer}"))?;
        let leaf = cred.chain.first().ok_or("no certificate")?;
        let spiffe_id = node::service::x509pop_agent_id(&td(), &attest::x509pop::fingerprint(leaf))
            .map_err(|e| e.to_string())?;
        Ok((SimMethod::X509Pop(cred), spiffe_id))
    }

    /// Writes `cmd` at node 1 until it commits (10 tries; the network may be bad).
    async fn write_retrying(&mut self, cmd: Command) {
        for _ in 0..10 {
            if let Some(r) = self.replica(1) {
                let result = r.write(cmd.clone()).await;
                event(|| format!("set-up write: {result:?}"));
                if result.is_ok() {
                    return;
                }
            }
        }
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
        self.entry_parents
            .insert(entry.id.clone(), entry.parent_id.clone());
        let commands = [
            Command::RegisterAgent {
                agent: AgentRecord {
                    spiffe_id: agent,
                    method: AttestationMethod::JoinToken,
                    selectors: vec![],
                    banned: false,
                    svid_serial: String::new(),
                    svid_not_after: UnixTime::EPOCH,
                    previous_serial: String::new(),
                    renewed_at: UnixTime::EPOCH,
                    attested_at: UnixTime::EPOCH,
                },
            },
            Command::CreateEntries {
                entries: vec![entry],
            },
        ];
        for cmd in commands {
            self.write_retrying(cmd).await;
        }
    }

    /// Node `id` issues an X.509-SVID for the issuing entry; a success must chain to the bundle
    /// applied on that node at that moment (publish before use).
    pub fn issue(&mut self, id: u64) {
        self.observe_cut_off();
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
        let node_bundle = server.bundle();
        let node_wall = env.wall();
        let entry = server
            .replica()
            .read(|a| a.state.entry(&issuing_entry_id()).cloned());
        match server.issue_x509(&agent, &issuing_entry_id(), key.public_key_der()) {
            Ok(svid) => {
                event(|| format!("node {id} issued an SVID until {:?}", svid.not_after));
                if let Some(entry) = entry {
                    let d = Delivered {
                        node: id,
                        entry,
                        cert_der: svid.cert_der,
                        at: now().duration_since(self.start),
                        node_wall,
                        node_bundle,
                    };
                    self.on_delivered(&d);
                }
            }
            Err(e) => {
                event(|| format!("node {id} refused to issue: {e}"));
                self.issue_refused += 1;
            }
        }
    }

    /// Hands a delivered SVID to the checkers.
    fn on_delivered(&mut self, d: &Delivered) {
        self.take_delete_acks();
        self.svid_check.on_delivered(d);
        self.staleness_check.on_delivered(d);
    }

    /// Moves acknowledged deletes to the staleness checker.
    fn take_delete_acks(&mut self) {
        let acks = std::mem::take(
            &mut *self
                .deletes_acked_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (eid, at) in acks {
            self.staleness_check
                .on_delete_acked(eid, at.duration_since(self.start));
        }
    }

    /// After convergence: every delivered SVID that has not expired still chains to the
    /// converged bundle (no authority left the bundle while an SVID it signed was valid).
    pub fn check_issued(&mut self) {
        let removed = self.removal_check.node;
        let Some((id, server)) = self.servers.iter().find(|(id, _)| Some(**id) != removed) else {
            return;
        };
        let Some(env) = self.envs.get(id) else { return };
        let bundle = server.bundle();
        let wall = env.wall();
        self.svid_check
            .check_retained("the converged bundle", &bundle, wall);
    }

    /// Which nodes are cut off: down, or hearing no other running node (every inbound link
    /// cut). A follower that still hears a leader counts as in contact even when that leader
    /// lost its quorum (see the staleness checker's docs), so only this case is bounded here.
    fn observe_cut_off(&mut self) {
        let live = self.live();
        let at = now().duration_since(self.start);
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            let hears = live.iter().any(|m| *m != id && self.net.link_up(*m, id));
            let cut_off = !live.contains(&id) || !hears;
            self.staleness_check.observe_cut_off(id, cut_off, at);
        }
    }

    /// The simulated agents.
    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
    }

    /// Every agent runs one tick, then its workloads are served and checked.
    pub async fn tick_agents(&mut self) {
        self.observe_cut_off();
        let mut agents = std::mem::take(&mut self.agents);
        for (i, agent) in agents.iter_mut().enumerate() {
            let links = Links {
                net: &self.net,
                services: &self.services,
                start: self.start,
                secrets: &self.secrets,
            };
            let report = agent.tick(&links).await;
            self.issue_refused += report.refused;
            if self.banned == Some(i) {
                for a in &report.answers {
                    self.ban_check
                        .on_answer(a.node, a.at, a.ban_applied, a.delivery);
                }
            }
            for d in &report.delivered {
                self.on_delivered(d);
            }
            let bundle = agent.cache().bundle();
            for w in &agent.workloads {
                self.workload_check.on_serve(&agent.serve(w, &bundle));
            }
        }
        self.agents = agents;
    }

    /// Liveness after convergence: within [`SIM_SETTLE_MAX`], every node can issue and every
    /// workload of a live agent holds an SVID, for each entry it is entitled to, that verifies
    /// against the converged bundle.
    async fn settle(&mut self) -> Result<(), String> {
        let began = now();
        let mut last = String::from("not checked");
        while now().duration_since(began) < SIM_SETTLE_MAX {
            self.tick_agents().await;
            match self.settled() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "not settled {} s after convergence: {last}",
            SIM_SETTLE_MAX.as_secs()
        ))
    }

    fn settled(&mut self) -> Result<(), String> {
        let removed = self.removal_check.node;
        for (id, server) in self.servers.iter().filter(|(id, _)| Some(**id) != removed) {
            server
                .ready_to_issue()
                .map_err(|e| format!("node {id} cannot issue: {e}"))?;
        }
        let Some(server) = self
            .servers
            .iter()
            .find(|(id, _)| Some(**id) != removed)
            .map(|(_, s)| s)
        else {
            return Err("no node running".into());
        };
        let converged = server.bundle();
        let banned = self.banned;
        for (_, agent) in self
            .agents
            .iter()
            .enumerate()
            .filter(|(i, a)| a.alive() && Some(*i) != banned)
        {
            let (entries, agent_id) = (agent.cache().entries(), &agent.spiffe_id);
            let truth: Vec<RegistrationEntry> = server.replica().read(|a| {
                node::actors::issuer::authorized_entries(&a.state, agent_id)
                    .into_iter()
                    .cloned()
                    .collect()
            });
            if entries.len() != truth.len() {
                return Err(format!(
                    "agent {agent_id} has {} entries, the cluster {}",
                    entries.len(),
                    truth.len()
                ));
            }
            for w in &agent.workloads {
                let entitled: Vec<&RegistrationEntry> =
                    truth.iter().filter(|e| e.matches(&w.selectors)).collect();
                self.workload_check.check_settled(
                    &agent.serve(w, &converged),
                    &entitled,
                    &converged,
                )?;
            }
        }
        Ok(())
    }

    async fn boot(&mut self, id: u64) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let endpoint = self.net.endpoint(id);
        match Replica::start(id, &self.config, node.kv.clone(), endpoint).await {
            Ok(r) => {
                let replica = Arc::new(r);
                let env = self.env(id);
                self.secrets.watch(env.clone());
                let mut cfg = ServerConfig::new(id, td());
                cfg.key_ttl = self.key_ttl;
                cfg.issuer.staleness_max = SIM_STALENESS_MAX;
                cfg.issuer.agent_ttl = SIM_AGENT_TTL;
                let dyn_env: Arc<dyn Env> = env;
                let server = ServerNode::start(cfg, dyn_env, replica.clone());
                let mut service = NodeService::new(server.clone());
                if let Some(ca) = &self.pop_ca {
                    service = service.with_x509pop_cas(vec![ca.der().to_vec()]);
                }
                if self.removal_check.node == Some(id) {
                    self.removed_service = Some(service);
                } else {
                    self.services.insert(id, service);
                }
                self.servers.insert(id, server);
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

    /// Node `id`'s node API (the production [`NodeService`]), if it is running: targeted tests
    /// play agents, honest or not, against it.
    pub fn service(&self, id: u64) -> Option<NodeService<SimEndpoint>> {
        self.services.get(&id).cloned()
    }

    /// Whether every running node could issue now (contact within `staleness_max`, an active
    /// CA).
    pub fn all_ready(&self) -> bool {
        self.servers.values().all(|s| s.ready_to_issue().is_ok())
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

    /// IDs of running nodes, without a removed one.
    pub fn members(&self) -> Vec<u64> {
        let removed = self.removal_check.node;
        self.live()
            .into_iter()
            .filter(|id| Some(*id) != removed)
            .collect()
    }

    /// Violations found so far: the world's own and every checker's.
    /// Each distinct message once, in the order first seen.
    pub fn violations(&self) -> Vec<String> {
        let mut all = self.violations.clone();
        all.extend(self.raft_check.violations.iter().cloned());
        all.extend(self.svid_check.violations.iter().cloned());
        all.extend(self.staleness_check.violations.iter().cloned());
        all.extend(self.workload_check.violations.iter().cloned());
        all.extend(self.hostile_check.violations.iter().cloned());
        all.extend(self.copy_check.violations.iter().cloned());
        all.extend(self.ban_check.violations.iter().cloned());
        all.extend(self.removal_check.violations.iter().cloned());
        all.extend(self.secrets.violations());
        let mut seen = BTreeSet::new();
        all.retain(|v| seen.insert(v.clone()));
        all
    }

    /// The client oracle.
    pub fn oracle(&self) -> std::sync::MutexGuard<'_, Oracle> {
        self.oracle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands every running node's Raft metrics and bundle sequence to the Raft checker, and
    /// the network's state to the staleness checker (called after every step and every fault).
    pub fn observe_leaders(&mut self) {
        self.observe_cut_off();
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            let m = r.raft().metrics().borrow().clone();
            let sequence = r.read(|a| a.state.bundle(0).sequence.unwrap_or(0));
            if m.state == ServerState::Leader {
                event(|| {
                    format!(
                        "node {id} leads: term {} vote {:?} last_log {:?} applied {:?}",
                        m.current_term, m.vote, m.last_log_index, m.last_applied
                    )
                });
            }
            self.raft_check.observe(id, &m, sequence);
        }
        self.observe_hostile();
    }

    /// The node that a majority of live nodes currently sees as leader, if it leads.
    pub fn leader(&self) -> Option<u64> {
        self.members().into_iter().find(|id| {
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

    /// A fresh, valid entry with a seeded ID, parented by a random agent, for uid 0–3 (and
    /// sometimes gid 5): agents' workloads are uids 1 and 2, and uid 1 in group 5.
    pub fn new_entry(&mut self) -> RegistrationEntry {
        let bits: [u8; 16] = self.rng.gen();
        let id = EntryId::from_random(bits);
        let uid = self.rng.gen_range(0..4u32);
        let mut selectors: BTreeSet<Selector> = [format!("unix:uid:{uid}")
            .parse()
            .expect("valid by construction")]
        .into_iter()
        .collect();
        if self.rng.gen_bool(0.3) {
            selectors.insert("unix:gid:5".parse().expect("valid by construction"));
        }
        let parents = self.agents.len() + 1;
        let parent_id = match self.rng.gen_range(0..parents) {
            0 => SIM_AGENT.parse().expect("valid by construction"),
            i => self.agents[i - 1].spiffe_id.clone(),
        };
        let x509_svid_ttl_secs = match self.tiny_ttl_min {
            0 => 0,
            min => self.rng.gen_range(min..=15),
        };
        self.entry_parents.insert(id.clone(), parent_id.clone());
        RegistrationEntry {
            spiffe_id: format!("spiffe://sim.test/w/{id}")
                .parse()
                .expect("valid by construction"),
            parent_id,
            selectors,
            id,
            x509_svid_ttl_secs,
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
        let acked_at = self.deletes_acked_at.clone();
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
                    acked_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((victim.clone(), now()));
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
        self.services.remove(&id);
        if self.removal_check.node == Some(id) {
            self.removed_service = None;
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
            self.reconcile_membership().await;
            self.observe_leaders();
            match self.agreement() {
                Ok(()) if self.leader().is_some() => return Ok(()),
                Ok(()) => last = "no leader".into(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for id in self.live() {
            if let Some(r) = self.replica(id) {
                let m = r.raft().metrics().borrow().clone();
                event(|| format!("not converged: node {id}: {m:?}"));
            }
        }
        Err(format!(
            "did not converge within {} s of virtual time: {last}",
            limit.as_secs()
        ))
    }

    fn agreement(&self) -> Result<(), String> {
        let mut seen: Option<(u64, Option<u64>, State)> = None;
        for id in self.members() {
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

    /// Checks the oracle against every node's state (see [`Oracle::check`]).
    pub fn check_oracle(&mut self) {
        let o = self.oracle.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        for id in self.members() {
            let Some(r) = self.replica(id) else { continue };
            r.read(|a| o.check(id, &a.state, &mut found));
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
        // Clients write through members (the removed node's own proposals are the hostile
        // actor's, checked apart).
        let live = self.members();
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
            65..=72 if faults.partitions => {
                // Agents land on either side of a cut, like the servers.
                let peers: Vec<u64> = ids
                    .iter()
                    .copied()
                    .chain(self.agents.iter().map(|a| a.peer))
                    .collect();
                match self.rng.gen_range(0..3) {
                    0 => {
                        let victim = pick(&mut self.rng, &ids);
                        let mut alone = vec![victim];
                        let mut rest = Vec::new();
                        for p in peers.into_iter().filter(|p| *p != victim) {
                            if p >= AGENT_PEER_BASE && self.rng.gen_bool(0.3) {
                                alone.push(p);
                            } else {
                                rest.push(p);
                            }
                        }
                        self.net.partition(&[alone, rest]);
                    }
                    1 => {
                        let mut a = Vec::new();
                        let mut b = Vec::new();
                        for p in peers {
                            if self.rng.gen_bool(0.5) {
                                a.push(p);
                            } else {
                                b.push(p);
                            }
                        }
                        self.net.partition(&[a, b]);
                    }
                    _ => self.net.heal(),
                }
            }
            73..=77 if faults.asymmetric => {
                let from = pick(&mut self.rng, &ids);
                let to = pick(&mut self.rng, &ids);
                if from != to {
                    event(|| format!("cut {from} -> {to}"));
                    self.net.cut(from, to);
                }
            }
            82..=91 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.issue(id);
            }
            92..=94 => {
                // A quiet stretch: time passes (keys prepare, activate, expire, get pruned)
                // while agents keep syncing.
                let secs = self.rng.gen_range(3..12);
                for _ in 0..secs {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.tick_agents().await;
                }
            }
            95..=96 if faults.clocks => {
                // A clock step on every host at once (NTP correction, VM resume): mostly
                // forward, which brings CA rotation early; sometimes a little back.
                let ms = if self.rng.gen_bool(0.8) {
                    self.rng.gen_range(3_000..=15_000)
                } else {
                    -self.rng.gen_range(500..=2_000)
                };
                event(|| format!("every wall clock steps {ms} ms"));
                for env in self.envs.values() {
                    env.step_wall_ms(ms);
                }
            }
            97..=99 if faults.storms && !live.is_empty() => {
                // A storm: a burst of creates and deletes at random nodes.
                for _ in 0..self.rng.gen_range(5..20) {
                    let id = pick(&mut self.rng, &live);
                    if self.rng.gen_bool(0.7) {
                        self.spawn_create(id);
                    } else {
                        self.spawn_delete(id);
                    }
                }
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
        self.hostile_step(&faults.hostile).await;
        self.observe_cut_off();
        let pause = self.rng.gen_range(5..100);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if self.rng.gen_bool(0.3) {
            self.tick_agents().await;
        }
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
