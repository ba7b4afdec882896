//! ApiVersions: the versions this broker serves.

use kafka_protocol::messages::ApiVersionsResponse;

use crate::protocol::versions;

pub fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_api_keys(versions::advertised())
        .with_finalized_features_epoch(-1)
}
