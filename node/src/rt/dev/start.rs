//! Start-up: [`start`] brings the plane up — the nodes that can start by themselves, then each
//! other node with a fresh server join token through a running one, then the agent (its bundle
//! pin refreshed), the uid's entry, and the wait until the agent serves the workload SVID.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wire::admin as pb;

use super::calls::{
    bounded, bundle_hash, cluster_status, create_server_token, ensure_entry, fresh_ca, member,
    role, serves_svid,
};
use super::files::{join_section, read_text, with_join, with_pin, write_private};
use super::plan::{Layout, Plan};
use super::procs::{Procs, Which};
use super::{
    fail, now, say, shell_quote, took, wall_secs, DevError, AGENT_WAIT, NODE_WAIT, SVID_MARGIN,
    SVID_WAIT,
};
use crate::rt::config::{AgentFileConfig, ServerFileConfig};
use crate::rt::serve::IdentityFiles;

/// Polling interval while waiting for something.
const POLL: Duration = Duration::from_millis(100);

/// What a finished start-up established.
#[derive(Debug)]
pub(super) struct Ready {
    pub(super) agent_id: String,
    pub(super) workload_id: String,
    pub(super) admin_socket: PathBuf,
    pub(super) workload_socket: PathBuf,
}

/// Waits for node `i` (its process running) until `ready` holds for the status read from
/// `socket`; fails if the process exits or [`NODE_WAIT`] passes.
async fn wait_node(
    procs: &mut Procs,
    i: u8,
    socket: &Path,
    what: &str,
    mut ready: impl FnMut(&pb::ClusterStatusResponse) -> bool,
) -> Result<pb::ClusterStatusResponse, DevError> {
    let start = now();
    loop {
        if let Some(status) = procs.exited(Which::Node(i)) {
            return Err(procs.died(Which::Node(i), status, "during start-up"));
        }
        if let Some(s) = cluster_status(socket).await {
            if ready(&s) {
                return Ok(s);
            }
        }
        if start.elapsed() >= NODE_WAIT {
            return Err(fail(format!(
                "node {i} did not {what} within {} s; its log: {}",
                NODE_WAIT.as_secs(),
                procs.log_of(Which::Node(i)).display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether node `i`'s stored server SVID is valid with [`SVID_MARGIN`] to spare.
fn svid_valid(layout: &Layout, i: u8) -> bool {
    IdentityFiles::new(&layout.node_dir(i))
        .svid()
        .is_some_and(|(_, not_after)| {
            not_after.as_secs() > wall_secs().saturating_add(SVID_MARGIN.as_secs())
        })
}

fn list(ids: &[u8]) -> String {
    ids.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
}

pub(super) async fn start(plan: &Plan, procs: &mut Procs) -> Result<Ready, DevError> {
    let layout = &plan.layout;
    let n = plan.nodes;
    let t0 = now();
    let run_start = wall_secs();
    let mut cfgs = Vec::new();
    for i in 1..=n {
        let cfg =
            ServerFileConfig::load(&layout.server_toml(i)).map_err(|e| fail(e.to_string()))?;
        cfgs.push(cfg);
    }
    let cfg = |i: u8| &cfgs[usize::from(i) - 1];
    let has_state = |i: u8| layout.node_dir(i).join("raft").exists();
    let fresh = (1..=n).all(|i| !has_state(i));
    // Nodes that start by themselves, and nodes that need a server join token through them.
    let (first, joiners): (Vec<u8>, Vec<u8>) = if fresh {
        (vec![1], (2..=n).collect())
    } else {
        (1..=n).partition(|i| has_state(*i) && (n == 1 || svid_valid(layout, *i)))
    };
    if !fresh {
        let members = (1..=n).filter(|i| has_state(*i)).count();
        if first.len() * 2 <= members {
            let expired: Vec<u8> = (1..=n)
                .filter(|i| has_state(*i) && !first.contains(i))
                .collect();
            return Err(fail(format!(
                "cannot resume the plane in {dir}: the server SVIDs of node{s} {} expired while it was stopped (they last 1 h), and a node with an expired SVID can only rejoin through a running majority, which needs {} node(s) with a valid one; start over with `rm -r {dir}` and run sigil dev again",
                list(&expired),
                members / 2 + 1,
                s = if expired.len() == 1 { "" } else { "s" },
                dir = shell_quote(&layout.dir().display().to_string()),
            )));
        }
        if !joiners.is_empty() {
            say(&format!(
                "node{} {}: no valid server SVID (it expired while stopped, or the node never joined); {} with a fresh server join token once the others run",
                if joiners.len() == 1 { "" } else { "s" },
                list(&joiners),
                if joiners.len() == 1 { "it rejoins" } else { "each rejoins" },
            ));
        }
    }

    // The nodes that start by themselves, all at once.
    for &i in &first {
        procs.spawn(Which::Node(i))?;
    }
    for &i in &first {
        let ttl = cfg(i).ca_ttl;
        let (what, s) = if fresh {
            let s = wait_node(
                procs,
                i,
                &cfg(i).admin_socket,
                "become leader with a published CA",
                |s| s.leader_id == Some(u64::from(i)) && fresh_ca(s, i, ttl, run_start),
            )
            .await?;
            ("up", s)
        } else {
            let s = wait_node(
                procs,
                i,
                &cfg(i).admin_socket,
                "rejoin a leader and publish a new CA",
                |s| {
                    s.leader_id.is_some()
                        && member(s, i).is_some_and(|m| m.voter)
                        && fresh_ca(s, i, ttl, run_start)
                },
            )
            .await?;
            ("restarted", s)
        };
        say(&format!(
            "node {i} {what} ({}, CA published) in {}",
            role(&s, i),
            took(t0)
        ));
    }

    // The others, one at a time, each with a server join token from a running node.
    for &i in &joiners {
        let step = now();
        let seed = procs
            .first_running()
            .ok_or_else(|| fail("no server node is running to admit the others"))?;
        let seed_socket = cfg(seed).admin_socket.clone();
        let token = create_server_token(&seed_socket, u64::from(i)).await?;
        let mut seeds = Vec::new();
        if !token.seed_address.is_empty() {
            seeds.push(token.seed_address.clone());
        }
        for j in 1..=n {
            let addr = cfg(j).advertise.to_string();
            if j != i && procs.nodes[usize::from(j) - 1].is_some() && !seeds.contains(&addr) {
                seeds.push(addr);
            }
        }
        let path = layout.server_toml(i);
        let text = read_text(&path)?;
        let join = join_section(&token.token, &seeds, &token.bundle_sha256, seed);
        write_private(&path, &with_join(&text, &join))?;
        // The rewritten file must still load (a user may have edited it).
        ServerFileConfig::load(&path).map_err(|e| fail(e.to_string()))?;
        procs.spawn(Which::Node(i))?;
        let ttl = cfg(i).ca_ttl;
        wait_node(
            procs,
            i,
            &seed_socket,
            "join as a voter with a published CA",
            |s| member(s, i).is_some_and(|m| m.voter) && fresh_ca(s, i, ttl, run_start),
        )
        .await?;
        wait_node(
            procs,
            i,
            &cfg(i).admin_socket,
            "answer on its admin socket",
            |s| s.leader_id.is_some(),
        )
        .await?;
        say(&format!(
            "node {i} {} (voter, CA published) in {}",
            if fresh { "joined" } else { "rejoined" },
            took(step)
        ));
    }

    // The agent: pin the current bundle, start, wait for its attestation.
    let step = now();
    let seed = procs
        .first_running()
        .ok_or_else(|| fail("no server node is running"))?;
    let seed_socket = cfg(seed).admin_socket.clone();
    let hash = bundle_hash(&seed_socket).await?;
    let agent_toml = layout.agent_toml();
    let text = read_text(&agent_toml)?;
    write_private(&agent_toml, &with_pin(&text, &hash))?;
    let agent_cfg = AgentFileConfig::load(&agent_toml).map_err(|e| fail(e.to_string()))?;
    procs.spawn(Which::Agent)?;
    let agent_id = wait_agent(procs, &agent_cfg.admin_socket).await?;
    say(&format!(
        "agent attested as {agent_id} (x509pop) in {}",
        took(step)
    ));

    // The workload entry for this uid, once.
    let workload_id = format!("spiffe://{}/dev/uid/{}", plan.trust_domain, plan.uid);
    let created = ensure_entry(&seed_socket, &workload_id, &agent_id, plan.uid).await?;
    say(&format!(
        "workload entry {} {workload_id} (selector unix:uid:{}, parent the agent)",
        if created {
            "registered:"
        } else {
            "already registered:"
        },
        plan.uid
    ));

    // Until the agent serves it.
    let step = now();
    loop {
        if let Some(status) = procs.exited(Which::Agent) {
            return Err(procs.died(Which::Agent, status, "during start-up"));
        }
        if serves_svid(&agent_cfg.socket_path, &workload_id).await {
            break;
        }
        if step.elapsed() >= SVID_WAIT {
            return Err(fail(format!(
                "the agent did not serve an X.509-SVID for {workload_id} within {} s; its log: {}",
                SVID_WAIT.as_secs(),
                layout.agent_log().display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    say(&format!(
        "X.509-SVID for {workload_id} served on {} — everything up in {}",
        agent_cfg.socket_path.display(),
        took(t0)
    ));
    Ok(Ready {
        agent_id,
        workload_id,
        admin_socket: cfg(1).admin_socket.clone(),
        workload_socket: agent_cfg.socket_path,
    })
}

/// Waits for the agent's admin socket to report its SPIFFE ID (it serves that socket only once
/// attested).
async fn wait_agent(procs: &mut Procs, socket: &Path) -> Result<String, DevError> {
    let start = now();
    loop {
        if let Some(status) = procs.exited(Which::Agent) {
            return Err(procs.died(Which::Agent, status, "during start-up"));
        }
        let id = bounded(async {
            let mut c = crate::rt::agent_admin::connect(socket).await.ok()?;
            c.agent_health(pb::AgentHealthRequest {})
                .await
                .ok()
                .map(|r| r.into_inner().spiffe_id)
        })
        .await;
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            return Ok(id);
        }
        if start.elapsed() >= AGENT_WAIT {
            return Err(fail(format!(
                "the agent did not attest within {} s; its log: {}",
                AGENT_WAIT.as_secs(),
                procs.log_of(Which::Agent).display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
