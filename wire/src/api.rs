//! The node API: what agents and joining server nodes ask a server node over QUIC (ALPN
//! [`API_ALPN`]), as opposed to the node↔node Raft traffic (ALPN `sigil/1`).
//!
//! One request per bidirectional stream: the client writes one [`ApiRequest`] frame (the
//! [`crate::codec`] format) and finishes its side; the server answers with length-prefixed
//! [`ApiResponse`] frames — exactly one, except [`ApiRequest::Watch`], which answers with an
//! [`AgentView`] at once and again after every change that affects the agent, until either side
//! closes the stream.
//!
//! Who may ask what is decided by the caller's TLS identity:
//! - anyone (no client certificate): [`ApiRequest::Bundle`], [`ApiRequest::JoinServer`],
//!   [`ApiRequest::AttestJoinToken`] — the secret in the request is the credential —,
//!   [`ApiRequest::AttestX509Pop`], whose credential is a signature bound to the connection, and
//!   TPM attestation: [`ApiRequest::AttestTpmBegin`] then [`ApiRequest::AttestTpmFinish`] on the
//!   same connection (the challenge and the quote are bound to it);
//! - an attested agent (its agent SVID as client certificate): everything else.
//!
//! Private keys never travel: requests carry public keys (DER `SubjectPublicKeyInfo`) and the
//! server answers with certificates.

use serde::{Deserialize, Serialize};

use crate::{Bundle, EntryId, RegistrationEntry, ServerRecord, SpiffeId, TrustDomain, UnixTime};

/// ALPN of the node API.
pub const API_ALPN: &[u8] = b"sigil-api/1";
/// Longest join token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 256;
/// Most X.509-SVIDs one [`ApiRequest::SignX509`] may ask for.
pub const SIGN_BATCH_MAX: usize = 500;
/// Most audiences of one JWT-SVID.
pub const AUDIENCES_MAX: usize = 16;
/// Longest audience, in bytes.
pub const AUDIENCE_BYTES_MAX: usize = 512;
/// Longest public key, in bytes (a 4096-bit RSA SPKI is ~550).
pub const PUBLIC_KEY_BYTES_MAX: usize = 2048;
/// Most certificates in an [`ApiRequest::AttestX509Pop`] chain (the leaf and intermediates).
pub const X509POP_CHAIN_CERTS_MAX: usize = 8;
/// Largest certificate of an [`ApiRequest::AttestX509Pop`] chain, in bytes.
pub const X509POP_CERT_BYTES_MAX: usize = 16 * 1024;
/// Largest request, encoded, from a caller without a client certificate (the bundle, join
/// token, x509pop and TPM attestation): the largest valid one is an x509pop chain of
/// [`X509POP_CHAIN_CERTS_MAX`] certificates of [`X509POP_CERT_BYTES_MAX`] bytes. A server reads
/// no more of such a stream, so unauthenticated memory stays small.
pub const UNAUTHENTICATED_REQUEST_BYTES_MAX: usize = 160 * 1024;
/// Largest x509pop proof-of-possession signature, in bytes (RSA-8192 needs 1024).
pub const X509POP_SIGNATURE_BYTES_MAX: usize = 1024;
/// Largest TPM public area (a marshalled `TPMT_PUBLIC`: the EK's or the AK's), in bytes (an
/// RSA-2048 EK is ~314).
pub const TPM_PUBLIC_BYTES_MAX: usize = 1024;
/// Largest EK certificate (DER, from the TPM's NV), in bytes.
pub const TPM_EK_CERT_BYTES_MAX: usize = 8 * 1024;
/// Largest TPM challenge token, in bytes (the server makes 57-byte ones).
pub const TPM_TOKEN_BYTES_MAX: usize = 128;
/// Largest credential blob (`TPM2B_ID_OBJECT` contents) of a TPM challenge, in bytes.
pub const TPM_CREDENTIAL_BLOB_BYTES_MAX: usize = 256;
/// Largest encrypted seed (`TPM2B_ENCRYPTED_SECRET` contents) of a TPM challenge, in bytes
/// (RSA-4096 needs 512).
pub const TPM_ENCRYPTED_SECRET_BYTES_MAX: usize = 1024;
/// Largest activated credential (the secret `TPM2_ActivateCredential` returned), in bytes.
pub const TPM_SECRET_BYTES_MAX: usize = 64;
/// Largest quote (a marshalled `TPMS_ATTEST`), in bytes.
pub const TPM_QUOTE_BYTES_MAX: usize = 1024;
/// Largest quote signature (a marshalled `TPMT_SIGNATURE`), in bytes.
pub const TPM_SIGNATURE_BYTES_MAX: usize = 1024;
/// Most PCR values one quote may report (a TPM has 24 PCRs).
pub const TPM_PCRS_MAX: usize = 24;
/// Largest PCR value, in bytes (SHA-256 PCRs are 32).
pub const TPM_PCR_VALUE_BYTES_MAX: usize = 64;

/// A request to a server node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// The trust domain's current bundle. Anyone may ask; a newcomer checks it against the
    /// bundle hash it was given out of band before sending a secret.
    Bundle,
    /// Join the cluster as a server node with a single-use server join token.
    JoinServer {
        /// The token text.
        token: String,
        /// The joining node's ID.
        node_id: u64,
        /// Where the other nodes reach it (`host:port`).
        addr: String,
        /// The public key its first server SVID is for.
        public_key_der: Vec<u8>,
    },
    /// Attest an agent with a single-use join token; answers with its agent SVID.
    AttestJoinToken {
        /// The token text.
        token: String,
        /// The public key the agent SVID is for.
        public_key_der: Vec<u8>,
    },
    /// Attest an agent by proof of possession of the private key of an X.509 certificate that
    /// chains to a CA the servers trust for x509pop (repeatable: the same certificate always
    /// yields the same agent ID). The signature covers `attest::x509pop::message` — a value
    /// exported from this very TLS connection and the hash of `public_key_der` — so it cannot
    /// be relayed or replayed on another connection. Answers with the agent SVID.
    AttestX509Pop {
        /// The certificate chain, DER, leaf first, then intermediates: 1 to
        /// [`X509POP_CHAIN_CERTS_MAX`] certificates of at most [`X509POP_CERT_BYTES_MAX`] bytes.
        chain: Vec<Vec<u8>>,
        /// The leaf key's signature over the channel-bound message, at most
        /// [`X509POP_SIGNATURE_BYTES_MAX`] bytes.
        signature: Vec<u8>,
        /// The public key the agent SVID is for.
        public_key_der: Vec<u8>,
    },
    /// Renew the calling agent's SVID for a (new) public key. Agent only.
    RenewAgent {
        /// The public key.
        public_key_der: Vec<u8>,
    },
    /// The calling agent's current view, once. Agent only.
    Sync,
    /// The calling agent's view now and after every change. Agent only.
    Watch,
    /// Sign X.509-SVIDs for entries the calling agent is authorized for. Agent only.
    SignX509 {
        /// At most [`SIGN_BATCH_MAX`].
        requests: Vec<SignX509>,
    },
    /// Mint a JWT-SVID for an entry the calling agent is authorized for. Agent only.
    MintJwt {
        /// The entry.
        entry_id: EntryId,
        /// At least one, at most [`AUDIENCES_MAX`].
        audience: Vec<String>,
    },
    /// TPM attestation, first step: the agent's TPM keys. The server checks that the EK is
    /// trusted and answers with an [`ApiResponse::TpmChallenge`] (a credential only the TPM
    /// holding both keys can activate, and a token), valid on this connection for a minute.
    AttestTpmBegin {
        /// The endorsement key's public area (marshalled `TPMT_PUBLIC`), at most
        /// [`TPM_PUBLIC_BYTES_MAX`] bytes.
        ek_public: Vec<u8>,
        /// The EK certificate (DER) from the TPM's NV, if any, at most [`TPM_EK_CERT_BYTES_MAX`].
        ek_cert: Option<Vec<u8>>,
        /// The attestation key's public area (marshalled `TPMT_PUBLIC`).
        ak_public: Vec<u8>,
    },
    /// TPM attestation, second step (same connection): the activated credential and a quote
    /// whose `extraData` is `attest::tpm::qualifying_data(token, connection, public_key_der)`.
    /// Answers with the agent SVID.
    AttestTpmFinish {
        /// As in [`ApiRequest::AttestTpmBegin`] (the server keeps no state between the steps).
        ek_public: Vec<u8>,
        /// As in [`ApiRequest::AttestTpmBegin`].
        ek_cert: Option<Vec<u8>>,
        /// As in [`ApiRequest::AttestTpmBegin`].
        ak_public: Vec<u8>,
        /// The challenge's token, at most [`TPM_TOKEN_BYTES_MAX`] bytes.
        token: Vec<u8>,
        /// What `TPM2_ActivateCredential` returned, at most [`TPM_SECRET_BYTES_MAX`] bytes.
        activated_secret: Vec<u8>,
        /// The quote (marshalled `TPMS_ATTEST`), at most [`TPM_QUOTE_BYTES_MAX`] bytes.
        quote: Vec<u8>,
        /// Its signature (marshalled `TPMT_SIGNATURE`), at most [`TPM_SIGNATURE_BYTES_MAX`].
        quote_signature: Vec<u8>,
        /// The quoted SHA-256 PCRs: `(index, value)`, at most [`TPM_PCRS_MAX`], values of at
        /// most [`TPM_PCR_VALUE_BYTES_MAX`] bytes.
        pcrs: Vec<(u8, Vec<u8>)>,
        /// The public key the agent SVID is for.
        public_key_der: Vec<u8>,
    },
}

impl ApiRequest {
    /// Checks the limits that do not need state (sizes, counts). The server also checks
    /// everything else.
    pub fn check(&self) -> Result<(), ApiError> {
        let key = |k: &[u8]| {
            if k.is_empty() || k.len() > PUBLIC_KEY_BYTES_MAX {
                Err(ApiError::invalid(format!(
                    "a public key must be 1 to {PUBLIC_KEY_BYTES_MAX} bytes"
                )))
            } else {
                Ok(())
            }
        };
        let token = |t: &str| {
            if t.is_empty() || t.len() > TOKEN_BYTES_MAX {
                Err(ApiError::invalid(format!(
                    "a join token must be 1 to {TOKEN_BYTES_MAX} bytes"
                )))
            } else {
                Ok(())
            }
        };
        match self {
            ApiRequest::Bundle | ApiRequest::Sync | ApiRequest::Watch => Ok(()),
            ApiRequest::JoinServer {
                token: t,
                public_key_der,
                ..
            }
            | ApiRequest::AttestJoinToken {
                token: t,
                public_key_der,
            } => {
                token(t)?;
                key(public_key_der)
            }
            ApiRequest::AttestX509Pop {
                chain,
                signature,
                public_key_der,
            } => {
                if chain.is_empty() || chain.len() > X509POP_CHAIN_CERTS_MAX {
                    return Err(ApiError::invalid(format!(
                        "an x509pop chain must have 1 to {X509POP_CHAIN_CERTS_MAX} certificates"
                    )));
                }
                if chain
                    .iter()
                    .any(|c| c.is_empty() || c.len() > X509POP_CERT_BYTES_MAX)
                {
                    return Err(ApiError::invalid(format!(
                        "an x509pop certificate must be 1 to {X509POP_CERT_BYTES_MAX} bytes"
                    )));
                }
                if signature.is_empty() || signature.len() > X509POP_SIGNATURE_BYTES_MAX {
                    return Err(ApiError::invalid(format!(
                        "an x509pop signature must be 1 to {X509POP_SIGNATURE_BYTES_MAX} bytes"
                    )));
                }
                key(public_key_der)
            }
            ApiRequest::AttestTpmBegin {
                ek_public,
                ek_cert,
                ak_public,
            } => check_tpm_keys(ek_public, ek_cert.as_deref(), ak_public),
            ApiRequest::AttestTpmFinish {
                ek_public,
                ek_cert,
                ak_public,
                token,
                activated_secret,
                quote,
                quote_signature,
                pcrs,
                public_key_der,
            } => {
                check_tpm_keys(ek_public, ek_cert.as_deref(), ak_public)?;
                bytes("a TPM challenge token", token, TPM_TOKEN_BYTES_MAX)?;
                bytes(
                    "an activated credential",
                    activated_secret,
                    TPM_SECRET_BYTES_MAX,
                )?;
                bytes("a TPM quote", quote, TPM_QUOTE_BYTES_MAX)?;
                bytes(
                    "a TPM quote signature",
                    quote_signature,
                    TPM_SIGNATURE_BYTES_MAX,
                )?;
                if pcrs.len() > TPM_PCRS_MAX {
                    return Err(ApiError::invalid(format!(
                        "a TPM quote covers at most {TPM_PCRS_MAX} PCRs"
                    )));
                }
                for (_, value) in pcrs {
                    bytes("a PCR value", value, TPM_PCR_VALUE_BYTES_MAX)?;
                }
                key(public_key_der)
            }
            ApiRequest::RenewAgent { public_key_der } => key(public_key_der),
            ApiRequest::SignX509 { requests } => {
                if requests.is_empty() || requests.len() > SIGN_BATCH_MAX {
                    return Err(ApiError::invalid(format!(
                        "sign 1 to {SIGN_BATCH_MAX} SVIDs per request"
                    )));
                }
                requests.iter().try_for_each(|r| key(&r.public_key_der))
            }
            ApiRequest::MintJwt { audience, .. } => {
                if audience.is_empty() || audience.len() > AUDIENCES_MAX {
                    return Err(ApiError::invalid(format!(
                        "a JWT-SVID needs 1 to {AUDIENCES_MAX} audiences"
                    )));
                }
                if audience
                    .iter()
                    .any(|a| a.is_empty() || a.len() > AUDIENCE_BYTES_MAX)
                {
                    return Err(ApiError::invalid(format!(
                        "an audience must be 1 to {AUDIENCE_BYTES_MAX} bytes"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Whether the request needs an attested agent as caller.
    pub fn needs_agent(&self) -> bool {
        !matches!(
            self,
            ApiRequest::Bundle
                | ApiRequest::JoinServer { .. }
                | ApiRequest::AttestJoinToken { .. }
                | ApiRequest::AttestX509Pop { .. }
                | ApiRequest::AttestTpmBegin { .. }
                | ApiRequest::AttestTpmFinish { .. }
        )
    }
}

/// `what` must be 1 to `max` bytes.
fn bytes(what: &str, value: &[u8], max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::invalid(format!(
            "{what} must be 1 to {max} bytes"
        )));
    }
    Ok(())
}

/// The size limits of the TPM keys both attestation steps carry.
fn check_tpm_keys(
    ek_public: &[u8],
    ek_cert: Option<&[u8]>,
    ak_public: &[u8],
) -> Result<(), ApiError> {
    bytes("an EK public area", ek_public, TPM_PUBLIC_BYTES_MAX)?;
    bytes("an AK public area", ak_public, TPM_PUBLIC_BYTES_MAX)?;
    if let Some(cert) = ek_cert {
        bytes("an EK certificate", cert, TPM_EK_CERT_BYTES_MAX)?;
    }
    Ok(())
}

/// One X.509-SVID to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignX509 {
    /// The entry it is for.
    pub entry_id: EntryId,
    /// The workload's public key (the agent keeps the private half).
    pub public_key_der: Vec<u8>,
}

/// A signed X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedX509 {
    /// The entry it is for.
    pub entry_id: EntryId,
    /// The SPIFFE ID in it.
    pub spiffe_id: SpiffeId,
    /// The certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Its `NotAfter`.
    pub not_after: UnixTime,
}

/// What an agent needs to serve its workloads: the bundles and the entries it is authorized
/// for. Every message carries the whole view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The answering node.
    pub node_id: u64,
    /// Raft index of the state this view was read from.
    pub applied_index: u64,
    /// Our trust domain's bundle.
    pub bundle: Bundle,
    /// Federated trust domains' bundles.
    pub federated: Vec<(TrustDomain, Bundle)>,
    /// Entries the agent may obtain SVIDs for (parented by it, directly or through another
    /// entry it may obtain).
    pub entries: Vec<RegistrationEntry>,
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum ApiResponse {
    /// The bundle.
    Bundle(Bundle),
    /// Welcome to the cluster.
    Joined {
        /// The new node's first server SVID chain (leaf first), from the answering node's CA.
        chain: Vec<Vec<u8>>,
        /// The bundle it verifies against.
        bundle: Bundle,
        /// The server nodes registered now, the new one included.
        servers: Vec<ServerRecord>,
    },
    /// An agent SVID.
    AgentSvid {
        /// The agent's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// The chain, leaf first.
        chain: Vec<Vec<u8>>,
        /// Its `NotAfter`.
        not_after: UnixTime,
        /// The bundle it verifies against.
        bundle: Bundle,
    },
    /// The agent's view.
    View(AgentView),
    /// One result per [`SignX509`], in order.
    X509(Vec<Result<IssuedX509, ApiError>>),
    /// A JWT-SVID.
    Jwt {
        /// The compact JWS.
        token: String,
        /// Its `exp`.
        expires_at: UnixTime,
    },
    /// The request failed.
    Error(ApiError),
    /// The challenge of [`ApiRequest::AttestTpmBegin`].
    TpmChallenge {
        /// `TPM2B_ID_OBJECT` contents for `TPM2_ActivateCredential`, at most
        /// [`TPM_CREDENTIAL_BLOB_BYTES_MAX`] bytes.
        credential_blob: Vec<u8>,
        /// `TPM2B_ENCRYPTED_SECRET` contents, at most [`TPM_ENCRYPTED_SECRET_BYTES_MAX`] bytes.
        encrypted_secret: Vec<u8>,
        /// The token to send back with [`ApiRequest::AttestTpmFinish`].
        token: Vec<u8>,
    },
}

/// Why a request failed (mirrors the gRPC codes the Workload API passes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiCode {
    /// The request is malformed or over a limit.
    InvalidArgument,
    /// The caller has no (valid) identity for this request.
    Unauthenticated,
    /// The caller may not have this.
    PermissionDenied,
    /// The thing asked for does not exist.
    NotFound,
    /// Try again, maybe elsewhere: no quorum, stale replica, no active key yet, overloaded.
    Unavailable,
    /// A bug or an OS failure on the server.
    Internal,
}

/// A failed request: a code and a message for humans (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ApiCode,
    /// What happened.
    pub message: String,
}

impl ApiError {
    /// A failure of kind `code`.
    pub fn new(code: ApiCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// An [`ApiCode::InvalidArgument`] failure.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiCode::InvalidArgument, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn the_largest_unauthenticated_requests_fit_their_limit() {
        let pop = ApiRequest::AttestX509Pop {
            chain: vec![vec![0xff; X509POP_CERT_BYTES_MAX]; X509POP_CHAIN_CERTS_MAX],
            signature: vec![0xff; X509POP_SIGNATURE_BYTES_MAX],
            public_key_der: vec![0xff; PUBLIC_KEY_BYTES_MAX],
        };
        assert!(pop.check().is_ok());
        let tpm = ApiRequest::AttestTpmFinish {
            ek_public: vec![0xff; TPM_PUBLIC_BYTES_MAX],
            ek_cert: Some(vec![0xff; TPM_EK_CERT_BYTES_MAX]),
            ak_public: vec![0xff; TPM_PUBLIC_BYTES_MAX],
            token: vec![0xff; TPM_TOKEN_BYTES_MAX],
            activated_secret: vec![0xff; TPM_SECRET_BYTES_MAX],
            quote: vec![0xff; TPM_QUOTE_BYTES_MAX],
            quote_signature: vec![0xff; TPM_SIGNATURE_BYTES_MAX],
            pcrs: (0..TPM_PCRS_MAX)
                .map(|i| {
                    (
                        u8::try_from(i).unwrap_or(0),
                        vec![0xff; TPM_PCR_VALUE_BYTES_MAX],
                    )
                })
                .collect(),
            public_key_der: vec![0xff; PUBLIC_KEY_BYTES_MAX],
        };
        for request in [pop, tpm] {
            let bytes = codec::encode(&request).expect("encode").len();
            assert!(bytes <= UNAUTHENTICATED_REQUEST_BYTES_MAX, "{bytes}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let key = vec![1u8; 91];
        assert!(ApiRequest::RenewAgent {
            public_key_der: key.clone()
        }
        .check()
        .is_ok());
        assert!(ApiRequest::RenewAgent {
            public_key_der: vec![]
        }
        .check()
        .is_err());
        assert!(ApiRequest::RenewAgent {
            public_key_der: vec![0; PUBLIC_KEY_BYTES_MAX + 1]
        }
        .check()
        .is_err());
        assert!(ApiRequest::AttestJoinToken {
            token: "t".repeat(TOKEN_BYTES_MAX + 1),
            public_key_der: key.clone()
        }
        .check()
        .is_err());
        let sign = |n: usize| ApiRequest::SignX509 {
            requests: (0..n)
                .map(|i| SignX509 {
                    entry_id: EntryId::from_random([u8::try_from(i % 256).unwrap_or(0); 16]),
                    public_key_der: key.clone(),
                })
                .collect(),
        };
        assert!(sign(0).check().is_err());
        assert!(sign(SIGN_BATCH_MAX).check().is_ok());
        assert!(sign(SIGN_BATCH_MAX + 1).check().is_err());
        let jwt = |audience: Vec<String>| ApiRequest::MintJwt {
            entry_id: EntryId::from_random([1; 16]),
            audience,
        };
        assert!(jwt(vec![]).check().is_err());
        assert!(jwt(vec!["a".into()]).check().is_ok());
        assert!(jwt(vec!["".into()]).check().is_err());
        assert!(jwt(vec!["a".into(); AUDIENCES_MAX + 1]).check().is_err());
        assert!(jwt(vec!["a".repeat(AUDIENCE_BYTES_MAX + 1)])
            .check()
            .is_err());
        assert!(!ApiRequest::Bundle.needs_agent());
        assert!(ApiRequest::Watch.needs_agent());
    }

    #[test]
    fn x509pop_limits_are_checked() {
        let pop = |chain: Vec<Vec<u8>>, signature: Vec<u8>, public_key_der: Vec<u8>| {
            ApiRequest::AttestX509Pop {
                chain,
                signature,
                public_key_der,
            }
        };
        let (cert, sig, key) = (vec![0x30; 600], vec![7; 72], vec![1u8; 91]);
        assert!(pop(vec![cert.clone()], sig.clone(), key.clone())
            .check()
            .is_ok());
        let most = pop(
            vec![vec![0x30; X509POP_CERT_BYTES_MAX]; X509POP_CHAIN_CERTS_MAX],
            vec![7; X509POP_SIGNATURE_BYTES_MAX],
            vec![1; PUBLIC_KEY_BYTES_MAX],
        );
        assert!(most.check().is_ok(), "every limit is inclusive");
        assert!(!most.needs_agent(), "anyone may attest");
        for (bad, needle) in [
            (pop(vec![], sig.clone(), key.clone()), "chain"),
            (
                pop(
                    vec![cert.clone(); X509POP_CHAIN_CERTS_MAX + 1],
                    sig.clone(),
                    key.clone(),
                ),
                "chain",
            ),
            (
                pop(
                    vec![cert.clone(), vec![0x30; X509POP_CERT_BYTES_MAX + 1]],
                    sig.clone(),
                    key.clone(),
                ),
                "certificate",
            ),
            (
                pop(vec![cert.clone(), vec![]], sig.clone(), key.clone()),
                "certificate",
            ),
            (pop(vec![cert.clone()], vec![], key.clone()), "signature"),
            (
                pop(
                    vec![cert.clone()],
                    vec![7; X509POP_SIGNATURE_BYTES_MAX + 1],
                    key.clone(),
                ),
                "signature",
            ),
            (pop(vec![cert.clone()], sig.clone(), vec![]), "public key"),
            (
                pop(
                    vec![cert.clone()],
                    sig.clone(),
                    vec![1; PUBLIC_KEY_BYTES_MAX + 1],
                ),
                "public key",
            ),
        ] {
            let err = bad.check().expect_err(needle);
            assert_eq!(err.code, ApiCode::InvalidArgument);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let request = pop(vec![cert.clone(), cert], sig, key);
        let bytes = codec::encode(&request).expect("encode");
        assert_eq!(
            codec::decode::<ApiRequest>(&bytes).expect("decode"),
            request
        );
    }

    #[test]
    fn tpm_limits_are_checked() {
        let finish = |f: &dyn Fn(&mut ApiRequest)| {
            let mut r = ApiRequest::AttestTpmFinish {
                ek_public: vec![1; 314],
                ek_cert: Some(vec![0x30; 1000]),
                ak_public: vec![2; 88],
                token: vec![3; 57],
                activated_secret: vec![4; 32],
                quote: vec![5; 145],
                quote_signature: vec![6; 72],
                pcrs: vec![(0, vec![0; 32]), (7, vec![7; 32])],
                public_key_der: vec![8; 91],
            };
            f(&mut r);
            r
        };
        let ok = finish(&|_| {});
        assert!(ok.check().is_ok());
        assert!(!ok.needs_agent(), "anyone may attest");
        let most = finish(&|r| {
            if let ApiRequest::AttestTpmFinish {
                ek_public,
                ek_cert,
                ak_public,
                token,
                activated_secret,
                quote,
                quote_signature,
                pcrs,
                public_key_der,
            } = r
            {
                *ek_public = vec![1; TPM_PUBLIC_BYTES_MAX];
                *ek_cert = Some(vec![1; TPM_EK_CERT_BYTES_MAX]);
                *ak_public = vec![1; TPM_PUBLIC_BYTES_MAX];
                *token = vec![1; TPM_TOKEN_BYTES_MAX];
                *activated_secret = vec![1; TPM_SECRET_BYTES_MAX];
                *quote = vec![1; TPM_QUOTE_BYTES_MAX];
                *quote_signature = vec![1; TPM_SIGNATURE_BYTES_MAX];
                *pcrs = vec![(0, vec![1; TPM_PCR_VALUE_BYTES_MAX]); TPM_PCRS_MAX];
                *public_key_der = vec![1; PUBLIC_KEY_BYTES_MAX];
            }
        });
        assert!(most.check().is_ok(), "every limit is inclusive");
        type Tweak = fn(&mut ApiRequest);
        let cases: [(Tweak, &str); 14] = [
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { ek_public, .. } = r {
                        ek_public.clear()
                    }
                },
                "EK public",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { ek_public, .. } = r {
                        *ek_public = vec![1; TPM_PUBLIC_BYTES_MAX + 1]
                    }
                },
                "EK public",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { ek_cert, .. } = r {
                        *ek_cert = Some(vec![])
                    }
                },
                "EK certificate",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { ek_cert, .. } = r {
                        *ek_cert = Some(vec![1; TPM_EK_CERT_BYTES_MAX + 1])
                    }
                },
                "EK certificate",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { ak_public, .. } = r {
                        *ak_public = vec![1; TPM_PUBLIC_BYTES_MAX + 1]
                    }
                },
                "AK public",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { token, .. } = r {
                        token.clear()
                    }
                },
                "token",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { token, .. } = r {
                        *token = vec![1; TPM_TOKEN_BYTES_MAX + 1]
                    }
                },
                "token",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish {
                        activated_secret, ..
                    } = r
                    {
                        *activated_secret = vec![1; TPM_SECRET_BYTES_MAX + 1]
                    }
                },
                "activated credential",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { quote, .. } = r {
                        *quote = vec![1; TPM_QUOTE_BYTES_MAX + 1]
                    }
                },
                "quote",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish {
                        quote_signature, ..
                    } = r
                    {
                        quote_signature.clear()
                    }
                },
                "signature",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { pcrs, .. } = r {
                        *pcrs = vec![(0, vec![0; 32]); TPM_PCRS_MAX + 1]
                    }
                },
                "PCRs",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { pcrs, .. } = r {
                        pcrs[0].1 = vec![0; TPM_PCR_VALUE_BYTES_MAX + 1]
                    }
                },
                "PCR value",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { pcrs, .. } = r {
                        pcrs[1].1.clear()
                    }
                },
                "PCR value",
            ),
            (
                |r| {
                    if let ApiRequest::AttestTpmFinish { public_key_der, .. } = r {
                        public_key_der.clear()
                    }
                },
                "public key",
            ),
        ];
        for (tweak, needle) in cases {
            let err = finish(&|r| tweak(r)).check().expect_err(needle);
            assert_eq!(err.code, ApiCode::InvalidArgument);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let begin = ApiRequest::AttestTpmBegin {
            ek_public: vec![1; 314],
            ek_cert: None,
            ak_public: vec![2; 88],
        };
        assert!(begin.check().is_ok());
        assert!(!begin.needs_agent());
        let too_big = ApiRequest::AttestTpmBegin {
            ek_public: vec![1; 314],
            ek_cert: Some(vec![1; TPM_EK_CERT_BYTES_MAX + 1]),
            ak_public: vec![2; 88],
        };
        assert!(too_big.check().is_err());
        for request in [ok, begin] {
            let bytes = codec::encode(&request).expect("encode");
            assert_eq!(
                codec::decode::<ApiRequest>(&bytes).expect("decode"),
                request
            );
        }
        let challenge = ApiResponse::TpmChallenge {
            credential_blob: vec![1; 68],
            encrypted_secret: vec![2; 256],
            token: vec![3; 57],
        };
        let bytes = codec::encode(&challenge).expect("encode");
        assert_eq!(
            codec::decode::<ApiResponse>(&bytes).expect("decode"),
            challenge
        );
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let reqs = [
            ApiRequest::Bundle,
            ApiRequest::JoinServer {
                token: "tok".into(),
                node_id: 2,
                addr: "127.0.0.1:8444".into(),
                public_key_der: vec![3; 91],
            },
            ApiRequest::Watch,
        ];
        for r in reqs {
            let bytes = codec::encode(&r).expect("encode");
            assert_eq!(codec::decode::<ApiRequest>(&bytes).expect("decode"), r);
        }
        let resp = ApiResponse::X509(vec![Err(ApiError::new(ApiCode::PermissionDenied, "no"))]);
        let bytes = codec::encode(&resp).expect("encode");
        assert_eq!(codec::decode::<ApiResponse>(&bytes).expect("decode"), resp);
    }
}
