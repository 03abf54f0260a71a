//! The SPIFFE Workload API end to end: `serve_workload_api` on a Unix socket in a tempdir, over a
//! fake `WorkloadSource` holding real SVIDs (minted by published, active keyrings) for this test
//! process's own uid, driven by the unmodified rust `spiffe` client and by a raw tonic client.
//! The attacker tests run real processes (`exec_attacker.py`) that connect and then `exec`
//! another program, and hold connections up to the per-uid limit.
#![allow(clippy::disallowed_methods)] // tests run their own runtime and wait on wall-clock deadlines

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attest::keys::{p256_spki_der, RingKeySource};
use attest::{Action, JwtSvidRequest, KeyringConfig, NodeKeyring, PublishedAuthorities};
use node::rt::unix_attest::UnixAttestConfig;
use node::rt::workload_api::{
    serve_workload_api, WorkloadJwt, WorkloadSource, WorkloadX509, WORKLOAD_SOCKET_MODE,
};
use node::rt::SystemEnv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use spiffe::{JwtSvid, WorkloadApiClient, WorkloadApiError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::codegen::tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use wire::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest, WitsvidRequest,
    X509BundlesRequest, X509svidRequest, SECURITY_HEADER, SECURITY_HEADER_VALUE,
};
use wire::{Bundle, Env, Selector, SpiffeId, TrustDomain, UnixTime};

const TD: &str = "workload.test";
const FEDERATED_TD: &str = "federated.test";
/// Bound on every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

fn td(name: &str) -> TrustDomain {
    name.parse().expect("trust domain")
}

fn id(s: &str) -> SpiffeId {
    s.parse().expect("spiffe id")
}

fn wall() -> UnixTime {
    SystemEnv::new().expect("env").wall()
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

fn uid_selector(uid: u32) -> BTreeSet<Selector> {
    [Selector::new("unix", &format!("uid:{uid}")).expect("selector")].into()
}

/// A trust domain's keys, published and active now.
struct Authority {
    keyring: NodeKeyring,
    published: PublishedAuthorities,
    rng: ChaCha20Rng,
}

impl Authority {
    fn new(td: &TrustDomain, seed: u64) -> Authority {
        let cfg = KeyringConfig::new(td.clone(), 1);
        let mut a = Authority {
            keyring: NodeKeyring::new(cfg.clone(), cfg),
            published: PublishedAuthorities::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
        };
        let now = wall();
        let mut out = Vec::new();
        a.keyring
            .handle_tick(now, &RingKeySource::new(), &mut a.rng, &mut out)
            .expect("tick");
        let mut i = 0;
        while i < out.len() {
            if let Action::Prepare(auth) = out[i].clone() {
                a.published.publish(auth.clone()).expect("publish");
                a.keyring.handle_published(&auth.id, now, &mut out);
            }
            i += 1;
        }
        assert!(a.keyring.active_x509(now).is_some() && a.keyring.active_jwt(now).is_some());
        a
    }

    fn bundle(&self) -> Bundle {
        self.published.bundle(300)
    }

    fn ca_der(&self) -> Vec<u8> {
        self.keyring
            .active_x509(wall())
            .expect("CA")
            .cert_der()
            .to_vec()
    }

    /// A fresh P-256 key and an X.509-SVID for `spiffe_id`.
    fn x509(&mut self, spiffe_id: &str, hint: &str) -> WorkloadX509 {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("key")
            .as_ref()
            .to_vec();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).expect("pair");
        let spki = p256_spki_der(pair.public_key().as_ref()).expect("spki");
        let spiffe_id = id(spiffe_id);
        let now = wall();
        let svid = self
            .keyring
            .active_x509(now)
            .expect("CA")
            .mint(
                &attest::X509SvidRequest {
                    spiffe_id: &spiffe_id,
                    dns_names: &[],
                    public_key_der: &spki,
                    ttl: Duration::from_secs(3600),
                    not_before_cushion: Duration::from_secs(10),
                },
                now,
                &mut self.rng,
            )
            .expect("mint");
        WorkloadX509 {
            spiffe_id,
            chain: vec![svid.cert_der],
            key_pkcs8: zeroize::Zeroizing::new(pkcs8),
            hint: hint.into(),
        }
    }

    fn jwt(&mut self, spiffe_id: &SpiffeId, audience: &[String]) -> String {
        let now = wall();
        self.keyring
            .active_jwt(now)
            .expect("JWT key")
            .mint(
                &JwtSvidRequest {
                    spiffe_id,
                    audience,
                    ttl: Duration::from_secs(300),
                    issuer: None,
                    with_jti: false,
                },
                now,
                &mut self.rng,
            )
            .expect("mint JWT")
    }
}

/// The fake agent cache: entries (selectors → SVID), our bundle and a federated one.
struct Source {
    td: TrustDomain,
    authority: Mutex<Authority>,
    federated: Mutex<Authority>,
    entries: Mutex<Vec<(BTreeSet<Selector>, WorkloadX509)>>,
    /// Whether the federated bundle is served.
    federate: Mutex<bool>,
    tick: watch::Sender<u64>,
}

impl Source {
    /// Two entries (`/app` with hint "app", `/db` with hint "db") for `uid`.
    fn for_uid(uid: u32) -> Arc<Source> {
        let td = td(TD);
        let mut authority = Authority::new(&td, 1);
        let sel = uid_selector(uid);
        let app = authority.x509(&format!("spiffe://{TD}/app"), "app");
        let db = authority.x509(&format!("spiffe://{TD}/db"), "db");
        Arc::new(Source {
            td,
            authority: Mutex::new(authority),
            federated: Mutex::new(Authority::new(&self::td(FEDERATED_TD), 2)),
            entries: Mutex::new(vec![(sel.clone(), app), (sel, db)]),
            federate: Mutex::new(true),
            tick: watch::channel(0).0,
        })
    }

    /// One entry per `(selector, path)`: `spiffe://<TD>/<path>`, no hint.
    fn with_entries(entries: &[(Selector, &str)]) -> Arc<Source> {
        let td = td(TD);
        let mut authority = Authority::new(&td, 3);
        let entries = entries
            .iter()
            .map(|(sel, path)| {
                (
                    [sel.clone()].into(),
                    authority.x509(&format!("spiffe://{TD}/{path}"), ""),
                )
            })
            .collect();
        Arc::new(Source {
            td,
            authority: Mutex::new(authority),
            federated: Mutex::new(Authority::new(&self::td(FEDERATED_TD), 4)),
            entries: Mutex::new(entries),
            federate: Mutex::new(false),
            tick: watch::channel(0).0,
        })
    }

    fn bump(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    /// A new key and SVID for the first entry.
    fn rotate_first(&self) -> Vec<u8> {
        let fresh = self
            .authority
            .lock()
            .expect("lock")
            .x509(&format!("spiffe://{TD}/app"), "app");
        let leaf = fresh.chain[0].clone();
        self.entries.lock().expect("lock")[0].1 = fresh;
        leaf
    }

    fn leaf(&self, i: usize) -> Vec<u8> {
        self.entries.lock().expect("lock")[i].1.chain[0].clone()
    }
}

impl WorkloadSource for Source {
    fn trust_domain(&self) -> TrustDomain {
        self.td.clone()
    }

    fn x509_svids(&self, selectors: &BTreeSet<Selector>) -> Vec<WorkloadX509> {
        self.entries
            .lock()
            .expect("lock")
            .iter()
            .filter(|(sel, _)| sel.is_subset(selectors))
            .map(|(_, svid)| svid.clone())
            .collect()
    }

    fn bundles(&self) -> (Bundle, Vec<(TrustDomain, Bundle)>) {
        let own = self.authority.lock().expect("lock").bundle();
        let federated = if *self.federate.lock().expect("lock") {
            vec![(
                td(FEDERATED_TD),
                self.federated.lock().expect("lock").bundle(),
            )]
        } else {
            Vec::new()
        };
        (own, federated)
    }

    fn jwt_svids(
        &self,
        selectors: &BTreeSet<Selector>,
        audience: Vec<String>,
        spiffe_id: Option<SpiffeId>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<WorkloadJwt>, Status>> + Send + 'static>> {
        let ids: Vec<(SpiffeId, String)> = self
            .x509_svids(selectors)
            .into_iter()
            .filter(|s| spiffe_id.as_ref().is_none_or(|w| *w == s.spiffe_id))
            .map(|s| (s.spiffe_id, s.hint))
            .collect();
        let mut authority = self.authority.lock().expect("lock");
        let out = ids
            .into_iter()
            .map(|(spiffe_id, hint)| WorkloadJwt {
                token: authority.jwt(&spiffe_id, &audience),
                spiffe_id,
                hint,
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

/// A running Workload API.
struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), node::Error>>,
}

impl Server {
    async fn start(source: Arc<Source>) -> Server {
        Server::start_with(source, UnixAttestConfig::default()).await
    }

    async fn start_with(source: Arc<Source>, cfg: UnixAttestConfig) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = {
            let path = path.clone();
            tokio::spawn(async move {
                serve_workload_api(&path, source, cfg, async {
                    let _ = stopped.await;
                })
                .await
            })
        };
        wait_for_socket(&path).await;
        Server {
            _dir: dir,
            path,
            stop: Some(stop),
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    async fn client(&self) -> WorkloadApiClient {
        timeout(WAIT, WorkloadApiClient::connect_to(self.endpoint()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    async fn raw(&self) -> SpiffeWorkloadApiClient<Channel> {
        raw_client(&self.path).await
    }

    /// Shuts down; the socket file must be gone afterwards.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = timeout(WAIT, &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
        served.expect("served without error");
        assert!(!self.path.exists(), "socket removed on shutdown");
    }
}

async fn wait_for_socket(path: &Path) {
    let ready = timeout(WAIT, async {
        while !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "socket {} appears", path.display());
}

async fn raw_client(path: &Path) -> SpiffeWorkloadApiClient<Channel> {
    timeout(WAIT, try_raw_client(path))
        .await
        .expect("connect in time")
        .expect("connect")
}

async fn try_raw_client(
    path: &Path,
) -> Result<SpiffeWorkloadApiClient<Channel>, tonic::transport::Error> {
    let path = path.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(WAIT)
        .connect_with_connector(connector)
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

/// `message` with the security header.
fn with_header<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        SECURITY_HEADER,
        SECURITY_HEADER_VALUE.parse().expect("metadata value"),
    );
    req
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

fn code<T>(what: &str, r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => panic!("{what}: expected an error status"),
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_client_fetches_svids_bundles_and_validates_jwts() {
    let source = Source::for_uid(my_uid());
    let server = Server::start(source.clone()).await;
    let mode = std::fs::metadata(&server.path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, WORKLOAD_SOCKET_MODE, "socket mode {mode:o}");
    let client = server.client().await;
    let own_td = spiffe::TrustDomain::new(TD).expect("td");
    let fed_td = spiffe::TrustDomain::new(FEDERATED_TD).expect("td");
    let own_ca = source.authority.lock().expect("lock").ca_der();
    let fed_ca = source.federated.lock().expect("lock").ca_der();

    // The default X.509-SVID: the first entry, with its key.
    let svid = bounded("fetch_x509_svid", client.fetch_x509_svid())
        .await
        .expect("x509 svid");
    assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/app"));
    assert_eq!(svid.leaf().as_bytes(), source.leaf(0).as_slice());
    assert_eq!(svid.hint(), Some("app"));
    assert_eq!(
        svid.private_key().as_bytes(),
        source.entries.lock().expect("lock")[0]
            .1
            .key_pkcs8
            .as_slice()
    );
    let all = bounded("fetch_all_x509_svids", client.fetch_all_x509_svids())
        .await
        .expect("all svids");
    let ids: Vec<String> = all.iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(
        ids,
        [format!("spiffe://{TD}/app"), format!("spiffe://{TD}/db")]
    );

    // The X.509 context: SVIDs and bundles, ours and the federated one.
    let ctx = bounded("fetch_x509_context", client.fetch_x509_context())
        .await
        .expect("context");
    assert_eq!(ctx.svids().len(), 2);
    let bundles = ctx.bundle_set();
    let own = bundles.get(&own_td).expect("own bundle");
    assert_eq!(own.authorities().len(), 1);
    assert_eq!(own.authorities()[0].as_bytes(), own_ca.as_slice());
    let fed = bundles.get(&fed_td).expect("federated bundle");
    assert_eq!(fed.authorities()[0].as_bytes(), fed_ca.as_slice());
    let x509_bundles = bounded("fetch_x509_bundles", client.fetch_x509_bundles())
        .await
        .expect("bundles");
    assert_eq!(x509_bundles.len(), 2);
    assert_eq!(
        x509_bundles.get(&own_td).expect("own").authorities()[0].as_bytes(),
        own_ca.as_slice()
    );

    // JWT-SVIDs: the default one, one by ID, both verifiable with the served JWT bundles.
    let jwt = bounded("fetch_jwt_svid", client.fetch_jwt_svid(["svc-a"], None))
        .await
        .expect("jwt svid");
    assert_eq!(jwt.spiffe_id().to_string(), format!("spiffe://{TD}/app"));
    assert_eq!(jwt.audience(), ["svc-a"]);
    let db_id = spiffe::SpiffeId::new(format!("spiffe://{TD}/db")).expect("id");
    let db = bounded(
        "fetch_jwt_svid by id",
        client.fetch_jwt_svid(["svc-a"], Some(&db_id)),
    )
    .await
    .expect("jwt svid by id");
    assert_eq!(db.spiffe_id(), &db_id);
    let jwt_bundles = bounded("fetch_jwt_bundles", client.fetch_jwt_bundles())
        .await
        .expect("jwt bundles");
    assert_eq!(jwt_bundles.len(), 2, "own and federated");
    assert!(jwt_bundles.get(&fed_td).is_some());
    let verified =
        JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["svc-a"]).expect("verifies");
    assert_eq!(verified.spiffe_id(), jwt.spiffe_id());
    JwtSvid::parse_and_validate(db.token(), &jwt_bundles, &["svc-a"]).expect("verifies");

    // ValidateJWTSVID: accepted for its audience, rejected for another.
    let validated = bounded(
        "validate_jwt_token",
        client.validate_jwt_token("svc-a", jwt.token()),
    )
    .await
    .expect("valid");
    assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
    let wrong = bounded(
        "validate_jwt_token wrong audience",
        client.validate_jwt_token("svc-b", jwt.token()),
    )
    .await;
    assert!(wrong.is_err(), "wrong audience accepted");
    // A token of the federated trust domain validates against that domain's bundle.
    let fed_id = id(&format!("spiffe://{FEDERATED_TD}/peer"));
    let fed_token = source
        .federated
        .lock()
        .expect("lock")
        .jwt(&fed_id, &["svc-a".to_owned()]);
    let validated = bounded(
        "validate federated",
        client.validate_jwt_token("svc-a", &fed_token),
    )
    .await
    .expect("federated token valid");
    assert_eq!(validated.spiffe_id().to_string(), fed_id.to_string());

    // The raw answer carries the claims as a protobuf Struct.
    let mut raw = server.raw().await;
    let resp = bounded(
        "raw validate",
        raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "svc-a".into(),
            svid: jwt.token().into(),
        })),
    )
    .await
    .expect("validate")
    .into_inner();
    assert_eq!(resp.spiffe_id, format!("spiffe://{TD}/app"));
    let claims = resp.claims.expect("claims");
    for claim in ["sub", "aud", "exp"] {
        assert!(claims.fields.contains_key(claim), "claim {claim}");
    }
    let garbage = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "svc-a".into(),
            svid: "not.a.jwt".into(),
        }))
        .await;
    assert_eq!(code("garbage token", garbage), Code::InvalidArgument);

    drop(raw);
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_header_is_required_and_wit_is_unimplemented() {
    let source = Source::for_uid(my_uid());
    let server = Server::start(source.clone()).await;
    let mut raw = server.raw().await;

    let r = raw.fetch_x509svid(Request::new(X509svidRequest {})).await;
    assert_eq!(code("FetchX509SVID", r), Code::InvalidArgument);
    let r = raw
        .fetch_x509_bundles(Request::new(X509BundlesRequest {}))
        .await;
    assert_eq!(code("FetchX509Bundles", r), Code::InvalidArgument);
    let r = raw
        .fetch_jwtsvid(Request::new(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await;
    assert_eq!(code("FetchJWTSVID", r), Code::InvalidArgument);
    let r = raw
        .fetch_jwt_bundles(Request::new(JwtBundlesRequest {}))
        .await;
    assert_eq!(code("FetchJWTBundles", r), Code::InvalidArgument);
    let r = raw
        .validate_jwtsvid(Request::new(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x".into(),
        }))
        .await;
    assert_eq!(code("ValidateJWTSVID", r), Code::InvalidArgument);
    // A wrong value is as bad as none.
    let mut req = Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert(SECURITY_HEADER, "yes".parse().expect("value"));
    assert_eq!(
        code("wrong header value", raw.fetch_x509svid(req).await),
        Code::InvalidArgument
    );

    // With the header: missing fields are InvalidArgument, WIT-SVIDs Unimplemented.
    let r = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: Vec::new(),
            spiffe_id: String::new(),
        }))
        .await;
    assert_eq!(code("no audience", r), Code::InvalidArgument);
    let r = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: String::new(),
            svid: "x.y.z".into(),
        }))
        .await;
    assert_eq!(code("validate without audience", r), Code::InvalidArgument);
    let r = raw
        .fetch_witsvid(with_header(WitsvidRequest {
            spiffe_id: String::new(),
        }))
        .await;
    assert_eq!(code("FetchWITSVID", r), Code::Unimplemented);
    let r = raw
        .fetch_wit_bundles(with_header(WitBundlesRequest {}))
        .await;
    assert_eq!(code("FetchWITBundles", r), Code::Unimplemented);

    // And the same connection still works for a proper request.
    let mut stream = bounded("fetch", raw.fetch_x509svid(with_header(X509svidRequest {})))
        .await
        .expect("stream")
        .into_inner();
    let first = bounded("first message", stream.next())
        .await
        .expect("item")
        .expect("message");
    assert_eq!(first.svids.len(), 2);
    drop(stream);
    drop(raw);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_identity_is_permission_denied() {
    // Entries exist, but for another uid.
    let source = Source::for_uid(my_uid().wrapping_add(1));
    let server = Server::start(source.clone()).await;
    let client = server.client().await;

    let r = bounded("fetch_x509_svid", client.fetch_x509_svid()).await;
    assert!(
        matches!(r, Err(WorkloadApiError::NoIdentityIssued)),
        "{:?}",
        r.map(|s| s.spiffe_id().to_string())
    );
    let r = bounded("fetch_jwt_svid", client.fetch_jwt_svid(["a"], None)).await;
    assert!(
        matches!(r, Err(WorkloadApiError::NoIdentityIssued)),
        "{r:?}"
    );

    let mut raw = server.raw().await;
    for (what, status) in [
        (
            "FetchX509SVID",
            raw.fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .err(),
        ),
        (
            "FetchX509Bundles",
            raw.fetch_x509_bundles(with_header(X509BundlesRequest {}))
                .await
                .err(),
        ),
        (
            "FetchJWTBundles",
            raw.fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
                .await
                .err(),
        ),
        (
            "FetchJWTSVID",
            raw.fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            }))
            .await
            .err(),
        ),
    ] {
        let status = status.unwrap_or_else(|| panic!("{what}: expected PermissionDenied"));
        assert_eq!(status.code(), Code::PermissionDenied, "{what}");
        assert_eq!(status.message(), "no identity issued", "{what}");
    }

    // Validation needs no identity: a valid token still validates.
    let token = {
        let mut a = source.authority.lock().expect("lock");
        a.jwt(&id(&format!("spiffe://{TD}/app")), &["a".to_owned()])
    };
    let resp = bounded(
        "validate",
        raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: token,
        })),
    )
    .await
    .expect("valid")
    .into_inner();
    assert_eq!(resp.spiffe_id, format!("spiffe://{TD}/app"));

    // Asking the right uid's source for an ID it is not entitled to is also refused.
    drop(raw);
    drop(client);
    server.shutdown().await;
    let source = Source::for_uid(my_uid());
    let server = Server::start(source).await;
    let mut raw = server.raw().await;
    let r = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: format!("spiffe://{TD}/someone-else"),
        }))
        .await;
    assert_eq!(code("foreign spiffe_id", r), Code::PermissionDenied);
    drop(raw);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_cannot_be_attested_is_permission_denied() {
    // /proc as the attestor sees it lacks the caller's process.
    let empty = tempfile::tempdir().expect("tempdir");
    let cfg = UnixAttestConfig {
        proc_root: empty.path().to_path_buf(),
        ..UnixAttestConfig::default()
    };
    let server = Server::start_with(Source::for_uid(my_uid()), cfg).await;
    let mut raw = server.raw().await;
    let status = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().starts_with("cannot attest the caller"),
        "{}",
        status.message()
    );
    let status = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        }))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    drop(raw);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_pushes_a_new_full_state_message() {
    let source = Source::for_uid(my_uid());
    let server = Server::start(source.clone()).await;
    let client = server.client().await;
    let mut contexts = bounded("stream_x509_contexts", client.stream_x509_contexts())
        .await
        .expect("stream");
    let first = bounded("first context", contexts.next())
        .await
        .expect("item")
        .expect("context");
    assert_eq!(first.svids().len(), 2);
    assert_eq!(
        first.svids()[0].leaf().as_bytes(),
        source.leaf(0).as_slice()
    );

    // A tick without a change sends nothing.
    source.bump();
    let quiet = timeout(Duration::from_millis(300), contexts.next()).await;
    assert!(quiet.is_err(), "an unchanged state is not resent");

    // Rotation of one SVID: the next message holds the new one and still both.
    let new_leaf = source.rotate_first();
    source.bump();
    let second = bounded("second context", contexts.next())
        .await
        .expect("item")
        .expect("context");
    assert_eq!(second.svids().len(), 2, "full state, not a delta");
    assert_eq!(second.svids()[0].leaf().as_bytes(), new_leaf.as_slice());
    assert_eq!(
        second.svids()[1].leaf().as_bytes(),
        source.leaf(1).as_slice()
    );
    let fed_td = spiffe::TrustDomain::new(FEDERATED_TD).expect("td");
    assert!(second.bundle_set().get(&fed_td).is_some());

    // Federation ends: the next message has no federated bundle.
    *source.federate.lock().expect("lock") = false;
    source.bump();
    let third = bounded("third context", contexts.next())
        .await
        .expect("item")
        .expect("context");
    assert!(third.bundle_set().get(&fed_td).is_none());

    // The JWT bundle stream follows changes too.
    let mut jwt_bundles = bounded("stream_jwt_bundles", client.stream_jwt_bundles())
        .await
        .expect("stream");
    let b = bounded("jwt bundles", jwt_bundles.next())
        .await
        .expect("item")
        .expect("bundles");
    assert_eq!(b.len(), 1);
    *source.federate.lock().expect("lock") = true;
    source.bump();
    let b = bounded("jwt bundles again", jwt_bundles.next())
        .await
        .expect("item")
        .expect("bundles");
    assert_eq!(b.len(), 2);

    // The X.509 stream saw that change too.
    let fourth = bounded("fourth context", contexts.next())
        .await
        .expect("item")
        .expect("context");
    assert!(fourth.bundle_set().get(&fed_td).is_some());

    // The identities go away: the X.509 stream ends with PermissionDenied.
    source.entries.lock().expect("lock").clear();
    source.bump();
    let end = bounded("end of stream", contexts.next())
        .await
        .expect("item");
    assert!(
        matches!(end, Err(WorkloadApiError::NoIdentityIssued)),
        "{:?}",
        end.err()
    );

    drop(contexts);
    drop(jwt_bundles);
    drop(client);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_replaces_a_stale_one_and_shutdown_ends_open_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("agent.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    // A stale socket file from a crashed agent.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let source = Source::for_uid(my_uid());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = {
        let path = path.clone();
        let source: Arc<dyn WorkloadSource> = source.clone();
        tokio::spawn(async move {
            serve_workload_api(&path, source, UnixAttestConfig::default(), async {
                let _ = stopped.await;
            })
            .await
        })
    };
    // The stale file is replaced by a live socket.
    let mut raw = bounded("connect", async {
        loop {
            if let Ok(Ok(c)) = timeout(Duration::from_secs(1), try_raw_client(&path)).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut stream = bounded("fetch", raw.fetch_x509svid(with_header(X509svidRequest {})))
        .await
        .expect("stream")
        .into_inner();
    bounded("first", stream.next())
        .await
        .expect("item")
        .expect("message");

    // Shutdown with a stream open: the stream ends, the server returns, the socket is gone.
    let _ = stop.send(());
    let end = bounded("stream end", stream.next()).await;
    match end {
        None => {}
        Some(Err(s)) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        Some(Ok(_)) => panic!("no message after shutdown"),
    }
    bounded("server stop", task)
        .await
        .expect("task")
        .expect("served");
    assert!(!path.exists(), "socket removed");

    // Something that is not a socket is never replaced.
    std::fs::write(&path, b"precious").expect("file");
    let r = serve_workload_api(
        &path,
        source,
        UnixAttestConfig::default(),
        std::future::pending(),
    );
    let err = bounded("refusal", r).await.expect_err("refused");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).expect("file"), b"precious");
}

/// The real executable of `python3` (what `/proc/<pid>/exe` shows for it), or `None` without one.
fn python_exe() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && path.is_file()).then_some(path)
}

fn path_selector(path: &Path) -> Selector {
    Selector::new("unix", &format!("path:{}", path.display())).expect("selector")
}

/// A running `exec_attacker.py`, its output lines as they come.
struct Attacker {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Attacker {
    fn start(python: &Path, args: &[&Path]) -> Attacker {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exec_attacker.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start exec_attacker.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Attacker { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until every line of `want` was printed (in any order).
    async fn expect(&mut self, want: &[&str]) {
        let mut missing: Vec<&str> = want.to_vec();
        while !missing.is_empty() {
            let line = bounded("attacker output", self.lines.recv())
                .await
                .expect("the attacker exited early");
            missing.retain(|w| *w != line);
        }
    }

    fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the attacker");
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_spiffe_id(msg: &wire::workload::X509svidResponse) -> &str {
    msg.svids.first().map_or("", |s| s.spiffe_id.as_str())
}

/// Asserts an exec-after-connect refusal: `PermissionDenied` saying so.
fn assert_exec_refusal(what: &str, status: &Status) {
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains("exec after connect"),
        "{what}: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_execs_after_connecting_never_gets_the_new_programs_entry() {
    let Some(python) = python_exe() else {
        eprintln!("skipped: no python3 on PATH (scripts/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // The "trusted" program: a copy of the interpreter at a path of its own (another file,
    // so another `unix:path` and another inode).
    let trusted = dir.path().join("trusted-python");
    std::fs::copy(&python, &trusted).expect("copy python3");
    let trusted = trusted.canonicalize().expect("canonical");
    let source = Source::with_entries(&[
        (path_selector(&python), "untrusted"),
        (path_selector(&trusted), "trusted"),
    ]);
    let server = Server::start(source.clone()).await;
    let untrusted_id = format!("spiffe://{TD}/untrusted");
    let trusted_id = format!("spiffe://{TD}/trusted");

    // Control: the trusted program connecting by itself gets its entry.
    let relay = dir.path().join("relay-control.sock");
    let mut honest = Attacker::start(&trusted, &[Path::new("direct"), &server.path, &relay]);
    honest.expect(&["ready"]).await;
    let mut raw = raw_client(&relay).await;
    let got = bounded(
        "control",
        raw.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect("the trusted program is served")
    .into_inner();
    let first = bounded("control message", got.take(1).collect::<Vec<_>>()).await;
    let first = first[0].as_ref().expect("message");
    assert_eq!(first_spiffe_id(first), trusted_id);
    drop(raw);
    drop(honest);

    // 1. Connect as python3, then exec the trusted program, which asks on that connection.
    let relay = dir.path().join("relay-exec.sock");
    let mut attacker = Attacker::start(
        &python,
        &[Path::new("exec"), &server.path, &relay, &trusted],
    );
    attacker.expect(&["connected", "ready"]).await;
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", attacker.pid())).expect("exe"),
        trusted,
        "the attacker runs the trusted program now"
    );
    let mut raw = raw_client(&relay).await;
    let status = bounded(
        "exec: x509",
        raw.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect_err("refused after exec");
    assert_exec_refusal("FetchX509SVID after exec", &status);
    let status = bounded(
        "exec: jwt",
        raw.fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })),
    )
    .await
    .expect_err("refused after exec");
    assert_exec_refusal("FetchJWTSVID after exec", &status);
    drop(raw);
    drop(attacker);

    // 2. Connect as python3 and fork: the child (still python3) keeps the connection and asks;
    //    the parent, whose pid the agent saw, execs the trusted program.
    let relay = dir.path().join("relay-fork.sock");
    let mut attacker = Attacker::start(
        &python,
        &[Path::new("fork"), &server.path, &relay, &trusted],
    );
    attacker.expect(&["connected", "ready"]).await;
    let mut raw = raw_client(&relay).await;
    // Before the exec: the connecting process is python3, and is served as such.
    let mut stream = bounded(
        "fork: x509",
        raw.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect("python3 is served before the exec")
    .into_inner();
    let first = bounded("fork: first", stream.next())
        .await
        .expect("item")
        .expect("message");
    assert_eq!(first_spiffe_id(&first), untrusted_id);
    attacker.say("go");
    let pid = attacker.pid();
    let execed = bounded("the parent's exec", async {
        while std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&trusted) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    execed.await;
    // After it: a new call on the connection is refused, never served as the trusted program.
    let status = bounded(
        "fork: x509 again",
        raw.fetch_x509svid(with_header(X509svidRequest {})),
    )
    .await
    .expect_err("refused after exec");
    assert_exec_refusal("FetchX509SVID after the parent's exec", &status);
    let status = bounded(
        "fork: bundles",
        raw.fetch_x509_bundles(with_header(X509BundlesRequest {})),
    )
    .await
    .expect_err("refused after exec");
    assert_exec_refusal("FetchX509Bundles after the parent's exec", &status);
    // The stream opened before the exec sends no update (a rotated key) after it.
    source.rotate_first();
    source.bump();
    let end = bounded("fork: stream update", stream.next())
        .await
        .expect("item")
        .expect_err("the stream ends refused");
    assert_exec_refusal("stream update after the parent's exec", &end);
    drop(stream);
    drop(raw);
    drop(attacker);
    server.shutdown().await;
}

/// True if the server accepted `conn`: it sends its HTTP/2 SETTINGS (refused ones are closed).
async fn accepted(conn: &mut tokio::net::UnixStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        bounded("first bytes", conn.read(&mut byte)).await,
        Ok(n) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_per_uid() {
    let limit = 3;
    let cfg = UnixAttestConfig {
        connections_per_uid_max: limit,
        ..UnixAttestConfig::default()
    };
    let server = Server::start_with(Source::for_uid(my_uid()), cfg).await;
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut conn = tokio::net::UnixStream::connect(&server.path)
            .await
            .expect("connect");
        assert!(accepted(&mut conn).await, "within the limit");
        held.push(conn);
    }
    // One more from the same uid is closed at once, and a client cannot get through.
    let mut extra = tokio::net::UnixStream::connect(&server.path)
        .await
        .expect("connect");
    assert!(!accepted(&mut extra).await, "past the limit");
    let r = timeout(Duration::from_secs(3), try_raw_client(&server.path)).await;
    let refused = match r {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok(mut raw)) => raw
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .is_err(),
    };
    assert!(refused, "a client past the limit is not served");
    // Closing one frees its slot: the next connection is served.
    drop(held.pop());
    let mut raw = bounded("a freed slot", async {
        loop {
            let mut probe = tokio::net::UnixStream::connect(&server.path)
                .await
                .expect("connect");
            if accepted(&mut probe).await {
                drop(probe);
                // The probe's slot is given back as well; the client takes it.
                if let Ok(Ok(mut raw)) =
                    timeout(Duration::from_secs(3), try_raw_client(&server.path)).await
                {
                    if raw
                        .fetch_x509svid(with_header(X509svidRequest {}))
                        .await
                        .is_ok()
                    {
                        break raw;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    raw.fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("served within the limit");
    drop(raw);
    drop(held);
    server.shutdown().await;
}
