use super::*;

fn binding(
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
            host: WILDCARD.into(),
            operation,
            permission,
        },
    }
}

fn topic_acl(
    name: &str,
    principal: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    binding(
        ResourceType::Topic,
        name,
        PatternType::Literal,
        principal,
        operation,
        permission,
    )
}

fn acls(bindings: impl IntoIterator<Item = AclBinding>) -> Acls {
    Acls::from(bindings.into_iter().collect::<Vec<_>>())
}

fn alice() -> Principal {
    Principal::user("alice")
}

fn may(acls: &Acls, who: &Principal, op: Operation, topic: &str) -> bool {
    acls.authorize(who, "10.0.0.1", op, ResourceType::Topic, topic, false)
}

#[test]
fn an_allow_grants_its_operation_and_no_other() {
    let acls = acls([topic_acl(
        "t",
        "User:alice",
        Operation::Write,
        Permission::Allow,
    )]);
    assert!(may(&acls, &alice(), Operation::Write, "t"));
    assert!(!may(&acls, &alice(), Operation::Read, "t"));
    assert!(!may(&acls, &Principal::user("bob"), Operation::Write, "t"));
    assert!(
        !may(&acls, &alice(), Operation::Write, "u"),
        "another topic"
    );
}

#[test]
fn describe_is_implied_by_read_write_delete_alter_and_all() {
    use Operation::*;
    for op in [Read, Write, Delete, Alter, All] {
        let acls = acls([topic_acl("t", "User:alice", op, Permission::Allow)]);
        assert!(may(&acls, &alice(), Describe, "t"), "{op}");
    }
    for op in [Create, ClusterAction, DescribeConfigs, IdempotentWrite] {
        let acls = acls([topic_acl("t", "User:alice", op, Permission::Allow)]);
        assert!(!may(&acls, &alice(), Describe, "t"), "{op}");
    }
    let acls = acls([topic_acl(
        "t",
        "User:alice",
        AlterConfigs,
        Permission::Allow,
    )]);
    assert!(may(&acls, &alice(), DescribeConfigs, "t"));
    // ALL allows everything.
    let all = self::acls([topic_acl("t", "User:alice", All, Permission::Allow)]);
    assert!(
        Operation::ALL
            .iter()
            .all(|op| may(&all, &alice(), *op, "t"))
    );
}

#[test]
fn deny_wins_over_allow_but_denies_only_its_operation() {
    let acls = acls([
        topic_acl("t", "User:*", Operation::All, Permission::Allow),
        topic_acl("t", "User:alice", Operation::Read, Permission::Deny),
    ]);
    assert!(!may(&acls, &alice(), Operation::Read, "t"));
    assert!(may(&acls, &alice(), Operation::Write, "t"));
    // A denied READ does not deny the DESCRIBE it would imply when allowed.
    assert!(may(&acls, &alice(), Operation::Describe, "t"));
    assert!(may(&acls, &Principal::user("bob"), Operation::Read, "t"));
    let deny_all = self::acls([
        topic_acl("t", "User:alice", Operation::Write, Permission::Allow),
        topic_acl("*", "User:alice", Operation::All, Permission::Deny),
    ]);
    assert!(!may(&deny_all, &alice(), Operation::Write, "t"));
}

#[test]
fn wildcards_and_prefixes_apply() {
    let acls = acls([
        topic_acl("*", "User:*", Operation::Describe, Permission::Allow),
        binding(
            ResourceType::Topic,
            "orders.",
            PatternType::Prefixed,
            "User:alice",
            Operation::Write,
            Permission::Allow,
        ),
    ]);
    assert!(may(
        &acls,
        &Principal::user("anyone"),
        Operation::Describe,
        "x"
    ));
    assert!(may(&acls, &alice(), Operation::Write, "orders.eu"));
    assert!(may(&acls, &alice(), Operation::Write, "orders."));
    assert!(!may(&acls, &alice(), Operation::Write, "orders"));
    assert!(!may(&acls, &alice(), Operation::Write, "x.orders.eu"));
    // A prefix is not a glob: `*` as a prefix is the character.
    let star = self::acls([binding(
        ResourceType::Topic,
        "*",
        PatternType::Prefixed,
        "User:alice",
        Operation::Read,
        Permission::Allow,
    )]);
    assert!(!may(&star, &alice(), Operation::Read, "t"));
    assert!(may(&star, &alice(), Operation::Read, "*t"));
    // Another principal type does not match `User:*`.
    let group_principal = Principal::parse("Group:ops").unwrap();
    assert!(!may(&acls, &group_principal, Operation::Describe, "x"));
}

#[test]
fn hosts_must_match_or_be_the_wildcard() {
    let mut b = topic_acl("t", "User:alice", Operation::Read, Permission::Allow);
    b.entry.host = "10.0.0.2".into();
    let acls = acls([b]);
    assert!(!may(&acls, &alice(), Operation::Read, "t"));
    assert!(acls.authorize(
        &alice(),
        "10.0.0.2",
        Operation::Read,
        ResourceType::Topic,
        "t",
        false
    ));
}

#[test]
fn a_resource_without_acls_follows_allow_everyone_if_no_acl_found() {
    let acls = acls([topic_acl(
        "t",
        "User:bob",
        Operation::Read,
        Permission::Allow,
    )]);
    for allow_if_none in [false, true] {
        let decide = |name| {
            acls.authorize(
                &alice(),
                "h",
                Operation::Read,
                ResourceType::Topic,
                name,
                allow_if_none,
            )
        };
        assert_eq!(decide("free"), allow_if_none);
        // Bob's ACL on `t` makes it a resource with ACLs: alice is refused either way.
        assert!(!decide("t"));
    }
    // Other resource types are separate.
    assert!(!acls.authorize(
        &alice(),
        "h",
        Operation::Read,
        ResourceType::Group,
        "t",
        false
    ));
    assert!(acls.authorize(
        &alice(),
        "h",
        Operation::Read,
        ResourceType::Group,
        "t",
        true
    ));
}

#[test]
fn authorize_any_follows_kafka_authorize_by_resource_type() {
    let write = |name: &str, pattern, permission| {
        binding(
            ResourceType::Topic,
            name,
            pattern,
            "User:alice",
            Operation::Write,
            permission,
        )
    };
    let any = |acls: &Acls| {
        acls.authorize_any(&alice(), "h", Operation::Write, ResourceType::Topic, false)
    };
    assert!(!any(&acls([])));
    assert!(any(&acls([write(
        "t",
        PatternType::Literal,
        Permission::Allow
    )])));
    // Denied by a literal deny of the same name, or a covering prefix.
    assert!(!any(&acls([
        write("t", PatternType::Literal, Permission::Allow),
        write("t", PatternType::Literal, Permission::Deny),
    ])));
    assert!(!any(&acls([
        write("ab", PatternType::Prefixed, Permission::Allow),
        write("a", PatternType::Prefixed, Permission::Deny),
    ])));
    assert!(any(&acls([
        write("ab", PatternType::Literal, Permission::Allow),
        write("abc", PatternType::Prefixed, Permission::Deny),
    ])));
    // A wildcard deny denies all; READ does not count for WRITE.
    assert!(!any(&acls([
        write("t", PatternType::Literal, Permission::Allow),
        write("*", PatternType::Literal, Permission::Deny),
    ])));
    assert!(!any(&acls([topic_acl(
        "t",
        "User:alice",
        Operation::Read,
        Permission::Allow
    )])));
    // With no ACL on an arbitrary name and allow.everyone.if.no.acl.found: allowed.
    assert!(acls([]).authorize_any(&alice(), "h", Operation::Write, ResourceType::Topic, true));
}

#[test]
fn filters_follow_kafka_pattern_semantics() {
    let literal = topic_acl(
        "orders.eu",
        "User:alice",
        Operation::Read,
        Permission::Allow,
    );
    let wildcard = topic_acl("*", "User:alice", Operation::Read, Permission::Allow);
    let prefixed = binding(
        ResourceType::Topic,
        "orders.",
        PatternType::Prefixed,
        "User:alice",
        Operation::Read,
        Permission::Allow,
    );
    let filter = |pattern, name: &str| AclBindingFilter {
        resource_type: Some(ResourceType::Topic),
        name: Some(name.into()),
        pattern,
        ..AclBindingFilter::any()
    };
    let matched = |f: &AclBindingFilter| [&literal, &wildcard, &prefixed].map(|b| f.matches(b));
    assert_eq!(
        matched(&filter(PatternFilter::Match, "orders.eu")),
        [true, true, true]
    );
    assert_eq!(
        matched(&filter(PatternFilter::Any, "orders.eu")),
        [true, false, false]
    );
    assert_eq!(
        matched(&filter(PatternFilter::Any, "orders.")),
        [false, false, true]
    );
    assert_eq!(
        matched(&filter(
            PatternFilter::Exactly(PatternType::Literal),
            "orders."
        )),
        [false, false, false]
    );
    assert_eq!(matched(&AclBindingFilter::any()), [true, true, true]);
    // Entry fields compare exactly.
    let bob = AclBindingFilter {
        principal: Some("User:bob".into()),
        ..AclBindingFilter::any()
    };
    assert!(!bob.matches(&literal));
    let reads = AclBindingFilter {
        operation: Some(Operation::Read),
        permission: Some(Permission::Allow),
        ..AclBindingFilter::any()
    };
    assert!(reads.matches(&literal));
}

#[test]
fn requests_are_validated_as_kafka_does() {
    let ok = AclBinding::from_request(2, "t", 3, "User:a", "*", 3, 3).unwrap();
    assert_eq!(
        ok,
        topic_acl("t", "User:a", Operation::Read, Permission::Allow)
    );
    for (resource_type, name, pattern, principal, op, perm) in [
        (1, "t", 3, "User:a", 3, 3),             // ANY resource type
        (0, "t", 3, "User:a", 3, 3),             // UNKNOWN
        (9, "t", 3, "User:a", 3, 3),             // out of range
        (2, "t", 2, "User:a", 3, 3),             // MATCH pattern
        (2, "t", 1, "User:a", 3, 3),             // ANY pattern
        (2, "t", 3, "User:a", 1, 3),             // ANY operation
        (2, "t", 3, "User:a", 3, 1),             // ANY permission
        (2, "", 3, "User:a", 3, 3),              // empty name
        (2, "t", 3, "alice", 3, 3),              // no principal type
        (4, "other", 3, "User:a", 3, 3),         // cluster of another name
        (4, "kafka-cluster", 4, "User:a", 3, 3), // prefixed cluster
    ] {
        assert!(
            AclBinding::from_request(resource_type, name, pattern, principal, "*", op, perm)
                .is_err(),
            "{resource_type} {name} {pattern} {principal} {op} {perm}"
        );
    }
    let long = "x".repeat(MAX_FIELD_BYTES + 1);
    assert!(AclBinding::from_request(2, &long, 3, "User:a", "*", 3, 3).is_err());
    assert!(AclBinding::from_request(4, CLUSTER_NAME, 3, "User:a", "*", 7, 3).is_ok());
    let filter = AclBindingFilter::from_request(1, None, 2, None, None, 1, 1).unwrap();
    assert_eq!(filter.pattern, PatternFilter::Match);
    assert!(AclBindingFilter::from_request(0, None, 1, None, None, 1, 1).is_err());
    assert!(AclBindingFilter::from_request(1, None, 0, None, None, 1, 1).is_err());
    assert!(AclBindingFilter::from_request(1, None, 1, None, None, 0, 1).is_err());
    assert!(AclBindingFilter::from_request(1, None, 1, None, None, 1, 0).is_err());
}

#[test]
fn the_store_counts_removes_and_serializes_as_a_list() {
    let mut store = acls([
        topic_acl("t", "User:a", Operation::Read, Permission::Allow),
        topic_acl("t", "User:b", Operation::Read, Permission::Allow),
    ]);
    assert!(!store.insert(topic_acl("t", "User:a", Operation::Read, Permission::Allow)));
    assert_eq!(store.len(), 2);
    let json = serde_json::to_value(&store).unwrap();
    assert!(json.is_array());
    assert_eq!(serde_json::from_value::<Acls>(json).unwrap(), store);
    let removed = store.remove_matching(&AclBindingFilter {
        principal: Some("User:a".into()),
        ..AclBindingFilter::any()
    });
    assert_eq!(removed.len(), 1);
    assert_eq!(store.len(), 1);
    store.remove_matching(&AclBindingFilter::any());
    assert!(store.is_empty());
    assert_eq!(store, Acls::default(), "no empty maps left behind");
}

#[test]
fn names_print_and_parse_as_kafka_acls_does() {
    let b = topic_acl("t", "User:a", Operation::ClusterAction, Permission::Deny);
    assert_eq!(
        b.pattern.to_string(),
        "ResourcePattern(resourceType=TOPIC, name=t, patternType=LITERAL)"
    );
    assert_eq!(
        b.entry.to_string(),
        "(principal=User:a, host=*, operation=CLUSTER_ACTION, permissionType=DENY)"
    );
    assert_eq!(
        Operation::parse("ClusterAction"),
        Some(Operation::ClusterAction)
    );
    assert_eq!(Operation::parse("Clusteraction"), None);
    assert_eq!(
        Operation::parse("cluster-action"),
        Some(Operation::ClusterAction)
    );
    assert_eq!(
        Operation::parse("Describe_Configs"),
        Some(Operation::DescribeConfigs)
    );
    assert_eq!(
        ResourceType::parse("transactional-id"),
        Some(ResourceType::TransactionalId)
    );
    assert_eq!(
        parse_super_users("User:a; User:b;").unwrap(),
        vec![Principal::user("a"), Principal::user("b")]
    );
    assert!(parse_super_users("a").is_err());
}
