//! `sigil agent` end to end: a real `sigil server` and a real `sigil agent` process; the standard
//! rust `spiffe` client fetches an X.509-SVID and a JWT-SVID from the agent's Workload API
//! socket, validates the JWT, sees a wrong audience refused, receives a newly created entry
//! without restarting anything, and loses an identity whose entry was deleted.

#![allow(clippy::disallowed_methods)] // tests run their own runtime, processes and wall-clock deadlines

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    create_entry, json, my_uid, sigil, wait_for, AgentToml, Join, Plane, Proc, ServerNode, NOBODY,
    SIGIL,
};
use spiffe::WorkloadApiClient;

const TD: &str = "agent.test";
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn agent_serves_the_workload_api_to_a_standard_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server is up with a CA and an agent join token is taken; the entry exists before the
    // agent starts.
    let mut plane = Plane::bootstrap(SIGIL, dir.path(), TD, WAIT);
    let sock = plane.server.admin.clone();
    let agent_id = plane.agent_id.clone();
    let workload_sock = plane.workload.clone();
    let uid = my_uid();
    let first = create_entry(&sock, &format!("spiffe://{TD}/me"), &agent_id, uid);
    plane.start_agent(WAIT);
    // Everything the agent keeps on disk is for its eyes only (README: files mode 0600).
    let identity = dir.path().join("agent").join("identity");
    for file in ["key.pk8", "svid.bin", "bundle.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(identity.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} has mode {:o}", mode & 0o777);
    }
    let Plane {
        agent, mut server, ..
    } = plane;
    let mut agent = agent.expect("the agent");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let endpoint = format!("unix:{}", workload_sock.display());
        let client = tokio::time::timeout(WAIT, WorkloadApiClient::connect_to(endpoint))
            .await
            .expect("connect in time")
            .expect("connect");
        // The first SVID arrives once the agent has followed its view and had it signed.
        let start = Instant::now();
        let svid = loop {
            match client.fetch_x509_svid().await {
                Ok(s) => break s,
                Err(e) if start.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!(
                    "no X.509-SVID within {WAIT:?}: {e}; agent log:\n{}",
                    agent.log()
                ),
            }
        };
        assert_eq!(svid.spiffe_id().to_string(), format!("spiffe://{TD}/me"));
        eprintln!("first X.509-SVID after {} ms", start.elapsed().as_millis());

        let jwt = client.fetch_jwt_svid(["db"], None).await.expect("JWT-SVID");
        assert_eq!(jwt.spiffe_id().to_string(), format!("spiffe://{TD}/me"));
        let validated = client
            .validate_jwt_token("db", jwt.token())
            .await
            .expect("valid for its audience");
        assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
        assert!(
            client
                .validate_jwt_token("other", jwt.token())
                .await
                .is_err(),
            "a wrong audience is refused"
        );
        // A cache hit: same token for the same audience.
        let again = client.fetch_jwt_svid(["db"], None).await.expect("JWT-SVID");
        assert_eq!(again.token(), jwt.token());

        // Push: an entry created now reaches the waiting workload without polling intervals.
        let created_at = Instant::now();
        create_entry(&sock, &format!("spiffe://{TD}/second"), &agent_id, uid);
        let arrived = loop {
            let svids = client.fetch_all_x509_svids().await.unwrap_or_default();
            if svids
                .iter()
                .any(|s| s.spiffe_id().to_string() == format!("spiffe://{TD}/second"))
            {
                break created_at.elapsed();
            }
            assert!(created_at.elapsed() < WAIT, "the new entry never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!(
            "entry created with the CLI → SVID at the workload: {} ms (includes the CLI process)",
            arrived.as_millis()
        );

        // Delete both entries: the workload loses its identity.
        let second_id = json(&sigil(&[
            "entry",
            "list",
            "--spiffe-id",
            &format!("spiffe://{TD}/second"),
            "--json",
            "--admin-socket",
            &sock,
        ]))["entries"][0]["id"]
            .as_str()
            .map(str::to_owned);
        let mut ids = vec![first.clone()];
        ids.extend(second_id);
        let mut args = vec!["entry", "delete", "--admin-socket", sock.as_str()];
        for id in &ids {
            args.extend(["--entry-id", id.as_str()]);
        }
        let out = sigil(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = Instant::now();
        loop {
            if client.fetch_x509_svid().await.is_err() {
                break;
            }
            assert!(start.elapsed() < WAIT, "deleted entries are still served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "identity gone {} ms after the delete",
            start.elapsed().as_millis()
        );
    });

    assert!(
        agent.terminate(),
        "agent exits cleanly on SIGTERM: {}",
        agent.log()
    );
    assert!(
        !workload_sock.exists(),
        "the Workload API socket is removed"
    );
    assert!(server.terminate(), "server exits cleanly");
}

/// Starts server node `id` in `dir/node-<id>`: bootstrapping without `join`.
fn start_server(dir: &Path, id: u64, join: Option<Join>) -> ServerNode {
    let mut node = ServerNode::new(SIGIL, id, dir.join(format!("node-{id}"))).expect("node dir");
    let toml = node.toml(TD);
    match join {
        None => toml.bootstrap(),
        Some(join) => toml.join(join),
    }
    .write(&node.config)
    .expect("server config");
    node.start().expect("spawn sigil server");
    node
}

/// X.509 CAs in the bundle served by `admin`.
fn ca_count(admin: &str) -> usize {
    let out = sigil(&[
        "bundle",
        "show",
        "--format",
        "spiffe",
        "--admin-socket",
        admin,
    ]);
    if !out.status.success() {
        return 0;
    }
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    b["keys"]
        .as_array()
        .map(|k| k.iter().filter(|k| k["use"] == "x509-svid").count())
        .unwrap_or(0)
}

/// The server the agent's log says it connected to last.
fn agent_server(agent: &Proc) -> Option<String> {
    agent
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("connected to the nearest server"))
        .and_then(|l| l.split("server=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned)
}

#[test]
fn agent_fails_over_and_serves_from_cache_without_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut servers = vec![start_server(d, 1, None)];
    assert!(
        wait_for(WAIT, || ca_count(&servers[0].admin) == 1),
        "bootstrap: {}",
        servers[0].log()
    );
    for id in 2..=3u64 {
        let token = json(&sigil(&[
            "token",
            "generate",
            "--server",
            "--json",
            "--admin-socket",
            &servers[0].admin,
        ]));
        let joined = start_server(
            d,
            id,
            Some(Join {
                token: token["token"].as_str().expect("token").to_owned(),
                seeds: vec![servers[0].addr.to_string()],
                bundle_sha256: token["bundle_sha256"].as_str().expect("hash").to_owned(),
            }),
        );
        servers.push(joined);
        let n = servers.len();
        assert!(
            wait_for(WAIT, || ca_count(&servers[0].admin) == n),
            "node {id} joined and published its CA: {}",
            servers[n - 1].log()
        );
    }
    let hash = servers[0].wait_bundle_hash(WAIT);
    let token = json(&sigil(&[
        "token",
        "generate",
        "--json",
        "--admin-socket",
        &servers[0].admin,
    ]));
    let agent_id = token["agent_spiffe_id"]
        .as_str()
        .expect("agent id")
        .to_owned();
    let uid = my_uid();
    create_entry(
        &servers[0].admin,
        &format!("spiffe://{TD}/me"),
        &agent_id,
        uid,
    );
    let workload_sock = d.join("agent.sock");
    let list: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let agent_cfg = d.join("agent.toml");
    AgentToml::new(TD, &list, d.join("agent"), &workload_sock)
        .join_token(token["token"].as_str().expect("token"))
        .bundle_sha256(&hash)
        .write(&agent_cfg)
        .expect("agent config");
    let mut agent = Proc::start(SIGIL, "agent", &agent_cfg, d.join("agent.log"));
    assert!(wait_for(WAIT, || workload_sock.exists()), "{}", agent.log());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let endpoint = format!("unix:{}", workload_sock.display());
        let client = tokio::time::timeout(WAIT, WorkloadApiClient::connect_to(endpoint))
            .await
            .expect("connect in time")
            .expect("connect");
        let start = Instant::now();
        while client.fetch_x509_svid().await.is_err() {
            assert!(start.elapsed() < WAIT, "first SVID: {}", agent.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A workload process of another uid (no entry) is refused while this uid is served.
        let sock = workload_sock.to_str().expect("utf8");
        if let Some(out) = common::sigil_as_nobody(
            d,
            &["api", "fetch", "x509", "--socket", sock],
            Duration::from_secs(20),
        ) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "uid {NOBODY} got an SVID");
            assert!(
                err.contains(&format!(
                    "no identity issued for this process (uid {NOBODY})"
                )),
                "{err}"
            );
            assert!(
                client.fetch_x509_svid().await.is_ok(),
                "this uid is still served"
            );
            eprintln!("uid {NOBODY} refused with PermissionDenied, uid {uid} served");
        }
        // Kill the server the agent uses; the workload keeps its SVID the whole time and the
        // agent moves to another server.
        let used = agent_server(&agent).expect("the agent logged its server");
        let victim = servers
            .iter_mut()
            .find(|s| s.addr.to_string() == used)
            .expect("a configured server");
        victim.kill();
        let killed_at = Instant::now();
        let mut fetches = 0;
        let moved = loop {
            let svid = client.fetch_x509_svid().await;
            assert!(svid.is_ok(), "the workload kept a valid SVID: {svid:?}");
            fetches += 1;
            match agent_server(&agent) {
                Some(now) if now != used => break now,
                _ => {}
            }
            assert!(
                killed_at.elapsed() < WAIT,
                "the agent did not fail over: {}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "failover from {used} to {moved} in {} ms; {fetches} fetches meanwhile, all served",
            killed_at.elapsed().as_millis()
        );
        // `sigil agent health` (the agent's admin socket, found through agent.toml) names it.
        let health = sigil(&[
            "agent",
            "health",
            "--config",
            agent_cfg.to_str().expect("utf8"),
        ]);
        let said = String::from_utf8_lossy(&health.stdout).into_owned();
        assert!(
            health.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&health.stderr)
        );
        assert!(
            said.contains(&format!("connected to server {moved}")),
            "{said}"
        );
        assert!(
            said.contains(&format!("agent {agent_id} serves 1 X.509-SVID")),
            "{said}"
        );
        // The new connection works: a new entry arrives through it.
        let alive = servers
            .iter()
            .find(|s| s.addr.to_string() == moved)
            .expect("the new server");
        create_entry(
            &alive.admin,
            &format!("spiffe://{TD}/after"),
            &agent_id,
            uid,
        );
        let start = Instant::now();
        loop {
            let all = client.fetch_all_x509_svids().await.unwrap_or_default();
            if all
                .iter()
                .any(|s| s.spiffe_id().to_string() == format!("spiffe://{TD}/after"))
            {
                break;
            }
            assert!(start.elapsed() < WAIT, "entry after failover never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every server down: the workload is still served from the agent's cache.
        for s in &mut servers {
            s.kill();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let all = client
            .fetch_all_x509_svids()
            .await
            .expect("cached SVIDs with no server");
        assert_eq!(all.len(), 2, "both cached SVIDs are served");
        let jwt = client.fetch_jwt_svid(["cached"], None).await;
        assert!(jwt.is_err(), "a new JWT-SVID needs a server");
        eprintln!("all servers down: {} cached SVIDs still served", all.len());
        // The health output says the agent serves from its cache and cannot reach a server.
        let cfg = agent_cfg.to_str().expect("utf8");
        let mut said = String::new();
        assert!(
            wait_for(WAIT, || {
                let out = sigil(&["agent", "health", "--config", cfg]);
                said = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                !out.status.success() && said.contains("NOT connected to any server")
            }),
            "health while cut off: {said}"
        );
        eprintln!("`sigil agent health` while cut off:\n{said}");
        assert!(said.contains("serves 2 cached X.509-SVID"), "{said}");
        assert!(said.contains("last contact"), "{said}");
        let tolerant = sigil(&[
            "agent",
            "health",
            "--config",
            cfg,
            "--allow-disconnected",
            "--json",
        ]);
        assert!(tolerant.status.success());
        let h = json(&tolerant);
        assert_eq!(h["connected"], false);
        assert_eq!(h["x509_svids"], 2);
    });
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());
}

/// An agent configured with another trust domain than the servers' is told both, once, and
/// does not attest (its token stays unused).
#[test]
fn an_agent_of_another_trust_domain_is_told_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::bootstrap(SIGIL, dir.path(), TD, WAIT);
    let config = dir.path().join("wrong-td.toml");
    AgentToml::new(
        "other.test",
        &[plane.server.addr],
        dir.path().join("wrong-agent"),
        dir.path().join("wrong.sock"),
    )
    .join_token(&plane.token)
    .bundle_sha256(&plane.hash)
    .write(&config)
    .expect("agent config");
    let mut cmd = std::process::Command::new(SIGIL);
    cmd.args(["agent", "--config"]).arg(&config);
    let out = common::run_bounded(&mut cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("is in trust domain {TD}, not other.test")),
        "{err}"
    );
}
