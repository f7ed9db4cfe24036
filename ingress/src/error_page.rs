//! Error responses produced by ingress itself: the status of the [`ErrorCode`], a short body (JSON
//! when the client accepts JSON, a small HTML page otherwise) and an `X-Tunnel-Error` header, so
//! scripts can tell a tunnel error from an error of the local service.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tunnel_schemas::ErrorCode;

/// Response header naming the error code of an error produced by the tunnel.
pub const ERROR_HEADER: &str = "x-tunnel-error";

/// Whether the client prefers JSON (its `Accept` names `application/json` or `+json`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/json") || value.contains("+json"))
}

/// The public response for `code`.
pub fn error_response(code: ErrorCode, request_id: &str, json: bool) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let (content_type, body) = if json {
        let body = serde_json::json!({
            "error": { "code": code.as_str(), "message": code.message(), "request_id": request_id }
        });
        ("application/json", body.to_string())
    } else {
        ("text/html; charset=utf-8", html_page(status, code, request_id))
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code.as_str()));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id);
    }
    response
}

fn html_page(status: StatusCode, code: ErrorCode, request_id: &str) -> String {
    // The request id is either generated or checked to be visible ASCII without markup characters.
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{status}</h1><p>{message}</p><p><small>error <code>{code}</code> · request <code>{request_id}</code></small></p>\
         </body></html>\n",
        message = code.message(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_only_when_accepted() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html, application/json;q=0.9"));
        assert!(wants_json(&headers));
    }

    #[test]
    fn every_code_renders_with_its_status() {
        for code in ErrorCode::ALL {
            for json in [false, true] {
                let response = error_response(code, "r1", json);
                assert_eq!(response.status().as_u16(), code.http_status());
                assert_eq!(response.headers()[ERROR_HEADER], code.as_str());
            }
        }
    }
}
