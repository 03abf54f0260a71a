//! [`CaRotation`]: drives this node's keyring (`attest::keyring::NodeKeyring`) from the
//! replicated state. It turns keyring actions into Raft proposals — publish a prepared key, mark
//! it active, prune it after expiry — and confirms a publication to the keyring only once the
//! authority is in the **applied** state: a key never signs before its commit (DESIGN.md §2).
//!
//! It also sweeps the bundle: an authority of this node that the keyring no longer tracks (a key
//! from before a restart, a prepared key that was abandoned after its publication landed) is
//! pruned once it expired, and any node's authority is pruned once it expired more than
//! [`FOREIGN_PRUNE_MARGIN`] ago (a removed node cannot prune its own) — or, for a node removed
//! from the cluster, once its removal's `prune_after` passed.

use std::collections::BTreeSet;
use std::time::Duration;

use attest::keyring::{Action, KeyringConfig, NodeKeyring};
use raft::State;
use rand_core::RngCore;
use wire::{Command, KeySource, TrustDomain, UnixTime};

use crate::Error;

/// How long after its expiry another node's authority is pruned by this node.
pub const FOREIGN_PRUNE_MARGIN: Duration = Duration::from_secs(3600);

/// The CA-rotation actor of one server node.
#[derive(Debug)]
pub struct CaRotation {
    node_id: u64,
    keyring: NodeKeyring,
    /// Prepared keys whose publication is not confirmed yet.
    awaiting: BTreeSet<String>,
    /// Prunes proposed and not yet applied (so a sweep does not propose them again and again).
    pruning: BTreeSet<String>,
    prune_grace: Duration,
}

impl CaRotation {
    /// A rotation actor for node `node_id` of `trust_domain`, keys living `key_ttl`.
    pub fn new(trust_domain: TrustDomain, node_id: u64, key_ttl: Duration) -> CaRotation {
        let mut cfg = KeyringConfig::new(trust_domain, node_id);
        cfg.key_ttl = key_ttl;
        let prune_grace = cfg.prune_grace;
        CaRotation {
            node_id,
            keyring: NodeKeyring::new(cfg.clone(), cfg),
            awaiting: BTreeSet::new(),
            pruning: BTreeSet::new(),
            prune_grace,
        }
    }

    /// The keyring (for the issuer: only its active keys sign).
    pub fn keyring(&self) -> &NodeKeyring {
        &self.keyring
    }

    /// When [`CaRotation::handle_tick`] next has work to do.
    pub fn next_deadline(&self) -> Option<UnixTime> {
        self.keyring.next_deadline()
    }

    fn route(&mut self, actions: Vec<Action>, wall: UnixTime, out: &mut Vec<Command>) {
        for action in actions {
            match action {
                Action::Prepare(authority) => {
                    self.awaiting.insert(authority.id.clone());
                    out.push(Command::PublishAuthority {
                        authority,
                        at: wall,
                    });
                }
                Action::Activate { id } => out.push(Command::ActivateAuthority { id }),
                Action::Prune { id } => {
                    self.awaiting.remove(&id);
                    self.pruning.insert(id.clone());
                    out.push(Command::PruneAuthority { id, at: wall });
                }
            }
        }
    }

    /// Time passed: prepare, activate or retire keys as the keyring's timing says.
    pub fn handle_tick(
        &mut self,
        wall: UnixTime,
        keys: &dyn KeySource,
        rng: &mut dyn RngCore,
        out: &mut Vec<Command>,
    ) -> Result<(), Error> {
        let mut actions = Vec::new();
        let result = self.keyring.handle_tick(wall, keys, rng, &mut actions);
        self.route(actions, wall, out);
        result.map_err(Error::Attest)
    }

    /// Proposing `cmd` failed (no quorum in time, Raft stopping): a publication is proposed
    /// again at the next tick instead of after the keyring's publish retry (30 s, which a
    /// restart whose old leader stays down used to wait out), and a prune is left to the next
    /// sweep.
    pub fn handle_proposal_failed(&mut self, cmd: &Command) {
        match cmd {
            Command::PublishAuthority { authority, .. } => {
                self.keyring.handle_publish_failed(&authority.id);
            }
            Command::PruneAuthority { id, .. } => {
                self.pruning.remove(id);
            }
            _ => {}
        }
    }

    /// The applied state changed: confirm publications that committed, sweep expired keys.
    pub fn handle_applied(&mut self, state: &State, wall: UnixTime, out: &mut Vec<Command>) {
        let authorities = state.authorities();
        let committed: Vec<String> = self
            .awaiting
            .iter()
            .filter(|id| authorities.contains_key(*id))
            .cloned()
            .collect();
        let mut actions = Vec::new();
        for id in committed {
            self.awaiting.remove(&id);
            self.keyring.handle_published(&id, wall, &mut actions);
        }
        self.route(actions, wall, out);

        self.pruning.retain(|id| authorities.contains_key(id));
        let tracked: BTreeSet<&str> = self
            .keyring
            .x509
            .current_id()
            .into_iter()
            .chain(self.keyring.jwt.current_id())
            .chain(self.keyring.x509.next_id().map(|(id, _)| id))
            .chain(self.keyring.jwt.next_id().map(|(id, _)| id))
            .chain(
                self.keyring
                    .x509
                    .retired()
                    .iter()
                    .map(|(id, _)| id.as_str()),
            )
            .chain(self.keyring.jwt.retired().iter().map(|(id, _)| id.as_str()))
            .collect();
        let mut sweep = Vec::new();
        for (id, rec) in authorities {
            if self.pruning.contains(id) || tracked.contains(id.as_str()) {
                continue;
            }
            let margin = if rec.authority.node_id == self.node_id {
                self.prune_grace
            } else {
                FOREIGN_PRUNE_MARGIN
            };
            // A removed node's authorities go once every SVID it may have signed expired.
            let removed_done = state
                .removed_servers()
                .get(&rec.authority.node_id)
                .is_some_and(|r| r.prune_after <= wall);
            if removed_done || rec.authority.not_after.saturating_add(margin) <= wall {
                sweep.push(id.clone());
            }
        }
        for id in sweep {
            self.pruning.insert(id.clone());
            out.push(Command::PruneAuthority { id, at: wall });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::keys::SeededKeySource;
    use wire::{Seed, UnixTime};

    const HOUR: u64 = 3600;

    fn td() -> TrustDomain {
        "example.org".parse().expect("td")
    }

    /// Applies every proposal to `state` (a one-node "cluster" that commits at once).
    fn commit(state: &mut State, out: &mut Vec<Command>) -> usize {
        let n = out.len();
        for cmd in out.drain(..) {
            let _ = raft::apply(state, cmd);
        }
        n
    }

    #[test]
    fn keys_sign_only_after_their_publication_is_applied() {
        let keys = SeededKeySource::new(Seed::from_u64(1));
        let mut rng = Seed::from_u64(2).rng();
        let mut rot = CaRotation::new(td(), 1, Duration::from_secs(24 * HOUR));
        let mut state = State::new();
        let mut out = Vec::new();
        let t0 = UnixTime::from_secs(1_700_000_000);

        rot.handle_tick(t0, &keys, &mut rng, &mut out)
            .expect("tick");
        assert_eq!(
            out.len(),
            2,
            "publish the first X.509 CA and JWT key: {out:?}"
        );
        assert!(
            rot.keyring().active_x509(t0).is_none(),
            "not before the commit"
        );
        // Applied state without the commit: still nothing.
        rot.handle_applied(&state, t0, &mut Vec::new());
        assert!(rot.keyring().active_x509(t0).is_none());

        commit(&mut state, &mut out);
        rot.handle_applied(&state, t0, &mut out);
        assert!(
            rot.keyring().active_x509(t0).is_some(),
            "active once applied"
        );
        assert!(rot.keyring().active_jwt(t0).is_some());
        commit(&mut state, &mut out); // ActivateAuthority
        assert_eq!(state.bundle(300).x509_authorities.len(), 1);
        assert_eq!(state.bundle(300).jwt_authorities.len(), 1);
    }

    #[test]
    fn a_failed_publication_is_proposed_again_at_the_next_tick() {
        let keys = SeededKeySource::new(Seed::from_u64(7));
        let mut rng = Seed::from_u64(8).rng();
        let mut rot = CaRotation::new(td(), 1, Duration::from_secs(24 * HOUR));
        let published = |out: &[Command]| -> Vec<String> {
            out.iter()
                .filter_map(|c| match c {
                    Command::PublishAuthority { authority, .. } => Some(authority.id.clone()),
                    _ => None,
                })
                .collect()
        };
        let t0 = UnixTime::from_secs(1_700_000_000);
        let mut out = Vec::new();
        rot.handle_tick(t0, &keys, &mut rng, &mut out)
            .expect("tick");
        let first = published(&out);
        assert_eq!(first.len(), 2, "{out:?}");
        let t1 = t0.saturating_add(Duration::from_secs(1));
        let mut again = Vec::new();
        rot.handle_tick(t1, &keys, &mut rng, &mut again)
            .expect("tick");
        assert!(again.is_empty(), "in flight: not proposed twice: {again:?}");
        for cmd in &out {
            rot.handle_proposal_failed(cmd);
        }
        rot.handle_tick(t1, &keys, &mut rng, &mut again)
            .expect("tick");
        assert_eq!(published(&again), first, "failed: the same keys at once");
    }

    #[test]
    fn a_day_of_rotation_keeps_a_key_and_prunes_only_expired_ones() {
        let keys = SeededKeySource::new(Seed::from_u64(3));
        let mut rng = Seed::from_u64(4).rng();
        let ttl = Duration::from_secs(6 * HOUR);
        let mut rot = CaRotation::new(td(), 7, ttl);
        let mut state = State::new();
        let mut out = Vec::new();
        let start = 1_700_000_000;
        let mut pruned_ids = 0;
        for minute in 0..(3 * 24 * 60) {
            let wall = UnixTime::from_secs(start + minute * 60);
            rot.handle_tick(wall, &keys, &mut rng, &mut out)
                .expect("tick");
            for cmd in &out {
                if let Command::PruneAuthority { id, at } = cmd {
                    let rec = &state.authorities()[id];
                    assert!(rec.authority.not_after <= *at, "pruned a live key {id}");
                    pruned_ids += 1;
                }
            }
            commit(&mut state, &mut out);
            rot.handle_applied(&state, wall, &mut out);
            commit(&mut state, &mut out);
            if minute > 0 {
                let key = rot
                    .keyring()
                    .active_x509(wall)
                    .expect("always a usable key");
                assert!(
                    state.authorities().contains_key(&key.authority().id),
                    "published"
                );
            }
        }
        assert!(
            pruned_ids >= 10,
            "rotated and pruned many keys: {pruned_ids}"
        );
        assert!(
            state.authorities().len() <= 6,
            "{:?}",
            state.authorities().keys()
        );
    }

    #[test]
    fn sweeps_orphaned_authorities_after_expiry() {
        let keys = SeededKeySource::new(Seed::from_u64(5));
        let mut rng = Seed::from_u64(6).rng();
        let mut state = State::new();
        let mut out = Vec::new();
        let t0 = UnixTime::from_secs(1_700_000_000);
        // A previous incarnation of node 1 published keys, then restarted (keys lost).
        let mut old = CaRotation::new(td(), 1, Duration::from_secs(HOUR));
        old.handle_tick(t0, &keys, &mut rng, &mut out)
            .expect("tick");
        commit(&mut state, &mut out);
        let orphaned: Vec<String> = state.authorities().keys().cloned().collect();

        let mut new = CaRotation::new(td(), 1, Duration::from_secs(HOUR));
        new.handle_applied(&state, t0, &mut out);
        assert!(out.is_empty(), "not before expiry");
        let later = t0.saturating_add(Duration::from_secs(HOUR + 301));
        new.handle_applied(&state, later, &mut out);
        let pruned: Vec<&String> = out
            .iter()
            .filter_map(|c| match c {
                Command::PruneAuthority { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(pruned.len(), orphaned.len());
        commit(&mut state, &mut out);
        assert!(state.authorities().is_empty());
        new.handle_applied(&state, later, &mut out);
        assert!(out.is_empty(), "nothing proposed twice");
    }

    /// Another node prunes a removed node's authorities once the removal's `prune_after`
    /// passed, long before they expire.
    #[test]
    fn sweeps_a_removed_nodes_authorities_after_prune_after() {
        let keys = SeededKeySource::new(Seed::from_u64(7));
        let mut rng = Seed::from_u64(8).rng();
        let mut state = State::new();
        let mut out = Vec::new();
        let t0 = UnixTime::from_secs(1_700_000_000);
        for n in [1, 2] {
            let server = wire::ServerRecord {
                node_id: n,
                addr: format!("127.0.0.1:{n}"),
            };
            let _ = raft::apply(&mut state, Command::RegisterServer { server });
        }
        let mut two = CaRotation::new(td(), 2, Duration::from_secs(24 * HOUR));
        two.handle_tick(t0, &keys, &mut rng, &mut out)
            .expect("tick");
        commit(&mut state, &mut out);
        assert!(!state.authorities().is_empty());
        let prune_after = t0.saturating_add(Duration::from_secs(HOUR));
        let removal = Command::RemoveServer {
            node_id: 2,
            at: t0,
            prune_after,
            compromised: false,
        };
        raft::apply(&mut state, removal).expect("removed");
        let mut one = CaRotation::new(td(), 1, Duration::from_secs(24 * HOUR));
        one.handle_applied(&state, t0, &mut out);
        assert!(
            !out.iter()
                .any(|c| matches!(c, Command::PruneAuthority { .. })),
            "kept until prune_after"
        );
        out.clear();
        one.handle_applied(&state, prune_after, &mut out);
        commit(&mut state, &mut out);
        assert!(
            state
                .authorities()
                .values()
                .all(|r| r.authority.node_id != 2),
            "{:?}",
            state.authorities().keys().collect::<Vec<_>>()
        );
    }
}
