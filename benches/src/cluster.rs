//! The in-process sigil cluster both load generators run against, and the admin API calls that
//! set it up.
//!
//! [`Cluster`]: N `sigil server` nodes as tasks in this process (`node::rt::serve::run_server`,
//! sled in a temp dir, admin sockets, QUIC on free loopback ports) — node 1 bootstraps, the
//! others join with server join tokens, each created only once the previous node's CA is in the
//! bundle (the pinned bundle hash covers every CA) — plus, optionally, one `sigil agent`
//! (`node::rt::agent::run_agent`) attested with a join token. [`Cluster::finish`] stops them
//! all, removes the temp dir and prints the shutdown line. The admin API helpers: [`status`],
//! [`agent_join_token`], [`entry`], [`create_one`].
//!
//! Configs, free ports, the service tasks and the clock come from `testkit`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use node::rt::config::{AgentFileConfig, ServerFileConfig};
use testkit::{free_udp_addr, now, remove_temp_dir, AgentToml, Join, ServerToml, ServiceTask};
use tonic::transport::Channel;
use wire::admin::admin_client::AdminClient;
use wire::admin::{self as pb, JoinTokenPurpose};
use wire::{EntryId, TrustDomain};

use crate::{BoxError, Res, STEP_TIMEOUT, TRUST_DOMAIN};

/// An admin API client of one node.
pub type Admin = AdminClient<Channel>;

/// One in-process server node.
#[derive(Debug)]
pub struct Node {
    /// Its node ID (1 bootstraps).
    pub id: u64,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its admin API socket.
    pub admin_socket: PathBuf,
    service: ServiceTask<node::Error>,
}

/// The in-process agent.
#[derive(Debug)]
struct Agent {
    cfg: AgentFileConfig,
    service: ServiceTask<node::Error>,
}

/// Server nodes and an optional agent, in one temp dir.
#[derive(Debug)]
pub struct Cluster {
    /// [`TRUST_DOMAIN`].
    pub td: TrustDomain,
    /// The tool's name: the temp dir's prefix, config file names.
    tool: &'static str,
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    agent: Option<Agent>,
}

impl Cluster {
    /// An empty cluster in a new temp dir `sigil-<tool>-…`.
    pub fn new(tool: &'static str) -> Res<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sigil-{tool}-"))
            .tempdir()?;
        Ok(Cluster {
            td: TRUST_DOMAIN.parse()?,
            tool,
            dir: Some(dir),
            nodes: Vec::new(),
            agent: None,
        })
    }

    /// The temp dir everything lives under.
    pub fn root(&self) -> Res<&Path> {
        Ok(self.dir.as_ref().ok_or("the cluster is shut down")?.path())
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> Res<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no node {id}").into())
    }

    /// How many nodes were started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was started.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts node `id` (bootstrapping without `join`).
    fn start_node(&mut self, id: u64, join: Option<Join>) -> Res<()> {
        let home = self.root()?.join(format!("node-{id}"));
        std::fs::create_dir_all(&home)?;
        let addr = free_udp_addr()?;
        let admin_socket = home.join("admin.sock");
        let toml = ServerToml::new(TRUST_DOMAIN, id, home.join("data"), addr, &admin_socket);
        let text = match join {
            None => toml.bootstrap(),
            Some(j) => toml.join(j),
        }
        .render();
        let path = format!("{} server.toml", self.tool);
        let cfg = ServerFileConfig::parse(Path::new(&path), &text)?;
        let service = ServiceTask::spawn(format!("node {id}"), move |shutdown| {
            node::rt::serve::run_server(cfg, shutdown)
        });
        self.nodes.push(Node {
            id,
            addr,
            admin_socket,
            service,
        });
        Ok(())
    }

    /// Fails if node `id`'s server task has ended (it reports why).
    pub async fn check_running(&mut self, id: u64) -> Res<()> {
        let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) else {
            return Err(format!("no node {id}").into());
        };
        Ok(n.service.check_running().await?)
    }

    /// An admin client of node `id`, once its socket accepts.
    async fn admin(&mut self, id: u64) -> Res<Admin> {
        let start = now();
        let path = self.node(id)?.admin_socket.clone();
        loop {
            self.check_running(id).await?;
            if path.exists() {
                if let Ok(client) = node::rt::admin::connect(&path).await {
                    return Ok(client);
                }
            }
            if start.elapsed() > STEP_TIMEOUT {
                return Err(format!("node {id}'s admin socket did not come up").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `done(cluster status of node id)` or fails after [`STEP_TIMEOUT`].
    async fn wait_status(
        &mut self,
        id: u64,
        admin: &mut Admin,
        what: &str,
        done: impl Fn(&pb::ClusterStatusResponse, &pb::GetBundleResponse) -> bool,
    ) -> Res<()> {
        let start = now();
        loop {
            self.check_running(id).await?;
            let status = admin.cluster_status(pb::ClusterStatusRequest {}).await;
            let bundle = admin.get_bundle(pb::GetBundleRequest {}).await;
            if let (Ok(s), Ok(b)) = (status, bundle) {
                if done(s.get_ref(), b.get_ref()) {
                    return Ok(());
                }
            }
            if start.elapsed() > STEP_TIMEOUT {
                return Err(format!("timed out waiting for {what}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts and joins `n` nodes; returns their admin clients (index = node ID − 1).
    pub async fn start(&mut self, n: u64) -> Res<Vec<Admin>> {
        self.start_node(1, None)?;
        let mut first = self.admin(1).await?;
        self.wait_status(1, &mut first, "node 1's CA to commit", |s, b| {
            !b.bundle_sha256.is_empty() && s.leader_id == Some(1)
        })
        .await?;
        let mut admins = vec![first.clone()];
        for id in 2..=n {
            // Taken only now: node id-1's CA is in the bundle, so this hash is the one the
            // joining node will see.
            let token = first
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl_secs: 600,
                    spiffe_id: String::new(),
                    purpose: JoinTokenPurpose::Server.into(),
                    node_id: id,
                    rejoin: false,
                })
                .await?
                .into_inner();
            let seed = self.node(1)?.addr;
            self.start_node(
                id,
                Some(Join {
                    token: token.token,
                    seeds: vec![seed.to_string()],
                    bundle_sha256: token.bundle_sha256,
                }),
            )?;
            let admin = self.admin(id).await?;
            let want = usize::try_from(id)?;
            self.wait_status(
                1,
                &mut first,
                &format!("node {id} to publish its CA and become a voter"),
                |s, b| {
                    b.x509_authorities.len() >= want
                        && s.members
                            .iter()
                            .any(|m| m.node_id == id && m.voter && m.x509_authority.is_some())
                },
            )
            .await?;
            admins.push(admin);
        }
        // Every node sees the whole cluster: n voters, n CAs, a leader.
        let want = usize::try_from(n)?;
        for id in 1..=n {
            let mut admin = admins[usize::try_from(id - 1)?].clone();
            self.wait_status(
                id,
                &mut admin,
                &format!("node {id} to see {n} voters with CAs"),
                |s, b| {
                    s.leader_id.is_some()
                        && b.x509_authorities.len() >= want
                        && s.members.len() == want
                        && s.members
                            .iter()
                            .all(|m| m.voter && m.x509_authority.is_some())
                },
            )
            .await?;
        }
        Ok(admins)
    }

    /// Starts the agent against `server` with a join token and the bundle hash to pin; returns
    /// its Workload API socket.
    pub fn start_agent(
        &mut self,
        server: SocketAddr,
        token: &str,
        bundle_sha256: &str,
    ) -> Res<PathBuf> {
        let home = self.root()?.join("agent");
        std::fs::create_dir_all(&home)?;
        let socket = home.join("agent.sock");
        let text = AgentToml::new(TRUST_DOMAIN, &[server], home.join("data"), &socket)
            .join_token(token)
            .bundle_sha256(bundle_sha256)
            .render();
        let path = format!("{} agent.toml", self.tool);
        let cfg = AgentFileConfig::parse(Path::new(&path), &text)?;
        self.agent = Some(Agent {
            service: Agent::spawn(cfg.clone()),
            cfg,
        });
        Ok(socket)
    }

    /// Starts the agent again from its config (a retry with the same join token is idempotent).
    pub fn restart_agent(&mut self) -> Res<()> {
        let agent = self.agent.as_mut().ok_or("no agent config")?;
        agent.service = Agent::spawn(agent.cfg.clone());
        Ok(())
    }

    /// Fails, saying why, if the agent's task has ended.
    pub async fn check_agent(&mut self) -> Result<(), String> {
        match self.agent.as_mut() {
            Some(agent) => agent.service.check_running().await,
            None => Ok(()),
        }
    }

    /// Stops the agent, then every node, waits for each, removes the temp dir. Returns one line
    /// per problem.
    async fn shutdown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(agent) = self.agent.as_mut() {
            problems.extend(agent.service.stop(Duration::from_secs(30)).await);
        }
        for n in &mut self.nodes {
            n.service.signal_stop();
        }
        for n in &mut self.nodes {
            problems.extend(n.service.stop(Duration::from_secs(30)).await);
        }
        problems.extend(self.dir.take().and_then(remove_temp_dir));
        problems
    }

    /// Shuts down after the run's `result` and prints `shutdown: <what> stopped in … s, temp
    /// dir removed` (with any problems); the run's error, else one naming the problems.
    pub async fn finish(&mut self, result: Res<()>, what: &str) -> Res<()> {
        let t = now();
        let problems = self.shutdown().await;
        println!(
            "shutdown: {what} stopped in {:.1} s, temp dir removed{}",
            t.elapsed().as_secs_f64(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" — PROBLEMS: {}", problems.join("; "))
            }
        );
        match (result, problems.is_empty()) {
            (Err(e), _) => Err(e),
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(BoxError::from(problems.join("; "))),
        }
    }
}

impl Agent {
    fn spawn(cfg: AgentFileConfig) -> ServiceTask<node::Error> {
        ServiceTask::spawn("the agent", move |shutdown| {
            node::rt::agent::run_agent(cfg, shutdown)
        })
    }
}

/// The cluster status as `admin`'s node sees it.
pub async fn status(admin: &mut Admin) -> Res<pb::ClusterStatusResponse> {
    Ok(admin
        .cluster_status(pb::ClusterStatusRequest {})
        .await?
        .into_inner())
}

/// A new agent join token (10 minutes), with the agent's SPIFFE ID and the bundle hash to pin.
pub async fn agent_join_token(admin: &mut Admin) -> Res<pb::CreateJoinTokenResponse> {
    Ok(admin
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_secs: 600,
            spiffe_id: String::new(),
            purpose: JoinTokenPurpose::Agent.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// A registration entry with one selector.
pub fn entry(spiffe_id: String, parent_id: String, selector: String) -> pb::Entry {
    pb::Entry {
        spiffe_id,
        parent_id,
        selectors: vec![selector],
        ..pb::Entry::default()
    }
}

/// Creates one entry; returns its ID.
pub async fn create_one(admin: &mut Admin, e: pb::Entry) -> Res<EntryId> {
    let results = admin
        .create_entries(pb::CreateEntriesRequest { entries: vec![e] })
        .await?
        .into_inner()
        .results;
    match results.into_iter().next().and_then(|r| r.result) {
        Some(pb::entry_result::Result::Entry(e)) => Ok(e.id.parse()?),
        Some(pb::entry_result::Result::Error(e)) => {
            Err(format!("creating an entry: {} ({})", e.message, e.code).into())
        }
        None => Err("creating an entry: no result".into()),
    }
}
