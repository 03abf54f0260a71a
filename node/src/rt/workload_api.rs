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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use wire::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use wire::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
    X509svidRequest, X509svidResponse, SECURITY_HEADER, SECURITY_HEADER_VALUE,
};
use wire::{Bundle, Selector, SpiffeId, TrustDomain, UnixTime};

use crate::rt::admin::io_text;
use crate::rt::h2_authority::AuthorityFix;
use crate::rt::unix_attest::{self, PeerCred, ProcessPin, UnixAttestConfig, UnixAttestError};
use crate::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

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

    /// A stream that sends `first`, then a new message whenever the source changes.
    fn watch<M: Send + 'static>(
        &self,
        caller: Caller,
        changes: watch::Receiver<u64>,
        first_digest: Digest,
        first: M,
        build: BuildFn<M>,
    ) -> FullStateStream<M> {
        let watcher = Watcher {
            source: self.source.clone(),
            cred: caller.cred,
            pin: caller.pin,
            attest_cfg: self.attest_cfg.clone(),
            selectors: caller.selectors,
            changes,
            stop: self.stop.subscribe(),
            build,
            last: first_digest,
        };
        FullStateStream {
            step: Some(Box::pin(std::future::ready(Some((
                Ok(first),
                Some(watcher),
            ))))),
        }
    }

    /// First message and stream for the three streaming RPCs.
    async fn open<M: Send + 'static>(
        &self,
        caller: Caller,
        what: &'static str,
        build: BuildFn<M>,
    ) -> Result<Response<FullStateStream<M>>, Status> {
        let mut changes = self.source.changes();
        // Anything that changes from here on is seen by the stream.
        changes.borrow_and_update();
        let (first, digest) = match build(&*self.source, &caller.selectors) {
            Ok(built) => built,
            Err(status) => {
                tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, rpc = what, "refused: {}", status.message());
                return Err(status);
            }
        };
        self.recheck(&caller).await?;
        tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, rpc = what, "stream opened");
        Ok(Response::new(
            self.watch(caller, changes, digest, first, build),
        ))
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

/// The wall clock (the shell's; for token expiry checks).
fn wall_now() -> UnixTime {
    #[allow(clippy::disallowed_methods)] // the production wall clock, in the shell
    let now = std::time::SystemTime::now();
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixTime::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A SHA-256 over length-prefixed fields: what a stream remembers of its last message.
type Digest = [u8; 32];

struct Digester(ring::digest::Context);

impl Digester {
    fn new(kind: &[u8]) -> Digester {
        let mut d = Digester(ring::digest::Context::new(&ring::digest::SHA256));
        d.put(kind);
        d
    }
    fn put(&mut self, field: &[u8]) {
        self.0.update(&(field.len() as u64).to_be_bytes());
        self.0.update(field);
    }
    fn finish(self) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// The map key of a trust domain's bundle: its trust domain ID, `spiffe://<td>`.
fn bundle_key(td: &TrustDomain) -> String {
    td.id().to_string()
}

/// The X.509 CAs of `bundle`, concatenated DER.
fn x509_der(bundle: &Bundle) -> Vec<u8> {
    bundle
        .x509_authorities
        .iter()
        .flat_map(|a| a.cert_der.iter().copied())
        .collect()
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

/// Builds one stream message from the source's current state.
type BuildFn<M> = fn(&dyn WorkloadSource, &BTreeSet<Selector>) -> Result<(M, Digest), Status>;

/// `FetchX509SVID`'s message.
fn x509_svid_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(X509svidResponse, Digest), Status> {
    let svids = unique_hints(source.x509_svids(selectors), |s| &s.hint);
    if svids.is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (_, own, others) = federated(source);
    let own_der = x509_der(&own);
    let mut d = Digester::new(b"x509-svid");
    d.put(&own_der);
    let mut resp = X509svidResponse::default();
    for svid in svids {
        let chain: Vec<u8> = svid.chain.concat();
        let spiffe_id = svid.spiffe_id.to_string();
        d.put(spiffe_id.as_bytes());
        d.put(&chain);
        d.put(&svid.key_pkcs8);
        d.put(svid.hint.as_bytes());
        resp.svids.push(X509svid {
            spiffe_id,
            x509_svid: chain,
            x509_svid_key: svid.key_pkcs8.to_vec(),
            bundle: own_der.clone(),
            hint: svid.hint,
        });
    }
    for (td, bundle) in others {
        let key = bundle_key(&td);
        let der = x509_der(&bundle);
        d.put(key.as_bytes());
        d.put(&der);
        resp.federated_bundles.insert(key, der);
    }
    Ok((resp, d.finish()))
}

/// `FetchX509Bundles`'s message.
fn x509_bundles_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(X509BundlesResponse, Digest), Status> {
    if source.x509_svids(selectors).is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (ours, own, others) = federated(source);
    let mut d = Digester::new(b"x509-bundles");
    let mut resp = X509BundlesResponse::default();
    for (td, bundle) in std::iter::once((ours, own)).chain(others) {
        let key = bundle_key(&td);
        let der = x509_der(&bundle);
        d.put(key.as_bytes());
        d.put(&der);
        resp.bundles.insert(key, der);
    }
    Ok((resp, d.finish()))
}

/// `FetchJWTBundles`'s message: JWKS documents with only the `jwt-svid` keys.
fn jwt_bundles_message(
    source: &dyn WorkloadSource,
    selectors: &BTreeSet<Selector>,
) -> Result<(JwtBundlesResponse, Digest), Status> {
    if source.x509_svids(selectors).is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let (ours, own, others) = federated(source);
    let mut d = Digester::new(b"jwt-bundles");
    let mut resp = JwtBundlesResponse::default();
    for (td, bundle) in std::iter::once((ours, own)).chain(others) {
        let key = bundle_key(&td);
        let jwks = bundle.jwt_only().to_json().into_bytes();
        d.put(key.as_bytes());
        d.put(&jwks);
        resp.bundles.insert(key, jwks);
    }
    Ok((resp, d.finish()))
}

/// Converts a JSON value into a `google.protobuf.Value`. Generic so that this crate needs no
/// direct dependency on `prost-types`: `V` is inferred from the generated message's field type.
fn json_to_pb<V>(value: &serde_json::Value) -> V
where
    V: Default + From<bool> + From<f64> + From<String> + From<Vec<V>> + From<BTreeMap<String, V>>,
{
    use serde_json::Value as J;
    match value {
        J::Null => V::default(),
        J::Bool(b) => V::from(*b),
        J::Number(n) => n.as_f64().map_or_else(V::default, V::from),
        J::String(s) => V::from(s.clone()),
        J::Array(items) => V::from(items.iter().map(json_to_pb).collect::<Vec<V>>()),
        J::Object(members) => V::from(
            members
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect::<BTreeMap<String, V>>(),
        ),
    }
}

/// A stream's state between messages.
struct Watcher<M> {
    source: Arc<dyn WorkloadSource>,
    cred: PeerCred,
    pin: ProcessPin,
    attest_cfg: Arc<UnixAttestConfig>,
    selectors: BTreeSet<Selector>,
    changes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    build: BuildFn<M>,
    /// Digest of the last message sent.
    last: Digest,
}

/// Resolves once `stop` holds `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// One step of a stream: the next item, and the state to continue from (`None`: this item is
/// the last one). `None` overall: the stream ends without a further item.
type Step<M> = Option<(Result<M, Status>, Option<Watcher<M>>)>;

impl<M: Send + 'static> Watcher<M> {
    async fn next(mut self) -> Step<M> {
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => {
                    return Some((
                        Err(Status::unavailable("the Workload API is shutting down")),
                        None,
                    ));
                }
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The source is gone: end; the client reconnects.
                        return Some((
                            Err(Status::unavailable("the Workload API's source stopped")),
                            None,
                        ));
                    }
                }
            }
            self.changes.borrow_and_update();
            match (self.build)(&*self.source, &self.selectors) {
                Err(status) => return Some((Err(status), None)),
                Ok((_, digest)) if digest == self.last => continue,
                Ok((message, digest)) => {
                    // The process holding the stream must still be the pinned one.
                    if let Err(status) = recheck(self.cred, self.pin, self.attest_cfg.clone()).await
                    {
                        return Some((Err(status), None));
                    }
                    self.last = digest;
                    return Some((Ok(message), Some(self)));
                }
            }
        }
    }
}

/// A server stream of full-state messages (see the module docs).
pub struct FullStateStream<M> {
    step: Option<Pin<Box<dyn Future<Output = Step<M>> + Send>>>,
}

impl<M> std::fmt::Debug for FullStateStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullStateStream")
            .field("ended", &self.step.is_none())
            .finish()
    }
}

impl<M: Send + 'static> Stream for FullStateStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(step) = self.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.step = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((item, next))) => {
                self.step = next
                    .map(|w| Box::pin(w.next()) as Pin<Box<dyn Future<Output = Step<M>> + Send>>);
                Poll::Ready(Some(item))
            }
        }
    }
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
        check_header(request.metadata())?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.audience.len() > AUDIENCES_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {AUDIENCES_MAX} audiences may be requested"
            )));
        }
        if req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("an audience must not be empty"));
        }
        let wanted: Option<SpiffeId> =
            match req.spiffe_id.as_str() {
                "" => None,
                text => Some(text.parse().map_err(|e: wire::Error| {
                    Status::invalid_argument(format!("spiffe_id: {e}"))
                })?),
            };
        let audience = req.audience.clone();
        let caller = self.caller(&request).await?;
        let svids = self
            .source
            .jwt_svids(&caller.selectors, audience, wanted.clone())
            .await?;
        let svids: Vec<WorkloadJwt> = svids
            .into_iter()
            .filter(|s| wanted.as_ref().is_none_or(|w| *w == s.spiffe_id))
            .collect();
        let svids = unique_hints(svids, |s| &s.hint);
        if svids.is_empty() {
            tracing::debug!(pid = ?caller.cred.pid, uid = caller.cred.uid, "FetchJWTSVID: no identity");
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        self.recheck(&caller).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: svids
                .into_iter()
                .map(|s| Jwtsvid {
                    spiffe_id: s.spiffe_id.to_string(),
                    svid: s.token,
                    hint: s.hint,
                })
                .collect(),
        }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(request.metadata())?;
        let req = request.get_ref();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // Validation needs no identity of the caller, but the caller must be attestable.
        let caller = self.caller(&request).await?;
        let (ours, own, others) = federated(&*self.source);
        let mut bundles = others;
        bundles.insert(ours, own);
        let claims = attest::jwt::validate_jwt_svid(&req.svid, &bundles, &req.audience, wall_now())
            .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        let mut resp = ValidateJwtsvidResponse {
            spiffe_id: claims.spiffe_id.to_string(),
            claims: None,
        };
        let fields = &mut resp.claims.get_or_insert_with(Default::default).fields;
        for (name, value) in &claims.claims {
            if !value.is_null() {
                fields.insert(name.clone(), json_to_pb(value));
            }
        }
        self.recheck(&caller).await?;
        Ok(Response::new(resp))
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

/// Binds the Workload API socket at `path` with mode [`WORKLOAD_SOCKET_MODE`]: replaces a
/// stale socket file, refuses to replace anything else (a socket another process serves
/// included: [`super::socket::claim`]), creates the parent directory if needed.
pub fn bind_workload_socket(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    super::socket::claim(path, "creating the Workload API socket")?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| os_error("creating the Workload API socket's directory", &parent, e))?;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| os_error("binding the Workload API socket", path, e))?;
    // Bound with the umask's (tighter) permissions, then opened to every uid.
    let opened =
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(WORKLOAD_SOCKET_MODE))
            .map_err(|e| os_error("setting the Workload API socket's permissions", path, e))
            .and_then(|()| {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| os_error("configuring the Workload API socket", path, e))
            })
            .and_then(|()| {
                tokio::net::UnixListener::from_std(listener)
                    .map_err(|e| os_error("registering the Workload API socket", path, e))
            });
    if opened.is_err() {
        let _ = std::fs::remove_file(path);
    }
    opened
}

/// What a request learns about its connection (tonic's connect info for [`WorkloadConn`]).
#[derive(Debug, Clone)]
struct WorkloadConnInfo {
    /// Peer address and credentials (`SO_PEERCRED`, read when the connection was accepted).
    uds: UdsConnectInfo,
    /// The connecting process's pin; `None` until taken.
    pin: watch::Receiver<Option<Result<ProcessPin, UnixAttestError>>>,
}

/// Longest wait for a connection's pin (it is taken before the connection is read from, so a
/// request normally finds it ready).
const PIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl WorkloadConnInfo {
    /// The pin, once taken.
    async fn pin(&self) -> Result<ProcessPin, UnixAttestError> {
        let mut rx = self.pin.clone();
        let pid = self.uds.peer_cred.and_then(|c| c.pid()).unwrap_or(0);
        let waited = tokio::time::timeout(PIN_WAIT, rx.wait_for(Option::is_some)).await;
        let taken = match waited {
            Ok(Ok(pin)) => pin.clone(),
            // The pin was never taken (runtime shutting down) or is overdue.
            Ok(Err(_)) | Err(_) => None,
        };
        taken.unwrap_or(Err(UnixAttestError::Gone(pid)))
    }
}

/// Open Workload API connections per uid, bounded.
#[derive(Debug, Clone)]
struct UidLimits {
    max: usize,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u32, UidCount>>>,
}

#[derive(Debug, Default)]
struct UidCount {
    open: usize,
    /// Connections refused since this uid last had none open (for the log's rate limit).
    refused: u64,
}

/// One open connection of `uid`, counted until dropped.
#[derive(Debug)]
struct UidSlot {
    uid: u32,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u32, UidCount>>>,
}

impl UidLimits {
    fn new(max: usize) -> UidLimits {
        UidLimits {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for a new connection of `uid`, or how many were refused so far (this one too).
    fn acquire(&self, uid: u32) -> Result<UidSlot, u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(uid).or_default();
        if count.open >= self.max {
            count.refused = count.refused.saturating_add(1);
            let refused = count.refused;
            if count.open == 0 {
                // A limit of 0: nothing is ever held for this uid.
                counts.remove(&uid);
            }
            return Err(refused);
        }
        count.open += 1;
        Ok(UidSlot {
            uid,
            counts: self.counts.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, uid: u32) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&uid).map_or(0, |c| c.open)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.uid) {
            count.open = count.open.saturating_sub(1);
            if count.open == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// An accepted Workload API connection: the `:authority` adapter over the socket, its uid's
/// slot, and its process pin. Reads and writes wait until the pin is taken.
struct WorkloadConn {
    inner: AuthorityFix<tokio::net::UnixStream>,
    info: WorkloadConnInfo,
    /// Resolves once the pin is taken; `None` afterwards.
    pinning: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _slot: UidSlot,
}

impl std::fmt::Debug for WorkloadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadConn")
            .field("info", &self.info)
            .field("pinned", &self.pinning.is_none())
            .finish()
    }
}

impl WorkloadConn {
    /// Ready once the pin is taken.
    fn poll_pinned(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(pinning) = self.pinning.as_mut() {
            if pinning.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pinning = None;
        }
        Poll::Ready(())
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = WorkloadConnInfo;

    fn connect_info(&self) -> WorkloadConnInfo {
        self.info.clone()
    }
}

/// Takes an accepted connection in: counts it against its uid (closes it past the limit) and
/// starts pinning its process. `None`: the connection is closed.
fn accept(
    stream: tokio::net::UnixStream,
    limits: &UidLimits,
    cfg: &Arc<UnixAttestConfig>,
) -> Option<WorkloadConn> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::info!(error = %e, "closed a Workload API connection without peer credentials");
            return None;
        }
    };
    let slot = match limits.acquire(cred.uid()) {
        Ok(slot) => slot,
        Err(refused) => {
            // Logged at the 1st, 2nd, 4th, 8th... refusal while the uid stays at the limit.
            if refused.is_power_of_two() {
                tracing::warn!(
                    uid = cred.uid(),
                    limit = limits.max,
                    refused,
                    "closed a Workload API connection: uid {} already has {} open connections (the limit per uid)",
                    cred.uid(),
                    limits.max
                );
            }
            return None;
        }
    };
    let peer = PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    // The executable's path now, in the accept loop (the kernel's record only: never blocks),
    // so an exec after this point is seen even before the pin below is taken.
    let exe_at_accept = unix_attest::exe_path(peer, cfg);
    let (tx, rx) = watch::channel(None);
    let pin_cfg = cfg.clone();
    // The rest (/proc reads and a stat of the executable, whose file system may be slow): on a
    // blocking thread, at once.
    drop(tokio::task::spawn_blocking(move || {
        let pin = ProcessPin::take(peer, exe_at_accept.as_deref(), &pin_cfg);
        tx.send_replace(Some(pin));
    }));
    let inner = AuthorityFix::new(stream);
    let uds = inner.connect_info();
    let mut waiter = rx.clone();
    Some(WorkloadConn {
        inner,
        info: WorkloadConnInfo { uds, pin: rx },
        pinning: Some(Box::pin(async move {
            let _ = waiter.wait_for(Option::is_some).await;
        })),
        _slot: slot,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use wire::{JwtAuthority, PublicJwk, X509Authority};

    fn td(s: &str) -> TrustDomain {
        s.parse().expect("td")
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("id")
    }

    fn sel(s: &str) -> Selector {
        s.parse().expect("selector")
    }

    fn svid(path: &str, hint: &str, byte: u8) -> WorkloadX509 {
        WorkloadX509 {
            spiffe_id: id(&format!("spiffe://example.org/{path}")),
            chain: vec![vec![byte; 3], vec![0xca; 2]],
            key_pkcs8: zeroize::Zeroizing::new(vec![0x5e; 4]),
            hint: hint.into(),
        }
    }

    fn bundle(der: &[u8], kid: &str) -> Bundle {
        Bundle {
            sequence: Some(1),
            refresh_hint_secs: Some(300),
            x509_authorities: vec![X509Authority {
                cert_der: der.to_vec(),
                key: PublicJwk::Ec {
                    crv: "P-256".into(),
                    x: vec![1; 32],
                    y: vec![2; 32],
                },
            }],
            jwt_authorities: vec![JwtAuthority {
                kid: kid.into(),
                key: PublicJwk::Ec {
                    crv: "P-256".into(),
                    x: vec![3; 32],
                    y: vec![4; 32],
                },
            }],
        }
    }

    struct Fake {
        svids: Mutex<Vec<WorkloadX509>>,
        federated: Vec<(TrustDomain, Bundle)>,
        tick: watch::Sender<u64>,
    }

    impl WorkloadSource for Fake {
        fn trust_domain(&self) -> TrustDomain {
            td("example.org")
        }
        fn x509_svids(&self, selectors: &BTreeSet<Selector>) -> Vec<WorkloadX509> {
            if selectors.contains(&sel("unix:uid:1000")) {
                self.svids.lock().expect("lock").clone()
            } else {
                Vec::new()
            }
        }
        fn bundles(&self) -> (Bundle, Vec<(TrustDomain, Bundle)>) {
            (bundle(&[0xaa, 0xbb], "own"), self.federated.clone())
        }
        fn jwt_svids(
            &self,
            _: &BTreeSet<Selector>,
            _: Vec<String>,
            _: Option<SpiffeId>,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<WorkloadJwt>, Status>> + Send + 'static>>
        {
            Box::pin(std::future::ready(Ok(Vec::new())))
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.tick.subscribe()
        }
    }

    fn fake() -> Fake {
        Fake {
            svids: Mutex::new(vec![
                svid("a", "one", 1),
                svid("b", "one", 2),
                svid("c", "", 3),
            ]),
            federated: vec![
                (td("other.org"), bundle(&[0xcc], "fed")),
                // Our own trust domain among the federated ones is ignored.
                (td("example.org"), bundle(&[0xee], "bogus")),
            ],
            tick: watch::channel(0).0,
        }
    }

    fn uid1000() -> BTreeSet<Selector> {
        [sel("unix:uid:1000")].into()
    }

    #[test]
    fn header_must_be_exactly_true() {
        let mut md = MetadataMap::new();
        let err = check_header(&md).expect_err("missing");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        md.insert(SECURITY_HEADER, "false".parse().expect("value"));
        assert_eq!(
            check_header(&md).expect_err("false").code(),
            tonic::Code::InvalidArgument
        );
        md.insert(SECURITY_HEADER, "true".parse().expect("value"));
        check_header(&md).expect("true");
    }

    #[test]
    fn x509_message_is_full_state_with_unique_hints() {
        let f = fake();
        let (msg, digest) = x509_svid_message(&f, &uid1000()).expect("message");
        // "b" repeats "a"'s hint and is left out; "c" has none and stays.
        let ids: Vec<&str> = msg.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
        assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/c"]);
        let a = &msg.svids[0];
        assert_eq!(a.x509_svid, [1, 1, 1, 0xca, 0xca]);
        assert_eq!(a.x509_svid_key, [0x5e; 4]);
        assert_eq!(a.bundle, [0xaa, 0xbb]);
        assert_eq!(a.hint, "one");
        assert_eq!(msg.federated_bundles.len(), 1);
        assert_eq!(msg.federated_bundles["spiffe://other.org"], [0xcc]);
        // Same state, same digest; a change, another digest.
        assert_eq!(x509_svid_message(&f, &uid1000()).expect("again").1, digest);
        f.svids.lock().expect("lock")[0].key_pkcs8 = zeroize::Zeroizing::new(vec![9]);
        assert_ne!(
            x509_svid_message(&f, &uid1000()).expect("changed").1,
            digest
        );
    }

    #[test]
    fn no_identity_is_permission_denied() {
        let f = fake();
        let nobody: BTreeSet<Selector> = [sel("unix:uid:4242")].into();
        for status in [
            x509_svid_message(&f, &nobody).err(),
            x509_bundles_message(&f, &nobody).err(),
            jwt_bundles_message(&f, &nobody).err(),
        ] {
            let status = status.expect("refused");
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert_eq!(status.message(), NO_IDENTITY);
        }
    }

    #[test]
    fn bundles_are_keyed_by_trust_domain_id() {
        let f = fake();
        let (x, _) = x509_bundles_message(&f, &uid1000()).expect("x509");
        assert_eq!(x.bundles.len(), 2);
        assert_eq!(x.bundles["spiffe://example.org"], [0xaa, 0xbb]);
        assert_eq!(x.bundles["spiffe://other.org"], [0xcc]);
        let (j, _) = jwt_bundles_message(&f, &uid1000()).expect("jwt");
        let own: serde_json::Value =
            serde_json::from_slice(&j.bundles["spiffe://example.org"]).expect("json");
        let keys = own["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1, "only jwt-svid keys: {own}");
        assert_eq!(keys[0]["use"], "jwt-svid");
        assert_eq!(keys[0]["kid"], "own");
        let fed = Bundle::from_json(&j.bundles["spiffe://other.org"]).expect("bundle");
        assert_eq!(fed.jwt_authorities[0].kid, "fed");
        assert!(fed.x509_authorities.is_empty());
    }

    #[test]
    fn debug_never_shows_keys_or_tokens() {
        let s = format!("{:?}", svid("a", "h", 1));
        assert!(s.contains("redacted") && !s.contains("94"), "{s}");
        let j = WorkloadJwt {
            spiffe_id: id("spiffe://example.org/a"),
            token: "eyJsecret".into(),
            hint: String::new(),
        };
        assert!(!format!("{j:?}").contains("eyJsecret"));
    }

    #[derive(Debug, Default, PartialEq)]
    enum Pb {
        #[default]
        Unset,
        B(bool),
        N(f64),
        S(String),
        L(Vec<Pb>),
        O(BTreeMap<String, Pb>),
    }
    impl From<bool> for Pb {
        fn from(v: bool) -> Pb {
            Pb::B(v)
        }
    }
    impl From<f64> for Pb {
        fn from(v: f64) -> Pb {
            Pb::N(v)
        }
    }
    impl From<String> for Pb {
        fn from(v: String) -> Pb {
            Pb::S(v)
        }
    }
    impl From<Vec<Pb>> for Pb {
        fn from(v: Vec<Pb>) -> Pb {
            Pb::L(v)
        }
    }
    impl From<BTreeMap<String, Pb>> for Pb {
        fn from(v: BTreeMap<String, Pb>) -> Pb {
            Pb::O(v)
        }
    }

    #[test]
    fn claims_convert_to_protobuf_values() {
        let v: Pb = json_to_pb(&serde_json::json!({
            "sub": "spiffe://example.org/a", "aud": ["x", "y"], "exp": 1700000000u64,
            "ok": true, "n": null
        }));
        let Pb::O(m) = v else { panic!("object") };
        assert_eq!(m["sub"], Pb::S("spiffe://example.org/a".into()));
        assert_eq!(m["aud"], Pb::L(vec![Pb::S("x".into()), Pb::S("y".into())]));
        assert_eq!(m["exp"], Pb::N(1_700_000_000.0));
        assert_eq!(m["ok"], Pb::B(true));
        assert_eq!(m["n"], Pb::Unset);
    }

    /// This test process as a caller holding `unix:uid:1000`, pinned.
    fn own_caller() -> Caller {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/proc/self").expect("/proc/self");
        let cred = PeerCred {
            pid: Some(i32::try_from(std::process::id()).expect("pid")),
            uid: meta.uid(),
            gid: meta.gid(),
        };
        let cfg = UnixAttestConfig::default();
        let pin = ProcessPin::take(cred, unix_attest::exe_path(cred, &cfg).as_deref(), &cfg)
            .expect("pin");
        Caller {
            cred,
            pin,
            selectors: uid1000(),
        }
    }

    #[test]
    fn connections_are_bounded_per_uid() {
        let limits = UidLimits::new(2);
        let a = limits.acquire(7).expect("first");
        let b = limits.acquire(7).expect("second");
        assert_eq!(limits.acquire(7).err(), Some(1));
        assert_eq!(limits.acquire(7).err(), Some(2));
        // Other uids have their own budget.
        let other = limits.acquire(8).expect("other uid");
        assert_eq!(limits.open(7), 2);
        drop(a);
        assert_eq!(limits.open(7), 1);
        let c = limits.acquire(7).expect("a slot was freed");
        drop((b, c, other));
        assert_eq!(limits.open(7), 0);
        assert!(
            limits.counts.lock().expect("lock").is_empty(),
            "no state kept for idle uids"
        );
        let none = UidLimits::new(0);
        assert_eq!(none.acquire(7).err(), Some(1));
        assert!(none.counts.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn stream_resends_only_on_real_change_and_stops() {
        use tonic::codegen::tokio_stream::StreamExt;
        let f = Arc::new(fake());
        let svc = WorkloadApiService::new(f.clone(), UnixAttestConfig::default());
        let caller = own_caller();
        let mut stream = svc
            .open(caller, "test", x509_svid_message)
            .await
            .expect("open")
            .into_inner();
        let wait = std::time::Duration::from_secs(10);
        let first = tokio::time::timeout(wait, stream.next())
            .await
            .expect("first in time")
            .expect("item")
            .expect("ok");
        assert_eq!(first.svids.len(), 2);
        // A tick without a change sends nothing.
        f.tick.send_modify(|t| *t += 1);
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
        assert!(quiet.is_err(), "no message for an unchanged state");
        // A change is sent in full.
        f.svids.lock().expect("lock").push(svid("d", "", 4));
        f.tick.send_modify(|t| *t += 1);
        let second = tokio::time::timeout(wait, stream.next())
            .await
            .expect("second in time")
            .expect("item")
            .expect("ok");
        assert_eq!(second.svids.len(), 3);
        // Losing every identity ends the stream with PermissionDenied.
        f.svids.lock().expect("lock").clear();
        f.tick.send_modify(|t| *t += 1);
        let denied = tokio::time::timeout(wait, stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(stream.next().await.is_none());
        // Stopping ends an open stream with Unavailable.
        f.svids.lock().expect("lock").push(svid("e", "", 5));
        let mut stream = svc
            .open(own_caller(), "test", x509_svid_message)
            .await
            .expect("open")
            .into_inner();
        stream.next().await.expect("first").expect("ok");
        svc.stopper().stop();
        let end = tokio::time::timeout(wait, stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect_err("unavailable");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }
}
