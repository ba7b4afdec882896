//! TLS with rustls: a listener's server configuration and the inter-broker client's, read
//! from PEM files once at startup; the principal a client certificate proves; and the
//! replica fetcher's stream, plain or TLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, anyhow};
use futures::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::der_parser::asn1_rs::{Any, Tag, ToDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use super::Principal;
use super::listener::{ClientAuth, SslSettings};
use crate::runtime::TcpStream;

/// The project's crypto provider is ring (as for SCRAM); rustls 0.23.48 deprecates ring's
/// provider only because it has no post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of a TLS listener named `listener`: its keystore's key and
/// chain, and with `ssl.client.auth` requested or required, client certificates checked
/// against its truststore. Errors name the property at fault.
pub fn server_config(listener: &str, ssl: &SslSettings) -> anyhow::Result<Arc<ServerConfig>> {
    let (chain, key) = keystore(listener, ssl)?
        .ok_or_else(|| anyhow!("ssl.keystore.location: required by the TLS listener {listener}"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?;
    let builder = match ssl.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        auth => {
            let roots = truststore(listener, ssl)?.ok_or_else(|| {
                anyhow!(
                    "ssl.truststore.location: required by ssl.client.auth on listener {listener}"
                )
            })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().with_context(|| {
                format!(
                    "ssl.truststore.location of listener {listener}: {}",
                    ssl.truststore_location
                )
            })?)
        }
    };
    let config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "ssl.keystore.location of listener {listener}: {}: the key does not fit the certificate",
            ssl.keystore_location
        )
    })?;
    Ok(Arc::new(config))
}

/// The client configuration brokers connect to the TLS listener named `listener` with:
/// its truststore checks the other broker, its keystore (if any) is presented as this
/// broker's certificate.
pub fn client_config(listener: &str, ssl: &SslSettings) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = truststore(listener, ssl)?.ok_or_else(|| {
        anyhow!(
            "ssl.truststore.location: required to connect to the inter-broker listener {listener}"
        )
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots);
    let config = match keystore(listener, ssl)? {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).with_context(|| {
            format!(
                "ssl.keystore.location of listener {listener}: {}",
                ssl.keystore_location
            )
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

type Keystore = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The keystore's certificate chain and private key, `None` when unset.
fn keystore(listener: &str, ssl: &SslSettings) -> anyhow::Result<Option<Keystore>> {
    let path = ssl.keystore_location.as_str();
    if path.is_empty() {
        return Ok(None);
    }
    let bad =
        |what: String| anyhow!("ssl.keystore.location of listener {listener}: {path}: {what}");
    let chain = certificates(path).map_err(bad)?;
    let key =
        PrivateKeyDer::from_pem_file(path).map_err(|e| bad(format!("no private key: {e}")))?;
    Ok(Some((chain, key)))
}

/// The truststore's CA certificates, `None` when unset.
fn truststore(listener: &str, ssl: &SslSettings) -> anyhow::Result<Option<RootCertStore>> {
    let path = ssl.truststore_location.as_str();
    if path.is_empty() {
        return Ok(None);
    }
    let bad =
        |what: String| anyhow!("ssl.truststore.location of listener {listener}: {path}: {what}");
    let mut roots = RootCertStore::empty();
    for cert in certificates(path).map_err(bad)? {
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
    }
    Ok(Some(roots))
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate".to_string());
    }
    Ok(certs)
}

/// Who a TLS client proved to be: `User:` and its certificate's subject as Kafka's default
/// principal builder names it, or `User:ANONYMOUS` without a certificate.
pub fn principal(connection: &rustls::ServerConnection) -> Principal {
    let subject = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| subject_name(cert));
    subject.map_or_else(Principal::anonymous, Principal::user)
}

/// A DER certificate's subject in RFC 2253 form, as Java's `X500Principal.getName()`.
pub fn subject_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(rfc2253(cert.subject()))
}

/// The last RDN first, multi-valued RDNs joined by `+`.
fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join("+"))
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// `KEYWORD=value` for the keywords and string types Java prints so; otherwise the type's
/// keyword or dotted OID and `#` with the value's DER in hex.
fn attribute(attribute: &AttributeTypeAndValue<'_>) -> String {
    let oid = attribute.attr_type().to_id_string();
    let keyword = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.6" => Some("C"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.9" => Some("STREET"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        _ => None,
    };
    let value = attribute.attr_value();
    match (keyword, text(value)) {
        (Some(keyword), Some(text)) => format!("{keyword}={}", escape(text)),
        (keyword, _) => format!("{}=#{}", keyword.unwrap_or(&oid), hex(value)),
    }
}

/// The value as text when it is one of the string types Java prints as text.
fn text<'a>(value: &'a Any<'_>) -> Option<&'a str> {
    let textual = [
        Tag::PrintableString,
        Tag::Utf8String,
        Tag::Ia5String,
        Tag::T61String,
        Tag::GeneralString,
    ];
    textual
        .contains(&value.tag())
        .then(|| std::str::from_utf8(value.data).ok())
        .flatten()
}

/// RFC 2253 escaping as Java's: `,=+<>#;"\` anywhere, and leading or trailing spaces.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if ",=+<>#;\"\\".contains(c) || (c == ' ' && (i == 0 || i == last)) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(value: &Any<'_>) -> String {
    let der = value.to_der_vec().unwrap_or_default();
    der.iter().map(|b| format!("{b:02x}")).collect()
}

/// A broker's connection to another broker: plain TCP, or TLS over it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Wraps a connected stream in TLS when `tls` is given, checking the server's
    /// certificate against `host` (a name or an IP address).
    pub async fn start(
        stream: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        host: &str,
    ) -> io::Result<ClientStream> {
        let Some(config) = tls else {
            return Ok(ClientStream::Plain(stream));
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(config.clone())
            .connect(name, stream)
            .await?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_close(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn certificate(dn: &[(DnType, &str)]) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let mut name = DistinguishedName::new();
        for (kind, value) in dn {
            name.push(kind.clone(), *value);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn subject(dn: &[(DnType, &str)]) -> String {
        subject_name(certificate(dn).0.der()).unwrap()
    }

    #[test]
    fn subjects_print_as_javas_x500_principal() {
        // Encoded O, OU, CN: printed last first.
        let dn = [
            (DnType::CountryName, "DE"),
            (DnType::OrganizationName, "corelog"),
            (DnType::OrganizationalUnitName, "eng"),
            (DnType::CommonName, "client"),
        ];
        assert_eq!(subject(&dn), "CN=client,OU=eng,O=corelog,C=DE");
        assert_eq!(
            subject(&[(DnType::CommonName, "a,b+c=\"d\" ")]),
            r#"CN=a\,b\+c\=\"d\"\ "#
        );
        assert_eq!(subject(&[(DnType::CommonName, " #x")]), r"CN=\ \#x");
        // A type without a keyword: its OID and the DER value in hex.
        let email = DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]);
        let printed = subject(&[(email, "a@b")]);
        assert!(printed.starts_with("1.2.840.113549.1.9.1=#"), "{printed}");
        assert!(printed.ends_with("03614062"), "{printed}");
        assert_eq!(subject_name(b"not a certificate"), None);
    }

    fn write(dir: &std::path::Path, file: &str, text: String) -> String {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn keystores_load_or_name_the_property_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(&[(DnType::CommonName, "broker")]);
        let (_, other_key) = certificate(&[(DnType::CommonName, "other")]);
        let good = write(dir.path(), "good.pem", key.serialize_pem() + &cert.pem());
        let ca = write(dir.path(), "ca.pem", cert.pem());
        let mismatched = write(
            dir.path(),
            "bad.pem",
            other_key.serialize_pem() + &cert.pem(),
        );
        let ssl = |keystore: &str, truststore: &str, client_auth| SslSettings {
            keystore_location: keystore.to_string(),
            truststore_location: truststore.to_string(),
            client_auth,
        };
        assert!(server_config("SSL", &ssl(&good, "", ClientAuth::None)).is_ok());
        assert!(server_config("SSL", &ssl(&good, &ca, ClientAuth::Required)).is_ok());
        assert!(client_config("SSL", &ssl(&good, &ca, ClientAuth::None)).is_ok());
        let failures = [
            (ssl("", "", ClientAuth::None), "ssl.keystore.location"),
            (
                ssl("/no/such.pem", "", ClientAuth::None),
                "ssl.keystore.location",
            ),
            (
                ssl(&mismatched, "", ClientAuth::None),
                "ssl.keystore.location",
            ),
            (ssl(&ca, "", ClientAuth::None), "ssl.keystore.location"),
            (
                ssl(&good, "", ClientAuth::Requested),
                "ssl.truststore.location",
            ),
        ];
        for (settings, key) in failures {
            let err = server_config("SSL", &settings).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{settings:?}: {err:#}");
        }
        let err = client_config("SSL", &ssl(&good, "", ClientAuth::None)).unwrap_err();
        assert!(err.to_string().contains("ssl.truststore.location"), "{err}");
    }
}
