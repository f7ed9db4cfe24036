//! Replaying an exchange of the list against the local service, as it was or with changes,
//! through the same code as `tunnel replay` ([`crate::replay`]); the new response is compared
//! with the original's by [`tunnel_trail::compare`], and the replay becomes a row linked to it.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::http::Header;
use tunnel_schemas::record::{ExchangeRecord, RecordedMessage};
use tunnel_trail::compare::{CompareOptions, compare, validate_json_path};

use super::ring::{Entry, Sources};
use super::{Shared, now_ms};
use crate::forward::LocalBody;
use crate::replay::{ReplayOptions, read_response, request_head};

/// What to change in the request before sending it again.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Another method.
    #[serde(default)]
    pub method: Option<String>,
    /// Another path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// Headers to set (replacing every value of the same name), as `[name, value]` pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Headers to leave out.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Another body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// Another body, in standard base64.
    #[serde(default)]
    pub body_base64: Option<String>,
}

/// A replay asked for through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The request id of the exchange to send again.
    pub id: String,
    /// What to change; nothing when absent.
    #[serde(default)]
    pub changes: Changes,
    /// Headers not to compare, beyond the volatile ones.
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    /// JSON paths not to compare (`$.id`, `$.items[*].created_at`).
    #[serde(default)]
    pub ignore_json_paths: Vec<String>,
}

/// Why a replay was not sent.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// No exchange with that id in the list.
    #[error("no exchange {0} in the inspector")]
    NotFound(String),
    /// The request cannot be replayed, or the changes are invalid.
    #[error("{1}")]
    Invalid(&'static str, String),
}

impl RerunError {
    /// The typed code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Invalid(code, _) => code,
        }
    }
}

/// Sends the exchange `asked.id` again with `asked.changes`, lists the replay and returns it
/// (with its comparison when the original has a response).
///
/// # Errors
/// [`RerunError`] when the exchange is unknown or cannot be replayed as asked.
pub(crate) async fn rerun(shared: &Shared, asked: ReplayRequest) -> Result<Arc<Entry>, RerunError> {
    let original = shared.get(&asked.id).ok_or_else(|| RerunError::NotFound(asked.id.clone()))?;
    let invalid = |code, text: String| RerunError::Invalid(code, text);
    if original.record.upgraded {
        return Err(invalid("not_replayable", "an upgraded exchange (WebSocket) is not replayable".into()));
    }
    for path in &asked.ignore_json_paths {
        validate_json_path(path).map_err(|e| invalid("invalid_json_path", e.to_string()))?;
    }
    let tunnel = shared
        .tunnel(&original.record.tunnel)
        .ok_or_else(|| invalid("unknown_tunnel", format!("tunnel {} is not served here", original.record.tunnel)))?;
    let changes = asked.changes;
    let mut record = original.record.clone();
    if let Some(method) = changes.method.filter(|m| !m.is_empty()) {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            return Err(invalid("bad_request", format!("invalid method {method:?}")));
        }
        record.request.method = method;
    }
    if let Some(path) = changes.path.filter(|p| !p.is_empty()) {
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(invalid("bad_request", format!("invalid path {path:?}: it starts with /")));
        }
        record.request.target = path;
    }
    let body = match (changes.body, changes.body_base64) {
        (Some(text), _) => Some(Bytes::from(text)),
        (None, Some(encoded)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| invalid("bad_request", format!("body_base64: {e}")))?,
        )),
        (None, None) => None,
    };
    if let Some(body) = body {
        record.request.size = body.len() as u64;
        (record.request.body, record.request.cut) = (body, false);
    } else if record.request.cut {
        return Err(invalid("body_cut", "the request body was cut: give the body to send".into()));
    }
    record
        .request
        .headers
        .retain(|Header(name, _)| !changes.remove_headers.iter().any(|r| r.eq_ignore_ascii_case(name)));
    let mut set = Vec::with_capacity(changes.headers.len());
    for (name, value) in changes.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(&value).is_err() {
            return Err(invalid("bad_request", format!("invalid header {name:?}")));
        }
        set.push(Header(name.to_ascii_lowercase(), Bytes::from(value)));
    }
    let options = ReplayOptions {
        target: tunnel.target.clone(),
        concurrency: 1,
        speed: 0.0,
        replay_header: true,
        headers: set,
        compare: None,
        send_cut: false,
    };
    let request_id = uuid::Uuid::now_v7().to_string();
    let (head, _unfilled) = request_head(&record, &request_id, &options);
    let started = Instant::now();
    let at_ms = now_ms();
    let sent = tunnel.forwarder.send(head.clone(), LocalBody::whole(record.request.body.clone())).await;
    let head_us = micros(started);
    let (response, error) = match sent {
        Ok(response) => match read_response(response, shared.body_cap).await {
            Ok(observed) => (Some(observed), None),
            Err(_) => (None, Some(ErrorCode::UpstreamUnreachable)),
        },
        Err(failure) => (None, Some(failure.code)),
    };
    let comparison = match (&original.record.response, &response) {
        (Some(before), Some(after)) => {
            let options =
                CompareOptions { ignore_headers: asked.ignore_headers, ignore_json_paths: asked.ignore_json_paths };
            Some(compare(before, &original.record.masked, after, &options))
        }
        _ => None,
    };
    let replay = ExchangeRecord {
        request_id,
        at_ms,
        head_us,
        duration_us: micros(started),
        request: RecordedMessage { method: head.method, target: head.target, headers: head.headers, ..record.request },
        response,
        error,
        upgraded: false,
        masked: Vec::new(),
        replay_of: Some(original.record.request_id.clone()),
        ..record
    };
    let sources = Sources { replay: true, ..Sources::default() };
    Ok(shared.insert(Entry { seq: 0, record: replay, sources, open: false, comparison }))
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
