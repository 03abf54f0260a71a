//! The admin commands of the `sigil` CLI (DESIGN.md §6): `entry`, `token` (agent and server join
//! tokens), `bundle` (incl. the pinnable hash), `cluster` (status, remove-server) and
//! `healthcheck`, each a client of the admin API on a server node's Unix socket; and `api`
//! (`fetch x509|jwt`, `validate jwt`, `watch`), a client of the SPIFFE Workload API on the
//! agent's socket (`--socket`, else `$SPIFFE_ENDPOINT_SOCKET`).
//!
//! The admin socket is `--admin-socket PATH`, else `$SIGIL_ADMIN_SOCKET`, else
//! [`ADMIN_SOCKET_DEFAULT`]. Every failure is one line on stderr (`error: …`) and exit code 1;
//! usage errors exit with 2.
//!
//! This module holds what the commands share (errors, the admin socket, flag checks, output
//! helpers); each command group has its own submodule.

use std::io::Write;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Args;
use node::rt::admin::{self, ADMIN_SOCKET_DEFAULT, ADMIN_SOCKET_ENV};
use serde_json::Value;
use tonic::transport::Channel;
use tonic::Code;
use wire::admin::admin_client::AdminClient;
use wire::{Selector, SpiffeId, TrustDomain};

pub mod agents;
pub mod api;
pub mod bundle;
pub mod cluster;
pub mod entry;
pub mod health;
mod svid;
pub mod token;
mod workload;

/// A failed command: one line for stderr.
#[derive(Debug)]
pub struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> CliError {
        let msg = s.message().replace(['\n', '\r'], " ");
        CliError(match s.code() {
            Code::Unavailable => format!("server unavailable: {msg}"),
            Code::DeadlineExceeded => format!("the server did not answer in time: {msg}"),
            Code::Internal | Code::Unknown => format!("server error: {msg}"),
            Code::Unimplemented => {
                format!("the server does not support this command (older version?): {msg}")
            }
            _ => msg,
        })
    }
}

impl From<node::Error> for CliError {
    fn from(e: node::Error) -> CliError {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError(format!("writing output: {e}"))
    }
}

/// Where the admin socket is.
#[derive(Debug, Args)]
pub struct AdminSocket {
    /// The server node's admin socket [default: $SIGIL_ADMIN_SOCKET, else /run/sigil/admin.sock].
    #[arg(long, value_name = "PATH", global = true)]
    admin_socket: Option<PathBuf>,
}

impl AdminSocket {
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.admin_socket {
            return p.clone();
        }
        match std::env::var_os(ADMIN_SOCKET_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(ADMIN_SOCKET_DEFAULT),
        }
    }

    async fn connect(&self) -> Result<AdminClient<Channel>, CliError> {
        Ok(admin::connect(&self.path()).await?)
    }
}

pub use node::rt::config::parse_duration_secs;

fn parse_ttl(flag: &str, text: &Option<String>) -> Result<Option<u32>, CliError> {
    match text {
        None => Ok(None),
        Some(t) => {
            let secs = parse_duration_secs(t).map_err(|e| fail(format!("--{flag}: {e}")))?;
            u32::try_from(secs)
                .map(Some)
                .map_err(|_| fail(format!("--{flag}: {t} is too long")))
        }
    }
}

fn check_id(flag: &str, text: &str) -> Result<String, CliError> {
    text.parse::<SpiffeId>()
        .map(|id| id.to_string())
        .map_err(|e| fail(format!("--{flag}: {e}")))
}

fn check_selectors(texts: &[String]) -> Result<Vec<String>, CliError> {
    texts
        .iter()
        .map(|s| {
            s.parse::<Selector>()
                .map(|s| s.to_string())
                .map_err(|e| fail(format!("--selector: {e}")))
        })
        .collect()
}

fn check_trust_domains(texts: &[String]) -> Result<Vec<String>, CliError> {
    texts
        .iter()
        .map(|s| {
            s.parse::<TrustDomain>()
                .map(|td| td.to_string())
                .map_err(|e| fail(format!("--federates-with: {e}")))
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (proleptic Gregorian, UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01, by 400-year eras (each 146097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| fail(format!("encoding JSON: {e}")))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// One PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(chunk));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// `1h2m3s` style, for "expires in".
fn span_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("300"), Ok(300));
        assert_eq!(parse_duration_secs("300s"), Ok(300));
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        for bad in [
            "",
            "h",
            "1x",
            "1h30",
            "-5s",
            "99999999999999999999s",
            "1.5h",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn pem_blocks_wrap_at_64() {
        let text = pem("CERTIFICATE", &[0u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().expect("end"), "-----END CERTIFICATE-----");
    }

    #[test]
    fn spans() {
        assert_eq!(span_text(59), "59s");
        assert_eq!(span_text(61), "1m01s");
        assert_eq!(span_text(3 * 3600 + 120), "3h02m");
    }
}
