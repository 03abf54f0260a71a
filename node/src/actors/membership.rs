//! Membership reconciliation: the replicated set of server records ([`raft::State::servers`])
//! is the cluster's *desired* voting membership; the leader moves Raft's actual membership
//! towards it one step at a time — add a joined node as a learner, promote it once it caught
//! up, demote and forget removed nodes. Declarative, so it survives leader changes: a new leader
//! simply continues from wherever the membership is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use wire::{Mono, ServerRecord};

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

/// A learner this close to the leader's last log index counts as caught up.
pub const LEARNER_LAG_MAX: u64 = 8;
/// A learner still behind this long after it was first seen behind gets a warning (and again
/// every such period).
pub const LEARNER_CATCH_UP_WARN: Duration = Duration::from_secs(30);

/// What the leader's Raft says about the membership.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    /// The voters.
    pub voters: BTreeSet<u64>,
    /// The learners.
    pub learners: BTreeSet<u64>,
    /// Every member's address.
    pub addrs: BTreeMap<u64, String>,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// How far the leader knows each node replicated (its matched log index).
    pub matched: BTreeMap<u64, u64>,
}

impl MembershipView {
    /// Whether learner `id` holds the log up to [`LEARNER_LAG_MAX`] entries.
    pub fn caught_up(&self, id: u64) -> bool {
        self.matched
            .get(&id)
            .is_some_and(|i| i.saturating_add(LEARNER_LAG_MAX) >= self.last_log_index)
    }
}

/// The leader's membership actor: [`next_step`], except that a learner is promoted only once it
/// caught up (a voter that cannot vote yet would shrink the margin of failures the cluster
/// survives), and a learner that stays behind is reported — at debug level at first, then as a
/// warning every [`LEARNER_CATCH_UP_WARN`].
#[derive(Debug, Default)]
pub struct Membership {
    /// The learner seen behind: its ID, since when, and when it was last warned about.
    behind: Option<(u64, Mono, Mono)>,
}

impl Membership {
    /// A membership actor with nothing seen yet.
    pub fn new() -> Membership {
        Membership::default()
    }

    /// The step to take now from `view` towards `desired`, if any; `None` also while the
    /// learner to promote is catching up ([`Membership::waiting_for`] names it).
    pub fn step(
        &mut self,
        now: Mono,
        view: &MembershipView,
        desired: &BTreeMap<u64, ServerRecord>,
    ) -> Option<MembershipStep> {
        let step = next_step(&view.voters, &view.learners, &view.addrs, desired)?;
        let MembershipStep::Promote(id) = step else {
            self.behind = None;
            return Some(step);
        };
        if view.caught_up(id) {
            self.behind = None;
            return Some(step);
        }
        let (first, warned) = match self.behind {
            Some((b, first, warned)) if b == id => (first, warned),
            _ => (now, now),
        };
        if now.saturating_since(warned) >= LEARNER_CATCH_UP_WARN {
            tracing::warn!(node = id, behind_secs = now.saturating_since(first).as_secs(), "the new learner has not caught up yet; it is promoted once it has (check that it is reachable from the leader)");
            self.behind = Some((id, first, now));
        } else {
            tracing::debug!(node = id, "the new learner has not caught up yet");
            self.behind = Some((id, first, warned));
        }
        None
    }

    /// The learner whose promotion waits for it to catch up, if any.
    pub fn waiting_for(&self) -> Option<u64> {
        self.behind.map(|(id, _, _)| id)
    }
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

    #[test]
    fn a_learner_is_promoted_only_once_caught_up_and_a_laggard_is_reported() {
        let mut m = Membership::new();
        let mut view = MembershipView {
            voters: set(&[1]),
            learners: set(&[2]),
            addrs: addrs(&[1, 2]),
            last_log_index: 100,
            matched: [(1, 100), (2, 50)].into(),
        };
        let want = desired(&[1, 2]);
        let t = |s: u64| Mono::from_duration(Duration::from_secs(s));
        assert_eq!(m.step(t(0), &view, &want), None);
        assert_eq!(m.waiting_for(), Some(2));
        assert_eq!(m.behind, Some((2, t(0), t(0))));
        assert_eq!(m.step(t(31), &view, &want), None);
        assert_eq!(m.behind, Some((2, t(0), t(31))), "warned at 31 s");
        view.matched.insert(2, 92);
        assert_eq!(
            m.step(t(32), &view, &want),
            Some(MembershipStep::Promote(2))
        );
        assert_eq!(m.waiting_for(), None);
    }
}
