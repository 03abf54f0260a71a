//! The child processes: [`Procs`] spawns `sigil server`/`sigil agent` from this binary (own
//! process group, log appended to the child's log file, pid file written), notices exits, and
//! stops them in order (SIGTERM, at most [`STOP_WAIT`], SIGKILL) — also when dropped.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::files::write_private;
use super::plan::Layout;
use super::{fail, io_fail, now, say, wall_secs, DevError, STOP_WAIT};

/// The first line `sigil dev` writes into a child's log before each start.
const LOG_HEADER: &str = "==== sigil dev: starting ";

/// Which child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
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
pub(super) struct Running {
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
pub(super) fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

/// The child processes of this run; dropping it stops them (every error path).
#[derive(Debug)]
pub(super) struct Procs {
    layout: Layout,
    exe: PathBuf,
    pub(super) nodes: Vec<Option<Running>>,
    pub(super) agent: Option<Running>,
    /// Each node's config path, for its command line.
    configs: Vec<PathBuf>,
    agent_config: PathBuf,
}

impl Procs {
    pub(super) fn new(layout: Layout, exe: PathBuf, nodes: u8) -> Procs {
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

    pub(super) fn log_of(&self, which: Which) -> PathBuf {
        match which {
            Which::Node(i) => self.layout.node_log(i),
            Which::Agent => self.layout.agent_log(),
        }
    }

    /// Starts `which` with its log appended to its log file and its pid in its pid file.
    pub(super) fn spawn(&mut self, which: Which) -> Result<(), DevError> {
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
    pub(super) fn exited(&mut self, which: Which) -> Option<ExitStatus> {
        let slot = self.slot(which)?;
        let status = slot.as_mut()?.child.try_wait().ok().flatten()?;
        if let Some(r) = slot.take() {
            let _ = std::fs::remove_file(&r.pid_file);
        }
        Some(status)
    }

    pub(super) fn running_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    /// The lowest-numbered running node.
    pub(super) fn first_running(&self) -> Option<u8> {
        (1..=u8::try_from(self.nodes.len()).unwrap_or(u8::MAX)).find(|i| {
            self.nodes
                .get(usize::from(*i) - 1)
                .is_some_and(Option::is_some)
        })
    }

    /// The error for a child that exited while `sigil dev` waited for it: its status, the last
    /// error line of its log, where the log is.
    pub(super) fn died(&self, which: Which, status: ExitStatus, during: &str) -> DevError {
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
    pub(super) fn stop(&mut self, verbose: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
