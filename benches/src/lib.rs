//! # benches — sigil's measurements
//!
//! Criterion micro-benches that each compare against a baseline measured in the same run (e.g.
//! the versioned codec against raw bincode), and the cluster load generator (`src/bin/loadgen.rs`:
//! an in-process cluster on loopback, SVID signing and registration writes against raw ring
//! signing measured in the same run). Benchmarks measure; they never gate correctness. Run with
//! `cargo bench -p benches` and `cargo run -p benches --release --bin loadgen -- --help`.

#![forbid(unsafe_code)]
