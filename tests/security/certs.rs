//! Throwaway certificates for the security tests, written as PEM files.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one test: a CA, a broker keystore (key and chain) for 127.0.0.1 and
/// localhost, and a client certificate and key.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub broker_keystore: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A keystore whose key is not its certificate's.
    pub mismatched_keystore: PathBuf,
}

/// The client certificate's subject, as the broker's principal names it.
pub const CLIENT_SUBJECT: &str = "CN=client,OU=eng,O=corelog";

fn name(entries: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (kind, value) in entries {
        dn.push(kind.clone(), *value);
    }
    dn
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |file: &str| dir.path().join(file);
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = name(&[(DnType::CommonName, "corelog test CA")]);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |sans: Vec<String>, dn: DistinguishedName| {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name = dn;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert, key)
        };
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (broker, broker_key) = leaf(sans, name(&[(DnType::CommonName, "broker")]));
        let client_dn = name(&[
            (DnType::OrganizationName, "corelog"),
            (DnType::OrganizationalUnitName, "eng"),
            (DnType::CommonName, "client"),
        ]);
        let (client, client_key) = leaf(Vec::new(), client_dn);
        let write = |file: &str, text: String| {
            let p = path(file);
            std::fs::write(&p, text).unwrap();
            p
        };
        Certs {
            ca: write("ca.pem", ca.pem()),
            broker_keystore: write(
                "broker.pem",
                format!("{}{}{}", broker_key.serialize_pem(), broker.pem(), ca.pem()),
            ),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            mismatched_keystore: write(
                "mismatched.pem",
                format!("{}{}", client_key.serialize_pem(), broker.pem()),
            ),
            _dir: dir,
        }
    }
}
