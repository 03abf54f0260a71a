//! The admin API and CLI end to end: a single-node Replica serves the admin API on a Unix socket
//! in a tempdir, and the real `sigil` binary drives it with `--admin-socket`.
#![allow(clippy::disallowed_methods)] // tests run their own runtime and wait on wall-clock deadlines

#[path = "common/admin_node.rs"]
mod admin_node;
mod common;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_node::{AdminNode, Alone};
use base64::Engine;
use common::{run_bounded, wait_for, SIGIL};
use node::rt::admin::{self, AdminDefaults, AdminService};
use node::rt::SystemEnv;
use raft::replica::Replica;
use serde_json::Value;
use wire::admin as pb;
use wire::{
    Authority, AuthorityKey, Command, Env, JwtAuthority, Outcome, PublicJwk, ServerRecord,
    TokenPurpose, UnixTime, X509Authority,
};

const TD: &str = "example.org";
/// Every CLI run and every wait is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    rt: tokio::runtime::Runtime,
    replica: Arc<Replica<Alone>>,
    env: Arc<SystemEnv>,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Starts node 1 with `members` (only node 1 ever answers) and serves its admin API.
fn start_with(members: &[u64], write_timeout_ms: u64) -> Node {
    start_full(members, write_timeout_ms, None)
}

/// [`start_with`], with the admin service told this node's QUIC address (`seed`) if given.
fn start_full(members: &[u64], write_timeout_ms: u64, seed: Option<&str>) -> Node {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run").join("admin.sock");
    let started = rt.block_on(AdminNode::start(
        socket.clone(),
        TD,
        members,
        write_timeout_ms,
        seed,
        DEADLINE,
    ));
    Node {
        rt,
        replica: started.replica,
        env: started.env,
        socket,
        stop: started.stop,
        _dir: dir,
    }
}

fn start() -> Node {
    start_with(&[1], 5_000)
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let replica = self.replica.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), replica.shutdown()).await;
        });
    }
}

/// Runs `sigil` with `args`, killing it past the deadline.
fn run(args: &[&str]) -> Output {
    run_bounded(
        Process::new(SIGIL)
            .args(args)
            .env_remove("SIGIL_ADMIN_SOCKET")
            .env("RUST_LOG", "warn"),
        DEADLINE,
    )
}

impl Node {
    fn sigil(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let socket = self.socket.to_str().expect("utf-8 path");
        all.extend(["--admin-socket", socket]);
        run(&all)
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.sigil(args);
        assert!(
            out.status.success(),
            "sigil {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Runs a command that must fail with exit 1 and one `error:` line; returns that line.
    fn fails(&self, args: &[&str]) -> String {
        one_line_error(&self.sigil(args), args)
    }

    fn write(&self, cmd: Command) -> Outcome {
        self.rt
            .block_on(self.replica.write(cmd))
            .expect("committed")
            .expect("applied")
    }

    fn now(&self) -> UnixTime {
        self.env.wall()
    }

    /// The pinnable hash of this node's applied bundle, computed here.
    fn bundle_sha256(&self) -> String {
        self.replica
            .read(|a| attest::bundle::bundle_sha256(&a.state.bundle(0)))
    }

    fn register_server(&self, node_id: u64, addr: &str) {
        let server = ServerRecord {
            node_id,
            addr: addr.to_owned(),
        };
        assert_eq!(
            self.write(Command::RegisterServer {
                server: server.clone()
            }),
            Outcome::Server(server)
        );
    }

    fn servers(&self) -> Vec<u64> {
        self.replica
            .read(|a| a.state.servers().keys().copied().collect())
    }
}

fn one_line_error(out: &Output, args: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(1), "sigil {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    lines[0].to_owned()
}

fn create(node: &Node, spiffe: &str, parent: &str, selectors: &[&str]) -> Value {
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        spiffe,
        "--parent-id",
        parent,
        "--json",
    ];
    for s in selectors {
        args.extend(["--selector", s]);
    }
    node.json(&args)
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["entries"]
        .as_array()
        .expect("entries array")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const AGENT_A: &str = "spiffe://example.org/sigil/agent/join_token/a";
const AGENT_B: &str = "spiffe://example.org/sigil/agent/join_token/b";

#[test]
fn entry_create_list_show_update_delete() {
    let node = start();
    let web = create(
        &node,
        "spiffe://example.org/web",
        AGENT_A,
        &["unix:uid:1000", "unix:gid:1000"],
    );
    let db = create(
        &node,
        "spiffe://example.org/db",
        AGENT_A,
        &["unix:uid:1001"],
    );
    let web_b = create(
        &node,
        "spiffe://example.org/web",
        AGENT_B,
        &["unix:uid:1000"],
    );
    let id = |v: &Value| v["id"].as_str().expect("id").to_owned();
    let (web_id, db_id, web_b_id) = (id(&web), id(&db), id(&web_b));
    assert_eq!(web_id.len(), 32, "128 random bits, hex");
    assert_eq!(web["revision"], 0);
    assert_eq!(
        web["selectors"],
        serde_json::json!(["unix:gid:1000", "unix:uid:1000"])
    );
    // The same entry again is refused.
    let dup = node.fails(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/db",
        "--parent-id",
        AGENT_A,
        "--selector",
        "unix:uid:1001",
    ]);
    assert!(dup.contains("already exists"), "{dup}");

    // List: everything, then each filter, then small pages.
    let all = node.json(&["entry", "list", "--json"]);
    assert_eq!(
        ids(&all),
        sorted(vec![web_id.clone(), db_id.clone(), web_b_id.clone()])
    );
    let under_a = node.json(&["entry", "list", "--parent-id", AGENT_A, "--json"]);
    assert_eq!(ids(&under_a), sorted(vec![web_id.clone(), db_id.clone()]));
    let uid_1000 = node.json(&["entry", "list", "--selector", "unix:uid:1000", "--json"]);
    assert_eq!(
        ids(&uid_1000),
        sorted(vec![web_id.clone(), web_b_id.clone()])
    );
    let both = node.json(&[
        "entry",
        "list",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:gid:1000",
        "--json",
    ]);
    assert_eq!(ids(&both), vec![web_id.clone()]);
    let web_ids = node.json(&[
        "entry",
        "list",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--json",
    ]);
    assert_eq!(
        ids(&web_ids),
        sorted(vec![web_id.clone(), web_b_id.clone()])
    );
    let a_web = node.json(&[
        "entry",
        "list",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        AGENT_A,
        "--json",
    ]);
    assert_eq!(ids(&a_web), vec![web_id.clone()]);
    let paged = node.json(&["entry", "list", "--page-size", "1", "--json"]);
    assert_eq!(ids(&paged), ids(&all), "paging returns every entry once");
    let none = node.json(&["entry", "list", "--selector", "k8s:ns:x", "--json"]);
    assert_eq!(ids(&none), Vec::<String>::new());
    let text = node.ok(&["entry", "list", "--parent-id", AGENT_B]);
    assert!(text.starts_with("Found 1 entries"), "{text}");
    assert!(
        text.contains(&format!("Entry ID         : {web_b_id}")),
        "{text}"
    );

    // Show.
    let shown = node.json(&["entry", "show", "--entry-id", &web_id, "--json"]);
    assert_eq!(shown, web);
    let text = node.ok(&["entry", "show", "--entry-id", &web_id]);
    assert!(
        text.contains("SPIFFE ID        : spiffe://example.org/web"),
        "{text}"
    );
    assert!(text.contains("Selector         : unix:uid:1000"), "{text}");

    // Update: the revision goes up and the fields change.
    let updated = node.json(&[
        "entry",
        "update",
        "--entry-id",
        &web_id,
        "--x509-ttl",
        "2h",
        "--jwt-ttl",
        "5m",
        "--dns",
        "web.example.org",
        "--federates-with",
        "partner.example",
        "--hint",
        "external",
        "--admin",
        "--json",
    ]);
    assert_eq!(updated["revision"], 1);
    assert_eq!(updated["x509_svid_ttl_secs"], 7200);
    assert_eq!(updated["jwt_svid_ttl_secs"], 300);
    assert_eq!(updated["dns_names"], serde_json::json!(["web.example.org"]));
    assert_eq!(
        updated["federates_with"],
        serde_json::json!(["partner.example"])
    );
    assert_eq!(updated["hint"], "external");
    assert_eq!(updated["admin"], true);
    assert_eq!(updated["created_at_secs"], web["created_at_secs"]);
    assert_eq!(
        node.json(&["entry", "show", "--entry-id", &web_id, "--json"]),
        updated
    );
    let again = node.json(&[
        "entry",
        "update",
        "--entry-id",
        &web_id,
        "--selector",
        "unix:uid:2000",
        "--admin",
        "false",
        "--clear-dns",
        "--json",
    ]);
    assert_eq!(again["revision"], 2);
    assert_eq!(again["selectors"], serde_json::json!(["unix:uid:2000"]));
    assert_eq!(again["admin"], false);
    assert_eq!(again["dns_names"], serde_json::json!([]));
    // A stale expected revision is refused and changes nothing.
    let stale = node.fails(&[
        "entry",
        "update",
        "--entry-id",
        &web_id,
        "--hint",
        "x",
        "--revision",
        "0",
    ]);
    assert!(stale.contains("revision mismatch"), "{stale}");
    assert_eq!(
        node.json(&["entry", "show", "--entry-id", &web_id, "--json"])["revision"],
        2
    );

    // Delete.
    let text = node.ok(&[
        "entry",
        "delete",
        "--entry-id",
        &web_id,
        "--entry-id",
        &db_id,
    ]);
    assert!(text.contains("Deleted 2 entries"), "{text}");
    let gone = node.fails(&["entry", "show", "--entry-id", &web_id]);
    assert!(gone.contains("not found"), "{gone}");
    let missing = node.fails(&["entry", "delete", "--entry-id", &db_id]);
    assert!(missing.contains("not found"), "{missing}");
    assert_eq!(
        ids(&node.json(&["entry", "list", "--json"])),
        vec![web_b_id]
    );
}

#[test]
fn invalid_input_fails_with_one_clear_line() {
    let node = start();
    let base = |spiffe: &'static str, parent: &'static str, selector: &'static str| {
        vec![
            "entry",
            "create",
            "--spiffe-id",
            spiffe,
            "--parent-id",
            parent,
            "--selector",
            selector,
        ]
    };
    let err = node.fails(&base("spiffe://example.org/w", AGENT_A, "nocolon"));
    assert!(err.contains("invalid selector"), "{err}");
    let err = node.fails(&base("spiffe://example.org/w", AGENT_A, "Unix:uid:1"));
    assert!(err.contains("invalid selector"), "{err}");
    let err = node.fails(&base("http://example.org/w", AGENT_A, "unix:uid:1"));
    assert!(
        err.contains("--spiffe-id") && err.contains("invalid SPIFFE ID"),
        "{err}"
    );
    let err = node.fails(&base(
        "spiffe://example.org/w",
        "spiffe://Bad/x",
        "unix:uid:1",
    ));
    assert!(err.contains("--parent-id"), "{err}");
    // Checked by the server: the trust domain, reserved paths, entry rules.
    let err = node.fails(&base("spiffe://other.org/w", AGENT_A, "unix:uid:1"));
    assert!(
        err.contains("not in this server's trust domain example.org"),
        "{err}"
    );
    let err = node.fails(&base(
        "spiffe://example.org/w",
        "spiffe://other.org/agent",
        "unix:uid:1",
    ));
    assert!(err.contains("parent_id"), "{err}");
    let err = node.fails(&base(
        "spiffe://example.org/sigil/server/9",
        AGENT_A,
        "unix:uid:1",
    ));
    assert!(err.contains("reserved"), "{err}");
    let mut with_dns = base("spiffe://example.org/w", AGENT_A, "unix:uid:1");
    with_dns.extend(["--dns", "bad_name"]);
    let err = node.fails(&with_dns);
    assert!(err.contains("DNS name"), "{err}");
    let mut with_ttl = base("spiffe://example.org/w", AGENT_A, "unix:uid:1");
    with_ttl.extend(["--x509-ttl", "1x"]);
    let err = node.fails(&with_ttl);
    assert!(
        err.contains("--x509-ttl") && err.contains("invalid duration"),
        "{err}"
    );
    let err = node.fails(&["entry", "show", "--entry-id", "no/such"]);
    assert!(err.contains("entry id"), "{err}");
    let err = node.fails(&["entry", "update", "--entry-id", "missing"]);
    assert!(err.contains("not found"), "{err}");
    let err = node.fails(&["token", "generate", "--spiffe-id", "spiffe://other.org/x"]);
    assert!(err.contains("trust domain"), "{err}");
    // Nothing was created.
    assert_eq!(node.replica.read(|a| a.state.entries().count()), 0);
}

#[test]
fn server_checks_requests_sent_directly() {
    let node = start();
    node.rt.block_on(async {
        let mut client = admin::connect(&node.socket).await.expect("connect");
        let too_big = client
            .list_entries(pb::ListEntriesRequest {
                page_size: pb::PAGE_SIZE_MAX + 1,
                ..Default::default()
            })
            .await
            .map(|_| ());
        assert_eq!(
            too_big.map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
        let bad_token = client
            .list_entries(pb::ListEntriesRequest {
                page_token: "../x".into(),
                ..Default::default()
            })
            .await
            .map(|_| ());
        assert_eq!(
            bad_token.map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
        let empty = client
            .create_entries(pb::CreateEntriesRequest { entries: vec![] })
            .await;
        assert_eq!(code(empty), Some(tonic::Code::InvalidArgument));
        let no_entry = client
            .update_entry(pb::UpdateEntryRequest {
                entry: None,
                expected_revision: None,
            })
            .await;
        assert_eq!(code(no_entry), Some(tonic::Code::InvalidArgument));
        // A batch: each entry succeeds or fails on its own, in order.
        let good = pb::Entry {
            spiffe_id: "spiffe://example.org/a".into(),
            parent_id: AGENT_A.into(),
            selectors: vec!["unix:uid:1".into()],
            ..Default::default()
        };
        let bad = pb::Entry {
            selectors: vec!["nope".into()],
            ..good.clone()
        };
        let named = pb::Entry {
            id: "my-entry".into(),
            spiffe_id: "spiffe://example.org/b".into(),
            ..good.clone()
        };
        let results = client
            .create_entries(pb::CreateEntriesRequest {
                entries: vec![good.clone(), bad, named, good],
            })
            .await
            .expect("batch")
            .into_inner()
            .results;
        let kinds: Vec<Result<String, i32>> = results
            .into_iter()
            .map(|r| match r.result.expect("result") {
                pb::entry_result::Result::Entry(e) => Ok(e.id),
                pb::entry_result::Result::Error(e) => Err(e.code),
            })
            .collect();
        assert!(kinds[0].is_ok(), "{kinds:?}");
        assert_eq!(kinds[1], Err(tonic::Code::InvalidArgument as i32));
        assert_eq!(kinds[2], Ok("my-entry".to_owned()));
        assert_eq!(kinds[3], Err(tonic::Code::AlreadyExists as i32));
        let health = client
            .health(pb::HealthRequest {})
            .await
            .expect("health")
            .into_inner();
        assert!(health.serving);
        assert_eq!(health.leader_id, Some(1));
    });
}

#[test]
fn token_generate_returns_the_token_once_and_stores_only_its_hash() {
    let node = start();
    let before = node.now().as_secs();
    let text = node.ok(&[
        "token",
        "generate",
        "--ttl",
        "10m",
        "--spiffe-id",
        "spiffe://example.org/host/a",
    ]);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("Token: "))
        .expect("Token: line")
        .to_owned();
    assert_eq!(token.len(), 64, "{text}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{token}"
    );
    let hash = admin::join_token_sha256(&token);
    let agent_id = format!("spiffe://example.org/sigil/agent/join_token/{hash}");
    assert!(
        text.contains(&format!("Agent SPIFFE ID: {agent_id}")),
        "{text}"
    );
    node.replica.read(|a| {
        let stored = a.state.join_token(&hash).expect("hash stored");
        assert_eq!(stored.consumed_by, None);
        let expires = stored.expires_at.as_secs();
        assert!(
            expires >= before + 600 && expires <= before + 600 + 60,
            "{expires}"
        );
        assert!(a.state.join_token(&token).is_none());
        let dump = format!("{:?}", a.state);
        assert!(dump.contains(&hash));
        assert!(
            !dump.contains(&token),
            "the token itself is never replicated"
        );
        // The extra ID is an entry for the agent.
        let alias: Vec<_> = a
            .state
            .entries()
            .filter(|e| e.spiffe_id.as_str() == "spiffe://example.org/host/a")
            .collect();
        assert_eq!(alias.len(), 1);
        assert_eq!(
            alias[0].parent_id.as_str(),
            "spiffe://example.org/sigil/server"
        );
        assert_eq!(
            alias[0]
                .selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![format!("spiffe_id:{agent_id}")]
        );
    });
    // Another token is different; JSON output works; a zero TTL is refused.
    let second = node.json(&["token", "generate", "--json"]);
    let second_token = second["token"].as_str().expect("token");
    assert_eq!(second_token.len(), 64);
    assert_ne!(second_token, token);
    let err = node.fails(&["token", "generate", "--ttl", "0s"]);
    assert!(err.contains("--ttl"), "{err}");
    let err = node.fails(&["token", "generate", "--ttl", "400d"]);
    assert!(err.contains("at most"), "{err}");
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<tonic::Code> {
    r.err().map(|s| s.code())
}

fn ec_key(n: u8) -> PublicJwk {
    PublicJwk::Ec {
        crv: "P-256".into(),
        x: vec![n; 32],
        y: vec![n + 1; 32],
    }
}

/// Publishes and activates a fake X.509 CA and JWT key for node 1; returns the CA's DER.
fn publish_fake_authorities(node: &Node) -> (Vec<u8>, u64) {
    let now = node.now();
    let not_after = now.saturating_add(Duration::from_secs(3600));
    let der: Vec<u8> = (0..200u8).collect();
    for authority in [
        Authority {
            id: "x509-n1-a".into(),
            node_id: 1,
            key: AuthorityKey::X509(X509Authority {
                cert_der: der.clone(),
                key: ec_key(1),
            }),
            not_after,
        },
        Authority {
            id: "jwt-n1-a".into(),
            node_id: 1,
            key: AuthorityKey::Jwt(JwtAuthority {
                kid: "jwt-n1-a".into(),
                key: ec_key(3),
            }),
            not_after,
        },
    ] {
        let id = authority.id.clone();
        node.write(Command::PublishAuthority { authority, at: now });
        node.write(Command::ActivateAuthority { id });
    }
    (der, not_after.as_secs())
}

#[test]
fn bundle_show_in_pem_and_spiffe_formats() {
    let node = start();
    let empty = node.ok(&["bundle", "show"]);
    assert_eq!(empty, "", "no authorities yet");
    let (der, _) = publish_fake_authorities(&node);

    let pem = node.ok(&["bundle", "show", "--format", "pem"]);
    assert_eq!(node.ok(&["bundle", "show"]), pem, "pem is the default");
    let lines: Vec<&str> = pem.lines().collect();
    assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
    assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
    let body: String = lines[1..lines.len() - 1].concat();
    assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64");
    assert_eq!(decoded, der);

    let doc = node.json(&["bundle", "show", "--format", "spiffe"]);
    let parsed = wire::Bundle::from_json(doc.to_string().as_bytes()).expect("SPIFFE bundle");
    assert_eq!(parsed.x509_authorities.len(), 1);
    assert_eq!(parsed.x509_authorities[0].cert_der, der);
    assert_eq!(parsed.jwt_authorities.len(), 1);
    assert_eq!(parsed.jwt_authorities[0].kid, "jwt-n1-a");
    assert_eq!(doc["spiffe_sequence"], 2);

    let wrapped = node.json(&["bundle", "show", "--json"]);
    assert_eq!(wrapped["trust_domain"], TD);
    assert_eq!(wrapped["sequence"], 2);
    assert_eq!(wrapped["bundle"], doc);
    let err = node.sigil(&["bundle", "show", "--format", "der"]);
    assert_eq!(err.status.code(), Some(2));
}

#[test]
fn cluster_status_and_healthcheck() {
    let node = start();
    let (_, not_after) = publish_fake_authorities(&node);
    let s = node.json(&["cluster", "status", "--json"]);
    assert_eq!(s["trust_domain"], TD);
    assert_eq!(s["node_id"], 1);
    assert_eq!(s["node_state"], "Leader");
    assert_eq!(s["leader_id"], 1);
    assert!(s["term"].as_u64().expect("term") >= 1);
    assert!(s["applied_index"].as_u64().expect("applied") >= 5);
    assert_eq!(s["bundle_sequence"], 2);
    let members = s["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["node_id"], 1);
    assert_eq!(members[0]["address"], "127.0.0.1:7001");
    assert_eq!(members[0]["leader"], true);
    assert_eq!(members[0]["voter"], true);
    assert_eq!(members[0]["x509_authority"]["id"], "x509-n1-a");
    assert_eq!(members[0]["x509_authority"]["not_after_secs"], not_after);
    assert_eq!(members[0]["jwt_authority"]["id"], "jwt-n1-a");

    let text = node.ok(&["cluster", "status"]);
    assert!(text.contains("Leader         : 1"), "{text}");
    assert!(text.contains("node 1 (leader) at 127.0.0.1:7001"), "{text}");
    assert!(text.contains("X.509 CA : x509-n1-a (until "), "{text}");

    let health = node.ok(&["healthcheck"]);
    assert!(health.contains("healthy"), "{health}");
    assert_eq!(node.ok(&["healthcheck", "--quiet"]), "");
}

#[test]
fn admin_socket_is_owner_only_and_env_var_works() {
    let node = start();
    let meta = std::fs::symlink_metadata(&node.socket).expect("socket");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing else was left in the socket's directory.
    let dir = node.socket.parent().expect("dir");
    assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 1);

    let out = Process::new(SIGIL)
        .args(["healthcheck"])
        .env("SIGIL_ADMIN_SOCKET", &node.socket)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_socket_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let path_text = path.to_str().expect("utf-8");
    for args in [
        vec!["entry", "list"],
        vec!["cluster", "status", "--json"],
        vec!["healthcheck"],
        vec!["bundle", "show"],
        vec!["token", "generate"],
        vec!["token", "generate", "--server"],
        vec!["bundle", "show", "--hash"],
        vec!["cluster", "remove-server", "2"],
    ] {
        let mut all = args.clone();
        all.extend(["--admin-socket", path_text]);
        let line = one_line_error(&run(&all), &all);
        assert_eq!(
            line,
            format!(
                "error: cannot reach the admin socket: {path_text}: No such file or directory (is `sigil server` running?)"
            )
        );
    }
    // A file that is not a socket.
    std::fs::write(&path, b"x").expect("write");
    let all = ["healthcheck", "--admin-socket", path_text];
    let line = one_line_error(&run(&all), &all);
    assert!(line.contains("cannot reach the admin socket"), "{line}");
}

#[test]
fn serving_refuses_a_path_that_is_not_a_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: &Path = &dir.path().join("admin.sock");
    std::fs::write(path, b"precious").expect("write");
    let err = admin::bind_admin_socket(path, admin::ADMIN_SOCKET_MODE).expect_err("refused");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(path).expect("kept"), b"precious");
}

#[test]
fn writes_without_quorum_fail_fast_with_unavailable() {
    // Node 1 of a two-node cluster whose other member never answers: no leader, no quorum.
    let node = start_with(&[1, 2], 1_000);
    let t0 = Instant::now();
    let err = node.fails(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/w",
        "--parent-id",
        AGENT_A,
        "--selector",
        "unix:uid:1",
    ]);
    assert!(err.contains("no quorum"), "{err}");
    assert!(err.contains("server unavailable"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        t0.elapsed()
    );
    // Reads still work from the local replica.
    let list = node.json(&["entry", "list", "--json"]);
    assert_eq!(ids(&list), Vec::<String>::new());
    let status = node.json(&["cluster", "status", "--json"]);
    assert_eq!(status["leader_id"], Value::Null);
    assert_eq!(status["members"].as_array().expect("members").len(), 2);
}

#[test]
fn serve_admin_is_spawnable_and_removes_its_socket_on_shutdown() {
    fn assert_send_static<F: Future + Send + 'static>(_: &F) {}
    let mut node = start();
    // A server composes it like this: an owned future it can hand to `Env::spawn`.
    let service = AdminService::new(
        node.replica.clone(),
        node.env.clone() as Arc<dyn Env>,
        TD.parse().expect("td"),
        AdminDefaults::default(),
    );
    let path = node.socket.with_file_name("other.sock");
    let fut = async move { admin::serve_admin(&path, service, std::future::pending()).await };
    assert_send_static(&fut);
    drop(fut);

    node.stop.take().expect("running").send(()).expect("stop");
    assert!(
        wait_for(DEADLINE, || !node.socket.exists()),
        "socket not removed on shutdown"
    );
    let all = ["healthcheck"];
    let line = one_line_error(&node.sigil(&all), &all);
    assert!(line.contains("cannot reach the admin socket"), "{line}");
}

/// The value of the `Prefix: value` line of `text`.
fn line_value(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {text}"))
        .to_owned()
}

/// The `[join]` snippet inside `token generate --server` text output, parsed as TOML.
fn join_section(text: &str) -> toml::Table {
    let start = text
        .find("[join]")
        .unwrap_or_else(|| panic!("no [join]: {text}"));
    let snippet: String = text[start..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let doc: toml::Table = snippet
        .parse()
        .unwrap_or_else(|e| panic!("snippet is not TOML ({e}): {snippet}"));
    assert_eq!(doc.len(), 1, "{snippet}");
    doc["join"].as_table().expect("[join] table").clone()
}

#[test]
fn server_token_generate_pins_the_bundle_and_stores_only_its_hash() {
    let node = start();
    // No CA yet: nothing to pin, so no server token (and nothing stored).
    let err = node.fails(&["token", "generate", "--server"]);
    assert!(err.contains("no X.509 authority"), "{err}");
    assert_eq!(
        node.replica
            .read(|a| format!("{:?}", a.state))
            .matches("token_sha256")
            .count(),
        0
    );
    publish_fake_authorities(&node);
    let pinned = node.bundle_sha256();
    assert_eq!(pinned.len(), 64);

    let before = node.now().as_secs();
    let text = node.ok(&["token", "generate", "--server"]);
    let token = line_value(&text, "Token: ");
    assert_eq!(token.len(), 64, "{text}");
    assert_eq!(line_value(&text, "Bundle SHA-256: "), pinned, "{text}");
    assert!(!text.contains("Agent SPIFFE ID"), "{text}");
    assert!(text.contains("the bundle hash changes"), "{text}");
    // The snippet: the token, a placeholder seed (this node was not told its address), the hash.
    let join = join_section(&text);
    assert_eq!(join["token"].as_str(), Some(token.as_str()));
    assert_eq!(join["bundle_sha256"].as_str(), Some(pinned.as_str()));
    let seeds = join["seeds"].as_array().expect("seeds");
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].as_str(), Some("<address of any server node>"));

    let hash = admin::join_token_sha256(&token);
    node.replica.read(|a| {
        let stored = a.state.join_token(&hash).expect("hash stored");
        assert_eq!(stored.purpose, TokenPurpose::Server);
        assert_eq!(stored.consumed_by, None);
        let expires = stored.expires_at.as_secs();
        assert!(
            expires >= before + 3600 && expires <= before + 3600 + 60,
            "default TTL 1h: {expires}"
        );
        assert!(a.state.join_token(&token).is_none());
        let dump = format!("{:?}", a.state);
        assert!(
            !dump.contains(&token),
            "the token itself is never replicated"
        );
        assert_eq!(
            a.state.entries().count(),
            0,
            "a server token creates no entry"
        );
    });

    // JSON, with a TTL.
    let j = node.json(&["token", "generate", "--server", "--ttl", "2h", "--json"]);
    let jtoken = j["token"].as_str().expect("token");
    assert_eq!(jtoken.len(), 64);
    assert_ne!(jtoken, token);
    assert_eq!(j["purpose"], "server");
    assert_eq!(j["bundle_sha256"], pinned.as_str());
    assert!(
        j["expires_at"].as_str().expect("expires_at").ends_with('Z'),
        "{j}"
    );
    let expires = j["expires_at_secs"].as_u64().expect("secs");
    assert!(
        expires >= before + 7200 && expires <= before + 7200 + 60,
        "{expires}"
    );
    node.replica.read(|a| {
        let stored = a
            .state
            .join_token(&admin::join_token_sha256(jtoken))
            .expect("stored");
        assert_eq!(stored.purpose, TokenPurpose::Server);
    });
    // Agent tokens still default to the agent purpose.
    let agent = node.json(&["token", "generate", "--json"]);
    assert_eq!(agent["purpose"], "agent");
    node.replica.read(|a| {
        let t = a.state.join_token(&admin::join_token_sha256(
            agent["token"].as_str().expect("token"),
        ));
        assert_eq!(t.map(|t| t.purpose), Some(TokenPurpose::Agent));
    });
    let err = node.fails(&["token", "generate", "--server", "--ttl", "400d"]);
    assert!(err.contains("at most"), "{err}");

    // Checked by the server too, for clients other than the CLI.
    node.rt.block_on(async {
        let mut client = admin::connect(&node.socket).await.expect("connect");
        let with_id = client
            .create_join_token(pb::CreateJoinTokenRequest {
                spiffe_id: "spiffe://example.org/host/a".into(),
                purpose: pb::JoinTokenPurpose::Server.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(with_id), Some(tonic::Code::InvalidArgument));
        let unknown = client
            .create_join_token(pb::CreateJoinTokenRequest {
                purpose: 7,
                ..Default::default()
            })
            .await;
        assert_eq!(code(unknown), Some(tonic::Code::InvalidArgument));
    });
}

#[test]
fn server_token_snippet_names_this_node_as_seed() {
    let node = start_full(&[1], 5_000, Some("10.0.0.1:8443"));
    publish_fake_authorities(&node);
    let text = node.ok(&["token", "generate", "--server", "--ttl", "15m"]);
    let join = join_section(&text);
    let seeds = join["seeds"].as_array().expect("seeds");
    assert_eq!(seeds.len(), 1);
    assert_eq!(seeds[0].as_str(), Some("10.0.0.1:8443"));
    assert!(text.contains("trust_domain = \"example.org\""), "{text}");
    let j = node.json(&["token", "generate", "--server", "--json"]);
    assert_eq!(j["seeds"], serde_json::json!(["10.0.0.1:8443"]));
}

#[test]
fn bundle_show_hash_is_the_pinnable_hash() {
    let node = start();
    let err = node.fails(&["bundle", "show", "--hash"]);
    assert!(err.contains("no X.509 authority"), "{err}");
    publish_fake_authorities(&node);
    let text = node.ok(&["bundle", "show", "--hash"]);
    let expected = node.bundle_sha256();
    assert_eq!(text, format!("{expected}\n"));
    // The same hash from the served SPIFFE bundle document.
    let doc = node.json(&["bundle", "show", "--format", "spiffe"]);
    let served = wire::Bundle::from_json(doc.to_string().as_bytes()).expect("SPIFFE bundle");
    assert_eq!(attest::bundle::bundle_sha256(&served), expected);
    assert_eq!(
        node.json(&["bundle", "show", "--hash", "--json"]),
        serde_json::json!({ "bundle_sha256": expected })
    );
    assert_eq!(
        node.json(&["bundle", "show", "--json"])["bundle_sha256"],
        expected.as_str()
    );
    let conflict = node.sigil(&["bundle", "show", "--hash", "--format", "pem"]);
    assert_eq!(conflict.status.code(), Some(2));
}

#[test]
fn cluster_remove_server_refuses_the_last_node_and_removes_others() {
    let node = start();
    // Nothing registered yet.
    let err = node.fails(&["cluster", "remove-server", "1"]);
    assert!(err.contains("server node 1 not found"), "{err}");
    let s = node.json(&["cluster", "status", "--json"]);
    assert_eq!(s["servers"], serde_json::json!([]));

    node.register_server(1, "127.0.0.1:7001");
    let err = node.fails(&["cluster", "remove-server", "1"]);
    assert!(err.contains("last server node"), "{err}");
    assert_eq!(node.servers(), vec![1]);

    node.register_server(2, "127.0.0.1:7002");
    node.register_server(3, "127.0.0.1:7003");
    let s = node.json(&["cluster", "status", "--json"]);
    assert_eq!(
        s["servers"],
        serde_json::json!([
            { "node_id": 1, "addr": "127.0.0.1:7001" },
            { "node_id": 2, "addr": "127.0.0.1:7002" },
            { "node_id": 3, "addr": "127.0.0.1:7003" },
        ])
    );
    assert_eq!(s["members"].as_array().expect("members").len(), 1);
    let text = node.ok(&["cluster", "status"]);
    assert!(text.contains("Servers        : 3 registered"), "{text}");
    assert!(
        text.contains("node 1 at 127.0.0.1:7001 (Raft voter)"),
        "{text}"
    );
    assert!(
        text.contains("node 2 at 127.0.0.1:7002 (not yet a Raft member)"),
        "{text}"
    );

    let err = node.fails(&["cluster", "remove-server", "9"]);
    assert!(err.contains("not found"), "{err}");
    let text = node.ok(&["cluster", "remove-server", "2"]);
    assert!(
        text.contains("Removed server node 2 (127.0.0.1:7002)"),
        "{text}"
    );
    assert!(
        text.contains("1 (127.0.0.1:7001), 3 (127.0.0.1:7003)"),
        "{text}"
    );
    assert_eq!(node.servers(), vec![1, 3]);
    let j = node.json(&["cluster", "remove-server", "3", "--json"]);
    assert_eq!(
        j,
        serde_json::json!({
            "removed": { "node_id": 3, "addr": "127.0.0.1:7003" },
            "servers": [{ "node_id": 1, "addr": "127.0.0.1:7001" }],
        })
    );
    assert_eq!(node.servers(), vec![1]);
    let err = node.fails(&["cluster", "remove-server", "1"]);
    assert!(err.contains("last server node"), "{err}");
    assert_eq!(node.servers(), vec![1]);
}

/// `sigil token list|revoke` and server tokens bound to a node ID (issue 20).
#[test]
fn tokens_are_listed_without_their_secret_and_revoked() {
    let node = start();
    publish_fake_authorities(&node);
    let agent = node.json(&["token", "generate", "--json"]);
    let token = agent["token"].as_str().expect("token").to_owned();
    let hash = admin::join_token_sha256(&token);
    // A server token gets the next free ID (node 1 is a member) and says so.
    node.write(Command::RegisterServer {
        server: ServerRecord {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
        },
    });
    let server = node.json(&["token", "generate", "--server", "--json"]);
    assert_eq!(server["node_id"], 2, "{server}");
    // A member's ID needs --rejoin; a removed ID is refused.
    let err = node.fails(&["token", "generate", "--server", "--node-id", "1"]);
    assert!(
        err.contains("already a member") && err.contains("--rejoin"),
        "{err}"
    );
    let rejoin = node.json(&[
        "token",
        "generate",
        "--server",
        "--node-id",
        "1",
        "--rejoin",
        "--json",
    ]);
    assert_eq!(rejoin["node_id"], 1, "{rejoin}");

    let list = node.ok(&["token", "list", "--json"]);
    assert!(
        !list.contains(&token),
        "the token itself is never listed: {list}"
    );
    let list: Value = serde_json::from_str(&list).expect("json");
    let tokens = list["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3, "{list}");
    let mine = tokens
        .iter()
        .find(|t| t["token_sha256"] == hash.as_str())
        .expect("listed");
    assert_eq!(mine["purpose"], "agent");
    assert_eq!(mine["consumed_by"], Value::Null);
    let text = node.ok(&["token", "list"]);
    assert!(text.contains("server (admits node 2)"), "{text}");
    assert!(text.contains("server (re-admits node 1)"), "{text}");

    // Revoke by a prefix of the hash; a short or unknown one is refused.
    let err = node.fails(&["token", "revoke", "--sha256", "abc"]);
    assert!(err.contains("8 to 64 hex"), "{err}");
    node.ok(&["token", "revoke", "--sha256", &hash[..12]]);
    assert!(node.replica.read(|a| a.state.join_token(&hash).is_none()));
    let err = node.fails(&["token", "revoke", "--token", &token]);
    assert!(err.contains("not found"), "{err}");
}

/// `sigil agent list|show|ban|unban|evict` (issue 20).
#[test]
fn agents_are_listed_banned_and_evicted() {
    let node = start();
    node.write(Command::RegisterAgent {
        agent: wire::AgentRecord {
            spiffe_id: AGENT_A.parse().expect("id"),
            method: wire::AttestationMethod::JoinToken,
            selectors: vec!["join_token:a".parse().expect("selector")],
            banned: false,
            svid_serial: "0a".into(),
            svid_not_after: UnixTime::from_secs(2_000_000_000),
            previous_serial: String::new(),
            renewed_at: UnixTime::from_secs(1_000),
            attested_at: UnixTime::from_secs(1_000),
        },
    });
    let list = node.json(&["agent", "list", "--json"]);
    let agents = list["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{list}");
    assert_eq!(agents[0]["spiffe_id"], AGENT_A);
    assert_eq!(agents[0]["attestation_method"], "join_token");
    assert_eq!(agents[0]["svid_serial"], "0a");
    assert_eq!(agents[0]["banned"], false);

    let banned = node.json(&["agent", "ban", "--spiffe-id", AGENT_A, "--json"]);
    assert_eq!(banned["banned"], true, "{banned}");
    let text = node.ok(&["agent", "show", "--spiffe-id", AGENT_A]);
    assert!(text.contains("Banned            : true"), "{text}");
    // Evicting would lift the ban: refused until unbanned.
    let err = node.fails(&["agent", "evict", "--spiffe-id", AGENT_A]);
    assert!(err.contains("unban it before evicting"), "{err}");
    node.ok(&["agent", "unban", "--spiffe-id", AGENT_A]);
    node.ok(&["agent", "evict", "--spiffe-id", AGENT_A]);
    let list = node.json(&["agent", "list", "--json"]);
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(0), "{list}");
    let err = node.fails(&["agent", "show", "--spiffe-id", AGENT_A]);
    assert!(err.contains("not attested"), "{err}");
    let err = node.fails(&["agent", "ban", "--spiffe-id", "spiffe://example.org/web"]);
    assert!(err.contains("not an agent ID"), "{err}");
}
