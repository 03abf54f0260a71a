//! `sigil healthcheck` (a server node, through its admin socket) and `sigil agent health` (the
//! running agent, through its own admin socket).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use wire::admin as pb;

use super::{fail, print_json, span_text, AdminSocket, CliError};

/// `sigil healthcheck`
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    socket: AdminSocket,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

impl HealthcheckArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = self.socket.connect().await?;
        let h = client.health(pb::HealthRequest {}).await?.into_inner();
        if !h.serving {
            return Err(fail(format!(
                "server node {} is not serving (raft has stopped)",
                h.node_id
            )));
        }
        if !self.quiet {
            let leader = h
                .leader_id
                .map_or_else(|| "no leader known".to_owned(), |l| format!("leader {l}"));
            writeln!(out, "server node {} is healthy ({leader})", h.node_id)?;
        }
        Ok(())
    }
}

/// `sigil agent health`
#[derive(Debug, Args)]
pub struct AgentHealthArgs {
    /// The running agent's admin socket [default: `admin_socket` of --config, else
    /// /var/lib/sigil-agent/admin.sock].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// The agent's agent.toml, to find its admin socket.
    #[arg(long, value_name = "FILE", conflicts_with = "admin_socket")]
    config: Option<PathBuf>,
    /// Exit 0 while the agent serves cached SVIDs with no server reachable (for liveness probes
    /// that must not restart an agent during a server outage).
    #[arg(long)]
    allow_disconnected: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl AgentHealthArgs {
    /// Runs the command: prints the agent's state; fails (exit 1) when the agent is not connected
    /// to a server (unless `--allow-disconnected`) or its own SVID has expired.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let socket = match (&self.admin_socket, &self.config) {
            (Some(path), _) => path.clone(),
            (None, Some(config)) => {
                node::rt::config::AgentFileConfig::load(config)
                    .map_err(|e| fail(e.to_string()))?
                    .admin_socket
            }
            (None, None) => std::path::Path::new(node::rt::config::AGENT_DATA_DIR_DEFAULT)
                .join(node::rt::config::AGENT_ADMIN_SOCKET_NAME),
        };
        let mut client = node::rt::agent_admin::connect(&socket)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let h = client
            .agent_health(pb::AgentHealthRequest {})
            .await?
            .into_inner();
        let now = h.now_unix;
        let until = |t: i64| span_text(u64::try_from(t.saturating_sub(now)).unwrap_or(0));
        let agent_expired = h.agent_svid_not_after_unix <= now;
        if self.json {
            print_json(
                out,
                &json!({
                    "spiffe_id": h.spiffe_id,
                    "connected": h.connected,
                    "server": (!h.server.is_empty()).then_some(&h.server),
                    "last_server_contact_unix": (h.last_server_contact_unix > 0).then_some(h.last_server_contact_unix),
                    "agent_svid_not_after_unix": h.agent_svid_not_after_unix,
                    "x509_svids": h.x509_svids,
                    "earliest_svid_not_after_unix": (h.earliest_svid_not_after_unix > 0).then_some(h.earliest_svid_not_after_unix),
                    "entries": h.entries,
                    "bundle_authorities": h.bundle_authorities,
                    "now_unix": now,
                }),
            )?;
        } else {
            let expiry = if h.x509_svids == 0 {
                String::new()
            } else {
                format!(
                    " (earliest expires in {})",
                    until(h.earliest_svid_not_after_unix)
                )
            };
            let cached = if h.connected { "" } else { "cached " };
            writeln!(
                out,
                "agent {} serves {} {cached}X.509-SVID(s){expiry} for {} entr{}; the bundle has {} X.509 authorit{}",
                h.spiffe_id,
                h.x509_svids,
                h.entries,
                if h.entries == 1 { "y" } else { "ies" },
                h.bundle_authorities,
                if h.bundle_authorities == 1 { "y" } else { "ies" },
            )?;
            if h.connected {
                writeln!(out, "connected to server {}", h.server)?;
            } else {
                let last = if h.last_server_contact_unix > 0 {
                    format!(
                        "last contact {} ago",
                        span_text(u64::try_from(now - h.last_server_contact_unix).unwrap_or(0))
                    )
                } else {
                    "no contact since the agent started".to_owned()
                };
                writeln!(
                    out,
                    "NOT connected to any server ({last}): workloads get cached SVIDs until they expire and no new identities; check that the servers in agent.toml run and are reachable"
                )?;
            }
            if agent_expired {
                writeln!(out, "the agent's own SVID has expired")?;
            } else {
                writeln!(
                    out,
                    "agent SVID expires in {}",
                    until(h.agent_svid_not_after_unix)
                )?;
            }
        }
        if agent_expired {
            return Err(fail(
                "the agent's own SVID has expired: it must attest again (see the agent's log)",
            ));
        }
        if !h.connected && !self.allow_disconnected {
            return Err(fail(
                "the agent is not connected to any server (serving cached SVIDs only)",
            ));
        }
        Ok(())
    }
}
