//! Fuzz target: SPIFFE bundle documents (JWKS) and bundle maps, as read from files, federation
//! endpoints and the admin API. Whatever parses must print and parse back to an equal value, and
//! survive the codec.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::{codec, Bundle, BundleMap};

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = Bundle::from_json(data) {
        let json = bundle.to_json();
        let again = Bundle::from_json(json.as_bytes()).expect("a printed bundle parses");
        assert_eq!(again, bundle);
        let frame = codec::encode(&bundle).expect("a bundle encodes");
        assert_eq!(
            codec::decode::<Bundle>(&frame).expect("and decodes"),
            bundle
        );
        let _ = attest::bundle::bundle_sha256(&bundle);
        let _ = bundle.jwt_only();
    }
    if let Ok(map) = BundleMap::from_json(data) {
        let json = map.to_json();
        let again = BundleMap::from_json(json.as_bytes()).expect("a printed bundle map parses");
        assert_eq!(again, map);
    }
});
