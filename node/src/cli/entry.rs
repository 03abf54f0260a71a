//! `sigil entry create|update|show|list|delete`: registration entries through the admin socket.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tonic::Code;
use wire::admin::{self as pb, PAGE_SIZE_MAX};

use super::{
    check_id, check_selectors, check_trust_domains, fail, parse_duration_secs, parse_ttl,
    print_json, rfc3339, AdminSocket, CliError,
};

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
