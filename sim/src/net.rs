//! [`SimNet`]: the simulated network behind the [`Transport`] seam.
//!
//! Every frame gets a delay drawn from the seeded RNG (so frames reorder), may be lost or
//! duplicated, and is dropped when its link is cut — at send time and again at delivery time, so
//! frames in flight when a partition starts are lost too. Links are directed, which makes
//! asymmetric partitions (A hears B, B does not hear A) one call. Every delivery is folded into a
//! trace hash: two runs of one seed must end with the same hash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::mpsc;
use wire::{PeerId, Seed, SendError, Transport};

/// Fault knobs of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Shortest one-way delay.
    pub delay_min_ms: u64,
    /// Longest one-way delay.
    pub delay_max_ms: u64,
    /// Probability a frame is lost.
    pub loss: f64,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Most frames in flight per destination; beyond it `send` answers `Overloaded`.
    pub in_flight_max: usize,
}

impl NetConfig {
    /// No loss, no duplication, 1–5 ms delays.
    pub fn calm() -> NetConfig {
        NetConfig {
            delay_min_ms: 1,
            delay_max_ms: 5,
            loss: 0.0,
            duplicate: 0.0,
            in_flight_max: 10_000,
        }
    }
}

/// Counters of what the network did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to a destination.
    pub delivered: u64,
    /// Frames lost to loss, partitions or down nodes.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

/// FNV-1a over bytes, continuing from `h`.
pub(crate) fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

type Inbox = mpsc::UnboundedSender<(PeerId, Vec<u8>)>;

#[derive(Debug)]
struct NetInner {
    rng: ChaCha20Rng,
    config: NetConfig,
    inboxes: BTreeMap<PeerId, Inbox>,
    in_flight: BTreeMap<PeerId, usize>,
    cut: BTreeSet<(PeerId, PeerId)>,
    down: BTreeSet<PeerId>,
    trace: u64,
    stats: NetStats,
    tap: Option<TapFn>,
}

/// Sees every delivered frame (the secret checker).
pub type Tap = Arc<dyn Fn(PeerId, PeerId, &[u8]) + Send + Sync>;

struct TapFn(Tap);

impl std::fmt::Debug for TapFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

impl NetInner {
    fn link_up(&self, from: PeerId, to: PeerId) -> bool {
        !self.cut.contains(&(from, to)) && !self.down.contains(&from) && !self.down.contains(&to)
    }
}

/// The simulated network; cheap to clone (all clones are the same network).
#[derive(Debug, Clone)]
pub struct SimNet {
    inner: Arc<Mutex<NetInner>>,
}

impl SimNet {
    /// A network whose randomness comes from `seed`.
    pub fn new(seed: Seed, config: NetConfig) -> SimNet {
        SimNet {
            inner: Arc::new(Mutex::new(NetInner {
                rng: seed.child("net").rng(),
                config,
                inboxes: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                cut: BTreeSet::new(),
                down: BTreeSet::new(),
                trace: 0xcbf2_9ce4_8422_2325,
                stats: NetStats::default(),
                tap: None,
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut NetInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Attaches node `id` (again, after a restart: frames to the old endpoint are lost).
    pub fn endpoint(&self, id: PeerId) -> SimEndpoint {
        let (tx, rx) = mpsc::unbounded_channel();
        self.with(|n| n.inboxes.insert(id, tx));
        SimEndpoint {
            id,
            net: self.clone(),
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// Replaces the fault knobs.
    pub fn set_config(&self, config: NetConfig) {
        self.with(|n| n.config = config);
    }

    /// Marks a node down (crashed) or up: a down node sends and receives nothing.
    pub fn set_down(&self, id: PeerId, down: bool) {
        self.with(|n| {
            if down {
                n.down.insert(id);
            } else {
                n.down.remove(&id);
            }
        });
    }

    /// Cuts the directed link `from → to` (an asymmetric partition if the reverse stays up).
    pub fn cut(&self, from: PeerId, to: PeerId) {
        self.with(|n| n.cut.insert((from, to)));
    }

    /// Splits the nodes into groups that cannot reach each other (both directions).
    pub fn partition(&self, groups: &[Vec<PeerId>]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            self.cut(x, y);
                        }
                    }
                }
            }
        }
    }

    /// Calls `tap` with every frame delivered from now on.
    pub fn set_tap(&self, tap: Tap) {
        self.with(|n| n.tap = Some(TapFn(tap)));
    }

    /// One request/response exchange between `from` and `to` outside the framed transport (an
    /// agent's node API call): `None` when a direction is cut, an end is down, or the seed's loss
    /// drops it; else the round trip's delay, drawn like a frame's (twice). Counted in the stats.
    pub fn round_trip(&self, from: PeerId, to: PeerId) -> Option<Duration> {
        self.with(|n| {
            let loss = n.config.loss.clamp(0.0, 1.0);
            if !n.link_up(from, to) || !n.link_up(to, from) || n.rng.gen_bool(loss) {
                n.stats.dropped += 1;
                return None;
            }
            let (lo, hi) = (
                n.config.delay_min_ms,
                n.config.delay_max_ms.max(n.config.delay_min_ms),
            );
            let ms = n.rng.gen_range(lo..=hi) + n.rng.gen_range(lo..=hi);
            n.stats.delivered += 2;
            n.trace = fnv(fnv(n.trace, &from.to_le_bytes()), &to.to_le_bytes());
            Some(Duration::from_millis(ms))
        })
    }

    /// Whether frames from `from` reach `to` (neither end down, no cut).
    pub fn link_up(&self, from: PeerId, to: PeerId) -> bool {
        self.with(|n| n.link_up(from, to))
    }

    /// Whether both directions between `a` and `b` are up (neither end down, no cut).
    pub fn connected(&self, a: PeerId, b: PeerId) -> bool {
        self.with(|n| n.link_up(a, b) && n.link_up(b, a))
    }

    /// Restores every link (down nodes stay down).
    pub fn heal(&self) {
        self.with(|n| n.cut.clear());
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.with(|n| n.stats.clone())
    }

    /// The trace hash of every delivery so far.
    pub fn trace_hash(&self) -> u64 {
        self.with(|n| n.trace)
    }

    /// Sends `frame` to `to` as if `from` sent it (the transport authenticated `from`): how an
    /// attacker test plays a member that went rogue. Same faults as any frame.
    pub fn send_as(&self, from: PeerId, to: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        self.send(from, to, frame)
    }

    fn send(&self, from: PeerId, to: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        let delays = self.with(|n| {
            if !n.inboxes.contains_key(&to) {
                return Err(SendError::UnknownPeer(to));
            }
            if n.in_flight.get(&to).copied().unwrap_or(0) >= n.config.in_flight_max {
                return Err(SendError::Overloaded(to));
            }
            if !n.link_up(from, to) || n.rng.gen_bool(n.config.loss.clamp(0.0, 1.0)) {
                n.stats.dropped += 1;
                return Ok(Vec::new());
            }
            let copies = if n.rng.gen_bool(n.config.duplicate.clamp(0.0, 1.0)) {
                n.stats.duplicated += 1;
                2
            } else {
                1
            };
            let (lo, hi) = (
                n.config.delay_min_ms,
                n.config.delay_max_ms.max(n.config.delay_min_ms),
            );
            let delays: Vec<u64> = (0..copies).map(|_| n.rng.gen_range(lo..=hi)).collect();
            *n.in_flight.entry(to).or_default() += delays.len();
            Ok(delays)
        })?;
        for delay_ms in delays {
            let net = self.clone();
            let frame = frame.clone();
            // The simulator is the world's shell: it owns the (virtual) clock and the tasks.
            #[allow(clippy::disallowed_methods)]
            tokio::task::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                net.deliver(from, to, frame);
            });
        }
        Ok(())
    }

    fn deliver(&self, from: PeerId, to: PeerId, frame: Vec<u8>) {
        self.with(|n| {
            if let Some(c) = n.in_flight.get_mut(&to) {
                *c = c.saturating_sub(1);
            }
            let inbox = n.inboxes.get(&to).filter(|_| n.link_up(from, to)).cloned();
            if let (Some(tap), Some(_)) = (&n.tap, &inbox) {
                (tap.0)(from, to, &frame);
            }
            match inbox {
                Some(inbox) if inbox.send((from, frame.clone())).is_ok() => {
                    n.stats.delivered += 1;
                    let h = fnv(n.trace, &from.to_le_bytes());
                    let h = fnv(h, &to.to_le_bytes());
                    n.trace = fnv(h, &frame);
                }
                _ => n.stats.dropped += 1,
            }
        });
    }
}

/// One node's attachment to [`SimNet`].
#[derive(Debug)]
pub struct SimEndpoint {
    id: PeerId,
    net: SimNet,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(PeerId, Vec<u8>)>>,
}

impl Transport for SimEndpoint {
    fn send(&self, to: PeerId, frame: Vec<u8>) -> Result<(), SendError> {
        self.net.send(self.id, to, frame)
    }

    async fn recv(&self) -> Option<(PeerId, Vec<u8>)> {
        self.rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delivers_with_delay_and_respects_cuts() {
        let net = SimNet::new(Seed::from_u64(1), NetConfig::calm());
        let a = net.endpoint(1);
        let b = net.endpoint(2);
        a.send(2, b"hello".to_vec()).expect("send");
        let (from, frame) = b.recv().await.expect("frame");
        assert_eq!((from, frame.as_slice()), (1, &b"hello"[..]));
        assert!(matches!(a.send(9, vec![]), Err(SendError::UnknownPeer(9))));

        // Asymmetric: 1 → 2 cut, 2 → 1 still up.
        net.cut(1, 2);
        a.send(2, b"lost".to_vec()).expect("send");
        b.send(1, b"back".to_vec()).expect("send");
        assert_eq!(a.recv().await.expect("frame").1, b"back");
        let got = tokio::time::timeout(Duration::from_secs(1), b.recv()).await;
        assert!(got.is_err(), "nothing crosses a cut link");
        net.heal();
        a.send(2, b"again".to_vec()).expect("send");
        assert_eq!(b.recv().await.expect("frame").1, b"again");
        assert_eq!(net.stats().dropped, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn loss_and_duplication_follow_the_config() {
        let net = SimNet::new(
            Seed::from_u64(2),
            NetConfig {
                loss: 0.0,
                duplicate: 1.0,
                ..NetConfig::calm()
            },
        );
        let a = net.endpoint(1);
        let b = net.endpoint(2);
        a.send(2, b"x".to_vec()).expect("send");
        b.recv().await.expect("first");
        b.recv().await.expect("duplicate");
        net.set_config(NetConfig {
            loss: 1.0,
            ..NetConfig::calm()
        });
        a.send(2, b"y".to_vec()).expect("send");
        assert!(tokio::time::timeout(Duration::from_secs(1), b.recv())
            .await
            .is_err());
    }
}
