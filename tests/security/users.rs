//! SCRAM users: `serve --add-scram` on a new cluster, `corelog users` (AlterUserScramCredentials
//! and DescribeUserScramCredentials) against a live broker, Kafka's errors for bad requests,
//! and the credentials surviving a restart (they live in the metadata log).

use std::time::Duration;

use super::common::*;
use corelog::client::{Client, ScramAlteration};
use corelog::security::scram::ScramMechanism;
use kafka_protocol::ResponseError;

fn users(bootstrap: &str, args: &[&str]) -> Run {
    let mut all = vec!["users", "--bootstrap-server", bootstrap];
    all.extend_from_slice(args);
    corelog(&all)
}

fn listing(bootstrap: &str) -> String {
    users(bootstrap, &["--list"]).ok().to_string()
}

#[test]
fn first_user_created_and_users_managed_with_the_cli() {
    let mut broker = Broker::start(
        BrokerOpts::new()
            .arg("--add-scram")
            .arg("SCRAM-SHA-256=[name=admin,password=admin-secret]")
            .arg("--add-scram")
            .arg("SCRAM-SHA-512=[name=admin,password=admin-secret,iterations=8192]"),
    );
    let bs = broker.bootstrap();
    // The bootstrap is committed after registration: poll until it shows.
    wait_for(
        "the bootstrap user",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || listing(&bs).contains("'admin'").then_some(()),
    );
    assert_eq!(
        listing(&bs),
        "SCRAM credential configs for user-principal 'admin' are \
         SCRAM-SHA-256=iterations=4096, SCRAM-SHA-512=iterations=8192\n"
    );

    let out = users(&bs, &["--create", "--user", "alice", "--password", "pw"]);
    assert_eq!(out.ok(), "Completed updating config for user alice.\n");
    let out = users(
        &bs,
        &[
            "--create",
            "--user",
            "bob",
            "--password",
            "pw",
            "--mechanism",
            "SCRAM-SHA-512",
            "--iterations",
            "5000",
        ],
    );
    assert_eq!(out.ok(), "Completed updating config for user bob.\n");
    let all = listing(&bs);
    assert!(
        all.contains("'alice' are SCRAM-SHA-256=iterations=4096, SCRAM-SHA-512=iterations=4096\n"),
        "{all}"
    );
    assert!(
        all.contains("'bob' are SCRAM-SHA-512=iterations=5000\n"),
        "{all}"
    );
    let one = users(&bs, &["--list", "--user", "bob"]);
    assert_eq!(
        one.ok(),
        "SCRAM credential configs for user-principal 'bob' are SCRAM-SHA-512=iterations=5000\n"
    );

    // Kafka's refusals.
    let few = users(
        &bs,
        &[
            "--create",
            "--user",
            "c",
            "--password",
            "x",
            "--iterations",
            "10",
        ],
    );
    assert!(
        few.failed().contains("Too few iterations"),
        "{}",
        few.failed()
    );
    let unknown = users(&bs, &["--list", "--user", "nobody"]);
    assert!(
        unknown.failed().contains("RESOURCE_NOT_FOUND"),
        "{}",
        unknown.failed()
    );

    let out = users(&bs, &["--delete", "--user", "alice"]);
    assert_eq!(out.ok(), "Completed updating config for user alice.\n");
    assert!(!listing(&bs).contains("'alice'"));

    // Credentials are in the metadata log: a restart keeps them, and the --add-scram of an
    // existing cluster is ignored (it would not reset a changed password either).
    broker.restart();
    let after = listing(&bs);
    assert!(
        after.contains("'admin' are SCRAM-SHA-256=iterations=4096"),
        "{after}"
    );
    assert!(
        after.contains("'bob' are SCRAM-SHA-512=iterations=5000"),
        "{after}"
    );
    assert!(broker.log().contains("--add-scram ignored"));
}

#[test]
fn a_request_naming_a_user_twice_or_deleting_nothing_gets_kafkas_errors() {
    let broker = Broker::start(BrokerOpts::new());
    let mut client = Client::bootstrap(&broker.bootstrap()).unwrap();
    let upsert = |user: &str, mechanism| ScramAlteration::Upsert {
        user: user.into(),
        mechanism,
        password: "pw".into(),
        iterations: 4096,
    };
    let results = client
        .alter_scram_credentials(&[
            upsert("twice", ScramMechanism::Sha256),
            upsert("twice", ScramMechanism::Sha512),
            ScramAlteration::Delete {
                user: "ghost".into(),
                mechanism: ScramMechanism::Sha256,
            },
            upsert("fine", ScramMechanism::Sha256),
        ])
        .unwrap();
    let error_of = |user: &str| {
        results
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, r)| r.as_ref().err().and_then(|e| e.kafka()))
            .unwrap()
    };
    assert_eq!(error_of("twice"), Some(ResponseError::DuplicateResource));
    assert_eq!(error_of("ghost"), Some(ResponseError::ResourceNotFound));
    assert_eq!(error_of("fine"), None);
    let described = client.describe_scram_credentials(None).unwrap();
    let names: Vec<&str> = described.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(names, vec!["fine"]);
    // Describe: a user named twice is answered once, DUPLICATE_RESOURCE.
    let asked = ["fine".to_string(), "fine".into(), "nobody".into()];
    let described = client.describe_scram_credentials(Some(&asked)).unwrap();
    let errors: Vec<(&str, Option<ResponseError>)> = described
        .iter()
        .map(|(u, r)| (u.as_str(), r.as_ref().err().and_then(|e| e.kafka())))
        .collect();
    assert_eq!(
        errors,
        vec![
            ("fine", Some(ResponseError::DuplicateResource)),
            ("nobody", Some(ResponseError::ResourceNotFound)),
        ]
    );
}
