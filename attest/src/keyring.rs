//! The CA keyring: when a node's signing key may sign (DESIGN.md §2, SPIRE timing from
//! spiffe-spire.md §3). One [`Keyring`] per kind of key: `Keyring<X509Ca>` for the X.509 CA,
//! `Keyring<JwtKey>` for the JWT key; [`NodeKeyring`] holds both.
//!
//! A keyring has a *current* slot (the active key, the only one that signs), a *next* slot (a
//! prepared key, waiting for its publication to be confirmed and its activation time) and the
//! *retired* keys (no private key kept; only their ID and expiry, until they are pruned).
//!
//! With `life` = a key's NotAfter − its creation time:
//! - **prepare**: once `now ≥ NotAfter − min(life/2, 30 d)` of the current key (or at once when
//!   there is none), generate the next key and emit [`Action::Prepare`] with its public
//!   [`Authority`]; the driver proposes it to the replicated bundle and reports the commit with
//!   [`Keyring::handle_published`] (or a failure with [`Keyring::handle_publish_failed`]).
//!   Until confirmed, `Prepare` is emitted again every `publish_retry`. An unconfirmed next key
//!   that reaches 5/6 of its own life (it would need replacing as soon as it activated) is
//!   discarded (and pruned, in case the commit did land) and a fresh one prepared.
//! - **activate**: once the next key's publication is confirmed *and* `now ≥ NotAfter −
//!   min(life/6, 7 d)` of the current key (or at once when there is no usable current key, e.g.
//!   at bootstrap), the next key becomes current: [`Action::Activate`]. A key whose publication
//!   is not confirmed never signs, so a node has no usable key until its first publication is
//!   confirmed.
//! - **prune**: a retired key is pruned ([`Action::Prune`]) once `now ≥ NotAfter + prune_grace`.
//!   Every SVID is capped at its signing key's NotAfter, so by then every SVID it could have
//!   signed has expired.
//! - A current key that reaches its NotAfter retires; [`Keyring::active`] never returns an
//!   expired key.
//!
//! Keys are never exported: there is no way to read a private key out of a keyring (a sealed
//! at-rest format for the node's own disk is not built yet, so a restart starts a new key).
//!
//! The active key is shared ([`Keyring::active`] hands out an `Arc`): a signer takes it under
//! the shell's lock and signs after releasing it, so a node signs on every core. A key retired
//! meanwhile finishes the signatures already started with it (it was active when they were
//! decided, and every SVID is capped at its NotAfter); its private half is dropped with the last
//! of them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;
use wire::{Authority, KeyAlg, KeySource, Signer, TrustDomain, UnixTime};

use crate::jwt::JwtKey;
use crate::x509::{X509Ca, NOT_BEFORE_CUSHION_DEFAULT};
use crate::Error;

/// Default lifetime of a CA key and of a JWT key (SPIRE's `ca_ttl`).
pub const KEY_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Default interval between publication attempts of an unconfirmed key.
pub const PUBLISH_RETRY_DEFAULT: Duration = Duration::from_secs(30);
/// Default time a retired key stays in the bundle after its NotAfter (validator clock skew).
pub const PRUNE_GRACE_DEFAULT: Duration = Duration::from_secs(300);
/// Prepare no earlier than this before NotAfter, however long the key lives (SPIRE: 30 days).
const PREPARE_LEAD_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
/// Activate no earlier than this before NotAfter (SPIRE: 7 days).
const ACTIVATE_LEAD_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a key is in its life. Only [`KeyState::Active`] keys sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Created; its publication may or may not be confirmed yet.
    Prepared,
    /// The keyring's current key.
    Active,
    /// Replaced or expired; never signs again.
    Retired,
}

pub(crate) mod sealed {
    /// Only `attest`'s key types are keyring material.
    pub trait Sealed {}

    /// Proof that a state change comes from inside `attest` (the keyring).
    #[derive(Debug)]
    pub struct Token(pub(crate) ());
}

/// A kind of signing key the keyring manages: [`X509Ca`] or [`JwtKey`] (sealed).
pub trait KeyMaterial: fmt::Debug + Send + Sync + Sized + sealed::Sealed {
    /// `"x509"` or `"jwt"`.
    const KIND: &'static str;
    /// A new key of this kind around `signer`, created at `wall`.
    fn create(
        cfg: &KeyringConfig,
        signer: Box<dyn Signer>,
        wall: UnixTime,
        rng: &mut dyn RngCore,
    ) -> Result<Self, Error>;
    /// The public record to publish (its `id` identifies the key).
    fn authority(&self) -> &Authority;
    /// When the key was created (the start of its life for rotation timing).
    fn issued_at(&self) -> UnixTime;
    /// When the key stops being valid; every SVID it signs ends no later.
    fn not_after(&self) -> UnixTime;
    /// The key's state.
    fn state(&self) -> KeyState;
    /// Changes the state; only the keyring can call this.
    #[doc(hidden)]
    fn set_state(&mut self, state: KeyState, token: sealed::Token);
}

/// Settings of one keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringConfig {
    /// The trust domain the keys sign for.
    pub trust_domain: TrustDomain,
    /// This server node (part of every authority ID).
    pub node_id: u64,
    /// Key algorithm.
    pub key_alg: KeyAlg,
    /// Lifetime of each key (`ca_ttl`), at least a minute.
    pub key_ttl: Duration,
    /// NotBefore backdating of CA certificates.
    pub not_before_cushion: Duration,
    /// Interval between publication attempts of an unconfirmed key.
    pub publish_retry: Duration,
    /// Time a retired key stays published after its NotAfter.
    pub prune_grace: Duration,
}

impl KeyringConfig {
    /// The defaults: P-256, 24 h keys, 10 s cushion, 30 s publish retry, 5 min prune grace.
    pub fn new(trust_domain: TrustDomain, node_id: u64) -> KeyringConfig {
        KeyringConfig {
            trust_domain,
            node_id,
            key_alg: KeyAlg::EcP256,
            key_ttl: KEY_TTL_DEFAULT,
            not_before_cushion: NOT_BEFORE_CUSHION_DEFAULT,
            publish_retry: PUBLISH_RETRY_DEFAULT,
            prune_grace: PRUNE_GRACE_DEFAULT,
        }
    }
}

/// What the driver must do after a keyring input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this authority in the replicated bundle and report the commit with
    /// `handle_published(id)`. Emitted when a key is prepared and again every `publish_retry`
    /// until confirmed; publishing the same authority twice must be harmless.
    Prepare(Authority),
    /// The key `id` is now the active signer.
    Activate {
        /// Authority ID.
        id: String,
    },
    /// Remove the authority `id` from the bundle: every SVID it could have signed has expired,
    /// or it never signed.
    Prune {
        /// Authority ID.
        id: String,
    },
}

#[derive(Debug)]
struct NextSlot<K> {
    key: K,
    confirmed: bool,
    republish_at: UnixTime,
}

/// The keyring state machine for one kind of key (see the module docs).
#[derive(Debug)]
pub struct Keyring<K: KeyMaterial> {
    cfg: KeyringConfig,
    current: Option<Arc<K>>,
    next: Option<NextSlot<K>>,
    /// Retired keys still in the bundle: (authority ID, NotAfter).
    retired: Vec<(String, UnixTime)>,
}

fn life(key: &impl KeyMaterial) -> Duration {
    key.not_after().saturating_since(key.issued_at())
}

/// When the successor of `key` is prepared.
fn prepare_at(key: &impl KeyMaterial) -> UnixTime {
    key.not_after()
        .saturating_sub((life(key) / 2).min(PREPARE_LEAD_MAX))
}

/// When the (confirmed) successor of `key` takes over.
fn activate_at(key: &impl KeyMaterial) -> UnixTime {
    key.not_after()
        .saturating_sub((life(key) / 6).min(ACTIVATE_LEAD_MAX))
}

impl<K: KeyMaterial> Keyring<K> {
    /// An empty keyring: the first tick prepares the first key.
    pub fn new(cfg: KeyringConfig) -> Keyring<K> {
        Keyring {
            cfg,
            current: None,
            next: None,
            retired: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &KeyringConfig {
        &self.cfg
    }

    /// The active key, if there is one that has not expired at `wall`. Only a key whose
    /// publication was confirmed can be active. Clone the `Arc` to sign without holding the
    /// keyring.
    pub fn active(&self, wall: UnixTime) -> Option<&Arc<K>> {
        let key = self.current.as_ref().filter(|k| wall < k.not_after())?;
        assert!(
            key.state() == KeyState::Active,
            "current key must be active"
        );
        Some(key)
    }

    /// The current key's authority ID (even if expired at some later wall time).
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.authority().id.as_str())
    }

    /// The prepared key's authority ID and whether its publication is confirmed.
    pub fn next_id(&self) -> Option<(&str, bool)> {
        self.next
            .as_ref()
            .map(|n| (n.key.authority().id.as_str(), n.confirmed))
    }

    /// Retired keys not yet pruned: (authority ID, NotAfter).
    pub fn retired(&self) -> &[(String, UnixTime)] {
        &self.retired
    }

    /// The earliest wall time at which [`Keyring::handle_tick`] has something to do (`None`
    /// before the first tick's work is known: tick at once).
    pub fn next_deadline(&self) -> Option<UnixTime> {
        let mut times = Vec::new();
        match (&self.current, &self.next) {
            (None, None) => return None,
            (Some(cur), None) => times.push(prepare_at(cur.as_ref())),
            (cur, Some(next)) => {
                if next.confirmed {
                    times.push(cur.as_deref().map_or(UnixTime::EPOCH, activate_at));
                } else {
                    times.push(next.republish_at);
                    times.push(activate_at(&next.key));
                }
                times.push(next.key.not_after());
            }
        }
        if let Some(cur) = &self.current {
            times.push(cur.not_after());
        }
        for (_, not_after) in &self.retired {
            times.push(not_after.saturating_add(self.cfg.prune_grace));
        }
        times.into_iter().min()
    }

    /// Advances rotation to `wall`: activations, retirements, prunes, publication retries, and
    /// the preparation of a next key when due (the one step that needs `keys` and `rng`).
    /// Actions go to `out`; on a key-generation error the actions already in `out` stand and the
    /// next tick tries again.
    pub fn handle_tick(
        &mut self,
        wall: UnixTime,
        keys: &dyn KeySource,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        self.advance(wall, out);
        if let Some(next) = self.next.as_mut() {
            if !next.confirmed && wall >= next.republish_at {
                out.push(Action::Prepare(next.key.authority().clone()));
                next.republish_at = wall.saturating_add(self.cfg.publish_retry);
            }
        }
        let due = self
            .current
            .as_deref()
            .is_none_or(|c| wall >= prepare_at(c));
        if self.next.is_none() && due {
            let signer = keys.generate(self.cfg.key_alg)?;
            let key = K::create(&self.cfg, signer, wall, rng)?;
            out.push(Action::Prepare(key.authority().clone()));
            self.next = Some(NextSlot {
                key,
                confirmed: false,
                republish_at: wall.saturating_add(self.cfg.publish_retry),
            });
        }
        Ok(())
    }

    /// The authority `id` is committed in the replicated bundle. Returns whether it is this
    /// keyring's prepared key; activation follows at once if due.
    pub fn handle_published(&mut self, id: &str, wall: UnixTime, out: &mut Vec<Action>) -> bool {
        let Some(next) = self.next.as_mut().filter(|n| n.key.authority().id == id) else {
            return false;
        };
        next.confirmed = true;
        self.advance(wall, out);
        true
    }

    /// Publishing the authority `id` failed: retry at the next tick.
    pub fn handle_publish_failed(&mut self, id: &str) -> bool {
        match self.next.as_mut() {
            Some(n) if !n.confirmed && n.key.authority().id == id => {
                n.republish_at = UnixTime::EPOCH;
                true
            }
            _ => false,
        }
    }

    fn retire(&mut self, mut key: Arc<K>) {
        // Signatures already started with it keep their clone until they finish (module docs).
        if let Some(k) = Arc::get_mut(&mut key) {
            k.set_state(KeyState::Retired, sealed::Token(()));
        }
        self.retired
            .push((key.authority().id.clone(), key.not_after()));
        // The keyring's `key` drops here: once no signature holds it, its private half is gone.
    }

    /// Every transition that needs no new key.
    fn advance(&mut self, wall: UnixTime, out: &mut Vec<Action>) {
        if let Some(cur) = self.current.take() {
            if wall >= cur.not_after() {
                self.retire(cur);
            } else {
                self.current = Some(cur);
            }
        }
        if let Some(next) = self.next.take() {
            let stale = !next.confirmed && wall >= activate_at(&next.key);
            if stale || wall >= next.key.not_after() {
                // It never signed; its publication may have landed, so remove it.
                out.push(Action::Prune {
                    id: next.key.authority().id.clone(),
                });
            } else {
                self.next = Some(next);
            }
        }
        let due = self
            .current
            .as_deref()
            .is_none_or(|c| wall >= activate_at(c));
        if due && self.next.as_ref().is_some_and(|n| n.confirmed) {
            if let Some(NextSlot { mut key, .. }) = self.next.take() {
                if let Some(cur) = self.current.take() {
                    self.retire(cur);
                }
                key.set_state(KeyState::Active, sealed::Token(()));
                out.push(Action::Activate {
                    id: key.authority().id.clone(),
                });
                self.current = Some(Arc::new(key));
            }
        }
        let grace = self.cfg.prune_grace;
        self.retired.retain(|(id, not_after)| {
            let prune = wall >= not_after.saturating_add(grace);
            if prune {
                out.push(Action::Prune { id: id.clone() });
            }
            !prune
        });
    }
}

/// A server node's two keyrings: the X.509 CA and the JWT key.
#[derive(Debug)]
pub struct NodeKeyring {
    /// The X.509 CA keyring.
    pub x509: Keyring<X509Ca>,
    /// The JWT key keyring.
    pub jwt: Keyring<JwtKey>,
}

impl NodeKeyring {
    /// Both keyrings, empty.
    pub fn new(x509: KeyringConfig, jwt: KeyringConfig) -> NodeKeyring {
        NodeKeyring {
            x509: Keyring::new(x509),
            jwt: Keyring::new(jwt),
        }
    }

    /// Ticks both keyrings (both run even if the first fails; the first error is returned).
    pub fn handle_tick(
        &mut self,
        wall: UnixTime,
        keys: &dyn KeySource,
        rng: &mut dyn RngCore,
        out: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let x = self.x509.handle_tick(wall, keys, rng, out);
        let j = self.jwt.handle_tick(wall, keys, rng, out);
        x.and(j)
    }

    /// Routes a publication confirmation to the keyring that prepared `id`.
    pub fn handle_published(&mut self, id: &str, wall: UnixTime, out: &mut Vec<Action>) -> bool {
        self.x509.handle_published(id, wall, out) || self.jwt.handle_published(id, wall, out)
    }

    /// Routes a publication failure.
    pub fn handle_publish_failed(&mut self, id: &str) -> bool {
        self.x509.handle_publish_failed(id) || self.jwt.handle_publish_failed(id)
    }

    /// The active X.509 CA at `wall`, if any.
    pub fn active_x509(&self, wall: UnixTime) -> Option<&Arc<X509Ca>> {
        self.x509.active(wall)
    }

    /// The active JWT key at `wall`, if any.
    pub fn active_jwt(&self, wall: UnixTime) -> Option<&Arc<JwtKey>> {
        self.jwt.active(wall)
    }

    /// The earlier of both keyrings' deadlines.
    pub fn next_deadline(&self) -> Option<UnixTime> {
        match (self.x509.next_deadline(), self.jwt.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        }
    }
}
