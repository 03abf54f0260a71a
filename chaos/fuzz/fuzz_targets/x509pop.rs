//! Fuzz target: x509pop attestation and the CA-bundle file parsers. The first byte picks the
//! decoder: a proof (1) — chain certificates then the signature, framed by `sigil_fuzz::split` —
//! verified against a fixed CA and message; a PEM CA bundle (2) whose certificates are checked as
//! CAs; or one DER CA certificate (0).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_fuzz::{fixtures, now, split};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    match mode % 3 {
        1 => {
            let fields = split(rest, 9);
            let Some((signature, chain)) = fields.split_last() else {
                return;
            };
            if let Ok(identity) =
                attest::x509pop::verify(chain, &[&f.pop_ca], now(), &f.pop_message, signature)
            {
                assert!(!identity.selectors.is_empty());
                assert_eq!(identity.fingerprint, attest::x509pop::fingerprint(chain[0]));
            }
        }
        2 => {
            if let Ok(certs) = attest::x509pop::certificates_from_pem(rest) {
                for cert in certs {
                    let _ = attest::x509pop::check_ca(&cert);
                    let _ = attest::x509pop::ca_expired(&cert, now());
                }
            }
        }
        _ => {
            let _ = attest::x509pop::check_ca(rest);
            let _ = attest::x509pop::ca_expired(rest, now());
        }
    }
});
