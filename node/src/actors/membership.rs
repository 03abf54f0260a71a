//! Membership reconciliation: the replicated set of server records ([`raft::State::servers`])
//! is the cluster's *desired* voting membership; the leader moves Raft's actual membership
//! towards it one step at a time — add a joined node as a learner, promote it once it caught
//! up, demote and forget removed nodes. Declarative, so it survives leader changes: a new leader
//! simply continues from wherever the membership is.

use std::collections::{BTreeMap, BTreeSet};

use wire::ServerRecord;

/// One change towards the desired membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    /// The desired set is empty (a cluster bootstrapped before server records existed):
    /// record the current voters as servers.
    RegisterVoters(Vec<ServerRecord>),
    /// Add a desired node as a learner (it then receives the log).
    AddLearner(ServerRecord),
    /// Make a caught-up learner a voter.
    Promote(u64),
    /// Remove a voter that is no longer desired.
    RemoveVoter(u64),
    /// Forget a learner that is no longer desired.
    RemoveLearner(u64),
}

/// The next step from the actual membership (`voters`, `learners`, `addrs` of every node in the
/// membership) towards `desired`, or `None` when they agree. Additions come before removals, so
/// a replacement never shrinks the quorum first; the last voter is never removed.
pub fn next_step(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    addrs: &BTreeMap<u64, String>,
    desired: &BTreeMap<u64, ServerRecord>,
) -> Option<MembershipStep> {
    if desired.is_empty() {
        if voters.is_empty() {
            return None;
        }
        return Some(MembershipStep::RegisterVoters(
            voters
                .iter()
                .map(|id| ServerRecord {
                    node_id: *id,
                    addr: addrs.get(id).cloned().unwrap_or_default(),
                })
                .filter(|r| !r.addr.is_empty())
                .collect(),
        ));
    }
    for id in desired.keys() {
        if learners.contains(id) {
            return Some(MembershipStep::Promote(*id));
        }
    }
    for (id, record) in desired {
        if !voters.contains(id) && !learners.contains(id) {
            return Some(MembershipStep::AddLearner(record.clone()));
        }
    }
    for id in learners {
        if !desired.contains_key(id) {
            return Some(MembershipStep::RemoveLearner(*id));
        }
    }
    if voters.len() > 1 {
        for id in voters {
            if !desired.contains_key(id) {
                return Some(MembershipStep::RemoveVoter(*id));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> ServerRecord {
        ServerRecord {
            node_id: id,
            addr: format!("127.0.0.1:{}", 9000 + id),
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn desired(ids: &[u64]) -> BTreeMap<u64, ServerRecord> {
        ids.iter().map(|id| (*id, rec(*id))).collect()
    }

    fn addrs(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter().map(|id| (*id, rec(*id).addr)).collect()
    }

    /// Applies steps like a leader would until none is left.
    fn converge(mut voters: BTreeSet<u64>, want: &[u64]) -> (BTreeSet<u64>, Vec<MembershipStep>) {
        let mut learners = BTreeSet::new();
        let mut steps = Vec::new();
        let desired = desired(want);
        while let Some(step) = next_step(&voters, &learners, &addrs(&[1, 2, 3, 4, 5]), &desired) {
            match &step {
                MembershipStep::AddLearner(r) => {
                    learners.insert(r.node_id);
                }
                MembershipStep::Promote(id) => {
                    learners.remove(id);
                    voters.insert(*id);
                }
                MembershipStep::RemoveVoter(id) => {
                    voters.remove(id);
                }
                MembershipStep::RemoveLearner(id) => {
                    learners.remove(id);
                }
                MembershipStep::RegisterVoters(_) => unreachable!("desired is not empty"),
            }
            steps.push(step);
            assert!(steps.len() < 20, "no convergence: {steps:?}");
        }
        (voters, steps)
    }

    #[test]
    fn joins_add_then_promote_and_removals_come_last() {
        let (voters, steps) = converge(set(&[1]), &[1, 2, 3]);
        assert_eq!(voters, set(&[1, 2, 3]));
        assert_eq!(
            steps,
            vec![
                MembershipStep::AddLearner(rec(2)),
                MembershipStep::Promote(2),
                MembershipStep::AddLearner(rec(3)),
                MembershipStep::Promote(3),
            ]
        );
        // Replace 1 by 4: 4 is added and promoted before 1 goes.
        let (voters, steps) = converge(set(&[1, 2, 3]), &[2, 3, 4]);
        assert_eq!(voters, set(&[2, 3, 4]));
        assert_eq!(steps.last(), Some(&MembershipStep::RemoveVoter(1)));
    }

    #[test]
    fn never_removes_the_last_voter_and_registers_legacy_voters() {
        assert_eq!(
            next_step(&set(&[1]), &set(&[]), &addrs(&[1]), &desired(&[2])),
            Some(MembershipStep::AddLearner(rec(2)))
        );
        assert_eq!(
            next_step(&set(&[1]), &set(&[]), &addrs(&[1]), &desired(&[1])),
            None
        );
        assert_eq!(
            next_step(&set(&[1, 2]), &set(&[]), &addrs(&[1, 2]), &BTreeMap::new()),
            Some(MembershipStep::RegisterVoters(vec![rec(1), rec(2)]))
        );
        assert_eq!(
            next_step(&set(&[]), &set(&[]), &addrs(&[]), &BTreeMap::new()),
            None
        );
        // A learner that is no longer desired is forgotten.
        assert_eq!(
            next_step(&set(&[1]), &set(&[5]), &addrs(&[1, 5]), &desired(&[1])),
            Some(MembershipStep::RemoveLearner(5))
        );
    }
}
