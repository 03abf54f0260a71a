//! `wlbench`: issue 6's Workload API latency benchmark, in one run on this machine.
//!
//! 1. A real `sigil server` (bootstrap) and `sigil agent` in this process (`benches::cluster`:
//!    `node::rt::serve::run_server`, `node::rt::agent::run_agent`; temp dirs, a free loopback
//!    UDP port). The agent attests with a join token from the admin API; one entry
//!    `spiffe://bench.test/bench`, parented by the agent, selects `unix:uid:<this process's uid>`.
//! 2. Waits until the agent serves that SVID on its Workload API socket.
//! 3. FetchX509SVID for a new workload: `--workloads` concurrent callers, each opening a new
//!    Unix-socket connection and timing until the stream's first message; rounds for `--seconds`.
//! 4. FetchJWTSVID cache hits: after one warm-up call (the mint), `--workloads` concurrent
//!    callers, one connection each, call FetchJWTSVID{audience: ["bench"]} for `--seconds`.
//! 5. Baselines in the same run: one unix attestation (`node::rt::unix_attest::attest` of this
//!    process, hash cache warm), and a raw gRPC round trip to the agent (ValidateJWTSVID with an
//!    invalid token: header check, attestation, a parse failure).
//! 6. Clean shutdown, temp dirs removed, a results table (`benches::report`).
//!
//! Every caller is this one process: one uid, one executable, so each call's attestation does
//! the same work (the executable's hash is cached by file identity after the first call).
//!
//! ```sh
//! cargo run -p benches --release --bin wlbench -- [--workloads 200] [--seconds 5]
//! ```
//!
//! This is a benchmark, not node logic: it reads the OS clock to time calls and starts tasks
//! directly, through the shared harness (`testkit::now`, `testkit::spawn`).

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use benches::cluster::{agent_join_token, create_one, entry, Admin, Cluster};
use benches::report::{self, ms_or_micros, print_table, Samples};
use benches::{BoxError, Res, CALL_TIMEOUT, STEP_TIMEOUT, TRUST_DOMAIN};
use clap::Parser;
use node::rt::unix_attest::{PeerCred, UnixAttestConfig};
use testkit::{now, spawn, status_id};
use tonic::transport::Channel;
use wire::admin as pb;
use wire::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use wire::workload::{
    JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse, SECURITY_HEADER,
    SECURITY_HEADER_VALUE,
};

type Workload = SpiffeWorkloadApiClient<Channel>;

const AUDIENCE: &str = "bench";
/// Unix attestations timed for the baseline.
const ATTEST_SAMPLES: usize = 2000;
/// ValidateJWTSVID round trips timed for the baseline.
const VALIDATE_SAMPLES: usize = 2000;

#[derive(Debug, Parser)]
#[command(
    name = "wlbench",
    about = "sigil Workload API latency: FetchX509SVID for new workloads and FetchJWTSVID cache hits against an in-process server and agent, with attestation and round-trip baselines from the same run"
)]
struct Args {
    /// Concurrent workloads in each phase.
    #[arg(long, default_value_t = 200)]
    workloads: usize,
    /// Length of each measured phase, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Entries created one after another while a workload waits on its FetchX509SVID stream
    /// (propagation: entry create → new SVID at the workload). 0 skips the phase.
    #[arg(long, default_value_t = 100)]
    entries: usize,
}

impl Args {
    fn check(&self) -> Res<()> {
        if self.workloads == 0 || self.workloads > 10_000 {
            return Err("--workloads: 1 to 10000".into());
        }
        if self.seconds == 0 {
            return Err("--seconds must be at least 1".into());
        }
        if self.entries > 10_000 {
            return Err("--entries: 0 to 10000".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Baseline: one unix attestation of this process

/// This process's peer credentials, as the kernel would report them (effective uid and gid).
fn own_cred() -> Res<PeerCred> {
    let field = |name: &str| -> Res<u32> {
        status_id(name).ok_or_else(|| format!("/proc/self/status: no {name} line").into())
    };
    Ok(PeerCred {
        pid: Some(i32::try_from(std::process::id())?),
        uid: field("Uid:")?,
        gid: field("Gid:")?,
    })
}

struct AttestBaseline {
    cold: Duration,
    warm: Samples,
    selectors: usize,
}

/// Attests this process once cold (the executable is hashed) and [`ATTEST_SAMPLES`] times warm.
fn attest_baseline(cred: PeerCred) -> Res<AttestBaseline> {
    let cfg = UnixAttestConfig::default();
    let start = now();
    let selectors = node::rt::unix_attest::attest(cred, &cfg)?;
    let cold = start.elapsed();
    let mut warm = Samples::default();
    for _ in 0..ATTEST_SAMPLES {
        let start = now();
        let got = node::rt::unix_attest::attest(cred, &cfg);
        let took = start.elapsed();
        match got {
            Ok(s) if s.len() == selectors.len() => warm.push(took),
            Ok(s) => warm.fail(format!(
                "{} selectors, the cold call had {}",
                s.len(),
                selectors.len()
            )),
            Err(e) => warm.fail(e),
        }
    }
    Ok(AttestBaseline {
        cold,
        warm,
        selectors: selectors.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// The agent's first SVID

/// Polls the Workload API on `socket` (a new connection each time) until it serves `want`. An
/// agent that exits because the fresh server refused to issue while its replica counted as
/// stale (see the report) is started again, as a supervisor would; returns those refusals.
async fn wait_svid(cluster: &mut Cluster, socket: &Path, want: &str) -> Res<Vec<String>> {
    let start = now();
    let mut last = String::from("the socket does not exist yet");
    let mut refusals = Vec::new();
    loop {
        cluster.check_running(1).await?;
        if let Err(e) = cluster.check_agent().await {
            if !e.contains("replica is stale") || start.elapsed() > STEP_TIMEOUT {
                return Err(e.into());
            }
            refusals.push(format!("{:.2} s: {e}", start.elapsed().as_secs_f64()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            cluster.restart_agent()?;
            continue;
        }
        if socket.exists() {
            match first_x509(socket, want).await {
                Ok(_) => return Ok(refusals),
                Err(e) => last = e.to_string(),
            }
        }
        if start.elapsed() > STEP_TIMEOUT {
            return Err(format!("the agent never served {want}: {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Workload API clients

/// A request carrying the `workload.spiffe.io: true` header.
fn workload_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static(SECURITY_HEADER_VALUE),
    );
    req
}

/// A new connection to the Workload API on `path` (connected: the HTTP/2 handshake is done).
async fn workload_connect(path: &Path) -> Res<Workload> {
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost");
    let channel = node::rt::admin::uds_channel(path, endpoint).await?;
    Ok(Workload::new(channel))
}

/// Connects anew, opens FetchX509SVID and waits for its first message, which must hold `want`.
/// Returns (connected after, first message after).
async fn first_x509(path: &Path, want: &str) -> Res<(Duration, Duration)> {
    let start = now();
    let call = async {
        let mut client = workload_connect(path).await?;
        let connected = start.elapsed();
        let mut stream = client
            .fetch_x509svid(workload_request(X509svidRequest {}))
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .ok_or("the stream ended before its first message")?;
        let took = start.elapsed();
        match first.svids.first() {
            Some(s) if s.spiffe_id == want && !s.x509_svid.is_empty() => Ok((connected, took)),
            Some(s) => Err(format!("the first SVID is {}", s.spiffe_id).into()),
            None => Err("a message without SVIDs".into()),
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| BoxError::from("timed out"))?
}

/// One FetchJWTSVID for [`AUDIENCE`]; returns the token.
async fn fetch_jwt(client: &mut Workload, want: &str) -> Res<String> {
    let call = client.fetch_jwtsvid(workload_request(JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    }));
    let resp = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| BoxError::from("timed out"))??
        .into_inner();
    match resp.svids.into_iter().next() {
        Some(s) if s.spiffe_id == want => Ok(s.svid),
        Some(s) => Err(format!("a JWT-SVID for {}", s.spiffe_id).into()),
        None => Err("no JWT-SVID".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

struct Propagation {
    /// From just before CreateEntries to the stream message holding the new SVID.
    create_to_svid: Samples,
    /// From CreateEntries returning (committed) to that message.
    commit_to_svid: Samples,
    /// From just before DeleteEntries to the first message without it.
    delete_to_gone: Samples,
}

/// The next message of a FetchX509SVID stream, bounded by [`CALL_TIMEOUT`].
async fn next_message(stream: &mut tonic::Streaming<X509svidResponse>) -> Res<X509svidResponse> {
    tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .map_err(|_| BoxError::from("no stream message in time"))??
        .ok_or_else(|| BoxError::from("the stream ended"))
}

/// Creates `n` entries one after another for this process while one workload waits on its
/// FetchX509SVID stream, and deletes each again, timing when the stream shows the change.
async fn propagation_phase(
    admin: &mut Admin,
    socket: &Path,
    parent: &str,
    selector: &str,
    n: usize,
) -> Res<Propagation> {
    let mut client = workload_connect(socket).await?;
    let mut stream = client
        .fetch_x509svid(workload_request(X509svidRequest {}))
        .await?
        .into_inner();
    let mut out = Propagation {
        create_to_svid: Samples::default(),
        commit_to_svid: Samples::default(),
        delete_to_gone: Samples::default(),
    };
    for i in 0..n {
        let id = format!("spiffe://{TRUST_DOMAIN}/propagation/{i}");
        let start = now();
        let created = entry(id.clone(), parent.to_owned(), selector.to_owned());
        let entry_id = create_one(admin, created)
            .await
            .map_err(|e| format!("creating {id}: {e}"))?;
        let committed = start.elapsed();
        loop {
            let msg = next_message(&mut stream).await?;
            if msg.svids.iter().any(|s| s.spiffe_id == id) {
                let took = start.elapsed();
                out.create_to_svid.push(took);
                out.commit_to_svid.push(took.saturating_sub(committed));
                break;
            }
        }
        let start = now();
        admin
            .delete_entries(pb::DeleteEntriesRequest {
                ids: vec![entry_id.to_string()],
            })
            .await?;
        loop {
            let msg = next_message(&mut stream).await?;
            if !msg.svids.iter().any(|s| s.spiffe_id == id) {
                out.delete_to_gone.push(start.elapsed());
                break;
            }
        }
    }
    Ok(out)
}

struct X509Result {
    first: Samples,
    connect: Samples,
    rounds: u64,
    elapsed: Duration,
}

/// Rounds of `n` new workloads at once until `length` has passed.
async fn x509_phase(socket: &Path, want: &str, n: usize, length: Duration) -> Res<X509Result> {
    let start = now();
    let mut first = Samples::default();
    let mut connect = Samples::default();
    let mut rounds = 0;
    while start.elapsed() < length {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let socket = socket.to_path_buf();
                let want = want.to_owned();
                spawn(async move { first_x509(&socket, &want).await })
            })
            .collect();
        for t in tasks {
            match t.await? {
                Ok((c, f)) => {
                    connect.push(c);
                    first.push(f);
                }
                Err(e) => first.fail(e),
            }
        }
        rounds += 1;
    }
    Ok(X509Result {
        first,
        connect,
        rounds,
        elapsed: start.elapsed(),
    })
}

/// One JWT caller on its own connection until `deadline`; counts tokens other than `expected`.
async fn jwt_caller(
    mut client: Workload,
    want: String,
    expected: String,
    deadline: Instant,
) -> (Samples, u64) {
    let mut s = Samples::default();
    let mut other_tokens = 0;
    while now() < deadline {
        let start = now();
        let got = fetch_jwt(&mut client, &want).await;
        let took = start.elapsed();
        match got {
            Ok(token) => {
                s.push(took);
                if token != expected {
                    other_tokens += 1;
                }
            }
            Err(e) => s.fail(e),
        }
    }
    (s, other_tokens)
}

struct JwtResult {
    warmup: Duration,
    calls: Samples,
    other_tokens: u64,
    elapsed: Duration,
}

async fn jwt_phase(socket: &Path, want: &str, n: usize, length: Duration) -> Res<JwtResult> {
    let mut warm_client = workload_connect(socket).await?;
    let start = now();
    let expected = fetch_jwt(&mut warm_client, want).await?;
    let warmup = start.elapsed();
    drop(warm_client);
    // Connections first, outside the timed window.
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(workload_connect(socket).await?);
    }
    let start = now();
    let deadline = start + length;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| spawn(jwt_caller(c, want.to_owned(), expected.clone(), deadline)))
        .collect();
    let mut calls = Samples::default();
    let mut other_tokens = 0;
    for t in tasks {
        let (s, o) = t.await?;
        calls.merge(s);
        other_tokens += o;
    }
    Ok(JwtResult {
        warmup,
        calls,
        other_tokens,
        elapsed: start.elapsed(),
    })
}

/// Sequential ValidateJWTSVID calls with an invalid token on one connection (InvalidArgument
/// is the expected answer).
async fn validate_baseline(socket: &Path) -> Res<(Samples, Duration)> {
    let mut client = workload_connect(socket).await?;
    let mut s = Samples::default();
    let mut timed = now();
    // Warm-up (the first call pays for the connection's first stream).
    for i in 0..(VALIDATE_SAMPLES + 20) {
        let start = now();
        let call = client.validate_jwtsvid(workload_request(ValidateJwtsvidRequest {
            audience: AUDIENCE.into(),
            svid: "not-a-jwt".into(),
        }));
        let got = tokio::time::timeout(CALL_TIMEOUT, call).await;
        let took = start.elapsed();
        if i < 20 {
            timed = now();
            continue;
        }
        match got {
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                s.push(took);
            }
            Ok(Err(status)) => s.fail(format!("{:?}: {}", status.code(), status.message())),
            Ok(Ok(_)) => s.fail("an invalid token validated"),
            Err(_) => s.fail("timed out"),
        }
    }
    Ok((s, timed.elapsed()))
}

/// This process's thread count (`Threads:` in `/proc/self/status`).
fn threads_now() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------------
// Report
struct Row {
    what: String,
    count: String,
    rate: String,
    p50: String,
    p99: String,
    max: String,
    note: String,
}

impl report::Row<7> for Row {
    const HEADERS: [&'static str; 7] =
        ["measurement", "count", "rate", "p50", "p99", "max", "notes"];

    fn cells(&self) -> [&str; 7] {
        [
            &self.what,
            &self.count,
            &self.rate,
            &self.p50,
            &self.p99,
            &self.max,
            &self.note,
        ]
    }
}

fn row(what: String, s: &Samples, rate: String, note: String) -> Row {
    let (p50, p99, max) = s.latency_ms();
    Row {
        what,
        count: s.micros.len().to_string(),
        rate,
        p50: ms_or_micros(p50),
        p99: ms_or_micros(p99),
        max: ms_or_micros(max),
        note: format!("{note}{}", s.errors_note()),
    }
}

// ---------------------------------------------------------------------------------------------
// The run

async fn run_phases(
    args: &Args,
    cluster: &mut Cluster,
    cred: PeerCred,
    rows: &mut Vec<Row>,
) -> Res<()> {
    let want = format!("spiffe://{TRUST_DOMAIN}/bench");
    let t0 = now();
    let mut admin = cluster.start(1).await?.remove(0);
    let server = cluster.node(1)?.addr;
    println!(
        "server: up with its CA in {:.1} s on {server}, data under {}",
        t0.elapsed().as_secs_f64(),
        cluster.root()?.display()
    );
    let token = agent_join_token(&mut admin).await?;
    if token.agent_spiffe_id.is_empty() || token.bundle_sha256.is_empty() {
        return Err("CreateJoinToken answered no agent ID or no bundle hash".into());
    }
    let selector = format!("unix:uid:{}", cred.uid);
    let parent = token.agent_spiffe_id.clone();
    create_one(&mut admin, entry(want.clone(), parent, selector.clone())).await?;
    let t1 = now();
    let socket = cluster.start_agent(server, &token.token, &token.bundle_sha256)?;
    let refusals = wait_svid(cluster, &socket, &want).await?;
    println!(
        "agent: {} serves {want} (selector {selector}) on {} after {:.2} s",
        token.agent_spiffe_id,
        socket.display(),
        t1.elapsed().as_secs_f64()
    );
    if let Some(first) = refusals.first() {
        println!(
            "note: the agent exited {} time(s) at start-up and was started again: the server, leader with its CA committed, refused to issue (first at {first})",
            refusals.len()
        );
    }
    println!("threads in this process: {}", threads_now());

    // --- 5b. baseline: a raw round trip
    println!("baseline: {VALIDATE_SAMPLES} sequential ValidateJWTSVID calls with an invalid token on one connection…");
    let (validate, took) = validate_baseline(&socket).await?;
    rows.push(row(
        "baseline: ValidateJWTSVID, invalid token, sequential".into(),
        &validate,
        format!(
            "{:.0} calls/s",
            validate.micros.len() as f64 / took.as_secs_f64()
        ),
        "1 connection, c=1; header check + attestation + parse failure (InvalidArgument)".into(),
    ));

    // --- entry propagation: create → SVID at a waiting workload, delete → gone
    if args.entries > 0 {
        println!(
            "propagation: {} entries created and deleted one at a time while a workload waits on FetchX509SVID…",
            args.entries
        );
        let p = propagation_phase(
            &mut admin,
            &socket,
            &token.agent_spiffe_id,
            &selector,
            args.entries,
        )
        .await?;
        rows.push(row(
            "propagation: CreateEntries call → SVID pushed to the workload".into(),
            &p.create_to_svid,
            "-".into(),
            "admin API write (Raft commit) + apply + push to agent + signing + push to workload"
                .into(),
        ));
        rows.push(row(
            "propagation: CreateEntries returned → SVID at the workload".into(),
            &p.commit_to_svid,
            "-".into(),
            "after the write is acknowledged".into(),
        ));
        rows.push(row(
            "propagation: DeleteEntries call → SVID gone at the workload".into(),
            &p.delete_to_gone,
            "-".into(),
            String::new(),
        ));
    }

    // --- 3. FetchX509SVID for new workloads
    let n = args.workloads;
    let length = Duration::from_secs(args.seconds);
    println!(
        "x509: rounds of {n} new workloads at once (new connection + FetchX509SVID until the first message) for {} s…",
        args.seconds
    );
    let x = x509_phase(&socket, &want, n, length).await?;
    let (c50, c99, _) = x.connect.latency_ms();
    println!(
        "x509: {} first messages in {} rounds, {:.2} s; {} threads in this process now{}",
        x.first.micros.len(),
        x.rounds,
        x.elapsed.as_secs_f64(),
        threads_now(),
        x.first.errors_note()
    );
    rows.push(row(
        "FetchX509SVID first message, new workload".into(),
        &x.first,
        format!(
            "{:.0} wl/s",
            x.first.micros.len() as f64 / x.elapsed.as_secs_f64()
        ),
        format!(
            "{n} at once per round, {} rounds; incl. connect (p50 {}, p99 {})",
            x.rounds,
            ms_or_micros(c50),
            ms_or_micros(c99)
        ),
    ));

    // --- 4. FetchJWTSVID cache hits
    println!(
        "jwt: {n} callers, one connection each, FetchJWTSVID{{audience: [{AUDIENCE:?}]}} for {} s…",
        args.seconds
    );
    let j = jwt_phase(&socket, &want, n, length).await?;
    println!(
        "jwt: warm-up (mint) {}; {} calls in {:.2} s, {} answered another token than the warm-up's; {} threads in this process now{}",
        ms_or_micros(j.warmup.as_secs_f64() * 1000.0),
        j.calls.micros.len(),
        j.elapsed.as_secs_f64(),
        j.other_tokens,
        threads_now(),
        j.calls.errors_note()
    );
    rows.push(row(
        "FetchJWTSVID, cache hit".into(),
        &j.calls,
        format!(
            "{:.0} calls/s",
            j.calls.micros.len() as f64 / j.elapsed.as_secs_f64()
        ),
        format!(
            "{n} callers, 1 connection each; warm-up mint {}; {} other tokens",
            ms_or_micros(j.warmup.as_secs_f64() * 1000.0),
            j.other_tokens
        ),
    ));
    Ok(())
}

fn run(args: Args) -> Res<()> {
    let threads = benches::cores();
    let cred = own_cred()?;
    let exe_bytes = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "wlbench: {} workloads, {} s phases, {threads} core(s), pid {}, uid {}, gid {}, executable {:.1} MB",
        args.workloads,
        args.seconds,
        cred.pid.unwrap_or(0),
        cred.uid,
        cred.gid,
        exe_bytes as f64 / 1e6
    );

    // --- 5a. baseline: attestation, before anything else runs
    let a = attest_baseline(cred)?;
    let mut rows = vec![row(
        "baseline: unix attestation of this process".into(),
        &a.warm,
        "-".into(),
        format!(
            "direct call, hash cache warm, {} selectors; cold first call {} (hashes the executable)",
            a.selectors,
            ms_or_micros(a.cold.as_secs_f64() * 1000.0)
        ),
    )];

    let outcome = benches::run_on_cluster(
        "wlbench",
        |_| "agent and server".into(),
        async |cluster| run_phases(&args, cluster, cred, &mut rows).await,
    );
    print_table(&rows);
    outcome
}

fn main() -> std::process::ExitCode {
    benches::main("wlbench", Args::parse(), Args::check, run)
}
