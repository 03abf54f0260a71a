//! # raft — sigil's replicated state
//!
//! Owns the openraft glue, the pure `apply(&mut State, Command) -> Response` state machine, and
//! the [`kv::Kv`] storage seam with its implementations (`MemKv` here; `SledKv` with the Raft
//! store). Raft RPCs travel over the [`wire::Transport`] seam.
//!
//! Never touches quinn, tonic, an OS clock or an OS RNG; storage goes through [`kv::Kv`] only.

#![forbid(unsafe_code)]

pub mod kv;
pub mod replica;
pub mod runtime;
#[cfg(feature = "sled")]
pub mod sled_kv;
pub mod state;
pub mod store;
pub mod types;

pub use kv::{Kv, KvOp, MemKv};
#[cfg(feature = "sled")]
pub use sled_kv::SledKv;
pub use state::{apply, apply_proposal, State};

/// Errors of the replicated-state layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(String),
}
