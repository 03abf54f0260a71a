//! `sigil dev`: a whole local plane in one command — N server nodes (1, 3 or 5) and one agent,
//! **each its own child process** (`sigil server --config DIR/node-<i>/server.toml`, `sigil
//! agent --config DIR/agent/agent.toml`, spawned from this very binary), on loopback, under one
//! data dir `DIR` (default `/tmp/sigil-dev-<uid>`). It writes real configuration files there so
//! they double as examples, and runs the same flows an operator would (README "Growing the
//! cluster", "x509pop"):
//!
//! 1. node 1 bootstraps the trust domain; nodes 2..N join one at a time with a server join token
//!    generated through node 1's admin socket (`[join] token/seeds/bundle_sha256`), each awaited
//!    until it is a voter with a published CA;
//! 2. the agent attests with **x509pop**: at first run `sigil dev` makes a dev CA (the servers'
//!    `[x509pop] ca_bundle`) and one agent certificate, then throws the CA key away. The agent's
//!    SPIFFE ID is therefore the same on every run, and it re-attests by itself whenever its
//!    agent SVID expired — no token to renew;
//! 3. `spiffe://<td>/dev/uid/<uid>` is registered for the invoking uid under the agent (once);
//! 4. it waits until the agent serves that X.509-SVID, prints what to try next, and then watches
//!    its children: an exit is reported, never restarted. Ctrl-C, SIGTERM or SIGHUP stop the
//!    agent, then the nodes (SIGTERM, at most [`STOP_WAIT`], then SIGKILL), remove the pid files
//!    and leftover sockets, and print `stopped`. The children are spawned in process groups of
//!    their own (a terminal's Ctrl-C reaches only `sigil dev`, which stops them in order); every
//!    error path stops what was started (a drop guard).
//!
//! **Re-running** on the same DIR resumes it: the stored configs and data are reused. A node
//! whose stored server SVID is still valid restarts from its identity files; one whose SVID
//! expired (it was stopped for longer than the SVID's life, 1 h) gets a fresh server join token
//! through a running node, written into its `[join]` section before it starts (what the
//! server's own error asks an operator to do). That needs a running majority: when fewer than a
//! majority of the nodes hold a valid SVID, the plane cannot restart, and `sigil dev` says so
//! before starting anything. The agent's `bundle_sha256` is refreshed from the cluster on every
//! run. A DIR holding anything but a `sigil dev` plane (no `sigil-dev.toml`) is refused
//! untouched, and so is a DIR another `sigil dev` runs on (live processes in its pid files).
//!
//! Process orchestration is production-shell code: it reads the clocks (to time steps and judge
//! stored SVIDs) and spawns processes.
//!
//! Files: `mod.rs` (this: [`run_dev`], [`DevOptions`], [`DevError`], the bounds and shared
//! helpers), `plan.rs` (the [`Layout`] of DIR, the marker, resolving options and DIR into a
//! plan), `lock.rs` (`DIR/dev.pid` against a second `sigil dev`), `files.rs` (the files written
//! under DIR: configs, x509pop certificates, [`with_join`], [`with_pin`]), `procs.rs` (spawning,
//! watching and stopping the child processes), `calls.rs` (admin and Workload API calls to the
//! children), `start.rs` (bringing the plane up, resuming included), `next_steps.rs` (what is
//! printed once it is up), `watch.rs` (signals, and reporting exits until one arrives).

mod calls;
mod files;
mod lock;
mod next_steps;
mod plan;
mod procs;
mod start;
mod watch;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rt::admin;

pub use files::{with_join, with_pin};
pub use plan::Layout;

use files::{create_private_dir, set_up_files};
use lock::DirLock;
use next_steps::print_next_steps;
use plan::resolve;
use procs::Procs;
use start::start;
use watch::{monitor, Signals};

/// Server nodes when `--nodes` is not given (and DIR holds no plane yet).
pub const NODES_DEFAULT: u8 = 3;
/// The trust domain when `--trust-domain` is not given (and DIR holds no plane yet).
pub const TRUST_DOMAIN_DEFAULT: &str = "dev.sigil.test";
/// The file that marks a directory as a `sigil dev` plane (trust domain, node count).
pub const MARKER_FILE: &str = "sigil-dev.toml";
/// Longest Unix socket path in bytes (`sun_path` is 108 bytes with the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;
/// Admin sockets are bound under a temporary name `.<name>.<pid>-<n>/s` next to the final one
/// (see [`admin::bind_admin_socket`]): that many bytes longer, at most.
pub const SOCKET_STAGING_EXTRA: usize = 14;
/// Bound on a child's clean exit after SIGTERM, before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(10);
/// Bound on a node coming up (admin socket, leader, its CA published).
pub const NODE_WAIT: Duration = Duration::from_secs(60);
/// Bound on the agent attesting.
pub const AGENT_WAIT: Duration = Duration::from_secs(30);
/// Bound on the workload SVID reaching the Workload API.
pub const SVID_WAIT: Duration = Duration::from_secs(30);
/// A stored server SVID with less life left than this counts as expired (the server itself
/// reuses one with at least 60 s left).
pub const SVID_MARGIN: Duration = Duration::from_secs(120);

/// What `sigil dev` was asked for. `None`: the default, or what DIR was made with.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// Server nodes: 1, 3 or 5.
    pub nodes: Option<u8>,
    /// The data dir (default `/tmp/sigil-dev-<uid>`).
    pub data_dir: Option<PathBuf>,
    /// The trust domain.
    pub trust_domain: Option<String>,
}

/// Why `sigil dev` stopped: one line saying what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevError(String);

impl std::fmt::Display for DevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DevError {}

fn fail(message: impl Into<String>) -> DevError {
    DevError(message.into())
}

fn io_fail(what: &str, path: &Path, e: &std::io::Error) -> DevError {
    fail(format!(
        "{what} {}: {}",
        path.display(),
        admin::io_text(&e.to_string())
    ))
}

/// Prints one line on stdout (a closed stdout is not an error worth stopping the plane for).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[allow(clippy::disallowed_methods)] // the production shell times its own start-up steps for display
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)] // the production shell judges stored SVIDs and new CAs by the wall clock
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn took(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// This process's user ID (the owner of `/proc/self`).
fn own_uid() -> Result<u32, DevError> {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| {
            fail(format!(
                "cannot tell this process's uid from /proc/self: {e}"
            ))
        })
}

/// `s` as one shell word (quoted only when needed).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A TOML basic string (JSON's string escapes are valid TOML).
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Runs `sigil dev` until Ctrl-C, SIGTERM or SIGHUP (or an error). Progress and next steps go to
/// stdout; the error, if any, is one line for the caller to print.
pub async fn run_dev(opts: DevOptions) -> Result<(), DevError> {
    let mut signals = Signals::new()?;
    let exe = std::env::current_exe().map_err(|e| {
        fail(format!(
            "cannot find this program's path to run its children: {e}"
        ))
    })?;
    let uid = own_uid()?;
    let plan = resolve(&opts, uid)?;
    create_private_dir(plan.layout.dir())?;
    // Other users' workloads must reach DIR/agent.sock (0666; attestation decides what they
    // get): the top directory is traversable, what is inside node-<i>/ and agent/ stays 0700.
    std::fs::set_permissions(plan.layout.dir(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_fail("cannot set the permissions of", plan.layout.dir(), &e))?;
    let _lock = DirLock::take(&plan.layout)?;
    say(&format!(
        "sigil dev: {} trust domain {} with {} server node{} in {}",
        if plan.resume { "resuming" } else { "starting" },
        plan.trust_domain,
        plan.nodes,
        if plan.nodes == 1 { "" } else { "s" },
        plan.layout.dir().display()
    ));
    set_up_files(&plan)?;
    let mut procs = Procs::new(plan.layout.clone(), exe.clone(), plan.nodes);
    let started = tokio::select! {
        r = start(&plan, &mut procs) => Some(r),
        why = signals.recv() => {
            say(&format!("{why} during start-up"));
            None
        }
    };
    let ready = match started {
        Some(Ok(ready)) => ready,
        Some(Err(e)) => {
            procs.stop(false);
            return Err(e);
        }
        None => {
            procs.stop(true);
            say("stopped");
            return Ok(());
        }
    };
    print_next_steps(&plan, &ready, &exe);
    let why = monitor(&mut procs, &mut signals, plan.nodes).await;
    match why {
        Some(why) => {
            say(&format!("{why}: stopping"));
            procs.stop(true);
            say("stopped");
            Ok(())
        }
        None => {
            procs.stop(false);
            Err(fail(format!(
                "every process of the plane has exited; see the logs under {}",
                plan.layout.dir().display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("/tmp/sigil-dev-0/x.sock"),
            "/tmp/sigil-dev-0/x.sock"
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
