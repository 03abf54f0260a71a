//! SVID minting against raw signing, in one run (issue 3's goal: X.509 mint ≥ 0.85× and JWT
//! mint ≥ 0.9× the throughput of a raw ring P-256 signature):
//! - `baseline/ring_sign_der` vs `mint/x509_svid` (entry-style request, given the subject's
//!   public key; the raw signature covers as many bytes as the certificate's TBS);
//! - `baseline/ring_sign_fixed` vs `mint/jwt_svid` (one audience, no `jti`).
//!
//! After criterion's report, an interleaved measurement (five rounds of each operation, median
//! throughput) prints the ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use attest::keys::{p256_spki_der, RingKeySource};
use attest::{Action, JwtSvidRequest, KeyringConfig, NodeKeyring, X509SvidRequest};
use criterion::Criterion;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use wire::{SpiffeId, UnixTime};

struct Setup {
    keyring: NodeKeyring,
    wall: UnixTime,
    id: SpiffeId,
    audience: Vec<String>,
    subject_spki: Vec<u8>,
    raw_der: EcdsaKeyPair,
    raw_fixed: EcdsaKeyPair,
    rng: SystemRandom,
    tbs_like: Vec<u8>,
    jws_like: Vec<u8>,
}

fn pair(alg: &'static ring::signature::EcdsaSigningAlgorithm) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("pkcs8");
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("pair")
}

fn setup() -> Setup {
    let wall = UnixTime::from_secs(1_700_000_000);
    let cfg = KeyringConfig::new("example.org".parse().expect("td"), 1);
    let mut keyring = NodeKeyring::new(cfg.clone(), cfg);
    let keys = RingKeySource::new();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut out = Vec::new();
    keyring
        .handle_tick(wall, &keys, &mut rng, &mut out)
        .expect("tick");
    for a in out.clone() {
        if let Action::Prepare(auth) = a {
            keyring.handle_published(&auth.id, wall, &mut out);
        }
    }
    let subject = pair(&ECDSA_P256_SHA256_ASN1_SIGNING);
    let subject_spki = p256_spki_der(subject.public_key().as_ref()).expect("spki");
    let mut s = Setup {
        keyring,
        wall,
        id: "spiffe://example.org/ns/prod/sa/web".parse().expect("id"),
        audience: vec!["spiffe://example.org/ns/prod/sa/db".to_owned()],
        subject_spki,
        raw_der: pair(&ECDSA_P256_SHA256_ASN1_SIGNING),
        raw_fixed: pair(&ECDSA_P256_SHA256_FIXED_SIGNING),
        rng: SystemRandom::new(),
        tbs_like: Vec::new(),
        jws_like: Vec::new(),
    };
    // Raw signatures over inputs as long as what minting signs.
    let cert_len = mint_x509(&s, &mut ChaCha20Rng::seed_from_u64(2));
    let token_len = mint_jwt(&s, &mut ChaCha20Rng::seed_from_u64(3));
    s.tbs_like = vec![0x5a; cert_len - 90];
    s.jws_like = vec![0x5a; token_len - 87];
    println!(
        "X.509-SVID: {cert_len} bytes (TBS ≈ {} bytes); JWT-SVID: {token_len} bytes",
        s.tbs_like.len()
    );
    s
}

fn mint_x509(s: &Setup, rng: &mut ChaCha20Rng) -> usize {
    let ca = s.keyring.active_x509(s.wall).expect("active CA");
    let req = X509SvidRequest {
        spiffe_id: &s.id,
        dns_names: &[],
        public_key_der: &s.subject_spki,
        ttl: Duration::from_secs(3600),
        not_before_cushion: Duration::from_secs(10),
    };
    ca.mint(&req, s.wall, rng).expect("mint").cert_der.len()
}

fn mint_jwt(s: &Setup, rng: &mut ChaCha20Rng) -> usize {
    let key = s.keyring.active_jwt(s.wall).expect("active JWT key");
    let req = JwtSvidRequest {
        spiffe_id: &s.id,
        audience: &s.audience,
        ttl: Duration::from_secs(300),
        issuer: None,
        with_jti: false,
    };
    key.mint(&req, s.wall, rng).expect("mint").len()
}

fn raw_der(s: &Setup) -> usize {
    s.raw_der
        .sign(&s.rng, black_box(&s.tbs_like))
        .expect("sign")
        .as_ref()
        .len()
}

fn raw_fixed(s: &Setup) -> usize {
    s.raw_fixed
        .sign(&s.rng, black_box(&s.jws_like))
        .expect("sign")
        .as_ref()
        .len()
}

fn criterion_benches(c: &mut Criterion, s: &Setup) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    c.bench_function("baseline/ring_sign_der", |b| b.iter(|| raw_der(s)));
    c.bench_function("mint/x509_svid", |b| b.iter(|| mint_x509(s, &mut rng)));
    c.bench_function("baseline/ring_sign_fixed", |b| b.iter(|| raw_fixed(s)));
    c.bench_function("mint/jwt_svid", |b| b.iter(|| mint_jwt(s, &mut rng)));
}

/// Operations per second of `op` over about `budget`.
#[allow(clippy::disallowed_methods)] // benchmarks measure wall time; node logic never does
fn throughput(budget: Duration, mut op: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            black_box(op());
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Ratios from adjacent measurements (so both sides of a ratio see the same machine load),
/// over many short rounds; the median ratio is reported.
fn ratios(s: &Setup) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let budget = Duration::from_millis(150);
    let rounds = 21;
    let (mut der, mut x509, mut fixed, mut jwt) = (vec![], vec![], vec![], vec![]);
    let (mut x509_ratio, mut jwt_ratio) = (vec![], vec![]);
    for round in 0..rounds {
        // Alternate the order inside each pair, so neither side always runs first.
        let (d, x) = if round % 2 == 0 {
            let d = throughput(budget, || raw_der(s));
            (d, throughput(budget, || mint_x509(s, &mut rng)))
        } else {
            let x = throughput(budget, || mint_x509(s, &mut rng));
            (throughput(budget, || raw_der(s)), x)
        };
        let (f, j) = if round % 2 == 0 {
            let f = throughput(budget, || raw_fixed(s));
            (f, throughput(budget, || mint_jwt(s, &mut rng)))
        } else {
            let j = throughput(budget, || mint_jwt(s, &mut rng));
            (throughput(budget, || raw_fixed(s)), j)
        };
        x509_ratio.push(x / d);
        jwt_ratio.push(j / f);
        der.push(d);
        x509.push(x);
        fixed.push(f);
        jwt.push(j);
    }
    println!("interleaved, {rounds} rounds, medians (ops/s, one core):");
    println!("  raw ring P-256 sign (DER)   {:>9.0}", median(der));
    println!("  X.509-SVID mint             {:>9.0}", median(x509));
    println!("  raw ring P-256 sign (fixed) {:>9.0}", median(fixed));
    println!("  JWT-SVID mint               {:>9.0}", median(jwt));
    println!(
        "  ratio X.509-SVID mint / raw sign = {:.3}x (goal >= 0.85)",
        median(x509_ratio)
    );
    println!(
        "  ratio JWT-SVID mint / raw sign   = {:.3}x (goal >= 0.90)",
        median(jwt_ratio)
    );
}

fn main() {
    let s = setup();
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &s);
    c.final_summary();
    ratios(&s);
}
