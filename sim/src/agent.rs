//! Simulated agents and their workloads.
//!
//! A [`SimAgent`] is the production agent's actor, [`AgentCore`] — server choice by round-trip
//! time, failover, backoff, signing batches with workload keys from the environment, renewals of
//! its own SVID — with simulated IO: every [`Output`] it asks for is carried out on the simulated
//! network, every call is a real node API request encoded with the wire codec, read by the
//! node's request parser ([`node::service::parse_request`]) and answered by the node's
//! production handler ([`NodeService::handle`]); the call travels the simulated network
//! ([`SimNet::round_trip`]: cuts, down nodes, loss and delay apply). Its workloads are served
//! from the core's cache exactly as the Workload API serves them ([`AgentCache::x509_for`]).
//!
//! What differs from production: the watch stream is one `Sync` call per tick to the followed
//! node (its answer is the view the stream would push; a failed one ends the stream), calls run
//! one after another, and the first attestation (a join token, as in production a shell step
//! before the core starts) is done here. A join-token agent never attests again, so an agent
//! whose SVID expired while it reached no node that could renew it stays expired — counted, not
//! a violation: that is the documented join-token behaviour.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use attest::x509pop::EXPORTER_BYTES;
use node::actors::agent::{
    AgentCache, AgentCore, AgentCoreConfig, AgentSvid, Attested, Input, Output,
};
use node::actors::Actor;
use node::service::NodeService;
use wire::api::{ApiError, ApiRequest, ApiResponse};
use wire::{
    AgentRecord, Bundle, Env, KeyAlg, PeerId, Selector, SigFormat, Signer, SpiffeId, UnixTime,
    WorkloadKey,
};

use crate::x509pop::PopCredential;

use crate::check::bans::Delivery;
use crate::check::workloads::Serve;
use crate::check::Delivered;
use crate::env::SimEnv;
use crate::net::{SimEndpoint, SimNet};

/// Peer IDs of agents on the simulated network start here (server nodes are 1..=5).
pub const AGENT_PEER_BASE: PeerId = 100;

/// A workload on an agent's host: its selectors.
#[derive(Debug, Clone)]
pub struct Workload {
    /// What workload attestation found.
    pub selectors: BTreeSet<Selector>,
}

/// The links and nodes an agent talks to during one tick.
#[derive(Debug)]
pub struct Links<'a> {
    /// The network.
    pub net: &'a SimNet,
    /// Running nodes' API handlers.
    pub services: &'a BTreeMap<u64, NodeService<SimEndpoint>>,
    /// Virtual time at the start of the run.
    pub start: tokio::time::Instant,
    /// Scans every answer for private keys.
    pub secrets: &'a crate::check::secrets::SecretScan,
}

/// When and in what state a node handled a call.
#[derive(Debug)]
pub(crate) struct Handled {
    /// Virtual time the node started handling it.
    pub at: Duration,
    /// The node's wall clock then.
    pub node_wall: UnixTime,
    /// The node's applied bundle then.
    pub node_bundle: Bundle,
    /// The node's applied record of the calling agent then (for the ban and copy checkers).
    pub record: Option<AgentRecord>,
}

/// One answered request of an agent's tick (for the ban checker).
#[derive(Debug)]
pub struct Answered {
    /// The answering node.
    pub node: u64,
    /// When it started handling the request.
    pub at: Duration,
    /// Whether it held a ban of the agent then.
    pub ban_applied: bool,
    /// What it delivered (`None`: an error).
    pub delivery: Option<Delivery>,
}

/// What an agent's tick produced for the checkers.
#[derive(Debug, Default)]
pub struct TickReport {
    /// SVIDs received.
    pub delivered: Vec<Delivered>,
    /// Sign requests a node refused (stale, no key yet, entry deleted …).
    pub refused: u64,
    /// Every request that was answered, and how.
    pub answers: Vec<Answered>,
}

/// One node API call from `peer` (presenting `chain`; `who` names it in the secret scanner's
/// findings) to `node`, through the simulated network and the node's production handler
/// ([`NodeService::handle`]); `None` when it does not get through (or is answered late because
/// the link went down meanwhile). Also returns when the node handled it, with the node's clock,
/// applied bundle and record of `who` at that moment (for the checkers).
pub(crate) async fn call_node(
    links: &Links<'_>,
    peer: PeerId,
    who: &SpiffeId,
    chain: &[Vec<u8>],
    node: u64,
    request: ApiRequest,
) -> Option<(ApiResponse, Handled)> {
    let service = links.services.get(&node)?.clone();
    let rtt = links.net.round_trip(peer, node)?;
    tokio::time::sleep(rtt / 2).await;
    let at = Handled {
        at: now_since(links.start),
        node_wall: service.node().env().wall(),
        node_bundle: service.node().bundle(),
        record: service
            .node()
            .replica()
            .read(|a| a.state.agent(who).cloned()),
    };
    // The request as the node reads it: one frame, up to the caller's limit, parsed and checked.
    let frame = wire::codec::encode(&request).ok()?;
    let parsed = if frame.len() > node::service::request_bytes_max(!chain.is_empty()) {
        Err(ApiError::invalid("request over the size limit"))
    } else {
        node::service::parse_request(&frame)
    };
    let answer = match parsed {
        Ok(request) => {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let exporter = exporter_of(peer, node);
            service.handle(chain, Some(&exporter), request, tx).await;
            rx.recv().await?
        }
        Err(e) => ApiResponse::Error(e),
    };
    let bytes = wire::codec::encode(&answer).ok()?;
    links
        .secrets
        .scan(|| format!("an answer of node {node} to {who}"), &bytes);
    let answer = wire::codec::decode::<ApiResponse>(&bytes).ok()?;
    tokio::time::sleep(rtt / 2).await;
    links.net.connected(peer, node).then_some((answer, at))
}

impl TickReport {
    fn answer(&mut self, node: u64, handled: &Handled, delivery: Option<Delivery>) {
        self.answers.push(Answered {
            node,
            at: handled.at,
            ban_applied: handled.record.as_ref().is_some_and(|r| r.banned),
            delivery,
        });
    }
}

pub(crate) fn now_since(start: tokio::time::Instant) -> Duration {
    #[allow(clippy::disallowed_methods)] // the simulator's virtual clock
    tokio::time::Instant::now().duration_since(start)
}

/// Most inputs one tick feeds the core (its outputs lead to more); the rest wait for the next
/// tick.
const TICK_INPUTS_MAX: usize = 256;

/// How a simulated agent attests.
#[derive(Debug)]
pub enum SimMethod {
    /// A single-use join token (already registered).
    JoinToken(String),
    /// x509pop with this credential: repeatable.
    X509Pop(PopCredential),
}

/// The keying material a simulated connection between `peer` and `node` exports (both ends
/// agree on it; an x509pop proof is bound to it).
pub(crate) fn exporter_of(peer: PeerId, node: u64) -> [u8; EXPORTER_BYTES] {
    let digest = attest::sha256_hex(format!("sim-exporter {peer} {node}").as_bytes());
    let mut out = [0u8; EXPORTER_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(digest.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// A simulated agent.
pub struct SimAgent {
    /// Its peer ID on the network.
    pub peer: PeerId,
    /// Its environment (clock, keys).
    pub env: Arc<SimEnv>,
    method: SimMethod,
    /// Its SPIFFE ID (known before attestation: it follows from the token or certificate).
    pub spiffe_id: SpiffeId,
    key: Box<dyn Signer>,
    /// The production agent's actor.
    core: AgentCore<u64>,
    /// Nodes it has a (simulated) connection to.
    conns: BTreeSet<u64>,
    /// The node whose view it follows (the watch stream).
    following: Option<u64>,
    /// Inputs for the core left over from the last tick.
    backlog: VecDeque<Input<u64>>,
    /// Seeded order in which it tries nodes for its first attestation.
    preference: Vec<u64>,
    /// Its workloads.
    pub workloads: Vec<Workload>,
    /// Whether it ever attested.
    pub attested: bool,
    /// Serials of the agent SVIDs it held, oldest first.
    serials: Vec<String>,
    /// How often it attested again (x509pop).
    pub reattested: u64,
}

impl std::fmt::Debug for SimAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAgent")
            .field("peer", &self.peer)
            .field("spiffe_id", &self.spiffe_id)
            .field("following", &self.following)
            .finish()
    }
}

impl SimAgent {
    /// An agent that will attest with `method`, trying nodes in `preference` order for that,
    /// serving `workloads`.
    pub fn new(
        peer: PeerId,
        env: Arc<SimEnv>,
        method: SimMethod,
        spiffe_id: SpiffeId,
        preference: Vec<u64>,
        workloads: Vec<Workload>,
    ) -> Result<SimAgent, String> {
        let key = env
            .keys()
            .generate(KeyAlg::EcP256)
            .map_err(|e| format!("agent key: {e}"))?;
        let unattested = Attested {
            spiffe_id: spiffe_id.clone(),
            chain: Vec::new(),
            not_after: UnixTime::EPOCH,
            bundle: Bundle::default(),
        };
        let core = SimAgent::core(&env, key.as_ref(), &preference, &method, unattested);
        Ok(SimAgent {
            peer,
            env,
            method,
            spiffe_id,
            key,
            core,
            conns: BTreeSet::new(),
            following: None,
            backlog: VecDeque::new(),
            preference,
            workloads,
            attested: false,
            serials: Vec::new(),
            reattested: 0,
        })
    }

    /// The production actor for an agent of `servers` attesting with `method`, holding what
    /// attestation `a` gave.
    fn core(
        env: &Arc<SimEnv>,
        key: &dyn Signer,
        servers: &[u64],
        method: &SimMethod,
        a: Attested,
    ) -> AgentCore<u64> {
        let mut servers = servers.to_vec();
        servers.sort_unstable();
        let cfg = AgentCoreConfig {
            servers,
            repeatable: matches!(method, SimMethod::X509Pop(_)).then_some("x509pop"),
            public_key_der: key.public_key_der().to_vec(),
        };
        let svid = AgentSvid {
            spiffe_id: a.spiffe_id,
            chain: a.chain,
            issued_at: env.wall(),
            not_after: a.not_after,
        };
        let bundle = a.bundle;
        let dyn_env: Arc<dyn Env> = env.clone();
        AgentCore::new(cfg, dyn_env, svid, bundle, env.mono())
    }

    /// What the agent holds for its workloads.
    pub fn cache(&self) -> &AgentCache<WorkloadKey> {
        self.core.cache()
    }

    /// The node it follows, if any.
    pub fn server(&self) -> Option<u64> {
        self.core.server()
    }

    /// What workload `w` is served now (as the Workload API would serve it), for the
    /// checkers, judged against `bundle`.
    pub fn serve<'a>(&'a self, w: &'a Workload, bundle: &'a Bundle) -> Serve<'a> {
        let wall = self.env.wall();
        Serve {
            agent: &self.spiffe_id,
            selectors: &w.selectors,
            served: self
                .cache()
                .x509_for(&w.selectors, wall)
                .into_iter()
                .filter_map(|s| Some((s.entry, s.svid.chain.first()?.as_slice())))
                .collect(),
            bundle,
            wall,
        }
    }

    /// Whether its agent SVID is valid now.
    pub fn alive(&self) -> bool {
        self.attested && self.core.svid().not_after > self.env.wall()
    }

    /// Its current agent SVID chain (empty before it attested).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.core.svid().chain
    }

    /// Its join token (`None`: an x509pop agent).
    pub(crate) fn token(&self) -> Option<&str> {
        match &self.method {
            SimMethod::JoinToken(t) => Some(t),
            SimMethod::X509Pop(_) => None,
        }
    }

    /// Its attestation request on a connection to `node`.
    fn attestation(&self, node: u64) -> Option<ApiRequest> {
        let public_key_der = self.public_key_der();
        Some(match &self.method {
            SimMethod::JoinToken(token) => ApiRequest::AttestJoinToken {
                token: token.clone(),
                public_key_der,
            },
            SimMethod::X509Pop(cred) => {
                let message =
                    attest::x509pop::message(&exporter_of(self.peer, node), &public_key_der);
                ApiRequest::AttestX509Pop {
                    chain: cred.chain.clone(),
                    signature: cred.key.sign(&message, SigFormat::Der).ok()?,
                    public_key_der,
                }
            }
        })
    }

    /// Its public key (SubjectPublicKeyInfo DER).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public_key_der().to_vec()
    }

    /// The serials of the agent SVIDs it held, oldest first.
    pub fn serials(&self) -> &[String] {
        &self.serials
    }

    fn record_serial(&mut self, chain: &[Vec<u8>]) {
        if let Some((serial, _)) = chain
            .first()
            .and_then(|leaf| attest::x509::serial_and_not_after(leaf).ok())
        {
            self.serials.push(serial);
        }
    }

    /// A reachable running node: the followed one, else the first in preference order.
    fn reachable(&self, links: &Links<'_>) -> Option<u64> {
        let up = |n: &u64| links.services.contains_key(n) && links.net.connected(self.peer, *n);
        self.following
            .filter(up)
            .or_else(|| self.preference.iter().copied().find(up))
    }

    /// One node API call with this agent's current SVID (see [`call_node`]).
    async fn call(
        &self,
        links: &Links<'_>,
        node: u64,
        request: ApiRequest,
    ) -> Option<(ApiResponse, Handled)> {
        let chain = self.core.svid().chain.clone();
        call_node(links, self.peer, &self.spiffe_id, &chain, node, request).await
    }

    /// Attests again with its method and its key at a reachable node (a banned agent that keeps
    /// trying); its state does not change. Returns the node, when it handled the request and the
    /// record it held, and whether the answer was an agent SVID.
    pub(crate) async fn reattest(&mut self, links: &Links<'_>) -> Option<(u64, Handled, bool)> {
        let node = self.reachable(links)?;
        let request = self.attestation(node)?;
        let (answer, handled) =
            call_node(links, self.peer, &self.spiffe_id, &[], node, request).await?;
        Some((
            node,
            handled,
            matches!(answer, ApiResponse::AgentSvid { .. }),
        ))
    }

    /// An attestation at the first reachable node, as the production shell does it: what it
    /// gave, or why not.
    async fn attest_once(&self, links: &Links<'_>) -> Result<Attested, String> {
        let node = self.reachable(links).ok_or("no node reachable")?;
        let request = self.attestation(node).ok_or("could not sign the proof")?;
        match call_node(links, self.peer, &self.spiffe_id, &[], node, request).await {
            Some((
                ApiResponse::AgentSvid {
                    spiffe_id,
                    chain,
                    not_after,
                    bundle,
                },
                _,
            )) => Ok(Attested {
                spiffe_id,
                chain,
                not_after,
                bundle,
            }),
            other => Err(format!("node {node}: {other:?}")),
        }
    }

    /// The first attestation (a shell step in production too: the core starts with an
    /// identity).
    async fn attest(&mut self, links: &Links<'_>) {
        let Ok(a) = self.attest_once(links).await else {
            return;
        };
        self.record_serial(&a.chain);
        self.core = SimAgent::core(
            &self.env,
            self.key.as_ref(),
            &self.preference,
            &self.method,
            a,
        );
        self.attested = true;
    }

    /// One round: attest if needed; else the followed node pushes its view and the core runs
    /// until it has nothing more to do, every output carried out on the simulated network.
    pub async fn tick(&mut self, links: &Links<'_>) -> TickReport {
        let mut report = TickReport::default();
        if !self.attested {
            self.attest(links).await;
            return report;
        }
        let mut inputs = std::mem::take(&mut self.backlog);
        inputs.push_back(Input::Tick);
        if let Some(node) = self.following {
            inputs.push_back(self.pushed_view(links, node, &mut report).await);
        }
        let mut fed = 0;
        while let Some(input) = inputs.pop_front() {
            fed += 1;
            if fed > TICK_INPUTS_MAX {
                inputs.push_front(input);
                self.backlog = inputs;
                break;
            }
            let mut out = Vec::new();
            self.core
                .handle(self.env.mono(), self.env.wall(), input, &mut out);
            for output in out {
                if let Some(next) = self.execute(links, output, &mut report).await {
                    inputs.push_back(next);
                }
            }
        }
        report
    }

    /// What the watch stream on `node` delivers now: its view, or its end.
    async fn pushed_view(
        &mut self,
        links: &Links<'_>,
        node: u64,
        report: &mut TickReport,
    ) -> Input<u64> {
        let answer = self.call(links, node, ApiRequest::Sync).await;
        if let Some((a, handled)) = &answer {
            let view = matches!(a, ApiResponse::View(_));
            report.answer(node, handled, view.then_some(Delivery::View));
        }
        match answer {
            Some((ApiResponse::View(view), _)) => Input::View { server: node, view },
            other => {
                crate::world::event(|| {
                    format!("agent {} watch at node {node}: {other:?}", self.peer)
                });
                Input::StreamLost {
                    server: node,
                    reason: format!("{other:?}"),
                }
            }
        }
    }

    /// Carries out one of the core's outputs; what it leads to, as the core's next input.
    async fn execute(
        &mut self,
        links: &Links<'_>,
        output: Output<u64>,
        report: &mut TickReport,
    ) -> Option<Input<u64>> {
        match output {
            Output::Connect(node) => {
                let began = now_since(links.start);
                let answer = self.call(links, node, ApiRequest::Sync).await;
                if let Some((a, handled)) = &answer {
                    let view = matches!(a, ApiResponse::View(_));
                    report.answer(node, handled, view.then_some(Delivery::View));
                }
                let rtt = match answer {
                    Some((ApiResponse::View(_), _)) => {
                        self.conns.insert(node);
                        Ok(now_since(links.start).saturating_sub(began))
                    }
                    other => Err(format!("{other:?}")),
                };
                Some(Input::Probed { server: node, rtt })
            }
            Output::Disconnect(node) => {
                self.conns.remove(&node);
                if self.following == Some(node) {
                    self.following = None;
                }
                None
            }
            Output::Follow(node) => {
                // A watch stream pushes the current view first.
                self.following = Some(node);
                Some(self.pushed_view(links, node, report).await)
            }
            Output::Call {
                id,
                server,
                request,
            } => {
                let answer = if self.conns.contains(&server) {
                    self.answered(links, server, request, report).await
                } else {
                    Err("not connected".to_owned())
                };
                Some(Input::Answer { call: id, answer })
            }
            Output::StoreAgentSvid { chain, .. } => {
                self.record_serial(&chain);
                None
            }
            Output::Reattest => {
                let result = self.attest_once(links).await;
                crate::world::event(|| format!("agent {} attests again: {result:?}", self.peer));
                if result.is_ok() {
                    self.reattested += 1;
                }
                Some(Input::Reattested(result))
            }
            Output::StoreBundle(_) | Output::Changed | Output::Jwt { .. } => None,
        }
    }

    /// One call of the core to `node`, reported to the checkers.
    async fn answered(
        &mut self,
        links: &Links<'_>,
        node: u64,
        request: ApiRequest,
        report: &mut TickReport,
    ) -> Result<ApiResponse, String> {
        let what = match &request {
            ApiRequest::SignX509 { .. } => "sign",
            ApiRequest::RenewAgent { .. } => "renewal",
            ApiRequest::MintJwt { .. } => "mint",
            _ => "call",
        };
        let Some((answer, handled)) = self.call(links, node, request).await else {
            crate::world::event(|| format!("agent {} {what} at node {node}: lost", self.peer));
            return Err("the call did not get through".into());
        };
        match &answer {
            ApiResponse::X509(results) => {
                let any = results.iter().any(Result::is_ok);
                report.answer(node, &handled, any.then_some(Delivery::X509));
                for result in results {
                    match result {
                        Ok(issued) => {
                            let entry = self
                                .cache()
                                .entries()
                                .iter()
                                .find(|e| e.id == issued.entry_id);
                            if let (Some(entry), Some(leaf)) = (entry, issued.chain.first()) {
                                report.delivered.push(Delivered {
                                    node,
                                    entry: entry.clone(),
                                    cert_der: leaf.clone(),
                                    at: handled.at,
                                    node_wall: handled.node_wall,
                                    node_bundle: handled.node_bundle.clone(),
                                });
                            }
                        }
                        Err(e) => {
                            crate::world::event(|| {
                                format!("agent {} sign at node {node}: {e:?}", self.peer)
                            });
                            report.refused += 1;
                        }
                    }
                }
            }
            ApiResponse::AgentSvid { .. } => {
                report.answer(node, &handled, Some(Delivery::AgentSvid));
            }
            other => {
                crate::world::event(|| {
                    format!("agent {} {what} at node {node}: {other:?}", self.peer)
                });
                report.answer(node, &handled, None);
            }
        }
        Ok(answer)
    }
}
