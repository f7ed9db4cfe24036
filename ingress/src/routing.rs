//! Finding the tunnel a public request is for: by Host (`<name>.<domain>`, port ignored,
//! case-insensitive) or by path (`/t/<name>/…`, prefix stripped).

use tunnel_schemas::names::TunnelName;

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
