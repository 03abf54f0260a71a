//! The QUIC transport over real UDP sockets on 127.0.0.1: mutual TLS with server X.509-SVIDs
//! minted by per-node CAs, rejection of every kind of wrong peer, limits, peer restart, SVID and
//! CA rotation, and a Raft cluster running over it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attest::keys::RingKeySource;
use attest::{Action, Keyring, KeyringConfig, PublishedAuthorities, X509Ca, X509SvidRequest};
use node::rt::tls::{dial_config, SERVER_NAME};
use node::rt::{NodeIdentity, QuicConfig, QuicTransport, SystemEnv, TlsKey, TrustStore};
use raft::replica::{Replica, ReplicaConfig};
use raft::MemKv;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::time::timeout;
use wire::codec::MESSAGE_BYTES_MAX;
use wire::{
    Authority, Bundle, Command, EntryId, Env, Outcome, PeerId, RegistrationEntry, SendError,
    SpiffeId, Transport, TrustDomain, UnixTime,
};

const TD: &str = "quic.test";
/// Bound on every wait for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

fn td(name: &str) -> TrustDomain {
    name.parse().expect("trust domain")
}

fn env() -> Arc<dyn Env> {
    Arc::new(SystemEnv::new().expect("env"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A per-node X.509 CA, published and active from `wall`.
struct Ca {
    ring: Keyring<X509Ca>,
    wall: UnixTime,
}

impl Ca {
    fn new(td: &TrustDomain, node_id: u64, wall: UnixTime) -> Ca {
        let mut ring = Keyring::new(KeyringConfig::new(td.clone(), node_id));
        let mut out = Vec::new();
        let mut rng = ChaCha20Rng::seed_from_u64(node_id ^ wall.as_secs());
        ring.handle_tick(wall, &RingKeySource::new(), &mut rng, &mut out)
            .expect("tick");
        let ids: Vec<String> = out
            .iter()
            .filter_map(|a| match a {
                Action::Prepare(a) => Some(a.id.clone()),
                _ => None,
            })
            .collect();
        for id in ids {
            ring.handle_published(&id, wall, &mut out);
        }
        assert!(ring.active(wall).is_some(), "CA active");
        Ca { ring, wall }
    }

    fn ca(&self) -> &X509Ca {
        self.ring.active(self.wall).expect("active CA")
    }

    fn authority(&self) -> Authority {
        self.ca().authority().clone()
    }

    /// A fresh key and an SVID for `id`, minted at `wall` for `ttl`.
    fn identity_at(&self, id: &SpiffeId, wall: UnixTime, ttl: Duration) -> NodeIdentity {
        let key = TlsKey::generate().expect("key");
        let req = X509SvidRequest {
            spiffe_id: id,
            dns_names: &[],
            public_key_der: key.public_key_der(),
            ttl,
            not_before_cushion: secs(10),
        };
        let mut rng = ChaCha20Rng::seed_from_u64(wall.as_millis());
        let svid = self.ca().mint(&req, wall, &mut rng).expect("mint");
        NodeIdentity::new(vec![svid.cert_der], &key).expect("identity")
    }

    fn identity(&self, id: &SpiffeId) -> NodeIdentity {
        self.identity_at(id, self.wall, secs(3600))
    }
}

fn bundle(authorities: &[Authority]) -> Bundle {
    let mut p = PublishedAuthorities::new();
    for a in authorities {
        p.publish(a.clone()).expect("publish");
    }
    p.bundle(300)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn start(
    node_id: PeerId,
    identity: &NodeIdentity,
    trust: Arc<TrustStore>,
    env: &Arc<dyn Env>,
) -> QuicTransport {
    start_with(QuicConfig::new(node_id, loopback()), identity, trust, env)
}

fn start_with(
    config: QuicConfig,
    identity: &NodeIdentity,
    trust: Arc<TrustStore>,
    env: &Arc<dyn Env>,
) -> QuicTransport {
    QuicTransport::bind(config, identity, trust, env.clone()).expect("bind")
}

fn mesh(nodes: &[&QuicTransport]) {
    for a in nodes {
        for b in nodes {
            if a.node_id() != b.node_id() {
                a.set_peer(b.node_id(), b.local_addr());
            }
        }
    }
}

/// The next frame at `t`, within `WAIT`.
async fn next(t: &QuicTransport) -> (PeerId, Vec<u8>) {
    timeout(WAIT, t.recv())
        .await
        .expect("a frame in time")
        .expect("transport open")
}

/// Nothing arrives at `t` for `d`.
async fn nothing_for(t: &QuicTransport, d: Duration) {
    if let Ok(got) = timeout(d, t.recv()).await {
        panic!("unexpected frame: {:?}", got.map(|(p, f)| (p, f.len())));
    }
}

/// Waits until `cond` holds, polling.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Three nodes, each with its own CA in the shared bundle.
struct Cluster {
    env: Arc<dyn Env>,
    cas: Vec<Ca>,
    trusts: Vec<Arc<TrustStore>>,
    nodes: Vec<QuicTransport>,
}

fn cluster(n: u64, config: impl Fn(u64) -> QuicConfig) -> Cluster {
    let env = env();
    let td = self::td(TD);
    let wall = env.wall();
    let cas: Vec<Ca> = (1..=n).map(|i| Ca::new(&td, i, wall)).collect();
    let b = bundle(&cas.iter().map(Ca::authority).collect::<Vec<_>>());
    let mut trusts = Vec::new();
    let mut nodes = Vec::new();
    for (i, ca) in (1..=n).zip(&cas) {
        let trust = TrustStore::new(td.clone(), b.clone());
        let identity = ca.identity(&td.server_id(i));
        nodes.push(start_with(config(i), &identity, trust.clone(), &env));
        trusts.push(trust);
    }
    mesh(&nodes.iter().collect::<Vec<_>>());
    Cluster {
        env,
        cas,
        trusts,
        nodes,
    }
}

/// Every node sends `tag` to every other; every frame arrives, tagged with its sender.
async fn all_to_all(nodes: &[QuicTransport], tag: &str) {
    for a in nodes {
        for b in nodes {
            if a.node_id() != b.node_id() {
                let body = format!("{tag} {}->{}", a.node_id(), b.node_id());
                a.send(b.node_id(), body.into_bytes()).expect("send");
            }
        }
    }
    for b in nodes {
        let mut got = BTreeSet::new();
        while got.len() < nodes.len() - 1 {
            let (from, frame) = next(b).await;
            let text = String::from_utf8(frame).expect("utf8");
            if !text.starts_with(tag) {
                continue; // a late frame of an earlier round
            }
            assert_eq!(
                text,
                format!("{tag} {from}->{}", b.node_id()),
                "tagged with the verified sender"
            );
            got.insert(from);
        }
    }
}

/// Like [`all_to_all`], for a round that may race connection revocation: a frame written to a
/// connection that revalidation closes is lost (the transport is lossy, Raft retries), so missing
/// frames are sent again every 500 ms until every pair has delivered one, within `WAIT`.
async fn all_to_all_resending(nodes: &[QuicTransport], tag: &str) {
    let mut missing: BTreeSet<(PeerId, PeerId)> = nodes
        .iter()
        .flat_map(|a| nodes.iter().map(move |b| (a.node_id(), b.node_id())))
        .filter(|(a, b)| a != b)
        .collect();
    let delivered = timeout(WAIT, async {
        while !missing.is_empty() {
            for &(from, to) in &missing {
                let a = nodes.iter().find(|t| t.node_id() == from).expect("node");
                a.send(to, format!("{tag} {from}->{to}").into_bytes())
                    .expect("send");
            }
            for b in nodes {
                while let Ok(got) = timeout(Duration::from_millis(500) / 3, b.recv()).await {
                    let (from, frame) = got.expect("transport open");
                    let text = String::from_utf8(frame).expect("utf8");
                    if text.starts_with(tag) {
                        assert_eq!(
                            text,
                            format!("{tag} {from}->{}", b.node_id()),
                            "tagged with the verified sender"
                        );
                        missing.remove(&(from, b.node_id()));
                    }
                }
            }
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "{tag}: frames still missing after {WAIT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_frames_tagged_with_verified_peer_ids() {
    let c = cluster(3, |i| QuicConfig::new(i, loopback()));
    all_to_all(&c.nodes, "hello").await;
    all_to_all(&c.nodes, "again").await;
    for t in &c.nodes {
        // The writer counts a frame after the receiver may already have it.
        until("counters", || t.stats().frames_sent == 4).await;
        let s = t.stats();
        assert_eq!(s.dials, 2, "one connection per peer, reused: {s:?}");
        assert_eq!(s.accepted, 2, "{s:?}");
        assert_eq!(s.frames_received, 4, "{s:?}");
        assert_eq!(s.frames_dropped, 0, "{s:?}");
        assert!(t.rtt(1 + t.node_id() % 3).is_some());
    }
    for t in &c.nodes {
        t.close().await;
        assert!(t.recv().await.is_none(), "recv ends after close");
        assert_eq!(t.send(1, vec![1]), Err(SendError::Closed));
    }
}

/// A bad peer (id 9) and a good node (id 1): nothing crosses in either direction, and the good
/// node refused the bad one's certificate.
async fn refused(good: &QuicTransport, bad: &QuicTransport, case: &str) {
    good.set_peer(9, bad.local_addr());
    bad.set_peer(1, good.local_addr());
    let before = good.stats();
    bad.send(1, b"from a bad peer".to_vec()).expect("queued");
    good.send(9, b"to a bad peer".to_vec()).expect("queued");
    until(case, || {
        let s = good.stats();
        s.inbound_refused > before.inbound_refused && s.dial_failures > before.dial_failures
    })
    .await;
    nothing_for(good, Duration::from_millis(500)).await;
    nothing_for(bad, Duration::from_millis(100)).await;
    assert_eq!(good.stats().accepted, before.accepted, "{case}");
    assert_eq!(good.stats().dials, before.dials, "{case}");
    bad.close().await;
    good.remove_peer(9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_failing_verification_are_refused() {
    let env = env();
    let td = self::td(TD);
    let wall = env.wall();
    let good_ca = Ca::new(&td, 1, wall);
    let trusted = bundle(&[good_ca.authority()]);
    let good = start(
        1,
        &good_ca.identity(&td.server_id(1)),
        TrustStore::new(td.clone(), trusted.clone()),
        &env,
    );
    let server9 = td.server_id(9);

    // 1. A CA that is not in the bundle (the bad peer itself trusts both).
    let rogue = Ca::new(&td, 9, wall);
    let bad = start(
        9,
        &rogue.identity(&server9),
        TrustStore::new(
            td.clone(),
            bundle(&[good_ca.authority(), rogue.authority()]),
        ),
        &env,
    );
    refused(&good, &bad, "a CA outside the bundle").await;

    // 2. A valid chain for a non-server identity.
    let web: SpiffeId = format!("spiffe://{TD}/web").parse().expect("id");
    let bad = start(
        9,
        &good_ca.identity(&web),
        TrustStore::new(td.clone(), trusted.clone()),
        &env,
    );
    refused(&good, &bad, "a workload identity").await;

    // 3. A server identity of another trust domain (its CA is valid for that domain).
    let other = self::td("other.test");
    let foreign = Ca::new(&other, 9, wall);
    let bad = start(
        9,
        &foreign.identity(&other.server_id(9)),
        TrustStore::new(td.clone(), trusted.clone()),
        &env,
    );
    refused(&good, &bad, "another trust domain").await;

    // 4. An expired SVID from a CA in the bundle.
    let past = wall.saturating_sub(secs(3 * 3600));
    let old_ca = Ca::new(&td, 9, past);
    let expired = old_ca.identity_at(&server9, past.saturating_add(secs(600)), secs(3600));
    let both = bundle(&[good_ca.authority(), old_ca.authority()]);
    good.trust().update(both.clone());
    let bad = start(9, &expired, TrustStore::new(td.clone(), both.clone()), &env);
    refused(&good, &bad, "an expired SVID").await;

    // 5. A valid server SVID for node 9 answering where node 5 was dialled.
    let impostor = start(
        9,
        &old_ca.identity_at(&server9, wall, secs(600)),
        TrustStore::new(td.clone(), both),
        &env,
    );
    let before = good.stats();
    good.set_peer(5, impostor.local_addr());
    good.send(5, b"for node 5".to_vec()).expect("queued");
    until("dial to the wrong node fails", || {
        good.stats().dial_failures > before.dial_failures
    })
    .await;
    assert_eq!(good.stats().dials, before.dials);
    nothing_for(&impostor, Duration::from_millis(300)).await;
    good.close().await;
    impostor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_unknown_peers_and_full_queues() {
    let mut c = cluster(2, |i| {
        let mut cfg = QuicConfig::new(i, loopback());
        cfg.queue_frames_max = 4;
        cfg
    });
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let huge = vec![7u8; MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        a.send(2, huge),
        Err(SendError::TooLarge {
            bytes: MESSAGE_BYTES_MAX + 1,
            bytes_max: MESSAGE_BYTES_MAX
        })
    );
    assert_eq!(a.send(42, vec![1]), Err(SendError::UnknownPeer(42)));

    // The largest frame allowed crosses intact.
    let max = vec![0xa5u8; MESSAGE_BYTES_MAX];
    a.send(2, max.clone()).expect("send max");
    let (from, frame) = next(b).await;
    assert_eq!((from, frame.len()), (1, MESSAGE_BYTES_MAX));
    assert!(frame == max);

    // A peer that never answers: the queue fills and `send` reports Overloaded, at once.
    let silent = std::net::UdpSocket::bind(loopback()).expect("udp");
    a.set_peer(3, silent.local_addr().expect("addr"));
    let results: Vec<_> = (0..20).map(|i| a.send(3, vec![i])).collect();
    assert!(results.iter().take(4).all(Result::is_ok), "{results:?}");
    assert!(
        results.contains(&Err(SendError::Overloaded(3))),
        "{results:?}"
    );
    a.remove_peer(3);
    assert_eq!(a.send(3, vec![1]), Err(SendError::UnknownPeer(3)));
    for t in c.nodes.drain(..) {
        t.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_drops_oversized_frames_and_keeps_the_connection() {
    let mut c = cluster(2, |i| QuicConfig::new(i, loopback()));
    let b = &c.nodes[1];
    // A raw client speaking the protocol as node 1, without `send`'s size check.
    let identity = c.cas[0].identity(&self::td(TD).server_id(1));
    let tls = dial_config(&identity, c.trusts[0].clone(), c.env.clone(), 2).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    let conn = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            b.local_addr(),
            SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("handshake");

    let mut big = conn.open_uni().await.expect("stream");
    // The receiver stops the stream once past the limit, so the write may fail: either way.
    let _ = big.write_all(&vec![1u8; MESSAGE_BYTES_MAX + 1]).await;
    let _ = big.finish();
    until("oversized frame dropped", || b.stats().frames_dropped == 1).await;

    let mut small = conn.open_uni().await.expect("stream");
    small.write_all(b"after").await.expect("write");
    small.finish().expect("finish");
    assert_eq!(
        next(b).await,
        (1, b"after".to_vec()),
        "same connection still works"
    );
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    for t in c.nodes.drain(..) {
        t.close().await;
    }
}

/// Loopback throughput and RTT (printed; run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_loopback_throughput() {
    let mut c = cluster(2, |i| QuicConfig::new(i, loopback()));
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    all_to_all(&c.nodes, "warm").await;
    for (size, count) in [(200usize, 20_000usize), (64 << 10, 2_000)] {
        let t0 = c.env.mono();
        let mut sent = 0;
        let mut received = 0;
        while received < count {
            while sent < count {
                match a.send(2, vec![0u8; size]) {
                    Ok(()) => sent += 1,
                    Err(SendError::Overloaded(_)) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            next(b).await;
            received += 1;
        }
        let elapsed = c.env.mono().saturating_since(t0);
        eprintln!(
            "{size} B frames: {count} in {elapsed:?} = {:.0} frames/s, {:.1} MB/s",
            count as f64 / elapsed.as_secs_f64(),
            (count * size) as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
    // Ping-pong round trips through the whole stack.
    let rounds = 2_000;
    let t0 = c.env.mono();
    for i in 0..rounds {
        a.send(2, vec![i as u8]).expect("ping");
        next(b).await;
        b.send(1, vec![i as u8]).expect("pong");
        next(a).await;
    }
    let elapsed = c.env.mono().saturating_since(t0);
    eprintln!(
        "frame round trip: {:?} mean over {rounds}; QUIC RTT estimate {:?}",
        elapsed / rounds,
        a.rtt(2)
    );
    for t in c.nodes.drain(..) {
        t.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_again() {
    let mut c = cluster(2, |i| QuicConfig::new(i, loopback()));
    all_to_all(&c.nodes, "before").await;
    let b = c.nodes.pop().expect("b");
    let addr = b.local_addr();
    b.close().await;
    drop(b);

    // Same node, same address, fresh process state (new key and SVID).
    let td = self::td(TD);
    let identity = c.cas[1].identity(&td.server_id(2));
    let mut config = QuicConfig::new(2, addr);
    config.backoff_max = Duration::from_millis(500);
    let restarted = timeout(WAIT, async {
        loop {
            match QuicTransport::bind(
                config.clone(),
                &identity,
                c.trusts[1].clone(),
                c.env.clone(),
            ) {
                Ok(t) => break t,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("port released");
    restarted.set_peer(1, c.nodes[0].local_addr());
    let a = &c.nodes[0];

    // The old node's frames to the dead incarnation may be lost; keep sending until both
    // directions deliver.
    let t0 = c.env.mono();
    let (mut a_got, mut b_got) = (false, false);
    timeout(WAIT, async {
        while !(a_got && b_got) {
            let _ = a.send(2, b"a->b".to_vec());
            let _ = restarted.send(1, b"b->a".to_vec());
            tokio::select! {
                got = a.recv() => a_got |= got.is_some_and(|(p, f)| p == 2 && f == b"b->a"),
                got = restarted.recv() => b_got |= got.is_some_and(|(p, f)| p == 1 && f == b"a->b"),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await
    .expect("frames flow again after the restart");
    eprintln!(
        "restart: both directions flowing {:?} after rebinding",
        c.env.mono().saturating_since(t0)
    );
    restarted.close().await;
    for t in c.nodes.drain(..) {
        t.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_identity_and_pruned_authority() {
    let mut c = cluster(3, |i| {
        let mut cfg = QuicConfig::new(i, loopback());
        cfg.revalidate_interval = Duration::from_millis(200);
        cfg.backoff_max = Duration::from_millis(500);
        cfg
    });
    all_to_all(&c.nodes, "old").await;

    // Node 1 prepares a new CA; the bundle with it reaches every node first.
    let td = self::td(TD);
    let wall = c.env.wall();
    let next_ca = Ca::new(&td, 1, wall.saturating_add(secs(1)));
    let mut auths: Vec<Authority> = c.cas.iter().map(Ca::authority).collect();
    auths.push(next_ca.authority());
    for t in &c.trusts {
        t.update(bundle(&auths));
    }
    c.nodes[0].set_identity(&next_ca.identity(&td.server_id(1)));

    // The old CA is pruned: connections still authenticated by node 1's old SVID are closed by
    // revalidation, and the redialled ones must use the new SVID (the old no longer verifies).
    auths.remove(0);
    for t in &c.trusts {
        t.update(bundle(&auths));
    }
    until("old connections revoked", || {
        c.nodes[1].stats().revoked > 0 && c.nodes[2].stats().revoked > 0
    })
    .await;
    all_to_all_resending(&c.nodes, "new").await;
    assert!(c.nodes[1].stats().dials >= 2, "node 2 redialled node 1");
    for t in c.nodes.drain(..) {
        t.close().await;
    }
    drop(c.cas);
}

fn entry(n: u8) -> RegistrationEntry {
    RegistrationEntry {
        id: EntryId::from_random([n; 16]),
        spiffe_id: format!("spiffe://{TD}/w/{n}").parse().expect("id"),
        parent_id: format!("spiffe://{TD}/sigil/agent/test/1")
            .parse()
            .expect("id"),
        selectors: [format!("unix:uid:{n}").parse().expect("selector")]
            .into_iter()
            .collect(),
        x509_svid_ttl_secs: 0,
        jwt_svid_ttl_secs: 0,
        dns_names: vec![],
        federates_with: BTreeSet::new(),
        admin: false,
        downstream: false,
        hint: String::new(),
        revision: 0,
        created_at_secs: 0,
        expires_at_secs: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_runs_over_quic() {
    let mut c = cluster(3, |i| QuicConfig::new(i, loopback()));
    let config = ReplicaConfig::default();
    let mut replicas = Vec::new();
    for t in &c.nodes {
        let r = Replica::start(t.node_id(), &config, MemKv::new(), t.clone())
            .await
            .expect("replica");
        replicas.push(r);
    }
    let members: BTreeMap<u64, openraft::BasicNode> = c
        .nodes
        .iter()
        .map(|t| (t.node_id(), openraft::BasicNode::new(t.local_addr())))
        .collect();
    replicas[0].initialize(members).await.expect("initialize");

    let mut leader = None;
    until("a leader known to all", || {
        let seen: BTreeSet<Option<u64>> = replicas
            .iter()
            .map(|r| r.raft().metrics().borrow().current_leader)
            .collect();
        leader = seen.iter().next().copied().flatten();
        seen.len() == 1 && leader.is_some()
    })
    .await;
    let leader = leader.expect("leader");
    let follower = replicas
        .iter()
        .find(|r| r.id() != leader)
        .expect("a follower");

    let e = entry(1);
    let t0 = c.env.mono();
    let response = follower
        .write(Command::CreateEntries {
            entries: vec![e.clone()],
        })
        .await
        .expect("forwarded write commits");
    eprintln!(
        "forwarded write committed in {:?}",
        c.env.mono().saturating_since(t0)
    );
    match response {
        Ok(Outcome::Created(results)) => assert!(results.iter().all(Result::is_ok)),
        other => panic!("unexpected response {other:?}"),
    }
    for r in &replicas {
        let mut progress = r.subscribe();
        timeout(WAIT, async {
            while !r.read(|a| a.state.entry(&e.id).is_some()) {
                let _ = progress.changed().await;
            }
        })
        .await
        .expect("applied on every node");
    }
    for r in &replicas {
        r.shutdown().await;
    }
    for t in c.nodes.drain(..) {
        t.close().await;
    }
}
