//! `sigil cluster status|remove-server`: the server cluster's membership through the admin socket.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use wire::admin as pb;

use super::{print_json, rfc3339, AdminSocket, CliError};

/// `sigil cluster …`
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    socket: AdminSocket,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Raft members, leader, term, applied index, each node's active CA key and its expiry, and
    /// the registered server nodes.
    Status(ClusterStatus),
    /// Remove a server node from the cluster's membership (the Raft leader then removes it from
    /// the voters). The last server node cannot be removed.
    RemoveServer(ClusterRemoveServer),
}

#[derive(Debug, Args)]
struct ClusterStatus {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ClusterRemoveServer {
    /// The server node's ID (its `node_id`, see `sigil cluster status`). A removed ID is never
    /// admitted again.
    #[arg(value_name = "NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Its keys may be compromised: take its CA and JWT keys out of the trust bundle now, so
    /// every SVID it signed stops verifying (workloads it served get new SVIDs from the other
    /// nodes at their next renewal). Without it they stay until every SVID it may have signed
    /// expired (staleness_max + the longest default SVID TTL).
    #[arg(long)]
    compromised: bool,
    /// Print JSON: {"removed": {"node_id", "addr"}, "servers": [...]}.
    #[arg(long)]
    json: bool,
}

fn server_json(s: &pb::ServerNode) -> Value {
    json!({ "node_id": s.node_id, "addr": s.addr })
}

fn authority_json(a: &Option<pb::Authority>) -> Value {
    match a {
        None => Value::Null,
        Some(a) => json!({ "id": a.id, "not_after_secs": a.not_after_secs }),
    }
}

fn authority_text(a: &Option<pb::Authority>) -> String {
    match a {
        None => "none".into(),
        Some(a) => format!("{} (until {})", a.id, rfc3339(a.not_after_secs)),
    }
}

impl ClusterArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        match self.command {
            ClusterCommand::Status(status) => status.run(&self.socket, out).await,
            ClusterCommand::RemoveServer(remove) => remove.run(&self.socket, out).await,
        }
    }
}

impl ClusterRemoveServer {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let resp = client
            .remove_server(pb::RemoveServerRequest {
                node_id: self.node_id,
                compromised: self.compromised,
            })
            .await?
            .into_inner();
        if self.json {
            let servers: Vec<Value> = resp.servers.iter().map(server_json).collect();
            return print_json(
                out,
                &json!({
                    "removed": resp.removed.as_ref().map(server_json),
                    "servers": servers,
                }),
            );
        }
        let at = resp
            .removed
            .as_ref()
            .filter(|r| !r.addr.is_empty())
            .map(|r| format!(" ({})", r.addr))
            .unwrap_or_default();
        writeln!(
            out,
            "Removed server node {}{at} from the cluster's membership; the Raft leader will remove it from the voters.",
            self.node_id
        )?;
        let remaining: Vec<String> = resp
            .servers
            .iter()
            .map(|s| format!("{} ({})", s.node_id, s.addr))
            .collect();
        writeln!(
            out,
            "Remaining server nodes: {}",
            if remaining.is_empty() {
                "unknown to this node yet".to_owned()
            } else {
                remaining.join(", ")
            }
        )?;
        Ok(())
    }
}

impl ClusterStatus {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let status = self;
        let mut client = socket.connect().await?;
        let s = client
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        if status.json {
            let members: Vec<Value> = s
                .members
                .iter()
                .map(|m| {
                    json!({
                        "node_id": m.node_id,
                        "address": m.address,
                        "voter": m.voter,
                        "leader": m.leader,
                        "x509_authority": authority_json(&m.x509_authority),
                        "jwt_authority": authority_json(&m.jwt_authority),
                    })
                })
                .collect();
            return print_json(
                out,
                &json!({
                    "trust_domain": s.trust_domain,
                    "node_id": s.node_id,
                    "node_state": s.node_state,
                    "leader_id": s.leader_id,
                    "term": s.term,
                    "applied_index": s.applied_index,
                    "bundle_sequence": s.bundle_sequence,
                    "entries": s.entries,
                    "members": members,
                    "servers": s.servers.iter().map(server_json).collect::<Vec<_>>(),
                }),
            );
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        writeln!(out, "Trust domain   : {}", s.trust_domain)?;
        writeln!(out, "This node      : {} ({})", s.node_id, s.node_state)?;
        writeln!(out, "Leader         : {}", opt(s.leader_id))?;
        writeln!(out, "Term           : {}", s.term)?;
        writeln!(out, "Applied index  : {}", opt(s.applied_index))?;
        writeln!(out, "Bundle sequence: {}", s.bundle_sequence)?;
        writeln!(out, "Entries        : {}", s.entries)?;
        writeln!(out, "Members        : {}", s.members.len())?;
        for m in &s.members {
            let role = match (m.leader, m.voter) {
                (true, _) => "leader",
                (false, true) => "voter",
                (false, false) => "learner",
            };
            writeln!(out, "  node {} ({role}) at {}", m.node_id, m.address)?;
            writeln!(out, "    X.509 CA : {}", authority_text(&m.x509_authority))?;
            writeln!(out, "    JWT key  : {}", authority_text(&m.jwt_authority))?;
        }
        writeln!(out, "Servers        : {} registered", s.servers.len())?;
        for srv in &s.servers {
            let raft = match s.members.iter().find(|m| m.node_id == srv.node_id) {
                Some(m) if m.voter => "Raft voter",
                Some(_) => "Raft learner",
                None => "not yet a Raft member",
            };
            writeln!(out, "  node {} at {} ({raft})", srv.node_id, srv.addr)?;
        }
        Ok(())
    }
}
