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
//!
//! **Where things are.**
//! - `mod.rs` (here): the socket constants, [`AdminDefaults`], [`AdminService`] and the `Admin`
//!   trait impl (each RPC answered by a `handle_*` method in the file of its group), the error
//!   mapping ([`write_status`], [`command_status`]), writes through Raft and the helpers every
//!   group uses (SPIFFE ID parsing, trust-domain membership, page sizes, the seed address);
//! - `entries.rs`: registration entries — create, update, delete, get, list; parsing and
//!   checking a request entry, [`entry_to_pb`];
//! - `tokens.rs`: join tokens — create (agent and server tokens), list, revoke;
//!   [`join_token_agent_id`];
//! - `agents.rs`: attested agents — list, get, ban/unban, evict; [`method_name`];
//! - `cluster.rs`: the cluster — status, health, removing a server node, the bundle
//!   ([`bundle_hash_or_empty`]) and the parts of openraft's metrics reported;
//! - `uds.rs`: the Unix-socket plumbing — [`bind_admin_socket`], [`serve_admin`],
//!   [`serve_on_socket`], and the client side ([`uds_channel`], [`connect`]), [`io_text`];
//! - `tests.rs`: unit tests.
//!
//! [`RegistrationEntry::validate`]: wire::RegistrationEntry::validate

mod agents;
mod cluster;
mod entries;
mod tokens;
mod uds;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use raft::replica::{Replica, WriteError};
use tonic::{Request, Response, Status};
use wire::admin::admin_server::{Admin, AdminServer};
use wire::admin::{self as pb, PAGE_SIZE_MAX};
use wire::{Command, CommandError, Env, Outcome, SpiffeId, Transport, TrustDomain};

pub use crate::actors::registration::join_token_sha256;
pub use agents::method_name;
pub use cluster::bundle_hash_or_empty;
pub use entries::entry_to_pb;
pub use tokens::join_token_agent_id;
pub use uds::{
    bind_admin_socket, connect, io_text, serve_admin, serve_admin_with_mode, serve_on_socket,
    uds_channel, CLIENT_TIMEOUT,
};

/// The environment variable naming the admin socket (read by the CLI).
pub const ADMIN_SOCKET_ENV: &str = "SIGIL_ADMIN_SOCKET";
/// The admin socket when neither `--admin-socket` nor [`ADMIN_SOCKET_ENV`] is given.
pub const ADMIN_SOCKET_DEFAULT: &str = "/run/sigil/admin.sock";
/// Permissions of the admin socket: owner read/write only.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;

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

fn parse_id(field: &str, text: &str) -> Result<SpiffeId, Status> {
    if text.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    text.parse::<SpiffeId>()
        .map_err(|e| invalid(format!("{field}: {e}")))
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

    async fn write(&self, cmd: Command) -> Result<Outcome, Status> {
        match self.replica.write(cmd).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(command_status(&e)),
            Err(e) => Err(write_status(&e)),
        }
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
}

#[tonic::async_trait]
impl<T: Transport> Admin for AdminService<T> {
    async fn create_entries(
        &self,
        request: Request<pb::CreateEntriesRequest>,
    ) -> Result<Response<pb::CreateEntriesResponse>, Status> {
        self.handle_create_entries(request).await
    }

    async fn update_entry(
        &self,
        request: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        self.handle_update_entry(request).await
    }

    async fn delete_entries(
        &self,
        request: Request<pb::DeleteEntriesRequest>,
    ) -> Result<Response<pb::DeleteEntriesResponse>, Status> {
        self.handle_delete_entries(request).await
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        self.handle_get_entry(request).await
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.handle_list_entries(request).await
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.handle_create_join_token(request).await
    }

    async fn get_bundle(
        &self,
        request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        self.handle_get_bundle(request).await
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.handle_cluster_status(request).await
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.handle_health(request).await
    }

    async fn remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        self.handle_remove_server(request).await
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.handle_list_join_tokens(request).await
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        self.handle_revoke_join_token(request).await
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.handle_list_agents(request).await
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        self.handle_get_agent(request).await
    }

    async fn set_agent_banned(
        &self,
        request: Request<pb::SetAgentBannedRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        self.handle_set_agent_banned(request).await
    }

    async fn evict_agent(
        &self,
        request: Request<pb::EvictAgentRequest>,
    ) -> Result<Response<pb::EvictAgentResponse>, Status> {
        self.handle_evict_agent(request).await
    }
}
