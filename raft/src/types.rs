//! The openraft type configuration shared by production and the simulator.

use std::io::Cursor;

use crate::runtime::SeededRuntime;

/// A server node's Raft ID.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// sigil's Raft types: commands from `wire`, QUIC addresses in `BasicNode`, snapshots in
    /// memory, the seeded runtime.
    pub TypeConfig:
        D = wire::Proposal,
        R = wire::Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SeededRuntime,
);

/// openraft's handle on a running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log ID.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
