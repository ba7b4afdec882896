//! Users' SCRAM credentials in the metadata (KIP-554): the checks of an
//! AlterUserScramCredentials request, and the command that applies it on every voter.
//!
//! The request's own consistency (names, mechanisms, iterations, a user named twice) is
//! checked by the proposer before anything is proposed ([`plan_alteration`]); what depends on
//! the metadata (deleting a credential that does not exist) is checked when the committed
//! command is applied, identically on every voter.

use serde::{Deserialize, Serialize};

use super::ClusterMetadata;
use super::topics::TopicError;
use crate::protocol::ErrorCode;
use crate::security::scram::{
    MAX_ITERATIONS, MIN_ITERATIONS, ScramCredential, ScramMechanism, UserScramCredential,
};

/// Longest user name a credential may have: a SASL name travels in a token bounded by
/// `sasl.server.max.receive.size`, and the metadata holds every user.
pub const MAX_USER_NAME_BYTES: usize = 1024;
/// Longest salt kept (Kafka's tools use 32 bytes; the metadata log holds every salt).
pub const MAX_SALT_BYTES: usize = 1024;

/// A credential to set.
pub type ScramUpsertion = UserScramCredential;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScramDeletion {
    pub user: String,
    pub mechanism: ScramMechanism,
}

/// One alteration as a client asked for it: the mechanism as sent on the wire, a salted
/// password for an upsertion (the broker derives the keys and keeps only those).
pub enum RequestedAlteration {
    Delete {
        user: String,
        mechanism: i8,
    },
    Upsert {
        user: String,
        mechanism: i8,
        iterations: i32,
        salt: Vec<u8>,
        salted_password: Vec<u8>,
    },
}

impl RequestedAlteration {
    pub fn user(&self) -> &str {
        match self {
            RequestedAlteration::Delete { user, .. } | RequestedAlteration::Upsert { user, .. } => {
                user
            }
        }
    }
}

/// What a request becomes: the alterations to propose, and the users refused already.
#[derive(Debug, Default)]
pub struct AlterationPlan {
    pub upsertions: Vec<ScramUpsertion>,
    pub deletions: Vec<ScramDeletion>,
    pub refused: Vec<(String, TopicError)>,
}

/// Checks a request as Kafka's controller does: a user altered twice in one request is
/// refused (DUPLICATE_RESOURCE) with all its alterations; an empty or over-long name
/// (UNACCEPTABLE_CREDENTIAL), an unknown mechanism (UNSUPPORTED_SASL_MECHANISM), too few or
/// too many iterations, or an empty salt or salted password are refused.
pub fn plan_alteration(requested: Vec<RequestedAlteration>) -> AlterationPlan {
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for alteration in &requested {
        *counts.entry(alteration.user().to_string()).or_default() += 1;
    }
    let mut plan = AlterationPlan::default();
    let mut duplicates_reported = std::collections::HashSet::new();
    for alteration in requested {
        let user = alteration.user().to_string();
        if counts[&user] > 1 {
            if duplicates_reported.insert(user.clone()) {
                let error = TopicError::new(
                    ErrorCode::DuplicateResource,
                    "A user credential cannot be altered twice in the same request",
                );
                plan.refused.push((user, error));
            }
            continue;
        }
        match check(alteration) {
            Ok(Checked::Upsert(u)) => plan.upsertions.push(u),
            Ok(Checked::Delete(d)) => plan.deletions.push(d),
            Err(error) => plan.refused.push((user, error)),
        }
    }
    plan
}

enum Checked {
    Upsert(ScramUpsertion),
    Delete(ScramDeletion),
}

fn check(alteration: RequestedAlteration) -> Result<Checked, TopicError> {
    let unacceptable = |message: &str| TopicError::new(ErrorCode::UnacceptableCredential, message);
    let (user, wire_mechanism) = match &alteration {
        RequestedAlteration::Delete { user, mechanism }
        | RequestedAlteration::Upsert {
            user, mechanism, ..
        } => (user.clone(), *mechanism),
    };
    if user.is_empty() {
        return Err(unacceptable("Username must not be empty"));
    }
    if user.len() > MAX_USER_NAME_BYTES {
        return Err(unacceptable("Username is too long"));
    }
    let mechanism = ScramMechanism::from_wire_type(wire_mechanism).ok_or_else(|| {
        TopicError::new(
            ErrorCode::UnsupportedSaslMechanism,
            "Unknown SCRAM mechanism",
        )
    })?;
    match alteration {
        RequestedAlteration::Delete { .. } => {
            Ok(Checked::Delete(ScramDeletion { user, mechanism }))
        }
        RequestedAlteration::Upsert {
            iterations,
            salt,
            salted_password,
            ..
        } => {
            if iterations < MIN_ITERATIONS as i32 {
                return Err(unacceptable("Too few iterations"));
            }
            if iterations > MAX_ITERATIONS as i32 {
                return Err(unacceptable("Too many iterations"));
            }
            if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
                return Err(unacceptable("The salt must be 1 to 1024 bytes"));
            }
            // A salted password is one PBKDF2 output: the mechanism's hash length.
            if salted_password.len() != mechanism.hash_len() {
                return Err(unacceptable(&format!(
                    "The salted password must be {} bytes for {mechanism}",
                    mechanism.hash_len()
                )));
            }
            let credential = ScramCredential::from_salted_password(
                mechanism,
                salt,
                &salted_password,
                iterations as u32,
            );
            Ok(Checked::Upsert(ScramUpsertion {
                user,
                mechanism,
                credential,
            }))
        }
    }
}

impl ClusterMetadata {
    /// Applies a committed alteration; one result per user. Deleting a credential that does
    /// not exist is refused (RESOURCE_NOT_FOUND). A bootstrap upsertion (`--add-scram`) only
    /// adds a credential the user lacks.
    pub(super) fn alter_scram_credentials(
        &mut self,
        upsertions: &[ScramUpsertion],
        deletions: &[ScramDeletion],
        bootstrap: bool,
    ) -> Vec<(String, Result<(), TopicError>)> {
        let mut results = Vec::with_capacity(upsertions.len() + deletions.len());
        for d in deletions {
            let removed = self
                .scram_credentials
                .get_mut(&d.user)
                .and_then(|by_mechanism| by_mechanism.remove(&d.mechanism));
            let result = match removed {
                Some(_) => Ok(()),
                None => Err(TopicError::new(
                    ErrorCode::ResourceNotFound,
                    "Attempt to delete a user credential that does not exist",
                )),
            };
            if self
                .scram_credentials
                .get(&d.user)
                .is_some_and(|m| m.is_empty())
            {
                self.scram_credentials.remove(&d.user);
            }
            results.push((d.user.clone(), result));
        }
        for u in upsertions {
            let by_mechanism = self.scram_credentials.entry(u.user.clone()).or_default();
            if !(bootstrap && by_mechanism.contains_key(&u.mechanism)) {
                by_mechanism.insert(u.mechanism, u.credential.clone());
            }
            results.push((u.user.clone(), Ok(())));
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(user: &str, mechanism: i8, iterations: i32) -> RequestedAlteration {
        RequestedAlteration::Upsert {
            user: user.into(),
            mechanism,
            iterations,
            salt: vec![7; 16],
            salted_password: ScramMechanism::Sha256.salted_password(b"pw", &[7; 16], 4096),
        }
    }

    fn codes(plan: &AlterationPlan) -> Vec<(String, i16)> {
        plan.refused
            .iter()
            .map(|(u, e)| (u.clone(), e.code))
            .collect()
    }

    #[test]
    fn requests_are_checked_as_kafka_does() {
        let plan = plan_alteration(vec![
            upsert("ok", 1, 4096),
            upsert("", 1, 4096),
            upsert("few", 1, 4095),
            upsert("many", 1, 16385),
            upsert("mech", 3, 4096),
            // A SHA-256 salted password is too short for SHA-512.
            upsert("short", 2, 4096),
            upsert("twice", 1, 4096),
            RequestedAlteration::Delete {
                user: "twice".into(),
                mechanism: 2,
            },
            RequestedAlteration::Delete {
                user: "gone".into(),
                mechanism: 2,
            },
        ]);
        assert_eq!(plan.upsertions.len(), 1);
        assert_eq!(plan.upsertions[0].user, "ok");
        assert_eq!(plan.deletions.len(), 1);
        assert_eq!(
            codes(&plan),
            vec![
                ("".into(), ErrorCode::UnacceptableCredential.code()),
                ("few".into(), ErrorCode::UnacceptableCredential.code()),
                ("many".into(), ErrorCode::UnacceptableCredential.code()),
                ("mech".into(), ErrorCode::UnsupportedSaslMechanism.code()),
                ("short".into(), ErrorCode::UnacceptableCredential.code()),
                ("twice".into(), ErrorCode::DuplicateResource.code()),
            ]
        );
    }

    #[test]
    fn the_broker_keeps_keys_not_the_salted_password() {
        let plan = plan_alteration(vec![upsert("alice", 1, 4096)]);
        let credential = &plan.upsertions[0].credential;
        let expected =
            ScramCredential::from_password(ScramMechanism::Sha256, b"pw", vec![7; 16], 4096);
        assert_eq!(credential, &expected);
        assert!(credential.matches_password(ScramMechanism::Sha256, b"pw"));
    }

    #[test]
    fn deletions_need_the_credential_and_bootstrap_never_overwrites() {
        let mut meta = ClusterMetadata::new("c".into());
        let credential = |pw: &[u8]| {
            ScramCredential::from_password(ScramMechanism::Sha512, pw, vec![1; 8], 4096)
        };
        let set = |pw: &[u8]| ScramUpsertion {
            user: "admin".into(),
            mechanism: ScramMechanism::Sha512,
            credential: credential(pw),
        };
        meta.alter_scram_credentials(&[set(b"first")], &[], true);
        meta.alter_scram_credentials(&[set(b"changed")], &[], false);
        // A later bootstrap (another voter's first start) leaves the change alone.
        meta.alter_scram_credentials(&[set(b"first")], &[], true);
        let kept = meta
            .scram_credential("admin", ScramMechanism::Sha512)
            .unwrap();
        assert!(kept.matches_password(ScramMechanism::Sha512, b"changed"));

        let delete = ScramDeletion {
            user: "admin".into(),
            mechanism: ScramMechanism::Sha512,
        };
        let results = meta.alter_scram_credentials(&[], std::slice::from_ref(&delete), false);
        assert_eq!(results, vec![("admin".into(), Ok(()))]);
        assert!(meta.scram_credentials.is_empty());
        let again = meta.alter_scram_credentials(&[], &[delete], false);
        assert_eq!(
            again[0].1.as_ref().unwrap_err().code,
            ErrorCode::ResourceNotFound.code()
        );
    }
}
