//! `sigil server` as a process: bootstrap a one-node trust domain, publish the node's CA through
//! Raft, serve the admin API, stop cleanly on SIGTERM, and come back with the same state.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{json, sigil, wait_for, Proc, ServerToml, SIGIL};

/// SIGTERM; the exit status (panics if it does not stop within 20 s).
fn stop(server: &mut Proc) -> ExitStatus {
    server
        .stop(Duration::from_secs(20))
        .expect("sigil server did not stop within 20 s of SIGTERM")
}

/// Writes `dir/name`: a one-node server bootstrapping `server.test` with data in `dir/data` and
/// its admin socket at `sock`.
fn bootstrap_config(dir: &Path, name: &str, data: &str, sock: &str) -> PathBuf {
    let config = dir.join(name);
    ServerToml::new("server.test", 1, dir.join(data), "127.0.0.1:0", sock)
        .bootstrap()
        .write(&config)
        .expect("write config");
    config
}

#[test]
fn bootstrap_serve_stop_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let sock = socket.to_str().expect("utf8 path");
    let config = bootstrap_config(dir.path(), "server.toml", "data", sock);

    let mut server = Proc::start(SIGIL, "server", &config, dir.path().join("server.log"));
    let healthy = wait_for(Duration::from_secs(30), || {
        sigil(&["healthcheck", "--admin-socket", sock])
            .status
            .success()
    });
    assert!(healthy, "admin API up");
    // The node's CA and JWT key get published through Raft.
    let published = wait_for(Duration::from_secs(30), || {
        let out = sigil(&[
            "bundle",
            "show",
            "--format",
            "spiffe",
            "--admin-socket",
            sock,
        ]);
        out.status.success() && {
            let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let keys = b["keys"].as_array().map(Vec::len).unwrap_or(0);
            keys >= 2
        }
    });
    assert!(published, "bundle holds the node's X.509 CA and JWT key");
    let created = sigil(&[
        "entry",
        "create",
        "--admin-socket",
        sock,
        "--spiffe-id",
        "spiffe://server.test/web",
        "--parent-id",
        "spiffe://server.test/sigil/agent/join_token/abc",
        "--selector",
        "unix:uid:1000",
        "--json",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = json(&sigil(&[
        "cluster",
        "status",
        "--json",
        "--admin-socket",
        sock,
    ]));
    let text = status.to_string();
    assert!(text.contains("\"leader\""), "{text}");

    // A second server configured with the same admin socket refuses to start, naming the
    // path; the first keeps its socket and keeps serving.
    let second = bootstrap_config(dir.path(), "second.toml", "data2", sock);
    let out = Command::new(SIGIL)
        .args(["server", "--config"])
        .arg(&second)
        .stdin(Stdio::null())
        .output()
        .expect("run a second server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(sock) && err.contains("served by another running process"),
        "{err}"
    );
    assert!(
        sigil(&["healthcheck", "--admin-socket", sock])
            .status
            .success(),
        "the first server still serves its socket"
    );

    // A second server on the same data_dir (its own admin socket) refuses to start, naming
    // the server that uses it.
    let other_sock = dir.path().join("other.sock");
    let third = bootstrap_config(
        dir.path(),
        "third.toml",
        "data",
        other_sock.to_str().expect("utf8 path"),
    );
    let out = Command::new(SIGIL)
        .args(["server", "--config"])
        .arg(&third)
        .stdin(Stdio::null())
        .output()
        .expect("run a server on the same data_dir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let pid = server.pid().expect("pid");
    assert!(
        err.contains(&format!("another sigil server (pid {pid}) is using")),
        "{err}"
    );
    assert!(
        sigil(&["healthcheck", "--admin-socket", sock])
            .status
            .success(),
        "the first server keeps serving"
    );

    let code = stop(&mut server);
    assert!(code.success(), "clean exit on SIGTERM: {code:?}");
    assert!(!socket.exists(), "admin socket removed on shutdown");

    // Restart from the same data dir: same trust domain, same entries.
    let mut server = Proc::start(SIGIL, "server", &config, dir.path().join("server-2.log"));
    assert!(wait_for(Duration::from_secs(30), || {
        sigil(&["healthcheck", "--admin-socket", sock])
            .status
            .success()
    }));
    let listed = json(&sigil(&["entry", "list", "--json", "--admin-socket", sock]));
    let entries = listed["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{listed}");
    assert!(listed.to_string().contains("spiffe://server.test/web"));
    assert!(stop(&mut server).success());
}

#[test]
fn bad_configs_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "trust_domain = \"Bad\"\nnode_id = 1\n").expect("write");
    let out = sigil(&["server", "--config", config.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust_domain"), "{err}");
    let missing = sigil(&["server", "--config", "/nonexistent/server.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/server.toml"));

    // No cluster state and not bootstrapping: refuse, saying why.
    ServerToml::new(
        "a.test",
        2,
        dir.path().join("d"),
        "127.0.0.1:0",
        dir.path().join("a.sock"),
    )
    .write(&config)
    .expect("write");
    let out = sigil(&["server", "--config", config.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bootstrap"));
}
