//! Key material behind the [`wire::KeySource`] / [`wire::Signer`] seam.
//!
//! [`RingKeySource`] is the production source: P-256 keys from the OS CSPRNG, signing with ring
//! (the hot path; ~5× faster than RustCrypto's p256, research/deps.md §5). The private key lives
//! only inside ring's key pair objects: nothing here can serialize or print it.
//!
//! [`SeededKeySource`] is the simulator's source: P-256 keys drawn from a seeded ChaCha20 stream,
//! signing with the p256 crate's deterministic RFC 6979 nonces, so the same seed gives
//! byte-identical certificates and tokens.

use std::fmt;
use std::sync::Mutex;

use p256::ecdsa::signature::Signer as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use wire::{PublicJwk, Seed};

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use wire::{Error, KeyAlg, KeySource, SigFormat, Signer, WorkloadKey};
use zeroize::Zeroizing;

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, BIT STRING of 66
/// bytes); the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// DER of a P-256 PKCS#8 v1 `PrivateKeyInfo` up to the private scalar (version 0,
/// id-ecPublicKey with prime256v1, then an `ECPrivateKey` of version 1); the 32-byte scalar,
/// [`P256_PKCS8_MIDDLE`] and the 65-byte uncompressed point follow. The layout ring writes and
/// reads.
const P256_PKCS8_PREFIX: [u8; 36] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20,
];

/// Between the scalar and the point: `[1] { BIT STRING of 66 bytes }`.
const P256_PKCS8_MIDDLE: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];

/// The PKCS#8 DER of a P-256 key from its scalar and uncompressed point.
fn p256_pkcs8(scalar: &[u8; 32], point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(Error::Key("not an uncompressed P-256 point"));
    }
    let mut der = Zeroizing::new(Vec::with_capacity(138));
    der.extend_from_slice(&P256_PKCS8_PREFIX);
    der.extend_from_slice(scalar);
    der.extend_from_slice(&P256_PKCS8_MIDDLE);
    der.extend_from_slice(point);
    Ok(der)
}

/// The DER `SubjectPublicKeyInfo` of an uncompressed P-256 point (`0x04 || x || y`).
pub fn p256_spki_der(point: &[u8]) -> Result<Vec<u8>, Error> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(Error::Key("not an uncompressed P-256 point"));
    }
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    Ok(der)
}

/// The uncompressed point (`0x04 || x || y`) of a P-256 `SubjectPublicKeyInfo`, if `spki` is one.
pub fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    match spki.split_at_checked(P256_SPKI_PREFIX.len()) {
        Some((prefix, point))
            if prefix == P256_SPKI_PREFIX && point.len() == 65 && point[0] == 0x04 =>
        {
            Some(point)
        }
        _ => None,
    }
}

/// The JWK of a P-256 `SubjectPublicKeyInfo` (the only key type sigil's authorities use).
pub fn jwk_of_spki(spki: &[u8]) -> Result<PublicJwk, Error> {
    let point = p256_point(spki).ok_or(Error::Key("not a P-256 public key"))?;
    Ok(PublicJwk::Ec {
        crv: "P-256".into(),
        x: point[1..33].to_vec(),
        y: point[33..].to_vec(),
    })
}

/// Production key source: OS entropy, ring signing.
#[derive(Debug)]
pub struct RingKeySource {
    rng: SystemRandom,
}

impl Default for RingKeySource {
    fn default() -> RingKeySource {
        RingKeySource::new()
    }
}

impl RingKeySource {
    /// A source drawing on the OS CSPRNG.
    pub fn new() -> RingKeySource {
        RingKeySource {
            rng: SystemRandom::new(),
        }
    }
}

impl KeySource for RingKeySource {
    fn generate(&self, alg: KeyAlg) -> Result<Box<dyn Signer>, Error> {
        match alg {
            KeyAlg::EcP256 => {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
                        .map_err(|_| Error::Key("P-256 key generation failed"))?;
                Ok(Box::new(RingSigner::from_pkcs8(pkcs8.as_ref())?))
            }
            _ => Err(Error::Key("unsupported key algorithm")),
        }
    }

    fn generate_workload_key(&self, alg: KeyAlg) -> Result<WorkloadKey, Error> {
        match alg {
            KeyAlg::EcP256 => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
                    .map_err(|_| Error::Key("P-256 key generation failed"))?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                let public = RingSigner::from_pkcs8(&pkcs8)?.spki_der;
                Ok(WorkloadKey::new(public, pkcs8))
            }
            _ => Err(Error::Key("unsupported key algorithm")),
        }
    }
}

/// A P-256 private key held by ring.
pub struct RingSigner {
    der_pair: EcdsaKeyPair,
    fixed_pair: EcdsaKeyPair,
    spki_der: Vec<u8>,
    rng: SystemRandom,
}

impl RingSigner {
    /// Loads a PKCS#8 P-256 key (e.g. from the node's sealed key file).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<RingSigner, Error> {
        let rng = SystemRandom::new();
        let der_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
            .map_err(|_| Error::Key("not a PKCS#8 P-256 key"))?;
        let fixed_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| Error::Key("not a PKCS#8 P-256 key"))?;
        let spki_der = p256_spki_der(der_pair.public_key().as_ref())?;
        Ok(RingSigner {
            der_pair,
            fixed_pair,
            spki_der,
            rng,
        })
    }
}

impl fmt::Debug for RingSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let point = self.der_pair.public_key().as_ref();
        let fp: String = point[1..7].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "RingSigner(P-256, public {fp}…)")
    }
}

impl Signer for RingSigner {
    fn alg(&self) -> KeyAlg {
        KeyAlg::EcP256
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign(&self, msg: &[u8], format: SigFormat) -> Result<Vec<u8>, Error> {
        let pair = match format {
            SigFormat::Der => &self.der_pair,
            SigFormat::Fixed => &self.fixed_pair,
        };
        pair.sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Key("signing failed"))
    }
}

/// Deterministic key source for the simulator: keys come from a ChaCha20 stream seeded with a
/// [`Seed`]; the n-th generated key depends only on the seed and n.
pub struct SeededKeySource {
    rng: Mutex<ChaCha20Rng>,
    /// Every private scalar handed out, indexed by its first 8 bytes, so the simulator's secret
    /// checker can ask whether bytes on the wire contain one ([`SeededKeySource::leaked_in`]).
    issued: Mutex<IssuedScalars>,
}

/// The scalars a [`SeededKeySource`] handed out: a bit per possible 2-byte prefix (a cheap
/// first test for every window scanned), then the scalars by their 8-byte prefix.
#[derive(Default)]
struct IssuedScalars {
    prefixes: Vec<u64>,
    by_head: std::collections::BTreeMap<[u8; 8], Vec<[u8; 32]>>,
}

impl IssuedScalars {
    fn insert(&mut self, scalar: [u8; 32]) {
        if self.prefixes.is_empty() {
            self.prefixes = vec![0; 1024];
        }
        let p = usize::from(u16::from_be_bytes([scalar[0], scalar[1]]));
        self.prefixes[p / 64] |= 1 << (p % 64);
        let mut head = [0u8; 8];
        head.copy_from_slice(&scalar[..8]);
        self.by_head.entry(head).or_default().push(scalar);
    }

    fn found_in(&self, bytes: &[u8]) -> bool {
        if self.by_head.is_empty() {
            return false;
        }
        bytes.windows(32).any(|w| {
            let p = usize::from(u16::from_be_bytes([w[0], w[1]]));
            if self.prefixes[p / 64] & (1 << (p % 64)) == 0 {
                return false;
            }
            let mut head = [0u8; 8];
            head.copy_from_slice(&w[..8]);
            self.by_head
                .get(&head)
                .is_some_and(|all| all.iter().any(|s| s[..] == *w))
        })
    }
}

impl fmt::Debug for SeededKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededKeySource")
    }
}

impl SeededKeySource {
    /// A source whose keys derive from `seed`.
    pub fn new(seed: Seed) -> SeededKeySource {
        SeededKeySource {
            rng: Mutex::new(ChaCha20Rng::from_seed(seed.0)),
            issued: Mutex::default(),
        }
    }

    /// Whether `bytes` contain the private scalar of any key this source generated (the
    /// simulator scans every frame and answer with it: private keys must never travel).
    pub fn leaked_in(&self, bytes: &[u8]) -> bool {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .found_in(bytes)
    }
}

impl SeededKeySource {
    /// The next P-256 key of the stream, with its scalar (recorded for [`Self::leaked_in`]).
    fn next_p256(&self) -> Result<(p256::ecdsa::SigningKey, Zeroizing<[u8; 32]>), Error> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        // A uniformly random 32-byte string is a valid scalar except with probability about
        // 2^-32; draw again in that case.
        for _ in 0..64 {
            let mut scalar = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut scalar[..]);
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&scalar[..]) {
                self.issued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*scalar);
                return Ok((key, scalar));
            }
        }
        Err(Error::Key("P-256 key generation failed"))
    }
}

impl KeySource for SeededKeySource {
    fn generate(&self, alg: KeyAlg) -> Result<Box<dyn Signer>, Error> {
        match alg {
            KeyAlg::EcP256 => Ok(Box::new(SeededSigner::new(self.next_p256()?.0)?)),
            _ => Err(Error::Key("unsupported key algorithm")),
        }
    }

    fn generate_workload_key(&self, alg: KeyAlg) -> Result<WorkloadKey, Error> {
        match alg {
            KeyAlg::EcP256 => {
                let (key, scalar) = self.next_p256()?;
                let point = key.verifying_key().to_sec1_point(false);
                let pkcs8 = p256_pkcs8(&scalar, point.as_bytes())?;
                Ok(WorkloadKey::new(p256_spki_der(point.as_bytes())?, pkcs8))
            }
            _ => Err(Error::Key("unsupported key algorithm")),
        }
    }
}

/// A P-256 key signing with RFC 6979 deterministic nonces (p256 crate).
pub struct SeededSigner {
    key: p256::ecdsa::SigningKey,
    spki_der: Vec<u8>,
}

impl SeededSigner {
    fn new(key: p256::ecdsa::SigningKey) -> Result<SeededSigner, Error> {
        let point = key.verifying_key().to_sec1_point(false);
        let spki_der = p256_spki_der(point.as_bytes())?;
        Ok(SeededSigner { key, spki_der })
    }
}

impl fmt::Debug for SeededSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp: String = self.spki_der[27..33]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "SeededSigner(P-256, public {fp}…)")
    }
}

impl Signer for SeededSigner {
    fn alg(&self) -> KeyAlg {
        KeyAlg::EcP256
    }

    fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn sign(&self, msg: &[u8], format: SigFormat) -> Result<Vec<u8>, Error> {
        let sig: p256::ecdsa::Signature = self
            .key
            .try_sign(msg)
            .map_err(|_| Error::Key("signing failed"))?;
        Ok(match format {
            SigFormat::Der => sig.to_der().as_bytes().to_vec(),
            SigFormat::Fixed => sig.to_bytes().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn generated_keys_sign_and_verify_in_both_formats() {
        let source = RingKeySource::new();
        let key = source.generate(KeyAlg::EcP256).expect("generate");
        let spki = key.public_key_der();
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[..26], &P256_SPKI_PREFIX);
        let point = &spki[26..];
        let msg = b"to be signed";
        let der = key.sign(msg, SigFormat::Der).expect("sign");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(msg, &der)
            .expect("DER signature verifies");
        let fixed = key.sign(msg, SigFormat::Fixed).expect("sign");
        assert_eq!(fixed.len(), 64);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(msg, &fixed)
            .expect("fixed signature verifies");
        assert!(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(b"other", &fixed)
            .is_err());
        let other = source.generate(KeyAlg::EcP256).expect("generate");
        assert_ne!(other.public_key_der(), spki, "fresh keys differ");
    }

    #[test]
    fn workload_keys_are_pkcs8_that_ring_loads_and_the_seeded_ones_are_tracked() {
        let ring_source = RingKeySource::new();
        let seeded = SeededKeySource::new(Seed::from_u64(11));
        for key in [
            ring_source
                .generate_workload_key(KeyAlg::EcP256)
                .expect("ring workload key"),
            seeded
                .generate_workload_key(KeyAlg::EcP256)
                .expect("seeded workload key"),
        ] {
            let signer = RingSigner::from_pkcs8(key.pkcs8_der()).expect("ring loads it");
            assert_eq!(signer.public_key_der(), key.public_key_der());
            let sig = signer.sign(b"m", SigFormat::Der).expect("sign");
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.public_key_der()[26..])
                .verify(b"m", &sig)
                .expect("verifies under the public half");
            assert!(!format!("{key:?}").contains("30818702"), "Debug redacts");
        }
        let key = seeded
            .generate_workload_key(KeyAlg::EcP256)
            .expect("seeded workload key");
        assert!(
            seeded.leaked_in(key.pkcs8_der()),
            "the simulator's scanner knows workload keys too"
        );
        let again = SeededKeySource::new(Seed::from_u64(11));
        let first = again.generate_workload_key(KeyAlg::EcP256).expect("key");
        let other = SeededKeySource::new(Seed::from_u64(11))
            .generate_workload_key(KeyAlg::EcP256)
            .expect("key");
        assert_eq!(first.pkcs8_der(), other.pkcs8_der(), "deterministic");
    }

    #[test]
    fn seeded_source_finds_its_private_scalars_in_bytes() {
        let source = SeededKeySource::new(Seed::from_u64(4));
        assert!(!source.leaked_in(&[0u8; 64]), "no keys yet");
        let mut scalars = Vec::new();
        let mut publics = Vec::new();
        for _ in 0..3 {
            // The n-th key's scalar is the n-th 32 bytes drawn (redrawn only if invalid).
            let mut replay = ChaCha20Rng::from_seed(Seed::from_u64(4).0);
            for _ in 0..scalars.len() {
                replay.fill_bytes(&mut [0u8; 32]);
            }
            let mut scalar = [0u8; 32];
            replay.fill_bytes(&mut scalar);
            let key = source.generate(KeyAlg::EcP256).expect("key");
            publics.push(key.public_key_der().to_vec());
            scalars.push(scalar);
        }
        for scalar in &scalars {
            let mut frame = b"header".to_vec();
            frame.extend_from_slice(scalar);
            frame.extend_from_slice(b"trailer");
            assert!(source.leaked_in(&frame));
            assert!(
                !source.leaked_in(&frame[7..]),
                "a scalar cut short is not a match"
            );
        }
        for public in &publics {
            assert!(!source.leaked_in(public), "public keys are fine to send");
        }
    }

    #[test]
    fn seeded_keys_are_deterministic_and_verify_with_ring() {
        let a = SeededKeySource::new(Seed::from_u64(9));
        let b = SeededKeySource::new(Seed::from_u64(9));
        let ka = a.generate(KeyAlg::EcP256).expect("key");
        let kb = b.generate(KeyAlg::EcP256).expect("key");
        assert_eq!(ka.public_key_der(), kb.public_key_der());
        let second = a.generate(KeyAlg::EcP256).expect("key");
        assert_ne!(second.public_key_der(), ka.public_key_der());
        let other_seed = SeededKeySource::new(Seed::from_u64(10))
            .generate(KeyAlg::EcP256)
            .expect("key");
        assert_ne!(other_seed.public_key_der(), ka.public_key_der());

        let msg = b"deterministic";
        let point = p256_point(ka.public_key_der()).expect("p256");
        for (format, alg) in [
            (SigFormat::Der, &ECDSA_P256_SHA256_ASN1),
            (SigFormat::Fixed, &ECDSA_P256_SHA256_FIXED),
        ] {
            let s1 = ka.sign(msg, format).expect("sign");
            assert_eq!(s1, kb.sign(msg, format).expect("sign"), "RFC 6979");
            UnparsedPublicKey::new(alg, point)
                .verify(msg, &s1)
                .expect("ring verifies p256's signature");
        }
        assert!(format!("{ka:?}").starts_with("SeededSigner(P-256"));
        let jwk = jwk_of_spki(ka.public_key_der()).expect("jwk");
        assert!(
            matches!(jwk, PublicJwk::Ec { ref x, ref y, .. } if x.len() == 32 && y.len() == 32)
        );
        assert!(jwk_of_spki(&[0x30, 0]).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
        let signer = RingSigner::from_pkcs8(pkcs8.as_ref()).expect("load");
        let shown = format!("{signer:?}");
        assert!(shown.starts_with("RingSigner(P-256"));
        // The PKCS#8 document holds the 32-byte scalar; no 8-byte window of it may appear.
        let hex: String = pkcs8.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(shown.len() < 60, "{shown}");
        assert!(!hex.is_empty());
        assert!(RingSigner::from_pkcs8(b"not a key").is_err());
        assert!(p256_spki_der(&[4; 64]).is_err());
    }
}
