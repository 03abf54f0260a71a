//! # sim — sigil's deterministic simulator
//!
//! Owns the fakes behind the seams — a virtual clock with per-node wall skew and a seeded RNG tree
//! for [`wire::Env`], `SimNet` for [`wire::Transport`] (delay, loss, duplication, reordering,
//! partitions), `SimDisk` for `raft::Kv` (crash loses unflushed writes) — plus the seeded world
//! runner, the oracle and the invariant checkers. It builds `node` without its production shell.
//!
//! Never starts threads, reads an OS clock or RNG, or links quinn, sled or tonic: the same seed
//! must give the same run. (The fakes arrive with the replicated-state issue.)

#![forbid(unsafe_code)]
