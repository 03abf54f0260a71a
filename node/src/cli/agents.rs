//! `sigil agent list|show|ban|unban|evict`: the lifecycle of attested agents, through a server
//! node's admin socket (DESIGN.md §6). Named like SPIRE's `spire-server agent` commands.

use std::io::Write;

use clap::Args;
use serde_json::{json, Value};
use wire::admin as pb;
use wire::SpiffeId;

use super::{check_id, fail, print_json, rfc3339, AdminSocket, CliError};

/// `sigil agent list`
#[derive(Debug, Args)]
pub struct AgentListArgs {
    #[command(flatten)]
    socket: AdminSocket,
    /// Print JSON: {"agents": [{"spiffe_id", "attestation_method", "selectors", "banned",
    /// "svid_serial", "svid_not_after_secs", "renewed_at_secs", "attested_at_secs"}]}.
    #[arg(long)]
    json: bool,
}

/// `sigil agent show|ban|unban|evict --spiffe-id ID`
#[derive(Debug, Args)]
pub struct AgentIdArgs {
    #[command(flatten)]
    socket: AdminSocket,
    /// The agent's SPIFFE ID (see `sigil agent list`).
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What to do with one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    /// Print it.
    Show,
    /// Ban it.
    Ban,
    /// Lift its ban.
    Unban,
    /// Forget it (it must attest again).
    Evict,
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "spiffe_id": a.spiffe_id,
        "attestation_method": a.attestation_method,
        "selectors": a.selectors,
        "banned": a.banned,
        "svid_serial": a.svid_serial,
        "svid_not_after_secs": a.svid_not_after_secs,
        "renewed_at_secs": a.renewed_at_secs,
        "attested_at_secs": a.attested_at_secs,
    })
}

fn when(secs: u64) -> String {
    if secs == 0 {
        "-".into()
    } else {
        rfc3339(secs)
    }
}

fn print_agent(out: &mut impl Write, a: &pb::Agent) -> Result<(), CliError> {
    writeln!(out, "SPIFFE ID         : {}", a.spiffe_id)?;
    writeln!(out, "Attestation method: {}", a.attestation_method)?;
    writeln!(out, "Banned            : {}", a.banned)?;
    let serial = if a.svid_serial.is_empty() {
        "(not recorded yet)"
    } else {
        a.svid_serial.as_str()
    };
    writeln!(out, "SVID serial       : {serial}")?;
    writeln!(out, "SVID expires at   : {}", when(a.svid_not_after_secs))?;
    writeln!(out, "Last renewal      : {}", when(a.renewed_at_secs))?;
    writeln!(out, "Attested at       : {}", when(a.attested_at_secs))?;
    for s in &a.selectors {
        writeln!(out, "Selector          : {s}")?;
    }
    Ok(())
}

impl AgentListArgs {
    /// Prints every attested agent, fetching page after page.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = self.socket.connect().await?;
        let mut agents = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_agents(pb::ListAgentsRequest {
                    page_size: wire::admin::PAGE_SIZE_MAX,
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            agents.extend(page.agents);
            // A token that does not advance would loop forever.
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                break;
            }
            page_token = page.next_page_token;
        }
        if self.json {
            let list: Vec<Value> = agents.iter().map(agent_json).collect();
            return print_json(out, &json!({ "agents": list }));
        }
        writeln!(out, "Found {} attested agent(s)", agents.len())?;
        for a in &agents {
            writeln!(out)?;
            print_agent(out, a)?;
        }
        Ok(())
    }
}

impl AgentIdArgs {
    /// Runs `action` on the agent.
    pub async fn run(self, action: AgentAction, out: &mut impl Write) -> Result<(), CliError> {
        let spiffe_id = check_id("spiffe-id", &self.spiffe_id)?;
        if !spiffe_id.parse::<SpiffeId>().is_ok_and(|id| id.is_agent()) {
            return Err(fail(format!(
                "--spiffe-id {spiffe_id} is not an agent ID (agents are spiffe://<td>/sigil/agent/<method>/<id>; see `sigil agent list`)"
            )));
        }
        let mut client = self.socket.connect().await?;
        let agent = match action {
            AgentAction::Show => client
                .get_agent(pb::GetAgentRequest {
                    spiffe_id: spiffe_id.clone(),
                })
                .await?
                .into_inner(),
            AgentAction::Ban | AgentAction::Unban => client
                .set_agent_banned(pb::SetAgentBannedRequest {
                    spiffe_id: spiffe_id.clone(),
                    banned: action == AgentAction::Ban,
                })
                .await?
                .into_inner(),
            AgentAction::Evict => {
                client
                    .evict_agent(pb::EvictAgentRequest {
                        spiffe_id: spiffe_id.clone(),
                    })
                    .await?;
                if self.json {
                    return print_json(out, &json!({ "evicted": spiffe_id }));
                }
                writeln!(
                    out,
                    "Agent {spiffe_id} evicted: its SVID no longer works and it must attest again"
                )?;
                return Ok(());
            }
        };
        if self.json {
            return print_json(out, &agent_json(&agent));
        }
        match action {
            AgentAction::Ban => writeln!(
                out,
                "Agent {spiffe_id} banned: every server node refuses it as soon as it applies the ban (a node cut off from the cluster within staleness_max)"
            )?,
            AgentAction::Unban => writeln!(out, "Agent {spiffe_id} unbanned")?,
            AgentAction::Show | AgentAction::Evict => {}
        }
        print_agent(out, &agent)
    }
}
