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

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use wire::Selector;

/// Most executables whose hash is remembered.
pub const HASH_CACHE_MAX: usize = 1024;

/// A file's identity: device, inode, size, modification time (seconds, nanoseconds).
type FileKey = (u64, u64, u64, i64, i64);

/// Executable hashes remembered by file identity (device, inode, size, modification time), so
/// a busy workload does not make the agent hash its executable on every call. Cheap to clone
/// (shared).
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
}

impl Default for UnixAttestConfig {
    fn default() -> UnixAttestConfig {
        UnixAttestConfig {
            hash_bytes_max: 128 << 20,
            proc_root: PathBuf::from("/proc"),
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
            hash_cache: HashCache::default(),
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

/// The selectors of the peer with credentials `cred`.
pub fn attest(
    cred: PeerCred,
    cfg: &UnixAttestConfig,
) -> Result<BTreeSet<Selector>, UnixAttestError> {
    let pid = cred.pid.filter(|p| *p > 0).ok_or(UnixAttestError::NoPid)?;
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
