//! Authorization through the path a connection uses (decode, dispatch, encode) against a
//! real shard on this thread, with a peer whose principal the test sets: which APIs each
//! ACL lets through, and which errors the refused ones get.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::fuzz::{TOPICS, image_with_topics, with_configured_shard};
use super::handlers::Peer;
use super::request;
use super::shard::Shard;
use crate::cluster::commands::MetadataCommand;
use crate::cluster::quorum::MetadataImage;
use crate::config::BrokerConfig;
use crate::protocol::ErrorCode;
use crate::protocol::record_batch::{TestBatch, build_batch};
use crate::security::Principal;
use crate::security::acl::{
    AccessControlEntry, AclBinding, Operation, PatternType, Permission, ResourcePattern,
    ResourceType,
};

const PLAIN: &str = TOPICS[1];
const OTHER: &str = TOPICS[0];
const TOPIC_AUTH: i16 = ErrorCode::TopicAuthorizationFailed.code();
const GROUP_AUTH: i16 = ErrorCode::GroupAuthorizationFailed.code();
const CLUSTER_AUTH: i16 = ErrorCode::ClusterAuthorizationFailed.code();

fn acl(
    resource_type: ResourceType,
    name: &str,
    pattern_type: PatternType,
    principal: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    AclBinding {
        pattern: ResourcePattern {
            resource_type,
            name: name.into(),
            pattern_type,
        },
        entry: AccessControlEntry {
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        },
    }
}

fn allow_topic(name: &str, principal: &str, operation: Operation) -> AclBinding {
    acl(
        ResourceType::Topic,
        name,
        PatternType::Literal,
        principal,
        operation,
        Permission::Allow,
    )
}

/// The test image (this broker leading both topics) with `acls`.
fn image_with(acls: Vec<AclBinding>) -> MetadataImage {
    let mut image = image_with_topics();
    image.metadata.apply(&MetadataCommand::CreateAcls(acls));
    image
}

/// Runs `test` as `User:alice` on a shard with the authorizer on (and `extra` settings).
fn as_alice<F, Fut>(extra: &'static [(&str, &str)], acls: Vec<AclBinding>, test: F)
where
    F: FnOnce(Rc<Shard>, Peer) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let configure = move |c: &mut BrokerConfig| {
        c.set("authorizer.enabled", "true").expect("setting");
        for (key, value) in extra {
            c.set(key, value).expect("setting");
        }
    };
    with_configured_shard(configure, image_with(acls), |shard, peer| {
        peer.set_principal(Principal::user("alice"));
        test(shard, peer)
    });
}

/// One request through decode and dispatch; its decoded response.
async fn ask(shard: &Rc<Shard>, peer: &Peer, version: i16, body: RequestKind) -> ResponseKind {
    let api_key = api_key_of(&body);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("acl-test")));
    let mut frame = BytesMut::new();
    header
        .encode(&mut frame, api_key.request_header_version(version))
        .expect("header");
    body.encode(&mut frame, version).expect("body");
    let (pending, _) = request::dispatch(shard, frame.freeze(), peer).await;
    let mut bytes: Bytes = pending.await.written();
    bytes.advance(4);
    ResponseHeader::decode(&mut bytes, api_key.response_header_version(version)).expect("header");
    ResponseKind::decode(api_key, &mut bytes, version).expect("response")
}

fn api_key_of(body: &RequestKind) -> ApiKey {
    match body {
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::DescribeAcls(_) => ApiKey::DescribeAcls,
        RequestKind::CreateAcls(_) => ApiKey::CreateAcls,
        RequestKind::ListGroups(_) => ApiKey::ListGroups,
        other => panic!("not used here: {other:?}"),
    }
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.into()))
}

async fn produce(shard: &Rc<Shard>, peer: &Peer, topic: &str) -> i16 {
    let batch = build_batch(&TestBatch {
        records: &[(None, b"v")],
        ..TestBatch::default()
    });
    let data = produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![
            produce_request::PartitionProduceData::default().with_records(Some(batch)),
        ]);
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![data]);
    match ask(shard, peer, 9, RequestKind::Produce(request)).await {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
        other => panic!("{other:?}"),
    }
}

async fn fetch(shard: &Rc<Shard>, peer: &Peer, topic: &str) -> i16 {
    let data = fetch_request::FetchTopic::default()
        .with_topic(name(topic))
        .with_partitions(vec![
            fetch_request::FetchPartition::default().with_partition_max_bytes(1 << 20),
        ]);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_bytes(1 << 20)
        .with_topics(vec![data]);
    match ask(shard, peer, 12, RequestKind::Fetch(request)).await {
        ResponseKind::Fetch(r) => r.responses[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// Metadata of `topics` (None: all): (name, error) per listed topic.
async fn metadata(shard: &Rc<Shard>, peer: &Peer, topics: Option<&[&str]>) -> Vec<(String, i16)> {
    let topics = topics.map(|names| {
        names
            .iter()
            .map(|n| metadata_request::MetadataRequestTopic::default().with_name(Some(name(n))))
            .collect()
    });
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    match ask(shard, peer, 11, RequestKind::Metadata(request)).await {
        ResponseKind::Metadata(r) => r
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map_or_else(String::new, |n| n.to_string()),
                    t.error_code,
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn commit(shard: &Rc<Shard>, peer: &Peer, group: &str, topic: &str) -> i16 {
    let data = offset_commit_request::OffsetCommitRequestTopic::default()
        .with_name(name(topic))
        .with_partitions(vec![
            offset_commit_request::OffsetCommitRequestPartition::default().with_committed_offset(1),
        ]);
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![data]);
    match ask(shard, peer, 8, RequestKind::OffsetCommit(request)).await {
        ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_user_allowed_to_write_a_topic_may_not_read_it_or_others() {
    let acls = vec![allow_topic(PLAIN, "User:alice", Operation::Write)];
    as_alice(&[], acls, |shard, peer| async move {
        assert_eq!(produce(&shard, &peer, PLAIN).await, 0);
        assert_eq!(fetch(&shard, &peer, PLAIN).await, TOPIC_AUTH);
        assert_eq!(produce(&shard, &peer, OTHER).await, TOPIC_AUTH);
        assert_eq!(fetch(&shard, &peer, OTHER).await, TOPIC_AUTH);
        // Another user gets nothing.
        peer.set_principal(Principal::user("bob"));
        assert_eq!(produce(&shard, &peer, PLAIN).await, TOPIC_AUTH);
    });
}

#[test]
fn a_prefixed_allow_covers_the_topics_it_prefixes() {
    let prefix = &PLAIN[..2];
    let acls = vec![acl(
        ResourceType::Topic,
        prefix,
        PatternType::Prefixed,
        "User:alice",
        Operation::Read,
        Permission::Allow,
    )];
    as_alice(&[], acls, |shard, peer| async move {
        assert_eq!(fetch(&shard, &peer, PLAIN).await, 0);
        assert_eq!(fetch(&shard, &peer, OTHER).await, TOPIC_AUTH);
        // READ implies DESCRIBE: Metadata lists the prefixed topic only.
        assert_eq!(
            metadata(&shard, &peer, None).await,
            vec![(PLAIN.to_string(), 0)]
        );
    });
}

#[test]
fn a_deny_overrides_an_allow() {
    let acls = vec![
        allow_topic("*", "User:*", Operation::All),
        acl(
            ResourceType::Topic,
            PLAIN,
            PatternType::Literal,
            "User:alice",
            Operation::Write,
            Permission::Deny,
        ),
    ];
    as_alice(&[], acls, |shard, peer| async move {
        assert_eq!(produce(&shard, &peer, PLAIN).await, TOPIC_AUTH);
        assert_eq!(fetch(&shard, &peer, PLAIN).await, 0);
        assert_eq!(produce(&shard, &peer, OTHER).await, 0);
        peer.set_principal(Principal::user("bob"));
        assert_eq!(produce(&shard, &peer, PLAIN).await, 0);
    });
}

#[test]
fn committing_offsets_needs_read_on_the_group_and_the_topic() {
    let group_read = |group: &str| {
        acl(
            ResourceType::Group,
            group,
            PatternType::Literal,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        )
    };
    let acls = vec![
        group_read("readers"),
        group_read("writers"),
        allow_topic(PLAIN, "User:alice", Operation::Read),
        allow_topic(OTHER, "User:alice", Operation::Write),
    ];
    as_alice(&[], acls, |shard, peer| async move {
        assert_eq!(commit(&shard, &peer, "strangers", PLAIN).await, GROUP_AUTH);
        assert_eq!(commit(&shard, &peer, "writers", OTHER).await, TOPIC_AUTH);
        // Authorized: the answer is the coordinator's (this test broker has no offsets topic).
        let allowed = commit(&shard, &peer, "readers", PLAIN).await;
        assert!(![GROUP_AUTH, TOPIC_AUTH].contains(&allowed), "{allowed}");
    });
}

#[test]
fn metadata_lists_only_topics_the_principal_may_describe() {
    let acls = vec![allow_topic(PLAIN, "User:alice", Operation::Describe)];
    as_alice(&[], acls, |shard, peer| async move {
        assert_eq!(
            metadata(&shard, &peer, None).await,
            vec![(PLAIN.to_string(), 0)]
        );
        let named = metadata(&shard, &peer, Some(&[PLAIN, OTHER, "absent"])).await;
        assert_eq!(
            named,
            vec![
                (PLAIN.to_string(), 0),
                (OTHER.to_string(), TOPIC_AUTH),
                ("absent".to_string(), TOPIC_AUTH),
            ]
        );
    });
}

#[test]
fn super_users_are_unrestricted() {
    let deny = vec![acl(
        ResourceType::Topic,
        PLAIN,
        PatternType::Literal,
        "User:alice",
        Operation::All,
        Permission::Deny,
    )];
    as_alice(
        &[("super.users", "User:bob;User:alice")],
        deny,
        |shard, peer| async move {
            assert_eq!(produce(&shard, &peer, PLAIN).await, 0);
            assert_eq!(fetch(&shard, &peer, OTHER).await, 0);
            assert_eq!(metadata(&shard, &peer, None).await.len(), 2);
            let ResponseKind::DescribeAcls(r) =
                ask(&shard, &peer, 2, RequestKind::DescribeAcls(any_acls())).await
            else {
                panic!("not a DescribeAcls response")
            };
            assert_eq!((r.error_code, r.resources.len()), (0, 1));
        },
    );
}

// (One shard per test: a second broker in the same test thread found its log offline.)
#[test]
fn allow_everyone_if_no_acl_found_opens_only_resources_without_acls() {
    let bob_reads = vec![allow_topic(PLAIN, "User:bob", Operation::Read)];
    as_alice(
        &[("allow.everyone.if.no.acl.found", "true")],
        bob_reads,
        |shard, peer| async move {
            assert_eq!(fetch(&shard, &peer, OTHER).await, 0, "no ACL on it");
            assert_eq!(
                fetch(&shard, &peer, PLAIN).await,
                TOPIC_AUTH,
                "bob's ACL on it"
            );
        },
    );
}

fn any_acls() -> DescribeAclsRequest {
    // (The codec's defaults for the nullable filters are empty strings, not null.)
    DescribeAclsRequest::default()
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_resource_type_filter(1)
        .with_pattern_type_filter(1)
        .with_operation(1)
        .with_permission_type(1)
}

#[test]
fn acl_apis_need_cluster_permissions() {
    as_alice(&[], vec![], |shard, peer| async move {
        let ResponseKind::DescribeAcls(r) =
            ask(&shard, &peer, 2, RequestKind::DescribeAcls(any_acls())).await
        else {
            panic!("not a DescribeAcls response")
        };
        assert_eq!(r.error_code, CLUSTER_AUTH);
        let creation = create_acls_request::AclCreation::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_resource_pattern_type(3)
            .with_principal(StrBytes::from_static_str("User:alice"))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(2)
            .with_permission_type(3);
        let request = CreateAclsRequest::default().with_creations(vec![creation]);
        let ResponseKind::CreateAcls(r) =
            ask(&shard, &peer, 2, RequestKind::CreateAcls(request)).await
        else {
            panic!("not a CreateAcls response")
        };
        assert_eq!(r.results[0].error_code, CLUSTER_AUTH);
    });
}

#[test]
fn with_the_authorizer_off_nothing_is_checked() {
    let deny_all = vec![allow_topic(PLAIN, "User:bob", Operation::Read)];
    with_configured_shard(
        |_| {},
        image_with(deny_all),
        |shard, peer| async move {
            assert_eq!(produce(&shard, &peer, PLAIN).await, 0);
            assert_eq!(fetch(&shard, &peer, PLAIN).await, 0);
            assert_eq!(metadata(&shard, &peer, None).await.len(), 2);
            let ResponseKind::DescribeAcls(r) =
                ask(&shard, &peer, 2, RequestKind::DescribeAcls(any_acls())).await
            else {
                panic!("not a DescribeAcls response")
            };
            assert_eq!(r.error_code, ErrorCode::SecurityDisabled.code());
        },
    );
}
