//! A run's fault mix, drawn from its seed ("swarm testing").

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::net::NetConfig;

use super::{Hostility, SIM_KEY_TTL};

/// The fault mix of one run, chosen from its seed ("swarm testing").
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Network delays, loss and duplication during the safety phase.
    pub net: NetConfig,
    /// Isolate nodes and split the cluster.
    pub partitions: bool,
    /// Cut single directions of links.
    pub asymmetric: bool,
    /// Crash and restart nodes (losing unflushed writes).
    pub crashes: bool,
    /// Per-node wall-clock skew and cluster-wide clock steps (forcing early CA rotation).
    pub clocks: bool,
    /// Bursts of entry creates and deletes.
    pub storms: bool,
    /// Short SVID lifetimes (2–15 s, 8–15 s with skewed clocks) on new entries.
    pub tiny_ttls: bool,
    /// CA and JWT key lifetime.
    pub key_ttl: Duration,
    /// Agents (each with workloads).
    pub agents: u64,
    /// Hostile actors (see [`Hostility`]).
    pub hostile: Hostility,
    /// How many of the agents attest with x509pop (the others with a join token); x509pop
    /// agents attest again when their SVID expired offline or a copy renewed it.
    pub x509pop_agents: u64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults {
            net: NetConfig::calm(),
            partitions: false,
            asymmetric: false,
            crashes: false,
            clocks: false,
            storms: false,
            tiny_ttls: false,
            key_ttl: SIM_KEY_TTL,
            agents: 1,
            hostile: Hostility::default(),
            x509pop_agents: 0,
        }
    }

    /// A random mix drawn from `rng`.
    pub fn swarm(rng: &mut ChaCha20Rng) -> Faults {
        let delay_max_ms = [5, 20, 80, 200][rng.gen_range(0..4)];
        let mut faults = Faults {
            net: NetConfig {
                delay_min_ms: 1,
                delay_max_ms,
                loss: [0.0, 0.01, 0.05, 0.2][rng.gen_range(0..4)],
                duplicate: [0.0, 0.01, 0.1][rng.gen_range(0..3)],
                in_flight_max: 10_000,
            },
            partitions: rng.gen_bool(0.6),
            asymmetric: rng.gen_bool(0.4),
            crashes: rng.gen_bool(0.5),
            clocks: rng.gen_bool(0.4),
            storms: rng.gen_bool(0.3),
            tiny_ttls: rng.gen_bool(0.4),
            key_ttl: SIM_KEY_TTL * rng.gen_range(1..=2),
            agents: rng.gen_range(1..=3),
            // Drawn late: the other faults of a seed stay what they were before hostile actors.
            hostile: Hostility::swarm(rng),
            x509pop_agents: 0,
        };
        faults.x509pop_agents = rng.gen_range(0..=faults.agents);
        faults
    }
}
