//! The swarm's hostile actors (issue 20): token replayers, entitlement probers, copied agent
//! SVIDs, a banned agent that keeps asking, and a removed server that keeps proposing. The seed
//! picks which of them a run has ([`Hostility::swarm`]); when they act comes from the world's
//! own hostile RNG, so the rest of the swarm draws what it drew before. Every request goes
//! through the production [`node::service::NodeService::handle`] over the simulated network
//! ([`crate::agent::call_node`]). What they may and may not get is in
//! [`crate::check::hostile`], [`crate::check::bans`] and [`crate::check::removed`].

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use wire::api::{ApiRequest, ApiResponse, SignX509};
use wire::{Command, EntryId, Env, KeyAlg, Outcome, PeerId, ServerRecord, SpiffeId};

use super::{event, now, World, SIM_AGENT_TTL, SIM_SKEW_MAX_MS, SIM_STALENESS_MAX};
use crate::agent::{call_node, Links, AGENT_PEER_BASE};

/// The hostile actors' peer IDs on the network (never partitioned: they reach every node).
const REPLAYER_PEER: PeerId = AGENT_PEER_BASE + 90;
const COPIER_PEER: PeerId = AGENT_PEER_BASE + 91;
const PROBER_KEYS_PEER: PeerId = AGENT_PEER_BASE + 92;

/// Which hostile actors a run has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hostility {
    /// Someone replays an honest agent's used join token with another key.
    pub replay: bool,
    /// Honest agents ask for other agents' entries.
    pub probe: bool,
    /// Someone copies honest agents' SVIDs and tries them later.
    pub copy: bool,
    /// The world bans an honest agent, which keeps asking.
    pub ban: bool,
    /// The world removes a follower, which keeps running and proposing.
    pub remove: bool,
}

impl Hostility {
    /// A random mix drawn from `rng`.
    pub fn swarm(rng: &mut ChaCha20Rng) -> Hostility {
        Hostility {
            replay: rng.gen_bool(0.5),
            probe: rng.gen_bool(0.5),
            copy: rng.gen_bool(0.5),
            ban: rng.gen_bool(0.3),
            remove: rng.gen_bool(0.3),
        }
    }
}

/// What the hostile actors of a run tried and got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostileCounts {
    /// Replayed-token attestations.
    pub replays: u64,
    /// Entitlement probes (one per entry).
    pub probes: u64,
    /// Requests with copied agent SVIDs.
    pub copy_tries: u64,
    /// Renewals with a copy accepted within their bound (before the record, or in the grace).
    pub copy_renewed_in_bound: u64,
    /// `Sync`/`SignX509` with an unexpired copy, served by design.
    pub copy_served: u64,
    /// Requests of the banned agent after the ban was proposed.
    pub ban_tries: u64,
    /// Of them, served by a node that had not applied the ban (within the bound).
    pub ban_served_before: u64,
    /// Proposals of the removed node after its removal.
    pub removed_proposals: u64,
    /// Hostile requests and proposals refused (or lost), all kinds.
    pub refused: u64,
}

/// A copy of an honest agent's SVID.
#[derive(Debug)]
pub(super) struct HeldCopy {
    /// Index in the copy checker.
    index: usize,
    agent: SpiffeId,
    /// The agent's index in the world.
    agent_index: usize,
    chain: Vec<Vec<u8>>,
    public_key_der: Vec<u8>,
    /// The copy's serial.
    serial: String,
}

impl World {
    fn since_start(&self) -> Duration {
        now().duration_since(self.start)
    }

    fn links(&self) -> Links<'_> {
        Links {
            net: &self.net,
            services: &self.services,
            start: self.start,
            secrets: &self.secrets,
        }
    }

    /// A public key of a hostile actor's own.
    fn hostile_key(&mut self, peer: PeerId) -> Option<Vec<u8>> {
        let env = self.env(peer);
        self.secrets.watch(env.clone());
        let key = env.keys().generate(KeyAlg::EcP256).ok()?;
        Some(key.public_key_der().to_vec())
    }

    /// A running member's ID with a node API, drawn from the hostile RNG.
    fn hostile_node(&mut self) -> Option<u64> {
        let nodes: Vec<u64> = self.services.keys().copied().collect();
        if nodes.is_empty() {
            return None;
        }
        Some(nodes[self.hostile_rng.gen_range(0..nodes.len())])
    }

    /// One step's hostile actions (a few per run).
    pub(super) async fn hostile_step(&mut self, h: &Hostility) {
        let rolls: [f64; 5] = std::array::from_fn(|_| self.hostile_rng.gen());
        self.reconcile_membership().await;
        if h.replay && rolls[0] < 0.012 {
            self.replay_token().await;
        }
        if h.probe && rolls[1] < 0.015 {
            self.probe_entitlements().await;
        }
        if h.copy {
            if rolls[2] < 0.01 {
                self.copy_agent_svid();
            } else if rolls[2] > 0.96 {
                self.use_copy().await;
            }
        }
        if h.ban {
            if self.banned.is_none() && rolls[3] < 0.01 {
                self.ban_agent().await;
            } else if self.banned.is_some() && rolls[3] < 0.06 {
                self.banned_reattests().await;
            }
        }
        if h.remove && self.nodes.len() >= 3 {
            if !self.removal_tried && rolls[4] < 0.008 {
                self.remove_server().await;
            } else if self.removal_check.node.is_some() && rolls[4] < 0.06 {
                self.removed_proposes();
            }
        }
    }

    /// After an honest agent attested, someone presents its token with another key: on one
    /// node, or raced on two nodes at once.
    async fn replay_token(&mut self) {
        let attested: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].attested && self.agents[*i].token().is_some())
            .collect();
        if attested.is_empty() {
            return;
        }
        let i = attested[self.hostile_rng.gen_range(0..attested.len())];
        let (Some(key), Some(a)) = (self.hostile_key(REPLAYER_PEER), self.hostile_node()) else {
            return;
        };
        let Some(token) = self.agents[i].token().map(str::to_owned) else {
            return;
        };
        let b = self.hostile_node().filter(|b| *b != a);
        let raced = self.hostile_rng.gen_bool(0.5);
        let agent = self.agents[i].spiffe_id.clone();
        let request = ApiRequest::AttestJoinToken {
            token,
            public_key_der: key,
        };
        let links = self.links();
        let answers = match b.filter(|_| raced) {
            Some(b) => {
                let (x, y) = tokio::join!(
                    call_node(&links, REPLAYER_PEER, &agent, &[], a, request.clone()),
                    call_node(&links, REPLAYER_PEER, &agent, &[], b, request)
                );
                vec![(a, x), (b, y)]
            }
            None => vec![(
                a,
                call_node(&links, REPLAYER_PEER, &agent, &[], a, request).await,
            )],
        };
        for (node, answer) in answers {
            event(|| format!("replayed token of {agent} at node {node}: {answer:?}"));
            if let Some((answer, handled)) = answer {
                let got = matches!(answer, ApiResponse::AgentSvid { .. });
                self.hostile_check.on_replay(&agent, node, handled.at, got);
            }
        }
    }

    /// An attested agent asks for SVIDs (X.509 and JWT) of entries that are not its own.
    async fn probe_entitlements(&mut self) {
        let alive: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].alive() && self.banned != Some(*i))
            .collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.hostile_rng.gen_range(0..alive.len())];
        let agent = self.agents[i].spiffe_id.clone();
        let others: Vec<(EntryId, SpiffeId)> = self
            .entry_parents
            .iter()
            .filter(|(_, parent)| **parent != agent)
            .map(|(e, p)| (e.clone(), p.clone()))
            .collect();
        if others.is_empty() {
            return;
        }
        let mut targets = Vec::new();
        for _ in 0..3 {
            targets.push(others[self.hostile_rng.gen_range(0..others.len())].clone());
        }
        let Some(node) = self.hostile_node() else {
            return;
        };
        let mut requests = Vec::new();
        for (entry_id, _) in &targets {
            let Some(public_key_der) = self.hostile_key(PROBER_KEYS_PEER) else {
                return;
            };
            requests.push(SignX509 {
                entry_id: entry_id.clone(),
                public_key_der,
            });
        }
        let chain = self.agents[i].chain().to_vec();
        let peer = self.agents[i].peer;
        let links = self.links();
        let x509 = call_node(
            &links,
            peer,
            &agent,
            &chain,
            node,
            ApiRequest::SignX509 { requests },
        )
        .await;
        let jwt_request = ApiRequest::MintJwt {
            entry_id: targets[0].0.clone(),
            audience: vec!["sim-probe".into()],
        };
        let jwt = call_node(&links, peer, &agent, &chain, node, jwt_request).await;
        if let Some((answer, handled)) = x509 {
            event(|| format!("probe of {agent} at node {node}: {answer:?}"));
            let results: Vec<bool> = match answer {
                ApiResponse::X509(results) => results.iter().map(Result::is_ok).collect(),
                _ => vec![false; targets.len()],
            };
            for ((entry, parent), got) in targets.iter().zip(results) {
                self.hostile_check.on_probe(
                    &agent,
                    node,
                    handled.at,
                    "X.509-SVID",
                    (entry, parent),
                    got,
                );
            }
        }
        if let Some((answer, handled)) = jwt {
            let got = matches!(answer, ApiResponse::Jwt { .. });
            let (entry, parent) = &targets[0];
            self.hostile_check
                .on_probe(&agent, node, handled.at, "JWT-SVID", (entry, parent), got);
        }
    }

    /// Someone copies an attested agent's current SVID chain (it will present the agent's
    /// public key with it).
    fn copy_agent_svid(&mut self) {
        let alive: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].alive())
            .collect();
        if alive.is_empty() || self.copies.len() >= 3 {
            return;
        }
        let i = alive[self.hostile_rng.gen_range(0..alive.len())];
        let a = &self.agents[i];
        let chain = a.chain().to_vec();
        let Some((serial, not_after)) = chain
            .first()
            .and_then(|leaf| attest::x509::serial_and_not_after(leaf).ok())
        else {
            return;
        };
        let earlier: BTreeSet<String> = a
            .serials()
            .iter()
            .take_while(|s| **s != serial)
            .cloned()
            .collect();
        let agent = a.spiffe_id.clone();
        let public_key_der = a.public_key_der();
        event(|| format!("copied {agent}'s SVID {serial}"));
        let index = self
            .copy_check
            .on_copy(agent.clone(), serial.clone(), not_after, earlier);
        self.copies.push(HeldCopy {
            index,
            agent,
            agent_index: i,
            chain,
            public_key_der,
            serial,
        });
    }

    /// The copier tries a copy: renewal (once the agent renewed past it), sync or signing.
    async fn use_copy(&mut self) {
        if self.copies.is_empty() {
            return;
        }
        let c = self.hostile_rng.gen_range(0..self.copies.len());
        let Some(node) = self.hostile_node() else {
            return;
        };
        let kind = self.hostile_rng.gen_range(0..5);
        let copy = &self.copies[c];
        let renewed_past = self.agents[copy.agent_index]
            .serials()
            .last()
            .is_some_and(|s| *s != copy.serial);
        let request = match kind {
            0..=2 if renewed_past => ApiRequest::RenewAgent {
                public_key_der: copy.public_key_der.clone(),
            },
            0..=2 => return,
            3 => ApiRequest::Sync,
            _ => {
                let own = self
                    .entry_parents
                    .iter()
                    .find(|(_, p)| **p == copy.agent)
                    .map(|(e, _)| e.clone());
                let Some(entry_id) = own else { return };
                let (agent, chain) = (copy.agent.clone(), copy.chain.clone());
                let Some(public_key_der) = self.hostile_key(COPIER_PEER) else {
                    return;
                };
                let request = ApiRequest::SignX509 {
                    requests: vec![SignX509 {
                        entry_id,
                        public_key_der,
                    }],
                };
                let links = self.links();
                let answer = call_node(&links, COPIER_PEER, &agent, &chain, node, request).await;
                let served = matches!(&answer, Some((ApiResponse::X509(r), _)) if r.iter().any(Result::is_ok));
                self.copy_check.on_other(served);
                return;
            }
        };
        let (agent, chain, index) = (copy.agent.clone(), copy.chain.clone(), copy.index);
        let renewal = matches!(request, ApiRequest::RenewAgent { .. });
        let links = self.links();
        let answer = call_node(&links, COPIER_PEER, &agent, &chain, node, request).await;
        event(|| format!("copy of {agent} at node {node}: {answer:?}"));
        let Some((answer, handled)) = answer else {
            return;
        };
        if renewal {
            let renewed = matches!(answer, ApiResponse::AgentSvid { .. });
            self.copy_check
                .on_renew(index, node, handled.at, handled.record.as_ref(), renewed);
        } else {
            self.copy_check
                .on_other(matches!(answer, ApiResponse::View(_)));
        }
    }

    /// The world bans an attested agent through a random member; the agent keeps going.
    async fn ban_agent(&mut self) {
        let attested: Vec<usize> = (0..self.agents.len())
            .filter(|i| self.agents[*i].attested)
            .collect();
        if attested.is_empty() {
            return;
        }
        let i = attested[self.hostile_rng.gen_range(0..attested.len())];
        let Some(node) = self.hostile_node() else {
            return;
        };
        let spiffe_id = self.agents[i].spiffe_id.clone();
        self.banned = Some(i);
        event(|| format!("ban {spiffe_id} through node {node}"));
        let result = self
            .write(
                node,
                Command::SetAgentBanned {
                    spiffe_id,
                    banned: true,
                },
            )
            .await;
        event(|| format!("ban: {result:?}"));
        if matches!(result, Ok(Ok(_))) {
            let at = self.since_start();
            self.ban_check.on_ban_acked(at);
        }
    }

    /// The banned agent attests again with its token or certificate (and its own key).
    async fn banned_reattests(&mut self) {
        let Some(i) = self.banned else { return };
        let mut agents = std::mem::take(&mut self.agents);
        let links = self.links();
        let answer = match agents.get_mut(i) {
            Some(a) => a.reattest(&links).await,
            None => None,
        };
        self.agents = agents;
        if let Some((node, handled, got)) = answer {
            let banned = handled.record.as_ref().is_some_and(|r| r.banned);
            let delivery = got.then_some(crate::check::bans::Delivery::AgentSvid);
            self.ban_check.on_answer(node, handled.at, banned, delivery);
        }
    }

    /// Registers every server, then removes a running follower (it keeps running).
    async fn remove_server(&mut self) {
        let Some(leader) = self.leader() else { return };
        let followers: Vec<u64> = self
            .services
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect();
        if followers.is_empty() {
            return;
        }
        let victim = followers[self.hostile_rng.gen_range(0..followers.len())];
        // The simulator does not run the shell that registers servers.
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            let server = ServerRecord {
                node_id: id,
                addr: format!("sim-{id}"),
            };
            match self.write(leader, Command::RegisterServer { server }).await {
                Ok(Ok(_)) => {}
                other => {
                    event(|| format!("register server {id}: {other:?}"));
                    return;
                }
            }
        }
        self.removal_tried = true;
        let Some(env) = self.envs.get(&leader) else {
            return;
        };
        let at = env.wall();
        // Every SVID the node signed ends before its CA, and it publishes no CA once removed:
        // its SVIDs end within the CA lifetime (the agent TTL is shorter or capped), and the
        // clocks of the nodes that prune are at most two skews off.
        let longest = self.key_ttl.max(SIM_AGENT_TTL)
            + Duration::from_millis(2 * SIM_SKEW_MAX_MS.unsigned_abs());
        let prune_after = at.saturating_add(SIM_STALENESS_MAX + longest);
        let cmd = Command::RemoveServer {
            node_id: victim,
            at,
            prune_after,
            compromised: false,
        };
        event(|| format!("remove server {victim} (prune after {prune_after:?})"));
        let result = self.write(leader, cmd).await;
        event(|| format!("remove server {victim}: {result:?}"));
        match result {
            Ok(Ok(Outcome::Done)) => {
                let term = self.highest_term();
                let at = self.since_start();
                self.removal_check.on_removed(victim, at, term);
                self.mark_removed(victim);
            }
            Ok(_) => {}
            // Not acknowledged: it may still commit (seen in `observe_hostile`).
            Err(_) => self.removal_pending = Some(victim),
        }
    }

    /// Honest agents and clients stop using the removed node (it keeps running), and the
    /// leader takes it out of Raft's voting membership.
    fn mark_removed(&mut self, victim: u64) {
        if let Some(service) = self.services.remove(&victim) {
            self.removed_service = Some(service);
        }
        self.membership_pending = Some(victim);
    }

    /// What the production shell's membership reconciler does for a removed server
    /// (`node::rt::serve`, `MembershipStep::RemoveVoter`): the leader removes it from Raft's
    /// membership (`ChangeMembers::RemoveVoters`, not kept as a learner). Tried once per call,
    /// for at most 2 s (virtual), until the leader's membership no longer lists it.
    pub(super) async fn reconcile_membership(&mut self) {
        let Some(victim) = self.membership_pending else {
            return;
        };
        let Some(leader) = self.leader() else { return };
        let Some(r) = self.replica(leader) else {
            return;
        };
        let listed = |r: &raft::replica::Replica<crate::net::SimEndpoint>| {
            let m = r.raft().metrics();
            let m = m.borrow();
            m.membership_config.membership().get_node(&victim).is_some()
        };
        if !listed(&r) {
            self.membership_pending = None;
            return;
        }
        let change = r.raft().change_membership(
            openraft::ChangeMembers::RemoveVoters([victim].into_iter().collect()),
            false,
        );
        let result = tokio::time::timeout(Duration::from_secs(2), change).await;
        event(|| format!("membership: remove voter {victim} at leader {leader}: {result:?}"));
        if !listed(&r) {
            self.membership_pending = None;
        }
    }

    /// The highest term any running node has.
    fn highest_term(&self) -> u64 {
        self.live()
            .into_iter()
            .filter_map(|id| self.replica(id))
            .map(|r| r.raft().metrics().borrow().current_term)
            .max()
            .unwrap_or(0)
    }

    /// The removed node proposes an entry create (in the background).
    fn removed_proposes(&mut self) {
        let Some(node) = self.removal_check.node else {
            return;
        };
        let Some(r) = self.replica(node) else { return };
        let entry = self.new_entry();
        let id = entry.id.clone();
        self.removal_check
            .on_proposal(id.clone(), self.since_start());
        let answers = self.removal_answers.clone();
        #[allow(clippy::disallowed_methods)] // the simulated removed node's client
        let task = tokio::task::spawn(async move {
            let result = r
                .write(Command::CreateEntries {
                    entries: vec![entry],
                })
                .await;
            event(|| format!("removed node {node} proposed {id}: {result:?}"));
            answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                // Committed *and applied*: a refused command (`Ok(Err(_))`, e.g. "server
                // node N was removed") is in the log but changed nothing (seed 808046 was
                // reported for one).
                .push((id, matches!(result, Ok(Ok(_)))));
        });
        self.writes.push(task);
    }

    /// Samples what the hostile checkers need from every running node: the ban, the records of
    /// copied agents, a pending removal, leaders; and takes the removed node's answers.
    pub(super) fn observe_hostile(&mut self) {
        let at = self.since_start();
        let banned = self
            .banned
            .and_then(|i| self.agents.get(i))
            .map(|a| a.spiffe_id.clone());
        let copied = self.copy_check.agents();
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            if let Some(agent) = &banned {
                let b = r.read(|a| a.state.agent(agent).is_some_and(|rec| rec.banned));
                self.ban_check.observe(id, b, at);
            }
            for (c, agent) in &copied {
                let record = r.read(|a| a.state.agent(agent).cloned());
                self.copy_check.observe(*c, id, record.as_ref(), at);
            }
            if let Some(victim) = self.removal_pending.filter(|v| *v != id) {
                if r.read(|a| a.state.removed_servers().contains_key(&victim)) {
                    self.removal_pending = None;
                    let term = self.highest_term();
                    self.removal_check.on_removed(victim, at, term);
                    self.mark_removed(victim);
                }
            }
            let m = r.raft().metrics().borrow().clone();
            let knows = r.read(|a| a.state.removed_servers().contains_key(&id));
            self.removal_check
                .on_removed_node(id, m.current_term, knows);
            if m.state == ServerState::Leader {
                self.removal_check.on_leader(id, m.current_term, at);
            }
        }
        let answers = std::mem::take(
            &mut *self
                .removal_answers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (entry, committed) in answers {
            self.removal_check.on_proposal_answer(&entry, committed);
        }
    }

    /// After convergence: no member holds an entry the removed node proposed.
    pub(super) fn check_removed_final(&mut self) {
        self.observe_hostile();
        for id in self.members() {
            let Some(r) = self.replica(id) else { continue };
            self.removal_check
                .check_final(id, |e| r.read(|a| a.state.entry(e).is_some()));
        }
    }

    /// What the hostile actors tried and got.
    pub fn hostile_counts(&self) -> HostileCounts {
        HostileCounts {
            replays: self.hostile_check.replays,
            probes: self.hostile_check.probes,
            copy_tries: self.copy_check.tried,
            copy_renewed_in_bound: self.copy_check.renewed_in_bound,
            copy_served: self.copy_check.served,
            ban_tries: self.ban_check.tried,
            ban_served_before: self.ban_check.served_before_ban,
            removed_proposals: self.removal_check.proposals() as u64,
            refused: self.hostile_check.refused
                + self.copy_check.refused
                + self.ban_check.refused
                + self.removal_check.refused,
        }
    }
}
