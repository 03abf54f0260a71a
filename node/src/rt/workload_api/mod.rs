//! The SPIFFE Workload API (`SpiffeWorkloadAPI`, DESIGN.md §6) served on a Unix socket.
//!
//! [`WorkloadSource`] is what the API serves from (the agent's cache, or a server node's own
//! issuer); [`WorkloadApiService`] implements the gRPC service over it and
//! [`serve_workload_api`] serves it on a socket.
//!
//! Every call:
//! 1. must carry the metadata `workload.spiffe.io: true`, or it fails with `InvalidArgument`
//!    (SPIFFE_Workload_Endpoint.md §6);
//! 2. attests the caller from the socket's peer credentials (`SO_PEERCRED` via tonic's
//!    [`UdsConnectInfo`]) with [`unix_attest::attest_pinned`]; a caller that cannot be attested
//!    gets `PermissionDenied`. The workload never presents a credential itself;
//! 3. once the answer is built, checks again that the process is still the one pinned when the
//!    connection was accepted ([`ProcessPin::check`]) and refuses with `PermissionDenied`
//!    otherwise (see "Connections").
//!
//! Connections ([`serve_workload_api`]): every accepted connection is counted against its uid
//! (at most [`UnixAttestConfig::connections_per_uid_max`] open at once; more are closed at
//! once, with a log line naming the uid and the limit), goes through the shared `:authority`
//! adapter ([`AuthorityFix`]) and gets a [`ProcessPin`] of the connecting process, taken right
//! after `accept` on a blocking thread. Nothing is read from or written to the connection until
//! the pin is taken, so no request is answered from an unpinned connection. A process that ran
//! `exec` on another file since the pin (or that exited) is refused on that connection, so a
//! connection opened by one program cannot be used to obtain the identity of the program its
//! process runs next (the fd handed to a child, then `exec` of a trusted binary). An `exec` that
//! completes before the pin is taken is not seen (README "Security model"). Streams check the
//! pin again before every update they send.
//!
//! The RPCs (SPIFFE_Workload_API.md §5–§6):
//! - `FetchX509SVID` (stream): every message is the full state — all SVIDs of the caller (first
//!   = default), each with its chain (leaf first, concatenated DER), PKCS#8 key, hint and our
//!   trust domain's X.509 CAs (concatenated DER), plus `federated_bundles`. A message is sent at
//!   once, then again on every [`WorkloadSource::changes`] tick whose state differs from the last
//!   one sent. A caller with no SVID gets `PermissionDenied` "no identity issued" — as the RPC's
//!   status when that holds for the first message, or as the stream's final status when its
//!   identities go away later (as SPIRE does).
//! - `FetchX509Bundles` (stream): trust domain ID (`spiffe://<td>`) → concatenated CA DER, ours
//!   and the federated ones; same update and `PermissionDenied` rules.
//! - `FetchJWTSVID` (unary): `audience` required (`InvalidArgument`); all entitled identities,
//!   or only `spiffe_id`'s when given; none → `PermissionDenied`.
//! - `FetchJWTBundles` (stream): trust domain ID → JWKS JSON holding only the `jwt-svid` keys.
//! - `ValidateJWTSVID` (unary): both fields required; validated by
//!   [`attest::jwt::validate_jwt_svid`] against the bundle of the subject's trust domain (ours or
//!   a federated one); answers the SPIFFE ID and the claims (top-level `null` claims are dropped,
//!   which the spec allows for non-SPIFFE claims). An invalid token is `InvalidArgument`.
//! - The WIT-SVID calls answer `Unimplemented`.
//!
//! Hints: non-empty hints must be unique per response; a later SVID repeating an earlier one's
//! hint is left out (SPIRE does the same). Streams end with `Unavailable` when the server shuts
//! down, so a graceful shutdown never waits for them.
//!
//! Private keys appear only in `FetchX509SVID` messages to the attested workload: never in a log
//! line, an error or a `Debug` output ([`WorkloadX509`]'s `Debug` redacts the key, and streams
//! remember only a SHA-256 digest of what they last sent).
//!
//! **Where things are.**
//! - `mod.rs` (here): what the API serves from ([`WorkloadSource`], [`WorkloadX509`],
//!   [`WorkloadJwt`]), the limits, [`WorkloadApiService`] with caller attestation and the header
//!   check, the `SpiffeWorkloadAPI` trait impl (dispatching to the files below), helpers shared
//!   by both sides (bundle keys, federated bundles, unique hints) and [`serve_workload_api`];
//! - `stream.rs`: the full-state streams — message digests, [`FullStateStream`] and the watcher
//!   that resends on change, and opening a stream;
//! - `x509.rs`: the X.509 side — the `FetchX509SVID` and `FetchX509Bundles` messages;
//! - `jwt.rs`: the JWT side — `FetchJWTSVID`, `ValidateJWTSVID`, the `FetchJWTBundles` message
//!   and claims as protobuf values;
//! - `conn.rs`: connections — [`bind_workload_socket`], the per-uid connection limit, the
//!   accepted connection that waits for its process pin, and its connect info;
//! - `tests.rs`: unit tests.
//!
//! [`UdsConnectInfo`]: tonic::transport::server::UdsConnectInfo
//! [`AuthorityFix`]: crate::rt::h2_authority::AuthorityFix

mod conn;
mod jwt;
mod stream;
mod x509;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use wire::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use wire::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
    SECURITY_HEADER, SECURITY_HEADER_VALUE,
};
use wire::{Bundle, Selector, TrustDomain};

use crate::rt::admin::io_text;
use crate::rt::unix_attest::{self, PeerCred, ProcessPin, UnixAttestConfig, UnixAttestError};
use crate::Error;

pub use conn::bind_workload_socket;
use conn::{accept, UidLimits, WorkloadConnInfo};
use jwt::jwt_bundles_message;
pub use stream::FullStateStream;
use x509::{x509_bundles_message, x509_svid_message};

/// One X.509-SVID a workload may hold.
#[derive(Clone)]
pub struct WorkloadX509 {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: wire::SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER (generated by the agent; goes only to the workload).
    pub key_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// The entry's hint (may be empty).
    pub hint: String,
}

impl std::fmt::Debug for WorkloadX509 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadX509")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_certs", &self.chain.len())
            .field("key_pkcs8", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// A JWT-SVID for a workload.
#[derive(Clone)]
pub struct WorkloadJwt {
    /// The token's `sub`.
    pub spiffe_id: wire::SpiffeId,
    /// The JWT-SVID, JWS compact serialization.
    pub token: String,
    /// The entry's hint (may be empty).
    pub hint: String,
}

impl std::fmt::Debug for WorkloadJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a bearer credential: never printed.
        f.debug_struct("WorkloadJwt")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// What the Workload API serves from: the agent's cache.
pub trait WorkloadSource: Send + Sync + 'static {
    /// This trust domain.
    fn trust_domain(&self) -> wire::TrustDomain;
    /// The X.509-SVIDs of every entry whose selectors are all in `selectors`, in a stable order (the first is the default SVID).
    fn x509_svids(
        &self,
        selectors: &std::collections::BTreeSet<wire::Selector>,
    ) -> Vec<WorkloadX509>;
    /// Our bundle and the federated bundles (by trust domain).
    fn bundles(&self) -> (wire::Bundle, Vec<(wire::TrustDomain, wire::Bundle)>);
    /// JWT-SVIDs for `audience` for the matching entries (only `spiffe_id`'s when given); the source caches and mints.
    #[allow(clippy::type_complexity)] // the contract's exact signature
    fn jwt_svids(
        &self,
        selectors: &std::collections::BTreeSet<wire::Selector>,
        audience: Vec<String>,
        spiffe_id: Option<wire::SpiffeId>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<WorkloadJwt>, tonic::Status>>
                + Send
                + 'static,
        >,
    >;
    /// Ticks whenever SVIDs or bundles change (streams resend their full state).
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Permissions of the Workload API socket: anyone may connect (`rw` for all). Workloads of any
/// uid must reach it; what a caller gets is decided by attestation, never by file permissions.
pub const WORKLOAD_SOCKET_MODE: u32 = 0o666;
/// Largest request accepted, in bytes (the largest legitimate one is a JWT to validate).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Most concurrent calls (streams included) on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// Most audiences one `FetchJWTSVID` request may name.
pub const AUDIENCES_MAX: usize = attest::jwt::AUDIENCES_MAX;
/// The status text for a caller without an identity (the text SPIRE uses, which clients such
/// as rust-spiffe recognise).
pub const NO_IDENTITY: &str = "no identity issued";

/// The `SpiffeWorkloadAPI` service over a [`WorkloadSource`].
pub struct WorkloadApiService {
    source: Arc<dyn WorkloadSource>,
    attest_cfg: Arc<UnixAttestConfig>,
    /// `true` ends every open stream (with `Unavailable`).
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for WorkloadApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiService")
            .field("trust_domain", &self.source.trust_domain())
            .field("attest_cfg", &self.attest_cfg)
            .field("stopped", &*self.stop.borrow())
            .finish()
    }
}

impl WorkloadApiService {
    /// A service answering from `source`, attesting callers with `attest_cfg`.
    pub fn new(source: Arc<dyn WorkloadSource>, attest_cfg: UnixAttestConfig) -> Self {
        WorkloadApiService {
            source,
            attest_cfg: Arc::new(attest_cfg),
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// A handle that ends every open stream of this service (see [`StreamStopper::stop`]).
    pub fn stopper(&self) -> StreamStopper {
        StreamStopper(self.stop.clone())
    }

    /// The tonic server for this service, with the request size limit.
    pub fn into_server(self) -> SpiffeWorkloadApiServer<WorkloadApiService> {
        SpiffeWorkloadApiServer::new(self).max_decoding_message_size(REQUEST_BYTES_MAX)
    }

    /// Header check and attestation: the caller's selectors, for the process pinned when its
    /// connection was accepted.
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        check_header(req.metadata())?;
        let conn = req
            .extensions()
            .get::<WorkloadConnInfo>()
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(
                    "cannot attest the caller: the connection was not accepted by the Workload API listener",
                )
            })?;
        let cred = conn.uds.peer_cred.ok_or_else(|| {
            Status::permission_denied(
                "cannot attest the caller: its Unix peer credentials are unavailable",
            )
        })?;
        let cred = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let pin = conn.pin().await.map_err(|e| refusal(cred, &e))?;
        let cfg = self.attest_cfg.clone();
        // Attestation reads /proc and may hash the executable: off the async workers.
        let attested =
            tokio::task::spawn_blocking(move || unix_attest::attest_pinned(cred, &pin, &cfg))
                .await
                .map_err(|_| Status::internal("workload attestation did not complete"))?;
        match attested {
            Ok(selectors) => Ok(Caller {
                cred,
                pin,
                selectors,
            }),
            Err(e) => Err(refusal(cred, &e)),
        }
    }

    /// Checks, after an answer was built and before it is sent, that the caller's process is
    /// still the pinned one running the pinned executable.
    async fn recheck(&self, caller: &Caller) -> Result<(), Status> {
        recheck(caller.cred, caller.pin, self.attest_cfg.clone()).await
    }
}

/// Ends every open stream of a [`WorkloadApiService`].
#[derive(Debug, Clone)]
pub struct StreamStopper(Arc<watch::Sender<bool>>);

impl StreamStopper {
    /// Ends every open stream with `Unavailable`; streams opened later end at once.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// An attested caller.
#[derive(Debug, Clone)]
struct Caller {
    cred: PeerCred,
    /// Its process as pinned when the connection was accepted.
    pin: ProcessPin,
    selectors: BTreeSet<Selector>,
}

/// The `PermissionDenied` for a caller that cannot be attested (logged).
fn refusal(cred: PeerCred, e: &UnixAttestError) -> Status {
    tracing::info!(pid = ?cred.pid, uid = cred.uid, error = %e, "workload attestation failed");
    let pid = cred
        .pid
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    Status::permission_denied(format!(
        "cannot attest the caller (pid {pid}, uid {}): {e}",
        cred.uid
    ))
}

/// [`ProcessPin::check`] off the async workers, as a `PermissionDenied` when it fails.
async fn recheck(
    cred: PeerCred,
    pin: ProcessPin,
    cfg: Arc<UnixAttestConfig>,
) -> Result<(), Status> {
    match tokio::task::spawn_blocking(move || pin.check(&cfg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(refusal(cred, &e)),
        Err(_) => Err(Status::internal("workload attestation did not complete")),
    }
}

/// Rejects a request without `workload.spiffe.io: true`.
fn check_header(metadata: &MetadataMap) -> Result<(), Status> {
    match metadata.get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok(v)) if v == SECURITY_HEADER_VALUE => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: the metadata \"{SECURITY_HEADER}: {SECURITY_HEADER_VALUE}\" is required"
        ))),
    }
}

/// The map key of a trust domain's bundle: its trust domain ID, `spiffe://<td>`.
fn bundle_key(td: &TrustDomain) -> String {
    td.id().to_string()
}

/// The federated bundles of `source`, without our own trust domain, one per trust domain.
fn federated(source: &dyn WorkloadSource) -> (TrustDomain, Bundle, BTreeMap<TrustDomain, Bundle>) {
    let ours = source.trust_domain();
    let (own, others) = source.bundles();
    let mut map = BTreeMap::new();
    for (td, bundle) in others {
        if td != ours {
            map.entry(td).or_insert(bundle);
        }
    }
    (ours, own, map)
}

/// Keeps the first item of each non-empty hint (SPIFFE_Workload_API.md §5.2.1).
fn unique_hints<T>(items: Vec<T>, hint: impl Fn(&T) -> &str) -> Vec<T> {
    let mut seen = BTreeSet::new();
    items
        .into_iter()
        .filter(|item| {
            let h = hint(item);
            h.is_empty() || seen.insert(h.to_owned())
        })
        .collect()
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = FullStateStream<X509svidResponse>;
    type FetchX509BundlesStream = FullStateStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = FullStateStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = FullStateStream<WitsvidResponse>;
    type FetchWITBundlesStream = FullStateStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&request).await?;
        self.open(caller, "FetchX509SVID", x509_svid_message).await
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&request).await?;
        self.open(caller, "FetchX509Bundles", x509_bundles_message)
            .await
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&request).await?;
        self.open(caller, "FetchJWTBundles", jwt_bundles_message)
            .await
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.handle_fetch_jwtsvid(request).await
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.handle_validate_jwtsvid(request).await
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(request.metadata())?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported by sigil",
        ))
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(request.metadata())?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported by sigil",
        ))
    }
}

fn os_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Os {
        what,
        detail: format!("{}: {}", path.display(), io_text(&e.to_string())),
    }
}

/// Longest wait for Workload API connections to close after shutdown.
pub const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves the Workload API from `source` on a Unix socket at `path` until `shutdown` completes.
///
/// The socket gets mode 0666 ([`WORKLOAD_SOCKET_MODE`]): workloads of every uid connect, and
/// attestation (`attest_cfg`) decides what each gets. Each uid may hold
/// `attest_cfg.connections_per_uid_max` connections at once; each connection pins its process
/// (module docs). A stale socket file at `path` is replaced; the socket file is removed when
/// serving ends. On shutdown every open stream ends with `Unavailable`, then the connections
/// drain.
pub async fn serve_workload_api(
    path: &Path,
    source: Arc<dyn WorkloadSource>,
    attest_cfg: UnixAttestConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let limits = UidLimits::new(attest_cfg.connections_per_uid_max);
    let service = WorkloadApiService::new(source, attest_cfg);
    let cfg = service.attest_cfg.clone();
    let stopper = service.stopper();
    let listener = bind_workload_socket(path)?;
    let ours = super::socket::Claimed::record(path);
    tracing::info!(socket = %path.display(), connections_per_uid_max = limits.max, "Workload API listening");
    // Per-uid limit, process pin, and the `:authority` adapter (grpc-python; see h2_authority).
    let incoming = tokio_stream::StreamExt::filter_map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        move |conn| match conn {
            Ok(stream) => accept(stream, &limits, &cfg).map(Ok),
            Err(e) => Some(Err(e)),
        },
    );
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        stopper.stop();
        let _ = fired_tx.send(());
    };
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Clients that keep an idle connection open (or stopped running) must not hold the
    // shutdown forever: after DRAIN_MAX the remaining connections are abandoned.
    let drain_expired = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_MAX).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        r = served => r,
        () = drain_expired => {
            tracing::warn!(drain_secs = DRAIN_MAX.as_secs(), "Workload API clients did not disconnect in time; closing anyway");
            Ok(())
        }
    };
    ours.release();
    tracing::info!(socket = %path.display(), "Workload API stopped");
    served.map_err(|e| os_error("serving the Workload API", path, e))
}
