//! `sigil agent`: one per host. It attests to the cluster (a join token once, or — repeatable —
//! x509pop: proof of possession of a certificate's key, or TPM: its TPM's endorsement key, an
//! attestation key activated against it and a quote of PCRs), keeps a node API connection to the
//! reachable server with the lowest round-trip time, follows its view (entries and bundles,
//! pushed by the server on every applied change), generates a key for every entry it may serve
//! and has the server sign an X.509-SVID for the public half, renews every SVID (and its own) at
//! half life, mints JWT-SVIDs on demand (cached per SPIFFE ID and audience until half life), and
//! serves all of it through the SPIFFE Workload API.
//!
//! **Attestation** happens when the agent has no valid agent SVID: at start-up (first start, an
//! empty data dir, or a stored SVID that expired while the agent was down) with the one method
//! configured, and — with x509pop or TPM — again at run time when its SVID expired while no
//! server was reachable. Before it sends a token or a proof it checks the server against its
//! trust anchors: the last bundle it stored in the data dir, or the pinned `bundle_sha256`. An
//! x509pop proof is a signature over a value exported from the TLS connection it travels on
//! ([`attest::x509pop`]), so it is worthless on any other connection; so is a TPM challenge and
//! the quote answering it ([`attest::tpm`]: two requests on one connection, the TPM driven from
//! a blocking thread by [`crate::rt::tpm`]).
//!
//! **Offline.** While no server is reachable the agent keeps serving what it holds (SVIDs stay
//! valid until their `NotAfter`) and retries with backoff, preferring the fastest server again
//! once it answers.
//!
//! **On disk** (`data_dir`, files mode 0600): the agent's key, its latest agent SVID and the
//! latest bundle, so a restart needs no token while the agent SVID is valid. Workload keys live
//! only in memory and go only to the workloads they belong to. The x509pop key stays where the
//! configuration points; the agent only reads it.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use wire::api::{AgentView, ApiRequest, ApiResponse, IssuedX509, SignX509, SIGN_BATCH_MAX};
use wire::{Bundle, EntryId, Env, Selector, SpiffeId, TrustDomain, UnixTime};
use zeroize::Zeroizing;

use crate::actors::agent::{past_half_life, AgentCache, HeldJwt, HeldX509};
use crate::rt::agent_admin::{serve_agent_admin, HealthSource};
use crate::rt::api::{ApiClient, ApiClientError, FirstContact, CONNECT_TIMEOUT};
use crate::rt::config::{AgentFileConfig, X509PopCredential};
use crate::rt::serve::IdentityFiles;
use crate::rt::tls::{NodeIdentity, ServerTrust, TlsKey, TrustStore};
use crate::rt::unix_attest::UnixAttestConfig;
use crate::rt::workload_api::{serve_workload_api, WorkloadJwt, WorkloadSource, WorkloadX509};
use crate::rt::SystemEnv;
use crate::Error;

/// Longest wait for one node API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often SVID lifetimes are checked.
pub const RENEW_TICK: Duration = Duration::from_secs(1);
/// Backoff between rounds of connection attempts while no server answers: from this …
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// … doubling up to this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// After the first server answers, how long the others may still answer faster.
pub const RTT_GRACE: Duration = Duration::from_millis(200);
/// How often the agent looks for a faster server than the one it uses.
pub const REPROBE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a first attestation keeps retrying while servers answer "unavailable".
pub const ATTEST_RETRY_MAX: Duration = Duration::from_secs(60);
/// A stored agent SVID is reused at start-up only with at least this much life left.
pub const SVID_REUSE_MIN: Duration = Duration::from_secs(60);

/// Completes once `stop` turns true (holding no borrow while pending).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's identity towards the servers.
struct AgentIdentity {
    spiffe_id: SpiffeId,
    identity: NodeIdentity,
    issued_at: UnixTime,
    not_after: UnixTime,
}

/// The agent's cache; workload keys are PKCS#8 DER, wiped when dropped.
type Cache = AgentCache<Zeroizing<Vec<u8>>>;

struct Inner {
    cfg: AgentFileConfig,
    env: Arc<dyn Env>,
    files: IdentityFiles,
    key: TlsKey,
    me: Mutex<AgentIdentity>,
    cache: Mutex<Cache>,
    changes: watch::Sender<u64>,
    /// The connection in use, if any.
    client: Mutex<Option<ApiClient>>,
    /// Serializes JWT-SVID mints so concurrent misses cost one mint.
    mint_gate: tokio::sync::Mutex<()>,
    /// The x509pop credential loaded at start-up (re-read from its files on re-attestation).
    x509pop: Option<Arc<X509PopCredential>>,
}

/// A running agent (cheap to clone).
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("trust_domain", &self.inner.cfg.trust_domain)
            .finish_non_exhaustive()
    }
}

fn bundle_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("identity").join("bundle.json")
}

/// An agent SVID from an attestation: the agent's ID, the chain, its `NotAfter` and the bundle.
type Attested = (SpiffeId, Vec<Vec<u8>>, UnixTime, Bundle);

/// How the agent proves who it is when it has no valid agent SVID.
#[derive(Debug, Clone, Copy)]
enum Method<'a> {
    /// A single-use join token.
    JoinToken(&'a str),
    /// x509pop: a certificate chain and its key.
    X509Pop(&'a X509PopCredential),
    /// TPM: the TPM reached through this configuration.
    #[cfg(feature = "tpm")]
    Tpm(&'a crate::rt::config::AgentTpmConfig),
}

impl Method<'_> {
    fn name(&self) -> &'static str {
        match self {
            Method::JoinToken(_) => "a join token",
            Method::X509Pop(_) => "x509pop",
            #[cfg(feature = "tpm")]
            Method::Tpm(_) => "TPM",
        }
    }

    /// Attests on the connection `client` (an x509pop proof and a TPM challenge are bound to
    /// it); the server's answer.
    async fn attest(
        &self,
        client: &ApiClient,
        key: &TlsKey,
    ) -> Result<ApiResponse, ApiClientError> {
        let public_key_der = key.public_key_der().to_vec();
        let request = match self {
            Method::JoinToken(token) => ApiRequest::AttestJoinToken {
                token: (*token).to_owned(),
                public_key_der,
            },
            Method::X509Pop(credential) => {
                let message = attest::x509pop::message(&client.exporter()?, &public_key_der);
                let signature = credential
                    .key
                    .sign(&message)
                    .map_err(|e| ApiClientError::Protocol(e.to_string()))?;
                ApiRequest::AttestX509Pop {
                    chain: credential.chain.clone(),
                    signature,
                    public_key_der,
                }
            }
            #[cfg(feature = "tpm")]
            Method::Tpm(cfg) => return attest_tpm(client, cfg, public_key_der).await,
        };
        client.call(&request, CALL_TIMEOUT).await
    }
}

/// Longest wait for the TPM's work of one attestation step (a slow TPM makes RSA keys for
/// seconds; a challenge must be answered within [`attest::tpm::CHALLENGE_TTL_SECS`]).
#[cfg(feature = "tpm")]
pub const TPM_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `work` on a blocking thread (the TPM's commands block), for at most
/// [`TPM_STEP_TIMEOUT`].
#[cfg(feature = "tpm")]
async fn tpm_step<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiClientError> {
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(TPM_STEP_TIMEOUT, task).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(ApiClientError::Local(e.to_string())),
        Ok(Err(e)) => Err(ApiClientError::Local(format!("the TPM thread failed: {e}"))),
        Err(_) => Err(ApiClientError::Local(format!(
            "the TPM did not answer within {TPM_STEP_TIMEOUT:?}"
        ))),
    }
}

/// TPM attestation on `client`: EK + fresh AK to the server, its credential activated and the
/// PCRs quoted over the challenge, the connection and the SVID key.
#[cfg(feature = "tpm")]
async fn attest_tpm(
    client: &ApiClient,
    cfg: &crate::rt::config::AgentTpmConfig,
    public_key_der: Vec<u8>,
) -> Result<ApiResponse, ApiClientError> {
    use crate::rt::tpm::AgentTpm;
    use wire::api::{TPM_CREDENTIAL_BLOB_BYTES_MAX, TPM_ENCRYPTED_SECRET_BYTES_MAX};
    let binding = client.exporter()?;
    let config = cfg.clone();
    let tpm = tpm_step(move || AgentTpm::open(&config)).await?;
    match attest::tpm::EkPublic::parse(&tpm.ek_public) {
        Ok(ek) => tracing::info!(
            ek_hash = %ek.hash(),
            ek = ek.algorithm(),
            ek_certificate = tpm.ek_cert.is_some(),
            "TPM opened (servers trust this EK through its certificate and [tpm] ek_ca_bundle, or its hash in [tpm] ek_hashes)"
        ),
        Err(e) => tracing::warn!(error = %e, "this TPM's EK is not one the servers accept"),
    }
    let (ek_public, ek_cert, ak_public) = (
        tpm.ek_public.clone(),
        tpm.ek_cert.clone(),
        tpm.ak_public.clone(),
    );
    let begin = ApiRequest::AttestTpmBegin {
        ek_public: ek_public.clone(),
        ek_cert: ek_cert.clone(),
        ak_public: ak_public.clone(),
    };
    let (credential_blob, encrypted_secret, token) = match client.call(&begin, CALL_TIMEOUT).await {
        Ok(ApiResponse::TpmChallenge {
            credential_blob,
            encrypted_secret,
            token,
        }) => (credential_blob, encrypted_secret, token),
        Ok(other) => {
            return Err(ApiClientError::Protocol(format!(
                "expected a TPM challenge, got {other:?}"
            )))
        }
        Err(e) => {
            // The AK is flushed off the blocking thread.
            let _ = tpm_step(move || {
                drop(tpm);
                Ok(())
            })
            .await;
            return Err(e);
        }
    };
    if credential_blob.len() > TPM_CREDENTIAL_BLOB_BYTES_MAX
        || encrypted_secret.len() > TPM_ENCRYPTED_SECRET_BYTES_MAX
        || token.is_empty()
        || token.len() > wire::api::TPM_TOKEN_BYTES_MAX
    {
        return Err(ApiClientError::Protocol(
            "the TPM challenge is over the size limits".into(),
        ));
    }
    let qualifying = attest::tpm::qualifying_data(&token, &binding, &public_key_der);
    let pcrs = cfg.pcrs.clone();
    let (secret, quote) = tpm_step(move || {
        let mut tpm = tpm;
        let secret = tpm.activate(&credential_blob, &encrypted_secret)?;
        let quote = tpm.quote(&qualifying, &pcrs)?;
        Ok((secret, quote))
    })
    .await?;
    let finish = ApiRequest::AttestTpmFinish {
        ek_public,
        ek_cert,
        ak_public,
        token,
        activated_secret: secret.to_vec(),
        quote: quote.quote,
        quote_signature: quote.signature,
        pcrs: quote.pcrs,
        public_key_der,
    };
    client.call(&finish, CALL_TIMEOUT).await
}

/// Attests with `method` through the first server that passes the check against `anchors`.
async fn attest_once(
    cfg: &AgentFileConfig,
    method: Method<'_>,
    anchors: &FirstContact,
    key: &TlsKey,
    env: Arc<dyn Env>,
) -> Result<Attested, Error> {
    if anchors.is_empty() {
        return Err(Error::Config(
            "no trust anchor for the first contact with a server: set bundle_sha256 in agent.toml (from `sigil bundle show --hash` on a server)".into(),
        ));
    }
    let mut errors = Vec::new();
    for server in &cfg.servers {
        let attempt = async {
            let client = ApiClient::connect(
                *server,
                &ServerTrust::Pinned,
                None,
                env.clone(),
                CONNECT_TIMEOUT,
            )
            .await?;
            let result = async {
                client
                    .anchored_bundle(&cfg.trust_domain, anchors, env.wall(), CALL_TIMEOUT)
                    .await?;
                method.attest(&client, key).await
            }
            .await;
            client.close().await;
            result
        };
        match attempt.await {
            Ok(ApiResponse::AgentSvid {
                spiffe_id,
                chain,
                not_after,
                bundle,
            }) => return Ok((spiffe_id, chain, not_after, bundle)),
            Ok(other) => errors.push(format!("{server}: unexpected answer {other:?}")),
            Err(e) => {
                tracing::warn!(%server, method = method.name(), error = %e, "attestation through this server failed; trying the next");
                errors.push(format!("{server}: {e}"));
            }
        }
    }
    Err(Error::Config(format!(
        "could not attest this agent with {} ({})",
        method.name(),
        errors.join("; ")
    )))
}

/// [`attest_once`], retried with backoff for up to [`ATTEST_RETRY_MAX`] while the servers
/// answer "unavailable" (no quorum yet, a fresh node not ready to issue): such a refusal leaves a
/// join token usable by the same agent.
async fn attest_retrying(
    cfg: &AgentFileConfig,
    method: Method<'_>,
    anchors: &FirstContact,
    key: &TlsKey,
    env: Arc<dyn Env>,
) -> Result<Attested, Error> {
    let started = env.mono();
    let mut backoff = RECONNECT_MIN;
    loop {
        match attest_once(cfg, method, anchors, key, env.clone()).await {
            Ok(a) => return Ok(a),
            Err(e)
                if e.to_string().contains("Unavailable")
                    && env.mono().saturating_since(started) < ATTEST_RETRY_MAX =>
            {
                tracing::info!(
                    retry_ms = backoff.as_millis(),
                    "servers not ready to attest yet; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

impl Agent {
    /// Establishes the agent's identity (stored, or an attestation with the configured method).
    pub async fn start(cfg: AgentFileConfig, env: Arc<dyn Env>) -> Result<Agent, Error> {
        let files = IdentityFiles::new(&cfg.data_dir);
        let key = files.key()?;
        let wall = env.wall();
        let x509pop = match &cfg.x509pop {
            Some(x) => Some(Arc::new(x.load()?)),
            None => None,
        };
        let stored_bundle = std::fs::read(bundle_path(&cfg.data_dir))
            .ok()
            .and_then(|b| Bundle::from_json(&b).ok());
        let stored = files
            .svid()
            .filter(|(_, na)| *na > wall.saturating_add(SVID_REUSE_MIN));
        let (spiffe_id, chain, not_after, bundle) = match (stored, stored_bundle.clone()) {
            (Some((chain, not_after)), Some(bundle)) => {
                let id = attest::x509::validate_x509_svid(
                    &chain,
                    &(cfg.trust_domain.clone(), bundle.clone()),
                    wall,
                )
                .map_err(|e| {
                    Error::Config(format!(
                        "the stored agent SVID does not verify ({e}); remove {} to attest again",
                        cfg.data_dir.display()
                    ))
                })?;
                tracing::info!(agent = %id, "using this agent's stored SVID");
                if let Some(credential) = &x509pop {
                    let configured = crate::service::x509pop_agent_id(
                        &cfg.trust_domain,
                        &credential.fingerprint(),
                    )?;
                    if configured != id {
                        tracing::warn!(stored = %id, configured = %configured, "the stored agent SVID is not for the configured x509pop certificate; the certificate is used once the stored SVID expires (remove DATA_DIR/identity/svid.bin to switch now)");
                    }
                }
                (id, chain, not_after, bundle)
            }
            _ => {
                let method = match (&cfg.join_token, &x509pop) {
                    (Some(token), _) => Method::JoinToken(token),
                    (None, Some(credential)) => Method::X509Pop(credential),
                    #[cfg(feature = "tpm")]
                    (None, None) if cfg.tpm.is_some() => match &cfg.tpm {
                        Some(tpm) => Method::Tpm(tpm),
                        None => return Err(Error::Config("no [tpm] configured".into())),
                    },
                    (None, None) => {
                        return Err(Error::Config(
                            "this agent has no valid agent SVID (none yet, or it expired while the agent was down): configure an attestation method in agent.toml — a join token (join_token and bundle_sha256, from `sigil token generate` and `sigil bundle show --hash` on a server), an [x509pop] certificate and key, or [tpm]".into(),
                        ))
                    }
                };
                let anchors = FirstContact {
                    pin: cfg.bundle_sha256.clone(),
                    stored: stored_bundle,
                };
                let attested = attest_retrying(&cfg, method, &anchors, &key, env.clone()).await?;
                tracing::info!(agent = %attested.0, method = method.name(), "attested");
                files.store_svid(&attested.1, attested.2)?;
                attested
            }
        };
        let identity = NodeIdentity::new(chain, &key).map_err(|e| Error::Os {
            what: "building the agent's TLS identity",
            detail: e.to_string(),
        })?;
        let agent = Agent {
            inner: Arc::new(Inner {
                me: Mutex::new(AgentIdentity {
                    spiffe_id,
                    identity,
                    issued_at: wall,
                    not_after,
                }),
                cache: Mutex::new(Cache::new(bundle.clone())),
                changes: watch::channel(0).0,
                client: Mutex::new(None),
                mint_gate: tokio::sync::Mutex::new(()),
                x509pop,
                cfg,
                env,
                files,
                key,
            }),
        };
        agent.store_bundle(&bundle);
        Ok(agent)
    }

    /// The agent's SPIFFE ID.
    pub fn spiffe_id(&self) -> SpiffeId {
        lock(&self.inner.me).spiffe_id.clone()
    }

    /// Whether a server connection is up.
    pub fn connected(&self) -> bool {
        lock(&self.inner.client)
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// What the agent serves and whether it reaches a server (`sigil agent health`).
    pub fn health(&self) -> wire::admin::AgentHealthResponse {
        let secs = |t: UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
        let server = lock(&self.inner.client)
            .as_ref()
            .filter(|c| !c.is_closed())
            .map(|c| c.addr().to_string());
        let agent_not_after = lock(&self.inner.me).not_after;
        let cache = lock(&self.inner.cache);
        wire::admin::AgentHealthResponse {
            spiffe_id: self.spiffe_id().to_string(),
            connected: server.is_some(),
            server: server.unwrap_or_default(),
            last_server_contact_unix: cache.last_contact().map_or(0, secs),
            agent_svid_not_after_unix: secs(agent_not_after),
            x509_svids: u32::try_from(cache.x509_count()).unwrap_or(u32::MAX),
            earliest_svid_not_after_unix: cache.earliest_not_after().map_or(0, secs),
            entries: u32::try_from(cache.entries().len()).unwrap_or(u32::MAX),
            bundle_authorities: u32::try_from(cache.bundle().x509_authorities.len())
                .unwrap_or(u32::MAX),
            now_unix: secs(self.inner.env.wall()),
        }
    }

    fn store_bundle(&self, bundle: &Bundle) {
        let path = bundle_path(&self.inner.cfg.data_dir);
        if let Err(e) = std::fs::write(&path, bundle.to_json()) {
            tracing::warn!(error = %e, path = %path.display(), "could not store the bundle; a restart needs a join token again");
        }
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn trust(&self) -> Arc<TrustStore> {
        TrustStore::new(
            self.inner.cfg.trust_domain.clone(),
            lock(&self.inner.cache).bundle(),
        )
    }

    /// Connects to every server at once and keeps the fastest that accepts the agent.
    async fn connect_best(&self) -> Option<ApiClient> {
        let trust = ServerTrust::Bundle(self.trust());
        let identity = lock(&self.inner.me).identity.clone();
        // The production shell's tasks: every server is tried at once.
        let mut attempts = tokio::task::JoinSet::new();
        for addr in &self.inner.cfg.servers {
            let trust = trust.clone();
            let identity = identity.clone();
            let env = self.inner.env.clone();
            let addr = *addr;
            attempts.spawn(async move {
                let client =
                    ApiClient::connect(addr, &trust, Some(&identity), env, CONNECT_TIMEOUT).await;
                match client {
                    // A round trip that also proves the server accepted our certificate.
                    Ok(c) => match c.call(&ApiRequest::Sync, CALL_TIMEOUT).await {
                        Ok(ApiResponse::View(_)) => Some(c),
                        Ok(_) | Err(_) => {
                            c.close().await;
                            None
                        }
                    },
                    Err(e) => {
                        tracing::debug!(server = %addr, error = %e, "server unreachable");
                        None
                    }
                }
            });
        }
        // The first server to answer wins unless another answers within RTT_GRACE with a
        // lower round-trip time; a dead server does not hold the choice up.
        let mut clients: Vec<ApiClient> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                None => attempts.join_next().await,
                Some(d) => match tokio::time::timeout_at(d, attempts.join_next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                None => break,
                Some(Ok(Some(client))) => {
                    clients.push(client);
                    if deadline.is_none() {
                        #[allow(clippy::disallowed_methods)] // the production shell's clock
                        let now = tokio::time::Instant::now();
                        deadline = Some(now + RTT_GRACE);
                    }
                }
                Some(_) => {}
            }
        }
        attempts.abort_all();
        clients.sort_by_key(ApiClient::rtt);
        let mut it = clients.into_iter();
        let best = it.next();
        for other in it {
            other.close().await;
        }
        if let Some(c) = &best {
            tracing::info!(server = %c.addr(), rtt_us = c.rtt().as_micros(), "connected to the nearest server");
        }
        best
    }

    /// Applies a new view: drops SVIDs of entries that left it, signs the ones missing or
    /// changed.
    async fn apply_view(&self, client: &ApiClient, view: AgentView) -> Result<(), ApiClientError> {
        let bundle = view.bundle.clone();
        let bundle_changed = lock(&self.inner.cache).apply_view(view, self.inner.env.wall());
        if bundle_changed {
            self.store_bundle(&bundle);
        }
        self.bump();
        self.renew_svids(client).await
    }

    /// Signs SVIDs for entries without one, whose entry changed, or past half life.
    async fn renew_svids(&self, client: &ApiClient) -> Result<(), ApiClientError> {
        let wall = self.inner.env.wall();
        let due = lock(&self.inner.cache).due(wall);
        for batch in due.chunks(SIGN_BATCH_MAX) {
            let mut keys = Vec::with_capacity(batch.len());
            let mut requests = Vec::with_capacity(batch.len());
            for (id, _) in batch {
                let key = TlsKey::generate().map_err(|e| ApiClientError::Io(e.to_string()))?;
                requests.push(SignX509 {
                    entry_id: id.clone(),
                    public_key_der: key.public_key_der().to_vec(),
                });
                keys.push(key);
            }
            let answer = client
                .call(&ApiRequest::SignX509 { requests }, CALL_TIMEOUT)
                .await?;
            let ApiResponse::X509(results) = answer else {
                return Err(ApiClientError::Protocol("expected X.509-SVIDs".into()));
            };
            let mut cache = lock(&self.inner.cache);
            for (((_, revision), key), result) in batch.iter().zip(keys).zip(results) {
                match result {
                    Ok(IssuedX509 {
                        entry_id,
                        spiffe_id,
                        chain,
                        not_after,
                    }) => {
                        cache.store_x509(
                            entry_id,
                            HeldX509 {
                                revision: *revision,
                                spiffe_id,
                                chain,
                                key: Zeroizing::new(key.pkcs8_der().to_vec()),
                                issued_at: wall,
                                not_after,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the server refused an SVID; retried on the next view or renewal (if it persists, check the entry with `sigil entry show` and the server's log)")
                    }
                }
            }
        }
        if !due.is_empty() {
            self.bump();
        }
        Ok(())
    }

    /// Renews the agent's own SVID at half life; `true` when it changed (reconnect with it).
    async fn renew_self(&self, client: &ApiClient) -> Result<bool, ApiClientError> {
        let wall = self.inner.env.wall();
        let due = {
            let me = lock(&self.inner.me);
            past_half_life(me.issued_at, me.not_after, wall)
        };
        if !due {
            return Ok(false);
        }
        let request = ApiRequest::RenewAgent {
            public_key_der: self.inner.key.public_key_der().to_vec(),
        };
        let answer = client.call(&request, CALL_TIMEOUT).await;
        if let Err(ApiClientError::Api(e)) = &answer {
            if e.message.contains(crate::service::NOT_LATEST) {
                // The servers recorded a newer SVID for this agent than the one it holds:
                // another process has a copy of this agent's identity and renewed it.
                if let Some(method) = self.repeatable() {
                    tracing::warn!(method, "the servers refused to renew this agent's SVID: a newer one is on record (a copy of this agent's identity renewed it, or a renewal answer was lost); attesting again");
                    self.reattest()
                        .await
                        .map_err(|e| ApiClientError::Protocol(e.to_string()))?;
                    return Ok(true);
                }
                tracing::error!("the servers refused to renew this agent's SVID: a newer one is on record, so another process holds a copy of this agent's identity (its data_dir) and renewed it. This agent cannot attest again with its spent join token: ban or evict the agent (`sigil agent ban|evict`), find the copy, and give this agent a new join token");
            }
        }
        let ApiResponse::AgentSvid {
            chain, not_after, ..
        } = answer?
        else {
            return Err(ApiClientError::Protocol("expected an agent SVID".into()));
        };
        let identity = NodeIdentity::new(chain.clone(), &self.inner.key)
            .map_err(|e| ApiClientError::Protocol(e.to_string()))?;
        if let Err(e) = self.inner.files.store_svid(&chain, not_after) {
            tracing::warn!(error = %e, "could not store the renewed agent SVID; it is used from memory, but a restart will need to attest again (check that data_dir is writable and the disk not full)");
        }
        let mut me = lock(&self.inner.me);
        me.identity = identity;
        me.issued_at = wall;
        me.not_after = not_after;
        tracing::info!("renewed the agent SVID");
        Ok(true)
    }

    /// Follows one server until its stream fails or the agent must reconnect.
    async fn follow(
        &self,
        client: &ApiClient,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ApiClientError> {
        let mut stream = client.stream(&ApiRequest::Watch).await?;
        let mut tick = tokio::time::interval(RENEW_TICK);
        let started = self.inner.env.mono();
        loop {
            tokio::select! {
                () = stopped(stop) => return Ok(()),
                next = stream.next() => match next {
                    Some(Ok(ApiResponse::View(view))) => self.apply_view(client, view).await?,
                    Some(Ok(other)) => return Err(ApiClientError::Protocol(format!("unexpected {other:?}"))),
                    Some(Err(e)) => return Err(e),
                    None => return Err(ApiClientError::Io("the server ended the watch".into())),
                },
                _ = tick.tick() => {
                    self.renew_svids(client).await?;
                    if self.renew_self(client).await? {
                        return Ok(()); // reconnect with the new SVID
                    }
                    if self.inner.env.mono().saturating_since(started) >= REPROBE_INTERVAL && self.inner.cfg.servers.len() > 1 {
                        return Ok(()); // look for a faster server
                    }
                }
            }
        }
    }

    /// Runs the connection loop until `stop` turns true.
    async fn run(&self, mut stop: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_MIN;
        while !*stop.borrow() {
            let Some(client) = self.connect_best().await else {
                let expired = lock(&self.inner.me).not_after <= self.inner.env.wall();
                if expired && self.repeatable().is_some() {
                    match self.reattest().await {
                        Ok(()) => {
                            backoff = RECONNECT_MIN;
                            continue;
                        }
                        Err(e) => {
                            let method = self.repeatable().unwrap_or("x509pop");
                            tracing::warn!(retry_ms = backoff.as_millis(), error = %e, "this agent's SVID expired while no server was reachable and {method} re-attestation failed; retrying — cached workload SVIDs are served until they expire");
                        }
                    }
                } else if expired {
                    tracing::error!("this agent's SVID expired while no server was reachable: servers refuse it now; give the agent a new join token (join_token in agent.toml, from `sigil token generate`) and restart it — cached workload SVIDs are served until they expire");
                } else {
                    tracing::warn!(retry_ms = backoff.as_millis(), "no server reachable; serving cached SVIDs until one answers (check the servers list and the network)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut stop) => break,
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            };
            backoff = RECONNECT_MIN;
            *lock(&self.inner.client) = Some(client.clone());
            if let Err(e) = self.follow(&client, &mut stop).await {
                tracing::warn!(server = %client.addr(), error = %e, "lost the server; failing over");
            }
            *lock(&self.inner.client) = None;
            client.close().await;
        }
    }

    /// The name of the configured repeatable attestation method (x509pop, TPM), if any.
    fn repeatable(&self) -> Option<&'static str> {
        if self.inner.x509pop.is_some() {
            return Some("x509pop");
        }
        #[cfg(feature = "tpm")]
        if self.inner.cfg.tpm.is_some() {
            return Some("TPM");
        }
        None
    }

    /// x509pop or TPM again, after the agent SVID expired while no server was reachable: the
    /// same certificate (or TPM) gives the same agent ID. x509pop re-reads the certificate and
    /// key (they may have been renewed on disk), falling back to the ones loaded at start-up.
    async fn reattest(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let credential = inner.x509pop.as_ref().map(|loaded| {
            match inner.cfg.x509pop.as_ref().map(|x| x.load()) {
                Some(Ok(fresh)) => Arc::new(fresh),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "could not re-read the x509pop certificate and key; using the ones loaded at start-up");
                    loaded.clone()
                }
                None => loaded.clone(),
            }
        });
        let method = match &credential {
            Some(credential) => Method::X509Pop(credential),
            #[cfg(feature = "tpm")]
            None if inner.cfg.tpm.is_some() => match &inner.cfg.tpm {
                Some(tpm) => Method::Tpm(tpm),
                None => return Err(Error::Config("no [tpm] configured".into())),
            },
            None => return Err(Error::Config("no [x509pop] or [tpm] configured".into())),
        };
        let anchors = FirstContact {
            pin: inner.cfg.bundle_sha256.clone(),
            stored: Some(lock(&inner.cache).bundle()),
        };
        let (spiffe_id, chain, not_after, bundle) =
            attest_once(&inner.cfg, method, &anchors, &inner.key, inner.env.clone()).await?;
        let identity = NodeIdentity::new(chain.clone(), &inner.key).map_err(|e| Error::Os {
            what: "building the agent's TLS identity",
            detail: e.to_string(),
        })?;
        if let Err(e) = inner.files.store_svid(&chain, not_after) {
            tracing::warn!(error = %e, "could not store the new agent SVID; it is used from memory, but a restart will need to attest again (check that data_dir is writable and the disk not full)");
        }
        lock(&inner.cache).set_bundle(bundle.clone());
        self.store_bundle(&bundle);
        let previous = {
            let mut me = lock(&inner.me);
            let previous = std::mem::replace(&mut me.spiffe_id, spiffe_id.clone());
            me.identity = identity;
            me.issued_at = inner.env.wall();
            me.not_after = not_after;
            previous
        };
        if previous != spiffe_id {
            tracing::warn!(previous = %previous, agent = %spiffe_id, method = method.name(), "re-attestation gave this agent a new ID (its certificate or TPM changed): entries parented to the previous ID no longer apply");
        }
        tracing::info!(agent = %spiffe_id, "re-attested with {} after the agent SVID expired", method.name());
        self.bump();
        Ok(())
    }

    async fn mint_jwt(
        &self,
        entry_id: EntryId,
        audience: Vec<String>,
    ) -> Result<(String, UnixTime), tonic::Status> {
        let client = lock(&self.inner.client).clone().ok_or_else(|| {
            tonic::Status::unavailable("no server reachable to mint a JWT-SVID; retry")
        })?;
        match client
            .call(&ApiRequest::MintJwt { entry_id, audience }, CALL_TIMEOUT)
            .await
        {
            Ok(ApiResponse::Jwt { token, expires_at }) => Ok((token, expires_at)),
            Ok(other) => Err(tonic::Status::internal(format!(
                "unexpected answer {other:?}"
            ))),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}

impl WorkloadSource for Agent {
    fn trust_domain(&self) -> TrustDomain {
        self.inner.cfg.trust_domain.clone()
    }

    fn x509_svids(&self, selectors: &BTreeSet<Selector>) -> Vec<WorkloadX509> {
        let cache = lock(&self.inner.cache);
        let wall = self.inner.env.wall();
        cache
            .x509_for(selectors, wall)
            .into_iter()
            .map(|served| WorkloadX509 {
                spiffe_id: served.svid.spiffe_id.clone(),
                chain: served.svid.chain.clone(),
                key_pkcs8: served.svid.key.clone(),
                hint: served.entry.hint.clone(),
            })
            .collect()
    }

    fn bundles(&self) -> (Bundle, Vec<(TrustDomain, Bundle)>) {
        let cache = lock(&self.inner.cache);
        (cache.bundle(), cache.federated())
    }

    fn jwt_svids(
        &self,
        selectors: &BTreeSet<Selector>,
        audience: Vec<String>,
        spiffe_id: Option<SpiffeId>,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Vec<WorkloadJwt>, tonic::Status>> + Send + 'static>,
    > {
        let agent = self.clone();
        let mut audience = audience;
        audience.sort();
        audience.dedup();
        let wanted: Vec<(EntryId, SpiffeId, String)> = {
            lock(&self.inner.cache)
                .jwt_wanted(selectors, spiffe_id.as_ref())
                .into_iter()
                .map(|e| (e.id.clone(), e.spiffe_id.clone(), e.hint.clone()))
                .collect()
        };
        Box::pin(async move {
            let mut out = Vec::with_capacity(wanted.len());
            for (entry_id, id, hint) in wanted {
                let wall = agent.inner.env.wall();
                let key = (id.clone(), audience.clone());
                let cached = |agent: &Agent| {
                    lock(&agent.inner.cache)
                        .cached_jwt(&key, wall)
                        .map(str::to_owned)
                };
                let mut hit = cached(&agent);
                // One mint at a time: concurrent misses for the same key wait and then hit.
                let _gate = match hit {
                    Some(_) => None,
                    None => {
                        let gate = agent.inner.mint_gate.lock().await;
                        hit = cached(&agent);
                        Some(gate)
                    }
                };
                let token = match hit {
                    Some(t) => t,
                    None => {
                        let (token, expires_at) =
                            agent.mint_jwt(entry_id, audience.clone()).await?;
                        lock(&agent.inner.cache).store_jwt(
                            key,
                            HeldJwt {
                                token: token.clone(),
                                issued_at: wall,
                                expires_at,
                            },
                        );
                        token
                    }
                };
                out.push(WorkloadJwt {
                    spiffe_id: id,
                    token,
                    hint,
                });
            }
            Ok(out)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

/// Runs an agent from `agent.toml` until `shutdown` completes.
pub async fn run_agent(
    cfg: AgentFileConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let env: Arc<dyn Env> = Arc::new(SystemEnv::new()?);
    let agent = Agent::start(cfg.clone(), env).await?;
    tracing::info!(agent = %agent.spiffe_id(), socket = %cfg.socket_path.display(), "agent running");
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = {
        let agent = agent.clone();
        let stop = stop_rx.clone();
        #[allow(clippy::disallowed_methods)] // the production shell's tasks
        tokio::spawn(async move { agent.run(stop).await })
    };
    let mut api_stop = stop_rx.clone();
    let served = serve_workload_api(
        &cfg.socket_path,
        Arc::new(agent.clone()),
        UnixAttestConfig::default(),
        async move {
            let _ = api_stop.wait_for(|s| *s).await;
        },
    );
    let mut admin_stop = stop_rx.clone();
    let admin = {
        let health: Arc<dyn HealthSource> = Arc::new(agent.clone());
        let path = cfg.admin_socket.clone();
        #[allow(clippy::disallowed_methods)] // the production shell's tasks
        tokio::spawn(async move {
            let stop = async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = serve_agent_admin(&path, health, stop).await {
                tracing::warn!(error = %e, "the agent admin socket is not available; `sigil agent health` will not work (check admin_socket in agent.toml)");
            }
        })
    };
    tokio::pin!(served);
    tokio::pin!(shutdown);
    let (result, served_done) = tokio::select! {
        r = &mut served => (r, true),
        () = &mut shutdown => {
            tracing::info!("shutting down");
            (Ok(()), false)
        }
    };
    stop_tx.send_replace(true);
    if !served_done {
        let _ = (&mut served).await;
    }
    let _ = runner.await;
    let _ = admin.await;
    result
}

impl HealthSource for Agent {
    fn health(&self) -> wire::admin::AgentHealthResponse {
        Agent::health(self)
    }
}

/// Loads `path` and runs the agent until Ctrl-C or SIGTERM.
pub async fn run_agent_from_file(path: &Path) -> Result<(), Error> {
    let cfg = AgentFileConfig::load(path)?;
    run_agent(cfg, crate::rt::serve::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life() {
        let t = |s| UnixTime::from_secs(s);
        assert!(!past_half_life(t(100), t(200), t(149)));
        assert!(past_half_life(t(100), t(200), t(150)));
        assert!(past_half_life(t(100), t(100), t(100)));
    }
}
