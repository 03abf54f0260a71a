//! The liveness phase: faults off and every node back, the cluster must converge (one leader,
//! equal replicas) and then settle (every node can issue, every live agent's workloads hold
//! SVIDs that verify against the converged bundle) in bounded virtual time.

use std::time::Duration;

use raft::State;
use wire::RegistrationEntry;

use crate::net::NetConfig;

use super::{event, now, World, SIM_SETTLE_MAX};

impl World {
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

    /// Liveness after convergence: within [`SIM_SETTLE_MAX`], every node can issue and every
    /// workload of a live agent holds an SVID, for each entry it is entitled to, that verifies
    /// against the converged bundle.
    pub(super) async fn settle(&mut self) -> Result<(), String> {
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
}
