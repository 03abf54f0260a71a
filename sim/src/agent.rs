//! Simulated agents and their workloads.
//!
//! A [`SimAgent`] is the production agent's logic on simulated links: it attests with a join
//! token and then, on every tick, picks the nearest server node it reaches (seeded round-trip
//! times; failover when the link or the node goes), syncs its view, has the node sign SVIDs for
//! what [`AgentCache::due`] says, and renews its own SVID at half life. Every call is a real
//! node API request answered by that node's production handler ([`NodeService::handle`]); the
//! call travels the simulated network ([`SimNet::round_trip`]: cuts, down nodes, loss and
//! delay apply). Its workloads are served from the cache exactly as the Workload API serves
//! them ([`AgentCache::x509_for`]).
//!
//! What differs from production: views are pulled on each tick instead of pushed on a watch
//! stream, and the agent never re-attests (a join token is single use), so an agent whose SVID
//! expired while it reached no node that could renew it stays expired — counted, not a
//! violation: that is the documented join-token behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use node::actors::agent::{past_half_life, AgentCache, HeldX509};
use node::service::NodeService;
use wire::api::{ApiRequest, ApiResponse, SignX509, SIGN_BATCH_MAX};
use wire::{AgentRecord, Bundle, Env, KeyAlg, PeerId, Selector, Signer, SpiffeId, UnixTime};

use crate::check::bans::Delivery;
use crate::check::workloads::Serve;
use crate::check::Delivered;
use crate::env::SimEnv;
use crate::net::{SimEndpoint, SimNet};

/// Peer IDs of agents on the simulated network start here (server nodes are 1..=5).
pub const AGENT_PEER_BASE: PeerId = 100;

/// A workload key the agent holds (never printed).
pub struct SimKey(#[allow(dead_code)] Box<dyn Signer>);

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimKey(redacted)")
    }
}

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
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    service.handle(chain, None, request, tx).await;
    let answer = rx.recv().await?;
    let bytes = wire::codec::encode(&answer).unwrap_or_default();
    links
        .secrets
        .scan(|| format!("an answer of node {node} to {who}"), &bytes);
    tokio::time::sleep(rtt / 2).await;
    links.net.connected(peer, node).then_some((answer, at))
}

/// A simulated agent.
pub struct SimAgent {
    /// Its peer ID on the network.
    pub peer: PeerId,
    /// Its environment (clock, keys).
    pub env: Arc<SimEnv>,
    token: String,
    /// Its SPIFFE ID (known before attestation: it follows from the token).
    pub spiffe_id: SpiffeId,
    key: Box<dyn Signer>,
    chain: Vec<Vec<u8>>,
    issued_at: UnixTime,
    not_after: UnixTime,
    /// The agent's cache (production logic).
    pub cache: AgentCache<SimKey>,
    /// The node it follows.
    pub server: Option<u64>,
    /// Seeded round-trip ranking of the nodes, nearest first.
    preference: Vec<u64>,
    /// Its workloads.
    pub workloads: Vec<Workload>,
    /// Whether it ever attested.
    pub attested: bool,
    /// Serials of the agent SVIDs it held, oldest first.
    serials: Vec<String>,
}

impl std::fmt::Debug for SimAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAgent")
            .field("peer", &self.peer)
            .field("spiffe_id", &self.spiffe_id)
            .field("server", &self.server)
            .finish()
    }
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

impl SimAgent {
    /// An agent that will attest with `token` (already registered), preferring nodes in
    /// `preference` order, serving `workloads`.
    pub fn new(
        peer: PeerId,
        env: Arc<SimEnv>,
        token: String,
        spiffe_id: SpiffeId,
        preference: Vec<u64>,
        workloads: Vec<Workload>,
    ) -> Result<SimAgent, String> {
        let key = env
            .keys()
            .generate(KeyAlg::EcP256)
            .map_err(|e| format!("agent key: {e}"))?;
        Ok(SimAgent {
            peer,
            env,
            token,
            spiffe_id,
            key,
            chain: Vec::new(),
            issued_at: UnixTime::EPOCH,
            not_after: UnixTime::EPOCH,
            cache: AgentCache::new(Bundle::default()),
            server: None,
            preference,
            workloads,
            attested: false,
            serials: Vec::new(),
        })
    }

    /// What workload `w` is served now (as the Workload API would serve it), for the
    /// checkers, judged against `bundle`.
    pub fn serve<'a>(&'a self, w: &'a Workload, bundle: &'a Bundle) -> Serve<'a> {
        let wall = self.env.wall();
        Serve {
            agent: &self.spiffe_id,
            selectors: &w.selectors,
            served: self
                .cache
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
        self.attested && self.not_after > self.env.wall()
    }

    /// One node API call to `node` with this agent's SVID (see [`call_node`]).
    async fn call(
        &self,
        links: &Links<'_>,
        node: u64,
        request: ApiRequest,
    ) -> Option<(ApiResponse, Handled)> {
        call_node(
            links,
            self.peer,
            &self.spiffe_id,
            &self.chain,
            node,
            request,
        )
        .await
    }

    /// Its current agent SVID chain (empty before it attested).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// Its join token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Its public key (SubjectPublicKeyInfo DER).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public_key_der().to_vec()
    }

    /// The serials of the agent SVIDs it held, oldest first.
    pub fn serials(&self) -> &[String] {
        &self.serials
    }

    /// Takes a new agent SVID.
    fn take_svid(&mut self, chain: Vec<Vec<u8>>, not_after: UnixTime) {
        if let Some((serial, _)) = chain
            .first()
            .and_then(|leaf| attest::x509::serial_and_not_after(leaf).ok())
        {
            self.serials.push(serial);
        }
        self.chain = chain;
        self.issued_at = self.env.wall();
        self.not_after = not_after;
    }

    /// Attests again with its join token and its key at the node it follows (a banned agent
    /// that keeps trying); its state does not change. Returns the node, when it handled the
    /// request and the record it held, and whether the answer was an agent SVID.
    pub(crate) async fn reattest(&mut self, links: &Links<'_>) -> Option<(u64, Handled, bool)> {
        let node = self.pick(links)?;
        let request = ApiRequest::AttestJoinToken {
            token: self.token.clone(),
            public_key_der: self.public_key_der(),
        };
        let (answer, handled) =
            call_node(links, self.peer, &self.spiffe_id, &[], node, request).await?;
        Some((
            node,
            handled,
            matches!(answer, ApiResponse::AgentSvid { .. }),
        ))
    }

    /// The node to talk to: the current one while reachable, else the nearest reachable.
    fn pick(&mut self, links: &Links<'_>) -> Option<u64> {
        let up = |n: &u64| links.services.contains_key(n) && links.net.connected(self.peer, *n);
        if let Some(s) = self.server.filter(up) {
            return Some(s);
        }
        self.server = self.preference.iter().copied().find(up);
        self.server
    }

    /// One round: attest if needed, then sync, sign what is due, renew the agent SVID.
    pub async fn tick(&mut self, links: &Links<'_>) -> TickReport {
        let mut report = TickReport::default();
        let Some(node) = self.pick(links) else {
            return report;
        };
        if !self.attested {
            let request = ApiRequest::AttestJoinToken {
                token: self.token.clone(),
                public_key_der: self.key.public_key_der().to_vec(),
            };
            if let Some((
                ApiResponse::AgentSvid {
                    chain,
                    not_after,
                    bundle,
                    ..
                },
                _,
            )) = self.call(links, node, request).await
            {
                self.take_svid(chain, not_after);
                self.cache.set_bundle(bundle);
                self.attested = true;
            }
            return report;
        }
        if !self.alive() {
            return report;
        }
        let answer = self.call(links, node, ApiRequest::Sync).await;
        if let Some((a, handled)) = &answer {
            report.answer(
                node,
                handled,
                matches!(a, ApiResponse::View(_)).then_some(Delivery::View),
            );
        }
        let view = match answer {
            Some((ApiResponse::View(view), _)) => view,
            other => {
                crate::world::event(|| {
                    format!("agent {} sync at node {node}: {other:?}", self.peer)
                });
                self.server = None; // fail over on the next tick
                return report;
            }
        };
        self.cache.apply_view(view, self.env.wall());
        let due = self.cache.due(self.env.wall());
        for batch in due.chunks(SIGN_BATCH_MAX) {
            let mut keys = Vec::with_capacity(batch.len());
            let mut requests = Vec::with_capacity(batch.len());
            for (entry_id, _) in batch {
                let Ok(key) = self.env.keys().generate(KeyAlg::EcP256) else {
                    continue;
                };
                requests.push(SignX509 {
                    entry_id: entry_id.clone(),
                    public_key_der: key.public_key_der().to_vec(),
                });
                keys.push(key);
            }
            let answer = self
                .call(links, node, ApiRequest::SignX509 { requests })
                .await;
            if let Some((a, handled)) = &answer {
                if !matches!(a, ApiResponse::X509(_)) {
                    report.answer(node, handled, None);
                }
            }
            let Some((ApiResponse::X509(results), handled)) = answer else {
                return report;
            };
            let any = results.iter().any(Result::is_ok);
            report.answer(node, &handled, any.then_some(Delivery::X509));
            let wall = self.env.wall();
            for (((entry_id, revision), key), result) in batch.iter().zip(keys).zip(results) {
                match result {
                    Ok(issued) => {
                        let Some(leaf) = issued.chain.first().cloned() else {
                            continue;
                        };
                        if let Some(entry) = self.cache.entries().iter().find(|e| e.id == *entry_id)
                        {
                            report.delivered.push(Delivered {
                                node,
                                entry: entry.clone(),
                                cert_der: leaf,
                                at: handled.at,
                                node_wall: handled.node_wall,
                                node_bundle: handled.node_bundle.clone(),
                            });
                        }
                        self.cache.store_x509(
                            entry_id.clone(),
                            HeldX509 {
                                revision: *revision,
                                spiffe_id: issued.spiffe_id,
                                chain: issued.chain,
                                key: SimKey(key),
                                issued_at: wall,
                                not_after: issued.not_after,
                            },
                        );
                    }
                    Err(e) => {
                        crate::world::event(|| {
                            format!("agent {} sign {entry_id} at node {node}: {e:?}", self.peer)
                        });
                        report.refused += 1;
                    }
                }
            }
        }
        if past_half_life(self.issued_at, self.not_after, self.env.wall()) {
            let request = ApiRequest::RenewAgent {
                public_key_der: self.key.public_key_der().to_vec(),
            };
            let answer = self.call(links, node, request).await;
            if let Some((a, handled)) = &answer {
                let renewed = matches!(a, ApiResponse::AgentSvid { .. });
                report.answer(node, handled, renewed.then_some(Delivery::AgentSvid));
            }
            match answer {
                Some((
                    ApiResponse::AgentSvid {
                        chain, not_after, ..
                    },
                    _,
                )) => {
                    self.take_svid(chain, not_after);
                }
                other => {
                    crate::world::event(|| {
                        format!("agent {} renewal at node {node}: {other:?}", self.peer)
                    });
                    // As in production: a failed renewal ends the session with this node.
                    self.server = None;
                }
            }
        }
        report
    }
}
