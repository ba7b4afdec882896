//! Replication with Kafka's rules (DESIGN.md section 4): a replica's decisions as a value
//! (`partition`, with the leader's view of its followers in `leader`, the divergence check in
//! `divergence` and the follower's decision in `follower::decide`), and the shell that carries
//! them out on the shard that owns the replica: `replica` (log + decisions), `replicas` (the
//! shard's replica set, kept in line with the metadata), `fetcher` and `fetch_session` (the
//! follower's fetch loop to each leader).
//!
//! Architecture invariant: `partition`, `leader`, `divergence` and `follower::decide` are pure
//! (inputs are events and clock readings in ms, outputs are effects), so the simulation runs
//! them unchanged.

pub mod divergence;
pub mod fetch_session;
pub mod fetcher;
pub mod follower;
pub mod leader;
pub mod partition;
pub mod replica;
pub mod replicas;
