//! Helpers shared by the end-to-end tests that run real `sigil server` and `sigil agent`
//! processes (each test file that uses them declares `mod common;`).

#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the `sigil` binary to completion.
pub fn sigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(args)
        .output()
        .expect("run sigil")
}

/// The JSON a successful `sigil … --json` printed.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// A UDP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` every 50 ms until it holds or `limit` passed; its last answer.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A child process killed on drop; its stderr goes to `log`.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// `sigil <what> --config <config>`.
    pub fn start(what: &str, config: &Path, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sigil"))
            .args([what, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn sigil");
        Proc {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM; true if it exits with 0 within 20 s.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let ok = wait_for(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Waits up to `limit` for the process to exit by itself; its success, `None` if it is
    /// still running (then it is killed).
    pub fn exit_within(&mut self, limit: Duration) -> Option<bool> {
        let mut child = self.child.take()?;
        let exited = wait_for(limit, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        child.wait().ok().map(|s| s.success())
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This process's uid.
pub fn my_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("uid")
}

/// Creates an entry for `uid` under `parent`; its ID.
pub fn create_entry(sock: &str, spiffe_id: &str, parent: &str, uid: u32) -> String {
    let out = json(&sigil(&[
        "entry",
        "create",
        "--admin-socket",
        sock,
        "--spiffe-id",
        spiffe_id,
        "--parent-id",
        parent,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--json",
    ]));
    out["id"]
        .as_str()
        .unwrap_or_else(|| panic!("entry id in {out}"))
        .to_owned()
}

/// The uid of `nobody`, the second workload uid of the end-to-end tests.
pub const NOBODY: u32 = 65534;

/// Runs `sigil ARGS` as uid/gid [`NOBODY`] (through `setpriv`), from a copy of the binary in
/// `dir/bin` (the build tree may not be traversable by other users). `None`, saying why, when
/// the test does not run as root, `setpriv` is missing, or `dir` is not reachable by others.
pub fn sigil_as_nobody(dir: &Path, args: &[&str], limit: Duration) -> Option<Output> {
    use std::os::unix::fs::PermissionsExt;
    if my_uid() != 0 {
        eprintln!("note: not root; skipping the second-uid check");
        return None;
    }
    let setpriv_ok = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !setpriv_ok {
        eprintln!("note: setpriv not found; skipping the second-uid check");
        return None;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            eprintln!(
                "note: {} is not traversable by other users; skipping the second-uid check",
                a.display()
            );
            return None;
        }
    }
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = bin_dir.join("sigil");
    if !copy.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_sigil"), &copy).expect("copy the binary");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
        ])
        .arg(&copy)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .current_dir(&bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setpriv");
    let done = wait_for(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "sigil {args:?} as uid {NOBODY} did not finish within {limit:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(child.wait_with_output().expect("output"))
}

/// Runs the `sigil` binary to completion with extra environment variables.
pub fn sigil_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sigil"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run sigil")
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Sends `signal` (e.g. `KILL`, `INT`) to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
