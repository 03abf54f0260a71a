//! What the cluster's clients do: entry creates and deletes at a node, in the background and
//! recorded in the oracle; direct issues at a node; agents ticking, their workloads served.

use std::collections::BTreeSet;

use raft::replica::WriteError;
use rand::Rng;
use wire::{
    Command, EntryId, Env, KeyAlg, Outcome, RegistrationEntry, Response, Selector, SpiffeId,
};

use crate::agent::Links;
use crate::check::Delivered;

use super::{event, issuing_entry_id, now, World, SIM_AGENT};

impl World {
    /// Node `id` issues an X.509-SVID for the issuing entry; a success must chain to the bundle
    /// applied on that node at that moment (publish before use).
    pub fn issue(&mut self, id: u64) {
        self.observe_cut_off();
        let (Some(server), Some(env)) = (self.servers.get(&id), self.envs.get(&id)) else {
            return;
        };
        let key = match env.keys().generate(KeyAlg::EcP256) {
            Ok(k) => k,
            Err(e) => {
                self.violations.push(format!("key generation failed: {e}"));
                return;
            }
        };
        let agent: SpiffeId = SIM_AGENT.parse().expect("valid by construction");
        let node_bundle = server.bundle();
        let node_wall = env.wall();
        let entry = server
            .replica()
            .read(|a| a.state.entry(&issuing_entry_id()).cloned());
        match server.issue_x509(&agent, &issuing_entry_id(), key.public_key_der()) {
            Ok(svid) => {
                event(|| format!("node {id} issued an SVID until {:?}", svid.not_after));
                if let Some(entry) = entry {
                    let d = Delivered {
                        node: id,
                        entry,
                        cert_der: svid.cert_der,
                        at: now().duration_since(self.start),
                        node_wall,
                        node_bundle,
                    };
                    self.on_delivered(&d);
                }
            }
            Err(e) => {
                event(|| format!("node {id} refused to issue: {e}"));
                self.issue_refused += 1;
            }
        }
    }

    /// Every agent runs one tick, then its workloads are served and checked.
    pub async fn tick_agents(&mut self) {
        self.observe_cut_off();
        let mut agents = std::mem::take(&mut self.agents);
        for (i, agent) in agents.iter_mut().enumerate() {
            let links = Links {
                net: &self.net,
                services: &self.services,
                start: self.start,
                secrets: &self.secrets,
            };
            let report = agent.tick(&links).await;
            self.issue_refused += report.refused;
            if self.banned == Some(i) {
                for a in &report.answers {
                    self.ban_check
                        .on_answer(a.node, a.at, a.ban_applied, a.delivery);
                }
            }
            for d in &report.delivered {
                self.on_delivered(d);
            }
            let bundle = agent.cache().bundle();
            for w in &agent.workloads {
                self.workload_check.on_serve(&agent.serve(w, &bundle));
            }
        }
        self.agents = agents;
    }

    /// A fresh, valid entry with a seeded ID, parented by a random agent, for uid 0–3 (and
    /// sometimes gid 5): agents' workloads are uids 1 and 2, and uid 1 in group 5.
    pub fn new_entry(&mut self) -> RegistrationEntry {
        let bits: [u8; 16] = self.rng.gen();
        let id = EntryId::from_random(bits);
        let uid = self.rng.gen_range(0..4u32);
        let mut selectors: BTreeSet<Selector> = [format!("unix:uid:{uid}")
            .parse()
            .expect("valid by construction")]
        .into_iter()
        .collect();
        if self.rng.gen_bool(0.3) {
            selectors.insert("unix:gid:5".parse().expect("valid by construction"));
        }
        let parents = self.agents.len() + 1;
        let parent_id = match self.rng.gen_range(0..parents) {
            0 => SIM_AGENT.parse().expect("valid by construction"),
            i => self.agents[i - 1].spiffe_id.clone(),
        };
        let x509_svid_ttl_secs = match self.tiny_ttl_min {
            0 => 0,
            min => self.rng.gen_range(min..=15),
        };
        self.entry_parents.insert(id.clone(), parent_id.clone());
        let mut entry = RegistrationEntry::new(
            id.clone(),
            format!("spiffe://sim.test/w/{id}")
                .parse()
                .expect("valid by construction"),
            parent_id,
            selectors,
            0,
        );
        entry.x509_svid_ttl_secs = x509_svid_ttl_secs;
        entry
    }

    /// Writes `cmd` at node `id` and waits for the answer.
    pub async fn write(&self, id: u64, cmd: Command) -> Result<Response, WriteError> {
        match self.replica(id) {
            Some(r) => r.write(cmd).await,
            None => Err(WriteError::Stopped(format!("node {id} is down"))),
        }
    }

    /// Starts a create of a fresh entry at node `id` in the background, recording it in the
    /// oracle.
    pub fn spawn_create(&mut self, id: u64) {
        let entry = self.new_entry();
        let Some(r) = self.replica(id) else { return };
        let oracle = self.oracle.clone();
        oracle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .create_attempted
            .insert(entry.id.clone());
        #[allow(clippy::disallowed_methods)] // the simulated clients
        let task = tokio::task::spawn(async move {
            let eid = entry.id.clone();
            let result = r
                .write(Command::CreateEntries {
                    entries: vec![entry],
                })
                .await;
            event(|| format!("create {eid} at node {id}: {result:?}"));
            let mut o = oracle.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(Ok(Outcome::Created(rs))) if rs.iter().all(Result::is_ok) => {
                    o.create_acked.insert(eid);
                }
                Ok(_) => {}
                Err(_) => o.write_errors += 1,
            }
        });
        self.writes.push(task);
    }

    /// Starts a delete of a random attempted entry at node `id` in the background.
    pub fn spawn_delete(&mut self, id: u64) {
        let keep = issuing_entry_id();
        let candidates: Vec<EntryId> = self
            .oracle()
            .create_attempted
            .iter()
            .filter(|id| **id != keep)
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let victim = candidates[self.rng.gen_range(0..candidates.len())].clone();
        let Some(r) = self.replica(id) else { return };
        self.oracle().delete_attempted.insert(victim.clone());
        let oracle = self.oracle.clone();
        let acked_at = self.deletes_acked_at.clone();
        #[allow(clippy::disallowed_methods)] // the simulated clients
        let task = tokio::task::spawn(async move {
            let result = r
                .write(Command::DeleteEntries {
                    ids: vec![victim.clone()],
                })
                .await;
            let mut o = oracle.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(Ok(Outcome::Deleted { deleted: 1, .. })) => {
                    acked_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((victim.clone(), now()));
                    o.delete_acked.insert(victim);
                }
                Ok(_) => {}
                Err(_) => o.write_errors += 1,
            }
        });
        self.writes.push(task);
    }

    /// Waits for every write started so far to finish (each is bounded by the write timeout).
    pub async fn settle_writes(&mut self) {
        for task in std::mem::take(&mut self.writes) {
            let _ = task.await;
        }
    }
}
