//! Two workloads that authenticate each other with their SPIFFE identities, using nothing of
//! sigil but the standard Workload API its agent serves (`SPIFFE_ENDPOINT_SOCKET`).
//!
//! ```text
//! greeter server --listen 127.0.0.1:7000 [--allow SPIFFE_ID]... [--svid SPIFFE_ID]
//! greeter client --connect 127.0.0.1:7000 --server-id SPIFFE_ID [--svid SPIFFE_ID]
//! ```
//!
//! - **Mutual TLS with X.509-SVIDs**: each side presents its current X.509-SVID (kept fresh by
//!   the `spiffe` crate's `X509Source`, so rotation needs no restart) and verifies the other's
//!   chain against the bundle of the peer's trust domain with [`SpiffeVerifier`] — rustls with
//!   webpki for the path, no DNS names: the peer is identified by the SPIFFE ID in its URI SAN,
//!   and authorized by that ID (the client wants exactly `--server-id`; the server accepts the
//!   `--allow` IDs, or any ID of its own trust domain when none is given).
//! - **A JWT-SVID bearer token** on top: the client fetches a JWT-SVID whose audience is the
//!   server's SPIFFE ID and sends it as `BEARER <token>`; the server validates it through its
//!   own Workload API (`ValidateJWTSVID`) with its own SPIFFE ID as the audience.
//!
//! Each side prints the peer's SPIFFE ID (`mTLS peer: …`); the server also prints the JWT
//! subject (`JWT-SVID subject: …`) and answers `hello <peer> (JWT-SVID subject <sub>)`.
//! `--svid` picks one of several SVIDs the workload is entitled to (default: the first).
//! Run it against `sigil dev` or any SPIFFE Workload API; see examples/README.md.

// An example program, not node logic: it reads the clock for certificate validity and runs
// blocking TLS on threads.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spiffe::{SpiffeId, WorkloadApiClient, X509Source, X509Svid};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Longest wait for the Workload API, a connection or a line from the peer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `BEARER …` line the server reads.
const LINE_MAX: u64 = 16 * 1024;

fn usage() -> ! {
    eprintln!(
        "usage:\n  greeter server --listen ADDR [--allow SPIFFE_ID]... [--svid SPIFFE_ID] [--once]\n  \
         greeter client --connect ADDR --server-id SPIFFE_ID [--svid SPIFFE_ID]\n\
         The Workload API socket comes from SPIFFE_ENDPOINT_SOCKET (unix:///path)."
    );
    std::process::exit(2)
}

#[derive(Debug, Default)]
struct Args {
    mode: String,
    listen: Option<String>,
    connect: Option<String>,
    server_id: Option<SpiffeId>,
    allow: Vec<SpiffeId>,
    svid: Option<SpiffeId>,
    once: bool,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        mode: args.next().unwrap_or_else(|| usage()),
        ..Args::default()
    };
    let id = |v: Option<String>| -> Result<SpiffeId, Error> {
        let v = v.ok_or("a flag is missing its value")?;
        SpiffeId::new(&v).map_err(|e| format!("{v:?} is not a SPIFFE ID: {e}").into())
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => parsed.listen = args.next(),
            "--connect" => parsed.connect = args.next(),
            "--server-id" => parsed.server_id = Some(id(args.next())?),
            "--allow" => parsed.allow.push(id(args.next())?),
            "--svid" => parsed.svid = Some(id(args.next())?),
            "--once" => parsed.once = true,
            "-h" | "--help" => usage(),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(parsed)
}

/// Picks the SVID with the wanted SPIFFE ID (the first one when none is wanted).
#[derive(Debug)]
struct PickById(Option<SpiffeId>);

impl spiffe::x509_source::SvidPicker for PickById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        match &self.0 {
            None => (!svids.is_empty()).then_some(0),
            Some(want) => svids.iter().position(|s| s.spiffe_id() == want),
        }
    }
}

/// Who may be on the other end.
#[derive(Debug, Clone)]
enum Authorize {
    /// Exactly this ID.
    Exactly(SpiffeId),
    /// One of these IDs.
    OneOf(Vec<SpiffeId>),
    /// Any ID of this trust domain.
    TrustDomain(spiffe::TrustDomain),
}

impl Authorize {
    fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Authorize::Exactly(want) => id == want,
            Authorize::OneOf(ids) => ids.contains(id),
            Authorize::TrustDomain(td) => id.trust_domain() == td,
        }
    }
}

/// rustls peer verification for SPIFFE: the chain must lead to an authority in the bundle of
/// the peer's trust domain (from the X509Source, so bundle updates apply to new connections),
/// and the leaf's SPIFFE ID must be authorized. Used by both sides of mutual TLS.
#[derive(Debug)]
struct SpiffeVerifier {
    source: X509Source,
    authorize: Authorize,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SpiffeVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        let other = |e: String| rustls::Error::General(e);
        let id = spiffe::cert::spiffe_id_from_der(end_entity.as_ref())
            .map_err(|e| other(format!("the peer certificate is not an X.509-SVID: {e}")))?;
        let bundles = self
            .source
            .bundle_set()
            .map_err(|e| other(format!("no bundles from the Workload API: {e}")))?;
        let bundle = bundles
            .get(id.trust_domain())
            .ok_or_else(|| other(format!("no bundle for the peer's trust domain ({id})")))?;
        let roots: Vec<CertificateDer<'static>> = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let anchors = roots
            .iter()
            .map(webpki::anchor_from_trusted_cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| other(format!("bad authority in the bundle: {e}")))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| other(format!("bad peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| {
            other(format!(
                "{id}: the chain does not verify against its bundle: {e}"
            ))
        })?;
        if !self.authorize.allows(&id) {
            return Err(other(format!("{id} is not authorized here")));
        }
        Ok(id)
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>, // SVIDs carry no DNS name: the SPIFFE ID decides
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents the source's current SVID (rotated SVIDs are used from the next handshake on).
#[derive(Debug)]
struct CurrentSvid {
    source: X509Source,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl CurrentSvid {
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.source.svid().ok()?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().as_bytes().to_vec(),
        ));
        let signing = self.provider.key_provider.load_private_key(key).ok()?;
        Some(Arc::new(CertifiedKey::new(chain, signing)))
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The SPIFFE ID of the peer's leaf certificate after the handshake.
fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, Error> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or("the peer presented no certificate")?;
    Ok(spiffe::cert::spiffe_id_from_der(leaf.as_ref())?)
}

async fn x509_source(svid: Option<SpiffeId>) -> Result<X509Source, Error> {
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .map_err(|_| "set SPIFFE_ENDPOINT_SOCKET to the Workload API socket (unix:///path)")?;
    let source = tokio::time::timeout(
        TIMEOUT,
        X509Source::builder()
            .endpoint(&endpoint)
            .picker(PickById(svid.clone()))
            .build(),
    )
    .await
    .map_err(|_| format!("no X.509-SVID from {endpoint} within {TIMEOUT:?}"))?
    .map_err(|e| format!("the Workload API at {endpoint}: {e}"))?;
    let me = source.svid()?;
    if let Some(want) = svid {
        if me.spiffe_id() != &want {
            return Err(format!("this workload has no SVID for {want}").into());
        }
    }
    Ok(source)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn server(args: Args) -> Result<(), Error> {
    let listen = args.listen.clone().ok_or("server needs --listen ADDR")?;
    let source = x509_source(args.svid.clone()).await?;
    let me = source.svid()?.spiffe_id().clone();
    let authorize = if args.allow.is_empty() {
        Authorize::TrustDomain(me.trust_domain().clone())
    } else {
        Authorize::OneOf(args.allow.clone())
    };
    let provider = provider();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(SpiffeVerifier {
            source: source.clone(),
            authorize,
            provider: provider.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentSvid {
            source: source.clone(),
            provider,
        }));
    let config = Arc::new(config);
    let client = WorkloadApiClient::connect_env().await?;
    let listener = TcpListener::bind(&listen)?;
    println!(
        "greeter server {me} listening on {}",
        listener.local_addr()?
    );
    let runtime = tokio::runtime::Handle::current();
    let once = args.once;
    let served = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        for conn in listener.incoming() {
            let result = conn
                .map_err(Error::from)
                .and_then(|tcp| greet(tcp, &config, &client, &me, &runtime));
            if let Err(e) = &result {
                println!("refused a connection: {e}");
            }
            if once {
                return result;
            }
        }
        Ok(())
    });
    served.await?
}

/// Serves one connection: mTLS handshake, then one `BEARER <JWT-SVID>` line.
fn greet(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    client: &WorkloadApiClient,
    me: &SpiffeId,
    runtime: &tokio::runtime::Handle,
) -> Result<(), Error> {
    tcp.set_read_timeout(Some(TIMEOUT))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config.clone())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let peer = peer_id(tls.conn.peer_certificates())?;
    println!("mTLS peer: {peer}");
    let mut line = String::new();
    BufReader::new((&mut tls).take(LINE_MAX)).read_line(&mut line)?;
    let token = line
        .trim_end()
        .strip_prefix("BEARER ")
        .ok_or("expected a `BEARER <JWT-SVID>` line")?;
    let jwt = runtime.block_on(client.validate_jwt_token(me.to_string().as_str(), token));
    let reply = match jwt {
        Ok(jwt) => {
            println!("JWT-SVID subject: {} (audience {me})", jwt.spiffe_id());
            format!("hello {peer} (JWT-SVID subject {})\n", jwt.spiffe_id())
        }
        Err(e) => {
            println!("JWT-SVID refused: {e}");
            format!("JWT-SVID refused: {e}\n")
        }
    };
    tls.write_all(reply.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

async fn client(args: Args) -> Result<(), Error> {
    let addr = args.connect.clone().ok_or("client needs --connect ADDR")?;
    let server_id = args
        .server_id
        .clone()
        .ok_or("client needs --server-id SPIFFE_ID")?;
    let source = x509_source(args.svid.clone()).await?;
    let me = source.svid()?.spiffe_id().clone();
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // the SPIFFE verifier replaces DNS-name verification, not verification
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier {
            source: source.clone(),
            authorize: Authorize::Exactly(server_id.clone()),
            provider: provider.clone(),
        }))
        .with_client_cert_resolver(Arc::new(CurrentSvid { source, provider }));
    // A JWT-SVID for the server: its audience is the server's SPIFFE ID.
    let workload_api = WorkloadApiClient::connect_env().await?;
    let jwt = workload_api
        .fetch_jwt_svid([server_id.to_string()], Some(&me))
        .await?;
    let token = jwt.token().to_owned();
    let reply = tokio::task::spawn_blocking(move || -> Result<String, Error> {
        let tcp = TcpStream::connect(&addr)?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        let name = ServerName::try_from("greeter.invalid")?; // not checked, see SpiffeVerifier
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        let peer = peer_id(tls.conn.peer_certificates())?;
        println!("mTLS peer: {peer}");
        tls.write_all(format!("BEARER {token}\n").as_bytes())?;
        tls.flush()?;
        let mut reply = String::new();
        BufReader::new((&mut tls).take(LINE_MAX)).read_line(&mut reply)?;
        Ok(reply)
    })
    .await??;
    print!("server says: {reply}");
    if reply.starts_with("hello ") {
        Ok(())
    } else {
        Err("the server did not accept this workload".into())
    }
}

#[tokio::main]
async fn main() {
    let result = match parse_args() {
        Ok(args) if args.mode == "server" => server(args).await,
        Ok(args) if args.mode == "client" => client(args).await,
        Ok(_) => usage(),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("greeter: {e}");
        std::process::exit(1);
    }
}
