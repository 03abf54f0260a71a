//! TPM 2.0 node attestation, the server's side — which needs no TPM: everything here is pure
//! Rust on bytes the agent's TPM produced.
//!
//! **The exchange** (two node API requests on one QUIC connection, the server keeping no state
//! between them):
//! 1. The agent sends its EK public area (`TPMT_PUBLIC`), the EK certificate from the TPM's NV
//!    when there is one, and the public area of a fresh attestation key (AK) it created under the
//!    EK. [`Challenger::begin`] checks that the EK is trusted ([`EkPolicy`]: the certificate chains
//!    to a configured manufacturer CA, or the EK's hash is allow-listed) and that the AK is a
//!    restricted ECDSA P-256 signing key that never leaves its TPM, then answers with a
//!    *credential* made for (EK, AK name) by [`make_credential`] and a challenge *token*.
//! 2. The agent's TPM can recover the credential (`TPM2_ActivateCredential`) only if it holds
//!    the EK's private key **and** a loaded object with the AK's name — so a correct answer proves
//!    the AK lives in the same TPM as the EK. The agent then has the AK quote its PCRs with
//!    [`qualifying_data`]`(token, binding, SVID public key)` as the quote's `extraData`, and sends
//!    everything back; [`Challenger::finish`] checks the token, the activated credential, the
//!    quote's signature, nonce and PCR digest, and returns the agent's [`TpmIdentity`].
//!
//! **No server state, no replays.** The token is `version || expires_at || random id || HMAC` under
//! a per-node key ([`Challenger`], random, memory only); the HMAC covers the expiry, the hashes of
//! both public areas and the connection's channel-binding value (32 bytes of TLS keying
//! material, as for x509pop). The credential is an HMAC of the token under the same key. So a
//! token is worthless after [`CHALLENGE_TTL_SECS`], on another connection, for another EK or AK,
//! or at another server (node) — and since the quote covers the token, the connection binding
//! and the SVID key's hash, an old quote is worthless too.
//!
//! **MakeCredential** (TPM 2.0 Part 1 §24, Part 3 §12.6), written from the specification: a seed
//! protected to the EK — RSA-OAEP (SHA-256, label `"IDENTITY\0"`) for an RSA EK, or ephemeral
//! ECDH + KDFe (SHA-256, `"IDENTITY\0"`, the two x-coordinates) for an ECC EK — then
//! `symKey = KDFa(seed, "STORAGE", AK name)` (128 bits), AES-128-CFB (zero IV) of the
//! `TPM2B_DIGEST` credential, `hmacKey = KDFa(seed, "INTEGRITY")` (256 bits) and
//! `outerHMAC = HMAC-SHA-256(hmacKey, encIdentity || AK name)`. Supported EKs are the TCG EK
//! Credential Profile's low-range templates: L-1 (RSA 2048) and L-2 (ECC NIST P-256), both with
//! nameAlg SHA-256 and AES-128-CFB.
//!
//! **The identity.** The EK hash is the lowercase hex SHA-256 of the EK public key's DER
//! `SubjectPublicKeyInfo` (what `openssl x509 -pubkey` prints for the EK certificate); the agent
//! ID is `spiffe://<td>/sigil/agent/tpm/<ek hash>`. Selectors (kind `tpm`): `ek_hash:<hex>`,
//! `pcr:<index>:<hex>` for every quoted SHA-256 PCR, and `ek_cert_issuer:<issuer DN>` when the EK
//! certificate chains to a configured CA.
//!
//! Every size is checked against the [`wire::api`] limits before anything is parsed; bad input
//! is a [`TpmError`], never a panic. Randomness arrives as an argument.

use std::collections::BTreeSet;
use std::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use rand_core::{CryptoRng, RngCore};
use ring::{digest, hmac, signature};
use wire::api::{
    TPM_EK_CERT_BYTES_MAX, TPM_PCRS_MAX, TPM_PCR_VALUE_BYTES_MAX, TPM_PUBLIC_BYTES_MAX,
    TPM_QUOTE_BYTES_MAX, TPM_SECRET_BYTES_MAX, TPM_SIGNATURE_BYTES_MAX, TPM_TOKEN_BYTES_MAX,
};
use wire::entry::SELECTORS_PER_ENTRY_MAX;
use wire::{Selector, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey as CertKey;

use crate::der::{DerWriter, TAG_SEQUENCE};
use crate::x509::{chain_path, check_critical_extensions, check_validity, parse_cert};
use crate::x509pop::ca_rules;
use crate::{hex, sha256_hex};

/// The selector kind of TPM facts.
pub const SELECTOR_KIND: &str = "tpm";
/// How long a challenge may be answered.
pub const CHALLENGE_TTL_SECS: u64 = 60;
/// Bytes of the credential the server makes (the agent's TPM must recover exactly these).
pub const CREDENTIAL_BYTES: usize = 32;
/// Bytes of a challenge token.
pub const TOKEN_BYTES: usize = 1 + 8 + 16 + 32;
/// The highest PCR index.
pub const PCR_INDEX_MAX: u8 = 23;
/// The channel-binding value's size (the x509pop exporter's).
pub const BINDING_BYTES: usize = crate::x509pop::EXPORTER_BYTES;

/// `TPM_GENERATED_VALUE`: the magic of every `TPMS_ATTEST` the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// `TPM_ALG_ID` values (TPM 2.0 Part 2 §6.3) used here.
pub mod alg {
    /// RSA.
    pub const RSA: u16 = 0x0001;
    /// AES.
    pub const AES: u16 = 0x0006;
    /// SHA-256.
    pub const SHA256: u16 = 0x000b;
    /// The null algorithm.
    pub const NULL: u16 = 0x0010;
    /// ECDSA.
    pub const ECDSA: u16 = 0x0018;
    /// ECDAA (its scheme details carry a count).
    pub const ECDAA: u16 = 0x001a;
    /// ECC.
    pub const ECC: u16 = 0x0023;
    /// CFB mode.
    pub const CFB: u16 = 0x0043;
    /// `TPM_ECC_NIST_P256` (a `TPM_ECC_CURVE`, not an algorithm).
    pub const NIST_P256: u16 = 0x0003;
}

/// `TPMA_OBJECT` bits (TPM 2.0 Part 2 §8.3) used here.
pub mod attr {
    /// The object cannot be duplicated, ever.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The object cannot be duplicated away from its parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// Admin actions need a policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Signs or decrypts only TPM-made structures.
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption (storage) key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// Why a TPM attestation (or a step of one) was refused. Never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// Neither manufacturer CAs nor EK hashes are configured.
    #[error("no EK is trusted (the server has neither ek_ca_bundle nor ek_hashes)")]
    NoTrust,
    /// A field over its limit (or empty where it must not be).
    #[error("{0} must be 1 to {1} bytes")]
    Size(&'static str, usize),
    /// A TPM structure that does not parse.
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, &'static str),
    /// The EK is not one of the supported templates.
    #[error("unsupported EK: {0} (supported: the TCG low-range templates RSA 2048 and ECC NIST P-256, nameAlg SHA-256, AES-128-CFB)")]
    UnsupportedEk(&'static str),
    /// The AK is not a key we accept for quotes.
    #[error("unacceptable AK: {0} (it must be a restricted ECDSA P-256/SHA-256 signing key with fixedTPM and fixedParent)")]
    BadAk(&'static str),
    /// The EK certificate's key is not the EK.
    #[error("the EK certificate is not for this EK (its public key differs)")]
    EkCertMismatch,
    /// The EK is not trusted by this server.
    #[error("the EK is not trusted: {0}")]
    UntrustedEk(String),
    /// The token does not verify (tampered with, for another EK/AK, from another connection or
    /// another server node).
    #[error("the challenge token does not verify (made by another server node or for another connection, EK or AK); attest again")]
    BadToken,
    /// The token's time is up.
    #[error("the challenge expired (it may be answered for {CHALLENGE_TTL_SECS} s); attest again")]
    Expired,
    /// The activated credential is not the one made.
    #[error(
        "the activated credential is wrong: the AK is not resident in the TPM that holds this EK"
    )]
    WrongCredential,
    /// The quote's signature does not verify with the AK.
    #[error("the quote signature does not verify with the AK")]
    BadSignature,
    /// The quote's `extraData` is not this challenge's.
    #[error("the quote is not for this challenge (its qualifying data differs: an old quote, or one for another connection or SVID key)")]
    WrongNonce,
    /// The quote is not a PCR quote we can check.
    #[error("bad quote: {0}")]
    BadQuote(&'static str),
    /// The reported PCR values are not what the TPM quoted.
    #[error("the reported PCR values do not match the quote's PCR digest")]
    PcrMismatch,
    /// A crypto library refused (the text says what, never with which key).
    #[error("{0}")]
    Crypto(&'static str),
    /// More selectors than an agent may have.
    #[error(
        "the attestation yields {0} selectors; an agent may have at most {SELECTORS_PER_ENTRY_MAX}"
    )]
    TooManySelectors(usize),
}

/// Checks `bytes` is 1 to `max` bytes.
fn sized(what: &'static str, bytes: &[u8], max: usize) -> Result<(), TpmError> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(TpmError::Size(what, max));
    }
    Ok(())
}

/// A big-endian reader over TPM marshalled bytes.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn err(&self, why: &'static str) -> TpmError {
        TpmError::Malformed(self.what, why)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TpmError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, TpmError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, TpmError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, TpmError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes.
    fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn end(&self) -> Result<(), TpmError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Appends a `TPM2B_*` of `bytes` (callers keep them under 64 KiB).
fn push_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// The key of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AreaKey {
    Rsa {
        bits: u16,
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        curve: u16,
        kdf: Option<u16>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC` (only the parts attestation looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublicArea {
    name_alg: u16,
    attributes: u32,
    /// `(algorithm, key bits, mode)`, `None` for TPM_ALG_NULL.
    symmetric: Option<(u16, u16, u16)>,
    /// `(scheme, hash)`, `None` for TPM_ALG_NULL.
    scheme: Option<(u16, u16)>,
    key: AreaKey,
    /// `nameAlg || SHA-256(TPMT_PUBLIC)`.
    name: Vec<u8>,
}

impl PublicArea {
    fn parse(bytes: &[u8], what: &'static str) -> Result<PublicArea, TpmError> {
        sized(what, bytes, TPM_PUBLIC_BYTES_MAX)?;
        let mut r = Reader::new(bytes, what);
        let kind = r.u16()?;
        let name_alg = r.u16()?;
        if name_alg != alg::SHA256 {
            return Err(r.err("nameAlg is not SHA-256"));
        }
        let attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        if kind != alg::RSA && kind != alg::ECC {
            return Err(r.err("neither an RSA nor an ECC key"));
        }
        let symmetric = match r.u16()? {
            alg::NULL => None,
            a => Some((a, r.u16()?, r.u16()?)),
        };
        let scheme = match r.u16()? {
            alg::NULL => None,
            alg::ECDAA => {
                let hash = r.u16()?;
                let _count = r.u16()?;
                Some((alg::ECDAA, hash))
            }
            s => Some((s, r.u16()?)),
        };
        let key = if kind == alg::RSA {
            let bits = r.u16()?;
            let exponent = r.u32()?;
            let modulus = r.tpm2b()?.to_vec();
            AreaKey::Rsa {
                bits,
                exponent,
                modulus,
            }
        } else {
            let curve = r.u16()?;
            let kdf = match r.u16()? {
                alg::NULL => None,
                k => {
                    let _hash = r.u16()?;
                    Some(k)
                }
            };
            let x = r.tpm2b()?.to_vec();
            let y = r.tpm2b()?.to_vec();
            AreaKey::Ecc { curve, kdf, x, y }
        };
        r.end()?;
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        Ok(PublicArea {
            name_alg,
            attributes,
            symmetric,
            scheme,
            key,
            name,
        })
    }

    fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// A P-256 point from TPM coordinates (each at most 32 bytes, left-padded), checked on the curve.
fn p256_point(x: &[u8], y: &[u8]) -> Option<p256::PublicKey> {
    if x.len() > 32 || y.len() > 32 {
        return None;
    }
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[33 - x.len()..33].copy_from_slice(x);
    sec1[65 - y.len()..].copy_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1).ok()
}

/// The uncompressed SEC1 encoding (`0x04 || x || y`, 65 bytes) of a P-256 point.
fn uncompressed(point: &p256::AffinePoint) -> Option<[u8; 65]> {
    let encoded = point.to_sec1_point(false);
    let bytes = encoded.as_bytes();
    let mut out = [0u8; 65];
    if bytes.len() != 65 {
        return None; // the identity
    }
    out.copy_from_slice(bytes);
    Some(out)
}

/// The EK's public key.
#[derive(Clone, PartialEq, Eq)]
enum EkKey {
    Rsa { modulus: Vec<u8>, exponent: u32 },
    P256(p256::PublicKey),
}

/// A checked endorsement key public area.
#[derive(Clone, PartialEq, Eq)]
pub struct EkPublic {
    key: EkKey,
    spki_der: Vec<u8>,
}

impl fmt::Debug for EkPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EkPublic({}, {})", self.algorithm(), self.hash())
    }
}

const OID_RSA_ENCRYPTION: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The DER `SubjectPublicKeyInfo` of an RSA public key.
fn rsa_spki_der(modulus: &[u8], exponent: u32) -> Vec<u8> {
    let mut key = DerWriter::with_capacity(modulus.len() + 16);
    key.nested(TAG_SEQUENCE, |w| {
        w.unsigned_integer(modulus);
        w.unsigned_integer(&exponent.to_be_bytes());
    });
    let mut spki = DerWriter::with_capacity(modulus.len() + 40);
    spki.nested(TAG_SEQUENCE, |w| {
        w.nested(TAG_SEQUENCE, |w| {
            w.oid(&OID_RSA_ENCRYPTION);
            w.tlv(0x05, &[]);
        });
        w.bit_string(&key.buf);
    });
    spki.buf
}

impl EkPublic {
    /// Parses and checks a marshalled `TPMT_PUBLIC` of an EK made from the TCG low-range
    /// templates L-1 (RSA 2048) or L-2 (ECC NIST P-256).
    pub fn parse(tpmt_public: &[u8]) -> Result<EkPublic, TpmError> {
        let area = PublicArea::parse(tpmt_public, "EK public area")?;
        let needed = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::ADMIN_WITH_POLICY
            | attr::RESTRICTED
            | attr::DECRYPT;
        if !area.has(needed) || area.has(attr::SIGN) {
            return Err(TpmError::UnsupportedEk(
                "not a restricted decryption key with fixedTPM, fixedParent, sensitiveDataOrigin and adminWithPolicy",
            ));
        }
        if area.symmetric != Some((alg::AES, 128, alg::CFB)) {
            return Err(TpmError::UnsupportedEk(
                "its symmetric algorithm is not AES-128-CFB",
            ));
        }
        if area.scheme.is_some() {
            return Err(TpmError::UnsupportedEk("it has a scheme (an EK has none)"));
        }
        debug_assert_eq!(area.name_alg, alg::SHA256);
        let (key, spki_der) = match area.key {
            AreaKey::Rsa {
                bits,
                exponent,
                modulus,
            } => {
                let exponent = if exponent == 0 { 65_537 } else { exponent };
                if bits != 2048 || modulus.len() != 256 || modulus.first().is_none_or(|b| *b == 0) {
                    return Err(TpmError::UnsupportedEk("an RSA key that is not 2048 bits"));
                }
                if exponent != 65_537 {
                    return Err(TpmError::UnsupportedEk(
                        "an RSA public exponent other than 65537",
                    ));
                }
                let spki = rsa_spki_der(&modulus, exponent);
                (EkKey::Rsa { modulus, exponent }, spki)
            }
            AreaKey::Ecc { curve, kdf, x, y } => {
                if curve != alg::NIST_P256 {
                    return Err(TpmError::UnsupportedEk(
                        "an ECC curve other than NIST P-256",
                    ));
                }
                if kdf.is_some() {
                    return Err(TpmError::UnsupportedEk("an ECC key with a KDF"));
                }
                let point = p256_point(&x, &y).ok_or(TpmError::UnsupportedEk(
                    "its ECC point is not on the P-256 curve",
                ))?;
                let sec1 = uncompressed(point.as_affine())
                    .ok_or(TpmError::UnsupportedEk("its ECC point is the identity"))?;
                let spki = crate::keys::p256_spki_der(&sec1)
                    .map_err(|_| TpmError::UnsupportedEk("its ECC point cannot be encoded"))?;
                (EkKey::P256(point), spki)
            }
        };
        Ok(EkPublic { key, spki_der })
    }

    /// `"RSA 2048"` or `"ECC P-256"`.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            EkKey::Rsa { .. } => "RSA 2048",
            EkKey::P256(_) => "ECC P-256",
        }
    }

    /// The DER `SubjectPublicKeyInfo` of the EK's public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The EK hash: lowercase hex SHA-256 of [`EkPublic::spki_der`] (the agent ID's last
    /// segment and the `ek_hash` selector).
    pub fn hash(&self) -> String {
        sha256_hex(&self.spki_der)
    }

    /// Whether the certificate's subject public key is this EK.
    fn matches(&self, cert: &X509Certificate<'_>) -> bool {
        let strip = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|b| *b == 0).collect() };
        match (&self.key, cert.public_key().parsed()) {
            (EkKey::Rsa { modulus, exponent }, Ok(CertKey::RSA(rsa))) => {
                strip(rsa.modulus) == strip(modulus)
                    && strip(rsa.exponent) == strip(&exponent.to_be_bytes())
            }
            (EkKey::P256(point), Ok(CertKey::EC(ec))) => {
                uncompressed(point.as_affine()).is_some_and(|p| ec.data() == p.as_slice())
            }
            _ => false,
        }
    }
}

/// A checked attestation key public area.
#[derive(Clone, PartialEq, Eq)]
pub struct AkPublic {
    point: [u8; 65],
    name: Vec<u8>,
}

impl fmt::Debug for AkPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AkPublic(name {})", hex(&self.name))
    }
}

impl AkPublic {
    /// Parses and checks a marshalled `TPMT_PUBLIC` of an AK: ECC P-256, nameAlg SHA-256,
    /// restricted, sign (not decrypt), fixedTPM, fixedParent, sensitiveDataOrigin, scheme ECDSA
    /// with SHA-256, no symmetric algorithm or KDF.
    pub fn parse(tpmt_public: &[u8]) -> Result<AkPublic, TpmError> {
        let area = PublicArea::parse(tpmt_public, "AK public area")?;
        let needed = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::RESTRICTED
            | attr::SIGN;
        if !area.has(needed) || area.has(attr::DECRYPT) {
            return Err(TpmError::BadAk("missing attributes, or a decryption key"));
        }
        if area.symmetric.is_some() {
            return Err(TpmError::BadAk("it has a symmetric algorithm"));
        }
        if area.scheme != Some((alg::ECDSA, alg::SHA256)) {
            return Err(TpmError::BadAk("its scheme is not ECDSA with SHA-256"));
        }
        let AreaKey::Ecc { curve, kdf, x, y } = &area.key else {
            return Err(TpmError::BadAk("not an ECC key"));
        };
        if *curve != alg::NIST_P256 || kdf.is_some() {
            return Err(TpmError::BadAk("not a NIST P-256 key without KDF"));
        }
        let point = p256_point(x, y)
            .and_then(|p| uncompressed(p.as_affine()))
            .ok_or(TpmError::BadAk("its point is not on the P-256 curve"))?;
        Ok(AkPublic {
            point,
            name: area.name,
        })
    }

    /// The AK's TPM name: `TPM_ALG_SHA256 || SHA-256(TPMT_PUBLIC)` (34 bytes).
    pub fn name(&self) -> &[u8] {
        &self.name
    }
}

/// The TPM's HMAC-based KDF in counter mode (SP 800-108; TPM 2.0 Part 1 §11.4.10.2), SHA-256:
/// `K(i) = HMAC(key, [i]₃₂ || label || contextU || contextV || [bits]₃₂)`. `label` includes its
/// terminating zero byte.
fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// The TPM's hash-based KDF for ECDH (SP 800-56A concatenation; TPM 2.0 Part 1 §11.4.10.3),
/// SHA-256: `K(i) = SHA-256([i]₃₂ || Z || use || partyUInfo || partyVInfo)`. `usage` includes its
/// terminating zero byte.
fn kdfe(z: &[u8], usage: &[u8], party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(usage);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// AES-128 in CFB mode with full-block feedback and a zero IV (the TPM's parameter and
/// credential encryption), encrypting `data` in place.
fn aes128_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), TpmError> {
    let cipher = aes::Aes128::new_from_slice(key)
        .map_err(|_| TpmError::Crypto("AES-128 needs a 16-byte key"))?;
    let mut feedback = aes::Block::default();
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        cipher.encrypt_block(&mut stream);
        for (b, k) in chunk.iter_mut().zip(stream.iter()) {
            *b ^= k;
        }
        if chunk.len() == 16 {
            feedback.copy_from_slice(chunk);
        }
    }
    Ok(())
}

/// The inverse of [`aes128_cfb_encrypt`] (tests decrypt what swtpm made).
#[cfg(test)]
fn aes128_cfb_decrypt(key: &[u8], data: &mut [u8]) {
    let cipher = aes::Aes128::new_from_slice(key).expect("key");
    let mut feedback = aes::Block::default();
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        cipher.encrypt_block(&mut stream);
        let next: Vec<u8> = chunk.to_vec();
        for (b, k) in chunk.iter_mut().zip(stream.iter()) {
            *b ^= k;
        }
        if next.len() == 16 {
            feedback.copy_from_slice(&next);
        }
    }
}

/// `"IDENTITY"` with its terminating zero: the label of credential seeds.
const IDENTITY: &[u8] = b"IDENTITY\0";
const STORAGE: &[u8] = b"STORAGE\0";
const INTEGRITY: &[u8] = b"INTEGRITY\0";

/// The output of `TPM2_MakeCredential`: the contents of the `TPM2B_ID_OBJECT` and of the
/// `TPM2B_ENCRYPTED_SECRET` (what `TPM2_ActivateCredential` takes, without their size fields).
#[derive(Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `TPM2B_DIGEST(outerHMAC) || encIdentity`.
    pub id_object: Vec<u8>,
    /// The seed protected to the EK.
    pub encrypted_secret: Vec<u8>,
}

impl fmt::Debug for MadeCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MadeCredential({} + {} bytes)",
            self.id_object.len(),
            self.encrypted_secret.len()
        )
    }
}

/// The part of MakeCredential that follows the seed: encrypts `credential` for the object named
/// `name` and adds the integrity HMAC (TPM 2.0 Part 1 §24.4–24.5).
fn protect_credential(seed: &[u8], name: &[u8], credential: &[u8]) -> Result<Vec<u8>, TpmError> {
    let sym_key = kdfa(seed, STORAGE, name, &[], 128);
    let mut enc_identity = Vec::with_capacity(credential.len() + 2);
    push_tpm2b(&mut enc_identity, credential);
    aes128_cfb_encrypt(&sym_key, &mut enc_identity)?;
    let hmac_key = kdfa(seed, INTEGRITY, &[], &[], 256);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&enc_identity);
    ctx.update(name);
    let outer = ctx.sign();
    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    push_tpm2b(&mut id_object, outer.as_ref());
    id_object.extend_from_slice(&enc_identity);
    Ok(id_object)
}

/// A fresh seed protected to `ek` (TPM 2.0 Part 1 §24.3 and Annex B.10.3 / C.6.1): the seed
/// and the `TPM2B_ENCRYPTED_SECRET` contents.
fn seal_seed(
    ek: &EkPublic,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    match &ek.key {
        EkKey::Rsa { modulus, exponent } => {
            let mut seed = vec![0u8; 32];
            rng.fill_bytes(&mut seed);
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| TpmError::Crypto("the RSA EK is not a usable RSA public key"))?;
            let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0");
            let secret = key
                .encrypt(rng, padding, &seed)
                .map_err(|_| TpmError::Crypto("RSA-OAEP encryption of the seed failed"))?;
            Ok((seed, secret))
        }
        EkKey::P256(ek_point) => {
            let scalar = loop {
                let mut bytes = [0u8; 32];
                rng.fill_bytes(&mut bytes);
                if let Some(s) = Option::from(p256::NonZeroScalar::from_repr(bytes.into())) {
                    break s;
                }
            };
            let ephemeral = p256::PublicKey::from_secret_scalar(&scalar);
            let ephemeral = uncompressed(ephemeral.as_affine())
                .ok_or(TpmError::Crypto("ephemeral ECDH key is the identity"))?;
            let shared = (ek_point.to_projective() * *scalar).to_affine();
            let shared = uncompressed(&shared)
                .ok_or(TpmError::Crypto("the ECDH shared point is the identity"))?;
            let ek_sec1 = uncompressed(ek_point.as_affine())
                .ok_or(TpmError::Crypto("the EK point is the identity"))?;
            let (qe_x, qe_y) = (&ephemeral[1..33], &ephemeral[33..]);
            let seed = kdfe(&shared[1..33], IDENTITY, qe_x, &ek_sec1[1..33], 256);
            let mut secret = Vec::with_capacity(68);
            push_tpm2b(&mut secret, qe_x);
            push_tpm2b(&mut secret, qe_y);
            Ok((seed, secret))
        }
    }
}

/// `TPM2_MakeCredential` in software: protects `credential` (1 to 32 bytes) so that only the TPM
/// holding `ek`'s private key, with an object named `name` loaded, can recover it with
/// `TPM2_ActivateCredential`.
pub fn make_credential(
    ek: &EkPublic,
    name: &[u8],
    credential: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<MadeCredential, TpmError> {
    sized("credential", credential, 32)?;
    let (seed, encrypted_secret) = seal_seed(ek, rng)?;
    let id_object = protect_credential(&seed, name, credential)?;
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

/// What an EK must satisfy: chain to one of `cas`, or have its hash in `ek_hashes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EkPolicy {
    /// Manufacturer CA certificates (DER), each trusted to issue EK certificates directly or
    /// through the others.
    pub cas: Vec<Vec<u8>>,
    /// Allow-listed EK hashes (lowercase hex, see [`EkPublic::hash`]).
    pub ek_hashes: BTreeSet<String>,
}

impl EkPolicy {
    /// Whether the policy trusts anything at all.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty() && self.ek_hashes.is_empty()
    }

    /// Checks `ek` (with its certificate, if the agent found one) at `now`; the certificate's
    /// issuer when it chains to a configured CA, `None` when the EK is trusted by its hash alone.
    pub fn check(
        &self,
        ek: &EkPublic,
        ek_cert: Option<&[u8]>,
        now: UnixTime,
    ) -> Result<Option<String>, TpmError> {
        if self.is_empty() {
            return Err(TpmError::NoTrust);
        }
        let mut why = Vec::new();
        if let Some(der) = ek_cert {
            sized("EK certificate", der, TPM_EK_CERT_BYTES_MAX)?;
            let cert = parse_cert(der).map_err(|_| {
                TpmError::Malformed("EK certificate", "not one DER X.509 certificate")
            })?;
            if !ek.matches(&cert) {
                return Err(TpmError::EkCertMismatch);
            }
            if self.cas.is_empty() {
                why.push("no ek_ca_bundle is configured to check its certificate".to_owned());
            } else {
                match self.chains(&cert, now) {
                    Ok(()) => return Ok(Some(cert.issuer().to_string())),
                    Err(e) => why.push(format!("its certificate {e}")),
                }
            }
        } else {
            why.push("the agent found no EK certificate in its TPM".to_owned());
        }
        let hash = ek.hash();
        if self.ek_hashes.contains(&hash) {
            return Ok(None);
        }
        why.push(format!("its hash {hash} is not in ek_hashes"));
        Err(TpmError::UntrustedEk(why.join("; ")))
    }

    fn chains(&self, leaf: &X509Certificate<'_>, now: UnixTime) -> Result<(), &'static str> {
        if leaf
            .basic_constraints()
            .map_err(|_| "has malformed basicConstraints")?
            .is_some_and(|bc| bc.value.ca)
        {
            return Err("is a CA certificate");
        }
        check_critical_extensions(leaf)
            .map_err(|_| "has a critical extension this server does not understand")?;
        check_validity(leaf, now).map_err(|_| "is outside its validity window")?;
        let cas: Vec<X509Certificate<'_>> =
            self.cas.iter().filter_map(|d| parse_cert(d).ok()).collect();
        let usable = |cert: &X509Certificate<'_>, below: usize| {
            ca_rules(cert, below).is_ok() && check_validity(cert, now).is_ok()
        };
        chain_path(leaf, &cas, &cas, usable, usable)
            .map(|_| ())
            .ok_or("does not chain to a CA in ek_ca_bundle")
    }
}

/// The `extraData` an agent puts in its quote: SHA-256 of `"sigil tpm quote v1\0" || [len]₁₆ ||
/// token || binding || SHA-256(public_key_der)`, where `binding` is the connection's
/// channel-binding value and `public_key_der` the key the agent SVID is for.
pub fn qualifying_data(
    token: &[u8],
    binding: &[u8; BINDING_BYTES],
    public_key_der: &[u8],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"sigil tpm quote v1\0");
    ctx.update(&u16::try_from(token.len()).unwrap_or(u16::MAX).to_be_bytes());
    ctx.update(token);
    ctx.update(binding);
    ctx.update(digest::digest(&digest::SHA256, public_key_der).as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verifies a quote: `signature` (a marshalled `TPMT_SIGNATURE`, ECDSA with SHA-256) by `ak` over
/// `quote` (a marshalled `TPMS_ATTEST`), which must be a `TPM_GENERATED_VALUE` quote whose
/// `extraData` is `extra_data`, selecting exactly the SHA-256 PCRs of `pcrs` with a `pcrDigest`
/// equal to SHA-256 of their values in index order.
pub fn verify_quote(
    ak: &AkPublic,
    quote: &[u8],
    signature: &[u8],
    extra_data: &[u8],
    pcrs: &[(u8, Vec<u8>)],
) -> Result<(), TpmError> {
    sized("quote", quote, TPM_QUOTE_BYTES_MAX)?;
    sized("quote signature", signature, TPM_SIGNATURE_BYTES_MAX)?;
    if pcrs.len() > TPM_PCRS_MAX {
        return Err(TpmError::BadQuote("more than 24 PCR values"));
    }

    // The signature first: nothing else in `quote` is worth reading unless the AK signed it.
    let mut s = Reader::new(signature, "quote signature");
    if s.u16()? != alg::ECDSA || s.u16()? != alg::SHA256 {
        return Err(TpmError::BadSignature);
    }
    let (r_part, s_part) = (s.tpm2b()?, s.tpm2b()?);
    s.end()?;
    if r_part.len() > 32 || s_part.len() > 32 {
        return Err(TpmError::BadSignature);
    }
    let mut fixed = [0u8; 64];
    fixed[32 - r_part.len()..32].copy_from_slice(r_part);
    fixed[64 - s_part.len()..].copy_from_slice(s_part);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &ak.point)
        .verify(quote, &fixed)
        .map_err(|_| TpmError::BadSignature)?;

    let mut r = Reader::new(quote, "quote");
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(TpmError::BadQuote("not TPM-generated (magic)"));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(TpmError::BadQuote("not a quote"));
    }
    let _qualified_signer = r.tpm2b()?;
    let extra = r.tpm2b()?;
    let _clock = r.u64()?;
    let _reset_count = r.u32()?;
    let _restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware = r.u64()?;
    let selections = r.u32()?;
    let mut selected = BTreeSet::new();
    for _ in 0..selections.min(16) {
        let hash = r.u16()?;
        let size = r.u8()?;
        let bitmap = r.take(usize::from(size))?;
        for (byte, bits) in bitmap.iter().enumerate() {
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    if hash != alg::SHA256 {
                        return Err(TpmError::BadQuote(
                            "it selects PCRs of a bank other than SHA-256",
                        ));
                    }
                    let index = u8::try_from(byte * 8 + bit)
                        .ok()
                        .filter(|i| *i <= PCR_INDEX_MAX)
                        .ok_or(TpmError::BadQuote("it selects a PCR above 23"))?;
                    if !selected.insert(index) {
                        return Err(TpmError::BadQuote("it selects a PCR twice"));
                    }
                }
            }
        }
    }
    if selections > 16 {
        return Err(TpmError::BadQuote("too many PCR selections"));
    }
    let pcr_digest = r.tpm2b()?;
    r.end()?;
    if extra != extra_data {
        return Err(TpmError::WrongNonce);
    }
    let reported: BTreeSet<u8> = pcrs.iter().map(|(i, _)| *i).collect();
    if reported.len() != pcrs.len() {
        return Err(TpmError::BadQuote("a PCR value is reported twice"));
    }
    if reported != selected {
        return Err(TpmError::BadQuote(
            "the reported PCR indices are not the ones quoted",
        ));
    }
    let mut sorted: Vec<&(u8, Vec<u8>)> = pcrs.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (_, value) in sorted {
        if value.len() != 32 {
            return Err(TpmError::BadQuote("a SHA-256 PCR value is not 32 bytes"));
        }
        ctx.update(value);
    }
    if ctx.finish().as_ref() != pcr_digest {
        return Err(TpmError::PcrMismatch);
    }
    Ok(())
}

/// What a successful TPM attestation establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    /// The EK hash ([`EkPublic::hash`]).
    pub ek_hash: String,
    /// The `tpm` selectors, sorted, without duplicates.
    pub selectors: Vec<Selector>,
}

/// The server's answer to the first request.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The credential for (EK, AK name).
    pub credential: MadeCredential,
    /// The token to send back (also the quote's nonce, through [`qualifying_data`]).
    pub token: Vec<u8>,
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Everything the agent sends back.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The EK public area (as in the first request).
    pub ek_public: &'a [u8],
    /// The EK certificate, if any (as in the first request).
    pub ek_cert: Option<&'a [u8]>,
    /// The AK public area (as in the first request).
    pub ak_public: &'a [u8],
    /// The token of the challenge.
    pub token: &'a [u8],
    /// What `TPM2_ActivateCredential` returned.
    pub activated_secret: &'a [u8],
    /// The quote (`TPMS_ATTEST`).
    pub quote: &'a [u8],
    /// Its signature (`TPMT_SIGNATURE`).
    pub signature: &'a [u8],
    /// The quoted SHA-256 PCRs' values.
    pub pcrs: &'a [(u8, Vec<u8>)],
    /// The public key (DER SPKI) the agent SVID is for.
    pub public_key_der: &'a [u8],
}

const TOKEN_VERSION: u8 = 1;

/// A server node's challenge maker: a random HMAC key kept in memory only. Tokens made by one
/// node (or before a restart) do not verify at another.
pub struct Challenger {
    key: hmac::Key,
}

impl fmt::Debug for Challenger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Challenger(<redacted>)")
    }
}

impl Challenger {
    /// A challenger with a key drawn from `rng`.
    pub fn new(rng: &mut (impl RngCore + CryptoRng)) -> Challenger {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Challenger {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    /// What a token's MAC covers: its first 25 bytes, the public areas and the connection.
    fn token_message(
        head: &[u8],
        ek_public: &[u8],
        ak_public: &[u8],
        binding: &[u8; BINDING_BYTES],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"sigil tpm challenge v1\0");
        m.extend_from_slice(head);
        m.extend_from_slice(digest::digest(&digest::SHA256, ek_public).as_ref());
        m.extend_from_slice(digest::digest(&digest::SHA256, ak_public).as_ref());
        m.extend_from_slice(binding);
        m
    }

    fn credential_message(token: &[u8]) -> Vec<u8> {
        let mut m = b"sigil tpm credential v1\0".to_vec();
        m.extend_from_slice(token);
        m
    }

    /// Checks the first request and makes its challenge, valid until `now` +
    /// [`CHALLENGE_TTL_SECS`] on the connection whose channel-binding value is `binding`.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        policy: &EkPolicy,
        ek_public: &[u8],
        ek_cert: Option<&[u8]>,
        ak_public: &[u8],
        binding: &[u8; BINDING_BYTES],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Challenge, TpmError> {
        let ek = EkPublic::parse(ek_public)?;
        let ak = AkPublic::parse(ak_public)?;
        policy.check(&ek, ek_cert, now)?;
        let mut token = Vec::with_capacity(TOKEN_BYTES);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(
            &now.saturating_add(std::time::Duration::from_secs(CHALLENGE_TTL_SECS))
                .as_secs()
                .to_be_bytes(),
        );
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        token.extend_from_slice(&id);
        let mac = hmac::sign(
            &self.key,
            &Challenger::token_message(&token, ek_public, ak_public, binding),
        );
        token.extend_from_slice(mac.as_ref());
        let secret = hmac::sign(&self.key, &Challenger::credential_message(&token));
        let credential =
            make_credential(&ek, ak.name(), &secret.as_ref()[..CREDENTIAL_BYTES], rng)?;
        Ok(Challenge { credential, token })
    }

    /// Checks the evidence of the second request, on the connection whose channel-binding value
    /// is `binding`, at `now`.
    pub fn finish(
        &self,
        policy: &EkPolicy,
        evidence: &Evidence<'_>,
        binding: &[u8; BINDING_BYTES],
        now: UnixTime,
    ) -> Result<TpmIdentity, TpmError> {
        sized("challenge token", evidence.token, TPM_TOKEN_BYTES_MAX)?;
        sized(
            "activated credential",
            evidence.activated_secret,
            TPM_SECRET_BYTES_MAX,
        )?;
        if evidence.pcrs.len() > TPM_PCRS_MAX
            || evidence.pcrs.iter().any(|(i, v)| {
                *i > PCR_INDEX_MAX || v.is_empty() || v.len() > TPM_PCR_VALUE_BYTES_MAX
            })
        {
            return Err(TpmError::BadQuote(
                "PCR values must be indices 0 to 23 with 1 to 64 bytes each",
            ));
        }
        let ek = EkPublic::parse(evidence.ek_public)?;
        let ak = AkPublic::parse(evidence.ak_public)?;
        let issuer = policy.check(&ek, evidence.ek_cert, now)?;

        // The token: ours, for these public areas and this connection, and still fresh.
        let token = evidence.token;
        if token.len() != TOKEN_BYTES || token.first() != Some(&TOKEN_VERSION) {
            return Err(TpmError::BadToken);
        }
        let (head, mac) = token.split_at(TOKEN_BYTES - 32);
        let message =
            Challenger::token_message(head, evidence.ek_public, evidence.ak_public, binding);
        hmac::verify(&self.key, &message, mac).map_err(|_| TpmError::BadToken)?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&head[1..9]);
        if now.as_secs() > u64::from_be_bytes(expires) {
            return Err(TpmError::Expired);
        }

        // Credential activation: the AK is in the EK's TPM.
        hmac::verify(
            &self.key,
            &Challenger::credential_message(token),
            evidence.activated_secret,
        )
        .map_err(|_| TpmError::WrongCredential)?;

        // The quote: signed by that AK, for this challenge, connection and SVID key.
        let extra = qualifying_data(token, binding, evidence.public_key_der);
        verify_quote(
            &ak,
            evidence.quote,
            evidence.signature,
            &extra,
            evidence.pcrs,
        )?;

        let ek_hash = ek.hash();
        let mut values = BTreeSet::new();
        values.insert(format!("ek_hash:{ek_hash}"));
        if let Some(issuer) = issuer {
            values.insert(format!("ek_cert_issuer:{issuer}"));
        }
        for (index, value) in evidence.pcrs {
            values.insert(format!("pcr:{index}:{}", hex(value)));
        }
        let selectors: BTreeSet<Selector> = values
            .iter()
            .filter_map(|v| Selector::new(SELECTOR_KIND, v).ok())
            .collect();
        if selectors.len() > SELECTORS_PER_ENTRY_MAX {
            return Err(TpmError::TooManySelectors(selectors.len()));
        }
        Ok(TpmIdentity {
            ek_hash,
            selectors: selectors.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
        SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
    };
    use rsa::pkcs8::DecodePrivateKey;

    // Known answers from swtpm 0.7.1 (libtpms), made by node/tests/tpm.rs's ignored
    // `print_known_answer_vectors`: the TPM's own TPM2_MakeCredential of CREDENTIAL for NAME to
    // EKs (TCG templates L-1 and L-2) whose private keys are RSA_PKCS8 and ECC_SCALAR, and a
    // quote of PCRs 0, 7 and 16 (extended once) by an AK the TPM made, over QUOTE_EXTRA.
    const NAME: &str = "000b404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
    const CREDENTIAL: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    const RSA_PKCS8: &str = concat!(
        "308204bc020100300d06092a864886f70d0101010500048204a6308204a20201000282010100ba81",
        "d1d0ff7449b7953c3b0d5ece93028954459665c496cf2bc4283efbd88ac0f587469ad7de613f6068",
        "ccb44a3fe42e30949eb84fbbd1fd7e6c2a23bc88e5ffb8e5590a11da1ac07f9376d0258979b41a68",
        "47afe7cf5d727dd2900a8c3683f276668a6bc74f8ea51d79d4e278bc52ad21467b2784792d322a04",
        "7629857e2b8328a1bb09fa870c5dac566653b94fc1b2d0995a8e7160402927efa3e5a76b13b703c1",
        "af77ce0213b04c8868ba90b6e0317374ee8c1f402878ae1318223d8e2ecd58bc4460032ba96bd1df",
        "bc33e6deec6b0fa688ebde509a46834eaefefc7a58359192c81d575d8b6cf1729440415428243c03",
        "02bc82499b6155ba0ff6797512150203010001028201002b3ec6c3cb37cf8ffdce8572c834e5e984",
        "a641ac69d4779379f675ce84dee4ed7100f8e21683bdd0d02dfca9213e474e5e7d57802d1cc3c81f",
        "743d21242a2a0a6d78e07871433d48bd4c1814935f9914a5bae0446d5fabaf4c757268bfb2344e18",
        "1e16a27f08776ed9b2d225e110e9aab338807ddd3dabb921fcfed909d7038774a10ef2ec08cbd159",
        "cb91d7cf96e0bc9db8ccfa008071e6177ca337f368ca2e7d481b383597faf986698fd331d6738314",
        "56985c60686aab146d47e7cc4f23c317dee7992456d1ba9bd557cebe1b877310bf18261dc4193160",
        "f5242e526f91ff96a66bb948445132e0058369c0ced048dafcfe3b59a0bc88256db85dfab47fd102",
        "818100d796f0007677834fd2870d0615ae816d31f55ae893fb461e5abbac88141312ed8f755557a4",
        "3915b06994a75bc31eb428b98cd887fee3650946994806da17e67c42e44149fae1d84dbc2b2ee473",
        "9f2080d324ff61838dd82c76b1908098efe66f2b3f3f155d9f7a5fc2df582abc189cbff4a3ee7d1b",
        "6ebbde93cf48d5a6ecadab02818100dd775bfc30c6b1845b1bc5556e8d3b5c7d53f73eabf58c0677",
        "2c1a993c44b42e5724c9b637eeda8771b1015fda6ffcb4063a154acd31c95fa6ad8f54a9c3817d6e",
        "7d857a3c94a5e620c1e68736b2bb28d5b4ab140f403faf45fbfac9bff6750611968b650936dd83c2",
        "d1710fdb3531198f4f05483b52727711107bdce9abff3f02818070a0fc1561cea21d4b811e7eb549",
        "0b78be86cdcd7fb1e039ef70e87bd6f0f80c7fcbee9ff0bd99e525e371637116534c8b5357b404a7",
        "4b9b82f4853a7f29c951d5a865ab7e940a6ae2093560483f33bdd99114921f26356f553b02a10c45",
        "187faf7a453ca642b0ade2a2c7eedb818832885e3433cbe717e2fa196a95a3b5362d028180153707",
        "e2c2b165f3edde5d2aefea2b939295e68b6461a3464348404c098ff34ab5225b084f975bebb9a261",
        "25538182cda40310631800faef64c21f86d6b459c5303e69f8e9b0bbabaddba53fb2a7b0721af6b1",
        "a4bc4945507efdc26a6d2f28caaa08a7d5c7ea2f921da97e912c488e298aa6e134a82a1fb8f43386",
        "0a05806a750281802cef3bf5a6ddcf19134dc7fa9a3a99e7c9894710f670638ae743483b503ac24a",
        "2405c8f32cdcd353c38d3c71ff199e2961906eb07686147fcdf65d989a044c40545fe494c8eb8b03",
        "e954253473b430443e14b08dc7a74a1e687bed5ff46ab77ac50c4c62b4288f6bc91a7c1dd9ab604f",
        "118b9e1bfe271da044cca5811f6df3cc",
    );
    const ECC_SCALAR: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    const RSA_EK_PUBLIC: &str = concat!(
        "0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b3314",
        "69aa00060080004300100800000000000100ba81d1d0ff7449b7953c3b0d5ece93028954459665c4",
        "96cf2bc4283efbd88ac0f587469ad7de613f6068ccb44a3fe42e30949eb84fbbd1fd7e6c2a23bc88",
        "e5ffb8e5590a11da1ac07f9376d0258979b41a6847afe7cf5d727dd2900a8c3683f276668a6bc74f",
        "8ea51d79d4e278bc52ad21467b2784792d322a047629857e2b8328a1bb09fa870c5dac566653b94f",
        "c1b2d0995a8e7160402927efa3e5a76b13b703c1af77ce0213b04c8868ba90b6e0317374ee8c1f40",
        "2878ae1318223d8e2ecd58bc4460032ba96bd1dfbc33e6deec6b0fa688ebde509a46834eaefefc7a",
        "58359192c81d575d8b6cf1729440415428243c0302bc82499b6155ba0ff679751215",
    );
    const RSA_ID_OBJECT: &str = concat!(
        "0020a4fb6454a637129cf6a61c4a64cd5c0eb3b5278dcb1644b23501b03aa147b2b22683b504fe4b",
        "bceae86dd7ec7688dda33038db223fe821727ec40749373dd8daf28d",
    );
    const RSA_ENCRYPTED_SECRET: &str = concat!(
        "1982d22aa64a9ec97a0fb96beba4b77347baac3bfaabd62431aaa968ab781cd3711df3e04730f5cf",
        "5dcecff04c8cd608c9d4331992f0e43b80fc60940d8f4fa1668fa27e66122edd7a9c2a6331010bb8",
        "b7ad7226cf94d7dab694ae4b91b9975cd180bf5a617c046f89fc8befdd4d4ec40d7e1e44b6d81236",
        "864e0ff02159a4a1d814208a5d6fe8672a7cc97f6c770336452bc6d4e04bdb092926749d744e4ea2",
        "4af876e8edc72de51f6318946408a27763a93acd89cb8dc98c99c87cd7a5b5ca65d100c59735032b",
        "4424e0b2b27a940f1530e98b60d6302a91b468db0ff0054e1e65f308f8c8d56701a27c2abd302967",
        "cf95ee68c4e3d58df83e2acb30cd079f",
    );
    const ECC_EK_PUBLIC: &str = concat!(
        "0023000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b3314",
        "69aa0006008000430010000300100020f68b1de0f5ce686192f4bd0fd34163863f2e89d385f8bcfb",
        "85979533a57ac9b000204f022ab6b096c8bf42804d8e67d38b3f88866980cc903f68fde9d2e143d9",
        "3267",
    );
    const ECC_ID_OBJECT: &str = concat!(
        "00206b18e830e5688e024acbf7275726b260db8da7350cb6e505a57d4399601bc77a10af05777b2d",
        "4782d8f2fa99ec08ff169adcb560b44a9eb004d8ab64c8ea264dd8fb",
    );
    const ECC_ENCRYPTED_SECRET: &str = concat!(
        "002011468660c256299fac4752c3c8944663f78d43d40007ab8c8933d980e6356d7c0020c72ed510",
        "876e4cf7b022afea3cc3f03b2fd1f6c9d446644f9bcb5eb1bc99e2b4",
    );
    const AK_PUBLIC: &str = concat!(
        "0023000b00050072000000100018000b000300100020c42136c2ba5e00a580436fc27d8eec8253be",
        "e75fa806904247436b4d3a7fc32f002031116d2defde2723b6aa4656cc3effbdacece29d6d1a786f",
        "b7d6dc98622efeda",
    );
    const QUOTE_EXTRA: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const QUOTE: &str = concat!(
        "ff54434780180022000b4032bce997e6323fac8e685d04b266219f5834bfe706aad52066fd1814ed",
        "4fb70020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000",
        "0000021d000000020000000001201910230016363600000001000b03810001002096b73474e3976d",
        "d3cce1e77d0f33d2f7ddacb7ab4d88b7abb82d0e043c872428",
    );
    const QUOTE_SIGNATURE: &str = concat!(
        "0018000b0020620f6ddc7b23282c950c3fa2c92628bd10529c572eec6319a3d2e8ef3b1d9be50020",
        "1ee6807fee073a1dd8e00917b7b430483fe162367986a72abeebf5dfcfdec44d",
    );
    // PCR 0: 0000000000000000000000000000000000000000000000000000000000000000
    // PCR 7: 0000000000000000000000000000000000000000000000000000000000000000
    // PCR 16: c5ff41e6ec2cebf49c66898f8b75980f33ccf24591d0b5482db804749963ca34

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn quote_pcrs() -> Vec<(u8, Vec<u8>)> {
        vec![
            (0, vec![0; 32]),
            (7, vec![0; 32]),
            (
                16,
                unhex("c5ff41e6ec2cebf49c66898f8b75980f33ccf24591d0b5482db804749963ca34"),
            ),
        ]
    }

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;
    const BINDING: [u8; BINDING_BYTES] = [0x42; BINDING_BYTES];

    fn now() -> UnixTime {
        UnixTime::from_secs(NOW)
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    fn rsa_private() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::from_pkcs8_der(&unhex(RSA_PKCS8)).expect("RSA key")
    }

    fn ecc_private() -> p256::NonZeroScalar {
        let bytes: [u8; 32] = unhex(ECC_SCALAR).try_into().expect("32 bytes");
        Option::from(p256::NonZeroScalar::from_repr(bytes.into())).expect("scalar")
    }

    /// The TPM's side of ActivateCredential, in software: recover the seed with the EK's private
    /// key, check the outer HMAC, decrypt the credential.
    fn activate(
        ek_public: &[u8],
        name: &[u8],
        made: &MadeCredential,
    ) -> Result<Vec<u8>, &'static str> {
        let seed = recover_seed(ek_public, &made.encrypted_secret)?;
        unprotect(&seed, name, &made.id_object)
    }

    fn recover_seed(ek_public: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>, &'static str> {
        let ek = EkPublic::parse(ek_public).expect("EK");
        match &ek.key {
            EkKey::Rsa { .. } => rsa_private()
                .decrypt(
                    rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0"),
                    encrypted_secret,
                )
                .map_err(|_| "OAEP"),
            EkKey::P256(point) => {
                let mut r = Reader::new(encrypted_secret, "secret");
                let (x, y) = (r.tpm2b().map_err(|_| "x")?, r.tpm2b().map_err(|_| "y")?);
                r.end().map_err(|_| "trailing")?;
                let qe = p256_point(x, y).ok_or("point")?;
                let shared = (qe.to_projective() * *ecc_private()).to_affine();
                let shared = uncompressed(&shared).ok_or("identity")?;
                let ek_sec1 = uncompressed(point.as_affine()).ok_or("identity")?;
                Ok(kdfe(&shared[1..33], IDENTITY, x, &ek_sec1[1..33], 256))
            }
        }
    }

    fn unprotect(seed: &[u8], name: &[u8], id_object: &[u8]) -> Result<Vec<u8>, &'static str> {
        let mut r = Reader::new(id_object, "id object");
        let outer = r.tpm2b().map_err(|_| "hmac")?;
        let enc = r.buf.to_vec();
        let hmac_key = kdfa(seed, INTEGRITY, &[], &[], 256);
        let mut msg = enc.clone();
        msg.extend_from_slice(name);
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key), &msg, outer)
            .map_err(|_| "integrity")?;
        let mut plain = enc;
        aes128_cfb_decrypt(&kdfa(seed, STORAGE, name, &[], 128), &mut plain);
        let mut r = Reader::new(&plain, "credential");
        let credential = r.tpm2b().map_err(|_| "credential")?.to_vec();
        r.end().map_err(|_| "trailing")?;
        Ok(credential)
    }

    #[test]
    fn known_answers_of_swtpm_make_credential() {
        for (ek_public, id_object, secret) in [
            (RSA_EK_PUBLIC, RSA_ID_OBJECT, RSA_ENCRYPTED_SECRET),
            (ECC_EK_PUBLIC, ECC_ID_OBJECT, ECC_ENCRYPTED_SECRET),
        ] {
            let ek_public = unhex(ek_public);
            let ek = EkPublic::parse(&ek_public).expect("swtpm's EK template parses");
            // Our seed recovery (OAEP label / KDFe inputs) finds the TPM's seed, and our
            // KDFa + AES-CFB + HMAC over it reproduce the TPM's credential blob exactly.
            let seed = recover_seed(&ek_public, &unhex(secret)).expect("seed");
            assert_eq!(seed.len(), 32);
            let ours =
                protect_credential(&seed, &unhex(NAME), &unhex(CREDENTIAL)).expect("protect");
            assert_eq!(hex(&ours), id_object, "{}", ek.algorithm());
            assert_eq!(
                unprotect(&seed, &unhex(NAME), &ours).expect("unprotect"),
                unhex(CREDENTIAL)
            );
        }
    }

    #[test]
    fn make_credential_round_trips_and_is_bound_to_the_name() {
        let mut rng = rng();
        for ek_public in [RSA_EK_PUBLIC, ECC_EK_PUBLIC] {
            let ek_public = unhex(ek_public);
            let ek = EkPublic::parse(&ek_public).expect("EK");
            let name = unhex(NAME);
            for len in [1, 16, 31, 32] {
                let credential: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5c).collect();
                let made = make_credential(&ek, &name, &credential, &mut rng).expect("make");
                assert_eq!(activate(&ek_public, &name, &made), Ok(credential.clone()));
                let mut other = name.clone();
                other[9] ^= 1;
                assert_eq!(activate(&ek_public, &other, &made), Err("integrity"));
            }
            // Fresh seeds: two credentials for the same inputs differ.
            let a = make_credential(&ek, &name, &[1; 32], &mut rng).expect("make");
            let b = make_credential(&ek, &name, &[1; 32], &mut rng).expect("make");
            assert_ne!(a, b);
            assert_eq!(
                make_credential(&ek, &name, &[], &mut rng),
                Err(TpmError::Size("credential", 32))
            );
            assert_eq!(
                make_credential(&ek, &name, &[0; 33], &mut rng),
                Err(TpmError::Size("credential", 32))
            );
        }
    }

    #[test]
    fn known_answer_quote() {
        let ak = AkPublic::parse(&unhex(AK_PUBLIC)).expect("swtpm's AK parses");
        let (quote, signature, extra) = (unhex(QUOTE), unhex(QUOTE_SIGNATURE), unhex(QUOTE_EXTRA));
        let pcrs = quote_pcrs();
        assert_eq!(verify_quote(&ak, &quote, &signature, &extra, &pcrs), Ok(()));
        // The PCR values may come in any order.
        let mut shuffled = pcrs.clone();
        shuffled.reverse();
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &extra, &shuffled),
            Ok(())
        );

        let mut other_extra = extra.clone();
        other_extra[0] ^= 1;
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &other_extra, &pcrs),
            Err(TpmError::WrongNonce)
        );
        let mut changed = pcrs.clone();
        changed[2].1[0] ^= 1;
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &extra, &changed),
            Err(TpmError::PcrMismatch)
        );
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &pcrs[..2]),
            Err(TpmError::BadQuote(_))
        ));
        let mut twice = pcrs.clone();
        twice.push(pcrs[0].clone());
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &twice),
            Err(TpmError::BadQuote(_))
        ));
        let mut short = pcrs.clone();
        short[1].1.pop();
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &short),
            Err(TpmError::BadQuote(_))
        ));
        // Any change to the signed bytes, or to the signature, fails the signature.
        for i in [0, 7, 40, quote.len() - 1] {
            let mut tampered = quote.clone();
            tampered[i] ^= 1;
            assert_eq!(
                verify_quote(&ak, &tampered, &signature, &extra, &pcrs),
                Err(TpmError::BadSignature),
                "byte {i}"
            );
        }
        let mut bad_sig = signature.clone();
        if let Some(b) = bad_sig.last_mut() {
            *b ^= 1;
        }
        assert_eq!(
            verify_quote(&ak, &quote, &bad_sig, &extra, &pcrs),
            Err(TpmError::BadSignature)
        );
        // Another AK.
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        assert_eq!(
            verify_quote(&soft.ak(), &quote, &signature, &extra, &pcrs),
            Err(TpmError::BadSignature)
        );
        // Garbage never panics.
        for len in [0, 1, 10, 71, 72, 73] {
            let junk = vec![0x18; len];
            assert!(verify_quote(&ak, &quote, &junk, &extra, &pcrs).is_err());
            assert!(verify_quote(&ak, &junk, &signature, &extra, &pcrs).is_err());
        }
        assert!(matches!(
            verify_quote(
                &ak,
                &vec![0; TPM_QUOTE_BYTES_MAX + 1],
                &signature,
                &extra,
                &pcrs
            ),
            Err(TpmError::Size(..))
        ));
    }

    #[test]
    fn public_areas_are_checked() {
        let (rsa_ek, ecc_ek, ak) = (unhex(RSA_EK_PUBLIC), unhex(ECC_EK_PUBLIC), unhex(AK_PUBLIC));
        assert_eq!(
            EkPublic::parse(&rsa_ek).expect("rsa").algorithm(),
            "RSA 2048"
        );
        assert_eq!(
            EkPublic::parse(&ecc_ek).expect("ecc").algorithm(),
            "ECC P-256"
        );
        assert!(matches!(
            EkPublic::parse(&ak),
            Err(TpmError::UnsupportedEk(_))
        ));
        assert!(matches!(AkPublic::parse(&rsa_ek), Err(TpmError::BadAk(_))));
        assert!(matches!(AkPublic::parse(&ecc_ek), Err(TpmError::BadAk(_))));
        // The AK name is nameAlg || SHA-256 of the area (the quote's qualifiedSigner is derived
        // from it; the TPM's own name for it is checked by the swtpm test).
        let parsed = AkPublic::parse(&ak).expect("ak");
        assert_eq!(&parsed.name()[..2], &[0x00, 0x0b]);
        assert_eq!(
            &parsed.name()[2..],
            digest::digest(&digest::SHA256, &ak).as_ref()
        );
        for bytes in [&rsa_ek, &ecc_ek, &ak] {
            for cut in [0, 1, 2, 8, bytes.len() / 2, bytes.len() - 1] {
                assert!(EkPublic::parse(&bytes[..cut]).is_err(), "cut {cut}");
                assert!(AkPublic::parse(&bytes[..cut]).is_err(), "cut {cut}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(matches!(
                EkPublic::parse(&trailing),
                Err(TpmError::Malformed(_, "trailing bytes") | TpmError::UnsupportedEk(_))
            ));
        }
        assert!(matches!(
            EkPublic::parse(&vec![0; TPM_PUBLIC_BYTES_MAX + 1]),
            Err(TpmError::Size(..))
        ));
        // Attribute, algorithm and size changes are refused.
        let mut signing_ek = ecc_ek.clone();
        signing_ek[5] |= 0x04; // sign (bit 18)
        assert!(matches!(
            EkPublic::parse(&signing_ek),
            Err(TpmError::UnsupportedEk(_))
        ));
        let mut sha1 = ecc_ek.clone();
        sha1[3] = 0x04;
        assert!(matches!(
            EkPublic::parse(&sha1),
            Err(TpmError::Malformed(..))
        ));
        let mut decrypting_ak = ak.clone();
        decrypting_ak[5] |= 0x02; // decrypt (bit 17)
        assert!(matches!(
            AkPublic::parse(&decrypting_ak),
            Err(TpmError::BadAk(_))
        ));
        let mut movable_ak = ak.clone();
        movable_ak[7] &= !0x02; // fixedTPM (bit 1)
        assert!(matches!(
            AkPublic::parse(&movable_ak),
            Err(TpmError::BadAk(_))
        ));
        let mut off_curve = ecc_ek.clone();
        let last = off_curve.len() - 1;
        off_curve[last] ^= 1;
        assert!(matches!(
            EkPublic::parse(&off_curve),
            Err(TpmError::UnsupportedEk(_))
        ));
    }

    #[test]
    fn spki_and_hash() {
        let ek = EkPublic::parse(&unhex(RSA_EK_PUBLIC)).expect("rsa");
        use rsa::pkcs8::EncodePublicKey;
        let expected = rsa_private()
            .to_public_key()
            .to_public_key_der()
            .expect("der");
        assert_eq!(ek.spki_der(), expected.as_bytes());
        assert_eq!(ek.hash(), sha256_hex(expected.as_bytes()));
        let ek = EkPublic::parse(&unhex(ECC_EK_PUBLIC)).expect("ecc");
        let point = p256::PublicKey::from_secret_scalar(&ecc_private());
        let sec1 = uncompressed(point.as_affine()).expect("point");
        assert_eq!(
            ek.spki_der(),
            crate::keys::p256_spki_der(&sec1).expect("spki").as_slice()
        );
        assert_eq!(
            format!("{ek:?}"),
            format!("EkPublic(ECC P-256, {})", ek.hash())
        );
    }

    /// A software model of an agent's TPM: the vector EK (whose private key we know) and an AK
    /// whose key we hold, quoting a chosen set of PCR values.
    struct SoftTpm {
        ek_public: Vec<u8>,
        ak_key: p256::ecdsa::SigningKey,
        ak_public: Vec<u8>,
        pcrs: Vec<(u8, Vec<u8>)>,
    }

    impl SoftTpm {
        fn new(ek_public: &str) -> SoftTpm {
            let ak_key = p256::ecdsa::SigningKey::from_slice(&[0x33; 32]).expect("ak key");
            let point = ak_key.verifying_key().to_sec1_point(false);
            let point = point.as_bytes();
            // AK_PUBLIC's area up to its unique field, then our point.
            let mut ak_public = unhex(AK_PUBLIC)[..20].to_vec();
            push_tpm2b(&mut ak_public, &point[1..33]);
            push_tpm2b(&mut ak_public, &point[33..]);
            SoftTpm {
                ek_public: unhex(ek_public),
                ak_key,
                ak_public,
                pcrs: vec![(0, vec![0; 32]), (7, vec![7; 32])],
            }
        }

        fn ak(&self) -> AkPublic {
            AkPublic::parse(&self.ak_public).expect("soft AK")
        }

        fn quote(&self, extra: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let mut q = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
            q.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
            push_tpm2b(&mut q, self.ak().name());
            push_tpm2b(&mut q, extra);
            q.extend_from_slice(&[0; 17 + 8]);
            q.extend_from_slice(&1u32.to_be_bytes());
            q.extend_from_slice(&alg::SHA256.to_be_bytes());
            let mut bitmap = [0u8; 3];
            for (i, _) in &self.pcrs {
                bitmap[usize::from(*i / 8)] |= 1 << (i % 8);
            }
            q.push(3);
            q.extend_from_slice(&bitmap);
            let mut ctx = digest::Context::new(&digest::SHA256);
            for (_, v) in &self.pcrs {
                ctx.update(v);
            }
            push_tpm2b(&mut q, ctx.finish().as_ref());
            let sig: p256::ecdsa::Signature = self.ak_key.sign(&q);
            let bytes = sig.to_bytes();
            let mut s = alg::ECDSA.to_be_bytes().to_vec();
            s.extend_from_slice(&alg::SHA256.to_be_bytes());
            push_tpm2b(&mut s, &bytes[..32]);
            push_tpm2b(&mut s, &bytes[32..]);
            (q, s)
        }

        /// Answers a challenge like the agent does.
        fn answer(
            &self,
            challenge: &Challenge,
            binding: &[u8; BINDING_BYTES],
            public_key_der: &[u8],
        ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
            let secret = activate(&self.ek_public, self.ak().name(), &challenge.credential)
                .expect("activate");
            let (quote, signature) =
                self.quote(&qualifying_data(&challenge.token, binding, public_key_der));
            (secret, quote, signature)
        }
    }

    const SVID_KEY: &[u8] = &[0x30, 0x59, 1, 2, 3];

    fn allow(ek_public: &str) -> EkPolicy {
        let ek = EkPublic::parse(&unhex(ek_public)).expect("EK");
        EkPolicy {
            cas: vec![],
            ek_hashes: [ek.hash()].into(),
        }
    }

    /// Runs begin + finish through a SoftTpm, letting `tweak` change the evidence.
    fn attest_with(
        soft: &SoftTpm,
        policy: &EkPolicy,
        ek_cert: Option<&[u8]>,
        tweak: impl FnOnce(
            &mut Vec<u8>,
            &mut Vec<u8>,
            &mut Vec<u8>,
            &mut UnixTime,
            &mut [u8; BINDING_BYTES],
        ),
    ) -> Result<TpmIdentity, TpmError> {
        let challenger = Challenger::new(&mut rng());
        let challenge = challenger.begin(
            policy,
            &soft.ek_public,
            ek_cert,
            &soft.ak_public,
            &BINDING,
            now(),
            &mut rng(),
        )?;
        let (mut secret, mut quote, mut signature) = soft.answer(&challenge, &BINDING, SVID_KEY);
        let mut token = challenge.token.clone();
        let mut at = UnixTime::from_secs(NOW + 5);
        let mut binding = BINDING;
        tweak(&mut secret, &mut token, &mut quote, &mut at, &mut binding);
        let _ = &mut signature;
        challenger.finish(
            policy,
            &Evidence {
                ek_public: &soft.ek_public,
                ek_cert,
                ak_public: &soft.ak_public,
                token: &token,
                activated_secret: &secret,
                quote: &quote,
                signature: &signature,
                pcrs: &soft.pcrs,
                public_key_der: SVID_KEY,
            },
            &binding,
            at,
        )
    }

    #[test]
    fn a_full_attestation_and_its_selectors() {
        for ek in [RSA_EK_PUBLIC, ECC_EK_PUBLIC] {
            let soft = SoftTpm::new(ek);
            let id = attest_with(&soft, &allow(ek), None, |_, _, _, _, _| {}).expect("attested");
            let hash = EkPublic::parse(&soft.ek_public).expect("EK").hash();
            assert_eq!(id.ek_hash, hash);
            let shown: Vec<String> = id.selectors.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                shown,
                vec![
                    format!("tpm:ek_hash:{hash}"),
                    format!("tpm:pcr:0:{}", "00".repeat(32)),
                    format!("tpm:pcr:7:{}", "07".repeat(32)),
                ]
            );
        }
    }

    #[test]
    fn tokens_bind_time_connection_keys_and_server() {
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        let policy = allow(ECC_EK_PUBLIC);
        // Expired.
        assert_eq!(
            attest_with(&soft, &policy, None, |_, _, _, at, _| {
                *at = UnixTime::from_secs(NOW + CHALLENGE_TTL_SECS + 1)
            }),
            Err(TpmError::Expired)
        );
        // On another connection (a relayed or replayed answer).
        assert_eq!(
            attest_with(&soft, &policy, None, |_, _, _, _, b| b[0] ^= 1),
            Err(TpmError::BadToken)
        );
        // A tampered token (e.g. a later expiry).
        for i in [0, 3, 12, TOKEN_BYTES - 1] {
            assert_eq!(
                attest_with(&soft, &policy, None, |_, t, _, _, _| t[i] ^= 1),
                Err(TpmError::BadToken),
                "byte {i}"
            );
        }
        assert_eq!(
            attest_with(&soft, &policy, None, |_, t, _, _, _| t.truncate(20)),
            Err(TpmError::BadToken)
        );
        // Another server node (another challenger key).
        let challenge = Challenger::new(&mut rng())
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        let (secret, quote, signature) = soft.answer(&challenge, &BINDING, SVID_KEY);
        let elsewhere = Challenger::new(&mut ChaCha20Rng::seed_from_u64(99));
        let evidence = Evidence {
            ek_public: &soft.ek_public,
            ek_cert: None,
            ak_public: &soft.ak_public,
            token: &challenge.token,
            activated_secret: &secret,
            quote: &quote,
            signature: &signature,
            pcrs: &soft.pcrs,
            public_key_der: SVID_KEY,
        };
        assert_eq!(
            elsewhere.finish(&policy, &evidence, &BINDING, now()),
            Err(TpmError::BadToken)
        );
        // Another AK than the one the credential was made for.
        let other = SoftTpm {
            ak_key: p256::ecdsa::SigningKey::from_slice(&[0x44; 32]).expect("key"),
            ..SoftTpm::new(ECC_EK_PUBLIC)
        };
        let other_ak = {
            let point = other.ak_key.verifying_key().to_sec1_point(false);
            let mut a = unhex(AK_PUBLIC)[..20].to_vec();
            push_tpm2b(&mut a, &point.as_bytes()[1..33]);
            push_tpm2b(&mut a, &point.as_bytes()[33..]);
            a
        };
        let swapped = Evidence {
            ak_public: &other_ak,
            ..evidence
        };
        let challenger = Challenger::new(&mut rng());
        assert_eq!(
            challenger.finish(&policy, &swapped, &BINDING, now()),
            Err(TpmError::BadToken)
        );
    }

    #[test]
    fn credential_and_quote_must_answer_this_challenge() {
        let soft = SoftTpm::new(RSA_EK_PUBLIC);
        let policy = allow(RSA_EK_PUBLIC);
        // A wrong activated credential (the AK is not in the EK's TPM).
        assert_eq!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s[0] ^= 1),
            Err(TpmError::WrongCredential)
        );
        assert_eq!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s.truncate(16)),
            Err(TpmError::WrongCredential)
        );
        assert!(matches!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s.clear()),
            Err(TpmError::Size(..))
        ));
        // An old quote (for another token), replayed with a fresh token.
        let challenger = Challenger::new(&mut rng());
        let first = challenger
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        let (_, old_quote, old_signature) = soft.answer(&first, &BINDING, SVID_KEY);
        let second = challenger
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut ChaCha20Rng::seed_from_u64(3),
            )
            .expect("begin");
        assert_ne!(first.token, second.token);
        let (secret, _, _) = soft.answer(&second, &BINDING, SVID_KEY);
        let replay = Evidence {
            ek_public: &soft.ek_public,
            ek_cert: None,
            ak_public: &soft.ak_public,
            token: &second.token,
            activated_secret: &secret,
            quote: &old_quote,
            signature: &old_signature,
            pcrs: &soft.pcrs,
            public_key_der: SVID_KEY,
        };
        assert_eq!(
            challenger.finish(&policy, &replay, &BINDING, now()),
            Err(TpmError::WrongNonce)
        );
        // A quote for another SVID key.
        let (secret, quote, signature) = soft.answer(&second, &BINDING, &[0x30, 9]);
        let other_key = Evidence {
            activated_secret: &secret,
            quote: &quote,
            signature: &signature,
            ..replay
        };
        assert_eq!(
            challenger.finish(&policy, &other_key, &BINDING, now()),
            Err(TpmError::WrongNonce)
        );
        // PCR values other than the quoted ones.
        let lying = Evidence {
            pcrs: &[(0, vec![0; 32]), (7, vec![8; 32])],
            ..other_key
        };
        assert!(challenger.finish(&policy, &lying, &BINDING, now()).is_err());
    }

    /// An EK certificate for `ek_public` signed by `ca`, made with rcgen.
    struct EkKeyData(Vec<u8>, &'static SignatureAlgorithm);

    impl PublicKeyData for EkKeyData {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static SignatureAlgorithm {
            self.1
        }
    }

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        der: Vec<u8>,
    }

    fn ca(name: &str, not_after: u64) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp((NOW - DAY) as i64).expect("t");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after as i64).expect("t");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let der = params.self_signed(&key).expect("ca").der().to_vec();
        Ca { params, key, der }
    }

    fn ek_cert(ek_public: &str, ca: &Ca) -> Vec<u8> {
        let ek = EkPublic::parse(&unhex(ek_public)).expect("EK");
        let data = match &ek.key {
            EkKey::Rsa { .. } => {
                // The subjectPublicKey of the SPKI: skip to the BIT STRING's contents.
                let spki = ek.spki_der();
                let at = spki.len() - 270;
                EkKeyData(spki[at..].to_vec(), &PKCS_RSA_SHA256)
            }
            EkKey::P256(p) => EkKeyData(
                uncompressed(p.as_affine()).expect("point").to_vec(),
                &PKCS_ECDSA_P256_SHA256,
            ),
        };
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp((NOW - DAY) as i64).expect("t");
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp((NOW + 3650 * DAY) as i64).expect("t");
        let issuer = rcgen::Issuer::new(ca.params.clone(), &ca.key);
        params
            .signed_by(&data, &issuer)
            .expect("EK cert")
            .der()
            .to_vec()
    }

    #[test]
    fn ek_certificates_and_allow_lists() {
        let root = ca("TPM Manufacturer Root", NOW + 365 * DAY);
        let stranger = ca("Someone Else", NOW + 365 * DAY);
        for ek_public in [RSA_EK_PUBLIC, ECC_EK_PUBLIC] {
            let soft = SoftTpm::new(ek_public);
            let ek = EkPublic::parse(&soft.ek_public).expect("EK");
            let cert = ek_cert(ek_public, &root);
            let by_ca = EkPolicy {
                cas: vec![root.der.clone()],
                ek_hashes: Default::default(),
            };
            assert_eq!(
                by_ca.check(&ek, Some(&cert), now()),
                Ok(Some("CN=TPM Manufacturer Root".into()))
            );
            let id = attest_with(&soft, &by_ca, Some(&cert), |_, _, _, _, _| {}).expect("attested");
            assert!(id
                .selectors
                .iter()
                .any(|s| s.to_string() == "tpm:ek_cert_issuer:CN=TPM Manufacturer Root"));
            // Not trusted: another CA, no certificate, an expired CA.
            let foreign = ek_cert(ek_public, &stranger);
            assert!(matches!(
                by_ca.check(&ek, Some(&foreign), now()),
                Err(TpmError::UntrustedEk(why)) if why.contains("does not chain") && why.contains(&ek.hash())
            ));
            assert!(matches!(
                by_ca.check(&ek, None, now()),
                Err(TpmError::UntrustedEk(why)) if why.contains("no EK certificate")
            ));
            assert!(matches!(
                attest_with(&soft, &by_ca, None, |_, _, _, _, _| {}),
                Err(TpmError::UntrustedEk(_))
            ));
            let old = ca("Old Root", NOW - 1);
            let old_policy = EkPolicy {
                cas: vec![old.der.clone()],
                ek_hashes: Default::default(),
            };
            assert!(matches!(
                old_policy.check(&ek, Some(&ek_cert(ek_public, &old)), now()),
                Err(TpmError::UntrustedEk(_))
            ));
            // The hash rescues an EK whose certificate does not chain.
            let both = EkPolicy {
                cas: vec![root.der.clone()],
                ek_hashes: [ek.hash()].into(),
            };
            assert_eq!(both.check(&ek, Some(&foreign), now()), Ok(None));
            assert_eq!(both.check(&ek, None, now()), Ok(None));
            // A certificate for another EK is refused outright; garbage too.
            let other = if ek_public == RSA_EK_PUBLIC {
                ECC_EK_PUBLIC
            } else {
                RSA_EK_PUBLIC
            };
            assert_eq!(
                both.check(&ek, Some(&ek_cert(other, &root)), now()),
                Err(TpmError::EkCertMismatch)
            );
            assert!(matches!(
                both.check(&ek, Some(&[0x30, 3, 1, 2, 3]), now()),
                Err(TpmError::Malformed(..))
            ));
            assert!(matches!(
                both.check(&ek, Some(&vec![0x30; TPM_EK_CERT_BYTES_MAX + 1]), now()),
                Err(TpmError::Size(..))
            ));
            assert_eq!(
                EkPolicy::default().check(&ek, Some(&cert), now()),
                Err(TpmError::NoTrust)
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let challenger = Challenger::new(&mut rng());
        assert_eq!(format!("{challenger:?}"), "Challenger(<redacted>)");
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        let challenge = challenger
            .begin(
                &allow(ECC_EK_PUBLIC),
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        assert!(!format!("{challenge:?}").contains(&hex(&challenge.token)));
    }
}
