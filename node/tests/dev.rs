//! `sigil dev` end to end: a 3-node plane and its agent as real child processes of a real `sigil
//! dev` process. It waits for the printed next steps, fetches an X.509-SVID and a JWT-SVID
//! through `DIR/agent.sock` as this uid, SIGKILLs node 2 (reported; a new entry created through
//! node 1 still reaches the workload), checks a second `sigil dev` on the same dir is refused,
//! stops the plane with SIGINT (exit 0, every child gone, pid files and sockets removed), then
//! resumes the same dir (same trust domain, agent ID and entries, the old CAs still in the
//! bundle; node 3, its server SVID gone as if expired, rejoins with a fresh token) and stops it
//! again; finally, with two of three SVIDs gone, a re-run is refused before anything starts.
//!
//! Every wait is bounded; a drop guard interrupts `sigil dev` and then SIGKILLs every pid left in
//! the dir's pid files, so a failing run leaves nothing behind. Timings are printed with
//! `eprintln!` (run with `--nocapture`).
#![allow(clippy::disallowed_methods)] // tests use threads and wall-clock deadlines

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    json, log_tail, my_uid, process_alive, send_signal, sigil, sigil_env, wait_for, NOBODY, SIGIL,
};

const TD: &str = "dev.sigil.test";
/// Bound on a start-up until the next steps are printed.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Bound on `sigil dev` exiting after SIGINT (it gives each child 10 s, then SIGKILL).
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Bound on something the running plane should do soon.
const WAIT: Duration = Duration::from_secs(20);

/// A running `sigil dev`; its stdout and stderr lines are collected.
struct Dev {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Dev {
    fn start(dir: &Path, extra: &[&str]) -> Dev {
        let mut child = Command::new(SIGIL)
            .arg("dev")
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sigil dev");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Dev {
            child: Some(child),
            lines,
            dir: dir.to_path_buf(),
        }
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The first line satisfying `f`, waiting up to `limit` (panics with the output otherwise,
    /// or when `sigil dev` exits first).
    fn wait_line(&mut self, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| f(l))
                .cloned()
            {
                return l;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "sigil dev exited ({status}) early; output:\n{}",
                        self.output()
                    );
                }
            }
            assert!(
                start.elapsed() < limit,
                "no such line within {limit:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, then its exit status within `limit`.
    fn interrupt(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        send_signal(child.id(), "INT");
        let done = wait_for(limit, || matches!(child.try_wait(), Ok(Some(_))));
        if !done {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sigil dev did not exit within {limit:?} after SIGINT; output:\n{}",
                self.output()
            );
        }
        child.wait().expect("status")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "INT");
            if !wait_for(STOP_LIMIT, || matches!(child.try_wait(), Ok(Some(_)))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for pid in pid_files(&self.dir).into_iter().map(|(_, pid)| pid) {
            send_signal(pid, "KILL");
        }
        if std::thread::panicking() {
            eprintln!("---- sigil dev output ----\n{}", self.output());
            for log in ["node-1/log", "node-2/log", "node-3/log", "agent/log"] {
                eprintln!(
                    "---- {log} (last lines) ----\n{}",
                    log_tail(&self.dir.join(log), 40)
                );
            }
        }
    }
}

/// Every pid file under `dir` that exists: (path, pid).
fn pid_files(dir: &Path) -> Vec<(PathBuf, u32)> {
    [
        "dev.pid",
        "node-1/pid",
        "node-2/pid",
        "node-3/pid",
        "agent/pid",
    ]
    .iter()
    .map(|p| dir.join(p))
    .filter_map(|p| {
        let pid = std::fs::read_to_string(&p).ok()?.trim().parse().ok()?;
        Some((p, pid))
    })
    .collect()
}

/// The value after `prefix` in `line`, up to the next space.
fn word_after(line: &str, prefix: &str) -> String {
    line.split_once(prefix)
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .unwrap_or_default()
        .to_owned()
}

/// The SPIFFE IDs `sigil api fetch x509` gets on `socket` as this process.
fn fetched_ids(socket: &str) -> Result<BTreeSet<String>, String> {
    let out = sigil_env(
        &["api", "fetch", "x509", "--json", "--timeout", "5s"],
        &[("SPIFFE_ENDPOINT_SOCKET", socket)],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["svids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The bundle's CA certificates (PEM blocks) as node 1 serves them.
fn bundle_cas(admin: &str) -> BTreeSet<String> {
    let out = sigil(&["bundle", "show", "--admin-socket", admin, "--format", "pem"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn dev_runs_a_plane_survives_a_node_kill_stops_cleanly_and_resumes() {
    let test_start = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("dev");
    let dir_s = dir.to_str().expect("utf8").to_owned();
    let uid = my_uid();
    let workload = format!("spiffe://{TD}/dev/uid/{uid}");
    let admin1 = format!("{dir_s}/node-1/admin.sock");

    // First run: a new plane.
    let t = Instant::now();
    let mut dev = Dev::start(&dir, &["--nodes", "3"]);
    dev.wait_line(START_LIMIT, |l| l.starts_with("kill $(cat "));
    let cold = t.elapsed();
    let out = dev.output();
    assert!(
        out.contains("starting trust domain dev.sigil.test with 3 server nodes"),
        "{out}"
    );
    for step in [
        "node 1 up (leader, CA published) in",
        "node 2 joined (voter, CA published) in",
        "node 3 joined (voter, CA published) in",
        "workload entry registered:",
    ] {
        assert!(out.contains(step), "{step}: {out}");
    }
    let export = dev.wait_line(WAIT, |l| l.starts_with("export SPIFFE_ENDPOINT_SOCKET="));
    let socket = export
        .trim_start_matches("export SPIFFE_ENDPOINT_SOCKET=")
        .to_owned();
    assert_eq!(socket, format!("unix://{dir_s}/agent.sock"));
    let agent_id = word_after(
        &dev.wait_line(WAIT, |l| l.starts_with("agent attested as ")),
        "agent attested as ",
    );
    assert!(
        agent_id.starts_with(&format!("spiffe://{TD}/sigil/agent/x509pop/")),
        "{agent_id}"
    );
    let create_line = dev.wait_line(WAIT, |l| l.contains(" entry create --admin-socket "));
    assert!(
        create_line.contains(&admin1) && create_line.contains(&agent_id),
        "{create_line}"
    );
    assert!(dir.join("node-1/server.toml").exists() && dir.join("agent/agent.toml").exists());

    // The workload's identities, as printed.
    let ids = fetched_ids(&socket).expect("fetch x509");
    assert!(ids.contains(&workload), "{ids:?}");
    let jwt = json(&sigil_env(
        &["api", "fetch", "jwt", "--audience", "test", "--json"],
        &[("SPIFFE_ENDPOINT_SOCKET", &socket)],
    ));
    assert_eq!(jwt["svids"][0]["spiffe_id"], workload.as_str(), "{jwt}");
    assert!(jwt["svids"][0]["token"]
        .as_str()
        .is_some_and(|t| t.len() > 20));
    let bundle_before = bundle_cas(&admin1);
    assert_eq!(bundle_before.len(), 3, "one CA per node");
    let pids: Vec<u32> = pid_files(&dir).into_iter().map(|(_, p)| p).collect();
    assert_eq!(pids.len(), 5, "dev, 3 nodes, agent: {pids:?}");

    // Another user's workload (uid 65534, as README's quick start describes): refused until an
    // entry names its uid, then served that identity, through the same socket.
    let nobody_fetch = || {
        common::sigil_as_nobody(
            tmp.path(),
            &["api", "fetch", "x509", "--json", "--socket", &socket],
            Duration::from_secs(20),
        )
    };
    if let Some(out) = nobody_fetch() {
        assert!(!out.status.success(), "uid {NOBODY} has no entry yet");
        let other = format!("spiffe://{TD}/nobody");
        let created = sigil(&[
            "entry",
            "create",
            "--admin-socket",
            &admin1,
            "--spiffe-id",
            &other,
            "--parent-id",
            &agent_id,
            "--selector",
            &format!("unix:uid:{NOBODY}"),
        ]);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let mut got = String::new();
        assert!(
            wait_for(WAIT, || {
                let out = nobody_fetch().expect("ran before");
                got = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                out.status.success() && got.contains(&other)
            }),
            "uid {NOBODY} never got {other}: {got}"
        );
        assert!(
            !fetched_ids(&socket).expect("mine").contains(&other),
            "not for this uid"
        );
        eprintln!("uid {NOBODY} got {other} through {socket}");
    }

    // A second sigil dev on the same dir is refused.
    let second = sigil(&["dev", "--data-dir", &dir_s]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another sigil dev is running"), "{err}");

    // SIGKILL node 2: reported, and the cluster carries on.
    let node2: u32 = std::fs::read_to_string(dir.join("node-2/pid"))
        .expect("node 2 pid")
        .trim()
        .parse()
        .expect("pid");
    send_signal(node2, "KILL");
    dev.wait_line(WAIT, |l| {
        l == "node 2 exited (killed by signal 9); the cluster carries on with 2 of 3 nodes"
    });
    assert!(!dir.join("node-2/pid").exists());
    let second_id = format!("{workload}/second");
    let t = Instant::now();
    let created = wait_for(WAIT, || {
        sigil(&[
            "entry",
            "create",
            "--admin-socket",
            &admin1,
            "--spiffe-id",
            &second_id,
            "--parent-id",
            &agent_id,
            "--selector",
            &format!("unix:uid:{uid}"),
        ])
        .status
        .success()
    });
    assert!(created, "entry create through node 1 after node 2 died");
    let reached = wait_for(WAIT, || {
        fetched_ids(&socket).is_ok_and(|ids| ids.contains(&second_id))
    });
    assert!(reached, "the new entry's SVID reached the workload");
    let propagation = t.elapsed();

    // Ctrl-C: everything stops, nothing is left behind.
    let t = Instant::now();
    let status = dev.interrupt(STOP_LIMIT);
    let stop = t.elapsed();
    assert!(status.success(), "{status}: {}", dev.output());
    dev.wait_line(Duration::from_secs(5), |l| l == "stopped");
    for pid in &pids {
        assert!(!process_alive(*pid), "process {pid} still runs");
    }
    assert!(pid_files(&dir).is_empty(), "{:?}", pid_files(&dir));
    for socket in [
        "agent.sock",
        "agent/admin.sock",
        "node-1/admin.sock",
        "node-2/admin.sock",
        "node-3/admin.sock",
    ] {
        assert!(!dir.join(socket).exists(), "{socket} left behind");
    }
    drop(dev);

    // Second run: the same plane comes back. Node 3 lost its server SVID (as if it had expired
    // while stopped), so it rejoins with a fresh server join token.
    let token_before = std::fs::read_to_string(dir.join("node-3/server.toml")).expect("toml");
    std::fs::remove_file(dir.join("node-3/identity/svid.bin")).expect("node 3's SVID");
    let t = Instant::now();
    let mut dev = Dev::start(&dir, &[]);
    dev.wait_line(START_LIMIT, |l| l.starts_with("kill $(cat "));
    let resume = t.elapsed();
    let out = dev.output();
    assert!(
        out.contains("resuming trust domain dev.sigil.test with 3 server nodes"),
        "{out}"
    );
    for step in [
        "node 1 restarted (",
        "node 2 restarted (",
        "node 3 rejoined (voter, CA published) in",
    ] {
        assert!(out.contains(step), "{step}: {out}");
    }
    let token_after = std::fs::read_to_string(dir.join("node-3/server.toml")).expect("toml");
    assert!(
        token_after.contains("[join]") && token_after != token_before,
        "a fresh [join] section: {token_after}"
    );
    assert!(out.contains("workload entry already registered:"), "{out}");
    let again = word_after(
        &dev.wait_line(WAIT, |l| l.starts_with("agent attested as ")),
        "agent attested as ",
    );
    assert_eq!(again, agent_id, "the same agent ID");
    let ids = fetched_ids(&socket).expect("fetch x509 after resume");
    assert!(
        ids.contains(&workload) && ids.contains(&second_id),
        "entries survive: {ids:?}"
    );
    let bundle_after = bundle_cas(&admin1);
    assert!(
        bundle_before.is_subset(&bundle_after),
        "the earlier CAs stay in the bundle (restarted nodes add new ones)"
    );
    let status = dev.interrupt(STOP_LIMIT);
    assert!(status.success(), "{status}: {}", dev.output());
    assert!(pid_files(&dir).is_empty(), "{:?}", pid_files(&dir));
    drop(dev);

    // Without a majority of valid server SVIDs the plane cannot restart: refused up front.
    for node in ["node-1", "node-2"] {
        std::fs::remove_file(dir.join(node).join("identity/svid.bin")).expect("SVID");
    }
    let refused = sigil(&["dev", "--data-dir", &dir_s]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("cannot resume") && err.contains("nodes 1, 2") && err.contains("rm -r"),
        "{err}"
    );
    assert!(
        pid_files(&dir).is_empty(),
        "nothing started: {:?}",
        pid_files(&dir)
    );

    eprintln!(
        "sigil dev: cold start {:.1} s, entry → workload after a node kill {} ms, stop {:.1} s, resume {:.1} s, whole test {:.1} s",
        cold.as_secs_f64(),
        propagation.as_millis(),
        stop.as_secs_f64(),
        resume.as_secs_f64(),
        test_start.elapsed().as_secs_f64()
    );
}
