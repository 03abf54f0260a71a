//! A UDP relay in front of one server node, for real-process partitions on loopback.
//!
//! Every node advertises its relay's address instead of its own, so all QUIC traffic to the
//! node — from other nodes and from agents — passes through the relay. Each sender gets its own
//! upstream socket (so the node's answers find their way back). The relay forwards or drops by
//! rule: drop everything ([`Relay::isolate`]) or drop what comes from, and goes back to, given
//! source addresses ([`Relay::block`]). A node's source address is its bind address (quinn sends
//! from its one socket), so blocking node A at B's relay and B at A's relay cuts the pair in both
//! directions; blocking only one side gives an asymmetric cut.
//!
//! Loopback only: the relay binds 127.0.0.1 and forwards to a loopback target.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Most distinct senders one relay serves (each costs a socket and a task).
pub const SENDERS_MAX: usize = 512;
/// Largest datagram relayed (QUIC stays far below).
const DATAGRAM_MAX: usize = 65_535;

#[derive(Debug, Default)]
struct Rules {
    isolated: bool,
    blocked: BTreeSet<SocketAddr>,
}

impl Rules {
    fn drops(&self, sender: &SocketAddr) -> bool {
        self.isolated || self.blocked.contains(sender)
    }
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: u64,
    dropped: u64,
}

#[derive(Debug)]
struct Shared {
    rules: Mutex<Rules>,
    counters: Mutex<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn pass(&self, sender: &SocketAddr) -> bool {
        let drop = lock(&self.rules).drops(sender);
        let mut c = lock(&self.counters);
        if drop {
            c.dropped += 1;
        } else {
            c.forwarded += 1;
        }
        !drop
    }
}

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 (`port` 0: any free port) forwarding to `target`, on the
    /// current tokio runtime.
    pub async fn start(port: u16, target: SocketAddr) -> std::io::Result<Relay> {
        if !target.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the relay only forwards to loopback, not {target}"),
            ));
        }
        let front = Arc::new(UdpSocket::bind(("127.0.0.1", port)).await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            rules: Mutex::new(Rules::default()),
            counters: Mutex::new(Counters::default()),
        });
        let (stop, stopped) = watch::channel(false);
        spawn(front_loop(front, target, shared.clone(), stopped));
        Ok(Relay {
            addr,
            target,
            shared,
            stop,
        })
    }

    /// The address to advertise instead of the node's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node behind it.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Drops all traffic (true) or none of it beyond the blocked senders (false).
    pub fn isolate(&self, on: bool) {
        lock(&self.shared.rules).isolated = on;
    }

    /// Drops traffic from `sender` and back to it.
    pub fn block(&self, sender: SocketAddr) {
        lock(&self.shared.rules).blocked.insert(sender);
    }

    /// Forwards everything again.
    pub fn heal(&self) {
        let mut rules = lock(&self.shared.rules);
        rules.isolated = false;
        rules.blocked.clear();
    }

    /// (datagrams forwarded, datagrams dropped) so far, both directions.
    pub fn counters(&self) -> (u64, u64) {
        let c = lock(&self.shared.counters);
        (c.forwarded, c.dropped)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[allow(clippy::disallowed_methods)] // the chaos harness runs its relays as tasks
fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    tokio::spawn(f);
}

/// Receives from senders and forwards to the node through each sender's upstream socket.
async fn front_loop(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (len, sender) = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            r = front.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(_) => continue, // e.g. ICMP-induced errors on loopback
            },
        };
        if !shared.pass(&sender) {
            continue;
        }
        let upstream = match upstreams.get(&sender) {
            Some(u) => u.clone(),
            None => {
                if upstreams.len() >= SENDERS_MAX {
                    continue;
                }
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams.insert(sender, u.clone());
                spawn(back_loop(
                    u.clone(),
                    front.clone(),
                    sender,
                    shared.clone(),
                    stopped.clone(),
                ));
                u
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}

/// Returns the node's answers to one sender.
async fn back_loop(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    sender: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let len = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            r = upstream.recv(&mut buf) => match r {
                Ok(len) => len,
                Err(_) => continue,
            },
        };
        if shared.pass(&sender) {
            let _ = front.send_to(&buf[..len], sender).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = s.local_addr().expect("addr");
        spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn ask(client: &UdpSocket, relay: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        client.send_to(msg, relay).await.expect("send");
        let mut buf = [0u8; 1500];
        tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
            .await
            .ok()
            .map(|r| buf[..r.expect("recv").0].to_vec())
    }

    #[tokio::test]
    async fn forwards_and_drops_by_rule() {
        let relay = Relay::start(0, echo().await).await.expect("relay");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("b");
        assert_eq!(
            ask(&a, relay.addr(), b"hi").await.as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(
            ask(&b, relay.addr(), b"yo").await.as_deref(),
            Some(&b"yo"[..])
        );
        relay.block(a.local_addr().expect("addr"));
        assert_eq!(ask(&a, relay.addr(), b"hi").await, None, "a is cut");
        assert!(
            ask(&b, relay.addr(), b"yo").await.is_some(),
            "b still passes"
        );
        relay.isolate(true);
        assert_eq!(ask(&b, relay.addr(), b"yo").await, None, "isolated");
        relay.heal();
        assert!(ask(&a, relay.addr(), b"hi").await.is_some(), "healed");
        let (forwarded, dropped) = relay.counters();
        assert!(forwarded >= 6 && dropped >= 2, "{forwarded} {dropped}");
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        let target: SocketAddr = "192.0.2.1:9".parse().expect("addr");
        assert!(Relay::start(0, target).await.is_err());
    }
}
