//! Unix workload attestation: the selectors of the process at the other end of a Workload API
//! socket, from its kernel-reported peer credentials (`SO_PEERCRED`: pid, uid, gid) and `/proc`.
//!
//! Selectors (type `unix`): `uid:<n>`, `gid:<n>`, `user:<name>`, `group:<name>` (from
//! `/etc/passwd` and `/etc/group` when the IDs have names), `supplementary_gid:<n>` (one per
//! supplementary group of the process), `path:<executable>` and `sha256:<hex of the executable>`
//! (only for executables up to [`UnixAttestConfig::hash_bytes_max`]; larger ones get no hash
//! selector, never a truncated one).
//!
//! **PID reuse.** The pid from `SO_PEERCRED` names the process that *connected*; by the time we
//! read `/proc/<pid>`, that process may have exited and its pid been reused. The attestor reads
//! the process start time (`/proc/<pid>/stat`, field 22) before and after everything else and
//! requires the uid in `/proc/<pid>/status` to equal the credential's uid; a change or mismatch
//! is an error (no selectors at all, never selectors of another process).
//!
//! **Exec after connect.** The pid keeps naming the connecting process when it `exec`s another
//! program, and the connection may be held by a child it forked (or passed to any process).
//! Attesting `/proc/<pid>` at call time would then describe the *new* program while the
//! requests come from whoever holds the connection. So the Workload API takes a [`ProcessPin`]
//! when it accepts a connection (pid, start time, and the executable's device and inode) and
//! [`attest_pinned`] / [`ProcessPin::check`] refuse ([`UnixAttestError::ExeChanged`]) once the
//! process runs another executable file than the pinned one. The pin is taken right after
//! `accept`, not at `connect`: an `exec` that completes between the two is not seen (the
//! residual window; README "Security model"). A pidfd (`SO_PEERPIDFD`) would not close that
//! window either (it pins the process, not its program), and needs `unsafe` code this crate
//! forbids; the start time already rules out PID reuse.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use wire::Selector;

/// Most executables whose hash is remembered.
pub const HASH_CACHE_MAX: usize = 1024;

/// A file's identity: device, inode, size, modification time and status-change time (each
/// seconds, nanoseconds).
type FileKey = (u64, u64, u64, i64, i64, i64, i64);

/// Executable hashes remembered by file identity (device, inode, size, modification time,
/// status-change time), so a busy workload does not make the agent hash its executable on every
/// call. The change time (`ctime`) is part of the key because the file's owner can set the
/// modification time back after rewriting the file in place; only the kernel sets `ctime`, and
/// every write or `utimes` moves it. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct HashCache {
    map: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<FileKey, String>>>,
}

impl HashCache {
    fn key(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    }

    /// The hash of the file at `path` (at most `max` bytes), from the cache when its identity
    /// is unchanged.
    fn sha256(&self, path: &Path, max: u64) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let key = HashCache::key(&meta);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(&key) {
            return Some(h.clone());
        }
        drop(map);
        let hash = file_sha256(path, max)?;
        // Keep it only if the file did not change while it was read.
        let after = std::fs::metadata(path).ok()?;
        if HashCache::key(&after) == key {
            map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= HASH_CACHE_MAX {
                map.clear();
            }
            map.insert(key, hash.clone());
        }
        Some(hash)
    }
}

/// Limits of unix attestation.
#[derive(Debug, Clone)]
pub struct UnixAttestConfig {
    /// Executables larger than this get no `sha256` selector (default 128 MiB).
    pub hash_bytes_max: u64,
    /// The proc filesystem (default `/proc`).
    pub proc_root: PathBuf,
    /// The passwd and group databases (defaults `/etc/passwd`, `/etc/group`).
    pub passwd: PathBuf,
    /// See `passwd`.
    pub group: PathBuf,
    /// Remembered executable hashes.
    pub hash_cache: HashCache,
    /// Most Workload API connections open at once per uid (default
    /// [`CONNECTIONS_PER_UID_MAX`]); further ones are closed when accepted.
    pub connections_per_uid_max: usize,
}

/// Default of [`UnixAttestConfig::connections_per_uid_max`].
pub const CONNECTIONS_PER_UID_MAX: usize = 64;

impl Default for UnixAttestConfig {
    fn default() -> UnixAttestConfig {
        UnixAttestConfig {
            hash_bytes_max: 128 << 20,
            proc_root: PathBuf::from("/proc"),
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
            hash_cache: HashCache::default(),
            connections_per_uid_max: CONNECTIONS_PER_UID_MAX,
        }
    }
}

/// The peer credentials of a Unix socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// The connecting process (absent on some platforms).
    pub pid: Option<i32>,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

/// Why a workload could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnixAttestError {
    /// The kernel gave no pid.
    #[error("the peer's pid is unknown")]
    NoPid,
    /// The process is gone, or its pid now names another process.
    #[error("process {0} exited or was replaced while it was being attested")]
    Gone(i32),
    /// `/proc` disagrees with the socket credentials.
    #[error("process {pid}: /proc reports uid {proc_uid}, the socket reports uid {cred_uid}")]
    UidMismatch {
        /// The pid.
        pid: i32,
        /// From `/proc/<pid>/status`.
        proc_uid: u32,
        /// From `SO_PEERCRED`.
        cred_uid: u32,
    },
    /// The process runs another executable than when it connected (it called `exec`).
    #[error("process {0} has run another executable since it connected to the Workload API (exec after connect), so this connection no longer speaks for it; connect again from the process that asks")]
    ExeChanged(i32),
}

fn selector(value: String) -> Option<Selector> {
    Selector::new("unix", &value).ok()
}

/// The process start time (clock ticks since boot), field 22 of `/proc/<pid>/stat`.
fn start_time(proc_dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The identity (device, inode) of the file `/proc/<pid>/exe` names, if it can be read.
fn exe_id(proc_dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(proc_dir.join("exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// A Workload API caller as it was when its connection was accepted: which process (pid and
/// start time, so a reused pid is told apart) and which executable file it ran (device and
/// inode of `/proc/<pid>/exe`; `None` when unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessPin {
    pid: i32,
    start_time: u64,
    exe: Option<(u64, u64)>,
}

/// Where `/proc/<pid>/exe` points for the peer with credentials `cred` (`None`: no pid, or
/// unreadable). Only the kernel's record of the path is read, never the file's file system, so
/// this does not block: the Workload API reads it in its accept loop, as early as it can, and
/// gives it to [`ProcessPin::take`].
pub fn exe_path(cred: PeerCred, cfg: &UnixAttestConfig) -> Option<PathBuf> {
    let pid = cred.pid.filter(|p| *p > 0)?;
    std::fs::read_link(cfg.proc_root.join(pid.to_string()).join("exe")).ok()
}

impl ProcessPin {
    /// Pins the peer with credentials `cred` (reads `/proc`; may block on the executable's file
    /// system, so call it off async workers). `exe_at_accept` is what [`exe_path`] read when the
    /// connection was accepted: if the process runs another path by now, it ran `exec` in
    /// between and the pin is refused (`ExeChanged`) rather than taken of the new program.
    pub fn take(
        cred: PeerCred,
        exe_at_accept: Option<&Path>,
        cfg: &UnixAttestConfig,
    ) -> Result<ProcessPin, UnixAttestError> {
        let pid = cred.pid.filter(|p| *p > 0).ok_or(UnixAttestError::NoPid)?;
        let proc_dir = cfg.proc_root.join(pid.to_string());
        let started = start_time(&proc_dir).ok_or(UnixAttestError::Gone(pid))?;
        let (proc_uid, _) = status(&proc_dir).ok_or(UnixAttestError::Gone(pid))?;
        if proc_uid != cred.uid {
            return Err(UnixAttestError::UidMismatch {
                pid,
                proc_uid,
                cred_uid: cred.uid,
            });
        }
        let exe = exe_id(&proc_dir);
        let path = std::fs::read_link(proc_dir.join("exe")).ok();
        if start_time(&proc_dir) != Some(started) {
            return Err(UnixAttestError::Gone(pid));
        }
        if path.as_deref() != exe_at_accept {
            return Err(UnixAttestError::ExeChanged(pid));
        }
        Ok(ProcessPin {
            pid,
            start_time: started,
            exe,
        })
    }

    /// The pinned pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process is still the pinned one, running the pinned executable file: `Gone`
    /// if it exited (or its pid names another process), `ExeChanged` if it ran `exec` on
    /// another file since. An `exec` of the *same* file is not seen (nothing about the caller's
    /// selectors changes with it).
    pub fn check(&self, cfg: &UnixAttestConfig) -> Result<(), UnixAttestError> {
        let proc_dir = cfg.proc_root.join(self.pid.to_string());
        if start_time(&proc_dir) != Some(self.start_time) {
            return Err(UnixAttestError::Gone(self.pid));
        }
        let exe = exe_id(&proc_dir);
        // The executable read above belongs to the pinned process only if it is still there.
        if start_time(&proc_dir) != Some(self.start_time) {
            return Err(UnixAttestError::Gone(self.pid));
        }
        if exe != self.exe {
            return Err(UnixAttestError::ExeChanged(self.pid));
        }
        Ok(())
    }
}

/// `(real uid, supplementary gids)` from `/proc/<pid>/status`.
fn status(proc_dir: &Path) -> Option<(u32, Vec<u32>)> {
    let text = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let mut uid = None;
    let mut groups = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            // Real, effective, saved, filesystem: the credential is the effective one.
            uid = rest.split_whitespace().nth(1).and_then(|u| u.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    Some((uid?, groups))
}

/// The name of `id` in a passwd/group style file (`name:x:id:...`).
fn name_of(db: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(db).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id_field = fields.nth(1)?;
        (id_field.parse::<u32>().ok()? == id && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Lowercase hex SHA-256 of the file at `path` if it is at most `max` bytes.
fn file_sha256(path: &Path, max: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > max {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return None;
        }
        ctx.update(&buf[..n]);
    }
    Some(attest::hex(ctx.finish().as_ref()))
}

/// The selectors of the peer with credentials `cred`, as `/proc` shows it now (no pin: see
/// [`attest_pinned`] for a connection's caller).
pub fn attest(
    cred: PeerCred,
    cfg: &UnixAttestConfig,
) -> Result<BTreeSet<Selector>, UnixAttestError> {
    attest_with(cred, None, cfg)
}

/// The selectors of the peer with credentials `cred` whose connection pinned `pin`: refused
/// unless the process is the pinned one and runs the pinned executable file both before and
/// after its path and hash are read.
pub fn attest_pinned(
    cred: PeerCred,
    pin: &ProcessPin,
    cfg: &UnixAttestConfig,
) -> Result<BTreeSet<Selector>, UnixAttestError> {
    attest_with(cred, Some(pin), cfg)
}

fn attest_with(
    cred: PeerCred,
    pin: Option<&ProcessPin>,
    cfg: &UnixAttestConfig,
) -> Result<BTreeSet<Selector>, UnixAttestError> {
    let pid = cred.pid.filter(|p| *p > 0).ok_or(UnixAttestError::NoPid)?;
    if let Some(pin) = pin {
        if pin.pid != pid {
            return Err(UnixAttestError::Gone(pid));
        }
        pin.check(cfg)?;
    }
    let proc_dir = cfg.proc_root.join(pid.to_string());
    let started = start_time(&proc_dir).ok_or(UnixAttestError::Gone(pid))?;
    let (proc_uid, groups) = status(&proc_dir).ok_or(UnixAttestError::Gone(pid))?;
    if proc_uid != cred.uid {
        return Err(UnixAttestError::UidMismatch {
            pid,
            proc_uid,
            cred_uid: cred.uid,
        });
    }
    let exe = std::fs::read_link(proc_dir.join("exe")).ok();
    let hash = cfg
        .hash_cache
        .sha256(&proc_dir.join("exe"), cfg.hash_bytes_max);
    // Still the same process? Otherwise everything read above may describe another one.
    if start_time(&proc_dir) != Some(started) {
        return Err(UnixAttestError::Gone(pid));
    }
    // Still the pinned executable? An exec while the path and hash were read shows here.
    if let Some(pin) = pin {
        if pin.start_time != started {
            return Err(UnixAttestError::Gone(pid));
        }
        pin.check(cfg)?;
    }
    let mut out = BTreeSet::new();
    let mut add = |v: String| {
        if let Some(s) = selector(v) {
            out.insert(s);
        }
    };
    add(format!("uid:{}", cred.uid));
    add(format!("gid:{}", cred.gid));
    if let Some(name) = name_of(&cfg.passwd, cred.uid) {
        add(format!("user:{name}"));
    }
    if let Some(name) = name_of(&cfg.group, cred.gid) {
        add(format!("group:{name}"));
    }
    for g in groups {
        add(format!("supplementary_gid:{g}"));
    }
    if let Some(exe) = exe {
        // A deleted executable shows as "<path> (deleted)": still the path it ran from.
        add(format!("path:{}", exe.display()));
    }
    if let Some(hash) = hash {
        add(format!("sha256:{hash}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cred() -> PeerCred {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .expect("field")
        };
        PeerCred {
            pid: Some(i32::try_from(std::process::id()).expect("pid")),
            uid: field("Uid:"),
            gid: field("Gid:"),
        }
    }

    #[test]
    fn attests_this_process() {
        let cred = own_cred();
        // Debug test binaries can exceed the default hash limit.
        let cfg = UnixAttestConfig {
            hash_bytes_max: 1 << 30,
            ..UnixAttestConfig::default()
        };
        let got = attest(cred, &cfg).expect("attest");
        let has = |s: &str| got.contains(&format!("unix:{s}").parse::<Selector>().expect("sel"));
        assert!(has(&format!("uid:{}", cred.uid)), "{got:?}");
        assert!(has(&format!("gid:{}", cred.gid)), "{got:?}");
        let exe = std::env::current_exe().expect("exe");
        assert!(has(&format!("path:{}", exe.display())), "{got:?}");
        let bytes = std::fs::read(&exe).expect("read exe");
        let hash = attest::sha256_hex(&bytes);
        assert!(has(&format!("sha256:{hash}")), "{got:?}");
        if cred.uid == 0 {
            assert!(has("user:root"), "{got:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_pin_down() {
        let cred = own_cred();
        let cfg = UnixAttestConfig::default();
        assert_eq!(
            attest(PeerCred { pid: None, ..cred }, &cfg),
            Err(UnixAttestError::NoPid)
        );
        let wrong_uid = PeerCred {
            uid: cred.uid.wrapping_add(1),
            ..cred
        };
        assert!(matches!(
            attest(wrong_uid, &cfg),
            Err(UnixAttestError::UidMismatch { .. })
        ));
        // A pid that does not exist (pid_max is at most 2^22).
        let gone = PeerCred {
            pid: Some(1 << 23),
            ..cred
        };
        assert!(matches!(attest(gone, &cfg), Err(UnixAttestError::Gone(_))));
        // No hash selector above the size limit (never a partial hash).
        let small = UnixAttestConfig {
            hash_bytes_max: 16,
            ..UnixAttestConfig::default()
        };
        let got = attest(cred, &small).expect("attest");
        assert!(got
            .iter()
            .all(|s| !s.to_string().starts_with("unix:sha256:")));
    }

    #[test]
    fn hashes_are_cached_by_file_identity() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("bin");
        std::fs::write(&f, b"one").expect("write");
        let cache = HashCache::default();
        let first = cache.sha256(&f, 1 << 20).expect("hash");
        assert_eq!(first, attest::sha256_hex(b"one"));
        assert_eq!(cache.sha256(&f, 1 << 20).as_deref(), Some(first.as_str()));
        // A changed file (size and mtime differ) is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&f, b"other").expect("write");
        assert_eq!(
            cache.sha256(&f, 1 << 20),
            Some(attest::sha256_hex(b"other"))
        );
        assert_eq!(cache.sha256(&dir.path().join("missing"), 1 << 20), None);
    }

    #[test]
    fn an_mtime_set_back_after_a_rewrite_does_not_keep_the_old_hash() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("bin");
        std::fs::write(&f, b"one").expect("write");
        let cache = HashCache::default();
        assert_eq!(cache.sha256(&f, 1 << 20), Some(attest::sha256_hex(b"one")));
        let before = std::fs::metadata(&f).expect("meta");
        // ctime comes from the kernel's coarse clock: let it move on.
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Rewritten in place (same inode, same size), then the mtime set back by the owner.
        std::fs::write(&f, b"two").expect("rewrite");
        let file = std::fs::File::options().write(true).open(&f).expect("open");
        file.set_modified(before.modified().expect("mtime"))
            .expect("set mtime");
        drop(file);
        let after = std::fs::metadata(&f).expect("meta");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
            (
                before.ino(),
                before.size(),
                before.mtime(),
                before.mtime_nsec()
            ),
            "same inode, size and mtime"
        );
        assert_ne!(
            (after.ctime(), after.ctime_nsec()),
            (before.ctime(), before.ctime_nsec())
        );
        assert_eq!(cache.sha256(&f, 1 << 20), Some(attest::sha256_hex(b"two")));
    }

    /// A fake `/proc/<pid>` for `pid`: stat with start time `start`, status with `uid`, and
    /// `exe` a symlink to `exe`.
    fn fake_proc(root: &Path, pid: i32, start: u64, uid: u32, exe: &Path) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("dir");
        let mut fields: Vec<String> = (3..=22).map(|i| i.to_string()).collect();
        fields[19] = start.to_string();
        std::fs::write(dir.join("stat"), format!("{pid} (w) {}", fields.join(" "))).expect("stat");
        std::fs::write(
            dir.join("status"),
            format!("Name:\tw\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGroups:\t\n"),
        )
        .expect("status");
        let link = dir.join("exe");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link).expect("exe link");
    }

    #[test]
    fn a_pin_refuses_another_executable_and_another_process() {
        let dir = tempfile::tempdir().expect("tmp");
        let proc_root = dir.path().join("proc");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"program a").expect("a");
        std::fs::write(&b, b"program b").expect("b");
        let cfg = UnixAttestConfig {
            proc_root: proc_root.clone(),
            ..UnixAttestConfig::default()
        };
        let cred = PeerCred {
            pid: Some(42),
            uid: 1000,
            gid: 1000,
        };
        fake_proc(&proc_root, 42, 777, 1000, &a);
        assert_eq!(exe_path(cred, &cfg).as_deref(), Some(a.as_path()));
        // An exec between accept (path a) and the pin (now b) refuses the pin.
        fake_proc(&proc_root, 42, 777, 1000, &b);
        assert_eq!(
            ProcessPin::take(cred, Some(&a), &cfg),
            Err(UnixAttestError::ExeChanged(42))
        );
        fake_proc(&proc_root, 42, 777, 1000, &a);
        let pin = ProcessPin::take(cred, Some(&a), &cfg).expect("pin");
        assert_eq!(pin.pid(), 42);
        pin.check(&cfg).expect("unchanged");
        let got = attest_pinned(cred, &pin, &cfg).expect("attest");
        let path_a: Selector = format!("unix:path:{}", a.display()).parse().expect("sel");
        assert!(got.contains(&path_a), "{got:?}");
        // exec of another file: refused, never the selectors of b.
        fake_proc(&proc_root, 42, 777, 1000, &b);
        assert_eq!(pin.check(&cfg), Err(UnixAttestError::ExeChanged(42)));
        assert_eq!(
            attest_pinned(cred, &pin, &cfg),
            Err(UnixAttestError::ExeChanged(42))
        );
        // Unpinned attestation (call-time /proc only) would have described b.
        let path_b: Selector = format!("unix:path:{}", b.display()).parse().expect("sel");
        assert!(attest(cred, &cfg).expect("attest").contains(&path_b));
        // Back on a, but the pid now names another process (other start time).
        fake_proc(&proc_root, 42, 778, 1000, &a);
        assert_eq!(pin.check(&cfg), Err(UnixAttestError::Gone(42)));
        // The process is gone.
        std::fs::remove_dir_all(proc_root.join("42")).expect("rm");
        assert_eq!(pin.check(&cfg), Err(UnixAttestError::Gone(42)));
        assert_eq!(
            ProcessPin::take(cred, exe_path(cred, &cfg).as_deref(), &cfg),
            Err(UnixAttestError::Gone(42))
        );
        // A pin is never taken for a uid /proc disagrees with.
        fake_proc(&proc_root, 42, 777, 0, &a);
        assert!(matches!(
            ProcessPin::take(cred, exe_path(cred, &cfg).as_deref(), &cfg),
            Err(UnixAttestError::UidMismatch { .. })
        ));
        assert_eq!(
            ProcessPin::take(PeerCred { pid: None, ..cred }, None, &cfg),
            Err(UnixAttestError::NoPid)
        );
    }

    #[test]
    fn this_process_pins_and_stays_pinned() {
        let cred = own_cred();
        let cfg = UnixAttestConfig::default();
        let pin = ProcessPin::take(cred, exe_path(cred, &cfg).as_deref(), &cfg).expect("pin");
        pin.check(&cfg).expect("same process, same executable");
        let cfg_big = UnixAttestConfig {
            hash_bytes_max: 1 << 30,
            ..UnixAttestConfig::default()
        };
        assert_eq!(attest_pinned(cred, &pin, &cfg_big), attest(cred, &cfg_big));
    }

    #[test]
    fn names_come_from_the_databases() {
        let dir = tempfile::tempdir().expect("tmp");
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/:/bin/false\n",
        )
        .expect("write");
        std::fs::write(&group, "root:x:0:\nwebgrp:x:1000:\n").expect("write");
        assert_eq!(name_of(&passwd, 1000).as_deref(), Some("web"));
        assert_eq!(name_of(&group, 1000).as_deref(), Some("webgrp"));
        assert_eq!(name_of(&passwd, 7), None);
        assert_eq!(name_of(&dir.path().join("missing"), 0), None);
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let fields: Vec<String> = (3..=22).map(|i| i.to_string()).collect();
        std::fs::write(
            dir.path().join("stat"),
            format!("42 (a) b) c) {}", fields.join(" ")),
        )
        .expect("write");
        assert_eq!(start_time(dir.path()), Some(22));
    }
}
