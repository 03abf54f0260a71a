//! Fuzz target: the Workload API's HTTP/2 `:authority` rewriter (node::rt::h2_authority), fed
//! the client preface then arbitrary client bytes. The first byte picks a chunk size: the stream
//! pushed whole and pushed in chunks must give the same result and the same output. What it
//! outputs for the server must itself pass the rewriter with nothing left to rewrite.

#![no_main]

use libfuzzer_sys::fuzz_target;
use node::rt::h2_authority::Rewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(body);

    let mut whole = Rewriter::new();
    let mut out_whole = Vec::new();
    let result_whole = whole.push(&input, &mut out_whole);

    let mut chunked = Rewriter::new();
    let mut out_chunked = Vec::new();
    let mut result_chunked = Ok(());
    for piece in input.chunks(usize::from(chunk) + 1) {
        result_chunked = chunked.push(piece, &mut out_chunked);
        if result_chunked.is_err() {
            break;
        }
    }
    assert_eq!(result_whole, result_chunked);
    // Once failed, the rewriter keeps failing.
    assert_eq!(
        whole.push(b"", &mut Vec::new()).is_err(),
        result_whole.is_err()
    );
    if result_whole.is_ok() {
        assert_eq!(out_whole, out_chunked);
        assert_eq!(whole.rewritten(), chunked.rewritten());
        let mut second = Rewriter::new();
        let mut out_second = Vec::new();
        second
            .push(&out_whole, &mut out_second)
            .expect("the rewriter's own output passes it");
        assert_eq!(second.rewritten(), 0);
    }
});
