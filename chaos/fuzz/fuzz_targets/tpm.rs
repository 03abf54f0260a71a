//! Fuzz target: the TPM structures an agent sends. The first byte picks the decoder:
//! 0 a public area (parsed as an EK and as an AK; a parsed EK gets a credential made for it),
//! 1 a quote (`TPMS_ATTEST`, validly signed by the fixed AK, so its body is parsed; the next byte
//!   picks which fixture PCRs are reported),
//! 2 a quote signature (`TPMT_SIGNATURE`) over a valid fixture quote,
//! 3 an EK certificate checked against the EK policy,
//! 4 the challenger's finish step on arbitrary evidence (fields framed by `sigil_fuzz::split`).

#![no_main]

use attest::tpm::{make_credential, verify_quote, AkPublic, EkPublic, Evidence};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sigil_fuzz::{fixtures, now, pcrs, quote, split, BINDING, QUOTE_EXTRA};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    let ak = AkPublic::parse(&f.ak_public).expect("fixture AK");
    match mode % 5 {
        0 => {
            if let Ok(ek) = EkPublic::parse(rest) {
                assert!(!ek.spki_der().is_empty());
                let _ = ek.hash();
                let mut rng = ChaCha20Rng::seed_from_u64(1);
                let _ = make_credential(&ek, ak.name(), &[0x77; 32], &mut rng);
                let _ = f.ek_policy.check(&ek, None, now());
            }
            if let Ok(parsed) = AkPublic::parse(rest) {
                assert_eq!(parsed.name().len(), 34);
            }
        }
        1 => {
            let Some((&mask, body)) = rest.split_first() else {
                return;
            };
            let reported = pcrs(mask);
            let signature = f.sign_quote(body);
            // Fields the server ignores (qualifiedSigner, clock info) may differ; the nonce may not.
            if verify_quote(&ak, body, &signature, &QUOTE_EXTRA, &reported).is_ok() {
                assert!(body.windows(QUOTE_EXTRA.len()).any(|w| w == QUOTE_EXTRA));
            }
        }
        2 => {
            let reported = pcrs(0b011);
            let q = quote(&QUOTE_EXTRA, &reported);
            let _ = verify_quote(&ak, &q, rest, &QUOTE_EXTRA, &reported);
        }
        3 => {
            let ek = EkPublic::parse(&f.ek_public).expect("fixture EK");
            let _ = f.ek_policy.check(&ek, Some(rest), now());
        }
        _ => {
            let fields = split(rest, 9);
            let field = |i: usize| fields.get(i).copied().unwrap_or_default();
            let pcrs: Vec<(u8, Vec<u8>)> = field(7)
                .chunks(33)
                .filter_map(|c| c.split_first().map(|(i, v)| (*i, v.to_vec())))
                .collect();
            let evidence = Evidence {
                ek_public: field(0),
                ek_cert: Some(field(1)).filter(|c| !c.is_empty()),
                ak_public: field(2),
                token: field(3),
                activated_secret: field(4),
                quote: field(5),
                signature: field(6),
                pcrs: &pcrs,
                public_key_der: field(8),
            };
            let _ = f
                .challenger()
                .finish(&f.ek_policy, &evidence, &BINDING, now());
        }
    }
});
