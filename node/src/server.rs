//! [`ServerNode`]: one server node's logic composed over the seams — a Raft [`Replica`] on any
//! [`Transport`], the [`CaRotation`] and [`Issuer`] actors, driven by small loops that only
//! move data between them (time from [`Env`], tasks through [`Env::spawn`]). Production runs it
//! over QUIC and sled; the simulator over `SimNet` and `MemKv`, on a paused clock.
//!
//! - **Signing** takes the issuer's decision and the active key (an `Arc`, see
//!   [`attest::keyring`]) under read locks held only for the lookups, then signs holding none:
//!   a node signs on every core, and rotation or an apply never waits behind a signature.
//! - **Rotation loop**: on every applied change and at the keyring's next deadline, feeds the
//!   rotation actor and proposes what it asks for (publish / activate / prune). A key is
//!   confirmed to the keyring only once its publication is in the applied state.
//! - **Contact loop**: feeds the [`Contact`] actor a sample of Raft every [`CONTACT_SAMPLE`]:
//!   the issuer learns when this node was last in contact with a leader (and refuses to sign
//!   once that is older than `staleness_max`), the leader commits a [`Command::Tick`] every
//!   [`tick_interval`], and a removed node stands down. What counts as contact, and why, is in
//!   [`crate::actors::contact`].

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use attest::x509::{X509Svid, X509SvidRequest};
use openraft::ServerState;
use raft::replica::Replica;
use wire::command::BATCH_RENEWALS_MAX;
use wire::{AgentRenewal, Bundle, Command, EntryId, Env, SpiffeId, Transport, TrustDomain};

use crate::actors::contact::{ContactInput, ContactOutput, RaftSample};
use crate::actors::{Actor, CaRotation, Contact, Issuer, IssuerConfig};
use crate::Error;

/// How often leader contact is sampled.
pub const CONTACT_SAMPLE: Duration = Duration::from_millis(100);
/// Longest pause of the rotation loop (it also wakes on every applied change).
pub const ROTATION_TICK_MAX: Duration = Duration::from_secs(10);
/// Least pause of the rotation loop after a proposal failed.
pub const PROPOSAL_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// `spiffe_refresh_hint` of the bundle this node serves.
pub const REFRESH_HINT_SECS_DEFAULT: u64 = 300;
/// Lifetime of this node's own server SVID.
pub const SERVER_SVID_TTL: Duration = Duration::from_secs(3600);
/// How often the agent SVIDs this node issued are recorded through Raft (many in one entry).
pub const RENEWAL_FLUSH: Duration = Duration::from_millis(500);
/// Most agents whose issued SVID waits to be recorded (while there is no quorum); beyond it one
/// is dropped — a later renewal of the same agent records it anyway.
pub const RENEWALS_PENDING_MAX: usize = 100_000;

/// Bounds of the leader's tick interval (a quarter of `staleness_max`, see [`tick_interval`]).
pub const TICK_INTERVAL_MIN: Duration = Duration::from_millis(200);
/// Longest tick interval: a restarted node counts contact only from the first tick it applies,
/// so this bounds how long it waits before issuing.
pub const TICK_INTERVAL_MAX: Duration = Duration::from_secs(2);

/// How often the leader commits a [`Command::Tick`]: a quarter of `staleness_max`, within
/// [`TICK_INTERVAL_MIN`]..=[`TICK_INTERVAL_MAX`].
pub fn tick_interval(staleness_max: Duration) -> Duration {
    (staleness_max / 4).clamp(TICK_INTERVAL_MIN, TICK_INTERVAL_MAX)
}

/// Settings of one server node.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's Raft ID.
    pub node_id: u64,
    /// Lifetime of this node's CA and JWT keys.
    pub key_ttl: Duration,
    /// Issuing policy (trust domain, staleness_max, TTLs).
    pub issuer: IssuerConfig,
    /// `spiffe_refresh_hint` of the served bundle.
    pub refresh_hint_secs: u64,
    /// A leader counts as in contact if a quorum acknowledged it within this long.
    pub quorum_ack_max: Duration,
}

impl ServerConfig {
    /// Defaults for node `node_id` of `trust_domain`.
    pub fn new(node_id: u64, trust_domain: TrustDomain) -> ServerConfig {
        ServerConfig {
            node_id,
            key_ttl: attest::keyring::KEY_TTL_DEFAULT,
            issuer: IssuerConfig::new(trust_domain),
            refresh_hint_secs: REFRESH_HINT_SECS_DEFAULT,
            quorum_ack_max: Duration::from_secs(2),
        }
    }
}

struct Inner<T: Transport> {
    cfg: ServerConfig,
    env: Arc<dyn Env>,
    replica: Arc<Replica<T>>,
    /// Written by the rotation loop; signers only read it for a moment (to take the active key).
    rotation: RwLock<CaRotation>,
    /// Written by the contact loop every [`CONTACT_SAMPLE`]; signers read it.
    issuer: RwLock<Issuer>,
    /// Agent SVIDs issued here and not yet recorded through Raft: the latest per agent (an
    /// agent renewing in a loop adds one record, not one per renewal).
    renewals: Mutex<std::collections::BTreeMap<SpiffeId, AgentRenewal>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A running server node (cheap to clone).
pub struct ServerNode<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for ServerNode<T> {
    fn clone(&self) -> Self {
        ServerNode {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Transport> std::fmt::Debug for ServerNode<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerNode")
            .field("node_id", &self.inner.cfg.node_id)
            .finish()
    }
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<X>(m: &RwLock<X>) -> RwLockReadGuard<'_, X> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<X>(m: &RwLock<X>) -> RwLockWriteGuard<'_, X> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl<T: Transport> ServerNode<T> {
    /// Starts the node's loops on `replica` (already started; the cluster may or may not be
    /// initialized yet).
    pub fn start(cfg: ServerConfig, env: Arc<dyn Env>, replica: Arc<Replica<T>>) -> ServerNode<T> {
        let rotation = CaRotation::new(cfg.issuer.trust_domain.clone(), cfg.node_id, cfg.key_ttl);
        let issuer = Issuer::new(cfg.issuer.clone());
        let (stop, _) = tokio::sync::watch::channel(false);
        let node = ServerNode {
            inner: Arc::new(Inner {
                cfg,
                env: env.clone(),
                replica,
                rotation: RwLock::new(rotation),
                issuer: RwLock::new(issuer),
                renewals: Mutex::new(std::collections::BTreeMap::new()),
                stop,
            }),
        };
        node.install_write_guard();
        env.spawn("rotation", Box::pin(rotation_loop(node.clone())));
        env.spawn("renewals", Box::pin(renewal_loop(node.clone())));
        env.spawn("contact", Box::pin(contact_loop(node.clone())));
        node
    }

    /// The Raft member.
    pub fn replica(&self) -> &Arc<Replica<T>> {
        &self.inner.replica
    }

    /// This node's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.cfg
    }

    /// The trust bundle as applied on this node.
    pub fn bundle(&self) -> Bundle {
        let hint = self.inner.cfg.refresh_hint_secs;
        self.inner.replica.read(|a| a.state.bundle(hint))
    }

    /// Whether this node has an active (published) X.509 CA key right now.
    pub fn has_active_ca(&self) -> bool {
        let wall = self.inner.env.wall();
        read(&self.inner.rotation)
            .keyring()
            .active_x509(wall)
            .is_some()
    }

    /// Whether this node would issue now: in contact with a leader within `staleness_max` and
    /// holding an active CA.
    pub fn ready_to_issue(&self) -> Result<(), Error> {
        read(&self.inner.issuer).check_fresh(self.inner.env.mono())?;
        if self.has_active_ca() {
            Ok(())
        } else {
            Err(Error::NoActiveKey)
        }
    }

    /// Signs a workload X.509-SVID for `agent`'s entry `entry_id` from the local replica.
    pub fn issue_x509(
        &self,
        agent: &SpiffeId,
        entry_id: &EntryId,
        public_key_der: &[u8],
    ) -> Result<X509Svid, Error> {
        let env = &self.inner.env;
        let mut rng = env.rng("svid");
        let wall = env.wall();
        let grant = self.grant(|issuer, state, keyring| {
            issuer.grant_x509(state, keyring, agent, entry_id, env.mono(), wall)
        })?;
        grant.sign(public_key_der, wall, &mut rng)
    }

    /// Runs an [`Issuer`] decision under the issuer's, rotation's and the replica's read locks
    /// (held only for the lookups; the grant it returns signs after they are released).
    fn grant<G>(
        &self,
        decide: impl FnOnce(&Issuer, &raft::State, &attest::keyring::NodeKeyring) -> Result<G, Error>,
    ) -> Result<G, Error> {
        let issuer = read(&self.inner.issuer);
        let rotation = read(&self.inner.rotation);
        self.inner
            .replica
            .read(|a| decide(&issuer, &a.state, rotation.keyring()))
    }

    /// Signs a JWT-SVID for `agent`'s entry `entry_id` from the local replica.
    pub fn issue_jwt(
        &self,
        agent: &SpiffeId,
        entry_id: &EntryId,
        audience: &[String],
    ) -> Result<(String, wire::UnixTime), Error> {
        let env = &self.inner.env;
        let mut rng = env.rng("jwt");
        let wall = env.wall();
        let grant = self.grant(|issuer, state, keyring| {
            issuer.grant_jwt(state, keyring, agent, entry_id, env.mono(), wall)
        })?;
        grant.sign(audience, wall, &mut rng)
    }

    /// This node's own server SVID (`spiffe://<td>/sigil/server/<id>`) for `public_key_der`,
    /// from its own active CA. Not subject to `staleness_max`: a partitioned node must still be
    /// able to rejoin its cluster.
    pub fn issue_own_server_svid(&self, public_key_der: &[u8]) -> Result<X509Svid, Error> {
        self.issue_server_svid(self.inner.cfg.node_id, public_key_der)
    }

    /// A server SVID for node `node_id` (this node's own, or a node that just joined with a
    /// server join token), from this node's active CA.
    pub fn issue_server_svid(
        &self,
        node_id: u64,
        public_key_der: &[u8],
    ) -> Result<X509Svid, Error> {
        let env = &self.inner.env;
        let td = &self.inner.cfg.issuer.trust_domain;
        let id = td.server_id(node_id);
        let wall = env.wall();
        let ca = read(&self.inner.rotation)
            .keyring()
            .active_x509(wall)
            .cloned()
            .ok_or(Error::NoActiveKey)?;
        let req = X509SvidRequest {
            spiffe_id: &id,
            dns_names: &[],
            public_key_der,
            ttl: SERVER_SVID_TTL,
            not_before_cushion: self.inner.cfg.issuer.x509.not_before_cushion,
        };
        ca.mint(&req, wall, &mut env.rng("server-svid"))
            .map_err(Error::Attest)
    }

    /// An agent SVID for attested, unbanned `agent` from the local replica.
    pub fn issue_agent_svid(
        &self,
        agent: &SpiffeId,
        public_key_der: &[u8],
    ) -> Result<X509Svid, Error> {
        let env = &self.inner.env;
        let mut rng = env.rng("agent-svid");
        let wall = env.wall();
        let grant = self.grant(|issuer, state, keyring| {
            issuer.grant_agent_svid(state, keyring, agent, env.mono(), wall)
        })?;
        grant.sign(public_key_der, wall, &mut rng)
    }

    /// Queues the record of an agent SVID this node issued (at attestation or renewal); the
    /// renewal loop writes the queue through Raft every [`RENEWAL_FLUSH`], many in one entry.
    pub fn record_agent_svid(&self, agent: &SpiffeId, presented_serial: &str, svid: &X509Svid) {
        let renewal = AgentRenewal {
            spiffe_id: agent.clone(),
            presented_serial: presented_serial.to_owned(),
            svid_serial: attest::x509::serial_hex(&svid.serial),
            svid_not_after: svid.not_after,
            at: self.inner.env.wall(),
        };
        let mut pending = lock(&self.inner.renewals);
        if pending.len() >= RENEWALS_PENDING_MAX && !pending.contains_key(agent) {
            // Full (no quorum for a long while): drop one; that agent's next renewal records it.
            pending.pop_first();
        }
        pending.insert(agent.clone(), renewal);
    }

    /// How many issued agent SVIDs wait to be recorded.
    pub fn renewals_pending(&self) -> usize {
        lock(&self.inner.renewals).len()
    }

    /// Refuses writes other members forward to this node (when it leads) that only their own
    /// node could make correctly: an authority must be the forwarding node's own, well-formed
    /// CA or JWT key ([`attest::x509::check_node_authority`]), and only its node activates it.
    fn install_write_guard(&self) {
        let td = self.inner.cfg.issuer.trust_domain.clone();
        let applied = self.inner.replica.applied();
        self.inner
            .replica
            .set_write_guard(Arc::new(move |from, cmd: &Command| match cmd {
                Command::PublishAuthority { authority, .. } => {
                    attest::x509::check_node_authority(authority, &td, from)
                }
                Command::ActivateAuthority { id } => {
                    let a = applied.read().unwrap_or_else(|p| p.into_inner());
                    match a.state.authorities().get(id) {
                        Some(r) if r.authority.node_id != from => Err(format!(
                            "node {from} cannot activate authority {id} of node {}",
                            r.authority.node_id
                        )),
                        _ => Ok(()),
                    }
                }
                _ => Ok(()),
            }));
    }

    /// The node's environment (clock, RNG, tasks).
    pub fn env(&self) -> &Arc<dyn Env> {
        &self.inner.env
    }

    /// Stops the loops (Raft itself is stopped by its owner).
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }
}

/// Drives the rotation actor: tick at its deadline or on applied progress, propose its output.
async fn rotation_loop<T: Transport>(node: ServerNode<T>) {
    let inner = &node.inner;
    let mut progress = inner.replica.subscribe();
    let mut stop = inner.stop.subscribe();
    let mut rng = inner.env.rng("keyring");
    while !*stop.borrow() {
        let wall = inner.env.wall();
        let mut proposals = Vec::new();
        let deadline = {
            let mut rotation = write(&inner.rotation);
            if let Err(e) = rotation.handle_tick(wall, inner.env.keys(), &mut rng, &mut proposals) {
                tracing::warn!(error = %e, "CA rotation tick failed; it is retried on the next tick");
            }
            let applied = inner.replica.applied();
            let applied = applied.read().unwrap_or_else(|p| p.into_inner());
            rotation.handle_applied(&applied.state, wall, &mut proposals);
            rotation.next_deadline()
        };
        let mut failed = false;
        for cmd in proposals {
            match inner.replica.write(cmd.clone()).await {
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => tracing::debug!(%refused, "rotation proposal refused"),
                Err(e) => {
                    tracing::info!(error = %e, "rotation proposal not committed yet; retried shortly");
                    write(&inner.rotation).handle_proposal_failed(&cmd);
                    failed = true;
                }
            }
        }
        let mut wait = deadline
            .map(|d| d.saturating_since(inner.env.wall()))
            .unwrap_or(ROTATION_TICK_MAX)
            .clamp(Duration::from_millis(10), ROTATION_TICK_MAX);
        if failed {
            // Retried at the next applied change (a new leader commits one at once), or after
            // this pause, which keeps a write that fails fast from spinning.
            wait = wait.max(PROPOSAL_RETRY_PAUSE);
        }
        tokio::select! {
            // Fixed order: tokio would pick among ready branches at random, which the
            // simulator could not reproduce from its seed.
            biased;
            _ = tokio::time::sleep(wait) => {}
            _ = progress.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Writes the queued agent SVID records through Raft, up to [`BATCH_RENEWALS_MAX`] per entry,
/// every [`RENEWAL_FLUSH`]; a batch that does not commit goes back to the queue.
async fn renewal_loop<T: Transport>(node: ServerNode<T>) {
    let inner = &node.inner;
    let mut stop = inner.stop.subscribe();
    while !*stop.borrow() {
        let batch: Vec<AgentRenewal> = {
            let mut pending = lock(&inner.renewals);
            let mut batch = Vec::with_capacity(pending.len().min(BATCH_RENEWALS_MAX));
            while batch.len() < BATCH_RENEWALS_MAX {
                match pending.pop_first() {
                    Some((_, r)) => batch.push(r),
                    None => break,
                }
            }
            batch
        };
        if !batch.is_empty() {
            let cmd = Command::RecordAgentRenewals {
                renewals: batch.clone(),
            };
            if let Err(e) = inner.replica.write(cmd).await {
                tracing::debug!(error = %e, records = batch.len(), "agent SVID records not committed yet; retried");
                let mut pending = lock(&inner.renewals);
                for r in batch {
                    if pending.len() >= RENEWALS_PENDING_MAX {
                        break;
                    }
                    // A newer renewal of the same agent queued meanwhile wins.
                    pending.entry(r.spiffe_id.clone()).or_insert(r);
                }
            }
        }
        tokio::select! {
            // Fixed order: tokio would pick among ready branches at random, which the
            // simulator could not reproduce from its seed.
            biased;
            _ = tokio::time::sleep(RENEWAL_FLUSH) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Feeds the [`Contact`] actor a sample of Raft every [`CONTACT_SAMPLE`] and carries out what
/// it asks: the contact time to the issuer, a tick proposed through Raft (in a task of its own,
/// so sampling goes on while it waits for a quorum), standing down once removed.
async fn contact_loop<T: Transport>(node: ServerNode<T>) {
    let inner = &node.inner;
    let mut stop = inner.stop.subscribe();
    let mut contact = Contact::new(
        inner.cfg.quorum_ack_max,
        tick_interval(inner.cfg.issuer.staleness_max),
        CONTACT_SAMPLE,
    );
    let tick_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut out = Vec::new();
    while !*stop.borrow() {
        let (now, wall) = (inner.env.mono(), inner.env.wall());
        if tick_done.swap(false, std::sync::atomic::Ordering::Relaxed) {
            contact.handle(now, wall, ContactInput::TickDone, &mut out);
        }
        let sample = {
            let m = inner.replica.raft().metrics();
            let m = m.borrow();
            RaftSample {
                leader: m.state == ServerState::Leader,
                quorum_ack_age: m.millis_since_quorum_ack.map(Duration::from_millis),
                last_tick: inner.replica.read(|a| a.last_tick),
                removed: inner.replica.knows_removed(),
            }
        };
        contact.handle(now, wall, ContactInput::Sample(sample), &mut out);
        for output in out.drain(..) {
            match output {
                ContactOutput::InContact(at) => write(&inner.issuer).handle_leader_contact(at),
                ContactOutput::ProposeTick(at) => {
                    let replica = inner.replica.clone();
                    let done = tick_done.clone();
                    inner.env.spawn(
                        "tick",
                        Box::pin(async move {
                            if let Err(e) = replica.write(Command::Tick { at }).await {
                                tracing::debug!(error = %e, "tick not committed (no quorum?)");
                            }
                            done.store(true, std::sync::atomic::Ordering::Relaxed);
                        }),
                    );
                }
                ContactOutput::StandDown => {
                    // No elections, no heartbeats (a removed leader lets its followers elect
                    // another).
                    raft::replica::stand_down(inner.replica.raft());
                    tracing::warn!(node = inner.cfg.node_id, "this server node was removed from the cluster: it no longer takes part in elections and issues nothing once staleness_max passes; stop it (`sigil cluster remove-server` was run for it)");
                }
            }
        }
        let wait = contact
            .next_deadline()
            .map_or(CONTACT_SAMPLE, |d| d.saturating_since(inner.env.mono()));
        tokio::select! {
            // Fixed order: tokio would pick among ready branches at random, which the
            // simulator could not reproduce from its seed.
            biased;
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
}
