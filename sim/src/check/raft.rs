//! Raft safety as seen from outside: who leads under which vote, and per-node high-water marks
//! that must survive restarts.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{RaftMetrics, ServerState};

/// One node's observed Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks {
    /// Current term.
    pub term: u64,
    /// Last applied index.
    pub applied: u64,
    /// `spiffe_sequence` of its applied bundle.
    pub bundle_sequence: u64,
}

/// Leadership and monotonicity checker.
#[derive(Debug, Default)]
pub struct RaftChecker {
    leaders_by_term: BTreeMap<u64, BTreeSet<u64>>,
    high_water: BTreeMap<u64, Marks>,
    /// Violations found.
    pub violations: Vec<String>,
}

impl RaftChecker {
    /// Observes node `id`'s metrics and bundle sequence; `None` when the node has not reported
    /// its restored state yet (metrics start empty after a restart).
    pub fn observe(
        &mut self,
        id: u64,
        m: &RaftMetrics<u64, openraft::BasicNode>,
        bundle_sequence: u64,
    ) {
        if m.current_term == 0 && m.last_log_index.is_none() {
            return;
        }
        let now = Marks {
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            bundle_sequence,
        };
        let high = self.high_water.get(&id).copied().unwrap_or_default();
        if now.term < high.term || now.applied < high.applied {
            self.violations.push(format!(
                "node {id} went backwards: term {} -> {}, applied {} -> {}",
                high.term, now.term, high.applied, now.applied
            ));
        }
        if now.bundle_sequence < high.bundle_sequence && now.applied >= high.applied {
            self.violations.push(format!(
                "node {id}'s bundle sequence went backwards: {} -> {} at applied index {}",
                high.bundle_sequence, now.bundle_sequence, now.applied
            ));
        }
        self.high_water.insert(
            id,
            Marks {
                term: high.term.max(now.term),
                applied: high.applied.max(now.applied),
                bundle_sequence: high.bundle_sequence.max(now.bundle_sequence),
            },
        );
        if m.state == ServerState::Leader {
            // openraft's leader ID is (term, node): a later candidate with a higher node ID may
            // lead in the same term (its entries carry the full leader ID, so the log stays
            // consistent). What must hold is that a node leads only under its own committed
            // vote.
            if m.vote.leader_id().voted_for() != Some(id) || !m.vote.is_committed() {
                self.violations.push(format!(
                    "node {id} leads without its own committed vote: {:?}",
                    m.vote
                ));
            }
            self.leaders_by_term
                .entry(m.current_term)
                .or_default()
                .insert(id);
        }
    }
}
