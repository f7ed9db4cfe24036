//! Whom the client trusts over TLS: the system's root certificates, plus the certificates of a
//! CA file when one is given (`--ca-file`, `TUNNEL_CA_FILE`), for a private CA. Set once at
//! start; every outgoing connection (the session-host's WebSocket, its trail endpoint, `https://`
//! targets and replays) uses the same roots, and refuses a certificate they do not verify.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

static TRUSTED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the CA file {path}: {problem}")]
pub struct TrustError {
    path: String,
    problem: String,
}

/// Adds the certificates of `ca_file` (PEM) to the system's roots, for the whole process; call
/// before any connection is made.
///
/// # Errors
/// [`TrustError`] when the file cannot be read or holds no usable certificate.
pub fn add_ca_file(ca_file: &Path) -> Result<(), TrustError> {
    let error = |problem: String| TrustError { path: ca_file.display().to_string(), problem };
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no certificate in it".into()));
    }
    let mut roots = system_roots();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| error(e.to_string()))?;
    }
    let _ = TRUSTED.set(config(roots));
    Ok(())
}

/// The TLS configuration of every outgoing connection.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    TRUSTED.get_or_init(|| config(system_roots())).clone()
}

/// No ALPN protocols: the HTTP connector sets its own, and the WebSocket needs none.
fn config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The system's root certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace them, as for any
/// program using the platform's store).
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(error = %error, "a system root certificate could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates: https and wss servers cannot be verified");
    }
    roots
}
