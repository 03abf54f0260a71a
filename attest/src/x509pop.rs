//! x509pop node attestation: an agent proves possession of the private key of an X.509
//! certificate that chains to a CA the servers trust for this purpose (like SPIRE's x509pop).
//!
//! **No challenge round trip: channel binding.** The agent signs
//! [`message`]`(exporter, public_key_der)` = `"sigil x509pop v1\0" || exporter ||
//! SHA-256(public_key_der)`, where `exporter` is [`EXPORTER_BYTES`] of TLS keying material
//! exported (RFC 5705 / RFC 8446 §7.5) from the very connection the request travels on, with
//! label [`EXPORTER_LABEL`] and an empty context. Both ends compute the same value; every
//! connection has a different one, so a proof relayed to or replayed on another connection
//! fails. The hash of `public_key_der` binds the proof to the key the agent SVID is issued for.
//!
//! [`verify`] checks, at `now`: the leaf chains through the given intermediates (each used at
//! most once) to one of the trusted CAs, every signature valid; every certificate of the path is
//! inside its validity window; intermediates and the CA are CAs (basicConstraints cA, keyCertSign
//! when keyUsage is present, path length constraints, no nameConstraints — they are not enforced
//! here, so a CA that carries them is refused rather than silently widened); no certificate of
//! the path has a critical extension we do not understand; the leaf is not a CA and has
//! digitalSignature when it has keyUsage; the signature verifies with the leaf key (ECDSA P-256
//! with SHA-256 or P-384 with SHA-384, ASN.1; Ed25519; RSA PKCS#1 v1.5 SHA-256, 2048–8192 bits).
//! The chain walk and the certificate checks are the ones X.509-SVID validation uses
//! ([`crate::x509`]).
//!
//! The result is the leaf's fingerprint (lowercase hex SHA-256 of its DER — the agent ID is
//! `spiffe://<td>/sigil/agent/x509pop/<fingerprint>`) and selectors of kind `x509pop`:
//! `subject:cn:<cn>` per Subject common name, `ca:fingerprint:<sha256 hex>` for each intermediate
//! of the path and the trusted CA it ends at, `san:dns:<name>` per DNS SAN and `san:uri:<uri>`
//! per URI SAN (values a [`Selector`] cannot hold, e.g. with control characters, are left out).
//!
//! [`X509PopKey`] is the agent's side: it loads the private key (PKCS#8, SEC1 P-256, PKCS#1 RSA)
//! and signs the message. The key is never printed: `Debug` shows only its algorithm.
//!
//! Pure: no IO and no clock (time is an argument); signing uses ring's CSPRNG like
//! [`crate::keys::RingSigner`].

use std::collections::BTreeSet;
use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{
    self as sig, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, UnparsedPublicKey,
    VerificationAlgorithm, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
};
use wire::api::{X509POP_CERT_BYTES_MAX, X509POP_CHAIN_CERTS_MAX, X509POP_SIGNATURE_BYTES_MAX};
use wire::entry::SELECTORS_PER_ENTRY_MAX;
use wire::{Selector, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::sha256_hex;
use crate::x509::{chain_path, check_critical_extensions, check_validity, parse_cert, X509Reject};

/// The label of the TLS exporter both ends use.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sigil-x509pop";
/// Bytes of keying material exported from the connection.
pub const EXPORTER_BYTES: usize = 32;
/// The start of every signed message (domain separation and version).
pub const MESSAGE_PREFIX: &[u8] = b"sigil x509pop v1\0";
/// The selector kind of x509pop facts.
pub const SELECTOR_KIND: &str = "x509pop";

/// Why an x509pop proof (or a key or CA certificate for one) was refused. Never contains key
/// material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509PopError {
    /// No trusted CA was given.
    #[error("no CA is trusted for x509pop")]
    NoTrustedCa,
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// More than [`X509POP_CHAIN_CERTS_MAX`] certificates.
    #[error("the certificate chain has more than {X509POP_CHAIN_CERTS_MAX} certificates")]
    ChainTooLong,
    /// A certificate over [`X509POP_CERT_BYTES_MAX`].
    #[error("a certificate is larger than {X509POP_CERT_BYTES_MAX} bytes")]
    CertTooLarge,
    /// Certificate `n` of the chain (0 = the leaf) is not one DER X.509 certificate.
    #[error("certificate {0} of the chain (0 = the leaf) is malformed")]
    Malformed(usize),
    /// The signature is empty or over [`X509POP_SIGNATURE_BYTES_MAX`].
    #[error("the signature must be 1 to {X509POP_SIGNATURE_BYTES_MAX} bytes")]
    SignatureSize,
    /// The leaf is a CA certificate.
    #[error("the leaf certificate is a CA certificate (cA=true): present the agent's own certificate, first in the file")]
    LeafIsCa,
    /// The leaf has keyUsage without digitalSignature.
    #[error("the leaf certificate's keyUsage lacks digitalSignature")]
    LeafKeyUsage,
    /// The leaf has a critical extension we do not process.
    #[error("the leaf certificate has a critical extension this server does not understand")]
    UnknownCriticalExtension,
    /// The leaf is not valid yet.
    #[error("the leaf certificate is not valid yet (check its NotBefore and the clocks)")]
    NotYetValid,
    /// The leaf has expired.
    #[error("the leaf certificate has expired")]
    Expired,
    /// No path of valid signatures to a trusted CA through usable intermediates.
    #[error("the certificate does not chain to a CA this server trusts for x509pop (its CA is not in the server's ca_bundle, or an intermediate is missing, expired or not a CA)")]
    UntrustedChain,
    /// The leaf's key type cannot be used.
    #[error("the leaf's public key is not ECDSA P-256/P-384, Ed25519 or RSA of 2048 to 8192 bits")]
    UnsupportedKey,
    /// The signature does not verify.
    #[error(
        "the proof-of-possession signature does not verify with the leaf certificate's public key"
    )]
    BadSignature,
    /// The certificate would yield more selectors than an agent may have.
    #[error(
        "the certificate yields {0} selectors; an agent may have at most {SELECTORS_PER_ENTRY_MAX}"
    )]
    TooManySelectors(usize),
    /// A certificate offered as a trusted CA is not usable as one.
    #[error("not usable as an x509pop CA: {0}")]
    NotCa(&'static str),
    /// PEM text without any certificate.
    #[error("no CERTIFICATE block in the PEM text")]
    NoCertificate,
    /// PEM text that does not decode.
    #[error("malformed PEM text")]
    Pem,
    /// A private key could not be loaded or used (the text says why, never what).
    #[error("{0}")]
    Key(&'static str),
}

/// What a verified proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509PopIdentity {
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub fingerprint: String,
    /// The `x509pop` selectors, sorted, without duplicates.
    pub selectors: Vec<Selector>,
}

/// The message an agent signs on a connection whose exported keying material is `exporter`,
/// for an agent SVID on `public_key_der`.
pub fn message(exporter: &[u8; EXPORTER_BYTES], public_key_der: &[u8]) -> Vec<u8> {
    let key_hash = ring::digest::digest(&ring::digest::SHA256, public_key_der);
    let mut m = Vec::with_capacity(MESSAGE_PREFIX.len() + EXPORTER_BYTES + 32);
    m.extend_from_slice(MESSAGE_PREFIX);
    m.extend_from_slice(exporter);
    m.extend_from_slice(key_hash.as_ref());
    m
}

/// The lowercase hex SHA-256 of a certificate's DER (the agent ID's last segment).
pub fn fingerprint(cert_der: &[u8]) -> String {
    sha256_hex(cert_der)
}

/// Whether `cert`, with `below` intermediates between it and the leaf, may sign for x509pop:
/// a CA (cA, keyCertSign if keyUsage is present, path length respected, no nameConstraints,
/// every critical extension understood).
pub(crate) fn ca_rules(cert: &X509Certificate<'_>, below: usize) -> Result<(), &'static str> {
    let bc = cert
        .basic_constraints()
        .map_err(|_| "malformed basicConstraints")?
        .ok_or("no basicConstraints (cA=true is required)")?;
    if !bc.value.ca {
        return Err("basicConstraints cA is false");
    }
    if let Some(len) = bc.value.path_len_constraint {
        if usize::try_from(len).is_ok_and(|len| below > len) {
            return Err("its pathLenConstraint is exceeded");
        }
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => return Err("keyUsage lacks keyCertSign"),
        Ok(_) => {}
        Err(_) => return Err("malformed keyUsage"),
    }
    match cert.name_constraints() {
        Ok(None) => {}
        Ok(Some(_)) => return Err("it has nameConstraints, which x509pop does not enforce"),
        Err(_) => return Err("malformed nameConstraints"),
    }
    check_critical_extensions(cert).map_err(|_| "an unknown critical extension")?;
    Ok(())
}

/// Checks that `der` can serve as a trusted x509pop CA (structure only: the validity window is
/// checked per proof). For loading a server's `ca_bundle`.
pub fn check_ca(der: &[u8]) -> Result<(), X509PopError> {
    let cert = parse_cert(der).map_err(|e| match e {
        X509Reject::TooLarge => X509PopError::CertTooLarge,
        _ => X509PopError::NotCa("not a DER X.509 certificate"),
    })?;
    ca_rules(&cert, 0).map_err(X509PopError::NotCa)
}

/// Whether a CA certificate has expired at `now` (for warnings when loading a `ca_bundle`).
pub fn ca_expired(der: &[u8], now: UnixTime) -> bool {
    parse_cert(der).is_ok_and(|c| check_validity(&c, now).is_err())
}

/// The certificates (DER, in order) of every `CERTIFICATE` block of PEM `text`; other blocks
/// are skipped.
pub fn certificates_from_pem(text: &[u8]) -> Result<Vec<Vec<u8>>, X509PopError> {
    let mut certs = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(text) {
        let block = block.map_err(|_| X509PopError::Pem)?;
        if block.label == "CERTIFICATE" {
            certs.push(block.contents);
        }
    }
    if certs.is_empty() {
        return Err(X509PopError::NoCertificate);
    }
    Ok(certs)
}

/// The ring algorithm that checks a proof signed by the key `spki`.
fn pop_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Option<&'static dyn VerificationAlgorithm> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p).ok())?;
        return match () {
            _ if curve == OID_EC_P256 => Some(&sig::ECDSA_P256_SHA256_ASN1),
            _ if curve == OID_NIST_EC_P384 => Some(&sig::ECDSA_P384_SHA384_ASN1),
            _ => None,
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Some(&sig::ED25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return Some(&sig::RSA_PKCS1_2048_8192_SHA256);
    }
    None
}

/// Whether `signature` over `message` verifies with the public key of `cert`.
fn signature_ok(
    cert: &X509Certificate<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), X509PopError> {
    let spki = cert.public_key();
    let alg = pop_algorithm(spki).ok_or(X509PopError::UnsupportedKey)?;
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(message, signature)
        .map_err(|_| X509PopError::BadSignature)
}

/// Verifies an x509pop proof: `chain` (leaf first, then intermediates in any order) leads to one
/// of `trusted_cas` at `now`, and `signature` is the leaf key's signature over `message` (which
/// the caller builds with [`message`] from its own view of the connection). Returns the leaf's
/// fingerprint and selectors.
pub fn verify<C: AsRef<[u8]>, R: AsRef<[u8]>>(
    chain: &[C],
    trusted_cas: &[R],
    now: UnixTime,
    message: &[u8],
    signature: &[u8],
) -> Result<X509PopIdentity, X509PopError> {
    if trusted_cas.is_empty() {
        return Err(X509PopError::NoTrustedCa);
    }
    let (leaf_der, rest) = chain.split_first().ok_or(X509PopError::EmptyChain)?;
    if chain.len() > X509POP_CHAIN_CERTS_MAX {
        return Err(X509PopError::ChainTooLong);
    }
    if chain
        .iter()
        .any(|c| c.as_ref().len() > X509POP_CERT_BYTES_MAX)
    {
        return Err(X509PopError::CertTooLarge);
    }
    if signature.is_empty() || signature.len() > X509POP_SIGNATURE_BYTES_MAX {
        return Err(X509PopError::SignatureSize);
    }
    let leaf_der = leaf_der.as_ref();
    let leaf = parse_cert(leaf_der).map_err(|_| X509PopError::Malformed(0))?;
    let intermediates = rest
        .iter()
        .enumerate()
        .map(|(i, d)| parse_cert(d.as_ref()).map_err(|_| X509PopError::Malformed(i + 1)))
        .collect::<Result<Vec<_>, _>>()?;

    // The leaf.
    let bc = leaf
        .basic_constraints()
        .map_err(|_| X509PopError::Malformed(0))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(X509PopError::LeafIsCa);
    }
    match leaf.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => return Err(X509PopError::LeafKeyUsage),
        Ok(_) => {}
        Err(_) => return Err(X509PopError::Malformed(0)),
    }
    check_critical_extensions(&leaf).map_err(|e| match e {
        X509Reject::UnknownCriticalExtension => X509PopError::UnknownCriticalExtension,
        _ => X509PopError::Malformed(0),
    })?;
    check_validity(&leaf, now).map_err(|e| match e {
        X509Reject::NotYetValid => X509PopError::NotYetValid,
        _ => X509PopError::Expired,
    })?;

    // The path to a trusted CA.
    let (root_ders, roots): (Vec<&[u8]>, Vec<X509Certificate<'_>>) = trusted_cas
        .iter()
        .filter_map(|d| parse_cert(d.as_ref()).ok().map(|c| (d.as_ref(), c)))
        .unzip();
    let usable = |cert: &X509Certificate<'_>, below: usize| {
        ca_rules(cert, below).is_ok() && check_validity(cert, now).is_ok()
    };
    let (path, root) = chain_path(&leaf, &intermediates, &roots, usable, usable)
        .ok_or(X509PopError::UntrustedChain)?;

    // The proof.
    signature_ok(&leaf, message, signature)?;

    // Facts.
    let mut values = BTreeSet::new();
    for cn in leaf.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            values.insert(format!("subject:cn:{cn}"));
        }
    }
    for i in &path {
        values.insert(format!("ca:fingerprint:{}", sha256_hex(rest[*i].as_ref())));
    }
    values.insert(format!("ca:fingerprint:{}", sha256_hex(root_ders[root])));
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    values.insert(format!("san:dns:{d}"));
                }
                GeneralName::URI(u) => {
                    values.insert(format!("san:uri:{u}"));
                }
                _ => {}
            }
        }
    }
    let selectors: BTreeSet<Selector> = values
        .iter()
        .filter_map(|v| Selector::new(SELECTOR_KIND, v).ok())
        .collect();
    if selectors.len() > SELECTORS_PER_ENTRY_MAX {
        return Err(X509PopError::TooManySelectors(selectors.len()));
    }
    Ok(X509PopIdentity {
        fingerprint: fingerprint(leaf_der),
        selectors: selectors.into_iter().collect(),
    })
}

enum PopKeyPair {
    EcP256(EcdsaKeyPair),
    EcP384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// The agent's x509pop private key (ring holds it; nothing here can print or serialize it).
pub struct X509PopKey {
    pair: PopKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for X509PopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X509PopKey({}, <redacted>)", self.algorithm())
    }
}

impl X509PopKey {
    /// Loads a PKCS#8 private key: ECDSA P-256 or P-384, Ed25519, or RSA.
    pub fn from_pkcs8(der: &[u8]) -> Result<X509PopKey, X509PopError> {
        let rng = SystemRandom::new();
        let pair = if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
        {
            PopKeyPair::EcP256(k)
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, der, &rng) {
            PopKeyPair::EcP384(k)
        } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            PopKeyPair::Ed25519(k)
        } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            PopKeyPair::Rsa(k)
        } else {
            return Err(X509PopError::Key(
                "not a PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA (2048 to 8192 bits) private key",
            ));
        };
        Ok(X509PopKey { pair, rng })
    }

    /// Loads a SEC1 `EC PRIVATE KEY` (P-256 only).
    pub fn from_sec1(der: &[u8]) -> Result<X509PopKey, X509PopError> {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::from_sec1_der(der)
            .map_err(|_| X509PopError::Key("not a SEC1 P-256 private key (EC PRIVATE KEY)"))?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|_| X509PopError::Key("cannot re-encode the EC private key"))?;
        X509PopKey::from_pkcs8(pkcs8.as_bytes())
    }

    /// Loads a PKCS#1 `RSA PRIVATE KEY`.
    pub fn from_pkcs1(der: &[u8]) -> Result<X509PopKey, X509PopError> {
        let pair = RsaKeyPair::from_der(der)
            .map_err(|_| X509PopError::Key("not a PKCS#1 RSA private key (2048 to 8192 bits)"))?;
        Ok(X509PopKey {
            pair: PopKeyPair::Rsa(pair),
            rng: SystemRandom::new(),
        })
    }

    /// The key's algorithm, for messages.
    pub fn algorithm(&self) -> &'static str {
        match self.pair {
            PopKeyPair::EcP256(_) => "ECDSA P-256",
            PopKeyPair::EcP384(_) => "ECDSA P-384",
            PopKeyPair::Ed25519(_) => "Ed25519",
            PopKeyPair::Rsa(_) => "RSA",
        }
    }

    /// Signs `message` the way [`verify`] checks it for this key type.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, X509PopError> {
        let failed = || X509PopError::Key("signing with the x509pop key failed");
        match &self.pair {
            PopKeyPair::EcP256(k) | PopKeyPair::EcP384(k) => k
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed()),
            PopKeyPair::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            PopKeyPair::Rsa(k) => {
                let mut out = vec![0u8; k.public().modulus_len()];
                k.sign(&sig::RSA_PKCS1_SHA256, &self.rng, message, &mut out)
                    .map_err(|_| failed())?;
                Ok(out)
            }
        }
    }

    /// Whether this is the private key of the certificate `cert_der` (a signature by this key
    /// verifies with the certificate's public key).
    pub fn matches(&self, cert_der: &[u8]) -> Result<(), X509PopError> {
        let cert = parse_cert(cert_der).map_err(|_| X509PopError::Malformed(0))?;
        let probe = b"sigil x509pop key check";
        let signature = self.sign(probe)?;
        signature_ok(&cert, probe, &signature).map_err(|e| match e {
            X509PopError::BadSignature => {
                X509PopError::Key("the private key does not belong to the first certificate")
            }
            other => other,
        })
    }
}

/// Signs an x509pop `message` with `key` (the agent's side of [`verify`]).
pub fn sign(key: &X509PopKey, message: &[u8]) -> Result<Vec<u8>, X509PopError> {
    key.sign(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
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
}
