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
mod tests {
    use super::*;
    use wire::{AttestationMethod, JwtAuthority, PublicJwk, X509Authority};

    fn entry(n: u8, parent: &str, selectors: &[&str]) -> RegistrationEntry {
        let mut e = RegistrationEntry::new(
            EntryId::from_random([n; 16]),
            format!("spiffe://example.org/w{n}").parse().expect("id"),
            parent.parse().expect("id"),
            selectors.iter().map(|s| s.parse().expect("sel")).collect(),
            100,
        );
        e.revision = 9;
        e
    }

    const AGENT: &str = "spiffe://example.org/sigil/agent/join_token/t1";

    fn agent(id: &str) -> AgentRecord {
        AgentRecord {
            spiffe_id: id.parse().expect("id"),
            method: AttestationMethod::JoinToken,
            selectors: vec![],
            banned: false,
            svid_serial: "01".into(),
            svid_not_after: UnixTime::from_secs(10),
            previous_serial: String::new(),
            renewed_at: UnixTime::EPOCH,
            attested_at: UnixTime::EPOCH,
        }
    }

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn token(c: char, expires: u64, purpose: TokenPurpose, node_id: Option<u64>) -> JoinToken {
        JoinToken {
            token_sha256: hash(c),
            expires_at: UnixTime::from_secs(expires),
            consumed_by: None,
            purpose,
            consumer_key_sha256: String::new(),
            node_id,
            rejoin: false,
            created_at: UnixTime::EPOCH,
            consumed_at: None,
        }
    }

    #[test]
    fn a_token_with_its_entry_is_created_whole_or_not_at_all() {
        let mut s = State::new();
        let e = entry(1, "spiffe://example.org/sigil/servers", &["spiffe_id:x"]);
        let t = token('a', 100, TokenPurpose::Agent, None);
        let both = Command::CreateJoinTokenWithEntry {
            token: t.clone(),
            entry: e.clone(),
        };
        match apply(&mut s, both.clone()).expect("created") {
            Outcome::Created(r) => assert_eq!(r[0].as_ref().expect("entry").revision, 0),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.join_tokens.contains_key(&t.token_sha256) && s.entry(&e.id).is_some());
        // The same again: the token exists, so the (new) entry is not created either.
        let mut other = e.clone();
        other.id = EntryId::from_random([2; 16]);
        other.spiffe_id = "spiffe://example.org/other".parse().expect("id");
        let again = Command::CreateJoinTokenWithEntry {
            token: t.clone(),
            entry: other.clone(),
        };
        assert!(matches!(
            apply(&mut s, again),
            Err(CommandError::AlreadyExists(_))
        ));
        assert!(s.entry(&other.id).is_none());
        // A bad entry: the (new) token is not created.
        let mut bad = other.clone();
        bad.selectors.clear();
        let t2 = token('b', 100, TokenPurpose::Agent, None);
        let refused = Command::CreateJoinTokenWithEntry {
            token: t2.clone(),
            entry: bad,
        };
        assert!(apply(&mut s, refused).is_err());
        assert!(!s.join_tokens.contains_key(&t2.token_sha256));
        // Server tokens come without entries.
        let server = Command::CreateJoinTokenWithEntry {
            token: token('c', 100, TokenPurpose::Server, Some(2)),
            entry: other,
        };
        assert!(matches!(
            apply(&mut s, server),
            Err(CommandError::Invalid(_))
        ));
    }

    #[test]
    fn entries_create_update_delete_with_indexes() {
        let mut s = State::new();
        let a = entry(1, AGENT, &["unix:uid:1"]);
        let b = entry(2, AGENT, &["unix:uid:1", "unix:gid:2"]);
        let out = apply(
            &mut s,
            Command::CreateEntries {
                entries: vec![a.clone(), b.clone(), a.clone()],
            },
        )
        .expect("batch");
        let Outcome::Created(results) = out else {
            panic!("{out:?}")
        };
        assert!(results[0].is_ok() && results[1].is_ok());
        assert!(matches!(results[2], Err(CommandError::AlreadyExists(_))));
        assert_eq!(s.entry(&a.id).expect("stored").revision, 0);
        let parent: SpiffeId = AGENT.parse().expect("id");
        assert_eq!(s.entries_by_parent(&parent).len(), 2);
        let uid1: Selector = "unix:uid:1".parse().expect("sel");
        assert_eq!(s.entries_by_selector(&uid1).len(), 2);

        let mut b2 = b.clone();
        b2.selectors = ["unix:uid:7".parse().expect("sel")].into_iter().collect();
        let wrong = apply(
            &mut s,
            Command::UpdateEntry {
                entry: b2.clone(),
                expected_revision: Some(5),
            },
        );
        assert_eq!(
            wrong,
            Err(CommandError::RevisionMismatch {
                expected: 5,
                actual: 0
            })
        );
        let updated = apply(
            &mut s,
            Command::UpdateEntry {
                entry: b2,
                expected_revision: Some(0),
            },
        )
        .expect("update");
        assert!(matches!(updated, Outcome::Updated(ref e) if e.revision == 1));
        assert_eq!(
            s.entries_by_selector(&uid1).len(),
            1,
            "old selector unindexed"
        );

        let del = apply(
            &mut s,
            Command::DeleteEntries {
                ids: vec![a.id.clone(), EntryId::from_random([9; 16])],
            },
        )
        .expect("delete");
        assert!(matches!(del, Outcome::Deleted { deleted: 1, ref missing } if missing.len() == 1));
        assert!(s.entries_by_selector(&uid1).is_empty());
        assert_eq!(s.entries().count(), 1);
    }

    #[test]
    fn refused_commands_change_nothing() {
        let mut s = State::new();
        apply(
            &mut s,
            Command::CreateEntries {
                entries: vec![entry(1, AGENT, &["unix:uid:1"])],
            },
        )
        .expect("create");
        let before = s.clone();
        let mut bad = entry(1, AGENT, &["unix:uid:1"]);
        bad.selectors.clear();
        let refusals = vec![
            Command::UpdateEntry {
                entry: bad,
                expected_revision: None,
            },
            Command::UpdateEntry {
                entry: entry(3, AGENT, &["unix:uid:1"]),
                expected_revision: None,
            },
            Command::CreateEntries {
                entries: (0..=BATCH_ENTRIES_MAX)
                    .map(|i| entry((i % 250) as u8, AGENT, &["unix:uid:1"]))
                    .collect(),
            },
            Command::CreateJoinToken {
                token: JoinToken {
                    token_sha256: "short".into(),
                    ..token('a', 1, TokenPurpose::Agent, None)
                },
            },
            Command::CreateJoinToken {
                token: token('a', 1, TokenPurpose::Server, None),
            },
            Command::CreateJoinToken {
                token: token('a', 1, TokenPurpose::Agent, Some(3)),
            },
            Command::ConsumeJoinToken {
                token_sha256: hash('a'),
                key_sha256: hash('f'),
                agent: agent(AGENT),
                at: UnixTime::EPOCH,
            },
            Command::EvictAgent {
                spiffe_id: AGENT.parse().expect("id"),
            },
            Command::RevokeJoinToken {
                token_sha256: hash('a'),
            },
            Command::SetAgentBanned {
                spiffe_id: AGENT.parse().expect("id"),
                banned: true,
            },
            Command::ActivateAuthority { id: "nope".into() },
            Command::RemoveFederatedBundle {
                trust_domain: "other.org".parse().expect("td"),
            },
        ];
        for cmd in refusals {
            assert!(apply(&mut s, cmd.clone()).is_err(), "{cmd:?}");
            assert_eq!(s, before, "{cmd:?} changed the state");
        }
    }

    #[test]
    fn join_token_is_consumed_exactly_once() {
        let mut s = State::new();
        let b = token('b', 100, TokenPurpose::Agent, None);
        apply(&mut s, Command::CreateJoinToken { token: b }).expect("create");
        let consume = |agent_id: &str, at: u64| Command::ConsumeJoinToken {
            token_sha256: hash('b'),
            key_sha256: hash('1'),
            agent: agent(agent_id),
            at: UnixTime::from_secs(at),
        };
        // Two nodes race: both proposals reach the log; the first applied wins.
        let first = apply(&mut s, consume(AGENT, 50));
        let second = apply(
            &mut s,
            consume("spiffe://example.org/sigil/agent/join_token/t2", 51),
        );
        assert!(matches!(first, Ok(Outcome::Agent(_))));
        assert_eq!(second, Err(CommandError::TokenUsed));
        assert!(s
            .agent(
                &"spiffe://example.org/sigil/agent/join_token/t2"
                    .parse()
                    .expect("id")
            )
            .is_none());

        assert_eq!(
            s.join_token(&hash('b'))
                .map(|t| t.consumer_key_sha256.clone()),
            Some(hash('1')),
            "the token is bound to its consumer's key"
        );
        let late = token('c', 10, TokenPurpose::Agent, None);
        apply(&mut s, Command::CreateJoinToken { token: late }).expect("create");
        let expired = apply(
            &mut s,
            Command::ConsumeJoinToken {
                token_sha256: hash('c'),
                key_sha256: hash('1'),
                agent: agent("spiffe://example.org/sigil/agent/join_token/t3"),
                at: UnixTime::from_secs(10),
            },
        );
        assert_eq!(expired, Err(CommandError::TokenExpired));
        let bad_id = apply(
            &mut s,
            Command::ConsumeJoinToken {
                token_sha256: hash('c'),
                key_sha256: hash('1'),
                agent: agent("spiffe://example.org/not-an-agent"),
                at: UnixTime::from_secs(1),
            },
        );
        assert!(matches!(bad_id, Err(CommandError::Invalid(_))));
    }

    #[test]
    fn server_tokens_admit_servers_once_and_only_servers() {
        let mut s = State::new();
        let server = |n: u64| ServerRecord {
            node_id: n,
            addr: format!("127.0.0.1:{}", 8000 + n),
        };
        let sid = |n: u64| -> SpiffeId {
            format!("spiffe://example.org/sigil/server/{n}")
                .parse()
                .expect("id")
        };
        apply(&mut s, Command::RegisterServer { server: server(1) }).expect("bootstrap");
        assert_eq!(s.next_server_id(), 2);
        for (c, purpose, node) in [
            ('d', TokenPurpose::Server, Some(2)),
            ('e', TokenPurpose::Agent, None),
        ] {
            let token = token(c, 100, purpose, node);
            apply(&mut s, Command::CreateJoinToken { token }).expect("create");
        }
        assert_eq!(
            s.next_server_id(),
            3,
            "IDs bound to tokens are not assigned twice"
        );
        // A token for a member is refused unless it says rejoin.
        assert!(matches!(
            apply(
                &mut s,
                Command::CreateJoinToken {
                    token: token('3', 100, TokenPurpose::Server, Some(1))
                }
            ),
            Err(CommandError::AlreadyExists(_))
        ));
        let join = |c: char, n: u64, id: SpiffeId, at: u64| Command::ConsumeServerToken {
            token_sha256: hash(c),
            key_sha256: hash('2'),
            server: server(n),
            spiffe_id: id,
            at: UnixTime::from_secs(at),
        };
        // An agent token does not admit a server, and a server token does not admit an agent.
        assert!(matches!(
            apply(&mut s, join('e', 2, sid(2), 5)),
            Err(CommandError::TokenPurpose(_))
        ));
        assert!(matches!(
            apply(
                &mut s,
                Command::ConsumeJoinToken {
                    token_sha256: hash('d'),
                    key_sha256: hash('2'),
                    agent: agent(AGENT),
                    at: UnixTime::from_secs(5),
                }
            ),
            Err(CommandError::TokenPurpose(_))
        ));
        // The name must match the node ID, the node ID the token's; expiry holds.
        assert!(matches!(
            apply(&mut s, join('d', 2, sid(3), 5)),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            apply(&mut s, join('d', 3, sid(3), 5)),
            Err(CommandError::TokenRefused(_))
        ));
        assert_eq!(
            apply(&mut s, join('d', 2, sid(2), 100)),
            Err(CommandError::TokenExpired)
        );
        let before = s.clone();
        assert_eq!(
            apply(&mut s, join('d', 2, sid(2), 5)),
            Ok(Outcome::Server(server(2)))
        );
        assert_ne!(s, before);
        assert_eq!(
            apply(&mut s, join('d', 3, sid(3), 6)),
            Err(CommandError::TokenUsed)
        );
        assert_eq!(s.servers().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            s.join_token(&hash('d')).and_then(|t| t.consumed_by.clone()),
            Some(sid(2))
        );
        // A member is re-admitted only by a rejoin token.
        let rejoin = JoinToken {
            rejoin: true,
            ..token('4', 100, TokenPurpose::Server, Some(2))
        };
        apply(&mut s, Command::CreateJoinToken { token: rejoin }).expect("rejoin token");
        assert_eq!(
            apply(&mut s, join('4', 2, sid(2), 7)),
            Ok(Outcome::Server(server(2)))
        );
        // Removal down to one member, never below; a removed ID is never admitted again.
        let remove = |node_id: u64| Command::RemoveServer {
            node_id,
            at: UnixTime::from_secs(8),
            prune_after: UnixTime::from_secs(20),
            compromised: false,
        };
        apply(&mut s, remove(1)).expect("remove");
        assert!(matches!(
            apply(&mut s, remove(2)),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            apply(&mut s, remove(9)),
            Err(CommandError::NotFound(_))
        ));
        assert!(s.removed_servers().contains_key(&1));
        assert!(apply(&mut s, Command::RegisterServer { server: server(1) }).is_err());
        assert!(apply(
            &mut s,
            Command::CreateJoinToken {
                token: token('5', 100, TokenPurpose::Server, Some(1))
            }
        )
        .is_err());
        assert_eq!(s.next_server_id(), 3);
        // Addresses are bounded; the count is bounded.
        let long = ServerRecord {
            node_id: 4,
            addr: "x".repeat(SERVER_ADDR_MAX + 1),
        };
        assert!(apply(&mut s, Command::RegisterServer { server: long }).is_err());
        for n in 10..10 + SERVERS_MAX as u64 - 1 {
            apply(&mut s, Command::RegisterServer { server: server(n) }).expect("register");
        }
        assert!(matches!(
            apply(&mut s, Command::RegisterServer { server: server(99) }),
            Err(CommandError::Limit(_))
        ));
    }

    #[test]
    fn agents_ban_and_renewals() {
        let mut s = State::new();
        apply(
            &mut s,
            Command::RegisterAgent {
                agent: agent(AGENT),
            },
        )
        .expect("register");
        let id: SpiffeId = AGENT.parse().expect("id");
        let renew = |serial: &str, at: u64| Command::RecordAgentRenewals {
            renewals: vec![AgentRenewal {
                spiffe_id: id.clone(),
                presented_serial: "01".into(),
                svid_serial: serial.into(),
                svid_not_after: UnixTime::from_secs(at + 10),
                at: UnixTime::from_secs(at),
            }],
        };
        apply(&mut s, renew("02", 20)).expect("renew");
        apply(&mut s, renew("old", 15)).expect("out of order");
        let rec = s.agent(&id).expect("agent");
        assert_eq!(rec.svid_serial, "02");
        assert_eq!(rec.previous_serial, "01");
        assert_eq!(rec.renewed_at, UnixTime::from_secs(20));
        let too_many = Command::RecordAgentRenewals {
            renewals: vec![
                AgentRenewal {
                    spiffe_id: id.clone(),
                    presented_serial: String::new(),
                    svid_serial: "x".into(),
                    svid_not_after: UnixTime::EPOCH,
                    at: UnixTime::EPOCH,
                };
                BATCH_RENEWALS_MAX + 1
            ],
        };
        assert!(matches!(
            apply(&mut s, too_many),
            Err(CommandError::Limit(_))
        ));
        apply(
            &mut s,
            Command::SetAgentBanned {
                spiffe_id: id.clone(),
                banned: true,
            },
        )
        .expect("ban");
        apply(&mut s, renew("03", 30)).expect("dropped");
        assert_eq!(
            s.agent(&id).expect("agent").svid_serial,
            "02",
            "a banned agent's renewal is not recorded"
        );
        assert!(matches!(
            apply(
                &mut s,
                Command::EvictAgent {
                    spiffe_id: id.clone()
                }
            ),
            Err(CommandError::AgentBanned(_))
        ));
        assert!(matches!(
            apply(
                &mut s,
                Command::RegisterAgent {
                    agent: agent(AGENT)
                }
            ),
            Err(CommandError::AgentBanned(_))
        ));
    }

    /// x509pop re-attests with `RegisterAgent` as often as it likes: it replaces the record of
    /// a known agent, but never revives a banned one (and the refusal changes nothing).
    #[test]
    fn register_agent_reattests_but_never_unbans() {
        let mut s = State::new();
        let id: SpiffeId = "spiffe://example.org/sigil/agent/x509pop/ab12"
            .parse()
            .expect("id");
        let pop = |cn: &str| AgentRecord {
            spiffe_id: id.clone(),
            method: AttestationMethod::X509Pop,
            selectors: vec![Selector::new("x509pop", &format!("subject:cn:{cn}")).expect("sel")],
            banned: false,
            svid_serial: String::new(),
            svid_not_after: UnixTime::from_secs(0),
            previous_serial: String::new(),
            renewed_at: UnixTime::EPOCH,
            attested_at: UnixTime::EPOCH,
        };
        apply(&mut s, Command::RegisterAgent { agent: pop("a") }).expect("first");
        apply(&mut s, Command::RegisterAgent { agent: pop("b") }).expect("again");
        assert_eq!(s.agents.len(), 1);
        assert_eq!(s.agent(&id).expect("agent").selectors, pop("b").selectors);
        // A register command cannot ban either.
        let mut banned_record = pop("c");
        banned_record.banned = true;
        apply(
            &mut s,
            Command::RegisterAgent {
                agent: banned_record,
            },
        )
        .expect("register");
        assert!(!s.agent(&id).expect("agent").banned);

        apply(
            &mut s,
            Command::SetAgentBanned {
                spiffe_id: id.clone(),
                banned: true,
            },
        )
        .expect("ban");
        let before = s.agent(&id).cloned();
        assert!(matches!(
            apply(&mut s, Command::RegisterAgent { agent: pop("d") }),
            Err(CommandError::AgentBanned(_))
        ));
        assert_eq!(
            s.agent(&id).cloned(),
            before,
            "a refused re-attestation changes nothing"
        );
        assert!(s.agent(&id).expect("agent").banned);

        apply(
            &mut s,
            Command::SetAgentBanned {
                spiffe_id: id.clone(),
                banned: false,
            },
        )
        .expect("unban");
        apply(&mut s, Command::RegisterAgent { agent: pop("e") }).expect("after unban");
        // Agent IDs must live under /sigil/agent/.
        let mut outside = pop("f");
        outside.spiffe_id = "spiffe://example.org/x509pop/ab12".parse().expect("id");
        assert!(matches!(
            apply(&mut s, Command::RegisterAgent { agent: outside }),
            Err(CommandError::Invalid(_))
        ));
    }

    fn x509_authority(id: &str, node: u64, not_after: u64) -> Authority {
        Authority {
            id: id.into(),
            node_id: node,
            key: AuthorityKey::X509(X509Authority {
                cert_der: vec![0x30, node as u8],
                key: PublicJwk::Okp {
                    crv: "Ed25519".into(),
                    x: vec![1],
                },
            }),
            not_after: UnixTime::from_secs(not_after),
        }
    }

    #[test]
    fn authorities_publish_activate_retire_prune() {
        let mut s = State::new();
        let publish = |a: Authority| Command::PublishAuthority {
            authority: a,
            at: UnixTime::from_secs(1),
        };
        assert_eq!(
            apply(&mut s, publish(x509_authority("n1-a", 1, 100))),
            Ok(Outcome::BundleSequence(1))
        );
        apply(&mut s, publish(x509_authority("n1-b", 1, 200))).expect("publish");
        apply(&mut s, publish(x509_authority("n2-a", 2, 100))).expect("publish");
        let jwt = Authority {
            id: "n1-jwt".into(),
            node_id: 1,
            key: AuthorityKey::Jwt(JwtAuthority {
                kid: "n1-jwt".into(),
                key: PublicJwk::Okp {
                    crv: "Ed25519".into(),
                    x: vec![2],
                },
            }),
            not_after: UnixTime::from_secs(50),
        };
        apply(&mut s, publish(jwt)).expect("publish jwt");
        assert!(apply(&mut s, publish(x509_authority("n1-a", 1, 100))).is_err());
        let late = Command::PublishAuthority {
            authority: x509_authority("n3-old", 3, 100),
            at: UnixTime::from_secs(100),
        };
        assert!(
            matches!(apply(&mut s, late), Err(CommandError::Invalid(_))),
            "expired"
        );
        assert_eq!(s.bundle_sequence(), 4);

        for id in ["n1-a", "n2-a", "n1-jwt"] {
            apply(&mut s, Command::ActivateAuthority { id: id.into() }).expect("activate");
        }
        apply(&mut s, Command::ActivateAuthority { id: "n1-b".into() }).expect("activate");
        let st = |id: &str| s.authorities()[id].state;
        assert_eq!(st("n1-a"), AuthorityState::Retired, "same node, same kind");
        assert_eq!(st("n1-b"), AuthorityState::Active);
        assert_eq!(st("n2-a"), AuthorityState::Active, "other node untouched");
        assert_eq!(st("n1-jwt"), AuthorityState::Active, "other kind untouched");
        assert!(apply(&mut s, Command::ActivateAuthority { id: "n1-a".into() }).is_err());
        assert_eq!(
            s.bundle_sequence(),
            4,
            "activation does not change the bundle"
        );

        let prune = |id: &str, at: u64| Command::PruneAuthority {
            id: id.into(),
            at: UnixTime::from_secs(at),
        };
        assert_eq!(
            apply(&mut s, prune("n1-a", 99)),
            Err(CommandError::AuthorityLive("n1-a".into()))
        );
        assert_eq!(
            apply(&mut s, prune("n1-a", 100)),
            Ok(Outcome::BundleSequence(5))
        );
        let b = s.bundle(300);
        assert_eq!(b.sequence, Some(5));
        assert_eq!(b.x509_authorities.len(), 2);
        assert_eq!(b.jwt_authorities.len(), 1);
    }

    /// A removed server's authorities stay (retired) until every SVID it may have signed
    /// expired, then any node may prune them; a compromised one's leave at once; a removed
    /// node publishes nothing.
    #[test]
    fn removed_servers_leave_the_bundle_on_time() {
        let mut s = State::new();
        for n in 1..=3 {
            apply(
                &mut s,
                Command::RegisterServer {
                    server: ServerRecord {
                        node_id: n,
                        addr: format!("127.0.0.1:{n}"),
                    },
                },
            )
            .expect("register");
            apply(
                &mut s,
                Command::PublishAuthority {
                    authority: x509_authority(&format!("n{n}"), n, 1000),
                    at: UnixTime::from_secs(1),
                },
            )
            .expect("publish");
        }
        let remove = |node_id, compromised| Command::RemoveServer {
            node_id,
            at: UnixTime::from_secs(10),
            prune_after: UnixTime::from_secs(50),
            compromised,
        };
        apply(&mut s, remove(2, false)).expect("remove 2");
        assert_eq!(
            s.authorities().get("n2").map(|r| r.state),
            Some(AuthorityState::Retired)
        );
        let prune = |at| Command::PruneAuthority {
            id: "n2".into(),
            at: UnixTime::from_secs(at),
        };
        assert_eq!(
            apply(&mut s, prune(49)),
            Err(CommandError::AuthorityLive("n2".into()))
        );
        apply(&mut s, prune(50)).expect("pruned once its SVIDs expired");
        assert!(!s.authorities().contains_key("n2"));
        assert!(apply(
            &mut s,
            Command::PublishAuthority {
                authority: x509_authority("n2-new", 2, 1000),
                at: UnixTime::from_secs(11),
            }
        )
        .is_err());

        let seq = s.bundle_sequence();
        apply(&mut s, remove(3, true)).expect("remove 3, compromised");
        assert!(!s.authorities().contains_key("n3"));
        assert_eq!(s.bundle_sequence(), seq + 1);
        assert_eq!(s.next_server_id(), 4);
    }

    #[test]
    fn federated_bundles_keep_the_freshest() {
        let mut s = State::new();
        let td: TrustDomain = "partner.org".parse().expect("td");
        let with_seq = |n| Bundle {
            sequence: Some(n),
            ..Bundle::default()
        };
        let set = |b| Command::SetFederatedBundle {
            trust_domain: td.clone(),
            bundle: b,
        };
        apply(&mut s, set(with_seq(5))).expect("set");
        assert!(apply(&mut s, set(with_seq(4))).is_err());
        apply(&mut s, set(with_seq(6))).expect("newer");
        assert_eq!(s.federated()[&td].sequence, Some(6));
        apply(
            &mut s,
            Command::RemoveFederatedBundle {
                trust_domain: td.clone(),
            },
        )
        .expect("remove");
        assert!(s.federated().is_empty());
    }

    #[test]
    fn a_proposal_applies_at_most_once() {
        let mut s = State::new();
        let id = ProposalId {
            node: 1,
            incarnation: 7,
            seq: 1,
        };
        let e = entry(1, AGENT, &["unix:uid:1"]);
        let create = Proposal {
            id,
            cmd: Command::CreateEntries {
                entries: vec![e.clone()],
            },
        };
        let first = apply_proposal(&mut s, create.clone());
        assert!(matches!(first, Ok(Outcome::Created(ref v)) if v[0].is_ok()));
        let delete = Proposal {
            id: ProposalId { seq: 2, ..id },
            cmd: Command::DeleteEntries {
                ids: vec![e.id.clone()],
            },
        };
        apply_proposal(&mut s, delete).expect("delete");
        // The create arrives again (a retry, a duplicated frame): same answer, no resurrection.
        assert_eq!(apply_proposal(&mut s, create), first);
        assert!(s.entry(&e.id).is_none());
        // Memory is bounded.
        for n in 0..(PROPOSALS_REMEMBERED as u64 + 5) {
            let p = Proposal {
                id: ProposalId { seq: 100 + n, ..id },
                cmd: Command::DeleteEntries { ids: vec![] },
            };
            apply_proposal(&mut s, p).expect("noop");
        }
        assert_eq!(s.recent.len(), PROPOSALS_REMEMBERED);
    }

    #[test]
    fn snapshot_round_trip_rebuilds_indexes() {
        let mut s = State::new();
        apply(
            &mut s,
            Command::CreateEntries {
                entries: vec![
                    entry(1, AGENT, &["unix:uid:1"]),
                    entry(2, AGENT, &["unix:uid:2"]),
                ],
            },
        )
        .expect("create");
        let bytes = wire::codec::encode(&s).expect("encode");
        let mut back: State = wire::codec::decode(&bytes).expect("decode");
        assert!(back
            .entries_by_parent(&AGENT.parse().expect("id"))
            .is_empty());
        back.rebuild_indexes();
        assert_eq!(back, s);
        assert_eq!(back.entries_by_parent(&AGENT.parse().expect("id")).len(), 2);
    }
}
