//! Fuzz target: JWT-SVID validation against a fixed bundle. The first byte picks what the fuzzer
//! controls: the whole token (0), the claims of a token validly signed with a fixed header (1),
//! or the header of a token validly signed with fixed claims (2) — so the code after the
//! signature check is reached too. Whatever validates is for the bundle's trust domain and the
//! audience asked for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_fuzz::{fixtures, now, AUDIENCE, FUZZ_CLAIMS, FUZZ_HEADER, TD};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => f.sign_jwt(FUZZ_HEADER.as_bytes(), rest),
        _ => f.sign_jwt(rest, FUZZ_CLAIMS.as_bytes()),
    };
    if let Ok(claims) = attest::jwt::validate_jwt_svid(&token, &f.bundles, AUDIENCE, now()) {
        assert_eq!(claims.spiffe_id.trust_domain_str(), TD);
        assert!(claims.audience.iter().any(|a| a == AUDIENCE));
        assert!(claims.expiry.as_secs() + 30 >= now().as_secs());
    }
});
