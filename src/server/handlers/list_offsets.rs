//! ListOffsets: earliest (-2), latest (-1, the high watermark) or the first offset at or
//! after a timestamp, per partition, on the owning shards.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::super::shard::{Shard, ShardMessage};
use super::super::work::{ListOffsetsOutcome, ListOffsetsPart, ListOffsetsWork};
use super::{check_leader_epoch, led_partition};

pub async fn handle(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let meta = shard.metadata();
    let mut outcomes = Vec::new();
    let mut leader_epochs = Vec::new();
    let mut by_shard = shard.per_shard::<ListOffsetsPart>();
    for topic in &request.topics {
        for p in &topic.partitions {
            let slot = outcomes.len();
            let mut outcome = ListOffsetsOutcome {
                slot,
                error: 0,
                offset: -1,
                timestamp: -1,
            };
            let led = led_partition(
                &meta,
                shard.node_id(),
                topic.name.as_str(),
                p.partition_index,
            )
            .and_then(|(t, state)| {
                check_leader_epoch(state, p.current_leader_epoch)?;
                Ok((t, state.leader_epoch))
            });
            match led {
                Ok((t, epoch)) => {
                    leader_epochs.push(epoch);
                    by_shard[shard.owner(t, p.partition_index)].push(ListOffsetsPart {
                        slot,
                        topic: t.name.clone(),
                        partition: p.partition_index,
                        timestamp: p.timestamp,
                    })
                }
                Err(code) => {
                    leader_epochs.push(-1);
                    outcome.error = code.code();
                }
            }
            outcomes.push(outcome);
        }
    }
    let list = |parts, tx| ShardMessage::ListOffsets(ListOffsetsWork { parts }, tx);
    shard.scatter(by_shard, list, &mut outcomes).await;
    // The leader epoch field exists from v4 on.
    let mut outcomes = outcomes.into_iter().zip(
        leader_epochs
            .into_iter()
            .map(|e| if version >= 4 { e } else { -1 }),
    );
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .zip(outcomes.by_ref())
                .map(|(p, (o, leader_epoch))| {
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(o.error)
                        .with_offset(o.offset)
                        .with_timestamp(o.timestamp)
                        .with_leader_epoch(leader_epoch)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
