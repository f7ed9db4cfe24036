//! Header handling as a proxy must (RFC 9110 §7.6): hop-by-hop fields dropped in both
//! directions, fields named by `Connection` dropped, `X-Forwarded-*` and `X-Request-Id` set.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use tunnel_schemas::http::Header;

/// Fields that describe one connection, never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What ingress knows about a request that the local service should learn.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    /// Public client IP address.
    pub client_ip: &'a str,
    /// `http` or `https`.
    pub proto: &'a str,
    /// Host the public client asked for.
    pub host: Option<&'a str>,
    /// The request id.
    pub request_id: &'a str,
}

/// Total size of the request head's fields, as counted against `max_header_bytes`.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// The request header list for the local service: end-to-end fields in order, then the proxy
/// fields. An incoming `X-Forwarded-For` chain is extended with the client's address.
pub fn request_headers(headers: &HeaderMap, forwarded: &Forwarded<'_>) -> Vec<Header> {
    let connection_tokens = connection_tokens(headers);
    let mut out = Vec::with_capacity(headers.len() + 4);
    let mut forwarded_for: Option<Vec<u8>> = None;
    for (name, value) in headers {
        let name_str = name.as_str();
        if is_hop_by_hop(name_str, &connection_tokens) {
            continue;
        }
        match name_str {
            // `Expect: 100-continue` is answered here (hyper sends the 100 when the body is read).
            "x-forwarded-proto" | "x-forwarded-host" | "x-request-id" | "expect" => {}
            "x-forwarded-for" => {
                let chain = forwarded_for.get_or_insert_with(Vec::new);
                if !chain.is_empty() {
                    chain.extend_from_slice(b", ");
                }
                chain.extend_from_slice(value.as_bytes());
            }
            _ => out.push(Header(name_str.to_owned(), Bytes::copy_from_slice(value.as_bytes()))),
        }
    }
    let mut chain = forwarded_for.unwrap_or_default();
    if !chain.is_empty() {
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(forwarded.client_ip.as_bytes());
    if !headers.contains_key(axum::http::header::HOST)
        && let Some(host) = forwarded.host
    {
        out.push(Header("host".into(), Bytes::copy_from_slice(host.as_bytes())));
    }
    out.push(Header("x-forwarded-for".into(), Bytes::from(chain)));
    out.push(Header("x-forwarded-proto".into(), Bytes::copy_from_slice(forwarded.proto.as_bytes())));
    if let Some(host) = forwarded.host {
        out.push(Header("x-forwarded-host".into(), Bytes::copy_from_slice(host.as_bytes())));
    }
    out.push(Header("x-request-id".into(), Bytes::copy_from_slice(forwarded.request_id.as_bytes())));
    out
}

/// The public response headers from the local service's list: hop-by-hop fields and fields that
/// are not valid HTTP dropped, the rest appended in order. A `101` to an upgrade keeps its
/// `Connection` and `Upgrade` fields.
pub fn response_headers(headers: Vec<Header>, upgrade: bool) -> HeaderMap {
    let connection_tokens: Vec<String> = headers
        .iter()
        .filter(|Header(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|Header(_, value)| tokens(value))
        .collect();
    let mut map = HeaderMap::with_capacity(headers.len());
    for Header(name, value) in headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::debug!(name, "dropping invalid response header name");
            continue;
        };
        let keep = upgrade && (name == axum::http::header::CONNECTION || name == axum::http::header::UPGRADE);
        if !keep && is_hop_by_hop(name.as_str(), &connection_tokens) {
            continue;
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(value) => {
                map.append(name, value);
            }
            Err(_) => tracing::debug!(%name, "dropping invalid response header value"),
        }
    }
    map
}

fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || connection_tokens.iter().any(|token| token == name)
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers.get_all(axum::http::header::CONNECTION).iter().flat_map(|v| tokens(v.as_bytes())).collect()
}

fn tokens(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded() -> Forwarded<'static> {
        Forwarded { client_ip: "10.0.0.9", proto: "https", host: Some("demo.example.com"), request_id: "rid-1" }
    }

    fn find<'a>(headers: &'a [Header], name: &str) -> Vec<&'a [u8]> {
        headers.iter().filter(|h| h.0 == name).map(|h| h.1.as_ref()).collect()
    }

    #[test]
    fn drops_hop_by_hop_and_connection_listed_fields() {
        let mut map = HeaderMap::new();
        map.insert("connection", HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        map.insert("x-secret-hop", HeaderValue::from_static("1"));
        map.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        map.insert("te", HeaderValue::from_static("trailers"));
        map.insert("x-kept", HeaderValue::from_static("yes"));
        let out = request_headers(&map, &forwarded());
        let names: Vec<&str> = out.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(
            names,
            ["x-kept", "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"]
        );
    }

    #[test]
    fn extends_forwarded_for_and_replaces_request_id() {
        let mut map = HeaderMap::new();
        map.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        map.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        map.insert("x-request-id", HeaderValue::from_static("client-chosen"));
        map.insert("host", HeaderValue::from_static("demo.example.com"));
        let out = request_headers(&map, &forwarded());
        assert_eq!(find(&out, "x-forwarded-for"), [b"1.1.1.1, 2.2.2.2, 10.0.0.9".as_slice()]);
        assert_eq!(find(&out, "x-request-id"), [b"rid-1".as_slice()]);
        assert_eq!(find(&out, "host"), [b"demo.example.com".as_slice()]);
    }

    #[test]
    fn keeps_repeated_and_non_utf8_values_in_order() {
        let mut map = HeaderMap::new();
        for i in 0..3 {
            map.append("set-cookie", HeaderValue::from_str(&format!("c{i}=v")).expect("valid"));
        }
        map.append("x-raw", HeaderValue::from_bytes(b"\xff\xfeok").expect("obs-text is valid"));
        let out = request_headers(&map, &forwarded());
        assert_eq!(find(&out, "set-cookie"), [b"c0=v".as_slice(), b"c1=v", b"c2=v"]);
        assert_eq!(find(&out, "x-raw"), [b"\xff\xfeok".as_slice()]);
    }

    #[test]
    fn response_drops_hop_by_hop_and_invalid_fields() {
        let list = vec![
            Header("set-cookie".into(), Bytes::from_static(b"a=1")),
            Header("connection".into(), Bytes::from_static(b"close")),
            Header("transfer-encoding".into(), Bytes::from_static(b"chunked")),
            Header("bad name".into(), Bytes::from_static(b"x")),
            Header("x-bad-value".into(), Bytes::from_static(b"a\r\nb")),
            Header("set-cookie".into(), Bytes::from_static(b"b=2")),
        ];
        let map = response_headers(list, false);
        let cookies: Vec<&[u8]> = map.get_all("set-cookie").iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(cookies, [b"a=1".as_slice(), b"b=2"]);
        assert_eq!(map.len(), 2);
    }
}
