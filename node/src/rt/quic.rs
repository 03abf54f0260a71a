//! [`QuicTransport`]: the production [`wire::Transport`] between server nodes — QUIC (quinn)
//! with mutual TLS over server X.509-SVIDs (see [`super::tls`] for the verifiers).
//!
//! **Connections.** Every node sends on connections it dialled and receives on connections it
//! accepted, so between two nodes there is one connection per direction. That removes the
//! simultaneous-dial race (no tie-break is needed: each side owns exactly the connection it
//! sends on) at the cost of one extra handshake per pair. A connection is dialled lazily on the
//! first frame for a peer, reused for every later frame, and redialled with exponential backoff
//! ([`QuicConfig::backoff_min`] doubling up to [`QuicConfig::backoff_max`]) while the peer is
//! unreachable. When a peer dials again while its previous connection still looks alive, it has
//! most likely restarted: the old inbound connection is closed, and so is our outbound
//! connection to it (redialled on the next frame), so a restarted peer is reached again at once
//! instead of after the idle timeout.
//!
//! **Frames.** One unidirectional stream per frame; the stream's end delimits the frame.
//! Frames over [`MESSAGE_BYTES_MAX`] are refused by `send` ([`SendError::TooLarge`]) and by the
//! receiver (the stream is stopped and the frame dropped). Each received frame is tagged with
//! the peer's node ID taken from its *verified* certificate. Delivery is best-effort: a frame
//! whose stream fails is dropped, never retried.
//!
//! **Bounds.** `send` never waits: it queues into a bounded per-peer queue drained by that
//! peer's writer task ([`SendError::Overloaded`] when full). Received frames go to one bounded
//! inbox read by [`Transport::recv`], bounded in frames and in bytes; a full inbox stops reading, which stops stream credit, which
//! backs the sender up (QUIC flow control). Streams per connection, receive windows, the idle
//! timeout, keep-alives and the time to read one frame are bounded ([`QuicConfig`]).
//!
//! **Identity and trust** are live: [`QuicTransport::set_identity`] changes the SVID presented
//! on new connections; [`TrustStore::update`] changes the bundle new connections are verified
//! against. Every [`QuicConfig::revalidate_interval`], established connections are checked
//! again and closed once the peer's SVID no longer verifies (expired, or its authority pruned).
//!
//! **Shutdown.** [`QuicTransport::close`] (or dropping the last handle) closes the endpoint and
//! every connection and stops every task; `recv` then returns `None` and `send`
//! [`SendError::Closed`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use wire::codec::MESSAGE_BYTES_MAX;
use wire::{Env, PeerId, SendError, Transport};

use super::api::{serve_connection, ApiHandler, Caller};
use super::limits::{Permit, SourceGuard, SourceLimits};
use super::tls::{
    client_config, server_config, IdentityCell, NodeIdentity, PeerReject, TlsError, TrustStore,
    SERVER_NAME,
};

/// Application close codes.
const CODE_CLOSING: u32 = 0;
const CODE_REFUSED: u32 = 1;
const CODE_REPLACED: u32 = 2;
const CODE_REVOKED: u32 = 3;
/// Application stream stop codes.
const STOP_TOO_LARGE: u32 = 1;
const STOP_TIMEOUT: u32 = 2;

/// Settings of a [`QuicTransport`]; [`QuicConfig::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// This node's ID (the `<u64>` of its server SPIFFE ID).
    pub node_id: PeerId,
    /// The UDP address to listen on (port 0 picks one).
    pub bind: SocketAddr,
    /// Frames queued per peer before `send` answers `Overloaded` (default 1024).
    pub queue_frames_max: usize,
    /// Received frames waiting for `recv` (default 4096).
    pub inbox_frames_max: usize,
    /// Bytes of received frames waiting for `recv` (default 64 MiB; at least one largest frame).
    pub inbox_bytes_max: usize,
    /// Concurrent incoming streams per connection (default 256).
    pub streams_per_connection_max: u32,
    /// Bytes buffered per connection (default 16 MiB) and per stream (default 4 MiB).
    pub receive_window_bytes: u32,
    /// See `receive_window_bytes`.
    pub stream_receive_window_bytes: u32,
    /// A connection with no traffic for this long is closed (default 10 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval, below the idle timeout (default 2 s).
    pub keep_alive: Duration,
    /// Longest handshake when dialling (default 5 s).
    pub connect_timeout: Duration,
    /// Longest time to receive one frame once its stream opened (default 30 s).
    pub frame_read_timeout: Duration,
    /// First pause after a failed dial (default 50 ms); doubles per failure.
    pub backoff_min: Duration,
    /// Longest pause between dials (default 5 s).
    pub backoff_max: Duration,
    /// Interval of re-verifying established connections' peer SVIDs (default 30 s).
    pub revalidate_interval: Duration,
    /// Handshakes in progress the endpoint accepts before refusing more (default 256).
    pub incoming_handshakes_max: usize,
    /// Per source address: connections, node API requests in flight, and unauthenticated
    /// requests per second (`[limits]` in `server.toml`; see [`SourceLimits`]).
    pub limits: SourceLimits,
}

impl QuicConfig {
    /// The defaults for node `node_id` listening on `bind`.
    pub fn new(node_id: PeerId, bind: SocketAddr) -> QuicConfig {
        QuicConfig {
            node_id,
            bind,
            queue_frames_max: 1024,
            inbox_frames_max: 4096,
            inbox_bytes_max: 64 << 20,
            streams_per_connection_max: 256,
            receive_window_bytes: 16 << 20,
            stream_receive_window_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            frame_read_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            revalidate_interval: Duration::from_secs(30),
            incoming_handshakes_max: 256,
            limits: SourceLimits::default(),
        }
    }
}

/// Errors starting a [`QuicTransport`]. Never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// TLS material or configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A QUIC setting was refused.
    #[error("QUIC configuration: {0}")]
    Config(String),
    /// The UDP socket could not be opened.
    #[error("binding {addr}: {detail}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        detail: String,
    },
}

/// Counters of a transport (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// Frames written to a stream.
    pub frames_sent: u64,
    /// Frames received whole (then queued for `recv`).
    pub frames_received: u64,
    /// Frames dropped (a failed stream, an oversized or late frame, a dropped queue).
    pub frames_dropped: u64,
    /// Outbound connections established.
    pub dials: u64,
    /// Dials that failed (unreachable, refused, or the peer failed verification).
    pub dial_failures: u64,
    /// Inbound connections accepted after verification.
    pub accepted: u64,
    /// Inbound handshakes that failed (including peers that failed verification).
    pub inbound_refused: u64,
    /// Connections closed because the peer's SVID stopped verifying.
    pub revoked: u64,
    /// Node API connections accepted.
    pub api_accepted: u64,
    /// Connections refused at once by a per-source limit.
    pub source_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped: AtomicU64,
    dials: AtomicU64,
    dial_failures: AtomicU64,
    accepted: AtomicU64,
    inbound_refused: AtomicU64,
    revoked: AtomicU64,
    api_accepted: AtomicU64,
    source_refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the transport knows about one peer.
struct Peer {
    /// The peer's address; the writer task watches it (and sees the peer's removal as the
    /// sender's drop).
    addr: watch::Sender<SocketAddr>,
    /// The queue to the peer's writer, created on the first frame.
    queue: Option<mpsc::Sender<Vec<u8>>>,
    /// The connection the writer sends on, if established.
    outbound: Arc<Mutex<Option<Connection>>>,
}

struct Inner {
    config: QuicConfig,
    env: Arc<dyn Env>,
    trust: Arc<TrustStore>,
    identity: Arc<IdentityCell>,
    /// `None` once closed.
    endpoint: Mutex<Option<Endpoint>>,
    local_addr: SocketAddr,
    client_transport: Arc<quinn::TransportConfig>,
    peers: Mutex<HashMap<PeerId, Peer>>,
    /// The newest inbound connection of each peer.
    inbound: Mutex<HashMap<PeerId, Connection>>,
    inbox_tx: mpsc::Sender<Received>,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    /// One permit per byte waiting in the inbox.
    inbox_bytes: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    counters: Counters,
    /// Answers node API connections (ALPN `sigil-api/1`); refused while unset.
    api: Mutex<Option<Arc<dyn ApiHandler>>>,
    /// Connections and requests per source address.
    sources: Arc<SourceGuard>,
}

/// A received frame, its sender, and its share of the inbox byte budget (released on `recv`).
type Received = (PeerId, Vec<u8>, OwnedSemaphorePermit);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resolves once `shutdown` is set (or its sender is gone).
async fn closed(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|c| *c).await;
}

/// Closes the transport when the last user handle is dropped (tasks hold `Inner`, not this).
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

/// Node↔node QUIC transport (see the module docs). Cheap to clone; all clones share one
/// endpoint. Must be created inside a tokio runtime.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node_id", &self.inner.config.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds `config.bind` and starts accepting peers that present a server SVID of `trust`'s
    /// trust domain, presenting `identity`. Tasks run through `env.spawn`; certificate validity
    /// is judged at `env.wall()`.
    pub fn bind(
        config: QuicConfig,
        identity: &NodeIdentity,
        trust: Arc<TrustStore>,
        env: Arc<dyn Env>,
    ) -> Result<QuicTransport, QuicError> {
        let identity = IdentityCell::new(identity);
        let tls = server_config(identity.clone(), trust.clone(), env.clone())?;
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(&config, true)?));
        server.max_incoming(config.incoming_handshakes_max.max(1));
        let endpoint = Endpoint::server(server, config.bind).map_err(|e| QuicError::Bind {
            addr: config.bind,
            detail: e.to_string(),
        })?;
        let local_addr = endpoint.local_addr().map_err(|e| QuicError::Bind {
            addr: config.bind,
            detail: e.to_string(),
        })?;
        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_frames_max.max(1));
        let inbox_bytes = config
            .inbox_bytes_max
            .clamp(MESSAGE_BYTES_MAX, Semaphore::MAX_PERMITS);
        let client_transport = Arc::new(transport_config(&config, false)?);
        let config_limits = config.limits;
        let inner = Arc::new(Inner {
            config,
            env,
            trust,
            identity,
            endpoint: Mutex::new(Some(endpoint.clone())),
            local_addr,
            client_transport,
            peers: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
            inbox_tx,
            inbox_rx: tokio::sync::Mutex::new(inbox_rx),
            inbox_bytes: Arc::new(Semaphore::new(inbox_bytes)),
            shutdown: watch::channel(false).0,
            counters: Counters::default(),
            api: Mutex::new(None),
            sources: SourceGuard::new(config_limits),
        });
        inner.env.spawn(
            "quic-accept",
            Box::pin(accept_loop(inner.clone(), endpoint)),
        );
        inner
            .env
            .spawn("quic-revalidate", Box::pin(revalidate_loop(inner.clone())));
        tracing::info!(node = inner.config.node_id, addr = %local_addr, "QUIC transport listening");
        Ok(QuicTransport {
            _guard: Arc::new(CloseOnDrop(inner.clone())),
            inner,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's ID.
    pub fn node_id(&self) -> PeerId {
        self.inner.config.node_id
    }

    /// Adds peer `id` at `addr`, or moves it (its connection is then redialled).
    pub fn set_peer(&self, id: PeerId, addr: SocketAddr) {
        let mut peers = lock(&self.inner.peers);
        match peers.get(&id) {
            Some(peer) => {
                peer.addr.send_if_modified(|a| {
                    let changed = *a != addr;
                    *a = addr;
                    changed
                });
            }
            None => {
                peers.insert(
                    id,
                    Peer {
                        addr: watch::channel(addr).0,
                        queue: None,
                        outbound: Arc::new(Mutex::new(None)),
                    },
                );
            }
        }
    }

    /// Forgets peer `id`: its queue is dropped and its outbound connection closed.
    pub fn remove_peer(&self, id: PeerId) {
        let removed = lock(&self.inner.peers).remove(&id);
        if let Some(peer) = removed {
            if let Some(conn) = lock(&peer.outbound).take() {
                conn.close(VarInt::from_u32(CODE_CLOSING), b"peer removed");
            }
        }
    }

    /// Presents `identity` on every connection established from now on (SVID rotation).
    pub fn set_identity(&self, identity: &NodeIdentity) {
        self.inner.identity.set(identity);
        tracing::info!(node = self.inner.config.node_id, "TLS identity replaced");
    }

    /// Serves node API connections (ALPN `sigil-api/1`) with `handler`; before this call they
    /// are refused.
    pub fn set_api_handler(&self, handler: Arc<dyn ApiHandler>) {
        *lock(&self.inner.api) = Some(handler);
    }

    /// The shared trust store.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.inner.trust
    }

    /// The counters.
    pub fn stats(&self) -> QuicStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QuicStats {
            frames_sent: get(&c.frames_sent),
            frames_received: get(&c.frames_received),
            frames_dropped: get(&c.frames_dropped),
            dials: get(&c.dials),
            dial_failures: get(&c.dial_failures),
            accepted: get(&c.accepted),
            inbound_refused: get(&c.inbound_refused),
            revoked: get(&c.revoked),
            api_accepted: get(&c.api_accepted),
            source_refused: get(&c.source_refused),
        }
    }

    /// The round-trip time of our connection to `peer`, if one is established.
    pub fn rtt(&self, peer: PeerId) -> Option<Duration> {
        let peers = lock(&self.inner.peers);
        let outbound = lock(&peers.get(&peer)?.outbound);
        outbound.as_ref().map(Connection::rtt)
    }

    /// Closes the endpoint and every connection, stops the tasks, and waits (up to a second)
    /// for the connections to finish closing. Afterwards `recv` returns `None`; the UDP port is
    /// released once the last task has wound down.
    pub async fn close(&self) {
        if let Some(endpoint) = self.inner.shut_down() {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        if frame.len() > MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: frame.len(),
                bytes_max: MESSAGE_BYTES_MAX,
            });
        }
        if *self.inner.shutdown.borrow() {
            return Err(SendError::Closed);
        }
        let mut peers = lock(&self.inner.peers);
        let peer = peers.get_mut(&to).ok_or(SendError::UnknownPeer(to))?;
        let queue = match &peer.queue {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(self.inner.config.queue_frames_max.max(1));
                let task = writer(
                    self.inner.clone(),
                    to,
                    rx,
                    peer.addr.subscribe(),
                    peer.outbound.clone(),
                );
                self.inner.env.spawn("quic-writer", Box::pin(task));
                peer.queue = Some(tx.clone());
                tx
            }
        };
        drop(peers);
        queue.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Overloaded(to),
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    async fn recv(&self) -> Option<(PeerId, Vec<u8>)> {
        let mut shutdown = self.inner.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return None;
        }
        let mut inbox = self.inner.inbox_rx.lock().await;
        tokio::select! {
            biased;
            () = closed(&mut shutdown) => None,
            msg = inbox.recv() => msg.map(|(peer, frame, _bytes)| (peer, frame)),
        }
    }
}

/// The QUIC transport parameters; a client (dialled connection) accepts no streams.
fn transport_config(
    config: &QuicConfig,
    server: bool,
) -> Result<quinn::TransportConfig, QuicError> {
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| QuicError::Config(format!("idle timeout: {e}")))?;
    let mut t = quinn::TransportConfig::default();
    let streams = if server {
        config.streams_per_connection_max
    } else {
        0
    };
    // Raft frames use unidirectional streams, node API requests bidirectional ones.
    t.max_concurrent_uni_streams(VarInt::from_u32(streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(streams))
        .receive_window(VarInt::from_u32(config.receive_window_bytes))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .datagram_receive_buffer_size(None);
    Ok(t)
}

impl Inner {
    fn endpoint(&self) -> Option<Endpoint> {
        lock(&self.endpoint).clone()
    }

    /// Signals every task to stop, closes the endpoint and drops the peers' queues. Returns
    /// the endpoint the first time.
    fn shut_down(&self) -> Option<Endpoint> {
        self.shutdown.send_replace(true);
        let endpoint = lock(&self.endpoint).take();
        if let Some(ep) = &endpoint {
            ep.close(VarInt::from_u32(CODE_CLOSING), b"closing");
            tracing::info!(node = self.config.node_id, "QUIC transport closed");
        }
        lock(&self.peers).clear();
        lock(&self.inbound).clear();
        endpoint
    }

    /// The verified server node ID of an established connection's peer.
    fn peer_of(&self, conn: &Connection) -> Result<PeerId, PeerReject> {
        self.trust
            .verify_server_peer(&peer_chain(conn), self.env.wall())
    }

    /// Dials `peer` at `addr` and checks that `peer` answered.
    async fn dial(&self, peer: PeerId, addr: SocketAddr) -> Result<Connection, String> {
        let endpoint = self.endpoint().ok_or("transport closed")?;
        let tls = client_config(
            self.identity.clone(),
            self.trust.clone(),
            self.env.clone(),
            peer,
        )
        .map_err(|e| e.to_string())?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.client_transport.clone());
        let connecting = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| e.to_string())?;
        drop(endpoint);
        let conn = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        match self.peer_of(&conn) {
            Ok(got) if got == peer => Ok(conn),
            Ok(got) => {
                conn.close(VarInt::from_u32(CODE_REFUSED), b"wrong node");
                Err(format!("reached node {got}"))
            }
            Err(e) => {
                conn.close(VarInt::from_u32(CODE_REFUSED), b"refused");
                Err(e.to_string())
            }
        }
    }

    /// Records `conn` as `peer`'s inbound connection. If it replaces one that still looked
    /// alive, the peer has most likely restarted: close the old one and our outbound
    /// connection to the peer, which is then redialled on the next frame.
    fn register_inbound(&self, peer: PeerId, conn: &Connection) {
        let old = lock(&self.inbound).insert(peer, conn.clone());
        let Some(old) = old else { return };
        if old.stable_id() == conn.stable_id() || old.close_reason().is_some() {
            return;
        }
        tracing::debug!(
            peer,
            "peer dialled again while connected: replacing its connections"
        );
        old.close(VarInt::from_u32(CODE_REPLACED), b"replaced");
        let outbound = lock(&self.peers).get(&peer).map(|p| p.outbound.clone());
        if let Some(conn) = outbound.and_then(|slot| lock(&slot).take()) {
            conn.close(VarInt::from_u32(CODE_REPLACED), b"peer reconnected");
        }
    }

    fn unregister_inbound(&self, peer: PeerId, conn: &Connection) {
        let mut inbound = lock(&self.inbound);
        if inbound
            .get(&peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            inbound.remove(&peer);
        }
    }
}

/// The certificate chain a connection's peer presented (leaf first), empty if none.
fn peer_chain(conn: &Connection) -> Vec<Vec<u8>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default()
}

/// Accepts connections until the endpoint closes.
async fn accept_loop(inner: Arc<Inner>, endpoint: Endpoint) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let permit = match inner.sources.connect(remote.ip(), inner.env.mono()) {
            Ok(permit) => permit,
            Err(refused) => {
                let n = inner
                    .counters
                    .source_refused
                    .fetch_add(1, Ordering::Relaxed);
                // Logged at the 1st, 2nd, 4th, 8th … refusal: a flood cannot flood the log.
                if n.is_power_of_two() || n == 0 {
                    tracing::warn!(%remote, reason = %refused, refused = n + 1, "refused a QUIC connection (per-source limit, [limits] in server.toml)");
                }
                incoming.refuse();
                continue;
            }
        };
        let task = serve_inbound(inner.clone(), incoming, permit);
        inner.env.spawn("quic-inbound", Box::pin(task));
    }
    tracing::debug!(node = inner.config.node_id, "accept loop stopped");
}

/// Completes an inbound handshake, then reads one frame per stream into the inbox.
async fn serve_inbound(inner: Arc<Inner>, incoming: quinn::Incoming, _permit: Permit) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            bump(&inner.counters.inbound_refused);
            tracing::info!(%remote, error = %e, "inbound QUIC handshake failed");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if alpn.as_deref() == Some(wire::api::API_ALPN) {
        let handler = lock(&inner.api).clone();
        let Some(handler) = handler else {
            bump(&inner.counters.inbound_refused);
            conn.close(VarInt::from_u32(CODE_REFUSED), b"node API not served yet");
            return;
        };
        let caller = Caller {
            chain: peer_chain(&conn),
            remote: Some(remote),
            ..Caller::default()
        };
        bump(&inner.counters.api_accepted);
        serve_connection(
            conn,
            caller,
            handler,
            inner.env.clone(),
            inner.sources.clone(),
            inner.shutdown.subscribe(),
        )
        .await;
        return;
    }
    let peer = match inner.peer_of(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            // A Raft connection without a server SVID (client certificates are optional in the
            // handshake because the node API shares the endpoint).
            bump(&inner.counters.inbound_refused);
            tracing::warn!(%remote, error = %e, "refused an inbound Raft connection: the peer has no valid server SVID of this trust domain (a node of another cluster, or one removed from this one, is dialling this address)");
            conn.close(VarInt::from_u32(CODE_REFUSED), b"refused");
            return;
        }
    };
    bump(&inner.counters.accepted);
    tracing::debug!(peer, %remote, "accepted peer connection");
    inner.register_inbound(peer, &conn);
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let mut stream = tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            stream = conn.accept_uni() => match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer, error = %e, "inbound connection ended");
                    break;
                }
            },
        };
        let read = tokio::time::timeout(
            inner.config.frame_read_timeout,
            stream.read_to_end(MESSAGE_BYTES_MAX),
        )
        .await;
        let frame = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                bump(&inner.counters.frames_dropped);
                tracing::warn!(
                    peer,
                    bytes_max = MESSAGE_BYTES_MAX,
                    "dropped an oversized frame (check that all nodes run compatible sigil versions)"
                );
                let _ = stream.stop(VarInt::from_u32(STOP_TOO_LARGE));
                continue;
            }
            Ok(Err(e)) => {
                bump(&inner.counters.frames_dropped);
                tracing::debug!(peer, error = %e, "dropped a partial frame");
                continue;
            }
            Err(_) => {
                bump(&inner.counters.frames_dropped);
                tracing::warn!(peer, "dropped a frame that arrived too slowly (check the network between the nodes; Raft retries)");
                let _ = stream.stop(VarInt::from_u32(STOP_TIMEOUT));
                continue;
            }
        };
        bump(&inner.counters.frames_received);
        // At most MESSAGE_BYTES_MAX, which fits in u32.
        let bytes = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let queued = async {
            let permit = inner
                .inbox_bytes
                .clone()
                .acquire_many_owned(bytes)
                .await
                .ok()?;
            inner.inbox_tx.send((peer, frame, permit)).await.ok()
        };
        tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            queued = queued => {
                if queued.is_none() {
                    break;
                }
            }
        }
    }
    inner.unregister_inbound(peer, &conn);
}

/// Outcome of waiting for a connection.
enum Ready {
    Conn(Connection),
    /// Stop the writer: the transport closed or the peer was removed.
    Stop,
}

/// Drains `peer`'s queue onto the connection we dialled, (re)dialling with backoff.
async fn writer(
    inner: Arc<Inner>,
    peer: PeerId,
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut addr: watch::Receiver<SocketAddr>,
    slot: Arc<Mutex<Option<Connection>>>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = inner.config.backoff_min;
    loop {
        let frame = tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            frame = queue.recv() => match frame {
                Some(f) => f,
                None => break,
            },
        };
        let conn =
            match connection(&inner, peer, &mut addr, &slot, &mut shutdown, &mut backoff).await {
                Ready::Conn(c) => c,
                Ready::Stop => break,
            };
        let sent = tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            sent = send_frame(&conn, &frame) => sent,
        };
        match sent {
            Ok(()) => bump(&inner.counters.frames_sent),
            Err(e) => {
                bump(&inner.counters.frames_dropped);
                tracing::debug!(peer, error = %e, "frame lost; will redial");
                let mut slot = lock(&slot);
                if slot
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    *slot = None;
                }
                conn.close(VarInt::from_u32(CODE_CLOSING), b"stream failed");
            }
        }
    }
    let dropped = queue.len();
    for _ in 0..dropped {
        bump(&inner.counters.frames_dropped);
    }
    if let Some(conn) = lock(&slot).take() {
        conn.close(VarInt::from_u32(CODE_CLOSING), b"closing");
    }
}

/// The live connection to `peer`, dialling (with backoff between failures) as needed.
async fn connection(
    inner: &Inner,
    peer: PeerId,
    addr: &mut watch::Receiver<SocketAddr>,
    slot: &Mutex<Option<Connection>>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Ready {
    loop {
        match addr.has_changed() {
            Err(_) => return Ready::Stop, // the peer was removed
            Ok(true) => {
                // The peer moved: drop the connection to the old address.
                if let Some(old) = lock(slot).take() {
                    old.close(VarInt::from_u32(CODE_CLOSING), b"peer moved");
                }
            }
            Ok(false) => {}
        }
        let target = *addr.borrow_and_update();
        {
            let mut current = lock(slot);
            match current.as_ref() {
                Some(c) if c.close_reason().is_none() => return Ready::Conn(c.clone()),
                Some(_) => *current = None,
                None => {}
            }
        }
        let dialled = tokio::select! {
            biased;
            () = closed(shutdown) => return Ready::Stop,
            dialled = inner.dial(peer, target) => dialled,
        };
        match dialled {
            Ok(conn) => {
                bump(&inner.counters.dials);
                tracing::debug!(peer, addr = %target, "connected to peer");
                *backoff = inner.config.backoff_min;
                *lock(slot) = Some(conn.clone());
                return Ready::Conn(conn);
            }
            Err(e) => {
                bump(&inner.counters.dial_failures);
                tracing::info!(peer, addr = %target, error = %e, retry_in_ms = backoff.as_millis() as u64, "dial failed");
                let pause = *backoff;
                *backoff = backoff.saturating_mul(2).min(inner.config.backoff_max);
                tokio::select! {
                    biased;
                    () = closed(shutdown) => return Ready::Stop,
                    changed = addr.changed() => {
                        if changed.is_err() {
                            return Ready::Stop;
                        }
                        // Moved: retry the new address at once.
                        *backoff = inner.config.backoff_min;
                    }
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Writes one frame on its own unidirectional stream.
async fn send_frame(conn: &Connection, frame: &[u8]) -> Result<(), String> {
    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
    stream.write_all(frame).await.map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())?;
    Ok(())
}

/// Periodically closes connections whose peer SVID no longer verifies.
async fn revalidate_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            biased;
            () = closed(&mut shutdown) => break,
            () = tokio::time::sleep(inner.config.revalidate_interval) => {}
        }
        let mut conns: Vec<Connection> = lock(&inner.inbound).values().cloned().collect();
        conns.extend(
            lock(&inner.peers)
                .values()
                .filter_map(|p| lock(&p.outbound).clone()),
        );
        for conn in conns {
            if conn.close_reason().is_some() {
                continue;
            }
            if let Err(e) = inner.peer_of(&conn) {
                bump(&inner.counters.revoked);
                tracing::info!(error = %e, "closing a connection whose peer no longer verifies");
                conn.close(
                    VarInt::from_u32(CODE_REVOKED),
                    b"certificate no longer valid",
                );
            }
        }
    }
}
