//! TPM 2.0 node attestation against swtpm (feature `tpm`; `cargo test -p node --features tpm
//! --test tpm`). Every test manufactures its own software TPM with `swtpm_setup` (an EK
//! certificate from a local CA made by `swtpm_localca`, or none), runs `swtpm socket` on free
//! loopback ports and kills it afterwards (a Drop guard). Without swtpm on PATH the tests
//! say they skipped (scripts/test.sh installs it).
//!
//! - swtpm activates what our software MakeCredential produced, for RSA and ECC EKs, and refuses
//!   it for another AK name;
//! - end to end with real `sigil server` and `sigil agent` processes: an agent whose EK
//!   certificate chains to the server's `ek_ca_bundle` attests and serves a workload; after PCR
//!   16 is extended it attests again to the same ID with another `tpm:pcr:16` selector; a TPM
//!   without a certificate attests by its allow-listed EK hash; a TPM whose EK certificate comes
//!   from another CA is refused; a replayed finish (another connection), an old quote under a
//!   fresh challenge and a wrong activated credential are refused;
//! - (ignored) the generator of the known-answer vectors in `attest::tpm`'s unit tests.

#![cfg(feature = "tpm")]
#![allow(clippy::disallowed_methods)] // tests run their own processes and wall-clock deadlines

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_tcp_port_pair, unix_now_secs, wait_for, Proc};

use node::rt::config::{AgentTpmConfig, EkAlgorithm};
use node::rt::tpm::AgentTpm;
use rand_core::SeedableRng;

/// Whether swtpm and swtpm_setup are installed (says so when not).
fn have_swtpm(test: &str) -> bool {
    // (`swtpm_setup --version` exits 1 on bookworm's 0.7.1: only check that it runs.)
    let ok = Command::new("swtpm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("swtpm_setup").arg("--help").output().is_ok();
    if !ok {
        eprintln!(
            "SKIPPED {test}: swtpm/swtpm_setup not on PATH (apt-get install swtpm swtpm-tools)"
        );
    }
    ok
}

/// Where `swtpm_localca` is (on PATH; Debian's swtpm-tools puts it in /usr/bin).
fn swtpm_localca() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("swtpm_localca"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/swtpm_localca"))
}

/// Manufactures a TPM in `dir/<name>-state` with `swtpm_setup`: EKs (RSA 2048 persisted, ECC), and
/// with `certs` EK + platform certificates from a local CA in `dir/ca` (created on first use,
/// shared by every TPM manufactured in `dir`).
fn manufacture(dir: &Path, name: &str, certs: bool) -> PathBuf {
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(&state).expect("state dir");
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca).expect("ca dir");
    let localca_conf = dir.join("swtpm-localca.conf");
    std::fs::write(
        &localca_conf,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
            ca.display()
        ),
    )
    .expect("localca conf");
    let localca_options = dir.join("swtpm-localca.options");
    std::fs::write(
        &localca_options,
        "--platform-manufacturer sigil\n--platform-version 2.1\n--platform-model test\n",
    )
    .expect("localca options");
    let setup_conf = dir.join("swtpm_setup.conf");
    std::fs::write(
        &setup_conf,
        format!(
            "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
            swtpm_localca().display(),
            localca_conf.display(),
            localca_options.display()
        ),
    )
    .expect("setup conf");
    let mut cmd = Command::new("swtpm_setup");
    cmd.args(["--tpm2", "--tpmstate"])
        .arg(&state)
        .arg("--config")
        .arg(&setup_conf)
        .arg("--overwrite");
    if certs {
        cmd.args(["--create-ek-cert", "--create-platform-cert"]);
    } else {
        cmd.arg("--createek");
    }
    let out = cmd.output().expect("run swtpm_setup");
    assert!(
        out.status.success(),
        "swtpm_setup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    state
}

/// The PEM of the local CA's root and issuing certificates (what `ek_ca_bundle` holds).
fn local_ca_bundle(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    let mut pem = std::fs::read_to_string(ca.join("swtpm-localca-rootca-cert.pem")).expect("root");
    pem.push_str(&std::fs::read_to_string(ca.join("issuercert.pem")).expect("issuer"));
    let path = dir.join("tpm-cas.pem");
    std::fs::write(&path, pem).expect("bundle");
    path
}

/// A running `swtpm socket`, killed on drop.
struct Swtpm {
    proc: Proc,
    port: u16,
}

impl Swtpm {
    /// Runs swtpm on the TPM state in `state`, waiting (at most 10 s) until it accepts.
    fn start(state: &Path) -> Swtpm {
        let port = free_tcp_port_pair();
        let log = state.with_extension("log");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .args(["--flags", "startup-clear"])
            .arg("--log")
            .arg(format!("file={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn swtpm");
        let tpm = Swtpm {
            proc: Proc::from_child(child, log),
            port,
        };
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "swtpm did not listen within 10 s: {}",
            tpm.proc.log()
        );
        tpm
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

fn tpm_config(tpm: &Swtpm, ek: EkAlgorithm, pcrs: &[u8]) -> AgentTpmConfig {
    AgentTpmConfig {
        tcti: tpm.tcti(),
        pcrs: pcrs.to_vec(),
        ek,
    }
}

#[test]
fn swtpm_activates_our_make_credential() {
    if !have_swtpm("swtpm_activates_our_make_credential") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = manufacture(dir.path(), "tpm", true);
    let swtpm = Swtpm::start(&state);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    for ek_alg in [EkAlgorithm::Rsa, EkAlgorithm::Ecc] {
        let started = Instant::now();
        let mut tpm = AgentTpm::open(&tpm_config(&swtpm, ek_alg, &[0])).expect("open the TPM");
        let opened = started.elapsed();
        let ek = attest::tpm::EkPublic::parse(&tpm.ek_public).expect("EK");
        let ak = attest::tpm::AkPublic::parse(&tpm.ak_public).expect("AK");
        assert_eq!(
            tpm.ek_cert.is_some(),
            ek_alg == EkAlgorithm::Rsa,
            "swtpm_setup stores an RSA 2048 EK certificate (its ECC one is P-384)"
        );
        if let Some(cert) = &tpm.ek_cert {
            // The certificate is for this EK and chains to the local CA.
            let cas = node::rt::config::load_tpm_ek_cas(&local_ca_bundle(dir.path())).expect("CAs");
            let policy = attest::tpm::EkPolicy {
                cas,
                ek_hashes: Default::default(),
            };
            let issuer = policy
                .check(&ek, Some(cert), wire::UnixTime::from_secs(unix_now_secs()))
                .expect("the EK certificate chains to the local CA");
            assert_eq!(issuer.as_deref(), Some("CN=swtpm-localca"));
            // The README's recipe for the EK hash from the certificate gives the same value.
            if let Some(from_openssl) = openssl_ek_hash(dir.path(), cert) {
                assert_eq!(from_openssl, ek.hash());
            }
        }
        for _ in 0..3 {
            let secret: [u8; 32] = rand_core::RngCore::next_u64(&mut rng)
                .to_be_bytes()
                .repeat(4)
                .try_into()
                .expect("32 bytes");
            let made = attest::tpm::make_credential(&ek, ak.name(), &secret, &mut rng)
                .expect("make credential");
            let activated = tpm
                .activate(&made.id_object, &made.encrypted_secret)
                .expect("swtpm activates our credential");
            assert_eq!(activated.as_slice(), secret.as_slice(), "{ek_alg:?}");
        }
        // Made for another object name: the TPM's integrity check fails.
        let mut other = ak.name().to_vec();
        other[5] ^= 1;
        let made = attest::tpm::make_credential(&ek, &other, &[7; 32], &mut rng).expect("make");
        let err = tpm
            .activate(&made.id_object, &made.encrypted_secret)
            .expect_err("wrong name");
        eprintln!("{ek_alg:?}: another name refused: {err}");
        // A tampered blob.
        let mut made =
            attest::tpm::make_credential(&ek, ak.name(), &[7; 32], &mut rng).expect("make");
        if let Some(b) = made.id_object.last_mut() {
            *b ^= 1;
        }
        assert!(tpm
            .activate(&made.id_object, &made.encrypted_secret)
            .is_err());
        eprintln!(
            "{ek_alg:?}: EK {} opened (EK + AK) in {} ms",
            ek.hash(),
            opened.as_millis()
        );
    }
}

/// `openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum` of a DER certificate
/// (the README's recipe); `None` without openssl.
fn openssl_ek_hash(dir: &Path, cert: &[u8]) -> Option<String> {
    let path = dir.join("ek.der");
    std::fs::write(&path, cert).expect("write the EK certificate");
    let script = format!(
        "openssl x509 -inform DER -in {} -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum",
        path.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let hash = text.split_whitespace().next()?.to_owned();
    (out.status.success() && hash.len() == 64).then_some(hash)
}

/// Extends SHA-256 PCR 16 (the debug PCR, resettable) of `tpm` with SHA-256(`data`).
fn extend_pcr16(tpm: &Swtpm, data: &[u8]) {
    use tss_esapi::handles::PcrHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::structures::{Digest, DigestValues};
    let mut ctx = tss_esapi::Context::new(tpm.tcti().parse().expect("tcti")).expect("context");
    let mut values = DigestValues::new();
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    values.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(digest.as_ref().to_vec()).expect("digest"),
    );
    ctx.execute_with_nullauth_session(|c| c.pcr_extend(PcrHandle::Pcr16, values))
        .expect("PCR extend");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An EK public area from the TCG template with our own key in it (`unique`), so that swtpm's
/// `TPM2_MakeCredential` protects its seed to a key whose private half the vectors know.
fn ek_public_with_key(ek: EkAlgorithm, unique: &[u8]) -> tss_esapi::structures::Public {
    use tss_esapi::abstraction::{ek as tek, AsymmetricAlgorithmSelection};
    use tss_esapi::interface_types::{ecc::EccCurve, key_bits::RsaKeyBits};
    use tss_esapi::traits::{Marshall, UnMarshall};
    let selection = match ek {
        EkAlgorithm::Rsa => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkAlgorithm::Ecc => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    };
    let template = tek::create_ek_public_from_default_template_2(selection, None)
        .expect("template")
        .marshall()
        .expect("marshall");
    // The unique field is last, after a fixed-size prefix (type, nameAlg, attributes, a 32-byte
    // authPolicy, AES-128-CFB, no scheme, then keyBits + exponent or curve + KDF).
    let prefix = match ek {
        EkAlgorithm::Rsa => 56,
        EkAlgorithm::Ecc => 54,
    };
    let mut bytes = template[..prefix].to_vec();
    bytes.extend_from_slice(unique);
    tss_esapi::structures::Public::unmarshall(&bytes).expect("unmarshall")
}

/// Prints the known-answer vectors of `attest::tpm`'s unit tests: swtpm's own
/// `TPM2_MakeCredential` for an RSA and an ECC EK whose private keys are printed too, and a
/// real quote. Run once with `--ignored --nocapture` and paste.
#[test]
#[ignore = "generator of attest::tpm's test vectors"]
fn print_known_answer_vectors() {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::structures::{Digest, Name};
    use tss_esapi::traits::Marshall;
    assert!(have_swtpm("print_known_answer_vectors"));
    let dir = tempfile::tempdir().expect("tempdir");
    let state = manufacture(dir.path(), "tpm", false);
    let swtpm = Swtpm::start(&state);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2026);
    let mut ctx = tss_esapi::Context::new(swtpm.tcti().parse().expect("tcti")).expect("context");
    let name: Vec<u8> = [0x00, 0x0b].into_iter().chain(0x40..0x60).collect();
    let credential: Vec<u8> = (0xa0..0xc0).collect();

    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
    let modulus = rsa_key.n().to_bytes_be();
    let ecc_secret = p256::SecretKey::from_slice(&[0x5a; 32]).expect("p256 key");
    let point =
        p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&ecc_secret.public_key(), false);
    let point = point.as_bytes().to_vec();
    let mut ecc_unique = vec![0, 32];
    ecc_unique.extend_from_slice(&point[1..33]);
    ecc_unique.extend_from_slice(&[0, 32]);
    ecc_unique.extend_from_slice(&point[33..]);
    println!("const NAME: &str = \"{}\";", hex(&name));
    println!("const CREDENTIAL: &str = \"{}\";", hex(&credential));
    println!(
        "const RSA_PKCS8: &str = \"{}\";",
        hex(rsa_key.to_pkcs8_der().expect("pkcs8").as_bytes())
    );
    println!(
        "const ECC_SCALAR: &str = \"{}\";",
        hex(&ecc_secret.to_bytes())
    );
    for (label, alg, unique) in [
        ("RSA", EkAlgorithm::Rsa, {
            let mut u = vec![1, 0];
            u.extend_from_slice(&modulus);
            u
        }),
        ("ECC", EkAlgorithm::Ecc, ecc_unique),
    ] {
        let public = ek_public_with_key(alg, &unique);
        let bytes = public.marshall().expect("marshall");
        let handle = ctx
            .load_external_public(public, Hierarchy::Null)
            .expect("load external");
        let (id_object, secret) = ctx
            .make_credential(
                handle,
                Digest::try_from(credential.clone()).expect("digest"),
                Name::try_from(name.clone()).expect("name"),
            )
            .expect("make credential");
        ctx.flush_context(handle.into()).expect("flush");
        println!("const {label}_EK_PUBLIC: &str = \"{}\";", hex(&bytes));
        println!(
            "const {label}_ID_OBJECT: &str = \"{}\";",
            hex(id_object.value())
        );
        println!(
            "const {label}_ENCRYPTED_SECRET: &str = \"{}\";",
            hex(secret.value())
        );
    }
    drop(ctx);

    extend_pcr16(&swtpm, b"sigil test vector");
    let mut tpm = AgentTpm::open(&tpm_config(&swtpm, EkAlgorithm::Ecc, &[0, 7, 16])).expect("open");
    let extra: Vec<u8> = (0..32).collect();
    let quote = tpm.quote(&extra, &[0, 7, 16]).expect("quote");
    println!("const AK_PUBLIC: &str = \"{}\";", hex(&tpm.ak_public));
    println!("const QUOTE_EXTRA: &str = \"{}\";", hex(&extra));
    println!("const QUOTE: &str = \"{}\";", hex(&quote.quote));
    println!(
        "const QUOTE_SIGNATURE: &str = \"{}\";",
        hex(&quote.signature)
    );
    for (i, v) in &quote.pcrs {
        println!("// PCR {i}: {}", hex(v));
    }
}

// ---------------------------------------------------------------------------------------------
// End to end.

use common::{create_entry, my_uid, toml_str, wait_served, AgentToml, ServerNode, SIGIL};
use wire::api::{ApiCode, ApiRequest, ApiResponse};

const TD: &str = "tpm.test";
const WAIT: Duration = Duration::from_secs(30);

/// The EK hash of the TPM at `tpm` (RSA EK).
fn ek_hash(tpm: &Swtpm) -> String {
    let opened = AgentTpm::open(&tpm_config(tpm, EkAlgorithm::Rsa, &[0])).expect("open the TPM");
    attest::tpm::EkPublic::parse(&opened.ek_public)
        .expect("EK")
        .hash()
}

/// Starts a bootstrap server node in `dir` with `[tpm]`.
fn start_server(dir: &Path, ca_bundle: &Path, ek_hashes: &[String]) -> ServerNode {
    let mut node = ServerNode::new(SIGIL, 1, dir).expect("server dir");
    let hashes: Vec<String> = ek_hashes.iter().map(|h| toml_str(h)).collect();
    node.toml(TD)
        .bootstrap()
        .table(format!(
            "[tpm]\nek_ca_bundle = {}\nek_hashes = [{}]",
            toml_str(&ca_bundle.display().to_string()),
            hashes.join(", ")
        ))
        .write(&node.config)
        .expect("server config");
    node.start().expect("spawn sigil server");
    node
}

/// Writes an `agent.toml` using the TPM at `tpm`; (config, Workload API socket).
fn agent_config(
    dir: &Path,
    name: &str,
    server: &str,
    pin: &str,
    tpm: &Swtpm,
) -> (PathBuf, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let cfg = dir.join(format!("{name}.toml"));
    AgentToml::new(TD, &[server], dir.join(format!("{name}-data")), &sock)
        .bundle_sha256(pin)
        .table(format!(
            "[tpm]\ntcti = {}\npcrs = [0, 7, 16]",
            toml_str(&tpm.tcti())
        ))
        .write(&cfg)
        .expect("agent config");
    (cfg, sock)
}

/// Waits until the workload is served `id`; how long it took.
fn served(sock: &Path, id: &str, agent: &Proc) -> Duration {
    wait_served(SIGIL, sock, id, agent, WAIT)
}

/// The selectors of the server's `n`-th (0-based) "registering the agent" line for `agent`.
fn registered_selectors(server: &ServerNode, agent: &str, n: usize) -> Option<Vec<String>> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("registering the agent") && l.contains(agent))
        .nth(n)
        .and_then(|l| l.split("selectors=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map(|s| s.split(',').map(str::to_owned).collect())
}

/// What one TPM attestation sent: the finish request (to replay), its answer, and the time the
/// exchange took (TPM work and both round trips).
struct Exchange {
    begin: ApiRequest,
    finish: ApiRequest,
    answer: Result<ApiResponse, node::rt::api::ApiClientError>,
    took: Duration,
}

/// Attests in-process with the TPM at `tpm` through `client`, letting `tweak` change the finish
/// request before it is sent.
async fn exchange(
    client: &node::rt::api::ApiClient,
    tpm: &Swtpm,
    key_der: &[u8],
    tweak: impl FnOnce(&mut ApiRequest),
) -> Exchange {
    let started = Instant::now();
    let mut opened = AgentTpm::open(&tpm_config(tpm, EkAlgorithm::Rsa, &[0, 7, 16])).expect("open");
    let begin = ApiRequest::AttestTpmBegin {
        ek_public: opened.ek_public.clone(),
        ek_cert: opened.ek_cert.clone(),
        ak_public: opened.ak_public.clone(),
    };
    let timeout = Duration::from_secs(10);
    let Ok(ApiResponse::TpmChallenge {
        credential_blob,
        encrypted_secret,
        token,
    }) = client.call(&begin, timeout).await
    else {
        panic!("no challenge");
    };
    let binding = client.exporter().expect("exporter");
    let secret = opened
        .activate(&credential_blob, &encrypted_secret)
        .expect("activate");
    let quote = opened
        .quote(
            &attest::tpm::qualifying_data(&token, &binding, key_der),
            &[0, 7, 16],
        )
        .expect("quote");
    let mut finish = ApiRequest::AttestTpmFinish {
        ek_public: opened.ek_public.clone(),
        ek_cert: opened.ek_cert.clone(),
        ak_public: opened.ak_public.clone(),
        token,
        activated_secret: secret.to_vec(),
        quote: quote.quote,
        quote_signature: quote.signature,
        pcrs: quote.pcrs,
        public_key_der: key_der.to_vec(),
    };
    drop(opened);
    tweak(&mut finish);
    let answer = client.call(&finish, timeout).await;
    Exchange {
        begin,
        finish,
        answer,
        took: started.elapsed(),
    }
}

fn refused(answer: &Result<ApiResponse, node::rt::api::ApiClientError>, needle: &str) {
    match answer {
        Err(node::rt::api::ApiClientError::Api(e)) => {
            assert_eq!(e.code, ApiCode::PermissionDenied, "{e}");
            assert!(e.message.contains(needle), "{needle:?} in {e}");
        }
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn agents_attest_with_swtpm_end_to_end() {
    if !have_swtpm("agents_attest_with_swtpm_end_to_end") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // TPM A: EK certificate from the local CA the server trusts. TPM B: no certificate, trusted
    // by its EK hash. TPM C: EK certificate from another CA (another directory).
    let a = Swtpm::start(&manufacture(d, "a", true));
    let b = Swtpm::start(&manufacture(d, "b", false));
    let other = d.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let c = Swtpm::start(&manufacture(&other, "c", true));
    let (hash_a, hash_b, hash_c) = (ek_hash(&a), ek_hash(&b), ek_hash(&c));
    let bundle = local_ca_bundle(d);
    let mut server = start_server(d, &bundle, std::slice::from_ref(&hash_b));
    let (admin, addr) = (server.admin.clone(), server.addr.to_string());
    let pin = server.wait_bundle_hash(WAIT);
    assert!(
        server.log().contains("TPM agent attestation enabled"),
        "{}",
        server.log()
    );

    // Agent A attests (EK certificate → local CA) and serves its workload.
    let agent_a = format!("spiffe://{TD}/sigil/agent/tpm/{hash_a}");
    let me = format!("spiffe://{TD}/me");
    create_entry(&admin, &me, &agent_a, my_uid());
    let (cfg_a, sock_a) = agent_config(d, "agent-a", &addr, &pin, &a);
    let mut agent = Proc::start(SIGIL, "agent", &cfg_a, d.join("agent-a-1.log"));
    let took = served(&sock_a, &me, &agent);
    eprintln!(
        "agent A: started → workload SVID served in {} ms",
        took.as_millis()
    );
    assert!(
        agent.log().contains(&format!("agent={agent_a}")),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains(&format!("ek_hash={hash_a}")),
        "{}",
        agent.log()
    );
    let first = registered_selectors(&server, &agent_a, 0).expect("registered");
    let zeros = "00".repeat(32);
    for want in [
        format!("tpm:ek_hash:{hash_a}"),
        "tpm:ek_cert_issuer:CN=swtpm-localca".to_owned(),
        format!("tpm:pcr:0:{zeros}"),
        format!("tpm:pcr:7:{zeros}"),
        format!("tpm:pcr:16:{zeros}"),
    ] {
        assert!(first.contains(&want), "{want} in {first:?}");
    }
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());

    // PCR 16 changes; the agent, its data dir gone, attests again: same ID, new selector.
    extend_pcr16(&a, b"a new measurement");
    std::fs::remove_dir_all(d.join("agent-a-data")).expect("remove data dir");
    let mut agent = Proc::start(SIGIL, "agent", &cfg_a, d.join("agent-a-2.log"));
    served(&sock_a, &me, &agent);
    let second = registered_selectors(&server, &agent_a, 1).expect("registered again");
    let pcr16: Vec<&String> = second
        .iter()
        .filter(|s| s.starts_with("tpm:pcr:16:"))
        .collect();
    assert_eq!(pcr16.len(), 1, "{second:?}");
    assert_ne!(pcr16[0], &format!("tpm:pcr:16:{zeros}"), "PCR 16 changed");
    assert!(second.contains(&format!("tpm:pcr:0:{zeros}")));
    assert!(agent.terminate(), "agent exits cleanly: {}", agent.log());

    // Agent C: its EK certificate does not chain to the server's CAs, nor is its hash listed.
    let (cfg_c, sock_c) = agent_config(d, "agent-c", &addr, &pin, &c);
    let mut rogue = Proc::start(SIGIL, "agent", &cfg_c, d.join("agent-c.log"));
    assert_eq!(
        rogue.exit_within(WAIT),
        Some(false),
        "agent C fails: {}",
        rogue.log()
    );
    let log = rogue.log();
    assert!(
        log.contains("TPM attestation refused")
            && log.contains("the EK is not trusted")
            && log.contains(&hash_c),
        "{log}"
    );
    assert!(!sock_c.exists(), "no Workload API without an identity");

    // In process: B by its allow-listed hash, with latency; replays and wrong answers refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let env: std::sync::Arc<dyn wire::Env> =
            std::sync::Arc::new(node::rt::SystemEnv::new().expect("env"));
        let connect = || {
            node::rt::api::ApiClient::connect(
                addr.parse().expect("addr"),
                &node::rt::tls::ServerTrust::Pinned,
                None,
                env.clone(),
                Duration::from_secs(5),
            )
        };
        let key = node::rt::TlsKey::generate().expect("key");
        let key_der = key.public_key_der().to_vec();
        let client = connect().await.expect("connect");
        let mut times = Vec::new();
        for _ in 0..3 {
            let ok = exchange(&client, &b, &key_der, |_| {}).await;
            match &ok.answer {
                Ok(ApiResponse::AgentSvid { spiffe_id, .. }) => assert_eq!(
                    spiffe_id.to_string(),
                    format!("spiffe://{TD}/sigil/agent/tpm/{hash_b}")
                ),
                other => panic!("B attests: {other:?}"),
            }
            times.push(ok.took.as_millis());
        }
        eprintln!("in-process TPM attestation (open TPM + EK + AK, begin, activate, quote, finish): {times:?} ms");
        let b_selectors = registered_selectors(&server, &hash_b, 0).expect("B registered");
        assert!(
            !b_selectors.iter().any(|s| s.starts_with("tpm:ek_cert_issuer:")),
            "no certificate, no issuer selector: {b_selectors:?}"
        );

        // Replay of a successful finish on another connection.
        let ok = exchange(&client, &b, &key_der, |_| {}).await;
        assert!(ok.answer.is_ok(), "{:?}", ok.answer);
        let other_conn = connect().await.expect("connect");
        let replayed = other_conn
            .call(&ok.finish, Duration::from_secs(10))
            .await;
        refused(&replayed, "challenge token does not verify");
        // An old answer (credential and quote) under a fresh challenge of this connection.
        let Ok(ApiResponse::TpmChallenge { token, .. }) =
            other_conn.call(&ok.begin, Duration::from_secs(10)).await
        else {
            panic!("challenge");
        };
        let mut stale = ok.finish.clone();
        if let ApiRequest::AttestTpmFinish { token: t, .. } = &mut stale {
            *t = token;
        }
        // (The fresh token verifies; the old answer to the old credential does not.)
        refused(
            &other_conn.call(&stale, Duration::from_secs(10)).await,
            "the activated credential is wrong",
        );
        // Fresh challenge, correct activation, but the quote of the previous exchange.
        let old_quote = match &ok.finish {
            ApiRequest::AttestTpmFinish {
                quote,
                quote_signature,
                ..
            } => (quote.clone(), quote_signature.clone()),
            _ => unreachable!(),
        };
        let replay = exchange(&other_conn, &b, &key_der, |f| {
            if let ApiRequest::AttestTpmFinish {
                quote,
                quote_signature,
                ..
            } = f
            {
                *quote = old_quote.0.clone();
                *quote_signature = old_quote.1.clone();
            }
        })
        .await;
        // (A fresh AK answers the fresh challenge: the old quote is not its signature.)
        refused(&replay.answer, "the quote signature does not verify");
        // The same AK answering two challenges: the first challenge's quote does not answer
        // the second.
        let mut same = AgentTpm::open(&tpm_config(&b, EkAlgorithm::Rsa, &[0, 7, 16])).expect("open");
        let begin = ApiRequest::AttestTpmBegin {
            ek_public: same.ek_public.clone(),
            ek_cert: same.ek_cert.clone(),
            ak_public: same.ak_public.clone(),
        };
        let binding = other_conn.exporter().expect("exporter");
        let mut answers = Vec::new();
        for _ in 0..2 {
            let Ok(ApiResponse::TpmChallenge {
                credential_blob,
                encrypted_secret,
                token,
            }) = other_conn.call(&begin, Duration::from_secs(10)).await
            else {
                panic!("challenge");
            };
            let secret = same
                .activate(&credential_blob, &encrypted_secret)
                .expect("activate");
            let quote = same
                .quote(
                    &attest::tpm::qualifying_data(&token, &binding, &key_der),
                    &[0, 7, 16],
                )
                .expect("quote");
            answers.push((token, secret.to_vec(), quote));
        }
        let (first, second) = (&answers[0], &answers[1]);
        let mixed = ApiRequest::AttestTpmFinish {
            ek_public: same.ek_public.clone(),
            ek_cert: same.ek_cert.clone(),
            ak_public: same.ak_public.clone(),
            token: second.0.clone(),
            activated_secret: second.1.clone(),
            quote: first.2.quote.clone(),
            quote_signature: first.2.signature.clone(),
            pcrs: first.2.pcrs.clone(),
            public_key_der: key_der.clone(),
        };
        refused(
            &other_conn.call(&mixed, Duration::from_secs(10)).await,
            "the quote is not for this challenge",
        );
        drop(same);
        // A wrong activated credential.
        let wrong = exchange(&other_conn, &b, &key_der, |f| {
            if let ApiRequest::AttestTpmFinish {
                activated_secret, ..
            } = f
            {
                activated_secret[0] ^= 1;
            }
        })
        .await;
        refused(&wrong.answer, "the activated credential is wrong");
        // Reported PCR values that are not the quoted ones.
        let lying = exchange(&other_conn, &b, &key_der, |f| {
            if let ApiRequest::AttestTpmFinish { pcrs, .. } = f {
                pcrs[2].1[0] ^= 1;
            }
        })
        .await;
        refused(&lying.answer, "PCR");
        // TPM C in process: refused at the first step.
        let mut opened = AgentTpm::open(&tpm_config(&c, EkAlgorithm::Rsa, &[0])).expect("open C");
        let begin = ApiRequest::AttestTpmBegin {
            ek_public: opened.ek_public.clone(),
            ek_cert: opened.ek_cert.take(),
            ak_public: opened.ak_public.clone(),
        };
        refused(
            &other_conn.call(&begin, Duration::from_secs(10)).await,
            "does not chain to a CA in ek_ca_bundle",
        );
        client.close().await;
        other_conn.close().await;
    });
    assert!(server.terminate(), "server exits cleanly: {}", server.log());
}
