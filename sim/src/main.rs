//! `sim`: run seeded simulations of a sigil deployment (the same runner as `chaos`'s seed mode;
//! see [`sim::runner`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        // e.g. SIM_LOG=openraft=debug: the nodes' own logs, for reproducing a seed.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    sim::runner::main_with_args("sim", std::env::args().skip(1))
}
