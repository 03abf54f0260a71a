//! `staleness_max`, checked from the network's side: a node that hears no other node must stop
//! issuing within `staleness_max` of the cut, and once a delete committed no node may issue an
//! SVID for that entry later than `staleness_max` after it.
//!
//! The bound has a slack ([`slack`]): a leader counts a quorum acknowledgement for
//! `quorum_ack_max`, the contact sampler runs every 100 ms, and a follower counts as in contact
//! while its Raft metrics name a leader — openraft keeps naming the old leader until the
//! follower's election timer fires, which the swarm saw take up to ~3 election timeouts after
//! the follower stopped hearing anything (seed 2035: 5.5 s with 1.6 s timeouts).
//!
//! Why not "a node in a minority stops": a follower counts as in contact while it hears a leader,
//! and openraft's leader does not step down when it loses its quorum. With one-way cuts (the
//! leader reaches a follower, nothing reaches the leader) the follower keeps issuing from the
//! state it has beyond `staleness_max` (seed 2001 of the swarm found it). Nothing can commit
//! through that leader, so its followers miss nothing it could commit; what they can miss is a
//! write committed by a new leader elsewhere that cannot reach them — exactly what the delete
//! rule below checks.

use std::collections::BTreeMap;
use std::time::Duration;

use wire::EntryId;

use super::Delivered;

/// Slack on top of `staleness_max` for a cluster with these timeouts (see the module docs).
pub fn slack(quorum_ack_max: Duration, election_timeout_max: Duration) -> Duration {
    quorum_ack_max + election_timeout_max * 4 + Duration::from_millis(500)
}

/// The staleness checker.
#[derive(Debug)]
pub struct StalenessChecker {
    staleness_max: Duration,
    slack: Duration,
    /// Node → virtual time since which it hears no other node (or is down).
    cut_off_since: BTreeMap<u64, Duration>,
    /// Entry → virtual time its delete was acknowledged.
    deleted_at: BTreeMap<EntryId, Duration>,
    /// Deliveries that happened while their node was cut off for more than half of
    /// `staleness_max` (the knob's permissive side, exercised).
    pub issued_while_cut_off: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl StalenessChecker {
    /// A checker for `staleness_max`, allowing `slack` (see [`slack`]).
    pub fn new(staleness_max: Duration, slack: Duration) -> StalenessChecker {
        StalenessChecker {
            staleness_max,
            slack,
            cut_off_since: BTreeMap::new(),
            deleted_at: BTreeMap::new(),
            issued_while_cut_off: 0,
            violations: Vec::new(),
        }
    }

    /// Node `node` is (`true`) or is not cut off at virtual time `now`.
    pub fn observe_cut_off(&mut self, node: u64, cut_off: bool, now: Duration) {
        if cut_off {
            self.cut_off_since.entry(node).or_insert(now);
        } else {
            self.cut_off_since.remove(&node);
        }
    }

    /// A delete of `entry` was acknowledged at `now`.
    pub fn on_delete_acked(&mut self, entry: EntryId, now: Duration) {
        self.deleted_at.entry(entry).or_insert(now);
    }

    /// Checks a delivered SVID against both rules.
    pub fn on_delivered(&mut self, d: &Delivered) {
        let limit = self.staleness_max + self.slack;
        if let Some(since) = self.cut_off_since.get(&d.node) {
            let cut = d.at.saturating_sub(*since);
            if cut > limit {
                self.violations.push(format!(
                    "node {} issued an SVID for {} at {:.3} s, {:.1} s after it stopped hearing any other node (staleness_max {} s)",
                    d.node,
                    d.entry.spiffe_id,
                    d.at.as_secs_f64(),
                    cut.as_secs_f64(),
                    self.staleness_max.as_secs()
                ));
            } else if cut > self.staleness_max / 2 {
                self.issued_while_cut_off += 1;
            }
        }
        if let Some(deleted) = self.deleted_at.get(&d.entry.id) {
            let late = d.at.saturating_sub(*deleted);
            if d.at > *deleted && late > limit {
                self.violations.push(format!(
                    "node {} issued an SVID for deleted entry {} ({}) {:.1} s after the delete committed (staleness_max {} s)",
                    d.node,
                    d.entry.id,
                    d.entry.spiffe_id,
                    late.as_secs_f64(),
                    self.staleness_max.as_secs()
                ));
            }
        }
    }
}
