//! The environment seam (DESIGN.md §4): everything nondeterministic a node needs — monotonic
//! time, wall time, randomness, key generation, task spawning — comes through [`Env`].
//!
//! Production implements it over tokio and the OS (`node::rt`); the simulator over a paused
//! clock with per-node skew and a seed. Node logic never reaches around it (clippy's
//! `disallowed-methods` enforces this).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A point on a node's monotonic clock: nanoseconds since the node's `Env` started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(u64);

impl Mono {
    /// The clock's origin.
    pub const ZERO: Mono = Mono(0);

    /// A point `d` after the origin (saturating at about 584 years).
    pub fn from_duration(d: Duration) -> Mono {
        Mono(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the origin.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// This point plus `d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(Mono::from_duration(d).0))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Mono) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Wall-clock time: milliseconds since the Unix epoch. Used for certificate validity and expiry,
/// never for timeouts (wall clocks step; see [`Mono`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct UnixTime(u64);

impl UnixTime {
    /// The epoch.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// From milliseconds since the epoch.
    pub fn from_millis(ms: u64) -> UnixTime {
        UnixTime(ms)
    }

    /// From seconds since the epoch (saturating).
    pub fn from_secs(secs: u64) -> UnixTime {
        UnixTime(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This time plus `d`, saturating.
    pub fn saturating_add(self, d: Duration) -> UnixTime {
        UnixTime(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// This time minus `d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> UnixTime {
        UnixTime(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: UnixTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A 256-bit seed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Seeds derive key material in the simulator: show only a fingerprint.
        write!(f, "Seed({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// 64-bit FNV-1a, used only to turn a label into a ChaCha stream number.
fn fnv1a(label: &[u8]) -> u64 {
    label.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Seed {
    /// A seed from a 64-bit number (the simulator's `--seed`).
    pub fn from_u64(n: u64) -> Seed {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&n.to_le_bytes());
        Seed(s)
    }

    /// The child seed for `label` (seed → node → purpose → …). Distinct labels give independent
    /// ChaCha20 streams of this seed; the same label always gives the same child.
    pub fn child(&self, label: &str) -> Seed {
        let mut rng = ChaCha20Rng::from_seed(self.0);
        rng.set_stream(fnv1a(label.as_bytes()));
        let mut out = [0u8; 32];
        rng.fill_bytes(&mut out);
        Seed(out)
    }

    /// A ChaCha20 generator seeded with this seed.
    pub fn rng(&self) -> ChaCha20Rng {
        ChaCha20Rng::from_seed(self.0)
    }
}

/// The per-node RNG tree: `rng(purpose)` hands out a fresh, independent generator on every call,
/// derived from (node seed, purpose, how many generators this purpose had before). Same seed and
/// same call order ⇒ same numbers, which is what makes simulator runs reproducible.
#[derive(Debug)]
pub struct RngTree {
    seed: Seed,
    issued: Mutex<BTreeMap<String, u64>>,
}

impl RngTree {
    /// A tree rooted at `seed`.
    pub fn new(seed: Seed) -> RngTree {
        RngTree {
            seed,
            issued: Mutex::new(BTreeMap::new()),
        }
    }

    /// A fresh generator for `purpose` (e.g. `"serial"`, `"raft-election"`).
    pub fn rng(&self, purpose: &str) -> ChaCha20Rng {
        let n = {
            let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
            let slot = issued.entry(purpose.to_owned()).or_insert(0);
            let n = *slot;
            *slot += 1;
            n
        };
        self.seed.child(purpose).child(&n.to_string()).rng()
    }
}

/// Key algorithms sigil generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256 (X.509 `ecdsa-with-SHA256`, JWS `ES256`).
    EcP256,
}

/// How a signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigFormat {
    /// ASN.1 DER `Ecdsa-Sig-Value` (X.509 signatures).
    Der,
    /// Fixed-width `r || s` (JWS signatures).
    Fixed,
}

/// A private key that can sign but never shows its secret: there is no method that returns it,
/// and `Debug` prints only the algorithm and public-key fingerprint.
pub trait Signer: Send + Sync + fmt::Debug {
    /// The key's algorithm.
    fn alg(&self) -> KeyAlg;
    /// The public key as a DER `SubjectPublicKeyInfo`.
    fn public_key_der(&self) -> &[u8];
    /// Signs `msg` (hashing it as the algorithm prescribes).
    fn sign(&self, msg: &[u8], format: SigFormat) -> Result<Vec<u8>, Error>;
}

/// A private key made to leave the host, to one workload: the key of a workload's X.509-SVID,
/// which the agent hands to that workload (and only it) through the Workload API. Unlike a
/// [`Signer`] it shows its secret — as PKCS#8 DER, wiped when dropped — and nothing else does;
/// `Debug` prints only a public-key fingerprint.
pub struct WorkloadKey {
    public_key_der: Vec<u8>,
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl WorkloadKey {
    /// A key from its DER `SubjectPublicKeyInfo` and its PKCS#8 DER.
    pub fn new(public_key_der: Vec<u8>, pkcs8: zeroize::Zeroizing<Vec<u8>>) -> WorkloadKey {
        WorkloadKey {
            public_key_der,
            pkcs8,
        }
    }

    /// The public key as a DER `SubjectPublicKeyInfo` (what the agent sends to be certified).
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// The private key as PKCS#8 DER: only for the workload it belongs to.
    pub fn pkcs8_der(&self) -> &zeroize::Zeroizing<Vec<u8>> {
        &self.pkcs8
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = self.public_key_der.len().saturating_sub(6);
        let fp: String = self.public_key_der[tail..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "WorkloadKey(public …{fp}, private redacted)")
    }
}

/// Generates keys: the OS CSPRNG in production, a seeded deterministic source in the simulator.
pub trait KeySource: Send + Sync + fmt::Debug {
    /// A new private key.
    fn generate(&self, alg: KeyAlg) -> Result<Box<dyn Signer>, Error>;
    /// A new key for a workload's X.509-SVID (see [`WorkloadKey`]).
    fn generate_workload_key(&self, alg: KeyAlg) -> Result<WorkloadKey, Error>;
}

/// A boxed task for [`Env::spawn`].
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Everything nondeterministic a node may use.
pub trait Env: Send + Sync + 'static {
    /// The node's monotonic clock (timeouts, leases, staleness).
    fn mono(&self) -> Mono;
    /// The node's wall clock (certificate validity). May be skewed or step in the simulator.
    fn wall(&self) -> UnixTime;
    /// A fresh generator for `purpose`, from the node's [`RngTree`].
    fn rng(&self, purpose: &str) -> ChaCha20Rng;
    /// The node's key generator.
    fn keys(&self) -> &dyn KeySource;
    /// Runs `task` concurrently; `name` labels it in traces.
    fn spawn(&self, name: &'static str, task: Task);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    #[test]
    fn seeds_are_deterministic_and_independent() {
        let root = Seed::from_u64(7);
        assert_eq!(root.child("node-1").0, Seed::from_u64(7).child("node-1").0);
        assert_ne!(root.child("node-1").0, root.child("node-2").0);
        assert_ne!(root.child("node-1").0, Seed::from_u64(8).child("node-1").0);
        assert_ne!(root.child("a").child("b").0, root.child("b").child("a").0);
    }

    #[test]
    fn rng_tree_hands_out_fresh_streams_reproducibly() {
        let draw = |tree: &RngTree, purpose: &str| tree.rng(purpose).next_u64();
        let a = RngTree::new(Seed::from_u64(1));
        let b = RngTree::new(Seed::from_u64(1));
        let seq_a: Vec<u64> = ["serial", "serial", "raft", "serial"]
            .iter()
            .map(|p| draw(&a, p))
            .collect();
        let seq_b: Vec<u64> = ["serial", "serial", "raft", "serial"]
            .iter()
            .map(|p| draw(&b, p))
            .collect();
        assert_eq!(seq_a, seq_b, "same seed, same calls, same numbers");
        assert_ne!(seq_a[0], seq_a[1], "a second call is a fresh stream");
        assert_ne!(seq_a[1], seq_a[3]);
    }

    #[test]
    fn time_arithmetic_saturates() {
        let t = UnixTime::from_secs(10);
        assert_eq!(t.as_millis(), 10_000);
        assert_eq!(t.saturating_sub(Duration::from_secs(20)), UnixTime::EPOCH);
        assert_eq!(
            t.saturating_add(Duration::from_millis(1500)).as_millis(),
            11_500
        );
        assert_eq!(t.saturating_since(UnixTime::from_secs(11)), Duration::ZERO);
        let m = Mono::from_duration(Duration::from_secs(2));
        assert_eq!(m.saturating_since(Mono::ZERO), Duration::from_secs(2));
        assert_eq!(Mono::ZERO.saturating_since(m), Duration::ZERO);
        assert_eq!(Mono::from_duration(Duration::MAX).as_nanos(), u64::MAX);
        assert_eq!(format!("{:?}", Seed([0xab; 32])), "Seed(abab…)");
    }
}
