//! X.509: per-node CA certificates, X.509-SVID minting and X.509-SVID validation.
//!
//! **CA certificates** (X509-SVID.md §3.2, §4): self-signed, `cA=true`, keyUsage critical
//! keyCertSign + cRLSign, URI SAN `spiffe://<td>` (no path), Subject
//! `O=sigil, serialNumber=<certificate serial in hex>` so every key has its own Subject (SPIRE
//! #4585: identical Subjects across many CAs exhaust Go's signature-check budget), and no
//! nameConstraints (rustls-webpki fails closed on URI name constraints).
//!
//! **X.509-SVIDs** (§2–§4): exactly one URI SAN (the SPIFFE ID) followed by the DNS SANs,
//! Subject `O=sigil`, `cA=false`, keyUsage critical digitalSignature + keyEncipherment +
//! keyAgreement, EKU serverAuth + clientAuth, authorityKeyIdentifier = the CA's
//! subjectKeyIdentifier, a random positive 128-bit serial, NotBefore = wall − cushion (never
//! before the CA's NotBefore), NotAfter = min(wall + ttl, CA NotAfter). The TBSCertificate is
//! written directly from a per-CA [`LeafTemplate`] (issuer name, algorithm identifier and the
//! fixed extensions are encoded once per CA), so minting costs one signature plus a few hundred
//! bytes of copying.
//!
//! **Validation** (§5) of a chain against the bundle of the leaf's own trust domain: the leaf has
//! exactly one URI SAN holding a SPIFFE ID with a non-root path, is not a CA, has keyUsage with
//! digitalSignature and without keyCertSign/cRLSign, no unknown critical extension, is valid at
//! `wall`; a path of signatures leads through CA intermediates (if any) to one of the bundle's
//! X.509 authorities, each certificate valid at `wall`.

use std::time::Duration;

use rand_core::RngCore;
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use wire::entry::{check_dns_name, DNS_NAMES_PER_ENTRY_MAX, RESERVED_PATH_PREFIX};
use wire::{
    Authority, AuthorityKey, KeyAlg, RegistrationEntry, SigFormat, Signer, SpiffeId, TrustDomain,
    UnixTime, X509Authority,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::bundle::BundleSource;
use crate::der::{
    DerWriter, TAG_BIT_STRING, TAG_BOOLEAN, TAG_OCTET_STRING, TAG_PRINTABLE_STRING, TAG_SEQUENCE,
    TAG_SET, TAG_UTF8_STRING,
};
use crate::hex;
use crate::keyring::{sealed, KeyMaterial, KeyState, KeyringConfig};
use crate::keys::{jwk_of_spki, p256_point};
use crate::Error;

/// Default NotBefore backdating, for clock skew between signer and validators (SPIRE's
/// `NotBeforeCushion`).
pub const NOT_BEFORE_CUSHION_DEFAULT: Duration = Duration::from_secs(10);
/// Default X.509-SVID lifetime when an entry does not set one.
pub const X509_SVID_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// Largest certificate accepted for validation, in bytes.
pub const CERT_BYTES_MAX: usize = 16 * 1024;
/// Most certificates in a chain presented for validation (leaf and intermediates).
pub const CHAIN_CERTS_MAX: usize = 8;
/// Largest subject public key accepted for minting, in bytes (RSA-8192 fits).
pub const SPKI_BYTES_MAX: usize = 2048;

// Object identifiers, as DER content octets.
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_AT_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
const OID_AT_SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
const OID_CE_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_CE_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_CE_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_CE_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_CE_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
const OID_CE_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_KP_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// `[0] EXPLICIT Version v3`.
const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
/// Context tags inside certificates.
const TAG_EXTENSIONS: u8 = 0xa3;
const TAG_GN_URI: u8 = 0x86;
const TAG_GN_DNS: u8 = 0x82;
const TAG_KEY_ID: u8 = 0x80;

/// Organization in every Subject sigil writes.
const ORGANIZATION: &[u8] = b"sigil";

/// KeyUsage bits (DER named-bit-list: first octet = unused bits, then the bits, MSB = bit 0).
const KU_LEAF: &[u8] = &[0x03, 0xa8]; // digitalSignature, keyEncipherment, keyAgreement
const KU_CA: &[u8] = &[0x01, 0x06]; // keyCertSign, cRLSign

/// Why an X.509-SVID was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Reject {
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// More than [`CHAIN_CERTS_MAX`] certificates.
    #[error("certificate chain is too long")]
    ChainTooLong,
    /// A certificate is larger than [`CERT_BYTES_MAX`].
    #[error("certificate is too large")]
    TooLarge,
    /// A certificate does not parse as one DER X.509 certificate.
    #[error("certificate is malformed")]
    Malformed,
    /// The leaf must have exactly one URI SAN; it has this many.
    #[error("leaf has {0} URI SANs, exactly one is required")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID")]
    NotSpiffeId,
    /// The leaf's SPIFFE ID has no path.
    #[error("leaf SPIFFE ID has no path")]
    RootPath,
    /// The leaf is a CA certificate.
    #[error("leaf has cA=true")]
    LeafIsCa,
    /// The leaf has no keyUsage extension.
    #[error("leaf has no keyUsage")]
    MissingKeyUsage,
    /// The leaf's keyUsage lacks digitalSignature or has keyCertSign/cRLSign.
    #[error("leaf keyUsage must have digitalSignature and neither keyCertSign nor cRLSign")]
    LeafKeyUsage,
    /// A certificate has a critical extension this validator does not understand.
    #[error("unknown critical extension")]
    UnknownCriticalExtension,
    /// A certificate is not yet valid at the validation time.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// A certificate has expired at the validation time.
    #[error("certificate has expired")]
    Expired,
    /// No bundle is known for the leaf's trust domain.
    #[error("no bundle for the SVID's trust domain")]
    NoBundle,
    /// No chain of valid signatures leads to an X.509 authority of the trust domain's bundle.
    #[error("certificate does not chain to the trust domain's bundle")]
    UntrustedChain,
}

/// The parts of every leaf that depend only on the CA, encoded once.
#[derive(Debug, Clone)]
struct LeafTemplate {
    /// `AlgorithmIdentifier` of the CA's signature.
    sig_alg: Vec<u8>,
    /// The CA's Subject, i.e. the leaf's Issuer.
    issuer: Vec<u8>,
    /// The leaf Subject (`O=sigil`).
    subject: Vec<u8>,
    /// basicConstraints, keyUsage, extKeyUsage and authorityKeyIdentifier extensions.
    fixed_extensions: Vec<u8>,
}

/// A node's X.509 CA: its key, its self-signed certificate and the leaf template.
///
/// Signs only while the keyring holds it as the active key ([`KeyState::Active`]): minting with
/// a key in any other state is a bug and panics, in release builds too.
#[derive(Debug)]
pub struct X509Ca {
    signer: Box<dyn Signer>,
    trust_domain: TrustDomain,
    authority: Authority,
    issued_at: UnixTime,
    not_before: UnixTime,
    not_after: UnixTime,
    template: LeafTemplate,
    state: KeyState,
}

/// What to mint: an identity, its DNS names and the subject's public key.
#[derive(Debug, Clone, Copy)]
pub struct X509SvidRequest<'a> {
    /// The SPIFFE ID (the one URI SAN). Must be in the CA's trust domain, with a path.
    pub spiffe_id: &'a SpiffeId,
    /// DNS SANs, at most [`DNS_NAMES_PER_ENTRY_MAX`].
    pub dns_names: &'a [String],
    /// The subject's public key, a DER `SubjectPublicKeyInfo` (P-256/P-384, RSA ≥ 2048, Ed25519).
    pub public_key_der: &'a [u8],
    /// Requested lifetime; NotAfter is capped at the CA's NotAfter.
    pub ttl: Duration,
    /// How far NotBefore is backdated.
    pub not_before_cushion: Duration,
}

/// A minted X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Svid {
    /// The certificate, DER. The chain to present is just this certificate (the CA is a root).
    pub cert_der: Vec<u8>,
    /// The serial number (positive, big-endian).
    pub serial: [u8; 16],
    /// NotBefore, whole seconds.
    pub not_before: UnixTime,
    /// NotAfter, whole seconds.
    pub not_after: UnixTime,
}

/// Lifetime policy for minting from registration entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X509Policy {
    /// Lifetime for entries whose `x509_svid_ttl_secs` is 0.
    pub default_ttl: Duration,
    /// How far NotBefore is backdated.
    pub not_before_cushion: Duration,
}

impl Default for X509Policy {
    fn default() -> X509Policy {
        X509Policy {
            default_ttl: X509_SVID_TTL_DEFAULT,
            not_before_cushion: NOT_BEFORE_CUSHION_DEFAULT,
        }
    }
}

/// Whole seconds of `t`, rounded down.
fn floor_secs(t: UnixTime) -> UnixTime {
    UnixTime::from_secs(t.as_secs())
}

/// The `AlgorithmIdentifier` for signatures made by `alg`.
fn signature_algorithm(alg: KeyAlg) -> Result<Vec<u8>, Error> {
    match alg {
        KeyAlg::EcP256 => {
            let mut w = DerWriter::default();
            // RFC 5758 §3.2: ecdsa-with-SHA256 has absent parameters.
            w.nested(TAG_SEQUENCE, |w| w.oid(OID_ECDSA_SHA256));
            Ok(w.buf)
        }
        _ => Err(Error::UnsupportedAlgorithm),
    }
}

/// Writes a Name of single-valued RDNs `(attribute OID, string tag, value)`.
fn write_name(w: &mut DerWriter, attributes: &[(&[u8], u8, &[u8])]) {
    w.nested(TAG_SEQUENCE, |w| {
        for (oid, tag, value) in attributes {
            w.nested(TAG_SET, |w| {
                w.nested(TAG_SEQUENCE, |w| {
                    w.oid(oid);
                    w.tlv(*tag, value);
                })
            });
        }
    });
}

/// Writes one Extension whose `extnValue` contents `value` writes.
fn write_extension(
    w: &mut DerWriter,
    oid: &[u8],
    critical: bool,
    value: impl FnOnce(&mut DerWriter),
) {
    w.nested(TAG_SEQUENCE, |w| {
        w.oid(oid);
        if critical {
            w.tlv(TAG_BOOLEAN, &[0xff]);
        }
        w.nested(TAG_OCTET_STRING, value);
    });
}

/// A random positive 128-bit serial (never zero).
fn random_serial(rng: &mut (impl RngCore + ?Sized)) -> [u8; 16] {
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    if serial == [0; 16] {
        serial[15] = 1;
    }
    serial
}

/// Wraps a signed TBSCertificate into a Certificate.
fn certificate(tbs: &[u8], sig_alg: &[u8], signature: &[u8]) -> Vec<u8> {
    let body = tbs.len() + sig_alg.len() + signature.len() + 8;
    let mut w = DerWriter::with_capacity(body + 4);
    w.nested(TAG_SEQUENCE, |w| {
        w.raw(tbs);
        w.raw(sig_alg);
        w.bit_string(signature);
    });
    w.buf
}

/// Checks that `der` is one acceptable `SubjectPublicKeyInfo`.
fn check_subject_public_key(der: &[u8]) -> Result<(), Error> {
    if p256_point(der).is_some() {
        return Ok(()); // The common case, recognised by its fixed encoding.
    }
    if der.len() > SPKI_BYTES_MAX {
        return Err(Error::InvalidPublicKey("too large"));
    }
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|_| Error::InvalidPublicKey("not a DER SubjectPublicKeyInfo"))?;
    if !rest.is_empty() {
        return Err(Error::InvalidPublicKey("trailing bytes"));
    }
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p).ok());
        let point = &spki.subject_public_key.data;
        return match curve {
            Some(c) if c == OID_EC_P256 && point.len() == 65 && point[0] == 4 => Ok(()),
            Some(c) if c == OID_NIST_EC_P384 && point.len() == 97 && point[0] == 4 => Ok(()),
            _ => Err(Error::InvalidPublicKey(
                "EC keys must be uncompressed P-256 or P-384",
            )),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
            _ => Err(Error::InvalidPublicKey(
                "RSA keys must have at least 2048 bits",
            )),
        };
    }
    if *alg == OID_SIG_ED25519 && spki.subject_public_key.data.len() == 32 {
        return Ok(());
    }
    Err(Error::InvalidPublicKey("unsupported key type"))
}

impl X509Ca {
    /// Creates a CA for `trust_domain` held by `node_id`: valid from `wall - cushion` to
    /// `wall + ttl`, self-signed with `signer`. It starts [`KeyState::Prepared`] and cannot sign
    /// until a keyring activates it.
    pub fn create(
        signer: Box<dyn Signer>,
        trust_domain: &TrustDomain,
        node_id: u64,
        wall: UnixTime,
        ttl: Duration,
        cushion: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<X509Ca, Error> {
        if ttl < Duration::from_secs(60) {
            return Err(Error::InvalidRequest("a CA must live at least a minute"));
        }
        let sig_alg = signature_algorithm(signer.alg())?;
        let spki = signer.public_key_der().to_vec();
        let point = p256_point(&spki).ok_or(Error::UnsupportedAlgorithm)?;
        let key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, point);
        let serial = random_serial(rng);
        let serial_hex = hex(&serial);
        let not_before = floor_secs(wall.saturating_sub(cushion));
        let not_after = floor_secs(wall.saturating_add(ttl));
        if not_after.as_secs() > crate::der::TIME_SECS_MAX {
            return Err(Error::InvalidRequest("CA lifetime ends after year 9999"));
        }

        let mut name = DerWriter::default();
        write_name(
            &mut name,
            &[
                (OID_AT_ORGANIZATION, TAG_UTF8_STRING, ORGANIZATION),
                (
                    OID_AT_SERIAL_NUMBER,
                    TAG_PRINTABLE_STRING,
                    serial_hex.as_bytes(),
                ),
            ],
        );
        let name = name.buf;
        let td_uri = trust_domain.id();

        let mut tbs = DerWriter::with_capacity(512);
        tbs.nested(TAG_SEQUENCE, |w| {
            w.raw(VERSION_V3);
            w.unsigned_integer(&serial);
            w.raw(&sig_alg);
            w.raw(&name);
            w.nested(TAG_SEQUENCE, |w| {
                // Cannot fail: both bounds are at most TIME_SECS_MAX (checked above).
                let _ = w.time(not_before.as_secs());
                let _ = w.time(not_after.as_secs());
            });
            w.raw(&name);
            w.raw(&spki);
            w.nested(TAG_EXTENSIONS, |w| {
                w.nested(TAG_SEQUENCE, |w| {
                    write_extension(w, OID_CE_BASIC_CONSTRAINTS, true, |w| {
                        w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_BOOLEAN, &[0xff]))
                    });
                    write_extension(w, OID_CE_KEY_USAGE, true, |w| w.tlv(TAG_BIT_STRING, KU_CA));
                    write_extension(w, OID_CE_SUBJECT_KEY_ID, false, |w| {
                        w.tlv(TAG_OCTET_STRING, key_id.as_ref())
                    });
                    write_extension(w, OID_CE_SUBJECT_ALT_NAME, false, |w| {
                        w.nested(TAG_SEQUENCE, |w| {
                            w.tlv(TAG_GN_URI, td_uri.as_str().as_bytes())
                        })
                    });
                });
            });
        });
        let signature = signer.sign(&tbs.buf, SigFormat::Der)?;
        let cert_der = certificate(&tbs.buf, &sig_alg, &signature);

        let mut subject = DerWriter::default();
        write_name(
            &mut subject,
            &[(OID_AT_ORGANIZATION, TAG_UTF8_STRING, ORGANIZATION)],
        );
        let mut fixed = DerWriter::with_capacity(128);
        write_extension(&mut fixed, OID_CE_BASIC_CONSTRAINTS, true, |w| {
            w.nested(TAG_SEQUENCE, |_| {})
        });
        write_extension(&mut fixed, OID_CE_KEY_USAGE, true, |w| {
            w.tlv(TAG_BIT_STRING, KU_LEAF)
        });
        write_extension(&mut fixed, OID_CE_EXT_KEY_USAGE, false, |w| {
            w.nested(TAG_SEQUENCE, |w| {
                w.oid(OID_KP_SERVER_AUTH);
                w.oid(OID_KP_CLIENT_AUTH);
            })
        });
        write_extension(&mut fixed, OID_CE_AUTHORITY_KEY_ID, false, |w| {
            w.nested(TAG_SEQUENCE, |w| w.tlv(TAG_KEY_ID, key_id.as_ref()))
        });

        let id = format!("x509-n{node_id}-{}", &serial_hex[..16]);
        let authority = Authority {
            id,
            node_id,
            key: AuthorityKey::X509(X509Authority {
                cert_der,
                key: jwk_of_spki(&spki)?,
            }),
            not_after,
        };
        authority.validate()?;
        Ok(X509Ca {
            signer,
            trust_domain: trust_domain.clone(),
            authority,
            issued_at: wall,
            not_before,
            not_after,
            template: LeafTemplate {
                sig_alg,
                issuer: name,
                subject: subject.buf,
                fixed_extensions: fixed.buf,
            },
            state: KeyState::Prepared,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        match &self.authority.key {
            AuthorityKey::X509(x) => &x.cert_der,
            AuthorityKey::Jwt(_) => &[],
        }
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA's NotBefore.
    pub fn not_before(&self) -> UnixTime {
        self.not_before
    }

    /// The authority record to publish in the trust bundle.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Mints an X.509-SVID for `req`. Errors for a bad request (foreign trust domain, root ID,
    /// bad DNS name or public key) or an expired CA.
    ///
    /// # Panics
    /// If this CA is not the keyring's active key (a security invariant, checked in release).
    pub fn mint(
        &self,
        req: &X509SvidRequest<'_>,
        wall: UnixTime,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Result<X509Svid, Error> {
        assert!(
            self.state == KeyState::Active,
            "X.509 CA {} must be published and active to sign (state {:?})",
            self.authority.id,
            self.state
        );
        let id = req.spiffe_id;
        if !id.is_member_of(&self.trust_domain) {
            return Err(Error::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if id.is_trust_domain_id() {
            return Err(Error::InvalidRequest(
                "an X.509-SVID's SPIFFE ID must have a path",
            ));
        }
        if req.dns_names.len() > DNS_NAMES_PER_ENTRY_MAX {
            return Err(Error::InvalidRequest("too many DNS names"));
        }
        for name in req.dns_names {
            check_dns_name(name)?;
        }
        check_subject_public_key(req.public_key_der)?;
        if req.ttl.is_zero() {
            return Err(Error::InvalidRequest("ttl must be positive"));
        }
        let not_before =
            floor_secs(wall.saturating_sub(req.not_before_cushion)).max(self.not_before);
        let not_after = floor_secs(wall.saturating_add(req.ttl)).min(self.not_after);
        if wall >= self.not_after || not_after <= not_before {
            return Err(Error::AuthorityExpired);
        }
        let serial = random_serial(rng);
        let tbs = self.leaf_tbs(req, &serial, not_before, not_after)?;
        let signature = self.signer.sign(&tbs, SigFormat::Der)?;
        Ok(X509Svid {
            cert_der: certificate(&tbs, &self.template.sig_alg, &signature),
            serial,
            not_before,
            not_after,
        })
    }

    /// Mints the X.509-SVID of a registration entry: its SPIFFE ID, its DNS names, its TTL (or
    /// the policy's default when 0).
    ///
    /// # Panics
    /// As [`X509Ca::mint`].
    pub fn mint_for_entry(
        &self,
        entry: &RegistrationEntry,
        public_key_der: &[u8],
        policy: &X509Policy,
        wall: UnixTime,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Result<X509Svid, Error> {
        if entry.spiffe_id.path().starts_with(RESERVED_PATH_PREFIX) {
            return Err(Error::InvalidRequest(
                "entries cannot claim identities under /sigil/",
            ));
        }
        let ttl = match entry.x509_svid_ttl_secs {
            0 => policy.default_ttl,
            secs => Duration::from_secs(u64::from(secs)),
        };
        let req = X509SvidRequest {
            spiffe_id: &entry.spiffe_id,
            dns_names: &entry.dns_names,
            public_key_der,
            ttl,
            not_before_cushion: policy.not_before_cushion,
        };
        // Security invariant: the one URI SAN is the entry's own SPIFFE ID.
        assert!(
            req.spiffe_id == &entry.spiffe_id,
            "an entry's SVID must carry the entry's SPIFFE ID"
        );
        self.mint(&req, wall, rng)
    }

    /// The TBSCertificate of a leaf, from the template.
    fn leaf_tbs(
        &self,
        req: &X509SvidRequest<'_>,
        serial: &[u8; 16],
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Result<Vec<u8>, Error> {
        let t = &self.template;
        let uri = req.spiffe_id.as_str().as_bytes();
        let dns_bytes: usize = req.dns_names.iter().map(|n| n.len() + 4).sum();
        let capacity = 64
            + t.sig_alg.len()
            + t.issuer.len()
            + t.subject.len()
            + req.public_key_der.len()
            + t.fixed_extensions.len()
            + uri.len()
            + dns_bytes;
        let mut w = DerWriter::with_capacity(capacity);
        let mut times = Ok(());
        w.nested(TAG_SEQUENCE, |w| {
            w.raw(VERSION_V3);
            w.unsigned_integer(serial);
            w.raw(&t.sig_alg);
            w.raw(&t.issuer);
            w.nested(TAG_SEQUENCE, |w| {
                times = w
                    .time(not_before.as_secs())
                    .and_then(|()| w.time(not_after.as_secs()));
            });
            w.raw(&t.subject);
            w.raw(req.public_key_der);
            w.nested(TAG_EXTENSIONS, |w| {
                w.nested(TAG_SEQUENCE, |w| {
                    w.raw(&t.fixed_extensions);
                    write_extension(w, OID_CE_SUBJECT_ALT_NAME, false, |w| {
                        w.nested(TAG_SEQUENCE, |w| {
                            w.tlv(TAG_GN_URI, uri);
                            for name in req.dns_names {
                                w.tlv(TAG_GN_DNS, name.as_bytes());
                            }
                        })
                    });
                })
            });
        });
        times?;
        Ok(w.buf)
    }
}

impl sealed::Sealed for X509Ca {}

impl KeyMaterial for X509Ca {
    const KIND: &'static str = "x509";

    fn create(
        cfg: &KeyringConfig,
        signer: Box<dyn Signer>,
        wall: UnixTime,
        rng: &mut dyn RngCore,
    ) -> Result<X509Ca, Error> {
        X509Ca::create(
            signer,
            &cfg.trust_domain,
            cfg.node_id,
            wall,
            cfg.key_ttl,
            cfg.not_before_cushion,
            rng,
        )
    }

    fn authority(&self) -> &Authority {
        &self.authority
    }

    fn issued_at(&self) -> UnixTime {
        self.issued_at
    }

    fn not_after(&self) -> UnixTime {
        self.not_after
    }

    fn state(&self) -> KeyState {
        self.state
    }

    fn set_state(&mut self, state: KeyState, _: sealed::Token) {
        self.state = state;
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Parses one certificate, the whole input.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, X509Reject> {
    if der.len() > CERT_BYTES_MAX {
        return Err(X509Reject::TooLarge);
    }
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => {
            if cert.signature_algorithm.algorithm != cert.tbs_certificate.signature.algorithm {
                return Err(X509Reject::Malformed);
            }
            Ok(cert)
        }
        _ => Err(X509Reject::Malformed),
    }
}

/// A certificate's `NotAfter` (whole seconds). Parses only; does not validate.
pub fn not_after(der: &[u8]) -> Result<UnixTime, crate::Error> {
    let cert = parse_cert(der).map_err(crate::Error::X509)?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(UnixTime::from_secs(secs))
}

/// A serial number as lowercase hex of its value: big-endian, without leading zero bytes (DER
/// adds one to a serial whose high bit is set; a random serial may start with zeros).
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex(&bytes[start..])
}

/// A leaf certificate's serial ([`serial_hex`]) and `NotAfter`. Parses only; does not validate.
pub fn serial_and_not_after(der: &[u8]) -> Result<(String, UnixTime), crate::Error> {
    let cert = parse_cert(der).map_err(crate::Error::X509)?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((serial_hex(cert.raw_serial()), UnixTime::from_secs(secs)))
}

/// Checks an authority another server node asks to publish (a forwarded
/// `Command::PublishAuthority`): it must be what [`X509Ca::create`] or the JWT keyring makes for
/// node `node_id` of `td`. X.509: a self-signed CA certificate (basic constraints CA, key usage
/// keyCertSign, its signature verifies with its own key), exactly the URI SAN `spiffe://<td>`,
/// a Subject serialNumber equal to its serial (unique per CA, SPIRE #4585), the ID
/// `x509-n<node>-<serial prefix>`, the same `NotAfter` and public key as the record. JWT: the
/// ID `jwt-n<node>-…` and a P-256 key. The text of an error says which rule failed.
pub fn check_node_authority(
    authority: &Authority,
    td: &TrustDomain,
    node_id: u64,
) -> Result<(), String> {
    if authority.node_id != node_id {
        return Err(format!(
            "authority {} belongs to node {}, not to node {node_id} that publishes it",
            authority.id, authority.node_id
        ));
    }
    authority.validate().map_err(|e| e.to_string())?;
    let x509 = match &authority.key {
        AuthorityKey::Jwt(j) => {
            if !authority.id.starts_with(&format!("jwt-n{node_id}-")) {
                return Err(format!(
                    "a JWT authority of node {node_id} is named jwt-n{node_id}-…"
                ));
            }
            return match &j.key {
                wire::PublicJwk::Ec { crv, .. } if crv == "P-256" => Ok(()),
                _ => Err("a JWT authority's key must be an EC P-256 key".into()),
            };
        }
        AuthorityKey::X509(x) => x,
    };
    let cert = parse_cert(&x509.cert_der).map_err(|e| format!("CA certificate: {e}"))?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let can_sign = matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
    if !is_ca || !can_sign {
        return Err("not a CA certificate (basic constraints CA and key usage keyCertSign)".into());
    }
    check_critical_extensions(&cert).map_err(|e| format!("CA certificate: {e}"))?;
    if !signed_by(&cert, &cert) {
        return Err("the CA certificate is not self-signed by its own key".into());
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if uris != [td.id().as_str()] {
        return Err(format!(
            "a CA of trust domain {td} has exactly the URI SAN {}",
            td.id()
        ));
    }
    let serial = serial_hex(cert.raw_serial());
    let subject_serial: Vec<&str> = cert
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .filter_map(|a| a.as_str().ok())
        .collect();
    // The Subject carries the minted 16 bytes in hex; the certificate the same number.
    let [named] = subject_serial.as_slice() else {
        return Err("the CA's Subject must carry exactly one serialNumber".into());
    };
    let named_bytes: Option<Vec<u8>> = (named.len() == 32)
        .then(|| {
            (0..16)
                .map(|i| u8::from_str_radix(named.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    if named_bytes.as_deref().map(serial_hex) != Some(serial) {
        return Err("the CA's Subject serialNumber must be its certificate serial".into());
    }
    let expected_id = format!("x509-n{node_id}-{}", named.get(..16).unwrap_or(""));
    if authority.id != expected_id {
        return Err(format!(
            "authority {} must be named {expected_id} after its node and serial",
            authority.id
        ));
    }
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    if authority.not_after.as_secs() != not_after {
        return Err("the authority's not_after differs from its certificate's".into());
    }
    let spki = cert.public_key().raw;
    if jwk_of_spki(spki).ok().as_ref() != Some(&x509.key) {
        return Err("the authority's key differs from its certificate's".into());
    }
    Ok(())
}

/// Rejects certificates with a critical extension we do not process.
pub(crate) fn check_critical_extensions(cert: &X509Certificate<'_>) -> Result<(), X509Reject> {
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => return Err(X509Reject::Malformed),
            p if ext.critical && p.unsupported() => {
                return Err(X509Reject::UnknownCriticalExtension)
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `wall` is inside the certificate's validity window.
pub(crate) fn check_validity(cert: &X509Certificate<'_>, wall: UnixTime) -> Result<(), X509Reject> {
    let now = i64::try_from(wall.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(X509Reject::NotYetValid);
    }
    if now > validity.not_after.timestamp() {
        return Err(X509Reject::Expired);
    }
    Ok(())
}

/// The ring verification algorithm for a signature algorithm and issuer key.
fn verification_algorithm(
    signature_alg: &Oid<'_>,
    issuer_key: &SubjectPublicKeyInfo<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let key_alg = &issuer_key.algorithm.algorithm;
    if *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = issuer_key
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p).ok())?;
        let (p256, p384) = (curve == OID_EC_P256, curve == OID_NIST_EC_P384);
        return match () {
            _ if *signature_alg == OID_SIG_ECDSA_WITH_SHA256 && p256 => {
                Some(&sig::ECDSA_P256_SHA256_ASN1)
            }
            _ if *signature_alg == OID_SIG_ECDSA_WITH_SHA384 && p256 => {
                Some(&sig::ECDSA_P256_SHA384_ASN1)
            }
            _ if *signature_alg == OID_SIG_ECDSA_WITH_SHA256 && p384 => {
                Some(&sig::ECDSA_P384_SHA256_ASN1)
            }
            _ if *signature_alg == OID_SIG_ECDSA_WITH_SHA384 && p384 => {
                Some(&sig::ECDSA_P384_SHA384_ASN1)
            }
            _ => None,
        };
    }
    if *key_alg == OID_PKCS1_RSAENCRYPTION {
        return match () {
            _ if *signature_alg == OID_PKCS1_SHA256WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA256)
            }
            _ if *signature_alg == OID_PKCS1_SHA384WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA384)
            }
            _ if *signature_alg == OID_PKCS1_SHA512WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA512)
            }
            _ => None,
        };
    }
    if *key_alg == OID_SIG_ED25519 && *signature_alg == OID_SIG_ED25519 {
        return Some(&sig::ED25519);
    }
    None
}

/// Whether `cert` is signed by `issuer` (name chaining and signature).
pub(crate) fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return false;
    }
    let key = issuer.public_key();
    let Some(alg) = verification_algorithm(&cert.signature_algorithm.algorithm, key) else {
        return false;
    };
    UnparsedPublicKey::new(alg, &key.subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

/// Checks the leaf rules of X509-SVID.md §5.2 and returns its SPIFFE ID.
fn leaf_spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, X509Reject> {
    check_critical_extensions(leaf)?;
    let san = leaf
        .subject_alternative_name()
        .map_err(|_| X509Reject::Malformed)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    if uris.len() != 1 {
        return Err(X509Reject::UriSanCount(uris.len()));
    }
    let id: SpiffeId = uris[0].parse().map_err(|_| X509Reject::NotSpiffeId)?;
    if id.is_trust_domain_id() {
        return Err(X509Reject::RootPath);
    }
    let bc = leaf
        .basic_constraints()
        .map_err(|_| X509Reject::Malformed)?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(X509Reject::LeafIsCa);
    }
    let ku = leaf
        .key_usage()
        .map_err(|_| X509Reject::Malformed)?
        .ok_or(X509Reject::MissingKeyUsage)?;
    if !ku.value.digital_signature() || ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(X509Reject::LeafKeyUsage);
    }
    Ok(id)
}

/// Whether an intermediate may sign for `td`: a CA with keyCertSign whose SPIFFE ID, if any, is
/// `td`'s own ID.
fn usable_intermediate(cert: &X509Certificate<'_>, td: &TrustDomain, wall: UnixTime) -> bool {
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let can_sign = matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
    let id_ok = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().all(|n| match n {
            GeneralName::URI(u) => u.parse::<SpiffeId>().is_ok_and(|id| id == td.id()),
            _ => true,
        }),
        Ok(None) => true,
        Err(_) => false,
    };
    is_ca
        && can_sign
        && id_ok
        && check_critical_extensions(cert).is_ok()
        && check_validity(cert, wall).is_ok()
}

/// The SPIFFE ID a leaf certificate claims (its one URI SAN), *not validated*: for error
/// messages only, e.g. to name a peer's trust domain when it is not ours.
pub fn claimed_spiffe_id(leaf_der: &[u8]) -> Result<SpiffeId, Error> {
    Ok(leaf_spiffe_id(&parse_cert(leaf_der)?)?)
}

/// Validates an X.509-SVID chain (`chain[0]` the leaf, then intermediates) at `wall` against the
/// bundle of the leaf's trust domain, and returns the SPIFFE ID.
pub fn validate_x509_svid<C: AsRef<[u8]>>(
    chain: &[C],
    bundles: &(impl BundleSource + ?Sized),
    wall: UnixTime,
) -> Result<SpiffeId, Error> {
    let (leaf_der, rest) = chain.split_first().ok_or(X509Reject::EmptyChain)?;
    if chain.len() > CHAIN_CERTS_MAX {
        return Err(X509Reject::ChainTooLong.into());
    }
    let leaf = parse_cert(leaf_der.as_ref())?;
    let id = leaf_spiffe_id(&leaf)?;
    check_validity(&leaf, wall)?;
    let td = id.trust_domain();
    let bundle = bundles.bundle(&td).ok_or(X509Reject::NoBundle)?;
    let intermediates = rest
        .iter()
        .map(|d| parse_cert(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let roots: Vec<X509Certificate<'_>> = bundle
        .x509_authorities
        .iter()
        .filter_map(|a| parse_cert(&a.cert_der).ok())
        .collect();

    let path = chain_path(
        &leaf,
        &intermediates,
        &roots,
        |cand, _| usable_intermediate(cand, &td, wall),
        |root, _| check_validity(root, wall).is_ok(),
    );
    match path {
        Some(_) => Ok(id),
        None => Err(X509Reject::UntrustedChain.into()),
    }
}

/// A path of signatures from `leaf` through some of `intermediates` (each used at most once) to
/// one of `roots`: the indexes of the intermediates used, leaf side first, and the index of the
/// root. At every step a root that signed the current certificate and passes `usable_root` ends
/// the path; otherwise the first unused intermediate that passes `usable_intermediate` and signed
/// it is taken. Both predicates also get the number of intermediates already below the
/// candidate (for path length constraints). Shared by X.509-SVID validation and x509pop.
pub(crate) fn chain_path(
    leaf: &X509Certificate<'_>,
    intermediates: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    usable_intermediate: impl Fn(&X509Certificate<'_>, usize) -> bool,
    usable_root: impl Fn(&X509Certificate<'_>, usize) -> bool,
) -> Option<(Vec<usize>, usize)> {
    let mut current = leaf;
    let mut path: Vec<usize> = Vec::with_capacity(intermediates.len());
    for _ in 0..=intermediates.len() {
        let below = path.len();
        if let Some(root) = roots
            .iter()
            .position(|root| signed_by(current, root) && usable_root(root, below))
        {
            return Some((path, root));
        }
        let next = intermediates.iter().enumerate().find(|(i, cand)| {
            !path.contains(i) && usable_intermediate(cand, below) && signed_by(current, cand)
        });
        match next {
            Some((i, cand)) => {
                path.push(i);
                current = cand;
            }
            None => break,
        }
    }
    None
}
