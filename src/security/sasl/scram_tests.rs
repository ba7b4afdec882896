use proptest::prelude::*;

use super::super::test_store::Store;
use super::*;

const SHA256: ScramMechanism = ScramMechanism::Sha256;

fn entropy(nonce: &str) -> ServerEntropy {
    ServerEntropy {
        nonce: nonce.to_string(),
        mock_salt_key: [7; 32],
    }
}

fn challenge(step: Result<Step, SaslError>) -> Vec<u8> {
    match step {
        Ok(Step::Challenge(bytes)) => bytes,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// RFC 7677 section 3: user "user", password "pencil".
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_store() -> Store {
    let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let credential = ScramCredential::from_password(SHA256, b"pencil", salt, 4096);
    let mut store = Store::default();
    store.0.insert(("user".into(), SHA256), credential);
    store
}

#[test]
fn the_server_follows_rfc7677s_example() {
    let store = rfc_store();
    let mut server = ScramServer::new(SHA256, entropy(RFC_SERVER_NONCE));
    let first = format!("n,,n=user,r={RFC_CLIENT_NONCE}");
    let server_first = challenge(server.evaluate(first.as_bytes(), &store));
    assert_eq!(server_first, RFC_SERVER_FIRST.as_bytes());
    assert_eq!(
        server.evaluate(RFC_CLIENT_FINAL.as_bytes(), &store),
        Ok(Step::Done {
            response: RFC_SERVER_FINAL.as_bytes().to_vec(),
            user: "user".into()
        })
    );
    // The exchange is over.
    assert!(
        server
            .evaluate(RFC_CLIENT_FINAL.as_bytes(), &store)
            .is_err()
    );
}

#[test]
fn the_client_follows_rfc7677s_example() {
    let (mut client, first) = ScramClient::start(SHA256, "user", "pencil", RFC_CLIENT_NONCE);
    assert_eq!(first, format!("n,,n=user,r={RFC_CLIENT_NONCE}").as_bytes());
    let last = client.client_final(RFC_SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(last, RFC_CLIENT_FINAL.as_bytes());
    assert_eq!(
        client.verify_server_final(RFC_SERVER_FINAL.as_bytes()),
        Ok(())
    );
    assert!(
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=")
            .is_err()
    );
    assert!(client.verify_server_final(b"e=invalid-proof").is_err());
}

/// Runs a whole exchange; the server's result.
fn exchange(
    store: &Store,
    m: ScramMechanism,
    user: &str,
    password: &str,
) -> Result<String, SaslError> {
    let (mut client, first) = ScramClient::start(m, user, password, "client-nonce");
    let mut server = ScramServer::new(m, entropy("server-nonce"));
    let server_first = challenge(server.evaluate(&first, store));
    let last = client.client_final(&server_first)?;
    match server.evaluate(&last, store)? {
        Step::Done { response, user } => {
            client.verify_server_final(&response)?;
            Ok(user)
        }
        step => panic!("expected the end, got {step:?}"),
    }
}

#[test]
fn clients_and_server_agree_for_both_mechanisms_and_escaped_names() {
    for m in ScramMechanism::ALL {
        let store = Store::default()
            .with("alice", m, "secret")
            .with("a,b=c", m, "p,w=d");
        assert_eq!(exchange(&store, m, "alice", "secret"), Ok("alice".into()));
        assert_eq!(exchange(&store, m, "a,b=c", "p,w=d"), Ok("a,b=c".into()));
        assert_eq!(
            exchange(&store, m, "alice", "wrong"),
            Err(SaslError::InvalidCredentials("invalid client proof"))
        );
    }
    // A credential of the other mechanism does not count.
    let store = Store::default().with("alice", ScramMechanism::Sha512, "secret");
    assert!(exchange(&store, SHA256, "alice", "secret").is_err());
}

#[test]
fn an_unknown_user_looks_like_a_known_one_until_the_proof() {
    let store = Store::default().with("alice", SHA256, "secret");
    let server_first = |user: &str| {
        let mut server = ScramServer::new(SHA256, entropy("n"));
        challenge(server.evaluate(format!("n,,n={user},r=c").as_bytes(), &store))
    };
    let salt_of = |user: &str| {
        let reply = String::from_utf8(server_first(user)).unwrap();
        let salt = reply.split(',').nth(1).unwrap().to_string();
        assert!(reply.ends_with(",i=4096"), "{reply}");
        salt
    };
    assert_eq!(salt_of("mallory"), salt_of("mallory"));
    assert_ne!(salt_of("mallory"), salt_of("eve"));
    assert_eq!(
        exchange(&store, SHA256, "mallory", "secret"),
        Err(SaslError::InvalidCredentials("invalid client proof"))
    );
}

#[test]
fn malformed_client_first_messages_fail_as_invalid_credentials() {
    let store = Store::default().with("alice", SHA256, "secret");
    for message in [
        &b""[..],
        b"n,,",
        b"n,,n=alice",
        b"n,,n=alice,r=",
        b"n,,r=abc,n=alice",
        b"y,,n=alice,r=abc",
        b"p=tls-unique,,n=alice,r=abc",
        b"n,,m=ext,n=alice,r=abc",
        b"n,,n=al=2Xice,r=abc",
        b"n,,n=alice=,r=abc",
        b"n,,n=,r=abc",
        b"n,a=,n=alice,r=abc",
        b"n,x=alice,n=alice,r=abc",
        b"n,,n=alice,r=a c",
        b"n,,n=alice,r=abc,",
        b"n,,n=alice,r=abc,1=x",
        b"n,,n=al\xffice,r=abc",
        b"n,,n=al\0ice,r=abc",
    ] {
        let mut server = ScramServer::new(SHA256, entropy("n"));
        assert!(
            matches!(
                server.evaluate(message, &store),
                Err(SaslError::InvalidCredentials(_))
            ),
            "{}",
            String::from_utf8_lossy(message)
        );
    }
    let mut server = ScramServer::new(SHA256, entropy("n"));
    assert_eq!(
        server.evaluate(b"n,a=bob,n=alice,r=abc", &store),
        Err(super::super::AUTHZID_REFUSED)
    );
    let mut server = ScramServer::new(SHA256, entropy("n"));
    let accepted = server.evaluate(b"n,a=alice,n=alice,r=abc,ext=1", &store);
    assert!(matches!(accepted, Ok(Step::Challenge(_))));
}

#[test]
fn tampered_client_final_messages_fail() {
    let store = rfc_store();
    let good = RFC_CLIENT_FINAL;
    let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
    let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    for message in [
        String::new(),
        "c=biws".into(),
        format!("c=biws,r={nonce}"),
        format!("c=biws,r={nonce}x,{proof}"),
        format!("c=biws,r={RFC_CLIENT_NONCE},{proof}"),
        // p=tls-unique,, : channel binding the server never offered.
        format!("c=cD10bHMtdW5pcXVlLCw=,r={nonce},{proof}"),
        format!("c=bi,r={nonce},{proof}"),
        format!("r={nonce},c=biws,{proof}"),
        format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"),
        format!("c=biws,r={nonce},p=AAAA"),
        good.replace("p=d", "p=e"),
    ] {
        let mut server = ScramServer::new(SHA256, entropy(RFC_SERVER_NONCE));
        challenge(server.evaluate(format!("n,,n=user,r={RFC_CLIENT_NONCE}").as_bytes(), &store));
        assert!(
            matches!(
                server.evaluate(message.as_bytes(), &store),
                Err(SaslError::InvalidCredentials(_))
            ),
            "{message}"
        );
    }
}

#[test]
fn the_client_refuses_a_hostile_server_first_message() {
    for message in [
        "r=other-nonce,s=c2FsdA==,i=4096",
        "r=client-nonce,s=c2FsdA==,i=4096",
        "r=client-nonceX,s=c2FsdA==,i=1",
        "r=client-nonceX,s=c2FsdA==,i=1000000000",
        "r=client-nonceX,s=c2FsdA==,i=-1",
        "r=client-nonceX,s=!!,i=4096",
        "m=x,r=client-nonceX,s=c2FsdA==,i=4096",
        "r=client-nonceX,s=c2FsdA==",
        "",
    ] {
        let (mut client, _) = ScramClient::start(SHA256, "alice", "pw", "client-nonce");
        assert!(
            client.client_final(message.as_bytes()).is_err(),
            "{message}"
        );
    }
    let (client, _) = ScramClient::start(SHA256, "alice", "pw", "client-nonce");
    assert!(
        client.verify_server_final(b"v=AAAA").is_err(),
        "no server-first yet"
    );
}

proptest! {
    #[test]
    fn arbitrary_tokens_never_panic(first in proptest::collection::vec(any::<u8>(), 0..64),
                                    last in proptest::collection::vec(any::<u8>(), 0..64)) {
        let store = rfc_store();
        let mut server = ScramServer::new(SHA256, entropy("n"));
        let _ = server.evaluate(&first, &store);
        let _ = server.evaluate(&last, &store);
        let mut server = ScramServer::new(SHA256, entropy("n"));
        let _ = server.evaluate(b"n,,n=user,r=x", &store);
        prop_assert!(server.evaluate(&last, &store).is_err());
    }
}
