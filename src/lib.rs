//! corelog: a Kafka-wire-compatible, thread-per-core message broker.
//!
//! See ARCHITECTURE.md for the map of subsystems.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod group;
pub mod protocol;
pub mod replication;
pub mod rng;
pub mod runtime;
pub mod security;
pub mod server;
#[cfg(test)]
mod simulation;
pub mod storage;
