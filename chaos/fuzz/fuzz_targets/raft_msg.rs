//! Fuzz target: what a server node decodes from its peers and its own files — a Raft frame
//! ([`raft::replica::RaftMsg`], the receiving side of the node↔node transport), a state-machine
//! snapshot ([`raft::State`], installed from the leader or loaded from disk) and a stored log
//! entry. Whatever decodes must re-encode to a frame that decodes and re-encodes identically.

#![no_main]

use libfuzzer_sys::fuzz_target;
use raft::replica::RaftMsg;
use raft::types::Entry;
use raft::State;
use wire::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = codec::decode::<RaftMsg>(data) {
        let frame = codec::encode(&msg).expect("a decoded raft frame re-encodes");
        let again: RaftMsg = codec::decode(&frame).expect("a re-encoded raft frame decodes");
        assert_eq!(codec::encode(&again).expect("re-encodes"), frame);
    }
    if let Ok(mut state) = codec::decode_snapshot::<State>(data) {
        state.rebuild_indexes();
        let _ = state.bundle(300);
        let _ = state.entries().count();
        let bytes = codec::encode_snapshot(&state).expect("a decoded snapshot re-encodes");
        let mut again: State = codec::decode_snapshot(&bytes).expect("re-encoded snapshot decodes");
        again.rebuild_indexes();
        assert_eq!(again, state);
    }
    if let Ok(entry) = codec::decode_snapshot::<Entry>(data) {
        let bytes = codec::encode_snapshot(&entry).expect("a decoded log entry re-encodes");
        let again: Entry = codec::decode_snapshot(&bytes).expect("re-encoded entry decodes");
        assert_eq!(again, entry);
    }
});
