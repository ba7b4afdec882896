//! Version negotiation: ApiVersions, and the highest version both sides speak.

use std::collections::HashMap;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::protocol::StrBytes;

use super::error::{Error, Result, check};
use super::wire::{CLIENT_ID, Conn};

/// API versions a broker advertises: API key -> (min, max).
#[derive(Clone, Debug, Default)]
pub struct Versions(pub HashMap<i16, (i16, i16)>);

impl Versions {
    /// The broker's range for `api`, if it advertises it.
    pub fn range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.0.get(&(api as i16)).copied()
    }

    pub fn supports(&self, api: ApiKey) -> bool {
        self.range(api).is_some()
    }

    /// Highest version both sides support, within `[ours_min, ours_max]`.
    pub fn pick(&self, api: ApiKey, ours_min: i16, ours_max: i16) -> Result<i16> {
        let (bmin, bmax) = self.range(api).ok_or(Error::UnsupportedApi { api })?;
        let v = bmax.min(ours_max);
        if v < bmin.max(ours_min) {
            return Err(Error::NoCommonVersion {
                api,
                broker: (bmin, bmax),
                ours: (ours_min, ours_max),
            });
        }
        Ok(v)
    }

    /// Highest version both sides support, "our" side being every version the codec knows.
    pub fn negotiate(&self, api: ApiKey) -> Result<i16> {
        let ours = api.valid_versions();
        self.pick(api, ours.min, ours.max)
    }
}

/// ApiVersions v3, falling back to v0 on a new connection when the broker does not take v3.
pub fn api_versions(conn: &mut Conn) -> Result<Versions> {
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
        .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
    let resp: ApiVersionsResponse =
        match conn.call::<_, ApiVersionsResponse>(ApiKey::ApiVersions, 3, &req) {
            Ok(r) if r.error_code == 0 => r,
            // UNSUPPORTED_VERSION (35) or an undecodable reply: fall back to v0.
            _ => {
                *conn = Conn::connect(&conn.addr.clone())?;
                conn.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?
            }
        };
    check(resp.error_code, None, None)?;
    Ok(Versions(
        resp.api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_highest_common() {
        let v = Versions([(19, (2, 7)), (37, (0, 3))].into_iter().collect());
        assert_eq!(v.pick(ApiKey::CreateTopics, 2, 5).unwrap(), 5);
        assert_eq!(v.pick(ApiKey::CreateTopics, 0, 9).unwrap(), 7);
        assert_eq!(v.negotiate(ApiKey::CreatePartitions).unwrap(), 3);
        assert!(matches!(
            v.pick(ApiKey::CreateTopics, 0, 1),
            Err(Error::NoCommonVersion { .. })
        ));
        let e = v.pick(ApiKey::DeleteTopics, 1, 6).unwrap_err();
        assert!(matches!(e, Error::UnsupportedApi { .. }));
        assert!(e.to_string().contains("not supported by the broker"), "{e}");
    }
}
