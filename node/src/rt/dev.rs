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

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::signal::unix::{signal, Signal, SignalKind};
use wire::admin as pb;
use wire::TrustDomain;
use zeroize::Zeroizing;

use crate::rt::admin;
use crate::rt::config::{AgentFileConfig, ServerFileConfig};
use crate::rt::serve::IdentityFiles;

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
/// Bound on one admin or Workload API call while polling.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// Polling interval while waiting for something.
const POLL: Duration = Duration::from_millis(100);
/// How often running children are checked.
const MONITOR_TICK: Duration = Duration::from_millis(200);
/// Lifetime of the server join tokens `sigil dev` generates (each is used at once).
const JOIN_TOKEN_TTL_SECS: u64 = 900;
/// The first line `sigil dev` writes into a child's log before each start.
const LOG_HEADER: &str = "==== sigil dev: starting ";

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

/// Where everything lives under DIR.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout under `dir` (absolute).
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// DIR itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    fn marker(&self) -> PathBuf {
        self.dir.join(MARKER_FILE)
    }
    fn dev_pid(&self) -> PathBuf {
        self.dir.join("dev.pid")
    }
    fn ca_bundle(&self) -> PathBuf {
        self.dir.join("x509pop-ca.pem")
    }
    /// `DIR/node-<i>`: the node's data dir.
    pub fn node_dir(&self, i: u8) -> PathBuf {
        self.dir.join(format!("node-{i}"))
    }
    fn server_toml(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("server.toml")
    }
    /// `DIR/node-<i>/admin.sock`.
    pub fn admin_socket(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("admin.sock")
    }
    fn node_pid(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("pid")
    }
    fn node_log(&self, i: u8) -> PathBuf {
        self.node_dir(i).join("log")
    }
    fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    fn agent_toml(&self) -> PathBuf {
        self.agent_dir().join("agent.toml")
    }
    /// `DIR/agent.sock`: the Workload API.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    fn agent_admin(&self) -> PathBuf {
        self.agent_dir().join("admin.sock")
    }
    fn agent_cert(&self) -> PathBuf {
        self.agent_dir().join("x509pop.pem")
    }
    fn agent_key(&self) -> PathBuf {
        self.agent_dir().join("x509pop.key")
    }
    fn agent_pid(&self) -> PathBuf {
        self.agent_dir().join("pid")
    }
    fn agent_log(&self) -> PathBuf {
        self.agent_dir().join("log")
    }

    /// Checks that every socket under DIR fits a Unix socket path.
    pub fn check_socket_paths(&self, nodes: u8) -> Result<(), DevError> {
        let mut sockets: Vec<(PathBuf, usize)> = (1..=nodes)
            .map(|i| (self.admin_socket(i), SOCKET_STAGING_EXTRA))
            .collect();
        sockets.push((self.agent_admin(), SOCKET_STAGING_EXTRA));
        sockets.push((self.agent_socket(), 0));
        let longest = sockets
            .iter()
            .map(|(p, extra)| p.as_os_str().len() + extra)
            .max()
            .unwrap_or(0);
        if longest > SOCKET_PATH_MAX {
            let dir_len = self.dir.as_os_str().len();
            let allowed = dir_len.saturating_sub(longest - SOCKET_PATH_MAX);
            return Err(fail(format!(
                "--data-dir {} is too long ({dir_len} bytes): Unix socket paths must stay under 108 bytes, and the sockets under it (e.g. {}, bound through a temporary name {SOCKET_STAGING_EXTRA} bytes longer) would not; use a data dir of at most {allowed} bytes, e.g. /tmp/sigil-dev",
                self.dir.display(),
                self.admin_socket(nodes).display()
            )));
        }
        Ok(())
    }
}

/// `DIR/sigil-dev.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Marker {
    format: u32,
    trust_domain: String,
    nodes: u8,
}

impl Marker {
    fn text(&self) -> String {
        format!(
            "# This directory holds a local sigil plane made by `sigil dev`: {n} server node(s) in\n\
             # node-<i>/ and an agent in agent/. Run `sigil dev --data-dir <this directory>` again\n\
             # to resume it; remove the directory to start over.\n\
             format = {}\ntrust_domain = {}\nnodes = {n}\n",
            self.format,
            toml_string(&self.trust_domain),
            n = self.nodes,
        )
    }
}

/// What this run does, settled before anything is touched.
#[derive(Debug)]
struct Plan {
    layout: Layout,
    trust_domain: TrustDomain,
    nodes: u8,
    /// DIR holds a plane already.
    resume: bool,
    uid: u32,
}

fn resolve(opts: &DevOptions, uid: u32) -> Result<Plan, DevError> {
    if let Some(n) = opts.nodes {
        if ![1, 3, 5].contains(&n) {
            return Err(fail(format!(
                "--nodes {n}: run 1, 3 or 5 server nodes (a Raft cluster wants an odd size)"
            )));
        }
    }
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/sigil-dev-{uid}")));
    if dir.as_os_str().is_empty() {
        return Err(fail("--data-dir: empty path"));
    }
    let dir = std::path::absolute(&dir)
        .map_err(|e| fail(format!("--data-dir {}: {e}", dir.display())))?;
    if dir.to_str().is_none() {
        return Err(fail(format!(
            "--data-dir {}: the path must be valid UTF-8 (it is written into config files)",
            dir.display()
        )));
    }
    let layout = Layout::new(dir.clone());
    let shown = dir.display();
    let marker = match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_fail("cannot inspect --data-dir", &dir, &e)),
        Ok(m) if !m.is_dir() => {
            return Err(fail(format!(
                "--data-dir {shown} exists and is not a directory; pass another --data-dir"
            )))
        }
        Ok(m) => {
            if m.uid() != uid {
                return Err(fail(format!(
                    "--data-dir {shown} belongs to uid {}, not to you (uid {uid}): refusing to use it; pass another --data-dir",
                    m.uid()
                )));
            }
            match std::fs::read_to_string(layout.marker()) {
                Ok(text) => Some(toml::from_str::<Marker>(&text).map_err(|e| {
                    fail(format!(
                        "{}: {} — this file marks a sigil dev plane; if the directory is not one, pass another --data-dir",
                        layout.marker().display(),
                        e.message()
                    ))
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let empty = std::fs::read_dir(&dir)
                        .map_err(|e| io_fail("cannot read --data-dir", &dir, &e))?
                        .next()
                        .is_none();
                    if !empty {
                        return Err(fail(format!(
                            "--data-dir {shown} is not a sigil dev directory (it is not empty and has no {MARKER_FILE}): refusing to touch it; pass another --data-dir, or an empty or new one"
                        )));
                    }
                    None
                }
                Err(e) => return Err(io_fail("cannot read", &layout.marker(), &e)),
            }
        }
    };
    let (trust_domain, nodes, resume) = match marker {
        None => (
            opts.trust_domain
                .clone()
                .unwrap_or_else(|| TRUST_DOMAIN_DEFAULT.to_owned()),
            opts.nodes.unwrap_or(NODES_DEFAULT),
            false,
        ),
        Some(m) => {
            if m.format != 1 || ![1, 3, 5].contains(&m.nodes) {
                return Err(fail(format!(
                    "{}: not a plane this version of sigil dev can run (format {}, {} nodes); pass another --data-dir",
                    layout.marker().display(),
                    m.format,
                    m.nodes
                )));
            }
            if let Some(td) = &opts.trust_domain {
                if *td != m.trust_domain {
                    return Err(fail(format!(
                        "{shown} holds trust domain {}, not {td}: leave out --trust-domain to resume it, or pass another --data-dir for a new one",
                        m.trust_domain
                    )));
                }
            }
            if let Some(n) = opts.nodes {
                if n != m.nodes {
                    return Err(fail(format!(
                        "{shown} holds a plane of {} server node(s), not {n}: leave out --nodes to resume it, or pass another --data-dir for a new one",
                        m.nodes
                    )));
                }
            }
            (m.trust_domain, m.nodes, true)
        }
    };
    let trust_domain: TrustDomain = trust_domain
        .parse()
        .map_err(|e| fail(format!("--trust-domain {trust_domain}: {e}")))?;
    layout.check_socket_paths(nodes)?;
    Ok(Plan {
        layout,
        trust_domain,
        nodes,
        resume,
        uid,
    })
}

fn create_private_dir(path: &Path) -> Result<(), DevError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io_fail("cannot create", path, &e))
}

/// Writes `text` to `path` (mode 0600: a config may hold a join token) through a temporary file.
fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_fail("cannot write", path, &e)
    })
}

fn read_text(path: &Path) -> Result<String, DevError> {
    std::fs::read_to_string(path).map_err(|e| io_fail("cannot read", path, &e))
}

// ---------------------------------------------------------------------------------------------
// Locking DIR against a second `sigil dev`.

/// The pid in `pid_file` if that process is alive and is the one the file was written for
/// (`arg` among its arguments, so a reused pid does not count).
fn live_pid(pid_file: &Path, arg: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    if matches!(state, 'Z' | 'X' | 'x') {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .any(|a| a == arg.as_bytes())
        .then_some(pid)
}

/// `DIR/dev.pid`, removed when dropped.
#[derive(Debug)]
struct DirLock {
    path: PathBuf,
}

impl DirLock {
    fn take(layout: &Layout) -> Result<DirLock, DevError> {
        let mut checks: Vec<(PathBuf, String)> = vec![(layout.dev_pid(), "dev".to_owned())];
        for i in 1..=5u8 {
            checks.push((
                layout.node_pid(i),
                layout.server_toml(i).display().to_string(),
            ));
        }
        checks.push((
            layout.agent_pid(),
            layout.agent_toml().display().to_string(),
        ));
        let mut live = Vec::new();
        for (file, arg) in &checks {
            match live_pid(file, arg) {
                Some(pid) => live.push(pid.to_string()),
                None => {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        if !live.is_empty() {
            return Err(fail(format!(
                "another sigil dev is running on {} (live processes: {}): stop it with Ctrl-C in its terminal, or if it is gone, `kill {}`, then run this again",
                layout.dir().display(),
                live.join(", "),
                live.join(" ")
            )));
        }
        let path = layout.dev_pid();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    fail(format!(
                        "another sigil dev is starting on {} ({} appeared just now); stop it first",
                        layout.dir().display(),
                        path.display()
                    ))
                } else {
                    io_fail("cannot write", &path, &e)
                }
            })?;
        let lock = DirLock { path };
        writeln!(f, "{}", std::process::id())
            .map_err(|e| io_fail("cannot write", &lock.path, &e))?;
        Ok(lock)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Files: the marker, the x509pop CA and agent certificate, server.toml and agent.toml.

/// Makes the dev x509pop CA (its key is dropped: nothing else is ever signed with it) and the
/// agent's certificate and key.
fn make_x509pop_files(layout: &Layout, td: &TrustDomain) -> Result<(), DevError> {
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let broken = |e: rcgen::Error| fail(format!("cannot make the dev x509pop certificates: {e}"));
    let year = i32::try_from(1970 + wall_secs() / 31_556_952).unwrap_or(2025);
    let named = |cn: String| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let mut ca = CertificateParams::default();
    ca.distinguished_name = named(format!("sigil dev agent CA ({td})"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(year - 1, 1, 1);
    ca.not_after = date_time_ymd(year + 30, 1, 1);
    let ca_key = KeyPair::generate().map_err(broken)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(broken)?;

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = named("sigil dev agent".to_owned());
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.subject_alt_names = vec![SanType::DnsName("localhost".try_into().map_err(broken)?)];
    leaf.not_before = date_time_ymd(year - 1, 1, 1);
    leaf.not_after = date_time_ymd(year + 30, 1, 1);
    let leaf_key = KeyPair::generate().map_err(broken)?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
        .map_err(broken)?;
    let key_pem = Zeroizing::new(leaf_key.serialize_pem());

    create_private_dir(&layout.agent_dir())?;
    write_private(&layout.agent_key(), &key_pem)?;
    write_private(&layout.agent_cert(), &leaf_cert.pem())?;
    write_private(&layout.ca_bundle(), &ca_cert.pem())
}

fn server_toml_text(
    layout: &Layout,
    td: &TrustDomain,
    i: u8,
    nodes: u8,
    bind: SocketAddr,
) -> String {
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    let bootstrap = if i == 1 {
        "# The first node of a new trust domain (ignored once the node has Raft state).\nbootstrap = true\n"
    } else {
        "# Joins through the [join] section below, which sigil dev writes with a fresh server join\n# token (`sigil token generate --server`) whenever the node needs one.\n"
    };
    format!(
        "# server.toml of server node {i} of {nodes} of the `sigil dev` plane in {dir}.\n\
         # sigil dev runs it as `sigil server --config <this file>`; README \"Running a server node\"\n\
         # lists every option and its default.\n\
         trust_domain = {td}\n\
         node_id = {i}\n\
         data_dir = {data}\n\
         bind = \"{bind}\"\n\
         admin_socket = {admin}\n\
         {bootstrap}\n\
         [x509pop]\n\
         # The dev CA the agent's certificate chains to (sigil dev made it and dropped its key).\n\
         ca_bundle = {ca}\n",
        dir = layout.dir().display(),
        td = toml_string(td.as_str()),
        data = path(layout.node_dir(i)),
        admin = path(layout.admin_socket(i)),
        ca = path(layout.ca_bundle()),
    )
}

fn agent_toml_text(layout: &Layout, td: &TrustDomain, servers: &[SocketAddr]) -> String {
    let path = |p: PathBuf| toml_string(&p.display().to_string());
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "# agent.toml of the `sigil dev` plane in {dir}; sigil dev runs it as\n\
         # `sigil agent --config <this file>`. README \"Running an agent\" lists every option.\n\
         trust_domain = {td}\n\
         servers = [{servers}]\n\
         data_dir = {data}\n\
         socket_path = {socket}\n\
         admin_socket = {admin}\n\
         # The cluster's bundle hash for a first contact; sigil dev refreshes it on every start.\n\
         bundle_sha256 = \"{zeros}\"\n\
         \n\
         [x509pop]\n\
         # A certificate from the dev CA in x509pop-ca.pem: the agent's SPIFFE ID is\n\
         # spiffe://<td>/sigil/agent/x509pop/<sha256 of this certificate>, the same on every run.\n\
         cert = {cert}\n\
         key = {key}\n",
        dir = layout.dir().display(),
        td = toml_string(td.as_str()),
        servers = servers.join(", "),
        data = path(layout.agent_dir()),
        socket = path(layout.agent_socket()),
        admin = path(layout.agent_admin()),
        zeros = "0".repeat(64),
        cert = path(layout.agent_cert()),
        key = path(layout.agent_key()),
    )
}

/// `text` (a server.toml) with any `[join]` section and root `bootstrap` line replaced by `join`.
pub fn with_join(text: &str, join: &str) -> String {
    let mut out = String::new();
    let mut root = true;
    let mut in_join = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            root = false;
            in_join = t.trim_start_matches('[').trim_start().starts_with("join")
                && t.trim_start_matches('[')
                    .trim_start()
                    .trim_start_matches("join")
                    .trim_start()
                    .starts_with(']');
        }
        if in_join {
            continue;
        }
        if root && is_key(t, "bootstrap") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push('\n');
    out.push_str(join);
    out
}

/// Whether TOML line `t` assigns `key`.
fn is_key(t: &str, key: &str) -> bool {
    t.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// `text` (an agent.toml) with its root `bundle_sha256` set to `hash`.
pub fn with_pin(text: &str, hash: &str) -> String {
    let line = format!("bundle_sha256 = \"{hash}\"");
    let mut out = String::new();
    let mut root = true;
    let mut done = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') && root {
            root = false;
            if !done {
                out.push_str(&line);
                out.push_str("\n\n");
                done = true;
            }
        }
        if root && is_key(t, "bundle_sha256") {
            if !done {
                out.push_str(&line);
                out.push('\n');
                done = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The `[join]` section for a server join token.
fn join_section(token: &str, seeds: &[String], bundle_sha256: &str, from: u8) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| toml_string(s)).collect();
    format!(
        "[join]\n\
         # Written by sigil dev: a single-use server join token from node {from} (spent once this\n\
         # node joined; a restart uses the node's identity files instead).\n\
         token = {}\nseeds = [{}]\nbundle_sha256 = {}\n",
        toml_string(token),
        seeds.join(", "),
        toml_string(bundle_sha256)
    )
}

/// UDP ports on 127.0.0.1 that were free a moment ago, distinct and not in `taken`.
fn free_ports(n: usize, taken: &[u16]) -> Result<Vec<u16>, DevError> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..(n * 20 + 20) {
        if ports.len() == n {
            break;
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| fail(format!("cannot find a free UDP port on 127.0.0.1: {e}")))?;
        let port = socket
            .local_addr()
            .map_err(|e| fail(format!("cannot find a free UDP port on 127.0.0.1: {e}")))?
            .port();
        if !taken.contains(&port) && !ports.contains(&port) {
            ports.push(port);
        }
        held.push(socket);
    }
    if ports.len() < n {
        return Err(fail("cannot find enough free UDP ports on 127.0.0.1"));
    }
    Ok(ports)
}

/// Creates whatever of the plane's files is missing (everything at first run).
fn set_up_files(plan: &Plan) -> Result<(), DevError> {
    let layout = &plan.layout;
    let td = &plan.trust_domain;
    if !layout.marker().exists() {
        let marker = Marker {
            format: 1,
            trust_domain: td.to_string(),
            nodes: plan.nodes,
        };
        write_private(&layout.marker(), &marker.text())?;
    }
    let x509pop_files = [layout.ca_bundle(), layout.agent_cert(), layout.agent_key()];
    if !x509pop_files.iter().all(|p| p.exists()) {
        make_x509pop_files(layout, td)?;
    }
    let mut taken = Vec::new();
    let mut missing = Vec::new();
    for i in 1..=plan.nodes {
        let path = layout.server_toml(i);
        if path.exists() {
            let cfg = ServerFileConfig::load(&path).map_err(|e| fail(e.to_string()))?;
            taken.push(cfg.bind.port());
        } else {
            missing.push(i);
        }
    }
    let ports = free_ports(missing.len(), &taken)?;
    for (i, port) in missing.iter().zip(ports) {
        create_private_dir(&layout.node_dir(*i))?;
        let bind = SocketAddr::from(([127, 0, 0, 1], port));
        write_private(
            &layout.server_toml(*i),
            &server_toml_text(layout, td, *i, plan.nodes, bind),
        )?;
    }
    if !layout.agent_toml().exists() {
        let mut servers = Vec::new();
        for i in 1..=plan.nodes {
            let cfg =
                ServerFileConfig::load(&layout.server_toml(i)).map_err(|e| fail(e.to_string()))?;
            servers.push(cfg.advertise);
        }
        create_private_dir(&layout.agent_dir())?;
        write_private(&layout.agent_toml(), &agent_toml_text(layout, td, &servers))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Which child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Node(u8),
    Agent,
}

impl Which {
    fn name(self) -> String {
        match self {
            Which::Node(i) => format!("node {i}"),
            Which::Agent => "the agent".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Running {
    child: Child,
    pid_file: PathBuf,
}

/// Sends `sig` (`TERM`, `KILL`) to `pid` with kill(1) (no libc here), through sh's builtin if
/// there is no kill binary.
fn send_signal(pid: u32, sig: &str) -> bool {
    let pid = pid.to_string();
    let quiet = |c: &mut Command| {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    match quiet(Command::new("kill").args(["-s", sig, &pid])) {
        Ok(s) => s.success(),
        Err(_) => quiet(
            Command::new("sh")
                .args(["-c", "kill -s \"$1\" \"$2\"", "sh", sig])
                .arg(&pid),
        )
        .is_ok_and(|s| s.success()),
    }
}

/// "exit code 1", "killed by signal 9".
fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

/// The child processes of this run; dropping it stops them (every error path).
#[derive(Debug)]
struct Procs {
    layout: Layout,
    exe: PathBuf,
    nodes: Vec<Option<Running>>,
    agent: Option<Running>,
    /// Each node's config path, for its command line.
    configs: Vec<PathBuf>,
    agent_config: PathBuf,
}

impl Procs {
    fn new(layout: Layout, exe: PathBuf, nodes: u8) -> Procs {
        Procs {
            configs: (1..=nodes).map(|i| layout.server_toml(i)).collect(),
            agent_config: layout.agent_toml(),
            nodes: (1..=nodes).map(|_| None).collect(),
            agent: None,
            layout,
            exe,
        }
    }

    fn slot(&mut self, which: Which) -> Option<&mut Option<Running>> {
        match which {
            Which::Node(i) => self.nodes.get_mut(usize::from(i).checked_sub(1)?),
            Which::Agent => Some(&mut self.agent),
        }
    }

    fn log_of(&self, which: Which) -> PathBuf {
        match which {
            Which::Node(i) => self.layout.node_log(i),
            Which::Agent => self.layout.agent_log(),
        }
    }

    /// Starts `which` with its log appended to its log file and its pid in its pid file.
    fn spawn(&mut self, which: Which) -> Result<(), DevError> {
        let (what, config, pid_file) = match which {
            Which::Node(i) => (
                "server",
                self.configs
                    .get(usize::from(i).saturating_sub(1))
                    .cloned()
                    .ok_or_else(|| fail(format!("no node {i}")))?,
                self.layout.node_pid(i),
            ),
            Which::Agent => ("agent", self.agent_config.clone(), self.layout.agent_pid()),
        };
        let log = self.log_of(which);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .map_err(|e| io_fail("cannot open the log file", &log, &e))?;
        let _ = writeln!(
            file,
            "{LOG_HEADER}{} at unix time {} ====",
            which.name(),
            wall_secs()
        );
        let err = file
            .try_clone()
            .map_err(|e| io_fail("cannot open the log file", &log, &e))?;
        let child = Command::new(&self.exe)
            .args([what, "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C reaches only sigil dev, which stops the
            // children in order.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot start {} ({} {what}): {e}",
                    which.name(),
                    self.exe.display()
                ))
            })?;
        let pid = child.id();
        let running = Running {
            child,
            pid_file: pid_file.clone(),
        };
        if let Some(slot) = self.slot(which) {
            *slot = Some(running);
        }
        write_private(&pid_file, &format!("{pid}\n"))
    }

    /// Whether `which` runs; if it exited, says how (and forgets it).
    fn exited(&mut self, which: Which) -> Option<ExitStatus> {
        let slot = self.slot(which)?;
        let status = slot.as_mut()?.child.try_wait().ok().flatten()?;
        if let Some(r) = slot.take() {
            let _ = std::fs::remove_file(&r.pid_file);
        }
        Some(status)
    }

    fn running_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    /// The lowest-numbered running node.
    fn first_running(&self) -> Option<u8> {
        (1..=u8::try_from(self.nodes.len()).unwrap_or(u8::MAX)).find(|i| {
            self.nodes
                .get(usize::from(*i) - 1)
                .is_some_and(Option::is_some)
        })
    }

    /// The error for a child that exited while `sigil dev` waited for it: its status, the last
    /// error line of its log, where the log is.
    fn died(&self, which: Which, status: ExitStatus, during: &str) -> DevError {
        let log = self.log_of(which);
        let hint = last_error(&log)
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        fail(format!(
            "{} exited {during} ({}){hint}; its log: {}",
            which.name(),
            status_text(status),
            log.display()
        ))
    }

    /// Stops every child: the agent first, then the nodes (SIGTERM, at most [`STOP_WAIT`], then
    /// SIGKILL); removes pid files and leftover sockets. `verbose` prints what happens.
    fn stop(&mut self, verbose: bool) {
        if let Some(agent) = self.agent.take() {
            if verbose {
                say("stopping the agent …");
            }
            stop_all(vec![(Which::Agent, agent)], verbose);
        }
        let nodes: Vec<(Which, Running)> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| {
                let i = u8::try_from(i + 1).ok()?;
                Some((Which::Node(i), slot.take()?))
            })
            .collect();
        if !nodes.is_empty() {
            if verbose {
                say(&format!(
                    "stopping {} server node{} …",
                    nodes.len(),
                    if nodes.len() == 1 { "" } else { "s" }
                ));
            }
            stop_all(nodes, verbose);
        }
        // Sockets of processes that could not remove them (killed).
        let mut sockets: Vec<PathBuf> = (1..=u8::try_from(self.nodes.len()).unwrap_or(0))
            .map(|i| self.layout.admin_socket(i))
            .collect();
        sockets.push(self.layout.agent_socket());
        sockets.push(self.layout.agent_admin());
        for s in sockets {
            if std::fs::symlink_metadata(&s).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&s);
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// SIGTERM to each, a shared bounded wait, SIGKILL to the rest; pid files removed.
fn stop_all(mut procs: Vec<(Which, Running)>, verbose: bool) {
    for (_, r) in &procs {
        send_signal(r.child.id(), "TERM");
    }
    let start = now();
    loop {
        procs.retain_mut(|(_, r)| {
            let gone = !matches!(r.child.try_wait(), Ok(None));
            if gone {
                let _ = std::fs::remove_file(&r.pid_file);
            }
            !gone
        });
        if procs.is_empty() || start.elapsed() >= STOP_WAIT {
            break;
        }
        // A blocking wait: sigil dev has nothing else to do while it stops.
        std::thread::sleep(Duration::from_millis(50));
    }
    for (which, mut r) in procs {
        if verbose {
            say(&format!(
                "{} did not stop within {} s: killing it",
                which.name(),
                STOP_WAIT.as_secs()
            ));
        }
        let _ = r.child.kill();
        let _ = r.child.wait();
        let _ = std::fs::remove_file(&r.pid_file);
    }
}

/// The last `error: …` line of the latest run in a child's log (or its last line).
fn last_error(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let run = text.rsplit(LOG_HEADER).next().unwrap_or(&text);
    let lines: Vec<&str> = run
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .or_else(|| lines.last().copied())?;
    Some(line.chars().take(400).collect())
}

// ---------------------------------------------------------------------------------------------
// Talking to the children.

async fn bounded<T>(f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    tokio::time::timeout(CALL_LIMIT, f).await.ok().flatten()
}

async fn cluster_status(socket: &Path) -> Option<pb::ClusterStatusResponse> {
    bounded(async {
        let mut c = admin::connect(socket).await.ok()?;
        c.cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    })
    .await
}

fn member(s: &pb::ClusterStatusResponse, i: u8) -> Option<&pb::Member> {
    s.members.iter().find(|m| m.node_id == u64::from(i))
}

/// Whether node `i`'s active CA was made during this run (a restarted node lost its keys and
/// publishes a new CA; its old one stays in the bundle until it expires).
fn fresh_ca(s: &pb::ClusterStatusResponse, i: u8, ca_ttl: Duration, run_start: u64) -> bool {
    member(s, i)
        .and_then(|m| m.x509_authority.as_ref())
        .is_some_and(|a| a.not_after_secs.saturating_add(5) >= run_start + ca_ttl.as_secs())
}

/// The node's own role as its status says.
fn role(s: &pb::ClusterStatusResponse, i: u8) -> &'static str {
    if s.leader_id == Some(u64::from(i)) {
        "leader"
    } else {
        "follower"
    }
}

/// A Workload API call as this process: whether `want` is among the X.509-SVIDs served.
async fn serves_svid(socket: &Path, want: &str) -> bool {
    use wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    bounded(async {
        let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
        let channel = admin::uds_channel(socket, endpoint).await.ok()?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut request = tonic::Request::new(wire::workload::X509svidRequest {});
        request.metadata_mut().insert(
            wire::workload::SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static(wire::workload::SECURITY_HEADER_VALUE),
        );
        let mut stream = client.fetch_x509svid(request).await.ok()?.into_inner();
        let first = stream.message().await.ok()??;
        Some(first.svids.iter().any(|s| s.spiffe_id == want))
    })
    .await
    .unwrap_or(false)
}

/// Ctrl-C, SIGTERM and SIGHUP, registered before any child starts.
#[derive(Debug)]
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals, DevError> {
        let reg = |kind: SignalKind| {
            signal(kind).map_err(|e| fail(format!("cannot install a signal handler: {e}")))
        };
        Ok(Signals {
            int: reg(SignalKind::interrupt())?,
            term: reg(SignalKind::terminate())?,
            hup: reg(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "SIGTERM received",
            _ = self.hup.recv() => "SIGHUP received",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up.

/// What a finished start-up established.
#[derive(Debug)]
struct Ready {
    agent_id: String,
    workload_id: String,
    admin_socket: PathBuf,
    workload_socket: PathBuf,
}

/// Waits for node `i` (its process running) until `ready` holds for the status read from
/// `socket`; fails if the process exits or [`NODE_WAIT`] passes.
async fn wait_node(
    procs: &mut Procs,
    i: u8,
    socket: &Path,
    what: &str,
    mut ready: impl FnMut(&pb::ClusterStatusResponse) -> bool,
) -> Result<pb::ClusterStatusResponse, DevError> {
    let start = now();
    loop {
        if let Some(status) = procs.exited(Which::Node(i)) {
            return Err(procs.died(Which::Node(i), status, "during start-up"));
        }
        if let Some(s) = cluster_status(socket).await {
            if ready(&s) {
                return Ok(s);
            }
        }
        if start.elapsed() >= NODE_WAIT {
            return Err(fail(format!(
                "node {i} did not {what} within {} s; its log: {}",
                NODE_WAIT.as_secs(),
                procs.log_of(Which::Node(i)).display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether node `i`'s stored server SVID is valid with [`SVID_MARGIN`] to spare.
fn svid_valid(layout: &Layout, i: u8) -> bool {
    IdentityFiles::new(&layout.node_dir(i))
        .svid()
        .is_some_and(|(_, not_after)| {
            not_after.as_secs() > wall_secs().saturating_add(SVID_MARGIN.as_secs())
        })
}

fn list(ids: &[u8]) -> String {
    ids.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
}

async fn start(plan: &Plan, procs: &mut Procs) -> Result<Ready, DevError> {
    let layout = &plan.layout;
    let n = plan.nodes;
    let t0 = now();
    let run_start = wall_secs();
    let mut cfgs = Vec::new();
    for i in 1..=n {
        let cfg =
            ServerFileConfig::load(&layout.server_toml(i)).map_err(|e| fail(e.to_string()))?;
        cfgs.push(cfg);
    }
    let cfg = |i: u8| &cfgs[usize::from(i) - 1];
    let has_state = |i: u8| layout.node_dir(i).join("raft").exists();
    let fresh = (1..=n).all(|i| !has_state(i));
    // Nodes that start by themselves, and nodes that need a server join token through them.
    let (first, joiners): (Vec<u8>, Vec<u8>) = if fresh {
        (vec![1], (2..=n).collect())
    } else {
        (1..=n).partition(|i| has_state(*i) && (n == 1 || svid_valid(layout, *i)))
    };
    if !fresh {
        let members = (1..=n).filter(|i| has_state(*i)).count();
        if first.len() * 2 <= members {
            let expired: Vec<u8> = (1..=n)
                .filter(|i| has_state(*i) && !first.contains(i))
                .collect();
            return Err(fail(format!(
                "cannot resume the plane in {dir}: the server SVIDs of node{s} {} expired while it was stopped (they last 1 h), and a node with an expired SVID can only rejoin through a running majority, which needs {} node(s) with a valid one; start over with `rm -r {dir}` and run sigil dev again",
                list(&expired),
                members / 2 + 1,
                s = if expired.len() == 1 { "" } else { "s" },
                dir = shell_quote(&layout.dir().display().to_string()),
            )));
        }
        if !joiners.is_empty() {
            say(&format!(
                "node{} {}: no valid server SVID (it expired while stopped, or the node never joined); {} with a fresh server join token once the others run",
                if joiners.len() == 1 { "" } else { "s" },
                list(&joiners),
                if joiners.len() == 1 { "it rejoins" } else { "each rejoins" },
            ));
        }
    }

    // The nodes that start by themselves, all at once.
    for &i in &first {
        procs.spawn(Which::Node(i))?;
    }
    for &i in &first {
        let ttl = cfg(i).ca_ttl;
        let (what, s) = if fresh {
            let s = wait_node(
                procs,
                i,
                &cfg(i).admin_socket,
                "become leader with a published CA",
                |s| s.leader_id == Some(u64::from(i)) && fresh_ca(s, i, ttl, run_start),
            )
            .await?;
            ("up", s)
        } else {
            let s = wait_node(
                procs,
                i,
                &cfg(i).admin_socket,
                "rejoin a leader and publish a new CA",
                |s| {
                    s.leader_id.is_some()
                        && member(s, i).is_some_and(|m| m.voter)
                        && fresh_ca(s, i, ttl, run_start)
                },
            )
            .await?;
            ("restarted", s)
        };
        say(&format!(
            "node {i} {what} ({}, CA published) in {}",
            role(&s, i),
            took(t0)
        ));
    }

    // The others, one at a time, each with a server join token from a running node.
    for &i in &joiners {
        let step = now();
        let seed = procs
            .first_running()
            .ok_or_else(|| fail("no server node is running to admit the others"))?;
        let seed_socket = cfg(seed).admin_socket.clone();
        let token = create_server_token(&seed_socket, u64::from(i)).await?;
        let mut seeds = Vec::new();
        if !token.seed_address.is_empty() {
            seeds.push(token.seed_address.clone());
        }
        for j in 1..=n {
            let addr = cfg(j).advertise.to_string();
            if j != i && procs.nodes[usize::from(j) - 1].is_some() && !seeds.contains(&addr) {
                seeds.push(addr);
            }
        }
        let path = layout.server_toml(i);
        let text = read_text(&path)?;
        let join = join_section(&token.token, &seeds, &token.bundle_sha256, seed);
        write_private(&path, &with_join(&text, &join))?;
        // The rewritten file must still load (a user may have edited it).
        ServerFileConfig::load(&path).map_err(|e| fail(e.to_string()))?;
        procs.spawn(Which::Node(i))?;
        let ttl = cfg(i).ca_ttl;
        wait_node(
            procs,
            i,
            &seed_socket,
            "join as a voter with a published CA",
            |s| member(s, i).is_some_and(|m| m.voter) && fresh_ca(s, i, ttl, run_start),
        )
        .await?;
        wait_node(
            procs,
            i,
            &cfg(i).admin_socket,
            "answer on its admin socket",
            |s| s.leader_id.is_some(),
        )
        .await?;
        say(&format!(
            "node {i} {} (voter, CA published) in {}",
            if fresh { "joined" } else { "rejoined" },
            took(step)
        ));
    }

    // The agent: pin the current bundle, start, wait for its attestation.
    let step = now();
    let seed = procs
        .first_running()
        .ok_or_else(|| fail("no server node is running"))?;
    let seed_socket = cfg(seed).admin_socket.clone();
    let hash = bundle_hash(&seed_socket).await?;
    let agent_toml = layout.agent_toml();
    let text = read_text(&agent_toml)?;
    write_private(&agent_toml, &with_pin(&text, &hash))?;
    let agent_cfg = AgentFileConfig::load(&agent_toml).map_err(|e| fail(e.to_string()))?;
    procs.spawn(Which::Agent)?;
    let agent_id = wait_agent(procs, &agent_cfg.admin_socket).await?;
    say(&format!(
        "agent attested as {agent_id} (x509pop) in {}",
        took(step)
    ));

    // The workload entry for this uid, once.
    let workload_id = format!("spiffe://{}/dev/uid/{}", plan.trust_domain, plan.uid);
    let created = ensure_entry(&seed_socket, &workload_id, &agent_id, plan.uid).await?;
    say(&format!(
        "workload entry {} {workload_id} (selector unix:uid:{}, parent the agent)",
        if created {
            "registered:"
        } else {
            "already registered:"
        },
        plan.uid
    ));

    // Until the agent serves it.
    let step = now();
    loop {
        if let Some(status) = procs.exited(Which::Agent) {
            return Err(procs.died(Which::Agent, status, "during start-up"));
        }
        if serves_svid(&agent_cfg.socket_path, &workload_id).await {
            break;
        }
        if step.elapsed() >= SVID_WAIT {
            return Err(fail(format!(
                "the agent did not serve an X.509-SVID for {workload_id} within {} s; its log: {}",
                SVID_WAIT.as_secs(),
                layout.agent_log().display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    say(&format!(
        "X.509-SVID for {workload_id} served on {} — everything up in {}",
        agent_cfg.socket_path.display(),
        took(t0)
    ));
    Ok(Ready {
        agent_id,
        workload_id,
        admin_socket: cfg(1).admin_socket.clone(),
        workload_socket: agent_cfg.socket_path,
    })
}

/// A server join token for node `node_id`: a new member's, or — when it is a member already
/// (its server SVID expired while it was stopped) — one that re-admits it.
async fn create_server_token(
    socket: &Path,
    node_id: u64,
) -> Result<pb::CreateJoinTokenResponse, DevError> {
    let call = async {
        let mut c = admin::connect(socket)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let request = |rejoin| pb::CreateJoinTokenRequest {
            ttl_secs: JOIN_TOKEN_TTL_SECS,
            spiffe_id: String::new(),
            purpose: pb::JoinTokenPurpose::Server.into(),
            node_id,
            rejoin,
        };
        let first = c.create_join_token(request(false)).await;
        let answer = match first {
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                c.create_join_token(request(true)).await
            }
            other => other,
        };
        answer.map(tonic::Response::into_inner).map_err(|e| {
            fail(format!(
                "cannot generate a server join token through {}: {}",
                socket.display(),
                e.message()
            ))
        })
    };
    let resp = tokio::time::timeout(admin::CLIENT_TIMEOUT, call)
        .await
        .map_err(|_| {
            fail(format!(
                "no answer from {} for a server join token",
                socket.display()
            ))
        })??;
    if resp.bundle_sha256.is_empty() || resp.token.is_empty() {
        return Err(fail(format!(
            "{} returned a server join token without a bundle hash (no CA published yet?)",
            socket.display()
        )));
    }
    Ok(resp)
}

async fn bundle_hash(socket: &Path) -> Result<String, DevError> {
    let resp = bounded(async {
        let mut c = admin::connect(socket).await.ok()?;
        c.get_bundle(pb::GetBundleRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    })
    .await
    .ok_or_else(|| {
        fail(format!(
            "cannot read the bundle through {}",
            socket.display()
        ))
    })?;
    if resp.bundle_sha256.is_empty() {
        return Err(fail("the cluster's bundle has no X.509 authority yet"));
    }
    Ok(resp.bundle_sha256)
}

/// Waits for the agent's admin socket to report its SPIFFE ID (it serves that socket only once
/// attested).
async fn wait_agent(procs: &mut Procs, socket: &Path) -> Result<String, DevError> {
    let start = now();
    loop {
        if let Some(status) = procs.exited(Which::Agent) {
            return Err(procs.died(Which::Agent, status, "during start-up"));
        }
        let id = bounded(async {
            let mut c = crate::rt::agent_admin::connect(socket).await.ok()?;
            c.agent_health(pb::AgentHealthRequest {})
                .await
                .ok()
                .map(|r| r.into_inner().spiffe_id)
        })
        .await;
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            return Ok(id);
        }
        if start.elapsed() >= AGENT_WAIT {
            return Err(fail(format!(
                "the agent did not attest within {} s; its log: {}",
                AGENT_WAIT.as_secs(),
                procs.log_of(Which::Agent).display()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Registers `spiffe_id` for `uid` under `parent` unless such an entry exists; whether it
/// created one. Retried briefly (a write may meet a leader election).
async fn ensure_entry(
    socket: &Path,
    spiffe_id: &str,
    parent: &str,
    uid: u32,
) -> Result<bool, DevError> {
    let selector = format!("unix:uid:{uid}");
    let start = now();
    loop {
        let attempt = async {
            let mut c = admin::connect(socket).await.map_err(|e| e.to_string())?;
            let found = c
                .list_entries(pb::ListEntriesRequest {
                    parent_id: parent.to_owned(),
                    selectors: vec![selector.clone()],
                    spiffe_id: spiffe_id.to_owned(),
                    page_size: 10,
                    page_token: String::new(),
                })
                .await
                .map_err(|e| e.message().to_owned())?
                .into_inner();
            if !found.entries.is_empty() {
                return Ok(false);
            }
            let entry = pb::Entry {
                spiffe_id: spiffe_id.to_owned(),
                parent_id: parent.to_owned(),
                selectors: vec![selector.clone()],
                ..pb::Entry::default()
            };
            let resp = c
                .create_entries(pb::CreateEntriesRequest {
                    entries: vec![entry],
                })
                .await
                .map_err(|e| e.message().to_owned())?
                .into_inner();
            match resp.results.into_iter().next().and_then(|r| r.result) {
                Some(pb::entry_result::Result::Entry(_)) => Ok(true),
                Some(pb::entry_result::Result::Error(e)) => Err(e.message),
                None => Err("the server returned no result".to_owned()),
            }
        };
        let result = tokio::time::timeout(admin::CLIENT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err("no answer".to_owned()));
        match result {
            Ok(created) => return Ok(created),
            Err(e) if start.elapsed() >= NODE_WAIT => {
                return Err(fail(format!(
                    "cannot register {spiffe_id} through {}: {e}",
                    socket.display()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// How to run this binary from a shell: `sigil` when that is what PATH finds, else its path.
fn command_name(exe: &Path) -> String {
    let ours = std::fs::canonicalize(exe).ok();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let candidate = d.join("sigil");
            if candidate.is_file() {
                if ours.is_some() && std::fs::canonicalize(&candidate).ok() == ours {
                    return "sigil".to_owned();
                }
                break;
            }
        }
    }
    shell_quote(&exe.display().to_string())
}

fn print_next_steps(plan: &Plan, ready: &Ready, exe: &Path) {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let sigil = command_name(exe);
    let dir = plan.layout.dir();
    let n = plan.nodes;
    say("");
    say(&format!(
        "sigil dev is running trust domain {} in {}: {n} server node{} and an agent, each its own process.",
        plan.trust_domain,
        dir.display(),
        if n == 1 { "" } else { "s" }
    ));
    say(&format!(
        "Logs: {}/node-<i>/log and {}/agent/log; configs: node-<i>/server.toml, agent/agent.toml.",
        dir.display(),
        dir.display()
    ));
    say("Try, in another shell:");
    say("");
    say(&format!(
        "export SPIFFE_ENDPOINT_SOCKET={}",
        shell_quote(&format!("unix://{}", ready.workload_socket.display()))
    ));
    say(&format!("{sigil} api fetch x509"));
    say(&format!("{sigil} api fetch jwt --audience demo"));
    say(&format!(
        "{sigil} entry create --admin-socket {} --spiffe-id spiffe://{}/demo --parent-id {} --selector unix:uid:{}",
        q(&ready.admin_socket),
        plan.trust_domain,
        ready.agent_id,
        plan.uid
    ));
    say(&format!(
        "{sigil} cluster status --admin-socket {}",
        q(&ready.admin_socket)
    ));
    if n > 1 {
        say(&format!(
            "kill $(cat {})   # watch the cluster carry on",
            q(&plan.layout.node_pid(2))
        ));
    }
    say("");
    say(&format!(
        "Your processes (uid {}) get {}. Ctrl-C stops everything; running sigil dev again on {} resumes this trust domain.",
        plan.uid,
        ready.workload_id,
        dir.display()
    ));
}

/// Reports children that exit until a signal arrives (`Some(why)`) or nothing runs (`None`).
async fn monitor(procs: &mut Procs, signals: &mut Signals, n: u8) -> Option<&'static str> {
    loop {
        tokio::select! {
            why = signals.recv() => return Some(why),
            () = tokio::time::sleep(MONITOR_TICK) => {}
        }
        for i in 1..=n {
            if let Some(status) = procs.exited(Which::Node(i)) {
                let left = procs.running_nodes();
                let total = usize::from(n);
                let log = if status.code().is_some_and(|c| c != 0) {
                    format!(" (its log: {})", procs.log_of(Which::Node(i)).display())
                } else {
                    String::new()
                };
                let outlook = if left * 2 > total {
                    format!("the cluster carries on with {left} of {total} nodes")
                } else if left == 0 {
                    "no server node is left: the agent serves cached SVIDs until they expire; Ctrl-C and run sigil dev again to restart the plane".to_owned()
                } else {
                    format!("{left} of {total} nodes left, no quorum: admin writes fail and issuing stops after staleness_max; Ctrl-C and run sigil dev again to restart the plane")
                };
                say(&format!(
                    "node {i} exited ({}){log}; {outlook}",
                    status_text(status)
                ));
            }
        }
        if let Some(status) = procs.exited(Which::Agent) {
            say(&format!(
                "the agent exited ({}); workloads get no SVIDs now (its log: {}); Ctrl-C and run sigil dev again to restart it",
                status_text(status),
                procs.log_of(Which::Agent).display()
            ));
        }
        if procs.running_nodes() == 0 && procs.agent.is_none() {
            return None;
        }
    }
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

    #[test]
    fn socket_paths_are_checked() {
        let ok = Layout::new(PathBuf::from("/tmp/sigil-dev-1000"));
        assert!(ok.check_socket_paths(5).is_ok());
        let long = Layout::new(PathBuf::from(format!("/tmp/{}", "d".repeat(80))));
        let err = long
            .check_socket_paths(3)
            .expect_err("too long")
            .to_string();
        assert!(
            err.contains("too long") && err.contains("at most 75 bytes"),
            "{err}"
        );
        let edge = Layout::new(PathBuf::from(format!("/{}", "d".repeat(74))));
        assert!(edge.check_socket_paths(5).is_ok());
        let over = Layout::new(PathBuf::from(format!("/{}", "d".repeat(75))));
        assert!(over.check_socket_paths(5).is_err());
    }

    #[test]
    fn join_sections_replace_bootstrap_and_old_joins() {
        let base = "trust_domain = \"a.org\"\nnode_id = 1\n# first node\nbootstrap = true\n\n[x509pop]\nca_bundle = \"/x\"\n";
        let join = join_section("t1", &["127.0.0.1:1".to_owned()], &"ab".repeat(32), 2);
        let once = with_join(base, &join);
        assert!(!once.contains("bootstrap ="), "{once}");
        assert!(once.contains("[x509pop]\nca_bundle = \"/x\"\n"), "{once}");
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &once).expect("parses");
        assert_eq!(cfg.join.expect("join").seeds.len(), 1);
        let join2 = join_section("t2", &["127.0.0.1:2".to_owned()], &"cd".repeat(32), 3);
        let twice = with_join(&once, &join2);
        assert!(!twice.contains("t1") && twice.contains("t2"), "{twice}");
        assert_eq!(twice.matches("[join]").count(), 1, "{twice}");
        assert!(twice.contains("[x509pop]"), "{twice}");
        ServerFileConfig::parse(Path::new("server.toml"), &twice).expect("parses");
    }

    #[test]
    fn pins_are_replaced_or_added() {
        let hash = "ef".repeat(32);
        let text = "trust_domain = \"a.org\"\nbundle_sha256 = \"00\"\n\n[x509pop]\ncert = \"/c\"\n";
        let pinned = with_pin(text, &hash);
        assert_eq!(pinned.matches("bundle_sha256").count(), 1, "{pinned}");
        assert!(
            pinned.contains(&hash) && pinned.contains("[x509pop]\ncert"),
            "{pinned}"
        );
        let without = "trust_domain = \"a.org\"\n\n[x509pop]\ncert = \"/c\"\n";
        let added = with_pin(without, &hash);
        let before_section = added.split("[x509pop]").next().unwrap_or_default();
        assert!(before_section.contains(&hash), "{added}");
        let flat = with_pin("trust_domain = \"a.org\"\n", &hash);
        assert!(
            flat.ends_with(&format!("bundle_sha256 = \"{hash}\"\n")),
            "{flat}"
        );
    }

    #[test]
    fn generated_files_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().to_path_buf());
        let td: TrustDomain = "dev.sigil.test".parse().expect("td");
        let bind: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let node1 = server_toml_text(&layout, &td, 1, 3, bind);
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &node1).expect("node 1");
        assert!(cfg.bootstrap && cfg.join.is_none());
        assert_eq!(cfg.admin_socket, layout.admin_socket(1));
        assert_eq!(cfg.x509pop_ca_bundle, Some(layout.ca_bundle()));
        let node2 = server_toml_text(&layout, &td, 2, 3, bind);
        let cfg = ServerFileConfig::parse(Path::new("server.toml"), &node2).expect("node 2");
        assert!(!cfg.bootstrap);
        let agent = agent_toml_text(&layout, &td, &[bind]);
        let agent = with_pin(&agent, &"12".repeat(32));
        let cfg = AgentFileConfig::parse(Path::new("agent.toml"), &agent).expect("agent");
        assert_eq!(cfg.socket_path, layout.agent_socket());
        assert_eq!(cfg.admin_socket, layout.agent_admin());
        assert_eq!(cfg.bundle_sha256, Some("12".repeat(32)));

        make_x509pop_files(&layout, &td).expect("certificates");
        let ca = std::fs::read(layout.ca_bundle()).expect("ca");
        let cas = crate::rt::config::load_x509pop_cas(&layout.ca_bundle()).expect("usable CA");
        assert_eq!(cas.len(), 1, "{}", String::from_utf8_lossy(&ca));
        let x = cfg.x509pop.expect("x509pop section");
        let credential = x.load().expect("the agent's certificate and key load");
        assert_eq!(credential.chain.len(), 1);
        let mode = std::fs::metadata(layout.agent_key()).expect("key").mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn markers_and_dirs() {
        let marker = Marker {
            format: 1,
            trust_domain: "dev.sigil.test".into(),
            nodes: 3,
        };
        assert_eq!(
            toml::from_str::<Marker>(&marker.text()).expect("parses"),
            marker
        );
        let uid = own_uid().expect("uid");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("something"), "else").expect("write");
        let opts = DevOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..DevOptions::default()
        };
        let err = resolve(&opts, uid).expect_err("foreign dir").to_string();
        assert!(err.contains("not a sigil dev directory"), "{err}");
        assert!(dir.path().join("something").exists());

        let empty = tempfile::tempdir().expect("tempdir");
        let opts = DevOptions {
            data_dir: Some(empty.path().to_path_buf()),
            ..DevOptions::default()
        };
        let plan = resolve(&opts, uid).expect("empty dir");
        assert!(!plan.resume && plan.nodes == NODES_DEFAULT);
        std::fs::write(empty.path().join(MARKER_FILE), marker.text()).expect("marker");
        let plan = resolve(&opts, uid).expect("resume");
        assert!(plan.resume);
        let five = DevOptions {
            nodes: Some(5),
            ..opts.clone()
        };
        assert!(resolve(&five, uid)
            .expect_err("5 vs 3")
            .to_string()
            .contains("3 server node"));
        let other_td = DevOptions {
            trust_domain: Some("other.test".into()),
            ..opts.clone()
        };
        assert!(resolve(&other_td, uid).is_err());
        let two = DevOptions {
            nodes: Some(2),
            ..opts
        };
        assert!(resolve(&two, uid)
            .expect_err("2")
            .to_string()
            .contains("1, 3 or 5"));
    }

    #[test]
    fn stale_pid_files_do_not_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().to_path_buf());
        std::fs::create_dir_all(layout.node_dir(1)).expect("node dir");
        // A pid that exists (this test process) but is not a `sigil server` of this dir.
        std::fs::write(layout.node_pid(1), format!("{}\n", std::process::id())).expect("pid");
        std::fs::write(layout.dev_pid(), "999999999\n").expect("pid");
        let lock = DirLock::take(&layout).expect("stale files do not lock");
        assert!(!layout.node_pid(1).exists());
        let written = std::fs::read_to_string(layout.dev_pid()).expect("dev.pid");
        assert_eq!(written.trim(), std::process::id().to_string());
        drop(lock);
        assert!(!layout.dev_pid().exists());
    }

    #[test]
    fn last_error_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            format!("{LOG_HEADER}node 2 ====\nerror: old\n{LOG_HEADER}node 2 ====\nINFO fine\nerror: binding the QUIC endpoint: in use\n"),
        )
        .expect("write");
        assert_eq!(
            last_error(&log).as_deref(),
            Some("binding the QUIC endpoint: in use")
        );
        std::fs::write(&log, format!("{LOG_HEADER}x ====\n")).expect("write");
        assert_eq!(last_error(&log), None);
    }
}
