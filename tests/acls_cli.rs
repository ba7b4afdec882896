//! `corelog acls` (kafka-acls.sh's flags and output) run as the built binary against a real
//! broker with the authorizer on. Connections are `User:ANONYMOUS` (PLAINTEXT).

mod common;

use std::time::Duration;

use common::*;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;

fn acls(bootstrap: &str, args: &[&str]) -> Run {
    let mut all = vec!["acls", "--bootstrap-server", bootstrap];
    all.extend_from_slice(args);
    corelog(&all)
}

fn produce(broker: &Broker, topic: &str) -> i16 {
    let batch = record_batch(1, &[(None, Some(b"v".as_slice()))]);
    broker.raw().produce_one(topic, 0, batch).0
}

#[test]
fn a_deny_added_with_the_cli_refuses_produce_until_removed() {
    // No ACL at all yet: ANONYMOUS may manage them (allow.everyone.if.no.acl.found).
    let broker = Broker::start(
        BrokerOpts::new()
            .set("authorizer.enabled", "true")
            .set("allow.everyone.if.no.acl.found", "true"),
    );
    let bs = broker.bootstrap();
    assert_eq!(broker.raw().create_topic("guarded", 1, 1), 0);
    wait_for(
        "topic led",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (produce(&broker, "guarded") == 0).then_some(()),
    );
    let anonymous = "User:ANONYMOUS";
    let added = acls(
        &bs,
        &[
            "--add",
            "--allow-principal",
            anonymous,
            "--deny-principal",
            anonymous,
            "--operation",
            "Write",
            "--topic",
            "guarded",
        ],
    );
    let pattern = "`ResourcePattern(resourceType=TOPIC, name=guarded, patternType=LITERAL)`";
    let allow = "(principal=User:ANONYMOUS, host=*, operation=WRITE, permissionType=ALLOW)";
    let deny = "(principal=User:ANONYMOUS, host=*, operation=WRITE, permissionType=DENY)";
    assert_eq!(
        added.ok(),
        format!(
            "Adding ACLs for resource {pattern}: \n \t{allow}\n\t{deny} \n\n\
             Current ACLs for resource {pattern}: \n \t{deny}\n\t{allow} \n\n"
        )
    );
    // (Listed in the broker's order: denies first.) The deny wins over the allow.
    assert_eq!(produce(&broker, "guarded"), TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(
        acls(&bs, &["--list", "--topic", "guarded"]).ok(),
        format!("Current ACLs for resource {pattern}: \n \t{deny}\n\t{allow} \n\n")
    );
    let removed = acls(
        &bs,
        &[
            "--remove",
            "--force",
            "--deny-principal",
            anonymous,
            "--operation",
            "Write",
            "--topic",
            "guarded",
        ],
    );
    assert_eq!(
        removed.ok(),
        format!("Current ACLs for resource {pattern}: \n \t{allow} \n\n")
    );
    assert_eq!(produce(&broker, "guarded"), 0);
    // A topic without ACLs stays open; a bad flag is an error naming it.
    assert!(
        acls(&bs, &["--list", "--operation", "Fly"])
            .failed()
            .contains("Fly")
    );
}

#[test]
fn a_super_user_is_unrestricted_and_the_authorizer_off_refuses_acl_management() {
    let broker = Broker::start(
        BrokerOpts::new()
            .set("authorizer.enabled", "true")
            .set("super.users", "User:admin;User:ANONYMOUS"),
    );
    assert_eq!(broker.raw().create_topic("open", 1, 1), 0);
    wait_for(
        "topic led",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (produce(&broker, "open") == 0).then_some(()),
    );
    let bs = broker.bootstrap();
    acls(
        &bs,
        &[
            "--add",
            "--deny-principal",
            "User:ANONYMOUS",
            "--topic",
            "open",
        ],
    )
    .ok();
    assert_eq!(produce(&broker, "open"), 0, "super users ignore ACLs");
    drop(broker);
    let off = Broker::start(BrokerOpts::new());
    let refused = acls(&off.bootstrap(), &["--list"]);
    assert!(
        refused.failed().contains("SECURITY_DISABLED"),
        "{}",
        refused.stderr
    );
}
