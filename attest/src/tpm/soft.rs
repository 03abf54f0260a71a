//! Tests only: the swtpm known-answer vectors, the TPM's side of `TPM2_ActivateCredential` in
//! software, and [`SoftTpm`], a software agent TPM that answers challenges.

use p256::ecdsa::signature::Signer as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use ring::{digest, hmac};
use rsa::pkcs8::DecodePrivateKey;
use wire::UnixTime;

use super::credential::{aes128_cfb_decrypt, kdfa, kdfe, IDENTITY, INTEGRITY, STORAGE};
use super::ek::EkKey;
use super::marshal::{p256_point, push_tpm2b, uncompressed, Reader};
use super::{
    alg, qualifying_data, AkPublic, Challenge, Challenger, EkPolicy, EkPublic, Evidence,
    MadeCredential, TpmError, TpmIdentity, BINDING_BYTES, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE,
};

// Known answers from swtpm 0.7.1 (libtpms), made by node/tests/tpm.rs's ignored
// `print_known_answer_vectors`: the TPM's own TPM2_MakeCredential of CREDENTIAL for NAME to
// EKs (TCG templates L-1 and L-2) whose private keys are RSA_PKCS8 and ECC_SCALAR, and a
// quote of PCRs 0, 7 and 16 (extended once) by an AK the TPM made, over QUOTE_EXTRA.
pub(super) const NAME: &str =
    "000b404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
pub(super) const CREDENTIAL: &str =
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
pub(super) const RSA_PKCS8: &str = concat!(
    "308204bc020100300d06092a864886f70d0101010500048204a6308204a20201000282010100ba81",
    "d1d0ff7449b7953c3b0d5ece93028954459665c496cf2bc4283efbd88ac0f587469ad7de613f6068",
    "ccb44a3fe42e30949eb84fbbd1fd7e6c2a23bc88e5ffb8e5590a11da1ac07f9376d0258979b41a68",
    "47afe7cf5d727dd2900a8c3683f276668a6bc74f8ea51d79d4e278bc52ad21467b2784792d322a04",
    "7629857e2b8328a1bb09fa870c5dac566653b94fc1b2d0995a8e7160402927efa3e5a76b13b703c1",
    "af77ce0213b04c8868ba90b6e0317374ee8c1f402878ae1318223d8e2ecd58bc4460032ba96bd1df",
    "bc33e6deec6b0fa688ebde509a46834eaefefc7a58359192c81d575d8b6cf1729440415428243c03",
    "02bc82499b6155ba0ff6797512150203010001028201002b3ec6c3cb37cf8ffdce8572c834e5e984",
    "a641ac69d4779379f675ce84dee4ed7100f8e21683bdd0d02dfca9213e474e5e7d57802d1cc3c81f",
    "743d21242a2a0a6d78e07871433d48bd4c1814935f9914a5bae0446d5fabaf4c757268bfb2344e18",
    "1e16a27f08776ed9b2d225e110e9aab338807ddd3dabb921fcfed909d7038774a10ef2ec08cbd159",
    "cb91d7cf96e0bc9db8ccfa008071e6177ca337f368ca2e7d481b383597faf986698fd331d6738314",
    "56985c60686aab146d47e7cc4f23c317dee7992456d1ba9bd557cebe1b877310bf18261dc4193160",
    "f5242e526f91ff96a66bb948445132e0058369c0ced048dafcfe3b59a0bc88256db85dfab47fd102",
    "818100d796f0007677834fd2870d0615ae816d31f55ae893fb461e5abbac88141312ed8f755557a4",
    "3915b06994a75bc31eb428b98cd887fee3650946994806da17e67c42e44149fae1d84dbc2b2ee473",
    "9f2080d324ff61838dd82c76b1908098efe66f2b3f3f155d9f7a5fc2df582abc189cbff4a3ee7d1b",
    "6ebbde93cf48d5a6ecadab02818100dd775bfc30c6b1845b1bc5556e8d3b5c7d53f73eabf58c0677",
    "2c1a993c44b42e5724c9b637eeda8771b1015fda6ffcb4063a154acd31c95fa6ad8f54a9c3817d6e",
    "7d857a3c94a5e620c1e68736b2bb28d5b4ab140f403faf45fbfac9bff6750611968b650936dd83c2",
    "d1710fdb3531198f4f05483b52727711107bdce9abff3f02818070a0fc1561cea21d4b811e7eb549",
    "0b78be86cdcd7fb1e039ef70e87bd6f0f80c7fcbee9ff0bd99e525e371637116534c8b5357b404a7",
    "4b9b82f4853a7f29c951d5a865ab7e940a6ae2093560483f33bdd99114921f26356f553b02a10c45",
    "187faf7a453ca642b0ade2a2c7eedb818832885e3433cbe717e2fa196a95a3b5362d028180153707",
    "e2c2b165f3edde5d2aefea2b939295e68b6461a3464348404c098ff34ab5225b084f975bebb9a261",
    "25538182cda40310631800faef64c21f86d6b459c5303e69f8e9b0bbabaddba53fb2a7b0721af6b1",
    "a4bc4945507efdc26a6d2f28caaa08a7d5c7ea2f921da97e912c488e298aa6e134a82a1fb8f43386",
    "0a05806a750281802cef3bf5a6ddcf19134dc7fa9a3a99e7c9894710f670638ae743483b503ac24a",
    "2405c8f32cdcd353c38d3c71ff199e2961906eb07686147fcdf65d989a044c40545fe494c8eb8b03",
    "e954253473b430443e14b08dc7a74a1e687bed5ff46ab77ac50c4c62b4288f6bc91a7c1dd9ab604f",
    "118b9e1bfe271da044cca5811f6df3cc",
);
pub(super) const ECC_SCALAR: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub(super) const RSA_EK_PUBLIC: &str = concat!(
    "0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b3314",
    "69aa00060080004300100800000000000100ba81d1d0ff7449b7953c3b0d5ece93028954459665c4",
    "96cf2bc4283efbd88ac0f587469ad7de613f6068ccb44a3fe42e30949eb84fbbd1fd7e6c2a23bc88",
    "e5ffb8e5590a11da1ac07f9376d0258979b41a6847afe7cf5d727dd2900a8c3683f276668a6bc74f",
    "8ea51d79d4e278bc52ad21467b2784792d322a047629857e2b8328a1bb09fa870c5dac566653b94f",
    "c1b2d0995a8e7160402927efa3e5a76b13b703c1af77ce0213b04c8868ba90b6e0317374ee8c1f40",
    "2878ae1318223d8e2ecd58bc4460032ba96bd1dfbc33e6deec6b0fa688ebde509a46834eaefefc7a",
    "58359192c81d575d8b6cf1729440415428243c0302bc82499b6155ba0ff679751215",
);
pub(super) const RSA_ID_OBJECT: &str = concat!(
    "0020a4fb6454a637129cf6a61c4a64cd5c0eb3b5278dcb1644b23501b03aa147b2b22683b504fe4b",
    "bceae86dd7ec7688dda33038db223fe821727ec40749373dd8daf28d",
);
pub(super) const RSA_ENCRYPTED_SECRET: &str = concat!(
    "1982d22aa64a9ec97a0fb96beba4b77347baac3bfaabd62431aaa968ab781cd3711df3e04730f5cf",
    "5dcecff04c8cd608c9d4331992f0e43b80fc60940d8f4fa1668fa27e66122edd7a9c2a6331010bb8",
    "b7ad7226cf94d7dab694ae4b91b9975cd180bf5a617c046f89fc8befdd4d4ec40d7e1e44b6d81236",
    "864e0ff02159a4a1d814208a5d6fe8672a7cc97f6c770336452bc6d4e04bdb092926749d744e4ea2",
    "4af876e8edc72de51f6318946408a27763a93acd89cb8dc98c99c87cd7a5b5ca65d100c59735032b",
    "4424e0b2b27a940f1530e98b60d6302a91b468db0ff0054e1e65f308f8c8d56701a27c2abd302967",
    "cf95ee68c4e3d58df83e2acb30cd079f",
);
pub(super) const ECC_EK_PUBLIC: &str = concat!(
    "0023000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b3314",
    "69aa0006008000430010000300100020f68b1de0f5ce686192f4bd0fd34163863f2e89d385f8bcfb",
    "85979533a57ac9b000204f022ab6b096c8bf42804d8e67d38b3f88866980cc903f68fde9d2e143d9",
    "3267",
);
pub(super) const ECC_ID_OBJECT: &str = concat!(
    "00206b18e830e5688e024acbf7275726b260db8da7350cb6e505a57d4399601bc77a10af05777b2d",
    "4782d8f2fa99ec08ff169adcb560b44a9eb004d8ab64c8ea264dd8fb",
);
pub(super) const ECC_ENCRYPTED_SECRET: &str = concat!(
    "002011468660c256299fac4752c3c8944663f78d43d40007ab8c8933d980e6356d7c0020c72ed510",
    "876e4cf7b022afea3cc3f03b2fd1f6c9d446644f9bcb5eb1bc99e2b4",
);
pub(super) const AK_PUBLIC: &str = concat!(
    "0023000b00050072000000100018000b000300100020c42136c2ba5e00a580436fc27d8eec8253be",
    "e75fa806904247436b4d3a7fc32f002031116d2defde2723b6aa4656cc3effbdacece29d6d1a786f",
    "b7d6dc98622efeda",
);
pub(super) const QUOTE_EXTRA: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub(super) const QUOTE: &str = concat!(
    "ff54434780180022000b4032bce997e6323fac8e685d04b266219f5834bfe706aad52066fd1814ed",
    "4fb70020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00000000",
    "0000021d000000020000000001201910230016363600000001000b03810001002096b73474e3976d",
    "d3cce1e77d0f33d2f7ddacb7ab4d88b7abb82d0e043c872428",
);
pub(super) const QUOTE_SIGNATURE: &str = concat!(
    "0018000b0020620f6ddc7b23282c950c3fa2c92628bd10529c572eec6319a3d2e8ef3b1d9be50020",
    "1ee6807fee073a1dd8e00917b7b430483fe162367986a72abeebf5dfcfdec44d",
);
// PCR 0: 0000000000000000000000000000000000000000000000000000000000000000
// PCR 7: 0000000000000000000000000000000000000000000000000000000000000000
// PCR 16: c5ff41e6ec2cebf49c66898f8b75980f33ccf24591d0b5482db804749963ca34

pub(super) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

pub(super) fn quote_pcrs() -> Vec<(u8, Vec<u8>)> {
    vec![
        (0, vec![0; 32]),
        (7, vec![0; 32]),
        (
            16,
            unhex("c5ff41e6ec2cebf49c66898f8b75980f33ccf24591d0b5482db804749963ca34"),
        ),
    ]
}

pub(super) const NOW: u64 = 1_800_000_000;
pub(super) const DAY: u64 = 86_400;
pub(super) const BINDING: [u8; BINDING_BYTES] = [0x42; BINDING_BYTES];

pub(super) fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

pub(super) fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

pub(super) fn rsa_private() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs8_der(&unhex(RSA_PKCS8)).expect("RSA key")
}

pub(super) fn ecc_private() -> p256::NonZeroScalar {
    let bytes: [u8; 32] = unhex(ECC_SCALAR).try_into().expect("32 bytes");
    Option::from(p256::NonZeroScalar::from_repr(bytes.into())).expect("scalar")
}

/// The TPM's side of ActivateCredential, in software: recover the seed with the EK's private
/// key, check the outer HMAC, decrypt the credential.
pub(super) fn activate(
    ek_public: &[u8],
    name: &[u8],
    made: &MadeCredential,
) -> Result<Vec<u8>, &'static str> {
    let seed = recover_seed(ek_public, &made.encrypted_secret)?;
    unprotect(&seed, name, &made.id_object)
}

pub(super) fn recover_seed(
    ek_public: &[u8],
    encrypted_secret: &[u8],
) -> Result<Vec<u8>, &'static str> {
    let ek = EkPublic::parse(ek_public).expect("EK");
    match &ek.key {
        EkKey::Rsa { .. } => rsa_private()
            .decrypt(
                rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0"),
                encrypted_secret,
            )
            .map_err(|_| "OAEP"),
        EkKey::P256(point) => {
            let mut r = Reader::new(encrypted_secret, "secret");
            let (x, y) = (r.tpm2b().map_err(|_| "x")?, r.tpm2b().map_err(|_| "y")?);
            r.end().map_err(|_| "trailing")?;
            let qe = p256_point(x, y).ok_or("point")?;
            let shared = (qe.to_projective() * *ecc_private()).to_affine();
            let shared = uncompressed(&shared).ok_or("identity")?;
            let ek_sec1 = uncompressed(point.as_affine()).ok_or("identity")?;
            Ok(kdfe(&shared[1..33], IDENTITY, x, &ek_sec1[1..33], 256))
        }
    }
}

pub(super) fn unprotect(
    seed: &[u8],
    name: &[u8],
    id_object: &[u8],
) -> Result<Vec<u8>, &'static str> {
    let mut r = Reader::new(id_object, "id object");
    let outer = r.tpm2b().map_err(|_| "hmac")?;
    let enc = r.buf.to_vec();
    let hmac_key = kdfa(seed, INTEGRITY, &[], &[], 256);
    let mut msg = enc.clone();
    msg.extend_from_slice(name);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key), &msg, outer)
        .map_err(|_| "integrity")?;
    let mut plain = enc;
    aes128_cfb_decrypt(&kdfa(seed, STORAGE, name, &[], 128), &mut plain);
    let mut r = Reader::new(&plain, "credential");
    let credential = r.tpm2b().map_err(|_| "credential")?.to_vec();
    r.end().map_err(|_| "trailing")?;
    Ok(credential)
}

/// A software model of an agent's TPM: the vector EK (whose private key we know) and an AK
/// whose key we hold, quoting a chosen set of PCR values.
pub(super) struct SoftTpm {
    pub(super) ek_public: Vec<u8>,
    pub(super) ak_key: p256::ecdsa::SigningKey,
    pub(super) ak_public: Vec<u8>,
    pub(super) pcrs: Vec<(u8, Vec<u8>)>,
}

impl SoftTpm {
    pub(super) fn new(ek_public: &str) -> SoftTpm {
        let ak_key = p256::ecdsa::SigningKey::from_slice(&[0x33; 32]).expect("ak key");
        let point = ak_key.verifying_key().to_sec1_point(false);
        let point = point.as_bytes();
        // AK_PUBLIC's area up to its unique field, then our point.
        let mut ak_public = unhex(AK_PUBLIC)[..20].to_vec();
        push_tpm2b(&mut ak_public, &point[1..33]);
        push_tpm2b(&mut ak_public, &point[33..]);
        SoftTpm {
            ek_public: unhex(ek_public),
            ak_key,
            ak_public,
            pcrs: vec![(0, vec![0; 32]), (7, vec![7; 32])],
        }
    }

    pub(super) fn ak(&self) -> AkPublic {
        AkPublic::parse(&self.ak_public).expect("soft AK")
    }

    fn quote(&self, extra: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut q = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
        q.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        push_tpm2b(&mut q, self.ak().name());
        push_tpm2b(&mut q, extra);
        q.extend_from_slice(&[0; 17 + 8]);
        q.extend_from_slice(&1u32.to_be_bytes());
        q.extend_from_slice(&alg::SHA256.to_be_bytes());
        let mut bitmap = [0u8; 3];
        for (i, _) in &self.pcrs {
            bitmap[usize::from(*i / 8)] |= 1 << (i % 8);
        }
        q.push(3);
        q.extend_from_slice(&bitmap);
        let mut ctx = digest::Context::new(&digest::SHA256);
        for (_, v) in &self.pcrs {
            ctx.update(v);
        }
        push_tpm2b(&mut q, ctx.finish().as_ref());
        let sig: p256::ecdsa::Signature = self.ak_key.sign(&q);
        let bytes = sig.to_bytes();
        let mut s = alg::ECDSA.to_be_bytes().to_vec();
        s.extend_from_slice(&alg::SHA256.to_be_bytes());
        push_tpm2b(&mut s, &bytes[..32]);
        push_tpm2b(&mut s, &bytes[32..]);
        (q, s)
    }

    /// Answers a challenge like the agent does.
    pub(super) fn answer(
        &self,
        challenge: &Challenge,
        binding: &[u8; BINDING_BYTES],
        public_key_der: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let secret =
            activate(&self.ek_public, self.ak().name(), &challenge.credential).expect("activate");
        let (quote, signature) =
            self.quote(&qualifying_data(&challenge.token, binding, public_key_der));
        (secret, quote, signature)
    }
}

pub(super) const SVID_KEY: &[u8] = &[0x30, 0x59, 1, 2, 3];

pub(super) fn allow(ek_public: &str) -> EkPolicy {
    let ek = EkPublic::parse(&unhex(ek_public)).expect("EK");
    EkPolicy {
        cas: vec![],
        ek_hashes: [ek.hash()].into(),
    }
}

/// Runs begin + finish through a SoftTpm, letting `tweak` change the evidence.
pub(super) fn attest_with(
    soft: &SoftTpm,
    policy: &EkPolicy,
    ek_cert: Option<&[u8]>,
    tweak: impl FnOnce(
        &mut Vec<u8>,
        &mut Vec<u8>,
        &mut Vec<u8>,
        &mut UnixTime,
        &mut [u8; BINDING_BYTES],
    ),
) -> Result<TpmIdentity, TpmError> {
    let challenger = Challenger::new(&mut rng());
    let challenge = challenger.begin(
        policy,
        &soft.ek_public,
        ek_cert,
        &soft.ak_public,
        &BINDING,
        now(),
        &mut rng(),
    )?;
    let (mut secret, mut quote, mut signature) = soft.answer(&challenge, &BINDING, SVID_KEY);
    let mut token = challenge.token.clone();
    let mut at = UnixTime::from_secs(NOW + 5);
    let mut binding = BINDING;
    tweak(&mut secret, &mut token, &mut quote, &mut at, &mut binding);
    let _ = &mut signature;
    challenger.finish(
        policy,
        &Evidence {
            ek_public: &soft.ek_public,
            ek_cert,
            ak_public: &soft.ak_public,
            token: &token,
            activated_secret: &secret,
            quote: &quote,
            signature: &signature,
            pcrs: &soft.pcrs,
            public_key_der: SVID_KEY,
        },
        &binding,
        at,
    )
}
