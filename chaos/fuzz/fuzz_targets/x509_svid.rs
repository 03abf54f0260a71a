//! Fuzz target: X.509-SVID validation (what a workload or peer presents) against a fixed bundle,
//! on chains of 1 to 4 arbitrary DER certificates (framing: `sigil_fuzz::split`). Whatever
//! validates is in the bundle's trust domain.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_fuzz::{fixtures, now, split, TD};

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let chain = split(data, 4);
    if let Ok(id) = attest::x509::validate_x509_svid(&chain, &f.bundles, now()) {
        assert_eq!(id.trust_domain_str(), TD);
        assert!(!id.is_trust_domain_id());
    }
    for cert in &chain {
        let _ = attest::x509::not_after(cert);
    }
});
