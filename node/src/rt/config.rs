//! `server.toml`: the configuration of one server node. Every option has a default, listed here
//! and in the README; unknown options are an error (a typo must not silently change behaviour).
//!
//! ```toml
//! trust_domain = "example.org"        # required
//! node_id = 1                         # required, unique per server node, > 0
//! data_dir = "/var/lib/sigil"         # default; Raft log and state live in DATA_DIR/raft
//! bind = "127.0.0.1:8443"             # default; QUIC address for node↔node and agent traffic
//! admin_socket = "/run/sigil/admin.sock"  # default (mode 0600)
//! advertise = "<bind>"                # default: bind; the address other nodes and agents dial
//! bootstrap = false                   # true on the first node of a new trust domain only
//! ca_ttl = "24h"                      # lifetime of this node's CA and JWT keys
//! x509_svid_ttl = "1h"                # default X.509-SVID lifetime
//! jwt_svid_ttl = "5m"                 # default JWT-SVID lifetime
//! agent_svid_ttl = "1h"               # agent SVID lifetime (agents renew at half life)
//! staleness_max = "24h"               # stop issuing after this long without a leader
//!
//! [join]                              # joining an existing cluster (not with bootstrap)
//! token = "…"                         # from `sigil token generate --server` on a member
//! seeds = ["10.0.0.1:8443"]           # members' QUIC addresses, tried in order
//! bundle_sha256 = "…"                 # from the same command (`sigil bundle show --hash`)
//!
//! [x509pop]                           # x509pop agent attestation (absent: disabled)
//! ca_bundle = "/etc/sigil/agent-cas.pem"  # PEM, one or more CA certificates agents chain to
//!
//! [tpm]                               # TPM 2.0 agent attestation (absent: disabled)
//! ek_ca_bundle = "/etc/sigil/tpm-cas.pem" # PEM: TPM manufacturer CAs EK certificates chain to
//! ek_hashes = ["<sha256 hex>", …]     # and/or EKs trusted by hash (without a certificate)
//!
//! [limits]                            # per source IP address, on the QUIC port (defaults)
//! connections_per_source = 64         # concurrent QUIC connections (Raft and node API)
//! requests_in_flight_per_source = 512 # node API requests being answered
//! unauthenticated_per_sec = 20        # node API requests without a client certificate
//! unauthenticated_burst = 40          #   (bundle, attestation), sustained rate and burst
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attest::x509pop::{certificates_from_pem, check_ca, X509PopKey};
use serde::Deserialize;
use wire::TrustDomain;
use zeroize::Zeroizing;

use crate::Error;

/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "/var/lib/sigil";
/// Default QUIC bind address.
pub const BIND_DEFAULT: &str = "127.0.0.1:8443";
/// Shortest `ca_ttl` (short ones are for tests and demos of rotation).
pub const CA_TTL_MIN: Duration = Duration::from_secs(120);
/// Shortest `agent_svid_ttl` (short ones are for tests of agent expiry).
pub const AGENT_SVID_TTL_MIN: Duration = Duration::from_secs(10);
/// Largest config file accepted, in bytes.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

/// How a new node joins an existing cluster (`[join]` in `server.toml`).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinConfig {
    /// The single-use server join token (a secret: never logged).
    pub token: String,
    /// Members' QUIC addresses, tried in order.
    pub seeds: Vec<SocketAddr>,
    /// The pinned bundle hash ([`attest::bundle::bundle_sha256`]).
    pub bundle_sha256: String,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("token", &"<redacted>")
            .field("seeds", &self.seeds)
            .field("bundle_sha256", &self.bundle_sha256)
            .finish()
    }
}

/// A parsed, checked `server.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFileConfig {
    /// This node's trust domain.
    pub trust_domain: TrustDomain,
    /// This node's Raft ID (> 0).
    pub node_id: u64,
    /// Where Raft state lives.
    pub data_dir: PathBuf,
    /// QUIC address.
    pub bind: SocketAddr,
    /// The address other nodes and agents dial (default: `bind`).
    pub advertise: SocketAddr,
    /// Joining an existing cluster.
    pub join: Option<JoinConfig>,
    /// Admin API socket.
    pub admin_socket: PathBuf,
    /// Initialize a new cluster with this node as its only member (first node only).
    pub bootstrap: bool,
    /// Lifetime of this node's CA and JWT keys.
    pub ca_ttl: Duration,
    /// Default X.509-SVID lifetime.
    pub x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// Agent SVID lifetime.
    pub agent_svid_ttl: Duration,
    /// Stop issuing after this long without leader contact.
    pub staleness_max: Duration,
    /// `[x509pop] ca_bundle`: the PEM file of CAs trusted for x509pop agent attestation (`None`:
    /// x509pop disabled). Loaded with [`load_x509pop_cas`] at start-up.
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// `[tpm]`: TPM agent attestation (`None`: disabled).
    pub tpm: Option<ServerTpmConfig>,
    /// `[limits]`: per source address on the QUIC port.
    pub limits: crate::rt::limits::SourceLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections_per_source: Option<u32>,
    requests_in_flight_per_source: Option<u32>,
    unauthenticated_per_sec: Option<u32>,
    unauthenticated_burst: Option<u32>,
}

/// `[tpm]` of `server.toml`: which endorsement keys the server trusts. An agent's EK is trusted
/// when its certificate chains to a CA of `ek_ca_bundle`, or when its hash is in `ek_hashes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTpmConfig {
    /// PEM file of TPM manufacturer CA certificates (roots and intermediates).
    pub ek_ca_bundle: Option<PathBuf>,
    /// Allow-listed EK hashes: lowercase hex SHA-256 of the EK public key's DER
    /// SubjectPublicKeyInfo ([`attest::tpm::EkPublic::hash`]).
    pub ek_hashes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTpm {
    ek_ca_bundle: Option<PathBuf>,
    #[serde(default)]
    ek_hashes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerX509Pop {
    ca_bundle: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    trust_domain: String,
    node_id: u64,
    data_dir: Option<PathBuf>,
    bind: Option<String>,
    advertise: Option<String>,
    join: Option<RawJoin>,
    admin_socket: Option<PathBuf>,
    bootstrap: Option<bool>,
    ca_ttl: Option<String>,
    x509_svid_ttl: Option<String>,
    jwt_svid_ttl: Option<String>,
    agent_svid_ttl: Option<String>,
    staleness_max: Option<String>,
    x509pop: Option<RawServerX509Pop>,
    tpm: Option<RawServerTpm>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoin {
    token: String,
    seeds: Vec<String>,
    bundle_sha256: String,
}

fn socket_addr(path: &Path, name: &str, text: &str) -> Result<SocketAddr, Error> {
    text.parse()
        .map_err(|_| config_error(path, format!("{name}: {text:?} is not an IP:port address")))
}

fn config_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {detail}", path.display()))
}

fn duration(
    path: &Path,
    name: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, Error> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration_secs(&text)
            .map(Duration::from_secs)
            .map_err(|e| config_error(path, format!("{name}: {e}"))),
    }
}

impl ServerFileConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<ServerFileConfig, Error> {
        let meta = std::fs::metadata(path).map_err(|e| config_error(path, e))?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(config_error(path, "larger than 1 MiB"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e))?;
        ServerFileConfig::parse(path, &text)
    }

    /// Parses and checks `text` (`path` only labels errors).
    pub fn parse(path: &Path, text: &str) -> Result<ServerFileConfig, Error> {
        let raw: Raw = toml::from_str(text).map_err(|e| config_error(path, e.message()))?;
        let trust_domain: TrustDomain = raw
            .trust_domain
            .parse()
            .map_err(|e| config_error(path, format!("trust_domain: {e}")))?;
        if raw.node_id == 0 {
            return Err(config_error(path, "node_id must be greater than 0"));
        }
        let bind_text = raw.bind.unwrap_or_else(|| BIND_DEFAULT.to_owned());
        let bind = socket_addr(path, "bind", &bind_text)?;
        let advertise = match &raw.advertise {
            Some(text) => socket_addr(path, "advertise", text)?,
            None if bind.ip().is_unspecified() => {
                return Err(config_error(
                    path,
                    "advertise: required when bind is a wildcard address (set the address other nodes dial)",
                ))
            }
            None => bind,
        };
        let join = match raw.join {
            None => None,
            Some(j) => {
                if raw.bootstrap == Some(true) {
                    return Err(config_error(
                        path,
                        "[join] and bootstrap = true exclude each other: a node either starts a new trust domain or joins one",
                    ));
                }
                if j.token.is_empty() || j.token.len() > wire::api::TOKEN_BYTES_MAX {
                    return Err(config_error(path, "join.token: missing or too long"));
                }
                if j.seeds.is_empty() {
                    return Err(config_error(
                        path,
                        "join.seeds: list at least one member's address",
                    ));
                }
                let seeds = j
                    .seeds
                    .iter()
                    .map(|s| socket_addr(path, "join.seeds", s))
                    .collect::<Result<Vec<_>, _>>()?;
                let hash = bundle_hash(path, "join.bundle_sha256", &j.bundle_sha256)?;
                Some(JoinConfig {
                    token: j.token,
                    seeds,
                    bundle_sha256: hash,
                })
            }
        };
        let cfg = ServerFileConfig {
            trust_domain,
            node_id: raw.node_id,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)),
            bind,
            advertise,
            join,
            admin_socket: raw
                .admin_socket
                .unwrap_or_else(|| PathBuf::from(crate::rt::admin::ADMIN_SOCKET_DEFAULT)),
            bootstrap: raw.bootstrap.unwrap_or(false),
            ca_ttl: duration(path, "ca_ttl", raw.ca_ttl, attest::keyring::KEY_TTL_DEFAULT)?,
            x509_svid_ttl: duration(
                path,
                "x509_svid_ttl",
                raw.x509_svid_ttl,
                attest::x509::X509_SVID_TTL_DEFAULT,
            )?,
            jwt_svid_ttl: duration(
                path,
                "jwt_svid_ttl",
                raw.jwt_svid_ttl,
                crate::actors::issuer::JWT_SVID_TTL_DEFAULT,
            )?,
            agent_svid_ttl: duration(
                path,
                "agent_svid_ttl",
                raw.agent_svid_ttl,
                crate::actors::issuer::AGENT_SVID_TTL_DEFAULT,
            )?,
            staleness_max: duration(
                path,
                "staleness_max",
                raw.staleness_max,
                crate::actors::issuer::STALENESS_MAX_DEFAULT,
            )?,
            x509pop_ca_bundle: raw.x509pop.map(|x| x.ca_bundle),
            tpm: match raw.tpm {
                None => None,
                Some(t) => {
                    if t.ek_ca_bundle.is_none() && t.ek_hashes.is_empty() {
                        return Err(config_error(
                            path,
                            "[tpm]: set ek_ca_bundle (TPM manufacturer CAs) and/or ek_hashes (trusted EKs), or leave [tpm] out",
                        ));
                    }
                    let ek_hashes = t
                        .ek_hashes
                        .iter()
                        .map(|h| sha256_hex_option(path, "tpm.ek_hashes", h))
                        .collect::<Result<Vec<_>, _>>()?;
                    Some(ServerTpmConfig {
                        ek_ca_bundle: t.ek_ca_bundle,
                        ek_hashes,
                    })
                }
            },
            limits: limits(path, raw.limits)?,
        };
        if cfg.ca_ttl < CA_TTL_MIN {
            return Err(config_error(path, "ca_ttl must be at least 2m"));
        }
        if cfg.x509_svid_ttl.is_zero() || cfg.jwt_svid_ttl.is_zero() {
            return Err(config_error(path, "SVID TTLs must be greater than 0"));
        }
        if cfg.agent_svid_ttl < AGENT_SVID_TTL_MIN {
            return Err(config_error(path, "agent_svid_ttl must be at least 10s"));
        }
        if cfg.x509_svid_ttl > cfg.ca_ttl / 6 {
            tracing::warn!(
                x509_svid_ttl_secs = cfg.x509_svid_ttl.as_secs(),
                ca_ttl_secs = cfg.ca_ttl.as_secs(),
                "x509_svid_ttl is longer than ca_ttl/6: SVIDs minted late in a CA's life are cut short at the CA's expiry; lower x509_svid_ttl or raise ca_ttl"
            );
        }
        Ok(cfg)
    }
}

/// `[limits]` with its defaults; every limit must be at least 1.
fn limits(path: &Path, raw: Option<RawLimits>) -> Result<crate::rt::limits::SourceLimits, Error> {
    let d = crate::rt::limits::SourceLimits::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let l = crate::rt::limits::SourceLimits {
        connections_per_source: raw
            .connections_per_source
            .unwrap_or(d.connections_per_source),
        requests_in_flight_per_source: raw
            .requests_in_flight_per_source
            .unwrap_or(d.requests_in_flight_per_source),
        unauthenticated_per_sec: raw
            .unauthenticated_per_sec
            .unwrap_or(d.unauthenticated_per_sec),
        unauthenticated_burst: raw.unauthenticated_burst.unwrap_or(d.unauthenticated_burst),
    };
    let all = [
        l.connections_per_source,
        l.requests_in_flight_per_source,
        l.unauthenticated_per_sec,
        l.unauthenticated_burst,
    ];
    if all.contains(&0) {
        return Err(config_error(
            path,
            "[limits]: every limit must be at least 1 (0 would refuse everyone)",
        ));
    }
    Ok(l)
}

/// Reads a small file whole (at most [`CONFIG_BYTES_MAX`]); errors name the file.
fn read_small(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let fail = |detail: String| Error::Config(format!("{what} {}: {detail}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > CONFIG_BYTES_MAX {
        return Err(fail("larger than 1 MiB".into()));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| fail(e.to_string()))
}

/// Loads the `[x509pop] ca_bundle` file: PEM, one or more CA certificates (DER, in file order),
/// each checked to be usable as an x509pop CA. Errors name the file.
pub fn load_x509pop_cas(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    const WHAT: &str = "x509pop ca_bundle";
    let text = read_small(path, WHAT)?;
    let fail = |detail: String| Error::Config(format!("{WHAT} {}: {detail}", path.display()));
    let cas = certificates_from_pem(&text).map_err(|e| fail(e.to_string()))?;
    for (i, ca) in cas.iter().enumerate() {
        check_ca(ca).map_err(|e| fail(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(cas)
}

/// Loads the `[tpm] ek_ca_bundle` file: PEM, one or more TPM manufacturer CA certificates (DER,
/// in file order), each checked to be usable as a CA. Errors name the file.
pub fn load_tpm_ek_cas(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    const WHAT: &str = "tpm ek_ca_bundle";
    let text = read_small(path, WHAT)?;
    let fail = |detail: String| Error::Config(format!("{WHAT} {}: {detail}", path.display()));
    let cas = certificates_from_pem(&text).map_err(|e| fail(e.to_string()))?;
    for (i, ca) in cas.iter().enumerate() {
        check_ca(ca).map_err(|e| fail(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(cas)
}

/// `[x509pop]` of `agent.toml`: where the agent's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentX509PopConfig {
    /// PEM: the agent's certificate first, then any intermediates up to (not including) the CA.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` for P-256, or PKCS#1
    /// `RSA PRIVATE KEY`).
    pub key: PathBuf,
}

/// A loaded x509pop credential: the chain to present and the key to sign with.
pub struct X509PopCredential {
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's private key.
    pub key: X509PopKey,
}

impl std::fmt::Debug for X509PopCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509PopCredential")
            .field("certificates", &self.chain.len())
            .field("fingerprint", &self.fingerprint())
            .field("key", &self.key)
            .finish()
    }
}

impl X509PopCredential {
    /// The leaf certificate's fingerprint (the last segment of the agent ID).
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|leaf| attest::x509pop::fingerprint(leaf))
            .unwrap_or_default()
    }
}

/// The private key of the first key block of PEM `text` (PKCS#8, SEC1 or PKCS#1). The decoded
/// bytes are wiped when dropped; errors never contain key material.
fn x509pop_key_from_pem(text: &[u8]) -> Result<X509PopKey, String> {
    use base64::Engine as _;
    let text = std::str::from_utf8(text).map_err(|_| "not a PEM text file".to_owned())?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let kind = match label {
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => label,
            "ENCRYPTED PRIVATE KEY" => {
                return Err("encrypted private keys are not supported: store it unencrypted, mode 0600 (e.g. `openssl pkey -in enc.key -out agent.key`)".into())
            }
            _ => continue, // e.g. EC PARAMETERS before an EC PRIVATE KEY
        };
        let mut b64 = Zeroizing::new(String::with_capacity(text.len()));
        let mut ended = false;
        for body in lines.by_ref() {
            let body = body.trim();
            if body.starts_with("-----END ") {
                ended = true;
                break;
            }
            b64.push_str(body);
        }
        if !ended {
            return Err(format!("the {kind} block has no END line"));
        }
        let mut der = Zeroizing::new(Vec::with_capacity(b64.len()));
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64.as_bytes(), &mut der)
            .map_err(|_| format!("the {kind} block is not valid base64"))?;
        let key = match kind {
            "PRIVATE KEY" => X509PopKey::from_pkcs8(&der),
            "EC PRIVATE KEY" => X509PopKey::from_sec1(&der),
            _ => X509PopKey::from_pkcs1(&der),
        };
        return key.map_err(|e| e.to_string());
    }
    Err("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block".into())
}

impl AgentX509PopConfig {
    /// Loads the certificate chain and the key, and checks that the key belongs to the first
    /// certificate. Errors name the file and never contain key material.
    pub fn load(&self) -> Result<X509PopCredential, Error> {
        let certs = read_small(&self.cert, "x509pop cert")?;
        let chain = certificates_from_pem(&certs)
            .map_err(|e| Error::Config(format!("x509pop cert {}: {e}", self.cert.display())))?;
        if chain.len() > wire::api::X509POP_CHAIN_CERTS_MAX {
            return Err(Error::Config(format!(
                "x509pop cert {}: at most {} certificates (the agent's, then intermediates; leave the CA out)",
                self.cert.display(),
                wire::api::X509POP_CHAIN_CERTS_MAX
            )));
        }
        let key_text = read_small(&self.key, "x509pop key")?;
        let key = x509pop_key_from_pem(&key_text)
            .map_err(|e| Error::Config(format!("x509pop key {}: {e}", self.key.display())))?;
        let leaf = chain.first().ok_or_else(|| {
            Error::Config(format!(
                "x509pop cert {}: no certificate",
                self.cert.display()
            ))
        })?;
        key.matches(leaf).map_err(|e| {
            Error::Config(format!(
                "x509pop key {} and cert {}: {e}",
                self.key.display(),
                self.cert.display()
            ))
        })?;
        Ok(X509PopCredential { chain, key })
    }
}

/// Default agent data directory.
pub const AGENT_DATA_DIR_DEFAULT: &str = "/var/lib/sigil-agent";
/// Default Workload API socket.
pub const AGENT_SOCKET_DEFAULT: &str = "/run/sigil/agent.sock";
/// The agent admin socket's file name in the data dir unless `admin_socket` says otherwise.
pub const AGENT_ADMIN_SOCKET_NAME: &str = "admin.sock";

/// A parsed, checked `agent.toml`:
///
/// ```toml
/// trust_domain = "example.org"            # required
/// servers = ["10.0.0.1:8443", "…"]        # required: server nodes' QUIC addresses
/// data_dir = "/var/lib/sigil-agent"       # default; the agent's key and SVID (0600)
/// socket_path = "/run/sigil/agent.sock"   # default; the Workload API (mode 0666)
/// admin_socket = "/var/lib/sigil-agent/admin.sock"  # default DATA_DIR/admin.sock; `sigil agent health` (0600)
/// join_token = "…"                        # first start: from `sigil token generate`
/// bundle_sha256 = "…"                     # first contact: from `sigil bundle show --hash`
///
/// [x509pop]                               # instead of join_token: x509pop attestation
/// cert = "/etc/sigil/agent.pem"           # the agent's certificate, then intermediates
/// key = "/etc/sigil/agent.key"            # its private key (PKCS#8, or SEC1 P-256, or PKCS#1)
///
/// [tpm]                                   # instead: TPM 2.0 attestation (build with --features tpm)
/// tcti = "device:/dev/tpmrm0"             # default; or "swtpm:host=127.0.0.1,port=2321"
/// pcrs = [0, 7]                           # default; SHA-256 PCRs to quote (0 to 23)
/// ek = "rsa"                              # default; or "ecc": which EK (RSA 2048 / ECC P-256)
/// ```
///
/// Exactly one attestation method may be configured. The first contact with a server is
/// checked against `bundle_sha256` or, when the data dir holds one, the last bundle the agent
/// stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentFileConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Server nodes, any order (the agent prefers the lowest round-trip time).
    pub servers: Vec<SocketAddr>,
    /// Where the agent keeps its key and SVID.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    pub socket_path: PathBuf,
    /// The agent admin socket (`sigil agent health`).
    pub admin_socket: PathBuf,
    /// A single-use agent join token (a secret: never logged).
    pub join_token: Option<String>,
    /// The pinned bundle hash for the first contact.
    pub bundle_sha256: Option<String>,
    /// x509pop attestation (instead of a join token).
    pub x509pop: Option<AgentX509PopConfig>,
    /// TPM attestation (instead of a join token or x509pop).
    pub tpm: Option<AgentTpmConfig>,
}

/// The default TCTI: the kernel's TPM resource manager.
pub const TPM_TCTI_DEFAULT: &str = "device:/dev/tpmrm0";
/// The PCRs quoted by default (firmware and Secure Boot policy).
pub const TPM_PCRS_DEFAULT: [u8; 2] = [0, 7];
/// Longest TCTI string.
pub const TPM_TCTI_BYTES_MAX: usize = 256;

/// Which endorsement key the agent uses (the TCG EK Credential Profile's low-range templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkAlgorithm {
    /// RSA 2048 (template L-1; certificate at NV index 0x01c00002).
    Rsa,
    /// ECC NIST P-256 (template L-2; certificate at NV index 0x01c0000a).
    Ecc,
}

/// `[tpm]` of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTpmConfig {
    /// How to reach the TPM (a tpm2-tss TCTI string).
    pub tcti: String,
    /// The SHA-256 PCRs to quote, ascending, without duplicates.
    pub pcrs: Vec<u8>,
    /// Which EK.
    pub ek: EkAlgorithm,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentTpm {
    tcti: Option<String>,
    pcrs: Option<Vec<i64>>,
    ek: Option<String>,
}

impl RawAgentTpm {
    fn check(self, path: &Path) -> Result<AgentTpmConfig, Error> {
        let tcti = self.tcti.unwrap_or_else(|| TPM_TCTI_DEFAULT.to_owned());
        if tcti.is_empty() || tcti.len() > TPM_TCTI_BYTES_MAX || tcti.chars().any(char::is_control)
        {
            return Err(config_error(
                path,
                "tpm.tcti: e.g. \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\"",
            ));
        }
        let pcrs = match self.pcrs {
            None => TPM_PCRS_DEFAULT.to_vec(),
            Some(list) => {
                let mut pcrs = list
                    .iter()
                    .map(|p| {
                        u8::try_from(*p)
                            .ok()
                            .filter(|p| *p <= attest::tpm::PCR_INDEX_MAX)
                            .ok_or_else(|| {
                                config_error(
                                    path,
                                    format!("tpm.pcrs: {p} is not a PCR index (0 to 23)"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                pcrs.sort_unstable();
                pcrs.dedup();
                if pcrs.is_empty() {
                    return Err(config_error(path, "tpm.pcrs: list at least one PCR"));
                }
                pcrs
            }
        };
        let ek = match self.ek.as_deref() {
            None | Some("rsa") => EkAlgorithm::Rsa,
            Some("ecc") => EkAlgorithm::Ecc,
            Some(other) => {
                return Err(config_error(
                    path,
                    format!("tpm.ek: {other:?} is neither \"rsa\" nor \"ecc\""),
                ))
            }
        };
        if !cfg!(feature = "tpm") {
            return Err(config_error(
                path,
                "[tpm]: this sigil was built without TPM support; build with --features tpm (needs libtss2-dev)",
            ));
        }
        Ok(AgentTpmConfig { tcti, pcrs, ek })
    }
}

impl std::fmt::Debug for AgentFileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentFileConfig")
            .field("trust_domain", &self.trust_domain)
            .field("servers", &self.servers)
            .field("data_dir", &self.data_dir)
            .field("socket_path", &self.socket_path)
            .field("admin_socket", &self.admin_socket)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("bundle_sha256", &self.bundle_sha256)
            .field("x509pop", &self.x509pop)
            .field("tpm", &self.tpm)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentX509Pop {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    trust_domain: String,
    servers: Vec<String>,
    data_dir: Option<PathBuf>,
    socket_path: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    join_token: Option<String>,
    bundle_sha256: Option<String>,
    x509pop: Option<RawAgentX509Pop>,
    tpm: Option<RawAgentTpm>,
}

/// A SHA-256 in hex (any case), lowercased; errors say which option.
fn sha256_hex_option(path: &Path, name: &str, text: &str) -> Result<String, Error> {
    let hash = text.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(config_error(
            path,
            format!(
                "{name}: {:?} is not 64 hex characters (a SHA-256)",
                text.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(hash)
}

fn bundle_hash(path: &Path, name: &str, text: &str) -> Result<String, Error> {
    let hash = text.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(config_error(
            path,
            format!("{name}: 64 hex characters, from `sigil token generate` or `sigil bundle show --hash`"),
        ));
    }
    Ok(hash)
}

impl AgentFileConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentFileConfig, Error> {
        let meta = std::fs::metadata(path).map_err(|e| config_error(path, e))?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(config_error(path, "larger than 1 MiB"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e))?;
        AgentFileConfig::parse(path, &text)
    }

    /// Parses and checks `text` (`path` only labels errors).
    pub fn parse(path: &Path, text: &str) -> Result<AgentFileConfig, Error> {
        let raw: RawAgent = toml::from_str(text).map_err(|e| config_error(path, e.message()))?;
        let trust_domain: TrustDomain = raw
            .trust_domain
            .parse()
            .map_err(|e| config_error(path, format!("trust_domain: {e}")))?;
        if raw.servers.is_empty() {
            return Err(config_error(
                path,
                "servers: list at least one server node's address",
            ));
        }
        let servers = raw
            .servers
            .iter()
            .map(|s| socket_addr(path, "servers", s))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = &raw.join_token {
            if t.is_empty() || t.len() > wire::api::TOKEN_BYTES_MAX {
                return Err(config_error(path, "join_token: empty or too long"));
            }
        }
        let bundle_sha256 = match &raw.bundle_sha256 {
            Some(h) => Some(bundle_hash(path, "bundle_sha256", h)?),
            None => None,
        };
        let methods = [
            raw.join_token.as_ref().map(|_| "join_token"),
            raw.x509pop.as_ref().map(|_| "[x509pop]"),
            raw.tpm.as_ref().map(|_| "[tpm]"),
        ];
        let methods: Vec<&str> = methods.into_iter().flatten().collect();
        if methods.len() > 1 {
            return Err(config_error(
                path,
                format!(
                    "{} are {} set: configure one attestation method",
                    methods.join(" and "),
                    if methods.len() == 2 { "both" } else { "all" }
                ),
            ));
        }
        let tpm = match raw.tpm {
            Some(t) => Some(t.check(path)?),
            None => None,
        };
        if raw.join_token.is_some() && bundle_sha256.is_none() {
            return Err(config_error(
                path,
                "bundle_sha256: required with join_token (the agent checks the cluster before it sends the token)",
            ));
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(AGENT_DATA_DIR_DEFAULT));
        Ok(AgentFileConfig {
            trust_domain,
            servers,
            admin_socket: raw
                .admin_socket
                .unwrap_or_else(|| data_dir.join(AGENT_ADMIN_SOCKET_NAME)),
            data_dir,
            socket_path: raw
                .socket_path
                .unwrap_or_else(|| PathBuf::from(AGENT_SOCKET_DEFAULT)),
            join_token: raw.join_token,
            bundle_sha256,
            x509pop: raw.x509pop.map(|x| AgentX509PopConfig {
                cert: x.cert,
                key: x.key,
            }),
            tpm,
        })
    }
}

/// Parses a duration: `300`, `300s`, `5m`, `1h`, `2d`, or a sum such as `1h30m`.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {:?}: use a number with a unit, like 300s, 5m, 1h or 1h30m",
            text.chars().take(64).collect::<String>()
        )
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
