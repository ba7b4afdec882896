//! Subcommands of the `corelog` binary besides `serve`: `topics` (kafka-topics.sh against any
//! Kafka-compatible broker), `groups` (kafka-consumer-groups.sh), `users` (SCRAM users, as
//! kafka-configs.sh `--entity-type users`) and `dev-cluster` (N local brokers as child
//! processes).

pub mod dev_cluster;
pub mod groups;
pub mod topics;
pub mod users;
