//! `loadgen`: issue 5's cluster benchmark, in one run on loopback.
//!
//! 1. Baseline: raw ring ECDSA P-256 signatures per second (one thread, then one thread per core).
//! 2. A real N-node sigil cluster in this process (`benches::cluster`: `run_server`, sled in
//!    temp dirs, admin sockets, QUIC on free loopback ports): node 1 bootstraps, the others join
//!    with server join tokens, each created only once the previous node's CA is in the bundle
//!    (the pinned bundle hash covers every CA).
//! 3. X.509-SVIDs signed per second by one node over QUIC for an agent attested with a join
//!    token (`--concurrency` tasks over `--connections` connections, `--batch` SVIDs per call).
//! 4. Registration writes per second (`CreateEntries`) through the leader's and a follower's
//!    admin socket.
//! 5. Raft entries appended during the signing phase (the applied index before and after).
//! 6. Clean shutdown, temp dirs removed, a results table (`benches::report`).
//!
//! ```sh
//! cargo run -p benches --release --bin loadgen -- [--nodes 3] [--seconds 10] [--concurrency 32] [--batch 1]
//! ```
//!
//! This is a load generator, not node logic: it reads the OS clock to time calls and starts
//! threads and tasks directly, the clock and tasks through the shared harness (`testkit::now`,
//! `testkit::spawn`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::cluster::{agent_join_token, create_one, entry, status, Admin, Cluster};
use benches::report::{self, ms, print_table, Samples};
use benches::{Res, CALL_TIMEOUT, STEP_TIMEOUT, TRUST_DOMAIN};
use clap::Parser;
use node::rt::api::{ApiClient, CONNECT_TIMEOUT};
use node::rt::tls::ServerTrust;
use node::rt::{NodeIdentity, SystemEnv, TlsKey, TrustStore};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use testkit::{now, spawn};
use wire::admin as pb;
use wire::api::{ApiRequest, ApiResponse, SignX509};
use wire::{Bundle, EntryId, Env, TrustDomain};

/// Bytes signed per raw baseline signature: about an X.509-SVID's TBSCertificate.
const BASELINE_MESSAGE_BYTES: usize = 420;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "sigil cluster load generator: SVID signing and registration writes on loopback, against raw ring signing measured in the same run"
)]
struct Args {
    /// Server nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Length of each measured phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent callers in each load phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// X.509-SVIDs per SignX509 call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// QUIC connections the signing callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Entries per CreateEntries call in the registration phase.
    #[arg(long, default_value_t = 1)]
    entries_per_write: usize,
    /// The node that signs (default: a follower; the leader with one node).
    #[arg(long)]
    sign_node: Option<u64>,
    /// Length of each raw-signing baseline, in seconds.
    #[arg(long, default_value_t = 3)]
    baseline_seconds: u64,
}

impl Args {
    fn check(&self) -> Res<()> {
        if !(1..=7).contains(&self.nodes) {
            return Err("--nodes: 1 to 7".into());
        }
        if self.seconds == 0 || self.baseline_seconds == 0 {
            return Err("--seconds and --baseline-seconds must be at least 1".into());
        }
        if self.concurrency == 0 || self.connections == 0 {
            return Err("--concurrency and --connections must be at least 1".into());
        }
        if !(1..=wire::api::SIGN_BATCH_MAX).contains(&self.batch) {
            return Err(format!("--batch: 1 to {}", wire::api::SIGN_BATCH_MAX).into());
        }
        if !(1..=wire::command::BATCH_ENTRIES_MAX).contains(&self.entries_per_write) {
            return Err(format!(
                "--entries-per-write: 1 to {}",
                wire::command::BATCH_ENTRIES_MAX
            )
            .into());
        }
        if let Some(n) = self.sign_node {
            if n == 0 || n > self.nodes {
                return Err("--sign-node: one of the cluster's node IDs (1..=nodes)".into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Baseline: raw ring signing

fn ring_signer() -> Res<EcdsaKeyPair> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "ring: P-256 key generation failed")?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "ring: loading the P-256 key failed".into())
}

/// Signs for `length` on one thread; returns signatures per second.
fn ring_sign_loop(length: Duration) -> Res<f64> {
    let key = ring_signer()?;
    let rng = SystemRandom::new();
    let message = vec![0x5au8; BASELINE_MESSAGE_BYTES];
    let start = now();
    let mut n: u64 = 0;
    loop {
        // Check the clock every 64 signatures (~1 ms): the clock is not free either.
        for _ in 0..64 {
            let sig = key
                .sign(&rng, std::hint::black_box(&message))
                .map_err(|_| "ring: signing failed")?;
            std::hint::black_box(sig);
        }
        n += 64;
        let elapsed = start.elapsed();
        if elapsed >= length {
            return Ok(n as f64 / elapsed.as_secs_f64());
        }
    }
}

/// Raw signing on `threads` threads at once; returns total signatures per second.
fn ring_baseline(threads: usize, length: Duration) -> Res<f64> {
    if threads == 1 {
        return ring_sign_loop(length);
    }
    // Scoped threads (not `std::thread::spawn`): each signs with its own key.
    let results: Vec<Res<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| ring_sign_loop(length)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a baseline thread panicked".into()))
            })
            .collect()
    });
    let mut total = 0.0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// 2. The cluster (`benches::cluster`): settling

/// Every node's applied index, once they agree and have not moved for `quiet`.
async fn settled_applied(admins: &mut [Admin], quiet: Duration) -> Res<u64> {
    let start = now();
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let mut indexes = Vec::new();
        for a in admins.iter_mut() {
            indexes.push(status(a).await?.applied_index.unwrap_or(0));
        }
        let first = indexes.first().copied().unwrap_or(0);
        if indexes.iter().all(|i| *i == first) {
            match last {
                Some((i, since)) if i == first && since.elapsed() >= quiet => return Ok(first),
                Some((i, _)) if i == first => {}
                _ => last = Some((first, now())),
            }
        } else {
            last = None;
        }
        if start.elapsed() > STEP_TIMEOUT {
            return Err(format!("the applied indexes did not settle: {indexes:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The agent and SVID signing

struct Agent {
    spiffe_id: String,
    bundle: Bundle,
    identity: NodeIdentity,
}

/// Attests an agent at `addr` with a fresh agent join token from `admin`.
async fn attest_agent(
    td: &TrustDomain,
    admin: &mut Admin,
    addr: SocketAddr,
    env: Arc<dyn Env>,
) -> Res<Agent> {
    let token = agent_join_token(admin).await?;
    let pinned = admin
        .get_bundle(pb::GetBundleRequest {})
        .await?
        .into_inner()
        .bundle_sha256;
    // Like a joining node: fetch the bundle, check it against the hash from the admin API and
    // the server's certificate against it, and only then send the token.
    let client = ApiClient::connect(
        addr,
        &ServerTrust::Pinned,
        None,
        env.clone(),
        CONNECT_TIMEOUT,
    )
    .await?;
    let result = async {
        let bundle = match client.call(&ApiRequest::Bundle, CALL_TIMEOUT).await? {
            ApiResponse::Bundle(b) => b,
            other => return Err(format!("Bundle answered {other:?}").into()),
        };
        let got = attest::bundle::bundle_sha256(&bundle);
        if got != pinned {
            return Err(format!("bundle hash {got}, the admin API said {pinned}").into());
        }
        TrustStore::new(td.clone(), bundle)
            .verify_server_peer(&client.server_chain(), env.wall())?;
        let key = TlsKey::generate()?;
        let request = ApiRequest::AttestJoinToken {
            token: token.token.clone(),
            public_key_der: key.public_key_der().to_vec(),
        };
        match client.call(&request, CALL_TIMEOUT).await? {
            ApiResponse::AgentSvid {
                spiffe_id,
                chain,
                bundle,
                ..
            } => {
                if spiffe_id.to_string() != token.agent_spiffe_id {
                    return Err(format!(
                        "attested as {spiffe_id}, the token was for {}",
                        token.agent_spiffe_id
                    )
                    .into());
                }
                Ok(Agent {
                    spiffe_id: spiffe_id.to_string(),
                    bundle,
                    identity: NodeIdentity::new(chain, &key)?,
                })
            }
            other => Err(format!("AttestJoinToken answered {other:?}").into()),
        }
    }
    .await;
    client.close().await;
    result
}

/// Connects as the agent and makes one call. A node may refuse the agent SVID it just issued
/// for a few seconds (the TLS handshake fails with UnknownIssuer); retry until it accepts and
/// return how long it refused, and why.
async fn connect_agent(
    addr: SocketAddr,
    trust: &ServerTrust,
    agent: &Agent,
    env: Arc<dyn Env>,
) -> Res<(ApiClient, Option<(Duration, String)>)> {
    let start = now();
    let mut refused: Option<String> = None;
    loop {
        let client = ApiClient::connect(
            addr,
            trust,
            Some(&agent.identity),
            env.clone(),
            CONNECT_TIMEOUT,
        )
        .await?;
        // With QUIC's 0.5-RTT the client side is "connected" before the server has judged
        // its certificate: the first call tells.
        match client.call(&ApiRequest::Sync, CALL_TIMEOUT).await {
            Ok(_) => return Ok((client, refused.map(|e| (start.elapsed(), e)))),
            Err(e) => {
                client.close().await;
                if start.elapsed() > STEP_TIMEOUT {
                    return Err(format!("the node keeps refusing the agent: {e}").into());
                }
                refused.get_or_insert_with(|| e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until the node behind `client` lists `entry` in the agent's view.
async fn wait_entry_visible(client: &ApiClient, entry: &EntryId) -> Res<()> {
    let start = now();
    loop {
        if let ApiResponse::View(view) = client.call(&ApiRequest::Sync, CALL_TIMEOUT).await? {
            if view.entries.iter().any(|e| &e.id == entry) {
                return Ok(());
            }
        }
        if start.elapsed() > STEP_TIMEOUT {
            return Err("the signing node never showed the agent its entry".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One signing caller: `batch` SVIDs per call until `deadline`.
async fn sign_caller(
    client: ApiClient,
    entry: EntryId,
    batch: usize,
    deadline: Instant,
) -> Res<Samples> {
    // One workload key per caller: keys are the agent's work, not the server's.
    let key = TlsKey::generate()?;
    let request = ApiRequest::SignX509 {
        requests: vec![
            SignX509 {
                entry_id: entry,
                public_key_der: key.public_key_der().to_vec(),
            };
            batch
        ],
    };
    let mut s = Samples::default();
    while now() < deadline {
        let start = now();
        let answer = client.call(&request, CALL_TIMEOUT).await;
        let took = start.elapsed();
        match answer {
            Ok(ApiResponse::X509(results)) => {
                s.push(took);
                for r in results {
                    match r {
                        Ok(_) => s.ok_items += 1,
                        Err(e) => {
                            s.failed_items += 1;
                            s.error(e);
                        }
                    }
                }
            }
            Ok(other) => s.fail(format!("unexpected answer {other:?}")),
            Err(e) => s.fail(e),
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// 4. Registration writes

/// One registration caller: `per_write` new entries per CreateEntries until `deadline`.
async fn write_caller(
    mut admin: Admin,
    label: String,
    parent: String,
    per_write: usize,
    deadline: Instant,
) -> Samples {
    let mut s = Samples::default();
    let mut seq: u64 = 0;
    while now() < deadline {
        let entries = (0..per_write)
            .map(|_| {
                seq += 1;
                entry(
                    format!("spiffe://{TRUST_DOMAIN}/reg/{label}/{seq}"),
                    parent.clone(),
                    format!("unix:uid:{seq}"),
                )
            })
            .collect();
        let start = now();
        let answer = admin
            .create_entries(pb::CreateEntriesRequest { entries })
            .await;
        let took = start.elapsed();
        match answer {
            Ok(r) => {
                s.push(took);
                for r in r.into_inner().results {
                    match r.result {
                        Some(pb::entry_result::Result::Entry(_)) => s.ok_items += 1,
                        Some(pb::entry_result::Result::Error(e)) => {
                            s.failed_items += 1;
                            s.error(format!("{} ({})", e.message, e.code));
                        }
                        None => s.failed_items += 1,
                    }
                }
            }
            Err(e) => s.fail(e),
        }
    }
    s
}

async fn write_phase(
    admin: &Admin,
    target: &str,
    args: &Args,
    parent: &str,
    length: Duration,
) -> Res<(Samples, Duration)> {
    let start = now();
    let deadline = start + length;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            spawn(write_caller(
                admin.clone(),
                format!("{target}/{i}"),
                parent.to_owned(),
                args.entries_per_write,
                deadline,
            ))
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        all.merge(t.await?);
    }
    Ok((all, start.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Report

struct Row {
    what: String,
    rate: String,
    p50: String,
    p99: String,
    note: String,
}

impl report::Row<5> for Row {
    const HEADERS: [&'static str; 5] = ["measurement", "rate", "p50/call", "p99/call", "notes"];

    fn cells(&self) -> [&str; 5] {
        [&self.what, &self.rate, &self.p50, &self.p99, &self.note]
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Baseline {
    one: f64,
    all: f64,
    threads: usize,
}

async fn run_cluster_phases(
    args: &Args,
    cluster: &mut Cluster,
    baseline: &Baseline,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let env: Arc<dyn Env> = Arc::new(SystemEnv::new()?);
    let td = cluster.td.clone();
    let t0 = now();
    let mut admins = cluster.start(args.nodes).await?;
    let leader = status(&mut admins[0]).await?.leader_id.ok_or("no leader")?;
    let follower = (1..=args.nodes).find(|id| *id != leader);
    println!(
        "cluster: {} node(s) up in {:.1} s, leader node {leader}, data under {}",
        args.nodes,
        t0.elapsed().as_secs_f64(),
        cluster.root()?.display()
    );
    let sign_node = args.sign_node.or(follower).unwrap_or(leader);
    let sign_addr = cluster.node(sign_node)?.addr;
    let sign_idx = usize::try_from(sign_node - 1)?;

    // --- 3. agent, entry, connections
    let agent = attest_agent(&td, &mut admins[sign_idx], sign_addr, env.clone()).await?;
    let entry_id = create_one(
        &mut admins[sign_idx],
        entry(
            format!("spiffe://{TRUST_DOMAIN}/loadgen/workload"),
            agent.spiffe_id.clone(),
            "unix:uid:1000".into(),
        ),
    )
    .await?;
    let trust = ServerTrust::Bundle(TrustStore::new(td.clone(), agent.bundle.clone()));
    let (first, refused) = connect_agent(sign_addr, &trust, &agent, env.clone()).await?;
    if let Some((waited, error)) = refused {
        println!(
            "note: node {sign_node} refused the agent SVID it had just issued for {:.1} s ({error}) — its QUIC trust store lags its applied bundle (see the report)",
            waited.as_secs_f64()
        );
    }
    let mut clients = vec![first];
    for _ in 1..args.connections {
        clients.push(
            ApiClient::connect(
                sign_addr,
                &trust,
                Some(&agent.identity),
                env.clone(),
                CONNECT_TIMEOUT,
            )
            .await?,
        );
    }
    let first = clients.first().ok_or("no connection")?;
    wait_entry_visible(first, &entry_id).await?;
    // One checked SVID: it must validate against the bundle and name the entry's ID.
    let probe_key = TlsKey::generate()?;
    let probe = ApiRequest::SignX509 {
        requests: vec![SignX509 {
            entry_id: entry_id.clone(),
            public_key_der: probe_key.public_key_der().to_vec(),
        }],
    };
    let svid_bytes = match first.call(&probe, CALL_TIMEOUT).await? {
        ApiResponse::X509(mut results) if results.len() == 1 => {
            let issued = results.remove(0)?;
            let id = attest::x509::validate_x509_svid(
                &issued.chain,
                &(td.clone(), agent.bundle.clone()),
                env.wall(),
            )?;
            if id.to_string() != format!("spiffe://{TRUST_DOMAIN}/loadgen/workload") {
                return Err(format!("the SVID names {id}").into());
            }
            issued.chain.first().map(Vec::len).unwrap_or(0)
        }
        other => return Err(format!("SignX509 answered {other:?}").into()),
    };
    println!(
        "agent {} attested on node {sign_node}; entry {entry_id}; probe SVID validates ({svid_bytes} bytes DER)",
        agent.spiffe_id
    );

    // --- 5. Raft index before (after the attestation's best-effort renewal record settled)
    let before = settled_applied(&mut admins, Duration::from_millis(1500)).await?;
    let term_before = status(&mut admins[0]).await?.term;

    // --- signing phase
    println!(
        "signing: {} s, {} callers over {} connection(s) to node {sign_node}, {} SVID(s) per call…",
        args.seconds, args.concurrency, args.connections, args.batch
    );
    let start = now();
    let deadline = start + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            spawn(sign_caller(
                clients[i % clients.len()].clone(),
                entry_id.clone(),
                args.batch,
                deadline,
            ))
        })
        .collect();
    let mut signing = Samples::default();
    for t in tasks {
        signing.merge(t.await??);
    }
    let sign_elapsed = start.elapsed();
    // Right after: every node's applied index, read at once.
    let mut after_each = Vec::new();
    for (i, a) in admins.iter_mut().enumerate() {
        after_each.push((i + 1, status(a).await?.applied_index.unwrap_or(0)));
    }
    let after_settled = settled_applied(&mut admins, Duration::from_millis(500)).await?;
    let term_after = status(&mut admins[0]).await?.term;
    for c in &clients {
        c.close().await;
    }

    let svids_per_sec = signing.items_per_sec(sign_elapsed);
    let calls_per_sec = signing.calls_per_sec(sign_elapsed);
    let (p50, p99, max) = signing.latency_ms();
    let raft_delta = after_settled.saturating_sub(before);
    println!(
        "signing: {} SVIDs in {:.2} s ({} calls ok, {} calls failed, {} SVIDs refused){}",
        signing.ok_items,
        sign_elapsed.as_secs_f64(),
        signing.micros.len(),
        signing.failed_calls,
        signing.failed_items,
        signing.first_error_note()
    );
    println!(
        "raft entries appended during signing: {raft_delta} for {} SVIDs (applied index {before} -> {after_settled}; right after the phase: {}; term {term_before} -> {term_after})",
        signing.ok_items,
        after_each
            .iter()
            .map(|(n, i)| format!("node {n}={i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if raft_delta > 0 {
        println!(
            "  note: non-zero — the signing path writes nothing; these are background entries (an election's blank entry if the term moved, CA rotation, a membership step); see the node logs with RUST_LOG=info"
        );
    }
    rows.push(Row {
        what: format!(
            "X.509-SVIDs via QUIC, node {sign_node}{}",
            if sign_node == leader {
                " (leader)"
            } else {
                " (follower)"
            }
        ),
        rate: format!("{svids_per_sec:.0} SVID/s"),
        p50: ms(p50),
        p99: ms(p99),
        note: format!(
            "{calls_per_sec:.0} calls/s, batch {}, c={}, {} conn, max {}; {:.2}x ring 1-thread, {:.2}x ring {}-thread",
            args.batch,
            args.concurrency,
            args.connections,
            ms(max),
            svids_per_sec / baseline.one,
            svids_per_sec / baseline.all,
            baseline.threads
        ),
    });
    rows.push(Row {
        what: "raft entries during signing".into(),
        rate: format!("{raft_delta}"),
        p50: "-".into(),
        p99: "-".into(),
        note: format!(
            "for {} SVIDs (applied index {before} -> {after_settled})",
            signing.ok_items
        ),
    });

    // --- 4. registration writes
    let parent = format!("spiffe://{TRUST_DOMAIN}/loadgen/reg-parent");
    let length = Duration::from_secs(args.seconds);
    let mut targets = vec![(leader, "leader")];
    if let Some(f) = follower {
        targets.push((f, "follower"));
    }
    for (id, role) in targets {
        println!(
            "registration: {} s of CreateEntries ({} entr{} each), {} callers, node {id} ({role})…",
            args.seconds,
            args.entries_per_write,
            if args.entries_per_write == 1 {
                "y"
            } else {
                "ies"
            },
            args.concurrency
        );
        let admin = admins[usize::try_from(id - 1)?].clone();
        let (s, took) = write_phase(&admin, role, args, &parent, length).await?;
        let writes = s.calls_per_sec(took);
        let entries = s.items_per_sec(took);
        let (p50, p99, max) = s.latency_ms();
        println!(
            "registration via node {id}: {} entries, {} calls ok, {} failed{}",
            s.ok_items,
            s.micros.len(),
            s.failed_calls + s.failed_items,
            s.first_error_note()
        );
        rows.push(Row {
            what: format!("registration writes via node {id} ({role})"),
            rate: format!("{writes:.0} writes/s"),
            p50: ms(p50),
            p99: ms(p99),
            note: format!(
                "{entries:.0} entries/s, {} per write, c={}, max {}, sled",
                args.entries_per_write,
                args.concurrency,
                ms(max)
            ),
        });
    }
    let end = status(&mut admins[0]).await?;
    println!(
        "cluster at the end: term {}, applied index {}, {} entries, leader {:?}",
        end.term,
        end.applied_index.unwrap_or(0),
        end.entries,
        end.leader_id
    );
    Ok(())
}

fn run(args: Args) -> Res<()> {
    let threads = benches::cores();
    println!(
        "loadgen: {} node(s), {} s phases, concurrency {}, batch {}, {} core(s)",
        args.nodes, args.seconds, args.concurrency, args.batch, threads
    );

    // --- 1. baseline, before the cluster exists (nothing else competes for the cores)
    let length = Duration::from_secs(args.baseline_seconds);
    let one = ring_baseline(1, length)?;
    let all = ring_baseline(threads, length)?;
    println!(
        "baseline: ring P-256 sign over {BASELINE_MESSAGE_BYTES} bytes: {one:.0}/s on 1 thread, {all:.0}/s on {threads} threads"
    );
    let baseline = Baseline { one, all, threads };
    let mut rows = vec![
        Row {
            what: "baseline: raw ring P-256 sign, 1 thread".into(),
            rate: format!("{one:.0} sig/s"),
            p50: "-".into(),
            p99: "-".into(),
            note: format!("{BASELINE_MESSAGE_BYTES}-byte message"),
        },
        Row {
            what: format!("baseline: raw ring P-256 sign, {threads} threads"),
            rate: format!("{all:.0} sig/s"),
            p50: "-".into(),
            p99: "-".into(),
            note: "one key per thread".into(),
        },
    ];

    let outcome = benches::run_on_cluster(
        "loadgen",
        |cluster| format!("{} node(s)", cluster.len()),
        async |cluster| run_cluster_phases(&args, cluster, &baseline, &mut rows).await,
    );
    print_table(&rows);
    outcome
}

fn main() -> std::process::ExitCode {
    benches::main("loadgen", Args::parse(), Args::check, run)
}
