//! Fuzz target: the node API's request and response frames (versioned bincode codec), as a
//! server decodes what an agent or joining node sends and an agent decodes what a server answers.
//! Whatever decodes must re-encode, decode to an equal value, and re-encode to the same frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::api::{ApiRequest, ApiResponse};
use wire::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = codec::decode::<ApiRequest>(data) {
        let _ = req.check();
        let _ = req.needs_agent();
        let frame = codec::encode(&req).expect("a decoded request re-encodes");
        let again: ApiRequest = codec::decode(&frame).expect("a re-encoded request decodes");
        assert_eq!(again, req);
        assert_eq!(codec::encode(&again).expect("re-encodes"), frame);
    }
    if let Ok(resp) = codec::decode::<ApiResponse>(data) {
        let frame = codec::encode(&resp).expect("a decoded response re-encodes");
        let again: ApiResponse = codec::decode(&frame).expect("a re-encoded response decodes");
        assert_eq!(again, resp);
        assert_eq!(codec::encode(&again).expect("re-encodes"), frame);
    }
});
