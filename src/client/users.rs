//! AlterUserScramCredentials and DescribeUserScramCredentials (KIP-554), as Kafka's admin
//! client sends them: the password is salted and hashed here; the broker gets the salted
//! password and keeps only the keys derived from it.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    AlterUserScramCredentialsRequest, ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResponse;
use kafka_protocol::messages::describe_user_scram_credentials_request::{
    DescribeUserScramCredentialsRequest, UserName,
};
use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResponse;
use kafka_protocol::protocol::StrBytes;

use super::error::{Error, Result, check};
use super::versions::Versions;
use super::wire::Conn;
use crate::security::scram::ScramMechanism;

/// A change to one user's credentials.
pub enum ScramAlteration {
    Upsert {
        user: String,
        mechanism: ScramMechanism,
        password: String,
        iterations: i32,
    },
    Delete {
        user: String,
        mechanism: ScramMechanism,
    },
}

/// One user's credentials as DescribeUserScramCredentials lists them: mechanism and
/// iterations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    pub user: String,
    pub credentials: Vec<(ScramMechanism, i32)>,
}

/// Per user named (in the broker's order): done, or the broker's error for that user.
pub(crate) fn alter(
    conn: &mut Conn,
    versions: &Versions,
    alterations: &[ScramAlteration],
) -> Result<Vec<(String, Result<()>)>> {
    let version = versions.negotiate(ApiKey::AlterUserScramCredentials)?;
    let name = |u: &str| StrBytes::from_string(u.to_string());
    let mut request = AlterUserScramCredentialsRequest::default();
    for alteration in alterations {
        match alteration {
            ScramAlteration::Upsert {
                user,
                mechanism,
                password,
                iterations,
            } => {
                let salt = rand::random::<[u8; 32]>().to_vec();
                let rounds = u32::try_from(*iterations).unwrap_or(0);
                let salted = mechanism.salted_password(password.as_bytes(), &salt, rounds);
                request.upsertions.push(
                    ScramCredentialUpsertion::default()
                        .with_name(name(user))
                        .with_mechanism(mechanism.wire_type())
                        .with_iterations(*iterations)
                        .with_salt(Bytes::from(salt))
                        .with_salted_password(Bytes::from(salted)),
                );
            }
            ScramAlteration::Delete { user, mechanism } => request.deletions.push(
                ScramCredentialDeletion::default()
                    .with_name(name(user))
                    .with_mechanism(mechanism.wire_type()),
            ),
        }
    }
    let response: AlterUserScramCredentialsResponse =
        conn.call(ApiKey::AlterUserScramCredentials, version, &request)?;
    Ok(response
        .results
        .into_iter()
        .map(|r| {
            let user = r.user.to_string();
            let result = check(
                r.error_code,
                r.error_message.map(|m| m.to_string()),
                Some(&user),
            );
            (user, result)
        })
        .collect())
}

/// Every user with credentials (`users` = None), or the named ones.
pub(crate) fn describe(
    conn: &mut Conn,
    versions: &Versions,
    users: Option<&[String]>,
) -> Result<Vec<(String, Result<UserCredentials>)>> {
    let version = versions.negotiate(ApiKey::DescribeUserScramCredentials)?;
    let request = DescribeUserScramCredentialsRequest::default().with_users(users.map(|names| {
        names
            .iter()
            .map(|n| UserName::default().with_name(StrBytes::from_string(n.clone())))
            .collect()
    }));
    let response: DescribeUserScramCredentialsResponse =
        conn.call(ApiKey::DescribeUserScramCredentials, version, &request)?;
    check(
        response.error_code,
        response.error_message.map(|m| m.to_string()),
        None,
    )?;
    Ok(response
        .results
        .into_iter()
        .map(|r| {
            let user = r.user.to_string();
            let result = check(
                r.error_code,
                r.error_message.map(|m| m.to_string()),
                Some(&user),
            )
            .and_then(|()| {
                let credentials = r
                    .credential_infos
                    .iter()
                    .map(|c| {
                        ScramMechanism::from_wire_type(c.mechanism)
                            .map(|m| (m, c.iterations))
                            .ok_or_else(|| {
                                Error::Protocol(format!("unknown SCRAM mechanism {}", c.mechanism))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(UserCredentials {
                    user: user.clone(),
                    credentials,
                })
            });
            (user, result)
        })
        .collect())
}
