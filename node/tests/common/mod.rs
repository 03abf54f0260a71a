//! The shared harness (the `testkit` crate) bound to this build's `sigil` binary, for the
//! end-to-end tests that run real `sigil server` and `sigil agent` processes (each test file
//! that uses it declares `mod common;`).

#![allow(dead_code, unused_imports)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub use testkit::{
    entry_create_args, fetched_ids, free_port, free_tcp_port_pair, json, log_tail, my_uid, poll,
    process_alive, run_bounded, send_signal, toml_str, unix_now_secs, wait_for, wait_served,
    AgentToml, Join, Plane, Proc, ServerNode, ServerToml, NOBODY,
};

/// The `sigil` binary under test.
pub const SIGIL: &str = env!("CARGO_BIN_EXE_sigil");

/// Runs `sigil ARGS` to completion.
pub fn sigil(args: &[&str]) -> Output {
    testkit::run(SIGIL, args)
}

/// Runs `sigil ARGS` to completion with extra environment variables.
pub fn sigil_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    testkit::run_env(SIGIL, args, envs)
}

/// Creates an entry for `uid` under `parent` through the admin socket `sock`; its ID.
pub fn create_entry(sock: &str, spiffe_id: &str, parent: &str, uid: u32) -> String {
    testkit::create_entry(SIGIL, sock, spiffe_id, parent, uid)
}

/// `sigil ARGS` as uid [`NOBODY`] (see [`testkit::sigil_as_nobody`]).
pub fn sigil_as_nobody(dir: &Path, args: &[&str], limit: Duration) -> Option<Output> {
    testkit::sigil_as_nobody(SIGIL, dir, args, limit)
}

/// The Python interpreter of the venv with py-spiffe 0.3.2 (and so grpcio) that
/// `scripts/test.sh` prepares (`SIGIL_PYSPIFFE_PYTHON`); `None` when it is not set.
pub fn pyspiffe_python() -> Option<PathBuf> {
    let python = PathBuf::from(std::env::var_os("SIGIL_PYSPIFFE_PYTHON")?);
    assert!(
        python.exists(),
        "SIGIL_PYSPIFFE_PYTHON={} does not exist",
        python.display()
    );
    Some(python)
}
