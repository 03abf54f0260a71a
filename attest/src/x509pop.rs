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
mod tests;
