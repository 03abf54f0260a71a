//! JWT-SVIDs (JWT-SVID.md): minting with a node's ES256 key and validation against bundles.
//!
//! **Minting**: JWS Compact Serialization; header exactly `{"alg":"ES256","kid":<kid>,"typ":"JWT"}`
//! (encoded once per key); claims `aud` (array), `exp`, `iat`, optional `iss`, optional random
//! `jti` (128 bits, hex), `sub`. `exp` = min(wall + ttl, key NotAfter).
//!
//! **Validation**, in this order: size; exactly three dot-separated base64url parts (the JSON
//! serialization and JWE are rejected); header a JSON object without duplicate members; `alg`
//! checked first against the JWT-SVID.md allow-list (RS/ES/PS 256/384/512; `none` and HS* are
//! rejected); no header other than `alg`, `kid`, `typ`; `typ`, if present, `JWT` or `JOSE`; `kid`
//! required (bundles always carry one; go-spiffe also requires it); `sub` a SPIFFE ID; the key
//! is looked up by `kid` in the bundle of **`sub`'s** trust domain and must match `alg`; the
//! signature (ring: ES256, ES384, RS*, PS*; ES512 is allowed by the spec but unsupported here);
//! `exp` present and not past (with leeway); `nbf`, if present, reached (with leeway); `aud`
//! present, non-empty and containing the expected audience.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::RngCore;
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use wire::{
    Authority, AuthorityKey, JwtAuthority, PublicJwk, SigFormat, Signer, SpiffeId, TrustDomain,
    UnixTime,
};

use crate::bundle::BundleSource;
use crate::keyring::{sealed, KeyMaterial, KeyState, KeyringConfig};
use crate::keys::jwk_of_spki;
use crate::Error;

/// Default JWT-SVID lifetime (SPIRE's `default_jwt_svid_ttl`).
pub const JWT_SVID_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Default clock leeway for `exp` and `nbf`.
pub const JWT_LEEWAY_DEFAULT: Duration = Duration::from_secs(30);
/// Largest token accepted, in bytes.
pub const JWT_BYTES_MAX: usize = 16 * 1024;
/// Most audiences a minted token may carry.
pub const AUDIENCES_MAX: usize = 16;
/// Longest audience value, in bytes.
pub const AUDIENCE_BYTES_MAX: usize = 512;

/// The JWT-SVID.md §2.1 allow-list.
const ALLOWED_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];
/// The only headers a JWT-SVID may carry (JWT-SVID.md §2).
const ALLOWED_HEADERS: [&str; 3] = ["alg", "kid", "typ"];

/// Why a JWT-SVID was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtReject {
    /// Larger than [`JWT_BYTES_MAX`].
    #[error("token is too large")]
    TooLarge,
    /// Not three dot-separated parts (JWS Compact Serialization).
    #[error("token is not in JWS compact serialization")]
    NotCompact,
    /// A part is not base64url JSON of the right shape.
    #[error("token is malformed")]
    Malformed,
    /// A JSON object names a member twice.
    #[error("token has a duplicate member")]
    DuplicateMember,
    /// `alg` is missing or not in the JWT-SVID allow-list (e.g. `none`, HS256).
    #[error("algorithm is not allowed")]
    DisallowedAlgorithm,
    /// `alg` is allowed by the spec but this validator cannot verify it (ES512).
    #[error("algorithm is not supported")]
    UnsupportedAlgorithm,
    /// A header other than `alg`, `kid`, `typ`.
    #[error("header parameter is not allowed")]
    HeaderNotAllowed,
    /// `typ` is present and neither `JWT` nor `JOSE`.
    #[error("typ must be JWT or JOSE")]
    Typ,
    /// No `kid` header.
    #[error("token has no key ID")]
    MissingKid,
    /// `sub` is missing or not a SPIFFE ID.
    #[error("sub is not a SPIFFE ID")]
    Subject,
    /// No bundle for `sub`'s trust domain.
    #[error("no bundle for the subject's trust domain")]
    NoBundle,
    /// The subject's bundle has no JWT authority with this `kid`.
    #[error("key ID not found in the subject's trust domain bundle")]
    UnknownKid,
    /// The key's type does not fit `alg`.
    #[error("key does not match the algorithm")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is missing or not a number.
    #[error("exp is missing")]
    MissingExp,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` has not been reached.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `aud` is missing, empty, or lacks the expected audience.
    #[error("audience does not match")]
    Audience,
}

/// A node's JWT signing key.
///
/// Signs only while the keyring holds it as the active key ([`KeyState::Active`]).
#[derive(Debug)]
pub struct JwtKey {
    signer: Box<dyn Signer>,
    trust_domain: TrustDomain,
    authority: Authority,
    issued_at: UnixTime,
    not_after: UnixTime,
    /// base64url of the header, followed by `.`.
    header_prefix: String,
    state: KeyState,
}

/// What to mint.
#[derive(Debug, Clone, Copy)]
pub struct JwtSvidRequest<'a> {
    /// `sub`: must be in the key's trust domain, with a path.
    pub spiffe_id: &'a SpiffeId,
    /// `aud`: 1 to [`AUDIENCES_MAX`] non-empty values (one is strongly recommended).
    pub audience: &'a [String],
    /// Requested lifetime; `exp` is capped at the key's NotAfter.
    pub ttl: Duration,
    /// `iss`, if set.
    pub issuer: Option<&'a str>,
    /// Add a random `jti` (the RFC 7523 client-assertion profile needs one).
    pub with_jti: bool,
}

/// The claims of a validated JWT-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSvidClaims {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// `aud`.
    pub audience: Vec<String>,
    /// `exp`, whole seconds.
    pub expiry: UnixTime,
    /// The `kid` that verified it.
    pub kid: String,
    /// Every claim, as sent (the Workload API's `ValidateJWTSVID` returns them).
    pub claims: Map<String, Value>,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

impl JwtKey {
    /// A JWT key for `trust_domain` held by `node_id`, valid from `wall` to `wall + ttl`. It
    /// starts [`KeyState::Prepared`] and cannot sign until a keyring activates it.
    pub fn create(
        signer: Box<dyn Signer>,
        trust_domain: &TrustDomain,
        node_id: u64,
        wall: UnixTime,
        ttl: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<JwtKey, Error> {
        if ttl < Duration::from_secs(60) {
            return Err(Error::InvalidRequest(
                "a JWT key must live at least a minute",
            ));
        }
        let key = jwk_of_spki(signer.public_key_der()).map_err(|_| Error::UnsupportedAlgorithm)?;
        let mut random = [0u8; 8];
        rng.fill_bytes(&mut random);
        let kid = format!(
            "jwt-n{node_id}-{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let header = serde_json::to_vec(&HeaderOut {
            alg: "ES256",
            kid: &kid,
            typ: "JWT",
        })
        .map_err(|_| Error::InvalidRequest("header does not encode"))?;
        let mut header_prefix = URL_SAFE_NO_PAD.encode(header);
        header_prefix.push('.');
        let not_after = UnixTime::from_secs(wall.saturating_add(ttl).as_secs());
        let authority = Authority {
            id: kid.clone(),
            node_id,
            key: AuthorityKey::Jwt(JwtAuthority { kid, key }),
            not_after,
        };
        authority.validate()?;
        Ok(JwtKey {
            signer,
            trust_domain: trust_domain.clone(),
            authority,
            issued_at: wall,
            not_after,
            header_prefix,
            state: KeyState::Prepared,
        })
    }

    /// The key ID.
    pub fn kid(&self) -> &str {
        &self.authority.id
    }

    /// The authority record to publish in the trust bundle.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `exp` of a JWT-SVID minted at `wall` for `ttl`: capped at this key's `NotAfter`,
    /// whole seconds.
    pub fn expiry(&self, wall: UnixTime, ttl: std::time::Duration) -> UnixTime {
        UnixTime::from_secs(wall.saturating_add(ttl).min(self.not_after).as_secs())
    }

    /// Mints a JWT-SVID.
    ///
    /// # Panics
    /// If this key is not the keyring's active key (a security invariant, checked in release).
    pub fn mint(
        &self,
        req: &JwtSvidRequest<'_>,
        wall: UnixTime,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Result<String, Error> {
        assert!(
            self.state == KeyState::Active,
            "JWT key {} must be published and active to sign (state {:?})",
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
            return Err(Error::InvalidRequest("a JWT-SVID's sub must have a path"));
        }
        if req.audience.is_empty() || req.audience.len() > AUDIENCES_MAX {
            return Err(Error::InvalidRequest("a JWT-SVID needs 1 to 16 audiences"));
        }
        if req
            .audience
            .iter()
            .any(|a| a.is_empty() || a.len() > AUDIENCE_BYTES_MAX)
        {
            return Err(Error::InvalidRequest(
                "audiences must be 1 to 512 bytes long",
            ));
        }
        if req.ttl.is_zero() {
            return Err(Error::InvalidRequest("ttl must be positive"));
        }
        let iat = wall.as_secs();
        let exp = self.expiry(wall, req.ttl).as_secs();
        if wall >= self.not_after || exp <= iat {
            return Err(Error::AuthorityExpired);
        }
        // Claims in a fixed member order: aud, exp, iat, iss?, jti?, sub. Strings that may
        // need escaping go through serde_json; the SPIFFE ID's alphabet needs none.
        let mut claims = Vec::with_capacity(96 + id.as_str().len() + 64 * req.audience.len());
        claims.extend_from_slice(b"{\"aud\":[");
        for (i, a) in req.audience.iter().enumerate() {
            if i > 0 {
                claims.push(b',');
            }
            json_string(&mut claims, a)?;
        }
        claims.extend_from_slice(format!("],\"exp\":{exp},\"iat\":{iat}").as_bytes());
        if let Some(iss) = req.issuer {
            claims.extend_from_slice(b",\"iss\":");
            json_string(&mut claims, iss)?;
        }
        if req.with_jti {
            let mut bits = [0u8; 16];
            rng.fill_bytes(&mut bits);
            claims.extend_from_slice(b",\"jti\":\"");
            for b in bits {
                claims.push(HEX_DIGITS[usize::from(b >> 4)]);
                claims.push(HEX_DIGITS[usize::from(b & 0xf)]);
            }
            claims.push(b'"');
        }
        claims.extend_from_slice(b",\"sub\":\"");
        claims.extend_from_slice(id.as_str().as_bytes());
        claims.extend_from_slice(b"\"}");
        let claims_len = claims.len().div_ceil(3) * 4;
        let mut token = String::with_capacity(self.header_prefix.len() + claims_len + 90);
        token.push_str(&self.header_prefix);
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = self.signer.sign(token.as_bytes(), SigFormat::Fixed)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `text` as a JSON string.
fn json_string(out: &mut Vec<u8>, text: &str) -> Result<(), Error> {
    serde_json::to_writer(out, text).map_err(|_| Error::InvalidRequest("claims do not encode"))
}

impl sealed::Sealed for JwtKey {}

impl KeyMaterial for JwtKey {
    const KIND: &'static str = "jwt";

    fn create(
        cfg: &KeyringConfig,
        signer: Box<dyn Signer>,
        wall: UnixTime,
        rng: &mut dyn RngCore,
    ) -> Result<JwtKey, Error> {
        JwtKey::create(
            signer,
            &cfg.trust_domain,
            cfg.node_id,
            wall,
            cfg.key_ttl,
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

/// A JSON object read member by member, rejecting duplicate names (serde_json's `Map` would
/// silently keep the last one: a classic parser-differential hole).
struct DistinctObject(Map<String, Value>);

impl<'de> Deserialize<'de> for DistinctObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DistinctObject, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DistinctObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DistinctObject, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(DUPLICATE));
                    }
                    out.insert(k, v);
                }
                Ok(DistinctObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

const DUPLICATE: &str = "duplicate member";

fn decode_object(part: &str) -> Result<Map<String, Value>, JwtReject> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtReject::Malformed)?;
    match serde_json::from_slice::<DistinctObject>(&bytes) {
        Ok(obj) => Ok(obj.0),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Err(JwtReject::DuplicateMember),
        Err(_) => Err(JwtReject::Malformed),
    }
}

/// A NumericDate claim in milliseconds (integers or finite non-negative fractions).
fn numeric_date_ms(v: &Value) -> Option<u64> {
    if let Some(secs) = v.as_u64() {
        return Some(secs.saturating_mul(1000));
    }
    let secs = v.as_f64()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).min(u64::MAX as f64) as u64)
}

fn verify_signature(
    alg: &str,
    key: &PublicJwk,
    signing_input: &[u8],
    signature: &[u8],
) -> Result<(), JwtReject> {
    let verified = match (alg, key) {
        ("ES256" | "ES384", PublicJwk::Ec { crv, x, y }) => {
            let (curve, width, ring_alg) = if alg == "ES256" {
                ("P-256", 32, &sig::ECDSA_P256_SHA256_FIXED)
            } else {
                ("P-384", 48, &sig::ECDSA_P384_SHA384_FIXED)
            };
            if crv != curve || x.len() != width || y.len() != width {
                return Err(JwtReject::KeyMismatch);
            }
            let mut point = Vec::with_capacity(1 + 2 * width);
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            UnparsedPublicKey::new(ring_alg, point).verify(signing_input, signature)
        }
        ("ES512", _) => return Err(JwtReject::UnsupportedAlgorithm),
        (_, PublicJwk::Rsa { n, e }) => {
            let ring_alg: &sig::RsaParameters = match alg {
                "RS256" => &sig::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &sig::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &sig::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &sig::RSA_PSS_2048_8192_SHA256,
                "PS384" => &sig::RSA_PSS_2048_8192_SHA384,
                "PS512" => &sig::RSA_PSS_2048_8192_SHA512,
                _ => return Err(JwtReject::KeyMismatch),
            };
            RsaPublicKeyComponents { n, e }.verify(ring_alg, signing_input, signature)
        }
        _ => return Err(JwtReject::KeyMismatch),
    };
    verified.map_err(|_| JwtReject::BadSignature)
}

/// Validates a JWT-SVID for `audience` at `wall` against the bundle of its subject's trust
/// domain, allowing [`JWT_LEEWAY_DEFAULT`] of clock skew.
pub fn validate_jwt_svid(
    token: &str,
    bundles: &(impl BundleSource + ?Sized),
    audience: &str,
    wall: UnixTime,
) -> Result<JwtSvidClaims, Error> {
    validate_jwt_svid_with_leeway(token, bundles, audience, wall, JWT_LEEWAY_DEFAULT)
}

/// [`validate_jwt_svid`] with an explicit leeway for `exp` and `nbf`.
pub fn validate_jwt_svid_with_leeway(
    token: &str,
    bundles: &(impl BundleSource + ?Sized),
    audience: &str,
    wall: UnixTime,
    leeway: Duration,
) -> Result<JwtSvidClaims, Error> {
    Ok(validate(token, bundles, audience, wall, leeway)?)
}

fn validate(
    token: &str,
    bundles: &(impl BundleSource + ?Sized),
    audience: &str,
    wall: UnixTime,
    leeway: Duration,
) -> Result<JwtSvidClaims, JwtReject> {
    if token.len() > JWT_BYTES_MAX {
        return Err(JwtReject::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtReject::NotCompact);
    };
    let header = decode_object(header_b64)?;
    // The algorithm first, before anything else is looked at (JWT-SVID.md §2.1, §4).
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .filter(|a| ALLOWED_ALGS.contains(a))
        .ok_or(JwtReject::DisallowedAlgorithm)?;
    if header
        .keys()
        .any(|k| !ALLOWED_HEADERS.contains(&k.as_str()))
    {
        return Err(JwtReject::HeaderNotAllowed);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(_) => return Err(JwtReject::Typ),
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.as_str(),
        None => return Err(JwtReject::MissingKid),
        Some(_) => return Err(JwtReject::Malformed),
    };
    let claims = decode_object(claims_b64)?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| JwtReject::Malformed)?;
    let spiffe_id: SpiffeId = claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or(JwtReject::Subject)?;

    // The key comes from the subject's own trust domain, never from another bundle.
    let bundle = bundles
        .bundle(&spiffe_id.trust_domain())
        .ok_or(JwtReject::NoBundle)?;
    let authority = bundle
        .jwt_authorities
        .iter()
        .find(|a| a.kid == kid)
        .ok_or(JwtReject::UnknownKid)?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
    verify_signature(alg, &authority.key, signing_input, &signature)?;

    let exp_ms = claims
        .get("exp")
        .and_then(numeric_date_ms)
        .ok_or(JwtReject::MissingExp)?;
    let leeway_ms = u64::try_from(leeway.as_millis()).unwrap_or(u64::MAX);
    if wall.as_millis() >= exp_ms.saturating_add(leeway_ms) {
        return Err(JwtReject::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf_ms = numeric_date_ms(nbf).ok_or(JwtReject::Malformed)?;
        if wall.as_millis().saturating_add(leeway_ms) < nbf_ms {
            return Err(JwtReject::NotYetValid);
        }
    }
    let aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtReject::Audience)?,
        _ => return Err(JwtReject::Audience),
    };
    if aud.is_empty() || !aud.iter().any(|a| a == audience) {
        return Err(JwtReject::Audience);
    }
    Ok(JwtSvidClaims {
        spiffe_id,
        audience: aud,
        expiry: UnixTime::from_millis(exp_ms - exp_ms % 1000),
        kid: kid.to_owned(),
        claims,
    })
}
