//! # wire — sigil's vocabulary
//!
//! Owns the types every other crate speaks, each parsed once ("parse, don't validate"):
//! [`SpiffeId`] and [`TrustDomain`] exactly per SPIFFE-ID.md, [`Selector`],
//! [`RegistrationEntry`], [`Bundle`] and [`BundleMap`] in the SPIFFE bundle (JWKS) format, the
//! versioned binary [`codec`] for node↔node and agent↔server messages, the Workload API protobuf
//! (`workload`, feature `workload-api`), and the seams that keep node logic deterministic: [`Env`] (time, randomness,
//! keys, spawning) and [`Transport`] (message delivery).
//!
//! Never does IO, never reads a clock or an RNG, never starts a task: a value in, a value out.
//! Every decoder returns a typed [`Error`] on bad input and never panics.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "workload-api")]
pub mod admin;
pub mod api;
pub mod authority;
pub mod bundle;
pub mod codec;
pub mod command;
pub mod entry;
pub mod env;
pub mod id;
pub mod selector;
pub mod transport;
#[cfg(feature = "workload-api")]
pub mod workload;

pub use authority::{bundle_of, Authority, AuthorityKey};
pub use bundle::{Bundle, BundleMap, JwtAuthority, PublicJwk, X509Authority};
pub use command::{
    AgentRecord, AgentRenewal, AttestationMethod, AuthorityState, Command, CommandError, JoinToken,
    Outcome, Proposal, ProposalId, RemovedServer, Response, ServerRecord, TokenPurpose,
    RENEW_PREDECESSOR_GRACE_SECS,
};
pub use entry::{EntryId, RegistrationEntry};
pub use env::{
    Env, KeyAlg, KeySource, Mono, RngTree, Seed, SigFormat, Signer, UnixTime, WorkloadKey,
};
pub use id::{IdRule, SpiffeId, TrustDomain};
pub use selector::Selector;
pub use transport::{PeerId, SendError, Transport};

/// Everything that can go wrong while parsing or encoding sigil's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID or trust domain broke a rule of SPIFFE-ID.md.
    #[error("invalid SPIFFE ID {input:?}: {rule}")]
    InvalidId {
        /// The input, truncated for display.
        input: String,
        /// The rule it broke.
        rule: IdRule,
    },
    /// A selector is malformed.
    #[error("invalid selector {input:?}: {reason}")]
    InvalidSelector {
        /// The input, truncated for display.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A registration entry breaks a rule.
    #[error("invalid registration entry: {reason}")]
    InvalidEntry {
        /// What is wrong.
        reason: String,
    },
    /// A bundle document is malformed.
    #[error("invalid bundle: {reason}")]
    InvalidBundle {
        /// What is wrong.
        reason: String,
    },
    /// A frame is larger than the codec allows.
    #[error("message of {bytes} bytes exceeds the limit of {bytes_max}")]
    MessageTooLarge {
        /// The frame's size.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// A frame ended early.
    #[error("message is truncated")]
    Truncated,
    /// A frame was written by an incompatible codec version.
    #[error("message has codec version {version}, this build speaks {supported}")]
    UnsupportedVersion {
        /// The frame's version byte.
        version: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// A frame has bytes after the value.
    #[error("message has {bytes} unexpected trailing bytes")]
    TrailingBytes {
        /// How many.
        bytes: usize,
    },
    /// A frame's body does not decode.
    #[error("message does not decode: {0}")]
    Decode(String),
    /// A value could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
    /// Key generation or signing failed (the message never contains key material).
    #[error("key operation failed: {0}")]
    Key(&'static str),
}
