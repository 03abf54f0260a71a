//! The run's checkers. They sit outside the code under test (style-anchors.md B6): the world
//! hands them what it observed — Raft metrics, applied states, SVIDs as agents received them,
//! what workloads were served, every frame on the wire, the network's link state — and each
//! reports the invariants it saw broken, as plain sentences.
//!
//! | file | invariants |
//! |---|---|
//! | [`raft`] | a node leads only under its own committed vote; term, applied index and bundle sequence never go backwards, restarts included |
//! | [`registrations`] | acknowledged creates and deletes hold on every node; no phantom entries |
//! | [`svids`] | every delivered SVID is spec-form for its entry, chains to the issuing node's applied bundle, ends no later than its CA; a key leaves the bundle only after its SVIDs expired |
//! | [`staleness`] | a node that hears no other node stops issuing within `staleness_max`; no SVID for an entry later than `staleness_max` after its delete committed |
//! | [`secrets`] | no private-key bytes in any frame (Raft entries included) or node API answer |
//! | [`workloads`] | a workload is served only entries it is entitled to, each SVID valid for it; after heal every workload holds an SVID that verifies against the converged bundle |
//! | [`hostile`] | a replayed join token (another key; one node, or raced on two) never attests; an agent never gets an SVID for another agent's entry (`SignX509`, `MintJwt`); a copied agent SVID never renews past the record of the agent's renewal + `RENEW_PREDECESSOR_GRACE_SECS` + slack (or `staleness_max` for a node without the record) |
//! | [`bans`] | a banned agent gets no view from a node that applied the ban, and no SVID or renewal from it, nor from any node later than `staleness_max` + slack after the ban committed |
//! | [`removed`] | a removed server (still running, still proposing) never commits a proposal made after its removal, and never leads again |

pub mod bans;
pub mod hostile;
pub mod raft;
pub mod registrations;
pub mod removed;
pub mod secrets;
pub mod staleness;
pub mod svids;
pub mod workloads;

use std::time::Duration;

use wire::{Bundle, RegistrationEntry, UnixTime};

/// An X.509-SVID as an agent received it from a server node.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The issuing node.
    pub node: u64,
    /// The entry it was asked for, as the agent's view had it.
    pub entry: RegistrationEntry,
    /// The leaf certificate.
    pub cert_der: Vec<u8>,
    /// Virtual time of the signing (when the node handled the request).
    pub at: Duration,
    /// The issuing node's wall clock then.
    pub node_wall: UnixTime,
    /// The issuing node's applied bundle then.
    pub node_bundle: Bundle,
}
