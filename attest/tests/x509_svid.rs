//! X.509-SVIDs: every MUST of X509-SVID.md that applies to minting and validation
//! (spiffe-spire.md §1.2) as a named test, plus independent verification of minted chains with
//! the openssl CLI, rustls (webpki) and the `spiffe` crate.

mod common;

use std::process::Command;
use std::sync::Arc;

use attest::keys::{jwk_of_spki, p256_spki_der, SeededKeySource};
use attest::x509::{validate_x509_svid, X509Policy, NOT_BEFORE_CUSHION_DEFAULT};
use attest::{Error, X509Ca, X509Reject, X509Svid, X509SvidRequest};
use common::{secs, t0, td, Node};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use wire::{
    AuthorityKey, Bundle, BundleMap, EntryId, RegistrationEntry, Seed, SpiffeId, UnixTime,
    X509Authority,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const TD: &str = "example.org";

fn id(s: &str) -> SpiffeId {
    s.parse().expect("spiffe id")
}

/// A fresh workload key: (PKCS#8, SPKI DER).
fn workload_key() -> (Vec<u8>, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("pair");
    let spki = p256_spki_der(pair.public_key().as_ref()).expect("spki");
    (pkcs8.as_ref().to_vec(), spki)
}

fn mint(node: &mut Node, spiffe_id: &str, dns: &[&str], spki: &[u8], wall: UnixTime) -> X509Svid {
    let spiffe_id = id(spiffe_id);
    let dns: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
    let req = X509SvidRequest {
        spiffe_id: &spiffe_id,
        dns_names: &dns,
        public_key_der: spki,
        ttl: secs(3600),
        not_before_cushion: NOT_BEFORE_CUSHION_DEFAULT,
    };
    let ca = node.keyring.active_x509(wall).expect("active CA");
    ca.mint(&req, wall, &mut node.rng).expect("mint")
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("parses");
    assert!(rest.is_empty());
    cert
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("san")
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reject(result: Result<SpiffeId, Error>) -> X509Reject {
    match result {
        Err(Error::X509(r)) => r,
        other => panic!("expected an X.509 rejection, got {other:?}"),
    }
}

// ----- an rcgen-built CA in the bundle, for leaves our minter would never produce -----

struct Foreign {
    issuer: Issuer<'static, KeyPair>,
    bundle: BundleMap,
}

fn unix(t: UnixTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs() as i64).expect("time")
}

fn rcgen_ca(td_name: &str) -> (Issuer<'static, KeyPair>, X509Authority) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::OrganizationName, "rcgen CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{td_name}").try_into().expect("uri"),
    )];
    p.not_before = unix(t0().saturating_sub(secs(3600)));
    p.not_after = unix(t0().saturating_add(secs(86_400)));
    let cert = p.self_signed(&key).expect("self-signed");
    let authority = X509Authority {
        cert_der: cert.der().to_vec(),
        key: jwk_of_spki(&key.subject_public_key_info()).expect("jwk"),
    };
    (Issuer::new(p, key), authority)
}

fn foreign() -> Foreign {
    let (issuer, authority) = rcgen_ca(TD);
    let mut bundle = BundleMap::default();
    bundle.0.insert(
        td(TD),
        Bundle {
            x509_authorities: vec![authority],
            ..Bundle::default()
        },
    );
    Foreign { issuer, bundle }
}

/// Leaf parameters that validate; tests break one rule at a time.
fn good_leaf_params(uris: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("uri")))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = unix(t0().saturating_sub(secs(60)));
    p.not_after = unix(t0().saturating_add(secs(3600)));
    p
}

fn sign_leaf(f: &Foreign, p: &CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    p.signed_by(&key, &f.issuer).expect("sign").der().to_vec()
}

// ----- X509-SVID.md §2: exactly one URI SAN -----

#[test]
fn x509_must_have_exactly_one_uri_san_equal_to_the_spiffe_id() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(
        &mut node,
        "spiffe://example.org/web",
        &["web.example.org"],
        &spki,
        t0(),
    );
    let cert = parse(&svid.cert_der);
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org/web"]);
    let names = &cert
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value
        .general_names;
    assert!(
        names.contains(&GeneralName::DNSName("web.example.org")),
        "DNS SANs allowed"
    );
    assert_eq!(
        validate_x509_svid(&[&svid.cert_der], &node.bundle_map(), t0()).expect("valid"),
        id("spiffe://example.org/web")
    );
}

#[test]
fn x509_must_validator_rejects_more_than_one_uri_san() {
    let f = foreign();
    let two = good_leaf_params(&["spiffe://example.org/a", "spiffe://example.org/b"]);
    assert_eq!(
        reject(validate_x509_svid(&[sign_leaf(&f, &two)], &f.bundle, t0())),
        X509Reject::UriSanCount(2)
    );
    let none = good_leaf_params(&[]);
    let mut none = none;
    none.subject_alt_names = vec![SanType::DnsName("a.example".try_into().expect("dns"))];
    assert_eq!(
        reject(validate_x509_svid(&[sign_leaf(&f, &none)], &f.bundle, t0())),
        X509Reject::UriSanCount(0)
    );
    // The rcgen-built good leaf passes, so the rejections above are about the SANs alone.
    let good = good_leaf_params(&["spiffe://example.org/a"]);
    assert!(validate_x509_svid(&[sign_leaf(&f, &good)], &f.bundle, t0()).is_ok());
}

#[test]
fn x509_must_validator_rejects_non_spiffe_uri() {
    let f = foreign();
    for uri in [
        "https://example.org/a",
        "spiffe://Example.org/a",
        "spiffe://example.org/a/",
    ] {
        let p = good_leaf_params(&[uri]);
        assert_eq!(
            reject(validate_x509_svid(&[sign_leaf(&f, &p)], &f.bundle, t0())),
            X509Reject::NotSpiffeId,
            "{uri}"
        );
    }
}

// ----- §3.1: leaf ID has a non-root path; Subject present (else SAN critical) -----

#[test]
fn x509_must_leaf_spiffe_id_have_a_non_root_path() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let root = id("spiffe://example.org");
    let req = X509SvidRequest {
        spiffe_id: &root,
        dns_names: &[],
        public_key_der: &spki,
        ttl: secs(60),
        not_before_cushion: secs(10),
    };
    let ca = node.keyring.active_x509(t0()).expect("ca");
    assert!(matches!(
        ca.mint(&req, t0(), &mut node.rng),
        Err(Error::InvalidRequest(_))
    ));
    let f = foreign();
    let p = good_leaf_params(&["spiffe://example.org"]);
    assert_eq!(
        reject(validate_x509_svid(&[sign_leaf(&f, &p)], &f.bundle, t0())),
        X509Reject::RootPath
    );
}

#[test]
fn x509_must_mark_san_critical_when_subject_is_empty() {
    // sigil always writes a Subject (O=sigil), so its non-critical SAN is allowed.
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let cert = parse(&svid.cert_der);
    assert!(
        cert.subject().iter_attributes().next().is_some(),
        "subject is not empty"
    );
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("present");
    assert!(cert.subject().iter_attributes().next().is_some() || san.critical);
}

// ----- §3.2, §4.1–4.3: the signing certificate -----

#[test]
fn x509_must_signing_cert_be_ca_with_key_cert_sign_critical() {
    let node = Node::bootstrapped(TD, 1, 1, t0());
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let cert = parse(ca.cert_der());
    let bc = cert.basic_constraints().expect("bc").expect("present");
    assert!(bc.critical && bc.value.ca);
    let ku = cert.key_usage().expect("ku").expect("present");
    assert!(ku.critical, "keyUsage MUST be critical");
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert_eq!(
        cert.subject().as_raw(),
        cert.issuer().as_raw(),
        "self-signed"
    );
    assert!(
        cert.verify_signature(None).is_ok(),
        "self-signature verifies"
    );
}

#[test]
fn x509_must_signing_cert_spiffe_id_have_no_path_and_no_name_constraints() {
    let node = Node::bootstrapped(TD, 1, 1, t0());
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let cert = parse(ca.cert_der());
    assert_eq!(uri_sans(&cert), vec!["spiffe://example.org"]);
    assert!(
        !cert
            .extensions()
            .iter()
            .any(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_))),
        "rustls-webpki rejects URI name constraints"
    );
}

#[test]
fn x509_ca_subjects_are_unique_per_key() {
    // SPIRE #4585: identical CA Subjects across many CAs break Go's chain building.
    let a = Node::bootstrapped(TD, 1, 1, t0());
    let b = Node::bootstrapped(TD, 2, 2, t0());
    let sa = parse(a.keyring.active_x509(t0()).expect("ca").cert_der())
        .subject()
        .to_string();
    let sb = parse(b.keyring.active_x509(t0()).expect("ca").cert_der())
        .subject()
        .to_string();
    assert_ne!(sa, sb);
    assert!(sa.contains("serialNumber="), "{sa}");
    // A node's next key differs from its first too.
    let mut a = a;
    let later = t0().saturating_add(secs(20 * 3600 + 60));
    a.run(t0().saturating_add(secs(12 * 3600 + 1)));
    a.run(later);
    let sa2 = parse(a.keyring.active_x509(later).expect("ca").cert_der())
        .subject()
        .to_string();
    assert_ne!(sa, sa2);
}

// ----- §4.1, §4.3, §4.4: the leaf -----

#[test]
fn x509_must_leaf_basic_constraints_ca_false() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let cert = parse(&svid.cert_der);
    let bc = cert.basic_constraints().expect("bc").expect("present");
    assert!(!bc.value.ca);
    let f = foreign();
    let mut p = good_leaf_params(&["spiffe://example.org/a"]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(
        reject(validate_x509_svid(&[sign_leaf(&f, &p)], &f.bundle, t0())),
        X509Reject::LeafIsCa
    );
}

#[test]
fn x509_must_leaf_key_usage_be_critical_with_digital_signature_only_leaf_bits() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let cert = parse(&svid.cert_der);
    let ku = cert.key_usage().expect("ku").expect("present");
    assert!(ku.critical);
    assert!(
        ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
    );
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());

    let f = foreign();
    for bad in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
        let mut p = good_leaf_params(&["spiffe://example.org/a"]);
        p.key_usages.push(bad);
        assert_eq!(
            reject(validate_x509_svid(&[sign_leaf(&f, &p)], &f.bundle, t0())),
            X509Reject::LeafKeyUsage
        );
    }
    let mut p = good_leaf_params(&["spiffe://example.org/a"]);
    p.key_usages.clear();
    assert_eq!(
        reject(validate_x509_svid(&[sign_leaf(&f, &p)], &f.bundle, t0())),
        X509Reject::MissingKeyUsage
    );
}

#[test]
fn x509_must_leaf_eku_include_server_and_client_auth() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let cert = parse(&svid.cert_der);
    let eku = cert.extended_key_usage().expect("eku").expect("present");
    assert!(eku.value.server_auth && eku.value.client_auth);
}

// ----- §5: validation -----

#[test]
fn x509_must_validate_the_path_against_the_trust_domain_bundle() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let bundles = node.bundle_map();
    assert!(validate_x509_svid(&[&svid.cert_der], &bundles, t0()).is_ok());

    // Another node's CA of the same trust domain, not in the bundle.
    let mut other = Node::bootstrapped(TD, 2, 2, t0());
    let forged = mint(&mut other, "spiffe://example.org/web", &[], &spki, t0());
    assert_eq!(
        reject(validate_x509_svid(&[&forged.cert_der], &bundles, t0())),
        X509Reject::UntrustedChain
    );
    // The right CA filed under another trust domain does not count.
    let mut misfiled = BundleMap::default();
    misfiled.0.insert(td("other.org"), node.bundle());
    assert_eq!(
        reject(validate_x509_svid(&[&svid.cert_der], &misfiled, t0())),
        X509Reject::NoBundle
    );
    // An empty bundle (all keys revoked) invalidates every SVID of the trust domain.
    let mut empty = BundleMap::default();
    empty.0.insert(td(TD), Bundle::default());
    assert_eq!(
        reject(validate_x509_svid(&[&svid.cert_der], &empty, t0())),
        X509Reject::UntrustedChain
    );
    // A flipped signature bit.
    let mut tampered = svid.cert_der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(validate_x509_svid(&[&tampered], &bundles, t0()).is_err());
    // Time.
    assert_eq!(
        reject(validate_x509_svid(
            &[&svid.cert_der],
            &bundles,
            svid.not_after.saturating_add(secs(1))
        )),
        X509Reject::Expired
    );
    assert_eq!(
        reject(validate_x509_svid(
            &[&svid.cert_der],
            &bundles,
            svid.not_before.saturating_sub(secs(1))
        )),
        X509Reject::NotYetValid
    );
    // Garbage.
    assert_eq!(
        reject(validate_x509_svid(&[b"nope".as_slice()], &bundles, t0())),
        X509Reject::Malformed
    );
    let none: [&[u8]; 0] = [];
    assert_eq!(
        reject(validate_x509_svid(&none, &bundles, t0())),
        X509Reject::EmptyChain
    );
}

#[test]
fn x509_validation_follows_intermediates_within_the_trust_domain() {
    let f = foreign();
    let int_key = KeyPair::generate().expect("key");
    let mut ip = CertificateParams::default();
    ip.distinguished_name
        .push(DnType::OrganizationName, "intermediate");
    ip.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ip.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org".try_into().expect("uri"),
    )];
    ip.not_before = unix(t0().saturating_sub(secs(60)));
    ip.not_after = unix(t0().saturating_add(secs(7200)));
    let int_cert = ip.signed_by(&int_key, &f.issuer).expect("intermediate");
    let int_issuer = Issuer::new(ip.clone(), int_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = good_leaf_params(&["spiffe://example.org/a"])
        .signed_by(&leaf_key, &int_issuer)
        .expect("leaf");
    let chain = [leaf.der().to_vec(), int_cert.der().to_vec()];
    assert_eq!(
        validate_x509_svid(&chain, &f.bundle, t0()).expect("valid"),
        id("spiffe://example.org/a")
    );
    assert_eq!(
        reject(validate_x509_svid(&chain[..1], &f.bundle, t0())),
        X509Reject::UntrustedChain,
        "the intermediate is needed"
    );
    // An intermediate whose SPIFFE ID has a path is not a signing certificate.
    let mut bad = ip;
    bad.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/x".try_into().expect("uri"),
    )];
    let bad_key = KeyPair::generate().expect("key");
    let bad_cert = bad.signed_by(&bad_key, &f.issuer).expect("intermediate");
    let bad_issuer = Issuer::new(bad, bad_key);
    let leaf2 = good_leaf_params(&["spiffe://example.org/a"])
        .signed_by(&leaf_key, &bad_issuer)
        .expect("leaf");
    assert_eq!(
        reject(validate_x509_svid(
            &[leaf2.der().to_vec(), bad_cert.der().to_vec()],
            &f.bundle,
            t0()
        )),
        X509Reject::UntrustedChain
    );
}

// ----- minting rules beyond the spec's MUSTs -----

#[test]
fn svid_times_serials_and_cap_at_ca_not_after() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let wall = t0().saturating_add(secs(100));
    let a = mint(&mut node, "spiffe://example.org/web", &[], &spki, wall);
    let b = mint(&mut node, "spiffe://example.org/web", &[], &spki, wall);
    assert_eq!(
        a.not_before,
        wall.saturating_sub(NOT_BEFORE_CUSHION_DEFAULT)
    );
    assert_eq!(a.not_after, wall.saturating_add(secs(3600)));
    assert_ne!(a.serial, b.serial, "serials are random");
    let cert = parse(&a.cert_der);
    assert_eq!(cert.raw_serial(), trim_serial(&a.serial));
    assert!(cert.raw_serial()[0] & 0x80 == 0, "positive");
    assert_eq!(
        cert.validity().not_before.timestamp() as u64,
        a.not_before.as_secs()
    );

    // Close to the CA's end, NotAfter is the CA's NotAfter.
    let ca_not_after = node
        .keyring
        .x509
        .active(wall)
        .expect("ca")
        .authority()
        .not_after;
    let late = ca_not_after.saturating_sub(secs(600));
    let ca = node
        .keyring
        .x509
        .active(late)
        .expect("still active without rotation ticks");
    let req_id = id("spiffe://example.org/web");
    let c = ca
        .mint(
            &X509SvidRequest {
                spiffe_id: &req_id,
                dns_names: &[],
                public_key_der: &spki,
                ttl: secs(3600),
                not_before_cushion: secs(10),
            },
            late,
            &mut node.rng,
        )
        .expect("mint");
    assert_eq!(c.not_after, ca_not_after);
    // And NotBefore never precedes the CA's NotBefore.
    let early = ca.not_before();
    let d = ca
        .mint(
            &X509SvidRequest {
                spiffe_id: &req_id,
                dns_names: &[],
                public_key_der: &spki,
                ttl: secs(60),
                not_before_cushion: secs(3600),
            },
            t0(),
            &mut node.rng,
        )
        .expect("mint");
    assert_eq!(d.not_before, early);
}

fn trim_serial(s: &[u8; 16]) -> Vec<u8> {
    let start = s.iter().position(|b| *b != 0).unwrap_or(15);
    let mut v = s[start..].to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    v
}

#[test]
fn mint_rejects_bad_requests_with_typed_errors() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let foreign_id = id("spiffe://other.org/web");
    let good_id = id("spiffe://example.org/web");
    let base = X509SvidRequest {
        spiffe_id: &good_id,
        dns_names: &[],
        public_key_der: &spki,
        ttl: secs(60),
        not_before_cushion: secs(10),
    };
    let rng = &mut node.rng;
    assert!(matches!(
        ca.mint(
            &X509SvidRequest {
                spiffe_id: &foreign_id,
                ..base
            },
            t0(),
            rng
        ),
        Err(Error::ForeignTrustDomain { .. })
    ));
    let bad_dns = vec!["bad_name".to_owned()];
    assert!(ca
        .mint(
            &X509SvidRequest {
                dns_names: &bad_dns,
                ..base
            },
            t0(),
            rng
        )
        .is_err());
    let many_dns: Vec<String> = (0..40).map(|i| format!("h{i}.example")).collect();
    assert!(ca
        .mint(
            &X509SvidRequest {
                dns_names: &many_dns,
                ..base
            },
            t0(),
            rng
        )
        .is_err());
    for bad_key in [
        &b""[..],
        &b"\x30\x03\x02\x01\x01"[..],
        &spki[..90],
        &[0u8; 3000][..],
    ] {
        assert!(matches!(
            ca.mint(
                &X509SvidRequest {
                    public_key_der: bad_key,
                    ..base
                },
                t0(),
                rng
            ),
            Err(Error::InvalidPublicKey(_))
        ));
    }
    assert!(ca
        .mint(
            &X509SvidRequest {
                ttl: secs(0),
                ..base
            },
            t0(),
            rng
        )
        .is_err());
    let after = node.keyring.x509.current_id().map(|_| ()).and(Some(()));
    assert!(after.is_some());
    let expired_at = ca.authority().not_after;
    assert_eq!(
        ca.mint(&base, expired_at, rng),
        Err(Error::AuthorityExpired)
    );
}

fn entry(spiffe_id: &str, ttl_secs: u32) -> RegistrationEntry {
    let mut e = RegistrationEntry::new(
        EntryId::from_random([1; 16]),
        id(spiffe_id),
        id("spiffe://example.org/sigil/agent/join_token/x"),
        ["unix:uid:1000".parse().expect("selector")].into(),
        0,
    );
    e.x509_svid_ttl_secs = ttl_secs;
    e.dns_names = vec!["web.example.org".into()];
    e.revision = 1;
    e
}

#[test]
fn mint_for_entry_uses_the_entry_id_names_and_ttl() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let policy = X509Policy::default();
    let e = entry("spiffe://example.org/web", 600);
    let svid = ca
        .mint_for_entry(&e, &spki, &policy, t0(), &mut node.rng)
        .expect("mint");
    let cert = parse(&svid.cert_der);
    assert_eq!(uri_sans(&cert), vec![e.spiffe_id.to_string()]);
    assert_eq!(svid.not_after, t0().saturating_add(secs(600)));
    let default_ttl = entry("spiffe://example.org/web", 0);
    let svid = ca
        .mint_for_entry(&default_ttl, &spki, &policy, t0(), &mut node.rng)
        .expect("mint");
    assert_eq!(svid.not_after, t0().saturating_add(policy.default_ttl));
    // Entries never get sigil's own identities; the ID-based API can (server SVIDs).
    let reserved = entry("spiffe://example.org/sigil/server/1", 0);
    assert!(ca
        .mint_for_entry(&reserved, &spki, &policy, t0(), &mut node.rng)
        .is_err());
    let server = id("spiffe://example.org/sigil/server/1");
    let req = X509SvidRequest {
        spiffe_id: &server,
        dns_names: &[],
        public_key_der: &spki,
        ttl: secs(3600),
        not_before_cushion: secs(10),
    };
    let svid = ca.mint(&req, t0(), &mut node.rng).expect("server svid");
    assert_eq!(
        validate_x509_svid(&[&svid.cert_der], &node.bundle_map(), t0()).expect("valid"),
        server
    );
}

#[test]
fn p384_subject_keys_are_accepted() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
    let spki = key.subject_public_key_info();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    assert!(validate_x509_svid(&[&svid.cert_der], &node.bundle_map(), t0()).is_ok());
}

#[test]
fn seeded_keys_give_byte_identical_certificates() {
    let run = || {
        let mut node = Node::bootstrapped(TD, 1, 77, t0());
        let spki = SeededKeySource::new(Seed::from_u64(5));
        let spki = wire::KeySource::generate(&spki, wire::KeyAlg::EcP256)
            .expect("key")
            .public_key_der()
            .to_vec();
        let svid = mint(
            &mut node,
            "spiffe://example.org/web",
            &["a.example"],
            &spki,
            t0(),
        );
        let ca = node
            .keyring
            .active_x509(t0())
            .expect("ca")
            .cert_der()
            .to_vec();
        (ca, svid.cert_der)
    };
    assert_eq!(run(), run());
}

#[test]
#[should_panic(expected = "must be published and active")]
fn an_unpublished_ca_never_signs() {
    let keys = SeededKeySource::new(Seed::from_u64(3));
    let signer = wire::KeySource::generate(&keys, wire::KeyAlg::EcP256).expect("key");
    let mut rng = common::rng(3);
    let ca =
        X509Ca::create(signer, &td(TD), 1, t0(), secs(86_400), secs(10), &mut rng).expect("create");
    let (_, spki) = workload_key();
    let web = id("spiffe://example.org/web");
    let req = X509SvidRequest {
        spiffe_id: &web,
        dns_names: &[],
        public_key_der: &spki,
        ttl: secs(60),
        not_before_cushion: secs(10),
    };
    let _ = ca.mint(&req, t0(), &mut rng);
}

// ----- independent verifiers -----

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[test]
fn minted_chain_verifies_with_openssl() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED minted_chain_verifies_with_openssl: `openssl` is not on PATH");
        return;
    }
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(
        &mut node,
        "spiffe://example.org/web",
        &["web.example.org"],
        &spki,
        t0(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    let leaf_path = dir.path().join("leaf.pem");
    let ca = node.keyring.active_x509(t0()).expect("ca");
    std::fs::write(&ca_path, pem("CERTIFICATE", ca.cert_der())).expect("write");
    std::fs::write(&leaf_path, pem("CERTIFICATE", &svid.cert_der)).expect("write");
    let at = t0().saturating_add(secs(60)).as_secs().to_string();
    for extra in [
        vec![],
        vec!["-partial_chain"],
        vec!["-purpose", "sslserver"],
        vec!["-purpose", "sslclient"],
        vec!["-x509_strict"],
    ] {
        let out = Command::new("openssl")
            .arg("verify")
            .args(["-attime", &at, "-CAfile"])
            .arg(&ca_path)
            .args(&extra)
            .arg(&leaf_path)
            .output()
            .expect("run openssl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": OK"),
            "openssl verify {extra:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // openssl's own reading of both certificates.
    let text = |path: &std::path::Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(path)
            .output()
            .expect("run openssl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let leaf_text = text(&leaf_path);
    eprintln!("{leaf_text}");
    for want in [
        "CA:FALSE",
        "URI:spiffe://example.org/web, DNS:web.example.org",
        "Digital Signature, Key Encipherment, Key Agreement",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "Subject: O = sigil",
        "ecdsa-with-SHA256",
    ] {
        assert!(leaf_text.contains(want), "leaf lacks {want:?}");
    }
    let ca_text = text(&ca_path);
    eprintln!("{ca_text}");
    for want in [
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        "URI:spiffe://example.org",
        "serialNumber",
    ] {
        assert!(ca_text.contains(want), "CA lacks {want:?}");
    }
    // A wrong trust anchor fails.
    let other = Node::bootstrapped(TD, 2, 2, t0());
    let other_path = dir.path().join("other.pem");
    std::fs::write(
        &other_path,
        pem(
            "CERTIFICATE",
            other.keyring.active_x509(t0()).expect("ca").cert_der(),
        ),
    )
    .expect("write");
    let out = Command::new("openssl")
        .args(["verify", "-attime", &at, "-CAfile"])
        .arg(&other_path)
        .arg(&leaf_path)
        .output()
        .expect("run openssl");
    assert!(
        !out.status.success(),
        "a foreign CA must not verify the leaf"
    );
}

#[test]
fn minted_chain_verifies_with_rustls() {
    use rustls::pki_types::{CertificateDer, UnixTime as PkiTime};
    use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for a in &node.bundle().x509_authorities {
        roots
            .add(CertificateDer::from(a.cert_der.clone()))
            .expect("root");
    }
    let now = PkiTime::since_unix_epoch(std::time::Duration::from_secs(t0().as_secs() + 60));
    let leaf = CertificateDer::from(svid.cert_der.clone());
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(&leaf).expect("parse"),
        &roots,
        &[],
        now,
        provider.signature_verification_algorithms.all,
    )
    .expect("rustls accepts the server SVID");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    verifier
        .verify_client_cert(&leaf, &[], now)
        .expect("rustls accepts the client SVID");

    // A leaf from a CA outside the roots is rejected.
    let mut other = Node::bootstrapped(TD, 2, 2, t0());
    let forged = CertificateDer::from(
        mint(&mut other, "spiffe://example.org/web", &[], &spki, t0()).cert_der,
    );
    assert!(verifier.verify_client_cert(&forged, &[], now).is_err());
}

#[test]
fn minted_svid_parses_with_the_spiffe_crate() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (pkcs8, spki) = workload_key();
    let svid = mint(
        &mut node,
        "spiffe://example.org/web",
        &["web.example.org"],
        &spki,
        t0(),
    );
    let parsed =
        spiffe::X509Svid::parse_from_der(&svid.cert_der, &pkcs8).expect("spiffe crate accepts");
    assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/web");
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new(TD).expect("td"),
        ca.cert_der(),
    )
    .expect("spiffe crate accepts the CA as a bundle");
    assert_eq!(bundle.authorities().len(), 1);
}

#[test]
fn long_san_lists_encode_with_multi_byte_lengths() {
    // 32 DNS names of ~60 bytes push the SAN extension, the extensions block and the TBS past
    // the one- and two-byte length forms.
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let names: Vec<String> = (0..32)
        .map(|i| format!("host-{i:02}.{}.example.org", "a".repeat(40)))
        .collect();
    let long_id = format!("spiffe://example.org/{}", ["seg"; 300].join("/"));
    let spiffe_id = id(&long_id);
    let ca = node.keyring.active_x509(t0()).expect("ca");
    let svid = ca
        .mint(
            &X509SvidRequest {
                spiffe_id: &spiffe_id,
                dns_names: &names,
                public_key_der: &spki,
                ttl: secs(60),
                not_before_cushion: secs(10),
            },
            t0(),
            &mut node.rng,
        )
        .expect("mint");
    assert!(svid.cert_der.len() > 3000);
    let cert = parse(&svid.cert_der);
    assert_eq!(uri_sans(&cert), vec![long_id]);
    let dns = cert
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value
        .general_names
        .iter()
        .filter(|n| matches!(n, GeneralName::DNSName(_)))
        .count();
    assert_eq!(dns, 32);
    assert_eq!(
        validate_x509_svid(&[&svid.cert_der], &node.bundle_map(), t0()).expect("valid"),
        spiffe_id
    );
}

#[test]
fn validation_bounds_chain_length_and_certificate_size() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let (_, spki) = workload_key();
    let svid = mint(&mut node, "spiffe://example.org/web", &[], &spki, t0());
    let bundles = node.bundle_map();
    let long_chain = vec![svid.cert_der.clone(); attest::x509::CHAIN_CERTS_MAX + 1];
    assert_eq!(
        reject(validate_x509_svid(&long_chain, &bundles, t0())),
        X509Reject::ChainTooLong
    );
    let huge = vec![0x30; attest::x509::CERT_BYTES_MAX + 1];
    assert_eq!(
        reject(validate_x509_svid(&[&huge], &bundles, t0())),
        X509Reject::TooLarge
    );
    // Trailing bytes after the certificate.
    let mut trailing = svid.cert_der.clone();
    trailing.push(0);
    assert_eq!(
        reject(validate_x509_svid(&[&trailing], &bundles, t0())),
        X509Reject::Malformed
    );
}

/// A CA published through Raft by another member is checked: what `X509Ca::create` makes for
/// that node passes; another node's, a CA from elsewhere, a renamed one or a changed key fail.
#[test]
fn check_node_authority_accepts_a_nodes_own_ca_and_refuses_forgeries() {
    use attest::x509::check_node_authority;
    let keys = SeededKeySource::new(Seed::from_u64(8));
    let signer = wire::KeySource::generate(&keys, wire::KeyAlg::EcP256).expect("key");
    let mut rng = common::rng(8);
    let ca =
        X509Ca::create(signer, &td(TD), 2, t0(), secs(86_400), secs(10), &mut rng).expect("create");
    let own = ca.authority().clone();
    assert_eq!(check_node_authority(&own, &td(TD), 2), Ok(()));
    // Published by another node, or for another trust domain.
    assert!(check_node_authority(&own, &td(TD), 3).is_err());
    assert!(check_node_authority(&own, &td("other.org"), 2).is_err());
    // Renamed, or with another key or expiry than its certificate's.
    let mut renamed = own.clone();
    renamed.id = "x509-n2-ffffffffffffffff".into();
    assert!(check_node_authority(&renamed, &td(TD), 2).is_err());
    let mut later = own.clone();
    later.not_after = later.not_after.saturating_add(secs(1));
    assert!(check_node_authority(&later, &td(TD), 2).is_err());
    let (_, other) = rcgen_ca(TD);
    let mut swapped = own.clone();
    if let AuthorityKey::X509(x) = &mut swapped.key {
        x.key = other.key.clone();
    }
    assert!(check_node_authority(&swapped, &td(TD), 2).is_err());
    // A CA made elsewhere (rcgen: no serialNumber in its Subject), under our node's name.
    let mut foreign_ca = own.clone();
    foreign_ca.key = AuthorityKey::X509(other);
    let err = check_node_authority(&foreign_ca, &td(TD), 2).expect_err("refused");
    assert!(!err.is_empty());
}
