//! `sigil api fetch x509|jwt`, `validate jwt` and `watch`: a Workload API client for humans and
//! scripts, talking to the local agent as the calling process.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::svid::{der_certs, jwt_claims, write_svids, SvidSummary};
use super::workload::{
    bounded, first_x509, workload_connect, workload_request, workload_socket, workload_status,
};
use super::{check_id, fail, parse_duration_secs, print_json, rfc3339, span_text, CliError};

/// The environment variable every SPIFFE client reads for the Workload API endpoint.
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
/// Bound on each Workload API call unless `--timeout` says otherwise.
pub const API_TIMEOUT_DEFAULT: &str = "10s";

/// `sigil api`: talks to the SPIFFE Workload API of the local agent, as the calling process.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The Workload API socket: a path or a `unix:/path` / `unix:///path` URI
    /// [default: $SPIFFE_ENDPOINT_SOCKET].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<String>,
    /// Bound on every call: connecting and the answer (for `watch`: the first update), e.g.
    /// `10s`, `1m`.
    #[arg(long, value_name = "DURATION", default_value = API_TIMEOUT_DEFAULT, global = true)]
    timeout: String,
    #[command(subcommand)]
    command: ApiCommand,
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Fetch this process's X.509-SVIDs or JWT-SVIDs.
    Fetch(ApiFetchArgs),
    /// Validate a JWT-SVID through the Workload API.
    Validate(ApiValidateArgs),
    /// Print a line per X.509-SVID update (time, SPIFFE IDs, expiry) until Ctrl-C.
    Watch(ApiWatch),
}

#[derive(Debug, Args)]
struct ApiFetchArgs {
    #[command(subcommand)]
    what: ApiFetch,
}

#[derive(Debug, Subcommand)]
enum ApiFetch {
    /// X.509-SVIDs: SPIFFE ID, serial, expiry and hint of each; `--write DIR` saves the files.
    X509(FetchX509),
    /// JWT-SVIDs for one or more audiences: prints each token on its own line.
    Jwt(FetchJwt),
}

#[derive(Debug, Args)]
struct FetchX509 {
    /// Write svid.pem (certificate chain, leaf first), svid.key (PKCS#8 PEM, mode 0600) and
    /// bundle.pem (this trust domain's CAs) into DIR (created if missing; files are replaced
    /// atomically). Further SVIDs go to svid.1.pem / svid.1.key, svid.2.pem / …
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// Print JSON: {"svids": [{"spiffe_id", "hint", "serial", "not_after", "not_after_secs",
    /// "chain_certs"}], "bundle_certs", "federated_bundles", "written"}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FetchJwt {
    /// An audience of the token (repeat for several).
    #[arg(long, value_name = "AUD", required = true)]
    audience: Vec<String>,
    /// Only the SVID of this SPIFFE ID (default: every identity of this process).
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<String>,
    /// Print JSON: {"svids": [{"spiffe_id", "hint", "token", "expires_at", "expires_at_secs"}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ApiValidateArgs {
    #[command(subcommand)]
    what: ApiValidate,
}

#[derive(Debug, Subcommand)]
enum ApiValidate {
    /// Validate a JWT-SVID for an audience: prints its SPIFFE ID and claims; exit 1 if invalid.
    Jwt(ValidateJwt),
}

#[derive(Debug, Args)]
struct ValidateJwt {
    /// The audience the token must carry.
    #[arg(long, value_name = "AUD")]
    audience: String,
    /// The token (`-`: read it from stdin).
    #[arg(long, value_name = "TOKEN")]
    svid: String,
    /// Print JSON: {"spiffe_id", "claims"}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ApiWatch {
    /// Print each update as one JSON object per line: {"time", "time_secs", "svids":
    /// [{"spiffe_id", "hint", "serial", "not_after", "not_after_secs"}]}.
    #[arg(long)]
    json: bool,
}

/// Wall-clock seconds since the epoch.
fn now_secs() -> u64 {
    // The CLI is the production shell: it may read the OS clock (only for display).
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApiArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let timeout = match parse_duration_secs(&self.timeout) {
            Ok(0) => return Err(fail("--timeout: must be at least 1s")),
            Ok(secs) => std::time::Duration::from_secs(secs),
            Err(e) => return Err(fail(format!("--timeout: {e}"))),
        };
        let env = std::env::var_os(ENDPOINT_SOCKET_ENV);
        let socket = workload_socket(self.socket.as_deref(), env.as_deref())?;
        match self.command {
            ApiCommand::Fetch(ApiFetchArgs {
                what: ApiFetch::X509(args),
            }) => args.run(&socket, timeout, out).await,
            ApiCommand::Fetch(ApiFetchArgs {
                what: ApiFetch::Jwt(args),
            }) => args.run(&socket, timeout, out).await,
            ApiCommand::Validate(ApiValidateArgs {
                what: ApiValidate::Jwt(args),
            }) => args.run(&socket, timeout, out).await,
            ApiCommand::Watch(args) => args.run(&socket, timeout, out).await,
        }
    }
}

impl FetchX509 {
    async fn run(
        self,
        socket: &std::path::Path,
        timeout: std::time::Duration,
        out: &mut impl Write,
    ) -> Result<(), CliError> {
        let (resp, _) = bounded(timeout, "fetch x509", first_x509(socket)).await?;
        let svids = resp
            .svids
            .iter()
            .map(SvidSummary::of)
            .collect::<Result<Vec<_>, _>>()?;
        let bundle_certs = der_certs(&resp.svids[0].bundle)?.len();
        let federated: Vec<&String> = resp.federated_bundles.keys().collect();
        let written = match &self.write {
            Some(dir) => write_svids(dir, &resp)?,
            None => Vec::new(),
        };
        if self.json {
            let list: Vec<Value> = svids
                .iter()
                .map(|s| {
                    let mut v = s.json();
                    v["chain_certs"] = json!(s.chain_certs);
                    v
                })
                .collect();
            let written: Vec<String> = match &self.write {
                Some(dir) => written
                    .iter()
                    .map(|n| dir.join(n).display().to_string())
                    .collect(),
                None => Vec::new(),
            };
            return print_json(
                out,
                &json!({
                    "svids": list,
                    "bundle_certs": bundle_certs,
                    "federated_bundles": federated,
                    "written": written,
                }),
            );
        }
        let now = now_secs();
        for (i, s) in svids.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "SPIFFE ID        : {}", s.spiffe_id)?;
            writeln!(out, "Serial           : {}", s.serial)?;
            let left = if s.not_after > now {
                format!("in {}", span_text(s.not_after - now))
            } else {
                "expired".to_owned()
            };
            writeln!(out, "Expires at       : {} ({left})", rfc3339(s.not_after))?;
            writeln!(out, "Chain            : {} certificate(s)", s.chain_certs)?;
            if !s.hint.is_empty() {
                writeln!(out, "Hint             : {}", s.hint)?;
            }
        }
        writeln!(out)?;
        writeln!(out, "Bundle           : {bundle_certs} CA certificate(s)")?;
        for td in &federated {
            writeln!(out, "Federated bundle : {td}")?;
        }
        if let Some(dir) = &self.write {
            writeln!(out, "Written to {}: {}", dir.display(), written.join(", "))?;
        }
        Ok(())
    }
}

impl FetchJwt {
    async fn run(
        self,
        socket: &std::path::Path,
        timeout: std::time::Duration,
        out: &mut impl Write,
    ) -> Result<(), CliError> {
        if self.audience.iter().any(String::is_empty) {
            return Err(fail("--audience: must not be empty"));
        }
        let spiffe_id = match &self.spiffe_id {
            Some(id) => check_id("spiffe-id", id)?,
            None => String::new(),
        };
        let req = wire::workload::JwtsvidRequest {
            audience: self.audience.clone(),
            spiffe_id,
        };
        let resp = bounded(timeout, "fetch jwt", async {
            let mut client = workload_connect(socket).await?;
            client
                .fetch_jwtsvid(workload_request(req))
                .await
                .map_err(workload_status)
        })
        .await?
        .into_inner();
        if resp.svids.is_empty() {
            return Err(fail("the Workload API sent no JWT-SVID"));
        }
        if self.json {
            let list: Vec<Value> = resp
                .svids
                .iter()
                .map(|s| {
                    let exp =
                        jwt_claims(&s.svid).and_then(|c| c.get("exp").and_then(Value::as_u64));
                    json!({
                        "spiffe_id": s.spiffe_id,
                        "hint": s.hint,
                        "token": s.svid,
                        "expires_at": exp.map(rfc3339),
                        "expires_at_secs": exp,
                    })
                })
                .collect();
            return print_json(out, &json!({ "svids": list }));
        }
        for s in &resp.svids {
            writeln!(out, "{}", s.svid)?;
        }
        Ok(())
    }
}

impl ValidateJwt {
    async fn run(
        self,
        socket: &std::path::Path,
        timeout: std::time::Duration,
        out: &mut impl Write,
    ) -> Result<(), CliError> {
        let token = if self.svid == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 64 * 1024),
                &mut text,
            )
            .map_err(|e| fail(format!("reading the token from stdin: {e}")))?;
            text.trim().to_owned()
        } else {
            self.svid.trim().to_owned()
        };
        if token.is_empty() {
            return Err(fail("--svid: empty token"));
        }
        if self.audience.is_empty() {
            return Err(fail("--audience: must not be empty"));
        }
        let req = wire::workload::ValidateJwtsvidRequest {
            audience: self.audience.clone(),
            svid: token.clone(),
        };
        let resp = bounded(timeout, "validate jwt", async {
            let mut client = workload_connect(socket).await?;
            client
                .validate_jwtsvid(workload_request(req))
                .await
                .map_err(workload_status)
        })
        .await?
        .into_inner();
        // The agent validated this very token: its payload is the claims it answers with
        // (top-level nulls left out, as the agent does).
        let mut claims = jwt_claims(&token).unwrap_or_default();
        claims.retain(|_, v| !v.is_null());
        let claims = Value::Object(claims);
        if self.json {
            return print_json(
                out,
                &json!({ "spiffe_id": resp.spiffe_id, "claims": claims }),
            );
        }
        writeln!(out, "SPIFFE ID        : {}", resp.spiffe_id)?;
        writeln!(out, "Claims           :")?;
        print_json(out, &claims)
    }
}

impl ApiWatch {
    async fn run(
        self,
        socket: &std::path::Path,
        timeout: std::time::Duration,
        out: &mut impl Write,
    ) -> Result<(), CliError> {
        let (first, mut stream) = bounded(timeout, "watch", first_x509(socket)).await?;
        if !emit(out, &self.update_line(&first)?)? {
            return Ok(());
        }
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let second = std::time::Duration::from_secs(1);
        loop {
            let next = tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                next = stream.message() => next,
            };
            let mut why = match next {
                Ok(Some(update)) => {
                    if !emit(out, &self.update_line(&update)?)? {
                        return Ok(());
                    }
                    continue;
                }
                Ok(None) => fail("the Workload API closed the stream"),
                Err(s) => workload_status(s),
            };
            // Reconnect until the stream is back (the agent restarted, or an identity returns);
            // losing every identity is an update of its own, printed once.
            let (mut backoff, mut lost) = (second, false);
            loop {
                if why.0.starts_with("no identity issued") {
                    if !lost {
                        lost = true;
                        let now = now_secs();
                        let line = if self.json {
                            json!({"time": rfc3339(now), "time_secs": now, "svids": [],
                                   "error": why.0})
                            .to_string()
                        } else {
                            format!("{}  {}", rfc3339(now), why.0)
                        };
                        if !emit(out, &line)? {
                            return Ok(());
                        }
                    }
                } else {
                    eprintln!(
                        "sigil api watch: {why}; reconnecting in {}s",
                        backoff.as_secs()
                    );
                }
                tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(10 * second);
                match bounded(timeout, "watch", first_x509(socket)).await {
                    Ok((update, s)) => {
                        stream = s;
                        if !emit(out, &self.update_line(&update)?)? {
                            return Ok(());
                        }
                        break;
                    }
                    Err(e) => why = e,
                }
            }
        }
    }

    /// The line for one stream message.
    fn update_line(&self, update: &wire::workload::X509svidResponse) -> Result<String, CliError> {
        let svids = update
            .svids
            .iter()
            .map(SvidSummary::of)
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_secs();
        Ok(if self.json {
            let list: Vec<Value> = svids.iter().map(SvidSummary::json).collect();
            json!({"time": rfc3339(now), "time_secs": now, "svids": list}).to_string()
        } else {
            let ids: Vec<String> = svids
                .iter()
                .map(|s| format!("{} (expires {})", s.spiffe_id, rfc3339(s.not_after)))
                .collect();
            format!("{}  {}", rfc3339(now), ids.join(", "))
        })
    }
}

/// Writes and flushes one line; false once stdout is closed (`sigil api watch | head -1`).
fn emit(out: &mut impl Write, line: &str) -> Result<bool, CliError> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}
