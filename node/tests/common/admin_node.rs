//! An in-process admin API: node 1 of a Raft cluster on an in-memory store, alone (its peers
//! never answer), serving the admin API on a Unix socket. For the tests that drive the admin
//! API directly (the `sigil` CLI, grpc-python); they include this file with
//! `#[path = "common/admin_node.rs"] mod admin_node;`.

#![allow(dead_code)] // each test crate uses its own subset

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use node::rt::admin::{self, AdminDefaults, AdminService};
use node::rt::SystemEnv;
use openraft::BasicNode;
use raft::replica::{Replica, ReplicaConfig};
use raft::MemKv;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::{Env, PeerId, SendError, Transport};

/// A single-node cluster needs no peers: sending fails, receiving waits forever.
pub struct Alone;

impl Transport for Alone {
    fn send(&self, to: PeerId, _frame: Vec<u8>) -> Result<(), SendError> {
        Err(SendError::UnknownPeer(to))
    }

    fn recv(&self) -> impl Future<Output = Option<(PeerId, Vec<u8>)>> + Send {
        std::future::pending()
    }
}

/// Fast elections; admin writes time out after `write_timeout_ms`.
pub fn replica_config(write_timeout_ms: u64) -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        write_timeout_ms,
        ..ReplicaConfig::default()
    }
}

/// Node 1 serving the admin API on `socket` until `stop` is sent.
pub struct AdminNode {
    pub replica: Arc<Replica<Alone>>,
    pub env: Arc<SystemEnv>,
    pub socket: PathBuf,
    pub stop: Option<oneshot::Sender<()>>,
    /// The admin server's task: how serving ended.
    pub server: JoinHandle<Result<(), String>>,
}

impl AdminNode {
    /// Starts node 1 of `members` (only node 1 ever answers; alone, it waits to lead) for trust
    /// domain `td`, and serves its admin API on `socket`, telling the service this node's QUIC
    /// address (`seed`) if given. Waits, at most `deadline`, for the leader and the socket.
    pub async fn start(
        socket: PathBuf,
        td: &str,
        members: &[u64],
        write_timeout_ms: u64,
        seed: Option<&str>,
        deadline: Duration,
    ) -> AdminNode {
        let replica = Replica::start(1, &replica_config(write_timeout_ms), MemKv::new(), Alone)
            .await
            .expect("start replica");
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|id| (*id, BasicNode::new(format!("127.0.0.1:{}", 7000 + id))))
            .collect();
        replica.initialize(nodes).await.expect("initialize");
        if members == [1] {
            replica
                .raft()
                .wait(Some(deadline))
                .current_leader(1, "node 1 leads")
                .await
                .expect("leader in time");
        }
        let replica = Arc::new(replica);
        let env = Arc::new(SystemEnv::new().expect("env"));
        let mut service = AdminService::new(
            replica.clone(),
            env.clone() as Arc<dyn Env>,
            td.parse().expect("td"),
            AdminDefaults::default(),
        );
        if let Some(seed) = seed {
            service = service.with_seed_address(seed);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let path = socket.clone();
        #[allow(clippy::disallowed_methods)] // the test's admin server runs as a task
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            admin::serve_admin(&path, service, shutdown)
                .await
                .map_err(|e| e.to_string())
        });
        let appeared = tokio::time::timeout(deadline, async {
            while !socket.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(appeared.is_ok(), "admin socket did not appear");
        AdminNode {
            replica,
            env,
            socket,
            stop: Some(stop),
            server,
        }
    }
}
