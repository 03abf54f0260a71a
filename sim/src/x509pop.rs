//! x509pop in the simulator: an agent CA and one certificate per x509pop agent, made with rcgen
//! over the simulator's seeded keys (RFC 6979 signatures, serials from the public key), so the
//! same seed makes the same certificates. The nodes trust the CA ([`NodeService::with_x509pop_cas`]),
//! and an x509pop agent attests — and attests again, when [`node::actors::agent::AgentCore`]
//! asks — with a proof over the connection's exported keying material, as in production.
//!
//! [`NodeService::with_x509pop_cas`]: node::service::NodeService::with_x509pop_cas

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256,
};
use wire::{KeyAlg, KeySource, SigFormat, Signer};

/// A seeded P-256 key as rcgen's signing key.
struct SeededKey(Box<dyn Signer>);

impl PublicKeyData for SeededKey {
    fn der_bytes(&self) -> &[u8] {
        // The uncompressed point after the SubjectPublicKeyInfo's 26-byte P-256 prefix.
        self.0.public_key_der().get(26..).unwrap_or_default()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for SeededKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0
            .sign(msg, SigFormat::Der)
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// The simulated organisation's agent CA.
pub struct PopCa {
    der: Vec<u8>,
    params: CertificateParams,
    key: SeededKey,
}

impl std::fmt::Debug for PopCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PopCa")
    }
}

/// An x509pop agent's credential: its certificate chain and key.
pub struct PopCredential {
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's key.
    pub key: Box<dyn Signer>,
}

impl std::fmt::Debug for PopCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PopCredential(redacted)")
    }
}

impl PopCa {
    /// A CA with a key from `keys` (valid from 1975 to 4096, rcgen's defaults).
    pub fn new(keys: &dyn KeySource) -> Result<PopCa, String> {
        let key = SeededKey(keys.generate(KeyAlg::EcP256).map_err(|e| e.to_string())?);
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "sim agent CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params
            .self_signed(&key)
            .map_err(|e| format!("x509pop CA: {e}"))?
            .der()
            .to_vec();
        Ok(PopCa { der, params, key })
    }

    /// The CA certificate (DER), for the nodes to trust.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// A certificate for host `name` with a key from `keys`.
    pub fn issue(&self, keys: &dyn KeySource, name: &str) -> Result<PopCredential, String> {
        let key = SeededKey(keys.generate(KeyAlg::EcP256).map_err(|e| e.to_string())?);
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let der = params
            .signed_by(&key, &issuer)
            .map_err(|e| format!("x509pop certificate: {e}"))?
            .der()
            .to_vec();
        Ok(PopCredential {
            chain: vec![der],
            key: key.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::keys::SeededKeySource;
    use wire::{Seed, UnixTime};

    #[test]
    fn certificates_verify_as_x509pop_and_repeat_with_the_seed() {
        let make = || {
            let keys = SeededKeySource::new(Seed::from_u64(8));
            let ca = PopCa::new(&keys).expect("ca");
            let cred = ca.issue(&keys, "host-1").expect("cert");
            (ca, cred)
        };
        let (ca, cred) = make();
        let exporter = [7u8; attest::x509pop::EXPORTER_BYTES];
        let message = attest::x509pop::message(&exporter, b"agent key");
        let signature = cred.key.sign(&message, SigFormat::Der).expect("sign");
        let now = UnixTime::from_secs(1_800_000_000);
        let identity = attest::x509pop::verify(&cred.chain, &[ca.der()], now, &message, &signature)
            .expect("a valid x509pop proof");
        assert_eq!(
            identity.fingerprint,
            attest::x509pop::fingerprint(&cred.chain[0])
        );
        let (again_ca, again) = make();
        assert_eq!(again_ca.der(), ca.der(), "deterministic");
        assert_eq!(again.chain, cred.chain, "deterministic");
    }
}
