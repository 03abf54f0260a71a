//! `sigil server` as a process: bootstrap a one-node trust domain, publish the node's CA through
//! Raft, serve the admin API, stop cleanly on SIGTERM, and come back with the same state.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn sigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(args)
        .output()
        .expect("run sigil")
}

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(["server", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sigil server")
}

/// Polls `f` every 100 ms for up to `limit`.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let mut waited = Duration::ZERO;
    while waited < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    f()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let stopped = wait_for(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !stopped {
        let _ = child.kill();
        panic!("sigil server did not stop within 20 s of SIGTERM");
    }
    child.wait().expect("exit status")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Writes `dir/name`: a one-node server bootstrapping `server.test` with data in `dir/data` and
/// its admin socket at `sock`.
fn bootstrap_config(dir: &Path, name: &str, data: &str, sock: &str) -> std::path::PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"server.test\"\nnode_id = 1\ndata_dir = \"{}\"\nbind = \"127.0.0.1:0\"\n\
             admin_socket = \"{sock}\"\nbootstrap = true\n",
            dir.join(data).display()
        ),
    )
    .expect("write config");
    config
}

#[test]
fn bootstrap_serve_stop_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let sock = socket.to_str().expect("utf8 path");
    let config = bootstrap_config(dir.path(), "server.toml", "data", sock);

    let child = start(&config);
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
    let out = Command::new(env!("CARGO_BIN_EXE_sigil"))
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

    let code = stop(child);
    assert!(code.success(), "clean exit on SIGTERM: {code:?}");
    assert!(!socket.exists(), "admin socket removed on shutdown");

    // Restart from the same data dir: same trust domain, same entries.
    let child = start(&config);
    assert!(wait_for(Duration::from_secs(30), || {
        sigil(&["healthcheck", "--admin-socket", sock])
            .status
            .success()
    }));
    let listed = json(&sigil(&["entry", "list", "--json", "--admin-socket", sock]));
    let entries = listed["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{listed}");
    assert!(listed.to_string().contains("spiffe://server.test/web"));
    assert!(stop(child).success());
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
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"a.test\"\nnode_id = 2\ndata_dir = \"{}\"\nbind = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\n",
            dir.path().join("d").display(),
            dir.path().join("a.sock").display()
        ),
    )
    .expect("write");
    let out = sigil(&["server", "--config", config.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bootstrap"));
}
