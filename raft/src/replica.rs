//! [`Replica`]: one server node's Raft member, wired to the [`Transport`] seam.
//!
//! Raft RPCs (append-entries, vote, install-snapshot) and forwarded client writes travel as
//! [`RaftMsg`] frames (versioned codec) over any [`Transport`]: QUIC in production, `SimNet` in
//! the simulator. Requests carry an ID; a dispatcher task matches responses to waiting callers.
//! Every call is bounded by a timeout, so a partition can delay Raft but never wedge it.
//!
//! Writes: [`Replica::write`] proposes locally when this node leads, forwards to the leader
//! otherwise, and answers [`WriteError::NoQuorum`] once `write_timeout` passes without a commit
//! (a minority side never hangs). Every write travels as a [`Proposal`] with one ID for all its
//! retries and forwards, and the state machine applies each ID at most once, so a retried write
//! whose first attempt did commit is not applied twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InitializeError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AsyncRuntime, BasicNode, Config, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use wire::{codec, Command, PeerId, Proposal, ProposalId, Response, Transport};

use crate::kv::Kv;
use crate::runtime::SeededRuntime;
use crate::store::{self, Applied};
use crate::types::{NodeId, Raft, TypeConfig};

/// A Raft RPC or forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Log replication / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Election.
    Vote(VoteRequest<NodeId>),
    /// One snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Write(Proposal),
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to `Write`: the command's response, or why the receiver could not commit it.
    Write(Result<Response, WriteError>),
}

/// A frame on the node↔node transport.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftMsg {
    /// A request; the reply carries the same ID.
    Request {
        /// Correlation ID, unique per sender.
        id: u64,
        /// The request.
        body: RpcRequest,
    },
    /// A reply.
    Response {
        /// The request's ID.
        id: u64,
        /// The reply.
        body: RpcResponse,
    },
    /// "You were removed from this cluster": a member's answer to any request from a server it
    /// applied the removal of. A removed node that never applied its own removal (it was cut off
    /// when it committed) otherwise campaigns for ever, and a member that lags behind the
    /// removal too keeps granting it votes whose terms unseat every leader (chaos seed 900526 on
    /// 5 nodes). The receiver believes it once a majority of the voters of its own view said
    /// so, and then stops campaigning, as if it had applied its removal.
    Removed,
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No leader with a quorum committed the write in time. It may still commit later.
    #[error("no quorum: the write did not commit within {waited_ms} ms (is a majority of server nodes reachable?)")]
    NoQuorum {
        /// How long we waited.
        waited_ms: u64,
    },
    /// The node asked is not the leader (internal; callers see `NoQuorum` after retries).
    #[error("not the leader")]
    NotLeader,
    /// The Raft node has stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// Timing and limits of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// openraft heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound.
    pub election_timeout_min_ms: u64,
    /// Election timeout upper bound.
    pub election_timeout_max_ms: u64,
    /// How long a write may take before `NoQuorum`.
    pub write_timeout_ms: u64,
    /// Build a snapshot (and compact the log) after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot (for slow followers).
    pub keep_entries_after_snapshot: u64,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            write_timeout_ms: 5_000,
            snapshot_after_entries: 5_000,
            keep_entries_after_snapshot: 1_000,
        }
    }
}

/// Pending calls awaiting a response, by request ID.
type Pending = Mutex<BTreeMap<u64, (PeerId, oneshot::Sender<RpcResponse>)>>;

/// A check of a write forwarded by another member before the leader proposes it: the
/// forwarding node's ID and the command; `Err(reason)` refuses it (as
/// [`wire::CommandError::Invalid`]). Installed by the node layer, which knows what only a given
/// node may propose (its own authorities) and how to check it.
pub type WriteGuard = Arc<dyn Fn(PeerId, &Command) -> Result<(), String> + Send + Sync>;

struct Shared<T: Transport> {
    transport: T,
    /// Checks forwarded writes (none: accept every member's).
    guard: std::sync::RwLock<Option<WriteGuard>>,
    pending: Pending,
    next_id: AtomicU64,
    /// This start's random number (proposal IDs).
    incarnation: u64,
    next_proposal: AtomicU64,
    /// A member said this node was removed ([`RaftMsg::Removed`]).
    told_removed: std::sync::atomic::AtomicBool,
}

impl<T: Transport> Shared<T> {
    /// Sends `body` to `to` and waits up to `timeout` for the reply.
    async fn call(
        &self,
        to: PeerId,
        body: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = codec::encode(&RaftMsg::Request { id, body }).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (to, tx));
        let result = match self.transport.send(to, frame) {
            Err(e) => Err(e.to_string()),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err("reply channel closed".to_owned()),
                Err(_) => Err(format!(
                    "no reply from node {to} within {} ms",
                    timeout.as_millis()
                )),
            },
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        result
    }
}

/// openraft's view of the network: clients over the shared transport.
struct NetworkFactory<T: Transport> {
    shared: Arc<Shared<T>>,
}

struct NetworkClient<T: Transport> {
    target: NodeId,
    shared: Arc<Shared<T>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallFailed(String);

impl<T: Transport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = NetworkClient<T>;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        NetworkClient {
            target,
            shared: self.shared.clone(),
        }
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&CallFailed("mismatched response".into())))
}

impl<T: Transport> NetworkClient<T> {
    async fn call(&self, body: RpcRequest, option: &RPCOption) -> Result<RpcResponse, Unreachable> {
        self.shared
            .call(self.target, body, option.hard_ttl())
            .await
            .map_err(|e| Unreachable::new(&CallFailed(e)))
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for NetworkClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RpcRequest::AppendEntries(rpc), &option).await? {
            RpcResponse::AppendEntries(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RpcRequest::InstallSnapshot(rpc), &option).await? {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RemoteError::new(self.target, e).into())
            }
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RpcRequest::Vote(rpc), &option).await? {
            RpcResponse::Vote(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            _ => Err(unexpected()),
        }
    }
}

/// A running Raft member.
pub struct Replica<T: Transport> {
    id: NodeId,
    raft: Raft,
    shared: Arc<Shared<T>>,
    applied: Arc<std::sync::RwLock<Applied>>,
    progress: tokio::sync::watch::Receiver<u64>,
    write_timeout: Duration,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl<T: Transport> std::fmt::Debug for Replica<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).finish()
    }
}

/// Errors starting a replica.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// openraft rejected the configuration.
    #[error("raft configuration: {0}")]
    Config(String),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(String),
    /// openraft failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

impl<T: Transport> Replica<T> {
    /// Starts node `id` on `kv` (fresh or holding an earlier run's state) and `transport`.
    pub async fn start<K: Kv>(
        id: NodeId,
        config: &ReplicaConfig,
        kv: K,
        transport: T,
    ) -> Result<Replica<T>, StartError> {
        let raft_config = Config {
            cluster_name: "sigil".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: config.keep_entries_after_snapshot,
            // Chunks stay well under the transport's message limit.
            snapshot_max_chunk_size: 1 << 20,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let (log, sm) = store::open(kv).map_err(|e| StartError::Storage(e.to_string()))?;
        let applied = sm.applied();
        let progress = sm.subscribe();
        // Request IDs start at a random point: replies addressed to an earlier incarnation of
        // this node (still in flight when it restarted) must not match this one's requests.
        let first_id = rand::RngCore::next_u64(&mut SeededRuntime::thread_rng()) >> 1;
        let shared = Arc::new(Shared {
            transport,
            guard: std::sync::RwLock::new(None),
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(first_id),
            incarnation: rand::RngCore::next_u64(&mut SeededRuntime::thread_rng()),
            next_proposal: AtomicU64::new(1),
            told_removed: std::sync::atomic::AtomicBool::new(false),
        });
        let network = NetworkFactory {
            shared: shared.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let dispatcher = SeededRuntime::spawn(dispatch(
            raft.clone(),
            shared.clone(),
            applied.clone(),
            Duration::from_millis(config.write_timeout_ms),
        ));
        Ok(Replica {
            id,
            raft,
            shared,
            applied,
            progress,
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            dispatcher,
        })
    }
}

impl<T: Transport> Replica<T> {
    /// This node's ID.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The underlying openraft handle (metrics, membership changes).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Installs the check of writes other members forward to this node (when it leads).
    pub fn set_write_guard(&self, guard: WriteGuard) {
        *self.shared.guard.write().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }

    /// The applied state, shared with the state machine.
    pub fn applied(&self) -> Arc<std::sync::RwLock<Applied>> {
        self.applied.clone()
    }

    /// Reads the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&Applied) -> R) -> R {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this node knows it was removed from the cluster: it applied its own removal,
    /// or a member told it ([`RaftMsg::Removed`], which also turned its elections off).
    pub fn knows_removed(&self) -> bool {
        self.shared.told_removed.load(Ordering::Relaxed)
            || self.read(|a| a.state.removed_servers().contains_key(&self.id))
    }

    /// Changes whenever a command is applied (value: last applied index).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.clone()
    }

    /// Makes this node the first member of a new cluster of `members` (node ID → address).
    /// `Ok(false)`: the node already belongs to a cluster (a restart), nothing changed.
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<bool, String> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether this node holds any Raft log (waits up to `limit` for openraft to report its
    /// restored state).
    pub async fn has_log(&self, limit: Duration) -> bool {
        self.raft
            .wait(Some(limit))
            .metrics(|m| m.last_log_index.is_some(), "restored log")
            .await
            .is_ok()
    }

    /// Commits `cmd` through the leader (local or forwarded) and returns its response, or
    /// [`WriteError::NoQuorum`] after the write timeout.
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        // One ID for every retry and forward of this write: the state machine applies it once.
        let proposal = Proposal {
            id: ProposalId {
                node: self.id,
                incarnation: self.shared.incarnation,
                seq: self.shared.next_proposal.fetch_add(1, Ordering::Relaxed),
            },
            cmd,
        };
        let attempt = write_with_retries(
            self.id,
            &self.raft,
            &self.shared,
            proposal,
            self.write_timeout,
        );
        match tokio::time::timeout(self.write_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(WriteError::NoQuorum {
                waited_ms: u64::try_from(self.write_timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Stops Raft and the dispatcher.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.dispatcher.abort();
    }
}

/// Pause between write attempts while no leader is known or the leader moved.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Proposes `cmd` locally or at the leader until one commits it (the caller bounds the time).
async fn write_with_retries<T: Transport>(
    self_id: NodeId,
    raft: &Raft,
    shared: &Shared<T>,
    proposal: Proposal,
    per_try: Duration,
) -> Result<Response, WriteError> {
    loop {
        match raft.client_write(proposal.clone()).await {
            Ok(resp) => return Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                if let Some(leader) = f.leader_id.filter(|l| *l != self_id) {
                    // The leader this node knows may be gone for good: after a restart it is
                    // the one in the stored vote. Stop waiting for it as soon as Raft learns
                    // of another leader (or an election starts) rather than at the deadline.
                    let mut metrics = raft.metrics();
                    let call = shared.call(leader, RpcRequest::Write(proposal.clone()), per_try);
                    let forwarded = tokio::select! {
                        biased;
                        r = call => Some(r),
                        _ = metrics.wait_for(|m| m.current_leader != Some(leader)) => None,
                    };
                    // Anything but a committed answer (not leader any more, no quorum there,
                    // no reply, another leader) means: pause and try again until the caller's
                    // deadline. A retry is safe: the proposal's ID makes it apply once.
                    if let Some(Ok(RpcResponse::Write(Ok(response)))) = forwarded {
                        return Ok(response);
                    }
                }
            }
            Err(RaftError::APIError(e)) => return Err(WriteError::Stopped(e.to_string())),
            Err(RaftError::Fatal(e)) => return Err(WriteError::Stopped(e.to_string())),
        }
        tokio::time::sleep(WRITE_RETRY_PAUSE).await;
    }
}

/// Whether `from` may send this node Raft requests and forwarded writes: a node of the current
/// Raft membership (voter or learner) or of the registered servers, never a removed one. A node
/// that belongs to no cluster yet (a joining node before its first log entries) hears any peer
/// the transport authenticated.
pub fn accepts_requests_from(
    raft: &Raft,
    applied: &std::sync::RwLock<Applied>,
    from: PeerId,
) -> bool {
    let metrics = raft.metrics();
    let (in_membership, no_membership) = {
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let known = membership.get_node(&from).is_some();
        let empty = membership.nodes().next().is_none();
        (known, empty)
    };
    let registered = applied
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .state
        .servers()
        .contains_key(&from);
    !was_removed(applied, from) && (no_membership || in_membership || registered)
}

/// Whether this node applied the removal of server `peer`.
fn was_removed(applied: &std::sync::RwLock<Applied>, peer: PeerId) -> bool {
    applied
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .state
        .removed_servers()
        .contains_key(&peer)
}

/// Turns this node's elections, heartbeats and ticks off: it was removed from the cluster (it
/// applied its removal, or a member told it so).
pub fn stand_down(raft: &Raft) {
    let config = raft.runtime_config();
    config.elect(false);
    config.heartbeat(false);
    config.tick(false);
}

/// Answers one request from a peer.
async fn handle_request<T: Transport>(
    raft: &Raft,
    shared: &Shared<T>,
    from: PeerId,
    body: RpcRequest,
    write_timeout: Duration,
) -> RpcResponse {
    match body {
        RpcRequest::AppendEntries(rpc) => {
            RpcResponse::AppendEntries(raft.append_entries(rpc).await)
        }
        RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcRequest::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        RpcRequest::Write(proposal) => {
            // A forwarded proposal is the forwarding node's own: its ID names that node.
            if proposal.id.node != from {
                return RpcResponse::Write(Ok(Err(wire::CommandError::Invalid(format!(
                    "node {from} forwarded a proposal of node {}",
                    proposal.id.node
                )))));
            }
            let guard = shared
                .guard
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(guard) = guard {
                if let Err(reason) = guard(from, &proposal.cmd) {
                    tracing::warn!(peer = from, reason = %reason, "refused a write forwarded by a member");
                    return RpcResponse::Write(Ok(Err(wire::CommandError::Invalid(reason))));
                }
            }
            let result =
                match tokio::time::timeout(write_timeout, raft.client_write(proposal)).await {
                    Ok(Ok(resp)) => Ok(resp.data),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                        Err(WriteError::NotLeader)
                    }
                    Ok(Err(e)) => Err(WriteError::Stopped(e.to_string())),
                    Err(_) => Err(WriteError::NoQuorum {
                        waited_ms: u64::try_from(write_timeout.as_millis()).unwrap_or(u64::MAX),
                    }),
                };
            RpcResponse::Write(result)
        }
    }
}

/// Reads frames from the transport: replies complete pending calls, requests are answered by
/// their own task (a slow write must not hold up heartbeats).
async fn dispatch<T: Transport>(
    raft: Raft,
    shared: Arc<Shared<T>>,
    applied: Arc<std::sync::RwLock<Applied>>,
    write_timeout: Duration,
) {
    // Peers whose refused requests were logged (once each, so a removed node cannot flood logs).
    let mut refused_logged: std::collections::BTreeSet<PeerId> = std::collections::BTreeSet::new();
    // Members that told this node it was removed ([`RaftMsg::Removed`]).
    let mut told_removed_by: std::collections::BTreeSet<PeerId> = std::collections::BTreeSet::new();
    while let Some((from, frame)) = shared.transport.recv().await {
        let msg: RaftMsg = match codec::decode(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "dropping undecodable raft frame; check that all nodes run compatible sigil versions");
                continue;
            }
        };
        match msg {
            RaftMsg::Response { id, body } => {
                // A removed server's answers do not count either (its vote responses would
                // carry its runaway term to the members and keep them from electing a leader).
                if was_removed(&applied, from) {
                    continue;
                }
                let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                // Only the peer we asked may answer.
                if pending.get(&id).is_some_and(|(to, _)| *to == from) {
                    if let Some((_, tx)) = pending.remove(&id) {
                        let _ = tx.send(body);
                    }
                }
            }
            RaftMsg::Removed => {
                // Believed from members of our own view only, and only once a majority of its
                // voters said so (a removal commits on a majority): one rogue or confused
                // member cannot make a healthy node stand down.
                if shared.told_removed.load(Ordering::Relaxed)
                    || !accepts_requests_from(&raft, &applied, from)
                {
                    continue;
                }
                told_removed_by.insert(from);
                let voters = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count();
                if told_removed_by.len() * 2 > voters {
                    shared.told_removed.store(true, Ordering::Relaxed);
                    stand_down(&raft);
                    tracing::warn!(told_by = ?told_removed_by, "a majority of the members say this server node was removed from the cluster: it no longer takes part in elections; stop it (`sigil cluster remove-server` was run for it)");
                }
            }
            RaftMsg::Request { id, body } => {
                if was_removed(&applied, from) {
                    // Tell it, so it stops campaigning (its requests are still not answered).
                    if let Ok(frame) = codec::encode(&RaftMsg::Removed) {
                        let _ = shared.transport.send(from, frame);
                    }
                    continue;
                }
                if !accepts_requests_from(&raft, &applied, from) {
                    if refused_logged.len() < 64 && refused_logged.insert(from) {
                        tracing::warn!(peer = from, "ignoring Raft requests from a node that is not a member of this cluster (removed, or never admitted); if it should be one, check `sigil cluster status`");
                    }
                    continue;
                }
                let raft = raft.clone();
                let shared = shared.clone();
                SeededRuntime::spawn(async move {
                    let body = handle_request(&raft, &shared, from, body, write_timeout).await;
                    match codec::encode(&RaftMsg::Response { id, body }) {
                        Ok(frame) => {
                            let _ = shared.transport.send(from, frame);
                        }
                        Err(e) => {
                            tracing::warn!(peer = from, error = %e, "cannot encode a raft reply; the peer retries (this is a bug: please report it with this line)")
                        }
                    }
                });
            }
        }
    }
}
