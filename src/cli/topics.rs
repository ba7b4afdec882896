//! `corelog topics`: kafka-topics.sh's create/list/describe/delete/alter, with its flag names
//! and output layout, over [`crate::client`]. Works against any Kafka-compatible broker.

use std::io::Write;

use clap::{ArgGroup, Args};
use kafka_protocol::ResponseError;

use crate::client::{
    self, Client, ConfigEntry, Error as ClientError, NewTopic, TopicMeta, config_source,
    topic_id_string,
};

#[derive(Args, Debug, Clone)]
#[command(group(
    ArgGroup::new("action")
        .required(true)
        .args(["create", "list", "describe", "delete", "alter"])
))]
pub struct TopicsArgs {
    /// The Kafka server(s) to connect to: comma-separated host:port list, tried in order.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_server: String,
    /// Create a new topic.
    #[arg(long)]
    pub create: bool,
    /// List all available topics.
    #[arg(long)]
    pub list: bool,
    /// List details for the given topic, or for all topics.
    #[arg(long)]
    pub describe: bool,
    /// Delete a topic.
    #[arg(long)]
    pub delete: bool,
    /// Alter the number of partitions of a topic (CreatePartitions).
    #[arg(long)]
    pub alter: bool,
    /// The topic to create, describe, delete or alter.
    #[arg(long)]
    pub topic: Option<String>,
    /// Number of partitions of the topic being created or altered (create: default
    /// -1, the broker's num.partitions).
    #[arg(long, allow_hyphen_values = true)]
    pub partitions: Option<i32>,
    /// Replication factor of the topic being created (default -1: the broker's
    /// default.replication.factor).
    #[arg(long, allow_hyphen_values = true)]
    pub replication_factor: Option<i16>,
    /// A topic configuration override for the topic being created (repeatable), e.g.
    /// `--config retention.ms=60000`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// With --delete, --alter or --describe: only act if the topic exists.
    #[arg(long)]
    pub if_exists: bool,
    /// With --create: only create the topic if it does not exist.
    #[arg(long)]
    pub if_not_exists: bool,
    /// Exclude internal topics from --list and --describe.
    #[arg(long)]
    pub exclude_internal: bool,
}

/// An error of `corelog topics`, printed as `Error while executing topic command : {0}`.
#[derive(Debug)]
pub struct CommandError(pub String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error while executing topic command : {}", self.0)
    }
}

impl std::error::Error for CommandError {}

type Result<T> = std::result::Result<T, CommandError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(CommandError(msg.into()))
}

/// Text of a client error for `topic`, naming the Kafka error.
pub fn error_text(e: &ClientError, topic: &str) -> String {
    match e {
        ClientError::Broker(b) => {
            let text = b.message.clone().unwrap_or_else(|| match b.error {
                ResponseError::TopicAlreadyExists => format!("Topic '{topic}' already exists."),
                ResponseError::UnknownTopicOrPartition => {
                    format!("Topic '{topic}' does not exist as expected.")
                }
                ResponseError::InvalidReplicationFactor => "Invalid replication factor.".into(),
                ResponseError::InvalidPartitions => "Invalid number of partitions.".into(),
                ResponseError::InvalidTopicException => format!("Invalid topic name '{topic}'."),
                _ => format!("The broker rejected the request for topic '{topic}'."),
            });
            format!("{text} ({})", b.name())
        }
        other => other.to_string(),
    }
}

/// Runs the command, printing results to `out`.
pub fn run(args: &TopicsArgs, out: &mut impl Write) -> Result<()> {
    let need_topic = || {
        args.topic
            .clone()
            .ok_or_else(|| CommandError("--topic is required with this action".into()))
    };
    let configs = parse_configs(&args.config)?;
    if !args.create && !configs.is_empty() {
        return fail("--config is only supported with --create");
    }
    if args.replication_factor.is_some() && !args.create {
        return fail("--replication-factor is only supported with --create");
    }
    if args.partitions.is_some() && !(args.create || args.alter) {
        return fail("--partitions is only supported with --create or --alter");
    }
    // Validate the arguments before connecting.
    let topic = if args.create || args.delete || args.alter {
        Some(need_topic()?)
    } else {
        args.topic.clone()
    };
    if args.alter && args.partitions.is_none() {
        return fail("--partitions is required with --alter");
    }
    let mut client =
        Client::bootstrap(&args.bootstrap_server).map_err(|e| CommandError(e.to_string()))?;
    let w = |r: std::io::Result<()>| r.map_err(|e| CommandError(format!("writing output: {e}")));
    if args.create {
        let topic = need_topic()?;
        let new = NewTopic {
            name: topic.clone(),
            partitions: args.partitions.unwrap_or(-1),
            replication_factor: args.replication_factor.unwrap_or(-1),
            configs,
        };
        match client.create_topic(&new) {
            Ok(_) => w(writeln!(out, "Created topic {topic}."))?,
            Err(e)
                if args.if_not_exists && e.kafka() == Some(ResponseError::TopicAlreadyExists) => {}
            Err(e) => return fail(error_text(&e, &topic)),
        }
    } else if args.list {
        let meta = client
            .cluster_metadata(None)
            .map_err(|e| CommandError(e.to_string()))?;
        let mut names: Vec<&str> = meta
            .topics
            .iter()
            .filter(|t| !(args.exclude_internal && t.internal))
            .map(|t| t.name.as_str())
            .collect();
        names.sort_unstable();
        for n in names {
            w(writeln!(out, "{n}"))?;
        }
    } else if args.describe {
        describe(&mut client, args, topic.as_deref(), out)?;
    } else if args.delete {
        let topic = need_topic()?;
        match client.delete_topic(&topic) {
            Ok(()) => {}
            Err(e)
                if args.if_exists && e.kafka() == Some(ResponseError::UnknownTopicOrPartition) => {}
            Err(e) => return fail(error_text(&e, &topic)),
        }
    } else if args.alter {
        let topic = need_topic()?;
        let count = args
            .partitions
            .ok_or_else(|| CommandError("--partitions is required with --alter".into()))?;
        match client.create_partitions(&topic, count) {
            Ok(()) => {}
            Err(e)
                if args.if_exists && e.kafka() == Some(ResponseError::UnknownTopicOrPartition) => {}
            Err(e) => return fail(error_text(&e, &topic)),
        }
    }
    w(out.flush())
}

fn parse_configs(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => fail(format!("--config expects KEY=VALUE, got '{kv}'")),
        })
        .collect()
}

fn describe(
    client: &mut Client,
    args: &TopicsArgs,
    topic: Option<&str>,
    out: &mut impl Write,
) -> Result<()> {
    // All topics' metadata, then filter: asking for one topic by name may auto-create it on
    // brokers that only speak Metadata < v4.
    let meta = client
        .cluster_metadata(None)
        .map_err(|e| CommandError(e.to_string()))?;
    let mut topics: Vec<&TopicMeta> = meta
        .topics
        .iter()
        .filter(|t| topic.is_none_or(|name| t.name == name))
        .filter(|t| !(args.exclude_internal && t.internal))
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(name) = topic
        && topics.is_empty()
    {
        if args.if_exists {
            return Ok(());
        }
        return fail(format!(
            "Topic '{name}' does not exist as expected ({})",
            client::error_name(3)
        ));
    }
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let configs = match client.describe_topic_configs(&names) {
        Ok(c) => c,
        Err(e @ (ClientError::UnsupportedApi { .. } | ClientError::NoCommonVersion { .. })) => {
            eprintln!("WARN: topic configs are not shown: {e}");
            names.iter().map(|n| (n.clone(), Ok(Vec::new()))).collect()
        }
        Err(e) => return fail(e.to_string()),
    };
    for (t, (_, cfg)) in topics.iter().zip(configs) {
        let cfg = cfg.map_err(|e| CommandError(error_text(&e, &t.name)))?;
        out.write_all(render_describe(t, &cfg).as_bytes())
            .map_err(|e| CommandError(format!("writing output: {e}")))?;
    }
    Ok(())
}

/// kafka-topics.sh's --describe text of one topic: a topic line, then one line per partition.
pub fn render_describe(t: &TopicMeta, configs: &[ConfigEntry]) -> String {
    let configs: Vec<String> = configs
        .iter()
        .filter(|c| c.source == config_source::DYNAMIC_TOPIC_CONFIG)
        .map(|c| format!("{}={}", c.name, c.value.as_deref().unwrap_or("null")))
        .collect();
    let rf = t.partitions.first().map_or(0, |p| p.replicas.len());
    let mut s = format!(
        "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}\n",
        t.name,
        topic_id_string(&t.id),
        t.partitions.len(),
        rf,
        configs.join(",")
    );
    let join = |ids: &[i32]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for p in &t.partitions {
        let leader = if p.leader < 0 {
            "none".to_string()
        } else {
            p.leader.to_string()
        };
        s.push_str(&format!(
            "\tTopic: {}\tPartition: {}\tLeader: {}\tReplicas: {}\tIsr: {}",
            t.name,
            p.index,
            leader,
            join(&p.replicas),
            join(&p.isr)
        ));
        if !p.offline.is_empty() {
            s.push_str(&format!("\tOffline: {}", join(&p.offline)));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{BrokerError, PartitionMeta};

    fn entry(name: &str, value: &str, source: i8) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            source,
            read_only: false,
            sensitive: false,
        }
    }

    #[test]
    fn describe_layout() {
        let t = TopicMeta {
            name: "test".into(),
            id: uuid::Uuid::from_u128(0x0123456789abcdef_fedcba9876543210),
            internal: false,
            error: 0,
            partitions: vec![
                PartitionMeta {
                    index: 0,
                    leader: 1,
                    error: 0,
                    replicas: vec![1, 2, 3],
                    isr: vec![1, 2, 3],
                    offline: vec![],
                },
                PartitionMeta {
                    index: 1,
                    leader: -1,
                    error: 5,
                    replicas: vec![2, 3, 1],
                    isr: vec![],
                    offline: vec![2, 3],
                },
            ],
        };
        let cfg = [
            entry("retention.ms", "1000", config_source::DYNAMIC_TOPIC_CONFIG),
            entry("segment.bytes", "1073741824", config_source::DEFAULT_CONFIG),
            entry(
                "cleanup.policy",
                "delete",
                config_source::DYNAMIC_TOPIC_CONFIG,
            ),
        ];
        assert_eq!(
            render_describe(&t, &cfg),
            "Topic: test\tTopicId: ASNFZ4mrze_-3LqYdlQyEA\tPartitionCount: 2\tReplicationFactor: 3\tConfigs: retention.ms=1000,cleanup.policy=delete\n\
             \tTopic: test\tPartition: 0\tLeader: 1\tReplicas: 1,2,3\tIsr: 1,2,3\n\
             \tTopic: test\tPartition: 1\tLeader: none\tReplicas: 2,3,1\tIsr: \tOffline: 2,3\n"
        );
    }

    #[test]
    fn error_texts_name_the_kafka_error() {
        let e = ClientError::Broker(BrokerError::from_code(36, None, None).unwrap());
        assert_eq!(
            error_text(&e, "x"),
            "Topic 'x' already exists. (TOPIC_ALREADY_EXISTS)"
        );
        let e = ClientError::Broker(
            BrokerError::from_code(38, Some("replication factor 3 > 1 broker".into()), None)
                .unwrap(),
        );
        assert_eq!(
            error_text(&e, "x"),
            "replication factor 3 > 1 broker (INVALID_REPLICATION_FACTOR)"
        );
        assert_eq!(
            CommandError("m".into()).to_string(),
            "Error while executing topic command : m"
        );
    }

    #[test]
    fn configs_parse() {
        assert_eq!(
            parse_configs(&["a=b".into(), "c=d=e".into()]).unwrap(),
            vec![("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
        assert!(parse_configs(&["nokey".into()]).is_err());
    }
}
