//! TPM 2.0 node attestation against swtpm (feature `tpm`; `cargo test -p node --features tpm
//! --test tpm`). Every test manufactures its own software TPM with `swtpm_setup` (an EK
//! certificate from a local CA made by `swtpm_localca`, or none), runs `swtpm socket` on free
//! loopback ports and stops it afterwards (a bounded Drop guard). Without swtpm on PATH the tests
//! say they skipped (scripts/test.sh installs it).
//!
//! - swtpm activates what our software MakeCredential produced, for RSA and ECC EKs, and refuses
//!   it for another AK name;
//! - (ignored) the generator of the known-answer vectors in `attest::tpm`'s unit tests.

#![cfg(feature = "tpm")]
#![allow(clippy::disallowed_methods)] // tests run their own processes and wall-clock deadlines

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Two consecutive free TCP ports on loopback (swtpm's TCTI uses `port` and `port + 1`).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

/// Manufactures a TPM in `dir/state` with `swtpm_setup`: EKs (RSA 2048 persisted, ECC), and
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
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
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
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Swtpm {
    /// Runs swtpm on the TPM state in `state`, waiting (at most 10 s) until it accepts.
    fn start(state: &Path) -> Swtpm {
        let port = free_port_pair();
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
            child: Some(child),
            port,
            log,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "swtpm did not listen within 10 s: {}",
                std::fs::read_to_string(&tpm.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tpm
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "warning: swtpm (pid {}) did not exit within 5 s",
                child.id()
            );
        }
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
                .check(&ek, Some(cert), wire::UnixTime::from_secs(now_secs()))
                .expect("the EK certificate chains to the local CA");
            assert_eq!(issuer.as_deref(), Some("CN=swtpm-localca"));
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
