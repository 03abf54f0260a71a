//! [`SystemEnv`]: the production [`wire::Env`] over tokio and the OS.

use std::time::{SystemTime, UNIX_EPOCH};

use attest::keys::RingKeySource;
use rand_chacha::ChaCha20Rng;
use wire::env::Task;
use wire::{Env, KeySource, Mono, RngTree, Seed, UnixTime};

use crate::Error;

/// The production environment: tokio's clock (so tokio's paused time also works in tests), the
/// system wall clock, an RNG tree seeded from OS entropy, ring keys, and `tokio::spawn`.
#[derive(Debug)]
pub struct SystemEnv {
    origin: tokio::time::Instant,
    rngs: RngTree,
    keys: RingKeySource,
}

impl SystemEnv {
    /// A new environment; its monotonic clock starts at [`Mono::ZERO`] now.
    pub fn new() -> Result<SystemEnv, Error> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::Os {
            what: "reading OS entropy",
            detail: e.to_string(),
        })?;
        #[allow(clippy::disallowed_methods)] // the production monotonic clock
        let origin = tokio::time::Instant::now();
        // openraft's election jitter and the replica's incarnation numbers draw from this.
        raft::runtime::set_process_seed(Seed(seed).child("raft"));
        Ok(SystemEnv {
            origin,
            rngs: RngTree::new(Seed(seed)),
            keys: RingKeySource::new(),
        })
    }
}

impl Env for SystemEnv {
    fn mono(&self) -> Mono {
        #[allow(clippy::disallowed_methods)] // the production monotonic clock
        let now = tokio::time::Instant::now();
        Mono::from_duration(now.duration_since(self.origin))
    }

    fn wall(&self) -> UnixTime {
        #[allow(clippy::disallowed_methods)] // the production wall clock
        let now = SystemTime::now();
        // A clock before 1970 reads as the epoch; certificate checks will then fail closed.
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        UnixTime::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn rng(&self, purpose: &str) -> ChaCha20Rng {
        self.rngs.rng(purpose)
    }

    fn keys(&self) -> &dyn KeySource {
        &self.keys
    }

    fn spawn(&self, name: &'static str, task: Task) {
        tracing::trace!(task = name, "spawn");
        #[allow(clippy::disallowed_methods)] // the production task spawner
        tokio::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;
    use std::time::Duration;
    use wire::{KeyAlg, SigFormat};

    #[tokio::test(start_paused = true)]
    async fn mono_follows_tokio_time() {
        let env = SystemEnv::new().expect("env");
        let t0 = env.mono();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t1 = env.mono();
        assert_eq!(t1.saturating_since(t0), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wall_rng_keys_and_spawn_work() {
        let env = SystemEnv::new().expect("env");
        // 2020-09-13 < now < 2100.
        let secs = env.wall().as_secs();
        assert!(secs > 1_600_000_000 && secs < 4_102_444_800, "{secs}");
        assert_ne!(env.rng("x").next_u64(), env.rng("x").next_u64());
        let other = SystemEnv::new().expect("env");
        assert_ne!(
            env.rng("y").next_u64(),
            other.rng("y").next_u64(),
            "OS-seeded"
        );
        let key = env.keys().generate(KeyAlg::EcP256).expect("key");
        assert_eq!(key.sign(b"m", SigFormat::Fixed).expect("sign").len(), 64);
        let (tx, rx) = tokio::sync::oneshot::channel();
        env.spawn(
            "test",
            Box::pin(async move {
                let _ = tx.send(7);
            }),
        );
        assert_eq!(rx.await.expect("task ran"), 7);
    }
}
