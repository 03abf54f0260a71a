//! The safety phase's schedule: one seeded step at a time, a client action or a fault, the
//! hostile actors' turn, then a pause. The draws from the world's RNG, and their order, are
//! what a seed reproduces.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::agent::AGENT_PEER_BASE;

use super::{event, Faults, World};

impl World {
    /// One step of the safety phase: a client action or a fault, then a pause.
    pub(super) async fn step(&mut self, faults: &Faults) {
        // Clients write through members (the removed node's own proposals are the hostile
        // actor's, checked apart).
        let live = self.members();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let roll = self.rng.gen_range(0..100);
        let pick = |rng: &mut ChaCha20Rng, from: &[u64]| from[rng.gen_range(0..from.len())];
        match roll {
            0..=54 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.spawn_create(id);
            }
            55..=64 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.spawn_delete(id);
            }
            65..=72 if faults.partitions => {
                // Agents land on either side of a cut, like the servers.
                let peers: Vec<u64> = ids
                    .iter()
                    .copied()
                    .chain(self.agents.iter().map(|a| a.peer))
                    .collect();
                match self.rng.gen_range(0..3) {
                    0 => {
                        let victim = pick(&mut self.rng, &ids);
                        let mut alone = vec![victim];
                        let mut rest = Vec::new();
                        for p in peers.into_iter().filter(|p| *p != victim) {
                            if p >= AGENT_PEER_BASE && self.rng.gen_bool(0.3) {
                                alone.push(p);
                            } else {
                                rest.push(p);
                            }
                        }
                        self.net.partition(&[alone, rest]);
                    }
                    1 => {
                        let mut a = Vec::new();
                        let mut b = Vec::new();
                        for p in peers {
                            if self.rng.gen_bool(0.5) {
                                a.push(p);
                            } else {
                                b.push(p);
                            }
                        }
                        self.net.partition(&[a, b]);
                    }
                    _ => self.net.heal(),
                }
            }
            73..=77 if faults.asymmetric => {
                let from = pick(&mut self.rng, &ids);
                let to = pick(&mut self.rng, &ids);
                if from != to {
                    event(|| format!("cut {from} -> {to}"));
                    self.net.cut(from, to);
                }
            }
            82..=91 if !live.is_empty() => {
                let id = pick(&mut self.rng, &live);
                self.issue(id);
            }
            92..=94 => {
                // A quiet stretch: time passes (keys prepare, activate, expire, get pruned)
                // while agents keep syncing.
                let secs = self.rng.gen_range(3..12);
                for _ in 0..secs {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.tick_agents().await;
                }
            }
            95..=96 if faults.clocks => {
                // A clock step on every host at once (NTP correction, VM resume): mostly
                // forward, which brings CA rotation early; sometimes a little back.
                let ms = if self.rng.gen_bool(0.8) {
                    self.rng.gen_range(3_000..=15_000)
                } else {
                    -self.rng.gen_range(500..=2_000)
                };
                event(|| format!("every wall clock steps {ms} ms"));
                for env in self.envs.values() {
                    env.step_wall_ms(ms);
                }
            }
            97..=99 if faults.storms && !live.is_empty() => {
                // A storm: a burst of creates and deletes at random nodes.
                for _ in 0..self.rng.gen_range(5..20) {
                    let id = pick(&mut self.rng, &live);
                    if self.rng.gen_bool(0.7) {
                        self.spawn_create(id);
                    } else {
                        self.spawn_delete(id);
                    }
                }
            }
            78..=81 if faults.crashes => {
                let id = pick(&mut self.rng, &ids);
                if self.replica(id).is_some() {
                    self.crash(id).await;
                } else {
                    self.restart(id).await;
                }
            }
            _ => {}
        }
        self.hostile_step(&faults.hostile).await;
        self.observe_cut_off();
        let pause = self.rng.gen_range(5..100);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if self.rng.gen_bool(0.3) {
            self.tick_agents().await;
        }
        self.observe_leaders();
    }
}
