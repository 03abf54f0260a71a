//! The replicated state and its pure transition function [`apply`].
//!
//! `apply(&mut State, Command) -> Response` is deterministic (no clock, no RNG: wall time travels
//! inside commands) and total: a bad command is a typed [`CommandError`] that leaves the state
//! untouched, never a panic and never a half-applied change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use wire::command::{BATCH_ENTRIES_MAX, BATCH_RENEWALS_MAX};
use wire::{
    AgentRecord, AgentRenewal, Authority, AuthorityKey, AuthorityState, Bundle, Command,
    CommandError, EntryId, JoinToken, Outcome, Proposal, ProposalId, RegistrationEntry,
    RemovedServer, Response, Selector, ServerRecord, SpiffeId, TokenPurpose, TrustDomain, UnixTime,
};

/// Most registration entries the state holds.
pub const ENTRIES_MAX: usize = 1_000_000;
/// Most join tokens (used or not) the state holds.
pub const JOIN_TOKENS_MAX: usize = 100_000;
/// Most agents the state holds.
pub const AGENTS_MAX: usize = 1_000_000;
/// Most authorities in the bundle (N nodes × a few keys each).
pub const AUTHORITIES_MAX: usize = 256;
/// Most server nodes (Raft voters stay few; this bounds the record, not the quorum).
pub const SERVERS_MAX: usize = 9;
/// Longest server address (`host:port`).
pub const SERVER_ADDR_MAX: usize = 255;
/// Most removed server nodes remembered (their IDs are never admitted again).
pub const REMOVED_SERVERS_MAX: usize = 10_000;
/// Most federated trust domains.
pub const FEDERATED_MAX: usize = 1024;
/// How many recent proposals the state remembers (with their responses) to apply each at most
/// once; a proposal retried after this many others is applied again.
pub const PROPOSALS_REMEMBERED: usize = 10_000;

/// An authority and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRecord {
    /// The public half.
    pub authority: Authority,
    /// Published, active or retired.
    pub state: AuthorityState,
}

/// Everything Raft replicates. The indexes are derived and rebuilt after a snapshot loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    entries: BTreeMap<EntryId, RegistrationEntry>,
    join_tokens: BTreeMap<String, JoinToken>,
    agents: BTreeMap<SpiffeId, AgentRecord>,
    authorities: BTreeMap<String, AuthorityRecord>,
    bundle_sequence: u64,
    federated: BTreeMap<TrustDomain, Bundle>,
    /// The desired server membership (empty until the bootstrap node registers itself).
    servers: BTreeMap<u64, ServerRecord>,
    /// Server nodes removed from the cluster, by node ID.
    removed_servers: BTreeMap<u64, RemovedServer>,
    /// Recently applied proposals and their responses, oldest first in `recent_order`.
    recent: BTreeMap<ProposalId, Response>,
    recent_order: VecDeque<ProposalId>,
    #[serde(skip)]
    by_parent: BTreeMap<SpiffeId, BTreeSet<EntryId>>,
    #[serde(skip)]
    by_selector: BTreeMap<Selector, BTreeSet<EntryId>>,
}

fn not_found(what: &str, id: impl std::fmt::Display) -> CommandError {
    CommandError::NotFound(format!("{what} {id}"))
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Rebuilds the derived indexes (after deserializing a snapshot).
    pub fn rebuild_indexes(&mut self) {
        self.by_parent.clear();
        self.by_selector.clear();
        let entries: Vec<RegistrationEntry> = self.entries.values().cloned().collect();
        for e in &entries {
            self.index(e);
        }
    }

    fn index(&mut self, e: &RegistrationEntry) {
        self.by_parent
            .entry(e.parent_id.clone())
            .or_default()
            .insert(e.id.clone());
        for s in &e.selectors {
            self.by_selector
                .entry(s.clone())
                .or_default()
                .insert(e.id.clone());
        }
    }

    fn unindex(&mut self, e: &RegistrationEntry) {
        if let Some(set) = self.by_parent.get_mut(&e.parent_id) {
            set.remove(&e.id);
            if set.is_empty() {
                self.by_parent.remove(&e.parent_id);
            }
        }
        for s in &e.selectors {
            if let Some(set) = self.by_selector.get_mut(s) {
                set.remove(&e.id);
                if set.is_empty() {
                    self.by_selector.remove(s);
                }
            }
        }
    }

    /// One entry by ID.
    pub fn entry(&self, id: &EntryId) -> Option<&RegistrationEntry> {
        self.entries.get(id)
    }

    /// All entries, in ID order.
    pub fn entries(&self) -> impl Iterator<Item = &RegistrationEntry> {
        self.entries.values()
    }

    /// Entries whose parent is `parent`.
    pub fn entries_by_parent(&self, parent: &SpiffeId) -> Vec<&RegistrationEntry> {
        self.by_parent
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id))
            .collect()
    }

    /// Entries that carry `selector`.
    pub fn entries_by_selector(&self, selector: &Selector) -> Vec<&RegistrationEntry> {
        self.by_selector
            .get(selector)
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id))
            .collect()
    }

    /// A join token by hash.
    pub fn join_token(&self, token_sha256: &str) -> Option<&JoinToken> {
        self.join_tokens.get(token_sha256)
    }

    /// Join tokens in hash order, starting after `after` (a page's last hash; `""`: from the
    /// start).
    pub fn join_tokens_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a JoinToken> {
        use std::ops::Bound;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_string())
        };
        self.join_tokens
            .range((start, Bound::Unbounded))
            .map(|(_, t)| t)
    }

    /// Join tokens in hash order from `first` (inclusive).
    pub fn join_tokens_from<'a>(&'a self, first: &str) -> impl Iterator<Item = &'a JoinToken> {
        self.join_tokens.range(first.to_string()..).map(|(_, t)| t)
    }

    /// How many join tokens (used or not) the state holds.
    pub fn join_token_count(&self) -> usize {
        self.join_tokens.len()
    }

    /// An agent by ID.
    pub fn agent(&self, id: &SpiffeId) -> Option<&AgentRecord> {
        self.agents.get(id)
    }

    /// Agents in ID order, starting after `after` (`None`: from the start).
    pub fn agents_after<'a>(
        &'a self,
        after: Option<&SpiffeId>,
    ) -> impl Iterator<Item = &'a AgentRecord> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        self.agents.range((start, Bound::Unbounded)).map(|(_, a)| a)
    }

    /// How many agents the state holds.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Server nodes removed from the cluster (their IDs are never admitted again).
    pub fn removed_servers(&self) -> &BTreeMap<u64, RemovedServer> {
        &self.removed_servers
    }

    /// The smallest node ID above every member, removed node and ID a server token is bound
    /// to: what `sigil token generate --server` assigns when no ID is given.
    pub fn next_server_id(&self) -> u64 {
        let members = self.servers.keys().copied();
        let removed = self.removed_servers.keys().copied();
        let bound = self.join_tokens.values().filter_map(|t| t.node_id);
        members
            .chain(removed)
            .chain(bound)
            .max()
            .map_or(1, |m| m.saturating_add(1))
    }

    /// Every authority, by ID.
    pub fn authorities(&self) -> &BTreeMap<String, AuthorityRecord> {
        &self.authorities
    }

    /// The server nodes registered as members, by node ID.
    pub fn servers(&self) -> &BTreeMap<u64, ServerRecord> {
        &self.servers
    }

    /// The bundle's `spiffe_sequence`.
    pub fn bundle_sequence(&self) -> u64 {
        self.bundle_sequence
    }

    /// The trust bundle: every published, active or retired authority.
    pub fn bundle(&self, refresh_hint_secs: u64) -> Bundle {
        wire::bundle_of(
            self.authorities.values().map(|r| &r.authority),
            self.bundle_sequence,
            refresh_hint_secs,
        )
    }

    /// Federated bundles by trust domain.
    pub fn federated(&self) -> &BTreeMap<TrustDomain, Bundle> {
        &self.federated
    }

    fn create_entry(
        &mut self,
        mut e: RegistrationEntry,
    ) -> Result<RegistrationEntry, CommandError> {
        e.validate()
            .map_err(|err| CommandError::Invalid(err.to_string()))?;
        if self.entries.contains_key(&e.id) {
            return Err(CommandError::AlreadyExists(format!("entry {}", e.id)));
        }
        // SPIRE refuses exact duplicates (same ID, parent and selectors).
        let duplicate = self
            .entries_by_parent(&e.parent_id)
            .into_iter()
            .any(|o| o.spiffe_id == e.spiffe_id && o.selectors == e.selectors);
        if duplicate {
            return Err(CommandError::AlreadyExists(format!(
                "an entry for {} with the same parent and selectors",
                e.spiffe_id
            )));
        }
        if self.entries.len() >= ENTRIES_MAX {
            return Err(CommandError::Limit(format!(
                "at most {ENTRIES_MAX} entries"
            )));
        }
        e.revision = 0;
        self.index(&e);
        self.entries.insert(e.id.clone(), e.clone());
        Ok(e)
    }

    fn apply_authority(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::PublishAuthority { authority, at } => {
                authority
                    .validate()
                    .map_err(|e| CommandError::Invalid(e.to_string()))?;
                if authority.not_after <= at {
                    return Err(CommandError::Invalid(format!(
                        "authority {} has already expired",
                        authority.id
                    )));
                }
                if self.removed_servers.contains_key(&authority.node_id) {
                    return Err(CommandError::Invalid(format!(
                        "server node {} was removed from the cluster and publishes nothing",
                        authority.node_id
                    )));
                }
                if self.authorities.contains_key(&authority.id) {
                    return Err(CommandError::AlreadyExists(format!(
                        "authority {}",
                        authority.id
                    )));
                }
                if self.authorities.len() >= AUTHORITIES_MAX {
                    return Err(CommandError::Limit(format!(
                        "at most {AUTHORITIES_MAX} authorities"
                    )));
                }
                self.authorities.insert(
                    authority.id.clone(),
                    AuthorityRecord {
                        authority,
                        state: AuthorityState::Published,
                    },
                );
                self.bundle_sequence += 1;
                Ok(Outcome::BundleSequence(self.bundle_sequence))
            }
            Command::ActivateAuthority { id } => {
                let rec = self
                    .authorities
                    .get(&id)
                    .ok_or_else(|| not_found("authority", &id))?;
                if rec.state == AuthorityState::Retired {
                    return Err(CommandError::Invalid(format!(
                        "authority {id} is retired and cannot be activated again"
                    )));
                }
                let node = rec.authority.node_id;
                let is_jwt = matches!(rec.authority.key, AuthorityKey::Jwt(_));
                for (other_id, other) in self.authorities.iter_mut() {
                    let same_kind = matches!(other.authority.key, AuthorityKey::Jwt(_)) == is_jwt;
                    if *other_id != id
                        && other.authority.node_id == node
                        && same_kind
                        && other.state == AuthorityState::Active
                    {
                        other.state = AuthorityState::Retired;
                    }
                }
                if let Some(rec) = self.authorities.get_mut(&id) {
                    rec.state = AuthorityState::Active;
                }
                Ok(Outcome::BundleSequence(self.bundle_sequence))
            }
            Command::PruneAuthority { id, at } => {
                let rec = self
                    .authorities
                    .get(&id)
                    .ok_or_else(|| not_found("authority", &id))?;
                // Every SVID it signed has NotAfter ≤ the authority's NotAfter; a removed node's
                // authorities go once every SVID it may have signed has expired.
                let removed_done = self
                    .removed_servers
                    .get(&rec.authority.node_id)
                    .is_some_and(|r| r.prune_after <= at);
                if rec.authority.not_after > at && !removed_done {
                    return Err(CommandError::AuthorityLive(id));
                }
                self.authorities.remove(&id);
                self.bundle_sequence += 1;
                Ok(Outcome::BundleSequence(self.bundle_sequence))
            }
            other => Err(CommandError::Invalid(format!(
                "not an authority command: {other:?}"
            ))),
        }
    }
}

fn check_agent(agent: &AgentRecord) -> Result<(), CommandError> {
    if !agent.spiffe_id.path().starts_with("/sigil/agent/") {
        return Err(CommandError::Invalid(format!(
            "agent IDs live under /sigil/agent/, got {}",
            agent.spiffe_id
        )));
    }
    if agent.selectors.len() > wire::entry::SELECTORS_PER_ENTRY_MAX {
        return Err(CommandError::Limit("too many agent selectors".into()));
    }
    Ok(())
}

fn check_server(server: &ServerRecord) -> Result<(), CommandError> {
    if server.addr.is_empty() || server.addr.len() > SERVER_ADDR_MAX {
        return Err(CommandError::Invalid(format!(
            "a server address must be 1 to {SERVER_ADDR_MAX} bytes"
        )));
    }
    Ok(())
}

/// Inserts or updates `server` in the desired membership.
fn put_server(state: &mut State, server: ServerRecord) -> Response {
    check_server(&server)?;
    if !state.servers.contains_key(&server.node_id) && state.servers.len() >= SERVERS_MAX {
        return Err(CommandError::Limit(format!(
            "at most {SERVERS_MAX} server nodes"
        )));
    }
    state.servers.insert(server.node_id, server.clone());
    Ok(Outcome::Server(server))
}

fn check_key_hash(key_sha256: &str) -> Result<(), CommandError> {
    if !is_hex_sha256(key_sha256) {
        return Err(CommandError::Invalid(
            "a key hash must be 64 lowercase hex characters".into(),
        ));
    }
    Ok(())
}

fn create_join_token(state: &mut State, token: JoinToken) -> Response {
    check_new_join_token(state, &token)?;
    state.join_tokens.insert(token.token_sha256.clone(), token);
    Ok(Outcome::Done)
}

/// An agent join token and the entry naming its agent, both or neither: every check of the
/// token runs before the entry is created, and nothing can refuse the token after that.
fn create_join_token_with_entry(
    state: &mut State,
    token: JoinToken,
    entry: RegistrationEntry,
) -> Response {
    if token.purpose != TokenPurpose::Agent {
        return Err(CommandError::Invalid(
            "only an agent token comes with an entry".into(),
        ));
    }
    check_new_join_token(state, &token)?;
    let stored = state.create_entry(entry)?;
    state.join_tokens.insert(token.token_sha256.clone(), token);
    Ok(Outcome::Created(vec![Ok(stored)]))
}

/// Whether `token` may be registered as a new join token (changes nothing).
fn check_new_join_token(state: &State, token: &JoinToken) -> Result<(), CommandError> {
    if !is_hex_sha256(&token.token_sha256) {
        return Err(CommandError::Invalid(
            "join token hash must be 64 lowercase hex characters".into(),
        ));
    }
    if token.consumed_by.is_some()
        || !token.consumer_key_sha256.is_empty()
        || token.consumed_at.is_some()
    {
        return Err(CommandError::Invalid(
            "a new join token cannot be consumed".into(),
        ));
    }
    match (token.purpose, token.node_id) {
        (TokenPurpose::Agent, None) if !token.rejoin => {}
        (TokenPurpose::Agent, _) => {
            return Err(CommandError::Invalid(
                "an agent token is not bound to a node ID".into(),
            ))
        }
        (TokenPurpose::Server, None) => {
            return Err(CommandError::Invalid(
                "a server token is bound to the node ID it admits".into(),
            ))
        }
        (TokenPurpose::Server, Some(node_id)) => {
            if node_id == 0 {
                return Err(CommandError::Invalid("node IDs start at 1".into()));
            }
            if state.removed_servers.contains_key(&node_id) {
                return Err(CommandError::Invalid(format!(
                    "server node {node_id} was removed and its ID is never admitted again; use another ID"
                )));
            }
            if state.servers.contains_key(&node_id) && !token.rejoin {
                return Err(CommandError::AlreadyExists(format!(
                    "server node {node_id} (a member; a token re-admitting it must say rejoin)"
                )));
            }
        }
    }
    if state.join_tokens.contains_key(&token.token_sha256) {
        return Err(CommandError::AlreadyExists("join token".into()));
    }
    if state.join_tokens.len() >= JOIN_TOKENS_MAX {
        return Err(CommandError::Limit(format!(
            "at most {JOIN_TOKENS_MAX} join tokens"
        )));
    }
    Ok(())
}

/// Takes `node_id` out of the desired membership, remembers it as removed and retires its
/// authorities (removes them at once when `compromised`).
fn remove_server(
    state: &mut State,
    node_id: u64,
    at: UnixTime,
    prune_after: UnixTime,
    compromised: bool,
) -> Response {
    if !state.servers.contains_key(&node_id) {
        return Err(not_found("server node", node_id));
    }
    if state.servers.len() == 1 {
        return Err(CommandError::Invalid(
            "the last server node of a cluster cannot be removed".into(),
        ));
    }
    if state.removed_servers.len() >= REMOVED_SERVERS_MAX {
        return Err(CommandError::Limit(format!(
            "at most {REMOVED_SERVERS_MAX} removed server nodes remembered"
        )));
    }
    state.servers.remove(&node_id);
    let prune_after = if compromised { at } else { prune_after };
    state.removed_servers.insert(
        node_id,
        RemovedServer {
            removed_at: at,
            prune_after,
            compromised,
        },
    );
    if compromised {
        let before = state.authorities.len();
        state
            .authorities
            .retain(|_, r| r.authority.node_id != node_id);
        if state.authorities.len() != before {
            state.bundle_sequence += 1;
        }
    } else {
        for r in state.authorities.values_mut() {
            if r.authority.node_id == node_id {
                r.state = AuthorityState::Retired;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Records one renewal, keeping the newest (renewals are replicated after the fact and may
/// arrive out of order); a banned or forgotten agent's renewal is dropped.
fn record_renewal(state: &mut State, r: AgentRenewal) {
    let Some(agent) = state.agents.get_mut(&r.spiffe_id) else {
        return;
    };
    if agent.banned || r.at < agent.renewed_at || r.svid_serial == agent.svid_serial {
        return;
    }
    agent.previous_serial = std::mem::take(&mut agent.svid_serial);
    agent.svid_serial = r.svid_serial;
    agent.svid_not_after = r.svid_not_after;
    agent.renewed_at = r.at;
}

/// Applies `cmd` to `state`. Refused commands change nothing.
pub fn apply(state: &mut State, cmd: Command) -> Response {
    match cmd {
        Command::CreateEntries { entries } => {
            if entries.len() > BATCH_ENTRIES_MAX {
                return Err(CommandError::Limit(format!(
                    "at most {BATCH_ENTRIES_MAX} entries per batch"
                )));
            }
            let results = entries.into_iter().map(|e| state.create_entry(e)).collect();
            Ok(Outcome::Created(results))
        }
        Command::UpdateEntry {
            mut entry,
            expected_revision,
        } => {
            entry
                .validate()
                .map_err(|e| CommandError::Invalid(e.to_string()))?;
            let old = state
                .entries
                .get(&entry.id)
                .ok_or_else(|| not_found("entry", &entry.id))?
                .clone();
            if let Some(expected) = expected_revision {
                if expected != old.revision {
                    return Err(CommandError::RevisionMismatch {
                        expected,
                        actual: old.revision,
                    });
                }
            }
            entry.revision = old.revision + 1;
            entry.created_at_secs = old.created_at_secs;
            state.unindex(&old);
            state.index(&entry);
            state.entries.insert(entry.id.clone(), entry.clone());
            Ok(Outcome::Updated(entry))
        }
        Command::DeleteEntries { ids } => {
            if ids.len() > BATCH_ENTRIES_MAX {
                return Err(CommandError::Limit(format!(
                    "at most {BATCH_ENTRIES_MAX} IDs per batch"
                )));
            }
            let mut deleted = 0;
            let mut missing = Vec::new();
            for id in ids {
                match state.entries.remove(&id) {
                    Some(old) => {
                        state.unindex(&old);
                        deleted += 1;
                    }
                    None => missing.push(id),
                }
            }
            Ok(Outcome::Deleted { deleted, missing })
        }
        Command::CreateJoinToken { token } => create_join_token(state, token),
        Command::CreateJoinTokenWithEntry { token, entry } => {
            create_join_token_with_entry(state, token, entry)
        }
        Command::ConsumeJoinToken {
            token_sha256,
            key_sha256,
            mut agent,
            at,
        } => {
            check_agent(&agent)?;
            check_key_hash(&key_sha256)?;
            let token = state
                .join_tokens
                .get(&token_sha256)
                .ok_or_else(|| not_found("join token", "(hash)"))?;
            if token.consumed_by.is_some() {
                return Err(CommandError::TokenUsed);
            }
            if token.expires_at <= at {
                return Err(CommandError::TokenExpired);
            }
            if token.purpose != TokenPurpose::Agent {
                return Err(CommandError::TokenPurpose("an agent".into()));
            }
            if let Some(existing) = state.agents.get(&agent.spiffe_id) {
                if existing.banned {
                    return Err(CommandError::AgentBanned(agent.spiffe_id.to_string()));
                }
            } else if state.agents.len() >= AGENTS_MAX {
                return Err(CommandError::Limit(format!("at most {AGENTS_MAX} agents")));
            }
            if let Some(token) = state.join_tokens.get_mut(&token_sha256) {
                token.consumed_by = Some(agent.spiffe_id.clone());
                token.consumer_key_sha256 = key_sha256;
                token.consumed_at = Some(at);
            }
            agent.banned = false;
            agent.attested_at = at;
            state.agents.insert(agent.spiffe_id.clone(), agent.clone());
            Ok(Outcome::Agent(agent))
        }
        Command::ConsumeServerToken {
            token_sha256,
            key_sha256,
            server,
            spiffe_id,
            at,
        } => {
            check_server(&server)?;
            check_key_hash(&key_sha256)?;
            if spiffe_id.path() != format!("/sigil/server/{}", server.node_id) {
                return Err(CommandError::Invalid(format!(
                    "server {} must be named /sigil/server/{}, got {spiffe_id}",
                    server.node_id, server.node_id
                )));
            }
            let token = state
                .join_tokens
                .get(&token_sha256)
                .ok_or_else(|| not_found("join token", "(hash)"))?;
            if token.consumed_by.is_some() {
                return Err(CommandError::TokenUsed);
            }
            if token.expires_at <= at {
                return Err(CommandError::TokenExpired);
            }
            if token.purpose != TokenPurpose::Server {
                return Err(CommandError::TokenPurpose("a server node".into()));
            }
            if token.node_id != Some(server.node_id) {
                return Err(CommandError::TokenRefused(format!(
                    "the token admits another node ID than {}",
                    server.node_id
                )));
            }
            if state.removed_servers.contains_key(&server.node_id) {
                return Err(CommandError::TokenRefused(format!(
                    "server node {} was removed and is never admitted again",
                    server.node_id
                )));
            }
            // A member is re-admitted (e.g. its server SVID expired while it was down) only
            // with a token generated for that (`rejoin`); its address is updated.
            if state.servers.contains_key(&server.node_id) && !token.rejoin {
                return Err(CommandError::TokenRefused(format!(
                    "server node {} is already a member",
                    server.node_id
                )));
            }
            let outcome = put_server(state, server)?;
            if let Some(token) = state.join_tokens.get_mut(&token_sha256) {
                token.consumed_by = Some(spiffe_id);
                token.consumer_key_sha256 = key_sha256;
                token.consumed_at = Some(at);
            }
            Ok(outcome)
        }
        Command::RegisterServer { server } => {
            if state.removed_servers.contains_key(&server.node_id) {
                return Err(CommandError::Invalid(format!(
                    "server node {} was removed and is never admitted again",
                    server.node_id
                )));
            }
            put_server(state, server)
        }
        Command::RemoveServer {
            node_id,
            at,
            prune_after,
            compromised,
        } => remove_server(state, node_id, at, prune_after, compromised),
        Command::RevokeJoinToken { token_sha256 } => {
            state
                .join_tokens
                .remove(&token_sha256)
                .ok_or_else(|| not_found("join token", "(hash)"))?;
            Ok(Outcome::Done)
        }
        Command::RegisterAgent { agent } => {
            check_agent(&agent)?;
            let attested_at = match state.agents.get(&agent.spiffe_id) {
                Some(existing) if existing.banned => {
                    return Err(CommandError::AgentBanned(agent.spiffe_id.to_string()))
                }
                None if state.agents.len() >= AGENTS_MAX => {
                    return Err(CommandError::Limit(format!("at most {AGENTS_MAX} agents")))
                }
                Some(existing) => existing.attested_at,
                None => agent.attested_at,
            };
            let mut agent = agent;
            agent.banned = false;
            agent.attested_at = attested_at;
            state.agents.insert(agent.spiffe_id.clone(), agent.clone());
            Ok(Outcome::Agent(agent))
        }
        Command::SetAgentBanned { spiffe_id, banned } => {
            let agent = state
                .agents
                .get_mut(&spiffe_id)
                .ok_or_else(|| not_found("agent", &spiffe_id))?;
            agent.banned = banned;
            Ok(Outcome::Agent(agent.clone()))
        }
        Command::EvictAgent { spiffe_id } => {
            let agent = state
                .agents
                .get(&spiffe_id)
                .ok_or_else(|| not_found("agent", &spiffe_id))?;
            if agent.banned {
                return Err(CommandError::AgentBanned(format!(
                    "{spiffe_id} (unban it before evicting it: evicting must not lift a ban)"
                )));
            }
            state.agents.remove(&spiffe_id);
            Ok(Outcome::Done)
        }
        Command::RecordAgentRenewals { renewals } => {
            if renewals.len() > BATCH_RENEWALS_MAX {
                return Err(CommandError::Limit(format!(
                    "at most {BATCH_RENEWALS_MAX} renewals per batch"
                )));
            }
            for r in renewals {
                record_renewal(state, r);
            }
            Ok(Outcome::Done)
        }
        cmd @ (Command::PublishAuthority { .. }
        | Command::ActivateAuthority { .. }
        | Command::PruneAuthority { .. }) => state.apply_authority(cmd),
        Command::SetFederatedBundle {
            trust_domain,
            bundle,
        } => {
            if !state.federated.contains_key(&trust_domain)
                && state.federated.len() >= FEDERATED_MAX
            {
                return Err(CommandError::Limit(format!(
                    "at most {FEDERATED_MAX} federated trust domains"
                )));
            }
            if let Some(old) = state.federated.get(&trust_domain) {
                // Freshness by spiffe_sequence when both have one (SPIFFE_Federation.md §4.2).
                if let (Some(old_seq), Some(new_seq)) = (old.sequence, bundle.sequence) {
                    if new_seq < old_seq {
                        return Err(CommandError::Invalid(format!(
                            "bundle sequence {new_seq} is older than the stored {old_seq}"
                        )));
                    }
                }
            }
            state.federated.insert(trust_domain, bundle);
            Ok(Outcome::Done)
        }
        Command::RemoveFederatedBundle { trust_domain } => {
            state
                .federated
                .remove(&trust_domain)
                .ok_or_else(|| not_found("federated trust domain", &trust_domain))?;
            Ok(Outcome::Done)
        }
        Command::Tick { .. } => Ok(Outcome::Done),
    }
}

/// Applies a proposal at most once: a proposal seen among the last [`PROPOSALS_REMEMBERED`]
/// returns its first response and changes nothing (a retried or duplicated write).
pub fn apply_proposal(state: &mut State, proposal: Proposal) -> Response {
    if let Some(first) = state.recent.get(&proposal.id) {
        return first.clone();
    }
    // A removed server proposes nothing: if it still gets an entry committed (a voter that has
    // not applied the removal yet elected it, or acknowledged its entries), the entry changes
    // nothing on any replica.
    let response = if state.removed_servers.contains_key(&proposal.id.node) {
        Err(CommandError::Invalid(format!(
            "server node {} was removed from the cluster; its proposals change nothing",
            proposal.id.node
        )))
    } else {
        apply(state, proposal.cmd)
    };
    state.recent.insert(proposal.id, response.clone());
    state.recent_order.push_back(proposal.id);
    while state.recent_order.len() > PROPOSALS_REMEMBERED {
        if let Some(old) = state.recent_order.pop_front() {
            state.recent.remove(&old);
        }
    }
    response
}

/// The wall time a command carries, if any (used by tests and the simulator's checkers).
pub fn command_time(cmd: &Command) -> Option<UnixTime> {
    match cmd {
        Command::ConsumeJoinToken { at, .. }
        | Command::ConsumeServerToken { at, .. }
        | Command::RemoveServer { at, .. }
        | Command::PruneAuthority { at, .. }
        | Command::PublishAuthority { at, .. } => Some(*at),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
