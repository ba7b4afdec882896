//! A connection's authentication on a SASL listener, before any other request (Kafka's
//! `SaslServerAuthenticator`): ApiVersions (once), SaslHandshake, then the mechanism's tokens
//! in SaslAuthenticate requests (handshake v1), or as bare size-prefixed frames (handshake
//! v0, very old clients).
//!
//! Any other request closes the connection (Kafka: IllegalSaslState), as does a frame over
//! `sasl.server.max.receive.size` or an exchange unfinished after
//! `corelog.authentication.timeout.ms`. A mechanism not enabled (UNSUPPORTED_SASL_MECHANISM)
//! and a failed exchange (SASL_AUTHENTICATION_FAILED) are answered
//! `connection.failed.authentication.delay.ms` late, then the connection closes.

use std::pin::pin;
use std::rc::Rc;
use std::sync::OnceLock;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{Either, select};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use ring::rand::{SecureRandom, SystemRandom};

use super::handlers::{Peer, Reply};
use super::limits::{Activity, ConnectionLimits};
use super::request;
use super::shard::Shard;
use crate::cluster::ClusterMetadata;
use crate::protocol::{self, ErrorCode, Request, versions};
use crate::runtime::sleep;
use crate::security::Principal;
use crate::security::sasl::{CredentialStore, Mechanism, ServerEntropy, ServerExchange, Step};
use crate::security::scram::{ScramCredential, ScramMechanism};

impl CredentialStore for ClusterMetadata {
    fn scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        ClusterMetadata::scram_credential(self, user, mechanism)
    }
}

/// What authentication needs of the connection: where its frames come from and go.
pub struct Connection<'a, R, W> {
    pub limits: &'a ConnectionLimits,
    pub activity: &'a Activity,
    pub idle: &'a mut oneshot::Receiver<()>,
    pub reader: &'a mut R,
    pub writer: &'a mut W,
}

/// Authenticates the connection with one of `mechanisms`; on success the peer's principal
/// is the user. `false`: the connection must close (the client was answered if it could be).
pub async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    peer: &Peer,
    mechanisms: &[Mechanism],
    connection: Connection<'_, R, W>,
) -> bool {
    let timeout = shard.settings.authentication_timeout;
    let exchange = pin!(exchange(shard, peer, mechanisms, connection));
    match select(exchange, pin!(sleep(timeout))).await {
        Either::Left((Some(user), _)) => {
            tracing::debug!(host = %peer.host, %user, "authenticated");
            peer.set_principal(Principal::user(user));
            true
        }
        Either::Left((None, _)) => false,
        Either::Right(_) => {
            tracing::info!(host = %peer.host, ?timeout, "closing a connection that did not authenticate in time");
            false
        }
    }
}

/// Runs the exchange to its end: the authenticated user, or `None` once the connection must
/// close.
async fn exchange<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    peer: &Peer,
    mechanisms: &[Mechanism],
    c: Connection<'_, R, W>,
) -> Option<String> {
    let max_frame = shard.settings.sasl_server_max_receive_size;
    let mut phase = Phase::Handshake {
        versions_answered: false,
    };
    loop {
        let (frame, _memory) =
            request::read_request(c.limits, c.activity, c.idle, c.reader, max_frame).await?;
        let metadata = shard.metadata();
        match phase.next(frame.clone(), mechanisms, &metadata.metadata) {
            Action::ApiVersions => {
                let (pending, _) = request::dispatch(shard, frame, peer).await;
                match pending.await {
                    Reply::Send(bytes) => c.writer.write_all(&bytes).await.ok()?,
                    _ => return None,
                }
            }
            Action::Reply(bytes) => c.writer.write_all(&bytes).await.ok()?,
            Action::Authenticated { reply, user } => {
                c.writer.write_all(&reply).await.ok()?;
                return Some(user);
            }
            Action::Fail { reply, reason } => {
                tracing::info!(host = %peer.host, "failed authentication: {reason}");
                sleep(shard.settings.connection_failed_authentication_delay).await;
                if let Some(bytes) = reply {
                    let _ = c.writer.write_all(&bytes).await;
                }
                return None;
            }
            Action::Close(reason) => {
                tracing::info!(host = %peer.host, "closing a connection while authenticating: {reason}");
                return None;
            }
        }
        c.activity.touched();
    }
}

/// Where a connection's authentication stands.
enum Phase {
    /// Before SaslHandshake; whether an ApiVersions was answered (a client asks once).
    Handshake { versions_answered: bool },
    /// The mechanism's tokens, in SaslAuthenticate requests or (`bare`) bare frames.
    Tokens {
        mechanism: Mechanism,
        exchange: ServerExchange,
        bare: bool,
    },
    /// Failed or closed: nothing more is read.
    Over,
}

/// What the connection does with one frame.
#[derive(Debug)]
enum Action {
    /// An ApiVersions request: answered as on any connection.
    ApiVersions,
    Reply(Bytes),
    Authenticated {
        reply: Bytes,
        user: String,
    },
    /// Answer (if the client can read an answer) after the failure delay, then close.
    Fail {
        reply: Option<Bytes>,
        reason: String,
    },
    Close(String),
}

impl Phase {
    fn next(
        &mut self,
        frame: Bytes,
        mechanisms: &[Mechanism],
        store: &dyn CredentialStore,
    ) -> Action {
        match std::mem::replace(self, Phase::Over) {
            Phase::Handshake { versions_answered } => {
                let (action, next) = handshake(frame, versions_answered, mechanisms);
                *self = next;
                action
            }
            Phase::Tokens {
                mechanism,
                mut exchange,
                bare,
            } => {
                let action = if bare {
                    bare_token(&frame, &mut exchange, store)
                } else {
                    authenticate_request(frame, mechanism, &mut exchange, store)
                };
                if matches!(action, Action::Reply(_)) {
                    *self = Phase::Tokens {
                        mechanism,
                        exchange,
                        bare,
                    };
                }
                action
            }
            Phase::Over => Action::Close("authentication already over".into()),
        }
    }
}

/// A frame before SaslHandshake: ApiVersions (once) or SaslHandshake.
fn handshake(frame: Bytes, versions_answered: bool, mechanisms: &[Mechanism]) -> (Action, Phase) {
    let header = frame.get(..4).map(|h| {
        (
            i16::from_be_bytes([h[0], h[1]]),
            i16::from_be_bytes([h[2], h[3]]),
        )
    });
    let api_key = header.and_then(|(key, _)| ApiKey::try_from(key).ok());
    match (api_key, header) {
        (Some(ApiKey::ApiVersions), Some((_, version))) if !versions_answered => {
            // A version the broker does not serve is answered UNSUPPORTED_VERSION; the
            // client asks again.
            let answered = versions::is_supported(ApiKey::ApiVersions, version);
            let next = Phase::Handshake {
                versions_answered: answered,
            };
            (Action::ApiVersions, next)
        }
        (Some(ApiKey::SaslHandshake), _) => sasl_handshake(frame, mechanisms),
        _ => {
            let what = api_key.map_or_else(|| "an unknown API".to_string(), |k| format!("{k:?}"));
            let reason = format!("{what} before SaslHandshake");
            (Action::Close(reason), Phase::Over)
        }
    }
}

fn sasl_handshake(frame: Bytes, mechanisms: &[Mechanism]) -> (Action, Phase) {
    let Ok(Request {
        header,
        body: RequestKind::SaslHandshake(request),
        ..
    }) = protocol::decode_request(frame)
    else {
        return (
            Action::Close("undecodable SaslHandshake".into()),
            Phase::Over,
        );
    };
    let version = header.request_api_version;
    let enabled = mechanisms
        .iter()
        .map(|m| StrBytes::from_static_str(m.name()))
        .collect();
    let asked = Mechanism::from_name(&request.mechanism).filter(|m| mechanisms.contains(m));
    let (code, next) = match (asked, server_entropy()) {
        (Some(mechanism), Some(entropy)) => (
            0,
            Phase::Tokens {
                mechanism,
                exchange: ServerExchange::new(mechanism, entropy),
                bare: version == 0,
            },
        ),
        (Some(_), None) => return (Action::Close("no system randomness".into()), Phase::Over),
        (None, _) => (ErrorCode::UnsupportedSaslMechanism.code(), Phase::Over),
    };
    let body = SaslHandshakeResponse::default()
        .with_error_code(code)
        .with_mechanisms(enabled);
    let Some(reply) = encode(
        ApiKey::SaslHandshake,
        version,
        header.correlation_id,
        ResponseKind::SaslHandshake(body),
    ) else {
        return (
            Action::Close("cannot encode SaslHandshake".into()),
            Phase::Over,
        );
    };
    let action = match next {
        Phase::Over => Action::Fail {
            reply: Some(reply),
            reason: format!(
                "unsupported SASL mechanism {:?}",
                request.mechanism.as_str()
            ),
        },
        _ => Action::Reply(reply),
    };
    (action, next)
}

/// A token after SaslHandshake v1, in a SaslAuthenticate request.
fn authenticate_request(
    frame: Bytes,
    mechanism: Mechanism,
    exchange: &mut ServerExchange,
    store: &dyn CredentialStore,
) -> Action {
    let (header, request) = match protocol::decode_request(frame) {
        Ok(Request {
            header,
            body: RequestKind::SaslAuthenticate(request),
            ..
        }) => (header, request),
        Ok(other) => {
            return Action::Close(format!("{:?} during SASL authentication", other.api_key));
        }
        Err(e) => {
            return Action::Close(format!(
                "undecodable request during SASL authentication: {e:?}"
            ));
        }
    };
    let respond = |body: SaslAuthenticateResponse| {
        encode(
            ApiKey::SaslAuthenticate,
            header.request_api_version,
            header.correlation_id,
            ResponseKind::SaslAuthenticate(body),
        )
    };
    let accepted =
        |bytes: Vec<u8>| SaslAuthenticateResponse::default().with_auth_bytes(bytes.into());
    let action = match exchange.evaluate(&request.auth_bytes, store) {
        Ok(Step::Challenge(bytes)) => respond(accepted(bytes)).map(Action::Reply),
        Ok(Step::Done { response, user }) => {
            respond(accepted(response)).map(|reply| Action::Authenticated { reply, user })
        }
        Err(e) => {
            let body = SaslAuthenticateResponse::default()
                .with_error_code(ErrorCode::SaslAuthenticationFailed.code())
                .with_error_message(Some(StrBytes::from_string(e.client_message(mechanism))));
            respond(body).map(|reply| Action::Fail {
                reply: Some(reply),
                reason: format!("{mechanism}: {e}"),
            })
        }
    };
    action.unwrap_or_else(|| Action::Close("cannot encode SaslAuthenticate".into()))
}

/// A token after SaslHandshake v0: a bare frame, answered by one. A failure cannot be told.
fn bare_token(frame: &[u8], exchange: &mut ServerExchange, store: &dyn CredentialStore) -> Action {
    let prefixed = |bytes: Vec<u8>| {
        let mut out = BytesMut::with_capacity(4 + bytes.len());
        // A token is far smaller than i32::MAX (a server message of a few hundred bytes).
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
        out.freeze()
    };
    match exchange.evaluate(frame, store) {
        Ok(Step::Challenge(bytes)) => Action::Reply(prefixed(bytes)),
        Ok(Step::Done { response, user }) => Action::Authenticated {
            reply: prefixed(response),
            user,
        },
        Err(e) => Action::Fail {
            reply: None,
            reason: format!("{e} (SaslHandshake v0)"),
        },
    }
}

fn encode(api_key: ApiKey, version: i16, correlation_id: i32, body: ResponseKind) -> Option<Bytes> {
    protocol::encode_response(api_key, version, correlation_id, &body)
        .inspect_err(|e| tracing::error!(?api_key, version, "cannot encode response: {e}"))
        .ok()
}

/// A fresh server nonce, and the process's secret for unknown users' stand-in salts (one
/// per process, so every shard shows an unknown user the same salt).
fn server_entropy() -> Option<ServerEntropy> {
    static MOCK_SALT_KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    let random = SystemRandom::new();
    let mock_salt_key = (*MOCK_SALT_KEY.get_or_init(|| {
        let mut key = [0; 32];
        random.fill(&mut key).ok().map(|()| key)
    }))?;
    let mut nonce = [0; 24];
    random.fill(&mut nonce).ok()?;
    Some(ServerEntropy {
        nonce: base64::engine::general_purpose::STANDARD.encode(nonce),
        mock_salt_key,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use kafka_protocol::messages::{
        ApiVersionsRequest, MetadataRequest, RequestHeader, ResponseHeader,
        SaslAuthenticateRequest, SaslHandshakeRequest,
    };
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::security::sasl::plain;
    use crate::security::sasl::scram::ScramClient;
    use crate::security::sasl::test_store::Store;

    const SCRAM_256: Mechanism = Mechanism::Scram(ScramMechanism::Sha256);

    fn request<R: Encodable>(key: ApiKey, version: i16, body: &R) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7);
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn handshake_request(version: i16, mechanism: &str) -> Bytes {
        let body = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_string(mechanism.to_string()));
        request(ApiKey::SaslHandshake, version, &body)
    }

    fn token_request(token: Vec<u8>) -> Bytes {
        let body = SaslAuthenticateRequest::default().with_auth_bytes(token.into());
        request(ApiKey::SaslAuthenticate, 2, &body)
    }

    fn response<R: Decodable>(key: ApiKey, version: i16, mut bytes: Bytes) -> R {
        bytes.advance(4);
        let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version));
        assert_eq!(header.unwrap().correlation_id, 7);
        R::decode(&mut bytes, version).unwrap()
    }

    fn store() -> Store {
        Store::default()
            .with("alice", ScramMechanism::Sha256, "alice-secret")
            .with("bob", ScramMechanism::Sha512, "bob-secret")
    }

    fn reply(action: Action) -> Bytes {
        match action {
            Action::Reply(bytes) => bytes,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// A phase past a successful SaslHandshake of `version` for `mechanism`.
    fn after_handshake(version: i16, mechanism: &str, enabled: &[Mechanism]) -> Phase {
        let mut phase = Phase::Handshake {
            versions_answered: false,
        };
        let versions = request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        assert!(matches!(
            phase.next(versions, enabled, &store()),
            Action::ApiVersions
        ));
        let answer = reply(phase.next(handshake_request(version, mechanism), enabled, &store()));
        let answer: SaslHandshakeResponse = response(ApiKey::SaslHandshake, version, answer);
        assert_eq!(answer.error_code, 0);
        phase
    }

    #[test]
    fn scram_over_sasl_authenticate_authenticates_the_user() {
        let mut phase = after_handshake(1, "SCRAM-SHA-256", &Mechanism::ALL);
        let (mut client, first) =
            ScramClient::start(ScramMechanism::Sha256, "alice", "alice-secret", "abc");
        let challenge = reply(phase.next(token_request(first), &Mechanism::ALL, &store()));
        let challenge: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, 2, challenge);
        assert_eq!(challenge.error_code, 0);
        let last = client.client_final(&challenge.auth_bytes).unwrap();
        let Action::Authenticated { reply, user } =
            phase.next(token_request(last), &Mechanism::ALL, &store())
        else {
            panic!("not authenticated");
        };
        assert_eq!(user, "alice");
        let done: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, 2, reply);
        assert_eq!((done.error_code, done.session_lifetime_ms), (0, 0));
        client.verify_server_final(&done.auth_bytes).unwrap();
    }

    #[test]
    fn a_wrong_password_fails_with_kafkas_message() {
        let mut phase = after_handshake(1, "SCRAM-SHA-256", &Mechanism::ALL);
        let (mut client, first) =
            ScramClient::start(ScramMechanism::Sha256, "alice", "wrong", "abc");
        let challenge = reply(phase.next(token_request(first), &Mechanism::ALL, &store()));
        let challenge: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, 2, challenge);
        let last = client.client_final(&challenge.auth_bytes).unwrap();
        let Action::Fail {
            reply: Some(reply), ..
        } = phase.next(token_request(last), &Mechanism::ALL, &store())
        else {
            panic!("not a failure");
        };
        let failed: SaslAuthenticateResponse = response(ApiKey::SaslAuthenticate, 2, reply);
        assert_eq!(
            failed.error_code,
            ErrorCode::SaslAuthenticationFailed.code()
        );
        assert_eq!(
            failed.error_message.as_deref(),
            Some(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism SCRAM-SHA-256"
            )
        );
    }

    #[test]
    fn a_mechanism_not_enabled_is_unsupported_with_the_enabled_list() {
        let scram_only = [SCRAM_256];
        for asked in ["PLAIN", "GSSAPI", "scram-sha-256", ""] {
            let mut phase = Phase::Handshake {
                versions_answered: false,
            };
            let Action::Fail {
                reply: Some(reply), ..
            } = phase.next(handshake_request(1, asked), &scram_only, &store())
            else {
                panic!("{asked}: not refused");
            };
            let refused: SaslHandshakeResponse = response(ApiKey::SaslHandshake, 1, reply);
            assert_eq!(
                refused.error_code,
                ErrorCode::UnsupportedSaslMechanism.code()
            );
            let listed: Vec<&str> = refused.mechanisms.iter().map(|m| m.as_str()).collect();
            assert_eq!(listed, ["SCRAM-SHA-256"]);
        }
    }

    #[test]
    fn other_requests_before_authenticating_close_the_connection() {
        let metadata = request(ApiKey::Metadata, 9, &MetadataRequest::default());
        let versions = request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        for frames in [
            vec![metadata.clone()],
            vec![versions.clone(), versions.clone()],
            vec![Bytes::from_static(b"\x00\x11")],
            vec![Bytes::from_static(b"\x7f\x7f\x00\x00\x00\x00\x00\x07")],
            vec![handshake_request(1, "PLAIN").slice(..12)],
        ] {
            let mut phase = Phase::Handshake {
                versions_answered: false,
            };
            let actions: Vec<Action> = frames
                .into_iter()
                .map(|f| phase.next(f, &Mechanism::ALL, &store()))
                .collect();
            assert!(
                matches!(actions.last(), Some(Action::Close(_))),
                "{actions:?}"
            );
        }
        let mut phase = after_handshake(1, "PLAIN", &Mechanism::ALL);
        let action = phase.next(metadata, &Mechanism::ALL, &store());
        assert!(matches!(action, Action::Close(_)), "{action:?}");
    }

    #[test]
    fn handshake_v0_takes_bare_tokens() {
        let token = plain::client_token("bob", "bob-secret");
        let mut phase = after_handshake(0, "PLAIN", &Mechanism::ALL);
        let Action::Authenticated { reply, user } =
            phase.next(Bytes::from(token), &Mechanism::ALL, &store())
        else {
            panic!("not authenticated");
        };
        assert_eq!((reply.as_ref(), user.as_str()), (&[0, 0, 0, 0][..], "bob"));
        let mut phase = after_handshake(0, "PLAIN", &Mechanism::ALL);
        let wrong = Bytes::from(plain::client_token("bob", "guess"));
        let action = phase.next(wrong, &Mechanism::ALL, &store());
        assert!(
            matches!(action, Action::Fail { reply: None, .. }),
            "{action:?}"
        );
    }
}
