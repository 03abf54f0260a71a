//! # chaos — hunting for broken invariants
//!
//! Owns many-seed swarm runs over [`sim`] (each seed picks its fault mix; a safety phase with
//! faults, then a liveness phase without) and real-process chaos on loopback (kill -9, partitions)
//! against the `sigil` binary. Reports the failing seed and the exact command that reproduces it.
//!
//! Never sends traffic beyond loopback. [`real`] is the real-process mode (`chaos real`, see
//! src/main.rs); [`relay`] its partition tool.

#![forbid(unsafe_code)]

pub mod real;
pub mod relay;
