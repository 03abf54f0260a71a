//! [`SimEnv`]: the simulator's [`wire::Env`] — virtual monotonic time (tokio's paused clock),
//! a per-node wall clock with skew and steps, the seeded RNG tree (seed → node → purpose) and
//! deterministic keys (RFC 6979 signatures, so certificate bytes repeat with the seed).

use std::sync::atomic::{AtomicI64, Ordering};

use attest::keys::SeededKeySource;
use rand_chacha::ChaCha20Rng;
use wire::env::Task;
use wire::{Env, KeySource, Mono, RngTree, Seed, UnixTime};

/// One simulated node's environment.
#[derive(Debug)]
pub struct SimEnv {
    origin: tokio::time::Instant,
    wall_at_origin: UnixTime,
    skew_ms: AtomicI64,
    rngs: RngTree,
    keys: SeededKeySource,
}

/// The simulated clock (the simulator owns virtual time).
fn virtual_now() -> tokio::time::Instant {
    #[allow(clippy::disallowed_methods)]
    tokio::time::Instant::now()
}

impl SimEnv {
    /// The environment of node `node` in the world of `seed`; its wall clock reads
    /// `wall_at_start` now (plus skew). Must be created inside the simulation runtime.
    pub fn new(seed: Seed, node: u64, wall_at_start: UnixTime) -> SimEnv {
        let node_seed = seed.child("node").child(&node.to_string());
        SimEnv {
            origin: virtual_now(),
            wall_at_origin: wall_at_start,
            skew_ms: AtomicI64::new(0),
            rngs: RngTree::new(node_seed.child("rng")),
            keys: SeededKeySource::new(node_seed.child("keys")),
        }
    }

    /// Sets the wall clock's offset from true (virtual) time, in ms; may be negative.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }

    /// Whether `bytes` contain a private key this environment generated (secret checker).
    pub fn leaked_in(&self, bytes: &[u8]) -> bool {
        self.keys.leaked_in(bytes)
    }

    /// Steps the wall clock by `delta_ms` (an NTP step, forward or back).
    pub fn step_wall_ms(&self, delta_ms: i64) {
        self.skew_ms.fetch_add(delta_ms, Ordering::Relaxed);
    }
}

impl Env for SimEnv {
    fn mono(&self) -> Mono {
        Mono::from_duration(virtual_now().duration_since(self.origin))
    }

    fn wall(&self) -> UnixTime {
        let elapsed_ms = i64::try_from(virtual_now().duration_since(self.origin).as_millis())
            .unwrap_or(i64::MAX);
        let base = i64::try_from(self.wall_at_origin.as_millis()).unwrap_or(i64::MAX);
        let ms = base
            .saturating_add(elapsed_ms)
            .saturating_add(self.skew_ms.load(Ordering::Relaxed));
        UnixTime::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    fn rng(&self, purpose: &str) -> ChaCha20Rng {
        self.rngs.rng(purpose)
    }

    fn keys(&self) -> &dyn KeySource {
        &self.keys
    }

    fn spawn(&self, _name: &'static str, task: Task) {
        #[allow(clippy::disallowed_methods)] // the simulated world's task spawner
        tokio::task::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;
    use std::time::Duration;
    use wire::{KeyAlg, SigFormat};

    #[tokio::test(start_paused = true)]
    async fn clocks_skew_and_step() {
        let env = SimEnv::new(Seed::from_u64(1), 1, UnixTime::from_secs(1_000));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            env.mono().saturating_since(Mono::ZERO),
            Duration::from_secs(10)
        );
        assert_eq!(env.wall(), UnixTime::from_secs(1_010));
        env.set_skew_ms(-2_000);
        assert_eq!(env.wall(), UnixTime::from_secs(1_008));
        env.step_wall_ms(5_000);
        assert_eq!(env.wall(), UnixTime::from_secs(1_013));
        env.set_skew_ms(-10_000_000);
        assert_eq!(env.wall(), UnixTime::EPOCH, "never before the epoch");
        assert_eq!(
            env.mono().saturating_since(Mono::ZERO),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn randomness_and_keys_follow_the_seed() {
        let a = SimEnv::new(Seed::from_u64(5), 2, UnixTime::EPOCH);
        let b = SimEnv::new(Seed::from_u64(5), 2, UnixTime::EPOCH);
        let c = SimEnv::new(Seed::from_u64(5), 3, UnixTime::EPOCH);
        assert_eq!(a.rng("serial").next_u64(), b.rng("serial").next_u64());
        assert_ne!(a.rng("serial").next_u64(), c.rng("serial").next_u64());
        let ka = a.keys().generate(KeyAlg::EcP256).expect("key");
        let kb = b.keys().generate(KeyAlg::EcP256).expect("key");
        assert_eq!(ka.public_key_der(), kb.public_key_der());
        assert_eq!(
            ka.sign(b"m", SigFormat::Der).expect("sign"),
            kb.sign(b"m", SigFormat::Der).expect("sign"),
            "deterministic signatures"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        a.spawn(
            "t",
            Box::pin(async move {
                let _ = tx.send(());
            }),
        );
        rx.await.expect("spawned task ran");
    }
}
