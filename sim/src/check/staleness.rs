//! `staleness_max`, checked from the network's side: a node that hears no other node must stop
//! issuing within `staleness_max` of the cut, and once a delete committed no node may issue an
//! SVID for that entry later than `staleness_max` after it.
//!
//! The bound has a slack ([`slack`]): a leader counts a quorum acknowledgement for
//! `quorum_ack_max`, the contact sampler runs every 100 ms, and a follower dates contact by the
//! leader's clock when it proposed its newest tick, so clock error between them adds to it.
//!
//! History: contact used to mean "Raft's metrics name a leader". The swarm showed that a
//! follower keeps naming its old leader for a few election timeouts after the last message,
//! and that a leader that lost its quorum never steps down, so a follower that still hears it
//! (one-way cuts) kept issuing; seeds 2041 and 3086 issued SVIDs for deleted entries 17.5 s and
//! 13.7 s after the delete committed, with `staleness_max` at 10 s. Counting any applied
//! progress as contact was not enough either: seed 100173 had a lagging follower catch up on
//! old entries, counting each batch as contact, and issue for a deleted entry 14.2 s after the
//! delete. Contact is now the proposer's time of the newest committed tick (the leader commits
//! one every `staleness_max`/4).

use std::collections::BTreeMap;
use std::time::Duration;

use wire::EntryId;

use super::Delivered;

/// Slack on top of `staleness_max` (see the module docs): `clock_error` is the most a node's
/// clock can be behind a leader's.
pub fn slack(quorum_ack_max: Duration, clock_error: Duration) -> Duration {
    quorum_ack_max + clock_error + Duration::from_millis(500)
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
