//! # sigil-fuzz — what the fuzz targets share
//!
//! Owns the deterministic inputs the fuzz targets (`fuzz_targets/`) need besides libFuzzer's
//! bytes: a trust domain's bundle (the attest keyring's seeded X.509 CA and JWT key, plus a fixed
//! P-256 key that signs fuzzer-chosen JWT headers and claims), an x509pop CA and a leaf it
//! issued, TPM public areas of fixed EK and AK keys and quotes signed by that AK, and the
//! framing that splits one fuzz input into several fields. `examples/seeds.rs` writes the seed
//! corpora from the same fixtures, so a seed that verifies here verifies in every target run.
//!
//! Never touches the disk or the network and never reads a clock: keys come from fixed scalars
//! or a seeded key source, time is [`now`]. (rcgen's and ring's ECDSA signatures draw a random
//! nonce; only the validity of those signatures matters, never their bytes.) Fixture building
//! may panic (it is not fed by the fuzzer); everything fed by the fuzzer goes through the code
//! under test, which must not.

#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::time::Duration;

use attest::keys::SeededKeySource;
use attest::tpm::{alg, attr, EkPolicy, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};
use attest::{Action, KeyringConfig, NodeKeyring, PublishedAuthorities};
use attest::{JwtSvidRequest, X509SvidRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::pkcs8::EncodePrivateKey as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use wire::{Bundle, BundleMap, JwtAuthority, PublicJwk, Seed, SpiffeId, TrustDomain, UnixTime};

/// The trust domain of every fixture.
pub const TD: &str = "example.org";
/// The workload the fixture SVIDs are for.
pub const WORKLOAD: &str = "spiffe://example.org/web";
/// The audience the fixture JWT-SVIDs are for (and the one targets validate for).
pub const AUDIENCE: &str = "db";
/// The `kid` of the fixed JWT key that signs fuzzer-chosen tokens.
pub const FUZZ_KID: &str = "fuzz-es256";
/// The JWT header of tokens whose claims the fuzzer chooses.
pub const FUZZ_HEADER: &str = r#"{"alg":"ES256","kid":"fuzz-es256","typ":"JWT"}"#;
/// The claims of tokens whose header the fuzzer chooses.
pub const FUZZ_CLAIMS: &str =
    r#"{"aud":["db"],"exp":1700003600,"iat":1700000000,"sub":"spiffe://example.org/web"}"#;
/// The `extraData` the fixture quotes carry (targets verify quotes against it).
pub const QUOTE_EXTRA: [u8; 32] = [0x5a; 32];
/// The PCRs a fixture quote may select: `(index, SHA-256 bank value)`.
pub const PCR_INDICES: [u8; 3] = [0, 7, 16];
/// The connection binding of the TPM challenge fixtures.
pub const BINDING: [u8; attest::tpm::BINDING_BYTES] = [0x42; attest::tpm::BINDING_BYTES];

/// 2023-11-14T22:13:20Z: every fixture is valid then.
pub fn now() -> UnixTime {
    UnixTime::from_secs(1_700_000_000)
}

fn time_at(secs: u64) -> time::OffsetDateTime {
    let secs = i64::try_from(secs).expect("fixture time fits i64");
    time::OffsetDateTime::from_unix_timestamp(secs).expect("fixture time")
}

fn signing_key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 32]).expect("fixed P-256 scalar")
}

fn point(key: &SigningKey) -> ([u8; 32], [u8; 32]) {
    let encoded = key.verifying_key().as_affine().to_sec1_point(false);
    let bytes = encoded.as_bytes();
    let mut x = [0u8; 32];
    let mut y = [0u8; 32];
    x.copy_from_slice(&bytes[1..33]);
    y.copy_from_slice(&bytes[33..65]);
    (x, y)
}

fn rcgen_key(key: &SigningKey) -> KeyPair {
    let der = key.to_pkcs8_der().expect("PKCS#8 of a fixed key");
    KeyPair::try_from(der.as_bytes()).expect("rcgen key from PKCS#8")
}

/// Splits `data` into fields: the first byte picks how many (1 to `max`), then every field but
/// the last is a big-endian `u16` length and that many bytes; the last field is the rest. Short
/// input gives fewer (possibly empty) fields. The inverse of [`join`].
pub fn split(data: &[u8], max: usize) -> Vec<&[u8]> {
    let Some((&count, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let count = usize::from(count) % max.max(1) + 1;
    let mut fields = Vec::with_capacity(count);
    for _ in 1..count {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (field, tail) = tail.split_at(len);
        fields.push(field);
        rest = tail;
    }
    fields.push(rest);
    fields
}

/// The input [`split`] turns into `fields` (at most 256 fields, each but the last under 64 KiB).
pub fn join<F: AsRef<[u8]>>(fields: &[F]) -> Vec<u8> {
    let mut out = vec![u8::try_from(fields.len().saturating_sub(1)).expect("at most 256 fields")];
    for (i, f) in fields.iter().enumerate() {
        let f = f.as_ref();
        if i + 1 < fields.len() {
            let len = u16::try_from(f.len()).expect("field under 64 KiB");
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

/// Appends a `TPM2B_*`.
fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("TPM2B under 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A marshalled ECC P-256 `TPMT_PUBLIC` with these attributes, symmetric and scheme fields.
fn ecc_public_area(
    key: &SigningKey,
    attributes: u32,
    auth_policy: &[u8],
    symmetric: &[u16],
    scheme: &[u16],
) -> Vec<u8> {
    let (x, y) = point(key);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&alg::ECC.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut out, auth_policy);
    for v in symmetric.iter().chain(scheme) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&alg::NIST_P256.to_be_bytes());
    out.extend_from_slice(&alg::NULL.to_be_bytes()); // kdf
    tpm2b(&mut out, &x);
    tpm2b(&mut out, &y);
    out
}

/// The fixture PCR value of `index`.
pub fn pcr_value(index: u8) -> Vec<u8> {
    vec![index ^ 0xa5; 32]
}

/// The fixture PCRs whose bit is set in `mask` (bit i for `PCR_INDICES[i]`).
pub fn pcrs(mask: u8) -> Vec<(u8, Vec<u8>)> {
    PCR_INDICES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, idx)| (*idx, pcr_value(*idx)))
        .collect()
}

/// A marshalled `TPMS_ATTEST` quote of `pcrs` (SHA-256 bank) carrying `extra`.
pub fn quote(extra: &[u8], pcrs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
    out.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
    tpm2b(&mut out, &[0x11; 34]); // qualifiedSigner
    tpm2b(&mut out, extra);
    out.extend_from_slice(&1_234_567u64.to_be_bytes()); // clock
    out.extend_from_slice(&3u32.to_be_bytes()); // resetCount
    out.extend_from_slice(&0u32.to_be_bytes()); // restartCount
    out.push(1); // safe
    out.extend_from_slice(&0x2024_0101u64.to_be_bytes()); // firmwareVersion
    out.extend_from_slice(&1u32.to_be_bytes()); // one selection
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.push(3);
    let mut bitmap = [0u8; 3];
    for (i, _) in pcrs {
        bitmap[usize::from(*i / 8)] |= 1 << (i % 8);
    }
    out.extend_from_slice(&bitmap);
    let mut sorted: Vec<&(u8, Vec<u8>)> = pcrs.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (_, v) in sorted {
        ctx.update(v);
    }
    tpm2b(&mut out, ctx.finish().as_ref());
    out
}

/// The deterministic inputs of the targets (see the crate docs).
#[derive(Debug)]
pub struct Fixtures {
    /// `example.org`'s bundle: the keyring's CA and JWT key, plus [`FUZZ_KID`].
    pub bundles: BundleMap,
    /// The keyring's X.509 CA certificate (DER).
    pub svid_ca: Vec<u8>,
    /// An X.509-SVID for [`WORKLOAD`] (DER), minted by the keyring's CA.
    pub svid: Vec<u8>,
    /// A JWT-SVID for [`WORKLOAD`] and [`AUDIENCE`], minted by the keyring's JWT key.
    pub jwt: String,
    /// The x509pop CA (DER).
    pub pop_ca: Vec<u8>,
    /// A leaf the x509pop CA issued (DER).
    pub pop_leaf: Vec<u8>,
    /// The message an x509pop proof signs.
    pub pop_message: Vec<u8>,
    /// The x509pop leaf key's signature over [`Fixtures::pop_message`].
    pub pop_signature: Vec<u8>,
    /// An ECC P-256 EK public area (TCG template L-2 attributes).
    pub ek_public: Vec<u8>,
    /// An ECDSA P-256 AK public area.
    pub ak_public: Vec<u8>,
    /// Trusts [`Fixtures::ek_public`] by hash, and the x509pop CA as an EK manufacturer CA.
    pub ek_policy: EkPolicy,
    ak_key: SigningKey,
    jwt_key: SigningKey,
}

impl Fixtures {
    fn build() -> Fixtures {
        let wall = now();
        let td: TrustDomain = TD.parse().expect("trust domain");

        // The keyring, bootstrapped through its public API: tick, publish, confirm.
        let cfg = KeyringConfig::new(td.clone(), 1);
        let mut keyring = NodeKeyring::new(cfg.clone(), cfg);
        let mut published = PublishedAuthorities::new();
        let keys = SeededKeySource::new(Seed::from_u64(20));
        let mut rng = ChaCha20Rng::seed_from_u64(20);
        let mut actions = Vec::new();
        keyring
            .handle_tick(wall, &keys, &mut rng, &mut actions)
            .expect("keyring tick");
        let mut i = 0;
        while i < actions.len() {
            if let Action::Prepare(a) = actions[i].clone() {
                published.publish(a.clone()).expect("publish");
                keyring.handle_published(&a.id, wall, &mut actions);
            }
            i += 1;
        }
        let ca = keyring.active_x509(wall).expect("active X.509 CA");
        let jwt_key = keyring.active_jwt(wall).expect("active JWT key");
        let web: SpiffeId = WORKLOAD.parse().expect("workload ID");
        let spki = wire::KeySource::generate(
            &SeededKeySource::new(Seed::from_u64(21)),
            wire::KeyAlg::EcP256,
        )
        .expect("workload key")
        .public_key_der()
        .to_vec();
        let svid = ca
            .mint(
                &X509SvidRequest {
                    spiffe_id: &web,
                    dns_names: &["web.example.org".to_owned()],
                    public_key_der: &spki,
                    ttl: Duration::from_secs(3600),
                    not_before_cushion: Duration::from_secs(10),
                },
                wall,
                &mut rng,
            )
            .expect("mint X.509-SVID")
            .cert_der;
        let jwt = jwt_key
            .mint(
                &JwtSvidRequest {
                    spiffe_id: &web,
                    audience: &[AUDIENCE.to_owned()],
                    ttl: Duration::from_secs(300),
                    issuer: None,
                    with_jti: true,
                },
                wall,
                &mut rng,
            )
            .expect("mint JWT-SVID");
        let svid_ca = ca.cert_der().to_vec();

        let fuzz_jwt_key = signing_key(0x21);
        let (x, y) = point(&fuzz_jwt_key);
        let mut bundle: Bundle = published.bundle(300);
        bundle.jwt_authorities.push(JwtAuthority {
            kid: FUZZ_KID.to_owned(),
            key: PublicJwk::Ec {
                crv: "P-256".to_owned(),
                x: x.to_vec(),
                y: y.to_vec(),
            },
        });
        let mut bundles = BundleMap::default();
        bundles.0.insert(td, bundle);

        // x509pop: a CA and a leaf, keys from fixed scalars.
        let (from, to) = (1_690_000_000, 1_800_000_000);
        let ca_key = rcgen_key(&signing_key(0x31));
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Fuzz Agent CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = time_at(from);
        ca_params.not_after = time_at(to);
        let pop_ca = ca_params
            .self_signed(&ca_key)
            .expect("x509pop CA")
            .der()
            .to_vec();
        let leaf_signing = signing_key(0x32);
        let leaf_key = rcgen_key(&leaf_signing);
        let mut leaf_params = CertificateParams::default();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "node1");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.subject_alt_names = vec![
            SanType::DnsName("node1.example.org".try_into().expect("dns")),
            SanType::URI("urn:host:node1".try_into().expect("uri")),
        ];
        leaf_params.not_before = time_at(from);
        leaf_params.not_after = time_at(to);
        let pop_leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .expect("x509pop leaf")
            .der()
            .to_vec();
        let pop_message = attest::x509pop::message(&[7; 32], b"fuzz svid key");
        let sig: Signature = leaf_signing.sign(&pop_message);
        let pop_signature = sig.to_der().as_bytes().to_vec();

        // TPM: an EK (L-2 attributes) and an AK.
        let ek_key = signing_key(0x41);
        let ek_public = ecc_public_area(
            &ek_key,
            attr::FIXED_TPM
                | attr::FIXED_PARENT
                | attr::SENSITIVE_DATA_ORIGIN
                | attr::ADMIN_WITH_POLICY
                | attr::RESTRICTED
                | attr::DECRYPT,
            &[0x83; 32],
            &[alg::AES, 128, alg::CFB],
            &[alg::NULL],
        );
        let ak_key = signing_key(0x42);
        let ak_public = ecc_public_area(
            &ak_key,
            attr::FIXED_TPM
                | attr::FIXED_PARENT
                | attr::SENSITIVE_DATA_ORIGIN
                | attr::RESTRICTED
                | attr::SIGN,
            &[],
            &[alg::NULL],
            &[alg::ECDSA, alg::SHA256],
        );
        let ek = attest::tpm::EkPublic::parse(&ek_public).expect("fixture EK parses");
        attest::tpm::AkPublic::parse(&ak_public).expect("fixture AK parses");
        let ek_policy = EkPolicy {
            cas: vec![pop_ca.clone()],
            ek_hashes: [ek.hash()].into_iter().collect(),
        };

        Fixtures {
            bundles,
            svid_ca,
            svid,
            jwt,
            pop_ca,
            pop_leaf,
            pop_message,
            pop_signature,
            ek_public,
            ak_public,
            ek_policy,
            ak_key,
            jwt_key: fuzz_jwt_key,
        }
    }

    /// A compact JWS of `header` and `claims` (any bytes) signed ES256 by the [`FUZZ_KID`] key.
    pub fn sign_jwt(&self, header: &[u8], claims: &[u8]) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let sig: Signature = self.jwt_key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut token);
        token
    }

    /// A marshalled `TPMT_SIGNATURE` (ECDSA, SHA-256) of `quote` by the fixture AK.
    pub fn sign_quote(&self, quote: &[u8]) -> Vec<u8> {
        let sig: Signature = self.ak_key.sign(quote);
        let bytes = sig.to_bytes();
        let mut out = Vec::with_capacity(72);
        out.extend_from_slice(&alg::ECDSA.to_be_bytes());
        out.extend_from_slice(&alg::SHA256.to_be_bytes());
        tpm2b(&mut out, &bytes[..32]);
        tpm2b(&mut out, &bytes[32..]);
        out
    }

    /// A TPM challenger whose key (and so whose tokens) is the same in every process.
    pub fn challenger(&self) -> attest::tpm::Challenger {
        attest::tpm::Challenger::new(&mut ChaCha20Rng::seed_from_u64(22))
    }

    /// The token [`Fixtures::challenger`] gives for the fixture EK and AK on [`BINDING`].
    pub fn tpm_token(&self) -> Vec<u8> {
        self.challenger()
            .begin(
                &self.ek_policy,
                &self.ek_public,
                None,
                &self.ak_public,
                &BINDING,
                now(),
                &mut ChaCha20Rng::seed_from_u64(23),
            )
            .expect("TPM challenge for the fixtures")
            .token
    }
}

/// The fixtures, built once per process.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(Fixtures::build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inverts_join() {
        let fields: [&[u8]; 3] = [b"ab", b"", b"xyz"];
        assert_eq!(split(&join(&fields), 8), fields.to_vec());
        assert_eq!(split(&[], 4), Vec::<&[u8]>::new());
    }

    #[test]
    fn fixtures_verify() {
        let f = fixtures();
        let id = attest::x509::validate_x509_svid(&[&f.svid], &f.bundles, now()).expect("svid");
        assert_eq!(id.as_str(), WORKLOAD);
        attest::jwt::validate_jwt_svid(&f.jwt, &f.bundles, AUDIENCE, now()).expect("jwt");
        let token = f.sign_jwt(FUZZ_HEADER.as_bytes(), FUZZ_CLAIMS.as_bytes());
        attest::jwt::validate_jwt_svid(&token, &f.bundles, AUDIENCE, now()).expect("fuzz jwt");
        attest::x509pop::verify(
            &[&f.pop_leaf],
            &[&f.pop_ca],
            now(),
            &f.pop_message,
            &f.pop_signature,
        )
        .expect("x509pop");
        let ak = attest::tpm::AkPublic::parse(&f.ak_public).expect("ak");
        let pcrs = pcrs(0b101);
        let q = quote(&QUOTE_EXTRA, &pcrs);
        attest::tpm::verify_quote(&ak, &q, &f.sign_quote(&q), &QUOTE_EXTRA, &pcrs).expect("quote");
        assert_eq!(f.tpm_token(), f.tpm_token());
    }
}
