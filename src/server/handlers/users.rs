//! AlterUserScramCredentials (forwarded to the controller) and DescribeUserScramCredentials
//! (answered from this broker's metadata), KIP-554. They need ALTER and DESCRIBE on the
//! cluster, as in Kafka.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::super::shard::Shard;
use super::admin::{controller, not_available};
use super::authz::Authorizer;
use super::{duplicated, str_bytes};
use crate::cluster::controller::{ControllerRequest, ControllerResponse};
use crate::cluster::topics::TopicError;
use crate::cluster::users::RequestedAlteration;
use crate::protocol::ErrorCode;
use crate::security::acl::Operation;

pub async fn alter(
    shard: &Rc<Shard>,
    request: AlterUserScramCredentialsRequest,
    auth: &Authorizer,
) -> AlterUserScramCredentialsResponse {
    let deletions = request
        .deletions
        .into_iter()
        .map(|d| RequestedAlteration::Delete {
            user: d.name.to_string(),
            mechanism: d.mechanism,
        });
    let upsertions = request
        .upsertions
        .into_iter()
        .map(|u| RequestedAlteration::Upsert {
            user: u.name.to_string(),
            mechanism: u.mechanism,
            iterations: u.iterations,
            salt: u.salt.to_vec(),
            salted_password: u.salted_password.to_vec(),
        });
    let requested: Vec<_> = deletions.chain(upsertions).collect();
    let mut users: Vec<String> = requested.iter().map(|r| r.user().to_string()).collect();
    users.sort();
    users.dedup();
    let refuse_all = |error: TopicError| -> Vec<_> {
        users
            .iter()
            .map(|u| (u.clone(), Err(error.clone())))
            .collect()
    };
    let results = if !auth.cluster(Operation::Alter) {
        let message = "Cluster authorization failed.";
        refuse_all(TopicError::new(
            ErrorCode::ClusterAuthorizationFailed,
            message,
        ))
    } else {
        let request = ControllerRequest::AlterScramCredentials(requested);
        match controller(shard, request).await {
            Some(ControllerResponse::Users(results)) => results,
            _ => refuse_all(not_available()),
        }
    };
    let results = results
        .into_iter()
        .map(|(user, result)| {
            let (code, message) = match result {
                Ok(()) => (0, None),
                Err(e) => (e.code, Some(str_bytes(e.message))),
            };
            AlterUserScramCredentialsResult::default()
                .with_user(str_bytes(user))
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// Every user with credentials when `users` is null; else each named user once (a name
/// asked twice: DUPLICATE_RESOURCE; one without credentials: RESOURCE_NOT_FOUND).
pub fn describe(
    shard: &Shard,
    request: DescribeUserScramCredentialsRequest,
    auth: &Authorizer,
) -> DescribeUserScramCredentialsResponse {
    if !auth.cluster(Operation::Describe) {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(ErrorCode::ClusterAuthorizationFailed.code());
    }
    let meta = shard.metadata();
    let credentials = &meta.scram_credentials;
    let found = |user: &str| {
        credentials.get(user).map(|by_mechanism| {
            by_mechanism
                .iter()
                .map(|(mechanism, c)| {
                    CredentialInfo::default()
                        .with_mechanism(mechanism.wire_type())
                        .with_iterations(c.iterations as i32)
                })
                .collect::<Vec<_>>()
        })
    };
    let result = |user: &str, outcome: Result<Vec<CredentialInfo>, (ErrorCode, &str)>| {
        let r = DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
        match outcome {
            Ok(infos) => r.with_credential_infos(infos),
            Err((code, message)) => r
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(message))),
        }
    };
    let results = match request.users {
        None => credentials
            .keys()
            .map(|user| result(user, Ok(found(user).unwrap_or_default())))
            .collect(),
        Some(asked) => {
            let twice = duplicated(asked.iter().map(|u| u.name.as_str()));
            let mut seen = HashSet::new();
            asked
                .iter()
                .map(|u| u.name.as_str())
                .zip(twice)
                .filter(|(name, _)| seen.insert(*name))
                .map(|(name, twice)| {
                    let outcome = if twice {
                        Err((
                            ErrorCode::DuplicateResource,
                            "Cannot describe SCRAM credentials for the same user twice in a single request",
                        ))
                    } else {
                        found(name).ok_or((
                            ErrorCode::ResourceNotFound,
                            "Attempt to describe a user credential that does not exist",
                        ))
                    };
                    result(name, outcome)
                })
                .collect()
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
