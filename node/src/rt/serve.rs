//! `sigil server`: one server node as a process — sled under the data dir, Raft over QUIC, the
//! [`ServerNode`] loops, and the admin API on its Unix socket. This is wiring only; the logic is
//! in the actors and the replica.
//!
//! Start-up of a bootstrap node: Raft starts before the node has a QUIC identity (its transport
//! is a [`LateTransport`] until then); the node initializes a one-member cluster, publishes its
//! CA through Raft, and once that commits mints its own server SVID and binds QUIC with it. The
//! server SVID is renewed at half its life and the QUIC trust store follows the replicated
//! bundle. Joining further server nodes (server join tokens, pinned bundle hash) is not built yet.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use raft::replica::{Replica, ReplicaConfig};
use raft::SledKv;
use tokio::sync::watch;
use wire::{Env, PeerId, SendError, Transport, UnixTime};

use crate::rt::admin::{serve_admin, AdminDefaults, AdminService};
use crate::rt::config::ServerFileConfig;
use crate::rt::quic::{QuicConfig, QuicTransport};
use crate::rt::tls::{NodeIdentity, TlsKey, TrustStore};
use crate::rt::SystemEnv;
use crate::server::{ServerConfig, ServerNode, SERVER_SVID_TTL};
use crate::Error;

/// How long start-up waits for this node's first CA publication to commit.
pub const FIRST_KEY_WAIT: Duration = Duration::from_secs(60);
/// How often the QUIC trust store is refreshed from the replicated bundle.
pub const TRUST_REFRESH: Duration = Duration::from_secs(5);

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

/// Mints this node's server SVID for `key` and turns it into a QUIC identity.
fn own_identity<T: Transport>(
    node: &ServerNode<T>,
    key: &TlsKey,
) -> Result<(NodeIdentity, UnixTime), Error> {
    let svid = node.issue_own_server_svid(key.public_key_der())?;
    let identity = NodeIdentity::new(vec![svid.cert_der], key).map_err(|e| Error::Os {
        what: "building the node's TLS identity",
        detail: e.to_string(),
    })?;
    Ok((identity, svid.not_after))
}

/// Runs a server node until `shutdown` completes, then stops it cleanly.
pub async fn run_server(
    cfg: ServerFileConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let env = Arc::new(SystemEnv::new()?);
    let dyn_env: Arc<dyn Env> = env.clone();
    let raft_dir = cfg.data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir).map_err(os("creating the data directory"))?;
    let kv = SledKv::open(&raft_dir).map_err(|e| Error::Os {
        what: "opening the Raft store",
        detail: e.to_string(),
    })?;
    let late = LateTransport::default();
    let replica = Arc::new(
        Replica::start(cfg.node_id, &ReplicaConfig::default(), kv, late.clone())
            .await
            .map_err(|e| Error::Os {
                what: "starting Raft",
                detail: e.to_string(),
            })?,
    );
    if cfg.bootstrap {
        let members = [(cfg.node_id, BasicNode::new(cfg.bind.to_string()))].into();
        let created = replica.initialize(members).await.map_err(|e| Error::Os {
            what: "initializing the cluster",
            detail: e,
        })?;
        if created {
            tracing::info!(trust_domain = %cfg.trust_domain, node_id = cfg.node_id, "bootstrapped a new trust domain with this node as its first member");
        }
    } else if !replica.has_log(Duration::from_secs(2)).await {
        return Err(Error::Config(
            "this node has no cluster state and `bootstrap = false`: joining an existing cluster is not supported yet; set `bootstrap = true` on the first node of a new trust domain".into(),
        ));
    }

    let mut server_cfg = ServerConfig::new(cfg.node_id, cfg.trust_domain.clone());
    server_cfg.key_ttl = cfg.ca_ttl;
    server_cfg.issuer.staleness_max = cfg.staleness_max;
    server_cfg.issuer.x509.default_ttl = cfg.x509_svid_ttl;
    server_cfg.issuer.jwt_default_ttl = cfg.jwt_svid_ttl;
    let node = ServerNode::start(server_cfg, dyn_env.clone(), replica.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = AdminService::new(
        replica.clone(),
        dyn_env.clone(),
        cfg.trust_domain.clone(),
        AdminDefaults::default(),
    );
    let admin_path = cfg.admin_socket.clone();
    let mut admin_stop = stop_rx.clone();
    let admin_task = {
        let path = admin_path.clone();
        #[allow(clippy::disallowed_methods)] // the production shell's tasks
        tokio::spawn(async move {
            let stopped = async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            };
            serve_admin(&path, admin, stopped).await
        })
    };

    let run = serve_quic(&cfg, &node, &late, dyn_env.clone(), stop_rx.clone());
    tokio::pin!(run);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut run => r,
        () = &mut shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    stop_tx.send_replace(true);
    node.stop();
    if let Some(t) = late.get() {
        t.close().await;
    }
    replica.shutdown().await;
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin API stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "admin API task failed"),
    }
    result
}

/// Waits for this node's CA, binds QUIC with its own server SVID, then keeps the SVID and the
/// trust store fresh until stopped.
async fn serve_quic<T: Transport>(
    cfg: &ServerFileConfig,
    node: &ServerNode<T>,
    late: &LateTransport,
    env: Arc<dyn Env>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut waited = Duration::ZERO;
    while !node.has_active_ca() {
        if waited >= FIRST_KEY_WAIT {
            return Err(Error::NoActiveKey);
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
    let key = TlsKey::generate().map_err(|e| Error::Os {
        what: "generating the node's TLS key",
        detail: e.to_string(),
    })?;
    let (identity, mut not_after) = own_identity(node, &key)?;
    let trust = TrustStore::new(cfg.trust_domain.clone(), node.bundle());
    let transport = QuicTransport::bind(
        QuicConfig::new(cfg.node_id, cfg.bind),
        &identity,
        trust.clone(),
        env.clone(),
    )
    .map_err(|e| Error::Os {
        what: "binding the QUIC endpoint",
        detail: e.to_string(),
    })?;
    tracing::info!(addr = %transport.local_addr(), node_id = cfg.node_id, "serving QUIC with this node's server SVID");
    late.set(transport.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRUST_REFRESH) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        trust.update(node.bundle());
        let wall = env.wall();
        // Renew at half life.
        let renew_at = not_after.saturating_sub(SERVER_SVID_TTL / 2);
        if wall >= renew_at {
            match own_identity(node, &key) {
                Ok((identity, na)) => {
                    transport.set_identity(&identity);
                    not_after = na;
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
