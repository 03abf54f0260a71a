//! # benches — sigil's measurements
//!
//! Criterion micro-benches that each compare against a baseline measured in the same run (e.g.
//! the versioned codec against raw bincode), and later the cluster load generator. Benchmarks
//! measure; they never gate correctness. Run with `cargo bench -p benches`.

#![forbid(unsafe_code)]
