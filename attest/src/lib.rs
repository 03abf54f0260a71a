//! # attest — sigil's sans-IO identity logic
//!
//! Owns the decisions about identity: the CA keyring (prepare / activate / prune), X.509-SVID and
//! JWT-SVID minting and validation, node-attestation verification (join token, x509pop, TPM
//! quote) and workload selector matching. Wall time arrives as an argument; randomness and keys
//! come through the [`wire::KeySource`] / [`wire::Signer`] seam.
//!
//! Never opens a socket, touches the disk, reads `/proc` or an OS clock. The one OS resource it
//! uses is the CSPRNG inside [`keys::RingKeySource`], the production key source.

#![forbid(unsafe_code)]

pub mod keys;
