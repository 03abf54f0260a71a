//! `sigil bundle show`: this trust domain's bundle (PEM or SPIFFE JSON) and its pinnable hash.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use wire::admin as pb;

use super::{fail, pem, print_json, AdminSocket, CliError};

/// `sigil bundle …`
#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    socket: AdminSocket,
    #[command(subcommand)]
    command: BundleCommand,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Print this trust domain's bundle.
    Show(BundleShow),
}

/// Bundle output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BundleFormat {
    /// The X.509 authorities as PEM CERTIFICATE blocks.
    Pem,
    /// The SPIFFE bundle document (JWKS JSON), X.509 and JWT authorities.
    Spiffe,
}

#[derive(Debug, Args)]
struct BundleShow {
    /// Output format.
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    format: BundleFormat,
    /// Print only the bundle hash a joining server node pins (`bundle_sha256`): SHA-256 over the
    /// X.509 CAs; it changes whenever a CA is added or pruned.
    #[arg(long, conflicts_with = "format")]
    hash: bool,
    /// Print JSON: trust domain, sequence, refresh hint, bundle hash and the SPIFFE bundle
    /// document (with --hash: only {"bundle_sha256": …}).
    #[arg(long)]
    json: bool,
}

impl BundleArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let BundleCommand::Show(show) = self.command;
        let mut client = self.socket.connect().await?;
        let resp = client
            .get_bundle(pb::GetBundleRequest {})
            .await?
            .into_inner();
        let document = || -> Result<Value, CliError> {
            serde_json::from_slice(&resp.bundle_json)
                .map_err(|e| fail(format!("server error: the bundle is not JSON: {e}")))
        };
        if show.hash {
            if resp.bundle_sha256.is_empty() {
                return Err(fail(if resp.x509_authorities.is_empty() {
                    "the bundle has no X.509 authority yet (no CA is published), so there is no hash to pin"
                } else {
                    "the server does not report the bundle hash (older version?)"
                }));
            }
            if show.json {
                return print_json(out, &json!({ "bundle_sha256": resp.bundle_sha256 }));
            }
            writeln!(out, "{}", resp.bundle_sha256)?;
            return Ok(());
        }
        if show.json {
            return print_json(
                out,
                &json!({
                    "trust_domain": resp.trust_domain,
                    "sequence": resp.sequence,
                    "refresh_hint_secs": resp.refresh_hint_secs,
                    "bundle_sha256": resp.bundle_sha256,
                    "bundle": document()?,
                }),
            );
        }
        match show.format {
            BundleFormat::Spiffe => print_json(out, &document()?),
            BundleFormat::Pem => {
                for der in &resp.x509_authorities {
                    out.write_all(pem("CERTIFICATE", der).as_bytes())?;
                }
                Ok(())
            }
        }
    }
}
