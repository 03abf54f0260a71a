//! Trust bundles in the SPIFFE bundle format (SPIFFE_Trust_Domain_and_Bundle.md): a JWK Set with
//! `spiffe_sequence` and `spiffe_refresh_hint`, plus bundle maps keyed by trust domain.
//!
//! Parsing rules:
//! - the document is a JSON object with a `keys` array (it may be empty: every key revoked);
//! - a key without `kty` or `use`, or with an unknown `kty` or `use`, is ignored;
//! - an `x509-svid` key must carry exactly one `x5c` certificate and no `kid`;
//! - a `jwt-svid` key must carry a non-empty `kid`;
//! - unknown top-level members are allowed and dropped;
//! - a bundle map must not name a trust domain twice.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use crate::{Error, TrustDomain};

/// Largest bundle (or bundle map) document accepted, in bytes.
pub const BUNDLE_JSON_BYTES_MAX: usize = 1 << 20;
/// Most keys one bundle may hold.
pub const BUNDLE_KEYS_MAX: usize = 1024;
/// Longest `kid`, in bytes.
pub const KID_BYTES_MAX: usize = 128;

/// `use` value of X.509 authorities.
pub const USE_X509_SVID: &str = "x509-svid";
/// `use` value of JWT authorities.
pub const USE_JWT_SVID: &str = "jwt-svid";

/// The public part of a JWK, for the key types SPIFFE deployments use.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PublicJwk {
    /// `kty: EC` (`crv` P-256, P-384 or P-521) with raw coordinates.
    Ec {
        /// Curve name, e.g. `P-256`.
        crv: String,
        /// X coordinate, big-endian.
        x: Vec<u8>,
        /// Y coordinate, big-endian.
        y: Vec<u8>,
    },
    /// `kty: RSA`.
    Rsa {
        /// Modulus, big-endian.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
    /// `kty: OKP` (`crv` Ed25519).
    Okp {
        /// Curve name, e.g. `Ed25519`.
        crv: String,
        /// Public key bytes.
        x: Vec<u8>,
    },
}

impl fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicJwk::Ec { crv, x, .. } => write!(f, "Ec({crv}, x={})", hex_prefix(x)),
            PublicJwk::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            PublicJwk::Okp { crv, x } => write!(f, "Okp({crv}, {})", hex_prefix(x)),
        }
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// An X.509 authority: one CA certificate (DER) and its public key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct X509Authority {
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate's public key as a JWK.
    pub key: PublicJwk,
}

/// A JWT authority: a signing key and its `kid`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JwtAuthority {
    /// Key ID, unique within the bundle.
    pub kid: String,
    /// The public key.
    pub key: PublicJwk,
}

/// A trust domain's bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// `spiffe_sequence`: increases on every change.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, seconds.
    pub refresh_hint_secs: Option<u64>,
    /// CA certificates that sign X.509-SVIDs.
    pub x509_authorities: Vec<X509Authority>,
    /// Keys that sign JWT-SVIDs.
    pub jwt_authorities: Vec<JwtAuthority>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidBundle {
        reason: reason.into(),
    }
}

fn b64url_field(obj: &Map<String, Value>, name: &str, ctx: &str) -> Result<Vec<u8>, Error> {
    let text = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{ctx}: missing string member {name:?}")))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| bad(format!("{ctx}: member {name:?} is not base64url")))
}

fn string_field(obj: &Map<String, Value>, name: &str, ctx: &str) -> Result<String, Error> {
    obj.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{ctx}: missing string member {name:?}")))
}

/// Reads the key parameters of a JWK whose `kty` is known; `None` for an unknown `kty`.
fn parse_public_jwk(obj: &Map<String, Value>, ctx: &str) -> Result<Option<PublicJwk>, Error> {
    let kty = obj.get("kty").and_then(Value::as_str);
    let key = match kty {
        Some("EC") => PublicJwk::Ec {
            crv: string_field(obj, "crv", ctx)?,
            x: b64url_field(obj, "x", ctx)?,
            y: b64url_field(obj, "y", ctx)?,
        },
        Some("RSA") => PublicJwk::Rsa {
            n: b64url_field(obj, "n", ctx)?,
            e: b64url_field(obj, "e", ctx)?,
        },
        Some("OKP") => PublicJwk::Okp {
            crv: string_field(obj, "crv", ctx)?,
            x: b64url_field(obj, "x", ctx)?,
        },
        _ => return Ok(None),
    };
    Ok(Some(key))
}

fn jwk_params(key: &PublicJwk) -> Map<String, Value> {
    let enc = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut m = Map::new();
    match key {
        PublicJwk::Ec { crv, x, y } => {
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), crv.clone().into());
            m.insert("x".into(), enc(x));
            m.insert("y".into(), enc(y));
        }
        PublicJwk::Rsa { n, e } => {
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), enc(n));
            m.insert("e".into(), enc(e));
        }
        PublicJwk::Okp { crv, x } => {
            m.insert("kty".into(), "OKP".into());
            m.insert("crv".into(), crv.clone().into());
            m.insert("x".into(), enc(x));
        }
    }
    m
}

fn opt_u64(doc: &Map<String, Value>, name: &str) -> Result<Option<u64>, Error> {
    match doc.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer"))),
    }
}

impl Bundle {
    /// Parses a bundle document (see the module docs for the rules).
    pub fn from_json(bytes: &[u8]) -> Result<Bundle, Error> {
        if bytes.len() > BUNDLE_JSON_BYTES_MAX {
            return Err(bad(format!(
                "document is larger than {BUNDLE_JSON_BYTES_MAX} bytes"
            )));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        Bundle::from_value(&value)
    }

    fn from_value(value: &Value) -> Result<Bundle, Error> {
        let doc = value
            .as_object()
            .ok_or_else(|| bad("document must be a JSON object"))?;
        let keys = doc
            .get("keys")
            .ok_or_else(|| bad("missing \"keys\""))?
            .as_array()
            .ok_or_else(|| bad("\"keys\" must be an array"))?;
        if keys.len() > BUNDLE_KEYS_MAX {
            return Err(bad(format!("more than {BUNDLE_KEYS_MAX} keys")));
        }
        let mut bundle = Bundle {
            sequence: opt_u64(doc, "spiffe_sequence")?,
            refresh_hint_secs: opt_u64(doc, "spiffe_refresh_hint")?,
            ..Bundle::default()
        };
        for (i, key) in keys.iter().enumerate() {
            let ctx = format!("key {i}");
            let obj = key
                .as_object()
                .ok_or_else(|| bad(format!("{ctx}: not an object")))?;
            // Unknown or missing `use`, and unknown or missing `kty`, mean "skip this key".
            let usage = obj.get("use").and_then(Value::as_str);
            if usage != Some(USE_X509_SVID) && usage != Some(USE_JWT_SVID) {
                continue;
            }
            let Some(jwk) = parse_public_jwk(obj, &ctx)? else {
                continue;
            };
            if usage == Some(USE_X509_SVID) {
                if obj.contains_key("kid") {
                    return Err(bad(format!(
                        "{ctx}: an x509-svid key must not have \"kid\""
                    )));
                }
                let x5c = obj
                    .get("x5c")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(format!("{ctx}: an x509-svid key needs \"x5c\"")))?;
                if x5c.len() != 1 {
                    return Err(bad(format!(
                        "{ctx}: \"x5c\" must hold exactly one certificate, found {}",
                        x5c.len()
                    )));
                }
                let cert_der = x5c[0]
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .filter(|der| !der.is_empty())
                    .ok_or_else(|| bad(format!("{ctx}: \"x5c\" is not base64 DER")))?;
                bundle
                    .x509_authorities
                    .push(X509Authority { cert_der, key: jwk });
            } else {
                let kid = obj
                    .get("kid")
                    .and_then(Value::as_str)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| bad(format!("{ctx}: a jwt-svid key needs a \"kid\"")))?;
                if kid.len() > KID_BYTES_MAX {
                    return Err(bad(format!(
                        "{ctx}: \"kid\" is longer than {KID_BYTES_MAX}"
                    )));
                }
                if bundle.jwt_authorities.iter().any(|a| a.kid == kid) {
                    return Err(bad(format!("{ctx}: duplicate kid {kid:?}")));
                }
                bundle.jwt_authorities.push(JwtAuthority {
                    kid: kid.to_owned(),
                    key: jwk,
                });
            }
        }
        Ok(bundle)
    }

    /// The bundle as a JSON value in the SPIFFE bundle format.
    pub fn to_value(&self) -> Value {
        let mut keys = Vec::new();
        for a in &self.x509_authorities {
            let mut m = jwk_params(&a.key);
            m.insert("use".into(), USE_X509_SVID.into());
            m.insert("x5c".into(), json!([STANDARD.encode(&a.cert_der)]));
            keys.push(Value::Object(m));
        }
        for a in &self.jwt_authorities {
            let mut m = jwk_params(&a.key);
            m.insert("use".into(), USE_JWT_SVID.into());
            m.insert("kid".into(), a.kid.clone().into());
            keys.push(Value::Object(m));
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if let Some(seq) = self.sequence {
            doc.insert("spiffe_sequence".into(), seq.into());
        }
        if let Some(hint) = self.refresh_hint_secs {
            doc.insert("spiffe_refresh_hint".into(), hint.into());
        }
        Value::Object(doc)
    }

    /// The bundle document, pretty-printed.
    pub fn to_json(&self) -> String {
        // Serializing a Value built from strings and integers cannot fail.
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    /// Only the JWT part (`jwt-svid` keys), as the Workload API's JWT bundles carry.
    pub fn jwt_only(&self) -> Bundle {
        Bundle {
            x509_authorities: Vec::new(),
            ..self.clone()
        }
    }
}

/// Bundles of several trust domains: `{"trust_domains": {"<td>": <bundle>}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleMap(pub BTreeMap<TrustDomain, Bundle>);

/// A JSON object read member by member, so that duplicate names are seen (serde_json's `Value`
/// keeps only the last one).
struct DistinctMembers(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for DistinctMembers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DistinctMembers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DistinctMembers, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("duplicate member {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(DistinctMembers(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct BundleMapDoc {
    trust_domains: DistinctMembers,
}

impl BundleMap {
    /// Parses a bundle map; rejects a trust domain named twice.
    pub fn from_json(bytes: &[u8]) -> Result<BundleMap, Error> {
        if bytes.len() > BUNDLE_JSON_BYTES_MAX {
            return Err(bad(format!(
                "document is larger than {BUNDLE_JSON_BYTES_MAX} bytes"
            )));
        }
        let doc: BundleMapDoc =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("bundle map: {e}")))?;
        let mut map = BTreeMap::new();
        for (name, value) in doc.trust_domains.0 {
            let td: TrustDomain = name.parse()?;
            let bundle = Bundle::from_value(&value)?;
            if map.insert(td.clone(), bundle).is_some() {
                // Two spellings of one trust domain (`td` and `spiffe://td`).
                return Err(bad(format!("trust domain {td} appears twice")));
            }
        }
        Ok(BundleMap(map))
    }

    /// The bundle map document.
    pub fn to_json(&self) -> String {
        let tds: Map<String, Value> = self
            .0
            .iter()
            .map(|(td, b)| (td.to_string(), b.to_value()))
            .collect();
        serde_json::to_string_pretty(&json!({ "trust_domains": tds })).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            sequence: Some(42),
            refresh_hint_secs: Some(300),
            x509_authorities: vec![X509Authority {
                cert_der: vec![0x30, 0x82, 1, 2, 3],
                key: PublicJwk::Ec {
                    crv: "P-256".into(),
                    x: vec![1; 32],
                    y: vec![2; 32],
                },
            }],
            jwt_authorities: vec![
                JwtAuthority {
                    kid: "k1".into(),
                    key: PublicJwk::Ec {
                        crv: "P-256".into(),
                        x: vec![3; 32],
                        y: vec![4; 32],
                    },
                },
                JwtAuthority {
                    kid: "k2".into(),
                    key: PublicJwk::Rsa {
                        n: vec![0xc0; 256],
                        e: vec![1, 0, 1],
                    },
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let b = sample();
        let back = Bundle::from_json(b.to_json().as_bytes()).expect("parse");
        assert_eq!(back, b);
        let v = b.to_value();
        assert_eq!(v["spiffe_sequence"], 42);
        assert_eq!(v["keys"][0]["use"], "x509-svid");
        assert!(v["keys"][0].get("kid").is_none());
        assert_eq!(v["keys"][0]["x5c"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["keys"][1]["kid"], "k1");
        let empty = Bundle::default();
        assert_eq!(
            Bundle::from_json(empty.to_json().as_bytes()).expect("empty"),
            empty
        );
    }

    fn with_key(key: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": [key] })).expect("json")
    }

    fn ec() -> Value {
        json!({"kty":"EC","crv":"P-256","x":"AQID","y":"BAUG"})
    }

    fn merge(mut a: Value, b: Value) -> Value {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        a
    }

    #[test]
    fn negative_cases() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("missing keys", br#"{"spiffe_sequence":1}"#.to_vec()),
            ("keys not array", br#"{"keys":{}}"#.to_vec()),
            ("not an object", br#"[1,2]"#.to_vec()),
            ("not json", b"{".to_vec()),
            (
                "negative sequence",
                br#"{"keys":[],"spiffe_sequence":-1}"#.to_vec(),
            ),
            (
                "x5c zero",
                with_key(merge(ec(), json!({"use":"x509-svid","x5c":[]}))),
            ),
            (
                "x5c two",
                with_key(merge(
                    ec(),
                    json!({"use":"x509-svid","x5c":["MAo=","MAo="]}),
                )),
            ),
            (
                "x5c missing",
                with_key(merge(ec(), json!({"use":"x509-svid"}))),
            ),
            (
                "x5c not base64",
                with_key(merge(ec(), json!({"use":"x509-svid","x5c":["!!"]}))),
            ),
            (
                "x509 with kid",
                with_key(merge(
                    ec(),
                    json!({"use":"x509-svid","kid":"a","x5c":["MAo="]}),
                )),
            ),
            (
                "jwt without kid",
                with_key(merge(ec(), json!({"use":"jwt-svid"}))),
            ),
            (
                "jwt empty kid",
                with_key(merge(ec(), json!({"use":"jwt-svid","kid":""}))),
            ),
            (
                "ec missing y",
                with_key(json!({"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AQ"})),
            ),
            ("key not object", br#"{"keys":[1]}"#.to_vec()),
        ];
        for (name, doc) in cases {
            assert!(
                Bundle::from_json(&doc).is_err(),
                "{name} should be rejected"
            );
        }
        let dup = serde_json::to_vec(&json!({"keys":[
            merge(ec(), json!({"use":"jwt-svid","kid":"a"})),
            merge(ec(), json!({"use":"jwt-svid","kid":"a"})),
        ]}))
        .expect("json");
        assert!(Bundle::from_json(&dup).is_err(), "duplicate kid");
        let huge = vec![b' '; BUNDLE_JSON_BYTES_MAX + 1];
        assert!(Bundle::from_json(&huge).is_err());
    }

    #[test]
    fn unknown_use_and_kty_are_ignored() {
        let doc = serde_json::to_vec(&json!({
            "keys": [
                merge(ec(), json!({"use":"enc","kid":"x"})),
                merge(ec(), json!({"kid":"no-use"})),
                {"kty":"oct","use":"jwt-svid","kid":"sym","k":"AAAA"},
                {"use":"jwt-svid","kid":"no-kty"},
                {"kty":"EC","use":"X509-SVID","x5c":[]},
                merge(ec(), json!({"use":"jwt-svid","kid":"good"})),
            ],
            "unknown_member": {"anything": true},
        }))
        .expect("json");
        let b = Bundle::from_json(&doc).expect("parse");
        assert!(b.x509_authorities.is_empty());
        assert_eq!(b.jwt_authorities.len(), 1);
        assert_eq!(b.jwt_authorities[0].kid, "good");
    }

    #[test]
    fn bundle_map_round_trips_and_rejects_duplicates() {
        let mut m = BundleMap::default();
        m.0.insert("example.org".parse().expect("td"), sample());
        m.0.insert("partner.example".parse().expect("td"), Bundle::default());
        let back = BundleMap::from_json(m.to_json().as_bytes()).expect("parse");
        assert_eq!(back, m);

        let dup = br#"{"trust_domains":{"example.org":{"keys":[]},"example.org":{"keys":[]}}}"#;
        assert!(BundleMap::from_json(dup).is_err());
        let dup_spelling =
            br#"{"trust_domains":{"example.org":{"keys":[]},"spiffe://example.org":{"keys":[]}}}"#;
        assert!(BundleMap::from_json(dup_spelling).is_err());
        assert!(BundleMap::from_json(br#"{"trust_domains":{"Bad TD":{"keys":[]}}}"#).is_err());
        assert!(BundleMap::from_json(br#"{"trust_domains":{"a.org":{}}}"#).is_err());
        assert!(BundleMap::from_json(br#"{}"#).is_err());
    }
}
