//! Hostile actors of the swarm (issue 20), checked from their answers:
//!
//! - **Token replayers.** After an honest agent attested with its join token, someone else
//!   presents the same token with another key — on one node, and raced on two nodes at once.
//!   It must never get an `ApiResponse::AgentSvid`.
//! - **Entitlement probers.** An attested agent (honest key and SVID) asks `SignX509` and
//!   `MintJwt` for entries that are not its own (parented by another agent). It must never get
//!   an SVID for them. Entries never change parent in the simulator, so "not its own" is known
//!   from the create.
//! - **Copied agent SVIDs.** Someone holds a copy of an honest agent's SVID chain (and presents
//!   the agent's public key) and tries `RenewAgent`, `Sync` and `SignX509` later, after the
//!   agent renewed. See [`CopyChecker`] for the bound on `RenewAgent`; `Sync` and `SignX509`
//!   with a copy that has not expired are served by design (the SVID is a bearer credential
//!   until it expires), and only counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use wire::{AgentRecord, EntryId, SpiffeId, UnixTime};

/// Replayed tokens and entitlement probes.
#[derive(Debug, Default)]
pub struct HostileChecker {
    /// Replayed-token attestations tried.
    pub replays: u64,
    /// Entitlement probes tried (one per entry asked for).
    pub probes: u64,
    /// Of all of them, refused (or lost on the network).
    pub refused: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl HostileChecker {
    /// A replay of `agent`'s join token with another key at `node`, handled at `at`; `got_svid`:
    /// the answer was an agent SVID.
    pub fn on_replay(&mut self, agent: &SpiffeId, node: u64, at: Duration, got_svid: bool) {
        self.replays += 1;
        if got_svid {
            self.violations.push(format!(
                "node {node} attested another key with {agent}'s already used join token at {:.3} s",
                at.as_secs_f64()
            ));
        } else {
            self.refused += 1;
        }
    }

    /// Agent `agent` asked `node` at `at` for an SVID (`what`) of entry `target.0`, parented by
    /// `target.1`; `got`: it was issued.
    pub fn on_probe(
        &mut self,
        agent: &SpiffeId,
        node: u64,
        at: Duration,
        what: &str,
        (entry, parent): (&EntryId, &SpiffeId),
        got: bool,
    ) {
        self.probes += 1;
        if !got {
            self.refused += 1;
        } else if parent != agent {
            self.violations.push(format!(
                "node {node} issued {agent} a {what} for entry {entry} of {parent} at {:.3} s",
                at.as_secs_f64()
            ));
        }
    }
}

/// One copied agent SVID.
#[derive(Debug)]
struct Copied {
    agent: SpiffeId,
    /// The copy's serial and NotAfter.
    serial: String,
    not_after: UnixTime,
    /// Serials the agent held before the copy (a record showing one of them is not past it).
    earlier: BTreeSet<String>,
    /// Node → first moment its record of the agent had moved past the copy.
    recorded: BTreeMap<u64, Duration>,
}

/// Copied agent SVIDs trying to renew.
///
/// **The bound.** Let `recorded(N)` be the first moment node `N`'s replica held a record of the
/// agent whose serial is past the copy (neither the copy's serial nor an earlier one of the
/// agent: the agent, or anyone, renewed from the copy and the record arrived), sampled after
/// every step and right before node `N` handles each of the copy's requests; `first` the
/// earliest `recorded(N)` over all nodes. A `RenewAgent` with the copy that node `N` starts
/// handling at `t` succeeds by design while `N` has no such record, or within
/// `RENEW_PREDECESSOR_GRACE_SECS` of the renewal (by the renewing node's wall clock, which is at
/// most `clock_error` ahead of `N`'s, and the renewal happened before `first`). So it is a
/// violation if
///
/// - `t > recorded(N) + grace + clock_slack` (the record had arrived), or
/// - `t > first + staleness_max + staleness_slack + grace + clock_slack`: a node that has not
///   applied the record by then is cut off (a tick proposed after the record committed comes
///   after it in the log), and a cut-off node issues nothing past `staleness_max`.
///
/// An SVID newer than the record is renewable by design (issued by a node whose record has not
/// arrived yet): if the agent's own renewal ended no later than the copy (a CA near its end caps
/// NotAfter), the copy counts as newer. The message then says so.
#[derive(Debug)]
pub struct CopyChecker {
    grace: Duration,
    clock_slack: Duration,
    cut_off_bound: Duration,
    copies: Vec<Copied>,
    /// Requests made with copies.
    pub tried: u64,
    /// Renewals with a copy refused (or lost).
    pub refused: u64,
    /// Renewals with a copy accepted before the record arrived or within the grace.
    pub renewed_in_bound: u64,
    /// `Sync`/`SignX509` with an unexpired copy served (by design).
    pub served: u64,
    /// Violations found.
    pub violations: Vec<String>,
}

impl CopyChecker {
    /// A checker allowing `clock_slack` for clock error, and `staleness_max` + `staleness_slack`
    /// for nodes that never got the record.
    pub fn new(
        clock_slack: Duration,
        staleness_max: Duration,
        staleness_slack: Duration,
    ) -> CopyChecker {
        let grace = Duration::from_secs(wire::RENEW_PREDECESSOR_GRACE_SECS);
        CopyChecker {
            grace,
            clock_slack,
            cut_off_bound: staleness_max + staleness_slack + grace + clock_slack,
            copies: Vec::new(),
            tried: 0,
            refused: 0,
            renewed_in_bound: 0,
            served: 0,
            violations: Vec::new(),
        }
    }

    /// A copy of `agent`'s SVID (`serial`, `not_after`) was taken; `earlier`: the agent's
    /// serials before it. Returns the copy's index.
    pub fn on_copy(
        &mut self,
        agent: SpiffeId,
        serial: String,
        not_after: UnixTime,
        earlier: BTreeSet<String>,
    ) -> usize {
        self.copies.push(Copied {
            agent,
            serial,
            not_after,
            earlier,
            recorded: BTreeMap::new(),
        });
        self.copies.len() - 1
    }

    /// The agents whose SVIDs were copied (index → agent), for the world's sampling.
    pub fn agents(&self) -> Vec<(usize, SpiffeId)> {
        self.copies
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.agent.clone()))
            .collect()
    }

    /// Node `node` held `record` for copy `copy`'s agent at `at`.
    pub fn observe(&mut self, copy: usize, node: u64, record: Option<&AgentRecord>, at: Duration) {
        let Some(c) = self.copies.get_mut(copy) else {
            return;
        };
        let Some(r) = record else { return };
        let past = !r.svid_serial.is_empty()
            && r.svid_serial != c.serial
            && !c.earlier.contains(&r.svid_serial);
        if past {
            c.recorded.entry(node).or_insert(at);
        }
    }

    /// A request other than `RenewAgent` with copy `copy` was answered (`served`).
    pub fn on_other(&mut self, served: bool) {
        self.tried += 1;
        if served {
            self.served += 1;
        }
    }

    /// A `RenewAgent` with copy `copy` that `node` started handling at `at` (holding `record`
    /// for the agent then) was accepted (`renewed`) or not.
    pub fn on_renew(
        &mut self,
        copy: usize,
        node: u64,
        at: Duration,
        record: Option<&AgentRecord>,
        renewed: bool,
    ) {
        self.tried += 1;
        self.observe(copy, node, record, at);
        if !renewed {
            self.refused += 1;
            return;
        }
        let Some(c) = self.copies.get(copy) else {
            return;
        };
        let mut limit: Option<(Duration, &str)> = c.recorded.get(&node).map(|r| {
            (
                *r + self.grace + self.clock_slack,
                "after the record arrived on it",
            )
        });
        if let Some(first) = c.recorded.values().min() {
            let cut = *first + self.cut_off_bound;
            if limit.is_none_or(|(l, _)| cut < l) {
                limit = Some((cut, "after the record arrived anywhere (staleness_max)"));
            }
        }
        match limit {
            Some((limit, why)) if at > limit => {
                let newer = record.is_some_and(|r| c.not_after > r.svid_not_after);
                self.violations.push(format!(
                    "node {node} renewed a copied SVID (serial {}) of {} at {:.3} s, {:.1} s past its bound ({why}; grace {} s + clock slack {:.1} s){}",
                    c.serial,
                    c.agent,
                    at.as_secs_f64(),
                    (at - limit).as_secs_f64(),
                    self.grace.as_secs(),
                    self.clock_slack.as_secs_f64(),
                    if newer {
                        format!(
                            "; the copy ends at {:?}, after the record's SVID ({:?}), so it counted as newer",
                            c.not_after,
                            record.map(|r| r.svid_not_after)
                        )
                    } else {
                        String::new()
                    }
                ));
            }
            _ => self.renewed_in_bound += 1,
        }
    }
}
