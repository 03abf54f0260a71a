//! A short real-process chaos session in CI: 3 `sigil server` processes behind relays, an agent
//! and a workload, through a few seeded fault cycles. The long runs (50+ cycles) are
//! `cargo run -p chaos --release -- real --cycles 50` (see README "Chaos").

use std::path::PathBuf;

/// The `sigil` binary of this build (`cargo test --workspace` builds it for node's tests).
fn sigil() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("sigil");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p node`), or run the whole workspace's tests",
        bin.display()
    );
    bin
}

#[test]
fn a_few_fault_cycles_break_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = chaos::real::Options {
        sigil: sigil(),
        nodes: 3,
        cycles: 4,
        seed: 42,
        dir: dir.path().join("plane"),
    };
    let report = chaos::real::run(&opts, |line| eprintln!("{line}")).expect("session runs");
    eprintln!("{report:?}");
    assert_eq!(report.cycles, 4);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(
        report.acked > 0,
        "registrations were acknowledged during the cycles"
    );
    assert!(report.fetches > 0);
}
