//! Request decoding and response encoding around the `kafka-protocol` codecs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::versions;

/// A decoded request: its header and body.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
    /// The length of the frame it was decoded from (its byte fields are slices of it).
    pub frame_len: usize,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Why a frame could not become a [`Request`].
#[derive(Debug, PartialEq)]
pub enum DecodeError {
    /// Too short for a header, or an API key Kafka does not define: the protocol cannot
    /// continue, so the connection is closed (as Kafka does).
    Unreadable,
    /// A known API at a version this broker does not serve: answered with
    /// UNSUPPORTED_VERSION (for ApiVersions, with the broker's ranges).
    UnsupportedVersion {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    /// A served version whose header or body does not parse: the connection is closed.
    Malformed { api_key: ApiKey, reason: String },
}

/// Decodes one frame (the bytes after the length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    let frame_len = frame.len();
    if frame_len < 8 {
        return Err(DecodeError::Unreadable);
    }
    let mut fixed = &frame[..8];
    let raw_key = fixed.get_i16();
    let version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api_key = ApiKey::try_from(raw_key).map_err(|_| DecodeError::Unreadable)?;
    if !versions::is_supported(api_key, version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version,
            correlation_id,
        });
    }
    let malformed = |e: anyhow::Error| DecodeError::Malformed {
        api_key,
        reason: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(api_key, &mut frame, version).map_err(malformed)?;
    Ok(Request {
        api_key,
        header,
        body,
        frame_len,
    })
}

/// Encodes a response with its length prefix and header. ApiVersions always answers with
/// header v0, even to a flexible request, so that a client can read it before it knows
/// which versions the broker has.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let (header, header_version) = response_header(api_key, version, correlation_id);
    let size = header.compute_size(header_version)? + body_size(body, version)?;
    super::frame::encode_frame(size, |buf| {
        header.encode(buf, header_version)?;
        body.encode(buf, version)
    })
}

/// A response's header and its version.
pub(super) fn response_header(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> (ResponseHeader, i16) {
    let header_version = match api_key {
        ApiKey::ApiVersions => 0,
        _ => api_key.response_header_version(version),
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    (header, header_version)
}

fn body_size(body: &ResponseKind, version: i16) -> anyhow::Result<usize> {
    // ResponseKind has no compute_size of its own; encoding into a scratch buffer would
    // double the work, so ask the inner message.
    macro_rules! size {
        ($($kind:ident),*) => {
            match body {
                $(ResponseKind::$kind(m) => m.compute_size(version),)*
                other => anyhow::bail!("response kind not served: {other:?}"),
            }
        };
    }
    size!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        InitProducerId,
        DescribeConfigs,
        CreatePartitions,
        OffsetForLeaderEpoch,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        DescribeGroups,
        ListGroups,
        DeleteGroups,
        OffsetDelete,
        SaslHandshake,
        SaslAuthenticate,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        CreateAcls,
        DescribeAcls,
        DeleteAcls
    )
}

/// The answer to a known API at an unserved version: the response header and an
/// UNSUPPORTED_VERSION error code, after which the broker closes the connection (the client
/// cannot parse a body of a version it invented). ApiVersions gets a full v0 response.
pub fn unsupported_version_response(api_key: ApiKey, correlation_id: i32) -> Bytes {
    use kafka_protocol::messages::ApiVersionsResponse;
    let code = kafka_protocol::error::ResponseError::UnsupportedVersion.code();
    if api_key == ApiKey::ApiVersions {
        let body = ApiVersionsResponse::default()
            .with_error_code(code)
            .with_api_keys(versions::advertised());
        if let Ok(bytes) =
            encode_response(api_key, 0, correlation_id, &ResponseKind::ApiVersions(body))
        {
            return bytes;
        }
    }
    let mut buf = BytesMut::with_capacity(10);
    buf.put_i32(6);
    buf.put_i32(correlation_id);
    buf.put_i16(code);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;
    use proptest::prelude::*;

    fn frame(key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some("t".into()));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_a_served_request() {
        let req = decode_request(frame(ApiKey::Metadata, 11, &MetadataRequest::default())).unwrap();
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.header.correlation_id, 7);
        assert!(matches!(req.body, RequestKind::Metadata(_)));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(
            decode_request(Bytes::from_static(b"abc")).err(),
            Some(DecodeError::Unreadable)
        );
        let unknown = Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(decode_request(unknown).err(), Some(DecodeError::Unreadable));
        let future = frame(ApiKey::Metadata, 11, &MetadataRequest::default());
        let mut bytes = BytesMut::from(&future[..]);
        bytes[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert_eq!(
            decode_request(bytes.freeze()).err(),
            Some(DecodeError::UnsupportedVersion {
                api_key: ApiKey::Metadata,
                version: 99,
                correlation_id: 7
            })
        );
    }

    #[test]
    fn forged_array_count_is_an_error_not_an_abort() {
        // Metadata v1: topics array count 2^31-1 with nothing behind it.
        let mut bytes =
            BytesMut::from(&frame(ApiKey::Metadata, 1, &MetadataRequest::default())[..]);
        let len = bytes.len();
        bytes[len - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_request(bytes.freeze()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn random_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256), key in 0i16..70, version in 0i16..14) {
            let mut buf = BytesMut::new();
            buf.put_i16(key);
            buf.put_i16(version);
            buf.put_i32(1);
            buf.extend_from_slice(&body);
            let _ = decode_request(buf.freeze());
        }

        #[test]
        fn mutated_frames_never_panic(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8)) {
            let mut bytes = BytesMut::from(&frame(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(None))[..]);
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            let _ = decode_request(bytes.freeze());
        }
    }
}
