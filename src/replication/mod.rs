//! Replication: the leader's view of its followers (ISR, high watermark) and the followers'
//! fetch sessions to their leaders. Kafka's rules, as listed in DESIGN.md section 4.
//!
//! Architecture invariant: `leader` is pure (inputs are fetch reports and clock readings in
//! ms, outputs are high watermarks and ISR proposals), so it runs unchanged in simulation.

pub mod divergence;
pub mod fetch_session;
pub mod fetcher;
pub mod follower;
pub mod leader;
pub mod partition;
pub mod replica;
pub mod replicas;
