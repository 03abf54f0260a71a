//! The admin commands of the `sigil` CLI (DESIGN.md §6): `entry`, `token` (agent and server join
//! tokens), `bundle` (incl. the pinnable hash), `cluster` (status, remove-server) and
//! `healthcheck`, each a client of the admin API on a server node's Unix socket.
//!
//! The socket is `--admin-socket PATH`, else `$SIGIL_ADMIN_SOCKET`, else
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
        let TokenCommand::Generate(g) = self.command;
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
            }),
        );
    }
    writeln!(out, "Token: {}", resp.token)?;
    writeln!(out, "Purpose: server (admits one new server node)")?;
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
        "Add this to the joining node's server.toml (next to {td}its own node_id and bind, and bootstrap = false):"
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
    /// The server node's ID (its `node_id`, see `sigil cluster status`).
    #[arg(value_name = "NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: u64,
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
}
