//! `sigil token generate|list|revoke`: join tokens for agents and new server nodes, through the
//! admin socket.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use wire::admin::{self as pb, PAGE_SIZE_MAX};

use super::{check_id, fail, parse_duration_secs, print_json, rfc3339, AdminSocket, CliError};

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
