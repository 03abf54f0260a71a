//! An unauthenticated flood against a real `sigil server` (issue 20): bogus join-token
//! attestations from another loopback address cost no Raft write, are rate limited per source
//! address, and leave a real agent's issuance latency about where it was; connections per
//! source are bounded. Prints the numbers for the issue note.

#![allow(clippy::disallowed_methods)] // tests run their own runtime, processes and wall-clock deadlines

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{create_entry, json, sigil, ServerNode, SIGIL};
use node::rt::api::{ApiClient, ApiClientError};
use node::rt::tls::ServerTrust;
use node::rt::{NodeIdentity, SystemEnv, TlsKey, TrustStore};
use wire::api::{ApiCode, ApiRequest, ApiResponse, SignX509};
use wire::{EntryId, Env};

const TD: &str = "flood.test";
const WAIT: Duration = Duration::from_secs(30);
const FLOOD: Duration = Duration::from_secs(8);
const CALL: Duration = Duration::from_secs(5);

fn applied(sock: &str) -> u64 {
    let status = json(&sigil(&[
        "cluster",
        "status",
        "--json",
        "--admin-socket",
        sock,
    ]));
    status["applied_index"].as_u64().expect("applied_index")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Signs for `entry` as the agent until `until`; returns the latencies, sorted.
async fn sign_for(
    client: &ApiClient,
    entry: &EntryId,
    key: &[u8],
    until: Instant,
) -> Vec<Duration> {
    let request = ApiRequest::SignX509 {
        requests: vec![SignX509 {
            entry_id: entry.clone(),
            public_key_der: key.to_vec(),
        }],
    };
    let mut took = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        match client.call(&request, CALL).await {
            Ok(ApiResponse::X509(r)) if r.iter().all(Result::is_ok) => took.push(t.elapsed()),
            other => panic!("the agent's signing failed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.sort();
    took
}

#[test]
fn a_bogus_attestation_flood_costs_no_raft_write_and_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerNode::new(SIGIL, 1, dir.path()).expect("server dir");
    server
        .toml(TD)
        .bootstrap()
        .table(
            "[limits]\nconnections_per_source = 8\nunauthenticated_per_sec = 20\n\
             unauthenticated_burst = 40",
        )
        .write(&server.config)
        .expect("server config");
    server.start().expect("spawn sigil server");
    server.wait_bundle_hash(WAIT);
    let (sock, addr) = (server.admin.clone(), server.addr);
    let token = json(&sigil(&[
        "token",
        "generate",
        "--json",
        "--admin-socket",
        &sock,
    ]));
    let agent_id = token["agent_spiffe_id"]
        .as_str()
        .expect("agent id")
        .to_owned();
    let token = token["token"].as_str().expect("token").to_owned();
    let entry = create_entry(&sock, &format!("spiffe://{TD}/w"), &agent_id, 1000);
    let entry: EntryId = entry.parse().expect("entry id");
    let env: Arc<dyn Env> = Arc::new(SystemEnv::new().expect("env"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The real agent attests and signs from 127.0.0.1.
        let agent_key = TlsKey::generate().expect("agent key");
        let first = ApiClient::connect(addr, &ServerTrust::Pinned, None, env.clone(), CALL)
            .await
            .expect("connect");
        let request = ApiRequest::AttestJoinToken {
            token: token.clone(),
            public_key_der: agent_key.public_key_der().to_vec(),
        };
        // The node issues once it has heard from a leader (moments after its CA is published).
        let started = Instant::now();
        let (chain, bundle) = loop {
            match first.call(&request, CALL).await {
                Ok(ApiResponse::AgentSvid { chain, bundle, .. }) => break (chain, bundle),
                Err(ApiClientError::Api(e))
                    if e.code == ApiCode::Unavailable && started.elapsed() < WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("attestation: {other:?}"),
            }
        };
        first.close().await;
        let identity = NodeIdentity::new(chain, &agent_key).expect("identity");
        let trust = ServerTrust::Bundle(TrustStore::new(TD.parse().expect("td"), bundle));
        let agent = ApiClient::connect(addr, &trust, Some(&identity), env.clone(), CALL)
            .await
            .expect("agent connects");
        let workload_key = TlsKey::generate().expect("workload key");
        let key = workload_key.public_key_der().to_vec();

        // Baseline: signing latency and Raft entries with nobody else around.
        let index0 = applied(&sock);
        let quiet = sign_for(&agent, &entry, &key, Instant::now() + FLOOD).await;
        let idle_entries = applied(&sock) - index0;

        // The flood: 4 connections from 127.0.0.2, bogus tokens as fast as answers come back,
        // 16 in flight per connection.
        let sent = Arc::new(AtomicU64::new(0));
        let token_refused = Arc::new(AtomicU64::new(0));
        let rate_limited = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + FLOOD;
        let index1 = applied(&sock);
        let mut attackers = Vec::new();
        for c in 0..4u64 {
            let env = env.clone();
            let (sent, token_refused, rate_limited) =
                (sent.clone(), token_refused.clone(), rate_limited.clone());
            attackers.push(tokio::spawn(async move {
                let from: SocketAddr = "127.0.0.2:0".parse().expect("addr");
                let client =
                    ApiClient::connect_from(from, addr, &ServerTrust::Pinned, None, env, CALL)
                        .await
                        .expect("attacker connects");
                let mut lanes = Vec::new();
                for lane in 0..16u64 {
                    let client = client.clone();
                    let (sent, token_refused, rate_limited) =
                        (sent.clone(), token_refused.clone(), rate_limited.clone());
                    lanes.push(tokio::spawn(async move {
                        let mut i = 0u64;
                        while Instant::now() < until {
                            i += 1;
                            let request = ApiRequest::AttestJoinToken {
                                token: format!("bogus-{c}-{lane}-{i}"),
                                public_key_der: vec![0x30, 0x00],
                            };
                            sent.fetch_add(1, Ordering::Relaxed);
                            match client.call(&request, CALL).await {
                                Err(ApiClientError::Api(e)) if e.code == ApiCode::Unavailable => {
                                    rate_limited.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(ApiClientError::Api(e)) => {
                                    assert_eq!(e.code, ApiCode::PermissionDenied, "{e:?}");
                                    token_refused.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(other) => panic!("a bogus token was accepted: {other:?}"),
                                // Anything else (a timeout on a loaded machine) is the
                                // attacker's problem, not the server's.
                                Err(_) => {}
                            }
                        }
                    }));
                }
                for lane in lanes {
                    lane.await.expect("lane");
                }
            }));
        }
        let flooded = sign_for(&agent, &entry, &key, until).await;
        for a in attackers {
            a.await.expect("attacker");
        }
        let flood_entries = applied(&sock) - index1;

        // Connections per source: from 127.0.0.3, the 9th and later are refused.
        let mut open = Vec::new();
        let mut refused = 0;
        for _ in 0..12 {
            let from: SocketAddr = "127.0.0.3:0".parse().expect("addr");
            match ApiClient::connect_from(
                from,
                addr,
                &ServerTrust::Pinned,
                None,
                env.clone(),
                Duration::from_secs(2),
            )
            .await
            {
                Ok(c) => open.push(c),
                Err(_) => refused += 1,
            }
        }

        let (sent, token_refused, rate_limited) = (
            sent.load(Ordering::Relaxed),
            token_refused.load(Ordering::Relaxed),
            rate_limited.load(Ordering::Relaxed),
        );
        eprintln!(
            "flood of {:?}: {sent} bogus attestations sent, {token_refused} refused as tokens, \
             {rate_limited} rate limited; Raft entries: {flood_entries} during the flood, \
             {idle_entries} in as long idle; agent SignX509 p50/p99: {:?}/{:?} quiet ({} calls), \
             {:?}/{:?} under the flood ({} calls); connections from one address: {} open, {refused} refused",
            FLOOD,
            percentile(&quiet, 0.5),
            percentile(&quiet, 0.99),
            quiet.len(),
            percentile(&flooded, 0.5),
            percentile(&flooded, 0.99),
            flooded.len(),
            open.len(),
        );
        assert!(
            flood_entries <= idle_entries + 2,
            "the flood caused Raft writes: {flood_entries} entries vs {idle_entries} idle"
        );
        // At most the burst plus the sustained rate got through to the token check.
        let allowed = 40 + 20 * (FLOOD.as_secs() + 2);
        assert!(
            token_refused <= allowed,
            "{token_refused} bogus attestations were checked, more than the rate allows ({allowed})"
        );
        assert!(rate_limited > 0, "the flood was never rate limited");
        assert_eq!(open.len(), 8, "connections_per_source = 8");
        assert_eq!(refused, 4);
        assert!(
            flooded.len() * 2 >= quiet.len(),
            "the agent signed far less under the flood: {} vs {} calls",
            flooded.len(),
            quiet.len()
        );
        // A request without a certificate is read only up to the largest valid one.
        let from: SocketAddr = "127.0.0.4:0".parse().expect("addr");
        let big = ApiClient::connect_from(from, addr, &ServerTrust::Pinned, None, env.clone(), CALL)
            .await
            .expect("connect");
        let oversized = ApiRequest::AttestJoinToken {
            token: "x".repeat(wire::api::UNAUTHENTICATED_REQUEST_BYTES_MAX),
            public_key_der: vec![0x30, 0x00],
        };
        let answer = big.call(&oversized, CALL).await;
        assert!(
            matches!(&answer, Err(ApiClientError::Api(e)) if e.message.contains("without a client certificate")),
            "{answer:?}"
        );
        big.close().await;
        for c in open {
            c.close().await;
        }
        agent.close().await;
    });
    drop(server);
}
