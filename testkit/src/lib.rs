//! # testkit — sigil's one test harness
//!
//! Owns what everything that runs sigil for real needs, once: child processes killed on drop
//! with their logs ([`Proc`]), running a command to completion with or without a bound
//! ([`run`], [`run_bounded`]), signals, free loopback ports ([`free_port`]), bounded polling
//! waits ([`poll`], [`wait_for`]), `server.toml` and `agent.toml` writers ([`ServerToml`],
//! [`AgentToml`]), a `sigil server` node in its own directory ([`ServerNode`]), a bootstrap
//! server with one agent ([`Plane`]), admin CLI fixtures ([`create_entry`], [`json`]), Workload
//! API checks through the CLI ([`fetched_ids`], [`wait_served`]), and the benchmarks'
//! in-process services ([`ServiceTask`]). Users: node's integration tests (a dev-dependency),
//! the chaos runner's real-process mode, and the benches.
//!
//! Never: node logic, or a dependency on the workspace's own crates — the `sigil` binary is a
//! path the caller passes (tests give `env!("CARGO_BIN_EXE_sigil")`); traffic off loopback.
//! This is a harness, not node code: it reads the OS clock and starts threads and tasks, each
//! under a scoped `#[allow(clippy::disallowed_methods)]` saying why.

#![forbid(unsafe_code)]

mod config;
mod net;
mod node;
mod proc;
mod sigil;
mod task;
mod wait;

pub use config::{toml_str, AgentToml, Join, ServerToml};
pub use net::{free_port, free_tcp_port_pair, free_udp_addr};
pub use node::{Plane, ServerNode};
pub use proc::{
    log_tail, my_uid, process_alive, run, run_bounded, run_env, send_signal, status_id,
    try_run_bounded, Proc,
};
pub use sigil::{
    create_entry, entry_create_args, fetched_ids, json, json_of, sigil_as_nobody, wait_served,
    NOBODY,
};
pub use task::{remove_temp_dir, spawn, ServiceTask, Shutdown};
pub use wait::{now, poll, poll_every, unix_now_secs, wait_for, wait_for_every, POLL_EVERY};
