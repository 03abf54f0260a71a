//! Reading TPM marshalled bytes: a big-endian [`Reader`] with `TPM2B_*` support, the
//! `TPMT_PUBLIC` parts attestation looks at ([`PublicArea`]), and P-256 points from TPM
//! coordinates. The EK and AK checks built on [`PublicArea`] are in `ek.rs` and `quote.rs`.

use p256::elliptic_curve::sec1::ToSec1Point as _;
use ring::digest;
use wire::api::TPM_PUBLIC_BYTES_MAX;

use super::{alg, sized, TpmError};

/// A big-endian reader over TPM marshalled bytes.
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn err(&self, why: &'static str) -> TpmError {
        TpmError::Malformed(self.what, why)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TpmError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, TpmError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, TpmError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, TpmError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes.
    pub(super) fn tpm2b(&mut self) -> Result<&'a [u8], TpmError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    pub(super) fn end(&self) -> Result<(), TpmError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Appends a `TPM2B_*` of `bytes` (callers keep them under 64 KiB).
pub(super) fn push_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// The key of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AreaKey {
    Rsa {
        bits: u16,
        exponent: u32,
        modulus: Vec<u8>,
    },
    Ecc {
        curve: u16,
        kdf: Option<u16>,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC` (only the parts attestation looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PublicArea {
    pub(super) name_alg: u16,
    attributes: u32,
    /// `(algorithm, key bits, mode)`, `None` for TPM_ALG_NULL.
    pub(super) symmetric: Option<(u16, u16, u16)>,
    /// `(scheme, hash)`, `None` for TPM_ALG_NULL.
    pub(super) scheme: Option<(u16, u16)>,
    pub(super) key: AreaKey,
    /// `nameAlg || SHA-256(TPMT_PUBLIC)`.
    pub(super) name: Vec<u8>,
}

impl PublicArea {
    pub(super) fn parse(bytes: &[u8], what: &'static str) -> Result<PublicArea, TpmError> {
        sized(what, bytes, TPM_PUBLIC_BYTES_MAX)?;
        let mut r = Reader::new(bytes, what);
        let kind = r.u16()?;
        let name_alg = r.u16()?;
        if name_alg != alg::SHA256 {
            return Err(r.err("nameAlg is not SHA-256"));
        }
        let attributes = r.u32()?;
        let _auth_policy = r.tpm2b()?;
        if kind != alg::RSA && kind != alg::ECC {
            return Err(r.err("neither an RSA nor an ECC key"));
        }
        let symmetric = match r.u16()? {
            alg::NULL => None,
            a => Some((a, r.u16()?, r.u16()?)),
        };
        let scheme = match r.u16()? {
            alg::NULL => None,
            alg::ECDAA => {
                let hash = r.u16()?;
                let _count = r.u16()?;
                Some((alg::ECDAA, hash))
            }
            s => Some((s, r.u16()?)),
        };
        let key = if kind == alg::RSA {
            let bits = r.u16()?;
            let exponent = r.u32()?;
            let modulus = r.tpm2b()?.to_vec();
            AreaKey::Rsa {
                bits,
                exponent,
                modulus,
            }
        } else {
            let curve = r.u16()?;
            let kdf = match r.u16()? {
                alg::NULL => None,
                k => {
                    let _hash = r.u16()?;
                    Some(k)
                }
            };
            let x = r.tpm2b()?.to_vec();
            let y = r.tpm2b()?.to_vec();
            AreaKey::Ecc { curve, kdf, x, y }
        };
        r.end()?;
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        Ok(PublicArea {
            name_alg,
            attributes,
            symmetric,
            scheme,
            key,
            name,
        })
    }

    pub(super) fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// A P-256 point from TPM coordinates (each at most 32 bytes, left-padded), checked on the curve.
pub(super) fn p256_point(x: &[u8], y: &[u8]) -> Option<p256::PublicKey> {
    if x.len() > 32 || y.len() > 32 {
        return None;
    }
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[33 - x.len()..33].copy_from_slice(x);
    sec1[65 - y.len()..].copy_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1).ok()
}

/// The uncompressed SEC1 encoding (`0x04 || x || y`, 65 bytes) of a P-256 point.
pub(super) fn uncompressed(point: &p256::AffinePoint) -> Option<[u8; 65]> {
    let encoded = point.to_sec1_point(false);
    let bytes = encoded.as_bytes();
    let mut out = [0u8; 65];
    if bytes.len() != 65 {
        return None; // the identity
    }
    out.copy_from_slice(bytes);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::soft::{unhex, AK_PUBLIC, ECC_EK_PUBLIC, RSA_EK_PUBLIC};
    use crate::tpm::{AkPublic, EkPublic};

    #[test]
    fn public_areas_are_checked() {
        let (rsa_ek, ecc_ek, ak) = (unhex(RSA_EK_PUBLIC), unhex(ECC_EK_PUBLIC), unhex(AK_PUBLIC));
        assert_eq!(
            EkPublic::parse(&rsa_ek).expect("rsa").algorithm(),
            "RSA 2048"
        );
        assert_eq!(
            EkPublic::parse(&ecc_ek).expect("ecc").algorithm(),
            "ECC P-256"
        );
        assert!(matches!(
            EkPublic::parse(&ak),
            Err(TpmError::UnsupportedEk(_))
        ));
        assert!(matches!(AkPublic::parse(&rsa_ek), Err(TpmError::BadAk(_))));
        assert!(matches!(AkPublic::parse(&ecc_ek), Err(TpmError::BadAk(_))));
        // The AK name is nameAlg || SHA-256 of the area (the quote's qualifiedSigner is derived
        // from it; the TPM's own name for it is checked by the swtpm test).
        let parsed = AkPublic::parse(&ak).expect("ak");
        assert_eq!(&parsed.name()[..2], &[0x00, 0x0b]);
        assert_eq!(
            &parsed.name()[2..],
            digest::digest(&digest::SHA256, &ak).as_ref()
        );
        for bytes in [&rsa_ek, &ecc_ek, &ak] {
            for cut in [0, 1, 2, 8, bytes.len() / 2, bytes.len() - 1] {
                assert!(EkPublic::parse(&bytes[..cut]).is_err(), "cut {cut}");
                assert!(AkPublic::parse(&bytes[..cut]).is_err(), "cut {cut}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(matches!(
                EkPublic::parse(&trailing),
                Err(TpmError::Malformed(_, "trailing bytes") | TpmError::UnsupportedEk(_))
            ));
        }
        assert!(matches!(
            EkPublic::parse(&vec![0; TPM_PUBLIC_BYTES_MAX + 1]),
            Err(TpmError::Size(..))
        ));
        // Attribute, algorithm and size changes are refused.
        let mut signing_ek = ecc_ek.clone();
        signing_ek[5] |= 0x04; // sign (bit 18)
        assert!(matches!(
            EkPublic::parse(&signing_ek),
            Err(TpmError::UnsupportedEk(_))
        ));
        let mut sha1 = ecc_ek.clone();
        sha1[3] = 0x04;
        assert!(matches!(
            EkPublic::parse(&sha1),
            Err(TpmError::Malformed(..))
        ));
        let mut decrypting_ak = ak.clone();
        decrypting_ak[5] |= 0x02; // decrypt (bit 17)
        assert!(matches!(
            AkPublic::parse(&decrypting_ak),
            Err(TpmError::BadAk(_))
        ));
        let mut movable_ak = ak.clone();
        movable_ak[7] &= !0x02; // fixedTPM (bit 1)
        assert!(matches!(
            AkPublic::parse(&movable_ak),
            Err(TpmError::BadAk(_))
        ));
        let mut off_curve = ecc_ek.clone();
        let last = off_curve.len() - 1;
        off_curve[last] ^= 1;
        assert!(matches!(
            EkPublic::parse(&off_curve),
            Err(TpmError::UnsupportedEk(_))
        ));
    }
}
