//! Validators take peer input: mutated certificates and tokens must give errors, never panics,
//! and must never validate as a different identity.

mod common;

use attest::jwt::validate_jwt_svid;
use attest::x509::validate_x509_svid;
use attest::{JwtSvidRequest, X509SvidRequest};
use common::{secs, t0, Node};
use proptest::prelude::*;
use wire::SpiffeId;

fn fixtures() -> (Node, Vec<u8>, String) {
    let mut node = Node::bootstrapped("example.org", 1, 1, t0());
    let web: SpiffeId = "spiffe://example.org/web".parse().expect("id");
    let keys = attest::keys::SeededKeySource::new(wire::Seed::from_u64(4));
    let spki = wire::KeySource::generate(&keys, wire::KeyAlg::EcP256)
        .expect("key")
        .public_key_der()
        .to_vec();
    let cert = node
        .keyring
        .active_x509(t0())
        .expect("ca")
        .mint(
            &X509SvidRequest {
                spiffe_id: &web,
                dns_names: &["web.example.org".to_owned()],
                public_key_der: &spki,
                ttl: secs(600),
                not_before_cushion: secs(10),
            },
            t0(),
            &mut node.rng,
        )
        .expect("mint")
        .cert_der;
    let aud = vec!["db".to_owned()];
    let token = node
        .keyring
        .active_jwt(t0())
        .expect("jwt")
        .mint(
            &JwtSvidRequest {
                spiffe_id: &web,
                audience: &aud,
                ttl: secs(300),
                issuer: None,
                with_jti: true,
            },
            t0(),
            &mut node.rng,
        )
        .expect("mint");
    (node, cert, token)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_certificates_never_panic_or_change_identity(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (node, mut cert, _) = fixtures();
        for (i, b) in &edits {
            let i = i.index(cert.len());
            cert[i] = *b;
        }
        if let Some(c) = cut {
            cert.truncate(c.index(cert.len()));
        }
        if let Ok(id) = validate_x509_svid(&[&cert], &node.bundle_map(), t0()) {
            prop_assert_eq!(id.as_str(), "spiffe://example.org/web");
        }
    }

    #[test]
    fn mutated_tokens_never_panic_or_change_identity(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (node, _, token) = fixtures();
        let mut bytes = token.into_bytes();
        for (i, b) in &edits {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        let token = String::from_utf8_lossy(&bytes).into_owned();
        if let Ok(c) = validate_jwt_svid(&token, &node.bundle_map(), "db", t0()) {
            prop_assert_eq!(c.spiffe_id.as_str(), "spiffe://example.org/web");
        }
    }
}
