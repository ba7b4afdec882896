//! The shard's replication tasks: one fetch loop per leader broker this shard follows, and
//! the leader's periodic ISR check. ISR changes go to the controller through shard 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use super::controller::{ControllerRequest, ControllerResponse};
use super::shard::{Shard, ShardMessage};
use crate::cluster::commands::IsrChange;
use crate::protocol::ErrorCode;
use crate::replication::fetch_session::{FetchConfig, FetchSession};
use crate::replication::follower::{self, Applied};
use crate::replication::replica::{IsrProposal, Replica};
use crate::runtime::delay;

/// Pause after a failed fetch or an error a metadata update should fix.
const BACKOFF: Duration = Duration::from_millis(100);

/// Replicates every partition this shard follows from `leader`, one Fetch for all of them,
/// until it follows none. Each round: fetch, append, wait for the appends to be durable
/// (so the next fetch offset reports durable data only), repeat.
pub async fn follow(shard: Rc<Shard>, leader: i32) {
    let mut session: Option<FetchSession> = None;
    loop {
        let replicas = shard.replicas_following(leader);
        if replicas.is_empty() || shard.stopping.get() {
            shard.following.borrow_mut().remove(&leader);
            return;
        }
        let Some(address) = leader_address(&shard, leader) else {
            delay(BACKOFF).await;
            continue;
        };
        let session = match &mut session {
            Some(s) if s.leader() == address => s,
            _ => session.insert(FetchSession::new(
                shard.node_id(),
                leader,
                address,
                FetchConfig::default(),
            )),
        };
        let asked: Vec<_> = replicas
            .iter()
            .map(|(r, epoch)| follower::fetch_position(r, *epoch))
            .collect();
        let answers = match session.fetch(&asked).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(leader, "replica fetch failed: {e}");
                delay(BACKOFF).await;
                continue;
            }
        };
        let mut backoff = false;
        for (((replica, _), asked), answer) in replicas.iter().zip(&asked).zip(answers) {
            match follower::apply(replica, asked, answer).await {
                Applied::Appended | Applied::Truncated => {}
                Applied::Backoff(code) => {
                    tracing::debug!(
                        leader,
                        partition = replica.partition,
                        code,
                        "replica fetch error"
                    );
                    backoff = true;
                }
            }
        }
        let durable = replicas
            .iter()
            .map(|(r, _)| r.log.wait_durable(r.log.log_end_offset()));
        for result in futures::future::join_all(durable).await {
            if let Err(e) = result {
                tracing::error!(leader, "replicated data not made durable: {e}");
                backoff = true;
            }
        }
        if backoff {
            delay(BACKOFF).await;
        }
    }
}

fn leader_address(shard: &Shard, leader: i32) -> Option<SocketAddr> {
    let image = shard.metadata();
    let broker = image.brokers.get(&leader)?;
    (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .ok()?
        .next()
}

/// Every half `replica.lag.time.max.ms`, each partition this shard leads drops the
/// followers that stopped catching up from its ISR.
pub async fn shrink_isr_loop(shard: Rc<Shard>) {
    let lag_max_ms = shard.config.int("replica.lag.time.max.ms");
    let period = Duration::from_millis((lag_max_ms / 2).max(10) as u64);
    while !shard.stopping.get() {
        delay(period).await;
        let now_ms = crate::storage::now_ms();
        for replica in shard.all_replicas() {
            if let Some(proposal) = replica.shrink_check(now_ms, lag_max_ms) {
                send_isr_change(&shard, replica, proposal);
            }
        }
    }
}

/// Sends an ISR change to the controller (Kafka's AlterPartitionManager). Without an
/// answer the change may still be committed, so it stays pending and is sent again; a
/// stale-epoch answer leaves it pending until the metadata that settled it arrives; only a
/// definite refusal lets the leader go back to its committed ISR.
pub fn send_isr_change(shard: &Rc<Shard>, replica: Rc<Replica>, proposal: IsrProposal) {
    let shard = shard.clone();
    crate::runtime::spawn_local(async move {
        tracing::info!(
            topic = replica.topic,
            partition = replica.partition,
            isr = ?proposal.isr,
            "proposing an ISR change"
        );
        while replica.is_pending(&proposal) && !shard.stopping.get() {
            let change = ControllerRequest::AlterPartition(IsrChange {
                topic: replica.topic.clone(),
                partition: replica.partition,
                leader: shard.node_id(),
                leader_epoch: proposal.leader_epoch,
                partition_epoch: proposal.partition_epoch,
                isr: proposal.isr.clone(),
            });
            match shard
                .call(0, |tx| ShardMessage::Controller(change, tx))
                .await
            {
                Some(ControllerResponse::Done(Ok(()))) => return,
                Some(ControllerResponse::Done(Err(e))) if settled_elsewhere(e.code) => return,
                Some(ControllerResponse::Done(Err(e))) if e.code != TIMED_OUT => {
                    tracing::info!("ISR change refused: {}", e.message);
                    replica.isr_rejected(crate::storage::now_ms());
                    return;
                }
                _ => delay(BACKOFF * 5).await,
            }
        }
    })
    .detach();
}

const TIMED_OUT: i16 = ErrorCode::RequestTimedOut.code();

/// Answers after which the partition's next metadata tells what happened to the change.
fn settled_elsewhere(code: i16) -> bool {
    code == ErrorCode::InvalidUpdateVersion.code() || code == ErrorCode::FencedLeaderEpoch.code()
}
