//! What several benches build alike.

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use corelog::protocol::frame::encode_request;

/// A Produce v9 request frame (size prefix included) to `topic`, with `batch` for each of
/// partitions `0..partitions`.
pub fn produce_frame(topic: &'static str, acks: i16, partitions: i32, batch: &Bytes) -> Bytes {
    let partitions = (0..partitions)
        .map(|i| {
            PartitionProduceData::default()
                .with_index(i)
                .with_records(Some(batch.clone()))
        })
        .collect();
    let body = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_data(partitions),
        ]);
    encode_request(ApiKey::Produce, 9, 1, "bench", &body).expect("encode")
}
