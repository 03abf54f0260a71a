//! Raft commands and their responses: every change to the replicated state (DESIGN.md §3).
//!
//! Wall time used by a command travels inside it (`at`), chosen by the proposing node, so that
//! applying a command is a pure function on every replica. Secrets never travel: a join token is
//! replicated as its SHA-256 (hex), never as the token itself.

use serde::{Deserialize, Serialize};

use crate::{
    Authority, Bundle, EntryId, RegistrationEntry, Selector, SpiffeId, TrustDomain, UnixTime,
};

/// Most entries one batch command may carry.
pub const BATCH_ENTRIES_MAX: usize = 500;
/// Most renewals one [`Command::RecordAgentRenewals`] may carry.
pub const BATCH_RENEWALS_MAX: usize = 1000;

/// How an agent proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttestationMethod {
    /// A single-use join token (its hash).
    JoinToken,
    /// Proof of possession of an x509 key.
    X509Pop,
    /// A TPM 2.0 quote.
    Tpm,
}

/// What a join token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenPurpose {
    /// An agent (node attestation).
    Agent,
    /// A new server node (cluster membership).
    Server,
}

/// A single-use join token, as replicated (only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Set once consumed: the agent or server that used it.
    pub consumed_by: Option<SpiffeId>,
    /// Whether it admits an agent or a server node.
    pub purpose: TokenPurpose,
    /// Set once consumed: lowercase hex SHA-256 of the public key (SPKI DER) its consumer
    /// presented. The token is bound to that key: only a retry with the same key is answered
    /// again, any other presentation is refused.
    pub consumer_key_sha256: String,
    /// Server tokens: the node ID the token admits, chosen when it was generated (the joining
    /// node cannot pick another).
    pub node_id: Option<u64>,
    /// Server tokens: the token re-admits `node_id` although it is a member (a node whose
    /// server SVID expired while it was down). Without it, a token for a member is refused.
    pub rejoin: bool,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it was consumed.
    pub consumed_at: Option<UnixTime>,
}

/// One agent SVID renewal, as recorded after the fact ([`Command::RecordAgentRenewals`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRenewal {
    /// The agent.
    pub spiffe_id: SpiffeId,
    /// Serial (hex) of the SVID the agent presented to renew; empty for an SVID issued at
    /// (re-)attestation, which proved the agent afresh.
    pub presented_serial: String,
    /// Serial (hex) of the new SVID.
    pub svid_serial: String,
    /// The new SVID's `NotAfter`.
    pub svid_not_after: UnixTime,
    /// When the issuing node signed it (its wall clock).
    pub at: UnixTime,
}

/// A server node removed from the cluster, remembered so that its ID is never admitted again
/// (its old server SVID would otherwise become a member's) and so that its authorities leave the
/// bundle on time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedServer {
    /// When it was removed (the proposer's wall time).
    pub removed_at: UnixTime,
    /// From when its authorities may be pruned from the bundle although they have not expired:
    /// once every SVID it can have signed has expired, or at once when the operator said it was
    /// compromised.
    pub prune_after: UnixTime,
    /// The operator said its keys may be compromised (its authorities were removed at once).
    pub compromised: bool,
}

/// A server node of the cluster, as replicated: the set of these is the cluster's desired
/// voting membership, which the leader reconciles Raft's membership towards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// The node's Raft ID (its SPIFFE ID is `spiffe://<td>/sigil/server/<node_id>`).
    pub node_id: u64,
    /// Where other nodes reach it (`host:port` of its QUIC endpoint).
    pub addr: String,
}

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID (`spiffe://<td>/sigil/agent/<method>/<id>`).
    pub spiffe_id: SpiffeId,
    /// How it attested.
    pub method: AttestationMethod,
    /// Selectors produced by node attestation.
    pub selectors: Vec<Selector>,
    /// Banned agents get nothing until unbanned.
    pub banned: bool,
    /// Serial (hex) of the agent's latest SVID (renewals are recorded after the fact, coalesced).
    /// Renewal is allowed only from this SVID (or one newer that is not recorded yet, or
    /// briefly from its predecessor), so a copied older agent SVID cannot renew.
    pub svid_serial: String,
    /// `NotAfter` of the agent's latest SVID.
    pub svid_not_after: UnixTime,
    /// Serial (hex) of the SVID that `svid_serial` replaced (a renewal whose answer was lost
    /// is retried with it for [`RENEW_PREDECESSOR_GRACE_SECS`]).
    pub previous_serial: String,
    /// When the latest SVID was issued (0: never recorded).
    pub renewed_at: UnixTime,
    /// When the agent first attested (node attestation through Raft).
    pub attested_at: UnixTime,
}

/// How long after a renewal (by the issuing node's clock) the SVID it replaced may still renew:
/// an agent retrying a renewal whose answer was lost presents its old SVID. A copy of the old
/// SVID (and its key) wins too if it renews inside this window; outside it, it is refused.
pub const RENEW_PREDECESSOR_GRACE_SECS: u64 = 10;

/// Lifecycle of a published authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuthorityState {
    /// In the bundle, not yet signing.
    Published,
    /// Its node signs with it.
    Active,
    /// Replaced; still in the bundle until its SVIDs expire.
    Retired,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create entries (each independently: one bad entry does not fail the others).
    CreateEntries {
        /// The new entries (IDs assigned by the proposer; revision is set to 0 on create).
        entries: Vec<RegistrationEntry>,
    },
    /// Replace an entry; fails unless `expected_revision` matches when given.
    UpdateEntry {
        /// The new content (same ID).
        entry: RegistrationEntry,
        /// Optimistic concurrency check.
        expected_revision: Option<u64>,
    },
    /// Delete entries by ID.
    DeleteEntries {
        /// The IDs.
        ids: Vec<EntryId>,
    },
    /// Register a join token.
    CreateJoinToken {
        /// The token (hash only).
        token: JoinToken,
    },
    /// Consume a join token and register the agent it attests, exactly once.
    ConsumeJoinToken {
        /// Hex SHA-256 of the presented token.
        token_sha256: String,
        /// Hex SHA-256 of the public key the agent presented (the token is bound to it).
        key_sha256: String,
        /// The agent to register.
        agent: AgentRecord,
        /// The proposer's wall time (expiry check).
        at: UnixTime,
    },
    /// Consume a server join token and add the server node it admits, exactly once.
    ConsumeServerToken {
        /// Hex SHA-256 of the presented token.
        token_sha256: String,
        /// Hex SHA-256 of the public key the joining node presented (the token is bound to it).
        key_sha256: String,
        /// The joining node.
        server: ServerRecord,
        /// Its SPIFFE ID (`spiffe://<td>/sigil/server/<node_id>`), recorded on the token.
        spiffe_id: SpiffeId,
        /// The proposer's wall time (expiry check).
        at: UnixTime,
    },
    /// Record a server node as a member (the bootstrap node registers itself; a node whose
    /// address changed re-registers). Idempotent.
    RegisterServer {
        /// The node.
        server: ServerRecord,
    },
    /// Remove a server node from the desired membership (refused for the last one). Its ID is
    /// never admitted again; its authorities are retired at once and pruned from `prune_after`
    /// (or removed at once when `compromised`).
    RemoveServer {
        /// The node's ID.
        node_id: u64,
        /// The proposer's wall time.
        at: UnixTime,
        /// When its authorities may leave the bundle (after every SVID it may have signed
        /// expired: `at` + staleness_max + the longest SVID TTL).
        prune_after: UnixTime,
        /// Its keys may be compromised: its authorities leave the bundle now.
        compromised: bool,
    },
    /// Forget a join token (used or not): it admits nobody any more.
    RevokeJoinToken {
        /// Hex SHA-256 of the token.
        token_sha256: String,
    },
    /// Forget an agent: its SVID stops working on every node that applied this, and it must
    /// attest again. Refused for a banned agent (unban it first: a ban must not be lifted by
    /// accident).
    EvictAgent {
        /// The agent.
        spiffe_id: SpiffeId,
    },
    /// Register (or re-attest) an agent by another method.
    RegisterAgent {
        /// The agent.
        agent: AgentRecord,
    },
    /// Ban or unban an agent.
    SetAgentBanned {
        /// The agent.
        spiffe_id: SpiffeId,
        /// New state.
        banned: bool,
    },
    /// Record agent SVID renewals (after the fact, many coalesced into one entry).
    RecordAgentRenewals {
        /// The renewals, in the order the issuing node made them.
        renewals: Vec<AgentRenewal>,
    },
    /// Add a node's new key to the bundle (before it may sign). Refused once the key has
    /// expired (a late, retried publication must not put a pruned key back).
    PublishAuthority {
        /// The public half.
        authority: Authority,
        /// The proposer's wall time.
        at: UnixTime,
    },
    /// Mark a published key as the one its node signs with (retires that node's previous key of
    /// the same kind).
    ActivateAuthority {
        /// Authority ID.
        id: String,
    },
    /// Remove an expired key from the bundle; refused while it may still back a valid SVID.
    PruneAuthority {
        /// Authority ID.
        id: String,
        /// The proposer's wall time.
        at: UnixTime,
    },
    /// Store or replace a federated trust domain's bundle.
    SetFederatedBundle {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// Its bundle.
        bundle: Bundle,
    },
    /// Forget a federated trust domain.
    RemoveFederatedBundle {
        /// The trust domain.
        trust_domain: TrustDomain,
    },
    /// Changes nothing in the state: the leader commits one every few seconds, and a node that
    /// applies it knows a leader had a quorum at `at` (its `staleness_max` contact).
    Tick {
        /// The proposing leader's wall time.
        at: UnixTime,
    },
    /// Register an agent join token together with an entry that gives the agent it will attest
    /// an extra SPIFFE ID (`sigil token generate --spiffe-id`): both or neither.
    CreateJoinTokenWithEntry {
        /// The token (hash only; purpose agent).
        token: JoinToken,
        /// The entry (parent: the servers; selector: the agent's ID).
        entry: RegistrationEntry,
    },
}

/// Identifies one client proposal across retries and duplicate deliveries, so that the state
/// machine applies it at most once: the proposing node, a random number fixed per start of that
/// node (its incarnation), and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// The node that first proposed it.
    pub node: u64,
    /// Random per start of that node.
    pub incarnation: u64,
    /// Counter within the incarnation.
    pub seq: u64,
}

/// What a Raft log entry carries: a command and the ID that makes re-proposals harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Deduplication key.
    pub id: ProposalId,
    /// The change.
    pub cmd: Command,
}

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command's content is invalid.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The thing already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Optimistic concurrency failed.
    #[error("revision mismatch: expected {expected}, found {actual}")]
    RevisionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What is stored.
        actual: u64,
    },
    /// The join token was already consumed.
    #[error("join token already used")]
    TokenUsed,
    /// The join token expired.
    #[error("join token expired")]
    TokenExpired,
    /// The agent is banned.
    #[error("agent {0} is banned")]
    AgentBanned(String),
    /// A limit would be exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The join token is for another purpose (agent vs. server).
    #[error("join token is not for {0}")]
    TokenPurpose(String),
    /// The join token does not admit this consumer (another node ID, a member without
    /// `rejoin`, a removed node).
    #[error("join token refused: {0}")]
    TokenRefused(String),
    /// The authority may still back valid SVIDs.
    #[error("authority {0} has not expired yet")]
    AuthorityLive(String),
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing to report.
    Done,
    /// Per-entry results of a batch create.
    Created(Vec<Result<RegistrationEntry, CommandError>>),
    /// The stored entry after an update.
    Updated(RegistrationEntry),
    /// How many entries were deleted, and which IDs were missing.
    Deleted {
        /// Deleted count.
        deleted: usize,
        /// IDs that did not exist.
        missing: Vec<EntryId>,
    },
    /// The agent as registered.
    Agent(AgentRecord),
    /// The bundle's sequence after the change.
    BundleSequence(u64),
    /// The server node as registered.
    Server(ServerRecord),
}

/// The response to a command: what it produced, or why it was refused.
pub type Response = Result<Outcome, CommandError>;
