//! Registration decisions as single commands: a new join token — its secret, its replicated
//! hash, its expiry, the agent it will attest — and the one Raft command that registers it. An
//! agent token given an extra SPIFFE ID (`sigil token generate --spiffe-id`) comes with the entry
//! naming that agent in the same command ([`Command::CreateJoinTokenWithEntry`]: both or
//! neither). The admin API runs it and so does the simulator.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand_core::RngCore;
use wire::{
    Command, EntryId, JoinToken, RegistrationEntry, Selector, SpiffeId, TokenPurpose, TrustDomain,
    UnixTime,
};

use crate::Error;

/// What the new token is for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Agent or server.
    pub purpose: TokenPurpose,
    /// How long it may be used.
    pub ttl: Duration,
    /// The node ID a server token admits (`None` for an agent token).
    pub node_id: Option<u64>,
    /// A server token re-admitting a member.
    pub rejoin: bool,
    /// An extra SPIFFE ID for the agent (agent tokens only).
    pub alias: Option<SpiffeId>,
}

/// A new join token and the command that registers it.
pub struct NewJoinToken {
    /// The token's text: given to the operator once, never stored (only its hash is).
    pub secret: String,
    /// Lowercase hex SHA-256 of the text, as replicated.
    pub token_sha256: String,
    /// When it stops being usable.
    pub expires_at: UnixTime,
    /// The agent it will attest (agent tokens).
    pub agent_id: Option<SpiffeId>,
    /// The entry giving that agent the extra ID, if asked for.
    pub entry_id: Option<EntryId>,
    /// The one command that registers it.
    pub command: Command,
}

impl fmt::Debug for NewJoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewJoinToken")
            .field("token_sha256", &self.token_sha256)
            .field("expires_at", &self.expires_at)
            .field("agent_id", &self.agent_id)
            .field("entry_id", &self.entry_id)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of a join token's text, as replicated.
pub fn join_token_sha256(token: &str) -> String {
    attest::sha256_hex(token.as_bytes())
}

/// A new join token of `td` for `req` at `wall`, its secret and IDs drawn from `rng`.
pub fn new_join_token(
    td: &TrustDomain,
    req: &TokenRequest,
    wall: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<NewJoinToken, Error> {
    let server = req.purpose == TokenPurpose::Server;
    if server && req.alias.is_some() {
        return Err(Error::Config(
            "an extra SPIFFE ID is for agent tokens only; a server node's ID is spiffe://<td>/sigil/server/<node_id>".into(),
        ));
    }
    if !server && (req.node_id.is_some() || req.rejoin) {
        return Err(Error::Config(
            "node_id and rejoin are for server tokens only".into(),
        ));
    }
    let mut bits = [0u8; 32];
    rng.fill_bytes(&mut bits);
    let secret = attest::hex(&bits);
    let token_sha256 = join_token_sha256(&secret);
    let expires_at = wall.saturating_add(req.ttl);
    let token = JoinToken {
        token_sha256: token_sha256.clone(),
        expires_at,
        consumed_by: None,
        purpose: req.purpose,
        consumer_key_sha256: String::new(),
        node_id: req.node_id,
        rejoin: req.rejoin,
        created_at: wall,
        consumed_at: None,
    };
    if server {
        return Ok(NewJoinToken {
            secret,
            token_sha256,
            expires_at,
            agent_id: None,
            entry_id: None,
            command: Command::CreateJoinToken { token },
        });
    }
    let agent_id = crate::service::join_token_agent_id(td, &token_sha256)?;
    let Some(alias) = &req.alias else {
        return Ok(NewJoinToken {
            secret,
            token_sha256,
            expires_at,
            agent_id: Some(agent_id),
            entry_id: None,
            command: Command::CreateJoinToken { token },
        });
    };
    let mut id_bits = [0u8; 16];
    rng.fill_bytes(&mut id_bits);
    let selector =
        Selector::new("spiffe_id", agent_id.as_str()).map_err(|e| Error::Config(e.to_string()))?;
    let entry = RegistrationEntry::new(
        EntryId::from_random(id_bits),
        alias.clone(),
        td.servers_id(),
        BTreeSet::from([selector]),
        wall.as_secs(),
    );
    entry.validate().map_err(|e| Error::Config(e.to_string()))?;
    Ok(NewJoinToken {
        secret,
        token_sha256,
        expires_at,
        agent_id: Some(agent_id),
        entry_id: Some(entry.id.clone()),
        command: Command::CreateJoinTokenWithEntry { token, entry },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn request(purpose: TokenPurpose) -> TokenRequest {
        TokenRequest {
            purpose,
            ttl: Duration::from_secs(600),
            node_id: None,
            rejoin: false,
            alias: None,
        }
    }

    #[test]
    fn tokens_name_their_agent_and_bring_their_entry_in_the_same_command() {
        let td: TrustDomain = "example.org".parse().expect("td");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let wall = UnixTime::from_secs(1_000);
        let plain =
            new_join_token(&td, &request(TokenPurpose::Agent), wall, &mut rng).expect("token");
        assert_eq!(plain.token_sha256, join_token_sha256(&plain.secret));
        assert_eq!(plain.expires_at, UnixTime::from_secs(1_600));
        assert!(matches!(plain.command, Command::CreateJoinToken { .. }));
        assert!(
            !format!("{plain:?}").contains(&plain.secret),
            "Debug never shows the secret"
        );

        let mut req = request(TokenPurpose::Agent);
        req.alias = Some("spiffe://example.org/db".parse().expect("id"));
        let aliased = new_join_token(&td, &req, wall, &mut rng).expect("token");
        let agent = aliased.agent_id.clone().expect("agent");
        let Command::CreateJoinTokenWithEntry { token, entry } = &aliased.command else {
            panic!(
                "expected one command with the entry, got {:?}",
                aliased.command
            );
        };
        assert_eq!(token.token_sha256, aliased.token_sha256);
        assert_eq!(Some(&entry.id), aliased.entry_id.as_ref());
        assert_eq!(entry.parent_id, td.servers_id());
        assert!(entry
            .selectors
            .iter()
            .any(|s| s.to_string() == format!("spiffe_id:{agent}")));
        assert_ne!(aliased.secret, plain.secret);

        let mut server = request(TokenPurpose::Server);
        server.node_id = Some(4);
        let t = new_join_token(&td, &server, wall, &mut rng).expect("server token");
        assert!(t.agent_id.is_none());
        server.alias = req.alias.clone();
        assert!(new_join_token(&td, &server, wall, &mut rng).is_err());
        let mut agent_with_node = request(TokenPurpose::Agent);
        agent_with_node.node_id = Some(2);
        assert!(new_join_token(&td, &agent_with_node, wall, &mut rng).is_err());
    }
}
