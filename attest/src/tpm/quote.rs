//! Quotes: the attestation key ([`AkPublic`]), the nonce an agent quotes with
//! ([`qualifying_data`]) and [`verify_quote`] — the `TPMT_SIGNATURE`, the `TPMS_ATTEST` and its
//! PCR selection and digest.

use std::collections::BTreeSet;
use std::fmt;

use ring::{digest, signature};
use wire::api::{TPM_PCRS_MAX, TPM_QUOTE_BYTES_MAX, TPM_SIGNATURE_BYTES_MAX};

use super::marshal::{p256_point, uncompressed, AreaKey, PublicArea, Reader};
use super::{
    alg, attr, sized, TpmError, BINDING_BYTES, PCR_INDEX_MAX, TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
};
use crate::hex;

/// A checked attestation key public area.
#[derive(Clone, PartialEq, Eq)]
pub struct AkPublic {
    point: [u8; 65],
    name: Vec<u8>,
}

impl fmt::Debug for AkPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AkPublic(name {})", hex(&self.name))
    }
}

impl AkPublic {
    /// Parses and checks a marshalled `TPMT_PUBLIC` of an AK: ECC P-256, nameAlg SHA-256,
    /// restricted, sign (not decrypt), fixedTPM, fixedParent, sensitiveDataOrigin, scheme ECDSA
    /// with SHA-256, no symmetric algorithm or KDF.
    pub fn parse(tpmt_public: &[u8]) -> Result<AkPublic, TpmError> {
        let area = PublicArea::parse(tpmt_public, "AK public area")?;
        let needed = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::RESTRICTED
            | attr::SIGN;
        if !area.has(needed) || area.has(attr::DECRYPT) {
            return Err(TpmError::BadAk("missing attributes, or a decryption key"));
        }
        if area.symmetric.is_some() {
            return Err(TpmError::BadAk("it has a symmetric algorithm"));
        }
        if area.scheme != Some((alg::ECDSA, alg::SHA256)) {
            return Err(TpmError::BadAk("its scheme is not ECDSA with SHA-256"));
        }
        let AreaKey::Ecc { curve, kdf, x, y } = &area.key else {
            return Err(TpmError::BadAk("not an ECC key"));
        };
        if *curve != alg::NIST_P256 || kdf.is_some() {
            return Err(TpmError::BadAk("not a NIST P-256 key without KDF"));
        }
        let point = p256_point(x, y)
            .and_then(|p| uncompressed(p.as_affine()))
            .ok_or(TpmError::BadAk("its point is not on the P-256 curve"))?;
        Ok(AkPublic {
            point,
            name: area.name,
        })
    }

    /// The AK's TPM name: `TPM_ALG_SHA256 || SHA-256(TPMT_PUBLIC)` (34 bytes).
    pub fn name(&self) -> &[u8] {
        &self.name
    }
}

/// The `extraData` an agent puts in its quote: SHA-256 of `"sigil tpm quote v1\0" || [len]₁₆ ||
/// token || binding || SHA-256(public_key_der)`, where `binding` is the connection's
/// channel-binding value and `public_key_der` the key the agent SVID is for.
pub fn qualifying_data(
    token: &[u8],
    binding: &[u8; BINDING_BYTES],
    public_key_der: &[u8],
) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"sigil tpm quote v1\0");
    ctx.update(&u16::try_from(token.len()).unwrap_or(u16::MAX).to_be_bytes());
    ctx.update(token);
    ctx.update(binding);
    ctx.update(digest::digest(&digest::SHA256, public_key_der).as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verifies a quote: `signature` (a marshalled `TPMT_SIGNATURE`, ECDSA with SHA-256) by `ak` over
/// `quote` (a marshalled `TPMS_ATTEST`), which must be a `TPM_GENERATED_VALUE` quote whose
/// `extraData` is `extra_data`, selecting exactly the SHA-256 PCRs of `pcrs` with a `pcrDigest`
/// equal to SHA-256 of their values in index order.
pub fn verify_quote(
    ak: &AkPublic,
    quote: &[u8],
    signature: &[u8],
    extra_data: &[u8],
    pcrs: &[(u8, Vec<u8>)],
) -> Result<(), TpmError> {
    sized("quote", quote, TPM_QUOTE_BYTES_MAX)?;
    sized("quote signature", signature, TPM_SIGNATURE_BYTES_MAX)?;
    if pcrs.len() > TPM_PCRS_MAX {
        return Err(TpmError::BadQuote("more than 24 PCR values"));
    }

    // The signature first: nothing else in `quote` is worth reading unless the AK signed it.
    let mut s = Reader::new(signature, "quote signature");
    if s.u16()? != alg::ECDSA || s.u16()? != alg::SHA256 {
        return Err(TpmError::BadSignature);
    }
    let (r_part, s_part) = (s.tpm2b()?, s.tpm2b()?);
    s.end()?;
    if r_part.len() > 32 || s_part.len() > 32 {
        return Err(TpmError::BadSignature);
    }
    let mut fixed = [0u8; 64];
    fixed[32 - r_part.len()..32].copy_from_slice(r_part);
    fixed[64 - s_part.len()..].copy_from_slice(s_part);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &ak.point)
        .verify(quote, &fixed)
        .map_err(|_| TpmError::BadSignature)?;

    let mut r = Reader::new(quote, "quote");
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(TpmError::BadQuote("not TPM-generated (magic)"));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(TpmError::BadQuote("not a quote"));
    }
    let _qualified_signer = r.tpm2b()?;
    let extra = r.tpm2b()?;
    let _clock = r.u64()?;
    let _reset_count = r.u32()?;
    let _restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware = r.u64()?;
    let selections = r.u32()?;
    let mut selected = BTreeSet::new();
    for _ in 0..selections.min(16) {
        let hash = r.u16()?;
        let size = r.u8()?;
        let bitmap = r.take(usize::from(size))?;
        for (byte, bits) in bitmap.iter().enumerate() {
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    if hash != alg::SHA256 {
                        return Err(TpmError::BadQuote(
                            "it selects PCRs of a bank other than SHA-256",
                        ));
                    }
                    let index = u8::try_from(byte * 8 + bit)
                        .ok()
                        .filter(|i| *i <= PCR_INDEX_MAX)
                        .ok_or(TpmError::BadQuote("it selects a PCR above 23"))?;
                    if !selected.insert(index) {
                        return Err(TpmError::BadQuote("it selects a PCR twice"));
                    }
                }
            }
        }
    }
    if selections > 16 {
        return Err(TpmError::BadQuote("too many PCR selections"));
    }
    let pcr_digest = r.tpm2b()?;
    r.end()?;
    if extra != extra_data {
        return Err(TpmError::WrongNonce);
    }
    let reported: BTreeSet<u8> = pcrs.iter().map(|(i, _)| *i).collect();
    if reported.len() != pcrs.len() {
        return Err(TpmError::BadQuote("a PCR value is reported twice"));
    }
    if reported != selected {
        return Err(TpmError::BadQuote(
            "the reported PCR indices are not the ones quoted",
        ));
    }
    let mut sorted: Vec<&(u8, Vec<u8>)> = pcrs.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (_, value) in sorted {
        if value.len() != 32 {
            return Err(TpmError::BadQuote("a SHA-256 PCR value is not 32 bytes"));
        }
        ctx.update(value);
    }
    if ctx.finish().as_ref() != pcr_digest {
        return Err(TpmError::PcrMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::soft::{
        quote_pcrs, unhex, SoftTpm, AK_PUBLIC, ECC_EK_PUBLIC, QUOTE, QUOTE_EXTRA, QUOTE_SIGNATURE,
    };

    #[test]
    fn known_answer_quote() {
        let ak = AkPublic::parse(&unhex(AK_PUBLIC)).expect("swtpm's AK parses");
        let (quote, signature, extra) = (unhex(QUOTE), unhex(QUOTE_SIGNATURE), unhex(QUOTE_EXTRA));
        let pcrs = quote_pcrs();
        assert_eq!(verify_quote(&ak, &quote, &signature, &extra, &pcrs), Ok(()));
        // The PCR values may come in any order.
        let mut shuffled = pcrs.clone();
        shuffled.reverse();
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &extra, &shuffled),
            Ok(())
        );

        let mut other_extra = extra.clone();
        other_extra[0] ^= 1;
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &other_extra, &pcrs),
            Err(TpmError::WrongNonce)
        );
        let mut changed = pcrs.clone();
        changed[2].1[0] ^= 1;
        assert_eq!(
            verify_quote(&ak, &quote, &signature, &extra, &changed),
            Err(TpmError::PcrMismatch)
        );
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &pcrs[..2]),
            Err(TpmError::BadQuote(_))
        ));
        let mut twice = pcrs.clone();
        twice.push(pcrs[0].clone());
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &twice),
            Err(TpmError::BadQuote(_))
        ));
        let mut short = pcrs.clone();
        short[1].1.pop();
        assert!(matches!(
            verify_quote(&ak, &quote, &signature, &extra, &short),
            Err(TpmError::BadQuote(_))
        ));
        // Any change to the signed bytes, or to the signature, fails the signature.
        for i in [0, 7, 40, quote.len() - 1] {
            let mut tampered = quote.clone();
            tampered[i] ^= 1;
            assert_eq!(
                verify_quote(&ak, &tampered, &signature, &extra, &pcrs),
                Err(TpmError::BadSignature),
                "byte {i}"
            );
        }
        let mut bad_sig = signature.clone();
        if let Some(b) = bad_sig.last_mut() {
            *b ^= 1;
        }
        assert_eq!(
            verify_quote(&ak, &quote, &bad_sig, &extra, &pcrs),
            Err(TpmError::BadSignature)
        );
        // Another AK.
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        assert_eq!(
            verify_quote(&soft.ak(), &quote, &signature, &extra, &pcrs),
            Err(TpmError::BadSignature)
        );
        // Garbage never panics.
        for len in [0, 1, 10, 71, 72, 73] {
            let junk = vec![0x18; len];
            assert!(verify_quote(&ak, &quote, &junk, &extra, &pcrs).is_err());
            assert!(verify_quote(&ak, &junk, &signature, &extra, &pcrs).is_err());
        }
        assert!(matches!(
            verify_quote(
                &ak,
                &vec![0; TPM_QUOTE_BYTES_MAX + 1],
                &signature,
                &extra,
                &pcrs
            ),
            Err(TpmError::Size(..))
        ));
    }
}
