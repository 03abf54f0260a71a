//! [`AgentCore`]: every decision the agent makes, as an actor (DESIGN.md §4) — which server to
//! follow and when to fail over or look for a faster one, when to sign which workload SVIDs and
//! with which fresh key, when to renew its own SVID, when to attest again, and how concurrent
//! JWT-SVID misses share one mint. It does no IO: the production shell (`rt::agent`: QUIC, files,
//! sockets) and the simulator (`sim::agent`: the simulated network and the nodes' production
//! handlers) feed it the same [`Input`]s and carry out the same [`Output`]s, so the simulator runs
//! the agent that ships.
//!
//! **Server choice.** A round of connection attempts goes to every configured server at once
//! ([`Output::Connect`]); the shell reports each as [`Input::Probed`] with the round-trip time of
//! a `Sync` call that also proved the server accepts our SVID. The first answer opens a
//! [`RTT_GRACE`] window; the lowest round-trip time among the answers by its end wins
//! ([`Output::Follow`]) and the others are closed. When no server answers, or the one followed
//! fails (its stream ends, a call fails, it refuses a renewal), the agent keeps serving what it
//! holds and starts a new round after a backoff from [`RECONNECT_MIN`] doubling to
//! [`RECONNECT_MAX`]; the backoff starts over once a server held for [`RECONNECT_MAX`]. Every
//! [`REPROBE_INTERVAL`] the agent looks for a faster server.
//!
//! **Renewal.** Every [`RENEW_TICK`] while following a server: workload SVIDs that are missing,
//! whose entry changed, or past half life are signed in batches of [`SIGN_BATCH_MAX`] (each with a
//! key from the environment's [`wire::KeySource`]; the private half never leaves the agent but to
//! its workload), and the agent's own SVID is renewed at half life — after which the agent
//! reconnects with it. A view pushed by the server is applied at once and signs what it made due.
//!
//! **Re-attestation** ([`Output::Reattest`]) with a repeatable method (x509pop, TPM) when the
//! agent SVID expired while no server was reachable, or when the servers refuse to renew it
//! because a newer one is on record (a copy of this agent's identity renewed it). A join-token
//! agent cannot attest again and says what the operator must do.

pub mod cache;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wire::api::{AgentView, ApiRequest, ApiResponse, IssuedX509, SignX509, SIGN_BATCH_MAX};
use wire::{Bundle, EntryId, Env, KeyAlg, Mono, SpiffeId, UnixTime, WorkloadKey};

pub use cache::{
    chains_to, past_half_life, AgentCache, HeldJwt, HeldX509, JwtKey, Served, Verifier,
    JWT_CACHE_MAX,
};

use super::Actor;

/// How often SVID lifetimes are checked while a server is followed.
pub const RENEW_TICK: Duration = Duration::from_secs(1);
/// Backoff between rounds of connection attempts while no server answers: from this …
pub const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// … doubling up to this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// After the first server answers, how long the others may still answer faster.
pub const RTT_GRACE: Duration = Duration::from_millis(200);
/// How often the agent looks for a faster server than the one it follows.
pub const REPROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Most JWT-SVID requests waiting for a mint at once; more are refused with "retry".
pub const JWT_WAITERS_MAX: usize = 1024;

/// Names one node API call the core asked for.
pub type CallId = u64;
/// Names one workload's JWT-SVID request.
pub type Ticket = u64;

/// The agent's own SVID.
#[derive(Debug, Clone)]
pub struct AgentSvid {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// When the agent received it (its own clock).
    pub issued_at: UnixTime,
    /// The certificate's NotAfter.
    pub not_after: UnixTime,
}

/// What an attestation gave: the agent's ID, its SVID chain and `NotAfter`, and the bundle.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The certificate's NotAfter.
    pub not_after: UnixTime,
    /// Our trust domain's bundle.
    pub bundle: Bundle,
}

/// How the agent is set up; `S` names a server (a socket address in production, a node ID in
/// the simulator).
#[derive(Debug, Clone)]
pub struct AgentCoreConfig<S> {
    /// The servers it may follow.
    pub servers: Vec<S>,
    /// The repeatable attestation method configured (x509pop, TPM), by name; `None` for a
    /// join-token agent.
    pub repeatable: Option<&'static str>,
    /// The agent key's public half (SubjectPublicKeyInfo DER), sent with renewals.
    pub public_key_der: Vec<u8>,
}

/// What happens to the agent.
#[derive(Debug)]
pub enum Input<S> {
    /// Time passed (the shell calls with this at [`Actor::next_deadline`]).
    Tick,
    /// A connection attempt of [`Output::Connect`] ended: the round-trip time of a `Sync` call
    /// the server answered with a view, or why it failed.
    Probed {
        /// The server.
        server: S,
        /// Its round-trip time, or what went wrong.
        rtt: Result<Duration, String>,
    },
    /// The followed server pushed a view.
    View {
        /// The server.
        server: S,
        /// The view.
        view: AgentView,
    },
    /// The watch stream of [`Output::Follow`] ended.
    StreamLost {
        /// The server.
        server: S,
        /// Why.
        reason: String,
    },
    /// The answer to [`Output::Call`]: `Err` when the call did not get through; a refusal is
    /// `Ok(ApiResponse::Error(_))`.
    Answer {
        /// The call.
        call: CallId,
        /// The answer.
        answer: Result<ApiResponse, String>,
    },
    /// The attestation of [`Output::Reattest`] ended.
    Reattested(Result<Attested, String>),
    /// A workload asks for a JWT-SVID of `entry_id` (answered with [`Output::Jwt`]).
    Jwt {
        /// Names the request in the answer.
        ticket: Ticket,
        /// The entry.
        entry_id: EntryId,
        /// Its SPIFFE ID.
        spiffe_id: SpiffeId,
        /// The audience.
        audience: Vec<String>,
    },
}

/// What the shell must do.
#[derive(Debug)]
pub enum Output<S> {
    /// Connect to the server with the agent SVID, call `Sync`, report [`Input::Probed`].
    Connect(S),
    /// Close the connection to the server (or abandon the attempt).
    Disconnect(S),
    /// Open the watch stream on the connection to the server; report its views
    /// ([`Input::View`]) and its end ([`Input::StreamLost`]).
    Follow(S),
    /// Send `request` on the connection to `server`; report [`Input::Answer`].
    Call {
        /// Names the answer.
        id: CallId,
        /// The server.
        server: S,
        /// The request.
        request: ApiRequest,
    },
    /// Attest again with the configured repeatable method; report [`Input::Reattested`].
    Reattest,
    /// Keep this agent SVID for the next start (and connect with it from now on).
    StoreAgentSvid {
        /// Leaf first, DER.
        chain: Vec<Vec<u8>>,
        /// Its NotAfter.
        not_after: UnixTime,
    },
    /// Keep this bundle for the next start.
    StoreBundle(Bundle),
    /// What workloads are served changed: tell the Workload API's watchers.
    Changed,
    /// The answer to [`Input::Jwt`]: the token, or why there is none (retryable).
    Jwt {
        /// The request.
        ticket: Ticket,
        /// The token or the reason.
        result: Result<String, String>,
    },
}

/// Where the agent stands with the servers.
#[derive(Debug)]
enum Link<S> {
    /// No server; the next round of attempts at `retry_at` (none while re-attesting).
    Down { retry_at: Mono },
    /// A round of attempts is out: those still `waiting`, those that `answered` with their
    /// round-trip time, and when the choice is made (set by the first answer).
    Probing {
        waiting: BTreeSet<S>,
        answered: Vec<(S, Duration)>,
        choose_at: Option<Mono>,
    },
    /// Following `server` since `since`.
    Up { server: S, since: Mono },
}

/// A call in flight.
#[derive(Debug)]
enum Pending<S> {
    /// Workload SVIDs: each entry with the revision and key it is signed for.
    Sign {
        server: S,
        wall: UnixTime,
        batch: Vec<(EntryId, u64, WorkloadKey)>,
    },
    /// The agent's own SVID.
    RenewSelf { server: S, wall: UnixTime },
    /// A JWT-SVID.
    Jwt { key: JwtKey, wall: UnixTime },
}

/// The agent (see the module docs).
pub struct AgentCore<S> {
    cfg: AgentCoreConfig<S>,
    env: Arc<dyn Env>,
    svid: AgentSvid,
    cache: AgentCache<WorkloadKey>,
    link: Link<S>,
    backoff: Duration,
    renew_at: Mono,
    reattesting: bool,
    renewing: bool,
    calls: BTreeMap<CallId, Pending<S>>,
    next_call: CallId,
    /// Entries whose signing is in flight (not asked for again meanwhile).
    signing: BTreeSet<EntryId>,
    /// JWT-SVID mints in flight and the requests waiting for each.
    jwt_waiting: BTreeMap<JwtKey, Vec<Ticket>>,
    jwt_waiters: usize,
}

impl<S: fmt::Debug> fmt::Debug for AgentCore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCore")
            .field("agent", &self.svid.spiffe_id)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl<S: Copy + Ord + fmt::Display + fmt::Debug> AgentCore<S> {
    /// An agent holding `svid`, trusting `bundle`, that connects on its first tick. Workload
    /// keys come from `env`'s key source (the core reads no clock: time comes with each input).
    pub fn new(
        cfg: AgentCoreConfig<S>,
        env: Arc<dyn Env>,
        svid: AgentSvid,
        bundle: Bundle,
        now: Mono,
    ) -> AgentCore<S> {
        AgentCore::with_cache(cfg, env, svid, AgentCache::new(bundle), now)
    }

    /// As [`AgentCore::new`] with a prepared cache (tests use one with a fake verifier).
    pub fn with_cache(
        cfg: AgentCoreConfig<S>,
        env: Arc<dyn Env>,
        svid: AgentSvid,
        cache: AgentCache<WorkloadKey>,
        now: Mono,
    ) -> AgentCore<S> {
        AgentCore {
            cfg,
            env,
            svid,
            cache,
            link: Link::Down { retry_at: now },
            backoff: RECONNECT_MIN,
            renew_at: now,
            reattesting: false,
            renewing: false,
            calls: BTreeMap::new(),
            next_call: 1,
            signing: BTreeSet::new(),
            jwt_waiting: BTreeMap::new(),
            jwt_waiters: 0,
        }
    }

    /// What the agent holds for its workloads.
    pub fn cache(&self) -> &AgentCache<WorkloadKey> {
        &self.cache
    }

    /// The agent's current SVID.
    pub fn svid(&self) -> &AgentSvid {
        &self.svid
    }

    /// The server it follows, if any.
    pub fn server(&self) -> Option<S> {
        match self.link {
            Link::Up { server, .. } => Some(server),
            _ => None,
        }
    }

    /// Whether a re-attestation is under way.
    pub fn reattesting(&self) -> bool {
        self.reattesting
    }

    fn call(
        &mut self,
        server: S,
        request: ApiRequest,
        pending: Pending<S>,
        out: &mut Vec<Output<S>>,
    ) {
        let id = self.next_call;
        self.next_call = self.next_call.wrapping_add(1);
        self.calls.insert(id, pending);
        out.push(Output::Call {
            id,
            server,
            request,
        });
    }

    /// Starts a round of connection attempts to every server.
    fn probe(&mut self, out: &mut Vec<Output<S>>) {
        for s in &self.cfg.servers {
            out.push(Output::Connect(*s));
        }
        self.link = Link::Probing {
            waiting: self.cfg.servers.iter().copied().collect(),
            answered: Vec::new(),
            choose_at: None,
        };
    }

    /// Stops following the server (if any) because it failed, and tries again after the
    /// backoff: a server that fails right after every connection is not hammered.
    fn lose(&mut self, now: Mono, out: &mut Vec<Output<S>>) {
        self.reconnect(now, out);
        self.link = Link::Down {
            retry_at: now.saturating_add(self.backoff),
        };
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
    }

    /// Stops following the server (if any) and connects again at once (a new SVID to connect
    /// with, or a look for a faster server).
    fn reconnect(&mut self, now: Mono, out: &mut Vec<Output<S>>) {
        if let Link::Up { server, .. } = self.link {
            out.push(Output::Disconnect(server));
        }
        self.link = Link::Down { retry_at: now };
    }

    /// Ends a round of attempts: the fastest answer is followed; with none, back off (or attest
    /// again when the agent SVID expired meanwhile).
    fn choose(&mut self, now: Mono, wall: UnixTime, out: &mut Vec<Output<S>>) {
        let Link::Probing {
            waiting,
            mut answered,
            ..
        } = std::mem::replace(&mut self.link, Link::Down { retry_at: now })
        else {
            return;
        };
        for s in waiting {
            out.push(Output::Disconnect(s));
        }
        answered.sort_by_key(|(_, rtt)| *rtt);
        let mut answered = answered.into_iter();
        if let Some((best, rtt)) = answered.next() {
            for (other, _) in answered {
                out.push(Output::Disconnect(other));
            }
            tracing::info!(server = %best, rtt_us = rtt.as_micros(), "connected to the nearest server");
            out.push(Output::Follow(best));
            self.link = Link::Up {
                server: best,
                since: now,
            };
            self.renew_at = now;
            return;
        }
        let backoff = self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
        self.link = Link::Down {
            retry_at: now.saturating_add(backoff),
        };
        let expired = self.svid.not_after <= wall;
        match self.cfg.repeatable {
            Some(method) if expired => {
                tracing::warn!(method, "this agent's SVID expired while no server was reachable; attesting again — cached workload SVIDs are served until they expire");
                self.reattesting = true;
                out.push(Output::Reattest);
            }
            None if expired => tracing::error!("this agent's SVID expired while no server was reachable: servers refuse it now; give the agent a new join token (join_token in agent.toml, from `sigil token generate`) and restart it — cached workload SVIDs are served until they expire"),
            _ => tracing::warn!(retry_ms = backoff.as_millis(), "no server reachable; serving cached SVIDs until one answers (check the servers list and the network)"),
        }
    }

    fn on_probed(
        &mut self,
        now: Mono,
        wall: UnixTime,
        server: S,
        rtt: Result<Duration, String>,
        out: &mut Vec<Output<S>>,
    ) {
        let Link::Probing {
            waiting,
            answered,
            choose_at,
        } = &mut self.link
        else {
            if rtt.is_ok() && self.server() != Some(server) {
                out.push(Output::Disconnect(server)); // a late answer: not needed
            }
            return;
        };
        if !waiting.remove(&server) {
            return;
        }
        match rtt {
            Ok(rtt) => {
                answered.push((server, rtt));
                choose_at.get_or_insert(now.saturating_add(RTT_GRACE));
            }
            Err(e) => tracing::debug!(%server, error = %e, "server unreachable"),
        }
        if waiting.is_empty() {
            self.choose(now, wall, out);
        }
    }

    /// Signs what is due at `wall` and not already being signed, through the followed server.
    fn sign_due(&mut self, wall: UnixTime, out: &mut Vec<Output<S>>) {
        let Some(server) = self.server() else {
            return;
        };
        let due: Vec<(EntryId, u64)> = self
            .cache
            .due(wall)
            .into_iter()
            .filter(|(id, _)| !self.signing.contains(id))
            .collect();
        for chunk in due.chunks(SIGN_BATCH_MAX) {
            let mut batch = Vec::with_capacity(chunk.len());
            let mut requests = Vec::with_capacity(chunk.len());
            for (entry_id, revision) in chunk {
                match self.env.keys().generate_workload_key(KeyAlg::EcP256) {
                    Ok(key) => {
                        requests.push(SignX509 {
                            entry_id: entry_id.clone(),
                            public_key_der: key.public_key_der().to_vec(),
                        });
                        self.signing.insert(entry_id.clone());
                        batch.push((entry_id.clone(), *revision, key));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not generate a workload key; retried on the next renewal")
                    }
                }
            }
            if !batch.is_empty() {
                let pending = Pending::Sign {
                    server,
                    wall,
                    batch,
                };
                self.call(server, ApiRequest::SignX509 { requests }, pending, out);
            }
        }
    }

    /// Asks the followed server to renew the agent SVID once it is past half life.
    fn renew_self(&mut self, wall: UnixTime, out: &mut Vec<Output<S>>) {
        let Some(server) = self.server() else {
            return;
        };
        if self.renewing || !past_half_life(self.svid.issued_at, self.svid.not_after, wall) {
            return;
        }
        self.renewing = true;
        let request = ApiRequest::RenewAgent {
            public_key_der: self.cfg.public_key_der.clone(),
        };
        self.call(server, request, Pending::RenewSelf { server, wall }, out);
    }

    /// Takes a new agent SVID received at `wall`.
    fn take_svid(
        &mut self,
        chain: Vec<Vec<u8>>,
        not_after: UnixTime,
        wall: UnixTime,
        out: &mut Vec<Output<S>>,
    ) {
        self.svid.chain = chain.clone();
        self.svid.issued_at = wall;
        self.svid.not_after = not_after;
        out.push(Output::StoreAgentSvid { chain, not_after });
    }

    fn on_answer(
        &mut self,
        now: Mono,
        call: CallId,
        answer: Result<ApiResponse, String>,
        out: &mut Vec<Output<S>>,
    ) {
        let Some(pending) = self.calls.remove(&call) else {
            return;
        };
        match pending {
            Pending::Sign {
                server,
                wall: asked,
                batch,
            } => {
                for (id, _, _) in &batch {
                    self.signing.remove(id);
                }
                match answer {
                    Ok(ApiResponse::X509(results)) => {
                        for ((entry_id, revision, key), result) in batch.into_iter().zip(results) {
                            match result {
                                Ok(IssuedX509 {
                                    spiffe_id,
                                    chain,
                                    not_after,
                                    ..
                                }) => self.cache.store_x509(
                                    entry_id,
                                    HeldX509 {
                                        revision,
                                        spiffe_id,
                                        chain,
                                        key,
                                        issued_at: asked,
                                        not_after,
                                    },
                                ),
                                Err(e) => {
                                    tracing::warn!(entry = %entry_id, error = %e, "the server refused an SVID; retried on the next view or renewal (if it persists, check the entry with `sigil entry show` and the server's log)")
                                }
                            }
                        }
                        out.push(Output::Changed);
                    }
                    other => self.failed(now, server, "signing SVIDs", other, out),
                }
            }
            Pending::RenewSelf {
                server,
                wall: asked,
            } => {
                self.renewing = false;
                match answer {
                    Ok(ApiResponse::AgentSvid {
                        chain, not_after, ..
                    }) => {
                        self.take_svid(chain, not_after, asked, out);
                        tracing::info!("renewed the agent SVID");
                        if self.server() == Some(server) {
                            self.reconnect(now, out); // with the new SVID
                        }
                    }
                    Ok(ApiResponse::Error(e)) if e.message.contains(crate::service::NOT_LATEST) => {
                        // The servers recorded a newer SVID for this agent than the one it
                        // holds: another process has a copy of this agent's identity and
                        // renewed it (or a renewal answer was lost).
                        match self.cfg.repeatable {
                            Some(method) if !self.reattesting => {
                                tracing::warn!(method, "the servers refused to renew this agent's SVID: a newer one is on record (a copy of this agent's identity renewed it, or a renewal answer was lost); attesting again");
                                self.reconnect(now, out);
                                self.reattesting = true;
                                out.push(Output::Reattest);
                            }
                            Some(_) => {}
                            None => {
                                tracing::error!("the servers refused to renew this agent's SVID: a newer one is on record, so another process holds a copy of this agent's identity (its data_dir) and renewed it. This agent cannot attest again with its spent join token: ban or evict the agent (`sigil agent ban|evict`), find the copy, and give this agent a new join token");
                                if self.server() == Some(server) {
                                    self.lose(now, out);
                                }
                            }
                        }
                    }
                    other => self.failed(now, server, "renewing the agent SVID", other, out),
                }
            }
            Pending::Jwt { key, wall: asked } => {
                let tickets = self.jwt_waiting.remove(&key).unwrap_or_default();
                self.jwt_waiters = self.jwt_waiters.saturating_sub(tickets.len());
                let result = match answer {
                    Ok(ApiResponse::Jwt { token, expires_at }) => {
                        self.cache.store_jwt(
                            key,
                            HeldJwt {
                                token: token.clone(),
                                issued_at: asked,
                                expires_at,
                            },
                        );
                        Ok(token)
                    }
                    Ok(ApiResponse::Error(e)) => Err(e.to_string()),
                    Ok(other) => Err(format!("unexpected answer {}", response_kind(&other))),
                    Err(e) => Err(e),
                };
                for ticket in tickets {
                    out.push(Output::Jwt {
                        ticket,
                        result: result.clone(),
                    });
                }
            }
        }
    }

    /// A call to `server` failed: fail over if it is the server we follow.
    fn failed(
        &mut self,
        now: Mono,
        server: S,
        what: &str,
        answer: Result<ApiResponse, String>,
        out: &mut Vec<Output<S>>,
    ) {
        let error = match answer {
            Ok(ApiResponse::Error(e)) => e.to_string(),
            Ok(other) => format!("unexpected answer {}", response_kind(&other)),
            Err(e) => e,
        };
        if self.server() == Some(server) {
            tracing::warn!(%server, error = %error, "{what} failed; failing over");
            self.lose(now, out);
        }
    }

    fn on_reattested(
        &mut self,
        now: Mono,
        wall: UnixTime,
        result: Result<Attested, String>,
        out: &mut Vec<Output<S>>,
    ) {
        if !self.reattesting {
            return;
        }
        self.reattesting = false;
        match result {
            Ok(a) => {
                let method = self.cfg.repeatable.unwrap_or("a repeatable method");
                if a.spiffe_id != self.svid.spiffe_id {
                    tracing::warn!(previous = %self.svid.spiffe_id, agent = %a.spiffe_id, method, "re-attestation gave this agent a new ID (its certificate or TPM changed): entries parented to the previous ID no longer apply");
                }
                tracing::info!(agent = %a.spiffe_id, "re-attested with {method}");
                self.svid.spiffe_id = a.spiffe_id;
                self.take_svid(a.chain, a.not_after, wall, out);
                if self.cache.set_bundle(a.bundle.clone()) {
                    out.push(Output::StoreBundle(a.bundle));
                }
                out.push(Output::Changed);
                self.backoff = RECONNECT_MIN;
                if !matches!(self.link, Link::Up { .. }) {
                    self.link = Link::Down { retry_at: now };
                }
            }
            Err(e) => {
                let method = self.cfg.repeatable.unwrap_or("repeatable");
                tracing::warn!(retry_ms = self.backoff.as_millis(), error = %e, "{method} re-attestation failed; retrying — cached workload SVIDs are served until they expire");
                if let Link::Down { retry_at } = &mut self.link {
                    *retry_at = (*retry_at).max(now.saturating_add(self.backoff));
                }
            }
        }
    }

    fn on_jwt(
        &mut self,
        wall: UnixTime,
        ticket: Ticket,
        entry_id: EntryId,
        spiffe_id: SpiffeId,
        mut audience: Vec<String>,
        out: &mut Vec<Output<S>>,
    ) {
        audience.sort();
        audience.dedup();
        let key = (spiffe_id, audience);
        if let Some(token) = self.cache.cached_jwt(&key, wall) {
            out.push(Output::Jwt {
                ticket,
                result: Ok(token.to_owned()),
            });
            return;
        }
        if self.jwt_waiters >= JWT_WAITERS_MAX {
            out.push(Output::Jwt {
                ticket,
                result: Err(format!(
                    "{JWT_WAITERS_MAX} JWT-SVID requests are already waiting for the servers; retry"
                )),
            });
            return;
        }
        if let Some(waiting) = self.jwt_waiting.get_mut(&key) {
            waiting.push(ticket); // one mint answers every request for the same key
            self.jwt_waiters += 1;
            return;
        }
        let Some(server) = self.server() else {
            out.push(Output::Jwt {
                ticket,
                result: Err("no server reachable to mint a JWT-SVID; retry".into()),
            });
            return;
        };
        let request = ApiRequest::MintJwt {
            entry_id,
            audience: key.1.clone(),
        };
        self.jwt_waiting.insert(key.clone(), vec![ticket]);
        self.jwt_waiters += 1;
        self.call(server, request, Pending::Jwt { key, wall }, out);
    }

    /// Runs what is due at `now`: a round of attempts, the choice of a server, renewals and the
    /// periodic look for a faster server.
    fn advance(&mut self, now: Mono, wall: UnixTime, out: &mut Vec<Output<S>>) {
        match self.link {
            Link::Down { retry_at } if now >= retry_at && !self.reattesting => self.probe(out),
            Link::Probing {
                choose_at: Some(at),
                ..
            } if now >= at => self.choose(now, wall, out),
            Link::Up { server, since } if now >= self.renew_at => {
                self.renew_at = now.saturating_add(RENEW_TICK);
                if now.saturating_since(since) >= RECONNECT_MAX {
                    self.backoff = RECONNECT_MIN; // the server held: failures start over
                }
                self.sign_due(wall, out);
                self.renew_self(wall, out);
                let stale = now.saturating_since(since) >= REPROBE_INTERVAL;
                if stale && self.cfg.servers.len() > 1 && !self.renewing {
                    tracing::debug!(%server, "looking for a faster server");
                    self.reconnect(now, out);
                    self.probe(out);
                }
            }
            _ => {}
        }
    }
}

/// The variant of an answer, for messages (answers carry SVIDs and tokens; never print them).
fn response_kind(r: &ApiResponse) -> &'static str {
    match r {
        ApiResponse::View(_) => "a view",
        ApiResponse::X509(_) => "X.509-SVIDs",
        ApiResponse::Jwt { .. } => "a JWT-SVID",
        ApiResponse::AgentSvid { .. } => "an agent SVID",
        ApiResponse::Error(_) => "an error",
        _ => "another answer",
    }
}

impl<S: Copy + Ord + fmt::Display + fmt::Debug> Actor for AgentCore<S> {
    type Input = Input<S>;
    type Output = Output<S>;

    fn handle(&mut self, now: Mono, wall: UnixTime, input: Input<S>, out: &mut Vec<Output<S>>) {
        match input {
            Input::Tick => {}
            Input::Probed { server, rtt } => self.on_probed(now, wall, server, rtt, out),
            Input::View { server, view } => {
                if self.server() == Some(server) {
                    let bundle = view.bundle.clone();
                    if self.cache.apply_view(view, wall) {
                        out.push(Output::StoreBundle(bundle));
                    }
                    out.push(Output::Changed);
                    self.sign_due(wall, out);
                }
            }
            Input::StreamLost { server, reason } => {
                if self.server() == Some(server) {
                    tracing::warn!(%server, error = %reason, "lost the server; failing over");
                    self.lose(now, out);
                }
            }
            Input::Answer { call, answer } => self.on_answer(now, call, answer, out),
            Input::Reattested(result) => self.on_reattested(now, wall, result, out),
            Input::Jwt {
                ticket,
                entry_id,
                spiffe_id,
                audience,
            } => self.on_jwt(wall, ticket, entry_id, spiffe_id, audience, out),
        }
        self.advance(now, wall, out);
    }

    fn next_deadline(&self) -> Option<Mono> {
        match self.link {
            Link::Down { .. } if self.reattesting => None,
            Link::Down { retry_at } => Some(retry_at),
            Link::Probing { choose_at, .. } => choose_at,
            Link::Up { .. } => Some(self.renew_at),
        }
    }
}

#[cfg(test)]
mod tests;
