//! Request ids: the public client's `X-Request-Id` when it is sane, a fresh UUIDv7 otherwise.

use axum::http::HeaderMap;

/// Longest client-supplied request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of this request.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_sane(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static("<script>"));
        assert_ne!(request_id(&headers), "<script>");
        headers.remove("x-request-id");
        assert_eq!(request_id(&headers).len(), 36);
    }
}
