//! The `corelog` command: `corelog serve` runs a broker, `corelog topics` manages topics on
//! any Kafka-compatible cluster (kafka-topics.sh's flags), `corelog groups` lists, describes
//! and deletes consumer groups (kafka-consumer-groups.sh's flags), `corelog dev-cluster` runs
//! N local brokers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corelog::config::BrokerConfig;

#[derive(Parser)]
#[command(
    name = "corelog",
    version,
    about = "A Kafka-compatible, thread-per-core broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker: one pinned executor per core, all listening on the same address.
    Serve(ServeArgs),
    /// Create, list, describe, delete or alter topics on any Kafka-compatible cluster, with
    /// kafka-topics.sh's flags and output.
    Topics(corelog::cli::topics::TopicsArgs),
    /// List, describe (offsets and lag, members, state) or delete consumer groups on any
    /// Kafka-compatible cluster, with kafka-consumer-groups.sh's flags and output.
    Groups(corelog::cli::groups::GroupsArgs),
    /// Create, delete or list SCRAM users (AlterUserScramCredentials,
    /// DescribeUserScramCredentials), printing what kafka-configs.sh prints for users.
    Users(corelog::cli::users::UsersArgs),
    /// Run N local brokers as child processes (one controller quorum) until Ctrl-C.
    DevCluster(corelog::cli::dev_cluster::DevClusterArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address every shard listens on (SO_REUSEPORT): shorthand for
    /// `listeners=PLAINTEXT://ADDR`; ignored when the `listeners` property is set.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Where partition logs and metadata live.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Number of shards (one per core); default: every online core.
    #[arg(long)]
    cores: Option<usize>,
    /// A config file: Kafka's `key=value` properties, or TOML if it ends in `.toml`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set one property by its Kafka name, over the file (repeatable), e.g.
    /// `--set log.segment.bytes=1048576`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// A first user of a new cluster, as `kafka-storage format --add-scram` takes it
    /// (repeatable): `SCRAM-SHA-256=[name=admin,password=admin-secret]`, optionally
    /// `iterations=N`. Ignored, with a warning, when the metadata log already exists.
    #[arg(long = "add-scram", value_name = "MECHANISM=[name=..,password=..]")]
    add_scram: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topics(args) => {
            return match corelog::cli::topics::run(&args, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Groups(args) => return corelog::cli::groups::main(&args),
        Command::Users(args) => corelog::cli::users::run(&args, &mut std::io::stdout().lock()),
        Command::DevCluster(args) => corelog::cli::dev_cluster::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corelog: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = BrokerConfig::new(args.listen, args.data_dir);
    if let Some(file) = &args.config {
        config.load_file(file)?;
    }
    for assignment in &args.overrides {
        config.set_assignment(assignment)?;
    }
    for text in &args.add_scram {
        let salt = rand::random::<[u8; 32]>().to_vec();
        let credential = corelog::security::scram::parse_add_scram(text, salt)
            .map_err(|e| anyhow::anyhow!("--add-scram: {e}"))?;
        config.add_scram.push(credential);
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = args.cores.unwrap_or(online);
    anyhow::ensure!(
        (1..=online).contains(&cores),
        "--cores must be between 1 and the {online} online core(s), got {cores}"
    );
    config.check()?;
    let listeners = config.settings().listeners.bound;
    let listeners: Vec<String> = listeners.iter().map(ToString::to_string).collect();
    tracing::info!(
        listeners = %listeners.join(","),
        data_dir = %config.data_dir.display(),
        cores,
        "starting corelog"
    );
    corelog::server::run(config, cores)
}
