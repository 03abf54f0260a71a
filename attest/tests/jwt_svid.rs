//! JWT-SVIDs: every MUST of JWT-SVID.md that applies to minting and validation
//! (spiffe-spire.md §1.3) as a named test, and verification of minted tokens with the
//! independent `spiffe` crate (`JwtSvid::parse_and_validate`).

mod common;

use std::process::Command;

use attest::jwt::{validate_jwt_svid, validate_jwt_svid_with_leeway, JWT_LEEWAY_DEFAULT};
use attest::{Error, JwtReject, JwtSvidClaims, JwtSvidRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{secs, t0, td, Node};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Value};
use wire::{Bundle, BundleMap, JwtAuthority, PublicJwk, SpiffeId, UnixTime};

const TD: &str = "example.org";

fn id(s: &str) -> SpiffeId {
    s.parse().expect("spiffe id")
}

fn mint(node: &mut Node, sub: &str, aud: &[&str], wall: UnixTime, with_jti: bool) -> String {
    let sub = id(sub);
    let audience: Vec<String> = aud.iter().map(|s| (*s).to_owned()).collect();
    let key = node.keyring.active_jwt(wall).expect("active JWT key");
    key.mint(
        &JwtSvidRequest {
            spiffe_id: &sub,
            audience: &audience,
            ttl: secs(300),
            issuer: None,
            with_jti,
        },
        wall,
        &mut node.rng,
    )
    .expect("mint")
}

fn reject(result: Result<JwtSvidClaims, Error>) -> JwtReject {
    match result {
        Err(Error::Jwt(r)) => r,
        other => panic!("expected a JWT rejection, got {other:?}"),
    }
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
}

/// A test-only ES256/ES384 key published under `kid` in `td`'s bundle, to forge tokens that
/// our minter would never write.
struct Forger {
    pair: EcdsaKeyPair,
    kid: String,
    crv: &'static str,
}

impl Forger {
    fn new(alg: &'static EcdsaSigningAlgorithm, crv: &'static str, kid: &str) -> Forger {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("pkcs8");
        Forger {
            pair: EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair"),
            kid: kid.to_owned(),
            crv,
        }
    }

    fn es256(kid: &str) -> Forger {
        Forger::new(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", kid)
    }

    fn authority(&self) -> JwtAuthority {
        let point = self.pair.public_key().as_ref();
        let w = (point.len() - 1) / 2;
        JwtAuthority {
            kid: self.kid.clone(),
            key: PublicJwk::Ec {
                crv: self.crv.into(),
                x: point[1..1 + w].to_vec(),
                y: point[1 + w..].to_vec(),
            },
        }
    }

    fn bundles(&self, td_name: &str) -> BundleMap {
        let mut m = BundleMap::default();
        m.0.insert(
            td(td_name),
            Bundle {
                jwt_authorities: vec![self.authority()],
                ..Bundle::default()
            },
        );
        m
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn claims(exp: UnixTime) -> Value {
    json!({"sub": "spiffe://example.org/web", "aud": ["db"], "exp": exp.as_secs(), "iat": t0().as_secs()})
}

fn later() -> UnixTime {
    t0().saturating_add(secs(300))
}

// ----- §1, §5.1: compact serialization only -----

#[test]
fn jwt_must_use_compact_serialization_only() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    assert_eq!(token.split('.').count(), 3);
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    let bundles = node.bundle_map();
    assert!(validate_jwt_svid(&token, &bundles, "db", t0()).is_ok());

    let parts: Vec<&str> = token.split('.').collect();
    let json_serialization =
        json!({"payload": parts[1], "protected": parts[0], "signature": parts[2]}).to_string();
    let jwe_like = format!("{token}.AAAA.BBBB");
    for bad in [
        json_serialization.as_str(),
        &jwe_like,
        &format!("{}.{}", parts[0], parts[1]),
        "",
    ] {
        assert_eq!(
            reject(validate_jwt_svid(bad, &bundles, "db", t0())),
            JwtReject::NotCompact
        );
    }
    let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
    assert_eq!(
        reject(validate_jwt_svid(&padded, &bundles, "db", t0())),
        JwtReject::Malformed
    );
    let huge = "a".repeat(attest::jwt::JWT_BYTES_MAX + 1);
    assert_eq!(
        reject(validate_jwt_svid(&huge, &bundles, "db", t0())),
        JwtReject::TooLarge
    );
}

// ----- §2: only the registered headers -----

#[test]
fn jwt_must_carry_only_registered_headers() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    let kid = node.keyring.active_jwt(t0()).expect("key").kid().to_owned();
    let header_b64 = token.split('.').next().expect("header");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(header_b64).expect("b64"),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#).as_bytes(),
        "header is exactly alg, kid, typ"
    );

    let f = Forger::es256("k1");
    for extra in ["jku", "x5u", "crit", "cty", "x5c", "jwk"] {
        let mut header = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        header[extra] = json!("x");
        let t = f.sign(&header, &claims(later()));
        assert_eq!(
            reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
            JwtReject::HeaderNotAllowed,
            "{extra}"
        );
    }
    let ok = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &claims(later()));
    assert!(
        validate_jwt_svid(&ok, &f.bundles(TD), "db", t0()).is_ok(),
        "typ is optional"
    );
}

#[test]
fn jwt_duplicate_members_are_rejected() {
    let f = Forger::es256("k1");
    let header = r#"{"alg":"ES256","kid":"k1","alg":"none"}"#;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims(later()).to_string())
    );
    let sig = f
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign");
    let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::DuplicateMember
    );
    let claims_dup = r#"{"sub":"spiffe://example.org/web","sub":"spiffe://example.org/admin","aud":"db","exp":1700000300}"#;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims_dup)
    );
    let sig = f
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign");
    let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::DuplicateMember
    );
}

// ----- §2.1, §4: algorithm allow-list, checked first -----

#[test]
fn jwt_must_reject_algorithms_outside_the_allow_list() {
    let f = Forger::es256("k1");
    for alg in [
        json!("none"),
        json!("HS256"),
        json!("HS384"),
        json!("HS512"),
        json!("ES256K"),
        json!("EdDSA"),
        json!("es256"),
        json!(""),
        json!(7),
    ] {
        let t = f.sign(
            &json!({"alg": alg, "kid": "k1", "typ": "JWT"}),
            &claims(later()),
        );
        assert_eq!(
            reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
            JwtReject::DisallowedAlgorithm,
            "{alg}"
        );
    }
    let no_alg = f.sign(&json!({"kid": "k1"}), &claims(later()));
    assert_eq!(
        reject(validate_jwt_svid(&no_alg, &f.bundles(TD), "db", t0())),
        JwtReject::DisallowedAlgorithm
    );
    // The classic `alg: none` token with an empty signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims(later()).to_string())
    );
    assert_eq!(
        reject(validate_jwt_svid(&none, &f.bundles(TD), "db", t0())),
        JwtReject::DisallowedAlgorithm
    );
}

#[test]
fn jwt_must_check_the_algorithm_before_processing() {
    // Everything else is wrong too: unknown header, bad typ, no kid, undecodable claims and
    // signature. The answer must still be about the algorithm.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"bogus","x":1}"#);
    let t = format!("{header}.!!!.???");
    assert_eq!(
        reject(validate_jwt_svid(&t, &BundleMap::default(), "db", t0())),
        JwtReject::DisallowedAlgorithm
    );
}

#[test]
fn jwt_es512_is_allowed_but_unsupported() {
    let f = Forger::es256("k1");
    let t = f.sign(&json!({"alg": "ES512", "kid": "k1"}), &claims(later()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::UnsupportedAlgorithm
    );
}

// ----- §2.2, §2.3: kid and typ -----

#[test]
fn jwt_must_typ_be_jwt_or_jose_when_present() {
    let f = Forger::es256("k1");
    for typ in ["JWT", "JOSE"] {
        let t = f.sign(
            &json!({"alg": "ES256", "kid": "k1", "typ": typ}),
            &claims(later()),
        );
        assert!(
            validate_jwt_svid(&t, &f.bundles(TD), "db", t0()).is_ok(),
            "{typ}"
        );
    }
    for typ in [json!("jwt"), json!("at+jwt"), json!(1)] {
        let t = f.sign(
            &json!({"alg": "ES256", "kid": "k1", "typ": typ}),
            &claims(later()),
        );
        assert_eq!(
            reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
            JwtReject::Typ,
            "{typ}"
        );
    }
}

#[test]
fn jwt_without_kid_is_rejected() {
    let f = Forger::es256("k1");
    let t = f.sign(&json!({"alg": "ES256", "typ": "JWT"}), &claims(later()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::MissingKid
    );
}

// ----- §3: claims -----

#[test]
fn jwt_must_sub_be_the_spiffe_id() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    assert_eq!(part(&token, 1)["sub"], "spiffe://example.org/web");
    let c = validate_jwt_svid(&token, &node.bundle_map(), "db", t0()).expect("valid");
    assert_eq!(c.spiffe_id, id("spiffe://example.org/web"));

    let f = Forger::es256("k1");
    for sub in [
        json!("web"),
        json!("https://example.org/web"),
        json!(null),
        json!(["spiffe://example.org/web"]),
    ] {
        let mut c = claims(later());
        c["sub"] = sub.clone();
        let t = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &c);
        assert_eq!(
            reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
            JwtReject::Subject,
            "{sub}"
        );
    }
}

#[test]
fn jwt_must_aud_be_present_and_contain_the_audience() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(
        &mut node,
        "spiffe://example.org/web",
        &["db", "cache"],
        t0(),
        false,
    );
    assert_eq!(part(&token, 1)["aud"], json!(["db", "cache"]));
    let bundles = node.bundle_map();
    assert!(validate_jwt_svid(&token, &bundles, "cache", t0()).is_ok());
    assert_eq!(
        reject(validate_jwt_svid(&token, &bundles, "other", t0())),
        JwtReject::Audience
    );

    let f = Forger::es256("k1");
    let cases = [
        (json!(null), false),
        (json!([]), false),
        (json!("db"), true),
        (json!(["x", "db"]), true),
        (json!([1]), false),
    ];
    for (aud, ok) in cases {
        let mut c = claims(later());
        if aud.is_null() {
            c.as_object_mut().expect("obj").remove("aud");
        } else {
            c["aud"] = aud.clone();
        }
        let t = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &c);
        let r = validate_jwt_svid(&t, &f.bundles(TD), "db", t0());
        if ok {
            assert!(r.is_ok(), "{aud}");
        } else {
            assert_eq!(reject(r), JwtReject::Audience, "{aud}");
        }
    }
    // Minting refuses an empty audience.
    let key = node.keyring.active_jwt(t0()).expect("key");
    let sub = id("spiffe://example.org/web");
    let req = JwtSvidRequest {
        spiffe_id: &sub,
        audience: &[],
        ttl: secs(60),
        issuer: None,
        with_jti: false,
    };
    assert!(key.mint(&req, t0(), &mut node.rng).is_err());
}

#[test]
fn jwt_must_exp_be_present_and_not_past() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    let exp = part(&token, 1)["exp"].as_u64().expect("exp");
    assert_eq!(exp, t0().as_secs() + 300);
    let bundles = node.bundle_map();
    let at_exp = UnixTime::from_secs(exp);
    assert!(validate_jwt_svid_with_leeway(
        &token,
        &bundles,
        "db",
        at_exp.saturating_sub(secs(1)),
        secs(0)
    )
    .is_ok());
    assert_eq!(
        reject(validate_jwt_svid_with_leeway(
            &token,
            &bundles,
            "db",
            at_exp,
            secs(0)
        )),
        JwtReject::Expired
    );
    // Small leeway.
    assert!(validate_jwt_svid(&token, &bundles, "db", at_exp.saturating_add(secs(5))).is_ok());
    assert_eq!(
        reject(validate_jwt_svid(
            &token,
            &bundles,
            "db",
            at_exp.saturating_add(JWT_LEEWAY_DEFAULT)
        )),
        JwtReject::Expired
    );

    let f = Forger::es256("k1");
    let mut c = claims(later());
    c.as_object_mut().expect("obj").remove("exp");
    let t = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &c);
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::MissingExp
    );
    c["exp"] = json!("soon");
    let t = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &c);
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::MissingExp
    );
    // nbf in the future.
    let mut c = claims(later());
    c["nbf"] = json!(t0().as_secs() + 3600);
    let t = f.sign(&json!({"alg": "ES256", "kid": "k1"}), &c);
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::NotYetValid
    );
}

// ----- §6: keys from the subject's trust domain only -----

#[test]
fn jwt_must_validate_with_keys_of_the_subjects_trust_domain() {
    // A partner trust domain publishes a key under the same kid; its tokens claiming our
    // identities must not verify.
    let ours = Forger::es256("shared-kid");
    let theirs = Forger::es256("shared-kid");
    let mut bundles = ours.bundles(TD);
    bundles.0.extend(theirs.bundles("partner.example").0);
    let forged = theirs.sign(
        &json!({"alg": "ES256", "kid": "shared-kid"}),
        &claims(later()),
    );
    assert_eq!(
        reject(validate_jwt_svid(&forged, &bundles, "db", t0())),
        JwtReject::BadSignature
    );
    // A partner's key under its own kid is simply unknown in our bundle.
    let partner_only = Forger::es256("partner-kid");
    let mut bundles = ours.bundles(TD);
    bundles.0.extend(partner_only.bundles("partner.example").0);
    let forged = partner_only.sign(
        &json!({"alg": "ES256", "kid": "partner-kid"}),
        &claims(later()),
    );
    assert_eq!(
        reject(validate_jwt_svid(&forged, &bundles, "db", t0())),
        JwtReject::UnknownKid
    );
    // The partner's own identities verify with the partner's key.
    let mut c = claims(later());
    c["sub"] = json!("spiffe://partner.example/api");
    let t = partner_only.sign(&json!({"alg": "ES256", "kid": "partner-kid"}), &c);
    assert!(validate_jwt_svid(&t, &bundles, "db", t0()).is_ok());
    // No bundle for the subject's trust domain.
    c["sub"] = json!("spiffe://unknown.example/api");
    let t = partner_only.sign(&json!({"alg": "ES256", "kid": "partner-kid"}), &c);
    assert_eq!(
        reject(validate_jwt_svid(&t, &bundles, "db", t0())),
        JwtReject::NoBundle
    );
}

#[test]
fn jwt_bad_signatures_and_mismatched_keys_are_rejected() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    let bundles = node.bundle_map();
    // Swap the claims for other claims: the signature no longer matches.
    let parts: Vec<&str> = token.split('.').collect();
    let mut other = claims(later());
    other["aud"] = json!(["cache"]);
    let other_claims = URL_SAFE_NO_PAD.encode(other.to_string());
    let swapped = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    assert_eq!(
        reject(validate_jwt_svid(&swapped, &bundles, "cache", t0())),
        JwtReject::BadSignature
    );
    // ES384 header over a P-256 key.
    let f = Forger::es256("k1");
    let t = f.sign(&json!({"alg": "ES384", "kid": "k1"}), &claims(later()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::KeyMismatch
    );
    let t = f.sign(&json!({"alg": "RS256", "kid": "k1"}), &claims(later()));
    assert_eq!(
        reject(validate_jwt_svid(&t, &f.bundles(TD), "db", t0())),
        JwtReject::KeyMismatch
    );
}

// ----- other algorithms of the allow-list (verification through ring) -----

#[test]
fn jwt_es384_verifies() {
    let f = Forger::new(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", "k384");
    let t = f.sign(
        &json!({"alg": "ES384", "kid": "k384", "typ": "JWT"}),
        &claims(later()),
    );
    assert!(validate_jwt_svid(&t, &f.bundles(TD), "db", t0()).is_ok());
}

#[test]
fn jwt_rs256_and_ps256_verify() {
    let Ok(out) = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
        ])
        .output()
    else {
        eprintln!(
            "SKIPPED jwt_rs256_and_ps256_verify: `openssl` is not on PATH (needed for an RSA key)"
        );
        return;
    };
    assert!(out.status.success());
    // openssl 3 writes DER RSA keys as PKCS#1; older versions as PKCS#8.
    let pair = RsaKeyPair::from_der(&out.stdout)
        .or_else(|_| RsaKeyPair::from_pkcs8(&out.stdout))
        .expect("rsa");
    let comps = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    let mut bundles = BundleMap::default();
    bundles.0.insert(
        td(TD),
        Bundle {
            jwt_authorities: vec![JwtAuthority {
                kid: "rsa".into(),
                key: PublicJwk::Rsa {
                    n: comps.n,
                    e: comps.e,
                },
            }],
            ..Bundle::default()
        },
    );
    for (alg, enc) in [
        (
            "RS256",
            &ring::signature::RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding,
        ),
        ("PS256", &ring::signature::RSA_PSS_SHA256),
        ("RS512", &ring::signature::RSA_PKCS1_SHA512),
    ] {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "rsa"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims(later()).to_string())
        );
        let mut sig = vec![0u8; pair.public().modulus_len()];
        pair.sign(enc, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .expect("sign");
        let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert!(validate_jwt_svid(&t, &bundles, "db", t0()).is_ok(), "{alg}");
        sig[10] ^= 1;
        let tampered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(
            reject(validate_jwt_svid(&tampered, &bundles, "db", t0())),
            JwtReject::BadSignature
        );
    }
}

// ----- minting details -----

#[test]
fn jwt_claims_shape_jti_iss_and_cap_at_key_expiry() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let a = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), true);
    let b = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), true);
    let (ca, cb) = (part(&a, 1), part(&b, 1));
    let jti = ca["jti"].as_str().expect("jti");
    assert_eq!(jti.len(), 32);
    assert_ne!(ca["jti"], cb["jti"], "fresh jti");
    assert_eq!(ca["iat"].as_u64(), Some(t0().as_secs()));
    let keys: Vec<&String> = ca.as_object().expect("obj").keys().collect();
    assert_eq!(keys, ["aud", "exp", "iat", "jti", "sub"]);
    let no_jti = mint(&mut node, "spiffe://example.org/web", &["db"], t0(), false);
    assert!(part(&no_jti, 1).get("jti").is_none());

    let key = node.keyring.active_jwt(t0()).expect("key");
    let key_not_after = key.authority().not_after;
    let sub = id("spiffe://example.org/web");
    let aud = vec!["db".to_owned()];
    let late = key_not_after.saturating_sub(secs(60));
    let t = key
        .mint(
            &JwtSvidRequest {
                spiffe_id: &sub,
                audience: &aud,
                ttl: secs(300),
                issuer: Some("https://issuer.example"),
                with_jti: false,
            },
            late,
            &mut node.rng,
        )
        .expect("mint");
    let c = part(&t, 1);
    assert_eq!(
        c["exp"].as_u64(),
        Some(key_not_after.as_secs()),
        "capped at the key's expiry"
    );
    assert_eq!(c["iss"], "https://issuer.example");
    let foreign = id("spiffe://other.org/web");
    let req = JwtSvidRequest {
        spiffe_id: &foreign,
        audience: &aud,
        ttl: secs(60),
        issuer: None,
        with_jti: false,
    };
    assert!(matches!(
        key.mint(&req, t0(), &mut node.rng),
        Err(Error::ForeignTrustDomain { .. })
    ));
    let req = JwtSvidRequest {
        spiffe_id: &sub,
        audience: &aud,
        ttl: secs(60),
        issuer: None,
        with_jti: false,
    };
    assert_eq!(
        key.mint(&req, key_not_after, &mut node.rng),
        Err(Error::AuthorityExpired)
    );
}

// ----- the independent implementation -----

#[test]
fn minted_jwt_svid_verifies_with_the_spiffe_crate() {
    // The spiffe crate validates `exp` against the OS clock, so mint at the real time.
    #[allow(clippy::disallowed_methods)] // test-only: the spiffe crate reads the OS clock
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let wall = UnixTime::from_millis(now.as_millis() as u64);
    let mut node = Node::bootstrapped(TD, 1, 1, wall);
    let token = mint(&mut node, "spiffe://example.org/web", &["db"], wall, true);

    let jwks = node.bundle().jwt_only().to_json();
    let td_spiffe = spiffe::TrustDomain::new(TD).expect("td");
    let bundle = spiffe::JwtBundle::from_jwt_authorities(td_spiffe, jwks.as_bytes()).expect("jwks");
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(bundle);
    let svid =
        spiffe::JwtSvid::parse_and_validate(&token, &set, &["db"]).expect("spiffe crate accepts");
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.audience(), ["db"]);
    assert!(
        spiffe::JwtSvid::parse_and_validate(&token, &set, &["other"]).is_err(),
        "wrong audience"
    );

    // A token from a key that was never published does not verify.
    let mut stranger = Node::bootstrapped(TD, 2, 2, wall);
    let foreign = mint(
        &mut stranger,
        "spiffe://example.org/web",
        &["db"],
        wall,
        false,
    );
    assert!(spiffe::JwtSvid::parse_and_validate(&foreign, &set, &["db"]).is_err());
    // And our validator agrees on both.
    assert!(validate_jwt_svid(&token, &node.bundle_map(), "db", wall).is_ok());
    assert!(validate_jwt_svid(&foreign, &node.bundle_map(), "db", wall).is_err());
}

#[test]
fn jwt_claims_escape_audiences_and_issuer() {
    let mut node = Node::bootstrapped(TD, 1, 1, t0());
    let key = node.keyring.active_jwt(t0()).expect("key");
    let sub = id("spiffe://example.org/web");
    let aud = vec!["a\"b\\c".to_owned(), "ünï\u{1}code".to_owned()];
    let token = key
        .mint(
            &JwtSvidRequest {
                spiffe_id: &sub,
                audience: &aud,
                ttl: secs(60),
                issuer: Some("iss\"uer"),
                with_jti: true,
            },
            t0(),
            &mut node.rng,
        )
        .expect("mint");
    let c = validate_jwt_svid(&token, &node.bundle_map(), "ünï\u{1}code", t0()).expect("valid");
    assert_eq!(c.audience, aud);
    assert_eq!(c.claims["iss"], "iss\"uer");
    assert_eq!(c.claims["sub"], "spiffe://example.org/web");
}
