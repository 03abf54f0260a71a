//! The admin API (`sigil.admin.v1.Admin`, DESIGN.md §6) and its Unix-socket plumbing.
//!
//! [`AdminService`] answers reads from this node's applied replica and sends writes through
//! [`Replica::write`] (forwarded to the leader; [`WriteError::NoQuorum`] becomes gRPC
//! `UNAVAILABLE` within the replica's write timeout). Every input is parsed into `wire` types and
//! checked before anything is proposed: SPIFFE IDs, selectors, the entry rules of
//! [`RegistrationEntry::validate`], membership of this server's trust domain, batch and page
//! sizes. IDs and tokens come from [`Env::rng`], time from [`Env::wall`].
//!
//! [`serve_admin`] serves it on a Unix socket created with mode 0600 (bound inside a private
//! directory, restricted, then moved into place, so the socket is never reachable with looser
//! permissions); [`connect`] is the client side used by the CLI.
//!
//! Join tokens: 32 bytes from `env.rng("join-token")`, shown once as 64 lowercase hex
//! characters. Raft stores only `hex(SHA-256(token text))` and the token's purpose. An agent
//! attested with an agent token gets the ID `spiffe://<td>/sigil/agent/join_token/<that hash>`;
//! a server token admits one new server node (`spiffe://<td>/sigil/server/<node_id>`), which pins
//! the bundle by [`attest::bundle::bundle_sha256`] and reaches the cluster through the seed
//! address set with [`AdminService::with_seed_address`].

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::replica::{Replica, WriteError};
use rand_core::RngCore;
use tonic::{Request, Response, Status};
use wire::admin::admin_client::AdminClient;
use wire::admin::admin_server::{Admin, AdminServer};
use wire::admin::{self as pb, PAGE_SIZE_MAX};
use wire::command::BATCH_ENTRIES_MAX;
use wire::entry::SELECTORS_PER_ENTRY_MAX;
use wire::{
    AgentRecord, AttestationMethod, AuthorityKey, AuthorityState, Bundle, Command, CommandError,
    EntryId, Env, JoinToken, Outcome, RegistrationEntry, Selector, ServerRecord, SpiffeId,
    TokenPurpose, Transport, TrustDomain,
};

use crate::actors::registration::{new_join_token, TokenRequest};
use crate::Error;

/// The environment variable naming the admin socket (read by the CLI).
pub const ADMIN_SOCKET_ENV: &str = "SIGIL_ADMIN_SOCKET";
/// The admin socket when neither `--admin-socket` nor [`ADMIN_SOCKET_ENV`] is given.
pub const ADMIN_SOCKET_DEFAULT: &str = "/run/sigil/admin.sock";
/// Permissions of the admin socket: owner read/write only.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;
/// Most DNS names / federated trust domains accepted in one request entry before parsing.
const LIST_FIELD_MAX: usize = 64;

/// Server-side defaults of the admin API.
#[derive(Debug, Clone)]
pub struct AdminDefaults {
    /// Lifetime of an agent join token when the request gives none.
    pub join_token_ttl_secs: u64,
    /// Lifetime of a server join token when the request gives none.
    pub server_join_token_ttl_secs: u64,
    /// Longest join-token lifetime accepted (either purpose).
    pub join_token_ttl_max_secs: u64,
    /// `spiffe_refresh_hint` of the bundle served by `GetBundle`.
    pub bundle_refresh_hint_secs: u64,
    /// `ListEntries` page size when the request gives none.
    pub page_size: u32,
    /// How long a removed server's authorities stay in the bundle after its removal (unless it
    /// was compromised): long enough for every SVID it may have signed to expire — it may
    /// issue for up to `staleness_max` after it was cut off, SVIDs of the default TTLs. An
    /// entry with a longer TTL has its SVIDs from that node end early (at this point).
    pub removed_server_keep_secs: u64,
}

impl Default for AdminDefaults {
    fn default() -> AdminDefaults {
        AdminDefaults {
            join_token_ttl_secs: 600,
            server_join_token_ttl_secs: 3600,
            join_token_ttl_max_secs: 30 * 24 * 3600,
            bundle_refresh_hint_secs: crate::server::REFRESH_HINT_SECS_DEFAULT,
            page_size: 100,
            removed_server_keep_secs: (crate::actors::issuer::STALENESS_MAX_DEFAULT
                + crate::server::SERVER_SVID_TTL)
                .as_secs(),
        }
    }
}

/// The `sigil.admin.v1.Admin` service of one server node.
pub struct AdminService<T: Transport> {
    replica: Arc<Replica<T>>,
    env: Arc<dyn Env>,
    trust_domain: TrustDomain,
    defaults: AdminDefaults,
    /// This node's QUIC address as other nodes reach it (`seeds` of a joining node), if known.
    seed_address: Option<String>,
}

impl<T: Transport> std::fmt::Debug for AdminService<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("node_id", &self.replica.id())
            .field("trust_domain", &self.trust_domain)
            .field("seed_address", &self.seed_address)
            .finish()
    }
}

/// One line, bounded: error text from anywhere must not break the CLI's one-line errors.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    if s.chars().count() > 1024 {
        out.push('…');
    }
    out
}

fn invalid(msg: impl AsRef<str>) -> Status {
    Status::invalid_argument(one_line(msg.as_ref()))
}

/// gRPC status for a write that did not commit.
pub fn write_status(e: &WriteError) -> Status {
    match e {
        WriteError::NoQuorum { .. } => Status::unavailable(one_line(&e.to_string())),
        WriteError::Stopped(_) => Status::unavailable(one_line(&format!(
            "this server node is shutting down ({e})"
        ))),
        _ => Status::unavailable(one_line(&format!(
            "no quorum: the write did not commit ({e})"
        ))),
    }
}

/// gRPC status for a command the state machine refused.
pub fn command_status(e: &CommandError) -> Status {
    let msg = one_line(&e.to_string());
    match e {
        CommandError::Invalid(_) => Status::invalid_argument(msg),
        CommandError::NotFound(_) => Status::not_found(msg),
        CommandError::AlreadyExists(_) => Status::already_exists(msg),
        CommandError::RevisionMismatch { .. }
        | CommandError::TokenRefused(_)
        | CommandError::TokenUsed
        | CommandError::TokenExpired
        | CommandError::AgentBanned(_)
        | CommandError::AuthorityLive(_) => Status::failed_precondition(msg),
        CommandError::Limit(_) => Status::resource_exhausted(msg),
        _ => Status::internal(msg),
    }
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(one_line(&format!(
        "unexpected outcome from the state machine: {outcome:?}"
    )))
}

pub use crate::actors::registration::join_token_sha256;

/// The SPIFFE ID of an agent attested with the join token whose hash is `token_sha256`.
pub fn join_token_agent_id(td: &TrustDomain, token_sha256: &str) -> Result<SpiffeId, Status> {
    crate::service::join_token_agent_id(td, token_sha256)
        .map_err(|e| Status::internal(one_line(&e.to_string())))
}

fn parse_id(field: &str, text: &str) -> Result<SpiffeId, Status> {
    if text.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    text.parse::<SpiffeId>()
        .map_err(|e| invalid(format!("{field}: {e}")))
}

fn parse_selectors(texts: &[String]) -> Result<BTreeSet<Selector>, Status> {
    if texts.len() > SELECTORS_PER_ENTRY_MAX {
        return Err(invalid(format!(
            "at most {SELECTORS_PER_ENTRY_MAX} selectors are allowed"
        )));
    }
    texts
        .iter()
        .map(|s| s.parse::<Selector>().map_err(|e| invalid(e.to_string())))
        .collect()
}

fn parse_entry_id(text: &str) -> Result<EntryId, Status> {
    text.parse::<EntryId>()
        .map_err(|e| invalid(format!("entry id {:?}: {e}", one_line(text))))
}

/// The pinnable hash of `bundle` ([`attest::bundle::bundle_sha256`]), or an empty string if it
/// has no X.509 authority (there is nothing to pin yet).
pub fn bundle_hash_or_empty(bundle: &Bundle) -> String {
    if bundle.x509_authorities.is_empty() {
        String::new()
    } else {
        attest::bundle::bundle_sha256(bundle)
    }
}

/// A seed address other nodes can use: `None` for an empty text or a wildcard IP (`0.0.0.0`,
/// `::`), which names no reachable host.
fn usable_seed(addr: &str) -> Option<String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return None;
    }
    match addr.parse::<SocketAddr>() {
        Ok(sa) if sa.ip().is_unspecified() || sa.port() == 0 => None,
        _ => Some(addr.to_owned()),
    }
}

fn server_to_pb(s: &ServerRecord) -> pb::ServerNode {
    pb::ServerNode {
        node_id: s.node_id,
        addr: s.addr.clone(),
    }
}

/// The protobuf form of an entry.
pub fn entry_to_pb(e: &RegistrationEntry) -> pb::Entry {
    pb::Entry {
        id: e.id.to_string(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_svid_ttl_secs: e.x509_svid_ttl_secs,
        jwt_svid_ttl_secs: e.jwt_svid_ttl_secs,
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        revision: e.revision,
        created_at_secs: e.created_at_secs,
        expires_at_secs: e.expires_at_secs,
    }
}

impl<T: Transport> AdminService<T> {
    /// The admin service of the node running `replica` in `trust_domain`.
    pub fn new(
        replica: Arc<Replica<T>>,
        env: Arc<dyn Env>,
        trust_domain: TrustDomain,
        defaults: AdminDefaults,
    ) -> AdminService<T> {
        AdminService {
            replica,
            env,
            trust_domain,
            defaults,
            seed_address: None,
        }
    }

    /// Sets this node's QUIC address as other server nodes reach it (`host:port`, e.g. the
    /// `bind` address of `server.toml`). `sigil token generate --server` prints it as the joining
    /// node's `seeds`; without it (or for a wildcard IP such as `0.0.0.0`, which no other host can
    /// dial) the snippet holds a placeholder to fill in.
    pub fn with_seed_address(mut self, addr: impl Into<String>) -> AdminService<T> {
        self.seed_address = usable_seed(&addr.into());
        self
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn into_server(self) -> AdminServer<AdminService<T>> {
        AdminServer::new(self)
    }

    fn new_entry_id(&self) -> EntryId {
        let mut bits = [0u8; 16];
        self.env.rng("entry-id").fill_bytes(&mut bits);
        EntryId::from_random(bits)
    }

    fn in_trust_domain(&self, field: &str, id: &SpiffeId) -> Result<(), Status> {
        if id.is_member_of(&self.trust_domain) {
            Ok(())
        } else {
            Err(invalid(format!(
                "{field} {id} is not in this server's trust domain {}",
                self.trust_domain
            )))
        }
    }

    /// Parses and checks a request entry. `id` is the entry's ID (assigned or given).
    fn parse_entry(&self, e: &pb::Entry, id: EntryId) -> Result<RegistrationEntry, Status> {
        let spiffe_id = parse_id("spiffe_id", &e.spiffe_id)?;
        self.in_trust_domain("spiffe_id", &spiffe_id)?;
        let parent_id = parse_id("parent_id", &e.parent_id)?;
        self.in_trust_domain("parent_id", &parent_id)?;
        let selectors = parse_selectors(&e.selectors)?;
        if e.dns_names.len() > LIST_FIELD_MAX || e.federates_with.len() > LIST_FIELD_MAX {
            return Err(invalid("too many DNS names or federated trust domains"));
        }
        let federates_with = e
            .federates_with
            .iter()
            .map(|td| {
                td.parse::<TrustDomain>()
                    .map_err(|err| invalid(format!("federates_with: {err}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        let entry = RegistrationEntry {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl_secs: e.x509_svid_ttl_secs,
            jwt_svid_ttl_secs: e.jwt_svid_ttl_secs,
            dns_names: e.dns_names.clone(),
            federates_with,
            admin: e.admin,
            downstream: e.downstream,
            hint: e.hint.clone(),
            revision: 0,
            created_at_secs: self.env.wall().as_secs(),
            expires_at_secs: e.expires_at_secs,
        };
        entry.validate().map_err(|err| invalid(err.to_string()))?;
        Ok(entry)
    }

    async fn write(&self, cmd: Command) -> Result<Outcome, Status> {
        match self.replica.write(cmd).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(command_status(&e)),
            Err(e) => Err(write_status(&e)),
        }
    }

    fn metrics(&self) -> raft_metrics::Snapshot {
        raft_metrics::snapshot(&self.replica.raft().metrics().borrow())
    }

    /// A request's page size: 0 is the default, more than [`PAGE_SIZE_MAX`] is refused.
    fn page_size(&self, asked: u32) -> Result<usize, Status> {
        let n = match asked {
            0 => self.defaults.page_size.clamp(1, PAGE_SIZE_MAX),
            n if n > PAGE_SIZE_MAX => {
                return Err(invalid(format!("page_size may be at most {PAGE_SIZE_MAX}")))
            }
            n => n,
        };
        Ok(usize::try_from(n).unwrap_or(1))
    }

    /// The node ID a new server token admits: `asked`, or (0) the next unused ID. Checked
    /// against this replica first so the operator hears why at once; the state machine checks
    /// again when the token is created.
    fn server_token_node_id(&self, asked: u64, rejoin: bool) -> Result<u64, Status> {
        // Raft's members count too: a bootstrap node is a member before it registers itself.
        let raft_members: BTreeSet<u64> = self
            .metrics()
            .members
            .iter()
            .map(|(id, _, _)| *id)
            .collect();
        self.replica.read(|a| {
            let state = &a.state;
            if asked == 0 {
                if rejoin {
                    return Err(invalid("--rejoin needs the --node-id of the member to re-admit"));
                }
                let after_raft = raft_members.last().map_or(1, |m| m.saturating_add(1));
                return Ok(state.next_server_id().max(after_raft));
            }
            if state.removed_servers().contains_key(&asked) {
                return Err(invalid(format!(
                    "server node {asked} was removed from this cluster and its ID is never admitted again (its old server SVID would become a member's); give the new node another node_id"
                )));
            }
            let member = state.servers().contains_key(&asked) || raft_members.contains(&asked);
            if member && !rejoin {
                return Err(Status::already_exists(format!(
                    "server node {asked} is already a member; to re-admit it (its server SVID expired while it was down) generate the token with --rejoin, or pick another --node-id (next free: {})",
                    state
                        .next_server_id()
                        .max(raft_members.last().map_or(1, |m| m.saturating_add(1)))
                )));
            }
            if rejoin && !member {
                return Err(invalid(format!(
                    "--rejoin re-admits a member, and server node {asked} is not one; leave out --rejoin"
                )));
            }
            Ok(asked)
        })
    }

    /// The hash of the token named by `token` (the token itself) or `token_sha256` (the hash or
    /// a unique prefix of at least 8 characters).
    fn token_hash_of(&self, token: &str, token_sha256: &str) -> Result<String, Status> {
        match (token.is_empty(), token_sha256.is_empty()) {
            (false, true) => Ok(join_token_sha256(token)),
            (true, false) => {
                let prefix = token_sha256.to_ascii_lowercase();
                if prefix.len() < 8
                    || prefix.len() > 64
                    || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(invalid(
                        "token_sha256 must be 8 to 64 hex characters (as `sigil token list` shows)",
                    ));
                }
                let found: Vec<String> = self.replica.read(|a| {
                    a.state
                        .join_tokens_from(&prefix)
                        .map(|t| t.token_sha256.clone())
                        .take_while(|h| h.starts_with(&prefix))
                        .take(2)
                        .collect()
                });
                match found.as_slice() {
                    [one] => Ok(one.clone()),
                    [] => Err(Status::not_found(format!(
                        "no join token whose hash starts with {prefix}"
                    ))),
                    _ => Err(invalid(format!(
                        "more than one join token's hash starts with {prefix}; give more characters"
                    ))),
                }
            }
            _ => Err(invalid("give exactly one of token and token_sha256")),
        }
    }
}

fn token_to_pb(t: &JoinToken) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        token_sha256: t.token_sha256.clone(),
        purpose: match t.purpose {
            TokenPurpose::Agent => pb::JoinTokenPurpose::Agent.into(),
            TokenPurpose::Server => pb::JoinTokenPurpose::Server.into(),
        },
        created_at_secs: t.created_at.as_secs(),
        expires_at_secs: t.expires_at.as_secs(),
        consumed_by: t
            .consumed_by
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        consumed_at_secs: t.consumed_at.map(|at| at.as_secs()),
        node_id: t.node_id,
        rejoin: t.rejoin,
    }
}

/// The name of an attestation method, as `sigil agent list` shows it.
pub fn method_name(m: &AttestationMethod) -> &'static str {
    match m {
        AttestationMethod::JoinToken => "join_token",
        AttestationMethod::X509Pop => "x509pop",
        AttestationMethod::Tpm => "tpm",
    }
}

fn agent_to_pb(a: &AgentRecord) -> pb::Agent {
    pb::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        attestation_method: method_name(&a.method).into(),
        selectors: a.selectors.iter().map(|s| s.to_string()).collect(),
        banned: a.banned,
        svid_serial: a.svid_serial.clone(),
        svid_not_after_secs: a.svid_not_after.as_secs(),
        renewed_at_secs: a.renewed_at.as_secs(),
        attested_at_secs: a.attested_at.as_secs(),
    }
}

/// The parts of openraft's metrics the admin API reports.
mod raft_metrics {
    use raft::types::NodeId;

    pub(super) struct Snapshot {
        pub(super) state: String,
        pub(super) running: bool,
        pub(super) leader: Option<NodeId>,
        pub(super) term: u64,
        pub(super) applied: Option<u64>,
        /// (node ID, address, voter)
        pub(super) members: Vec<(NodeId, String, bool)>,
    }

    pub(super) fn snapshot(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> Snapshot {
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        Snapshot {
            state: format!("{:?}", m.state),
            running: m.running_state.is_ok() && m.state != openraft::ServerState::Shutdown,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl<T: Transport> Admin for AdminService<T> {
    async fn create_entries(
        &self,
        request: Request<pb::CreateEntriesRequest>,
    ) -> Result<Response<pb::CreateEntriesResponse>, Status> {
        let req = request.into_inner();
        if req.entries.is_empty() {
            return Err(invalid("no entries given"));
        }
        if req.entries.len() > BATCH_ENTRIES_MAX {
            return Err(invalid(format!(
                "at most {BATCH_ENTRIES_MAX} entries per request"
            )));
        }
        // Each request entry either fails here or goes into the batch, in order.
        let mut slots: Vec<Result<(), Status>> = Vec::with_capacity(req.entries.len());
        let mut batch = Vec::new();
        for e in &req.entries {
            let parsed = if e.id.is_empty() {
                Ok(self.new_entry_id())
            } else {
                parse_entry_id(&e.id)
            }
            .and_then(|id| self.parse_entry(e, id));
            match parsed {
                Ok(entry) => {
                    batch.push(entry);
                    slots.push(Ok(()));
                }
                Err(status) => slots.push(Err(status)),
            }
        }
        let mut created = Vec::new().into_iter();
        if !batch.is_empty() {
            let expected = batch.len();
            match self
                .write(Command::CreateEntries { entries: batch })
                .await?
            {
                Outcome::Created(results) if results.len() == expected => {
                    created = results.into_iter();
                }
                other => return Err(unexpected(&other)),
            }
        }
        let results = slots
            .into_iter()
            .map(|slot| {
                let result = match slot {
                    Err(status) => Err(status),
                    Ok(()) => match created.next() {
                        Some(Ok(entry)) => Ok(entry_to_pb(&entry)),
                        Some(Err(e)) => Err(command_status(&e)),
                        None => Err(Status::internal("missing result")),
                    },
                };
                pb::EntryResult {
                    result: Some(match result {
                        Ok(entry) => pb::entry_result::Result::Entry(entry),
                        Err(status) => pb::entry_result::Result::Error(pb::EntryError {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::CreateEntriesResponse { results }))
    }

    async fn update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let req = request.into_inner();
        let e = req.entry.ok_or_else(|| invalid("entry is required"))?;
        if e.id.is_empty() {
            return Err(invalid("entry id is required"));
        }
        let entry = self.parse_entry(&e, parse_entry_id(&e.id)?)?;
        match self
            .write(Command::UpdateEntry {
                entry,
                expected_revision: req.expected_revision,
            })
            .await?
        {
            Outcome::Updated(stored) => Ok(Response::new(entry_to_pb(&stored))),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_entries(
        &self,
        request: Request<pb::DeleteEntriesRequest>,
    ) -> Result<Response<pb::DeleteEntriesResponse>, Status> {
        let req = request.into_inner();
        if req.ids.is_empty() {
            return Err(invalid("no entry ids given"));
        }
        if req.ids.len() > BATCH_ENTRIES_MAX {
            return Err(invalid(format!(
                "at most {BATCH_ENTRIES_MAX} entry ids per request"
            )));
        }
        let ids = req
            .ids
            .iter()
            .map(|id| parse_entry_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        match self.write(Command::DeleteEntries { ids }).await? {
            Outcome::Deleted { deleted, missing } => Ok(Response::new(pb::DeleteEntriesResponse {
                deleted: u64::try_from(deleted).unwrap_or(u64::MAX),
                missing: missing.iter().map(ToString::to_string).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = parse_entry_id(&request.into_inner().id)?;
        self.replica
            .read(|a| a.state.entry(&id).map(entry_to_pb))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("entry {id} not found")))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let req = request.into_inner();
        let page_size = self.page_size(req.page_size)?;
        let parent = match req.parent_id.as_str() {
            "" => None,
            s => Some(parse_id("parent_id", s)?),
        };
        let spiffe_id = match req.spiffe_id.as_str() {
            "" => None,
            s => Some(parse_id("spiffe_id", s)?),
        };
        let selectors = parse_selectors(&req.selectors)?;
        let after = match req.page_token.as_str() {
            "" => None,
            s => Some(
                s.parse::<EntryId>()
                    .map_err(|_| invalid("page_token is not a token from a previous page"))?,
            ),
        };
        let (mut page, more) = self.replica.read(|applied| {
            let state = &applied.state;
            // Start from the narrowest index; every candidate list is in ID order.
            let candidates: Box<dyn Iterator<Item = &RegistrationEntry>> = if let Some(p) = &parent
            {
                Box::new(state.entries_by_parent(p).into_iter())
            } else if let Some(s) = selectors.iter().next() {
                Box::new(state.entries_by_selector(s).into_iter())
            } else {
                Box::new(state.entries())
            };
            let mut page: Vec<pb::Entry> = candidates
                .filter(|e| after.as_ref().is_none_or(|a| e.id > *a))
                .filter(|e| spiffe_id.as_ref().is_none_or(|s| e.spiffe_id == *s))
                .filter(|e| parent.as_ref().is_none_or(|p| e.parent_id == *p))
                .filter(|e| selectors.is_subset(&e.selectors))
                .take(page_size + 1)
                .map(entry_to_pb)
                .collect();
            let more = page.len() > page_size;
            page.truncate(page_size);
            (page, more)
        });
        let next_page_token = if more {
            page.last().map(|e| e.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        page.shrink_to_fit();
        Ok(Response::new(pb::ListEntriesResponse {
            entries: page,
            next_page_token,
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let req = request.into_inner();
        let purpose = match pb::JoinTokenPurpose::try_from(req.purpose) {
            Ok(pb::JoinTokenPurpose::Agent) => TokenPurpose::Agent,
            Ok(pb::JoinTokenPurpose::Server) => TokenPurpose::Server,
            Err(_) => {
                return Err(invalid(format!(
                    "unknown join token purpose {}",
                    req.purpose
                )))
            }
        };
        if purpose == TokenPurpose::Server && !req.spiffe_id.is_empty() {
            return Err(invalid(
                "spiffe_id is for agent tokens only; a server node's ID is spiffe://<td>/sigil/server/<node_id>",
            ));
        }
        if purpose == TokenPurpose::Agent && (req.node_id != 0 || req.rejoin) {
            return Err(invalid(
                "node_id and rejoin are for server tokens only (--server)",
            ));
        }
        let node_id = if purpose == TokenPurpose::Server {
            Some(self.server_token_node_id(req.node_id, req.rejoin)?)
        } else {
            None
        };
        let ttl_secs = match req.ttl_secs {
            0 if purpose == TokenPurpose::Server => self.defaults.server_join_token_ttl_secs,
            0 => self.defaults.join_token_ttl_secs,
            n if n > self.defaults.join_token_ttl_max_secs => {
                return Err(invalid(format!(
                    "a join token may live at most {} seconds",
                    self.defaults.join_token_ttl_max_secs
                )))
            }
            n => n,
        };
        let bundle_sha256 = self.replica.read(|a| {
            bundle_hash_or_empty(&a.state.bundle(self.defaults.bundle_refresh_hint_secs))
        });
        if purpose == TokenPurpose::Server && bundle_sha256.is_empty() {
            return Err(Status::failed_precondition(
                "this trust domain has no X.509 authority yet, so there is no bundle for a joining server node to pin; wait until this node's CA is published and try again",
            ));
        }
        let alias = match req.spiffe_id.as_str() {
            "" => None,
            s => {
                let spiffe_id = parse_id("spiffe_id", s)?;
                self.in_trust_domain("spiffe_id", &spiffe_id)?;
                Some(spiffe_id)
            }
        };
        let request = TokenRequest {
            purpose,
            ttl: Duration::from_secs(ttl_secs),
            node_id,
            rejoin: req.rejoin,
            alias,
        };
        let mut rng = self.env.rng("join-token");
        let new = new_join_token(&self.trust_domain, &request, self.env.wall(), &mut rng)
            .map_err(|e| invalid(one_line(&e.to_string())))?;
        // One command: a token given an extra ID is registered with its entry, or not at all.
        let entry_id = match self.write(new.command).await? {
            Outcome::Done => String::new(),
            Outcome::Created(mut results) if results.len() == 1 => match results.pop() {
                Some(Ok(stored)) => stored.id.to_string(),
                Some(Err(e)) => return Err(command_status(&e)),
                None => return Err(Status::internal("missing result")),
            },
            other => return Err(unexpected(&other)),
        };
        let expires_at_secs = new.expires_at.as_secs();
        match &new.agent_id {
            Some(agent) => tracing::info!(%agent, ttl_secs, "join token created"),
            None => tracing::info!(
                ttl_secs,
                node_id = node_id.unwrap_or_default(),
                rejoin = req.rejoin,
                "server join token created"
            ),
        }
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: new.secret,
            expires_at_secs,
            agent_spiffe_id: new.agent_id.map(|a| a.to_string()).unwrap_or_default(),
            entry_id,
            purpose: match purpose {
                TokenPurpose::Server => pb::JoinTokenPurpose::Server.into(),
                _ => pb::JoinTokenPurpose::Agent.into(),
            },
            bundle_sha256,
            seed_address: self.seed_address.clone().unwrap_or_default(),
            trust_domain: self.trust_domain.to_string(),
            node_id: node_id.unwrap_or_default(),
        }))
    }

    async fn get_bundle(
        &self,
        _request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        let bundle = self
            .replica
            .read(|a| a.state.bundle(self.defaults.bundle_refresh_hint_secs));
        Ok(Response::new(pb::GetBundleResponse {
            trust_domain: self.trust_domain.to_string(),
            bundle_json: bundle.to_json().into_bytes(),
            x509_authorities: bundle
                .x509_authorities
                .iter()
                .map(|a| a.cert_der.clone())
                .collect(),
            sequence: bundle.sequence.unwrap_or(0),
            refresh_hint_secs: bundle.refresh_hint_secs.unwrap_or(0),
            bundle_sha256: bundle_hash_or_empty(&bundle),
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let m = self.metrics();
        let (active, bundle_sequence, entries, servers) = self.replica.read(|a| {
            let active: Vec<(u64, bool, pb::Authority)> = a
                .state
                .authorities()
                .values()
                .filter(|r| r.state == AuthorityState::Active)
                .map(|r| {
                    (
                        r.authority.node_id,
                        matches!(r.authority.key, AuthorityKey::X509(_)),
                        pb::Authority {
                            id: r.authority.id.clone(),
                            not_after_secs: r.authority.not_after.as_secs(),
                        },
                    )
                })
                .collect();
            let servers: Vec<pb::ServerNode> =
                a.state.servers().values().map(server_to_pb).collect();
            (
                active,
                a.state.bundle_sequence(),
                a.state.entries().count(),
                servers,
            )
        });
        let authority_of = |node: u64, x509: bool| {
            active
                .iter()
                .filter(|(n, is_x509, _)| *n == node && *is_x509 == x509)
                .map(|(_, _, a)| a.clone())
                .max_by_key(|a| a.not_after_secs)
        };
        let members = m
            .members
            .iter()
            .map(|(id, addr, voter)| pb::Member {
                node_id: *id,
                address: addr.clone(),
                voter: *voter,
                leader: m.leader == Some(*id),
                x509_authority: authority_of(*id, true),
                jwt_authority: authority_of(*id, false),
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            trust_domain: self.trust_domain.to_string(),
            node_id: self.replica.id(),
            node_state: m.state,
            leader_id: m.leader,
            term: m.term,
            applied_index: m.applied,
            members,
            bundle_sequence,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            servers,
        }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let m = self.metrics();
        Ok(Response::new(pb::HealthResponse {
            serving: m.running,
            node_id: self.replica.id(),
            leader_id: m.leader,
            applied_index: m.applied,
        }))
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        let req = request.into_inner();
        let node_id = req.node_id;
        if node_id == 0 {
            return Err(invalid("node_id is required (server node IDs are > 0)"));
        }
        let at = self.env.wall();
        let prune_after =
            at.saturating_add(Duration::from_secs(self.defaults.removed_server_keep_secs));
        // The address as this replica knows it, for the answer; the state machine decides.
        let known = self
            .replica
            .read(|a| a.state.servers().get(&node_id).cloned());
        let cmd = Command::RemoveServer {
            node_id,
            at,
            prune_after,
            compromised: req.compromised,
        };
        match self.write(cmd).await? {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        if req.compromised {
            tracing::warn!(node_id, "server node removed as compromised: its authorities left the trust bundle, so every SVID it signed stops verifying");
        } else {
            tracing::info!(node_id, prune_after = prune_after.as_secs(), "server node removed from the desired membership; its authorities stay in the bundle until every SVID it may have signed expired");
        }
        // This replica may apply the removal after the leader answered: leave it out regardless.
        let servers = self.replica.read(|a| {
            a.state
                .servers()
                .values()
                .filter(|s| s.node_id != node_id)
                .map(server_to_pb)
                .collect()
        });
        Ok(Response::new(pb::RemoveServerResponse {
            removed: Some(pb::ServerNode {
                node_id,
                addr: known.map(|s| s.addr).unwrap_or_default(),
            }),
            servers,
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let req = request.into_inner();
        let page_size = self.page_size(req.page_size)?;
        let (tokens, more) = self.replica.read(|a| {
            let mut page: Vec<pb::JoinTokenInfo> = a
                .state
                .join_tokens_after(&req.page_token)
                .take(page_size + 1)
                .map(token_to_pb)
                .collect();
            let more = page.len() > page_size;
            page.truncate(page_size);
            (page, more)
        });
        let next_page_token = match tokens.last() {
            Some(last) if more => last.token_sha256.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens,
            next_page_token,
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let req = request.into_inner();
        let token_sha256 = self.token_hash_of(&req.token, &req.token_sha256)?;
        match self
            .write(Command::RevokeJoinToken {
                token_sha256: token_sha256.clone(),
            })
            .await?
        {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        tracing::info!(token_sha256 = %&token_sha256[..16], "join token revoked");
        Ok(Response::new(pb::RevokeJoinTokenResponse { token_sha256 }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let page_size = self.page_size(req.page_size)?;
        let after = match req.page_token.as_str() {
            "" => None,
            s => Some(parse_id("page_token", s)?),
        };
        let (agents, more) = self.replica.read(|a| {
            let mut page: Vec<pb::Agent> = a
                .state
                .agents_after(after.as_ref())
                .take(page_size + 1)
                .map(agent_to_pb)
                .collect();
            let more = page.len() > page_size;
            page.truncate(page_size);
            (page, more)
        });
        let next_page_token = match agents.last() {
            Some(last) if more => last.spiffe_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = parse_id("spiffe_id", &request.into_inner().spiffe_id)?;
        self.replica
            .read(|a| a.state.agent(&id).map(agent_to_pb))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("agent {id} is not attested")))
    }

    async fn set_agent_banned(
        &self,
        request: Request<pb::SetAgentBannedRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let req = request.into_inner();
        let spiffe_id = parse_id("spiffe_id", &req.spiffe_id)?;
        let cmd = Command::SetAgentBanned {
            spiffe_id: spiffe_id.clone(),
            banned: req.banned,
        };
        match self.write(cmd).await? {
            Outcome::Agent(agent) => {
                if req.banned {
                    tracing::warn!(agent = %spiffe_id, "agent banned: every node refuses it everything once it applied the ban");
                } else {
                    tracing::info!(agent = %spiffe_id, "agent unbanned");
                }
                Ok(Response::new(agent_to_pb(&agent)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn evict_agent(
        &self,
        request: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        let spiffe_id = parse_id("spiffe_id", &request.into_inner().spiffe_id)?;
        match self
            .write(Command::EvictAgent {
                spiffe_id: spiffe_id.clone(),
            })
            .await?
        {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        tracing::info!(agent = %spiffe_id, "agent evicted: it must attest again");
        Ok(Response::new(pb::EvictAgentResponse {}))
    }
}

fn os_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Os {
        what,
        detail: format!("{}: {}", path.display(), io_text(&e.to_string())),
    }
}

/// An OS error's text without the " (os error N)" suffix.
pub fn io_text(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text.to_owned(),
    }
}

/// Distinguishes the private directories of concurrent binds in one process.
static BIND_SEQ: AtomicU64 = AtomicU64::new(0);

/// Binds a Unix socket at `path` with permissions `mode`, replacing a stale socket file and
/// refusing to replace anything else, a socket another process serves included
/// ([`super::socket::claim`]). The socket is bound in a fresh directory only the owner can
/// enter, given `mode`, then renamed into place: it is never reachable with looser permissions.
pub fn bind_admin_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, Error> {
    super::socket::claim(path, "creating the admin socket")?;
    let name = path.file_name().ok_or_else(|| Error::Os {
        what: "creating the admin socket",
        detail: format!("{} does not name a file", path.display()),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| os_error("creating the admin socket's directory", &parent, e))?;
    let private = parent.join(format!(
        ".{}.{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        BIND_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            os_error(
                "creating a private directory for the admin socket",
                &private,
                e,
            )
        })?;
    let staged = private.join("s");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .map_err(|e| os_error("binding the admin socket", &staged, e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| os_error("restricting the admin socket", &staged, e))?;
        std::fs::rename(&staged, path)
            .map_err(|e| os_error("moving the admin socket into place", path, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| os_error("configuring the admin socket", path, e))?;
        tokio::net::UnixListener::from_std(listener)
            .map_err(|e| os_error("registering the admin socket", path, e))
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Serves `service` on a Unix socket at `path` with mode 0600 until `shutdown` completes, then
/// removes the socket file. See [`bind_admin_socket`] for how the socket is created.
pub async fn serve_admin<T: Transport>(
    path: &Path,
    service: AdminService<T>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_admin_with_mode(path, ADMIN_SOCKET_MODE, service, shutdown).await
}

/// [`serve_admin`] with explicit socket permissions.
pub async fn serve_admin_with_mode<T: Transport>(
    path: &Path,
    mode: u32,
    service: AdminService<T>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let routes = tonic::service::Routes::new(service.into_server());
    serve_on_socket(path, mode, "admin API", routes, shutdown).await
}

/// Serves gRPC `routes` on a Unix socket at `path` made by [`bind_admin_socket`] with `mode`
/// until `shutdown` completes, then removes the socket file. `what` names the API in logs.
/// Connections go through the Workload API's `:authority` adapter
/// ([`AuthorityFix`](super::h2_authority::AuthorityFix)), so grpc-python clients, which name
/// the socket path as `:authority`, are served too; requests still carry the peer credentials
/// (`UdsConnectInfo`).
pub async fn serve_on_socket(
    path: &Path,
    mode: u32,
    what: &'static str,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listener = bind_admin_socket(path, mode)?;
    let ours = super::socket::Claimed::record(path);
    tracing::info!(socket = %path.display(), "{what} listening");
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(super::h2_authority::AuthorityFix::new),
    );
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    ours.release();
    served.map_err(|e| Error::Os {
        what: "serving a gRPC API on a Unix socket",
        detail: format!("{what} at {}: {}", path.display(), io_text(&e.to_string())),
    })
}

/// How long the client waits for one admin call (writes may wait for a quorum).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A gRPC channel over the Unix socket at `path` (tonic over hyper): connects once at once, so
/// a missing or refused socket is an error here rather than on the first call, and reconnects
/// later as needed. The error is the OS's text.
pub async fn uds_channel(
    path: &Path,
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    let first = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let first = Arc::new(std::sync::Mutex::new(Some(first)));
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let first = first.clone();
        let socket = socket.clone();
        async move {
            let ready = first.lock().unwrap_or_else(|p| p.into_inner()).take();
            let stream = match ready {
                Some(stream) => stream,
                None => tokio::net::UnixStream::connect(&socket).await?,
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())
}

/// Connects to the admin API on the Unix socket at `path`. The error names the socket and asks
/// whether the server is running.
pub async fn connect(path: &Path) -> Result<AdminClient<tonic::transport::Channel>, Error> {
    let unreachable = |e: &dyn std::fmt::Display| Error::Os {
        what: "cannot reach the admin socket",
        detail: format!(
            "{}: {} (is `sigil server` running?)",
            path.display(),
            io_text(&e.to_string())
        ),
    };
    let endpoint = tonic::transport::Endpoint::from_static("http://sigil-admin.local")
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    let channel = uds_channel(path, endpoint)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(AdminClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_text_drops_the_os_error_suffix() {
        assert_eq!(
            io_text("No such file or directory (os error 2)"),
            "No such file or directory"
        );
        assert_eq!(io_text("plain"), "plain");
    }

    #[test]
    fn seed_addresses_must_be_dialable() {
        assert_eq!(
            usable_seed("10.0.0.1:8443").as_deref(),
            Some("10.0.0.1:8443")
        );
        assert_eq!(
            usable_seed("sigil-1.internal:8443").as_deref(),
            Some("sigil-1.internal:8443")
        );
        assert_eq!(usable_seed("[::1]:8443").as_deref(), Some("[::1]:8443"));
        for wildcard in ["0.0.0.0:8443", "[::]:8443", "10.0.0.1:0", "", "  "] {
            assert_eq!(usable_seed(wildcard), None, "{wildcard:?}");
        }
    }

    #[test]
    fn join_token_hash_is_lowercase_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            join_token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn statuses_map_command_errors() {
        use tonic::Code;
        let cases = [
            (CommandError::Invalid("x".into()), Code::InvalidArgument),
            (CommandError::NotFound("x".into()), Code::NotFound),
            (CommandError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                CommandError::RevisionMismatch {
                    expected: 1,
                    actual: 2,
                },
                Code::FailedPrecondition,
            ),
            (CommandError::Limit("x".into()), Code::ResourceExhausted),
        ];
        for (e, code) in cases {
            assert_eq!(command_status(&e).code(), code, "{e}");
        }
        let s = write_status(&WriteError::NoQuorum { waited_ms: 5 });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("no quorum"), "{}", s.message());
        assert_eq!(one_line("a\nb"), "a b");
    }

    #[test]
    fn bind_refuses_a_regular_file_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let err = bind_admin_socket(&file, ADMIN_SOCKET_MODE).expect_err("not a socket");
            assert!(err.to_string().contains("not a socket"), "{err}");
            let sock = dir.path().join("a.sock");
            let first = bind_admin_socket(&sock, ADMIN_SOCKET_MODE).expect("bind");
            drop(first);
            // The file stays behind (stale); binding again replaces it.
            let _second = bind_admin_socket(&sock, ADMIN_SOCKET_MODE).expect("rebind");
            let mode = std::fs::metadata(&sock).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // No private directories left behind.
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect();
            assert_eq!(left.len(), 2, "{left:?}");
        });
    }
}
