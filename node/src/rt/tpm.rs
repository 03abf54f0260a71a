//! The agent's TPM (feature `tpm`, tss-esapi 7.7 over tpm2-tss): what TPM attestation
//! ([`attest::tpm`]) needs from the agent's side.
//!
//! [`AgentTpm::open`] connects through the configured TCTI, creates the endorsement key from the
//! TCG template (RSA 2048 or ECC P-256 — the same key every time: the TPM derives it from its
//! endorsement seed), reads the EK certificate from its NV index when the manufacturer stored
//! one, and creates and loads a fresh attestation key under the EK (ECC P-256, ECDSA/SHA-256,
//! restricted, fixedTPM/fixedParent). [`AgentTpm::activate`] recovers the server's credential
//! (`TPM2_ActivateCredential`, authorized by a policy session satisfying the EK's
//! `PolicySecret(endorsement)`), and [`AgentTpm::quote`] quotes the configured SHA-256 PCRs with
//! the given qualifying data and reads their values.
//!
//! Everything here blocks (a TPM command takes milliseconds to seconds): the agent runs it on a
//! blocking thread (`spawn_blocking`), one [`AgentTpm`] per attestation, moved between calls.
//! Dropping it flushes the EK and AK from the TPM. The AK's private part never leaves the TPM
//! (only its TPM-wrapped blob passes through here), and errors carry no key material.

use std::str::FromStr;

use tss_esapi::abstraction::{ak, ek, pcr, AsymmetricAlgorithmSelection};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    AttestInfo, CapabilityData, Data, EncryptedSecret, IdObject, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::rt::config::{AgentTpmConfig, EkAlgorithm};
use crate::Error;

/// How often [`AgentTpm::quote`] retries when a PCR changed between the quote and the read.
pub const QUOTE_ATTEMPTS: usize = 3;

fn tpm_error(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> Error {
    move |e| Error::Os {
        what,
        detail: format!("TPM: {e}"),
    }
}

/// A quote and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The marshalled `TPMS_ATTEST`.
    pub quote: Vec<u8>,
    /// The marshalled `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCRs: `(index, value)`, ascending.
    pub pcrs: Vec<(u8, Vec<u8>)>,
}

/// An open TPM with the EK and a fresh AK loaded.
pub struct AgentTpm {
    ctx: Context,
    ek: KeyHandle,
    ak: Option<KeyHandle>,
    /// The EK's marshalled `TPMT_PUBLIC`.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from the TPM's NV, if the manufacturer stored one.
    pub ek_cert: Option<Vec<u8>>,
    /// The AK's marshalled `TPMT_PUBLIC`.
    pub ak_public: Vec<u8>,
}

impl std::fmt::Debug for AgentTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTpm")
            .field("ek_public_bytes", &self.ek_public.len())
            .field("ek_cert", &self.ek_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// The NV index of the EK certificate for `ek` (TCG EK Credential Profile, low range).
fn ek_cert_index(ek: EkAlgorithm) -> u32 {
    match ek {
        EkAlgorithm::Rsa => 0x01c0_0002,
        EkAlgorithm::Ecc => 0x01c0_000a,
    }
}

/// Whether the TPM has the NV index `index` (asked through TPM2_GetCapability, so a missing
/// certificate does not make tpm2-tss log errors).
fn nv_index_exists(ctx: &mut Context, index: u32) -> bool {
    // Handles of type TPM_HT_NV_INDEX start at 0x01000000; ask from the index itself.
    match ctx.execute_without_session(|c| c.get_capability(CapabilityType::Handles, index, 1)) {
        Ok((CapabilityData::Handles(list), _)) => list
            .into_inner()
            .first()
            .is_some_and(|h| tss_esapi::tss2_esys::TPM2_HANDLE::from(*h) == index),
        _ => false,
    }
}

/// The PCR selection of `pcrs` in the SHA-256 bank.
fn selection(pcrs: &[u8]) -> Result<PcrSelectionList, Error> {
    let slots = pcrs
        .iter()
        .map(|p| {
            1u32.checked_shl(u32::from(*p))
                .and_then(|bit| PcrSlot::try_from(bit).ok())
                .ok_or_else(|| Error::Config(format!("tpm.pcrs: {p} is not a PCR index")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_error("building the PCR selection"))
}

impl AgentTpm {
    /// Opens the TPM of `cfg`, creates the EK and a fresh AK, and reads the EK certificate.
    pub fn open(cfg: &AgentTpmConfig) -> Result<AgentTpm, Error> {
        let tcti = TctiNameConf::from_str(&cfg.tcti).map_err(|e| {
            Error::Config(format!(
                "tpm.tcti {:?}: {e} (e.g. \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\")",
                cfg.tcti
            ))
        })?;
        let mut ctx = Context::new(tcti).map_err(|e| Error::Os {
            what: "opening the TPM",
            detail: format!(
                "{e} (tcti {:?}: is the TPM there and may this user use it?)",
                cfg.tcti
            ),
        })?;
        let selection = match cfg.ek {
            EkAlgorithm::Rsa => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            EkAlgorithm::Ecc => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        };
        let ek = ek::create_ek_object_2(&mut ctx, selection, None)
            .map_err(tpm_error("creating the endorsement key"))?;
        let mut tpm = AgentTpm {
            ctx,
            ek,
            ak: None,
            ek_public: Vec::new(),
            ek_cert: None,
            ak_public: Vec::new(),
        };
        let (ek_public, _, _) = tpm
            .ctx
            .read_public(ek)
            .map_err(tpm_error("reading the endorsement key"))?;
        tpm.ek_public = ek_public
            .marshall()
            .map_err(tpm_error("encoding the endorsement key"))?;
        // No certificate is normal for a firmware TPM or an swtpm set up without one: the
        // server may still trust the EK by its hash.
        tpm.ek_cert = if nv_index_exists(&mut tpm.ctx, ek_cert_index(cfg.ek)) {
            ek::retrieve_ek_pubcert(&mut tpm.ctx, selection)
                .ok()
                .filter(|c| !c.is_empty() && c.len() <= wire::api::TPM_EK_CERT_BYTES_MAX)
        } else {
            None
        };
        let created = ak::create_ak_2(
            &mut tpm.ctx,
            ek,
            HashingAlgorithm::Sha256,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            SignatureSchemeAlgorithm::EcDsa,
            None,
            None,
        )
        .map_err(tpm_error("creating the attestation key"))?;
        tpm.ak_public = created
            .out_public
            .marshall()
            .map_err(tpm_error("encoding the attestation key"))?;
        let ak = ak::load_ak(
            &mut tpm.ctx,
            ek,
            None,
            created.out_private,
            created.out_public,
        )
        .map_err(tpm_error("loading the attestation key"))?;
        tpm.ak = Some(ak);
        Ok(tpm)
    }

    fn ak(&self) -> Result<KeyHandle, Error> {
        self.ak.ok_or_else(|| Error::Os {
            what: "using the attestation key",
            detail: "not loaded".into(),
        })
    }

    /// `TPM2_ActivateCredential`: the credential the server made for (EK, AK name), recovered
    /// by this TPM — possible only if it holds both keys.
    pub fn activate(
        &mut self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let ak = self.ak()?;
        let id_object = IdObject::try_from(id_object.to_vec())
            .map_err(tpm_error("reading the server's credential blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(tpm_error("reading the server's encrypted seed"))?;
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_error("starting a policy session for the EK"))?
            .ok_or_else(|| Error::Os {
                what: "starting a policy session for the EK",
                detail: "the TPM returned no session".into(),
            })?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        let result = (|| {
            self.ctx
                .tr_sess_set_attributes(session, attributes, mask)
                .map_err(tpm_error("configuring the EK policy session"))?;
            let policy = PolicySession::try_from(session)
                .map_err(tpm_error("configuring the EK policy session"))?;
            self.ctx
                .execute_with_nullauth_session(|c| {
                    c.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(tpm_error(
                    "satisfying the EK policy (PolicySecret endorsement)",
                ))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(ak, self.ek, id_object, secret)
                })
                .map_err(tpm_error(
                    "activating the server's credential (TPM2_ActivateCredential)",
                ))
        })();
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(session)));
        Ok(Zeroizing::new(result?.value().to_vec()))
    }

    /// Quotes `pcrs` (SHA-256 bank) with `qualifying_data` as `extraData`, and reads their values;
    /// retried when a PCR changed in between.
    pub fn quote(&mut self, qualifying_data: &[u8], pcrs: &[u8]) -> Result<Quote, Error> {
        let ak = self.ak()?;
        let sel = selection(pcrs)?;
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(tpm_error("preparing the quote's qualifying data"))?;
        for _ in 0..QUOTE_ATTEMPTS {
            let (attest, signature) = self
                .ctx
                .execute_with_nullauth_session(|c| {
                    c.quote(ak, data.clone(), SignatureScheme::Null, sel.clone())
                })
                .map_err(tpm_error("quoting the PCRs"))?;
            let read = self
                .ctx
                .execute_without_session(|c| pcr::read_all(c, sel.clone()))
                .map_err(tpm_error("reading the PCRs"))?;
            let bank = read.pcr_bank(HashingAlgorithm::Sha256);
            let mut values = Vec::with_capacity(pcrs.len());
            for p in pcrs {
                let slot = PcrSlot::try_from(1u32 << u32::from(*p))
                    .map_err(tpm_error("reading the PCRs"))?;
                let value = bank
                    .and_then(|b| b.get_digest(slot))
                    .ok_or_else(|| Error::Os {
                        what: "reading the PCRs",
                        detail: format!("the TPM returned no SHA-256 value for PCR {p} (is the SHA-256 bank active?)"),
                    })?;
                values.push((*p, value.value().to_vec()));
            }
            let digest = {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                for (_, v) in &values {
                    ctx.update(v);
                }
                ctx.finish()
            };
            let quoted = match attest.attested() {
                AttestInfo::Quote { info } => info.pcr_digest().value().to_vec(),
                _ => Vec::new(),
            };
            if quoted != digest.as_ref() {
                tracing::debug!("a PCR changed between the quote and the read; quoting again");
                continue;
            }
            return Ok(Quote {
                quote: attest.marshall().map_err(tpm_error("encoding the quote"))?,
                signature: signature
                    .marshall()
                    .map_err(tpm_error("encoding the quote signature"))?,
                pcrs: values,
            });
        }
        Err(Error::Os {
            what: "quoting the PCRs",
            detail: format!("the PCRs kept changing during {QUOTE_ATTEMPTS} quotes"),
        })
    }
}

impl Drop for AgentTpm {
    fn drop(&mut self) {
        if let Some(ak) = self.ak.take() {
            let _ = self.ctx.flush_context(ak.into());
        }
        let _ = self.ctx.flush_context(self.ek.into());
    }
}
