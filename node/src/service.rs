//! [`NodeService`]: the server side of the node API ([`wire::api`]) — what a server node answers
//! to agents and to server nodes that join. Onboarding (consuming a join token) goes through
//! Raft; everything an attested agent asks afterwards (its entries, SVID signing, renewal, the
//! watch stream) is answered from the local replica with no Raft write (DESIGN.md §2).
//!
//! Every agent request re-verifies the caller's certificate chain against the bundle *now*, so
//! an agent SVID that expired, was issued by a pruned authority, or belongs to a banned agent
//! stops working without waiting for its connection to close.

use std::time::Duration;

use attest::x509::validate_x509_svid;
use raft::replica::WriteError;
use raft::store::Applied;
use tokio::sync::mpsc;
use wire::api::{AgentView, ApiCode, ApiError, ApiRequest, ApiResponse, IssuedX509, SignX509};
use wire::{
    AgentRecord, AttestationMethod, Command, CommandError, Outcome, Selector, ServerRecord,
    SpiffeId, Transport, TrustDomain,
};

use crate::actors::issuer::authorized_entries;
use crate::server::ServerNode;
use crate::Error;

/// How long onboarding waits for this node's replica to apply its own committed write.
pub const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(5);

/// The SPIFFE ID of an agent attested with the join token whose hash is `token_sha256`.
pub fn join_token_agent_id(td: &TrustDomain, token_sha256: &str) -> Result<SpiffeId, Error> {
    td.join(&["sigil", "agent", "join_token", token_sha256])
        .map_err(|e| Error::Config(e.to_string()))
}

/// The SPIFFE ID of server node `node_id`.
pub fn server_id(td: &TrustDomain, node_id: u64) -> Result<SpiffeId, Error> {
    td.join(&["sigil", "server", &node_id.to_string()])
        .map_err(|e| Error::Config(e.to_string()))
}

fn denied(message: impl Into<String>) -> ApiError {
    ApiError::new(ApiCode::PermissionDenied, message)
}

/// How a node-layer failure looks to a caller.
pub fn api_error(e: &Error) -> ApiError {
    let code = match e {
        Error::NotAuthorized(_) => ApiCode::PermissionDenied,
        Error::Stale { .. } | Error::NoActiveKey => ApiCode::Unavailable,
        Error::Attest(attest::Error::InvalidRequest(_)) => ApiCode::InvalidArgument,
        _ => ApiCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn write_error(e: &WriteError) -> ApiError {
    ApiError::new(ApiCode::Unavailable, e.to_string())
}

/// Token refusals all look alike to the caller (no oracle for which tokens exist).
fn token_error(e: &CommandError) -> ApiError {
    match e {
        CommandError::NotFound(_)
        | CommandError::TokenUsed
        | CommandError::TokenExpired
        | CommandError::TokenPurpose(_) => {
            denied("join token not valid (unknown, used, expired or for another purpose)")
        }
        CommandError::AgentBanned(_) => denied(e.to_string()),
        other => ApiError::invalid(other.to_string()),
    }
}

/// The node API of one server node.
#[derive(Debug)]
pub struct NodeService<T: Transport> {
    node: ServerNode<T>,
}

impl<T: Transport> Clone for NodeService<T> {
    fn clone(&self) -> Self {
        NodeService {
            node: self.node.clone(),
        }
    }
}

impl<T: Transport> NodeService<T> {
    /// The service of `node`.
    pub fn new(node: ServerNode<T>) -> NodeService<T> {
        NodeService { node }
    }

    fn td(&self) -> &TrustDomain {
        &self.node.config().issuer.trust_domain
    }

    /// Handles one request from a caller that presented `chain` (empty: no certificate),
    /// sending the answer(s) into `out`.
    pub async fn handle(
        &self,
        chain: &[Vec<u8>],
        request: ApiRequest,
        out: mpsc::Sender<ApiResponse>,
    ) {
        let answer = match request {
            ApiRequest::Bundle => Ok(ApiResponse::Bundle(self.node.bundle())),
            ApiRequest::JoinServer {
                token,
                node_id,
                addr,
                public_key_der,
            } => {
                self.join_server(&token, node_id, addr, &public_key_der)
                    .await
            }
            ApiRequest::AttestJoinToken {
                token,
                public_key_der,
            } => self.attest_join_token(&token, &public_key_der).await,
            ApiRequest::Watch => {
                match self.agent(chain) {
                    Ok(agent) => self.watch(chain, &agent, &out).await,
                    Err(e) => {
                        let _ = out.send(ApiResponse::Error(e)).await;
                    }
                }
                return;
            }
            request => match self.agent(chain) {
                Ok(agent) => self.agent_request(&agent, request),
                Err(e) => Err(e),
            },
        };
        let response = answer.unwrap_or_else(ApiResponse::Error);
        let _ = out.send(response).await;
    }

    /// The calling agent: its chain verifies against our bundle now, names an agent of our
    /// trust domain, and that agent is attested and not banned.
    pub fn agent(&self, chain: &[Vec<u8>]) -> Result<SpiffeId, ApiError> {
        if chain.is_empty() {
            return Err(ApiError::new(
                ApiCode::Unauthenticated,
                "this request needs an agent SVID as client certificate",
            ));
        }
        let td = self.td().clone();
        let wall = self.node.env().wall();
        let id = validate_x509_svid(chain, &(td.clone(), self.node.bundle()), wall)
            .map_err(|e| ApiError::new(ApiCode::Unauthenticated, e.to_string()))?;
        if !id.path().starts_with("/sigil/agent/") {
            return Err(denied(format!("{id} is not an agent")));
        }
        self.node.replica().read(|a| match a.state.agent(&id) {
            Some(record) if record.banned => Err(denied(format!("agent {id} is banned"))),
            Some(_) => Ok(id.clone()),
            None => Err(denied(format!("{id} is not an attested agent"))),
        })
    }

    fn agent_request(
        &self,
        agent: &SpiffeId,
        request: ApiRequest,
    ) -> Result<ApiResponse, ApiError> {
        match request {
            ApiRequest::RenewAgent { public_key_der } => {
                let svid = self
                    .node
                    .issue_agent_svid(agent, &public_key_der)
                    .map_err(|e| api_error(&e))?;
                self.record_renewal(agent, &svid);
                Ok(ApiResponse::AgentSvid {
                    spiffe_id: agent.clone(),
                    chain: vec![svid.cert_der],
                    not_after: svid.not_after,
                    bundle: self.node.bundle(),
                })
            }
            ApiRequest::Sync => Ok(ApiResponse::View(self.view(agent))),
            ApiRequest::SignX509 { requests } => Ok(ApiResponse::X509(
                requests.iter().map(|r| self.sign_x509(agent, r)).collect(),
            )),
            ApiRequest::MintJwt { entry_id, audience } => {
                let (token, expires_at) = self
                    .node
                    .issue_jwt(agent, &entry_id, &audience)
                    .map_err(|e| api_error(&e))?;
                Ok(ApiResponse::Jwt { token, expires_at })
            }
            ApiRequest::Bundle
            | ApiRequest::JoinServer { .. }
            | ApiRequest::AttestJoinToken { .. }
            | ApiRequest::Watch => Err(ApiError::new(ApiCode::Internal, "misrouted request")),
        }
    }

    fn sign_x509(&self, agent: &SpiffeId, req: &SignX509) -> Result<IssuedX509, ApiError> {
        let svid = self
            .node
            .issue_x509(agent, &req.entry_id, &req.public_key_der)
            .map_err(|e| api_error(&e))?;
        let spiffe_id = self
            .node
            .replica()
            .read(|a| a.state.entry(&req.entry_id).map(|e| e.spiffe_id.clone()))
            .ok_or_else(|| ApiError::new(ApiCode::NotFound, "entry deleted while signing"))?;
        Ok(IssuedX509 {
            entry_id: req.entry_id.clone(),
            spiffe_id,
            chain: vec![svid.cert_der],
            not_after: svid.not_after,
        })
    }

    /// What `agent` needs now.
    pub fn view(&self, agent: &SpiffeId) -> AgentView {
        let hint = self.node.config().refresh_hint_secs;
        self.node.replica().read(|a: &Applied| AgentView {
            node_id: self.node.config().node_id,
            applied_index: a.last_applied.map(|l| l.index).unwrap_or(0),
            bundle: a.state.bundle(hint),
            federated: a
                .state
                .federated()
                .iter()
                .map(|(td, b)| (td.clone(), b.clone()))
                .collect(),
            entries: authorized_entries(&a.state, agent)
                .into_iter()
                .cloned()
                .collect(),
        })
    }

    /// Sends `agent`'s view now and again whenever the applied state changes it, until the
    /// stream closes or the agent stops being authorized.
    async fn watch(&self, chain: &[Vec<u8>], agent: &SpiffeId, out: &mpsc::Sender<ApiResponse>) {
        let mut progress = self.node.replica().subscribe();
        let mut last: Option<AgentView> = None;
        loop {
            if let Err(e) = self.agent(chain) {
                let _ = out.send(ApiResponse::Error(e)).await;
                return;
            }
            let view = self.view(agent);
            let changed = last.as_ref().is_none_or(|l| {
                l.bundle != view.bundle
                    || l.entries != view.entries
                    || l.federated != view.federated
            });
            if changed {
                if out.send(ApiResponse::View(view.clone())).await.is_err() {
                    return;
                }
                last = Some(view);
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() { return },
                () = out.closed() => return,
            }
        }
    }

    /// Records an agent renewal in the replicated state, best-effort and after the fact.
    fn record_renewal(&self, agent: &SpiffeId, svid: &attest::X509Svid) {
        let replica = self.node.replica().clone();
        let cmd = Command::RecordAgentRenewal {
            spiffe_id: agent.clone(),
            svid_serial: attest::hex(&svid.serial),
            svid_not_after: svid.not_after,
        };
        self.node.env().spawn(
            "record-renewal",
            Box::pin(async move {
                if let Err(e) = replica.write(cmd).await {
                    tracing::debug!(error = %e, "agent renewal not recorded (best-effort)");
                }
            }),
        );
    }

    /// Waits until this node's replica satisfies `done` (after a write committed elsewhere).
    async fn wait_applied(&self, done: impl Fn(&Applied) -> bool) -> bool {
        let mut progress = self.node.replica().subscribe();
        let wait = async {
            loop {
                if self.node.replica().read(&done) {
                    return;
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(LOCAL_APPLY_WAIT, wait).await.is_ok()
            && self.node.replica().read(&done)
    }

    async fn attest_join_token(
        &self,
        token: &str,
        public_key_der: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        // Refuse before the token is consumed when this node could not issue the SVID anyway.
        self.node.ready_to_issue().map_err(|e| api_error(&e))?;
        let token_sha256 = attest::sha256_hex(token.as_bytes());
        let agent_id = join_token_agent_id(self.td(), &token_sha256).map_err(|e| api_error(&e))?;
        let record = AgentRecord {
            spiffe_id: agent_id.clone(),
            method: AttestationMethod::JoinToken,
            selectors: vec![Selector::new("join_token", &token_sha256)
                .map_err(|e| ApiError::new(ApiCode::Internal, e.to_string()))?],
            banned: false,
            svid_serial: String::new(),
            svid_not_after: wire::UnixTime::from_secs(0),
        };
        let cmd = Command::ConsumeJoinToken {
            token_sha256: token_sha256.clone(),
            agent: record,
            at: self.node.env().wall(),
        };
        match self.node.replica().write(cmd).await {
            Ok(Ok(Outcome::Agent(_))) => {}
            Ok(Ok(other)) => {
                return Err(ApiError::new(
                    ApiCode::Internal,
                    format!("unexpected outcome {other:?}"),
                ))
            }
            // A retry of an attestation that committed but whose answer was lost.
            Ok(Err(CommandError::TokenUsed))
                if self.token_consumed_by(&token_sha256, &agent_id) => {}
            Ok(Err(e)) => return Err(token_error(&e)),
            Err(e) => return Err(write_error(&e)),
        }
        if !self
            .wait_applied(|a| a.state.agent(&agent_id).is_some())
            .await
        {
            return Err(ApiError::new(
                ApiCode::Unavailable,
                "the attestation committed but this node has not applied it yet; retry",
            ));
        }
        let svid = self
            .node
            .issue_agent_svid(&agent_id, public_key_der)
            .map_err(|e| api_error(&e))?;
        self.record_renewal(&agent_id, &svid);
        tracing::info!(agent = %agent_id, "agent attested with a join token");
        Ok(ApiResponse::AgentSvid {
            spiffe_id: agent_id,
            chain: vec![svid.cert_der],
            not_after: svid.not_after,
            bundle: self.node.bundle(),
        })
    }

    /// Whether the token `token_sha256` was consumed by `id` and has not expired (an
    /// idempotent retry by the same holder).
    fn token_consumed_by(&self, token_sha256: &str, id: &SpiffeId) -> bool {
        let wall = self.node.env().wall();
        self.node.replica().read(|a| {
            a.state
                .join_token(token_sha256)
                .is_some_and(|t| t.consumed_by.as_ref() == Some(id) && t.expires_at > wall)
        })
    }

    async fn join_server(
        &self,
        token: &str,
        node_id: u64,
        addr: String,
        public_key_der: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        let token_sha256 = attest::sha256_hex(token.as_bytes());
        let spiffe_id = server_id(self.td(), node_id).map_err(|e| api_error(&e))?;
        let server = ServerRecord { node_id, addr };
        let cmd = Command::ConsumeServerToken {
            token_sha256: token_sha256.clone(),
            server: server.clone(),
            spiffe_id: spiffe_id.clone(),
            at: self.node.env().wall(),
        };
        match self.node.replica().write(cmd).await {
            Ok(Ok(_)) => {}
            Ok(Err(CommandError::TokenUsed))
                if self.token_consumed_by(&token_sha256, &spiffe_id) => {}
            Ok(Err(e)) => return Err(token_error(&e)),
            Err(e) => return Err(write_error(&e)),
        }
        let svid = self
            .node
            .issue_server_svid(node_id, public_key_der)
            .map_err(|e| api_error(&e))?;
        self.wait_applied(|a| a.state.servers().contains_key(&node_id))
            .await;
        let servers = self
            .node
            .replica()
            .read(|a| a.state.servers().values().cloned().collect());
        tracing::info!(node = node_id, addr = %server.addr, "server node admitted with a server join token");
        Ok(ApiResponse::Joined {
            chain: vec![svid.cert_der],
            bundle: self.node.bundle(),
            servers,
        })
    }
}
