//! [`AgentCore`] driven by hand: every decision of the agent, without a network.

use std::sync::Arc;
use std::time::Duration;

use attest::keys::SeededKeySource;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use wire::api::{AgentView, ApiCode, ApiError, ApiRequest, ApiResponse, IssuedX509};
use wire::env::Task;
use wire::{Bundle, Env, KeySource, Mono, RegistrationEntry, Seed, UnixTime};

use super::*;

/// Keys only: the core must not read a clock.
#[derive(Debug)]
struct KeysOnly(SeededKeySource);

impl Env for KeysOnly {
    fn mono(&self) -> Mono {
        unreachable!("the core reads no clock")
    }
    fn wall(&self) -> UnixTime {
        unreachable!("the core reads no clock")
    }
    fn rng(&self, _purpose: &str) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(0)
    }
    fn keys(&self) -> &dyn KeySource {
        &self.0
    }
    fn spawn(&self, _name: &'static str, _task: Task) {}
}

const T0: u64 = 1_000_000;

fn ms(n: u64) -> Mono {
    Mono::from_duration(Duration::from_millis(n))
}

fn wall(secs: u64) -> UnixTime {
    UnixTime::from_secs(T0 + secs)
}

fn entry(n: u8) -> RegistrationEntry {
    cache::tests::entry(n, &["unix:uid:1"], 1)
}

fn view(applied_index: u64, entries: Vec<RegistrationEntry>) -> AgentView {
    AgentView {
        node_id: 1,
        applied_index,
        bundle: Bundle::default(),
        federated: vec![],
        entries,
    }
}

/// An agent of servers 1, 2, 3 whose SVID lives `[0, 100 s)` of [`wall`].
fn agent(repeatable: Option<&'static str>) -> AgentCore<u64> {
    let cfg = AgentCoreConfig {
        servers: vec![1, 2, 3],
        repeatable,
        public_key_der: vec![7; 91],
    };
    let svid = AgentSvid {
        spiffe_id: "spiffe://t.test/sigil/agent/x".parse().expect("id"),
        chain: vec![vec![1]],
        issued_at: wall(0),
        not_after: wall(100),
    };
    let env: Arc<dyn Env> = Arc::new(KeysOnly(SeededKeySource::new(Seed::from_u64(3))));
    let cache = AgentCache::with_verifier(Bundle::default(), |_, _, _, _| true);
    AgentCore::with_cache(cfg, env, svid, cache, ms(0))
}

/// Feeds one input and returns the outputs.
fn step(a: &mut AgentCore<u64>, now: Mono, at: UnixTime, input: Input<u64>) -> Vec<Output<u64>> {
    let mut out = Vec::new();
    a.handle(now, at, input, &mut out);
    out
}

fn connects(out: &[Output<u64>]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Connect(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn disconnects(out: &[Output<u64>]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Disconnect(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn calls(out: &[Output<u64>]) -> Vec<(CallId, u64, &ApiRequest)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Call {
                id,
                server,
                request,
            } => Some((*id, *server, request)),
            _ => None,
        })
        .collect()
}

fn probed(server: u64, rtt_ms: u64) -> Input<u64> {
    Input::Probed {
        server,
        rtt: Ok(Duration::from_millis(rtt_ms)),
    }
}

/// Brings `a` up on server 1 at time 0.
fn up_on_1(a: &mut AgentCore<u64>) {
    assert_eq!(
        connects(&step(a, ms(0), wall(0), Input::Tick)),
        vec![1, 2, 3]
    );
    step(a, ms(5), wall(0), probed(1, 5));
    step(
        a,
        ms(6),
        wall(0),
        Input::Probed {
            server: 2,
            rtt: Err("down".into()),
        },
    );
    let out = step(
        a,
        ms(7),
        wall(0),
        Input::Probed {
            server: 3,
            rtt: Err("down".into()),
        },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Follow(1))));
    assert_eq!(a.server(), Some(1));
}

#[test]
fn follows_the_fastest_answer_within_the_grace_window() {
    let mut a = agent(None);
    assert_eq!(
        connects(&step(&mut a, ms(0), wall(0), Input::Tick)),
        vec![1, 2, 3]
    );
    assert!(
        step(&mut a, ms(30), wall(0), probed(2, 30)).is_empty(),
        "2 answered: wait for faster ones"
    );
    assert_eq!(a.next_deadline(), Some(ms(30).saturating_add(RTT_GRACE)));
    step(&mut a, ms(40), wall(0), probed(1, 10));
    // Server 3 never answers: at the end of the grace window the fastest answer wins.
    let out = step(&mut a, ms(230), wall(0), Input::Tick);
    assert!(
        out.iter().any(|o| matches!(o, Output::Follow(1))),
        "{out:?}"
    );
    let mut closed = disconnects(&out);
    closed.sort_unstable();
    assert_eq!(
        closed,
        vec![2, 3],
        "the slower answer and the attempt still out are closed"
    );
    assert_eq!(a.server(), Some(1));
    // A late answer from the abandoned attempt is closed too.
    assert_eq!(
        disconnects(&step(&mut a, ms(300), wall(0), probed(3, 5))),
        vec![3]
    );
}

#[test]
fn fails_over_when_the_stream_or_a_call_fails_backing_off() {
    let mut a = agent(None);
    up_on_1(&mut a);
    let out = step(&mut a, ms(10), wall(1), lost(1));
    assert_eq!(disconnects(&out), vec![1]);
    assert!(connects(&out).is_empty());
    assert_eq!(a.server(), None);
    assert_eq!(
        a.next_deadline(),
        Some(ms(210)),
        "a new round after the first backoff step"
    );
    assert_eq!(
        connects(&step(&mut a, ms(210), wall(1), Input::Tick)),
        vec![1, 2, 3]
    );
    // Up on 2; a sign call that does not get through fails over again, backing off further.
    step(&mut a, ms(211), wall(1), refused(1));
    step(&mut a, ms(212), wall(1), refused(3));
    step(&mut a, ms(213), wall(1), probed(2, 3));
    assert_eq!(a.server(), Some(2));
    let view = Input::View {
        server: 2,
        view: view(1, vec![entry(1)]),
    };
    let out = step(&mut a, ms(214), wall(1), view);
    let (id, server, _) = calls(&out)[0];
    assert_eq!(server, 2);
    let failed = Input::Answer {
        call: id,
        answer: Err("timed out".into()),
    };
    let out = step(&mut a, ms(215), wall(1), failed);
    assert_eq!(disconnects(&out), vec![2]);
    assert_eq!(a.server(), None);
    assert_eq!(a.next_deadline(), Some(ms(615)));
    // A stream loss reported for a server no longer followed changes nothing.
    let out = step(&mut a, ms(216), wall(1), lost(2));
    assert!(out.iter().all(|o| !matches!(o, Output::Disconnect(_))));
}

#[test]
fn a_server_that_holds_resets_the_backoff() {
    let mut a = agent(None);
    up_on_1(&mut a);
    step(&mut a, ms(10), wall(1), lost(1));
    step(&mut a, ms(210), wall(1), Input::Tick);
    step(&mut a, ms(211), wall(1), refused(2));
    step(&mut a, ms(211), wall(1), refused(3));
    step(&mut a, ms(212), wall(1), probed(1, 1));
    assert_eq!(a.server(), Some(1));
    // Held for RECONNECT_MAX: the next failure waits only the first step again.
    step(&mut a, ms(5_212), wall(6), Input::Tick);
    step(&mut a, ms(6_000), wall(7), lost(1));
    assert_eq!(a.next_deadline(), Some(ms(6_200)));
}

fn lost(server: u64) -> Input<u64> {
    Input::StreamLost {
        server,
        reason: "reset".into(),
    }
}

fn refused(server: u64) -> Input<u64> {
    Input::Probed {
        server,
        rtt: Err("refused".into()),
    }
}

#[test]
fn backs_off_while_no_server_answers_and_a_join_token_agent_never_reattests() {
    let mut a = agent(None);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        let out = step(&mut a, ms(now), wall(200), Input::Tick);
        assert_eq!(connects(&out), vec![1, 2, 3]);
        for s in [1, 2, 3] {
            let out = step(
                &mut a,
                ms(now),
                wall(200),
                Input::Probed {
                    server: s,
                    rtt: Err("refused".into()),
                },
            );
            assert!(
                !out.iter().any(|o| matches!(o, Output::Reattest)),
                "a spent join token cannot attest again"
            );
        }
        let next = a.next_deadline().expect("a retry is scheduled");
        waits.push(next.saturating_since(ms(now)).as_millis());
        now = next.saturating_since(Mono::ZERO).as_millis() as u64;
    }
    assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
}

#[test]
fn an_expired_svid_with_no_server_reachable_attests_again() {
    let mut a = agent(Some("x509pop"));
    step(&mut a, ms(0), wall(200), Input::Tick);
    let mut out = Vec::new();
    for s in [1, 2, 3] {
        out = step(
            &mut a,
            ms(1),
            wall(200),
            Input::Probed {
                server: s,
                rtt: Err("refused".into()),
            },
        );
    }
    assert!(out.iter().any(|o| matches!(o, Output::Reattest)), "{out:?}");
    assert_eq!(
        a.next_deadline(),
        None,
        "nothing else happens while attesting"
    );
    // A failure: back off and try the round (and so the attestation) again.
    let out = step(
        &mut a,
        ms(2),
        wall(200),
        Input::Reattested(Err("no server".into())),
    );
    assert!(connects(&out).is_empty());
    assert!(a.next_deadline().is_some());
    let retry = a.next_deadline().expect("retry");
    step(&mut a, retry, wall(201), Input::Tick);
    let mut out = Vec::new();
    for s in [1, 2, 3] {
        out = step(
            &mut a,
            retry,
            wall(201),
            Input::Probed {
                server: s,
                rtt: Err("refused".into()),
            },
        );
    }
    assert!(out.iter().any(|o| matches!(o, Output::Reattest)));
    let attested = Attested {
        spiffe_id: "spiffe://t.test/sigil/agent/x".parse().expect("id"),
        chain: vec![vec![9]],
        not_after: wall(400),
        bundle: Bundle {
            sequence: Some(4),
            ..Bundle::default()
        },
    };
    let out = step(&mut a, retry, wall(202), Input::Reattested(Ok(attested)));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StoreAgentSvid { not_after, .. } if *not_after == wall(400))));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StoreBundle(b) if b.sequence == Some(4))));
    assert_eq!(
        connects(&out),
        vec![1, 2, 3],
        "connects with the new SVID at once"
    );
    assert_eq!(a.svid().chain, vec![vec![9]]);
    assert_eq!(a.cache().bundle().sequence, Some(4));
}

#[test]
fn signs_what_is_due_once_with_fresh_keys_and_serves_it() {
    let mut a = agent(None);
    up_on_1(&mut a);
    let out = step(
        &mut a,
        ms(10),
        wall(1),
        Input::View {
            server: 1,
            view: view(1, vec![entry(1), entry(2)]),
        },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Changed)));
    let sent = calls(&out);
    assert_eq!(sent.len(), 1, "one batch");
    let (id, _, request) = sent[0];
    let ApiRequest::SignX509 { requests } = request else {
        panic!("expected a sign request, got {request:?}");
    };
    assert_eq!(requests.len(), 2);
    assert_ne!(
        requests[0].public_key_der, requests[1].public_key_der,
        "a key per SVID"
    );
    let issued: Vec<_> = requests
        .iter()
        .zip([entry(1), entry(2)])
        .map(|(_, e)| {
            Ok(IssuedX509 {
                entry_id: e.id.clone(),
                spiffe_id: e.spiffe_id.clone(),
                chain: vec![vec![2]],
                not_after: wall(101),
            })
        })
        .collect();
    // While the batch is in flight, nothing is asked twice.
    assert!(calls(&step(&mut a, ms(1_500), wall(1), Input::Tick)).is_empty());
    let out = step(
        &mut a,
        ms(1_600),
        wall(1),
        Input::Answer {
            call: id,
            answer: Ok(ApiResponse::X509(issued)),
        },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Changed)));
    assert_eq!(a.cache().x509_count(), 2);
    let uid1 = ["unix:uid:1".parse().expect("selector")]
        .into_iter()
        .collect();
    let served = a.cache().x509_for(&uid1, wall(2));
    assert_eq!(served.len(), 2);
    assert_eq!(
        served[0].svid.key.public_key_der(),
        requests[0].public_key_der.as_slice()
    );
    // Nothing more is due until half life (51 s after signing at 1 s).
    assert!(calls(&step(&mut a, ms(3_000), wall(3), Input::Tick)).is_empty());
    let out = step(&mut a, ms(4_000), wall(51), Input::Tick);
    let due: usize = calls(&out)
        .iter()
        .map(|(_, _, r)| match r {
            ApiRequest::SignX509 { requests } => requests.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(due, 2, "renewed at half life");
}

#[test]
fn renews_its_own_svid_at_half_life_then_reconnects_with_it() {
    let mut a = agent(None);
    up_on_1(&mut a);
    assert!(calls(&step(&mut a, ms(1_000), wall(49), Input::Tick)).is_empty());
    let out = step(&mut a, ms(2_000), wall(50), Input::Tick);
    let sent = calls(&out);
    assert!(
        matches!(sent[0].2, ApiRequest::RenewAgent { public_key_der } if *public_key_der == vec![7; 91])
    );
    let id = sent[0].0;
    assert!(
        calls(&step(&mut a, ms(3_000), wall(51), Input::Tick)).is_empty(),
        "one renewal at a time"
    );
    let answer = ApiResponse::AgentSvid {
        spiffe_id: a.svid().spiffe_id.clone(),
        chain: vec![vec![5]],
        not_after: wall(150),
        bundle: Bundle::default(),
    };
    let out = step(
        &mut a,
        ms(3_100),
        wall(51),
        Input::Answer {
            call: id,
            answer: Ok(answer),
        },
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StoreAgentSvid { .. })));
    assert_eq!(disconnects(&out), vec![1]);
    assert_eq!(
        connects(&out),
        vec![1, 2, 3],
        "reconnects with the new SVID"
    );
    assert_eq!(a.svid().chain, vec![vec![5]]);
    assert_eq!(a.svid().issued_at, wall(50), "issued when asked");
}

#[test]
fn a_refused_renewal_because_a_copy_renewed_reattests_or_says_what_to_do() {
    let refusal = || {
        Ok(ApiResponse::Error(ApiError::new(
            ApiCode::PermissionDenied,
            format!("agent SVID serial 1 {} x", crate::service::NOT_LATEST),
        )))
    };
    for repeatable in [Some("TPM"), None] {
        let mut a = agent(repeatable);
        up_on_1(&mut a);
        let out = step(&mut a, ms(2_000), wall(60), Input::Tick);
        let id = calls(&out)[0].0;
        let out = step(
            &mut a,
            ms(2_100),
            wall(60),
            Input::Answer {
                call: id,
                answer: refusal(),
            },
        );
        assert_eq!(disconnects(&out), vec![1]);
        assert_eq!(a.server(), None);
        let reattest = out.iter().any(|o| matches!(o, Output::Reattest));
        assert_eq!(reattest, repeatable.is_some(), "{repeatable:?}: {out:?}");
        assert_eq!(a.reattesting(), repeatable.is_some());
    }
}

#[test]
fn concurrent_jwt_misses_share_one_mint_and_then_hit_the_cache() {
    let mut a = agent(None);
    let e = entry(1);
    let ask = |ticket: Ticket, audience: &[&str]| Input::Jwt {
        ticket,
        entry_id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        audience: audience.iter().map(|s| (*s).to_owned()).collect(),
    };
    // No server: an immediate, retryable refusal.
    let out = step(&mut a, ms(0), wall(0), ask(1, &["a"]));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Jwt {
            ticket: 1,
            result: Err(_)
        }
    )));
    assert_eq!(connects(&out), vec![1, 2, 3]);
    for s in [2, 3] {
        step(
            &mut a,
            ms(1),
            wall(0),
            Input::Probed {
                server: s,
                rtt: Err("down".into()),
            },
        );
    }
    step(&mut a, ms(2), wall(0), probed(1, 2));
    assert_eq!(a.server(), Some(1));
    step(
        &mut a,
        ms(10),
        wall(0),
        Input::View {
            server: 1,
            view: view(1, vec![e.clone()]),
        },
    );
    let out = step(&mut a, ms(11), wall(0), ask(2, &["b", "a"]));
    let first = calls(&out);
    assert_eq!(first.len(), 1);
    assert!(
        calls(&step(&mut a, ms(12), wall(0), ask(3, &["a", "b", "a"]))).is_empty(),
        "the second miss waits for the first mint"
    );
    let answer = ApiResponse::Jwt {
        token: "tok".into(),
        expires_at: wall(300),
    };
    let mint = first[0].0;
    let out = step(
        &mut a,
        ms(13),
        wall(0),
        Input::Answer {
            call: mint,
            answer: Ok(answer),
        },
    );
    let answered: Vec<Ticket> = out
        .iter()
        .filter_map(|o| match o {
            Output::Jwt {
                ticket,
                result: Ok(t),
            } if t == "tok" => Some(*ticket),
            _ => None,
        })
        .collect();
    assert_eq!(answered, vec![2, 3]);
    let out = step(&mut a, ms(14), wall(10), ask(4, &["a", "b"]));
    assert!(calls(&out).is_empty(), "cached");
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Jwt { ticket: 4, result: Ok(t) } if t == "tok")));
}

#[test]
fn looks_for_a_faster_server_every_reprobe_interval() {
    let mut a = agent(None);
    up_on_1(&mut a);
    let before = REPROBE_INTERVAL.as_millis() as u64;
    let out = step(&mut a, ms(before), wall(1), Input::Tick);
    assert!(connects(&out).is_empty());
    let out = step(&mut a, ms(before + 1_000), wall(2), Input::Tick);
    assert_eq!(disconnects(&out), vec![1]);
    assert_eq!(connects(&out), vec![1, 2, 3]);
}
