//! corelog-perf: a load generator speaking the Kafka protocol directly to
//! any Kafka-compatible broker. See perf/README.md.

mod consume;
mod cpu;
#[cfg(test)]
mod e2e_tests;
#[cfg(test)]
mod mockbroker;
mod partitioner;
mod produce;
mod records;
mod stats;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "corelog-perf",
    version,
    about = "Kafka-protocol load generator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Produce messages and measure throughput and produce latency.
    Produce(ProduceOpts),
    /// Consume a topic and measure throughput and end-to-end latency.
    Consume(ConsumeOpts),
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("bound").required(true).args(["count", "duration_secs"])))]
pub struct CommonOpts {
    /// Comma-separated host:port list of bootstrap brokers.
    #[arg(long, short = 'b')]
    pub bootstrap_server: String,
    /// Topic name.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Print the final report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Comma-separated PIDs of the brokers (on this machine) whose CPU time
    /// the report gives, with GB per broker CPU-second.
    #[arg(long, value_delimiter = ',')]
    pub broker_pids: Vec<u32>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum KeyMode {
    None,
    Random,
    Seq,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum PartitionerKind {
    Default,
    RoundRobin,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum StartFrom {
    Earliest,
    Latest,
}

#[derive(Args, Debug)]
pub struct ProduceOpts {
    #[command(flatten)]
    pub common: CommonOpts,
    /// Create the topic with N partitions first (already existing is fine).
    #[arg(long)]
    pub create_partitions: Option<i32>,
    /// Replication factor used with --create-partitions.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,
    /// Value size in bytes (>= 12 to carry the µs latency stamp).
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// "all" or N: use only the first N partitions.
    #[arg(long, default_value = "all")]
    pub partitions_used: String,
    /// -1 (all in-sync replicas), 0 (no response) or 1 (leader).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Record keys.
    #[arg(long, value_enum, default_value_t = KeyMode::None)]
    pub keys: KeyMode,
    /// Target rate in messages per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Maximum size of one record batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_bytes: usize,
    /// Send a batch at the latest this long after its first record.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// TCP connections per broker.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Maximum unanswered Produce requests per connection.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Partitioner for records.
    #[arg(long, value_enum, default_value_t = PartitionerKind::Default)]
    pub partitioner: PartitionerKind,
    /// Maximum size of one Produce request (many partitions per request).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_request_bytes: usize,
    /// Produce request timeout given to the broker.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: i32,
    /// Retries of a batch on NOT_LEADER_OR_FOLLOWER / LEADER_NOT_AVAILABLE /
    /// UNKNOWN_TOPIC_OR_PARTITION (after a metadata refresh).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// How long to wait for outstanding responses at the end.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

#[derive(Args, Debug)]
pub struct ConsumeOpts {
    #[command(flatten)]
    pub common: CommonOpts,
    /// Where to start in every partition.
    #[arg(long, value_enum, default_value_t = StartFrom::Earliest)]
    pub from: StartFrom,
    /// Fetch max_bytes (whole response).
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub fetch_max_bytes: i32,
    /// Fetch partition_max_bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub partition_max_bytes: i32,
    /// Fetch max_wait_ms.
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: i32,
    /// Stop when no message arrived for this long.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_secs: u64,
}

fn main() {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Produce(o) => {
            if ![-1, 0, 1].contains(&o.acks) {
                eprintln!("--acks must be -1, 0 or 1");
                std::process::exit(2);
            }
            produce::run(o).map(|_| ())
        }
        Cmd::Consume(o) => consume::run(o).map(|_| ()),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
