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

    #[test]
    fn refuses_other_shapes() {
        assert!(matches!(Target::parse("localhost:3000"), Err(TargetError::Invalid(_))));
        assert!(matches!(Target::parse("ftp://x"), Err(TargetError::UnsupportedScheme(_))));
        assert!(matches!(Target::parse("http://x/?q=1"), Err(TargetError::Invalid(_))));
    }
}
