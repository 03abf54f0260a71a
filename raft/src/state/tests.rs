use super::*;
use wire::{AttestationMethod, JwtAuthority, PublicJwk, X509Authority};

fn entry(n: u8, parent: &str, selectors: &[&str]) -> RegistrationEntry {
    let mut e = RegistrationEntry::new(
        EntryId::from_random([n; 16]),
        format!("spiffe://example.org/w{n}").parse().expect("id"),
        parent.parse().expect("id"),
        selectors.iter().map(|s| s.parse().expect("sel")).collect(),
        100,
    );
    e.revision = 9;
    e
}

const AGENT: &str = "spiffe://example.org/sigil/agent/join_token/t1";

fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        spiffe_id: id.parse().expect("id"),
        method: AttestationMethod::JoinToken,
        selectors: vec![],
        banned: false,
        svid_serial: "01".into(),
        svid_not_after: UnixTime::from_secs(10),
        previous_serial: String::new(),
        renewed_at: UnixTime::EPOCH,
        attested_at: UnixTime::EPOCH,
    }
}

fn hash(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn token(c: char, expires: u64, purpose: TokenPurpose, node_id: Option<u64>) -> JoinToken {
    JoinToken {
        token_sha256: hash(c),
        expires_at: UnixTime::from_secs(expires),
        consumed_by: None,
        purpose,
        consumer_key_sha256: String::new(),
        node_id,
        rejoin: false,
        created_at: UnixTime::EPOCH,
        consumed_at: None,
    }
}

#[test]
fn a_token_with_its_entry_is_created_whole_or_not_at_all() {
    let mut s = State::new();
    let e = entry(1, "spiffe://example.org/sigil/servers", &["spiffe_id:x"]);
    let t = token('a', 100, TokenPurpose::Agent, None);
    let both = Command::CreateJoinTokenWithEntry {
        token: t.clone(),
        entry: e.clone(),
    };
    match apply(&mut s, both.clone()).expect("created") {
        Outcome::Created(r) => assert_eq!(r[0].as_ref().expect("entry").revision, 0),
        other => panic!("unexpected {other:?}"),
    }
    assert!(s.join_tokens.contains_key(&t.token_sha256) && s.entry(&e.id).is_some());
    // The same again: the token exists, so the (new) entry is not created either.
    let mut other = e.clone();
    other.id = EntryId::from_random([2; 16]);
    other.spiffe_id = "spiffe://example.org/other".parse().expect("id");
    let again = Command::CreateJoinTokenWithEntry {
        token: t.clone(),
        entry: other.clone(),
    };
    assert!(matches!(
        apply(&mut s, again),
        Err(CommandError::AlreadyExists(_))
    ));
    assert!(s.entry(&other.id).is_none());
    // A bad entry: the (new) token is not created.
    let mut bad = other.clone();
    bad.selectors.clear();
    let t2 = token('b', 100, TokenPurpose::Agent, None);
    let refused = Command::CreateJoinTokenWithEntry {
        token: t2.clone(),
        entry: bad,
    };
    assert!(apply(&mut s, refused).is_err());
    assert!(!s.join_tokens.contains_key(&t2.token_sha256));
    // Server tokens come without entries.
    let server = Command::CreateJoinTokenWithEntry {
        token: token('c', 100, TokenPurpose::Server, Some(2)),
        entry: other,
    };
    assert!(matches!(
        apply(&mut s, server),
        Err(CommandError::Invalid(_))
    ));
}

#[test]
fn entries_create_update_delete_with_indexes() {
    let mut s = State::new();
    let a = entry(1, AGENT, &["unix:uid:1"]);
    let b = entry(2, AGENT, &["unix:uid:1", "unix:gid:2"]);
    let out = apply(
        &mut s,
        Command::CreateEntries {
            entries: vec![a.clone(), b.clone(), a.clone()],
        },
    )
    .expect("batch");
    let Outcome::Created(results) = out else {
        panic!("{out:?}")
    };
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(matches!(results[2], Err(CommandError::AlreadyExists(_))));
    assert_eq!(s.entry(&a.id).expect("stored").revision, 0);
    let parent: SpiffeId = AGENT.parse().expect("id");
    assert_eq!(s.entries_by_parent(&parent).len(), 2);
    let uid1: Selector = "unix:uid:1".parse().expect("sel");
    assert_eq!(s.entries_by_selector(&uid1).len(), 2);

    let mut b2 = b.clone();
    b2.selectors = ["unix:uid:7".parse().expect("sel")].into_iter().collect();
    let wrong = apply(
        &mut s,
        Command::UpdateEntry {
            entry: b2.clone(),
            expected_revision: Some(5),
        },
    );
    assert_eq!(
        wrong,
        Err(CommandError::RevisionMismatch {
            expected: 5,
            actual: 0
        })
    );
    let updated = apply(
        &mut s,
        Command::UpdateEntry {
            entry: b2,
            expected_revision: Some(0),
        },
    )
    .expect("update");
    assert!(matches!(updated, Outcome::Updated(ref e) if e.revision == 1));
    assert_eq!(
        s.entries_by_selector(&uid1).len(),
        1,
        "old selector unindexed"
    );

    let del = apply(
        &mut s,
        Command::DeleteEntries {
            ids: vec![a.id.clone(), EntryId::from_random([9; 16])],
        },
    )
    .expect("delete");
    assert!(matches!(del, Outcome::Deleted { deleted: 1, ref missing } if missing.len() == 1));
    assert!(s.entries_by_selector(&uid1).is_empty());
    assert_eq!(s.entries().count(), 1);
}

#[test]
fn refused_commands_change_nothing() {
    let mut s = State::new();
    apply(
        &mut s,
        Command::CreateEntries {
            entries: vec![entry(1, AGENT, &["unix:uid:1"])],
        },
    )
    .expect("create");
    let before = s.clone();
    let mut bad = entry(1, AGENT, &["unix:uid:1"]);
    bad.selectors.clear();
    let refusals = vec![
        Command::UpdateEntry {
            entry: bad,
            expected_revision: None,
        },
        Command::UpdateEntry {
            entry: entry(3, AGENT, &["unix:uid:1"]),
            expected_revision: None,
        },
        Command::CreateEntries {
            entries: (0..=BATCH_ENTRIES_MAX)
                .map(|i| entry((i % 250) as u8, AGENT, &["unix:uid:1"]))
                .collect(),
        },
        Command::CreateJoinToken {
            token: JoinToken {
                token_sha256: "short".into(),
                ..token('a', 1, TokenPurpose::Agent, None)
            },
        },
        Command::CreateJoinToken {
            token: token('a', 1, TokenPurpose::Server, None),
        },
        Command::CreateJoinToken {
            token: token('a', 1, TokenPurpose::Agent, Some(3)),
        },
        Command::ConsumeJoinToken {
            token_sha256: hash('a'),
            key_sha256: hash('f'),
            agent: agent(AGENT),
            at: UnixTime::EPOCH,
        },
        Command::EvictAgent {
            spiffe_id: AGENT.parse().expect("id"),
        },
        Command::RevokeJoinToken {
            token_sha256: hash('a'),
        },
        Command::SetAgentBanned {
            spiffe_id: AGENT.parse().expect("id"),
            banned: true,
        },
        Command::ActivateAuthority { id: "nope".into() },
        Command::RemoveFederatedBundle {
            trust_domain: "other.org".parse().expect("td"),
        },
    ];
    for cmd in refusals {
        assert!(apply(&mut s, cmd.clone()).is_err(), "{cmd:?}");
        assert_eq!(s, before, "{cmd:?} changed the state");
    }
}

#[test]
fn join_token_is_consumed_exactly_once() {
    let mut s = State::new();
    let b = token('b', 100, TokenPurpose::Agent, None);
    apply(&mut s, Command::CreateJoinToken { token: b }).expect("create");
    let consume = |agent_id: &str, at: u64| Command::ConsumeJoinToken {
        token_sha256: hash('b'),
        key_sha256: hash('1'),
        agent: agent(agent_id),
        at: UnixTime::from_secs(at),
    };
    // Two nodes race: both proposals reach the log; the first applied wins.
    let first = apply(&mut s, consume(AGENT, 50));
    let second = apply(
        &mut s,
        consume("spiffe://example.org/sigil/agent/join_token/t2", 51),
    );
    assert!(matches!(first, Ok(Outcome::Agent(_))));
    assert_eq!(second, Err(CommandError::TokenUsed));
    assert!(s
        .agent(
            &"spiffe://example.org/sigil/agent/join_token/t2"
                .parse()
                .expect("id")
        )
        .is_none());

    assert_eq!(
        s.join_token(&hash('b'))
            .map(|t| t.consumer_key_sha256.clone()),
        Some(hash('1')),
        "the token is bound to its consumer's key"
    );
    let late = token('c', 10, TokenPurpose::Agent, None);
    apply(&mut s, Command::CreateJoinToken { token: late }).expect("create");
    let expired = apply(
        &mut s,
        Command::ConsumeJoinToken {
            token_sha256: hash('c'),
            key_sha256: hash('1'),
            agent: agent("spiffe://example.org/sigil/agent/join_token/t3"),
            at: UnixTime::from_secs(10),
        },
    );
    assert_eq!(expired, Err(CommandError::TokenExpired));
    let bad_id = apply(
        &mut s,
        Command::ConsumeJoinToken {
            token_sha256: hash('c'),
            key_sha256: hash('1'),
            agent: agent("spiffe://example.org/not-an-agent"),
            at: UnixTime::from_secs(1),
        },
    );
    assert!(matches!(bad_id, Err(CommandError::Invalid(_))));
}

#[test]
fn server_tokens_admit_servers_once_and_only_servers() {
    let mut s = State::new();
    let server = |n: u64| ServerRecord {
        node_id: n,
        addr: format!("127.0.0.1:{}", 8000 + n),
    };
    let sid = |n: u64| -> SpiffeId {
        format!("spiffe://example.org/sigil/server/{n}")
            .parse()
            .expect("id")
    };
    apply(&mut s, Command::RegisterServer { server: server(1) }).expect("bootstrap");
    assert_eq!(s.next_server_id(), 2);
    for (c, purpose, node) in [
        ('d', TokenPurpose::Server, Some(2)),
        ('e', TokenPurpose::Agent, None),
    ] {
        let token = token(c, 100, purpose, node);
        apply(&mut s, Command::CreateJoinToken { token }).expect("create");
    }
    assert_eq!(
        s.next_server_id(),
        3,
        "IDs bound to tokens are not assigned twice"
    );
    // A token for a member is refused unless it says rejoin.
    assert!(matches!(
        apply(
            &mut s,
            Command::CreateJoinToken {
                token: token('3', 100, TokenPurpose::Server, Some(1))
            }
        ),
        Err(CommandError::AlreadyExists(_))
    ));
    let join = |c: char, n: u64, id: SpiffeId, at: u64| Command::ConsumeServerToken {
        token_sha256: hash(c),
        key_sha256: hash('2'),
        server: server(n),
        spiffe_id: id,
        at: UnixTime::from_secs(at),
    };
    // An agent token does not admit a server, and a server token does not admit an agent.
    assert!(matches!(
        apply(&mut s, join('e', 2, sid(2), 5)),
        Err(CommandError::TokenPurpose(_))
    ));
    assert!(matches!(
        apply(
            &mut s,
            Command::ConsumeJoinToken {
                token_sha256: hash('d'),
                key_sha256: hash('2'),
                agent: agent(AGENT),
                at: UnixTime::from_secs(5),
            }
        ),
        Err(CommandError::TokenPurpose(_))
    ));
    // The name must match the node ID, the node ID the token's; expiry holds.
    assert!(matches!(
        apply(&mut s, join('d', 2, sid(3), 5)),
        Err(CommandError::Invalid(_))
    ));
    assert!(matches!(
        apply(&mut s, join('d', 3, sid(3), 5)),
        Err(CommandError::TokenRefused(_))
    ));
    assert_eq!(
        apply(&mut s, join('d', 2, sid(2), 100)),
        Err(CommandError::TokenExpired)
    );
    let before = s.clone();
    assert_eq!(
        apply(&mut s, join('d', 2, sid(2), 5)),
        Ok(Outcome::Server(server(2)))
    );
    assert_ne!(s, before);
    assert_eq!(
        apply(&mut s, join('d', 3, sid(3), 6)),
        Err(CommandError::TokenUsed)
    );
    assert_eq!(s.servers().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        s.join_token(&hash('d')).and_then(|t| t.consumed_by.clone()),
        Some(sid(2))
    );
    // A member is re-admitted only by a rejoin token.
    let rejoin = JoinToken {
        rejoin: true,
        ..token('4', 100, TokenPurpose::Server, Some(2))
    };
    apply(&mut s, Command::CreateJoinToken { token: rejoin }).expect("rejoin token");
    assert_eq!(
        apply(&mut s, join('4', 2, sid(2), 7)),
        Ok(Outcome::Server(server(2)))
    );
    // Removal down to one member, never below; a removed ID is never admitted again.
    let remove = |node_id: u64| Command::RemoveServer {
        node_id,
        at: UnixTime::from_secs(8),
        prune_after: UnixTime::from_secs(20),
        compromised: false,
    };
    apply(&mut s, remove(1)).expect("remove");
    assert!(matches!(
        apply(&mut s, remove(2)),
        Err(CommandError::Invalid(_))
    ));
    assert!(matches!(
        apply(&mut s, remove(9)),
        Err(CommandError::NotFound(_))
    ));
    assert!(s.removed_servers().contains_key(&1));
    assert!(apply(&mut s, Command::RegisterServer { server: server(1) }).is_err());
    assert!(apply(
        &mut s,
        Command::CreateJoinToken {
            token: token('5', 100, TokenPurpose::Server, Some(1))
        }
    )
    .is_err());
    assert_eq!(s.next_server_id(), 3);
    // Addresses are bounded; the count is bounded.
    let long = ServerRecord {
        node_id: 4,
        addr: "x".repeat(SERVER_ADDR_MAX + 1),
    };
    assert!(apply(&mut s, Command::RegisterServer { server: long }).is_err());
    for n in 10..10 + SERVERS_MAX as u64 - 1 {
        apply(&mut s, Command::RegisterServer { server: server(n) }).expect("register");
    }
    assert!(matches!(
        apply(&mut s, Command::RegisterServer { server: server(99) }),
        Err(CommandError::Limit(_))
    ));
}

#[test]
fn agents_ban_and_renewals() {
    let mut s = State::new();
    apply(
        &mut s,
        Command::RegisterAgent {
            agent: agent(AGENT),
        },
    )
    .expect("register");
    let id: SpiffeId = AGENT.parse().expect("id");
    let renew = |serial: &str, at: u64| Command::RecordAgentRenewals {
        renewals: vec![AgentRenewal {
            spiffe_id: id.clone(),
            presented_serial: "01".into(),
            svid_serial: serial.into(),
            svid_not_after: UnixTime::from_secs(at + 10),
            at: UnixTime::from_secs(at),
        }],
    };
    apply(&mut s, renew("02", 20)).expect("renew");
    apply(&mut s, renew("old", 15)).expect("out of order");
    let rec = s.agent(&id).expect("agent");
    assert_eq!(rec.svid_serial, "02");
    assert_eq!(rec.previous_serial, "01");
    assert_eq!(rec.renewed_at, UnixTime::from_secs(20));
    let too_many = Command::RecordAgentRenewals {
        renewals: vec![
            AgentRenewal {
                spiffe_id: id.clone(),
                presented_serial: String::new(),
                svid_serial: "x".into(),
                svid_not_after: UnixTime::EPOCH,
                at: UnixTime::EPOCH,
            };
            BATCH_RENEWALS_MAX + 1
        ],
    };
    assert!(matches!(
        apply(&mut s, too_many),
        Err(CommandError::Limit(_))
    ));
    apply(
        &mut s,
        Command::SetAgentBanned {
            spiffe_id: id.clone(),
            banned: true,
        },
    )
    .expect("ban");
    apply(&mut s, renew("03", 30)).expect("dropped");
    assert_eq!(
        s.agent(&id).expect("agent").svid_serial,
        "02",
        "a banned agent's renewal is not recorded"
    );
    assert!(matches!(
        apply(
            &mut s,
            Command::EvictAgent {
                spiffe_id: id.clone()
            }
        ),
        Err(CommandError::AgentBanned(_))
    ));
    assert!(matches!(
        apply(
            &mut s,
            Command::RegisterAgent {
                agent: agent(AGENT)
            }
        ),
        Err(CommandError::AgentBanned(_))
    ));
}

/// x509pop re-attests with `RegisterAgent` as often as it likes: it replaces the record of
/// a known agent, but never revives a banned one (and the refusal changes nothing).
#[test]
fn register_agent_reattests_but_never_unbans() {
    let mut s = State::new();
    let id: SpiffeId = "spiffe://example.org/sigil/agent/x509pop/ab12"
        .parse()
        .expect("id");
    let pop = |cn: &str| AgentRecord {
        spiffe_id: id.clone(),
        method: AttestationMethod::X509Pop,
        selectors: vec![Selector::new("x509pop", &format!("subject:cn:{cn}")).expect("sel")],
        banned: false,
        svid_serial: String::new(),
        svid_not_after: UnixTime::from_secs(0),
        previous_serial: String::new(),
        renewed_at: UnixTime::EPOCH,
        attested_at: UnixTime::EPOCH,
    };
    apply(&mut s, Command::RegisterAgent { agent: pop("a") }).expect("first");
    apply(&mut s, Command::RegisterAgent { agent: pop("b") }).expect("again");
    assert_eq!(s.agents.len(), 1);
    assert_eq!(s.agent(&id).expect("agent").selectors, pop("b").selectors);
    // A register command cannot ban either.
    let mut banned_record = pop("c");
    banned_record.banned = true;
    apply(
        &mut s,
        Command::RegisterAgent {
            agent: banned_record,
        },
    )
    .expect("register");
    assert!(!s.agent(&id).expect("agent").banned);

    apply(
        &mut s,
        Command::SetAgentBanned {
            spiffe_id: id.clone(),
            banned: true,
        },
    )
    .expect("ban");
    let before = s.agent(&id).cloned();
    assert!(matches!(
        apply(&mut s, Command::RegisterAgent { agent: pop("d") }),
        Err(CommandError::AgentBanned(_))
    ));
    assert_eq!(
        s.agent(&id).cloned(),
        before,
        "a refused re-attestation changes nothing"
    );
    assert!(s.agent(&id).expect("agent").banned);

    apply(
        &mut s,
        Command::SetAgentBanned {
            spiffe_id: id.clone(),
            banned: false,
        },
    )
    .expect("unban");
    apply(&mut s, Command::RegisterAgent { agent: pop("e") }).expect("after unban");
    // Agent IDs must live under /sigil/agent/.
    let mut outside = pop("f");
    outside.spiffe_id = "spiffe://example.org/x509pop/ab12".parse().expect("id");
    assert!(matches!(
        apply(&mut s, Command::RegisterAgent { agent: outside }),
        Err(CommandError::Invalid(_))
    ));
}

fn x509_authority(id: &str, node: u64, not_after: u64) -> Authority {
    Authority {
        id: id.into(),
        node_id: node,
        key: AuthorityKey::X509(X509Authority {
            cert_der: vec![0x30, node as u8],
            key: PublicJwk::Okp {
                crv: "Ed25519".into(),
                x: vec![1],
            },
        }),
        not_after: UnixTime::from_secs(not_after),
    }
}

#[test]
fn authorities_publish_activate_retire_prune() {
    let mut s = State::new();
    let publish = |a: Authority| Command::PublishAuthority {
        authority: a,
        at: UnixTime::from_secs(1),
    };
    assert_eq!(
        apply(&mut s, publish(x509_authority("n1-a", 1, 100))),
        Ok(Outcome::BundleSequence(1))
    );
    apply(&mut s, publish(x509_authority("n1-b", 1, 200))).expect("publish");
    apply(&mut s, publish(x509_authority("n2-a", 2, 100))).expect("publish");
    let jwt = Authority {
        id: "n1-jwt".into(),
        node_id: 1,
        key: AuthorityKey::Jwt(JwtAuthority {
            kid: "n1-jwt".into(),
            key: PublicJwk::Okp {
                crv: "Ed25519".into(),
                x: vec![2],
            },
        }),
        not_after: UnixTime::from_secs(50),
    };
    apply(&mut s, publish(jwt)).expect("publish jwt");
    assert!(apply(&mut s, publish(x509_authority("n1-a", 1, 100))).is_err());
    let late = Command::PublishAuthority {
        authority: x509_authority("n3-old", 3, 100),
        at: UnixTime::from_secs(100),
    };
    assert!(
        matches!(apply(&mut s, late), Err(CommandError::Invalid(_))),
        "expired"
    );
    assert_eq!(s.bundle_sequence(), 4);

    for id in ["n1-a", "n2-a", "n1-jwt"] {
        apply(&mut s, Command::ActivateAuthority { id: id.into() }).expect("activate");
    }
    apply(&mut s, Command::ActivateAuthority { id: "n1-b".into() }).expect("activate");
    let st = |id: &str| s.authorities()[id].state;
    assert_eq!(st("n1-a"), AuthorityState::Retired, "same node, same kind");
    assert_eq!(st("n1-b"), AuthorityState::Active);
    assert_eq!(st("n2-a"), AuthorityState::Active, "other node untouched");
    assert_eq!(st("n1-jwt"), AuthorityState::Active, "other kind untouched");
    assert!(apply(&mut s, Command::ActivateAuthority { id: "n1-a".into() }).is_err());
    assert_eq!(
        s.bundle_sequence(),
        4,
        "activation does not change the bundle"
    );

    let prune = |id: &str, at: u64| Command::PruneAuthority {
        id: id.into(),
        at: UnixTime::from_secs(at),
    };
    assert_eq!(
        apply(&mut s, prune("n1-a", 99)),
        Err(CommandError::AuthorityLive("n1-a".into()))
    );
    assert_eq!(
        apply(&mut s, prune("n1-a", 100)),
        Ok(Outcome::BundleSequence(5))
    );
    let b = s.bundle(300);
    assert_eq!(b.sequence, Some(5));
    assert_eq!(b.x509_authorities.len(), 2);
    assert_eq!(b.jwt_authorities.len(), 1);
}

/// A removed server's authorities stay (retired) until every SVID it may have signed
/// expired, then any node may prune them; a compromised one's leave at once; a removed
/// node publishes nothing.
#[test]
fn removed_servers_leave_the_bundle_on_time() {
    let mut s = State::new();
    for n in 1..=3 {
        apply(
            &mut s,
            Command::RegisterServer {
                server: ServerRecord {
                    node_id: n,
                    addr: format!("127.0.0.1:{n}"),
                },
            },
        )
        .expect("register");
        apply(
            &mut s,
            Command::PublishAuthority {
                authority: x509_authority(&format!("n{n}"), n, 1000),
                at: UnixTime::from_secs(1),
            },
        )
        .expect("publish");
    }
    let remove = |node_id, compromised| Command::RemoveServer {
        node_id,
        at: UnixTime::from_secs(10),
        prune_after: UnixTime::from_secs(50),
        compromised,
    };
    apply(&mut s, remove(2, false)).expect("remove 2");
    assert_eq!(
        s.authorities().get("n2").map(|r| r.state),
        Some(AuthorityState::Retired)
    );
    let prune = |at| Command::PruneAuthority {
        id: "n2".into(),
        at: UnixTime::from_secs(at),
    };
    assert_eq!(
        apply(&mut s, prune(49)),
        Err(CommandError::AuthorityLive("n2".into()))
    );
    apply(&mut s, prune(50)).expect("pruned once its SVIDs expired");
    assert!(!s.authorities().contains_key("n2"));
    assert!(apply(
        &mut s,
        Command::PublishAuthority {
            authority: x509_authority("n2-new", 2, 1000),
            at: UnixTime::from_secs(11),
        }
    )
    .is_err());

    let seq = s.bundle_sequence();
    apply(&mut s, remove(3, true)).expect("remove 3, compromised");
    assert!(!s.authorities().contains_key("n3"));
    assert_eq!(s.bundle_sequence(), seq + 1);
    assert_eq!(s.next_server_id(), 4);
}

#[test]
fn federated_bundles_keep_the_freshest() {
    let mut s = State::new();
    let td: TrustDomain = "partner.org".parse().expect("td");
    let with_seq = |n| Bundle {
        sequence: Some(n),
        ..Bundle::default()
    };
    let set = |b| Command::SetFederatedBundle {
        trust_domain: td.clone(),
        bundle: b,
    };
    apply(&mut s, set(with_seq(5))).expect("set");
    assert!(apply(&mut s, set(with_seq(4))).is_err());
    apply(&mut s, set(with_seq(6))).expect("newer");
    assert_eq!(s.federated()[&td].sequence, Some(6));
    apply(
        &mut s,
        Command::RemoveFederatedBundle {
            trust_domain: td.clone(),
        },
    )
    .expect("remove");
    assert!(s.federated().is_empty());
}

#[test]
fn a_proposal_applies_at_most_once() {
    let mut s = State::new();
    let id = ProposalId {
        node: 1,
        incarnation: 7,
        seq: 1,
    };
    let e = entry(1, AGENT, &["unix:uid:1"]);
    let create = Proposal {
        id,
        cmd: Command::CreateEntries {
            entries: vec![e.clone()],
        },
    };
    let first = apply_proposal(&mut s, create.clone());
    assert!(matches!(first, Ok(Outcome::Created(ref v)) if v[0].is_ok()));
    let delete = Proposal {
        id: ProposalId { seq: 2, ..id },
        cmd: Command::DeleteEntries {
            ids: vec![e.id.clone()],
        },
    };
    apply_proposal(&mut s, delete).expect("delete");
    // The create arrives again (a retry, a duplicated frame): same answer, no resurrection.
    assert_eq!(apply_proposal(&mut s, create), first);
    assert!(s.entry(&e.id).is_none());
    // Memory is bounded.
    for n in 0..(PROPOSALS_REMEMBERED as u64 + 5) {
        let p = Proposal {
            id: ProposalId { seq: 100 + n, ..id },
            cmd: Command::DeleteEntries { ids: vec![] },
        };
        apply_proposal(&mut s, p).expect("noop");
    }
    assert_eq!(s.recent.len(), PROPOSALS_REMEMBERED);
}

#[test]
fn snapshot_round_trip_rebuilds_indexes() {
    let mut s = State::new();
    apply(
        &mut s,
        Command::CreateEntries {
            entries: vec![
                entry(1, AGENT, &["unix:uid:1"]),
                entry(2, AGENT, &["unix:uid:2"]),
            ],
        },
    )
    .expect("create");
    let bytes = wire::codec::encode(&s).expect("encode");
    let mut back: State = wire::codec::decode(&bytes).expect("decode");
    assert!(back
        .entries_by_parent(&AGENT.parse().expect("id"))
        .is_empty());
    back.rebuild_indexes();
    assert_eq!(back, s);
    assert_eq!(back.entries_by_parent(&AGENT.parse().expect("id")).len(), 2);
}
