//! Fixtures over the `sigil` CLI: its JSON output, registration entries, what a workload is
//! served, and a second uid.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::proc::{my_uid, run, try_run_bounded, Proc};
use crate::wait::{now, wait_for};

/// The uid of `nobody`, the second workload uid of the end-to-end tests.
pub const NOBODY: u32 = 65534;

/// The JSON a successful `sigil … --json` printed; panics (with its stderr) otherwise.
pub fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The JSON a successful run printed, `None` on failure or other output.
pub fn json_of(out: &Output) -> Option<Value> {
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The arguments of `sigil entry create` for an entry `spiffe_id` under `parent` selecting
/// `unix:uid:UID`, through the admin socket `admin`, answering in JSON.
pub fn entry_create_args(admin: &str, spiffe_id: &str, parent: &str, uid: u32) -> Vec<String> {
    [
        "entry",
        "create",
        "--admin-socket",
        admin,
        "--spiffe-id",
        spiffe_id,
        "--parent-id",
        parent,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--json",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Creates an entry ([`entry_create_args`]); its ID.
pub fn create_entry(
    bin: impl AsRef<OsStr>,
    admin: &str,
    spiffe_id: &str,
    parent: &str,
    uid: u32,
) -> String {
    let args = entry_create_args(admin, spiffe_id, parent, uid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = json(&run(bin, &args));
    out["id"]
        .as_str()
        .unwrap_or_else(|| panic!("entry id in {out}"))
        .to_owned()
}

/// The SPIFFE IDs the agent on Workload API socket `sock` serves this process (`sigil api fetch
/// x509`, 2 s timeout); empty on any failure.
pub fn fetched_ids(bin: impl AsRef<OsStr>, sock: &Path) -> Vec<String> {
    let out = run(
        bin,
        &[
            "api",
            "fetch",
            "x509",
            "--json",
            "--timeout",
            "2s",
            "--socket",
            sock.to_str().expect("utf8"),
        ],
    );
    let Some(v) = json_of(&out) else {
        return Vec::new();
    };
    v["svids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["spiffe_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the workload on `sock` is served `id`, for at most `limit` (panics with
/// `agent`'s log otherwise); how long it took.
pub fn wait_served(
    bin: impl AsRef<OsStr>,
    sock: &Path,
    id: &str,
    agent: &Proc,
    limit: Duration,
) -> Duration {
    let bin = bin.as_ref();
    let start = now();
    assert!(
        wait_for(limit, || fetched_ids(bin, sock).iter().any(|s| s == id)),
        "{id} not served within {limit:?}; agent log:\n{}",
        agent.log()
    );
    start.elapsed()
}

/// Runs `BIN ARGS` as uid/gid [`NOBODY`] (through `setpriv`), from a copy of the binary in
/// `dir/bin` (the build tree may not be traversable by other users). `None`, saying why, when
/// this process is not root, `setpriv` is missing, or `dir` is not reachable by others.
pub fn sigil_as_nobody(
    bin: impl AsRef<Path>,
    dir: &Path,
    args: &[&str],
    limit: Duration,
) -> Option<Output> {
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
        std::fs::copy(bin, &copy).expect("copy the binary");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &NOBODY.to_string(),
        "--regid",
        &NOBODY.to_string(),
        "--clear-groups",
    ])
    .arg(&copy)
    .args(args)
    .env_remove("SPIFFE_ENDPOINT_SOCKET")
    .current_dir(&bin_dir);
    let out = try_run_bounded(&mut cmd, limit)
        .unwrap_or_else(|e| panic!("sigil {args:?} as uid {NOBODY}: {e}"));
    Some(out)
}
