//! The hand-off of everything observed to the checkers (deliveries, acknowledged deletes,
//! who is cut off, Raft metrics, the final state), and the violations they found.

use std::collections::BTreeSet;

use openraft::ServerState;
use wire::Env;

use crate::check::Delivered;

use super::{event, now, World};

impl World {
    /// Hands a delivered SVID to the checkers.
    pub(super) fn on_delivered(&mut self, d: &Delivered) {
        self.take_delete_acks();
        self.svid_check.on_delivered(d);
        self.staleness_check.on_delivered(d);
    }

    /// Moves acknowledged deletes to the staleness checker.
    fn take_delete_acks(&mut self) {
        let acks = std::mem::take(
            &mut *self
                .deletes_acked_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (eid, at) in acks {
            self.staleness_check
                .on_delete_acked(eid, at.duration_since(self.start));
        }
    }

    /// Which nodes are cut off: down, or hearing no other running node (every inbound link
    /// cut). A follower that still hears a leader counts as in contact even when that leader
    /// lost its quorum (see the staleness checker's docs), so only this case is bounded here.
    pub(super) fn observe_cut_off(&mut self) {
        let live = self.live();
        let at = now().duration_since(self.start);
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            let hears = live.iter().any(|m| *m != id && self.net.link_up(*m, id));
            let cut_off = !live.contains(&id) || !hears;
            self.staleness_check.observe_cut_off(id, cut_off, at);
        }
    }

    /// Hands every running node's Raft metrics and bundle sequence to the Raft checker, and
    /// the network's state to the staleness checker (called after every step and every fault).
    pub fn observe_leaders(&mut self) {
        self.observe_cut_off();
        for id in self.live() {
            let Some(r) = self.replica(id) else { continue };
            let m = r.raft().metrics().borrow().clone();
            let sequence = r.read(|a| a.state.bundle(0).sequence.unwrap_or(0));
            if m.state == ServerState::Leader {
                event(|| {
                    format!(
                        "node {id} leads: term {} vote {:?} last_log {:?} applied {:?}",
                        m.current_term, m.vote, m.last_log_index, m.last_applied
                    )
                });
            }
            self.raft_check.observe(id, &m, sequence);
        }
        self.observe_hostile();
    }

    /// After convergence: every delivered SVID that has not expired still chains to the
    /// converged bundle (no authority left the bundle while an SVID it signed was valid).
    pub fn check_issued(&mut self) {
        let removed = self.removal_check.node;
        let Some((id, server)) = self.servers.iter().find(|(id, _)| Some(**id) != removed) else {
            return;
        };
        let Some(env) = self.envs.get(id) else { return };
        let bundle = server.bundle();
        let wall = env.wall();
        self.svid_check
            .check_retained("the converged bundle", &bundle, wall);
    }

    /// Checks the oracle against every node's state (see [`Oracle::check`](super::Oracle::check)).
    pub fn check_oracle(&mut self) {
        let o = self.oracle.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        for id in self.members() {
            let Some(r) = self.replica(id) else { continue };
            r.read(|a| o.check(id, &a.state, &mut found));
        }
        drop(o);
        self.violations.extend(found);
    }

    /// Violations found so far: the world's own and every checker's.
    /// Each distinct message once, in the order first seen.
    pub fn violations(&self) -> Vec<String> {
        let mut all = self.violations.clone();
        all.extend(self.raft_check.violations.iter().cloned());
        all.extend(self.svid_check.violations.iter().cloned());
        all.extend(self.staleness_check.violations.iter().cloned());
        all.extend(self.workload_check.violations.iter().cloned());
        all.extend(self.hostile_check.violations.iter().cloned());
        all.extend(self.copy_check.violations.iter().cloned());
        all.extend(self.ban_check.violations.iter().cloned());
        all.extend(self.removal_check.violations.iter().cloned());
        all.extend(self.secrets.violations());
        let mut seen = BTreeSet::new();
        all.retain(|v| seen.insert(v.clone()));
        all
    }
}
