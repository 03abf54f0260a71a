//! [`NodeService`]: the server side of the node API ([`wire::api`]) — what a server node answers
//! to agents and to server nodes that join. Onboarding (consuming a join token, registering an
//! agent attested by x509pop or TPM) goes through Raft; everything an attested agent asks
//! afterwards (its entries, SVID signing, renewal, the watch stream) is answered from the local
//! replica with no Raft write (DESIGN.md §2). An x509pop or TPM re-attestation of an agent the
//! replica already holds with the same selectors is a renewal in that sense: no Raft write
//! either.
//!
//! TPM attestation takes two requests on one connection ([`attest::tpm`]): the first is
//! answered with a challenge the node can check later without keeping state (its
//! [`attest::tpm::Challenger`] key lives in memory only, so a challenge must be answered to the
//! node, and the process, that made it).
//!
//! Every agent request re-verifies the caller's certificate chain against the bundle *now*, so
//! an agent SVID that expired, was issued by a pruned authority, or belongs to a banned agent
//! stops working without waiting for its connection to close.

use std::time::Duration;

use std::sync::Arc;

use attest::tpm::{Challenger, EkPolicy, Evidence};
use attest::x509::validate_x509_svid;
use attest::x509pop::EXPORTER_BYTES;
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
    td.agent_id("join_token", token_sha256)
        .map_err(|e| Error::Config(e.to_string()))
}

/// The SPIFFE ID of the agent attested by x509pop with the certificate whose fingerprint
/// (lowercase hex SHA-256 of its DER) is `fingerprint`.
pub fn x509pop_agent_id(td: &TrustDomain, fingerprint: &str) -> Result<SpiffeId, Error> {
    td.agent_id("x509pop", fingerprint)
        .map_err(|e| Error::Config(e.to_string()))
}

/// The SPIFFE ID of the agent attested by TPM whose EK hash (lowercase hex SHA-256 of the EK's
/// SubjectPublicKeyInfo) is `ek_hash`.
pub fn tpm_agent_id(td: &TrustDomain, ek_hash: &str) -> Result<SpiffeId, Error> {
    td.agent_id("tpm", ek_hash)
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

/// A connection without exported keying material (cannot happen with QUIC/TLS 1.3).
fn no_binding() -> ApiError {
    ApiError::new(
        ApiCode::Internal,
        "this connection has no exported keying material to bind a TPM challenge to",
    )
}

/// A TPM refusal, logged and answered.
fn tpm_refused(e: attest::tpm::TpmError) -> ApiError {
    tracing::info!(error = %e, "TPM attestation refused");
    denied(format!("TPM attestation refused: {e}"))
}

fn write_error(e: &WriteError) -> ApiError {
    ApiError::new(ApiCode::Unavailable, e.to_string())
}

/// What every refused join token is told: refusals all look alike to the caller (no oracle for
/// which tokens exist or who used them); the node logs the reason.
pub const TOKEN_REFUSED: &str =
    "join token not valid (unknown, used, expired, revoked, or for another purpose or node)";

/// Token refusals all look alike to the caller (no oracle for which tokens exist).
fn token_error(e: &CommandError) -> ApiError {
    match e {
        CommandError::NotFound(_)
        | CommandError::TokenUsed
        | CommandError::TokenExpired
        | CommandError::TokenPurpose(_)
        | CommandError::TokenRefused(_) => {
            tracing::info!(reason = %e, "join token refused");
            denied(TOKEN_REFUSED)
        }
        CommandError::AgentBanned(_) => denied(e.to_string()),
        other => ApiError::invalid(other.to_string()),
    }
}

/// The largest node API request frame a caller is read up to: without a client certificate,
/// only the largest valid unauthenticated request.
pub fn request_bytes_max(authenticated: bool) -> usize {
    if authenticated {
        wire::codec::MESSAGE_BYTES_MAX
    } else {
        wire::api::UNAUTHENTICATED_REQUEST_BYTES_MAX
    }
}

/// One node API request frame (read up to [`request_bytes_max`]) as the server takes it:
/// decoded, then held to the request's own limits. The QUIC server and the simulator both read
/// requests with it.
pub fn parse_request(frame: &[u8]) -> Result<ApiRequest, ApiError> {
    let request = wire::codec::decode::<ApiRequest>(frame)
        .map_err(|e| ApiError::invalid(format!("malformed request: {e}")))?;
    request.check()?;
    Ok(request)
}

/// What a refused agent SVID renewal says (the agent recognises it): the presented SVID is not
/// the latest recorded for the agent.
pub const NOT_LATEST: &str = "is not the latest SVID of";

/// How long a node waits for a join token it does not know yet to arrive in its replica (the
/// token may have been created on the leader moments ago). Costs no Raft write.
pub const TOKEN_ARRIVAL_WAIT: Duration = Duration::from_secs(1);

/// What this node's replica says about a presented join token, before anything is proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenCheck {
    /// Unused, unexpired, for this purpose (and node): propose its consumption.
    Fresh,
    /// Already consumed by this very consumer (same ID, same key): an idempotent retry.
    Retry,
    /// Refused (the reason is logged, the caller gets [`TOKEN_REFUSED`]).
    Refused(CommandError),
}

/// TPM attestation on this node: which EKs are trusted, and the challenge key.
#[derive(Debug)]
struct TpmAttestation {
    policy: EkPolicy,
    challenger: Challenger,
}

/// The node API of one server node.
#[derive(Debug)]
pub struct NodeService<T: Transport> {
    node: ServerNode<T>,
    /// CA certificates (DER) trusted for x509pop; empty: x509pop is disabled.
    x509pop_cas: Arc<Vec<Vec<u8>>>,
    /// TPM attestation; `None`: disabled.
    tpm: Option<Arc<TpmAttestation>>,
}

impl<T: Transport> Clone for NodeService<T> {
    fn clone(&self) -> Self {
        NodeService {
            node: self.node.clone(),
            x509pop_cas: self.x509pop_cas.clone(),
            tpm: self.tpm.clone(),
        }
    }
}

impl<T: Transport> NodeService<T> {
    /// The service of `node` (x509pop and TPM attestation disabled).
    pub fn new(node: ServerNode<T>) -> NodeService<T> {
        NodeService {
            node,
            x509pop_cas: Arc::new(Vec::new()),
            tpm: None,
        }
    }

    /// Enables TPM agent attestation for EKs `policy` trusts (an empty policy disables it),
    /// with a fresh challenge key from the node's RNG.
    pub fn with_tpm(mut self, policy: EkPolicy) -> NodeService<T> {
        self.tpm = (!policy.is_empty()).then(|| {
            let challenger = Challenger::new(&mut self.node.env().rng("tpm-challenge"));
            Arc::new(TpmAttestation { policy, challenger })
        });
        self
    }

    /// Enables x509pop agent attestation with these trusted CA certificates (DER); an empty
    /// list disables it.
    pub fn with_x509pop_cas(mut self, cas: Vec<Vec<u8>>) -> NodeService<T> {
        self.x509pop_cas = Arc::new(cas);
        self
    }

    /// The server node answering.
    pub fn node(&self) -> &ServerNode<T> {
        &self.node
    }

    fn td(&self) -> &TrustDomain {
        &self.node.config().issuer.trust_domain
    }

    /// Handles one request from a caller that presented `chain` (empty: no certificate) on a
    /// connection whose exported keying material for x509pop is `exporter` (`None`: unknown),
    /// sending the answer(s) into `out`.
    pub async fn handle(
        &self,
        chain: &[Vec<u8>],
        exporter: Option<&[u8; EXPORTER_BYTES]>,
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
            ApiRequest::AttestX509Pop {
                chain: pop_chain,
                signature,
                public_key_der,
            } => {
                self.attest_x509pop(exporter, &pop_chain, &signature, &public_key_der)
                    .await
            }
            ApiRequest::AttestTpmBegin {
                ek_public,
                ek_cert,
                ak_public,
            } => self.attest_tpm_begin(exporter, &ek_public, ek_cert.as_deref(), &ak_public),
            ApiRequest::AttestTpmFinish {
                ek_public,
                ek_cert,
                ak_public,
                token,
                activated_secret,
                quote,
                quote_signature,
                pcrs,
                public_key_der,
            } => {
                let evidence = Evidence {
                    ek_public: &ek_public,
                    ek_cert: ek_cert.as_deref(),
                    ak_public: &ak_public,
                    token: &token,
                    activated_secret: &activated_secret,
                    quote: &quote,
                    signature: &quote_signature,
                    pcrs: &pcrs,
                    public_key_der: &public_key_der,
                };
                self.attest_tpm_finish(exporter, &evidence).await
            }
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
                Ok(agent) => self.agent_request(&agent, chain, request),
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
        if !id.is_agent() {
            return Err(denied(format!("{id} is not an agent")));
        }
        self.node.replica().read(|a| match a.state.agent(&id) {
            Some(record) if record.banned => Err(denied(format!("agent {id} is banned"))),
            Some(_) => Ok(id.clone()),
            None => Err(denied(format!("{id} is not an attested agent"))),
        })
    }

    /// Whether the agent SVID `chain` may renew: it is the one on record for `agent`, or the
    /// one that record replaced within [`wire::RENEW_PREDECESSOR_GRACE_SECS`] (a renewal whose
    /// answer was lost), or newer than the record (issued by a node whose record has not
    /// arrived yet). An older one — a copy taken before the agent renewed — is refused. Returns
    /// the presented serial.
    fn renewable(&self, agent: &SpiffeId, chain: &[Vec<u8>]) -> Result<String, ApiError> {
        let leaf = chain.first().map(Vec::as_slice).unwrap_or_default();
        let (serial, not_after) = attest::x509::serial_and_not_after(leaf)
            .map_err(|e| ApiError::new(ApiCode::Unauthenticated, e.to_string()))?;
        let wall = self.node.env().wall();
        let verdict = self.node.replica().read(|a| {
            let Some(r) = a.state.agent(agent) else {
                return Err(denied(format!("{agent} is not an attested agent")));
            };
            let grace = r
                .renewed_at
                .saturating_add(Duration::from_secs(wire::RENEW_PREDECESSOR_GRACE_SECS));
            let ok = r.svid_serial.is_empty()
                || serial == r.svid_serial
                || (serial == r.previous_serial && wall < grace)
                || not_after > r.svid_not_after;
            Ok(if ok {
                Ok(())
            } else {
                Err(r.svid_serial.clone())
            })
        });
        match verdict {
            Ok(Ok(())) => Ok(serial),
            Ok(Err(latest)) => {
                tracing::warn!(agent = %agent, presented = %serial, latest = %latest, "agent SVID renewal refused: not the agent's latest SVID (a copied SVID, or an agent that renewed elsewhere and then lost its new SVID)");
                Err(denied(format!(
                    "agent SVID serial {serial} {NOT_LATEST} {agent}: only the latest may renew (attest again)"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn agent_request(
        &self,
        agent: &SpiffeId,
        chain: &[Vec<u8>],
        request: ApiRequest,
    ) -> Result<ApiResponse, ApiError> {
        match request {
            ApiRequest::RenewAgent { public_key_der } => {
                let presented = self.renewable(agent, chain)?;
                let svid = self
                    .node
                    .issue_agent_svid(agent, &public_key_der)
                    .map_err(|e| api_error(&e))?;
                self.node.record_agent_svid(agent, &presented, &svid);
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
            | ApiRequest::AttestX509Pop { .. }
            | ApiRequest::AttestTpmBegin { .. }
            | ApiRequest::AttestTpmFinish { .. }
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

    /// Checks a presented join token against this node's replica, waiting up to
    /// [`TOKEN_ARRIVAL_WAIT`] for an unknown one to arrive. No Raft write either way.
    async fn check_token(
        &self,
        token_sha256: &str,
        purpose: wire::TokenPurpose,
        node_id: Option<u64>,
        consumer: &SpiffeId,
        key_sha256: &str,
    ) -> TokenCheck {
        let check = |a: &Applied| -> Option<TokenCheck> {
            let wall = self.node.env().wall();
            let t = a.state.join_token(token_sha256)?;
            Some(if let Some(by) = &t.consumed_by {
                if by == consumer && t.consumer_key_sha256 == key_sha256 && t.expires_at > wall {
                    TokenCheck::Retry
                } else {
                    TokenCheck::Refused(CommandError::TokenUsed)
                }
            } else if t.expires_at <= wall {
                TokenCheck::Refused(CommandError::TokenExpired)
            } else if t.purpose != purpose {
                TokenCheck::Refused(CommandError::TokenPurpose(format!("{purpose:?}")))
            } else if t.node_id != node_id {
                TokenCheck::Refused(CommandError::TokenRefused(
                    "the token admits another node ID".into(),
                ))
            } else {
                TokenCheck::Fresh
            })
        };
        if let Some(found) = self.node.replica().read(check) {
            return found;
        }
        let mut progress = self.node.replica().subscribe();
        let wait = async {
            loop {
                if progress.changed().await.is_err() {
                    return None;
                }
                if let Some(found) = self.node.replica().read(check) {
                    return Some(found);
                }
            }
        };
        tokio::time::timeout(TOKEN_ARRIVAL_WAIT, wait)
            .await
            .ok()
            .flatten()
            .unwrap_or(TokenCheck::Refused(CommandError::NotFound(
                "join token".into(),
            )))
    }

    async fn attest_join_token(
        &self,
        token: &str,
        public_key_der: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        // Refuse before the token is consumed when this node could not issue the SVID anyway.
        self.node.ready_to_issue().map_err(|e| api_error(&e))?;
        let token_sha256 = attest::sha256_hex(token.as_bytes());
        let key_sha256 = attest::sha256_hex(public_key_der);
        let agent_id = join_token_agent_id(self.td(), &token_sha256).map_err(|e| api_error(&e))?;
        match self
            .check_token(
                &token_sha256,
                wire::TokenPurpose::Agent,
                None,
                &agent_id,
                &key_sha256,
            )
            .await
        {
            TokenCheck::Refused(e) => return Err(token_error(&e)),
            // The same agent (same key) retrying an attestation whose answer it lost.
            TokenCheck::Retry => {
                return self
                    .issue_attested(agent_id, public_key_der, "a join token (retry)")
                    .await
            }
            TokenCheck::Fresh => {}
        }
        let record = AgentRecord {
            spiffe_id: agent_id.clone(),
            method: AttestationMethod::JoinToken,
            selectors: vec![Selector::new("join_token", &token_sha256)
                .map_err(|e| ApiError::new(ApiCode::Internal, e.to_string()))?],
            banned: false,
            svid_serial: String::new(),
            svid_not_after: wire::UnixTime::EPOCH,
            previous_serial: String::new(),
            renewed_at: wire::UnixTime::EPOCH,
            attested_at: wire::UnixTime::EPOCH,
        };
        let cmd = Command::ConsumeJoinToken {
            token_sha256: token_sha256.clone(),
            key_sha256: key_sha256.clone(),
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
            // A retry of an attestation that committed but whose answer was lost: only with the
            // key the token was bound to. Anyone else (a copy of the token, raced on another
            // node) is refused.
            Ok(Err(CommandError::TokenUsed))
                if self.token_consumed_by(&token_sha256, &agent_id, &key_sha256) => {}
            Ok(Err(e)) => return Err(token_error(&e)),
            Err(e) => return Err(write_error(&e)),
        }
        self.issue_attested(agent_id, public_key_der, "a join token")
            .await
    }

    /// The common tail of every agent attestation, once the agent is registered through Raft:
    /// waits until this node applied the registration, issues the agent SVID from the local
    /// replica and answers with it.
    async fn issue_attested(
        &self,
        agent_id: SpiffeId,
        public_key_der: &[u8],
        method: &'static str,
    ) -> Result<ApiResponse, ApiError> {
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
        // Attestation proved the agent afresh: its new SVID becomes the one on record.
        self.node.record_agent_svid(&agent_id, "", &svid);
        tracing::info!(agent = %agent_id, method, "agent attested");
        Ok(ApiResponse::AgentSvid {
            spiffe_id: agent_id,
            chain: vec![svid.cert_der],
            not_after: svid.not_after,
            bundle: self.node.bundle(),
        })
    }

    /// x509pop: the proof must verify against the configured CAs and this connection's exporter
    /// value; the agent is registered (or re-registered, never unbanned) through Raft unless the
    /// replica already holds it unchanged.
    async fn attest_x509pop(
        &self,
        exporter: Option<&[u8; EXPORTER_BYTES]>,
        chain: &[Vec<u8>],
        signature: &[u8],
        public_key_der: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        if self.x509pop_cas.is_empty() {
            return Err(denied(
                "x509pop attestation is not enabled on this server (no [x509pop] ca_bundle in its server.toml)",
            ));
        }
        let exporter = exporter.ok_or_else(|| {
            ApiError::new(
                ApiCode::Internal,
                "this connection has no exported keying material to bind an x509pop proof to",
            )
        })?;
        let message = attest::x509pop::message(exporter, public_key_der);
        let wall = self.node.env().wall();
        let identity = attest::x509pop::verify(chain, &self.x509pop_cas, wall, &message, signature)
            .map_err(|e| {
                tracing::info!(error = %e, "x509pop attestation refused");
                denied(format!("x509pop attestation refused: {e}"))
            })?;
        self.node.ready_to_issue().map_err(|e| api_error(&e))?;
        let agent_id =
            x509pop_agent_id(self.td(), &identity.fingerprint).map_err(|e| api_error(&e))?;
        self.register_and_issue(
            agent_id,
            AttestationMethod::X509Pop,
            identity.selectors,
            public_key_der,
            "x509pop",
        )
        .await
    }

    /// The tail of a repeatable attestation (x509pop, TPM): registers the agent through Raft —
    /// unless the replica already holds it with this method and these selectors, which is a
    /// renewal answered from the replica — and issues its SVID. A banned agent stays banned.
    async fn register_and_issue(
        &self,
        agent_id: SpiffeId,
        method: AttestationMethod,
        selectors: Vec<Selector>,
        public_key_der: &[u8],
        name: &'static str,
    ) -> Result<ApiResponse, ApiError> {
        let known = self.node.replica().read(|a| {
            a.state
                .agent(&agent_id)
                .map(|r| (r.banned, r.method == method && r.selectors == selectors))
        });
        match known {
            Some((true, _)) => return Err(denied(format!("agent {agent_id} is banned"))),
            // Already registered exactly so: a renewal, answered from the local replica.
            Some((false, true)) => {}
            _ => {
                let shown: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
                tracing::info!(agent = %agent_id, method = name, selectors = %shown.join(","), "registering the agent (new, or its selectors changed)");
                let record = AgentRecord {
                    spiffe_id: agent_id.clone(),
                    method,
                    selectors,
                    banned: false,
                    svid_serial: String::new(),
                    svid_not_after: wire::UnixTime::EPOCH,
                    previous_serial: String::new(),
                    renewed_at: wire::UnixTime::EPOCH,
                    attested_at: self.node.env().wall(),
                };
                match self
                    .node
                    .replica()
                    .write(Command::RegisterAgent { agent: record })
                    .await
                {
                    Ok(Ok(Outcome::Agent(_))) => {}
                    Ok(Ok(other)) => {
                        return Err(ApiError::new(
                            ApiCode::Internal,
                            format!("unexpected outcome {other:?}"),
                        ))
                    }
                    Ok(Err(CommandError::AgentBanned(_))) => {
                        return Err(denied(format!("agent {agent_id} is banned")))
                    }
                    Ok(Err(e)) => return Err(ApiError::invalid(e.to_string())),
                    Err(e) => return Err(write_error(&e)),
                }
            }
        }
        self.issue_attested(agent_id, public_key_der, name).await
    }

    /// The TPM attestation of this node, or the refusal when it has none.
    fn tpm(&self) -> Result<&TpmAttestation, ApiError> {
        self.tpm.as_deref().ok_or_else(|| {
            denied("TPM attestation is not enabled on this server (no [tpm] in its server.toml)")
        })
    }

    /// TPM, first step: checks the EK and AK and answers with a challenge bound to this
    /// connection.
    fn attest_tpm_begin(
        &self,
        exporter: Option<&[u8; EXPORTER_BYTES]>,
        ek_public: &[u8],
        ek_cert: Option<&[u8]>,
        ak_public: &[u8],
    ) -> Result<ApiResponse, ApiError> {
        let tpm = self.tpm()?;
        let binding = exporter.ok_or_else(no_binding)?;
        // Refuse before the agent's TPM does any work when this node could not issue anyway.
        self.node.ready_to_issue().map_err(|e| api_error(&e))?;
        let wall = self.node.env().wall();
        let challenge = tpm
            .challenger
            .begin(
                &tpm.policy,
                ek_public,
                ek_cert,
                ak_public,
                binding,
                wall,
                &mut self.node.env().rng("tpm-credential"),
            )
            .map_err(tpm_refused)?;
        Ok(ApiResponse::TpmChallenge {
            credential_blob: challenge.credential.id_object,
            encrypted_secret: challenge.credential.encrypted_secret,
            token: challenge.token,
        })
    }

    /// TPM, second step: the challenge answered on this connection (activated credential, quote);
    /// then the agent is registered like x509pop's.
    async fn attest_tpm_finish(
        &self,
        exporter: Option<&[u8; EXPORTER_BYTES]>,
        evidence: &Evidence<'_>,
    ) -> Result<ApiResponse, ApiError> {
        let tpm = self.tpm()?;
        let binding = exporter.ok_or_else(no_binding)?;
        let wall = self.node.env().wall();
        let identity = tpm
            .challenger
            .finish(&tpm.policy, evidence, binding, wall)
            .map_err(tpm_refused)?;
        self.node.ready_to_issue().map_err(|e| api_error(&e))?;
        let agent_id = tpm_agent_id(self.td(), &identity.ek_hash).map_err(|e| api_error(&e))?;
        self.register_and_issue(
            agent_id,
            AttestationMethod::Tpm,
            identity.selectors,
            evidence.public_key_der,
            "tpm",
        )
        .await
    }

    /// Whether the token `token_sha256` was consumed by `id` with the key `key_sha256` and has
    /// not expired (an idempotent retry by the same holder).
    fn token_consumed_by(&self, token_sha256: &str, id: &SpiffeId, key_sha256: &str) -> bool {
        let wall = self.node.env().wall();
        self.node.replica().read(|a| {
            a.state.join_token(token_sha256).is_some_and(|t| {
                t.consumed_by.as_ref() == Some(id)
                    && t.consumer_key_sha256 == key_sha256
                    && t.expires_at > wall
            })
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
        let key_sha256 = attest::sha256_hex(public_key_der);
        let spiffe_id = self.td().server_id(node_id);
        let server = ServerRecord { node_id, addr };
        let check = self
            .check_token(
                &token_sha256,
                wire::TokenPurpose::Server,
                Some(node_id),
                &spiffe_id,
                &key_sha256,
            )
            .await;
        match check {
            TokenCheck::Refused(e) => return Err(token_error(&e)),
            TokenCheck::Retry => {}
            TokenCheck::Fresh => {
                let cmd = Command::ConsumeServerToken {
                    token_sha256: token_sha256.clone(),
                    key_sha256: key_sha256.clone(),
                    server: server.clone(),
                    spiffe_id: spiffe_id.clone(),
                    at: self.node.env().wall(),
                };
                match self.node.replica().write(cmd).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(CommandError::TokenUsed))
                        if self.token_consumed_by(&token_sha256, &spiffe_id, &key_sha256) => {}
                    Ok(Err(e)) => return Err(token_error(&e)),
                    Err(e) => return Err(write_error(&e)),
                }
            }
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
