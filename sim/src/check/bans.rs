//! A banned agent that keeps asking (issue 20): the world bans an honest agent at a random step
//! (`Command::SetAgentBanned` through a node) and the agent carries on — syncing, having SVIDs
//! signed, renewing its own SVID, attesting again with its join token. Every answer it gets is
//! checked here.
//!
//! **The bound.** Let `applied(N)` be the first moment node `N`'s replica held the ban (sampled
//! by the world right before node `N` handles each of the agent's requests, and after every
//! step), and `committed` the earliest of the ban write's acknowledgement and the first moment
//! any node held it. Then for a request node `N` starts handling at virtual time `t`:
//!
//! - a **view** (`Sync`) is a violation if `N` had applied the ban before `t`;
//! - an **X.509-SVID, a renewed agent SVID or a re-attestation's agent SVID** is a violation if
//!   `N` had applied the ban before `t`, or if `t > committed + staleness_max + slack` (`slack`
//!   as in [`super::staleness::slack`]). The second rule covers nodes cut off from the quorum,
//!   which never apply the ban: a node issues only while its contact with a leader — the
//!   proposer's time of the newest tick it applied — is within `staleness_max` (+ slack), and a
//!   tick proposed after the ban committed comes after the ban in the log, so a node in contact
//!   past that bound has applied the ban.
//!
//! Views are not bounded by `staleness_max`: a cut-off node keeps answering `Sync` from its
//! replica (entries and bundle are not credentials), and README promises only that it stops
//! *issuing*. Deliveries before the ban applied on the answering node are fine (counted as
//! `served_before_ban`).

use std::collections::BTreeMap;
use std::time::Duration;

/// What a node handed the banned agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Its view (entries, bundle).
    View,
    /// A workload X.509-SVID.
    X509,
    /// An agent SVID (renewal or re-attestation).
    AgentSvid,
}

/// The ban checker (one banned agent per run at most).
#[derive(Debug)]
pub struct BanChecker {
    staleness_max: Duration,
    slack: Duration,
    /// Node → first moment it was seen holding the ban.
    applied: BTreeMap<u64, Duration>,
    /// The earliest of the ban's acknowledgement and its first sighting on any node.
    committed: Option<Duration>,
    /// Requests the banned agent made after the ban was proposed.
    pub tried: u64,
    /// Of them, refused (or lost on the network).
    pub refused: u64,
    /// Answers delivered by a node that had not applied the ban yet (within the bound).
    pub served_before_ban: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl BanChecker {
    /// A checker for `staleness_max` with the staleness checker's `slack`.
    pub fn new(staleness_max: Duration, slack: Duration) -> BanChecker {
        BanChecker {
            staleness_max,
            slack,
            applied: BTreeMap::new(),
            committed: None,
            tried: 0,
            refused: 0,
            served_before_ban: 0,
            violations: Vec::new(),
        }
    }

    /// The ban write was acknowledged (committed and applied on the node that answered) at `at`.
    pub fn on_ban_acked(&mut self, at: Duration) {
        self.committed = Some(self.committed.map_or(at, |c| c.min(at)));
    }

    /// Node `node` holds (`true`) the ban at `at`.
    pub fn observe(&mut self, node: u64, banned: bool, at: Duration) {
        if banned {
            self.applied.entry(node).or_insert(at);
            self.committed = Some(self.committed.map_or(at, |c| c.min(at)));
        }
    }

    /// A request of the banned agent to `node`, handled from `at` (when `node` already held the
    /// ban: `ban_applied`), was answered with `delivery` (`None`: refused or lost).
    pub fn on_answer(
        &mut self,
        node: u64,
        at: Duration,
        ban_applied: bool,
        delivery: Option<Delivery>,
    ) {
        self.tried += 1;
        self.observe(node, ban_applied, at);
        let Some(delivery) = delivery else {
            self.refused += 1;
            return;
        };
        let applied = self.applied.get(&node).copied().filter(|a| *a <= at);
        if let Some(applied) = applied {
            self.violations.push(format!(
                "node {node} delivered {delivery:?} to a banned agent at {:.3} s, after it applied the ban (seen at {:.3} s)",
                at.as_secs_f64(),
                applied.as_secs_f64()
            ));
            return;
        }
        if delivery != Delivery::View {
            if let Some(committed) = self.committed {
                let limit = committed + self.staleness_max + self.slack;
                if at > limit {
                    self.violations.push(format!(
                        "node {node}, which had not applied the ban, delivered {delivery:?} to a banned agent at {:.3} s, {:.1} s after the ban committed (staleness_max {} s + slack {:.1} s)",
                        at.as_secs_f64(),
                        (at - committed).as_secs_f64(),
                        self.staleness_max.as_secs(),
                        self.slack.as_secs_f64()
                    ));
                    return;
                }
            }
        }
        self.served_before_ban += 1;
    }
}
