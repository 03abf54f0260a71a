//! The cluster: `ClusterStatus`, `Health`, `RemoveServer` and `GetBundle`, and the parts of
//! openraft's metrics they report.

use std::time::Duration;

use tonic::{Request, Response, Status};
use wire::admin as pb;
use wire::{AuthorityKey, AuthorityState, Bundle, Command, Outcome, ServerRecord, Transport};

use super::{invalid, unexpected, AdminService};

/// The pinnable hash of `bundle` ([`attest::bundle::bundle_sha256`]), or an empty string if it
/// has no X.509 authority (there is nothing to pin yet).
pub fn bundle_hash_or_empty(bundle: &Bundle) -> String {
    if bundle.x509_authorities.is_empty() {
        String::new()
    } else {
        attest::bundle::bundle_sha256(bundle)
    }
}

fn server_to_pb(s: &ServerRecord) -> pb::ServerNode {
    pb::ServerNode {
        node_id: s.node_id,
        addr: s.addr.clone(),
    }
}

/// The parts of openraft's metrics the admin API reports.
mod raft_metrics {
    use raft::types::NodeId;

    pub(in crate::rt::admin) struct Snapshot {
        pub(in crate::rt::admin) state: String,
        pub(in crate::rt::admin) running: bool,
        pub(in crate::rt::admin) leader: Option<NodeId>,
        pub(in crate::rt::admin) term: u64,
        pub(in crate::rt::admin) applied: Option<u64>,
        /// (node ID, address, voter)
        pub(in crate::rt::admin) members: Vec<(NodeId, String, bool)>,
    }

    pub(in crate::rt::admin) fn snapshot(
        m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    ) -> Snapshot {
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        Snapshot {
            state: format!("{:?}", m.state),
            running: m.running_state.is_ok() && m.state != openraft::ServerState::Shutdown,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
                .collect(),
        }
    }
}

impl<T: Transport> AdminService<T> {
    pub(super) fn metrics(&self) -> raft_metrics::Snapshot {
        raft_metrics::snapshot(&self.replica.raft().metrics().borrow())
    }

    pub(super) async fn handle_get_bundle(
        &self,
        _request: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::GetBundleResponse>, Status> {
        let bundle = self
            .replica
            .read(|a| a.state.bundle(self.defaults.bundle_refresh_hint_secs));
        Ok(Response::new(pb::GetBundleResponse {
            trust_domain: self.trust_domain.to_string(),
            bundle_json: bundle.to_json().into_bytes(),
            x509_authorities: bundle
                .x509_authorities
                .iter()
                .map(|a| a.cert_der.clone())
                .collect(),
            sequence: bundle.sequence.unwrap_or(0),
            refresh_hint_secs: bundle.refresh_hint_secs.unwrap_or(0),
            bundle_sha256: bundle_hash_or_empty(&bundle),
        }))
    }

    pub(super) async fn handle_cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let m = self.metrics();
        let (active, bundle_sequence, entries, servers) = self.replica.read(|a| {
            let active: Vec<(u64, bool, pb::Authority)> = a
                .state
                .authorities()
                .values()
                .filter(|r| r.state == AuthorityState::Active)
                .map(|r| {
                    (
                        r.authority.node_id,
                        matches!(r.authority.key, AuthorityKey::X509(_)),
                        pb::Authority {
                            id: r.authority.id.clone(),
                            not_after_secs: r.authority.not_after.as_secs(),
                        },
                    )
                })
                .collect();
            let servers: Vec<pb::ServerNode> =
                a.state.servers().values().map(server_to_pb).collect();
            (
                active,
                a.state.bundle_sequence(),
                a.state.entries().count(),
                servers,
            )
        });
        let authority_of = |node: u64, x509: bool| {
            active
                .iter()
                .filter(|(n, is_x509, _)| *n == node && *is_x509 == x509)
                .map(|(_, _, a)| a.clone())
                .max_by_key(|a| a.not_after_secs)
        };
        let members = m
            .members
            .iter()
            .map(|(id, addr, voter)| pb::Member {
                node_id: *id,
                address: addr.clone(),
                voter: *voter,
                leader: m.leader == Some(*id),
                x509_authority: authority_of(*id, true),
                jwt_authority: authority_of(*id, false),
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            trust_domain: self.trust_domain.to_string(),
            node_id: self.replica.id(),
            node_state: m.state,
            leader_id: m.leader,
            term: m.term,
            applied_index: m.applied,
            members,
            bundle_sequence,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            servers,
        }))
    }

    pub(super) async fn handle_health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let m = self.metrics();
        Ok(Response::new(pb::HealthResponse {
            serving: m.running,
            node_id: self.replica.id(),
            leader_id: m.leader,
            applied_index: m.applied,
        }))
    }

    pub(super) async fn handle_remove_server(
        &self,
        request: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        let req = request.into_inner();
        let node_id = req.node_id;
        if node_id == 0 {
            return Err(invalid("node_id is required (server node IDs are > 0)"));
        }
        let at = self.env.wall();
        let prune_after =
            at.saturating_add(Duration::from_secs(self.defaults.removed_server_keep_secs));
        // The address as this replica knows it, for the answer; the state machine decides.
        let known = self
            .replica
            .read(|a| a.state.servers().get(&node_id).cloned());
        let cmd = Command::RemoveServer {
            node_id,
            at,
            prune_after,
            compromised: req.compromised,
        };
        match self.write(cmd).await? {
            Outcome::Done => {}
            other => return Err(unexpected(&other)),
        }
        if req.compromised {
            tracing::warn!(node_id, "server node removed as compromised: its authorities left the trust bundle, so every SVID it signed stops verifying");
        } else {
            tracing::info!(node_id, prune_after = prune_after.as_secs(), "server node removed from the desired membership; its authorities stay in the bundle until every SVID it may have signed expired");
        }
        // This replica may apply the removal after the leader answered: leave it out regardless.
        let servers = self.replica.read(|a| {
            a.state
                .servers()
                .values()
                .filter(|s| s.node_id != node_id)
                .map(server_to_pb)
                .collect()
        });
        Ok(Response::new(pb::RemoveServerResponse {
            removed: Some(pb::ServerNode {
                node_id,
                addr: known.map(|s| s.addr).unwrap_or_default(),
            }),
            servers,
        }))
    }
}
