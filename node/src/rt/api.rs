//! The node API over QUIC ([`wire::api`]): the server side's stream handling (requests are
//! answered by an [`ApiHandler`], the logic lives in [`crate::service`]) and [`ApiClient`], the
//! client agents, joining servers, tools and the load generator use.
//!
//! **Framing.** One request per bidirectional stream: the client writes one codec frame and
//! finishes its side; the server writes each response as a 4-byte big-endian length followed by
//! a codec frame, and finishes after the last one. Frames over [`MESSAGE_BYTES_MAX`] are refused
//! on both sides. A request must arrive within [`REQUEST_READ_TIMEOUT`].
//!
//! **Bounds.** Concurrent streams per connection are bounded by the QUIC transport parameters
//! (the server's `streams_per_connection_max` applies to bidirectional streams as well); a
//! handler's response queue holds [`RESPONSE_QUEUE`] frames, so a slow reader slows its own
//! stream only. Per source address ([`super::limits`]), requests in flight and requests without
//! a client certificate per second are bounded: a stream over a limit is answered with
//! `Unavailable` at once, without reading its request. A request without a client certificate
//! is read up to [`wire::api::UNAUTHENTICATED_REQUEST_BYTES_MAX`] (160 KiB) only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use wire::api::{ApiError, ApiRequest, ApiResponse};
use wire::codec::{self, MESSAGE_BYTES_MAX};
use wire::Env;

use attest::x509pop::EXPORTER_BYTES;

use super::limits::SourceGuard;
use super::tls::{api_client_config, NodeIdentity, ServerTrust, SERVER_NAME};

/// Longest wait for a request once its stream opened.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses a handler may queue ahead of a slow reader.
pub const RESPONSE_QUEUE: usize = 8;
/// An [`ApiClient`] sends a keep-alive this often …
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// … and declares the server gone after this long without any packet from it (so an agent
/// fails over within about this time after its server dies).
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest handshake of an [`ApiClient`] (default for [`ApiClient::connect`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed, sendable future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The verified TLS identity of an API caller: its certificate chain (leaf first, DER) as
/// presented in the handshake, already verified by the TLS layer against the bundle of that
/// moment — or empty when it presented none. Handlers re-verify it per request, so an SVID that
/// expired or whose authority was pruned since the handshake stops working.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The chain, leaf first; empty without a client certificate.
    pub chain: Vec<Vec<u8>>,
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The connection's exported keying material for x509pop channel binding (see
    /// [`exporter`]); filled in by the connection server.
    pub exporter: Option<[u8; EXPORTER_BYTES]>,
}

/// The x509pop channel-binding value of `conn`: [`EXPORTER_BYTES`] of TLS keying material
/// exported with label [`attest::x509pop::EXPORTER_LABEL`] and an empty context. Both ends of a
/// connection get the same value; no two connections do.
pub fn exporter(conn: &Connection) -> Option<[u8; EXPORTER_BYTES]> {
    let mut out = [0u8; EXPORTER_BYTES];
    conn.export_keying_material(&mut out, attest::x509pop::EXPORTER_LABEL, b"")
        .ok()
        .map(|()| out)
}

/// Answers node API requests. `handle` sends its responses into `out` (one, or a sequence for
/// a watch) and returns when done; it should stop once `out` is closed (the stream ended).
pub trait ApiHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(
        &self,
        caller: Caller,
        request: ApiRequest,
        out: mpsc::Sender<ApiResponse>,
    ) -> BoxFuture;
}

fn io<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> ApiClientError {
    move |e| ApiClientError::Io(format!("{what}: {e}"))
}

/// Writes one length-prefixed frame.
async fn write_frame(stream: &mut SendStream, frame: &[u8]) -> Result<(), ApiClientError> {
    let len = u32::try_from(frame.len()).map_err(|_| ApiClientError::TooLarge(frame.len()))?;
    stream
        .write_all(&len.to_be_bytes())
        .await
        .map_err(io("writing a frame"))?;
    stream.write_all(frame).await.map_err(io("writing a frame"))
}

/// Reads one length-prefixed frame; `None` at a clean end of stream.
async fn read_frame(stream: &mut RecvStream) -> Result<Option<Vec<u8>>, ApiClientError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ApiClientError::Io(format!("reading a frame: {e}"))),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MESSAGE_BYTES_MAX {
        return Err(ApiClientError::TooLarge(len));
    }
    let mut frame = vec![0u8; len];
    stream
        .read_exact(&mut frame)
        .await
        .map_err(io("reading a frame"))?;
    Ok(Some(frame))
}

/// Serves the node API on one accepted connection until it closes or `shutdown` turns true.
pub(crate) async fn serve_connection(
    conn: Connection,
    mut caller: Caller,
    handler: Arc<dyn ApiHandler>,
    env: Arc<dyn Env>,
    sources: Arc<SourceGuard>,
    mut shutdown: watch::Receiver<bool>,
) {
    caller.exporter = exporter(&conn);
    loop {
        let (send, recv) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            stream = conn.accept_bi() => match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(remote = ?caller.remote, error = %e, "API connection ended");
                    break;
                }
            },
        };
        // Per source address: requests in flight, and a rate for callers without a certificate
        // (anyone can ask those; they must not cost more than the limit).
        let permit = match caller.remote {
            Some(remote) => {
                match sources.request(remote.ip(), !caller.chain.is_empty(), env.mono()) {
                    Ok(p) => Some(p),
                    Err(refused) => {
                        let error =
                            ApiError::new(wire::api::ApiCode::Unavailable, refused.to_string());
                        env.spawn("api-refused", Box::pin(refuse_stream(send, recv, error)));
                        continue;
                    }
                }
            }
            None => None,
        };
        let task = serve_stream(send, recv, caller.clone(), handler.clone());
        env.spawn(
            "api-stream",
            Box::pin(async move {
                task.await;
                drop(permit);
            }),
        );
    }
}

/// Answers a stream refused by a per-source limit with `error`, without reading its request.
async fn refuse_stream(mut send: SendStream, mut recv: RecvStream, error: ApiError) {
    let _ = recv.stop(VarInt::from_u32(0));
    if let Ok(frame) = codec::encode(&ApiResponse::Error(error)) {
        let _ = tokio::time::timeout(REQUEST_READ_TIMEOUT, write_frame(&mut send, &frame)).await;
    }
    let _ = send.finish();
}

/// Reads one request, runs the handler, and writes its responses.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    caller: Caller,
    handler: Arc<dyn ApiHandler>,
) {
    // Anyone may send requests without a certificate: they are read only up to the largest
    // valid one.
    let limit = crate::service::request_bytes_max(!caller.chain.is_empty());
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, recv.read_to_end(limit));
    let request = match read.await {
        Ok(Ok(bytes)) => crate::service::parse_request(&bytes),
        Ok(Err(quinn::ReadToEndError::TooLong)) => Err(ApiError::invalid(format!(
            "request over {limit} bytes{}",
            if caller.chain.is_empty() {
                " (without a client certificate)"
            } else {
                ""
            }
        ))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "API request stream failed");
            return;
        }
        Err(_) => Err(ApiError::invalid("request arrived too slowly")),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            if let Ok(frame) = codec::encode(&ApiResponse::Error(e)) {
                let _ = write_frame(&mut send, &frame).await;
            }
            let _ = send.finish();
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(RESPONSE_QUEUE);
    let handling = handler.handle(caller, request, tx);
    let writing = async move {
        while let Some(response) = rx.recv().await {
            let frame = match codec::encode(&response) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "could not encode an API response");
                    // A short error always encodes.
                    codec::encode(&ApiResponse::Error(ApiError::new(
                        wire::api::ApiCode::Internal,
                        "response too large",
                    )))
                    .unwrap_or_default()
                }
            };
            if write_frame(&mut send, &frame).await.is_err() {
                // The client went away: dropping `rx` stops the handler.
                return;
            }
        }
        let _ = send.finish();
    };
    tokio::join!(handling, writing);
}

/// Errors of an [`ApiClient`]. Never contain secrets (requests are not echoed).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiClientError {
    /// Connecting failed or timed out.
    #[error("connecting to {addr}: {detail}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// The connection or stream failed.
    #[error("{0}")]
    Io(String),
    /// A frame over the size limit.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The server sent something undecodable or unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server failed the pinned-bundle check.
    #[error("{0}")]
    Pin(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Preparing a request or using an answer failed locally (e.g. at the agent's TPM).
    #[error("{0}")]
    Local(String),
}

/// What a newcomer (an agent without a valid SVID) may check a server against before it
/// attests: a pinned bundle hash and/or the last bundle it stored.
#[derive(Debug, Clone, Default)]
pub struct FirstContact {
    /// `bundle_sha256` from the configuration.
    pub pin: Option<String>,
    /// The bundle kept in the data dir from an earlier identity.
    pub stored: Option<wire::Bundle>,
}

impl FirstContact {
    /// Whether there is anything to check a server against.
    pub fn is_empty(&self) -> bool {
        self.pin.is_none() && self.stored.is_none()
    }
}

/// A node API connection to one server node.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoint: Endpoint,
    conn: Connection,
    addr: SocketAddr,
}

impl ApiClient {
    /// Connects to the server node at `addr`, presenting `identity` if given and judging the
    /// server by `trust`; fails after `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        trust: &ServerTrust,
        identity: Option<&NodeIdentity>,
        env: Arc<dyn Env>,
        timeout: Duration,
    ) -> Result<ApiClient, ApiClientError> {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        ApiClient::connect_from(local, addr, trust, identity, env, timeout).await
    }

    /// [`ApiClient::connect`] from the local UDP address `local` (e.g. another loopback
    /// address, so a test or load generator looks like another source).
    pub async fn connect_from(
        local: SocketAddr,
        addr: SocketAddr,
        trust: &ServerTrust,
        identity: Option<&NodeIdentity>,
        env: Arc<dyn Env>,
        timeout: Duration,
    ) -> Result<ApiClient, ApiClientError> {
        let fail = |detail: String| ApiClientError::Connect { addr, detail };
        let tls = api_client_config(identity, trust, env).map_err(|e| fail(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| fail(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(CLIENT_KEEP_ALIVE))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(CLIENT_IDLE_TIMEOUT)
                    .map_err(|e| fail(e.to_string()))?,
            ));
        client.transport_config(Arc::new(transport));
        let endpoint = Endpoint::client(local).map_err(|e| fail(e.to_string()))?;
        let connecting = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                endpoint.close(VarInt::from_u32(0), b"");
                return Err(fail(e.to_string()));
            }
            Err(_) => {
                endpoint.close(VarInt::from_u32(0), b"");
                return Err(fail("handshake timed out".into()));
            }
        };
        Ok(ApiClient {
            endpoint,
            conn,
            addr,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate chain the server presented (leaf first, DER).
    pub fn server_chain(&self) -> Vec<Vec<u8>> {
        self.conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default()
    }

    /// The connection's current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// This connection's x509pop channel-binding value (the server computes the same).
    pub fn exporter(&self) -> Result<[u8; EXPORTER_BYTES], ApiClientError> {
        exporter(&self.conn).ok_or_else(|| {
            ApiClientError::Protocol("cannot export keying material from this connection".into())
        })
    }

    /// Whether the connection has closed (then make a new client).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    async fn open(&self, request: &ApiRequest) -> Result<RecvStream, ApiClientError> {
        let frame = codec::encode(request).map_err(|e| ApiClientError::Protocol(e.to_string()))?;
        let (mut send, recv) = self.conn.open_bi().await.map_err(io("opening a stream"))?;
        match send.write_all(&frame).await {
            Ok(()) => {}
            // The server answered without reading the request (a per-source limit): its
            // answer is on the receiving side.
            Err(quinn::WriteError::Stopped(_)) => return Ok(recv),
            Err(e) => return Err(io("sending a request")(e)),
        }
        send.finish().map_err(io("sending a request"))?;
        Ok(recv)
    }

    /// Sends `request` and returns its one answer; an [`ApiResponse::Error`] becomes
    /// [`ApiClientError::Api`]. Fails after `timeout`.
    pub async fn call(
        &self,
        request: &ApiRequest,
        timeout: Duration,
    ) -> Result<ApiResponse, ApiClientError> {
        let exchange = async {
            let mut recv = self.open(request).await?;
            let frame = read_frame(&mut recv)
                .await?
                .ok_or_else(|| ApiClientError::Protocol("no response".into()))?;
            decode_response(&frame)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ApiClientError::Timeout(timeout))?
    }

    /// Sends a streaming request ([`ApiRequest::Watch`]) and returns its responses as they come.
    pub async fn stream(&self, request: &ApiRequest) -> Result<ApiStream, ApiClientError> {
        Ok(ApiStream {
            recv: self.open(request).await?,
        })
    }

    /// The trust domain's bundle as this server serves it, accepted only if its hash
    /// ([`attest::bundle::bundle_sha256`]) is `pin` and the server's own certificate is a server
    /// SVID of `td` under it — the first contact of a newcomer that has nothing but a pinned
    /// hash (connected with [`ServerTrust::Pinned`]). Send secrets only after this succeeded.
    pub async fn pinned_bundle(
        &self,
        td: &wire::TrustDomain,
        pin: &str,
        wall: wire::UnixTime,
        timeout: Duration,
    ) -> Result<wire::Bundle, ApiClientError> {
        self.same_trust_domain(td)?;
        let bundle = match self.call(&ApiRequest::Bundle, timeout).await? {
            ApiResponse::Bundle(b) => b,
            other => {
                return Err(ApiClientError::Protocol(format!(
                    "unexpected answer {other:?}"
                )))
            }
        };
        let got = attest::bundle::bundle_sha256(&bundle);
        if got != pin {
            return Err(ApiClientError::Pin(format!(
                "the server's bundle hash is {got}, the pinned one is {pin}: either the cluster rotated a CA since the hash was taken (take a new one with `sigil bundle show --hash`) or this is not the cluster you meant"
            )));
        }
        super::tls::TrustStore::new(td.clone(), bundle.clone())
            .verify_server_peer(&self.server_chain(), wall)
            .map_err(|e| {
                ApiClientError::Pin(format!(
                    "the server's certificate does not verify against the pinned bundle ({e})"
                ))
            })?;
        Ok(bundle)
    }

    /// Refuses a server whose certificate names another trust domain than `td`, naming both
    /// (before any bundle check, whose failure would not say why).
    fn same_trust_domain(&self, td: &wire::TrustDomain) -> Result<(), ApiClientError> {
        let claimed = self
            .server_chain()
            .first()
            .and_then(|leaf| attest::x509::claimed_spiffe_id(leaf).ok());
        match claimed {
            Some(id) if id.trust_domain() != *td => Err(ApiClientError::Pin(format!(
                "the server at {} is in trust domain {}, not {td}: set trust_domain to the servers' trust domain",
                self.addr(),
                id.trust_domain()
            ))),
            _ => Ok(()),
        }
    }

    /// The trust domain's bundle as this server serves it, once the server passed the check of
    /// a newcomer's `anchors` (connected with [`ServerTrust::Pinned`]): its certificate verifies
    /// against the stored bundle, or — failing that — the bundle it serves has the pinned hash
    /// and its certificate verifies against that ([`ApiClient::pinned_bundle`]). Send proofs and
    /// secrets only after this succeeded.
    pub async fn anchored_bundle(
        &self,
        td: &wire::TrustDomain,
        anchors: &FirstContact,
        wall: wire::UnixTime,
        timeout: Duration,
    ) -> Result<wire::Bundle, ApiClientError> {
        self.same_trust_domain(td)?;
        let mut why = Vec::new();
        if let Some(stored) = &anchors.stored {
            match super::tls::TrustStore::new(td.clone(), stored.clone())
                .verify_server_peer(&self.server_chain(), wall)
            {
                Ok(_) => {
                    return match self.call(&ApiRequest::Bundle, timeout).await? {
                        ApiResponse::Bundle(b) => Ok(b),
                        other => Err(ApiClientError::Protocol(format!(
                            "unexpected answer {other:?}"
                        ))),
                    }
                }
                Err(e) => why.push(format!(
                    "the server's certificate does not verify against the agent's stored bundle ({e})"
                )),
            }
        }
        match &anchors.pin {
            Some(pin) if why.is_empty() => self.pinned_bundle(td, pin, wall, timeout).await,
            Some(pin) => self
                .pinned_bundle(td, pin, wall, timeout)
                .await
                .map_err(|e| {
                    why.push(e.to_string());
                    ApiClientError::Pin(why.join("; "))
                }),
            None => {
                why.push("no bundle_sha256 is configured to check it otherwise (take one with `sigil bundle show --hash`)".into());
                Err(ApiClientError::Pin(why.join("; ")))
            }
        }
    }

    /// Closes the connection and the local endpoint.
    pub async fn close(&self) {
        self.conn.close(VarInt::from_u32(0), b"bye");
        self.endpoint.close(VarInt::from_u32(0), b"bye");
        self.endpoint.wait_idle().await;
    }
}

fn decode_response(frame: &[u8]) -> Result<ApiResponse, ApiClientError> {
    match codec::decode::<ApiResponse>(frame) {
        Ok(ApiResponse::Error(e)) => Err(ApiClientError::Api(e)),
        Ok(r) => Ok(r),
        Err(e) => Err(ApiClientError::Protocol(e.to_string())),
    }
}

/// The responses of a streaming request.
#[derive(Debug)]
pub struct ApiStream {
    recv: RecvStream,
}

impl ApiStream {
    /// The next response; `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<ApiResponse, ApiClientError>> {
        match read_frame(&mut self.recv).await {
            Ok(Some(frame)) => Some(decode_response(&frame)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl<T: wire::Transport> ApiHandler for crate::service::NodeService<T> {
    fn handle(
        &self,
        caller: Caller,
        request: ApiRequest,
        out: mpsc::Sender<ApiResponse>,
    ) -> BoxFuture {
        let service = self.clone();
        Box::pin(async move {
            service
                .handle(&caller.chain, caller.exporter.as_ref(), request, out)
                .await
        })
    }
}
