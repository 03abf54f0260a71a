//! # attest — sigil's sans-IO identity logic
//!
//! Owns the decisions about identity:
//! - [`keyring`]: the per-node CA keyring state machine (prepare at 1/2 of a key's life, activate
//!   at 5/6 once the next key's publication is confirmed, prune after every SVID the key could
//!   have signed has expired), separately for the X.509 CA key and the JWT key;
//! - [`x509`]: CA certificates (X509-SVID.md §3.2/§4, unique Subject per key) and X.509-SVID
//!   minting from a per-CA template with a hand-written DER encoder, plus leaf validation against
//!   a trust bundle (X509-SVID.md §5);
//! - [`jwt`]: JWT-SVID minting (ES256) and validation (JWT-SVID.md);
//! - [`bundle`]: bundle lookup by trust domain and assembly of the published authorities;
//! - [`keys`]: the production key source (ring) and the simulator's deterministic one (p256,
//!   RFC 6979);
//! - [`x509pop`]: x509pop node attestation — verification of a channel-bound proof of possession
//!   of a certificate's key against CAs trusted for it, and the agent's signing side.
//!
//! - [`tpm`]: TPM 2.0 node attestation, the server's side without a TPM — MakeCredential in
//!   software (RSA-OAEP or ECDH seeds, KDFa/KDFe, AES-128-CFB, the outer HMAC), quote
//!   verification (`TPMS_ATTEST`, ECDSA P-256 AK signatures, PCR digests), the EK trust policy
//!   (manufacturer CAs or allow-listed EK hashes) and stateless, connection-bound challenges.
//!
//! Later: workload selector matching.
//!
//! Wall time arrives as an argument, randomness as a `&mut impl rand_core::RngCore`, keys through
//! the [`wire::KeySource`] / [`wire::Signer`] seam. Security invariants (never sign an ID other
//! than the entry's, never sign with a key that is not published and active) are `assert!`s that
//! hold in release builds; bad input from peers and files is always an [`Error`], never a panic.
//!
//! Never opens a socket, touches the disk, reads `/proc` or an OS clock. The one OS resource it
//! uses is the CSPRNG inside [`keys::RingKeySource`], the production key source (and inside
//! [`x509pop::X509PopKey`], the agent's x509pop signing key). Private keys are
//! never serialized (a sealed-at-rest format for the node's own disk does not exist yet).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub(crate) mod der;
pub mod jwt;
pub mod keyring;
pub mod keys;
pub mod tpm;
pub mod x509;
pub mod x509pop;

pub use bundle::{BundleSource, PublishedAuthorities};
pub use jwt::{JwtKey, JwtReject, JwtSvidClaims, JwtSvidRequest};
pub use keyring::{Action, KeyMaterial, Keyring, KeyringConfig, NodeKeyring};
pub use x509::{X509Ca, X509Reject, X509Svid, X509SvidRequest};
pub use x509pop::{X509PopError, X509PopIdentity, X509PopKey};

use wire::{SpiffeId, TrustDomain};

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `bytes` (join token hashes, fingerprints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Everything that can go wrong in `attest`. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vocabulary type was malformed, or a key operation failed.
    #[error(transparent)]
    Wire(#[from] wire::Error),
    /// A minting request broke a rule (the text says which).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A SPIFFE ID outside the signing authority's trust domain.
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The authority's trust domain.
        trust_domain: TrustDomain,
    },
    /// The subject public key is not an acceptable `SubjectPublicKeyInfo`.
    #[error("invalid subject public key: {0}")]
    InvalidPublicKey(&'static str),
    /// The signing key expires at or before the requested start of validity.
    #[error("the signing authority has expired")]
    AuthorityExpired,
    /// The key algorithm is not supported for this use.
    #[error("unsupported key algorithm")]
    UnsupportedAlgorithm,
    /// An X.509-SVID failed validation.
    #[error("X.509-SVID rejected: {0}")]
    X509(#[from] X509Reject),
    /// A JWT-SVID failed validation.
    #[error("JWT-SVID rejected: {0}")]
    Jwt(#[from] JwtReject),
    /// An x509pop proof (or its key or CA) was refused.
    #[error("x509pop: {0}")]
    X509Pop(#[from] X509PopError),
    /// A TPM attestation (or a step of one) was refused.
    #[error("tpm: {0}")]
    Tpm(#[from] tpm::TpmError),
}
