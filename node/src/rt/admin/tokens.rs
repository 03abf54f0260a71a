//! Join tokens: `CreateJoinToken` (agent and server tokens), `ListJoinTokens` and
//! `RevokeJoinToken`, with the checks of a server token's node ID and naming a token by its
//! hash (or a prefix of it).

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wire::admin as pb;
use wire::{Command, JoinToken, Outcome, SpiffeId, TokenPurpose, Transport, TrustDomain};

use super::cluster::bundle_hash_or_empty;
use super::{
    command_status, invalid, join_token_sha256, one_line, parse_id, unexpected, AdminService,
};
use crate::actors::registration::{new_join_token, TokenRequest};

/// The SPIFFE ID of an agent attested with the join token whose hash is `token_sha256`.
pub fn join_token_agent_id(td: &TrustDomain, token_sha256: &str) -> Result<SpiffeId, Status> {
    crate::service::join_token_agent_id(td, token_sha256)
        .map_err(|e| Status::internal(one_line(&e.to_string())))
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

impl<T: Transport> AdminService<T> {
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

    pub(super) async fn handle_create_join_token(
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

    pub(super) async fn handle_list_join_tokens(
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

    pub(super) async fn handle_revoke_join_token(
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
}
