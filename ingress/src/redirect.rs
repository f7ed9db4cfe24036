//! The plain-HTTP listener of an HTTPS ingress: every request gets a permanent redirect to the
//! same host and target over HTTPS, so links and clients typed without `https://` land there.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// The router answering every request with `308` to its HTTPS form on `https_port`.
pub fn router(https_port: u16) -> Router {
    Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move { redirect(&headers, &uri, https_port) })
}

fn redirect(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response {
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host });
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return (StatusCode::BAD_REQUEST, "a Host header is required").into_response();
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, format!("https://{host}{port}{target}"))]).into_response()
}
