//! x509pop node attestation end to end, with real `sigil server` and `sigil agent` processes and
//! certificates made by the openssl CLI the way the README tells operators to (the test is
//! skipped, saying so, where `openssl` is not on PATH):
//! - an agent attests with its certificate and key, gets `…/sigil/agent/x509pop/<fingerprint>`,
//!   and a workload registered under that ID gets its X.509-SVID;
//! - its agent SVID (10 s here) expires while the server is down; once the server is back, the
//!   agent re-attests by itself and new entries reach it again;
//! - with its data dir deleted it attests again to the same agent ID, and with the data dir
//!   kept but no `bundle_sha256` it re-attests trusting its stored bundle;
//! - an agent whose certificate comes from another CA (and a SEC1 key) is refused, clearly;
//! - a server without `[x509pop]` refuses x509pop, clearly.

#![allow(clippy::disallowed_methods)] // tests run their own processes and wall-clock deadlines

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    create_entry, fetched_ids, my_uid, toml_str, wait_for, wait_served, AgentToml, Proc,
    ServerNode, SIGIL,
};

const TD: &str = "x509pop.test";
const WAIT: Duration = Duration::from_secs(30);

/// Runs openssl in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED {test}: `openssl` is not on PATH (it makes the test certificates)");
    }
    ok
}

/// A CA (`<name>-ca.pem`, `<name>-ca.key`) as in the README.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (cert, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "30",
            "-subj",
            &format!("/CN={name} agent CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(cert)
}

/// An agent certificate `<name>.pem` signed by CA `ca`, with its key `<name>.key` — PKCS#8 from
/// `openssl req`, or SEC1 (`EC PRIVATE KEY`, after `EC PARAMETERS`) from `openssl ecparam`.
fn make_agent_cert(dir: &Path, ca: &str, name: &str, sec1: bool) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    let subj = format!("/CN={name}.example.org");
    if sec1 {
        openssl(
            dir,
            &["ecparam", "-genkey", "-name", "prime256v1", "-out", &key],
        );
        openssl(
            dir,
            &["req", "-new", "-key", &key, "-out", &csr, "-subj", &subj],
        );
    } else {
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ],
        );
    }
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             subjectAltName=DNS:{name}.example.org\n"
        ),
    )
    .expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), dir.join(key))
}

/// The agent ID x509pop gives the first certificate of `pem`.
fn agent_id_of(pem: &Path) -> String {
    let text = std::fs::read(pem).expect("cert file");
    let certs = attest::x509pop::certificates_from_pem(&text).expect("certificates");
    format!(
        "spiffe://{TD}/sigil/agent/x509pop/{}",
        attest::sha256_hex(&certs[0])
    )
}

/// A bootstrap server node in `dir/name` (with `[x509pop]` when `ca_bundle` is given), its
/// config written; not started.
fn server_node(dir: &Path, name: &str, ca_bundle: Option<&Path>) -> ServerNode {
    let node = ServerNode::new(SIGIL, 1, dir.join(name)).expect("server dir");
    let mut toml = node.toml(TD).bootstrap().line("agent_svid_ttl = \"10s\"");
    if let Some(ca) = ca_bundle {
        toml = toml.table(format!(
            "[x509pop]\nca_bundle = {}",
            toml_str(&ca.display().to_string())
        ));
    }
    toml.write(&node.config).expect("server config");
    node
}

/// Writes `dir/<name>.toml`, an agent config using x509pop; (config, Workload API socket).
fn agent_config(
    dir: &Path,
    name: &str,
    server: SocketAddr,
    cert: &Path,
    key: &Path,
    pin: Option<&str>,
) -> (PathBuf, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let mut toml =
        AgentToml::new(TD, &[server], dir.join(format!("{name}-data")), &sock).table(format!(
            "[x509pop]\ncert = {}\nkey = {}",
            toml_str(&cert.display().to_string()),
            toml_str(&key.display().to_string())
        ));
    if let Some(pin) = pin {
        toml = toml.bundle_sha256(pin);
    }
    let cfg = dir.join(format!("{name}.toml"));
    toml.write(&cfg).expect("agent config");
    (cfg, sock)
}

/// Waits until the workload is served `id`.
fn served(sock: &Path, id: &str, agent: &Proc, limit: Duration) {
    let took = wait_served(SIGIL, sock, id, agent, limit);
    eprintln!("{id} served after {} ms", took.as_millis());
}

/// The agent ID an agent's log says it attested as (its last "attested" line).
fn attested_as(agent: &Proc) -> Option<String> {
    agent
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("attested") && l.contains("agent="))
        .and_then(|l| l.split("agent=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned)
}

#[test]
fn agent_attests_with_x509pop_and_again_after_losing_its_identity() {
    if !have_openssl("agent_attests_with_x509pop_and_again_after_losing_its_identity") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = make_ca(d, "org");
    make_ca(d, "rogue");
    let (cert, key) = make_agent_cert(d, "org", "node1", false);
    let (rogue_cert, rogue_key) = make_agent_cert(d, "rogue", "rogue", true);
    let agent_id = agent_id_of(&cert);

    let mut server = server_node(d, "server", Some(&ca));
    server.start().expect("spawn sigil server");
    let (admin, addr) = (server.admin.clone(), server.addr);
    let hash = server.wait_bundle_hash(WAIT);
    assert!(
        server.log().contains("x509pop agent attestation enabled"),
        "{}",
        server.log()
    );
    let uid = my_uid();
    let me = format!("spiffe://{TD}/me");
    create_entry(&admin, &me, &agent_id, uid);

    // First attestation.
    let (agent_cfg, sock) = agent_config(d, "agent", addr, &cert, &key, Some(&hash));
    let mut agent = Proc::start(SIGIL, "agent", &agent_cfg, d.join("agent-1.log"));
    served(&sock, &me, &agent, WAIT);
    assert_eq!(
        attested_as(&agent).as_deref(),
        Some(agent_id.as_str()),
        "{}",
        agent.log()
    );
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("agent attested") && l.contains("x509pop")),
        "{}",
        server.log()
    );

    // The agent SVID (10 s) expires while the server is down; the workload keeps its SVID, and
    // the agent re-attests by itself once the server is back.
    let stopped_at = Instant::now();
    assert!(server.terminate(), "server stops: {}", server.log());
    assert!(
        wait_for(Duration::from_secs(40), || agent
            .log()
            .contains("x509pop re-attestation failed")),
        "the agent noticed its SVID expired: {}",
        agent.log()
    );
    eprintln!(
        "agent SVID expired {} ms after the server stopped",
        stopped_at.elapsed().as_millis()
    );
    assert!(
        fetched_ids(SIGIL, &sock).contains(&me),
        "the cached workload SVID is still served"
    );
    server.start().expect("restart sigil server");
    let back_at = Instant::now();
    assert!(
        wait_for(Duration::from_secs(60), || agent
            .log()
            .contains("re-attested with x509pop")),
        "the agent re-attested: {}\nserver: {}",
        agent.log(),
        server.log()
    );
    eprintln!(
        "re-attested {} ms after the server restarted",
        back_at.elapsed().as_millis()
    );
    let later = format!("spiffe://{TD}/later");
    create_entry(&admin, &later, &agent_id, uid);
    served(&sock, &later, &agent, WAIT);
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());

    // An empty data dir: the same certificate attests to the same agent ID. (The restarted
    // server published a new CA, so the pin is taken again.)
    std::fs::remove_dir_all(d.join("agent-data")).expect("remove the data dir");
    let hash = server.wait_bundle_hash(WAIT);
    let (agent_cfg, _) = agent_config(d, "agent", addr, &cert, &key, Some(&hash));
    let mut agent = Proc::start(SIGIL, "agent", &agent_cfg, d.join("agent-2.log"));
    served(&sock, &me, &agent, WAIT);
    assert_eq!(
        attested_as(&agent).as_deref(),
        Some(agent_id.as_str()),
        "{}",
        agent.log()
    );
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());

    // No pin: the bundle kept in the data dir is the trust anchor (the stored 10 s SVID is too
    // short-lived to reuse, so the agent attests again).
    let (agent_cfg, _) = agent_config(d, "agent", addr, &cert, &key, None);
    let mut agent = Proc::start(SIGIL, "agent", &agent_cfg, d.join("agent-3.log"));
    served(&sock, &me, &agent, WAIT);
    assert_eq!(
        attested_as(&agent).as_deref(),
        Some(agent_id.as_str()),
        "{}",
        agent.log()
    );
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());

    // A certificate from a CA the server does not trust.
    let (rogue_cfg, rogue_sock) =
        agent_config(d, "rogue", addr, &rogue_cert, &rogue_key, Some(&hash));
    let mut rogue = Proc::start(SIGIL, "agent", &rogue_cfg, d.join("rogue.log"));
    assert_eq!(
        rogue.exit_within(WAIT),
        Some(false),
        "the rogue agent fails: {}",
        rogue.log()
    );
    let log = rogue.log();
    assert!(
        log.contains("x509pop attestation refused")
            && log.contains("does not chain to a CA this server trusts"),
        "{log}"
    );
    assert!(!rogue_sock.exists(), "no Workload API without an identity");
    let key_text = std::fs::read_to_string(&rogue_key).expect("key");
    let body = key_text
        .split("-----BEGIN EC PRIVATE KEY-----")
        .nth(1)
        .expect("a SEC1 key");
    assert!(
        !log.contains("BEGIN") && !log.contains(body.trim().get(..32).expect("key body")),
        "no key material in the log"
    );
    assert!(server.terminate(), "server exits cleanly: {}", server.log());
}

#[test]
fn a_server_without_x509pop_refuses_it() {
    if !have_openssl("a_server_without_x509pop_refuses_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "org");
    let (cert, key) = make_agent_cert(d, "org", "node2", false);
    let mut server = server_node(d, "plain", None);
    server.start().expect("spawn sigil server");
    let (addr, hash) = (server.addr, server.wait_bundle_hash(WAIT));
    let (agent_cfg, _) = agent_config(d, "agent", addr, &cert, &key, Some(&hash));
    let mut agent = Proc::start(SIGIL, "agent", &agent_cfg, d.join("agent.log"));
    assert_eq!(
        agent.exit_within(WAIT),
        Some(false),
        "the agent fails: {}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("x509pop attestation is not enabled on this server"),
        "{}",
        agent.log()
    );
    assert!(server.terminate(), "server exits cleanly: {}", server.log());
}
