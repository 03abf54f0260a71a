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
//!
//! **Where things are.**
//! - `mod.rs` (here): the constants, [`alg`] and [`attr`], [`TpmError`] and the size check every
//!   parser starts with;
//! - `marshal.rs`: reading TPM marshalled bytes (`TPM2B_*`, `TPMT_PUBLIC`) and P-256 points;
//! - `ek.rs`: the EK — [`EkPublic`] (the TCG templates, its SPKI and hash), matching it with its
//!   certificate, and [`EkPolicy`] (manufacturer CAs or allow-listed EK hashes);
//! - `credential.rs`: [`make_credential`] — the seed protected to the EK, KDFa/KDFe,
//!   AES-128-CFB and the outer HMAC;
//! - `quote.rs`: the AK ([`AkPublic`]), [`qualifying_data`] and [`verify_quote`] (the
//!   `TPMS_ATTEST`, its signature and the PCR digest);
//! - `challenge.rs`: the exchange — [`Challenger`] (stateless tokens; `begin` checks the first
//!   request, `finish` the [`Evidence`] of the second), [`Challenge`] and [`TpmIdentity`];
//! - `soft.rs` (tests only): the swtpm known-answer vectors and a software TPM that answers
//!   challenges.
//!
//! Unit tests sit in the file of what they test.

mod challenge;
mod credential;
mod ek;
mod marshal;
mod quote;
#[cfg(test)]
mod soft;

pub use challenge::{Challenge, Challenger, Evidence, TpmIdentity};
pub use credential::{make_credential, MadeCredential};
pub use ek::{EkPolicy, EkPublic};
pub use quote::{qualifying_data, verify_quote, AkPublic};

use wire::entry::SELECTORS_PER_ENTRY_MAX;

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
