//! A removed server that keeps running (issue 20): at a random step of a run the world
//! registers every server and removes one follower with `Command::RemoveServer`, then does what
//! the production shell's membership reconciler does (the simulator does not run that shell):
//! the leader takes it out of Raft's voters (`ChangeMembers::RemoveVoters`), retried until the
//! leader's membership no longer lists it. Until then the leader replicates to it and counts its
//! acknowledgements; its own requests — votes, forwarded writes — are ignored by every node
//! that applied the removal. It keeps running, campaigning and proposing writes.
//!
//! **The invariants.** Let `removed` be the moment the removal was applied on the leader (its
//! write acknowledged; or, when the acknowledgement was lost, the first moment any other node
//! was seen holding it) and `term` the highest term any node had then.
//!
//! - None of its proposals started after `removed` commits: its write is never acknowledged,
//!   and the entry it proposed is on no node after convergence.
//! - It never leads again once it applied its own removal: it is never seen as leader in a term
//!   above the one it had then (it takes no part in elections any more). Before that, a voter
//!   that has not applied the removal either may elect it (seed 305990); whatever it then
//!   proposes commits as a no-op on every replica (`raft::apply_proposal` refuses a removed
//!   node's proposals). A leader elected before the removal may go on
//!   believing it leads (openraft's leaders never step down for lack of a quorum); that is not
//!   leading again.
//!
//! Both can fail while a voter has not applied the removal yet (it lagged, was cut off or down
//! when the removal committed with the removed node's own acknowledgement): that voter still
//! grants the removed node its vote and acknowledges its entries (seed 500550). And a removed
//! node that keeps campaigning can keep the cluster from electing a leader (its runaway term
//! reaches the others through its vote responses and through such a voter): the run then does
//! not converge. The second is fixed (nodes ignore a removed server's Raft responses, and a
//! node that applied its own removal stops campaigning); the first remains while the removed
//! node has not applied its removal (seeds 501152, 305990). README, "What the swarm found so far".
//!
//! The checkers elsewhere leave it out of what must converge and settle: it is not required to
//! issue (its authorities are retired and pruned at `prune_after`), and honest agents leave it.

use std::time::Duration;

use wire::EntryId;

/// The removal checker.
#[derive(Debug, Default)]
pub struct RemovalChecker {
    /// The removed node, once removed.
    pub node: Option<u64>,
    removed_at: Option<Duration>,
    term: u64,
    led_again: bool,
    /// The removed node's term when it was first seen holding its own removal (from then on it
    /// takes no part in elections).
    knew_in_term: Option<u64>,
    /// Its proposals started after the removal: entry → start.
    proposals: Vec<(EntryId, Duration)>,
    /// Of them, refused or timed out.
    pub refused: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl RemovalChecker {
    /// Node `node` was removed, applied on the leader at `at`, the highest term then `term`.
    pub fn on_removed(&mut self, node: u64, at: Duration, term: u64) {
        if self.node.is_none() {
            self.node = Some(node);
            self.removed_at = Some(at);
            self.term = term;
        }
    }

    /// Proposals made from now on by the removed node are checked.
    pub fn proposals(&self) -> usize {
        self.proposals.len()
    }

    /// The removed node proposed a create of `entry` at `at`.
    pub fn on_proposal(&mut self, entry: EntryId, at: Duration) {
        if self.removed_at.is_some_and(|r| at > r) {
            self.proposals.push((entry, at));
        }
    }

    /// The removed node's proposal of `entry` was answered: `committed` (and applied: it took
    /// effect) or not (refused by the state machine, or never committed).
    pub fn on_proposal_answer(&mut self, entry: &EntryId, committed: bool) {
        let Some((_, at)) = self.proposals.iter().find(|(e, _)| e == entry) else {
            return;
        };
        if committed {
            self.violations.push(format!(
                "removed node {:?}'s proposal of entry {entry} (at {:.3} s) committed",
                self.node,
                at.as_secs_f64()
            ));
        } else {
            self.refused += 1;
        }
    }

    /// The removed node `id` is in term `term` and `knows` (has applied) its own removal.
    pub fn on_removed_node(&mut self, id: u64, term: u64, knows: bool) {
        if self.node == Some(id) && knows && self.knew_in_term.is_none() {
            self.knew_in_term = Some(term);
        }
    }

    /// Node `id` is seen leading in term `term` at `at`. The removed node may still win an
    /// election before it applied its own removal (a voter that has not applied it either votes
    /// for it; its proposals change nothing, see `apply_proposal`); once it applied the removal
    /// it campaigns no more, so a term above the one it had then is a violation.
    pub fn on_leader(&mut self, id: u64, term: u64, at: Duration) {
        let bound = self.knew_in_term.unwrap_or(u64::MAX).max(self.term);
        if self.node == Some(id) && term > bound && !self.led_again {
            self.led_again = true;
            self.violations.push(format!(
                "removed node {id} leads again in term {term} at {:.3} s (removed in term {})",
                at.as_secs_f64(),
                self.term
            ));
        }
    }

    /// After convergence: `has(entry)` says whether a node holds the entry; none may hold one
    /// the removed node proposed.
    pub fn check_final(&mut self, node: u64, has: impl Fn(&EntryId) -> bool) {
        for (entry, at) in &self.proposals {
            if has(entry) {
                self.violations.push(format!(
                    "node {node} holds entry {entry}, proposed by removed node {:?} at {:.3} s",
                    self.node,
                    at.as_secs_f64()
                ));
            }
        }
    }
}
