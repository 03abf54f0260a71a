//! The `sigil` command line (DESIGN.md §6).

mod cli;

use std::future::Future;
use std::process::ExitCode;

use clap::builder::TypedValueParser as _;
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

/// sigil's commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// A whole local plane in one command: N server nodes and an agent, each its own child
    /// process, under one data dir; registers your uid and prints what to try next. Ctrl-C stops
    /// it; running it again on the same data dir resumes the same trust domain.
    Dev(DevArgs),
    /// Run one server node (Raft member, CA, issuer, admin API) from a TOML config file.
    Server(ServerArgs),
    /// Run the agent of this host (attests to the cluster, serves the SPIFFE Workload API) from
    /// a TOML config file; or ask the running agent (health), or manage attested agents through
    /// a server node (list, show, ban, unban, evict).
    Agent(AgentArgs),
    /// Registration entries: create, update, show, list, delete (admin socket).
    Entry(cli::entry::EntryArgs),
    /// Join tokens for agents and new server nodes (admin socket).
    Token(cli::token::TokenArgs),
    /// This trust domain's bundle and its pinnable hash (admin socket).
    Bundle(cli::bundle::BundleArgs),
    /// The server cluster: status (members, leader, term, CA keys, registered servers) and
    /// remove-server (admin socket).
    Cluster(cli::cluster::ClusterArgs),
    /// Exit 0 if the server node behind the admin socket is up and serving.
    Healthcheck(cli::health::HealthcheckArgs),
    /// The SPIFFE Workload API as this process sees it: fetch X.509-/JWT-SVIDs, validate a
    /// JWT-SVID, watch X.509-SVID updates (socket: --socket or $SPIFFE_ENDPOINT_SOCKET).
    Api(cli::api::ApiArgs),
}

/// `sigil server` and `sigil agent` options.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The configuration file (see the README for every option and its default).
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
}

/// `sigil dev` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Files under DIR: sigil-dev.toml (marks the plane), node-<i>/{server.toml,log,pid,admin.sock} and \
the node's data, agent/{agent.toml,log,pid,admin.sock}, agent.sock (the Workload API), \
x509pop-ca.pem (the dev CA the agent's certificate chains to).")]
struct DevArgs {
    /// Server nodes to run, each its own `sigil server` process [default: 3; on a re-run, the
    /// number DIR was made with].
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::builder::PossibleValuesParser::new(["1", "3", "5"])
            .map(|n| n.parse::<u8>().unwrap_or(node::rt::dev::NODES_DEFAULT)),
    )]
    nodes: Option<u8>,
    /// Where configs, data, logs, pid files and sockets live [default: /tmp/sigil-dev-<uid>].
    /// At most 75 bytes long (Unix socket paths under it must stay under 108 bytes).
    /// Re-running with the same DIR resumes the plane stored there.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// The trust domain of a new plane [default: dev.sigil.test; on a re-run, DIR's].
    #[arg(long, value_name = "TD")]
    trust_domain: Option<String>,
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
    Health(cli::health::AgentHealthArgs),
    /// Every attested agent: method, selectors, banned, latest SVID serial and expiry (a server
    /// node's admin socket).
    List(cli::agents::AgentListArgs),
    /// One attested agent (a server node's admin socket).
    Show(cli::agents::AgentIdArgs),
    /// Ban an agent: every server node refuses it everything (attestation, renewal, SVIDs) once
    /// it applies the ban (a server node's admin socket).
    Ban(cli::agents::AgentIdArgs),
    /// Lift an agent's ban (a server node's admin socket).
    Unban(cli::agents::AgentIdArgs),
    /// Forget an agent: its SVID stops working and it must attest again; a banned agent must be
    /// unbanned first (a server node's admin socket).
    Evict(cli::agents::AgentIdArgs),
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

/// Runs `sigil dev` until Ctrl-C (progress on stdout; an error is one line on stderr, exit 1).
fn run_dev(args: DevArgs) -> ExitCode {
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
    let opts = node::rt::dev::DevOptions {
        nodes: args.nodes,
        data_dir: args.data_dir,
        trust_domain: args.trust_domain,
    };
    match runtime.block_on(node::rt::dev::run_dev(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
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
                "sigil {}: no command given. Commands: dev, server, agent, entry, token, bundle, \
                 cluster, healthcheck, api; `sigil dev` runs a whole local plane. See `sigil --help`.",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
        Some(Command::Server(args)) => run_server(args, false),
        Some(Command::Agent(AgentArgs {
            command: Some(command),
            ..
        })) => {
            use cli::agents::AgentAction;
            let action = |action: AgentAction, args: cli::agents::AgentIdArgs| {
                run_admin(|mut out| async move { args.run(action, &mut out).await })
            };
            match command {
                AgentCommand::Health(args) => {
                    run_admin(|mut out| async move { args.run(&mut out).await })
                }
                AgentCommand::List(args) => {
                    run_admin(|mut out| async move { args.run(&mut out).await })
                }
                AgentCommand::Show(args) => action(AgentAction::Show, args),
                AgentCommand::Ban(args) => action(AgentAction::Ban, args),
                AgentCommand::Unban(args) => action(AgentAction::Unban, args),
                AgentCommand::Evict(args) => action(AgentAction::Evict, args),
            }
        }
        Some(Command::Agent(AgentArgs {
            config: Some(config),
            ..
        })) => run_server(ServerArgs { config }, true),
        Some(Command::Agent(AgentArgs { config: None, .. })) => {
            eprintln!("error: `sigil agent` needs --config FILE (or a subcommand: health, list, show, ban, unban, evict)");
            ExitCode::from(2)
        }
        Some(Command::Dev(args)) => run_dev(args),
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
