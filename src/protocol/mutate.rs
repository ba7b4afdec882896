//! A small deterministic mutator for the fuzz tests: valid requests of every served API
//! (its corpus) and seeded mutations of their bytes (bit flips, truncation, length fields
//! set to huge or negative values, splices). Same seed, same cases.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, RequestKind, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::record_batch::{TestBatch, build_batch};
use super::versions;
use crate::rng::Rng;

/// Values a length or count field is set to: huge, negative, off by one.
const NASTY_I32: [i32; 8] = [i32::MAX, i32::MIN, -1, -2, 0, 1 << 30, 0x7fff, 0xffff];
const NASTY_I16: [i16; 5] = [i16::MAX, i16::MIN, -1, -2, 0];

/// One encoded request (header + body, no length prefix) of the corpus.
#[derive(Debug, Clone)]
pub struct Seed {
    pub api_key: ApiKey,
    pub version: i16,
    pub bytes: Bytes,
}

/// A valid request of every served API at its lowest and highest served version, naming
/// `topic` (partition 0) where the API takes topics.
pub fn corpus(topic: &str) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for &(api_key, min, max) in versions::SUPPORTED {
        for version in [min, max] {
            let body = request(api_key, version, topic);
            if let Some(bytes) = encode(api_key, version, &body) {
                seeds.push(Seed {
                    api_key,
                    version,
                    bytes,
                });
            }
        }
    }
    seeds
}

fn encode(api_key: ApiKey, version: i16, body: &RequestKind) -> Option<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

/// A small valid request body of `api_key` at `version` (fields a version lacks are left
/// at their defaults, or it would not encode).
fn request(api_key: ApiKey, version: i16, topic: &str) -> RequestKind {
    data_request(api_key, topic)
        .or_else(|| admin_request(api_key, version, topic))
        .or_else(|| group_request(api_key, version, topic))
        .or_else(|| sasl_request(api_key))
        .or_else(|| user_request(api_key, topic))
        // Not served: an empty ApiVersions stands in (the corpus covers served APIs only).
        .unwrap_or_else(|| RequestKind::ApiVersions(ApiVersionsRequest::default()))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Produce, Fetch, offsets, Metadata, ApiVersions and InitProducerId.
fn data_request(api_key: ApiKey, topic: &str) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    let name = || topic_name(topic);
    Some(match api_key {
        ApiKey::Produce => {
            let batch = build_batch(&TestBatch {
                records: &[(Some(b"k"), b"value"), (None, b"")],
                ..TestBatch::default()
            });
            let partition =
                produce_request::PartitionProduceData::default().with_records(Some(batch));
            let topic = produce_request::TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![partition]);
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![topic]),
            )
        }
        ApiKey::Fetch => {
            let partition =
                fetch_request::FetchPartition::default().with_partition_max_bytes(1 << 20);
            let topic = fetch_request::FetchTopic::default()
                .with_topic(name())
                .with_partitions(vec![partition]);
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::ListOffsets => {
            let partition =
                list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1);
            let topic = list_offsets_request::ListOffsetsTopic::default()
                .with_name(name())
                .with_partitions(vec![partition]);
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::Metadata => {
            let topic = metadata_request::MetadataRequestTopic::default().with_name(Some(name()));
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![topic])))
        }
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("fuzz"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        ),
        ApiKey::OffsetForLeaderEpoch => {
            let partition = offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                .with_current_leader_epoch(-1);
            let topic = offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(name())
                .with_partitions(vec![partition]);
            RequestKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(-1)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        _ => return None,
    })
}

/// The topic and ACL admin APIs.
fn admin_request(api_key: ApiKey, version: i16, topic: &str) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    let name = || topic_name(topic);
    Some(match api_key {
        ApiKey::CreateTopics => {
            let topic = create_topics_request::CreatableTopic::default()
                .with_name(name())
                .with_num_partitions(1)
                .with_replication_factor(1);
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_topics(vec![topic])
                    .with_timeout_ms(1000),
            )
        }
        ApiKey::DeleteTopics => {
            let request = DeleteTopicsRequest::default().with_timeout_ms(1000);
            RequestKind::DeleteTopics(if version >= 6 {
                let topic =
                    delete_topics_request::DeleteTopicState::default().with_name(Some(name()));
                request.with_topics(vec![topic])
            } else {
                request.with_topic_names(vec![name()])
            })
        }
        ApiKey::CreatePartitions => {
            let topic = create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name())
                .with_count(2);
            RequestKind::CreatePartitions(
                CreatePartitionsRequest::default()
                    .with_topics(vec![topic])
                    .with_timeout_ms(1000),
            )
        }
        ApiKey::DescribeConfigs => {
            let resource = describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_string()));
            RequestKind::DescribeConfigs(
                DescribeConfigsRequest::default().with_resources(vec![resource]),
            )
        }
        ApiKey::CreateAcls => {
            let creation = create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_string()))
                .with_resource_pattern_type(3)
                .with_principal(StrBytes::from_static_str("User:fuzz"))
                .with_host(StrBytes::from_static_str("*"))
                .with_operation(3)
                .with_permission_type(3);
            RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![creation]))
        }
        ApiKey::DescribeAcls => RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(2)
                .with_resource_name_filter(Some(StrBytes::from_string(topic.to_string())))
                .with_operation(1)
                .with_permission_type(1),
        ),
        ApiKey::DeleteAcls => {
            let filter = delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(2)
                .with_pattern_type_filter(1)
                .with_principal_filter(Some(StrBytes::from_static_str("User:fuzz")))
                .with_operation(1)
                .with_permission_type(1);
            RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![filter]))
        }
        _ => return None,
    })
}

/// The consumer group APIs.
fn group_request(api_key: ApiKey, version: i16, topic: &str) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    let name = || topic_name(topic);
    let group = || GroupId(StrBytes::from_static_str("fuzz-group"));
    Some(match api_key {
        ApiKey::FindCoordinator => {
            let key = StrBytes::from_static_str("fuzz-group");
            RequestKind::FindCoordinator(if version >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key(key)
            })
        }
        ApiKey::OffsetCommit => {
            let partition = offset_commit_request::OffsetCommitRequestPartition::default()
                .with_committed_offset(5);
            let topic = offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![partition]);
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(group())
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::OffsetFetch => {
            if version >= 8 {
                let topics = offset_fetch_request::OffsetFetchRequestTopics::default()
                    .with_name(name())
                    .with_partition_indexes(vec![0]);
                let g = offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(group())
                    .with_topics(Some(vec![topics]));
                return Some(RequestKind::OffsetFetch(
                    OffsetFetchRequest::default().with_groups(vec![g]),
                ));
            }
            let topic = offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name())
                .with_partition_indexes(vec![0]);
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(group())
                    .with_topics(Some(vec![topic])),
            )
        }
        ApiKey::JoinGroup => {
            let protocol = join_group_request::JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"\0\0\0\0"));
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(group())
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(10_000)
                    .with_protocol_type(StrBytes::from_static_str("consumer"))
                    .with_protocols(vec![protocol]),
            )
        }
        ApiKey::SyncGroup => {
            RequestKind::SyncGroup(SyncGroupRequest::default().with_group_id(group()))
        }
        ApiKey::Heartbeat => {
            RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(group()))
        }
        ApiKey::LeaveGroup => {
            RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(group()))
        }
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![group()]))
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![group()]),
        ),
        ApiKey::OffsetDelete => {
            let topic = offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(name())
                .with_partitions(vec![
                    offset_delete_request::OffsetDeleteRequestPartition::default(),
                ]);
            RequestKind::OffsetDelete(
                OffsetDeleteRequest::default()
                    .with_group_id(group())
                    .with_topics(vec![topic]),
            )
        }
        _ => return None,
    })
}

/// SaslHandshake and SaslAuthenticate (outside authentication: ILLEGAL_SASL_STATE).
fn sasl_request(api_key: ApiKey) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    Some(match api_key {
        ApiKey::SaslHandshake => RequestKind::SaslHandshake(
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        ),
        ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0u\0pw")),
        ),
        _ => return None,
    })
}

/// The SCRAM credential APIs, naming `topic` as the user.
fn user_request(api_key: ApiKey, user: &str) -> Option<RequestKind> {
    use kafka_protocol::messages::*;
    let name = || StrBytes::from_string(user.to_string());
    Some(match api_key {
        ApiKey::AlterUserScramCredentials => {
            let upsertion =
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(name())
                    .with_mechanism(1)
                    .with_iterations(4096)
                    .with_salt(Bytes::from_static(b"0123456789abcdef"))
                    .with_salted_password(Bytes::from(vec![7; 32]));
            let deletion = alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                .with_name(StrBytes::from_static_str("nobody"))
                .with_mechanism(2);
            RequestKind::AlterUserScramCredentials(
                AlterUserScramCredentialsRequest::default()
                    .with_upsertions(vec![upsertion])
                    .with_deletions(vec![deletion]),
            )
        }
        ApiKey::DescribeUserScramCredentials => {
            let user =
                describe_user_scram_credentials_request::UserName::default().with_name(name());
            RequestKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsRequest::default().with_users(Some(vec![user])),
            )
        }
        _ => return None,
    })
}

/// `seed` with one to three mutations; `others` supplies bytes for splices.
pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Seed]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.index(3) {
        mutate_once(rng, &mut b, others);
    }
    b
}

fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>, others: &[Seed]) {
    // Leave the API key and version alone most of the time, so the body reaches decoding.
    let from = if rng.index(8) == 0 || b.len() <= 4 {
        0
    } else {
        4
    };
    let at = |rng: &mut Rng, len: usize| from + rng.index(len.saturating_sub(from).max(1));
    match rng.index(6) {
        0 if !b.is_empty() => {
            let i = at(rng, b.len()).min(b.len() - 1);
            b[i] ^= 1 << rng.index(8);
        }
        1 => b.truncate(at(rng, b.len())),
        2 if b.len() >= 4 => {
            let i = at(rng, b.len() - 3).min(b.len() - 4);
            let v = NASTY_I32[rng.index(NASTY_I32.len())];
            b[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        3 if b.len() >= 2 => {
            let i = at(rng, b.len() - 1).min(b.len() - 2);
            let v = NASTY_I16[rng.index(NASTY_I16.len())];
            b[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        4 if !others.is_empty() => {
            // Splice: our head, another request's tail.
            let other = &others[rng.index(others.len())].bytes;
            let cut = at(rng, b.len()).min(b.len());
            let tail = rng.index(other.len().max(1)).min(other.len());
            b.truncate(cut);
            b.extend_from_slice(&other[tail..]);
        }
        _ if !b.is_empty() => {
            // A varint run that never ends, or random bytes, in place.
            let i = at(rng, b.len()).min(b.len() - 1);
            let n = (1 + rng.index(8)).min(b.len() - i);
            let fill = if rng.index(2) == 0 {
                0xff
            } else {
                rng.next_u64() as u8
            };
            b[i..i + n].fill(fill);
        }
        _ => b.extend_from_slice(&rng.next_u64().to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_covers_every_served_api_and_decodes() {
        let seeds = corpus("t");
        for &(api_key, min, max) in versions::SUPPORTED {
            for version in [min, max] {
                assert!(
                    seeds
                        .iter()
                        .any(|s| (s.api_key, s.version) == (api_key, version)),
                    "{api_key:?} v{version} missing"
                );
            }
        }
        for s in &seeds {
            let r = super::super::decode_request(s.bytes.clone());
            assert!(r.is_ok(), "{:?} v{}: {r:?}", s.api_key, s.version);
        }
    }

    #[test]
    fn same_seed_same_mutations() {
        let seeds = corpus("t");
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|i| mutate(&mut rng, &seeds[i % seeds.len()].bytes, &seeds))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
