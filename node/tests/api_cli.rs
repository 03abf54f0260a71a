//! `sigil api …` end to end: a real `sigil server` and `sigil agent`, then the `sigil api` binary
//! as a workload — `fetch x509` (text, `--json`, `--write DIR`), `fetch jwt`, `validate jwt`
//! (right and wrong audience), `watch` (first update, then a pushed one), the socket from
//! `SPIFFE_ENDPOINT_SOCKET` in both URI forms or `--socket`, and — when running as root with
//! `setpriv` available — a second uid that has no entry and is refused while root is served.

#![allow(clippy::disallowed_methods)] // tests run their own processes and wall-clock deadlines

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

mod common;
use common::{
    entry_create_args, free_port, my_uid, pyspiffe_python, run_bounded, wait_for, Plane, Proc,
    NOBODY, SIGIL,
};

const TD: &str = "api.test";
const WAIT: Duration = Duration::from_secs(30);
/// Longest any single `sigil api` invocation may take in these tests (its own --timeout is 10 s).
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// `sigil ARGS` with no Workload API socket in the environment.
fn sigil(args: &[&str]) -> Output {
    run_bounded(
        Command::new(SIGIL)
            .args(args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET"),
        CALL_LIMIT,
    )
}

/// `sigil api ARGS` with `SPIFFE_ENDPOINT_SOCKET=endpoint`.
fn api(endpoint: &str, args: &[&str]) -> Output {
    run_bounded(
        Command::new(SIGIL)
            .arg("api")
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint),
        CALL_LIMIT,
    )
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf8")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).expect("JSON output")
}

/// A failure: exit code 1 and one `error: …` line on stderr; returns that line.
fn one_line_error(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}; stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// A `sigil api watch` whose stdout lines arrive on a channel; killed on drop.
struct Watch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watch {
    fn start(endpoint: &str) -> Watch {
        let mut child = Command::new(SIGIL)
            .args(["api", "watch"])
            .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sigil api watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// The next stdout line; on a timeout, panics with `context` (the agent's log).
    fn next_line(&self, context: &dyn Fn() -> String) -> String {
        self.lines.recv_timeout(WAIT).unwrap_or_else(|e| {
            panic!(
                "no line from `sigil api watch` within {WAIT:?}: {e}; agent log:\n{}",
                context()
            )
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_entry(admin: &str, spiffe_id: &str, parent: &str, uid: u32, hint: &str) -> String {
    let mut args = entry_create_args(admin, spiffe_id, parent, uid);
    args.extend(["--hint".to_owned(), hint.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = json(&sigil(&args));
    out["id"].as_str().expect("entry id").to_owned()
}

/// The DER blocks of a PEM file, checking its shape (64-column base64 lines).
fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line == begin {
            assert!(current.is_none(), "nested BEGIN");
            current = Some(String::new());
        } else if line == end {
            let b64 = current.take().expect("END without BEGIN");
            blocks.push(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
            );
        } else {
            let body = current.as_mut().expect("text outside a PEM block");
            assert!(
                !line.is_empty() && line.len() <= 64,
                "PEM line of {}",
                line.len()
            );
            body.push_str(line);
        }
    }
    assert!(current.is_none(), "unterminated PEM block");
    blocks
}

#[test]
fn api_needs_a_socket_and_says_so_in_one_line() {
    let err = one_line_error(&sigil(&["api", "fetch", "x509"]));
    assert!(
        err.contains("SPIFFE_ENDPOINT_SOCKET") && err.contains("--socket"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.sock");
    let missing = missing.to_str().expect("utf8");
    for args in [
        &["api", "fetch", "x509", "--socket", missing][..],
        &[
            "api",
            "fetch",
            "jwt",
            "--audience",
            "a",
            "--socket",
            missing,
        ][..],
        &["api", "watch", "--socket", missing][..],
        &[
            "api",
            "validate",
            "jwt",
            "--audience",
            "a",
            "--svid",
            "x.y.z",
            "--socket",
            missing,
        ][..],
    ] {
        let err = one_line_error(&sigil(args));
        assert!(
            err.contains("does not exist") && err.contains(missing),
            "{err}"
        );
    }
    for (endpoint, says) in [
        ("tcp://127.0.0.1:8081", "TCP endpoints are not supported"),
        ("/run/agent.sock", "not a unix: URI"),
        ("unix://host/agent.sock", "host part"),
    ] {
        let err = one_line_error(&api(endpoint, &["fetch", "x509"]));
        assert!(err.contains(says), "{endpoint}: {err}");
    }
    let err = one_line_error(&api(
        &format!("unix://{missing}"),
        &["fetch", "x509", "--timeout", "2s"],
    ));
    assert!(err.contains("does not exist"), "{err}");
    // Usage errors stay exit 2.
    let out = sigil(&["api", "fetch", "jwt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--audience"));
    for args in [
        &["api", "--help"][..],
        &["api", "fetch", "x509", "--help"][..],
        &["api", "fetch", "jwt", "--help"][..],
        &["api", "validate", "jwt", "--help"][..],
        &["api", "watch", "--help"][..],
    ] {
        let out = sigil(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--socket"),
            "{args:?}"
        );
    }
}

#[test]
fn api_commands_against_a_real_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let plane = Plane::start(SIGIL, d, TD, WAIT);
    let uid = my_uid();
    let me = format!("spiffe://{TD}/me");
    let first_entry = create_entry(&plane.server.admin, &me, &plane.agent_id, uid, "main");
    let endpoint = format!("unix://{}", plane.workload.display()); // unix:///…
    let short = format!("unix:{}", plane.workload.display()); // unix:/…

    // The first SVID arrives once the agent has followed its view and had it signed.
    let start = Instant::now();
    let fetched = loop {
        let out = api(&endpoint, &["fetch", "x509", "--json"]);
        if out.status.success() {
            break json(&out);
        }
        assert!(
            start.elapsed() < WAIT,
            "no X.509-SVID: {}; agent log:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            plane.agent().log(),
            plane.server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "first `sigil api fetch x509` success {} ms after the entry",
        start.elapsed().as_millis()
    );
    let svid = &fetched["svids"][0];
    assert_eq!(svid["spiffe_id"], me.as_str(), "{fetched}");
    assert_eq!(svid["hint"], "main");
    let serial = svid["serial"].as_str().expect("serial");
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{serial}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let not_after = svid["not_after_secs"].as_u64().expect("not_after_secs");
    assert!(
        not_after > now && not_after < now + 25 * 3600,
        "{not_after}"
    );
    assert!(svid["chain_certs"].as_u64().expect("chain") >= 1);
    assert!(fetched["bundle_certs"].as_u64().expect("bundle") >= 1);

    // Text output, through the short URI form.
    let t = Instant::now();
    let text = stdout(&api(&short, &["fetch", "x509"]));
    eprintln!("`sigil api fetch x509`: {} ms", t.elapsed().as_millis());
    for want in [
        format!("SPIFFE ID        : {me}"),
        format!("Serial           : {serial}"),
        "Expires at       : ".to_owned(),
        "Hint             : main".to_owned(),
        "Bundle           : ".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    // --socket wins over a broken environment.
    let flagged = api(
        "tcp://127.0.0.1:1",
        &[
            "fetch",
            "x509",
            "--socket",
            plane.workload.to_str().expect("utf8"),
        ],
    );
    assert!(stdout(&flagged).contains(&me));

    // --write DIR: chain, key (0600) and bundle as PEM, usable by a standard SPIFFE library.
    let out_dir = d.join("out/certs");
    let written = json(&api(
        &endpoint,
        &[
            "fetch",
            "x509",
            "--json",
            "--write",
            out_dir.to_str().expect("utf8"),
        ],
    ));
    assert_eq!(
        written["written"].as_array().map(Vec::len),
        Some(3),
        "{written}"
    );
    let chain = pem_blocks(
        &std::fs::read_to_string(out_dir.join("svid.pem")).expect("svid.pem"),
        "CERTIFICATE",
    );
    let key_file = out_dir.join("svid.key");
    let key = pem_blocks(
        &std::fs::read_to_string(&key_file).expect("svid.key"),
        "PRIVATE KEY",
    );
    let bundle = pem_blocks(
        &std::fs::read_to_string(out_dir.join("bundle.pem")).expect("bundle.pem"),
        "CERTIFICATE",
    );
    let mode = std::fs::metadata(&key_file)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "svid.key mode {mode:o}");
    assert!(!chain.is_empty() && key.len() == 1 && !bundle.is_empty());
    let parsed = spiffe::X509Svid::parse_from_der(&chain.concat(), &key[0])
        .expect("the written chain and key form a valid X.509-SVID");
    assert_eq!(parsed.spiffe_id().to_string(), me);
    spiffe::X509Bundle::parse_from_der(TD.parse().expect("td"), &bundle.concat())
        .expect("the written bundle parses");

    // JWT-SVIDs: fetch, validate for the right audience, refuse the wrong one.
    let t = Instant::now();
    let token = stdout(&api(&endpoint, &["fetch", "jwt", "--audience", "db"]));
    eprintln!("`sigil api fetch jwt`: {} ms", t.elapsed().as_millis());
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert_eq!(token.lines().count(), 1);
    let t = Instant::now();
    let valid = stdout(&api(
        &endpoint,
        &["validate", "jwt", "--audience", "db", "--svid", token],
    ));
    eprintln!("`sigil api validate jwt`: {} ms", t.elapsed().as_millis());
    assert!(
        valid.contains(&format!("SPIFFE ID        : {me}")),
        "{valid}"
    );
    assert!(valid.contains("\"sub\""), "{valid}");
    let valid = json(&api(
        &endpoint,
        &[
            "validate",
            "jwt",
            "--audience",
            "db",
            "--svid",
            token,
            "--json",
        ],
    ));
    assert_eq!(valid["spiffe_id"], me.as_str());
    assert_eq!(valid["claims"]["sub"], me.as_str());
    let aud = &valid["claims"]["aud"];
    assert!(
        aud == "db" || aud.as_array().is_some_and(|a| a.iter().any(|v| v == "db")),
        "{valid}"
    );
    let err = one_line_error(&api(
        &endpoint,
        &["validate", "jwt", "--audience", "other", "--svid", token],
    ));
    eprintln!("wrong audience: {err}");
    let err = one_line_error(&api(
        &endpoint,
        &[
            "validate",
            "jwt",
            "--audience",
            "db",
            "--svid",
            "not.a.token",
        ],
    ));
    eprintln!("garbage token: {err}");
    let multi = json(&api(
        &endpoint,
        &[
            "fetch",
            "jwt",
            "--audience",
            "db",
            "--audience",
            "cache",
            "--spiffe-id",
            &me,
            "--json",
        ],
    ));
    let jwt = &multi["svids"][0];
    assert_eq!(jwt["spiffe_id"], me.as_str(), "{multi}");
    assert!(jwt["expires_at_secs"].as_u64().expect("exp") > now);
    let err = one_line_error(&api(
        &endpoint,
        &[
            "fetch",
            "jwt",
            "--audience",
            "db",
            "--spiffe-id",
            &format!("spiffe://{TD}/not-mine"),
        ],
    ));
    assert!(err.contains("no identity issued"), "{err}");

    // Another uid with no entry is refused while this process keeps its SVID.
    second_uid(d, &plane.workload, &me);

    // watch: the first update at once, then one pushed when a new entry is created.
    let t = Instant::now();
    let mut watch = Watch::start(&endpoint);
    let first = watch.next_line(&|| plane.agent().log());
    eprintln!(
        "`sigil api watch` first line after {} ms: {first}",
        t.elapsed().as_millis()
    );
    assert!(
        first.contains(&me) && first.contains("expires") && first.starts_with("20"),
        "{first}"
    );
    let second = format!("spiffe://{TD}/second");
    let t = Instant::now();
    let second_entry = create_entry(&plane.server.admin, &second, &plane.agent_id, uid, "");
    let update = watch.next_line(&|| plane.agent().log());
    eprintln!(
        "`sigil api watch` pushed update {} ms after `entry create`: {update}",
        t.elapsed().as_millis()
    );
    assert!(update.contains(&me) && update.contains(&second), "{update}");
    // Every identity gone: one line saying so, and the watch keeps running.
    stdout(&sigil(&[
        "entry",
        "delete",
        "--admin-socket",
        &plane.server.admin,
        "--entry-id",
        &first_entry,
        "--entry-id",
        &second_entry,
    ]));
    let gone = watch.next_line(&|| plane.agent().log());
    assert!(gone.contains("no identity issued"), "{gone}");
    assert!(
        matches!(watch.child.try_wait(), Ok(None)),
        "watch still running"
    );
    drop(watch);
    drop(plane);
}

/// `sigil api fetch x509` as uid 65534 (no entry): refused with a clear message; root still
/// gets its SVID. Skipped unless root with `setpriv`.
fn second_uid(dir: &Path, workload: &Path, me: &str) {
    let socket = workload.to_str().expect("utf8");
    let t = Instant::now();
    let Some(out) = common::sigil_as_nobody(
        dir,
        &["api", "fetch", "x509", "--socket", socket],
        CALL_LIMIT,
    ) else {
        return;
    };
    let err = one_line_error(&out);
    eprintln!(
        "uid {NOBODY} refused in {} ms: {}",
        t.elapsed().as_millis(),
        err.trim()
    );
    assert!(
        err.contains("no identity issued for this process")
            && err.contains(&format!("uid {NOBODY}")),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let mine = json(&api(
        &format!("unix:{}", workload.display()),
        &["fetch", "x509", "--json"],
    ));
    assert_eq!(mine["svids"][0]["spiffe_id"], me, "root keeps its SVID");
}

/// Unmodified py-spiffe 0.3.2 (grpc-python underneath, which names the socket path as the
/// HTTP/2 `:authority`) against a real agent: X.509-SVID, X.509 context, X.509 bundles,
/// JWT-SVID, JWT bundles, validation locally and through the agent, a wrong audience rejected
/// by both, and repeated calls on one connection. The checks live in `pyspiffe_interop.py`.
#[test]
fn py_spiffe_against_a_real_agent() {
    let Some(python) = pyspiffe_python() else {
        eprintln!(
            "skipped: SIGIL_PYSPIFFE_PYTHON is not set (scripts/test.sh installs py-spiffe into a venv and sets it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::start(SIGIL, dir.path(), TD, WAIT);
    let me = format!("spiffe://{TD}/python");
    create_entry(&plane.server.admin, &me, &plane.agent_id, my_uid(), "py");
    let endpoint = format!("unix://{}", plane.workload.display());
    assert!(
        wait_for(WAIT, || api(&endpoint, &["fetch", "x509"]).status.success()),
        "no SVID for this uid: {}",
        plane.agent().log()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pyspiffe_interop.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(&plane.workload)
        .arg(TD)
        .arg(&me)
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = run_bounded(&mut cmd, CALL_LIMIT);
    assert!(
        out.status.success(),
        "py-spiffe interop failed: {}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        plane.agent().log()
    );
    let seen = json(&out);
    eprintln!(
        "py-spiffe 0.3.2 interop passed in {} ms: {seen}",
        started.elapsed().as_millis()
    );
    assert_eq!(seen["x509_spiffe_id"], me.as_str());
    assert_eq!(seen["jwt_spiffe_id"], me.as_str());
    assert!(seen["x509_authorities"].as_u64().expect("count") >= 1);
    assert!(seen["jwt_authorities"].as_u64().expect("count") >= 1);
    let local = seen["wrong_audience_local"].as_str().expect("local");
    assert!(
        local.starts_with("InvalidTokenError") && local.to_lowercase().contains("audience"),
        "{local}"
    );
    let agent = seen["wrong_audience_agent"].as_str().expect("agent");
    assert!(
        agent.starts_with("ValidateJwtSvidError") && agent.contains("audience"),
        "{agent}"
    );
    assert_eq!(seen["repeated_fetches"], 20);
}

/// The `greeter` example (built by `cargo test` next to the test binaries).
fn greeter_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples/greeter");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds it; with a target filter run `cargo build -p node --example greeter` first",
        bin.display()
    );
    bin
}

fn greeter(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(greeter_bin());
    cmd.args(args).env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    cmd
}

/// examples/greeter.rs: two workloads authenticate each other with mutual TLS using their
/// X.509-SVIDs (rustls + a SPIFFE verifier) and the client calls the server with a JWT-SVID
/// whose audience is the server's ID; each prints the peer's SPIFFE ID. A client the server
/// does not allow is refused, and a client expecting another server ID refuses the server.
#[test]
fn greeter_example_does_mtls_and_a_jwt_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::start(SIGIL, dir.path(), TD, WAIT);
    let uid = my_uid();
    let server_id = format!("spiffe://{TD}/greeter-server");
    let client_id = format!("spiffe://{TD}/greeter-client");
    let stranger_id = format!("spiffe://{TD}/stranger");
    for (id, hint) in [
        (&server_id, "server"),
        (&client_id, "client"),
        (&stranger_id, "stranger"),
    ] {
        create_entry(&plane.server.admin, id, &plane.agent_id, uid, hint);
    }
    let endpoint = format!("unix://{}", plane.workload.display());
    assert!(
        wait_for(WAIT, || {
            let out = api(&endpoint, &["fetch", "x509", "--json"]);
            out.status.success() && json(&out)["svids"].as_array().is_some_and(|s| s.len() == 3)
        }),
        "three SVIDs: {}",
        plane.agent().log()
    );

    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let server_log = dir.path().join("greeter-server.log");
    let mut server = greeter(
        &endpoint,
        &[
            "server", "--listen", &listen, "--svid", &server_id, "--allow", &client_id,
        ],
    );
    server
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&server_log).expect("log"))
        .stderr(Stdio::inherit());
    let server = Proc::from_child(server.spawn().expect("spawn greeter server"), server_log);
    assert!(
        wait_for(WAIT, || server.log().contains("listening on")),
        "greeter server up: {}",
        server.log()
    );

    let started = Instant::now();
    let out = run_bounded(
        &mut greeter(
            &endpoint,
            &[
                "client",
                "--connect",
                &listen,
                "--server-id",
                &server_id,
                "--svid",
                &client_id,
            ],
        ),
        CALL_LIMIT,
    );
    let said = stdout(&out);
    eprintln!(
        "greeter client ({} ms):\n{said}greeter server:\n{}",
        started.elapsed().as_millis(),
        server.log()
    );
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("mTLS peer: {server_id}")), "{said}");
    assert!(
        said.contains(&format!("hello {client_id} (JWT-SVID subject {client_id})")),
        "{said}"
    );
    assert!(
        wait_for(WAIT, || server.log().contains(&format!(
            "JWT-SVID subject: {client_id} (audience {server_id})"
        ))),
        "{}",
        server.log()
    );
    assert!(server.log().contains(&format!("mTLS peer: {client_id}")));

    // Not on the server's --allow list: the handshake fails on both sides.
    let out = run_bounded(
        &mut greeter(
            &endpoint,
            &[
                "client",
                "--connect",
                &listen,
                "--server-id",
                &server_id,
                "--svid",
                &stranger_id,
            ],
        ),
        CALL_LIMIT,
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        wait_for(WAIT, || server
            .log()
            .contains(&format!("{stranger_id} is not authorized here"))),
        "{}",
        server.log()
    );

    // The client wants another server: it refuses this one before sending its JWT-SVID.
    let out = run_bounded(
        &mut greeter(
            &endpoint,
            &[
                "client",
                "--connect",
                &listen,
                "--server-id",
                &stranger_id,
                "--svid",
                &client_id,
            ],
        ),
        CALL_LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{server_id} is not authorized here")),
        "{err}"
    );
    drop(server);
}
