//! The `sigil` command line (DESIGN.md §6).

mod cli;

use std::future::Future;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node::rt::logging::{self, LogFormat};

/// sigil: a SPIFFE workload identity plane whose server nodes replicate state with Raft and sign
/// locally, so identities keep flowing through leader loss and partitions.
#[derive(Debug, Parser)]
#[command(name = "sigil", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

/// sigil's commands. `dev` joins this enum when it is built.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run one server node (Raft member, CA, issuer, admin API) from a TOML config file.
    Server(ServerArgs),
    /// Run the agent of this host (attests to the cluster, serves the SPIFFE Workload API) from
    /// a TOML config file.
    Agent(AgentArgs),
    /// A local cluster and agent in one command (not built yet: says so and exits).
    Dev,
    /// Registration entries: create, update, show, list, delete (admin socket).
    Entry(cli::EntryArgs),
    /// Join tokens for agents and new server nodes (admin socket).
    Token(cli::TokenArgs),
    /// This trust domain's bundle and its pinnable hash (admin socket).
    Bundle(cli::BundleArgs),
    /// The server cluster: status (members, leader, term, CA keys, registered servers) and
    /// remove-server (admin socket).
    Cluster(cli::ClusterArgs),
    /// Exit 0 if the server node behind the admin socket is up and serving.
    Healthcheck(cli::HealthcheckArgs),
    /// The SPIFFE Workload API as this process sees it: fetch X.509-/JWT-SVIDs, validate a
    /// JWT-SVID, watch X.509-SVID updates (socket: --socket or $SPIFFE_ENDPOINT_SOCKET).
    Api(cli::ApiArgs),
}

/// `sigil server` and `sigil agent` options.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The configuration file (see the README for every option and its default).
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
}

/// `sigil agent`: run the agent, or ask a running one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentArgs {
    /// The configuration file (see the README for every option and its default).
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// What the running agent serves and whether it reaches a server (its admin socket). Exit 0
    /// when connected, 1 otherwise.
    Health(cli::AgentHealthArgs),
}

/// Runs a server node (or with `agent`, the agent) on a multi-threaded runtime until Ctrl-C or
/// SIGTERM.
fn run_server(args: ServerArgs, agent: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let run = async {
        if agent {
            node::rt::agent::run_agent_from_file(&args.config).await
        } else {
            node::rt::serve::run_server_from_file(&args.config).await
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs an admin command on a small runtime; its output goes to stdout, a failure is one line
/// on stderr and exit code 1.
fn run_admin<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(std::io::StdoutLock<'static>) -> Fut,
    Fut: Future<Output = Result<(), cli::CliError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f(std::io::stdout().lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line; a usage error is printed as one line (plus clap's tip, if any) and
/// exits with 2, `--help` and `--version` print as usual.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(ExitCode::from(if e.use_stderr() { 2 } else { 0 }));
            }
            let text = e.render().to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines
                .next()
                .unwrap_or("error: invalid arguments")
                .to_owned();
            let mut tip = String::new();
            for line in lines {
                if line.starts_with("Usage:") || line.starts_with("For more information") {
                    break;
                }
                if line.starts_with("tip:") {
                    tip = format!(" ({line})");
                } else if first.ends_with(':') || first.ends_with(',') {
                    // e.g. "the following required arguments were not provided:" + the list.
                    first = format!("{first} {line}");
                    if !line.ends_with(',') {
                        first.push(',');
                    }
                }
            }
            let first = first.trim_end_matches(',');
            eprintln!("{first}{tip}; see `--help`");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logging::init(cli.log_format);
    match cli.command {
        None => {
            eprintln!(
                "sigil {}: no command given. Commands: server, agent, entry, token, bundle, \
                 cluster, healthcheck, api; `sigil dev` is not built yet. See `sigil --help`.",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
        Some(Command::Server(args)) => run_server(args, false),
        Some(Command::Agent(AgentArgs {
            command: Some(AgentCommand::Health(args)),
            ..
        })) => run_admin(|mut out| async move { args.run(&mut out).await }),
        Some(Command::Agent(AgentArgs {
            config: Some(config),
            ..
        })) => run_server(ServerArgs { config }, true),
        Some(Command::Agent(AgentArgs { config: None, .. })) => {
            eprintln!("error: `sigil agent` needs --config FILE (or `sigil agent health`)");
            ExitCode::from(2)
        }
        Some(Command::Dev) => {
            eprintln!(
                "error: `sigil dev` is not built yet (a one-command local cluster + agent); \
                 run a single server node with `sigil server --config FILE` as the README shows"
            );
            ExitCode::from(2)
        }
        Some(Command::Entry(args)) => run_admin(|mut out| async move { args.run(&mut out).await }),
        Some(Command::Token(args)) => run_admin(|mut out| async move { args.run(&mut out).await }),
        Some(Command::Bundle(args)) => run_admin(|mut out| async move { args.run(&mut out).await }),
        Some(Command::Cluster(args)) => {
            run_admin(|mut out| async move { args.run(&mut out).await })
        }
        Some(Command::Healthcheck(args)) => {
            run_admin(|mut out| async move { args.run(&mut out).await })
        }
        Some(Command::Api(args)) => run_admin(|mut out| async move { args.run(&mut out).await }),
    }
}
