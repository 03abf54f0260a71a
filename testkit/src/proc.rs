//! Child processes: long-running ones ([`Proc`], killed on drop, logging to a file), commands run
//! to completion ([`run`], [`run_bounded`]), signals, and facts about this process.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::wait::poll;

/// How long [`Proc::terminate`] waits for a clean exit after SIGTERM.
const TERMINATE_LIMIT: Duration = Duration::from_secs(20);

/// A child process, killed (SIGKILL) and reaped on drop. What it logs goes to `log`.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Takes charge of `child`, whose output the caller sent to `log` (or which writes `log`
    /// itself).
    pub fn from_child(child: Child, log: impl Into<PathBuf>) -> Proc {
        Proc {
            child: Some(child),
            log: log.into(),
        }
    }

    /// Starts `cmd` with stdin and stdout at /dev/null and stderr appended to `log` (a restart
    /// keeps the earlier lines).
    pub fn spawn(cmd: &mut Command, log: impl Into<PathBuf>) -> io::Result<Proc> {
        let log = log.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Proc::from_child(child, log))
    }

    /// `BIN WHAT --config CONFIG` (`sigil server` or `sigil agent`), logging to `log`.
    pub fn try_start(
        bin: impl AsRef<OsStr>,
        what: &str,
        config: &Path,
        log: impl Into<PathBuf>,
    ) -> io::Result<Proc> {
        Proc::spawn(Command::new(bin).args([what, "--config"]).arg(config), log)
    }

    /// [`Proc::try_start`]; panics if the process cannot be started.
    pub fn start(
        bin: impl AsRef<OsStr>,
        what: &str,
        config: &Path,
        log: impl Into<PathBuf>,
    ) -> Proc {
        Proc::try_start(bin, what, config, log)
            .unwrap_or_else(|e| panic!("spawn sigil {what}: {e}"))
    }

    /// Its pid, until it was killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has not been killed or stopped yet (it may have exited by itself).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// How it ended, if it exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to it.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            send_signal(pid, signal);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; its exit status if it exits within `limit`, else SIGKILL and `None`.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "TERM");
        let exited = poll(limit, || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited
    }

    /// SIGTERM; true if it exits with 0 within 20 s (else it is killed).
    pub fn terminate(&mut self) -> bool {
        self.stop(TERMINATE_LIMIT).is_some_and(|s| s.success())
    }

    /// Waits up to `limit` for it to exit by itself; its success, `None` if it is still running
    /// (then it is killed).
    pub fn exit_within(&mut self, limit: Duration) -> Option<bool> {
        let mut child = self.child.take()?;
        let exited = poll(limit, || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited.map(|s| s.success())
    }

    /// Where it logs.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of the file at `path` (or why it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// Sends `signal` (`KILL`, `TERM`, `INT`, `STOP`, `CONT`) to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Runs `BIN ARGS` to completion (no time bound); panics if it cannot be started.
pub fn run(bin: impl AsRef<OsStr>, args: &[&str]) -> Output {
    run_env(bin, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_env(bin: impl AsRef<OsStr>, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let bin = bin.as_ref();
    Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.to_string_lossy()))
}

/// `prog a b c`, for messages.
fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program());
    let name = prog.file_name().unwrap_or(prog.as_os_str());
    std::iter::once(name)
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with stdin at /dev/null, reading its output while it runs (a large
/// output never blocks it on a full pipe); kills it after `limit`. The error says what failed,
/// with what it wrote to stderr by then.
pub fn try_run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start `{what}`: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    #[allow(clippy::disallowed_methods)] // collects the child's output while it runs
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("`{what}`: {e}")),
        Err(_) => {
            send_signal(pid, "KILL");
            let stderr = rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(Result::ok)
                .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                .unwrap_or_default();
            Err(format!(
                "`{what}` did not finish within {limit:?}; stderr: {stderr}"
            ))
        }
    }
}

/// [`try_run_bounded`]; panics with its error.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    try_run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// A numeric field of this process's `/proc/self/status` line `field` (`"Uid:"`, `"Gid:"`): its
/// second column, the effective ID.
pub fn status_id(field: &str) -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// This process's (effective) uid.
pub fn my_uid() -> u32 {
    status_id("Uid:").expect("uid")
}
