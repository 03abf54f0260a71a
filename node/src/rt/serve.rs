//! `sigil server`: one server node as a process — sled under the data dir, Raft over QUIC, the
//! [`ServerNode`] loops, and the admin API on its Unix socket. This is wiring only; the logic is
//! in the actors and the replica.
//!
//! **Identity.** Raft starts before the node has a QUIC identity (its transport is a
//! [`LateTransport`] until then). The node's server SVID comes from, in order:
//! 1. its identity files (`DATA_DIR/identity/`: the TLS key, mode 0600, and the last server
//!    SVID) when that SVID is still valid — a restart;
//! 2. a `[join]` section: the node connects to a seed member, fetches the bundle, checks it
//!    against the pinned `bundle_sha256` and checks the seed's certificate against it — only
//!    then does it send its single-use server join token; the seed consumes the token through
//!    Raft, records the node as a server, and answers with a server SVID from its own CA;
//! 3. its own CA, once that is published — the bootstrap node (a one-member cluster).
//!
//! The SVID is renewed from the node's own CA at half its life and written back to the
//! identity files; the QUIC trust store follows the replicated bundle.
//!
//! **Membership.** Every node keeps its transport's peer addresses in line with Raft's
//! membership. The leader reconciles Raft's membership towards the replicated server records
//! ([`crate::actors::membership`]): a joined node becomes a learner, then a voter; a removed
//! node is demoted and forgotten.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use openraft::{BasicNode, ChangeMembers, ServerState};
use raft::replica::{Replica, ReplicaConfig};
use raft::{Kv, SledKv};
use tokio::sync::watch;
use wire::api::{ApiRequest, ApiResponse};
use wire::{Bundle, Command, Env, PeerId, SendError, ServerRecord, Transport, UnixTime};
use zeroize::Zeroizing;

use crate::actors::membership::{Membership, MembershipStep, MembershipView};
use crate::rt::admin::{serve_admin, AdminDefaults, AdminService};
use crate::rt::api::{ApiClient, CONNECT_TIMEOUT};
use crate::rt::config::{load_tpm_ek_cas, load_x509pop_cas, JoinConfig, ServerFileConfig};
use crate::rt::quic::{QuicConfig, QuicTransport};
use crate::rt::tls::{NodeIdentity, ServerTrust, TlsKey, TrustStore};
use crate::rt::SystemEnv;
use crate::server::{ServerConfig, ServerNode, SERVER_SVID_TTL};
use crate::service::NodeService;
use crate::Error;

/// How long start-up waits for this node's first CA publication to commit.
pub const FIRST_KEY_WAIT: Duration = Duration::from_secs(60);
/// How often membership (peer addresses, reconciliation) is looked at, besides every applied
/// change.
pub const MEMBERSHIP_TICK: Duration = Duration::from_secs(1);
/// Longest one reconcile step waits for a new learner to catch up before promoting it. A learner
/// still behind is looked at again at the next membership tick, by whichever node leads then: a
/// step that waited long would hold reconciliation on a node that may no longer lead.
pub const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// How long a join request may take (it commits through Raft on the seed's side).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// A persisted server SVID is used at start-up only with at least this much life left.
pub const IDENTITY_REUSE_MIN: Duration = Duration::from_secs(60);

/// A transport that exists before its QUIC endpoint does: sends fail as "unknown peer" and
/// receives wait until [`LateTransport::set`] provides the endpoint.
#[derive(Debug, Clone)]
pub struct LateTransport {
    tx: Arc<watch::Sender<Option<QuicTransport>>>,
}

impl Default for LateTransport {
    fn default() -> LateTransport {
        LateTransport {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl LateTransport {
    /// Provides the endpoint.
    pub fn set(&self, transport: QuicTransport) {
        self.tx.send_replace(Some(transport));
    }

    /// The endpoint, once set.
    pub fn get(&self) -> Option<QuicTransport> {
        self.tx.borrow().clone()
    }
}

impl Transport for LateTransport {
    fn send(&self, to: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        match self.get() {
            Some(t) => t.send(to, frame),
            None => Err(SendError::UnknownPeer(to)),
        }
    }

    async fn recv(&self) -> Option<(PeerId, Vec<u8>)> {
        let mut rx = self.tx.subscribe();
        let transport = rx.wait_for(Option::is_some).await.ok()?.clone()?;
        transport.recv().await
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Os {
        what,
        detail: e.to_string(),
    }
}

/// Mints this node's server SVID for `key` from its own CA and turns it into a QUIC identity.
fn own_identity<T: Transport>(
    node: &ServerNode<T>,
    key: &TlsKey,
) -> Result<(NodeIdentity, Vec<Vec<u8>>, UnixTime), Error> {
    let svid = node.issue_own_server_svid(key.public_key_der())?;
    let chain = vec![svid.cert_der];
    let identity = tls_identity(chain.clone(), key)?;
    Ok((identity, chain, svid.not_after))
}

fn tls_identity(chain: Vec<Vec<u8>>, key: &TlsKey) -> Result<NodeIdentity, Error> {
    NodeIdentity::new(chain, key).map_err(|e| Error::Os {
        what: "building the node's TLS identity",
        detail: e.to_string(),
    })
}

/// The node's TLS key and last server SVID under `DATA_DIR/identity/` (files mode 0600).
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    dir: PathBuf,
}

impl IdentityFiles {
    /// The files under `data_dir`.
    pub fn new(data_dir: &Path) -> IdentityFiles {
        IdentityFiles {
            dir: data_dir.join("identity"),
        }
    }

    /// Writes `bytes` to `path` through a temporary file, mode 0600, synced, then renamed.
    pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut f = options
            .open(&tmp)
            .map_err(os("writing the node's identity files"))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(os("writing the node's identity files"))?;
        std::fs::rename(&tmp, path).map_err(os("writing the node's identity files"))
    }

    /// The stored key, or a new one (stored at once).
    pub fn key(&self) -> Result<TlsKey, Error> {
        std::fs::create_dir_all(&self.dir).map_err(os("creating the identity directory"))?;
        let path = self.dir.join("key.pk8");
        match std::fs::read(&path) {
            Ok(bytes) => TlsKey::from_pkcs8(Zeroizing::new(bytes)).map_err(|e| Error::Os {
                what: "loading the node's TLS key (remove DATA_DIR/identity to start over)",
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = TlsKey::generate().map_err(|e| Error::Os {
                    what: "generating the node's TLS key",
                    detail: e.to_string(),
                })?;
                IdentityFiles::write_private(&path, key.pkcs8_der())?;
                Ok(key)
            }
            Err(e) => Err(os("reading the node's TLS key")(e)),
        }
    }

    /// The stored server SVID chain and its `NotAfter`, if any and readable.
    pub fn svid(&self) -> Option<(Vec<Vec<u8>>, UnixTime)> {
        let bytes = std::fs::read(self.dir.join("svid.bin")).ok()?;
        wire::codec::decode(&bytes).ok()
    }

    /// Stores the server SVID chain.
    pub fn store_svid(&self, chain: &[Vec<u8>], not_after: UnixTime) -> Result<(), Error> {
        let bytes = wire::codec::encode(&(chain, not_after)).map_err(|e| Error::Os {
            what: "encoding the node's server SVID",
            detail: e.to_string(),
        })?;
        IdentityFiles::write_private(&self.dir.join("svid.bin"), &bytes)
    }
}

/// Runs a server node until `shutdown` completes, then stops it cleanly.
pub async fn run_server(
    cfg: ServerFileConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // Another live process serving our admin socket (a second server with the same
    // admin_socket) stops this one before it opens anything: taking the socket over would hand
    // the first server's admin commands to this one.
    crate::rt::socket::claim(&cfg.admin_socket, "creating the admin socket")?;
    let env = Arc::new(SystemEnv::new()?);
    let dyn_env: Arc<dyn Env> = env.clone();
    let x509pop_cas = match &cfg.x509pop_ca_bundle {
        None => Vec::new(),
        Some(path) => {
            let cas = load_x509pop_cas(path)?;
            let wall = dyn_env.wall();
            for (i, ca) in cas.iter().enumerate() {
                if attest::x509pop::ca_expired(ca, wall) {
                    tracing::warn!(path = %path.display(), certificate = i + 1, "an x509pop CA is outside its validity window: agents under it cannot attest");
                }
            }
            tracing::info!(path = %path.display(), cas = cas.len(), "x509pop agent attestation enabled");
            cas
        }
    };
    let tpm_policy = match &cfg.tpm {
        None => attest::tpm::EkPolicy::default(),
        Some(tpm) => {
            let cas = match &tpm.ek_ca_bundle {
                None => Vec::new(),
                Some(path) => {
                    let cas = load_tpm_ek_cas(path)?;
                    let wall = dyn_env.wall();
                    for (i, ca) in cas.iter().enumerate() {
                        if attest::x509pop::ca_expired(ca, wall) {
                            tracing::warn!(path = %path.display(), certificate = i + 1, "a TPM EK CA is outside its validity window: EK certificates under it are not trusted");
                        }
                    }
                    cas
                }
            };
            tracing::info!(
                cas = cas.len(),
                ek_hashes = tpm.ek_hashes.len(),
                "TPM agent attestation enabled"
            );
            attest::tpm::EkPolicy {
                cas,
                ek_hashes: tpm.ek_hashes.iter().cloned().collect(),
            }
        }
    };
    let raft_dir = cfg.data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir).map_err(os("creating the data directory"))?;
    let kv = SledKv::open(&raft_dir).map_err(|e| {
        let detail = e.to_string();
        data_dir_in_use(&cfg.data_dir, &detail).unwrap_or(Error::Os {
            what: "opening the Raft store",
            detail,
        })
    })?;
    let pid_file = cfg.data_dir.join(PID_FILE);
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(path = %pid_file.display(), error = %e, "could not record this server's pid; a second server on this data_dir will not be told which process holds it");
    }
    // A store without a single key was never written: no vote, no log, no snapshot. Such a
    // node is brand new and has no log to wait for below.
    let fresh = kv
        .range(&[], None, 1)
        .map_err(|e| Error::Os {
            what: "reading the Raft store",
            detail: e.to_string(),
        })?
        .is_empty();
    let late = LateTransport::default();
    let replica = Arc::new(
        Replica::start(cfg.node_id, &ReplicaConfig::default(), kv, late.clone())
            .await
            .map_err(|e| Error::Os {
                what: "starting Raft",
                detail: e.to_string(),
            })?,
    );
    // A restarting node's log shows in Raft's metrics a moment after it starts: wait for it
    // (at most 2 s). A fresh node decides at once (this wait was most of a cold start).
    let has_log = !fresh && replica.has_log(Duration::from_secs(2)).await;
    if cfg.bootstrap && !has_log {
        let members = [(cfg.node_id, BasicNode::new(cfg.advertise.to_string()))].into();
        let created = replica.initialize(members).await.map_err(|e| Error::Os {
            what: "initializing the cluster",
            detail: e,
        })?;
        if created {
            tracing::info!(trust_domain = %cfg.trust_domain, node_id = cfg.node_id, "bootstrapped a new trust domain with this node as its first member");
        }
    } else if !cfg.bootstrap && cfg.join.is_none() && !has_log {
        replica.shutdown().await;
        return Err(Error::Config(
            "this node has no cluster state: set `bootstrap = true` on the first node of a new trust domain, or add a [join] section (token, seeds, bundle_sha256 from `sigil token generate --server` on a member) to join a cluster".into(),
        ));
    }

    let mut server_cfg = ServerConfig::new(cfg.node_id, cfg.trust_domain.clone());
    server_cfg.key_ttl = cfg.ca_ttl;
    server_cfg.issuer.staleness_max = cfg.staleness_max;
    server_cfg.issuer.x509.default_ttl = cfg.x509_svid_ttl;
    server_cfg.issuer.jwt_default_ttl = cfg.jwt_svid_ttl;
    server_cfg.issuer.agent_ttl = cfg.agent_svid_ttl;
    let node = ServerNode::start(server_cfg, dyn_env.clone(), replica.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = AdminService::new(
        replica.clone(),
        dyn_env.clone(),
        cfg.trust_domain.clone(),
        AdminDefaults {
            removed_server_keep_secs: (cfg.staleness_max
                + cfg
                    .x509_svid_ttl
                    .max(cfg.jwt_svid_ttl)
                    .max(cfg.agent_svid_ttl)
                    .max(crate::server::SERVER_SVID_TTL))
            .as_secs(),
            ..AdminDefaults::default()
        },
    )
    .with_seed_address(cfg.advertise.to_string());
    let admin_path = cfg.admin_socket.clone();
    let mut admin_stop = stop_rx.clone();
    let mut admin_task = {
        let path = admin_path.clone();
        #[allow(clippy::disallowed_methods)] // the production shell's tasks
        tokio::spawn(async move {
            let stopped = async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            };
            serve_admin(&path, admin, stopped).await
        })
    };

    let service = NodeService::new(node.clone())
        .with_x509pop_cas(x509pop_cas)
        .with_tpm(tpm_policy);
    let run = serve_quic(
        &cfg,
        &node,
        service,
        &late,
        dyn_env.clone(),
        stop_rx.clone(),
    );
    tokio::pin!(run);
    tokio::pin!(shutdown);
    // The admin API ending while the node runs (its socket could not be bound, say) is reported
    // when it happens; the node carries on serving Raft and the node API.
    let mut admin_ended = false;
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break Ok(());
            }
            r = &mut admin_task, if !admin_ended => {
                admin_ended = true;
                report_admin_end(r, &admin_path, false);
            }
        }
    };
    stop_tx.send_replace(true);
    node.stop();
    if let Some(t) = late.get() {
        t.close().await;
    }
    replica.shutdown().await;
    if !admin_ended {
        report_admin_end(admin_task.await, &admin_path, true);
    }
    result
}

/// Logs how the admin API task ended, with what to do about it.
fn report_admin_end(
    ended: Result<Result<(), Error>, tokio::task::JoinError>,
    socket: &Path,
    stopping: bool,
) {
    let socket = socket.display();
    match ended {
        Ok(Ok(())) if stopping => {}
        Ok(Ok(())) => {
            tracing::warn!(%socket, "admin API stopped; `sigil` admin commands will not work on this node until it restarts")
        }
        Ok(Err(e)) if stopping => {
            tracing::warn!(%socket, error = %e, "admin API stopped with an error while the node shut down; if the socket file is left behind, remove it before the next start")
        }
        Ok(Err(e)) => {
            tracing::warn!(%socket, error = %e, "admin API stopped with an error; `sigil` admin commands will not work on this node until it restarts (check admin_socket in server.toml: its directory must be writable by this user and the path free of other files)")
        }
        Err(e) => {
            tracing::warn!(%socket, error = %e, "admin API task failed (a bug in sigil: please report it with this log); `sigil` admin commands will not work on this node until it restarts")
        }
    }
}

/// Joins the cluster through the first seed that accepts: fetch the bundle, check it against the
/// pinned hash and the seed's certificate against it, then present the token. Returns the
/// server SVID chain, its `NotAfter`, the bundle and the registered servers.
async fn join(
    cfg: &ServerFileConfig,
    join: &JoinConfig,
    key: &TlsKey,
    env: Arc<dyn Env>,
) -> Result<(Vec<Vec<u8>>, UnixTime, Bundle, Vec<ServerRecord>), Error> {
    let mut errors = Vec::new();
    for seed in &join.seeds {
        match join_via(cfg, join, *seed, key, env.clone()).await {
            Ok(joined) => return Ok(joined),
            Err(e) => {
                tracing::warn!(%seed, error = %e, "joining through this seed failed; trying the next");
                errors.push(format!("{seed}: {e}"));
            }
        }
    }
    Err(Error::Config(format!(
        "could not join the cluster through any seed ({})",
        errors.join("; ")
    )))
}

async fn join_via(
    cfg: &ServerFileConfig,
    join: &JoinConfig,
    seed: SocketAddr,
    key: &TlsKey,
    env: Arc<dyn Env>,
) -> Result<(Vec<Vec<u8>>, UnixTime, Bundle, Vec<ServerRecord>), Error> {
    let fail = |detail: String| Error::Os {
        what: "joining the cluster",
        detail,
    };
    let client = ApiClient::connect(
        seed,
        &ServerTrust::Pinned,
        None,
        env.clone(),
        CONNECT_TIMEOUT,
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let result = async {
        client
            .pinned_bundle(
                &cfg.trust_domain,
                &join.bundle_sha256,
                env.wall(),
                JOIN_TIMEOUT,
            )
            .await
            .map_err(|e| Error::Config(format!("{e}; no token was sent")))?;
        let request = ApiRequest::JoinServer {
            token: join.token.clone(),
            node_id: cfg.node_id,
            addr: cfg.advertise.to_string(),
            public_key_der: key.public_key_der().to_vec(),
        };
        match client.call(&request, JOIN_TIMEOUT).await {
            Ok(ApiResponse::Joined {
                chain,
                bundle,
                servers,
            }) => {
                let leaf = chain
                    .first()
                    .ok_or_else(|| fail("empty certificate chain".into()))?;
                let id = TrustStore::new(cfg.trust_domain.clone(), bundle.clone())
                    .verify_server_peer(&chain, env.wall())
                    .map_err(|e| fail(format!("the server SVID received does not verify: {e}")))?;
                if id != cfg.node_id {
                    return Err(fail(format!("received an SVID for node {id}")));
                }
                let not_after = attest::x509::not_after(leaf)
                    .map_err(|e| fail(format!("the server SVID received: {e}")))?;
                Ok((chain, not_after, bundle, servers))
            }
            Ok(other) => Err(fail(format!("unexpected answer {other:?}"))),
            Err(e) => Err(fail(e.to_string())),
        }
    }
    .await;
    client.close().await;
    result
}

/// Obtains this node's server SVID (see the module docs for the order). Returns the identity,
/// the chain, its `NotAfter` and, after a join, the bundle and servers the seed sent.
async fn first_identity<T: Transport>(
    cfg: &ServerFileConfig,
    node: &ServerNode<T>,
    key: &TlsKey,
    files: &IdentityFiles,
    env: Arc<dyn Env>,
) -> Result<
    (
        NodeIdentity,
        Vec<Vec<u8>>,
        UnixTime,
        Option<(Bundle, Vec<ServerRecord>)>,
    ),
    Error,
> {
    let wall = env.wall();
    if let Some((chain, not_after)) = files.svid() {
        if not_after > wall.saturating_add(IDENTITY_REUSE_MIN) {
            if let Ok(identity) = tls_identity(chain.clone(), key) {
                tracing::info!("using this node's stored server SVID");
                return Ok((identity, chain, not_after, None));
            }
        }
    }
    if let Some(join_cfg) = &cfg.join {
        if !node.has_active_ca() {
            let (chain, not_after, bundle, servers) = join(cfg, join_cfg, key, env.clone()).await?;
            files.store_svid(&chain, not_after)?;
            tracing::info!(
                servers = servers.len(),
                "joined the cluster; catching up with its log"
            );
            let identity = tls_identity(chain.clone(), key)?;
            return Ok((identity, chain, not_after, Some((bundle, servers))));
        }
    }
    let mut waited = Duration::ZERO;
    while !node.has_active_ca() {
        if waited >= FIRST_KEY_WAIT {
            return Err(if cfg.bootstrap {
                Error::NoActiveKey
            } else {
                Error::Config("this node has no valid server SVID (its stored one expired while it was down, or none exists) and cannot publish a CA without reaching the cluster: generate a server join token on a running member (`sigil token generate --server`) and add it as a [join] section to rejoin".into())
            });
        }
        if waited.as_millis().is_multiple_of(5000) && waited > Duration::ZERO {
            tracing::info!(
                waited_secs = waited.as_secs(),
                "waiting for this node's CA publication to commit (needs a quorum)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let (identity, chain, not_after) = own_identity(node, key)?;
    files.store_svid(&chain, not_after)?;
    Ok((identity, chain, not_after, None))
}

/// Points the transport at every member of Raft's membership (and at `extra` servers).
fn sync_peers(transport: &QuicTransport, addrs: &BTreeMap<u64, String>, known: &mut BTreeSet<u64>) {
    let me = transport.node_id();
    let mut now = BTreeSet::new();
    for (id, addr) in addrs {
        if *id == me {
            continue;
        }
        match addr.parse::<SocketAddr>() {
            Ok(a) => {
                transport.set_peer(*id, a);
                now.insert(*id);
            }
            Err(_) => tracing::warn!(
                node = id,
                addr,
                "member address is not IP:port; cannot reach it"
            ),
        }
    }
    for gone in known.difference(&now) {
        transport.remove_peer(*gone);
    }
    *known = now;
}

/// `DATA_DIR/server.pid`: the pid of the server using the data dir, so that a second server
/// started on it is told which process holds it.
pub const PID_FILE: &str = "server.pid";

/// When opening the Raft store failed on its lock (`detail`), the error an operator can act
/// on: which live sigil server holds `data_dir`, from its pid file (or, without a live one,
/// that some process holds the lock).
fn data_dir_in_use(data_dir: &Path, detail: &str) -> Option<Error> {
    if !detail.contains("lock") {
        return None;
    }
    let holder = std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists());
    Some(Error::Config(match holder {
        Some(pid) => format!(
            "another sigil server (pid {pid}) is using {}: stop it, or give this server a data_dir of its own",
            data_dir.display()
        ),
        None => format!(
            "another process holds the lock on {} (another sigil server?): stop it, or give this server a data_dir of its own",
            data_dir.join("raft").display()
        ),
    }))
}

/// What Raft says about the membership, and whether this node leads.
fn membership<T: Transport>(node: &ServerNode<T>) -> (MembershipView, bool) {
    let m = node.replica().raft().metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let view = MembershipView {
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        addrs: membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect(),
        last_log_index: m.last_log_index.unwrap_or(0),
        matched: m
            .replication
            .iter()
            .flatten()
            .filter_map(|(id, l)| Some((*id, l.as_ref()?.index)))
            .collect(),
    };
    (view, m.state == ServerState::Leader)
}

/// As leader, takes the step the [`Membership`] actor asks for towards the desired membership.
/// A learner to promote is given up to [`LEARNER_CATCH_UP_WAIT`] to catch up here; still behind,
/// it is looked at again at the next membership tick, by whichever node leads then.
async fn reconcile<T: Transport>(
    node: &ServerNode<T>,
    transport: &QuicTransport,
    actor: &std::sync::Mutex<Membership>,
) {
    let started = node.env().mono();
    let step = loop {
        let (view, leader) = membership(node);
        if !leader {
            return;
        }
        let desired = node.replica().read(|a| a.state.servers().clone());
        let now = node.env().mono();
        let (step, waiting) = {
            let mut actor = actor.lock().unwrap_or_else(|p| p.into_inner());
            let step = actor.step(now, &view, &desired);
            (step, actor.waiting_for().is_some())
        };
        match step {
            Some(step) => break step,
            None if waiting && now.saturating_since(started) < LEARNER_CATCH_UP_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => return,
        }
    };
    let raft = node.replica().raft();
    tracing::info!(?step, "reconciling cluster membership");
    let result = match step {
        MembershipStep::RegisterVoters(records) => {
            for server in records {
                if let Err(e) = node
                    .replica()
                    .write(Command::RegisterServer { server })
                    .await
                {
                    tracing::info!(error = %e, "could not record a member yet; retrying");
                }
            }
            return;
        }
        MembershipStep::AddLearner(r) => {
            // Reachable before openraft starts replicating to it.
            if let Ok(addr) = r.addr.parse::<SocketAddr>() {
                transport.set_peer(r.node_id, addr);
            }
            match raft
                .add_learner(r.node_id, BasicNode::new(r.addr.clone()), false)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        MembershipStep::Promote(id) => raft
            .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        MembershipStep::RemoveVoter(id) => raft
            .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        MembershipStep::RemoveLearner(id) => raft
            .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "membership change failed; it is retried (check that the node is reachable)");
    }
}

/// Obtains the node's server SVID, binds QUIC with it, serves the node API, then keeps the SVID,
/// the trust store and the membership fresh until stopped.
async fn serve_quic<T: Transport>(
    cfg: &ServerFileConfig,
    node: &ServerNode<T>,
    service: NodeService<T>,
    late: &LateTransport,
    env: Arc<dyn Env>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let files = IdentityFiles::new(&cfg.data_dir);
    let key = files.key()?;
    let (identity, _chain, mut not_after, joined) =
        first_identity(cfg, node, &key, &files, env.clone()).await?;
    let applied_bundle = node.bundle();
    let bundle = match (&joined, applied_bundle.x509_authorities.is_empty()) {
        (Some((b, _)), true) => b.clone(),
        _ => applied_bundle,
    };
    let trust = TrustStore::new(cfg.trust_domain.clone(), bundle);
    let mut quic_config = QuicConfig::new(cfg.node_id, cfg.bind);
    quic_config.limits = cfg.limits;
    let transport = QuicTransport::bind(quic_config, &identity, trust.clone(), env.clone())
        .map_err(|e| Error::Os {
            what: "binding the QUIC endpoint",
            detail: e.to_string(),
        })?;
    transport.set_api_handler(Arc::new(service));
    let mut known = BTreeSet::new();
    if let Some((_, servers)) = &joined {
        let addrs = servers
            .iter()
            .map(|s| (s.node_id, s.addr.clone()))
            .collect();
        sync_peers(&transport, &addrs, &mut known);
    }
    tracing::info!(addr = %transport.local_addr(), node_id = cfg.node_id, "serving QUIC (Raft and the node API) with this node's server SVID");
    late.set(transport.clone());

    let mut progress = node.replica().subscribe();
    let mut reconciling: Option<tokio::task::JoinHandle<()>> = None;
    let actor = Arc::new(std::sync::Mutex::new(Membership::new()));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MEMBERSHIP_TICK) => {}
            _ = progress.changed() => {}
            _ = stop.wait_for(|s| *s) => {
                if let Some(task) = reconciling.take() {
                    task.abort();
                }
                return Ok(());
            }
        }
        let (view, leader) = membership(node);
        if !view.addrs.is_empty() {
            sync_peers(&transport, &view.addrs, &mut known);
        }
        if leader && reconciling.as_ref().is_none_or(|t| t.is_finished()) {
            let n = node.clone();
            let t = transport.clone();
            let a = actor.clone();
            #[allow(clippy::disallowed_methods)] // the production shell's tasks
            let task = tokio::spawn(async move { reconcile(&n, &t, &a).await });
            reconciling = Some(task);
        }
        // The trust store follows the applied bundle at once (a CA that became active here
        // must be trusted by this node's own TLS before it signs with it).
        let bundle = node.bundle();
        if !bundle.x509_authorities.is_empty()
            && bundle.x509_authorities != trust.bundle().x509_authorities
        {
            trust.update(bundle);
        }
        // Renew at half life, from this node's own CA.
        let renew_at = not_after.saturating_sub(SERVER_SVID_TTL / 2);
        if env.wall() >= renew_at && node.has_active_ca() {
            match own_identity(node, &key) {
                Ok((identity, chain, na)) => {
                    transport.set_identity(&identity);
                    not_after = na;
                    if let Err(e) = files.store_svid(&chain, na) {
                        tracing::warn!(error = %e, "could not store the renewed server SVID; a restart will need a fresh one");
                    }
                    tracing::info!("renewed this node's server SVID");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew this node's server SVID; retrying (check that a quorum is reachable)")
                }
            }
        }
    }
}

/// Loads `path` and runs the server until Ctrl-C or SIGTERM.
pub async fn run_server_from_file(path: &Path) -> Result<(), Error> {
    let cfg = ServerFileConfig::load(path)?;
    run_server(cfg, shutdown_signal()).await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
