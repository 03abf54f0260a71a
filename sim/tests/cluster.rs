//! Named scenarios on a simulated Raft cluster (virtual time, seeded, deterministic).

use std::time::Duration;

use raft::replica::WriteError;
use sim::net::NetConfig;
use sim::world::World;
use sim::{run_seed, RunOptions};
use wire::{AgentRecord, AttestationMethod, Command, CommandError, JoinToken, Outcome, UnixTime};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f)
}

fn virtual_now() -> tokio::time::Instant {
    #[allow(clippy::disallowed_methods)] // the simulated clock
    tokio::time::Instant::now()
}

async fn create_one(world: &mut World, node: u64) -> Result<wire::Response, WriteError> {
    let e = world.new_entry();
    world
        .write(node, Command::CreateEntries { entries: vec![e] })
        .await
}

#[test]
fn election_picks_one_leader() {
    block_on(async {
        let mut w = World::start(11, 3, NetConfig::calm()).await;
        let leader = w.wait_leader(Duration::from_secs(5)).await;
        assert!(leader.is_some(), "a leader within 5 s");
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.observe_leaders();
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        w.shutdown().await;
    });
}

#[test]
fn replication_reaches_every_node_and_writes_forward() {
    block_on(async {
        let mut w = World::start(12, 3, NetConfig::calm()).await;
        let leader = w.wait_leader(Duration::from_secs(5)).await.expect("leader");
        let follower = w
            .live()
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        for node in [leader, follower, leader, follower] {
            let r = create_one(&mut w, node).await.expect("write commits");
            assert!(matches!(r, Ok(Outcome::Created(ref v)) if v.iter().all(Result::is_ok)));
        }
        w.converge(Duration::from_secs(10)).await.expect("converge");
        for id in w.live() {
            let n = w
                .replica(id)
                .expect("live")
                .read(|a| a.state.entries().count());
            assert_eq!(n, 4 + 1, "node {id} (4 writes + the world's issuing entry)");
        }
        w.shutdown().await;
    });
}

#[test]
fn leader_crash_and_restart() {
    block_on(async {
        let mut w = World::start(13, 3, NetConfig::calm()).await;
        let old = w.wait_leader(Duration::from_secs(5)).await.expect("leader");
        create_one(&mut w, old).await.expect("write").expect("ok");
        w.crash(old).await;
        let new = w
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("new leader");
        assert_ne!(new, old);
        create_one(&mut w, new)
            .await
            .expect("write after failover")
            .expect("ok");
        w.restart(old).await;
        w.converge(Duration::from_secs(20)).await.expect("converge");
        let n = w
            .replica(old)
            .expect("back")
            .read(|a| a.state.entries().count());
        assert_eq!(
            n,
            2 + 1,
            "the restarted node caught up (+ the issuing entry)"
        );
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        w.shutdown().await;
    });
}

#[test]
fn minority_write_fails_with_no_quorum_in_bounded_time() {
    block_on(async {
        let mut w = World::start(14, 3, NetConfig::calm()).await;
        let leader = w.wait_leader(Duration::from_secs(5)).await.expect("leader");
        let ids = w.live();
        // Isolate the leader: it is the minority now.
        let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        w.net().partition(&[vec![leader], rest.clone()]);
        let started = virtual_now();
        let r = create_one(&mut w, leader).await;
        let waited = virtual_now().duration_since(started);
        assert!(matches!(r, Err(WriteError::NoQuorum { .. })), "{r:?}");
        assert!(
            waited <= Duration::from_millis(2_500),
            "answered in {waited:?}"
        );
        // The majority elects a leader and keeps accepting writes.
        let started = virtual_now();
        let mut majority_leader = None;
        while majority_leader.is_none()
            && virtual_now().duration_since(started) < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            majority_leader = rest.iter().copied().find(|id| {
                w.replica(*id).is_some_and(|r| {
                    r.raft().metrics().borrow().state == openraft::ServerState::Leader
                })
            });
        }
        let elected_in = virtual_now().duration_since(started);
        let new_leader = majority_leader.expect("the majority elects a leader within 10 s");
        eprintln!("majority elected node {new_leader} in {elected_in:?}");
        let r = create_one(&mut w, rest[0]).await.expect("majority write");
        assert!(r.is_ok());
        w.converge(Duration::from_secs(20)).await.expect("converge");
        w.shutdown().await;
    });
}

#[test]
fn asymmetric_partition_then_heal_converges() {
    block_on(async {
        let mut w = World::start(15, 5, NetConfig::calm()).await;
        let leader = w.wait_leader(Duration::from_secs(5)).await.expect("leader");
        // The leader can hear everyone but nobody hears the leader.
        for id in w.live() {
            if id != leader {
                w.net().cut(leader, id);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.observe_leaders();
        let others: Vec<u64> = w.live().into_iter().filter(|i| *i != leader).collect();
        create_one(&mut w, others[0])
            .await
            .expect("write on the majority")
            .expect("ok");
        w.converge(Duration::from_secs(20))
            .await
            .expect("converge after heal");
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        w.shutdown().await;
    });
}

#[test]
fn join_token_is_consumed_once_under_racing_nodes() {
    block_on(async {
        let mut w = World::start(16, 3, NetConfig::calm()).await;
        let leader = w.wait_leader(Duration::from_secs(5)).await.expect("leader");
        let hash: String = "ab".repeat(32);
        w.write(
            leader,
            Command::CreateJoinToken {
                token: JoinToken {
                    token_sha256: hash.clone(),
                    expires_at: UnixTime::from_secs(1_000_000),
                    consumed_by: None,
                    purpose: wire::TokenPurpose::Agent,
                    consumer_key_sha256: String::new(),
                    node_id: None,
                    rejoin: false,
                    created_at: UnixTime::EPOCH,
                    consumed_at: None,
                },
            },
        )
        .await
        .expect("commit")
        .expect("created");
        let consume = |n: u64| Command::ConsumeJoinToken {
            token_sha256: hash.clone(),
            key_sha256: format!("{n:064x}"),
            agent: AgentRecord {
                spiffe_id: format!("spiffe://sim.test/sigil/agent/join_token/n{n}")
                    .parse()
                    .expect("id"),
                method: AttestationMethod::JoinToken,
                selectors: vec![],
                banned: false,
                svid_serial: String::new(),
                svid_not_after: UnixTime::EPOCH,
                previous_serial: String::new(),
                renewed_at: UnixTime::EPOCH,
                attested_at: UnixTime::EPOCH,
            },
            at: UnixTime::from_secs(10),
        };
        let ids = w.live();
        let (a, b) = (ids[1], ids[2]);
        let (ra, rb) = tokio::join!(w.write(a, consume(a)), w.write(b, consume(b)));
        let results = [ra.expect("commit"), rb.expect("commit")];
        let wins = results
            .iter()
            .filter(|r| matches!(r, Ok(Outcome::Agent(_))))
            .count();
        let used = results
            .iter()
            .filter(|r| matches!(r, Err(CommandError::TokenUsed)))
            .count();
        assert_eq!((wins, used), (1, 1), "{results:?}");
        w.shutdown().await;
    });
}

/// A seed reproduces its run bit for bit: CI's double run. Seeds 100320–100325 differed between
/// runs before tokio's RNG (the branch order of unbiased `select!`s, openraft's included) was
/// seeded from the run's seed.
#[test]
fn same_seed_same_trace() {
    assert!(
        sim::world::reproducible(),
        "built without `--cfg tokio_unstable` (see .cargo/config.toml; a RUSTFLAGS environment variable replaces it): runs cannot be reproduced"
    );
    let three = [42]
        .into_iter()
        .chain(100_320..100_326)
        .map(|s| (s, 3, 200));
    let five = (3000..3002).map(|s| (s, 5, 150));
    for (seed, nodes, steps) in three.chain(five) {
        let opts = RunOptions { seed, nodes, steps };
        let a = run_seed(&opts);
        let b = run_seed(&opts);
        assert!(a.violations.is_empty(), "seed {seed}: {:?}", a.violations);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} on {nodes} nodes did not reproduce its run\nreproduce: cargo run -p chaos --release -- --seed {seed} --nodes {nodes} --steps {steps} --twice"
        );
    }
    let a = run_seed(&RunOptions {
        seed: 42,
        nodes: 3,
        steps: 150,
    });
    let c = run_seed(&RunOptions {
        seed: 43,
        nodes: 3,
        steps: 150,
    });
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "different seeds, different runs"
    );
}

/// Regression: seed 1053 found replies to a crashed incarnation's requests being matched to the
/// restarted node's new requests (request IDs restarted at 1), acknowledging the wrong write.
#[test]
fn seed_1053_stale_replies_do_not_ack_other_writes() {
    let r = run_seed(&RunOptions {
        seed: 1053,
        nodes: 3,
        steps: 200,
    });
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

/// The CI budget: 120 seeds (100 on 3 nodes, 20 on 5) with agents and workloads, every checker
/// on (thousands: `cargo run -p chaos --release -- --seeds 10000`). Both sides of
/// `staleness_max` must show up: cut-off nodes still issuing inside it, and none past it. Every
/// kind of hostile actor must have acted (replayed tokens, entitlement probes, copied agent
/// SVIDs, a banned agent, a removed server's proposals) and been refused.
#[test]
fn swarm_seeds_hold_every_invariant() {
    let three = (2000..2100).map(|s| (s, 3));
    let five = (3000..3020).map(|s| (s, 5));
    let (mut svids, mut serves, mut cut_off_issued) = (0, 0, 0);
    let mut hostile = sim::world::HostileCounts::default();
    for (seed, nodes) in three.chain(five) {
        let r = run_seed(&RunOptions {
            seed,
            nodes,
            steps: 150,
        });
        assert!(
            r.violations.is_empty(),
            "seed {seed} nodes {nodes}: {:?}\nreproduce: cargo run -p chaos --release -- --seed {seed} --nodes {nodes} --steps 150",
            r.violations
        );
        svids += r.issued;
        serves += r.serves;
        cut_off_issued += r.issued_while_cut_off;
        hostile.replays += r.hostile.replays;
        hostile.probes += r.hostile.probes;
        hostile.copy_tries += r.hostile.copy_tries;
        hostile.ban_tries += r.hostile.ban_tries;
        hostile.removed_proposals += r.hostile.removed_proposals;
        hostile.refused += r.hostile.refused;
    }
    assert!(svids > 1000, "agents received only {svids} SVIDs");
    assert!(serves > 1000, "workloads were served only {serves} times");
    assert!(
        cut_off_issued > 0,
        "no cut-off node issued inside staleness_max: the permissive side went unexercised"
    );
    assert!(
        hostile.replays > 0
            && hostile.probes > 0
            && hostile.copy_tries > 0
            && hostile.ban_tries > 0
            && hostile.removed_proposals > 0
            && hostile.refused > 0,
        "a kind of hostile actor never acted: {hostile:?}"
    );
}

/// Virtual time between two agent ticks in the agent scenarios.
const AGENT_STEP: Duration = Duration::from_millis(500);

/// Creates, through `leader`, an entry parented by agent `agent` for workloads with `selector`
/// (`ttl_secs`: its X.509-SVID lifetime, 0 for the default); its ID.
async fn agent_entry(
    w: &mut World,
    leader: u64,
    agent: usize,
    selector: &str,
    ttl_secs: u32,
) -> wire::EntryId {
    let mut entry = w.new_entry();
    entry.parent_id = w.agents()[agent].spiffe_id.clone();
    entry.selectors = [selector.parse().expect("selector")].into();
    entry.x509_svid_ttl_secs = ttl_secs;
    let id = entry.id.clone();
    w.write(
        leader,
        Command::CreateEntries {
            entries: vec![entry],
        },
    )
    .await
    .expect("committed")
    .expect("entry created");
    id
}

/// Ticks the agents every [`AGENT_STEP`] until `done` holds, failing with `what` after `limit`;
/// how long it took.
async fn tick_agents_until(
    w: &mut World,
    limit: Duration,
    what: &str,
    done: impl Fn(&World) -> bool,
) -> Duration {
    let mut waited = Duration::ZERO;
    while !done(w) {
        assert!(waited < limit, "{what} within {limit:?}");
        tokio::time::sleep(AGENT_STEP).await;
        w.tick_agents().await;
        waited += AGENT_STEP;
    }
    waited
}

/// Both sides of `staleness_max`, for one agent: cut off together with its node, a workload
/// keeps being renewed (its SVIDs live 4 s, so holding one 7.5 s into the cut means renewals
/// crossed it) until `staleness_max`, then the node stops and the SVID runs out; after the heal
/// the workload is served again.
#[test]
fn a_cut_off_node_renews_its_agent_until_staleness_max_then_stops() {
    // Seeds differ in which node the agent follows and whether it leads.
    for seed in 21..27 {
        cut_off_with_agent(seed);
    }
}

fn cut_off_with_agent(seed: u64) {
    use sim::world::{Faults, SIM_STALENESS_MAX};
    const TTL: Duration = Duration::from_secs(4);
    const STEP: Duration = Duration::from_millis(500);
    block_on(async {
        let mut faults = Faults::none();
        faults.agents = 1;
        let mut w = World::start_with(seed, 3, &faults).await;
        let leader = w
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        let ttl = u32::try_from(TTL.as_secs()).expect("small");
        let id = agent_entry(&mut w, leader, 0, "unix:uid:2", ttl).await;
        // The workload with uid 2 (the agent's second workload) holds a valid SVID for it.
        let holds = |w: &World| {
            let agent = &w.agents()[0];
            let wall = wire::Env::wall(agent.env.as_ref());
            agent
                .cache()
                .x509_for(&agent.workloads[1].selectors, wall)
                .iter()
                .any(|s| s.entry.id == id)
        };
        tick_agents_until(
            &mut w,
            Duration::from_secs(20),
            "an SVID before the cut",
            holds,
        )
        .await;
        let agent = &w.agents()[0];
        let node = agent.server().expect("the agent follows a node");
        let peer = agent.peer;
        let others: Vec<u64> = (1..=3).filter(|n| *n != node).collect();
        w.net().partition(&[vec![node, peer], others]);

        let slack = sim::check::staleness::slack(
            node::server::ServerConfig::new(1, "sim.test".parse().expect("td")).quorum_ack_max,
            Duration::ZERO,
        );
        let mut cut_for = Duration::ZERO;
        let mut lost_at = None;
        while cut_for < SIM_STALENESS_MAX + slack + TTL + Duration::from_secs(3) {
            tokio::time::sleep(STEP).await;
            w.tick_agents().await;
            cut_for += STEP;
            if lost_at.is_none() && !holds(&w) {
                lost_at = Some(cut_for);
            }
        }
        let lost_at = lost_at.expect("the cut-off node never stopped renewing");
        eprintln!(
            "seed {seed}: cut off with node {node} (leader {leader}): the workload lost its SVID {lost_at:?} into the cut"
        );
        // Contact is dated by the newest committed tick (one every staleness_max / 4), so the
        // node may stop as early as 3/4 of staleness_max into the cut.
        assert!(
            lost_at >= SIM_STALENESS_MAX * 3 / 4,
            "the workload lost its SVID {lost_at:?} into the cut: renewals did not cross it"
        );
        assert!(
            lost_at <= SIM_STALENESS_MAX + slack + TTL + STEP,
            "renewed until {lost_at:?} into the cut, past staleness_max"
        );

        w.net().heal();
        tick_agents_until(
            &mut w,
            Duration::from_secs(20),
            "served again after the heal",
            holds,
        )
        .await;
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        w.shutdown().await;
    });
}

/// The production agent's re-attestation, in the simulator: an x509pop agent cut off from every
/// node past its SVID's lifetime attests again by itself once a node answers, and its workloads
/// are served again; a join-token agent in the same spot stays expired (its token is spent), as
/// documented.
#[test]
fn an_agent_cut_off_past_its_svid_attests_again_with_x509pop_only() {
    use sim::world::{Faults, SIM_AGENT_TTL};
    block_on(async {
        let mut faults = Faults::none();
        faults.agents = 2;
        faults.x509pop_agents = 1;
        let mut w = World::start_with(31, 3, &faults).await;
        let served = |w: &World, i: usize| {
            let agent = &w.agents()[i];
            let wall = wire::Env::wall(agent.env.as_ref());
            agent.alive()
                && !agent
                    .cache()
                    .x509_for(&agent.workloads[0].selectors, wall)
                    .is_empty()
        };
        w.wait_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        let attested = |w: &World| w.agents().iter().all(|a| a.attested);
        tick_agents_until(&mut w, Duration::from_secs(20), "agents attested", attested).await;
        // An entry each, so there is something to serve.
        let leader = w
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        for i in 0..2 {
            agent_entry(&mut w, leader, i, "unix:uid:1", 0).await;
        }
        let both = |w: &World| served(w, 0) && served(w, 1);
        tick_agents_until(
            &mut w,
            Duration::from_secs(20),
            "served before the cut",
            both,
        )
        .await;
        // Cut both agents off from every node until their SVIDs expired.
        let peers: Vec<u64> = w.agents().iter().map(|a| a.peer).collect();
        w.net().partition(&[peers, vec![1, 2, 3]]);
        let mut cut_for = Duration::ZERO;
        while cut_for < SIM_AGENT_TTL + Duration::from_secs(5) {
            tokio::time::sleep(AGENT_STEP).await;
            w.tick_agents().await;
            cut_for += AGENT_STEP;
        }
        assert!(
            !w.agents()[0].alive() && !w.agents()[1].alive(),
            "the SVIDs expired"
        );
        assert_eq!(w.agents()[1].reattested, 0, "no node answered yet");
        w.net().heal();
        let again = |w: &World| served(w, 1);
        let took = tick_agents_until(
            &mut w,
            Duration::from_secs(30),
            "the x509pop agent attested again",
            again,
        )
        .await;
        assert!(w.agents()[1].reattested >= 1);
        eprintln!("x509pop agent served again {took:?} after the heal");
        for _ in 0..10 {
            tokio::time::sleep(AGENT_STEP).await;
            w.tick_agents().await;
        }
        assert!(
            !w.agents()[0].alive(),
            "a spent join token cannot attest again"
        );
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        w.shutdown().await;
    });
}
