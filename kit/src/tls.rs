//! TLS for the servers: a rustls server configuration from PEM files (a certificate chain, a
//! wildcard for `*.<domain>` at the ingress, and its private key), offering HTTP/2 and HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The certificate and key do not make a valid configuration.
    #[error("invalid certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

/// The server configuration of the certificate chain in `cert_file` and the key in `key_file`.
///
/// # Errors
/// [`TlsError`] naming the file or the problem.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File { path: path.display().to_string(), reason };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error(cert_file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert_file, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration of a pair of settings: `None` when both are empty (plain HTTP).
///
/// # Errors
/// [`TlsError`] when one is set without the other, or the files are not usable.
pub fn from_settings(cert_file: &str, key_file: &str) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => server_config(Path::new(cert_file), Path::new(key_file)).map(Some),
        _ => Err(TlsError::File {
            path: if cert_file.is_empty() { key_file.into() } else { cert_file.into() },
            reason: "tls_cert_file and tls_key_file go together".into(),
        }),
    }
}
