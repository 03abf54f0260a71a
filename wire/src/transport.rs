//! The transport seam (DESIGN.md §4): message-level send and receive between peers.
//!
//! Messages are opaque frames (see [`crate::codec`]); QUIC carries them in production, `SimNet`
//! in the simulator (with delay, loss, duplication, reordering and partitions). A transport never
//! blocks a sender: a full queue or an unknown peer is an immediate error, and delivery is
//! best-effort (callers that need a reply time out and retry).

use std::future::Future;

use thiserror::Error as ThisError;

/// A peer's identity on the transport: a server node's Raft node ID, or an agent's session ID.
pub type PeerId = u64;

/// Why a frame could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, ThisError)]
#[non_exhaustive]
pub enum SendError {
    /// The peer is not known to this transport.
    #[error("peer {0} is unknown")]
    UnknownPeer(PeerId),
    /// The peer's outgoing queue is full; try later.
    #[error("queue to peer {0} is full")]
    Overloaded(PeerId),
    /// The frame is larger than the transport allows.
    #[error("frame of {bytes} bytes exceeds the limit of {bytes_max}")]
    TooLarge {
        /// The frame's size.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The transport has shut down.
    #[error("transport is closed")]
    Closed,
}

/// Message-level, best-effort delivery between peers.
pub trait Transport: Send + Sync + 'static {
    /// Queues `frame` for `to` without waiting.
    fn send(&self, to: PeerId, frame: Vec<u8>) -> Result<(), SendError>;

    /// The next frame addressed to this node and who sent it; `None` once the transport closed.
    fn recv(&self) -> impl Future<Output = Option<(PeerId, Vec<u8>)>> + Send;
}
