//! The exchange: [`Challenger`] makes stateless, connection-bound challenges (`begin`, from
//! the first request) and checks the agent's [`Evidence`] (`finish`, the second request) into a
//! [`TpmIdentity`] and its selectors.

use std::collections::BTreeSet;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use ring::{digest, hmac};
use wire::api::{TPM_PCRS_MAX, TPM_PCR_VALUE_BYTES_MAX, TPM_SECRET_BYTES_MAX, TPM_TOKEN_BYTES_MAX};
use wire::entry::SELECTORS_PER_ENTRY_MAX;
use wire::{Selector, UnixTime};

use super::{
    make_credential, qualifying_data, sized, verify_quote, AkPublic, EkPolicy, EkPublic,
    MadeCredential, TpmError, BINDING_BYTES, CHALLENGE_TTL_SECS, CREDENTIAL_BYTES, PCR_INDEX_MAX,
    SELECTOR_KIND, TOKEN_BYTES,
};
use crate::hex;

/// What a successful TPM attestation establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    /// The EK hash ([`EkPublic::hash`]).
    pub ek_hash: String,
    /// The `tpm` selectors, sorted, without duplicates.
    pub selectors: Vec<Selector>,
}

/// The server's answer to the first request.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The credential for (EK, AK name).
    pub credential: MadeCredential,
    /// The token to send back (also the quote's nonce, through [`qualifying_data`]).
    pub token: Vec<u8>,
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Everything the agent sends back.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The EK public area (as in the first request).
    pub ek_public: &'a [u8],
    /// The EK certificate, if any (as in the first request).
    pub ek_cert: Option<&'a [u8]>,
    /// The AK public area (as in the first request).
    pub ak_public: &'a [u8],
    /// The token of the challenge.
    pub token: &'a [u8],
    /// What `TPM2_ActivateCredential` returned.
    pub activated_secret: &'a [u8],
    /// The quote (`TPMS_ATTEST`).
    pub quote: &'a [u8],
    /// Its signature (`TPMT_SIGNATURE`).
    pub signature: &'a [u8],
    /// The quoted SHA-256 PCRs' values.
    pub pcrs: &'a [(u8, Vec<u8>)],
    /// The public key (DER SPKI) the agent SVID is for.
    pub public_key_der: &'a [u8],
}

const TOKEN_VERSION: u8 = 1;

/// A server node's challenge maker: a random HMAC key kept in memory only. Tokens made by one
/// node (or before a restart) do not verify at another.
pub struct Challenger {
    key: hmac::Key,
}

impl fmt::Debug for Challenger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Challenger(<redacted>)")
    }
}

impl Challenger {
    /// A challenger with a key drawn from `rng`.
    pub fn new(rng: &mut (impl RngCore + CryptoRng)) -> Challenger {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Challenger {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    /// What a token's MAC covers: its first 25 bytes, the public areas and the connection.
    fn token_message(
        head: &[u8],
        ek_public: &[u8],
        ak_public: &[u8],
        binding: &[u8; BINDING_BYTES],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"sigil tpm challenge v1\0");
        m.extend_from_slice(head);
        m.extend_from_slice(digest::digest(&digest::SHA256, ek_public).as_ref());
        m.extend_from_slice(digest::digest(&digest::SHA256, ak_public).as_ref());
        m.extend_from_slice(binding);
        m
    }

    fn credential_message(token: &[u8]) -> Vec<u8> {
        let mut m = b"sigil tpm credential v1\0".to_vec();
        m.extend_from_slice(token);
        m
    }

    /// Checks the first request and makes its challenge, valid until `now` +
    /// [`CHALLENGE_TTL_SECS`] on the connection whose channel-binding value is `binding`.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        policy: &EkPolicy,
        ek_public: &[u8],
        ek_cert: Option<&[u8]>,
        ak_public: &[u8],
        binding: &[u8; BINDING_BYTES],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Challenge, TpmError> {
        let ek = EkPublic::parse(ek_public)?;
        let ak = AkPublic::parse(ak_public)?;
        policy.check(&ek, ek_cert, now)?;
        let mut token = Vec::with_capacity(TOKEN_BYTES);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(
            &now.saturating_add(std::time::Duration::from_secs(CHALLENGE_TTL_SECS))
                .as_secs()
                .to_be_bytes(),
        );
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        token.extend_from_slice(&id);
        let mac = hmac::sign(
            &self.key,
            &Challenger::token_message(&token, ek_public, ak_public, binding),
        );
        token.extend_from_slice(mac.as_ref());
        let secret = hmac::sign(&self.key, &Challenger::credential_message(&token));
        let credential =
            make_credential(&ek, ak.name(), &secret.as_ref()[..CREDENTIAL_BYTES], rng)?;
        Ok(Challenge { credential, token })
    }

    /// Checks the evidence of the second request, on the connection whose channel-binding value
    /// is `binding`, at `now`.
    pub fn finish(
        &self,
        policy: &EkPolicy,
        evidence: &Evidence<'_>,
        binding: &[u8; BINDING_BYTES],
        now: UnixTime,
    ) -> Result<TpmIdentity, TpmError> {
        sized("challenge token", evidence.token, TPM_TOKEN_BYTES_MAX)?;
        sized(
            "activated credential",
            evidence.activated_secret,
            TPM_SECRET_BYTES_MAX,
        )?;
        if evidence.pcrs.len() > TPM_PCRS_MAX
            || evidence.pcrs.iter().any(|(i, v)| {
                *i > PCR_INDEX_MAX || v.is_empty() || v.len() > TPM_PCR_VALUE_BYTES_MAX
            })
        {
            return Err(TpmError::BadQuote(
                "PCR values must be indices 0 to 23 with 1 to 64 bytes each",
            ));
        }
        let ek = EkPublic::parse(evidence.ek_public)?;
        let ak = AkPublic::parse(evidence.ak_public)?;
        let issuer = policy.check(&ek, evidence.ek_cert, now)?;

        // The token: ours, for these public areas and this connection, and still fresh.
        let token = evidence.token;
        if token.len() != TOKEN_BYTES || token.first() != Some(&TOKEN_VERSION) {
            return Err(TpmError::BadToken);
        }
        let (head, mac) = token.split_at(TOKEN_BYTES - 32);
        let message =
            Challenger::token_message(head, evidence.ek_public, evidence.ak_public, binding);
        hmac::verify(&self.key, &message, mac).map_err(|_| TpmError::BadToken)?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&head[1..9]);
        if now.as_secs() > u64::from_be_bytes(expires) {
            return Err(TpmError::Expired);
        }

        // Credential activation: the AK is in the EK's TPM.
        hmac::verify(
            &self.key,
            &Challenger::credential_message(token),
            evidence.activated_secret,
        )
        .map_err(|_| TpmError::WrongCredential)?;

        // The quote: signed by that AK, for this challenge, connection and SVID key.
        let extra = qualifying_data(token, binding, evidence.public_key_der);
        verify_quote(
            &ak,
            evidence.quote,
            evidence.signature,
            &extra,
            evidence.pcrs,
        )?;

        let ek_hash = ek.hash();
        let mut values = BTreeSet::new();
        values.insert(format!("ek_hash:{ek_hash}"));
        if let Some(issuer) = issuer {
            values.insert(format!("ek_cert_issuer:{issuer}"));
        }
        for (index, value) in evidence.pcrs {
            values.insert(format!("pcr:{index}:{}", hex(value)));
        }
        let selectors: BTreeSet<Selector> = values
            .iter()
            .filter_map(|v| Selector::new(SELECTOR_KIND, v).ok())
            .collect();
        if selectors.len() > SELECTORS_PER_ENTRY_MAX {
            return Err(TpmError::TooManySelectors(selectors.len()));
        }
        Ok(TpmIdentity {
            ek_hash,
            selectors: selectors.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use crate::tpm::marshal::push_tpm2b;
    use crate::tpm::soft::{
        allow, attest_with, now, rng, unhex, SoftTpm, AK_PUBLIC, BINDING, ECC_EK_PUBLIC, NOW,
        RSA_EK_PUBLIC, SVID_KEY,
    };

    #[test]
    fn a_full_attestation_and_its_selectors() {
        for ek in [RSA_EK_PUBLIC, ECC_EK_PUBLIC] {
            let soft = SoftTpm::new(ek);
            let id = attest_with(&soft, &allow(ek), None, |_, _, _, _, _| {}).expect("attested");
            let hash = EkPublic::parse(&soft.ek_public).expect("EK").hash();
            assert_eq!(id.ek_hash, hash);
            let shown: Vec<String> = id.selectors.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                shown,
                vec![
                    format!("tpm:ek_hash:{hash}"),
                    format!("tpm:pcr:0:{}", "00".repeat(32)),
                    format!("tpm:pcr:7:{}", "07".repeat(32)),
                ]
            );
        }
    }

    #[test]
    fn tokens_bind_time_connection_keys_and_server() {
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        let policy = allow(ECC_EK_PUBLIC);
        // Expired.
        assert_eq!(
            attest_with(&soft, &policy, None, |_, _, _, at, _| {
                *at = UnixTime::from_secs(NOW + CHALLENGE_TTL_SECS + 1)
            }),
            Err(TpmError::Expired)
        );
        // On another connection (a relayed or replayed answer).
        assert_eq!(
            attest_with(&soft, &policy, None, |_, _, _, _, b| b[0] ^= 1),
            Err(TpmError::BadToken)
        );
        // A tampered token (e.g. a later expiry).
        for i in [0, 3, 12, TOKEN_BYTES - 1] {
            assert_eq!(
                attest_with(&soft, &policy, None, |_, t, _, _, _| t[i] ^= 1),
                Err(TpmError::BadToken),
                "byte {i}"
            );
        }
        assert_eq!(
            attest_with(&soft, &policy, None, |_, t, _, _, _| t.truncate(20)),
            Err(TpmError::BadToken)
        );
        // Another server node (another challenger key).
        let challenge = Challenger::new(&mut rng())
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        let (secret, quote, signature) = soft.answer(&challenge, &BINDING, SVID_KEY);
        let elsewhere = Challenger::new(&mut ChaCha20Rng::seed_from_u64(99));
        let evidence = Evidence {
            ek_public: &soft.ek_public,
            ek_cert: None,
            ak_public: &soft.ak_public,
            token: &challenge.token,
            activated_secret: &secret,
            quote: &quote,
            signature: &signature,
            pcrs: &soft.pcrs,
            public_key_der: SVID_KEY,
        };
        assert_eq!(
            elsewhere.finish(&policy, &evidence, &BINDING, now()),
            Err(TpmError::BadToken)
        );
        // Another AK than the one the credential was made for.
        let other = SoftTpm {
            ak_key: p256::ecdsa::SigningKey::from_slice(&[0x44; 32]).expect("key"),
            ..SoftTpm::new(ECC_EK_PUBLIC)
        };
        let other_ak = {
            let point = other.ak_key.verifying_key().to_sec1_point(false);
            let mut a = unhex(AK_PUBLIC)[..20].to_vec();
            push_tpm2b(&mut a, &point.as_bytes()[1..33]);
            push_tpm2b(&mut a, &point.as_bytes()[33..]);
            a
        };
        let swapped = Evidence {
            ak_public: &other_ak,
            ..evidence
        };
        let challenger = Challenger::new(&mut rng());
        assert_eq!(
            challenger.finish(&policy, &swapped, &BINDING, now()),
            Err(TpmError::BadToken)
        );
    }

    #[test]
    fn credential_and_quote_must_answer_this_challenge() {
        let soft = SoftTpm::new(RSA_EK_PUBLIC);
        let policy = allow(RSA_EK_PUBLIC);
        // A wrong activated credential (the AK is not in the EK's TPM).
        assert_eq!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s[0] ^= 1),
            Err(TpmError::WrongCredential)
        );
        assert_eq!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s.truncate(16)),
            Err(TpmError::WrongCredential)
        );
        assert!(matches!(
            attest_with(&soft, &policy, None, |s, _, _, _, _| s.clear()),
            Err(TpmError::Size(..))
        ));
        // An old quote (for another token), replayed with a fresh token.
        let challenger = Challenger::new(&mut rng());
        let first = challenger
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        let (_, old_quote, old_signature) = soft.answer(&first, &BINDING, SVID_KEY);
        let second = challenger
            .begin(
                &policy,
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut ChaCha20Rng::seed_from_u64(3),
            )
            .expect("begin");
        assert_ne!(first.token, second.token);
        let (secret, _, _) = soft.answer(&second, &BINDING, SVID_KEY);
        let replay = Evidence {
            ek_public: &soft.ek_public,
            ek_cert: None,
            ak_public: &soft.ak_public,
            token: &second.token,
            activated_secret: &secret,
            quote: &old_quote,
            signature: &old_signature,
            pcrs: &soft.pcrs,
            public_key_der: SVID_KEY,
        };
        assert_eq!(
            challenger.finish(&policy, &replay, &BINDING, now()),
            Err(TpmError::WrongNonce)
        );
        // A quote for another SVID key.
        let (secret, quote, signature) = soft.answer(&second, &BINDING, &[0x30, 9]);
        let other_key = Evidence {
            activated_secret: &secret,
            quote: &quote,
            signature: &signature,
            ..replay
        };
        assert_eq!(
            challenger.finish(&policy, &other_key, &BINDING, now()),
            Err(TpmError::WrongNonce)
        );
        // PCR values other than the quoted ones.
        let lying = Evidence {
            pcrs: &[(0, vec![0; 32]), (7, vec![8; 32])],
            ..other_key
        };
        assert!(challenger.finish(&policy, &lying, &BINDING, now()).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let challenger = Challenger::new(&mut rng());
        assert_eq!(format!("{challenger:?}"), "Challenger(<redacted>)");
        let soft = SoftTpm::new(ECC_EK_PUBLIC);
        let challenge = challenger
            .begin(
                &allow(ECC_EK_PUBLIC),
                &soft.ek_public,
                None,
                &soft.ak_public,
                &BINDING,
                now(),
                &mut rng(),
            )
            .expect("begin");
        assert!(!format!("{challenge:?}").contains(&hex(&challenge.token)));
    }
}
