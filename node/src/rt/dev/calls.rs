//! Talking to the children: admin API calls to a node (cluster status, server join tokens, the
//! bundle hash, the uid's entry) and a Workload API call to the agent, each bounded in time.

use std::path::Path;
use std::time::Duration;

use wire::admin as pb;

use super::{fail, now, DevError, NODE_WAIT};
use crate::rt::admin;

/// Bound on one admin or Workload API call while polling.
const CALL_LIMIT: Duration = Duration::from_secs(3);
/// Lifetime of the server join tokens `sigil dev` generates (each is used at once).
const JOIN_TOKEN_TTL_SECS: u64 = 900;

pub(super) async fn bounded<T>(f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    tokio::time::timeout(CALL_LIMIT, f).await.ok().flatten()
}

pub(super) async fn cluster_status(socket: &Path) -> Option<pb::ClusterStatusResponse> {
    bounded(async {
        let mut c = admin::connect(socket).await.ok()?;
        c.cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    })
    .await
}

pub(super) fn member(s: &pb::ClusterStatusResponse, i: u8) -> Option<&pb::Member> {
    s.members.iter().find(|m| m.node_id == u64::from(i))
}

/// Whether node `i`'s active CA was made during this run (a restarted node lost its keys and
/// publishes a new CA; its old one stays in the bundle until it expires).
pub(super) fn fresh_ca(
    s: &pb::ClusterStatusResponse,
    i: u8,
    ca_ttl: Duration,
    run_start: u64,
) -> bool {
    member(s, i)
        .and_then(|m| m.x509_authority.as_ref())
        .is_some_and(|a| a.not_after_secs.saturating_add(5) >= run_start + ca_ttl.as_secs())
}

/// The node's own role as its status says.
pub(super) fn role(s: &pb::ClusterStatusResponse, i: u8) -> &'static str {
    if s.leader_id == Some(u64::from(i)) {
        "leader"
    } else {
        "follower"
    }
}

/// A Workload API call as this process: whether `want` is among the X.509-SVIDs served.
pub(super) async fn serves_svid(socket: &Path, want: &str) -> bool {
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

/// A server join token for node `node_id`: a new member's, or — when it is a member already
/// (its server SVID expired while it was stopped) — one that re-admits it.
pub(super) async fn create_server_token(
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

pub(super) async fn bundle_hash(socket: &Path) -> Result<String, DevError> {
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

/// Registers `spiffe_id` for `uid` under `parent` unless such an entry exists; whether it
/// created one. Retried briefly (a write may meet a leader election).
pub(super) async fn ensure_entry(
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
