//! Ids too long for the offsets records (issue 10): their int16 string lengths used to wrap,
//! and the ids read back wrong after a restart or failover. The longest id a record holds
//! round-trips; one byte more is refused with Kafka's error, never stored.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, JoinGroupResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::common::*;

const INVALID_GROUP_ID: i16 = 24;
const INVALID_REQUEST: i16 = 42;
/// The longest string an offsets record holds: its length is an int16.
const LONGEST: usize = i16::MAX as usize;
/// JoinGroup v7: flexible, so its strings may be longer than an int16 length allows.
const JOIN_VERSION: i16 = 7;

/// JoinGroup sent with the request header's client id set to `client_id`.
fn join_as_client(
    addr: SocketAddr,
    client_id: &str,
    req: &kafka_protocol::messages::JoinGroupRequest,
) -> JoinGroupResponse {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::JoinGroup as i16;
    header.request_api_version = JOIN_VERSION;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_string(client_id.to_string()));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(
            &mut buf,
            ApiKey::JoinGroup.request_header_version(JOIN_VERSION),
        )
        .unwrap();
    req.encode(&mut buf, JOIN_VERSION).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let mut c = RawClient::connect(addr);
    c.send_raw(&buf).unwrap();
    let mut resp = c.read_frame().unwrap().expect("a JoinGroup answer");
    ResponseHeader::decode(
        &mut resp,
        ApiKey::JoinGroup.response_header_version(JOIN_VERSION),
    )
    .unwrap();
    JoinGroupResponse::decode(&mut resp, JOIN_VERSION).unwrap()
}

#[test]
fn ids_too_long_for_a_record_are_refused_and_the_longest_survive_a_restart() {
    let _serial = serial();
    let mut broker = Broker::start(group_broker_opts());
    let topic = "long-ids";
    create_topic(&broker.bootstrap(), topic, 1);

    let longest = "g".repeat(LONGEST);
    let (_, coord) = wait_coordinator(
        "coordinator of the longest group id",
        &[broker.addr()],
        &longest,
        GROUP_DEADLINE,
        |_| true,
    );
    poll_until(
        "a commit under the longest group id",
        GROUP_DEADLINE,
        || match offset_commit(coord, &longest, -1, "", topic, &[(0, 7)])?[..] {
            [NONE] => Ok(()),
            ref codes => Err(format!("errors {codes:?}")),
        },
    );
    broker.restart();
    wait_offsets(
        "the longest group id's offset after a restart",
        coord,
        &longest,
        topic,
        &[7],
    );

    let too_long = "g".repeat(LONGEST + 1);
    assert_eq!(
        offset_commit(coord, &too_long, -1, "", topic, &[(0, 7)]).unwrap(),
        vec![INVALID_GROUP_ID],
        "OffsetCommit of a group id one byte too long"
    );
    let join: JoinGroupResponse = call(
        coord,
        ApiKey::JoinGroup,
        JOIN_VERSION,
        &join_group_req(&too_long, "", 10_000, topic),
    );
    assert_eq!(
        join.error_code, INVALID_GROUP_ID,
        "JoinGroup of that group id"
    );

    // A member id is built from the instance id or the client id: too long ones are refused.
    let mut req = join_group_req("long-ids-group", "", 10_000, topic);
    req.group_instance_id = Some(sb(&"i".repeat(LONGEST + 1)));
    let join: JoinGroupResponse = call(coord, ApiKey::JoinGroup, JOIN_VERSION, &req);
    assert_eq!(join.error_code, INVALID_REQUEST, "an over-long instance id");
    let req = join_group_req("long-ids-group", "", 10_000, topic);
    let join = join_as_client(coord, &"c".repeat(LONGEST), &req);
    assert_eq!(join.error_code, INVALID_REQUEST, "an over-long member id");
    // Ordinary ids still join (a new dynamic member is first asked to rejoin with its id).
    let join = join_as_client(coord, "ordinary-client", &req);
    assert_eq!(join.error_code, MEMBER_ID_REQUIRED, "an ordinary join");
    broker.assert_serving();
}
