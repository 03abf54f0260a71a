//! Properties of the Workload API's HTTP/2 `:authority` rewriter (`node::rt::h2_authority`), the
//! decoder that faces every workload's bytes — the same one the `h2_authority` fuzz target in
//! `chaos/fuzz` exercises, run here in `cargo test` so CI keeps covering it: arbitrary client
//! bytes never panic and give the same result however they are split, and a header block
//! reaches the server with a valid `:authority` (the client's when valid, else the replacement).

use node::rt::h2_authority::{Rewriter, REPLACEMENT_AUTHORITY};
use proptest::prelude::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pushes `input` whole and in `chunk`-byte pieces; both must agree. Returns the output.
fn run(input: &[u8], chunk: usize) -> Result<Option<(Vec<u8>, u64)>, TestCaseError> {
    let mut whole = Rewriter::new();
    let mut out_whole = Vec::new();
    let result_whole = whole.push(input, &mut out_whole);
    let mut chunked = Rewriter::new();
    let mut out_chunked = Vec::new();
    let mut result_chunked = Ok(());
    for piece in input.chunks(chunk.max(1)) {
        result_chunked = chunked.push(piece, &mut out_chunked);
        if result_chunked.is_err() {
            break;
        }
    }
    prop_assert_eq!(&result_whole, &result_chunked);
    if result_whole.is_err() {
        return Ok(None);
    }
    prop_assert_eq!(&out_whole, &out_chunked);
    prop_assert_eq!(whole.rewritten(), chunked.rewritten());
    Ok(Some((out_whole, whole.rewritten())))
}

/// One frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    let mut out = len[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block: `:method GET`, `:scheme http`, `:path /`, then `:authority` as a literal
/// without indexing (its value under 127 bytes).
fn block(authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    b.push(u8::try_from(authority.len()).unwrap_or(126).min(126));
    b.extend_from_slice(&authority[..authority.len().min(126)]);
    b
}

/// The header list of the first HEADERS frame after the preface in `out`.
fn first_header_list(out: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut rest = out.strip_prefix(PREFACE)?;
    loop {
        let head = rest.get(..9)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let payload = rest.get(9..9 + len)?;
        if head[3] == 0x1 {
            let start = if head[4] & 0x20 != 0 { 5 } else { 0 };
            return loona_hpack::Decoder::new()
                .decode(payload.get(start..)?)
                .ok();
        }
        rest = &rest[9 + len..];
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        chunk in 1usize..64,
        with_preface in any::<bool>(),
    ) {
        let mut input = if with_preface { PREFACE.to_vec() } else { Vec::new() };
        input.extend_from_slice(&body);
        if let Some((out, _)) = run(&input, chunk)? {
            // The rewriter's own output passes it with nothing left to rewrite.
            let mut second = Rewriter::new();
            let mut again = Vec::new();
            prop_assert!(second.push(&out, &mut again).is_ok());
            prop_assert_eq!(second.rewritten(), 0);
        }
    }

    #[test]
    fn framed_garbage_never_panics(
        frames in proptest::collection::vec(
            (0u8..12, any::<u8>(), 0u32..4, proptest::collection::vec(any::<u8>(), 0..80)),
            1..6,
        ),
        chunk in 1usize..40,
    ) {
        let mut input = PREFACE.to_vec();
        for (kind, flags, stream, payload) in &frames {
            input.extend_from_slice(&frame(*kind, *flags, *stream, payload));
        }
        run(&input, chunk)?;
    }

    #[test]
    fn authority_reaches_the_server_valid(
        authority in "[ -~]{0,60}",
        padded in any::<bool>(),
        split_at in any::<prop::sample::Index>(),
        chunk in 1usize..50,
    ) {
        let hpack = block(authority.as_bytes());
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&frame(0x4, 0, 0, &[]));
        if padded {
            // HEADERS (PADDED) then a CONTINUATION.
            let at = split_at.index(hpack.len() + 1);
            let mut payload = vec![3];
            payload.extend_from_slice(&hpack[..at]);
            payload.extend_from_slice(&[0; 3]);
            input.extend_from_slice(&frame(0x1, 0x8, 1, &payload));
            input.extend_from_slice(&frame(0x9, 0x4, 1, &hpack[at..]));
        } else {
            input.extend_from_slice(&frame(0x1, 0x5, 1, &hpack));
        }
        let (out, rewritten) = run(&input, chunk)?
            .ok_or_else(|| TestCaseError::fail("a well-formed stream was refused"))?;
        let valid = http::uri::Authority::try_from(authority.as_str()).is_ok();
        prop_assert_eq!(rewritten, u64::from(!valid));
        let list = first_header_list(&out).ok_or_else(|| TestCaseError::fail("no HEADERS out"))?;
        let got: Vec<&[u8]> = list
            .iter()
            .filter(|(n, _)| n.as_slice() == b":authority")
            .map(|(_, v)| v.as_slice())
            .collect();
        let want = if valid { authority.as_bytes() } else { REPLACEMENT_AUTHORITY.as_bytes() };
        prop_assert_eq!(got, vec![want]);
        prop_assert_eq!(list.len(), 4);
    }
}
