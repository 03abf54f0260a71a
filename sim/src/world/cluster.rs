//! Building a world — environments (seeded, with skewed clocks), nodes, the cluster's
//! initialization, the set-up writes, the agents — and a node's life: boot, crash, restart,
//! shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raft::replica::{Replica, ReplicaConfig};
use raft::MemKv;
use rand::Rng;
use wire::{Command, RegistrationEntry, Seed};

use node::actors::registration::{new_join_token, TokenRequest};
use node::server::{ServerConfig, ServerNode};
use node::service::NodeService;
use wire::{
    AgentRecord, AttestationMethod, Env, PeerId, Selector, SpiffeId, TokenPurpose, UnixTime,
};

use crate::agent::{SimAgent, SimMethod, Workload, AGENT_PEER_BASE};
use crate::check::bans::BanChecker;
use crate::check::hostile::{CopyChecker, HostileChecker};
use crate::check::raft::RaftChecker;
use crate::check::removed::RemovalChecker;
use crate::check::staleness::StalenessChecker;
use crate::check::svids::SvidChecker;
use crate::check::workloads::WorkloadChecker;
use crate::env::SimEnv;
use crate::net::{NetConfig, SimNet};
use crate::x509pop::PopCa;

use super::{
    event, issuing_entry_id, now, sim_node, td, Faults, SimNode, World, POP_CA_PEER, SIM_AGENT,
    SIM_AGENT_TTL, SIM_SKEW_MAX_MS, SIM_STALENESS_MAX, WALL_AT_START_SECS,
};

impl World {
    /// Starts `n` nodes from `seed` and initializes the cluster on node 1. Must run inside a
    /// current-thread tokio runtime with paused time (see [`run_seed`](super::run_seed)).
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
    pub(super) fn env(&mut self, id: u64) -> Arc<SimEnv> {
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
        // As `sigil token generate` makes it (the admin API runs the same actor); half of the
        // agents also get an extra SPIFFE ID, registered with the token in one command.
        let alias = self.rng.gen_bool(0.5).then(|| {
            format!("spiffe://sim.test/alias/{}", self.agents.len())
                .parse()
                .expect("valid by construction")
        });
        let request = TokenRequest {
            purpose: TokenPurpose::Agent,
            ttl: Duration::from_secs(86_400),
            node_id: None,
            rejoin: false,
            alias,
        };
        let wall = UnixTime::from_secs(WALL_AT_START_SECS);
        let new =
            new_join_token(&td(), &request, wall, &mut self.rng).map_err(|e| e.to_string())?;
        let spiffe_id = new.agent_id.ok_or("a join token without its agent")?;
        if let Some(id) = new.entry_id {
            self.oracle().create_attempted.insert(id);
        }
        self.write_retrying(new.command).await;
        Ok((SimMethod::JoinToken(new.secret), spiffe_id))
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
        let mut entry = RegistrationEntry::new(
            issuing_entry_id(),
            "spiffe://sim.test/issued"
                .parse()
                .expect("valid by construction"),
            agent.clone(),
            ["unix:uid:0".parse().expect("valid by construction")].into(),
            0,
        );
        entry.x509_svid_ttl_secs = 15;
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
}
