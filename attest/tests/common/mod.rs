//! Shared test helpers: a node whose keyrings are bootstrapped through the public API (tick,
//! publish, confirm), so tests sign only with published, active keys.

#![allow(dead_code)]

use std::time::Duration;

use attest::keys::SeededKeySource;
use attest::{Action, KeyringConfig, NodeKeyring, PublishedAuthorities};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use wire::{Bundle, BundleMap, Seed, TrustDomain, UnixTime};

/// 2023-11-14T22:13:20Z.
pub fn t0() -> UnixTime {
    UnixTime::from_millis(1_700_000_000_000)
}

pub fn td(name: &str) -> TrustDomain {
    name.parse().expect("trust domain")
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct Node {
    pub td: TrustDomain,
    pub keyring: NodeKeyring,
    pub published: PublishedAuthorities,
    pub keys: SeededKeySource,
    pub rng: ChaCha20Rng,
}

impl Node {
    /// A node with both keys published and active at `wall`.
    pub fn bootstrapped(td_name: &str, node_id: u64, seed: u64, wall: UnixTime) -> Node {
        let td = td(td_name);
        let cfg = KeyringConfig::new(td.clone(), node_id);
        let mut node = Node {
            td,
            keyring: NodeKeyring::new(cfg.clone(), cfg),
            published: PublishedAuthorities::new(),
            keys: SeededKeySource::new(Seed::from_u64(seed)),
            rng: rng(seed),
        };
        node.run(wall);
        assert!(node.keyring.active_x509(wall).is_some());
        assert!(node.keyring.active_jwt(wall).is_some());
        node
    }

    /// One tick with every publication confirmed at once.
    pub fn run(&mut self, wall: UnixTime) -> Vec<Action> {
        let mut out = Vec::new();
        self.keyring
            .handle_tick(wall, &self.keys, &mut self.rng, &mut out)
            .expect("tick");
        let mut i = 0;
        while i < out.len() {
            match out[i].clone() {
                Action::Prepare(a) => {
                    self.published.publish(a.clone()).expect("publish");
                    self.keyring.handle_published(&a.id, wall, &mut out);
                }
                Action::Prune { id } => {
                    self.published.prune(&id);
                }
                Action::Activate { .. } => {}
            }
            i += 1;
        }
        out
    }

    pub fn bundle(&self) -> Bundle {
        self.published.bundle(300)
    }

    pub fn bundle_map(&self) -> BundleMap {
        let mut m = BundleMap::default();
        m.0.insert(self.td.clone(), self.bundle());
        m
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
