//! Unit tests of the Workload API.

use std::pin::Pin;
use std::sync::Mutex;

use wire::{JwtAuthority, PublicJwk, SpiffeId, X509Authority};

use super::conn::UidLimits;
use super::jwt::{json_to_pb, jwt_bundles_message};
use super::x509::{x509_bundles_message, x509_svid_message};
use super::*;

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
    ) -> Pin<Box<dyn Future<Output = Result<Vec<WorkloadJwt>, Status>> + Send + 'static>> {
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
    let pin =
        ProcessPin::take(cred, unix_attest::exe_path(cred, &cfg).as_deref(), &cfg).expect("pin");
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
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
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
