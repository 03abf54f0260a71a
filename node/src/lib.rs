//! # node — sigil's server node and agent
//!
//! Owns the actors (issuer, CA rotation, registration, agent cache) as plain sans-IO structs, and
//! composes them with the other crates. The production shell lives in [`rt`] (feature `rt`, on by
//! default): tokio, quinn, tonic over Unix sockets, sled, `SO_PEERCRED`, the OS clock and
//! entropy. The `sigil` binary is a thin CLI over it.
//!
//! Never puts logic in the shell: the shell only moves inputs into actors and executes their
//! outputs, so the simulator (which builds this crate without `rt`) runs the same logic.

#![forbid(unsafe_code)]

pub mod actors;
#[cfg(feature = "rt")]
pub mod rt;
pub mod server;
pub mod service;

fn stale_message(since_ms: u64) -> String {
    if since_ms == u64::MAX {
        "this node has not been in contact with a Raft leader yet, so it does not issue; retry shortly (if it persists, check connectivity to a majority of server nodes)".into()
    } else {
        format!("this node's replica is stale ({since_ms} ms without leader contact); it stops issuing past staleness_max — check connectivity to a majority of server nodes")
    }
}

/// Errors of the node layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused something (entropy, a socket, a file).
    #[error("{what}: {detail}")]
    Os {
        /// What we were doing.
        what: &'static str,
        /// What the OS said.
        detail: String,
    },
    /// A configuration file is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The requester may not have this identity.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// This node has not heard from a leader for longer than `staleness_max` (or not yet).
    #[error("{}", stale_message(*since_ms))]
    Stale {
        /// Time since the last leader contact (u64::MAX: never).
        since_ms: u64,
    },
    /// No published, active signing key yet (publication needs a quorum).
    #[error(
        "no active signing key yet: its publication has not committed (is a quorum reachable?)"
    )]
    NoActiveKey,
    /// Minting or key generation failed.
    #[error(transparent)]
    Attest(attest::Error),
}
