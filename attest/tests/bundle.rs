//! Trust bundles (SPIFFE_Trust_Domain_and_Bundle.md, spiffe-spire.md §1.4): the bundle assembled
//! from per-node published authorities, each MUST as a named test.

mod common;

use attest::jwt::validate_jwt_svid;
use attest::x509::validate_x509_svid;
use attest::{Error, JwtSvidRequest, PublishedAuthorities, X509SvidRequest};
use common::{secs, t0, td, Node};
use serde_json::Value;
use wire::{Bundle, BundleMap, SpiffeId};

const TD: &str = "example.org";

fn id(s: &str) -> SpiffeId {
    s.parse().expect("spiffe id")
}

fn workload_spki() -> Vec<u8> {
    let keys = attest::keys::SeededKeySource::new(wire::Seed::from_u64(99));
    wire::KeySource::generate(&keys, wire::KeyAlg::EcP256)
        .expect("key")
        .public_key_der()
        .to_vec()
}

fn mint_both(node: &mut Node) -> (Vec<u8>, String) {
    let web = id("spiffe://example.org/web");
    let spki = workload_spki();
    let x = node
        .keyring
        .active_x509(t0())
        .expect("ca")
        .mint(
            &X509SvidRequest {
                spiffe_id: &web,
                dns_names: &[],
                public_key_der: &spki,
                ttl: secs(600),
                not_before_cushion: secs(10),
            },
            t0(),
            &mut node.rng,
        )
        .expect("x509");
    let aud = vec!["db".to_owned()];
    let j = node
        .keyring
        .active_jwt(t0())
        .expect("jwt")
        .mint(
            &JwtSvidRequest {
                spiffe_id: &web,
                audience: &aud,
                ttl: secs(300),
                issuer: None,
                with_jti: false,
            },
            t0(),
            &mut node.rng,
        )
        .expect("jwt");
    (x.cert_der, j)
}

#[test]
fn bundle_must_have_a_keys_member_even_when_empty() {
    let empty = PublishedAuthorities::new().bundle(300);
    let doc: Value = serde_json::from_str(&empty.to_json()).expect("json");
    assert_eq!(doc["keys"], serde_json::json!([]));
    // An empty bundle (every key revoked) invalidates every SVID of the trust domain.
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (x, j) = mint_both(&mut node);
    let mut bundles = BundleMap::default();
    bundles.0.insert(td(TD), empty);
    assert!(validate_x509_svid(&[&x], &bundles, t0()).is_err());
    assert!(validate_jwt_svid(&j, &bundles, "db", t0()).is_err());
}

#[test]
fn bundle_must_change_sequence_on_every_change_and_only_then() {
    let a = Node::bootstrapped(TD, 1, 1, t0());
    let b = Node::bootstrapped(TD, 2, 2, t0());
    let mut p = PublishedAuthorities::new();
    let mut seen = vec![p.sequence()];
    let all: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|n| {
            [
                n.keyring.active_x509(t0()).expect("x").authority().clone(),
                n.keyring.active_jwt(t0()).expect("j").authority().clone(),
            ]
        })
        .collect();
    for auth in &all {
        assert!(p.publish(auth.clone()).expect("valid"));
        seen.push(p.sequence());
        assert!(
            !p.publish(auth.clone()).expect("valid"),
            "a replay changes nothing"
        );
        assert_eq!(p.sequence(), *seen.last().expect("seq"));
    }
    assert!(p.prune(&all[0].id));
    seen.push(p.sequence());
    assert!(!p.prune(&all[0].id));
    assert!(!p.prune("never-published"));
    assert_eq!(p.sequence(), *seen.last().expect("seq"));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seen:?}"
    );
    let doc: Value = serde_json::from_str(&p.bundle(300).to_json()).expect("json");
    assert_eq!(doc["spiffe_sequence"], p.sequence());
    assert_eq!(
        doc["spiffe_refresh_hint"], 300,
        "refresh hint SHOULD be set"
    );
    // Invalid authorities are refused.
    let mut bad = all[1].clone();
    bad.id = "has space".into();
    assert!(matches!(p.publish(bad), Err(Error::Wire(_))));
    // Expired authorities can be pruned in bulk, each bumping the sequence.
    let before = p.sequence();
    let gone = p.prune_expired(t0().saturating_add(secs(48 * 3600)), secs(300));
    assert_eq!(gone.len(), 3);
    assert_eq!(p.sequence(), before + 3);
}

#[test]
fn bundle_must_set_kty_and_use_on_every_key() {
    let node = Node::bootstrapped(TD, 1, 1, t0());
    let doc: Value = serde_json::from_str(&node.bundle().to_json()).expect("json");
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let jwt = node.keyring.active_jwt(t0()).expect("jwt");
    for k in keys {
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        match k["use"].as_str() {
            Some("x509-svid") => {
                // X509-SVID.md §6: no kid, exactly one x5c, the CA certificate.
                assert!(k.get("kid").is_none());
                let x5c = k["x5c"].as_array().expect("x5c");
                assert_eq!(x5c.len(), 1);
                use base64::Engine;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(x5c[0].as_str().expect("str"))
                    .expect("b64");
                assert_eq!(der, ca.cert_der());
            }
            Some("jwt-svid") => {
                // JWT-SVID.md §6.1: kid MUST be set.
                assert_eq!(k["kid"], jwt.kid());
            }
            other => panic!("unexpected use {other:?}"),
        }
    }
    // What we publish parses back to the same bundle.
    assert_eq!(
        Bundle::from_json(node.bundle().to_json().as_bytes()).expect("parse"),
        node.bundle()
    );
}

#[test]
fn bundle_map_is_keyed_by_trust_domain_and_the_bundle_is_the_union_of_nodes() {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|n| Node::bootstrapped(TD, n, n, t0()))
        .collect();
    let mut union = PublishedAuthorities::new();
    for n in &nodes {
        for id in [
            n.keyring.active_x509(t0()).expect("x").authority(),
            n.keyring.active_jwt(t0()).expect("j").authority(),
        ] {
            union.publish(id.clone()).expect("publish");
        }
    }
    let mut bundles = BundleMap::default();
    bundles.0.insert(td(TD), union.bundle(300));
    let round_trip = BundleMap::from_json(bundles.to_json().as_bytes()).expect("bundle map");
    assert_eq!(round_trip, bundles);
    for n in &mut nodes {
        let (x, j) = mint_both(n);
        assert!(validate_x509_svid(&[&x], &round_trip, t0()).is_ok());
        assert!(validate_jwt_svid(&j, &round_trip, "db", t0()).is_ok());
    }
    // Pruning one node's authorities invalidates that node's SVIDs only.
    let (x1, j1) = mint_both(&mut nodes[0]);
    let (x2, _) = mint_both(&mut nodes[1]);
    union.prune(
        &nodes[0]
            .keyring
            .active_x509(t0())
            .expect("x")
            .authority()
            .id,
    );
    union.prune(nodes[0].keyring.active_jwt(t0()).expect("j").kid());
    let mut bundles = BundleMap::default();
    bundles.0.insert(td(TD), union.bundle(300));
    assert!(validate_x509_svid(&[&x1], &bundles, t0()).is_err());
    assert!(validate_jwt_svid(&j1, &bundles, "db", t0()).is_err());
    assert!(validate_x509_svid(&[&x2], &bundles, t0()).is_ok());
}
