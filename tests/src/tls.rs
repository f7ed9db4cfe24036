//! Certificates made at test time: a fresh CA, and a server and a client certificate it signed,
//! as PEM files.

use std::path::PathBuf;

/// A CA and a certificate for some names, written to a temporary directory.
pub struct TestCertificates {
    /// The CA certificate (trust it through `SSL_CERT_FILE` or a root store).
    pub ca_file: PathBuf,
    /// The server certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// A client certificate (for servers that verify clients, mutual TLS).
    pub client_cert_file: PathBuf,
    /// The client certificate's private key.
    pub client_key_file: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Issues a certificate for `names` (DNS names, wildcards allowed, IP addresses) and a
    /// client certificate from a fresh CA.
    ///
    /// # Panics
    /// When generation or writing fails.
    pub fn issue(names: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names).expect("params").signed_by(&key, &issuer).expect("cert");
        let client_key = rcgen::KeyPair::generate().expect("client key");
        let mut client_params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &issuer).expect("client cert");
        let dir = tempfile::tempdir().expect("dir");
        let file = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("pem written");
            path
        };
        Self {
            ca_file: file("ca.pem", ca.pem()),
            cert_file: file("cert.pem", cert.pem()),
            key_file: file("key.pem", key.serialize_pem()),
            client_cert_file: file("client.pem", client.pem()),
            client_key_file: file("client-key.pem", client_key.serialize_pem()),
            ca_pem: ca.pem(),
            _dir: dir,
        }
    }

    /// A client configuration trusting this CA alone.
    ///
    /// # Panics
    /// When the CA cannot be parsed.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca_file).expect("ca")).expect("added");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }
}
