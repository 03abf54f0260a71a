//! The admin commands of the `sigil` CLI (DESIGN.md §6): `entry`, `token` (agent and server join
//! tokens), `bundle` (incl. the pinnable hash), `cluster` (status, remove-server) and
//! `healthcheck`, each a client of the admin API on a server node's Unix socket; and `api`
//! (`fetch x509|jwt`, `validate jwt`, `watch`), a client of the SPIFFE Workload API on the
//! agent's socket (`--socket`, else `$SPIFFE_ENDPOINT_SOCKET`).
//!
//! The admin socket is `--admin-socket PATH`, else `$SIGIL_ADMIN_SOCKET`, else
//! [`ADMIN_SOCKET_DEFAULT`]. Every failure is one line on stderr (`error: …`) and exit code 1;
//! usage errors exit with 2.

use std::io::Write;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use node::rt::admin::{self, ADMIN_SOCKET_DEFAULT, ADMIN_SOCKET_ENV};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;
use wire::admin::admin_client::AdminClient;
use wire::admin::{self as pb, PAGE_SIZE_MAX};
use wire::{Selector, SpiffeId, TrustDomain};

pub mod agents;

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

fn ttl_text(secs: u32) -> String {
    if secs == 0 {
        "default".into()
    } else {
        format!("{secs}s")
    }
}

fn entry_json(e: &pb::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_svid_ttl_secs": e.x509_svid_ttl_secs,
        "jwt_svid_ttl_secs": e.jwt_svid_ttl_secs,
        "dns_names": e.dns_names,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "hint": e.hint,
        "revision": e.revision,
        "created_at_secs": e.created_at_secs,
        "expires_at_secs": e.expires_at_secs,
    })
}

fn print_entry(out: &mut impl Write, e: &pb::Entry) -> std::io::Result<()> {
    writeln!(out, "Entry ID         : {}", e.id)?;
    writeln!(out, "SPIFFE ID        : {}", e.spiffe_id)?;
    writeln!(out, "Parent ID        : {}", e.parent_id)?;
    writeln!(out, "Revision         : {}", e.revision)?;
    writeln!(out, "X509-SVID TTL    : {}", ttl_text(e.x509_svid_ttl_secs))?;
    writeln!(out, "JWT-SVID TTL     : {}", ttl_text(e.jwt_svid_ttl_secs))?;
    for s in &e.selectors {
        writeln!(out, "Selector         : {s}")?;
    }
    for d in &e.dns_names {
        writeln!(out, "DNS name         : {d}")?;
    }
    for f in &e.federates_with {
        writeln!(out, "FederatesWith    : {f}")?;
    }
    if e.admin {
        writeln!(out, "Admin            : true")?;
    }
    if e.downstream {
        writeln!(out, "Downstream       : true")?;
    }
    if !e.hint.is_empty() {
        writeln!(out, "Hint             : {}", e.hint)?;
    }
    if let Some(t) = e.expires_at_secs {
        writeln!(out, "Expires at       : {}", rfc3339(t))?;
    }
    writeln!(out, "Created at       : {}", rfc3339(e.created_at_secs))?;
    Ok(())
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| fail(format!("encoding JSON: {e}")))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// `sigil entry …`
#[derive(Debug, Args)]
pub struct EntryArgs {
    #[command(flatten)]
    socket: AdminSocket,
    #[command(subcommand)]
    command: EntryCommand,
}

#[derive(Debug, Subcommand)]
enum EntryCommand {
    /// Register a workload: issue SPIFFE ID to workloads with all SELECTORs under PARENT.
    Create(EntryCreate),
    /// Change an entry (read, modify the given fields, write back if nobody changed it meanwhile).
    Update(EntryUpdate),
    /// Show one entry.
    Show(EntryShow),
    /// List entries, optionally filtered by parent, selectors and SPIFFE ID.
    List(EntryList),
    /// Delete entries.
    Delete(EntryDelete),
}

#[derive(Debug, Args)]
struct EntryCreate {
    /// SPIFFE ID issued to matching workloads (in the server's trust domain).
    #[arg(long, value_name = "ID")]
    spiffe_id: String,
    /// SPIFFE ID of the agent (or node alias) the workload must run under.
    #[arg(long, value_name = "ID")]
    parent_id: String,
    /// A selector the workload must have, `type:value`; repeat for several (all must match).
    #[arg(long = "selector", value_name = "TYPE:VALUE", required = true)]
    selectors: Vec<String>,
    /// X.509-SVID lifetime, e.g. 1h or 300s [default: the server's].
    #[arg(long, value_name = "DURATION")]
    x509_ttl: Option<String>,
    /// JWT-SVID lifetime, e.g. 5m [default: the server's].
    #[arg(long, value_name = "DURATION")]
    jwt_ttl: Option<String>,
    /// A DNS name for the X.509-SVID; repeat for several.
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// A trust domain whose bundle the workload also receives; repeat for several.
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    federates_with: Vec<String>,
    /// Free-form hint returned with the SVID.
    #[arg(long, value_name = "TEXT", default_value = "")]
    hint: String,
    /// The workload may use the admin API.
    #[arg(long)]
    admin: bool,
    /// The workload is a downstream signing authority.
    #[arg(long)]
    downstream: bool,
    /// Use this entry ID instead of a random one.
    #[arg(long, value_name = "ENTRY_ID")]
    entry_id: Option<String>,
    /// Expiry of the entry itself, as a duration from now (data management, not security).
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<String>,
    /// Print the created entry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EntryUpdate {
    /// The entry to change.
    #[arg(long, value_name = "ENTRY_ID")]
    entry_id: String,
    /// New SPIFFE ID.
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<String>,
    /// New parent ID.
    #[arg(long, value_name = "ID")]
    parent_id: Option<String>,
    /// Replace all selectors with these (repeat for several).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    selectors: Vec<String>,
    /// New X.509-SVID lifetime (0 for the server's default).
    #[arg(long, value_name = "DURATION")]
    x509_ttl: Option<String>,
    /// New JWT-SVID lifetime (0 for the server's default).
    #[arg(long, value_name = "DURATION")]
    jwt_ttl: Option<String>,
    /// Replace all DNS names with these (repeat for several).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// Remove all DNS names.
    #[arg(long, conflicts_with = "dns")]
    clear_dns: bool,
    /// Replace all federated trust domains with these (repeat for several).
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    federates_with: Vec<String>,
    /// Remove all federated trust domains.
    #[arg(long, conflicts_with = "federates_with")]
    clear_federates_with: bool,
    /// New hint ("" clears it).
    #[arg(long, value_name = "TEXT")]
    hint: Option<String>,
    /// Admin flag (`--admin` or `--admin false`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    admin: Option<bool>,
    /// Downstream flag (`--downstream` or `--downstream false`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    downstream: Option<bool>,
    /// Fail unless the stored revision is this [default: the revision read before the update].
    #[arg(long, value_name = "N")]
    revision: Option<u64>,
    /// Print the updated entry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EntryShow {
    /// The entry's ID.
    #[arg(long, value_name = "ENTRY_ID")]
    entry_id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EntryList {
    /// Only entries with this parent ID.
    #[arg(long, value_name = "ID")]
    parent_id: Option<String>,
    /// Only entries with this SPIFFE ID.
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<String>,
    /// Only entries carrying this selector; repeat for several (all must be present).
    #[arg(long = "selector", value_name = "TYPE:VALUE")]
    selectors: Vec<String>,
    /// Entries fetched per request (all pages are fetched).
    #[arg(long, value_name = "N", default_value_t = PAGE_SIZE_MAX)]
    page_size: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EntryDelete {
    /// An entry to delete; repeat for several.
    #[arg(long = "entry-id", value_name = "ENTRY_ID", required = true)]
    entry_ids: Vec<String>,
}

impl EntryArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        match self.command {
            EntryCommand::Create(c) => c.run(&self.socket, out).await,
            EntryCommand::Update(c) => c.run(&self.socket, out).await,
            EntryCommand::Show(c) => c.run(&self.socket, out).await,
            EntryCommand::List(c) => c.run(&self.socket, out).await,
            EntryCommand::Delete(c) => c.run(&self.socket, out).await,
        }
    }
}

fn print_entry_as(out: &mut impl Write, e: &pb::Entry, json: bool) -> Result<(), CliError> {
    if json {
        print_json(out, &entry_json(e))
    } else {
        Ok(print_entry(out, e)?)
    }
}

impl EntryCreate {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let expires_at_secs = match &self.expires_in {
            None => None,
            Some(d) => {
                let secs =
                    parse_duration_secs(d).map_err(|e| fail(format!("--expires-in: {e}")))?;
                #[allow(clippy::disallowed_methods)] // the CLI's wall clock, for --expires-in
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|_| fail("the system clock is before 1970"))?;
                Some(now.as_secs().saturating_add(secs))
            }
        };
        let entry = pb::Entry {
            id: self.entry_id.unwrap_or_default(),
            spiffe_id: check_id("spiffe-id", &self.spiffe_id)?,
            parent_id: check_id("parent-id", &self.parent_id)?,
            selectors: check_selectors(&self.selectors)?,
            x509_svid_ttl_secs: parse_ttl("x509-ttl", &self.x509_ttl)?.unwrap_or(0),
            jwt_svid_ttl_secs: parse_ttl("jwt-ttl", &self.jwt_ttl)?.unwrap_or(0),
            dns_names: self.dns,
            federates_with: check_trust_domains(&self.federates_with)?,
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint,
            revision: 0,
            created_at_secs: 0,
            expires_at_secs,
        };
        let mut client = socket.connect().await?;
        let resp = client
            .create_entries(pb::CreateEntriesRequest {
                entries: vec![entry],
            })
            .await?
            .into_inner();
        match resp.results.into_iter().next().and_then(|r| r.result) {
            Some(pb::entry_result::Result::Entry(e)) => print_entry_as(out, &e, self.json),
            Some(pb::entry_result::Result::Error(e)) => {
                Err(tonic::Status::new(Code::from(e.code), e.message).into())
            }
            None => Err(fail("server error: the server returned no result")),
        }
    }
}

impl EntryUpdate {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        // Check every flag before touching the server.
        let spiffe_id = self
            .spiffe_id
            .as_deref()
            .map(|s| check_id("spiffe-id", s))
            .transpose()?;
        let parent_id = self
            .parent_id
            .as_deref()
            .map(|s| check_id("parent-id", s))
            .transpose()?;
        let selectors = check_selectors(&self.selectors)?;
        let federates_with = check_trust_domains(&self.federates_with)?;
        let x509_ttl = parse_ttl("x509-ttl", &self.x509_ttl)?;
        let jwt_ttl = parse_ttl("jwt-ttl", &self.jwt_ttl)?;

        let mut client = socket.connect().await?;
        let mut entry = client
            .get_entry(pb::GetEntryRequest {
                id: self.entry_id.clone(),
            })
            .await?
            .into_inner();
        let expected_revision = Some(self.revision.unwrap_or(entry.revision));
        if let Some(id) = spiffe_id {
            entry.spiffe_id = id;
        }
        if let Some(id) = parent_id {
            entry.parent_id = id;
        }
        if !selectors.is_empty() {
            entry.selectors = selectors;
        }
        if let Some(t) = x509_ttl {
            entry.x509_svid_ttl_secs = t;
        }
        if let Some(t) = jwt_ttl {
            entry.jwt_svid_ttl_secs = t;
        }
        if self.clear_dns {
            entry.dns_names.clear();
        } else if !self.dns.is_empty() {
            entry.dns_names = self.dns;
        }
        if self.clear_federates_with {
            entry.federates_with.clear();
        } else if !federates_with.is_empty() {
            entry.federates_with = federates_with;
        }
        if let Some(h) = self.hint {
            entry.hint = h;
        }
        if let Some(a) = self.admin {
            entry.admin = a;
        }
        if let Some(d) = self.downstream {
            entry.downstream = d;
        }
        let stored = client
            .update_entry(pb::UpdateEntryRequest {
                entry: Some(entry),
                expected_revision,
            })
            .await?
            .into_inner();
        print_entry_as(out, &stored, self.json)
    }
}

impl EntryShow {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let entry = client
            .get_entry(pb::GetEntryRequest { id: self.entry_id })
            .await?
            .into_inner();
        print_entry_as(out, &entry, self.json)
    }
}

impl EntryList {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let parent_id = self
            .parent_id
            .as_deref()
            .map(|s| check_id("parent-id", s))
            .transpose()?
            .unwrap_or_default();
        let spiffe_id = self
            .spiffe_id
            .as_deref()
            .map(|s| check_id("spiffe-id", s))
            .transpose()?
            .unwrap_or_default();
        let selectors = check_selectors(&self.selectors)?;
        if self.page_size == 0 || self.page_size > PAGE_SIZE_MAX {
            return Err(fail(format!(
                "--page-size must be between 1 and {PAGE_SIZE_MAX}"
            )));
        }
        let mut client = socket.connect().await?;
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_entries(pb::ListEntriesRequest {
                    parent_id: parent_id.clone(),
                    selectors: selectors.clone(),
                    spiffe_id: spiffe_id.clone(),
                    page_size: self.page_size,
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            entries.extend(page.entries);
            // A token that does not advance would loop forever.
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                break;
            }
            page_token = page.next_page_token;
        }
        if self.json {
            let list: Vec<Value> = entries.iter().map(entry_json).collect();
            return print_json(out, &json!({ "entries": list }));
        }
        writeln!(out, "Found {} entries", entries.len())?;
        for e in &entries {
            writeln!(out)?;
            print_entry(out, e)?;
        }
        Ok(())
    }
}

impl EntryDelete {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let resp = client
            .delete_entries(pb::DeleteEntriesRequest {
                ids: self.entry_ids,
            })
            .await?
            .into_inner();
        if !resp.missing.is_empty() {
            return Err(fail(format!(
                "deleted {} entries; not found: {}",
                resp.deleted,
                resp.missing.join(", ")
            )));
        }
        writeln!(out, "Deleted {} entries", resp.deleted)?;
        Ok(())
    }
}

/// `sigil token …`
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    socket: AdminSocket,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a single-use join token for an agent, or with `--server` for a new server node
    /// (shown once; the server stores only its hash).
    Generate(TokenGenerate),
    /// Every join token, used or not: its hash, purpose, expiry, and who used it (never the
    /// token itself).
    List(TokenList),
    /// Forget a join token (used or not): it admits nobody any more. Name it by the token or by
    /// its hash (a unique prefix of at least 8 characters, as `sigil token list` shows).
    Revoke(TokenRevoke),
}

#[derive(Debug, Args)]
struct TokenList {
    /// Print JSON: {"tokens": [{"token_sha256", "purpose", "created_at_secs", "expires_at_secs",
    /// "consumed_by", "consumed_at_secs", "node_id", "rejoin"}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true))]
struct TokenRevoke {
    /// The token itself.
    #[arg(long, value_name = "TOKEN", group = "which")]
    token: Option<String>,
    /// The token's SHA-256, or a unique prefix of it (at least 8 hex characters).
    #[arg(long, value_name = "HASH", group = "which")]
    sha256: Option<String>,
}

#[derive(Debug, Args)]
struct TokenGenerate {
    /// How long the token stays valid, e.g. 10m or 1h [default: the server's, 10m for an agent
    /// token, 1h for a server token].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// An extra SPIFFE ID for the agent that uses the token (agent tokens only).
    #[arg(long, value_name = "ID")]
    spiffe_id: Option<String>,
    /// A token that admits a new server node to the cluster instead of an agent; prints the
    /// bundle hash to pin and a `[join]` snippet for the joining node's server.toml.
    #[arg(long, conflicts_with = "spiffe_id")]
    server: bool,
    /// Server tokens: the node ID the token admits (the joining node's `node_id` must be this)
    /// [default: the next unused ID, printed].
    #[arg(long, value_name = "N", requires = "server", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// Server tokens: re-admit a member whose server SVID expired while it was down (needs
    /// --node-id). Without it a token for a member's ID is refused.
    #[arg(long, requires = "node_id")]
    rejoin: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `seeds` holds in the `[join]` snippet when the node does not know its QUIC address.
pub const SEED_PLACEHOLDER: &str = "<address of any server node>";

/// The `[join]` section of a joining server node's server.toml.
pub fn join_snippet(token: &str, seed: &str, bundle_sha256: &str) -> String {
    let seed = if seed.is_empty() {
        SEED_PLACEHOLDER
    } else {
        seed
    };
    // TOML basic strings: the values are hex or host:port, but escape anyway.
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "[join]\ntoken = {}\nseeds = [{}]\nbundle_sha256 = {}\n",
        quote(token),
        quote(seed),
        quote(bundle_sha256)
    )
}

impl TokenArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let g = match self.command {
            TokenCommand::Generate(g) => g,
            TokenCommand::List(l) => return l.run(&self.socket, out).await,
            TokenCommand::Revoke(r) => return r.run(&self.socket, out).await,
        };
        let ttl_secs = match &g.ttl {
            None => 0,
            Some(t) => match parse_duration_secs(t).map_err(|e| fail(format!("--ttl: {e}")))? {
                0 => return Err(fail("--ttl must be longer than 0s")),
                n => n,
            },
        };
        let spiffe_id = g
            .spiffe_id
            .as_deref()
            .map(|s| check_id("spiffe-id", s))
            .transpose()?
            .unwrap_or_default();
        let purpose = if g.server {
            pb::JoinTokenPurpose::Server
        } else {
            pb::JoinTokenPurpose::Agent
        };
        let mut client = self.socket.connect().await?;
        let resp = client
            .create_join_token(pb::CreateJoinTokenRequest {
                ttl_secs,
                spiffe_id,
                purpose: purpose.into(),
                node_id: g.node_id.unwrap_or(0),
                rejoin: g.rejoin,
            })
            .await?
            .into_inner();
        if g.server {
            return print_server_token(out, &resp, g.json);
        }
        if g.json {
            return print_json(
                out,
                &json!({
                    "token": resp.token,
                    "purpose": "agent",
                    "expires_at_secs": resp.expires_at_secs,
                    "agent_spiffe_id": resp.agent_spiffe_id,
                    "entry_id": resp.entry_id,
                }),
            );
        }
        writeln!(out, "Token: {}", resp.token)?;
        writeln!(out, "Agent SPIFFE ID: {}", resp.agent_spiffe_id)?;
        writeln!(out, "Expires at: {}", rfc3339(resp.expires_at_secs))?;
        if !resp.entry_id.is_empty() {
            writeln!(out, "Entry ID: {}", resp.entry_id)?;
        }
        Ok(())
    }
}

fn purpose_name(purpose: i32) -> &'static str {
    match pb::JoinTokenPurpose::try_from(purpose) {
        Ok(pb::JoinTokenPurpose::Server) => "server",
        _ => "agent",
    }
}

impl TokenList {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let mut tokens = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_join_tokens(pb::ListJoinTokensRequest {
                    page_size: PAGE_SIZE_MAX,
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            tokens.extend(page.tokens);
            // A token that does not advance would loop forever.
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                break;
            }
            page_token = page.next_page_token;
        }
        if self.json {
            let list: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    json!({
                        "token_sha256": t.token_sha256,
                        "purpose": purpose_name(t.purpose),
                        "created_at_secs": t.created_at_secs,
                        "expires_at_secs": t.expires_at_secs,
                        "consumed_by": (!t.consumed_by.is_empty()).then_some(&t.consumed_by),
                        "consumed_at_secs": t.consumed_at_secs,
                        "node_id": t.node_id,
                        "rejoin": t.rejoin,
                    })
                })
                .collect();
            return print_json(out, &json!({ "tokens": list }));
        }
        writeln!(out, "Found {} join token(s)", tokens.len())?;
        for t in &tokens {
            writeln!(out)?;
            writeln!(out, "Token SHA-256: {}", t.token_sha256)?;
            let purpose = match (purpose_name(t.purpose), t.node_id) {
                ("server", Some(n)) if t.rejoin => format!("server (re-admits node {n})"),
                ("server", Some(n)) => format!("server (admits node {n})"),
                (p, _) => p.to_owned(),
            };
            writeln!(out, "Purpose      : {purpose}")?;
            writeln!(out, "Created at   : {}", rfc3339(t.created_at_secs))?;
            writeln!(out, "Expires at   : {}", rfc3339(t.expires_at_secs))?;
            if t.consumed_by.is_empty() {
                writeln!(out, "Used         : no")?;
            } else {
                let at = t.consumed_at_secs.map(rfc3339).unwrap_or_default();
                writeln!(out, "Used         : by {} at {at}", t.consumed_by)?;
            }
        }
        Ok(())
    }
}

impl TokenRevoke {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let resp = client
            .revoke_join_token(pb::RevokeJoinTokenRequest {
                token: self.token.unwrap_or_default(),
                token_sha256: self.sha256.unwrap_or_default(),
            })
            .await?
            .into_inner();
        writeln!(
            out,
            "Join token {} revoked: it admits nobody any more",
            resp.token_sha256
        )?;
        Ok(())
    }
}

/// Prints a server join token: JSON, or the token, the bundle hash and a `[join]` snippet.
fn print_server_token(
    out: &mut impl Write,
    resp: &pb::CreateJoinTokenResponse,
    json: bool,
) -> Result<(), CliError> {
    if resp.purpose != i32::from(pb::JoinTokenPurpose::Server) {
        return Err(fail(
            "the server does not support server join tokens (older version?); it created an agent token instead, which cannot admit a server node",
        ));
    }
    if resp.bundle_sha256.is_empty() {
        return Err(fail("server error: the server returned no bundle hash"));
    }
    if json {
        let seeds: Vec<&str> = if resp.seed_address.is_empty() {
            Vec::new()
        } else {
            vec![resp.seed_address.as_str()]
        };
        return print_json(
            out,
            &json!({
                "token": resp.token,
                "purpose": "server",
                "expires_at": rfc3339(resp.expires_at_secs),
                "expires_at_secs": resp.expires_at_secs,
                "bundle_sha256": resp.bundle_sha256,
                "trust_domain": resp.trust_domain,
                "seeds": seeds,
                "node_id": resp.node_id,
            }),
        );
    }
    writeln!(out, "Token: {}", resp.token)?;
    writeln!(
        out,
        "Purpose: server (admits server node {} once)",
        resp.node_id
    )?;
    writeln!(out, "Expires at: {}", rfc3339(resp.expires_at_secs))?;
    writeln!(out, "Bundle SHA-256: {}", resp.bundle_sha256)?;
    writeln!(out)?;
    let td = if resp.trust_domain.is_empty() {
        String::new()
    } else {
        format!("trust_domain = \"{}\", ", resp.trust_domain)
    };
    writeln!(
        out,
        "Add this to the joining node's server.toml, which must say {td}node_id = {} (the token admits only that ID), its bind, and bootstrap = false:",
        resp.node_id
    )?;
    writeln!(out)?;
    write!(
        out,
        "{}",
        join_snippet(&resp.token, &resp.seed_address, &resp.bundle_sha256)
    )?;
    writeln!(out)?;
    if resp.seed_address.is_empty() {
        writeln!(
            out,
            "Replace {SEED_PLACEHOLDER} with the QUIC address (bind) of a running server node."
        )?;
    }
    writeln!(
        out,
        "Note: the bundle hash changes whenever a CA is added or pruned (key rotation), so join soon; if the join is refused for a hash mismatch, pin the current hash from `sigil bundle show --hash`."
    )?;
    Ok(())
}

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

/// `sigil cluster …`
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    socket: AdminSocket,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Raft members, leader, term, applied index, each node's active CA key and its expiry, and
    /// the registered server nodes.
    Status(ClusterStatus),
    /// Remove a server node from the cluster's membership (the Raft leader then removes it from
    /// the voters). The last server node cannot be removed.
    RemoveServer(ClusterRemoveServer),
}

#[derive(Debug, Args)]
struct ClusterStatus {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ClusterRemoveServer {
    /// The server node's ID (its `node_id`, see `sigil cluster status`). A removed ID is never
    /// admitted again.
    #[arg(value_name = "NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
    /// Its keys may be compromised: take its CA and JWT keys out of the trust bundle now, so
    /// every SVID it signed stops verifying (workloads it served get new SVIDs from the other
    /// nodes at their next renewal). Without it they stay until every SVID it may have signed
    /// expired (staleness_max + the longest default SVID TTL).
    #[arg(long)]
    compromised: bool,
    /// Print JSON: {"removed": {"node_id", "addr"}, "servers": [...]}.
    #[arg(long)]
    json: bool,
}

fn server_json(s: &pb::ServerNode) -> Value {
    json!({ "node_id": s.node_id, "addr": s.addr })
}

fn authority_json(a: &Option<pb::Authority>) -> Value {
    match a {
        None => Value::Null,
        Some(a) => json!({ "id": a.id, "not_after_secs": a.not_after_secs }),
    }
}

fn authority_text(a: &Option<pb::Authority>) -> String {
    match a {
        None => "none".into(),
        Some(a) => format!("{} (until {})", a.id, rfc3339(a.not_after_secs)),
    }
}

impl ClusterArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        match self.command {
            ClusterCommand::Status(status) => status.run(&self.socket, out).await,
            ClusterCommand::RemoveServer(remove) => remove.run(&self.socket, out).await,
        }
    }
}

impl ClusterRemoveServer {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = socket.connect().await?;
        let resp = client
            .remove_server(pb::RemoveServerRequest {
                node_id: self.node_id,
                compromised: self.compromised,
            })
            .await?
            .into_inner();
        if self.json {
            let servers: Vec<Value> = resp.servers.iter().map(server_json).collect();
            return print_json(
                out,
                &json!({
                    "removed": resp.removed.as_ref().map(server_json),
                    "servers": servers,
                }),
            );
        }
        let at = resp
            .removed
            .as_ref()
            .filter(|r| !r.addr.is_empty())
            .map(|r| format!(" ({})", r.addr))
            .unwrap_or_default();
        writeln!(
            out,
            "Removed server node {}{at} from the cluster's membership; the Raft leader will remove it from the voters.",
            self.node_id
        )?;
        let remaining: Vec<String> = resp
            .servers
            .iter()
            .map(|s| format!("{} ({})", s.node_id, s.addr))
            .collect();
        writeln!(
            out,
            "Remaining server nodes: {}",
            if remaining.is_empty() {
                "unknown to this node yet".to_owned()
            } else {
                remaining.join(", ")
            }
        )?;
        Ok(())
    }
}

impl ClusterStatus {
    async fn run(self, socket: &AdminSocket, out: &mut impl Write) -> Result<(), CliError> {
        let status = self;
        let mut client = socket.connect().await?;
        let s = client
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        if status.json {
            let members: Vec<Value> = s
                .members
                .iter()
                .map(|m| {
                    json!({
                        "node_id": m.node_id,
                        "address": m.address,
                        "voter": m.voter,
                        "leader": m.leader,
                        "x509_authority": authority_json(&m.x509_authority),
                        "jwt_authority": authority_json(&m.jwt_authority),
                    })
                })
                .collect();
            return print_json(
                out,
                &json!({
                    "trust_domain": s.trust_domain,
                    "node_id": s.node_id,
                    "node_state": s.node_state,
                    "leader_id": s.leader_id,
                    "term": s.term,
                    "applied_index": s.applied_index,
                    "bundle_sequence": s.bundle_sequence,
                    "entries": s.entries,
                    "members": members,
                    "servers": s.servers.iter().map(server_json).collect::<Vec<_>>(),
                }),
            );
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        writeln!(out, "Trust domain   : {}", s.trust_domain)?;
        writeln!(out, "This node      : {} ({})", s.node_id, s.node_state)?;
        writeln!(out, "Leader         : {}", opt(s.leader_id))?;
        writeln!(out, "Term           : {}", s.term)?;
        writeln!(out, "Applied index  : {}", opt(s.applied_index))?;
        writeln!(out, "Bundle sequence: {}", s.bundle_sequence)?;
        writeln!(out, "Entries        : {}", s.entries)?;
        writeln!(out, "Members        : {}", s.members.len())?;
        for m in &s.members {
            let role = match (m.leader, m.voter) {
                (true, _) => "leader",
                (false, true) => "voter",
                (false, false) => "learner",
            };
            writeln!(out, "  node {} ({role}) at {}", m.node_id, m.address)?;
            writeln!(out, "    X.509 CA : {}", authority_text(&m.x509_authority))?;
            writeln!(out, "    JWT key  : {}", authority_text(&m.jwt_authority))?;
        }
        writeln!(out, "Servers        : {} registered", s.servers.len())?;
        for srv in &s.servers {
            let raft = match s.members.iter().find(|m| m.node_id == srv.node_id) {
                Some(m) if m.voter => "Raft voter",
                Some(_) => "Raft learner",
                None => "not yet a Raft member",
            };
            writeln!(out, "  node {} at {} ({raft})", srv.node_id, srv.addr)?;
        }
        Ok(())
    }
}

/// `sigil healthcheck`
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    socket: AdminSocket,
    /// Print nothing on success.
    #[arg(long)]
    quiet: bool,
}

impl HealthcheckArgs {
    /// Runs the command, writing results to `out`.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let mut client = self.socket.connect().await?;
        let h = client.health(pb::HealthRequest {}).await?.into_inner();
        if !h.serving {
            return Err(fail(format!(
                "server node {} is not serving (raft has stopped)",
                h.node_id
            )));
        }
        if !self.quiet {
            let leader = h
                .leader_id
                .map_or_else(|| "no leader known".to_owned(), |l| format!("leader {l}"));
            writeln!(out, "server node {} is healthy ({leader})", h.node_id)?;
        }
        Ok(())
    }
}

/// `sigil agent health`
#[derive(Debug, Args)]
pub struct AgentHealthArgs {
    /// The running agent's admin socket [default: `admin_socket` of --config, else
    /// /var/lib/sigil-agent/admin.sock].
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// The agent's agent.toml, to find its admin socket.
    #[arg(long, value_name = "FILE", conflicts_with = "admin_socket")]
    config: Option<PathBuf>,
    /// Exit 0 while the agent serves cached SVIDs with no server reachable (for liveness probes
    /// that must not restart an agent during a server outage).
    #[arg(long)]
    allow_disconnected: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl AgentHealthArgs {
    /// Runs the command: prints the agent's state; fails (exit 1) when the agent is not connected
    /// to a server (unless `--allow-disconnected`) or its own SVID has expired.
    pub async fn run(self, out: &mut impl Write) -> Result<(), CliError> {
        let socket = match (&self.admin_socket, &self.config) {
            (Some(path), _) => path.clone(),
            (None, Some(config)) => {
                node::rt::config::AgentFileConfig::load(config)
                    .map_err(|e| fail(e.to_string()))?
                    .admin_socket
            }
            (None, None) => std::path::Path::new(node::rt::config::AGENT_DATA_DIR_DEFAULT)
                .join(node::rt::config::AGENT_ADMIN_SOCKET_NAME),
        };
        let mut client = node::rt::agent_admin::connect(&socket)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let h = client
            .agent_health(pb::AgentHealthRequest {})
            .await?
            .into_inner();
        let now = h.now_unix;
        let until = |t: i64| span_text(u64::try_from(t.saturating_sub(now)).unwrap_or(0));
        let agent_expired = h.agent_svid_not_after_unix <= now;
        if self.json {
            print_json(
                out,
                &json!({
                    "spiffe_id": h.spiffe_id,
                    "connected": h.connected,
                    "server": (!h.server.is_empty()).then_some(&h.server),
                    "last_server_contact_unix": (h.last_server_contact_unix > 0).then_some(h.last_server_contact_unix),
                    "agent_svid_not_after_unix": h.agent_svid_not_after_unix,
                    "x509_svids": h.x509_svids,
                    "earliest_svid_not_after_unix": (h.earliest_svid_not_after_unix > 0).then_some(h.earliest_svid_not_after_unix),
                    "entries": h.entries,
                    "bundle_authorities": h.bundle_authorities,
                    "now_unix": now,
                }),
            )?;
        } else {
            let expiry = if h.x509_svids == 0 {
                String::new()
            } else {
                format!(
                    " (earliest expires in {})",
                    until(h.earliest_svid_not_after_unix)
                )
            };
            let cached = if h.connected { "" } else { "cached " };
            writeln!(
                out,
                "agent {} serves {} {cached}X.509-SVID(s){expiry} for {} entr{}; the bundle has {} X.509 authorit{}",
                h.spiffe_id,
                h.x509_svids,
                h.entries,
                if h.entries == 1 { "y" } else { "ies" },
                h.bundle_authorities,
                if h.bundle_authorities == 1 { "y" } else { "ies" },
            )?;
            if h.connected {
                writeln!(out, "connected to server {}", h.server)?;
            } else {
                let last = if h.last_server_contact_unix > 0 {
                    format!(
                        "last contact {} ago",
                        span_text(u64::try_from(now - h.last_server_contact_unix).unwrap_or(0))
                    )
                } else {
                    "no contact since the agent started".to_owned()
                };
                writeln!(
                    out,
                    "NOT connected to any server ({last}): workloads get cached SVIDs until they expire and no new identities; check that the servers in agent.toml run and are reachable"
                )?;
            }
            if agent_expired {
                writeln!(out, "the agent's own SVID has expired")?;
            } else {
                writeln!(
                    out,
                    "agent SVID expires in {}",
                    until(h.agent_svid_not_after_unix)
                )?;
            }
        }
        if agent_expired {
            return Err(fail(
                "the agent's own SVID has expired: it must attest again (see the agent's log)",
            ));
        }
        if !h.connected && !self.allow_disconnected {
            return Err(fail(
                "the agent is not connected to any server (serving cached SVIDs only)",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// `sigil api`: a Workload API client for humans and scripts.

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

/// The Workload API socket path from `--socket` (a path or a `unix:` URI) or, without it, from
/// `$SPIFFE_ENDPOINT_SOCKET` (a `unix:` URI, as for every SPIFFE client).
pub fn workload_socket(
    flag: Option<&str>,
    env: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, CliError> {
    if let Some(text) = flag {
        if text.is_empty() {
            return Err(fail("--socket: empty path"));
        }
        if text.contains(':') && !text.starts_with('/') {
            return parse_unix_uri(text).map_err(|e| fail(format!("--socket {text}: {e}")));
        }
        return Ok(PathBuf::from(text));
    }
    let hint = "pass --socket PATH or set SPIFFE_ENDPOINT_SOCKET=unix:///path/to/agent.sock \
                (the agent's socket_path, default /run/sigil/agent.sock)";
    let text = match env {
        Some(v) if !v.is_empty() => v
            .to_str()
            .ok_or_else(|| fail(format!("{ENDPOINT_SOCKET_ENV} is not valid UTF-8")))?,
        _ => {
            return Err(fail(format!(
                "no Workload API socket given: {ENDPOINT_SOCKET_ENV} is not set; {hint}"
            )))
        }
    };
    parse_unix_uri(text).map_err(|e| fail(format!("{ENDPOINT_SOCKET_ENV}={text}: {e}")))
}

/// `unix:/path` or `unix:///path` → `/path`.
fn parse_unix_uri(text: &str) -> Result<PathBuf, String> {
    let Some((scheme, rest)) = text.split_once(':') else {
        return Err(format!("not a unix: URI (write unix://{text})"));
    };
    if !scheme.eq_ignore_ascii_case("unix") {
        return Err(if scheme.eq_ignore_ascii_case("tcp") {
            "TCP endpoints are not supported: the sigil agent serves the Workload API on a Unix \
             socket (unix:///path)"
                .to_owned()
        } else {
            format!("unsupported scheme `{scheme}` (use unix:///path)")
        });
    }
    if rest.contains(['?', '#']) {
        return Err("a unix: URI takes no query or fragment".to_owned());
    }
    let path = match rest.strip_prefix("//") {
        Some(after) if after.starts_with('/') => after,
        Some(_) => return Err("has a host part; use unix:///absolute/path".to_owned()),
        None => rest,
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err("the socket path must be absolute (unix:///path)".to_owned());
    }
    Ok(PathBuf::from(path))
}

/// This process's user ID (the owner of `/proc/self`), for error messages.
fn own_uid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or_else(|_| "unknown".to_owned(), |m| m.uid().to_string())
}

/// A Workload API error as one line.
fn workload_status(s: tonic::Status) -> CliError {
    let msg = s.message().replace(['\n', '\r'], " ");
    match s.code() {
        Code::PermissionDenied if msg.contains(node::rt::workload_api::NO_IDENTITY) => {
            let uid = own_uid();
            fail(format!(
                "no identity issued for this process (uid {uid}): no registration entry matches \
                 it under this agent (see `sigil entry list --selector unix:uid:{uid}`)"
            ))
        }
        Code::PermissionDenied => fail(format!("the Workload API refused this process: {msg}")),
        Code::InvalidArgument => fail(msg),
        Code::Unavailable => fail(format!("Workload API unavailable: {msg}")),
        Code::Unimplemented => fail(format!(
            "the Workload API does not support this call: {msg}"
        )),
        _ => fail(format!("Workload API error ({:?}): {msg}", s.code())),
    }
}

/// A request carrying the `workload.spiffe.io: true` header.
fn workload_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        wire::workload::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static(wire::workload::SECURITY_HEADER_VALUE),
    );
    req
}

type WorkloadClient = wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<Channel>;

/// Connects to the Workload API on `path` (a precise error if it is missing or nobody listens).
async fn workload_connect(path: &std::path::Path) -> Result<WorkloadClient, CliError> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "the Workload API socket {shown} does not exist (is `sigil agent` running, and \
                 is this its socket_path?)"
            )))
        }
        Err(e) => {
            return Err(fail(format!(
                "cannot reach the Workload API socket {shown}: {}",
                admin::io_text(&e.to_string())
            )))
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail(format!("{shown} is not a socket")));
        }
        Ok(_) => {}
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        fail(format!(
            "cannot connect to the Workload API socket {shown}: {} (is `sigil agent` running?)",
            admin::io_text(&e.to_string())
        ))
    };
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
    let channel = admin::uds_channel(path, endpoint)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok(WorkloadClient::new(channel))
}

/// Runs `f`, failing with a clear line if it takes longer than `limit`.
async fn bounded<T>(
    limit: std::time::Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "{what}: no answer from the Workload API within {}s (--timeout)",
            limit.as_secs()
        ))),
    }
}

/// Wall-clock seconds since the epoch.
fn now_secs() -> u64 {
    // The CLI is the production shell: it may read the OS clock (only for display).
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

/// One DER TLV at the start of `input`: (tag, content, total length).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let total = header.checked_add(len)?;
    let content = input.get(header..total)?;
    Some((tag, content, total))
}

/// Splits concatenated DER certificates (a Workload API chain or bundle).
fn der_certs(mut bytes: &[u8]) -> Result<Vec<&[u8]>, CliError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        match der_tlv(bytes) {
            Some((0x30, _, total)) => {
                certs.push(&bytes[..total]);
                bytes = &bytes[total..];
            }
            _ => return Err(fail("the Workload API sent a malformed certificate list")),
        }
    }
    Ok(certs)
}

/// A certificate's serial number as lowercase hex (no sign padding).
fn cert_serial(cert: &[u8]) -> Option<String> {
    let (_, body, _) = der_tlv(cert)?;
    let (_, tbs, _) = der_tlv(body)?;
    let (mut tag, mut content, used) = der_tlv(tbs)?;
    if tag == 0xa0 {
        (tag, content, _) = der_tlv(&tbs[used..])?;
    }
    if tag != 0x02 {
        return None;
    }
    while content.len() > 1 && content[0] == 0 {
        content = &content[1..];
    }
    Some(attest::hex(content))
}

/// What `fetch x509` and `watch` show about one SVID.
struct SvidSummary {
    spiffe_id: String,
    hint: String,
    serial: String,
    not_after: u64,
    chain_certs: usize,
}

impl SvidSummary {
    fn of(svid: &wire::workload::X509svid) -> Result<SvidSummary, CliError> {
        let chain = der_certs(&svid.x509_svid)?;
        let leaf = chain.first().ok_or_else(|| {
            fail(format!(
                "the Workload API sent {} without a certificate",
                svid.spiffe_id
            ))
        })?;
        let not_after = attest::x509::not_after(leaf)
            .map_err(|e| {
                fail(format!(
                    "the SVID of {} does not parse: {e}",
                    svid.spiffe_id
                ))
            })?
            .as_secs();
        Ok(SvidSummary {
            spiffe_id: svid.spiffe_id.clone(),
            hint: svid.hint.clone(),
            serial: cert_serial(leaf).unwrap_or_default(),
            not_after,
            chain_certs: chain.len(),
        })
    }

    fn json(&self) -> Value {
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
fn write_svids(
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
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
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

/// Connects and reads the first `FetchX509SVID` message.
async fn first_x509(
    socket: &std::path::Path,
) -> Result<
    (
        wire::workload::X509svidResponse,
        tonic::Streaming<wire::workload::X509svidResponse>,
    ),
    CliError,
> {
    let mut client = workload_connect(socket).await?;
    let mut stream = client
        .fetch_x509svid(workload_request(wire::workload::X509svidRequest {}))
        .await
        .map_err(workload_status)?
        .into_inner();
    match stream.message().await.map_err(workload_status)? {
        Some(first) if !first.svids.is_empty() => Ok((first, stream)),
        Some(_) => Err(fail("the Workload API sent no X.509-SVID")),
        None => Err(fail(
            "the Workload API closed the stream without sending an X.509-SVID",
        )),
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
    fn workload_sockets() {
        use std::ffi::OsStr;
        let path = |flag: Option<&str>, env: Option<&str>| {
            workload_socket(flag, env.map(OsStr::new)).map_err(|e| e.to_string())
        };
        assert_eq!(
            path(None, Some("unix:/run/a.sock")),
            Ok("/run/a.sock".into())
        );
        assert_eq!(
            path(None, Some("unix:///run/a.sock")),
            Ok("/run/a.sock".into())
        );
        assert_eq!(
            path(Some("/tmp/x.sock"), Some("unix:/run/a.sock")),
            Ok("/tmp/x.sock".into())
        );
        assert_eq!(
            path(Some("unix:///tmp/x.sock"), None),
            Ok("/tmp/x.sock".into())
        );
        assert_eq!(path(Some("rel.sock"), None), Ok("rel.sock".into()));
        for (env, says) in [
            (None, "SPIFFE_ENDPOINT_SOCKET is not set"),
            (Some(""), "SPIFFE_ENDPOINT_SOCKET is not set"),
            (Some("/run/a.sock"), "not a unix: URI"),
            (
                Some("tcp://127.0.0.1:8081"),
                "TCP endpoints are not supported",
            ),
            (Some("unix://host/a.sock"), "host part"),
            (Some("unix:a.sock"), "absolute"),
            (Some("unix:///a.sock?x=1"), "no query"),
            (Some("http:///a.sock"), "unsupported scheme"),
        ] {
            let err = path(None, env).expect_err("refused");
            assert!(err.contains(says), "{env:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn der_walking() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 00 ff 01, ... } }
        let tbs = [0xa0, 3, 2, 1, 2, 0x02, 3, 0x00, 0xff, 0x01, 0x05, 0x00];
        let mut cert = vec![0x30, 2 + tbs.len() as u8, 0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(cert_serial(&cert).as_deref(), Some("ff01"));
        let mut two = cert.clone();
        two.extend_from_slice(&cert);
        assert_eq!(der_certs(&two).expect("two certs").len(), 2);
        assert!(der_certs(&two[..two.len() - 1]).is_err());
        // Long-form length.
        let mut long = vec![0x30, 0x81, 200];
        long.extend(std::iter::repeat_n(0u8, 200));
        assert_eq!(
            der_tlv(&long).map(|(t, c, n)| (t, c.len(), n)),
            Some((0x30, 200, 203))
        );
        assert!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn spans_and_claims() {
        assert_eq!(span_text(59), "59s");
        assert_eq!(span_text(61), "1m01s");
        assert_eq!(span_text(3 * 3600 + 120), "3h02m");
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"spiffe://td/w","exp":7,"x":null}"#);
        let claims = jwt_claims(&format!("e30.{payload}.sig")).expect("claims");
        assert_eq!(claims["sub"], "spiffe://td/w");
        assert_eq!(claims["exp"], 7);
        assert!(jwt_claims("not-a-token").is_none());
    }
}
