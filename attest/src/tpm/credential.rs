//! `TPM2_MakeCredential` in software ([`make_credential`]): a seed protected to the EK (RSA-OAEP
//! or ECDH + KDFe), then KDFa, AES-128-CFB of the credential and the outer HMAC.

use std::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use rand_core::{CryptoRng, RngCore};
use ring::{digest, hmac};

use super::ek::{EkKey, EkPublic};
use super::marshal::{push_tpm2b, uncompressed};
use super::{sized, TpmError};

/// The TPM's HMAC-based KDF in counter mode (SP 800-108; TPM 2.0 Part 1 §11.4.10.2), SHA-256:
/// `K(i) = HMAC(key, [i]₃₂ || label || contextU || contextV || [bits]₃₂)`. `label` includes its
/// terminating zero byte.
pub(super) fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// The TPM's hash-based KDF for ECDH (SP 800-56A concatenation; TPM 2.0 Part 1 §11.4.10.3),
/// SHA-256: `K(i) = SHA-256([i]₃₂ || Z || use || partyUInfo || partyVInfo)`. `usage` includes its
/// terminating zero byte.
pub(super) fn kdfe(z: &[u8], usage: &[u8], party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&counter.to_be_bytes());
        ctx.update(z);
        ctx.update(usage);
        ctx.update(party_u);
        ctx.update(party_v);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// AES-128 in CFB mode with full-block feedback and a zero IV (the TPM's parameter and
/// credential encryption), encrypting `data` in place.
fn aes128_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), TpmError> {
    let cipher = aes::Aes128::new_from_slice(key)
        .map_err(|_| TpmError::Crypto("AES-128 needs a 16-byte key"))?;
    let mut feedback = aes::Block::default();
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        cipher.encrypt_block(&mut stream);
        for (b, k) in chunk.iter_mut().zip(stream.iter()) {
            *b ^= k;
        }
        if chunk.len() == 16 {
            feedback.copy_from_slice(chunk);
        }
    }
    Ok(())
}

/// The inverse of [`aes128_cfb_encrypt`] (tests decrypt what swtpm made).
#[cfg(test)]
pub(super) fn aes128_cfb_decrypt(key: &[u8], data: &mut [u8]) {
    let cipher = aes::Aes128::new_from_slice(key).expect("key");
    let mut feedback = aes::Block::default();
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        cipher.encrypt_block(&mut stream);
        let next: Vec<u8> = chunk.to_vec();
        for (b, k) in chunk.iter_mut().zip(stream.iter()) {
            *b ^= k;
        }
        if next.len() == 16 {
            feedback.copy_from_slice(&next);
        }
    }
}

/// `"IDENTITY"` with its terminating zero: the label of credential seeds.
pub(super) const IDENTITY: &[u8] = b"IDENTITY\0";
pub(super) const STORAGE: &[u8] = b"STORAGE\0";
pub(super) const INTEGRITY: &[u8] = b"INTEGRITY\0";

/// The output of `TPM2_MakeCredential`: the contents of the `TPM2B_ID_OBJECT` and of the
/// `TPM2B_ENCRYPTED_SECRET` (what `TPM2_ActivateCredential` takes, without their size fields).
#[derive(Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `TPM2B_DIGEST(outerHMAC) || encIdentity`.
    pub id_object: Vec<u8>,
    /// The seed protected to the EK.
    pub encrypted_secret: Vec<u8>,
}

impl fmt::Debug for MadeCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MadeCredential({} + {} bytes)",
            self.id_object.len(),
            self.encrypted_secret.len()
        )
    }
}

/// The part of MakeCredential that follows the seed: encrypts `credential` for the object named
/// `name` and adds the integrity HMAC (TPM 2.0 Part 1 §24.4–24.5).
fn protect_credential(seed: &[u8], name: &[u8], credential: &[u8]) -> Result<Vec<u8>, TpmError> {
    let sym_key = kdfa(seed, STORAGE, name, &[], 128);
    let mut enc_identity = Vec::with_capacity(credential.len() + 2);
    push_tpm2b(&mut enc_identity, credential);
    aes128_cfb_encrypt(&sym_key, &mut enc_identity)?;
    let hmac_key = kdfa(seed, INTEGRITY, &[], &[], 256);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&enc_identity);
    ctx.update(name);
    let outer = ctx.sign();
    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    push_tpm2b(&mut id_object, outer.as_ref());
    id_object.extend_from_slice(&enc_identity);
    Ok(id_object)
}

/// A fresh seed protected to `ek` (TPM 2.0 Part 1 §24.3 and Annex B.10.3 / C.6.1): the seed
/// and the `TPM2B_ENCRYPTED_SECRET` contents.
fn seal_seed(
    ek: &EkPublic,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    match &ek.key {
        EkKey::Rsa { modulus, exponent } => {
            let mut seed = vec![0u8; 32];
            rng.fill_bytes(&mut seed);
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from(*exponent),
            )
            .map_err(|_| TpmError::Crypto("the RSA EK is not a usable RSA public key"))?;
            let padding = rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0");
            let secret = key
                .encrypt(rng, padding, &seed)
                .map_err(|_| TpmError::Crypto("RSA-OAEP encryption of the seed failed"))?;
            Ok((seed, secret))
        }
        EkKey::P256(ek_point) => {
            let scalar = loop {
                let mut bytes = [0u8; 32];
                rng.fill_bytes(&mut bytes);
                if let Some(s) = Option::from(p256::NonZeroScalar::from_repr(bytes.into())) {
                    break s;
                }
            };
            let ephemeral = p256::PublicKey::from_secret_scalar(&scalar);
            let ephemeral = uncompressed(ephemeral.as_affine())
                .ok_or(TpmError::Crypto("ephemeral ECDH key is the identity"))?;
            let shared = (ek_point.to_projective() * *scalar).to_affine();
            let shared = uncompressed(&shared)
                .ok_or(TpmError::Crypto("the ECDH shared point is the identity"))?;
            let ek_sec1 = uncompressed(ek_point.as_affine())
                .ok_or(TpmError::Crypto("the EK point is the identity"))?;
            let (qe_x, qe_y) = (&ephemeral[1..33], &ephemeral[33..]);
            let seed = kdfe(&shared[1..33], IDENTITY, qe_x, &ek_sec1[1..33], 256);
            let mut secret = Vec::with_capacity(68);
            push_tpm2b(&mut secret, qe_x);
            push_tpm2b(&mut secret, qe_y);
            Ok((seed, secret))
        }
    }
}

/// `TPM2_MakeCredential` in software: protects `credential` (1 to 32 bytes) so that only the TPM
/// holding `ek`'s private key, with an object named `name` loaded, can recover it with
/// `TPM2_ActivateCredential`.
pub fn make_credential(
    ek: &EkPublic,
    name: &[u8],
    credential: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<MadeCredential, TpmError> {
    sized("credential", credential, 32)?;
    let (seed, encrypted_secret) = seal_seed(ek, rng)?;
    let id_object = protect_credential(&seed, name, credential)?;
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use crate::tpm::soft::{
        activate, recover_seed, rng, unhex, unprotect, CREDENTIAL, ECC_EK_PUBLIC,
        ECC_ENCRYPTED_SECRET, ECC_ID_OBJECT, NAME, RSA_EK_PUBLIC, RSA_ENCRYPTED_SECRET,
        RSA_ID_OBJECT,
    };

    #[test]
    fn known_answers_of_swtpm_make_credential() {
        for (ek_public, id_object, secret) in [
            (RSA_EK_PUBLIC, RSA_ID_OBJECT, RSA_ENCRYPTED_SECRET),
            (ECC_EK_PUBLIC, ECC_ID_OBJECT, ECC_ENCRYPTED_SECRET),
        ] {
            let ek_public = unhex(ek_public);
            let ek = EkPublic::parse(&ek_public).expect("swtpm's EK template parses");
            // Our seed recovery (OAEP label / KDFe inputs) finds the TPM's seed, and our
            // KDFa + AES-CFB + HMAC over it reproduce the TPM's credential blob exactly.
            let seed = recover_seed(&ek_public, &unhex(secret)).expect("seed");
            assert_eq!(seed.len(), 32);
            let ours =
                protect_credential(&seed, &unhex(NAME), &unhex(CREDENTIAL)).expect("protect");
            assert_eq!(hex(&ours), id_object, "{}", ek.algorithm());
            assert_eq!(
                unprotect(&seed, &unhex(NAME), &ours).expect("unprotect"),
                unhex(CREDENTIAL)
            );
        }
    }

    #[test]
    fn make_credential_round_trips_and_is_bound_to_the_name() {
        let mut rng = rng();
        for ek_public in [RSA_EK_PUBLIC, ECC_EK_PUBLIC] {
            let ek_public = unhex(ek_public);
            let ek = EkPublic::parse(&ek_public).expect("EK");
            let name = unhex(NAME);
            for len in [1, 16, 31, 32] {
                let credential: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5c).collect();
                let made = make_credential(&ek, &name, &credential, &mut rng).expect("make");
                assert_eq!(activate(&ek_public, &name, &made), Ok(credential.clone()));
                let mut other = name.clone();
                other[9] ^= 1;
                assert_eq!(activate(&ek_public, &other, &made), Err("integrity"));
            }
            // Fresh seeds: two credentials for the same inputs differ.
            let a = make_credential(&ek, &name, &[1; 32], &mut rng).expect("make");
            let b = make_credential(&ek, &name, &[1; 32], &mut rng).expect("make");
            assert_ne!(a, b);
            assert_eq!(
                make_credential(&ek, &name, &[], &mut rng),
                Err(TpmError::Size("credential", 32))
            );
            assert_eq!(
                make_credential(&ek, &name, &[0; 33], &mut rng),
                Err(TpmError::Size("credential", 32))
            );
        }
    }
}
