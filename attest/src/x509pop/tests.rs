use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};

const NOW: u64 = 1_750_000_000;
const DAY: u64 = 86_400;

fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

fn at(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).expect("i64")).expect("time")
}

/// A certificate with its key, DER.
struct Made {
    der: Vec<u8>,
    key: KeyPair,
    params: CertificateParams,
}

impl Made {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn pop_key(&self) -> X509PopKey {
        X509PopKey::from_pkcs8(&self.key.serialize_der()).expect("pop key")
    }
}

fn ca_params(name: &str, from: u64, to: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(from);
    p.not_after = at(to);
    p
}

fn leaf_params(cn: &str, from: u64, to: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.subject_alt_names = vec![
        SanType::DnsName("node1.example.org".try_into().expect("dns")),
        SanType::URI("urn:host:node1".try_into().expect("uri")),
    ];
    p.not_before = at(from);
    p.not_after = at(to);
    p
}

fn self_signed(params: CertificateParams, alg: &'static SignatureAlgorithm) -> Made {
    let key = KeyPair::generate_for(alg).expect("key");
    let der = params
        .self_signed(&key)
        .expect("self-signed")
        .der()
        .to_vec();
    Made { der, key, params }
}

fn signed(params: CertificateParams, alg: &'static SignatureAlgorithm, by: &Made) -> Made {
    let key = KeyPair::generate_for(alg).expect("key");
    let der = params
        .signed_by(&key, &by.issuer())
        .expect("signed")
        .der()
        .to_vec();
    Made { der, key, params }
}

fn ca(alg: &'static SignatureAlgorithm) -> Made {
    self_signed(ca_params("Agent CA", NOW - DAY, NOW + 365 * DAY), alg)
}

fn leaf(by: &Made, alg: &'static SignatureAlgorithm) -> Made {
    signed(leaf_params("node1", NOW - DAY, NOW + 30 * DAY), alg, by)
}

const SPKI: &[u8] = &[0x30, 0x59, 1, 2, 3];

fn exporter(n: u8) -> [u8; EXPORTER_BYTES] {
    [n; EXPORTER_BYTES]
}

/// A proof by `leaf` for exporter 1 and SPKI.
fn proof(leaf: &Made) -> (Vec<u8>, Vec<u8>) {
    let msg = message(&exporter(1), SPKI);
    let signature = sign(&leaf.pop_key(), &msg).expect("sign");
    (msg, signature)
}

fn check(
    chain: &[&Made],
    cas: &[&Made],
    msg: &[u8],
    signature: &[u8],
) -> Result<X509PopIdentity, X509PopError> {
    let chain: Vec<&[u8]> = chain.iter().map(|m| m.der.as_slice()).collect();
    let cas: Vec<Vec<u8>> = cas.iter().map(|m| m.der.clone()).collect();
    verify(&chain, &cas, now(), msg, signature)
}

fn values(id: &X509PopIdentity) -> Vec<String> {
    id.selectors.iter().map(ToString::to_string).collect()
}

#[test]
fn message_layout() {
    let m = message(&exporter(9), SPKI);
    assert!(m.starts_with(MESSAGE_PREFIX));
    assert_eq!(
        &m[MESSAGE_PREFIX.len()..MESSAGE_PREFIX.len() + 32],
        &[9u8; 32]
    );
    assert_eq!(
        crate::hex(&m[MESSAGE_PREFIX.len() + 32..]),
        sha256_hex(SPKI)
    );
    assert_ne!(m, message(&exporter(9), &[0x30, 0x59, 1, 2, 4]));
}

#[test]
fn good_chains_with_every_key_type() {
    for (ca_alg, leaf_alg) in [
        (&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P256_SHA256),
        (&PKCS_ED25519, &PKCS_ED25519),
        (&PKCS_ECDSA_P256_SHA256, &PKCS_ED25519),
        (&PKCS_ED25519, &PKCS_ECDSA_P384_SHA384),
    ] {
        let root = ca(ca_alg);
        let agent = leaf(&root, leaf_alg);
        let (msg, signature) = proof(&agent);
        let id = check(&[&agent], &[&root], &msg, &signature).expect("valid proof");
        assert_eq!(id.fingerprint, sha256_hex(&agent.der));
        assert_eq!(
            values(&id),
            vec![
                format!("x509pop:ca:fingerprint:{}", sha256_hex(&root.der)),
                "x509pop:san:dns:node1.example.org".to_owned(),
                "x509pop:san:uri:urn:host:node1".to_owned(),
                "x509pop:subject:cn:node1".to_owned(),
            ]
        );
    }
}

#[test]
fn through_an_intermediate_among_other_trusted_cas() {
    let other = ca(&PKCS_ECDSA_P256_SHA256);
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let mid = signed(
        ca_params("Agent intermediate", NOW - DAY, NOW + 90 * DAY),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let agent = leaf(&mid, &PKCS_ED25519);
    let (msg, signature) = proof(&agent);
    let id = check(&[&agent, &mid], &[&other, &root], &msg, &signature).expect("valid");
    let v = values(&id);
    assert!(v.contains(&format!("x509pop:ca:fingerprint:{}", sha256_hex(&mid.der))));
    assert!(v.contains(&format!("x509pop:ca:fingerprint:{}", sha256_hex(&root.der))));
    assert!(!v.contains(&format!(
        "x509pop:ca:fingerprint:{}",
        sha256_hex(&other.der)
    )));
    // Without the intermediate there is no path.
    assert_eq!(
        check(&[&agent], &[&root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
    // The intermediate itself is not trusted on its own… unless configured as a CA.
    assert!(check(&[&agent], &[&mid], &msg, &signature).is_ok());
    // An intermediate that is not a CA does not count.
    let mut not_ca = ca_params("Not a CA", NOW - DAY, NOW + 90 * DAY);
    not_ca.is_ca = IsCa::ExplicitNoCa;
    not_ca.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let fake_mid = signed(not_ca, &PKCS_ECDSA_P256_SHA256, &root);
    let agent2 = leaf(&fake_mid, &PKCS_ECDSA_P256_SHA256);
    let (msg2, sig2) = proof(&agent2);
    assert_eq!(
        check(&[&agent2, &fake_mid], &[&root], &msg2, &sig2),
        Err(X509PopError::UntrustedChain)
    );
    // An expired intermediate does not count either.
    let old_mid = signed(
        ca_params("Old intermediate", NOW - 10 * DAY, NOW - DAY),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let agent3 = leaf(&old_mid, &PKCS_ECDSA_P256_SHA256);
    let (msg3, sig3) = proof(&agent3);
    assert_eq!(
        check(&[&agent3, &old_mid], &[&root], &msg3, &sig3),
        Err(X509PopError::UntrustedChain)
    );
}

#[test]
fn path_length_constraints_hold() {
    let mut p = ca_params("Root pathlen 0", NOW - DAY, NOW + 90 * DAY);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let root = self_signed(p, &PKCS_ECDSA_P256_SHA256);
    let mid = signed(
        ca_params("Intermediate", NOW - DAY, NOW + 90 * DAY),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let direct = leaf(&root, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&direct);
    assert!(check(&[&direct], &[&root], &msg, &signature).is_ok());
    let below = leaf(&mid, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&below);
    assert_eq!(
        check(&[&below, &mid], &[&root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
}

#[test]
fn untrusted_ca_and_wrong_signer_are_refused() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let stranger = ca(&PKCS_ECDSA_P256_SHA256);
    let agent = leaf(&stranger, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&agent);
    assert_eq!(
        check(&[&agent], &[&root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
    // Presenting the stranger CA as an intermediate does not help.
    assert_eq!(
        check(&[&agent, &stranger], &[&root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
    // A leaf whose issuer name is the trusted CA's but signed by another key.
    let mut same_name = ca_params("Agent CA", NOW - DAY, NOW + 365 * DAY);
    same_name.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let impostor = self_signed(same_name, &PKCS_ECDSA_P256_SHA256);
    let forged = leaf(&impostor, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&forged);
    assert_eq!(
        check(&[&forged], &[&root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
    assert_eq!(
        check(&[&forged], &[] as &[&Made], &msg, &signature),
        Err(X509PopError::NoTrustedCa)
    );
}

#[test]
fn validity_windows() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let expired = signed(
        leaf_params("old", NOW - 10 * DAY, NOW - 1),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let (msg, signature) = proof(&expired);
    assert_eq!(
        check(&[&expired], &[&root], &msg, &signature),
        Err(X509PopError::Expired)
    );
    let future = signed(
        leaf_params("new", NOW + 60, NOW + DAY),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let (msg, signature) = proof(&future);
    assert_eq!(
        check(&[&future], &[&root], &msg, &signature),
        Err(X509PopError::NotYetValid)
    );
    // An expired trusted CA makes everything under it untrusted.
    let old_root = self_signed(
        ca_params("Old root", NOW - 10 * DAY, NOW - 1),
        &PKCS_ECDSA_P256_SHA256,
    );
    let agent = leaf(&old_root, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&agent);
    assert_eq!(
        check(&[&agent], &[&old_root], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );
    assert!(ca_expired(&old_root.der, now()));
    assert!(!ca_expired(&root.der, now()));
}

#[test]
fn a_ca_is_not_a_leaf() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let mid = signed(
        ca_params("Intermediate", NOW - DAY, NOW + 90 * DAY),
        &PKCS_ECDSA_P256_SHA256,
        &root,
    );
    let (msg, signature) = proof(&mid);
    assert_eq!(
        check(&[&mid], &[&root], &msg, &signature),
        Err(X509PopError::LeafIsCa)
    );
    let (msg, signature) = proof(&root);
    assert_eq!(
        check(&[&root], &[&root], &msg, &signature),
        Err(X509PopError::LeafIsCa)
    );
    // keyUsage without digitalSignature.
    let mut p = leaf_params("encipher-only", NOW - DAY, NOW + DAY);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let agent = signed(p, &PKCS_ECDSA_P256_SHA256, &root);
    let (msg, signature) = proof(&agent);
    assert_eq!(
        check(&[&agent], &[&root], &msg, &signature),
        Err(X509PopError::LeafKeyUsage)
    );
    // A critical extension nobody understands.
    let mut p = leaf_params("odd", NOW - DAY, NOW + DAY);
    let mut ext =
        rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    ext.set_criticality(true);
    p.custom_extensions = vec![ext];
    let agent = signed(p, &PKCS_ECDSA_P256_SHA256, &root);
    let (msg, signature) = proof(&agent);
    assert_eq!(
        check(&[&agent], &[&root], &msg, &signature),
        Err(X509PopError::UnknownCriticalExtension)
    );
    // No keyUsage at all is fine.
    let mut p = leaf_params("no-ku", NOW - DAY, NOW + DAY);
    p.key_usages = vec![];
    let agent = signed(p, &PKCS_ECDSA_P256_SHA256, &root);
    let (msg, signature) = proof(&agent);
    assert!(check(&[&agent], &[&root], &msg, &signature).is_ok());
}

#[test]
fn wrong_signatures_are_refused() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_ED25519] {
        let agent = leaf(&root, alg);
        let (msg, signature) = proof(&agent);
        // Signed on another connection (another exporter value): a relayed proof.
        let elsewhere = message(&exporter(2), SPKI);
        assert_eq!(
            check(&[&agent], &[&root], &elsewhere, &signature),
            Err(X509PopError::BadSignature)
        );
        // For another SVID key.
        let other_key = message(&exporter(1), &[0x30, 0x59, 9]);
        assert_eq!(
            check(&[&agent], &[&root], &other_key, &signature),
            Err(X509PopError::BadSignature)
        );
        // Signed by another key.
        let thief = leaf(&root, alg);
        let stolen = sign(&thief.pop_key(), &msg).expect("sign");
        assert_eq!(
            check(&[&agent], &[&root], &msg, &stolen),
            Err(X509PopError::BadSignature)
        );
        let mut flipped = signature.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert_eq!(
            check(&[&agent], &[&root], &msg, &flipped),
            Err(X509PopError::BadSignature)
        );
    }
}

#[test]
fn oversize_and_malformed_inputs() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let agent = leaf(&root, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&agent);
    let cas = vec![root.der.clone()];
    let empty: Vec<Vec<u8>> = vec![];
    assert_eq!(
        verify(&empty, &cas, now(), &msg, &signature),
        Err(X509PopError::EmptyChain)
    );
    let long = vec![agent.der.clone(); X509POP_CHAIN_CERTS_MAX + 1];
    assert_eq!(
        verify(&long, &cas, now(), &msg, &signature),
        Err(X509PopError::ChainTooLong)
    );
    let big = vec![agent.der.clone(), vec![0x30; X509POP_CERT_BYTES_MAX + 1]];
    assert_eq!(
        verify(&big, &cas, now(), &msg, &signature),
        Err(X509PopError::CertTooLarge)
    );
    let chain = vec![agent.der.clone()];
    assert_eq!(
        verify(
            &chain,
            &cas,
            now(),
            &msg,
            &vec![1; X509POP_SIGNATURE_BYTES_MAX + 1]
        ),
        Err(X509PopError::SignatureSize)
    );
    assert_eq!(
        verify(&chain, &cas, now(), &msg, &[]),
        Err(X509PopError::SignatureSize)
    );
    let garbage = vec![vec![0x30, 0x03, 1, 2, 3]];
    assert_eq!(
        verify(&garbage, &cas, now(), &msg, &signature),
        Err(X509PopError::Malformed(0))
    );
    let mut trailing = agent.der.clone();
    trailing.push(0);
    assert_eq!(
        verify(&[trailing], &cas, now(), &msg, &signature),
        Err(X509PopError::Malformed(0))
    );
    let bad_mid = vec![agent.der.clone(), vec![1, 2, 3]];
    assert_eq!(
        verify(&bad_mid, &cas, now(), &msg, &signature),
        Err(X509PopError::Malformed(1))
    );
    // A malformed trusted CA is ignored, not a panic.
    let cas = vec![vec![0u8; 10], root.der.clone()];
    assert!(verify(&chain, &cas, now(), &msg, &signature).is_ok());
}

#[test]
fn too_many_selectors_are_refused() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let mut p = leaf_params("many", NOW - DAY, NOW + DAY);
    p.subject_alt_names = (0..=SELECTORS_PER_ENTRY_MAX)
        .map(|i| SanType::DnsName(format!("h{i}.example.org").try_into().expect("dns")))
        .collect();
    let agent = signed(p, &PKCS_ECDSA_P256_SHA256, &root);
    let (msg, signature) = proof(&agent);
    assert!(matches!(
        check(&[&agent], &[&root], &msg, &signature),
        Err(X509PopError::TooManySelectors(_))
    ));
}

#[test]
fn ca_bundle_checks_and_pem() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    assert_eq!(check_ca(&root.der), Ok(()));
    let agent = leaf(&root, &PKCS_ECDSA_P256_SHA256);
    assert!(matches!(check_ca(&agent.der), Err(X509PopError::NotCa(_))));
    assert!(matches!(check_ca(&[1, 2, 3]), Err(X509PopError::NotCa(_))));
    let mut p = ca_params("No keyCertSign", NOW - DAY, NOW + DAY);
    p.key_usages = vec![KeyUsagePurpose::CrlSign];
    let weak = self_signed(p, &PKCS_ECDSA_P256_SHA256);
    assert!(matches!(check_ca(&weak.der), Err(X509PopError::NotCa(_))));
    // Name constraints are not enforced, so a CA carrying them is refused outright.
    let mut p = ca_params("Constrained", NOW - DAY, NOW + DAY);
    p.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName("example.org".into())],
        excluded_subtrees: vec![],
    });
    let constrained = self_signed(p, &PKCS_ECDSA_P256_SHA256);
    assert!(matches!(
        check_ca(&constrained.der),
        Err(X509PopError::NotCa(_))
    ));
    let under = leaf(&constrained, &PKCS_ECDSA_P256_SHA256);
    let (msg, signature) = proof(&under);
    assert_eq!(
        check(&[&under], &[&constrained], &msg, &signature),
        Err(X509PopError::UntrustedChain)
    );

    let pem = format!(
        "# agent chain\n{}{}",
        pem_block("CERTIFICATE", &agent.der),
        pem_block("CERTIFICATE", &root.der)
    );
    assert_eq!(
        certificates_from_pem(pem.as_bytes()),
        Ok(vec![agent.der.clone(), root.der.clone()])
    );
    assert_eq!(
        certificates_from_pem(b"nothing here"),
        Err(X509PopError::NoCertificate)
    );
    assert_eq!(
        certificates_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
        Err(X509PopError::Pem)
    );
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[test]
fn keys_load_match_and_never_print() {
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let agent = leaf(&root, &PKCS_ECDSA_P256_SHA256);
    let key = agent.pop_key();
    assert_eq!(key.matches(&agent.der), Ok(()));
    let other = leaf(&root, &PKCS_ECDSA_P256_SHA256);
    assert!(matches!(
        other.pop_key().matches(&agent.der),
        Err(X509PopError::Key(_))
    ));
    let shown = format!("{key:?}");
    assert_eq!(shown, "X509PopKey(ECDSA P-256, <redacted>)");
    assert!(X509PopKey::from_pkcs8(&[0x30, 0x00]).is_err());
    assert!(X509PopKey::from_pkcs1(&[0x30, 0x00]).is_err());

    // SEC1 (openssl's "EC PRIVATE KEY") loads to the same key.
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_der(&agent.key.serialize_der()).expect("p256 key");
    let sec1 = secret.to_sec1_der().expect("sec1");
    let from_sec1 = X509PopKey::from_sec1(&sec1).expect("sec1 key");
    assert_eq!(from_sec1.matches(&agent.der), Ok(()));
    assert!(X509PopKey::from_sec1(&[1, 2, 3]).is_err());

    let ed = leaf(&root, &PKCS_ED25519);
    assert_eq!(ed.pop_key().algorithm(), "Ed25519");
    assert_eq!(ed.pop_key().matches(&ed.der), Ok(()));
    let p384 = leaf(&root, &PKCS_ECDSA_P384_SHA384);
    assert_eq!(p384.pop_key().algorithm(), "ECDSA P-384");
}

/// RSA needs a key generator rcgen/ring lack: openssl makes one (skipped without it).
#[test]
fn rsa_keys_with_openssl() {
    use std::process::Command;
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED rsa_keys_with_openssl: `openssl` is not on PATH");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("rsa.key");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&key_path).expect("key file");
    let der = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .next()
        .expect("a block")
        .expect("pem")
        .contents;
    let pem_key = KeyPair::from_pem(&text).expect("rcgen RSA key");
    let root = ca(&PKCS_ECDSA_P256_SHA256);
    let params = leaf_params("rsa-node", NOW - DAY, NOW + DAY);
    let agent_der = params
        .signed_by(&pem_key, &root.issuer())
        .expect("signed")
        .der()
        .to_vec();
    let key = X509PopKey::from_pkcs8(&der).expect("RSA PKCS#8");
    assert_eq!(key.algorithm(), "RSA");
    assert_eq!(key.matches(&agent_der), Ok(()));
    let msg = message(&exporter(1), SPKI);
    let signature = key.sign(&msg).expect("sign");
    let id = verify(
        &[agent_der.as_slice()],
        &[root.der.as_slice()],
        now(),
        &msg,
        &signature,
    )
    .expect("RSA proof");
    assert_eq!(id.fingerprint, sha256_hex(&agent_der));
    assert_eq!(
        verify(
            &[agent_der],
            &[root.der.as_slice()],
            now(),
            &message(&exporter(3), SPKI),
            &signature
        ),
        Err(X509PopError::BadSignature)
    );
}
