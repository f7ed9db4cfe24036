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

/// Longest detail from a tunnel's client shown on an error page.
const MAX_DETAIL_CHARS: usize = 200;

/// The public response for `code`.
pub fn error_response(code: ErrorCode, request_id: &str, json: bool) -> Response {
    detailed_error_response(code, request_id, json, None)
}

/// The public response for `code`, with what the tunnel's client said about it (the local
/// service it could not reach), cut to [`MAX_DETAIL_CHARS`] and escaped.
pub fn detailed_error_response(code: ErrorCode, request_id: &str, json: bool, detail: Option<&str>) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let detail: Option<String> = detail
        .map(|text| text.chars().filter(|c| !c.is_control()).take(MAX_DETAIL_CHARS).collect())
        .filter(|text: &String| !text.is_empty());
    let (content_type, body) = if json {
        let mut error =
            serde_json::json!({ "code": code.as_str(), "message": code.message(), "request_id": request_id });
        if let Some(detail) = &detail {
            error["detail"] = detail.as_str().into();
        }
        ("application/json", serde_json::json!({ "error": error }).to_string())
    } else {
        ("text/html; charset=utf-8", html_page(status, code, request_id, detail.as_deref()))
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

fn html_page(status: StatusCode, code: ErrorCode, request_id: &str, detail: Option<&str>) -> String {
    let detail = detail.map(|text| format!("<p><code>{}</code></p>", escape_html(text))).unwrap_or_default();
    // The request id is either generated or checked to be visible ASCII without markup characters.
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{status}</h1><p>{message}</p>{detail}<p><small>error <code>{code}</code> · request <code>{request_id}</code></small></p>\
         </body></html>\n",
        message = code.message(),
    )
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
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

    #[test]
    fn details_are_escaped_and_bounded() {
        let detail = format!("<script>alert('x')</script>\r\n{}", "y".repeat(500));
        let response = detailed_error_response(ErrorCode::UpstreamUnreachable, "r1", false, Some(&detail));
        let body = futures_body(response);
        assert!(body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{body}");
        assert!(!body.contains("<script>"));
        assert!(!body.contains(&"y".repeat(200)), "cut to the bound");
    }

    fn futures_body(response: Response) -> String {
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("text")
    }
}
