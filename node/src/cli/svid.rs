//! X.509-SVIDs as `sigil api` shows and writes them: the certificates of a Workload API chain or
//! bundle (parsed with `x509-parser`), one SVID's summary, and the PEM files of `--write`.

use std::io::Write;

use base64::Engine;
use node::rt::admin;
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{fail, pem, rfc3339, CliError};

/// Splits concatenated DER certificates (a Workload API chain or bundle), each parsed as X.509.
pub(super) fn der_certs(mut bytes: &[u8]) -> Result<Vec<&[u8]>, CliError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let Ok((rest, _)) = X509Certificate::from_der(bytes) else {
            return Err(fail("the Workload API sent a malformed certificate list"));
        };
        let (cert, rest) = bytes.split_at(bytes.len() - rest.len());
        certs.push(cert);
        bytes = rest;
    }
    Ok(certs)
}

/// What `fetch x509` and `watch` show about one SVID.
pub(super) struct SvidSummary {
    pub(super) spiffe_id: String,
    pub(super) hint: String,
    pub(super) serial: String,
    pub(super) not_after: u64,
    pub(super) chain_certs: usize,
}

impl SvidSummary {
    pub(super) fn of(svid: &wire::workload::X509svid) -> Result<SvidSummary, CliError> {
        let chain = der_certs(&svid.x509_svid)?;
        let leaf = chain.first().ok_or_else(|| {
            fail(format!(
                "the Workload API sent {} without a certificate",
                svid.spiffe_id
            ))
        })?;
        let (serial, not_after) = attest::x509::serial_and_not_after(leaf).map_err(|e| {
            fail(format!(
                "the SVID of {} does not parse: {e}",
                svid.spiffe_id
            ))
        })?;
        Ok(SvidSummary {
            spiffe_id: svid.spiffe_id.clone(),
            hint: svid.hint.clone(),
            serial,
            not_after: not_after.as_secs(),
            chain_certs: chain.len(),
        })
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "spiffe_id": self.spiffe_id,
            "hint": self.hint,
            "serial": self.serial,
            "not_after": rfc3339(self.not_after),
            "not_after_secs": self.not_after,
        })
    }
}

/// Writes `bytes` to `dir/name` with `mode`, replacing any old file atomically.
fn write_atomic(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let failed = |what: &str, e: std::io::Error| {
        fail(format!(
            "{what} {}: {}",
            path.display(),
            admin::io_text(&e.to_string())
        ))
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| failed("cannot write", e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed("cannot write", e));
    }
    Ok(())
}

/// PEM blocks for concatenated DER certificates.
fn certs_pem(der: &[u8]) -> Result<String, CliError> {
    Ok(der_certs(der)?
        .into_iter()
        .map(|c| pem("CERTIFICATE", c))
        .collect())
}

/// Writes each SVID's chain and key and the bundle into `dir`; the file names written.
pub(super) fn write_svids(
    dir: &std::path::Path,
    resp: &wire::workload::X509svidResponse,
) -> Result<Vec<String>, CliError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            fail(format!(
                "cannot create {}: {}",
                dir.display(),
                admin::io_text(&e.to_string())
            ))
        })?;
    let mut names = Vec::new();
    for (i, svid) in resp.svids.iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!(".{i}")
        };
        let (cert_name, key_name) = (format!("svid{suffix}.pem"), format!("svid{suffix}.key"));
        write_atomic(
            dir,
            &cert_name,
            certs_pem(&svid.x509_svid)?.as_bytes(),
            0o644,
        )?;
        let key = zeroize::Zeroizing::new(pem("PRIVATE KEY", &svid.x509_svid_key));
        write_atomic(dir, &key_name, key.as_bytes(), 0o600)?;
        names.extend([cert_name, key_name]);
    }
    if let Some(first) = resp.svids.first() {
        write_atomic(
            dir,
            "bundle.pem",
            certs_pem(&first.bundle)?.as_bytes(),
            0o644,
        )?;
        names.push("bundle.pem".to_owned());
    }
    Ok(names)
}

/// The claims (payload) of a compact JWS, as JSON.
pub(super) fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with `serial`, valid for `days` from the epoch.
    fn cert(serial: &[u8], days: u64) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        params.not_before = rcgen::date_time_ymd(1970, 1, 1);
        params.not_after = params.not_before + std::time::Duration::from_secs(days * 86_400);
        let key = rcgen::KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn chains() {
        // The leaf's serial loses DER's sign padding; the chain counts every certificate.
        let mut chain = cert(&[0x00, 0xff, 0x01], 2);
        chain.extend_from_slice(&cert(&[0x07], 1));
        assert_eq!(der_certs(&chain).expect("two certs").len(), 2);
        let svid = wire::workload::X509svid {
            spiffe_id: "spiffe://td/w".into(),
            x509_svid: chain.clone(),
            ..Default::default()
        };
        let summary = SvidSummary::of(&svid).expect("summary");
        assert_eq!(summary.serial, "ff01");
        assert_eq!(summary.not_after, 2 * 86_400);
        assert_eq!(summary.chain_certs, 2);
        // A cut-off or non-certificate list is refused.
        assert!(der_certs(&chain[..chain.len() - 1]).is_err());
        assert!(der_certs(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
        assert!(der_certs(&[]).expect("no certs").is_empty());
    }

    #[test]
    fn claims() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"spiffe://td/w","exp":7,"x":null}"#);
        let claims = jwt_claims(&format!("e30.{payload}.sig")).expect("claims");
        assert_eq!(claims["sub"], "spiffe://td/w");
        assert_eq!(claims["exp"], 7);
        assert!(jwt_claims("not-a-token").is_none());
    }
}
