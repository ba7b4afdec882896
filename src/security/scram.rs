//! SCRAM credentials (RFC 5802, RFC 7677) as Kafka stores them: salt, iterations, and the
//! stored and server keys derived from the salted password. The password itself is never
//! kept, so the metadata log holds nothing a reader could log in with.

use std::fmt;

use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

/// Kafka's bounds on a SCRAM credential's iteration count (`ScramMechanism.minIterations`
/// and AlterUserScramCredentials' upper limit).
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The mechanism's number in AlterUserScramCredentials / DescribeUserScramCredentials
    /// (Kafka's `ScramMechanism.type()`: 1 for SHA-256, 2 for SHA-512).
    pub fn wire_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_wire_type(value: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.wire_type() == value)
    }

    /// Bytes of the hash (and of every key).
    pub fn hash_len(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }

    fn pbkdf2_algorithm(self) -> pbkdf2::Algorithm {
        match self {
            ScramMechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramMechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn hmac_algorithm(self) -> hmac::Algorithm {
        match self {
            ScramMechanism::Sha256 => hmac::HMAC_SHA256,
            ScramMechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest_algorithm(self) -> &'static digest::Algorithm {
        match self {
            ScramMechanism::Sha256 => &digest::SHA256,
            ScramMechanism::Sha512 => &digest::SHA512,
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with this mechanism's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.hash_len()];
        let rounds = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one round");
        pbkdf2::derive(self.pbkdf2_algorithm(), rounds, salt, password, &mut out);
        out
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac_algorithm(), key), data)
            .as_ref()
            .to_vec()
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_algorithm(), data)
            .as_ref()
            .to_vec()
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the broker keeps of one user's password for one mechanism.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// `H(ClientKey)`: checks a client's proof.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's final message.
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential for a salted password, as AlterUserScramCredentials sends it (the
    /// admin client salts the password; the broker derives the keys).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: Vec<u8>,
        salted_password: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        Self {
            salt,
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    pub fn from_password(
        mechanism: ScramMechanism,
        password: &[u8],
        salt: Vec<u8>,
        iterations: u32,
    ) -> Self {
        let salted = mechanism.salted_password(password, &salt, iterations);
        Self::from_salted_password(mechanism, salt, &salted, iterations)
    }

    /// Whether `client_proof` (`ClientKey XOR HMAC(StoredKey, AuthMessage)`) proves the
    /// password: the recovered client key hashes to the stored key. Compared in constant
    /// time.
    pub fn verify_proof(
        &self,
        mechanism: ScramMechanism,
        auth_message: &[u8],
        client_proof: &[u8],
    ) -> bool {
        let signature = mechanism.hmac(&self.stored_key, auth_message);
        if client_proof.len() != signature.len() {
            return false;
        }
        let client_key: Vec<u8> = client_proof
            .iter()
            .zip(&signature)
            .map(|(p, s)| p ^ s)
            .collect();
        constant_time_eq(&mechanism.hash(&client_key), &self.stored_key)
    }

    /// `HMAC(ServerKey, AuthMessage)`: the server's proof that it knows the credential.
    pub fn server_signature(&self, mechanism: ScramMechanism, auth_message: &[u8]) -> Vec<u8> {
        mechanism.hmac(&self.server_key, auth_message)
    }

    /// Whether `password` is this credential's password (PLAIN is checked against the SCRAM
    /// store: the password is salted and its keys compared).
    pub fn matches_password(&self, mechanism: ScramMechanism, password: &[u8]) -> bool {
        let derived = Self::from_password(mechanism, password, self.salt.clone(), self.iterations);
        constant_time_eq(&derived.stored_key, &self.stored_key)
    }
}

/// One user's credential for one mechanism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserScramCredential {
    pub user: String,
    pub mechanism: ScramMechanism,
    pub credential: ScramCredential,
}

/// A first user as `kafka-storage format --add-scram` takes it:
/// `SCRAM-SHA-256=[name=admin,password=admin-secret]`, optionally with `iterations=N`
/// (default 4096). The salt is the caller's (random).
pub fn parse_add_scram(text: &str, salt: Vec<u8>) -> Result<UserScramCredential, String> {
    let (mechanism, fields) = text
        .split_once('=')
        .ok_or("expected MECHANISM=[name=...,password=...]")?;
    let mechanism = ScramMechanism::from_name(mechanism.trim())
        .ok_or_else(|| format!("unknown SCRAM mechanism '{mechanism}'"))?;
    let fields = fields
        .trim()
        .strip_prefix('[')
        .and_then(|f| f.strip_suffix(']'))
        .ok_or("expected the fields in brackets: [name=...,password=...]")?;
    let (mut user, mut password, mut iterations) = (None, None, MIN_ITERATIONS);
    for field in fields.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got '{field}'"))?;
        let value = value.trim().trim_matches('"');
        match key.trim() {
            "name" => user = Some(value.to_string()),
            "password" => password = Some(value.to_string()),
            "iterations" => {
                iterations = value
                    .parse()
                    .ok()
                    .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
                    .ok_or_else(|| {
                        format!("iterations must be {MIN_ITERATIONS}..={MAX_ITERATIONS}")
                    })?
            }
            other => return Err(format!("unknown field '{other}'")),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or("name is missing")?;
    let password = password.ok_or("password is missing")?;
    Ok(UserScramCredential {
        user,
        mechanism,
        credential: ScramCredential::from_password(
            mechanism,
            password.as_bytes(),
            salt,
            iterations,
        ),
    })
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's example exchange (user "user", password "pencil").
    #[test]
    fn rfc7677_sha256_example_verifies() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==");
        let credential =
            ScramCredential::from_password(ScramMechanism::Sha256, b"pencil", salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = base64_decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let mechanism = ScramMechanism::Sha256;
        assert!(credential.verify_proof(mechanism, auth_message.as_bytes(), &proof));
        assert_eq!(
            credential.server_signature(mechanism, auth_message.as_bytes()),
            base64_decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
        let mut wrong = proof.clone();
        wrong[0] ^= 1;
        assert!(!credential.verify_proof(mechanism, auth_message.as_bytes(), &wrong));
        assert!(!credential.verify_proof(mechanism, auth_message.as_bytes(), &proof[1..]));
        assert!(credential.matches_password(mechanism, b"pencil"));
        assert!(!credential.matches_password(mechanism, b"pencil2"));
    }

    #[test]
    fn mechanisms_have_kafka_names_and_wire_types() {
        for m in ScramMechanism::ALL {
            assert_eq!(ScramMechanism::from_name(m.name()), Some(m));
            assert_eq!(ScramMechanism::from_wire_type(m.wire_type()), Some(m));
            let c = ScramCredential::from_password(m, b"pw", vec![1, 2, 3], MIN_ITERATIONS);
            assert_eq!(c.stored_key.len(), m.hash_len());
            assert!(c.matches_password(m, b"pw"));
        }
        assert_eq!(ScramMechanism::from_name("PLAIN"), None);
        assert_eq!(ScramMechanism::from_wire_type(0), None);
    }

    #[test]
    fn add_scram_takes_kafka_storage_syntax() {
        let c = parse_add_scram(
            "SCRAM-SHA-512=[name=admin,password=\"admin-secret\",iterations=8192]",
            vec![9; 16],
        )
        .unwrap();
        assert_eq!(
            (c.user.as_str(), c.mechanism),
            ("admin", ScramMechanism::Sha512)
        );
        assert_eq!(c.credential.iterations, 8192);
        assert!(
            c.credential
                .matches_password(ScramMechanism::Sha512, b"admin-secret")
        );
        for bad in [
            "SCRAM-SHA-1=[name=a,password=b]",
            "SCRAM-SHA-256=name=a,password=b",
            "SCRAM-SHA-256=[password=b]",
            "SCRAM-SHA-256=[name=a]",
            "SCRAM-SHA-256=[name=a,password=b,iterations=10]",
            "SCRAM-SHA-256=[name=a,password=b,colour=red]",
        ] {
            assert!(parse_add_scram(bad, vec![1]).is_err(), "{bad}");
        }
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
    }
}
