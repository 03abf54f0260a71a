//! [`Issuer`]: authorizes a signing request against the **local applied state** and grants it
//! this node's active key — no Raft write and no leader on the signing path (DESIGN.md §2). A
//! grant ([`X509Grant`], [`JwtGrant`]) is decided under the shell's read locks and signs after
//! they are released.
//!
//! Partition knob: a node that has not heard from a leader (or, as leader, from a quorum) for
//! longer than `staleness_max` refuses to issue, so revocation lag stays bounded by
//! `staleness_max` + the SVID TTL.

use std::sync::Arc;
use std::time::Duration;

use attest::jwt::{JwtKey, JwtSvidRequest};
use attest::keyring::NodeKeyring;
use attest::x509::{X509Ca, X509Policy, X509Svid, X509SvidRequest};
use raft::State;
use rand_core::RngCore;
use wire::{AgentRecord, EntryId, Mono, RegistrationEntry, SpiffeId, TrustDomain, UnixTime};

use crate::Error;

/// Default bound on issuing without leader contact.
pub const STALENESS_MAX_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Default JWT-SVID lifetime.
pub const JWT_SVID_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// Default agent SVID lifetime.
pub const AGENT_SVID_TTL_DEFAULT: Duration = Duration::from_secs(3600);

/// Issuing policy.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// This node's trust domain.
    pub trust_domain: TrustDomain,
    /// Refuse to issue after this long without leader (or quorum) contact.
    pub staleness_max: Duration,
    /// X.509-SVID lifetimes.
    pub x509: X509Policy,
    /// JWT-SVID lifetime for entries without their own.
    pub jwt_default_ttl: Duration,
    /// Agent SVID lifetime.
    pub agent_ttl: Duration,
}

impl IssuerConfig {
    /// Defaults for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> IssuerConfig {
        IssuerConfig {
            trust_domain,
            staleness_max: STALENESS_MAX_DEFAULT,
            x509: X509Policy::default(),
            jwt_default_ttl: JWT_SVID_TTL_DEFAULT,
            agent_ttl: AGENT_SVID_TTL_DEFAULT,
        }
    }
}

/// Most entries one agent may be authorized for (a bound on the descendant walk).
pub const AGENT_ENTRIES_MAX: usize = 100_000;

/// The entries `agent` may obtain SVIDs for: those parented by it, and — transitively — those
/// parented by the SPIFFE ID of an entry it may obtain (nested workloads), in breadth-first
/// order, at most [`AGENT_ENTRIES_MAX`].
pub fn authorized_entries<'s>(state: &'s State, agent: &SpiffeId) -> Vec<&'s RegistrationEntry> {
    let mut out: Vec<&RegistrationEntry> = Vec::new();
    let mut seen_parents = std::collections::BTreeSet::new();
    let mut seen_entries = std::collections::BTreeSet::new();
    let mut frontier = vec![agent.clone()];
    while let Some(parent) = frontier.pop() {
        if !seen_parents.insert(parent.clone()) {
            continue;
        }
        for entry in state.entries_by_parent(&parent) {
            if out.len() >= AGENT_ENTRIES_MAX {
                return out;
            }
            if seen_entries.insert(entry.id.clone()) {
                out.push(entry);
                frontier.push(entry.spiffe_id.clone());
            }
        }
    }
    out
}

/// `agent`'s record, if it is attested and not banned.
fn attested_agent<'s>(state: &'s State, agent: &SpiffeId) -> Result<&'s AgentRecord, Error> {
    let record = state
        .agent(agent)
        .ok_or_else(|| Error::NotAuthorized(format!("{agent} is not an attested agent")))?;
    if record.banned {
        return Err(Error::NotAuthorized(format!("{agent} is banned")));
    }
    Ok(record)
}

/// The issuing actor of one server node.
#[derive(Debug)]
pub struct Issuer {
    cfg: IssuerConfig,
    last_leader_contact: Option<Mono>,
}

impl Issuer {
    /// An issuer that has not heard from a leader yet (it refuses until it does).
    pub fn new(cfg: IssuerConfig) -> Issuer {
        Issuer {
            cfg,
            last_leader_contact: None,
        }
    }

    /// The policy.
    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    /// The shell saw a leader's heartbeat (follower) or a quorum acknowledgement (leader) at
    /// `now`.
    pub fn handle_leader_contact(&mut self, now: Mono) {
        if self.last_leader_contact.is_none_or(|t| t < now) {
            self.last_leader_contact = Some(now);
        }
    }

    /// Whether the local replica is fresh enough to issue at `now`.
    pub fn check_fresh(&self, now: Mono) -> Result<(), Error> {
        match self.last_leader_contact {
            Some(t) if now.saturating_since(t) <= self.cfg.staleness_max => Ok(()),
            Some(t) => Err(Error::Stale {
                since_ms: u64::try_from(now.saturating_since(t).as_millis()).unwrap_or(u64::MAX),
            }),
            None => Err(Error::Stale { since_ms: u64::MAX }),
        }
    }

    /// The entry `entry_id` if agent `agent` may have its SVIDs: the agent is registered and
    /// not banned, and it is the entry's parent.
    pub fn authorize<'s>(
        &self,
        state: &'s State,
        agent: &SpiffeId,
        entry_id: &EntryId,
    ) -> Result<&'s RegistrationEntry, Error> {
        attested_agent(state, agent)?;
        let entry = state
            .entry(entry_id)
            .ok_or_else(|| Error::NotAuthorized(format!("no entry {entry_id}")))?;
        if &entry.parent_id == agent
            || authorized_entries(state, agent)
                .iter()
                .any(|e| e.id == entry.id)
        {
            return Ok(entry);
        }
        Err(Error::NotAuthorized(format!(
            "entry {entry_id} is not parented by {agent} or by an entry it may obtain"
        )))
    }

    /// Whether `agent` may have an X.509-SVID for entry `entry_id` now, and with which key:
    /// checked under the shell's locks, signed after them ([`X509Grant::sign`]).
    pub fn grant_x509(
        &self,
        state: &State,
        keyring: &NodeKeyring,
        agent: &SpiffeId,
        entry_id: &EntryId,
        now: Mono,
        wall: UnixTime,
    ) -> Result<X509Grant, Error> {
        self.check_fresh(now)?;
        let entry = self.authorize(state, agent, entry_id)?;
        let ca = keyring.active_x509(wall).ok_or(Error::NoActiveKey)?;
        // Security invariant: the key that signs is in the applied bundle.
        assert!(
            state.authorities().contains_key(&ca.authority().id),
            "the active CA must be published in the applied bundle"
        );
        Ok(X509Grant {
            ca: ca.clone(),
            subject: X509Subject::Entry {
                entry: entry.clone(),
                policy: self.cfg.x509,
            },
        })
    }

    /// Whether `agent` may have a JWT-SVID for entry `entry_id` now, and with which key.
    pub fn grant_jwt(
        &self,
        state: &State,
        keyring: &NodeKeyring,
        agent: &SpiffeId,
        entry_id: &EntryId,
        now: Mono,
        wall: UnixTime,
    ) -> Result<JwtGrant, Error> {
        self.check_fresh(now)?;
        let entry = self.authorize(state, agent, entry_id)?;
        let key = keyring.active_jwt(wall).ok_or(Error::NoActiveKey)?;
        assert!(
            state.authorities().contains_key(&key.authority().id),
            "the active JWT key must be published in the applied bundle"
        );
        let ttl = match entry.jwt_svid_ttl_secs {
            0 => self.cfg.jwt_default_ttl,
            secs => Duration::from_secs(u64::from(secs)),
        };
        Ok(JwtGrant {
            key: key.clone(),
            spiffe_id: entry.spiffe_id.clone(),
            ttl,
        })
    }

    /// Whether an attested, unbanned agent may renew its own SVID now (no Raft write: renewals
    /// are recorded afterwards, best-effort).
    pub fn grant_agent_svid(
        &self,
        state: &State,
        keyring: &NodeKeyring,
        agent: &SpiffeId,
        now: Mono,
        wall: UnixTime,
    ) -> Result<X509Grant, Error> {
        self.check_fresh(now)?;
        attested_agent(state, agent)?;
        let ca = keyring.active_x509(wall).ok_or(Error::NoActiveKey)?;
        Ok(X509Grant {
            ca: ca.clone(),
            subject: X509Subject::Agent {
                spiffe_id: agent.clone(),
                ttl: self.cfg.agent_ttl,
                not_before_cushion: self.cfg.x509.not_before_cushion,
            },
        })
    }
}

/// An X.509-SVID the [`Issuer`] allowed: the active CA (shared, see [`attest::keyring`]) and
/// what goes into the certificate. Taken under the shell's locks; [`X509Grant::sign`] holds
/// none, so a node signs on every core.
#[derive(Debug)]
pub struct X509Grant {
    ca: Arc<X509Ca>,
    subject: X509Subject,
}

#[derive(Debug)]
enum X509Subject {
    Entry {
        entry: RegistrationEntry,
        policy: X509Policy,
    },
    Agent {
        spiffe_id: SpiffeId,
        ttl: Duration,
        not_before_cushion: Duration,
    },
}

impl X509Grant {
    /// Signs the SVID for `public_key_der` (generated on the agent's host; only the public key
    /// travels).
    pub fn sign(
        &self,
        public_key_der: &[u8],
        wall: UnixTime,
        rng: &mut dyn RngCore,
    ) -> Result<X509Svid, Error> {
        match &self.subject {
            X509Subject::Entry { entry, policy } => {
                self.ca
                    .mint_for_entry(entry, public_key_der, policy, wall, rng)
            }
            X509Subject::Agent {
                spiffe_id,
                ttl,
                not_before_cushion,
            } => {
                let req = X509SvidRequest {
                    spiffe_id,
                    dns_names: &[],
                    public_key_der,
                    ttl: *ttl,
                    not_before_cushion: *not_before_cushion,
                };
                self.ca.mint(&req, wall, rng)
            }
        }
        .map_err(Error::Attest)
    }
}

/// A JWT-SVID the [`Issuer`] allowed: the active JWT key, the subject and the lifetime.
#[derive(Debug)]
pub struct JwtGrant {
    key: Arc<JwtKey>,
    spiffe_id: SpiffeId,
    ttl: Duration,
}

impl JwtGrant {
    /// Signs the token for `audience`; returns it with its expiry.
    pub fn sign(
        &self,
        audience: &[String],
        wall: UnixTime,
        rng: &mut dyn RngCore,
    ) -> Result<(String, UnixTime), Error> {
        let req = JwtSvidRequest {
            spiffe_id: &self.spiffe_id,
            audience,
            ttl: self.ttl,
            issuer: None,
            with_jti: false,
        };
        let token = self.key.mint(&req, wall, rng).map_err(Error::Attest)?;
        Ok((token, self.key.expiry(wall, self.ttl)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::CaRotation;
    use attest::keys::SeededKeySource;
    use attest::x509::validate_x509_svid;
    use wire::{AgentRecord, AttestationMethod, Command, KeyAlg, KeySource, Seed};

    const AGENT: &str = "spiffe://example.org/sigil/agent/join_token/a1";

    struct Fixture {
        state: State,
        rotation: CaRotation,
        keys: SeededKeySource,
        wall: UnixTime,
    }

    fn fixture() -> Fixture {
        let td: TrustDomain = "example.org".parse().expect("td");
        let keys = SeededKeySource::new(Seed::from_u64(9));
        let mut rng = Seed::from_u64(10).rng();
        let mut rotation = CaRotation::new(td, 1, Duration::from_secs(24 * 3600));
        let mut state = State::new();
        let wall = UnixTime::from_secs(1_700_000_000);
        let mut out = Vec::new();
        rotation
            .handle_tick(wall, &keys, &mut rng, &mut out)
            .expect("tick");
        out.push(Command::RegisterAgent {
            agent: AgentRecord {
                spiffe_id: AGENT.parse().expect("id"),
                method: AttestationMethod::JoinToken,
                selectors: vec![],
                banned: false,
                svid_serial: String::new(),
                svid_not_after: UnixTime::EPOCH,
                previous_serial: String::new(),
                renewed_at: UnixTime::EPOCH,
                attested_at: UnixTime::EPOCH,
            },
        });
        out.push(Command::CreateEntries {
            entries: vec![{
                let mut e = RegistrationEntry::new(
                    EntryId::from_random([1; 16]),
                    "spiffe://example.org/web".parse().expect("id"),
                    AGENT.parse().expect("id"),
                    ["unix:uid:1000".parse().expect("sel")].into(),
                    0,
                );
                e.x509_svid_ttl_secs = 600;
                e
            }],
        });
        for cmd in out.drain(..) {
            raft::apply(&mut state, cmd).expect("applies");
        }
        rotation.handle_applied(&state, wall, &mut out);
        Fixture {
            state,
            rotation,
            keys,
            wall,
        }
    }

    fn workload_key(f: &Fixture) -> Vec<u8> {
        f.keys
            .generate(KeyAlg::EcP256)
            .expect("key")
            .public_key_der()
            .to_vec()
    }

    #[test]
    fn issues_from_the_local_state_and_the_svid_validates() {
        let f = fixture();
        let td: TrustDomain = "example.org".parse().expect("td");
        let mut issuer = Issuer::new(IssuerConfig::new(td.clone()));
        let now = Mono::from_duration(Duration::from_secs(1));
        issuer.handle_leader_contact(now);
        let mut rng = Seed::from_u64(11).rng();
        let agent: SpiffeId = AGENT.parse().expect("id");
        let svid = issuer
            .grant_x509(
                &f.state,
                f.rotation.keyring(),
                &agent,
                &EntryId::from_random([1; 16]),
                now,
                f.wall,
            )
            .and_then(|g| g.sign(&workload_key(&f), f.wall, &mut rng))
            .expect("issued");
        let bundle = f.state.bundle(300);
        let id = validate_x509_svid(&[svid.cert_der.as_slice()], &(td, bundle), f.wall)
            .expect("validates against the applied bundle");
        assert_eq!(id.as_str(), "spiffe://example.org/web");
        assert_eq!(svid.not_after.as_secs(), f.wall.as_secs() + 600);

        let (jwt, exp) = issuer
            .grant_jwt(
                &f.state,
                f.rotation.keyring(),
                &agent,
                &EntryId::from_random([1; 16]),
                now,
                f.wall,
            )
            .and_then(|g| g.sign(&["db".to_owned()], f.wall, &mut rng))
            .expect("jwt");
        assert_eq!(jwt.split('.').count(), 3);
        assert_eq!(exp.as_secs(), f.wall.as_secs() + 300);
        let agent_svid = issuer
            .grant_agent_svid(&f.state, f.rotation.keyring(), &agent, now, f.wall)
            .and_then(|g| g.sign(&workload_key(&f), f.wall, &mut rng))
            .expect("agent svid");
        assert!(!agent_svid.cert_der.is_empty());
    }

    #[test]
    fn refuses_unauthorized_banned_and_stale() {
        let mut f = fixture();
        let td: TrustDomain = "example.org".parse().expect("td");
        let mut issuer = Issuer::new(IssuerConfig {
            staleness_max: Duration::from_secs(60),
            ..IssuerConfig::new(td)
        });
        let mut rng = Seed::from_u64(12).rng();
        let agent: SpiffeId = AGENT.parse().expect("id");
        let entry = EntryId::from_random([1; 16]);
        let key = workload_key(&f);
        let t = |s: u64| Mono::from_duration(Duration::from_secs(s));
        let issue = |issuer: &Issuer,
                     state: &State,
                     agent: &SpiffeId,
                     entry: &EntryId,
                     now,
                     rng: &mut rand_chacha::ChaCha20Rng| {
            issuer
                .grant_x509(state, f.rotation.keyring(), agent, entry, now, f.wall)
                .and_then(|g| g.sign(&key, f.wall, rng))
        };

        assert!(
            matches!(
                issue(&issuer, &f.state, &agent, &entry, t(1), &mut rng),
                Err(Error::Stale { .. })
            ),
            "never heard from a leader"
        );
        issuer.handle_leader_contact(t(10));
        assert!(
            issue(&issuer, &f.state, &agent, &entry, t(70), &mut rng).is_ok(),
            "60 s is fine"
        );
        assert!(matches!(
            issue(&issuer, &f.state, &agent, &entry, t(71), &mut rng),
            Err(Error::Stale { .. })
        ));
        issuer.handle_leader_contact(t(100));
        let other: SpiffeId = "spiffe://example.org/sigil/agent/join_token/other"
            .parse()
            .expect("id");
        assert!(matches!(
            issue(&issuer, &f.state, &other, &entry, t(100), &mut rng),
            Err(Error::NotAuthorized(_))
        ));
        assert!(matches!(
            issue(
                &issuer,
                &f.state,
                &agent,
                &EntryId::from_random([2; 16]),
                t(100),
                &mut rng
            ),
            Err(Error::NotAuthorized(_))
        ));
        raft::apply(
            &mut f.state,
            Command::SetAgentBanned {
                spiffe_id: agent.clone(),
                banned: true,
            },
        )
        .expect("ban");
        assert!(matches!(
            issue(&issuer, &f.state, &agent, &entry, t(100), &mut rng),
            Err(Error::NotAuthorized(_))
        ));
    }
}
