//! The follower's fetch loop: one per (shard, leader broker) followed, one Fetch for every
//! partition this shard follows from that leader (Kafka's `ReplicaFetcherThread`). The
//! shard starts one for each leader `ReplicaSet::apply` reports newly followed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use super::fetch_session::{BrokerIdentity, FetchConfig, FetchSession};
use super::follower::{self, Applied};
use super::replicas::ReplicaSet;
use crate::runtime::delay;

/// Pause after a failed fetch or an error a metadata update should fix.
const BACKOFF: Duration = Duration::from_millis(100);

/// Replicates every partition this shard follows from `leader` until it follows none. Each
/// round: fetch, append, wait for the appends to be durable (so the next fetch offset
/// reports durable data only), repeat.
pub async fn follow(replicas: Rc<ReplicaSet>, leader: i32) {
    let mut session: Option<FetchSession> = None;
    loop {
        let following = replicas.following(leader);
        if following.is_empty() || replicas.is_stopping() {
            replicas.stopped_following(leader);
            return;
        }
        let (Some((address, host)), Some(identity)) =
            (leader_address(&replicas, leader), own_identity(&replicas))
        else {
            delay(BACKOFF).await;
            continue;
        };
        let session = match &mut session {
            Some(s) if s.leader() == address => s,
            _ => {
                let new = FetchSession::new(identity, leader, address, FetchConfig::default());
                let tls = replicas.host.inter_broker_tls.clone();
                session.insert(match tls {
                    Some(tls) => new.with_tls(tls, host),
                    None => new,
                })
            }
        };
        let asked: Vec<_> = following
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
        for (((replica, _), asked), answer) in following.iter().zip(&asked).zip(answers) {
            if let Applied::Backoff(code) = follower::apply(replica, asked, answer).await {
                tracing::debug!(
                    leader,
                    partition = replica.partition,
                    code,
                    "replica fetch error"
                );
                backoff = true;
            }
        }
        let durable = following
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

/// This broker as the metadata log knows it: the leader checks a fetch connection's claim
/// against its own copy of the log.
fn own_identity(replicas: &ReplicaSet) -> Option<BrokerIdentity> {
    let image = replicas.image();
    let node_id = replicas.node_id();
    let me = image.brokers.get(&node_id)?;
    Some(BrokerIdentity {
        cluster_id: image.cluster_id.clone(),
        node_id,
        incarnation: me.incarnation,
    })
}

/// The leader's endpoint of this broker's inter-broker listener (brokers of one cluster
/// name their listeners alike, as in Kafka).
/// The address and the advertised host (which a TLS leader's certificate names).
fn leader_address(replicas: &ReplicaSet, leader: i32) -> Option<(SocketAddr, String)> {
    let image = replicas.image();
    let broker = image.brokers.get(&leader)?;
    let (host, port) = broker.endpoint(replicas.inter_broker_listener())?;
    let address = (host, port).to_socket_addrs().ok()?.next()?;
    Some((address, host.to_string()))
}
