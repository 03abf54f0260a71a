//! The `sigil` command line (DESIGN.md §6).

use clap::Parser;
use node::rt::logging::{self, LogFormat};

/// sigil: a SPIFFE workload identity plane whose server nodes replicate state with Raft and sign
/// locally, so identities keep flowing through leader loss and partitions.
#[derive(Debug, Parser)]
#[command(name = "sigil", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    eprintln!(
        "sigil {}: no command yet. This build has the foundation only (vocabulary, seams); \
         `sigil server`, `sigil agent` and `sigil dev` are not built yet. See `sigil --help`.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
