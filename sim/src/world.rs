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
//!
//! The world lives in `world.rs` and files under `world/`, one concern each:
//!
//! - `world.rs`: the [`World`] struct and its accessors, the simulator's constants, the
//!   virtual clock and `event` tracing (`SIM_TRACE`).
//! - `world/faults.rs`: [`Faults`], a run's fault mix drawn from its seed (network settings,
//!   partitions, crashes, clocks, storms, lifetimes, agents, hostility).
//! - `world/cluster.rs`: building a world ([`World::start_with`]: environments, nodes, the
//!   cluster's initialization, join tokens, x509pop certificates, agents) and a node's life
//!   (boot, [`World::crash`], [`World::restart`], [`World::shutdown`]).
//! - `world/clients.rs`: what clients do — entry creates and deletes recorded in the oracle,
//!   direct issues, agents ticking with their workloads served.
//! - `world/observe.rs`: the hand-off of everything observed to the checkers, and the
//!   violations they found.
//! - `world/schedule.rs`: one seeded step of the safety phase (client writes, partitions, cuts,
//!   crashes, issues, quiet stretches, clock steps, storms; then the hostile actors).
//! - `world/liveness.rs`: the liveness phase — [`World::converge`] (one leader, equal
//!   replicas), then settling (every node can issue, every live agent's workloads are served).
//! - `world/run.rs`: [`RunOptions`], [`Report`], [`run`] and [`run_seed`] (one seed on its own
//!   runtime, panics reported as violations).
//! - `world/hostile.rs` ([`hostile`]): the hostile actors and what they tried and got.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use raft::replica::{Replica, ReplicaConfig};
use raft::MemKv;
use rand_chacha::ChaCha20Rng;
use wire::{EntryId, Seed};

use node::server::ServerNode;
use node::service::NodeService;
use wire::{PeerId, SpiffeId, TrustDomain};

use crate::agent::{SimAgent, AGENT_PEER_BASE};
use crate::check::bans::BanChecker;
use crate::check::hostile::{CopyChecker, HostileChecker};
use crate::check::raft::RaftChecker;
use crate::check::removed::RemovalChecker;
use crate::check::secrets::SecretScan;
use crate::check::staleness::StalenessChecker;
use crate::check::svids::SvidChecker;
use crate::check::workloads::WorkloadChecker;
use crate::env::SimEnv;
use crate::net::{fnv, SimEndpoint, SimNet};
use crate::x509pop::PopCa;

pub use crate::check::registrations::Oracle;
pub use faults::Faults;
pub use hostile::{HostileCounts, Hostility};
pub use run::{reproducible, run, run_seed, Report, RunOptions};

mod clients;
mod cluster;
mod faults;
pub mod hostile;
mod liveness;
mod observe;
mod run;
mod schedule;

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
    /// The simulated agents.
    pub fn agents(&self) -> &[SimAgent] {
        &self.agents
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

    /// The client oracle.
    pub fn oracle(&self) -> std::sync::MutexGuard<'_, Oracle> {
        self.oracle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node that a majority of live nodes currently sees as leader, if it leads.
    pub fn leader(&self) -> Option<u64> {
        self.members().into_iter().find(|id| {
            self.replica(*id)
                .is_some_and(|r| r.raft().metrics().borrow().state == ServerState::Leader)
        })
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
}
