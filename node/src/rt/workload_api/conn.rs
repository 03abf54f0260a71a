//! Workload API connections: binding the socket, the per-uid limit on open connections, and
//! the accepted connection — the `:authority` adapter, its uid's slot and its process pin, read
//! and written only once the pin is taken — with what a request learns about it.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::{os_error, WORKLOAD_SOCKET_MODE};
use crate::rt::h2_authority::AuthorityFix;
use crate::rt::unix_attest::{self, PeerCred, ProcessPin, UnixAttestConfig, UnixAttestError};
use crate::Error;

/// Binds the Workload API socket at `path` with mode [`WORKLOAD_SOCKET_MODE`]: replaces a
/// stale socket file, refuses to replace anything else (a socket another process serves
/// included: [`crate::rt::socket::claim`]), creates the parent directory if needed.
pub fn bind_workload_socket(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    crate::rt::socket::claim(path, "creating the Workload API socket")?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| os_error("creating the Workload API socket's directory", &parent, e))?;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| os_error("binding the Workload API socket", path, e))?;
    // Bound with the umask's (tighter) permissions, then opened to every uid.
    let opened =
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(WORKLOAD_SOCKET_MODE))
            .map_err(|e| os_error("setting the Workload API socket's permissions", path, e))
            .and_then(|()| {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| os_error("configuring the Workload API socket", path, e))
            })
            .and_then(|()| {
                tokio::net::UnixListener::from_std(listener)
                    .map_err(|e| os_error("registering the Workload API socket", path, e))
            });
    if opened.is_err() {
        let _ = std::fs::remove_file(path);
    }
    opened
}

/// What a request learns about its connection (tonic's connect info for [`WorkloadConn`]).
#[derive(Debug, Clone)]
pub(super) struct WorkloadConnInfo {
    /// Peer address and credentials (`SO_PEERCRED`, read when the connection was accepted).
    pub(super) uds: UdsConnectInfo,
    /// The connecting process's pin; `None` until taken.
    pin: watch::Receiver<Option<Result<ProcessPin, UnixAttestError>>>,
}

/// Longest wait for a connection's pin (it is taken before the connection is read from, so a
/// request normally finds it ready).
const PIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl WorkloadConnInfo {
    /// The pin, once taken.
    pub(super) async fn pin(&self) -> Result<ProcessPin, UnixAttestError> {
        let mut rx = self.pin.clone();
        let pid = self.uds.peer_cred.and_then(|c| c.pid()).unwrap_or(0);
        let waited = tokio::time::timeout(PIN_WAIT, rx.wait_for(Option::is_some)).await;
        let taken = match waited {
            Ok(Ok(pin)) => pin.clone(),
            // The pin was never taken (runtime shutting down) or is overdue.
            Ok(Err(_)) | Err(_) => None,
        };
        taken.unwrap_or(Err(UnixAttestError::Gone(pid)))
    }
}

/// Open Workload API connections per uid, bounded.
#[derive(Debug, Clone)]
pub(super) struct UidLimits {
    pub(super) max: usize,
    pub(super) counts: Arc<std::sync::Mutex<std::collections::HashMap<u32, UidCount>>>,
}

#[derive(Debug, Default)]
pub(super) struct UidCount {
    open: usize,
    /// Connections refused since this uid last had none open (for the log's rate limit).
    refused: u64,
}

/// One open connection of `uid`, counted until dropped.
#[derive(Debug)]
pub(super) struct UidSlot {
    uid: u32,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<u32, UidCount>>>,
}

impl UidLimits {
    pub(super) fn new(max: usize) -> UidLimits {
        UidLimits {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for a new connection of `uid`, or how many were refused so far (this one too).
    pub(super) fn acquire(&self, uid: u32) -> Result<UidSlot, u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(uid).or_default();
        if count.open >= self.max {
            count.refused = count.refused.saturating_add(1);
            let refused = count.refused;
            if count.open == 0 {
                // A limit of 0: nothing is ever held for this uid.
                counts.remove(&uid);
            }
            return Err(refused);
        }
        count.open += 1;
        Ok(UidSlot {
            uid,
            counts: self.counts.clone(),
        })
    }

    #[cfg(test)]
    pub(super) fn open(&self, uid: u32) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&uid).map_or(0, |c| c.open)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.uid) {
            count.open = count.open.saturating_sub(1);
            if count.open == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// An accepted Workload API connection: the `:authority` adapter over the socket, its uid's
/// slot, and its process pin. Reads and writes wait until the pin is taken.
pub(super) struct WorkloadConn {
    inner: AuthorityFix<tokio::net::UnixStream>,
    info: WorkloadConnInfo,
    /// Resolves once the pin is taken; `None` afterwards.
    pinning: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _slot: UidSlot,
}

impl std::fmt::Debug for WorkloadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadConn")
            .field("info", &self.info)
            .field("pinned", &self.pinning.is_none())
            .finish()
    }
}

impl WorkloadConn {
    /// Ready once the pin is taken.
    fn poll_pinned(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(pinning) = self.pinning.as_mut() {
            if pinning.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pinning = None;
        }
        Poll::Ready(())
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pinned(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for WorkloadConn {
    type ConnectInfo = WorkloadConnInfo;

    fn connect_info(&self) -> WorkloadConnInfo {
        self.info.clone()
    }
}

/// Takes an accepted connection in: counts it against its uid (closes it past the limit) and
/// starts pinning its process. `None`: the connection is closed.
pub(super) fn accept(
    stream: tokio::net::UnixStream,
    limits: &UidLimits,
    cfg: &Arc<UnixAttestConfig>,
) -> Option<WorkloadConn> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::info!(error = %e, "closed a Workload API connection without peer credentials");
            return None;
        }
    };
    let slot = match limits.acquire(cred.uid()) {
        Ok(slot) => slot,
        Err(refused) => {
            // Logged at the 1st, 2nd, 4th, 8th... refusal while the uid stays at the limit.
            if refused.is_power_of_two() {
                tracing::warn!(
                    uid = cred.uid(),
                    limit = limits.max,
                    refused,
                    "closed a Workload API connection: uid {} already has {} open connections (the limit per uid)",
                    cred.uid(),
                    limits.max
                );
            }
            return None;
        }
    };
    let peer = PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    // The executable's path now, in the accept loop (the kernel's record only: never blocks),
    // so an exec after this point is seen even before the pin below is taken.
    let exe_at_accept = unix_attest::exe_path(peer, cfg);
    let (tx, rx) = watch::channel(None);
    let pin_cfg = cfg.clone();
    // The rest (/proc reads and a stat of the executable, whose file system may be slow): on a
    // blocking thread, at once.
    drop(tokio::task::spawn_blocking(move || {
        let pin = ProcessPin::take(peer, exe_at_accept.as_deref(), &pin_cfg);
        tx.send_replace(Some(pin));
    }));
    let inner = AuthorityFix::new(stream);
    let uds = inner.connect_info();
    let mut waiter = rx.clone();
    Some(WorkloadConn {
        inner,
        info: WorkloadConnInfo { uds, pin: rx },
        pinning: Some(Box::pin(async move {
            let _ = waiter.wait_for(Option::is_some).await;
        })),
        _slot: slot,
    })
}
