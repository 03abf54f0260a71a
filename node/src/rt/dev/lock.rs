//! Locking DIR against a second `sigil dev`: `DIR/dev.pid` ([`DirLock`]), taken only when no
//! pid file under DIR names a live process of this plane (a reused pid does not count).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::plan::Layout;
use super::{fail, io_fail, DevError};

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
pub(super) struct DirLock {
    path: PathBuf,
}

impl DirLock {
    pub(super) fn take(layout: &Layout) -> Result<DirLock, DevError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
