//! The local service a tunnel forwards to.

use http::Uri;
use http::uri::{Authority, Scheme};

/// Where requests go: scheme and authority of the local service, and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Path prepended to every request target (`/api` in `--to http://host/api`), without a
    /// trailing slash; empty for none.
    prefix: String,
}

/// Why a target was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL of the accepted shape.
    #[error("invalid target {0:?}: expected a port (3000) or a URL such as http://localhost:3000")]
    Invalid(String),
    /// A scheme other than `http` and `https`.
    #[error("unsupported scheme in {0:?}: only http:// and https:// targets are supported")]
    UnsupportedScheme(String),
}

impl Target {
    /// The local service on `port` of this machine.
    pub fn port(port: u16) -> Self {
        Self::parse(&format!("http://localhost:{port}"))
            .unwrap_or_else(|_| unreachable!("a port always forms a valid URL"))
    }

    /// Parses `http[s]://host[:port][/prefix]`.
    ///
    /// # Errors
    /// [`TargetError`] when the URL is malformed or not `http`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: Uri = url.parse().map_err(|_| TargetError::Invalid(url.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            return Err(TargetError::Invalid(url.to_owned()));
        };
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(TargetError::UnsupportedScheme(url.to_owned()));
        }
        if uri.query().is_some() {
            return Err(TargetError::Invalid(url.to_owned()));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self { scheme, authority, prefix })
    }

    /// The URI of request `target` (raw path and query) at this service.
    ///
    /// # Errors
    /// `None` when the target cannot form a URI (it came from a valid request, so this is rare).
    pub fn uri_for(&self, target: &str) -> Option<Uri> {
        let path_and_query = if target.starts_with('/') {
            format!("{}{target}", self.prefix)
        } else {
            format!("{}/{target}", self.prefix)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }
}

/// How long [`Target::probe`] waits for the local service to accept a connection.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Target {
    /// Checks that something accepts connections at the service's address.
    ///
    /// # Errors
    /// What went wrong, naming the service: nothing listens, the name does not resolve, no
    /// answer in time.
    pub async fn probe(&self) -> Result<(), String> {
        let port = self.authority.port_u16().unwrap_or(if self.scheme == Scheme::HTTPS { 443 } else { 80 });
        let host = self.authority.host().trim_start_matches('[').trim_end_matches(']');
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(format!("nothing answers at {self} yet (connection refused): is it running?"))
            }
            Ok(Err(e)) => Err(format!("cannot reach {self}: {e}")),
            Err(_) => Err(format!("{self} did not accept a connection within {} s", PROBE_TIMEOUT.as_secs())),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_uris_keeping_raw_queries() {
        let target = Target::port(3000);
        assert_eq!(target.to_string(), "http://localhost:3000");
        let uri = target.uri_for("/a%2Fb?x=1&x=%zz").expect("valid");
        assert_eq!(uri.to_string(), "http://localhost:3000/a%2Fb?x=1&x=%zz");
    }

    #[test]
    fn prefixes_paths() {
        let target = Target::parse("http://10.0.0.2:8080/api/").expect("valid");
        assert_eq!(target.uri_for("/v1?q").expect("valid").to_string(), "http://10.0.0.2:8080/api/v1?q");
    }

    #[tokio::test]
    async fn probes_say_whether_anything_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let port = listener.local_addr().expect("address").port();
        let target = Target::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
        assert_eq!(target.probe().await, Ok(()));
        drop(listener);
        let refused = target.probe().await.expect_err("closed");
        assert!(refused.contains("connection refused"), "{refused}");
    }

    #[test]
    fn refuses_other_shapes() {
        assert!(matches!(Target::parse("localhost:3000"), Err(TargetError::Invalid(_))));
        assert!(matches!(Target::parse("ftp://x"), Err(TargetError::UnsupportedScheme(_))));
        assert!(matches!(Target::parse("http://x/?q=1"), Err(TargetError::Invalid(_))));
    }
}
