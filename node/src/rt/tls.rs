//! TLS for the node↔node QUIC transport: the trust store (the current bundle of our trust
//! domain, replaceable as authorities rotate), the node's own TLS identity (replaceable as its
//! SVID rotates), and the SPIFFE-aware certificate verifiers for both sides of mutual TLS.
//!
//! rustls runs on the **ring** provider only, TLS 1.3 only, without session resumption (every
//! connection is verified against the bundle of the moment) and without 0-RTT. A node's endpoint
//! speaks two ALPNs: [`ALPN`] (node↔node Raft traffic; both sides present server SVIDs) and
//! [`wire::api::API_ALPN`] (the node API for agents and joining servers; the client presents an
//! agent SVID, or nothing when its request carries its own credential). Client certificates are
//! therefore optional in the handshake; when one is presented it must be a valid SVID of a
//! server or agent of our trust domain, and the transport refuses a Raft connection whose peer
//! is not a server node.
//!
//! Peer verification: the presented chain goes through [`attest::x509::validate_x509_svid`]
//! (the one X.509-SVID validator of the code base) against the trust store's bundle at the
//! [`wire::Env`] wall time, and the SPIFFE ID must be a server ID of our trust domain,
//! `spiffe://<td>/sigil/server/<u64>` ([`SpiffeId::server_node`]); the number is the peer's
//! [`PeerId`]. A client additionally requires the node ID it dialled. Handshake signatures are
//! checked by [`rustls::crypto::verify_tls13_signature`] with ring's algorithms. SVIDs carry no
//! DNS SAN, so the TLS server name is a fixed [`SERVER_NAME`] and otherwise ignored.
//!
//! The node's private key exists as PKCS#8 only inside [`TlsKey`] (wiped on drop, no `Debug`
//! output of it, never in errors or logs).

use std::fmt;
use std::sync::{Arc, RwLock};

use attest::keys::RingSigner;
use attest::x509::{validate_x509_svid, X509Reject};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use wire::{Bundle, Env, PeerId, Signer, SpiffeId, TrustDomain};
use zeroize::Zeroizing;

/// The ALPN protocol of node↔node traffic.
pub const ALPN: &[u8] = b"sigil/1";
/// The TLS server name every client sends (SVIDs have no DNS SAN; verifiers ignore it).
pub const SERVER_NAME: &str = "sigil";

/// Errors building TLS material. Never contain key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating or loading the node's private key failed.
    #[error("TLS key: {0}")]
    Key(&'static str),
    /// The certificate chain is empty or does not match the key.
    #[error("TLS identity: {0}")]
    Identity(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The ring crypto provider (the only one sigil uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust domain's current bundle, shared by every connection's verifier and replaced as
/// authorities are published and pruned.
pub struct TrustStore {
    current: RwLock<(TrustDomain, Bundle)>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("TrustStore")
            .field("trust_domain", &guard.0.as_str())
            .field("sequence", &guard.1.sequence)
            .field("x509_authorities", &guard.1.x509_authorities.len())
            .finish()
    }
}

impl TrustStore {
    /// A store for `trust_domain` holding `bundle`.
    pub fn new(trust_domain: TrustDomain, bundle: Bundle) -> Arc<TrustStore> {
        Arc::new(TrustStore {
            current: RwLock::new((trust_domain, bundle)),
        })
    }

    /// Replaces the bundle; connections established from now on are verified against it.
    pub fn update(&self, bundle: Bundle) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        guard.1 = bundle;
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The current bundle.
    pub fn bundle(&self) -> Bundle {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Validates a presented chain (leaf first) at `wall` and returns the peer's server node ID.
    pub fn verify_server_peer<C: AsRef<[u8]>>(
        &self,
        chain: &[C],
        wall: wire::UnixTime,
    ) -> Result<PeerId, PeerReject> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let id = validate_x509_svid(chain, &*guard, wall).map_err(PeerReject::Svid)?;
        id.server_node(&guard.0).ok_or(PeerReject::NotAServer(id))
    }

    /// Validates a presented chain (leaf first) at `wall` as a server node's or an agent's SVID
    /// of our trust domain, and returns its SPIFFE ID.
    pub fn verify_member<C: AsRef<[u8]>>(
        &self,
        chain: &[C],
        wall: wire::UnixTime,
    ) -> Result<SpiffeId, PeerReject> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let id = validate_x509_svid(chain, &*guard, wall).map_err(PeerReject::Svid)?;
        let member =
            id.trust_domain() == guard.0 && (id.server_node(&guard.0).is_some() || id.is_agent());
        if member {
            Ok(id)
        } else {
            Err(PeerReject::NotAMember(id))
        }
    }
}

/// Why a peer's certificate was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerReject {
    /// The chain is not a valid X.509-SVID under the current bundle.
    #[error("{0}")]
    Svid(attest::Error),
    /// A valid SVID, but not a server node of our trust domain.
    #[error("{0} is not a server node of this trust domain")]
    NotAServer(SpiffeId),
    /// A valid SVID, but neither a server node nor an agent of our trust domain.
    #[error("{0} is neither a server node nor an agent of this trust domain")]
    NotAMember(SpiffeId),
    /// No trust store to verify against (a deferred verifier never accepts clients).
    #[error("no trust store")]
    NoTrust,
    /// A server node, but not the one dialled.
    #[error("reached node {got}, dialled node {expected}")]
    WrongNode {
        /// The node dialled.
        expected: PeerId,
        /// The node that answered.
        got: PeerId,
    },
}

impl From<PeerReject> for rustls::Error {
    fn from(r: PeerReject) -> rustls::Error {
        let cert = match &r {
            PeerReject::Svid(attest::Error::X509(X509Reject::Expired)) => CertificateError::Expired,
            PeerReject::Svid(attest::Error::X509(X509Reject::NotYetValid)) => {
                CertificateError::NotValidYet
            }
            PeerReject::Svid(attest::Error::X509(
                X509Reject::UntrustedChain | X509Reject::NoBundle,
            )) => CertificateError::UnknownIssuer,
            _ => CertificateError::Other(OtherError(Arc::new(r))),
        };
        rustls::Error::InvalidCertificate(cert)
    }
}

/// The node's own TLS private key (P-256), as PKCS#8 wiped from memory on drop. Its `Debug`
/// shows only a public-key fingerprint.
pub struct TlsKey {
    pkcs8: Zeroizing<Vec<u8>>,
    spki_der: Vec<u8>,
}

impl fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = self.spki_der.len().saturating_sub(6);
        let fp: String = self.spki_der[tail..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "TlsKey(P-256, public …{fp})")
    }
}

impl TlsKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<TlsKey, TlsError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .map_err(|_| TlsError::Key("P-256 key generation failed"))?;
        TlsKey::from_pkcs8(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 P-256 key.
    pub fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<TlsKey, TlsError> {
        let signer =
            RingSigner::from_pkcs8(&pkcs8).map_err(|_| TlsError::Key("not a PKCS#8 P-256 key"))?;
        Ok(TlsKey {
            spki_der: signer.public_key_der().to_vec(),
            pkcs8,
        })
    }

    /// The public key, DER `SubjectPublicKeyInfo` (what a CA mints the SVID for).
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The PKCS#8 document, for writing this key to its 0600 file in the data directory.
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// A signer over this key (e.g. for proof of possession).
    pub fn signer(&self) -> Result<RingSigner, TlsError> {
        RingSigner::from_pkcs8(&self.pkcs8).map_err(|_| TlsError::Key("not a PKCS#8 P-256 key"))
    }

    /// The rustls signing key; the PKCS#8 bytes are only borrowed.
    fn rustls_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>, TlsError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.as_slice()));
        rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|_| TlsError::Key("rustls cannot load the key"))
    }
}

/// A certificate chain (leaf first: the node's X.509-SVID, then any intermediates) with its key,
/// ready for TLS.
#[derive(Clone)]
pub struct NodeIdentity {
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("certificates", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Pairs `chain` (DER, leaf first) with `key`; the leaf must carry `key`'s public key.
    pub fn new(chain: Vec<Vec<u8>>, key: &TlsKey) -> Result<NodeIdentity, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::Identity("empty certificate chain".into()));
        }
        let certs = chain.into_iter().map(CertificateDer::from).collect();
        let certified = CertifiedKey::new(certs, key.rustls_key()?);
        certified
            .keys_match()
            .map_err(|e| TlsError::Identity(format!("certificate does not match key: {e}")))?;
        Ok(NodeIdentity {
            certified: Arc::new(certified),
        })
    }

    /// The chain, DER, leaf first.
    pub fn chain(&self) -> impl Iterator<Item = &[u8]> {
        self.certified.cert.iter().map(|c| c.as_ref())
    }
}

/// The identity presented on new connections, replaceable at runtime (SVID rotation).
pub(crate) struct IdentityCell {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for IdentityCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityCell")
    }
}

impl IdentityCell {
    pub(crate) fn new(identity: &NodeIdentity) -> Arc<IdentityCell> {
        Arc::new(IdentityCell {
            current: RwLock::new(identity.certified.clone()),
        })
    }

    pub(crate) fn set(&self, identity: &NodeIdentity) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = identity.certified.clone();
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for IdentityCell {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for IdentityCell {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies peers of either role: an X.509-SVID of a server node of our trust domain under the
/// current bundle; as a client, also the node dialled.
pub(crate) struct PeerVerifier {
    /// `None`: [`ServerTrust::Pinned`] — any server certificate passes the handshake (its
    /// signature is still checked) and the caller verifies the chain afterwards.
    trust: Option<Arc<TrustStore>>,
    env: Arc<dyn Env>,
    provider: Arc<CryptoProvider>,
    /// As a client: the node we dialled.
    expected: Option<PeerId>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PeerVerifier {
    pub(crate) fn new(
        trust: Arc<TrustStore>,
        env: Arc<dyn Env>,
        provider: Arc<CryptoProvider>,
        expected: Option<PeerId>,
    ) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier {
            trust: Some(trust),
            env,
            provider,
            expected,
        })
    }

    /// A client-side verifier for [`ServerTrust::Pinned`].
    fn deferred(env: Arc<dyn Env>, provider: Arc<CryptoProvider>) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier {
            trust: None,
            env,
            provider,
            expected: None,
        })
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PeerId, PeerReject> {
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        let trust = self.trust.as_ref().ok_or(PeerReject::NoTrust)?;
        let peer = trust.verify_server_peer(&chain, self.env.wall())?;
        match self.expected {
            Some(expected) if expected != peer => Err(PeerReject::WrongNode {
                expected,
                got: peer,
            }),
            _ => Ok(peer),
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.trust.is_none() {
            // Deferred: the caller verifies the chain after the handshake.
            return Ok(ServerCertVerified::assertion());
        }
        match self.verify_chain(end_entity, intermediates) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "refused server certificate");
                Err(e.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Optional: node API callers with a credential in their request present no certificate.
    /// The transport requires a server SVID on Raft connections after the handshake.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        let verified = match &self.trust {
            Some(trust) => trust.verify_member(&chain, self.env.wall()),
            None => Err(PeerReject::NoTrust),
        };
        match verified {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "refused client certificate");
                Err(e.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls server configuration: TLS 1.3, both ALPNs, client certificates optional but
/// verified when presented, the current identity, no resumption, no early data.
pub(crate) fn server_config(
    identity: Arc<IdentityCell>,
    trust: Arc<TrustStore>,
    env: Arc<dyn Env>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = PeerVerifier::new(trust, env, provider.clone(), None);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![ALPN.to_vec(), wire::api::API_ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A rustls client configuration that dials server node `expected` presenting `identity`,
/// verifying it like the transport does (for tools and tests that speak the protocol directly).
pub fn dial_config(
    identity: &NodeIdentity,
    trust: Arc<TrustStore>,
    env: Arc<dyn Env>,
    expected: PeerId,
) -> Result<rustls::ClientConfig, TlsError> {
    client_config(IdentityCell::new(identity), trust, env, expected)
}

/// The rustls client configuration for dialling node `expected`.
pub(crate) fn client_config(
    identity: Arc<IdentityCell>,
    trust: Arc<TrustStore>,
    env: Arc<dyn Env>,
    expected: PeerId,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PeerVerifier::new(trust, env, provider.clone(), Some(expected));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// How a node API client judges the server it reached.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Any server node of the trust store's trust domain, verified against its bundle.
    Bundle(Arc<TrustStore>),
    /// Not yet: the handshake proves only that the server holds the key of the certificate it
    /// presented; the caller must verify that chain (kept by the connection) against a bundle it
    /// trusts — e.g. one fetched over this connection and checked against a pinned hash —
    /// before it sends anything secret.
    Pinned,
}

/// The rustls client configuration of a node API client (ALPN [`wire::api::API_ALPN`]):
/// presenting `identity` when given (an agent SVID), judging the server by `server`.
pub fn api_client_config(
    identity: Option<&NodeIdentity>,
    server: &ServerTrust,
    env: Arc<dyn Env>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = match server {
        ServerTrust::Bundle(trust) => PeerVerifier::new(trust.clone(), env, provider.clone(), None),
        ServerTrust::Pinned => PeerVerifier::deferred(env, provider.clone()),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(IdentityCell::new(identity)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![wire::api::API_ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_debug_shows_no_secret() {
        let key = TlsKey::generate().expect("key");
        let shown = format!("{key:?}");
        assert!(shown.starts_with("TlsKey(P-256"), "{shown}");
        assert!(shown.len() < 40, "{shown}");
        assert!(key.signer().is_ok());
        assert!(NodeIdentity::new(vec![], &key).is_err());
    }
}
