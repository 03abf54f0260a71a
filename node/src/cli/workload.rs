//! The Workload API socket (`--socket`, `$SPIFFE_ENDPOINT_SOCKET`), connecting to it, and its
//! errors as one line: the transport of `sigil api`.

use std::path::PathBuf;

use node::rt::admin;
use tonic::transport::Channel;
use tonic::Code;

use super::api::ENDPOINT_SOCKET_ENV;
use super::{fail, CliError};

/// The Workload API socket path from `--socket` (a path or a `unix:` URI) or, without it, from
/// `$SPIFFE_ENDPOINT_SOCKET` (a `unix:` URI, as for every SPIFFE client).
pub fn workload_socket(
    flag: Option<&str>,
    env: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, CliError> {
    if let Some(text) = flag {
        if text.is_empty() {
            return Err(fail("--socket: empty path"));
        }
        if text.contains(':') && !text.starts_with('/') {
            return parse_unix_uri(text).map_err(|e| fail(format!("--socket {text}: {e}")));
        }
        return Ok(PathBuf::from(text));
    }
    let hint = "pass --socket PATH or set SPIFFE_ENDPOINT_SOCKET=unix:///path/to/agent.sock \
                (the agent's socket_path, default /run/sigil/agent.sock)";
    let text = match env {
        Some(v) if !v.is_empty() => v
            .to_str()
            .ok_or_else(|| fail(format!("{ENDPOINT_SOCKET_ENV} is not valid UTF-8")))?,
        _ => {
            return Err(fail(format!(
                "no Workload API socket given: {ENDPOINT_SOCKET_ENV} is not set; {hint}"
            )))
        }
    };
    parse_unix_uri(text).map_err(|e| fail(format!("{ENDPOINT_SOCKET_ENV}={text}: {e}")))
}

/// `unix:/path` or `unix:///path` → `/path`.
fn parse_unix_uri(text: &str) -> Result<PathBuf, String> {
    let Some((scheme, rest)) = text.split_once(':') else {
        return Err(format!("not a unix: URI (write unix://{text})"));
    };
    if !scheme.eq_ignore_ascii_case("unix") {
        return Err(if scheme.eq_ignore_ascii_case("tcp") {
            "TCP endpoints are not supported: the sigil agent serves the Workload API on a Unix \
             socket (unix:///path)"
                .to_owned()
        } else {
            format!("unsupported scheme `{scheme}` (use unix:///path)")
        });
    }
    if rest.contains(['?', '#']) {
        return Err("a unix: URI takes no query or fragment".to_owned());
    }
    let path = match rest.strip_prefix("//") {
        Some(after) if after.starts_with('/') => after,
        Some(_) => return Err("has a host part; use unix:///absolute/path".to_owned()),
        None => rest,
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err("the socket path must be absolute (unix:///path)".to_owned());
    }
    Ok(PathBuf::from(path))
}

/// This process's user ID (the owner of `/proc/self`), for error messages.
fn own_uid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or_else(|_| "unknown".to_owned(), |m| m.uid().to_string())
}

/// A Workload API error as one line.
pub(super) fn workload_status(s: tonic::Status) -> CliError {
    let msg = s.message().replace(['\n', '\r'], " ");
    match s.code() {
        Code::PermissionDenied if msg.contains(node::rt::workload_api::NO_IDENTITY) => {
            let uid = own_uid();
            fail(format!(
                "no identity issued for this process (uid {uid}): no registration entry matches \
                 it under this agent (see `sigil entry list --selector unix:uid:{uid}`)"
            ))
        }
        Code::PermissionDenied => fail(format!("the Workload API refused this process: {msg}")),
        Code::InvalidArgument => fail(msg),
        Code::Unavailable => fail(format!("Workload API unavailable: {msg}")),
        Code::Unimplemented => fail(format!(
            "the Workload API does not support this call: {msg}"
        )),
        _ => fail(format!("Workload API error ({:?}): {msg}", s.code())),
    }
}

/// A request carrying the `workload.spiffe.io: true` header.
pub(super) fn workload_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        wire::workload::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static(wire::workload::SECURITY_HEADER_VALUE),
    );
    req
}

type WorkloadClient = wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>;

/// Connects to the Workload API on `path` (a precise error if it is missing or nobody listens).
pub(super) async fn workload_connect(path: &std::path::Path) -> Result<WorkloadClient, CliError> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "the Workload API socket {shown} does not exist (is `sigil agent` running, and \
                 is this its socket_path?)"
            )))
        }
        Err(e) => {
            return Err(fail(format!(
                "cannot reach the Workload API socket {shown}: {}",
                admin::io_text(&e.to_string())
            )))
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail(format!("{shown} is not a socket")));
        }
        Ok(_) => {}
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        fail(format!(
            "cannot connect to the Workload API socket {shown}: {} (is `sigil agent` running?)",
            admin::io_text(&e.to_string())
        ))
    };
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
    let channel = admin::uds_channel(path, endpoint)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(WorkloadClient::new(channel))
}

/// Runs `f`, failing with a clear line if it takes longer than `limit`.
pub(super) async fn bounded<T>(
    limit: std::time::Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "{what}: no answer from the Workload API within {}s (--timeout)",
            limit.as_secs()
        ))),
    }
}

/// Connects and reads the first `FetchX509SVID` message.
pub(super) async fn first_x509(
    socket: &std::path::Path,
) -> Result<
    (
        wire::workload::X509svidResponse,
        tonic::Streaming<wire::workload::X509svidResponse>,
    ),
    CliError,
> {
    let mut client = workload_connect(socket).await?;
    let mut stream = client
        .fetch_x509svid(workload_request(wire::workload::X509svidRequest {}))
        .await
        .map_err(workload_status)?
        .into_inner();
    match stream.message().await.map_err(workload_status)? {
        Some(first) if !first.svids.is_empty() => Ok((first, stream)),
        Some(_) => Err(fail("the Workload API sent no X.509-SVID")),
        None => Err(fail(
            "the Workload API closed the stream without sending an X.509-SVID",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_sockets() {
        use std::ffi::OsStr;
        let path = |flag: Option<&str>, env: Option<&str>| {
            workload_socket(flag, env.map(OsStr::new)).map_err(|e| e.to_string())
        };
        assert_eq!(
            path(None, Some("unix:/run/a.sock")),
            Ok("/run/a.sock".into())
        );
        assert_eq!(
            path(None, Some("unix:///run/a.sock")),
            Ok("/run/a.sock".into())
        );
        assert_eq!(
            path(Some("/tmp/x.sock"), Some("unix:/run/a.sock")),
            Ok("/tmp/x.sock".into())
        );
        assert_eq!(
            path(Some("unix:///tmp/x.sock"), None),
            Ok("/tmp/x.sock".into())
        );
        assert_eq!(path(Some("rel.sock"), None), Ok("rel.sock".into()));
        for (env, says) in [
            (None, "SPIFFE_ENDPOINT_SOCKET is not set"),
            (Some(""), "SPIFFE_ENDPOINT_SOCKET is not set"),
            (Some("/run/a.sock"), "not a unix: URI"),
            (
                Some("tcp://127.0.0.1:8081"),
                "TCP endpoints are not supported",
            ),
            (Some("unix://host/a.sock"), "host part"),
            (Some("unix:a.sock"), "absolute"),
            (Some("unix:///a.sock?x=1"), "no query"),
            (Some("http:///a.sock"), "unsupported scheme"),
        ] {
            let err = path(None, env).expect_err("refused");
            assert!(err.contains(says), "{env:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
