//! The keyring state machine: scripted rotations and a property test over random tick sequences
//! and random publication delays, losses and failures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use attest::jwt::validate_jwt_svid;
use attest::keys::SeededKeySource;
use attest::x509::validate_x509_svid;
use attest::{
    Action, JwtSvidRequest, KeyMaterial, Keyring, KeyringConfig, NodeKeyring, PublishedAuthorities,
    X509Ca, X509SvidRequest,
};
use common::{secs, t0, td};
use proptest::prelude::*;
use wire::{BundleMap, KeySource, Seed, SpiffeId, UnixTime};

const TD: &str = "example.org";
const HOUR: u64 = 3600;

fn at(hours: f64) -> UnixTime {
    t0().saturating_add(Duration::from_secs_f64(hours * HOUR as f64))
}

fn tick(ring: &mut Keyring<X509Ca>, keys: &SeededKeySource, wall: UnixTime) -> Vec<Action> {
    let mut out = Vec::new();
    let mut rng = common::rng(wall.as_millis());
    ring.handle_tick(wall, keys, &mut rng, &mut out)
        .expect("tick");
    out
}

fn prepared(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Prepare(auth) => Some(auth.id.clone()),
            _ => None,
        })
        .collect()
}

fn ring() -> (Keyring<X509Ca>, SeededKeySource) {
    (
        Keyring::new(KeyringConfig::new(td(TD), 1)),
        SeededKeySource::new(Seed::from_u64(1)),
    )
}

#[test]
fn bootstrap_has_no_key_until_the_first_publication_is_confirmed() {
    let (mut ring, keys) = ring();
    assert_eq!(ring.next_deadline(), None, "tick at once");
    let out = tick(&mut ring, &keys, t0());
    let first = prepared(&out);
    assert_eq!(first.len(), 1);
    assert!(ring.active(t0()).is_none(), "unpublished: no signer");
    // Not yet time to retry.
    assert!(tick(&mut ring, &keys, t0().saturating_add(secs(5))).is_empty());
    // A failed publication is retried at the next tick, the same key.
    assert!(ring.handle_publish_failed(&first[0]));
    let retry = tick(&mut ring, &keys, t0().saturating_add(secs(6)));
    assert_eq!(prepared(&retry), first);
    // A lost publication is retried after publish_retry.
    let retry = tick(&mut ring, &keys, t0().saturating_add(secs(40)));
    assert_eq!(prepared(&retry), first);
    assert!(ring.active(t0().saturating_add(secs(40))).is_none());
    // Confirmation activates at once (there is no current key).
    let mut out = Vec::new();
    assert!(!ring.handle_published("someone-else", t0(), &mut out));
    assert!(ring.handle_published(&first[0], t0().saturating_add(secs(41)), &mut out));
    assert_eq!(
        out,
        vec![Action::Activate {
            id: first[0].clone()
        }]
    );
    let ca = ring.active(t0().saturating_add(secs(41))).expect("active");
    assert_eq!(ca.authority().id, first[0]);
}

#[test]
fn rotation_follows_spire_timing() {
    let (mut ring, keys) = ring();
    let first = prepared(&tick(&mut ring, &keys, at(0.0)));
    let mut out = Vec::new();
    ring.handle_published(&first[0], at(0.0), &mut out);
    assert!(
        tick(&mut ring, &keys, at(11.9)).is_empty(),
        "nothing before 1/2 of life"
    );
    let second = prepared(&tick(&mut ring, &keys, at(12.0)));
    assert_eq!(second.len(), 1, "prepare at 1/2 of life");
    ring.handle_published(&second[0], at(12.5), &mut out);
    assert_eq!(
        ring.current_id(),
        Some(first[0].as_str()),
        "confirmed, but not yet due"
    );
    assert!(tick(&mut ring, &keys, at(19.9)).is_empty());
    let out = tick(&mut ring, &keys, at(20.0));
    assert_eq!(
        out,
        vec![Action::Activate {
            id: second[0].clone()
        }],
        "activate at 5/6"
    );
    assert_eq!(ring.retired().len(), 1);
    // Next: the second key's successor, at the second key's half-life (created at 12h).
    assert_eq!(ring.next_deadline(), Some(at(24.0)));
    assert!(tick(&mut ring, &keys, at(23.9)).is_empty());
    // The old key stays published until its NotAfter (+ grace): SVIDs it signed may live.
    let out = tick(&mut ring, &keys, at(24.0));
    assert_eq!(prepared(&out).len(), 1);
    assert!(!out.iter().any(|a| matches!(a, Action::Prune { .. })));
    let out = tick(&mut ring, &keys, at(24.0 + 5.0 / 60.0));
    assert!(out.contains(&Action::Prune {
        id: first[0].clone()
    }));
    assert!(ring.retired().is_empty());
}

/// A signer takes the active key and signs after releasing the keyring: a rotation that
/// retires the key meanwhile lets that signature finish (the key was active when it was
/// decided) and hands out only the new key from then on.
#[test]
fn a_signature_started_before_a_rotation_finishes_with_its_key() {
    let (mut ring, keys) = ring();
    let first = prepared(&tick(&mut ring, &keys, at(0.0)));
    let mut out = Vec::new();
    ring.handle_published(&first[0], at(0.0), &mut out);
    let held = ring.active(at(19.0)).expect("active").clone();
    let second = prepared(&tick(&mut ring, &keys, at(12.0)));
    ring.handle_published(&second[0], at(12.5), &mut out);
    tick(&mut ring, &keys, at(20.0));
    assert_eq!(ring.current_id(), Some(second[0].as_str()), "rotated");
    assert_eq!(
        ring.active(at(20.0)).expect("new").authority().id,
        second[0],
        "only the new key is handed out"
    );
    let id: SpiffeId = "spiffe://example.org/w".parse().expect("id");
    let subject = keys.generate(wire::KeyAlg::EcP256).expect("key");
    let req = X509SvidRequest {
        spiffe_id: &id,
        dns_names: &[],
        public_key_der: subject.public_key_der(),
        ttl: Duration::from_secs(600),
        not_before_cushion: Duration::ZERO,
    };
    let svid = held
        .mint(&req, at(20.0), &mut common::rng(7))
        .expect("the in-flight signature completes");
    assert!(
        svid.not_after <= held.not_after(),
        "capped at the old key's NotAfter"
    );
    assert_eq!(held.authority().id, first[0]);
}

#[test]
fn activation_waits_for_confirmation() {
    let (mut ring, keys) = ring();
    let first = prepared(&tick(&mut ring, &keys, at(0.0)));
    let mut out = Vec::new();
    ring.handle_published(&first[0], at(0.0), &mut out);
    let second = prepared(&tick(&mut ring, &keys, at(12.0)));
    // Past 5/6 but unconfirmed: the old key keeps signing.
    let out = tick(&mut ring, &keys, at(21.0));
    assert!(out.iter().all(|a| !matches!(a, Action::Activate { .. })));
    assert_eq!(ring.active(at(21.0)).expect("old").authority().id, first[0]);
    // Confirmation past the activation time activates immediately.
    let mut out = Vec::new();
    ring.handle_published(&second[0], at(22.0), &mut out);
    assert_eq!(
        out,
        vec![Action::Activate {
            id: second[0].clone()
        }]
    );
}

#[test]
fn an_unconfirmed_key_is_replaced_and_an_expired_current_key_stops_signing() {
    let (mut ring, keys) = ring();
    let first = prepared(&tick(&mut ring, &keys, at(0.0)));
    let mut out = Vec::new();
    ring.handle_published(&first[0], at(0.0), &mut out);
    let second = prepared(&tick(&mut ring, &keys, at(12.0)));
    // Never confirmed. At 24h the current key expires: no signer.
    tick(&mut ring, &keys, at(23.9));
    let out = tick(&mut ring, &keys, at(24.0));
    assert!(
        ring.active(at(24.0)).is_none(),
        "an expired key never signs"
    );
    assert!(out.iter().all(|a| !matches!(a, Action::Activate { .. })));
    // At 5/6 of the prepared key's own life (32h) it is abandoned (pruned, in case its commit
    // landed) and a fresh key prepared.
    let out = tick(&mut ring, &keys, at(31.9));
    assert!(
        out.contains(&Action::Prune {
            id: first[0].clone()
        }),
        "expired 24h + grace"
    );
    assert!(!out.contains(&Action::Prune {
        id: second[0].clone()
    }));
    let out = tick(&mut ring, &keys, at(32.0));
    assert!(out.contains(&Action::Prune {
        id: second[0].clone()
    }));
    let third = prepared(&out);
    assert_eq!(third.len(), 1);
    assert_ne!(third[0], second[0]);
    let mut out = Vec::new();
    ring.handle_published(&third[0], at(32.1), &mut out);
    assert_eq!(
        ring.active(at(32.1)).expect("active").authority().id,
        third[0]
    );
}

// ----- the property test -----

/// What happens to one publication attempt.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Committed after the delay and confirmed.
    Confirmed,
    /// Committed after the delay, but the confirmation is lost.
    CommittedUnconfirmed,
    /// Fails after the delay, and the failure is reported.
    Failed,
    /// Vanishes.
    Lost,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        5 => Just(Fate::Confirmed),
        1 => Just(Fate::CommittedUnconfirmed),
        1 => Just(Fate::Failed),
        1 => Just(Fate::Lost),
    ]
}

#[derive(Debug, Clone)]
struct Step {
    /// Time to the next tick.
    advance_secs: u64,
    /// Fate and delay of each publication attempt emitted at this tick.
    fates: Vec<(Fate, u64)>,
    /// Lifetime asked for the X.509-SVID minted at this tick (up to beyond the CA's life, so
    /// that SVIDs capped at the CA's NotAfter are common).
    svid_ttl_secs: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        1u64..=30 * 60,
        proptest::collection::vec((fate(), 0u64..=2 * HOUR), 2),
        60u64..=30 * HOUR,
    )
        .prop_map(|(advance_secs, fates, svid_ttl_secs)| Step {
            advance_secs,
            fates,
            svid_ttl_secs,
        })
}

/// The cluster side of publication, as the keyring sees it.
struct World {
    keyring: NodeKeyring,
    keys: SeededKeySource,
    rng: rand_chacha::ChaCha20Rng,
    /// Authorities committed in the replicated bundle.
    committed: PublishedAuthorities,
    /// In-flight attempts: (due, authority id, fate).
    in_flight: Vec<(UnixTime, wire::Authority, Fate)>,
    /// Failures in a row per authority; the harness forces success after two, so that
    /// publications eventually succeed within a bounded time.
    failures: BTreeMap<String, u32>,
    /// Every SVID minted: (authority id, NotAfter).
    minted: Vec<(String, UnixTime)>,
    ever_confirmed: BTreeSet<String>,
}

impl World {
    fn deliver(&mut self, wall: UnixTime) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(t, _, _)| *t <= wall);
        self.in_flight = later;
        for (_, authority, fate) in due {
            let mut out = Vec::new();
            match fate {
                Fate::Confirmed | Fate::CommittedUnconfirmed => {
                    self.committed.publish(authority.clone()).expect("valid");
                    if matches!(fate, Fate::Confirmed) {
                        self.ever_confirmed.insert(authority.id.clone());
                        self.keyring.handle_published(&authority.id, wall, &mut out);
                    }
                }
                Fate::Failed => {
                    self.keyring.handle_publish_failed(&authority.id);
                }
                Fate::Lost => {}
            }
            self.apply(wall, out);
        }
    }

    fn apply(&mut self, wall: UnixTime, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Activate { id } => {
                    assert!(
                        self.committed.contains(&id) && self.ever_confirmed.contains(&id),
                        "activated {id} before its publication was confirmed"
                    );
                }
                Action::Prune { id } => {
                    for (signer, not_after) in &self.minted {
                        assert!(
                            signer != &id || *not_after <= wall,
                            "pruned {id} at {wall:?} while an SVID it signed lives until {not_after:?}"
                        );
                    }
                    self.committed.prune(&id);
                }
                Action::Prepare(_) => unreachable!("prepare actions are scheduled by the caller"),
            }
        }
    }

    fn bundles(&self) -> BundleMap {
        let mut m = BundleMap::default();
        m.0.insert(td(TD), self.committed.bundle(300));
        m
    }
}

fn run(seed: u64, steps: &[Step]) {
    let cfg = KeyringConfig::new(td(TD), 7);
    let mut w = World {
        keyring: NodeKeyring::new(cfg.clone(), cfg),
        keys: SeededKeySource::new(Seed::from_u64(seed)),
        rng: common::rng(seed),
        committed: PublishedAuthorities::new(),
        in_flight: Vec::new(),
        failures: BTreeMap::new(),
        minted: Vec::new(),
        ever_confirmed: BTreeSet::new(),
    };
    let web: SpiffeId = "spiffe://example.org/web".parse().expect("id");
    let aud = vec!["db".to_owned()];
    let spki = wire::KeySource::generate(&w.keys, wire::KeyAlg::EcP256)
        .expect("key")
        .public_key_der()
        .to_vec();
    let mut wall = t0();
    let mut usable_since: Option<UnixTime> = None;
    let mut jwt_usable_since: Option<UnixTime> = None;
    for s in steps {
        wall = wall.saturating_add(secs(s.advance_secs));
        w.deliver(wall);
        let mut out = Vec::new();
        w.keyring
            .handle_tick(wall, &w.keys, &mut w.rng, &mut out)
            .expect("tick");
        let mut fates = s.fates.iter().cycle();
        let mut rest = Vec::new();
        for a in out {
            if let Action::Prepare(authority) = a {
                let (mut fate, delay) = *fates.next().expect("cycle");
                let n = w.failures.entry(authority.id.clone()).or_insert(0);
                if !matches!(fate, Fate::Confirmed) {
                    *n += 1;
                    if *n > 2 {
                        fate = Fate::Confirmed;
                    }
                }
                w.in_flight
                    .push((wall.saturating_add(secs(delay)), authority, fate));
            } else {
                rest.push(a);
            }
        }
        w.apply(wall, rest);

        // Sign with whatever the keyring offers, and check it against the committed bundle.
        let bundles = w.bundles();
        match w.keyring.active_x509(wall) {
            Some(ca) => {
                let id = &ca.authority().id;
                assert!(w.committed.contains(id), "signing with unpublished {id}");
                assert!(w.ever_confirmed.contains(id));
                let svid = ca
                    .mint(
                        &X509SvidRequest {
                            spiffe_id: &web,
                            dns_names: &[],
                            public_key_der: &spki,
                            ttl: secs(s.svid_ttl_secs),
                            not_before_cushion: secs(10),
                        },
                        wall,
                        &mut w.rng,
                    )
                    .expect("mint");
                assert!(svid.not_after <= ca.authority().not_after);
                w.minted.push((id.clone(), svid.not_after));
                validate_x509_svid(&[&svid.cert_der], &bundles, wall)
                    .expect("a minted SVID validates against the committed bundle");
                usable_since.get_or_insert(wall);
            }
            None => assert!(
                usable_since.is_none(),
                "no usable X.509 CA at {wall:?} although one was usable at {usable_since:?}"
            ),
        }
        if let Some(key) = w.keyring.active_jwt(wall) {
            let id = key.kid().to_owned();
            assert!(w.committed.contains(&id), "signing with unpublished {id}");
            let token = key
                .mint(
                    &JwtSvidRequest {
                        spiffe_id: &web,
                        audience: &aud,
                        ttl: secs(300),
                        issuer: None,
                        with_jti: false,
                    },
                    wall,
                    &mut w.rng,
                )
                .expect("mint");
            let exp = validate_jwt_svid(&token, &bundles, "db", wall)
                .expect("a minted JWT-SVID validates against the committed bundle")
                .expiry;
            w.minted.push((id, exp));
            jwt_usable_since.get_or_insert(wall);
        } else {
            assert!(jwt_usable_since.is_none(), "no usable JWT key at {wall:?}");
        }
        // The bundle stays small: per kind, current + next + retired-but-live + abandoned.
        assert!(w.committed.bundle(0).x509_authorities.len() <= 4);
        assert!(w.committed.bundle(0).jwt_authorities.len() <= 4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Never signs with an unpublished key, never prunes a key with live SVIDs, and always has
    /// a usable key once the first publication is confirmed (publications succeed within a
    /// bounded time: at most two failures in a row, each under two hours).
    #[test]
    fn keyring_invariants_hold_over_random_ticks_and_publications(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 150..300),
    ) {
        run(seed, &steps);
    }
}
