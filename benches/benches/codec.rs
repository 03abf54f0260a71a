//! The versioned codec and ID parsing against their raw baselines, in one run:
//! - `codec/decode_entry` (version + size checks + validation) vs `baseline/bincode_decode_entry`
//!   (plain bincode into an unvalidated struct of the same shape);
//! - `id/parse` vs `baseline/string_clone`.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use wire::{codec, EntryId, RegistrationEntry, Selector, SpiffeId};

/// The same fields as `RegistrationEntry`, as plain strings: what decoding costs without parsing.
#[derive(Serialize, Deserialize)]
struct RawEntry {
    id: String,
    spiffe_id: String,
    parent_id: String,
    selectors: BTreeSet<String>,
    x509_svid_ttl_secs: u32,
    jwt_svid_ttl_secs: u32,
    dns_names: Vec<String>,
    federates_with: BTreeSet<String>,
    admin: bool,
    downstream: bool,
    hint: String,
    revision: u64,
    created_at_secs: u64,
    expires_at_secs: Option<u64>,
}

fn entry() -> RegistrationEntry {
    let sel = |s: &str| s.parse::<Selector>().expect("selector");
    RegistrationEntry {
        id: EntryId::from_random([1; 16]),
        spiffe_id: "spiffe://example.org/ns/prod/sa/web".parse().expect("id"),
        parent_id: "spiffe://example.org/sigil/agent/x509pop/0123456789abcdef"
            .parse()
            .expect("id"),
        selectors: [
            sel("unix:uid:1000"),
            sel("unix:gid:1000"),
            sel("unix:user:web"),
        ]
        .into_iter()
        .collect(),
        x509_svid_ttl_secs: 3600,
        jwt_svid_ttl_secs: 300,
        dns_names: vec!["web.example.org".into()],
        federates_with: BTreeSet::new(),
        admin: false,
        downstream: false,
        hint: String::new(),
        revision: 1,
        created_at_secs: 1_700_000_000,
        expires_at_secs: None,
    }
}

fn bench(c: &mut Criterion) {
    let e = entry();
    let frame = codec::encode(&e).expect("encode");
    let cfg = bincode::config::standard();
    c.bench_function("codec/decode_entry", |b| {
        b.iter(|| codec::decode::<RegistrationEntry>(black_box(&frame)).expect("decode"))
    });
    c.bench_function("baseline/bincode_decode_entry", |b| {
        b.iter(|| {
            bincode::serde::decode_from_slice::<RawEntry, _>(black_box(&frame[1..]), cfg)
                .expect("decode")
        })
    });
    c.bench_function("codec/encode_entry", |b| {
        b.iter(|| codec::encode(black_box(&e)).expect("encode"))
    });

    let text = "spiffe://example.org/ns/prod/sa/web/with/a/few/more/segments";
    c.bench_function("id/parse", |b| {
        b.iter(|| black_box(text).parse::<SpiffeId>().expect("id"))
    });
    c.bench_function("baseline/string_clone", |b| {
        b.iter(|| black_box(text).to_owned())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
