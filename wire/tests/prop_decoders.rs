//! Properties of wire's decoders that face peers, workloads and files — the same decoders the
//! fuzz targets in `chaos/fuzz` exercise (`wire_api`, `id_selector`, `bundle_json`), run here in
//! `cargo test` so CI keeps covering them: arbitrary and mutated-valid input never panics, and
//! whatever decodes round-trips.

use proptest::prelude::*;
use wire::api::{ApiCode, ApiError, ApiRequest, ApiResponse, SignX509};
use wire::bundle::{Bundle, BundleMap, JwtAuthority, PublicJwk, X509Authority};
use wire::{codec, EntryId, Selector, SpiffeId, TrustDomain, UnixTime};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn entry_id() -> impl Strategy<Value = EntryId> {
    any::<[u8; 16]>().prop_map(EntryId::from_random)
}

fn request() -> impl Strategy<Value = ApiRequest> {
    prop_oneof![
        Just(ApiRequest::Bundle),
        Just(ApiRequest::Watch),
        ("[ -~]{0,40}", bytes(100)).prop_map(|(token, public_key_der)| {
            ApiRequest::AttestJoinToken {
                token,
                public_key_der,
            }
        }),
        (
            proptest::collection::vec(bytes(64), 0..3),
            bytes(64),
            bytes(64)
        )
            .prop_map(
                |(chain, signature, public_key_der)| ApiRequest::AttestX509Pop {
                    chain,
                    signature,
                    public_key_der,
                }
            ),
        proptest::collection::vec((entry_id(), bytes(64)), 0..4).prop_map(|r| {
            ApiRequest::SignX509 {
                requests: r
                    .into_iter()
                    .map(|(entry_id, public_key_der)| SignX509 {
                        entry_id,
                        public_key_der,
                    })
                    .collect(),
            }
        }),
        (entry_id(), proptest::collection::vec("\\PC{0,12}", 0..3))
            .prop_map(|(entry_id, audience)| ApiRequest::MintJwt { entry_id, audience }),
        (
            bytes(64),
            proptest::option::of(bytes(64)),
            bytes(64),
            proptest::collection::vec((any::<u8>(), bytes(33)), 0..4)
        )
            .prop_map(|(ek_public, ek_cert, ak_public, pcrs)| {
                ApiRequest::AttestTpmFinish {
                    ek_public: ek_public.clone(),
                    ek_cert,
                    ak_public,
                    token: ek_public.clone(),
                    activated_secret: ek_public.clone(),
                    quote: ek_public.clone(),
                    quote_signature: ek_public,
                    pcrs,
                    public_key_der: vec![0x30],
                }
            }),
    ]
}

fn response() -> impl Strategy<Value = ApiResponse> {
    prop_oneof![
        bundle().prop_map(ApiResponse::Bundle),
        "\\PC{0,40}".prop_map(|m| ApiResponse::Error(ApiError::new(ApiCode::NotFound, m))),
        ("[A-Za-z0-9._-]{0,80}", any::<u64>()).prop_map(|(token, ms)| ApiResponse::Jwt {
            token,
            expires_at: UnixTime::from_millis(ms),
        }),
        (bytes(64), bytes(64), bytes(16)).prop_map(|(credential_blob, encrypted_secret, token)| {
            ApiResponse::TpmChallenge {
                credential_blob,
                encrypted_secret,
                token,
            }
        }),
        proptest::collection::vec("\\PC{0,10}", 0..3).prop_map(|m| {
            ApiResponse::X509(m.into_iter().map(|m| Err(ApiError::invalid(m))).collect())
        }),
    ]
}

fn jwk() -> impl Strategy<Value = PublicJwk> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(x, y)| PublicJwk::Ec {
            crv: "P-256".to_owned(),
            x: x.to_vec(),
            y: y.to_vec(),
        }),
        (bytes(300), bytes(4)).prop_map(|(n, e)| PublicJwk::Rsa { n, e }),
        any::<[u8; 32]>().prop_map(|x| PublicJwk::Okp {
            crv: "Ed25519".to_owned(),
            x: x.to_vec(),
        }),
    ]
}

fn bundle() -> impl Strategy<Value = Bundle> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..80), jwk()), 0..3),
        proptest::collection::btree_map("[a-zA-Z0-9_-]{1,20}", jwk(), 0..3),
    )
        .prop_map(|(sequence, refresh_hint_secs, x509, jwt)| Bundle {
            sequence,
            refresh_hint_secs,
            x509_authorities: x509
                .into_iter()
                .map(|(cert_der, key)| X509Authority { cert_der, key })
                .collect(),
            jwt_authorities: jwt
                .into_iter()
                .map(|(kid, key)| JwtAuthority { kid, key })
                .collect(),
        })
}

/// Decodes `frame` as both API messages; whatever decodes must round-trip.
fn check_api_frame(frame: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(req) = codec::decode::<ApiRequest>(frame) {
        let _ = req.check();
        let again = codec::encode(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::decode::<ApiRequest>(&again).ok(), Some(req));
    }
    if let Ok(resp) = codec::decode::<ApiResponse>(frame) {
        let again = codec::encode(&resp).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::decode::<ApiResponse>(&again).ok(), Some(resp));
    }
    Ok(())
}

/// Parses `text` as an ID, a trust domain and a selector; whatever parses must print and parse
/// back to an equal value, and serde must agree with `FromStr`.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    let json = serde_json::to_string(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let id = text.parse::<SpiffeId>().ok();
    if let Some(id) = &id {
        prop_assert_eq!(id.to_string().parse::<SpiffeId>().ok(), Some(id.clone()));
        let td = id.trust_domain();
        prop_assert!(id.is_member_of(&td));
        prop_assert_eq!(td.to_string().parse::<TrustDomain>().ok(), Some(td));
    }
    prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).ok(), id);
    let td = text.parse::<TrustDomain>().ok();
    if let Some(td) = &td {
        prop_assert_eq!(td.to_string().parse::<TrustDomain>().ok(), Some(td.clone()));
        prop_assert_eq!(&td.id().trust_domain(), td);
    }
    prop_assert_eq!(serde_json::from_str::<TrustDomain>(&json).ok(), td);
    let sel = text.parse::<Selector>().ok();
    if let Some(sel) = &sel {
        prop_assert_eq!(sel.to_string().parse::<Selector>().ok(), Some(sel.clone()));
    }
    prop_assert_eq!(serde_json::from_str::<Selector>(&json).ok(), sel);
    Ok(())
}

/// Parses `doc` as a bundle and a bundle map; whatever parses must print and parse back.
fn check_bundle_json(doc: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(b) = Bundle::from_json(doc) {
        prop_assert_eq!(Bundle::from_json(b.to_json().as_bytes()).ok(), Some(b));
    }
    if let Ok(m) = BundleMap::from_json(doc) {
        prop_assert_eq!(BundleMap::from_json(m.to_json().as_bytes()).ok(), Some(m));
    }
    Ok(())
}

/// `edits` applied to `data`: each `(index, byte)` overwrites one byte, then an optional cut.
fn mutate(
    mut data: Vec<u8>,
    edits: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    if !data.is_empty() {
        for (i, b) in edits {
            let i = i.index(data.len());
            data[i] = *b;
        }
    }
    if let Some(c) = cut {
        data.truncate(c.index(data.len() + 1));
    }
    data
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn api_messages_round_trip(req in request(), resp in response()) {
        let frame = codec::encode(&req).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::decode::<ApiRequest>(&frame).ok(), Some(req));
        let frame = codec::encode(&resp).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::decode::<ApiResponse>(&frame).ok(), Some(resp));
    }

    #[test]
    fn arbitrary_api_frames_never_panic(body in bytes(256), versioned in any::<bool>()) {
        let mut frame = if versioned { vec![codec::CODEC_VERSION] } else { Vec::new() };
        frame.extend_from_slice(&body);
        check_api_frame(&frame)?;
    }

    #[test]
    fn mutated_api_frames_never_panic(
        req in request(),
        resp in response(),
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        for frame in [codec::encode(&req), codec::encode(&resp)] {
            let frame = frame.map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_api_frame(&mutate(frame, &edits, cut))?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,60}") {
        check_text(&text)?;
    }

    #[test]
    fn id_like_text_round_trips(
        text in "(spiffe://)?[a-zA-Z0-9.%_-]{0,20}(/[a-zA-Z0-9.%_:-]{0,8}){0,3}/?",
    ) {
        check_text(&text)?;
    }

    #[test]
    fn valid_ids_and_selectors_round_trip(
        td in "[a-z0-9][a-z0-9._-]{0,30}",
        segments in proptest::collection::vec("[a-zA-Z0-9._-]{1,10}", 0..4),
        kind in "[a-z0-9_-]{1,10}",
        value in "[ -~]{1,40}",
    ) {
        let text = format!("spiffe://{td}");
        if let Ok(td) = text.parse::<TrustDomain>() {
            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
            if let Ok(id) = td.join(&refs) {
                prop_assert!(id.is_member_of(&td));
                check_text(id.as_str())?;
            }
        }
        let sel = Selector::new(&kind, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(sel.to_string().parse::<Selector>().ok(), Some(sel));
    }

    #[test]
    fn bundles_round_trip_through_json(b in bundle()) {
        let json = b.to_json();
        prop_assert_eq!(Bundle::from_json(json.as_bytes()).ok(), Some(b.clone()));
        let mut map = BundleMap::default();
        map.0.insert("example.org".parse().map_err(|_| TestCaseError::fail("td"))?, b);
        prop_assert_eq!(BundleMap::from_json(map.to_json().as_bytes()).ok(), Some(map));
    }

    #[test]
    fn mutated_bundle_json_never_panics(
        b in bundle(),
        edits in edits(),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let doc = mutate(b.to_json().into_bytes(), &edits, cut);
        check_bundle_json(&doc)?;
        let map = format!("{{\"trust_domains\":{{\"example.org\":{}}}}}", String::from_utf8_lossy(&doc));
        check_bundle_json(map.as_bytes())?;
    }

    #[test]
    fn arbitrary_bundle_json_never_panics(
        doc in "\\{(\"(keys|kty|use|x5c|kid|crv|x|y|n|e|spiffe_sequence|trust_domains)\":(\\[|\\{|\"[A-Za-z0-9_+/=-]{0,12}\"|-?[0-9]{1,3}|null|,|\\]|\\}){0,6}){0,6}\\}",
        raw in bytes(128),
    ) {
        check_bundle_json(doc.as_bytes())?;
        check_bundle_json(&raw)?;
    }
}
