//! SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password` in one token, checked against
//! the user's SCRAM credential (the broker keeps no passwords).

use super::{AUTHZID_REFUSED, CredentialStore, SaslError};
use crate::security::scram::{MIN_ITERATIONS, ScramCredential, ScramMechanism};

/// Kafka's refusal of a wrong password or an unknown user.
const INVALID_USER_OR_PASSWORD: SaslError =
    SaslError::Refused("Authentication failed: Invalid username or password");

/// Checks a client's PLAIN token; the authenticated user's name.
pub fn authenticate(token: &[u8], store: &dyn CredentialStore) -> Result<String, SaslError> {
    let text = std::str::from_utf8(token)
        .map_err(|_| SaslError::InvalidCredentials("PLAIN token is not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::InvalidCredentials(
            "PLAIN token is not authzid NUL user NUL password",
        ));
    };
    if user.is_empty() {
        return Err(SaslError::InvalidCredentials(
            "PLAIN username not specified",
        ));
    }
    if password.is_empty() {
        return Err(SaslError::InvalidCredentials(
            "PLAIN password not specified",
        ));
    }
    // Whichever SCRAM credential the user has proves the password. An unknown user's
    // password is salted all the same, so the answer takes as long as for a known one.
    let stored = ScramMechanism::ALL
        .into_iter()
        .find_map(|m| store.scram_credential(user, m).map(|c| (m, c)));
    let matches = match stored {
        Some((mechanism, credential)) => {
            credential.matches_password(mechanism, password.as_bytes())
        }
        None => {
            let stand_in = ScramCredential {
                salt: vec![0; 32],
                iterations: MIN_ITERATIONS,
                stored_key: Vec::new(),
                server_key: Vec::new(),
            };
            stand_in.matches_password(ScramMechanism::Sha256, password.as_bytes())
        }
    };
    if !matches {
        return Err(INVALID_USER_OR_PASSWORD);
    }
    if !authzid.is_empty() && authzid != user {
        return Err(AUTHZID_REFUSED);
    }
    Ok(user.to_string())
}

/// The client's PLAIN token for `user` (no separate authorization id).
pub fn client_token(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::test_store::Store;
    use super::*;

    fn store() -> Store {
        Store::default()
            .with("alice", ScramMechanism::Sha256, "alice-secret")
            .with("bob", ScramMechanism::Sha512, "bob-secret")
    }

    #[test]
    fn a_password_is_checked_against_whichever_scram_credential_the_user_has() {
        let store = store();
        let ok = |token: &[u8]| authenticate(token, &store);
        assert_eq!(
            ok(&client_token("alice", "alice-secret")),
            Ok("alice".into())
        );
        assert_eq!(ok(&client_token("bob", "bob-secret")), Ok("bob".into()));
        assert_eq!(ok(b"bob\0bob\0bob-secret"), Ok("bob".into()));
        assert_eq!(
            ok(&client_token("bob", "alice-secret")),
            Err(INVALID_USER_OR_PASSWORD)
        );
        // An unknown user reads the same as a wrong password.
        assert_eq!(
            ok(&client_token("carol", "x")),
            Err(INVALID_USER_OR_PASSWORD)
        );
        assert_eq!(ok(b"alice\0bob\0bob-secret"), Err(AUTHZID_REFUSED));
    }

    #[test]
    fn malformed_tokens_are_invalid_credentials() {
        let store = store();
        for token in [
            &b""[..],
            b"\0alice",
            b"\0alice\0alice-secret\0",
            b"\0\0alice-secret",
            b"\0alice\0",
            b"\0alice\0\xff\xfe",
        ] {
            assert!(
                matches!(
                    authenticate(token, &store),
                    Err(SaslError::InvalidCredentials(_))
                ),
                "{token:?}"
            );
        }
    }
}
