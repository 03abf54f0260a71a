//! What `sigil dev` prints once the plane is up: where it runs, where its logs and configs are,
//! and commands to try next.

use std::path::Path;

use super::plan::Plan;
use super::start::Ready;
use super::{say, shell_quote};

/// How to run this binary from a shell: `sigil` when that is what PATH finds, else its path.
fn command_name(exe: &Path) -> String {
    let ours = std::fs::canonicalize(exe).ok();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let candidate = d.join("sigil");
            if candidate.is_file() {
                if ours.is_some() && std::fs::canonicalize(&candidate).ok() == ours {
                    return "sigil".to_owned();
                }
                break;
            }
        }
    }
    shell_quote(&exe.display().to_string())
}

pub(super) fn print_next_steps(plan: &Plan, ready: &Ready, exe: &Path) {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let sigil = command_name(exe);
    let dir = plan.layout.dir();
    let n = plan.nodes;
    say("");
    say(&format!(
        "sigil dev is running trust domain {} in {}: {n} server node{} and an agent, each its own process.",
        plan.trust_domain,
        dir.display(),
        if n == 1 { "" } else { "s" }
    ));
    say(&format!(
        "Logs: {}/node-<i>/log and {}/agent/log; configs: node-<i>/server.toml, agent/agent.toml.",
        dir.display(),
        dir.display()
    ));
    say("Try, in another shell:");
    say("");
    say(&format!(
        "export SPIFFE_ENDPOINT_SOCKET={}",
        shell_quote(&format!("unix://{}", ready.workload_socket.display()))
    ));
    say(&format!("{sigil} api fetch x509"));
    say(&format!("{sigil} api fetch jwt --audience demo"));
    say(&format!(
        "{sigil} entry create --admin-socket {} --spiffe-id spiffe://{}/demo --parent-id {} --selector unix:uid:{}",
        q(&ready.admin_socket),
        plan.trust_domain,
        ready.agent_id,
        plan.uid
    ));
    say(&format!(
        "{sigil} cluster status --admin-socket {}",
        q(&ready.admin_socket)
    ));
    if n > 1 {
        say(&format!(
            "kill $(cat {})   # watch the cluster carry on",
            q(&plan.layout.node_pid(2))
        ));
    }
    say("");
    say(&format!(
        "Your processes (uid {}) get {}. Ctrl-C stops everything; running sigil dev again on {} resumes this trust domain.",
        plan.uid,
        ready.workload_id,
        dir.display()
    ));
}
