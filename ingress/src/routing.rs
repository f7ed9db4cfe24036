//! Finding the tunnel a public request is for: by Host (`<name>.<domain>`, port ignored,
//! case-insensitive) or by path (`/t/<name>/…`, prefix stripped).
//!
//! The host is read once, by [`public_host`], and a request whose host is ambiguous (two Host
//! fields, a Host that disagrees with an absolute-form target or HTTP/2 `:authority`) or
//! malformed (userinfo, characters no host has) is refused with 400 before routing: a proxy
//! in front that reads the other value must not send one tunnel's traffic to another. The path
//! is never decoded: `/t/%64emo/` and `/t/demo%2Fx/` name no tunnel.

use axum::http::{HeaderMap, Uri, header};
use tunnel_schemas::names::TunnelName;

/// Why a request's host cannot be trusted; answered 400 `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// More than one Host field.
    Repeated,
    /// A Host or authority that is not `host[:port]` (userinfo, spaces, non-ASCII, …).
    Malformed,
    /// The Host field names another host than the request target's authority.
    Conflicting,
}

/// The host a request is for: its Host field or, without one, its target's authority (HTTP/2
/// `:authority`, an absolute-form target); `None` when it has neither.
///
/// # Errors
/// [`HostError`] when the host is ambiguous or malformed.
pub fn public_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Result<Option<&'a str>, HostError> {
    let mut fields = headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(HostError::Repeated);
    }
    let field = match field {
        Some(value) => Some(value.to_str().map_err(|_| HostError::Malformed)?).filter(|host| !host.is_empty()),
        None => None,
    };
    let authority = uri.authority().map(axum::http::uri::Authority::as_str);
    for host in field.iter().chain(authority.iter()) {
        if !is_host(host) {
            return Err(HostError::Malformed);
        }
    }
    match (field, authority) {
        (Some(field), Some(authority)) if !same_host(field, authority) => Err(HostError::Conflicting),
        (Some(host), _) | (None, Some(host)) => Ok(Some(host)),
        (None, None) => Ok(None),
    }
}

/// Whether `text` is `host[:port]` (RFC 3986 `reg-name` or `IP-literal`, digits for the port).
fn is_host(text: &str) -> bool {
    let (host_ok, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let Some((literal, after)) = rest.split_once(']') else { return false };
            let literal_ok =
                !literal.is_empty() && literal.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            match after.strip_prefix(':') {
                Some(port) => (literal_ok, port),
                None => (literal_ok && after.is_empty(), ""),
            }
        }
        None => {
            let (host, port) = text.rsplit_once(':').unwrap_or((text, ""));
            (!host.is_empty() && host.bytes().all(is_reg_name_byte), port)
        }
    };
    host_ok && port.bytes().all(|b| b.is_ascii_digit())
}

fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
}

/// Whether two `host[:port]` values name the same host (ports aside, as routing ignores them).
fn same_host(a: &str, b: &str) -> bool {
    let host = |text: &str| strip_port(text).trim_end_matches('.').to_ascii_lowercase();
    host(a) == host(b)
}

/// Where a public request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The tunnel.
    pub name: TunnelName,
    /// The request target to forward (the path prefix removed for path routing).
    pub target: String,
}

/// The prefix of path-routed requests.
const PATH_PREFIX: &str = "/t/";

/// Routes a request for `host` (the Host header or `:authority`) and raw `target` (path and
/// query). Host routing wins; a request that names no valid tunnel gives `None`.
pub fn route(host: Option<&str>, target: &str, domain: &str) -> Option<Route> {
    if let Some(name) = host.and_then(|host| name_from_host(host, domain)) {
        return Some(Route { name, target: target.to_owned() });
    }
    let rest = target.strip_prefix(PATH_PREFIX)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let name = TunnelName::parse(&rest[..end].to_ascii_lowercase()).ok()?;
    let remainder = &rest[end..];
    let target = if remainder.starts_with('/') { remainder.to_owned() } else { format!("/{remainder}") };
    Some(Route { name, target })
}

fn name_from_host(host: &str, domain: &str) -> Option<TunnelName> {
    let host = strip_port(host).trim_end_matches('.');
    let domain = domain.trim_end_matches('.');
    let label_end = host.len().checked_sub(domain.len() + 1)?;
    if !host.is_char_boundary(label_end) {
        return None;
    }
    let (label, suffix) = host.split_at(label_end);
    if !suffix.starts_with('.') || !suffix[1..].eq_ignore_ascii_case(domain) {
        return None;
    }
    TunnelName::parse(&label.to_ascii_lowercase()).ok()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal never names a tunnel
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(host: Option<&str>, target: &str) -> Option<(String, String)> {
        route(host, target, "tunnel.test").map(|r| (r.name.to_string(), r.target))
    }

    #[test]
    fn routes_by_host_ignoring_port_and_case() {
        let expected = Some(("demo".to_owned(), "/a?b".to_owned()));
        assert_eq!(routed(Some("demo.tunnel.test"), "/a?b"), expected);
        assert_eq!(routed(Some("DeMo.Tunnel.Test:8080"), "/a?b"), expected);
        assert_eq!(routed(Some("demo.tunnel.test."), "/a?b"), expected);
    }

    #[test]
    fn host_routing_keeps_a_t_path() {
        assert_eq!(routed(Some("demo.tunnel.test"), "/t/other/x"), Some(("demo".into(), "/t/other/x".into())));
    }

    #[test]
    fn routes_by_path_and_strips_prefix() {
        assert_eq!(routed(Some("localhost:8080"), "/t/demo/a/b?x=1"), Some(("demo".into(), "/a/b?x=1".into())));
        assert_eq!(routed(None, "/t/demo"), Some(("demo".into(), "/".into())));
        assert_eq!(routed(None, "/t/demo?x=%2F"), Some(("demo".into(), "/?x=%2F".into())));
        assert_eq!(routed(None, "/t/DEMO/"), Some(("demo".into(), "/".into())));
    }

    fn host_of(fields: &[&[u8]], target: &str) -> Result<Option<String>, HostError> {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(header::HOST, axum::http::HeaderValue::from_bytes(field).expect("header value"));
        }
        let uri: Uri = target.parse().expect("uri");
        public_host(&headers, &uri).map(|host| host.map(str::to_owned))
    }

    #[test]
    fn the_host_is_one_well_formed_value() {
        assert_eq!(host_of(&[b"demo.tunnel.test:8080"], "/"), Ok(Some("demo.tunnel.test:8080".into())));
        assert_eq!(host_of(&[b"[::1]:80"], "/"), Ok(Some("[::1]:80".into())));
        assert_eq!(host_of(&[], "http://demo.tunnel.test/x"), Ok(Some("demo.tunnel.test".into())));
        assert_eq!(
            host_of(&[b"DEMO.tunnel.test."], "http://demo.tunnel.test:80/x"),
            Ok(Some("DEMO.tunnel.test.".into()))
        );
        assert_eq!(host_of(&[], "/"), Ok(None));
        assert_eq!(host_of(&[b""], "/"), Ok(None));
        assert_eq!(host_of(&[b"a.tunnel.test", b"b.tunnel.test"], "/"), Err(HostError::Repeated));
        assert_eq!(host_of(&[b"a.tunnel.test", b"a.tunnel.test"], "/"), Err(HostError::Repeated));
        for bad in [&b"a@demo.tunnel.test"[..], b"demo.tunnel.test:80x", b"de mo", b"demo\xff", b"[::1", b"[x]", b":80"]
        {
            assert_eq!(host_of(&[bad], "/"), Err(HostError::Malformed), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(host_of(&[], "http://a@demo.tunnel.test/"), Err(HostError::Malformed));
        assert_eq!(host_of(&[b"live.tunnel.test"], "http://other.tunnel.test/x"), Err(HostError::Conflicting));
    }

    #[test]
    fn refuses_what_names_no_tunnel() {
        assert_eq!(routed(Some("tunnel.test"), "/"), None);
        assert_eq!(routed(Some("a.b.tunnel.test"), "/"), None);
        assert_eq!(routed(Some("demo.other.test"), "/"), None);
        assert_eq!(routed(Some("xtunnel.test"), "/"), None);
        assert_eq!(routed(Some("[::1]:80"), "/"), None);
        assert_eq!(routed(None, "/t/"), None);
        assert_eq!(routed(None, "/t/-bad-/x"), None);
        assert_eq!(routed(None, "/x/demo"), None);
    }
}

#[cfg(test)]
mod props;
