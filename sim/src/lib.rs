//! # sim — sigil's deterministic simulator
//!
//! Owns the fakes behind the seams — [`env::SimEnv`] for [`wire::Env`] (virtual clock, per-node
//! wall skew and steps, seeded RNG tree, deterministic keys), [`net::SimNet`] for [`wire::Transport`] (delay, loss,
//! duplication, reordering, partitions incl. asymmetric), `raft::MemKv` as the disk (a crash loses
//! unflushed writes) — the simulated agents and workloads ([`agent`], the production agent
//! actor on the production node API handler; join-token and [`x509pop`] agents), the seeded world ([`world`], with its hostile actors), the checkers ([`check`], one file
//! per family of invariants) and the many-seed runner ([`runner`], also behind `chaos`). The
//! whole deployment runs on one current-thread tokio runtime with paused time; openraft's
//! election RNG and the runtime's own RNG (the branch order of unbiased `select!`s; needs
//! `--cfg tokio_unstable`, set in `.cargo/config.toml`) are seeded, so one seed gives one run.
//!
//! Never starts threads, reads an OS clock or RNG, or links quinn, sled or tonic (scripts/test.sh
//! checks the dependency graph). It builds `node` without its production shell.

#![forbid(unsafe_code)]

pub mod agent;
pub mod check;
pub mod env;
pub mod net;
pub mod runner;
pub mod world;
pub mod x509pop;

pub use world::{run_seed, Report, RunOptions};
