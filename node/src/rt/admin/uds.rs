//! The admin API's Unix-socket plumbing: binding a socket that is never reachable with looser
//! permissions than asked, serving gRPC routes on it, and the client side.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wire::admin::admin_client::AdminClient;
use wire::Transport;

use super::{AdminService, ADMIN_SOCKET_MODE};
use crate::Error;

fn os_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Os {
        what,
        detail: format!("{}: {}", path.display(), io_text(&e.to_string())),
    }
}

/// An OS error's text without the " (os error N)" suffix.
pub fn io_text(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text.to_owned(),
    }
}

/// Distinguishes the private directories of concurrent binds in one process.
static BIND_SEQ: AtomicU64 = AtomicU64::new(0);

/// Binds a Unix socket at `path` with permissions `mode`, replacing a stale socket file and
/// refusing to replace anything else, a socket another process serves included
/// ([`crate::rt::socket::claim`]). The socket is bound in a fresh directory only the owner can
/// enter, given `mode`, then renamed into place: it is never reachable with looser permissions.
pub fn bind_admin_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, Error> {
    crate::rt::socket::claim(path, "creating the admin socket")?;
    let name = path.file_name().ok_or_else(|| Error::Os {
        what: "creating the admin socket",
        detail: format!("{} does not name a file", path.display()),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| os_error("creating the admin socket's directory", &parent, e))?;
    let private = parent.join(format!(
        ".{}.{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        BIND_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            os_error(
                "creating a private directory for the admin socket",
                &private,
                e,
            )
        })?;
    let staged = private.join("s");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .map_err(|e| os_error("binding the admin socket", &staged, e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(|e| os_error("restricting the admin socket", &staged, e))?;
        std::fs::rename(&staged, path)
            .map_err(|e| os_error("moving the admin socket into place", path, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| os_error("configuring the admin socket", path, e))?;
        tokio::net::UnixListener::from_std(listener)
            .map_err(|e| os_error("registering the admin socket", path, e))
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Serves `service` on a Unix socket at `path` with mode 0600 until `shutdown` completes, then
/// removes the socket file. See [`bind_admin_socket`] for how the socket is created.
pub async fn serve_admin<T: Transport>(
    path: &Path,
    service: AdminService<T>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_admin_with_mode(path, ADMIN_SOCKET_MODE, service, shutdown).await
}

/// [`serve_admin`] with explicit socket permissions.
pub async fn serve_admin_with_mode<T: Transport>(
    path: &Path,
    mode: u32,
    service: AdminService<T>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let routes = tonic::service::Routes::new(service.into_server());
    serve_on_socket(path, mode, "admin API", routes, shutdown).await
}

/// Serves gRPC `routes` on a Unix socket at `path` made by [`bind_admin_socket`] with `mode`
/// until `shutdown` completes, then removes the socket file. `what` names the API in logs.
/// Connections go through the Workload API's `:authority` adapter
/// ([`AuthorityFix`](crate::rt::h2_authority::AuthorityFix)), so grpc-python clients, which name
/// the socket path as `:authority`, are served too; requests still carry the peer credentials
/// (`UdsConnectInfo`).
pub async fn serve_on_socket(
    path: &Path,
    mode: u32,
    what: &'static str,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listener = bind_admin_socket(path, mode)?;
    let ours = crate::rt::socket::Claimed::record(path);
    tracing::info!(socket = %path.display(), "{what} listening");
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(crate::rt::h2_authority::AuthorityFix::new),
    );
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    ours.release();
    served.map_err(|e| Error::Os {
        what: "serving a gRPC API on a Unix socket",
        detail: format!("{what} at {}: {}", path.display(), io_text(&e.to_string())),
    })
}

/// How long the client waits for one admin call (writes may wait for a quorum).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A gRPC channel over the Unix socket at `path` (tonic over hyper): connects once at once, so
/// a missing or refused socket is an error here rather than on the first call, and reconnects
/// later as needed. The error is the OS's text.
pub async fn uds_channel(
    path: &Path,
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, String> {
    let first = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let first = Arc::new(std::sync::Mutex::new(Some(first)));
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let first = first.clone();
        let socket = socket.clone();
        async move {
            let ready = first.lock().unwrap_or_else(|p| p.into_inner()).take();
            let stream = match ready {
                Some(stream) => stream,
                None => tokio::net::UnixStream::connect(&socket).await?,
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| e.to_string())
}

/// Connects to the admin API on the Unix socket at `path`. The error names the socket and asks
/// whether the server is running.
pub async fn connect(path: &Path) -> Result<AdminClient<tonic::transport::Channel>, Error> {
    let unreachable = |e: &dyn std::fmt::Display| Error::Os {
        what: "cannot reach the admin socket",
        detail: format!(
            "{}: {} (is `sigil server` running?)",
            path.display(),
            io_text(&e.to_string())
        ),
    };
    let endpoint = tonic::transport::Endpoint::from_static("http://sigil-admin.local")
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    let channel = uds_channel(path, endpoint)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(AdminClient::new(channel))
}
