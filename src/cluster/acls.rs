//! How the ACL commands change [`ClusterMetadata`]: deterministic, every binding validated
//! again by every voter (a command is a peer's word).

use std::sync::Arc;

use super::ClusterMetadata;
use super::topics::TopicError;
use crate::protocol::ErrorCode;
use crate::security::acl::{AclBinding, AclBindingFilter, Acls, MAX_ACLS};

/// For serde: whether the metadata holds no ACL (then snapshots omit the field).
pub(super) fn is_empty(acls: &Arc<Acls>) -> bool {
    acls.is_empty()
}

impl ClusterMetadata {
    /// Adds each valid binding (one already there is a success, as in Kafka), up to
    /// [`MAX_ACLS`] in the cluster.
    pub(super) fn create_acls(&mut self, bindings: &[AclBinding]) -> Vec<Result<(), TopicError>> {
        let acls = Arc::make_mut(&mut self.acls);
        bindings
            .iter()
            .map(|binding| {
                binding
                    .validate()
                    .map_err(|e| TopicError::new(ErrorCode::InvalidRequest, e.0))?;
                if acls.len() >= MAX_ACLS {
                    return Err(TopicError::new(
                        ErrorCode::PolicyViolation,
                        format!("the cluster holds the most ACLs it may ({MAX_ACLS})"),
                    ));
                }
                acls.insert(binding.clone());
                Ok(())
            })
            .collect()
    }

    /// Removes, filter after filter, the bindings each selects.
    pub(super) fn delete_acls(&mut self, filters: &[AclBindingFilter]) -> Vec<Vec<AclBinding>> {
        if filters
            .iter()
            .all(|f| self.acls.matching(f).next().is_none())
        {
            // Nothing to remove: the ACLs stay shared with the previous metadata.
            return filters.iter().map(|_| Vec::new()).collect();
        }
        let acls = Arc::make_mut(&mut self.acls);
        filters.iter().map(|f| acls.remove_matching(f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::commands::{CommandOutcome, MetadataCommand};
    use super::*;
    use crate::security::acl::{
        AccessControlEntry, Operation, PatternType, Permission, ResourcePattern, ResourceType,
    };

    fn read(topic: &str, principal: &str) -> AclBinding {
        AclBinding {
            pattern: ResourcePattern {
                resource_type: ResourceType::Topic,
                name: topic.into(),
                pattern_type: PatternType::Literal,
            },
            entry: AccessControlEntry {
                principal: principal.into(),
                host: "*".into(),
                operation: Operation::Read,
                permission: Permission::Allow,
            },
        }
    }

    fn create(bindings: Vec<AclBinding>) -> MetadataCommand {
        MetadataCommand::CreateAcls(bindings)
    }

    #[test]
    fn created_acls_are_stored_once_and_deleted_by_filter() {
        let mut meta = ClusterMetadata::new("c".into());
        let outcome = meta.apply(&create(vec![read("t", "User:a"), read("t", "User:a")]));
        assert_eq!(outcome, CommandOutcome::AclsCreated(vec![Ok(()), Ok(())]));
        meta.apply(&create(vec![read("u", "User:b")]));
        assert_eq!(meta.acls.len(), 2);
        let by_a = AclBindingFilter {
            principal: Some("User:a".into()),
            ..AclBindingFilter::any()
        };
        let outcome = meta.apply(&MetadataCommand::DeleteAcls(vec![
            by_a.clone(),
            by_a,
            AclBindingFilter::any(),
        ]));
        assert_eq!(
            outcome,
            CommandOutcome::AclsDeleted(vec![
                vec![read("t", "User:a")],
                vec![],
                vec![read("u", "User:b")]
            ])
        );
        assert!(meta.acls.is_empty());
    }

    #[test]
    fn invalid_bindings_are_refused_alone_and_change_nothing() {
        let mut meta = ClusterMetadata::new("c".into());
        let mut cluster = read("kafka-cluster", "User:a");
        cluster.pattern.resource_type = ResourceType::Cluster;
        cluster.pattern.pattern_type = PatternType::Prefixed;
        let no_type = read("t", "alice");
        let empty = read("", "User:a");
        let outcome = meta.apply(&create(vec![cluster, no_type, read("t", "User:a"), empty]));
        let CommandOutcome::AclsCreated(results) = outcome else {
            panic!("{outcome:?}")
        };
        let codes: Vec<i16> = results
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.code, |()| 0))
            .collect();
        let invalid = ErrorCode::InvalidRequest.code();
        assert_eq!(codes, vec![invalid, invalid, 0, invalid]);
        assert_eq!(
            meta.acls.iter().collect::<Vec<_>>(),
            vec![read("t", "User:a")]
        );
    }

    #[test]
    fn the_acl_count_is_bounded() {
        let mut meta = ClusterMetadata::new("c".into());
        let many: Vec<AclBinding> = (0..MAX_ACLS)
            .map(|i| read(&format!("t{i}"), "User:a"))
            .collect();
        let outcome = meta.apply(&create(many));
        assert!(outcome.errors().is_empty());
        let outcome = meta.apply(&create(vec![
            read("one-more", "User:a"),
            read("t0", "User:a"),
        ]));
        assert!(
            matches!(&outcome, CommandOutcome::AclsCreated(r)
                if r[0].as_ref().is_err_and(|e| e.code == ErrorCode::PolicyViolation.code())),
            "{outcome:?}"
        );
        assert_eq!(meta.acls.len(), MAX_ACLS);
    }

    #[test]
    fn acls_survive_a_snapshot_and_old_snapshots_read_without_them() {
        let mut meta = ClusterMetadata::new("c".into());
        let plain = serde_json::to_value(&meta).unwrap();
        assert!(plain.get("acls").is_none());
        assert_eq!(
            serde_json::from_value::<ClusterMetadata>(plain).unwrap(),
            meta
        );
        meta.apply(&create(vec![read("t", "User:a")]));
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(
            serde_json::from_slice::<ClusterMetadata>(&json).unwrap(),
            meta
        );
    }

    #[test]
    fn apply_is_deterministic_and_shares_unchanged_acls() {
        let commands = [
            create(vec![read("t", "User:a"), read("u", "User:b")]),
            MetadataCommand::DeleteAcls(vec![AclBindingFilter {
                name: Some("t".into()),
                ..AclBindingFilter::any()
            }]),
        ];
        let (mut a, mut b) = (
            ClusterMetadata::new("c".into()),
            ClusterMetadata::new("c".into()),
        );
        for command in &commands {
            assert_eq!(a.apply(command), b.apply(command));
        }
        assert_eq!(a, b);
        let before = a.clone();
        a.apply(&MetadataCommand::DeleteAcls(vec![AclBindingFilter {
            name: Some("none".into()),
            ..AclBindingFilter::any()
        }]));
        assert!(Arc::ptr_eq(&before.acls, &a.acls));
    }
}
