//! Restart recovery on sled: a node that wrote, snapshotted and compacted comes back with the same
//! state, from its own disk, through a fresh openraft instance.
#![cfg(feature = "sled")]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use openraft::BasicNode;
use raft::replica::{Replica, ReplicaConfig};
use raft::SledKv;
use wire::{Command, EntryId, Outcome, PeerId, RegistrationEntry, SendError, Transport};

/// A single-node cluster needs no peers: sending fails, receiving waits forever.
struct Alone;

impl Transport for Alone {
    fn send(&self, to: PeerId, _frame: Vec<u8>) -> Result<(), SendError> {
        Err(SendError::UnknownPeer(to))
    }

    fn recv(&self) -> impl Future<Output = Option<(PeerId, Vec<u8>)>> + Send {
        std::future::pending()
    }
}

fn entry(n: u32) -> RegistrationEntry {
    let mut bits = [0u8; 16];
    bits[..4].copy_from_slice(&n.to_be_bytes());
    RegistrationEntry::new(
        EntryId::from_random(bits),
        format!("spiffe://example.org/w{n}").parse().expect("id"),
        "spiffe://example.org/sigil/agent/x/1".parse().expect("id"),
        [format!("unix:uid:{n}").parse().expect("selector")].into(),
        0,
    )
}

fn config() -> ReplicaConfig {
    ReplicaConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        write_timeout_ms: 5_000,
        snapshot_after_entries: 10,
        keep_entries_after_snapshot: 3,
    }
}

async fn wait_applied(r: &Replica<Alone>, index: u64) {
    let mut rx = r.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|i| *i >= index))
        .await
        .expect("applied in time")
        .expect("state machine alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_from_sled_with_snapshots_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (applied_before, state_before) = {
        let kv = SledKv::open(dir.path()).expect("open sled");
        let r = Replica::start(1, &config(), kv, Alone)
            .await
            .expect("start");
        let members: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("local"))].into();
        r.initialize(members).await.expect("initialize");
        for n in 0..40 {
            let out = r
                .write(Command::CreateEntries {
                    entries: vec![entry(n)],
                })
                .await
                .expect("committed")
                .expect("applied");
            assert!(matches!(out, Outcome::Created(ref v) if v.iter().all(Result::is_ok)));
        }
        let metrics = r.raft().metrics().borrow().clone();
        assert!(metrics.snapshot.is_some(), "a snapshot was built");
        assert!(metrics.purged.is_some(), "the log was compacted");
        let snapshot = r.read(|a| (a.last_applied.map(|l| l.index), a.state.clone()));
        r.shutdown().await;
        snapshot
    };
    assert_eq!(state_before.entries().count(), 40);

    // openraft's tasks drop their storage handles shortly after shutdown; sled's file lock is
    // released with the last handle.
    let mut kv = None;
    for _ in 0..100 {
        match SledKv::open(dir.path()) {
            Ok(k) => {
                kv = Some(k);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let kv = kv.expect("reopen sled within 5 s");
    let r = Replica::start(1, &config(), kv, Alone)
        .await
        .expect("restart");
    wait_applied(&r, applied_before.expect("applied index")).await;
    let (applied_after, state_after) =
        r.read(|a| (a.last_applied.map(|l| l.index), a.state.clone()));
    assert_eq!(applied_after, applied_before);
    assert_eq!(state_after, state_before, "same state after restart");
    // And it keeps working.
    r.write(Command::CreateEntries {
        entries: vec![entry(1000)],
    })
    .await
    .expect("committed after restart")
    .expect("applied");
    assert_eq!(r.read(|a| a.state.entries().count()), 41);
    r.shutdown().await;
}
