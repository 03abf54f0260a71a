//! The Unix socket paths a node serves (admin API, Workload API, agent admin): claiming a path
//! and giving it back.
//!
//! - [`claim`]: a path with no file is free; a socket file nobody serves (connecting is refused)
//!   is stale and removed; a socket another live process serves is **never** taken over (a
//!   second server or agent configured with the same path would otherwise silently steal the
//!   first one's clients, and delete its socket when stopping); anything else is refused.
//! - [`Claimed::release`]: at shutdown, removes the socket file only if it is still the one this
//!   process bound (same device and inode).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Makes `path` free for a new socket of `what` (e.g. "the admin socket"); see the module docs.
pub fn claim(path: &Path, what: &'static str) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(os_error(what, path, "cannot inspect it", &e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Os {
            what,
            detail: format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::Os {
            what,
            detail: format!(
                "{} is served by another running process (another sigil server or agent configured with the same path?); stop that process or give this one another path",
                path.display()
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Stale: left by a process that is gone.
            std::fs::remove_file(path)
                .map_err(|e| os_error(what, path, "cannot remove the stale socket", &e))
        }
        Err(e) => Err(os_error(
            what,
            path,
            "cannot tell whether another process serves it",
            &e,
        )),
    }
}

fn os_error(what: &'static str, path: &Path, doing: &str, e: &std::io::Error) -> Error {
    Error::Os {
        what,
        detail: format!(
            "{}: {doing}: {}",
            path.display(),
            super::admin::io_text(&e.to_string())
        ),
    }
}

/// A socket file this process bound (recorded right after binding).
#[derive(Debug)]
pub struct Claimed {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Claimed {
    /// Records the socket file now at `path` as this process's.
    pub fn record(path: &Path) -> Claimed {
        Claimed {
            path: path.to_path_buf(),
            id: file_id(path),
        }
    }

    /// Removes the socket file if it is still the one recorded.
    pub fn release(self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// (device, inode) of the socket file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_never_taken_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        claim(&path, "the test socket").expect("free");
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let ours = Claimed::record(&path);
        let refused = claim(&path, "the test socket").expect_err("live");
        assert!(
            refused
                .to_string()
                .contains("served by another running process"),
            "{refused}"
        );
        assert!(path.exists(), "the live socket stays");
        // Someone else's socket at the path (ours unlinked but still open, so its inode
        // cannot be reused): releasing ours leaves theirs alone.
        std::fs::remove_file(&path).expect("unlink");
        let theirs = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        ours.release();
        assert!(path.exists(), "not ours: kept");
        drop(live);
        drop(theirs); // the file stays, nobody serves it: stale
        claim(&path, "the test socket").expect("stale replaced");
        assert!(!path.exists());
        let mine = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        Claimed::record(&path).release();
        assert!(!path.exists(), "ours: removed");
        drop(mine);
        let plain = dir.path().join("file");
        std::fs::write(&plain, b"x").expect("write");
        assert!(claim(&plain, "the test socket")
            .expect_err("not a socket")
            .to_string()
            .contains("not a socket"));
    }
}
