//! `sigil server` nodes as processes, and the smallest whole plane: one bootstrap server and
//! one agent.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use serde_json::Value;

use crate::config::{AgentToml, ServerToml};
use crate::net::free_udp_addr;
use crate::proc::{log_tail, try_run_bounded, Proc};
use crate::sigil::{json, json_of};
use crate::wait::{poll, wait_for};

/// The default bound on one admin CLI call ([`ServerNode::sigil`]).
const CLI_LIMIT: Duration = Duration::from_secs(20);

/// One `sigil server` node in its own directory `home`: `server.toml`, `admin.sock`, `data/`
/// and `server.log` (kept across restarts), on a loopback QUIC port chosen when it was made.
/// Write its config ([`ServerNode::toml`]), then [`ServerNode::start`] it; dropping it kills
/// the process.
#[derive(Debug)]
pub struct ServerNode {
    pub id: u64,
    /// Its QUIC address (`bind`).
    pub addr: SocketAddr,
    pub home: PathBuf,
    /// Its admin socket.
    pub admin: String,
    pub config: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    envs: Vec<(String, String)>,
    cli_limit: Duration,
    proc: Option<Proc>,
}

impl ServerNode {
    /// Node `id` of the `sigil` binary `bin`, living in `home` (created); not started.
    pub fn new(
        bin: impl Into<PathBuf>,
        id: u64,
        home: impl Into<PathBuf>,
    ) -> io::Result<ServerNode> {
        let home = home.into();
        std::fs::create_dir_all(&home)?;
        let admin = home
            .join("admin.sock")
            .to_str()
            .ok_or_else(|| io::Error::other("a non-UTF-8 path"))?
            .to_owned();
        Ok(ServerNode {
            id,
            addr: free_udp_addr()?,
            config: home.join("server.toml"),
            log: home.join("server.log"),
            admin,
            home,
            bin: bin.into(),
            envs: Vec::new(),
            cli_limit: CLI_LIMIT,
            proc: None,
        })
    }

    /// Runs the process with `key=value` in its environment.
    pub fn env(mut self, key: &str, value: &str) -> ServerNode {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Bounds each admin CLI call at `limit` (default 20 s).
    pub fn cli_limit(mut self, limit: Duration) -> ServerNode {
        self.cli_limit = limit;
        self
    }

    /// This node's `server.toml` for `trust_domain`: its ID, `home/data`, its port and admin
    /// socket. Add bootstrap or join and options, then `write(&node.config)`.
    pub fn toml(&self, trust_domain: &str) -> ServerToml {
        ServerToml::new(
            trust_domain,
            self.id,
            self.home.join("data"),
            self.addr,
            &self.admin,
        )
    }

    /// Starts `sigil server --config <config>`, logging to `log`.
    pub fn start(&mut self) -> io::Result<()> {
        assert!(!self.running(), "node {} already running", self.id);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["server", "--config"])
            .arg(&self.config)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        self.proc = Some(Proc::spawn(&mut cmd, &self.log)?);
        Ok(())
    }

    /// Whether its process was started and not killed or stopped since.
    pub fn running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// How its process ended, if it exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(Proc::exited)
    }

    /// Sends `signal` to its process.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.proc {
            p.signal(signal);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(p) = &mut self.proc {
            p.kill();
        }
    }

    /// SIGTERM; its exit status within `limit`, else SIGKILL and `None`.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(|p| p.stop(limit))
    }

    /// SIGTERM; true if it exits with 0 within 20 s.
    pub fn terminate(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::terminate)
    }

    /// Everything it logged, over every start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// `args` followed by `--admin-socket <its socket>`.
    pub fn admin_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--admin-socket", self.admin.as_str()]);
        all
    }

    /// Runs an admin command against this node (bounded).
    pub fn try_sigil(&self, args: &[&str]) -> Result<Output, String> {
        try_run_bounded(
            Command::new(&self.bin).args(self.admin_args(args)),
            self.cli_limit,
        )
    }

    /// [`ServerNode::try_sigil`]; panics if it does not finish in time.
    pub fn sigil(&self, args: &[&str]) -> Output {
        self.try_sigil(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `cluster status --json`, or `None` while the admin API does not answer.
    pub fn status(&self) -> Option<Value> {
        json_of(&self.try_sigil(&["cluster", "status", "--json"]).ok()?)
    }

    /// Waits until the node serves a bundle with a CA, for at most `limit` (panics with its log
    /// otherwise); the bundle's pinnable hash.
    pub fn wait_bundle_hash(&self, limit: Duration) -> String {
        poll(limit, || {
            let out = self.try_sigil(&["bundle", "show", "--hash"]).ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| panic!("server up with a CA: {}", self.log()))
    }
}

/// A bootstrap `sigil server` and one `sigil agent` with a join token, in `dir`: the server as
/// a [`ServerNode`] with home `dir`; the agent's `agent.toml`, `agent/` (data), `agent.sock`
/// (its Workload API) and `agent.log`.
#[derive(Debug)]
pub struct Plane {
    /// The agent, once [`Plane::start_agent`] started it.
    pub agent: Option<Proc>,
    pub server: ServerNode,
    /// The pinned bundle hash the agent starts with.
    pub hash: String,
    /// The agent's join token.
    pub token: String,
    /// The SPIFFE ID the agent gets with it.
    pub agent_id: String,
    /// The agent's Workload API socket.
    pub workload: PathBuf,
    pub agent_config: PathBuf,
    trust_domain: String,
    bin: PathBuf,
    dir: PathBuf,
}

impl Plane {
    /// Starts the server (node 1, bootstrapping `trust_domain`) and waits, at most `limit`,
    /// until it serves a CA; takes an agent join token. The agent is not started yet.
    pub fn bootstrap(
        bin: impl Into<PathBuf>,
        dir: &Path,
        trust_domain: &str,
        limit: Duration,
    ) -> Plane {
        let bin = bin.into();
        let mut server = ServerNode::new(&bin, 1, dir).expect("server directory");
        server
            .toml(trust_domain)
            .bootstrap()
            .write(&server.config)
            .expect("server config");
        server.start().expect("spawn sigil server");
        let hash = server.wait_bundle_hash(limit);
        let token = json(&server.sigil(&["token", "generate", "--json"]));
        Plane {
            agent: None,
            server,
            hash,
            token: token["token"].as_str().expect("token").to_owned(),
            agent_id: token["agent_spiffe_id"]
                .as_str()
                .expect("agent id")
                .to_owned(),
            workload: dir.join("agent.sock"),
            agent_config: dir.join("agent.toml"),
            trust_domain: trust_domain.to_owned(),
            bin,
            dir: dir.to_path_buf(),
        }
    }

    /// Writes `agent.toml` (the server, the join token, the pinned hash), starts the agent and
    /// waits, at most `limit`, for its Workload API socket.
    pub fn start_agent(&mut self, limit: Duration) {
        AgentToml::new(
            &self.trust_domain,
            &[self.server.addr],
            self.dir.join("agent"),
            &self.workload,
        )
        .join_token(&self.token)
        .bundle_sha256(&self.hash)
        .write(&self.agent_config)
        .expect("agent config");
        let agent = Proc::start(
            &self.bin,
            "agent",
            &self.agent_config,
            self.dir.join("agent.log"),
        );
        assert!(
            wait_for(limit, || self.workload.exists()),
            "agent socket: {}",
            agent.log()
        );
        self.agent = Some(agent);
    }

    /// [`Plane::bootstrap`], then [`Plane::start_agent`].
    pub fn start(
        bin: impl Into<PathBuf>,
        dir: &Path,
        trust_domain: &str,
        limit: Duration,
    ) -> Plane {
        let mut plane = Plane::bootstrap(bin, dir, trust_domain, limit);
        plane.start_agent(limit);
        plane
    }

    /// The agent; panics before [`Plane::start_agent`].
    pub fn agent(&self) -> &Proc {
        self.agent.as_ref().expect("the agent was started")
    }

    /// The agent, mutably; panics before [`Plane::start_agent`].
    pub fn agent_mut(&mut self) -> &mut Proc {
        self.agent.as_mut().expect("the agent was started")
    }
}
