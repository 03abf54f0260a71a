//! Server nodes (Raft + CA rotation + issuer) in the simulator: every node publishes its own keys
//! through Raft before signing, signs from its local replica, keeps signing through a partition
//! up to `staleness_max`, and refuses after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use attest::x509::validate_x509_svid;
use node::server::{ServerConfig, ServerNode};
use node::Error;
use openraft::BasicNode;
use raft::replica::{Replica, ReplicaConfig};
use raft::MemKv;
use sim::env::SimEnv;
use sim::net::{NetConfig, SimEndpoint, SimNet};
use wire::{
    AgentRecord, AttestationMethod, Command, EntryId, Env, KeyAlg, RegistrationEntry, Seed,
    SpiffeId, TrustDomain, UnixTime,
};

const AGENT: &str = "spiffe://sim.test/sigil/agent/sim/1";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f)
}

struct Cluster {
    nodes: BTreeMap<u64, ServerNode<SimEndpoint>>,
    envs: BTreeMap<u64, Arc<SimEnv>>,
    net: SimNet,
}

async fn cluster(seed: u64, n: u64, staleness_max: Duration) -> Cluster {
    cluster_with(seed, n, staleness_max, attest::keyring::KEY_TTL_DEFAULT).await
}

async fn cluster_with(seed: u64, n: u64, staleness_max: Duration, key_ttl: Duration) -> Cluster {
    let seed = Seed::from_u64(seed);
    raft::runtime::seed_this_thread(seed.child("raft"));
    let net = SimNet::new(seed, NetConfig::calm());
    let td: TrustDomain = "sim.test".parse().expect("td");
    let rcfg = ReplicaConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        write_timeout_ms: 2_000,
        snapshot_after_entries: 1_000,
        keep_entries_after_snapshot: 100,
    };
    let mut nodes = BTreeMap::new();
    let mut envs = BTreeMap::new();
    for id in 1..=n {
        let env = Arc::new(SimEnv::new(seed, id, UnixTime::from_secs(1_800_000_000)));
        let replica = Replica::start(id, &rcfg, MemKv::new(), net.endpoint(id))
            .await
            .expect("replica");
        let replica = Arc::new(replica);
        if id == 1 {
            let members: BTreeMap<u64, BasicNode> = (1..=n)
                .map(|i| (i, BasicNode::new(format!("sim-{i}"))))
                .collect();
            replica.initialize(members).await.expect("initialize");
        }
        let mut cfg = ServerConfig::new(id, td.clone());
        cfg.issuer.staleness_max = staleness_max;
        cfg.key_ttl = key_ttl;
        let dyn_env: Arc<dyn Env> = env.clone();
        nodes.insert(id, ServerNode::start(cfg, dyn_env, replica));
        envs.insert(id, env);
    }
    Cluster { nodes, envs, net }
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let mut waited = Duration::ZERO;
    while waited < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    f()
}

fn entry() -> RegistrationEntry {
    let mut e = RegistrationEntry::new(
        EntryId::from_random([3; 16]),
        "spiffe://sim.test/web".parse().expect("id"),
        AGENT.parse().expect("id"),
        ["unix:uid:1000".parse().expect("sel")].into(),
        0,
    );
    e.x509_svid_ttl_secs = 600;
    e
}

async fn register(c: &Cluster) {
    let any = c.nodes.values().next().expect("a node");
    any.replica()
        .write(Command::RegisterAgent {
            agent: AgentRecord {
                spiffe_id: AGENT.parse().expect("id"),
                method: AttestationMethod::JoinToken,
                selectors: vec![],
                banned: false,
                svid_serial: String::new(),
                svid_not_after: UnixTime::EPOCH,
                previous_serial: String::new(),
                renewed_at: UnixTime::EPOCH,
                attested_at: UnixTime::EPOCH,
            },
        })
        .await
        .expect("commit")
        .expect("registered");
    any.replica()
        .write(Command::CreateEntries {
            entries: vec![entry()],
        })
        .await
        .expect("commit")
        .expect("created");
}

fn issue(c: &Cluster, id: u64) -> Result<Vec<u8>, Error> {
    let key = c.envs[&id]
        .keys()
        .generate(KeyAlg::EcP256)
        .expect("workload key");
    let agent: SpiffeId = AGENT.parse().expect("id");
    c.nodes[&id]
        .issue_x509(&agent, &EntryId::from_random([3; 16]), key.public_key_der())
        .map(|s| s.cert_der)
}

#[test]
fn every_node_publishes_its_keys_then_issues_locally() {
    block_on(async {
        let c = cluster(21, 3, Duration::from_secs(600)).await;
        let all_active = wait_until(Duration::from_secs(20), || {
            c.nodes.values().all(|n| n.has_active_ca())
        })
        .await;
        assert!(
            all_active,
            "every node activates a CA once its publication commits"
        );
        register(&c).await;
        let settled = wait_until(Duration::from_secs(5), || {
            c.nodes.values().all(|n| {
                let b = n.bundle();
                b.x509_authorities.len() == 3 && b.jwt_authorities.len() == 3
            })
        })
        .await;
        assert!(settled, "the bundle is the union of all nodes' authorities");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let td: TrustDomain = "sim.test".parse().expect("td");
        for id in 1..=3 {
            let cert = issue(&c, id).unwrap_or_else(|e| panic!("node {id}: {e}"));
            // Verified against another node's view of the bundle.
            let other = if id == 3 { 1 } else { id + 1 };
            let bundle = c.nodes[&other].bundle();
            let wall = c.envs[&other].wall();
            let sid = validate_x509_svid(&[cert.as_slice()], &(td.clone(), bundle), wall)
                .expect("chains to the replicated bundle");
            assert_eq!(sid.as_str(), "spiffe://sim.test/web");
        }
        for n in c.nodes.values() {
            n.stop();
        }
    });
}

#[test]
fn a_partitioned_node_issues_until_staleness_max_then_refuses() {
    block_on(async {
        let staleness = Duration::from_secs(30);
        let c = cluster(22, 3, staleness).await;
        assert!(
            wait_until(Duration::from_secs(20), || c
                .nodes
                .values()
                .all(|n| n.has_active_ca()))
            .await
        );
        register(&c).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Cut node 3 off from everyone.
        c.net.partition(&[vec![3], vec![1, 2]]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            issue(&c, 3).is_ok(),
            "still issuing from its replica inside staleness_max"
        );
        assert!(issue(&c, 1).is_ok(), "the majority issues");
        tokio::time::sleep(staleness).await;
        assert!(
            matches!(issue(&c, 3), Err(Error::Stale { .. })),
            "past staleness_max the cut-off node refuses"
        );
        assert!(issue(&c, 1).is_ok(), "the majority still issues");
        c.net.heal();
        let back = wait_until(Duration::from_secs(10), || issue(&c, 3).is_ok()).await;
        assert!(back, "after heal the node issues again");
        for n in c.nodes.values() {
            n.stop();
        }
    });
}

#[test]
fn short_ttl_rotation_publishes_before_use_and_prunes_after_expiry() {
    // CA keys live 2 minutes, so 15 simulated minutes see ~9 rotations per node; every node
    // issues an X.509-SVID (capped at its CA's NotAfter) every second.
    block_on(async {
        let key_ttl = Duration::from_secs(120);
        let c = cluster_with(23, 3, Duration::from_secs(600), key_ttl).await;
        assert!(
            wait_until(Duration::from_secs(20), || c
                .nodes
                .values()
                .all(|n| n.has_active_ca()))
            .await
        );
        register(&c).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let td: TrustDomain = "sim.test".parse().expect("td");
        let mut issued: Vec<(u64, Vec<u8>, UnixTime, UnixTime)> = Vec::new();
        let mut authorities_seen = BTreeSet::new();
        let mut most_in_bundle = 0;
        for second in 0..15 * 60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for id in 1..=3u64 {
                let wall = c.envs[&id].wall();
                let cert = issue(&c, id).unwrap_or_else(|e| panic!("node {id}: {e}"));
                // Published before use: it chains to the issuing node's applied bundle.
                validate_x509_svid(
                    &[cert.as_slice()],
                    &(td.clone(), c.nodes[&id].bundle()),
                    wall,
                )
                .expect("an SVID chains to its issuer's applied bundle when issued");
                let not_after = attest::x509::not_after(&cert).expect("parse");
                issued.push((id, cert, wall, not_after));
            }
            // Every 5 s: every SVID issued at least 2 s ago and still valid verifies against
            // the bundle every node serves: no key left a bundle while its SVIDs were valid.
            if second % 5 != 0 {
                continue;
            }
            for node in 1..=3u64 {
                let wall = c.envs[&node].wall();
                let bundle = c.nodes[&node].bundle();
                most_in_bundle = most_in_bundle.max(bundle.x509_authorities.len());
                for a in &bundle.x509_authorities {
                    authorities_seen.insert(a.cert_der.clone());
                }
                for (from, cert, at, not_after) in &issued {
                    if wall.saturating_sub(Duration::from_secs(2)) < *at || *not_after <= wall {
                        continue;
                    }
                    validate_x509_svid(&[cert.as_slice()], &(td.clone(), bundle.clone()), wall)
                        .unwrap_or_else(|e| {
                            panic!("an SVID from node {from} stopped verifying on node {node}: {e}")
                        });
                }
            }
            issued.retain(|(_, _, _, not_after)| *not_after > c.envs[&1].wall());
        }
        // Rotation happened, and pruning keeps the bundle bounded: each node holds its active
        // key, the next one, and retired keys until NotAfter + 5 min grace — with a new key
        // every ~100 s that is at most (120 + 300) / 100 + 2 ≈ 6 per node; allow 8.
        assert!(
            authorities_seen.len() >= 3 * 7,
            "only {} CAs seen in 15 min with 2-min keys",
            authorities_seen.len()
        );
        assert!(
            most_in_bundle <= 3 * 8,
            "bundles grew to {most_in_bundle} CAs: expired keys are not pruned"
        );
        let wall = c.envs[&1].wall();
        for a in &c.nodes[&1].bundle().x509_authorities {
            let na = attest::x509::not_after(&a.cert_der).expect("parse");
            assert!(
                na.saturating_add(Duration::from_secs(300 + 30)) > wall,
                "a CA expired more than grace + 30 s ago is still in the bundle"
            );
        }
        eprintln!(
            "rotation: {} CAs seen, at most {most_in_bundle} in a bundle",
            authorities_seen.len()
        );
        for n in c.nodes.values() {
            n.stop();
        }
    });
}
