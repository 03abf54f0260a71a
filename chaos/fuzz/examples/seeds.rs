//! Writes the seed corpora: a few valid inputs per fuzz target, in the framing each target
//! expects, as `<dir>/<target>/seed-NN` (default dir: `corpus`). Run from chaos/fuzz:
//! `cargo +nightly run --example seeds`.

use std::path::Path;

use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use raft::replica::{RaftMsg, RpcRequest, RpcResponse, WriteError};
use raft::types::Entry;
use sigil_fuzz::{
    fixtures, join, pcrs, quote, AUDIENCE, BINDING, FUZZ_CLAIMS, FUZZ_HEADER, QUOTE_EXTRA,
};
use wire::api::{ApiCode, ApiError, ApiRequest, ApiResponse, SignX509};
use wire::{codec, Command, EntryId, Proposal, ProposalId};

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
    }
    Ok(())
}

fn with_mode(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(body);
    out
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus".to_owned());
    let dir = Path::new(&dir);
    let f = fixtures();
    let bundle = f.bundles.0.values().next().expect("bundle").clone();
    let entry = EntryId::from_random([0xab; 16]);
    let key = vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07];

    let requests = [
        ApiRequest::Bundle,
        ApiRequest::AttestJoinToken {
            token: "tok".to_owned(),
            public_key_der: key.clone(),
        },
        ApiRequest::AttestX509Pop {
            chain: vec![f.pop_leaf.clone()],
            signature: f.pop_signature.clone(),
            public_key_der: key.clone(),
        },
        ApiRequest::SignX509 {
            requests: vec![SignX509 {
                entry_id: entry.clone(),
                public_key_der: key.clone(),
            }],
        },
        ApiRequest::MintJwt {
            entry_id: entry.clone(),
            audience: vec![AUDIENCE.to_owned()],
        },
        ApiRequest::AttestTpmFinish {
            ek_public: f.ek_public.clone(),
            ek_cert: None,
            ak_public: f.ak_public.clone(),
            token: vec![1; 57],
            activated_secret: vec![2; 32],
            quote: quote(&QUOTE_EXTRA, &pcrs(1)),
            quote_signature: vec![3; 8],
            pcrs: pcrs(1),
            public_key_der: key.clone(),
        },
    ];
    let responses = [
        ApiResponse::Bundle(bundle.clone()),
        ApiResponse::Error(ApiError::new(ApiCode::Unavailable, "no quorum")),
        ApiResponse::Jwt {
            token: f.jwt.clone(),
            expires_at: sigil_fuzz::now(),
        },
        ApiResponse::X509(vec![Err(ApiError::invalid("bad key"))]),
    ];
    let mut wire_seeds: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| codec::encode(r).expect("encode"))
        .collect();
    wire_seeds.extend(responses.iter().map(|r| codec::encode(r).expect("encode")));
    write(dir, "wire_api", &wire_seeds)?;

    let proposal = Proposal {
        id: ProposalId {
            node: 1,
            incarnation: 2,
            seq: 3,
        },
        cmd: Command::DeleteEntries {
            ids: vec![entry.clone()],
        },
    };
    let log_entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), 7),
        payload: EntryPayload::Normal(proposal.clone()),
    };
    let msgs = [
        RaftMsg::Request {
            id: 1,
            body: RpcRequest::Write(proposal),
        },
        RaftMsg::Request {
            id: 2,
            body: RpcRequest::Vote(openraft::raft::VoteRequest::new(Vote::new(2, 1), None)),
        },
        RaftMsg::Request {
            id: 3,
            body: RpcRequest::AppendEntries(openraft::raft::AppendEntriesRequest {
                vote: Vote::new_committed(2, 1),
                prev_log_id: None,
                entries: vec![log_entry.clone()],
                leader_commit: None,
            }),
        },
        RaftMsg::Response {
            id: 4,
            body: RpcResponse::Write(Err(WriteError::NoQuorum { waited_ms: 5 })),
        },
    ];
    let mut raft_seeds: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| codec::encode(m).expect("encode"))
        .collect();
    raft_seeds.push(codec::encode_snapshot(&raft::State::new()).expect("encode"));
    raft_seeds.push(codec::encode_snapshot(&log_entry).expect("encode"));
    write(dir, "raft_msg", &raft_seeds)?;

    write(
        dir,
        "id_selector",
        &[
            b"spiffe://example.org/web/v1".to_vec(),
            b"example.org".to_vec(),
            b"spiffe://example.org".to_vec(),
            b"unix:uid:1000".to_vec(),
            b"k8s:ns:default".to_vec(),
        ],
    )?;

    let map = format!(
        r#"{{"trust_domains":{{"example.org":{}}}}}"#,
        bundle.to_json()
    );
    write(
        dir,
        "bundle_json",
        &[bundle.to_json().into_bytes(), map.into_bytes()],
    )?;

    write(
        dir,
        "jwt",
        &[
            with_mode(0, f.jwt.as_bytes()),
            with_mode(1, FUZZ_CLAIMS.as_bytes()),
            with_mode(2, FUZZ_HEADER.as_bytes()),
        ],
    )?;

    write(
        dir,
        "x509_svid",
        &[join(&[&f.svid]), join(&[&f.svid, &f.svid_ca])],
    )?;

    let ca_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &f.pop_ca)
    );
    write(
        dir,
        "x509pop",
        &[
            with_mode(0, &f.pop_ca),
            with_mode(1, &join(&[&f.pop_leaf, &f.pop_signature])),
            with_mode(2, ca_pem.as_bytes()),
        ],
    )?;

    let reported = pcrs(0b011);
    let q = quote(&QUOTE_EXTRA, &reported);
    let token = f.tpm_token();
    let pcr_field: Vec<u8> = reported
        .iter()
        .flat_map(|(i, v)| std::iter::once(*i).chain(v.iter().copied()))
        .collect();
    let evidence = join(&[
        f.ek_public.as_slice(),
        b"",
        &f.ak_public,
        &token,
        &[0x99; 32],
        &q,
        &f.sign_quote(&q),
        &pcr_field,
        b"\x30\x59",
    ]);
    let mut quote_seed = vec![0b011];
    quote_seed.extend_from_slice(&q);
    write(
        dir,
        "tpm",
        &[
            with_mode(0, &f.ek_public),
            with_mode(0, &f.ak_public),
            with_mode(1, &quote_seed),
            with_mode(2, &f.sign_quote(&q)),
            with_mode(3, &f.pop_leaf),
            with_mode(4, &evidence),
        ],
    )?;
    let _ = BINDING;

    // HTTP/2 after the preface: SETTINGS, then HEADERS with a literal `:authority` grpc-python
    // style (not a valid authority), then a DATA frame.
    let mut h2 = vec![15u8];
    h2.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.push(0x41); // literal with incremental indexing, name index 1 (:authority)
    let authority = b"tmp%2Fagent.sock";
    block.push(u8::try_from(authority.len()).expect("short"));
    block.extend_from_slice(authority);
    let len = u32::try_from(block.len()).expect("short").to_be_bytes();
    h2.extend_from_slice(&len[1..]);
    h2.extend_from_slice(&[0x1, 0x4, 0, 0, 0, 1]);
    h2.extend_from_slice(&block);
    h2.extend_from_slice(&[0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, b'h', b'i']);
    write(dir, "h2_authority", &[h2])?;
    Ok(())
}
