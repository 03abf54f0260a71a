//! The endorsement key: [`EkPublic`] (the TCG low-range templates L-1 and L-2, the EK's
//! `SubjectPublicKeyInfo` and hash), matching it with its certificate, and [`EkPolicy`] — the
//! certificate chaining to a manufacturer CA, or the EK hash allow-listed.

use std::collections::BTreeSet;
use std::fmt;

use wire::api::TPM_EK_CERT_BYTES_MAX;
use wire::UnixTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey as CertKey;

use super::marshal::{p256_point, uncompressed, AreaKey, PublicArea};
use super::{alg, attr, sized, TpmError};
use crate::der::{DerWriter, TAG_SEQUENCE};
use crate::sha256_hex;
use crate::x509::{chain_path, check_critical_extensions, check_validity, parse_cert};
use crate::x509pop::ca_rules;

/// The EK's public key.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum EkKey {
    Rsa { modulus: Vec<u8>, exponent: u32 },
    P256(p256::PublicKey),
}

/// A checked endorsement key public area.
#[derive(Clone, PartialEq, Eq)]
pub struct EkPublic {
    pub(super) key: EkKey,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
        SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
    };

    use crate::tpm::soft::{
        attest_with, ecc_private, now, rsa_private, unhex, SoftTpm, DAY, ECC_EK_PUBLIC, NOW,
        RSA_EK_PUBLIC,
    };

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
}
