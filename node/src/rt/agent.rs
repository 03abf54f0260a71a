//! `sigil agent`: one per host. It attests to the cluster (a join token once, or — repeatable —
//! x509pop: proof of possession of a certificate's key, or TPM: its TPM's endorsement key, an
//! attestation key activated against it and a quote of PCRs), follows the view of the reachable
//! server with the lowest round-trip time (entries and bundles, pushed on every applied change),
//! has a fresh key certified for every entry it may serve, renews every SVID (and its own) at
//! half life, mints JWT-SVIDs on demand (cached per SPIFFE ID and audience until half life), and
//! serves all of it through the SPIFFE Workload API.
//!
//! **What is decided where.** Every decision — which server, when to fail over, back off, sign,
//! renew, attest again, mint — is [`AgentCore`]'s (`actors::agent`), the actor the simulator runs
//! too. This module is its IO: the runner task feeds it inputs (connection attempts, the watch
//! stream, call answers, workloads' JWT-SVID requests, its timer) and carries out its outputs
//! over QUIC, on disk and towards the Workload API's watchers.
//!
//! **Attestation** happens when the agent has no valid agent SVID: at start-up (first start, an
//! empty data dir, or a stored SVID that expired while the agent was down) with the one method
//! configured, and — with x509pop or TPM — again at run time when the core asks. Before it sends
//! a token or a proof it checks the server against its trust anchors: the last bundle it stored
//! in the data dir, or the pinned `bundle_sha256`. An x509pop proof is a signature over a value
//! exported from the TLS connection it travels on ([`attest::x509pop`]), so it is worthless on
//! any other connection; so is a TPM challenge and the quote answering it ([`attest::tpm`]: two
//! requests on one connection, the TPM driven from a blocking thread by [`crate::rt::tpm`]).
//!
//! **Offline.** While no server is reachable the agent keeps serving what it holds (SVIDs stay
//! valid until their `NotAfter`) and retries with backoff, preferring the fastest server again
//! once it answers.
//!
//! **On disk** (`data_dir`, files mode 0600): the agent's key, its latest agent SVID and the
//! latest bundle, so a restart needs no token while the agent SVID is valid. Workload keys live
//! only in memory and go only to the workloads they belong to. The x509pop key stays where the
//! configuration points; the agent only reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use wire::api::{ApiRequest, ApiResponse};
use wire::{Bundle, Env, Selector, SpiffeId, TrustDomain, UnixTime};

use crate::actors::agent::{
    AgentCore, AgentCoreConfig, AgentSvid, Attested, Input, Output, Ticket, RECONNECT_MAX,
    RECONNECT_MIN,
};
use crate::actors::Actor;
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
/// Longest wait of a workload's JWT-SVID request for the servers.
pub const JWT_WAIT: Duration = Duration::from_secs(10);
/// How long a first attestation keeps retrying while servers answer "unavailable".
pub const ATTEST_RETRY_MAX: Duration = Duration::from_secs(60);
/// A stored agent SVID is reused at start-up only with at least this much life left.
pub const SVID_REUSE_MIN: Duration = Duration::from_secs(60);
/// Most events (answers, views, workloads' requests) queued for the runner; senders wait.
const EVENTS_MAX: usize = 1024;

/// Completes once `stop` turns true (holding no borrow while pending).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's actor, on servers named by their socket address.
type Core = AgentCore<SocketAddr>;

/// What reaches the runner.
enum Event {
    /// An input for the core.
    Input(Input<SocketAddr>),
    /// A connection attempt of round `generation` to `server` ended: the connection and its
    /// round-trip time, or why it failed.
    Probed {
        server: SocketAddr,
        generation: u64,
        result: Result<(ApiClient, Duration), String>,
    },
}

struct Inner {
    cfg: AgentFileConfig,
    env: Arc<dyn Env>,
    files: IdentityFiles,
    key: TlsKey,
    core: Mutex<Core>,
    /// The TLS identity of the current agent SVID.
    identity: Mutex<NodeIdentity>,
    changes: watch::Sender<u64>,
    events: mpsc::Sender<Event>,
    /// Taken by the runner.
    inbox: Mutex<Option<mpsc::Receiver<Event>>>,
    /// Workloads' JWT-SVID requests waiting for the core's answer.
    jwt: Mutex<BTreeMap<Ticket, oneshot::Sender<Result<String, String>>>>,
    next_ticket: AtomicU64,
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
            }) => {
                return Ok(Attested {
                    spiffe_id,
                    chain,
                    not_after,
                    bundle,
                })
            }
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
                let a = attest_retrying(&cfg, method, &anchors, &key, env.clone()).await?;
                tracing::info!(agent = %a.spiffe_id, method = method.name(), "attested");
                files.store_svid(&a.chain, a.not_after)?;
                (a.spiffe_id, a.chain, a.not_after, a.bundle)
            }
        };
        let identity = NodeIdentity::new(chain.clone(), &key).map_err(|e| Error::Os {
            what: "building the agent's TLS identity",
            detail: e.to_string(),
        })?;
        let core_cfg = AgentCoreConfig {
            servers: cfg.servers.clone(),
            repeatable: repeatable(&cfg, x509pop.is_some()),
            public_key_der: key.public_key_der().to_vec(),
        };
        let svid = AgentSvid {
            spiffe_id,
            chain,
            issued_at: wall,
            not_after,
        };
        let core = Core::new(core_cfg, env.clone(), svid, bundle.clone(), env.mono());
        let (events, inbox) = mpsc::channel(EVENTS_MAX);
        let agent = Agent {
            inner: Arc::new(Inner {
                core: Mutex::new(core),
                identity: Mutex::new(identity),
                changes: watch::channel(0).0,
                events,
                inbox: Mutex::new(Some(inbox)),
                jwt: Mutex::new(BTreeMap::new()),
                next_ticket: AtomicU64::new(1),
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
        lock(&self.inner.core).svid().spiffe_id.clone()
    }

    /// The server the agent follows, if any.
    pub fn server(&self) -> Option<SocketAddr> {
        lock(&self.inner.core).server()
    }

    /// What the agent serves and whether it reaches a server (`sigil agent health`).
    pub fn health(&self) -> wire::admin::AgentHealthResponse {
        let secs = |t: UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
        let core = lock(&self.inner.core);
        let cache = core.cache();
        let server = core.server();
        wire::admin::AgentHealthResponse {
            spiffe_id: core.svid().spiffe_id.to_string(),
            connected: server.is_some(),
            server: server.map(|s| s.to_string()).unwrap_or_default(),
            last_server_contact_unix: cache.last_contact().map_or(0, secs),
            agent_svid_not_after_unix: secs(core.svid().not_after),
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
        if let Err(e) = IdentityFiles::write_private(&path, bundle.to_json().as_bytes()) {
            tracing::warn!(error = %e, path = %path.display(), "could not store the bundle; a restart needs a join token again");
        }
    }

    /// Runs the core until `stop` turns true (see [`Runner`]).
    async fn run(&self, mut stop: watch::Receiver<bool>) {
        let Some(inbox) = lock(&self.inner.inbox).take() else {
            return;
        };
        let mut runner = Runner {
            agent: self.clone(),
            inbox,
            tasks: JoinSet::new(),
            conns: BTreeMap::new(),
            probes: BTreeMap::new(),
            watch: None,
            generation: 0,
        };
        runner.feed(Input::Tick);
        loop {
            let deadline = lock(&self.inner.core).next_deadline();
            let wait = deadline.map(|d| d.saturating_since(self.inner.env.mono()));
            tokio::select! {
                () = stopped(&mut stop) => break,
                event = runner.inbox.recv() => match event {
                    Some(event) => runner.on_event(event),
                    None => break,
                },
                Some(_) = runner.tasks.join_next(), if !runner.tasks.is_empty() => {}
                () = sleep_for(wait) => runner.feed(Input::Tick),
            }
        }
        runner.shut_down().await;
    }
}

/// Sleeps for `wait`, or for ever.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The name of the repeatable attestation method configured (x509pop, TPM), if any.
fn repeatable(cfg: &AgentFileConfig, x509pop: bool) -> Option<&'static str> {
    if x509pop {
        return Some("x509pop");
    }
    #[cfg(feature = "tpm")]
    if cfg.tpm.is_some() {
        return Some("TPM");
    }
    let _ = cfg;
    None
}

/// The core's IO: one task feeds it every event and carries out what it asks, each network
/// exchange in a task of its own that reports back as an event.
struct Runner {
    agent: Agent,
    inbox: mpsc::Receiver<Event>,
    tasks: JoinSet<()>,
    /// Open connections, by server.
    conns: BTreeMap<SocketAddr, ApiClient>,
    /// Connection attempts out: their generation and task.
    probes: BTreeMap<SocketAddr, (u64, AbortHandle)>,
    /// The watch stream's server and task.
    watch: Option<(SocketAddr, AbortHandle)>,
    generation: u64,
}

impl Runner {
    fn inner(&self) -> &Inner {
        &self.agent.inner
    }

    /// Hands `input` to the core and carries out its outputs.
    fn feed(&mut self, input: Input<SocketAddr>) {
        let mut out = Vec::new();
        {
            let env = &self.inner().env;
            let (now, wall) = (env.mono(), env.wall());
            lock(&self.inner().core).handle(now, wall, input, &mut out);
        }
        for output in out {
            self.execute(output);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Input(input) => self.feed(input),
            Event::Probed {
                server,
                generation,
                result,
            } => {
                if self.probes.get(&server).map(|(g, _)| *g) != Some(generation) {
                    // An attempt the core abandoned meanwhile.
                    if let Ok((client, _)) = result {
                        self.close(client);
                    }
                    return;
                }
                self.probes.remove(&server);
                let rtt = match result {
                    Ok((client, rtt)) => {
                        if let Some(old) = self.conns.insert(server, client) {
                            self.close(old);
                        }
                        Ok(rtt)
                    }
                    Err(e) => Err(e),
                };
                self.feed(Input::Probed { server, rtt });
            }
        }
    }

    fn close(&mut self, client: ApiClient) {
        self.tasks.spawn(async move { client.close().await });
    }

    /// Runs `work` as a task whose result, if any, is fed back to the core.
    fn spawn(&mut self, work: impl Future<Output = Option<Event>> + Send + 'static) -> AbortHandle {
        let events = self.inner().events.clone();
        self.tasks.spawn(async move {
            if let Some(event) = work.await {
                let _ = events.send(event).await;
            }
        })
    }

    fn execute(&mut self, output: Output<SocketAddr>) {
        match output {
            Output::Connect(server) => {
                self.generation += 1;
                let generation = self.generation;
                let trust = ServerTrust::Bundle(TrustStore::new(
                    self.inner().cfg.trust_domain.clone(),
                    lock(&self.inner().core).cache().bundle(),
                ));
                let identity = lock(&self.inner().identity).clone();
                let env = self.inner().env.clone();
                let task = self.spawn(async move {
                    let result = probe(server, trust, identity, env).await;
                    Some(Event::Probed {
                        server,
                        generation,
                        result,
                    })
                });
                if let Some((_, old)) = self.probes.insert(server, (generation, task)) {
                    old.abort();
                }
            }
            Output::Disconnect(server) => {
                if let Some((_, task)) = self.probes.remove(&server) {
                    task.abort();
                }
                if self.watch.as_ref().is_some_and(|(s, _)| *s == server) {
                    if let Some((_, task)) = self.watch.take() {
                        task.abort();
                    }
                }
                if let Some(client) = self.conns.remove(&server) {
                    self.close(client);
                }
            }
            Output::Follow(server) => {
                let Some(client) = self.conns.get(&server).cloned() else {
                    self.feed(Input::StreamLost {
                        server,
                        reason: "not connected".into(),
                    });
                    return;
                };
                let events = self.inner().events.clone();
                let task = self.spawn(async move {
                    let reason = follow(&client, server, &events).await;
                    Some(Event::Input(Input::StreamLost { server, reason }))
                });
                if let Some((_, old)) = self.watch.replace((server, task)) {
                    old.abort();
                }
            }
            Output::Call {
                id,
                server,
                request,
            } => {
                let client = self.conns.get(&server).cloned();
                self.spawn(async move {
                    let answer = match client {
                        None => Err("not connected".to_owned()),
                        Some(client) => match client.call(&request, CALL_TIMEOUT).await {
                            Ok(answer) => Ok(answer),
                            Err(ApiClientError::Api(e)) => Ok(ApiResponse::Error(e)),
                            Err(e) => Err(e.to_string()),
                        },
                    };
                    Some(Event::Input(Input::Answer { call: id, answer }))
                });
            }
            Output::Reattest => {
                let agent = self.agent.clone();
                self.spawn(async move {
                    let result = agent.reattest().await.map_err(|e| e.to_string());
                    Some(Event::Input(Input::Reattested(result)))
                });
            }
            Output::StoreAgentSvid { chain, not_after } => {
                match NodeIdentity::new(chain.clone(), &self.inner().key) {
                    Ok(identity) => *lock(&self.inner().identity) = identity,
                    Err(e) => {
                        tracing::error!(error = %e, "the new agent SVID does not fit this agent's key; connecting with the previous one")
                    }
                }
                if let Err(e) = self.inner().files.store_svid(&chain, not_after) {
                    tracing::warn!(error = %e, "could not store the agent SVID; it is used from memory, but a restart will need to attest again (check that data_dir is writable and the disk not full)");
                }
            }
            Output::StoreBundle(bundle) => self.agent.store_bundle(&bundle),
            Output::Changed => self.inner().changes.send_modify(|n| *n = n.wrapping_add(1)),
            Output::Jwt { ticket, result } => {
                if let Some(waiter) = lock(&self.inner().jwt).remove(&ticket) {
                    let _ = waiter.send(result);
                }
            }
        }
    }

    /// Stops every task and closes every connection.
    async fn shut_down(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        for (_, client) in std::mem::take(&mut self.conns) {
            client.close().await;
        }
        lock(&self.inner().jwt).clear();
    }
}

/// Connects to `server` and makes a round trip that also proves it accepted our certificate.
async fn probe(
    server: SocketAddr,
    trust: ServerTrust,
    identity: NodeIdentity,
    env: Arc<dyn Env>,
) -> Result<(ApiClient, Duration), String> {
    let client = ApiClient::connect(server, &trust, Some(&identity), env, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match client.call(&ApiRequest::Sync, CALL_TIMEOUT).await {
        Ok(ApiResponse::View(_)) => {
            let rtt = client.rtt();
            Ok((client, rtt))
        }
        Ok(_) => {
            client.close().await;
            Err("unexpected answer to Sync".into())
        }
        Err(e) => {
            client.close().await;
            Err(e.to_string())
        }
    }
}

/// Forwards the views of `client`'s watch stream to the runner; why it ended.
async fn follow(client: &ApiClient, server: SocketAddr, events: &mpsc::Sender<Event>) -> String {
    let mut stream = match client.stream(&ApiRequest::Watch).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    loop {
        match stream.next().await {
            Some(Ok(ApiResponse::View(view))) => {
                let input = Input::View { server, view };
                if events.send(Event::Input(input)).await.is_err() {
                    return "the agent is stopping".into();
                }
            }
            Some(Ok(ApiResponse::Error(e))) => return e.to_string(),
            Some(Ok(_)) => return "unexpected answer on the watch stream".into(),
            Some(Err(e)) => return e.to_string(),
            None => return "the server ended the watch".into(),
        }
    }
}

impl Agent {
    /// x509pop or TPM again (the core asks when the agent SVID expired while no server was
    /// reachable, or a copy renewed it): the same certificate (or TPM) gives the same agent ID.
    /// x509pop re-reads the certificate and key (they may have been renewed on disk), falling
    /// back to the ones loaded at start-up.
    async fn reattest(&self) -> Result<Attested, Error> {
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
            stored: Some(lock(&inner.core).cache().bundle()),
        };
        attest_once(&inner.cfg, method, &anchors, &inner.key, inner.env.clone()).await
    }

    /// A JWT-SVID of `entry_id` for `audience`: from the cache, else through the core (which
    /// mints once for concurrent misses).
    async fn jwt(
        &self,
        entry_id: wire::EntryId,
        spiffe_id: SpiffeId,
        audience: Vec<String>,
    ) -> Result<String, tonic::Status> {
        let key = (spiffe_id.clone(), audience.clone());
        let wall = self.inner.env.wall();
        if let Some(token) = lock(&self.inner.core).cache().cached_jwt(&key, wall) {
            return Ok(token.to_owned());
        }
        let ticket = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.jwt).insert(ticket, tx);
        let ask = Event::Input(Input::Jwt {
            ticket,
            entry_id,
            spiffe_id,
            audience,
        });
        if self.inner.events.send(ask).await.is_err() {
            lock(&self.inner.jwt).remove(&ticket);
            return Err(tonic::Status::unavailable("the agent is stopping"));
        }
        match tokio::time::timeout(JWT_WAIT, rx).await {
            Ok(Ok(Ok(token))) => Ok(token),
            Ok(Ok(Err(e))) => Err(tonic::Status::unavailable(e)),
            Ok(Err(_)) => Err(tonic::Status::unavailable("the agent is stopping")),
            Err(_) => {
                lock(&self.inner.jwt).remove(&ticket);
                Err(tonic::Status::unavailable(format!(
                    "no JWT-SVID from the servers within {JWT_WAIT:?}; retry"
                )))
            }
        }
    }
}

impl WorkloadSource for Agent {
    fn trust_domain(&self) -> TrustDomain {
        self.inner.cfg.trust_domain.clone()
    }

    fn x509_svids(&self, selectors: &BTreeSet<Selector>) -> Vec<WorkloadX509> {
        let core = lock(&self.inner.core);
        let wall = self.inner.env.wall();
        core.cache()
            .x509_for(selectors, wall)
            .into_iter()
            .map(|served| WorkloadX509 {
                spiffe_id: served.svid.spiffe_id.clone(),
                chain: served.svid.chain.clone(),
                key_pkcs8: served.svid.key.pkcs8_der().clone(),
                hint: served.entry.hint.clone(),
            })
            .collect()
    }

    fn bundles(&self) -> (Bundle, Vec<(TrustDomain, Bundle)>) {
        let core = lock(&self.inner.core);
        (core.cache().bundle(), core.cache().federated())
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
        let wanted: Vec<(wire::EntryId, SpiffeId, String)> = lock(&self.inner.core)
            .cache()
            .jwt_wanted(selectors, spiffe_id.as_ref())
            .into_iter()
            .map(|e| (e.id.clone(), e.spiffe_id.clone(), e.hint.clone()))
            .collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(wanted.len());
            for (entry_id, id, hint) in wanted {
                let token = agent.jwt(entry_id, id.clone(), audience.clone()).await?;
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
