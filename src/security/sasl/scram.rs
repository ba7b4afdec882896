//! SCRAM-SHA-256 and SCRAM-SHA-512 exchanges (RFC 5802, RFC 7677), server and client.
//!
//! client-first  `n,[a=authzid],n=user,r=cnonce[,ext]`   (gs2 header `n`: no channel binding)
//! server-first  `r=cnonce+snonce,s=salt,i=iterations`
//! client-final  `c=base64(gs2 header),r=cnonce+snonce[,ext],p=proof`
//! server-final  `v=server signature`
//!
//! An unknown user gets a server-first like a real one (a stable stand-in salt derived from
//! a secret) and fails at the proof, as a wrong password does: neither the messages nor the
//! step at which the exchange fails tell a client whether a user exists.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{AUTHZID_REFUSED, CredentialStore, SaslError, ServerEntropy, Step};
use crate::security::scram::{
    MAX_ITERATIONS, MIN_ITERATIONS, ScramCredential, ScramMechanism, constant_time_eq,
};

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    mechanism: ScramMechanism,
    awaiting: Awaiting,
}

enum Awaiting {
    ClientFirst(ServerEntropy),
    ClientFinal(Box<FirstExchanged>),
    Over,
}

/// What the first round fixed: the messages the proof signs, and whose credential checks it.
struct FirstExchanged {
    user: String,
    /// `None` for an unknown user: the exchange goes on with a stand-in and fails.
    credential: Option<ScramCredential>,
    stand_in: ScramCredential,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

fn invalid(reason: &'static str) -> SaslError {
    SaslError::InvalidCredentials(reason)
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism, entropy: ServerEntropy) -> Self {
        Self {
            mechanism,
            awaiting: Awaiting::ClientFirst(entropy),
        }
    }

    pub fn evaluate(
        &mut self,
        token: &[u8],
        store: &dyn CredentialStore,
    ) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.awaiting, Awaiting::Over) {
            Awaiting::ClientFirst(entropy) => {
                let first = self.client_first(token, store, &entropy)?;
                let challenge = first.server_first.clone().into_bytes();
                self.awaiting = Awaiting::ClientFinal(Box::new(first));
                Ok(Step::Challenge(challenge))
            }
            Awaiting::ClientFinal(first) => self.client_final(token, &first),
            Awaiting::Over => Err(invalid("SCRAM exchange already over")),
        }
    }

    fn client_first(
        &self,
        token: &[u8],
        store: &dyn CredentialStore,
        entropy: &ServerEntropy,
    ) -> Result<FirstExchanged, SaslError> {
        let text = utf8(token)?;
        let message = ClientFirst::parse(text)?;
        if !message.authzid.is_empty() && message.authzid != message.user {
            return Err(AUTHZID_REFUSED);
        }
        let credential = store
            .scram_credential(&message.user, self.mechanism)
            .cloned();
        let stand_in = self.stand_in(&message.user, &entropy.mock_salt_key);
        let shown = credential.as_ref().unwrap_or(&stand_in);
        if shown.iterations < MIN_ITERATIONS {
            return Err(invalid("stored credential has too few iterations"));
        }
        let nonce = format!("{}{}", message.nonce, entropy.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&shown.salt),
            shown.iterations
        );
        Ok(FirstExchanged {
            user: message.user,
            credential,
            stand_in,
            gs2_header: message.gs2_header.to_string(),
            nonce,
            client_first_bare: message.bare.to_string(),
            server_first,
        })
    }

    fn client_final(&self, token: &[u8], first: &FirstExchanged) -> Result<Step, SaslError> {
        let text = utf8(token)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(invalid("client-final-message without proof"))?;
        let mut fields = without_proof.split(',');
        let binding = field(fields.next(), "c=")?;
        let nonce = field(fields.next(), "r=")?;
        fields.try_for_each(check_extension)?;
        if decode_base64(binding)? != first.gs2_header.as_bytes() {
            return Err(invalid("channel binding differs from the gs2 header"));
        }
        if nonce != first.nonce {
            return Err(invalid("invalid client nonce in the final client message"));
        }
        let proof = decode_base64(proof)?;
        let auth_message = format!(
            "{},{},{without_proof}",
            first.client_first_bare, first.server_first
        );
        // An unknown user's proof is checked against the stand-in too (the same work), and
        // fails whatever it is.
        let credential = first.credential.as_ref().unwrap_or(&first.stand_in);
        let verified = credential.verify_proof(self.mechanism, auth_message.as_bytes(), &proof);
        if !verified || first.credential.is_none() {
            return Err(invalid("invalid client proof"));
        }
        let signature = credential.server_signature(self.mechanism, auth_message.as_bytes());
        Ok(Step::Done {
            response: format!("v={}", BASE64.encode(signature)).into_bytes(),
            user: first.user.clone(),
        })
    }

    /// What an unknown user is shown: a salt that depends only on the name and the secret.
    fn stand_in(&self, user: &str, secret: &[u8; 32]) -> ScramCredential {
        let m = self.mechanism;
        let derive = |purpose: &str| m.hmac(secret, format!("{purpose}\0{m}\0{user}").as_bytes());
        let mut salt = derive("salt");
        salt.truncate(32);
        ScramCredential {
            salt,
            iterations: MIN_ITERATIONS,
            stored_key: derive("stored key"),
            server_key: derive("server key"),
        }
    }
}

/// A parsed client-first-message.
#[derive(Debug, PartialEq)]
struct ClientFirst<'a> {
    gs2_header: &'a str,
    authzid: String,
    user: String,
    nonce: &'a str,
    /// client-first-message-bare, as signed by the proof.
    bare: &'a str,
}

impl<'a> ClientFirst<'a> {
    fn parse(text: &'a str) -> Result<Self, SaslError> {
        // `y` and `p=` ask about channel binding, which is not served (as in Kafka).
        let rest = text
            .strip_prefix("n,")
            .ok_or(invalid("gs2 header other than 'n'"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(invalid("client-first-message without a gs2 header"))?;
        let authzid = match authzid {
            "" => String::new(),
            a => decode_saslname(a.strip_prefix("a=").ok_or(invalid("bad authzid"))?)?,
        };
        let gs2_header = &text[..text.len() - bare.len()];
        let mut fields = bare.split(',');
        // A leading `m=` (reserved extension) fails here, as RFC 5802 requires.
        let user = decode_saslname(field(fields.next(), "n=")?)?;
        let nonce = field(fields.next(), "r=")?;
        if !is_printable_nonce(nonce) {
            return Err(invalid("nonce is not printable ASCII"));
        }
        fields.try_for_each(check_extension)?;
        Ok(Self {
            gs2_header,
            authzid,
            user,
            nonce,
            bare,
        })
    }
}

/// The client side of one SCRAM exchange.
pub struct ScramClient {
    mechanism: ScramMechanism,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    /// The server signature that the server-final-message must carry, once known.
    expected_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange; returns the client and its client-first-message. `client_nonce`
    /// must be printable ASCII without ',' (base64 of random bytes).
    pub fn start(
        mechanism: ScramMechanism,
        user: &str,
        password: &str,
        client_nonce: &str,
    ) -> (Self, Vec<u8>) {
        assert!(is_printable_nonce(client_nonce), "nonce {client_nonce:?}");
        let client_first_bare = format!("n={},r={client_nonce}", encode_saslname(user));
        let message = format!("n,,{client_first_bare}").into_bytes();
        let client = Self {
            mechanism,
            password: password.to_string(),
            client_nonce: client_nonce.to_string(),
            client_first_bare,
            expected_signature: None,
        };
        (client, message)
    }

    /// The client-final-message answering the server-first-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let text = utf8(server_first)?;
        let mut fields = text.split(',');
        let nonce = field(fields.next(), "r=")?;
        let salt = decode_base64(field(fields.next(), "s=")?)?;
        let iterations: u32 = field(fields.next(), "i=")?
            .parse()
            .map_err(|_| invalid("iteration count is not a number"))?;
        fields.try_for_each(check_extension)?;
        if nonce.len() <= self.client_nonce.len()
            || !nonce.starts_with(&self.client_nonce)
            || !is_printable_nonce(nonce)
        {
            return Err(invalid("server nonce does not extend the client's"));
        }
        // A hostile server must not make the client salt for minutes.
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(invalid("iteration count out of range"));
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let credential = ScramCredential::from_salted_password(m, salt, &salted, iterations);
        let without_proof = format!("c={},r={nonce}", BASE64.encode("n,,"));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let client_key = m.hmac(&salted, b"Client Key");
        let signature = m.hmac(&credential.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected_signature = Some(credential.server_signature(m, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server proved it knows the credential.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let text = utf8(server_final)?;
        if text.starts_with("e=") {
            return Err(invalid("the server reported an error"));
        }
        let signature = decode_base64(field(text.split(',').next(), "v=")?)?;
        match &self.expected_signature {
            Some(expected) if constant_time_eq(expected, &signature) => Ok(()),
            _ => Err(invalid("server signature does not match")),
        }
    }
}

fn utf8(token: &[u8]) -> Result<&str, SaslError> {
    std::str::from_utf8(token).map_err(|_| invalid("SCRAM message is not UTF-8"))
}

/// The value of a `k=value` attribute that must come next.
fn field<'a>(next: Option<&'a str>, key: &'static str) -> Result<&'a str, SaslError> {
    next.and_then(|f| f.strip_prefix(key))
        .filter(|v| !v.is_empty())
        .ok_or(invalid("SCRAM attribute missing or out of order"))
}

/// An extension attribute (`name=value`, ignored as Kafka ignores them).
fn check_extension(attribute: &str) -> Result<(), SaslError> {
    match attribute.split_once('=') {
        Some((name, value))
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphabetic())
                && !value.is_empty() =>
        {
            Ok(())
        }
        _ => Err(invalid("malformed SCRAM extension")),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, SaslError> {
    BASE64
        .decode(text)
        .map_err(|_| invalid("SCRAM attribute is not base64"))
}

/// RFC 5802's `printable`: %x21-2B / %x2D-7E.
fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A saslname: `=2C` is ',' and `=3D` is '='; any other '=' is malformed.
fn decode_saslname(text: &str) -> Result<String, SaslError> {
    let mut name = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        name.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        name.push(match escape {
            Some("=2C") => ',',
            Some("=3D") => '=',
            _ => return Err(invalid("bad escape in a SCRAM name")),
        });
        rest = &rest[at + 3..];
    }
    name.push_str(rest);
    if name.is_empty() || name.contains('\0') {
        return Err(invalid("empty SCRAM name"));
    }
    Ok(name)
}

fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
