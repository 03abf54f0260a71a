//! Properties of attest's decoders that face agents, workloads and files — the same decoders the
//! fuzz targets in `chaos/fuzz` exercise (`tpm`, `x509pop`, `jwt`, `x509_svid`), run here in
//! `cargo test` so CI keeps covering them: arbitrary and mutated-valid input never panics, and
//! never verifies as something it is not. (`no_panic.rs` covers single mutated SVIDs.)

mod common;

use attest::tpm::{
    alg, attr, verify_quote, AkPublic, EkPolicy, EkPublic, Evidence, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
};
use attest::x509::validate_x509_svid;
use attest::{jwt::validate_jwt_svid, x509pop, X509SvidRequest};
use common::{secs, t0, Node};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use wire::SpiffeId;

const EXTRA: [u8; 32] = [0x5a; 32];
const BINDING: [u8; attest::tpm::BINDING_BYTES] = [0x42; attest::tpm::BINDING_BYTES];

fn key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 32]).expect("fixed scalar")
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).expect("short").to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A marshalled ECC P-256 `TPMT_PUBLIC`.
fn ecc_area(key: &SigningKey, attributes: u32, policy: &[u8], fields: &[u16]) -> Vec<u8> {
    let point = key.verifying_key().as_affine().to_sec1_point(false);
    let point = point.as_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&alg::ECC.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut out, policy);
    for f in fields {
        out.extend_from_slice(&f.to_be_bytes());
    }
    tpm2b(&mut out, &point[1..33]);
    tpm2b(&mut out, &point[33..65]);
    out
}

fn ek_area() -> Vec<u8> {
    let attrs = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;
    let fields = [
        alg::AES,
        128,
        alg::CFB,
        alg::NULL,
        alg::NIST_P256,
        alg::NULL,
    ];
    ecc_area(&key(0x41), attrs, &[0x83; 32], &fields)
}

fn ak_area() -> Vec<u8> {
    let attrs = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::RESTRICTED
        | attr::SIGN;
    let fields = [
        alg::NULL,
        alg::ECDSA,
        alg::SHA256,
        alg::NIST_P256,
        alg::NULL,
    ];
    ecc_area(&key(0x42), attrs, &[], &fields)
}

fn pcrs() -> Vec<(u8, Vec<u8>)> {
    vec![(0, vec![0xa5; 32]), (7, vec![0xa2; 32])]
}

/// A `TPMS_ATTEST` quote of [`pcrs`] carrying [`EXTRA`].
fn quote() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
    out.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
    tpm2b(&mut out, &[0x11; 34]);
    tpm2b(&mut out, &EXTRA);
    out.extend_from_slice(&[0; 8 + 4 + 4]);
    out.push(1);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.extend_from_slice(&[3, 0b1000_0001, 0, 0]);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (_, v) in pcrs() {
        ctx.update(&v);
    }
    tpm2b(&mut out, ctx.finish().as_ref());
    out
}

/// A `TPMT_SIGNATURE` of `quote` by the AK.
fn sign_quote(quote: &[u8]) -> Vec<u8> {
    let sig: Signature = key(0x42).sign(quote);
    let bytes = sig.to_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&alg::ECDSA.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    tpm2b(&mut out, &bytes[..32]);
    tpm2b(&mut out, &bytes[32..]);
    out
}

fn ek_policy() -> EkPolicy {
    let ek = EkPublic::parse(&ek_area()).expect("ek");
    EkPolicy {
        cas: vec![pop().0],
        ek_hashes: [ek.hash()].into_iter().collect(),
    }
}

/// An x509pop CA, a leaf it issued, and the leaf key's signature over [`pop_message`].
fn pop() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let rc = |k: &SigningKey| {
        use p256::pkcs8::EncodePrivateKey as _;
        KeyPair::try_from(k.to_pkcs8_der().expect("pkcs8").as_bytes()).expect("rcgen key")
    };
    let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).expect("time");
    let ca_key = rc(&key(0x31));
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "Prop CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ca.not_before = at(1_690_000_000);
    ca.not_after = at(1_800_000_000);
    let ca_der = ca.self_signed(&ca_key).expect("ca").der().to_vec();
    let leaf_signing = key(0x32);
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "node1");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = at(1_690_000_000);
    leaf.not_after = at(1_800_000_000);
    let leaf_der = leaf
        .signed_by(&rc(&leaf_signing), &Issuer::from_params(&ca, &ca_key))
        .expect("leaf")
        .der()
        .to_vec();
    let sig: Signature = leaf_signing.sign(&pop_message());
    (ca_der, leaf_der, sig.to_der().as_bytes().to_vec())
}

fn pop_message() -> Vec<u8> {
    x509pop::message(&[7; 32], b"prop svid key")
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
}

fn mutate(
    mut data: Vec<u8>,
    edits: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    if !data.is_empty() {
        for (i, b) in edits {
            let i = i.index(data.len());
            data[i] = *b;
        }
    }
    if let Some(c) = cut {
        data.truncate(c.index(data.len() + 1));
    }
    data
}

#[test]
fn fixtures_are_valid() {
    let ak = AkPublic::parse(&ak_area()).expect("ak");
    let q = quote();
    verify_quote(&ak, &q, &sign_quote(&q), &EXTRA, &pcrs()).expect("quote");
    let (ca, leaf, sig) = pop();
    x509pop::verify(&[&leaf], &[&ca], t0(), &pop_message(), &sig).expect("x509pop");
    assert!(ek_policy()
        .check(&EkPublic::parse(&ek_area()).expect("ek"), None, t0())
        .is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn public_areas_never_panic(
        raw in bytes(400),
        which in any::<bool>(),
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let valid = if which { ek_area() } else { ak_area() };
        let mutated = mutate(valid.clone(), &edits, cut);
        for area in [&raw, &mutated] {
            if let Ok(ek) = EkPublic::parse(area) {
                prop_assert!(!ek.spki_der().is_empty());
                let _ = ek_policy().check(&ek, None, t0());
                let _ = attest::tpm::make_credential(
                    &ek,
                    &[0; 34],
                    &[1; 32],
                    &mut ChaCha20Rng::seed_from_u64(1),
                );
            }
            if let Ok(ak) = AkPublic::parse(area) {
                prop_assert_eq!(ak.name().len(), 34);
            }
        }
    }

    #[test]
    fn quotes_never_panic_or_verify_when_changed(
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        resign in any::<bool>(),
        sig_raw in bytes(80),
    ) {
        let ak = AkPublic::parse(&ak_area()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let valid = quote();
        let q = mutate(valid.clone(), &edits, cut);
        // Signed anew, the changed body is parsed past the signature check.
        let sig = if resign { sign_quote(&q) } else { sign_quote(&valid) };
        // Fields the server ignores (qualifiedSigner, clock info) may change under a new
        // signature; under the original one nothing may.
        if verify_quote(&ak, &q, &sig, &EXTRA, &pcrs()).is_ok() && !resign {
            prop_assert_eq!(&q, &valid);
        }
        let _ = verify_quote(&ak, &valid, &sig_raw, &EXTRA, &pcrs());
        let sig = mutate(sign_quote(&valid), &edits, cut);
        let _ = verify_quote(&ak, &valid, &sig, &EXTRA, &pcrs());
    }

    #[test]
    fn challenge_evidence_never_panics(
        fields in proptest::collection::vec(bytes(80), 9),
        pcr_values in proptest::collection::vec((any::<u8>(), bytes(40)), 0..4),
        valid_areas in any::<bool>(),
    ) {
        let challenger = attest::tpm::Challenger::new(&mut ChaCha20Rng::seed_from_u64(2));
        let (ek, ak) = if valid_areas {
            (ek_area(), ak_area())
        } else {
            (fields[0].clone(), fields[2].clone())
        };
        let evidence = Evidence {
            ek_public: &ek,
            ek_cert: Some(fields[1].as_slice()).filter(|c| !c.is_empty()),
            ak_public: &ak,
            token: &fields[3],
            activated_secret: &fields[4],
            quote: &fields[5],
            signature: &fields[6],
            pcrs: &pcr_values,
            public_key_der: &fields[8],
        };
        prop_assert!(challenger.finish(&ek_policy(), &evidence, &BINDING, t0()).is_err());
    }

    #[test]
    fn ek_certificates_never_panic(
        raw in bytes(300),
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let ek = EkPublic::parse(&ek_area()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let policy = ek_policy();
        let _ = policy.check(&ek, Some(&raw), t0());
        let _ = policy.check(&ek, Some(&mutate(pop().1, &edits, cut)), t0());
    }

    #[test]
    fn x509pop_proofs_never_panic_or_verify_when_changed(
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        which in 0u8..3,
        extra in proptest::collection::vec(bytes(120), 0..3),
    ) {
        let (ca, leaf, sig) = pop();
        let (mut leaf_m, mut sig_m) = (leaf.clone(), sig.clone());
        match which {
            0 => leaf_m = mutate(leaf_m, &edits, cut),
            1 => sig_m = mutate(sig_m, &edits, cut),
            _ => {}
        }
        let mut chain = vec![leaf_m.clone()];
        chain.extend(extra);
        if x509pop::verify(&chain, &[&ca], t0(), &pop_message(), &sig_m).is_ok() {
            prop_assert_eq!(leaf_m, leaf);
        }
        let _ = x509pop::check_ca(&mutate(ca.clone(), &edits, cut));
    }

    #[test]
    fn pem_bundles_never_panic(
        body in "[A-Za-z0-9+/=\\n]{0,200}",
        label in "(CERTIFICATE|PRIVATE KEY|X)",
        raw in bytes(200),
        cut in any::<prop::sample::Index>(),
    ) {
        let pem = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
        for text in [pem.as_bytes(), &raw] {
            if let Ok(certs) = x509pop::certificates_from_pem(text) {
                for c in certs {
                    let _ = x509pop::check_ca(&c);
                }
            }
        }
        let (ca, _, _) = pop();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ca);
        let full = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let truncated = &full.as_bytes()[..cut.index(full.len() + 1)];
        if let Ok(certs) = x509pop::certificates_from_pem(truncated) {
            for c in certs {
                let _ = x509pop::check_ca(&c);
            }
        }
    }

    #[test]
    fn svid_chains_never_panic(
        parts in proptest::collection::vec(bytes(200), 0..4),
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut node = Node::bootstrapped("example.org", 1, 1, t0());
        let web: SpiffeId = "spiffe://example.org/web".parse().map_err(|_| TestCaseError::fail("id"))?;
        let spki = wire::KeySource::generate(
            &attest::keys::SeededKeySource::new(wire::Seed::from_u64(4)),
            wire::KeyAlg::EcP256,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .public_key_der()
        .to_vec();
        let ca = node.keyring.active_x509(t0()).ok_or_else(|| TestCaseError::fail("ca"))?;
        let svid = ca
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
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .cert_der;
        let ca_der = ca.cert_der().to_vec();
        let bundles = node.bundle_map();
        // The leaf, then arbitrary or mutated intermediates.
        let mut chain = vec![svid.clone()];
        chain.extend(parts.iter().cloned());
        chain.push(mutate(ca_der, &edits, cut));
        if let Ok(id) = validate_x509_svid(&chain, &bundles, t0()) {
            prop_assert_eq!(id, web.clone());
        }
        // Arbitrary leaves.
        let _ = validate_x509_svid(&parts, &bundles, t0());
    }

    #[test]
    fn jwt_shaped_tokens_never_panic(
        header in "\\{(\"(alg|kid|typ|crit|x)\":(\"[A-Za-z0-9-]{0,8}\"|[0-9]{1,3}|null|\\[\\]),?){0,4}\\}",
        claims in "\\{(\"(sub|aud|exp|nbf|iat)\":(\"[a-z:/.0-9]{0,30}\"|-?[0-9.e]{1,12}|\\[\"db\"\\]|null),?){0,5}\\}",
        sig in bytes(70),
        raw in "\\PC{0,80}",
    ) {
        let node = Node::bootstrapped("example.org", 1, 1, t0());
        let bundles = node.bundle_map();
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()), b64(&sig));
        prop_assert!(validate_jwt_svid(&token, &bundles, "db", t0()).is_err());
        prop_assert!(validate_jwt_svid(&raw, &bundles, "db", t0()).is_err());
    }
}
