//! The inspector's HTTP server: the page, the JSON API and live updates, behind a guard that
//! refuses requests addressed to any other host (DNS rebinding) or posted from another origin.
//!
//! - `GET /`: the page;
//! - `GET /api/requests?method=&status=&path=&tunnel=&source=&limit=`: rows, newest first;
//! - `GET /api/requests/{id}`: one exchange with its heads and bodies;
//! - `GET /api/requests/{id}/body/{request|response}`: a body as it was, with its content type;
//! - `GET /api/events`: server-sent events, one `exchange` event per new or changed row;
//! - `POST /api/replay`: sends an exchange again (see [`ReplayRequest`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tunnel_schemas::pattern::Glob;
use tunnel_schemas::record::{DEFAULT_MASKED, mask};
use tunnel_trail::compare::Comparison;
use tunnel_trail::filter::StatusFilter;
use tunnel_trail::json::ExchangeJson;

use super::Shared;
use super::rerun::{ReplayRequest, rerun};
use super::ring::{Entry, Sources};

/// The page: hand-written HTML, CSS and JavaScript, no external resource.
const PAGE: &str = include_str!("page.html");
/// What the page may load: itself, its inline script and style, images of its own API.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'";
/// Most rows one list answer carries.
const MAX_LIST: usize = super::MAX_CAPACITY;

/// Serves the inspector on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let body_limit = shared.body_cap.saturating_mul(4).saturating_add(1 << 20);
    let app = Router::new()
        .route("/", get(page))
        .route("/api/requests", get(list))
        .route("/api/requests/{id}", get(detail))
        .route("/api/requests/{id}/body/{side}", get(body))
        .route("/api/events", get(events))
        .route("/api/replay", post(replay))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such page") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::warn!(error = %e, "inspector stopped");
    }
}

/// An API error: a status, a typed code and a message, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Refuses a request whose `Host` is not the inspector's own address (a page of another site
/// resolving its name to 127.0.0.1), and a non-GET request from a page of another origin.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match refusal(&shared, request.method(), request.headers()) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    }
}

/// Why the guard refuses a request with `method` and `headers`, if it does.
fn refusal(shared: &Shared, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    let port = shared.addr.port();
    let own = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        [shared.addr.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")]
            .contains(&authority)
    };
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !header(header::HOST).is_some_and(own) {
        let text = "the inspector answers only to its own address";
        return Some(ApiError::new(StatusCode::FORBIDDEN, "forbidden_host", text));
    }
    let safe = matches!(*method, Method::GET | Method::HEAD);
    if !safe && let Some(origin) = header(header::ORIGIN) {
        let authority = origin.strip_prefix("http://").unwrap_or_default();
        if !own(authority) {
            let text = "requests from other sites are refused";
            return Some(ApiError::new(StatusCode::FORBIDDEN, "forbidden_origin", text));
        }
    }
    None
}

async fn page() -> Response {
    ([(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)], Html(PAGE)).into_response()
}

/// One row of the list.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Request id.
    pub id: String,
    /// Position in the inspector's history.
    pub seq: u64,
    /// Tunnel name.
    pub tunnel: String,
    /// Arrival, Unix milliseconds.
    pub at_ms: u64,
    /// Method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Response status; absent when there was no response.
    pub status: Option<u16>,
    /// Error code when the exchange failed.
    pub error: Option<String>,
    /// Time to the end of the exchange, in milliseconds.
    pub duration_ms: f64,
    /// Who saw it.
    pub sources: Sources,
    /// Still streaming.
    pub open: bool,
    /// Upgraded (WebSocket): only the heads are kept.
    pub upgraded: bool,
    /// The request id this exchange replays.
    pub replay_of: Option<String>,
    /// For a replay: whether its response matches the original's.
    pub matches: Option<bool>,
}

impl From<&Entry> for Summary {
    fn from(entry: &Entry) -> Self {
        let record = &entry.record;
        Self {
            id: record.request_id.clone(),
            seq: entry.seq,
            tunnel: record.tunnel.clone(),
            at_ms: record.at_ms,
            method: record.request.method.clone(),
            target: record.request.target.clone(),
            status: record.response.as_ref().map(|r| r.status),
            error: record.error.map(|code| code.as_str().to_owned()),
            duration_ms: record.duration_us as f64 / 1000.0,
            sources: entry.sources,
            open: entry.open,
            upgraded: record.upgraded,
            replay_of: record.replay_of.clone(),
            matches: entry.comparison.as_ref().map(Comparison::matches),
        }
    }
}

/// One exchange in full.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// The row.
    #[serde(flatten)]
    pub summary: Summary,
    /// Heads and bodies (credential values masked), bodies as text or base64.
    pub exchange: ExchangeJson,
    /// For a replay: its response against the original's.
    pub comparison: Option<Comparison>,
}

impl From<&Entry> for Detail {
    fn from(entry: &Entry) -> Self {
        let mut shown = entry.record.clone();
        let names: Vec<String> = DEFAULT_MASKED.iter().map(|&name| name.to_owned()).collect();
        let mut masked = mask(&mut shown.request.headers, &names);
        if let Some(response) = shown.response.as_mut() {
            masked.extend(mask(&mut response.headers, &names));
        }
        masked.retain(|name| !shown.masked.contains(name));
        shown.masked.extend(masked);
        Self {
            summary: Summary::from(entry),
            exchange: ExchangeJson::from(&shown),
            comparison: entry.comparison.clone(),
        }
    }
}

/// What a list request selects.
#[derive(Debug, Default)]
struct Selection {
    method: Option<String>,
    status: Option<StatusFilter>,
    /// A glob when it has a `*`, else a part of the path.
    path: Option<String>,
    tunnel: Option<String>,
    source: Option<String>,
    limit: Option<usize>,
}

impl Selection {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let bad = |text: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_filter", text);
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
        let mut selection = Self::default();
        for (key, value) in pairs {
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "method" => selection.method = Some(value),
                "status" => {
                    selection.status =
                        Some(value.parse().map_err(|e: tunnel_trail::filter::FilterError| bad(e.to_string()))?)
                }
                "path" => selection.path = Some(value),
                "tunnel" => selection.tunnel = Some(value),
                "source" if ["client", "server", "replay"].contains(&value.as_str()) => selection.source = Some(value),
                "limit" => selection.limit = Some(value.parse().map_err(|_| bad(format!("invalid limit {value:?}")))?),
                _ => return Err(bad(format!("unknown filter {key}={value}"))),
            }
        }
        Ok(selection)
    }

    fn keeps(&self, entry: &Entry) -> bool {
        let record = &entry.record;
        let path = record.request.target.split('?').next().unwrap_or_default();
        let status = record.response.as_ref().map(|r| r.status);
        self.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(&record.request.method))
            && self.status.is_none_or(|s| status.is_some_and(|status| s.matches(status)))
            && self
                .path
                .as_ref()
                .is_none_or(|p| if p.contains('*') { Glob(p.clone()).matches(path) } else { path.contains(p.as_str()) })
            && self.tunnel.as_ref().is_none_or(|t| *t == record.tunnel)
            && self.source.as_deref().is_none_or(|source| match source {
                "client" => entry.sources.client,
                "server" => entry.sources.server,
                _ => entry.sources.replay,
            })
    }
}

async fn list(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let selection = Selection::parse(query.as_deref())?;
    let limit = selection.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let entries = shared.ring().select(limit, |entry| selection.keeps(entry));
    let requests: Vec<Summary> = entries.iter().map(|entry| Summary::from(&**entry)).collect();
    Ok(axum::Json(serde_json::json!({ "requests": requests })).into_response())
}

fn find(shared: &Shared, id: &str) -> Result<Arc<Entry>, ApiError> {
    shared.get(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no exchange {id}")))
}

async fn detail(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let entry = find(&shared, &id)?;
    Ok(axum::Json(Detail::from(&*entry)).into_response())
}

async fn body(
    State(shared): State<Arc<Shared>>,
    Path((id, side)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entry = find(&shared, &id)?;
    let (headers, bytes) = match side.as_str() {
        "request" => (&entry.record.request.headers, entry.record.request.body.clone()),
        "response" => match &entry.record.response {
            Some(response) => (&response.headers, response.body.clone()),
            None => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no response")),
        },
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "side is request or response")),
    };
    let content_type = headers
        .iter()
        .find(|h| h.0.eq_ignore_ascii_case("content-type"))
        .and_then(|h| HeaderValue::from_maybe_shared(h.1.clone()).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, content_type);
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    Ok((out, bytes).into_response())
}

async fn events(State(shared): State<Arc<Shared>>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let updates = shared.updates.subscribe();
    let stream = futures_util::stream::unfold(updates, |mut updates| async move {
        let event = match updates.recv().await {
            Ok(entry) => SseEvent::default().event("exchange").json_data(Summary::from(&*entry)).ok()?,
            // Too far behind: the page reloads the list.
            Err(broadcast::error::RecvError::Lagged(_)) => SseEvent::default().event("reset").data("lagged"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), updates))
    });
    let stream = stream.take_until(shared.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn replay(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json",
        ));
    }
    let asked: ReplayRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let original = asked.id.clone();
    let entry = rerun(&shared, asked).await.map_err(|e| {
        let status = if e.code() == "not_found" { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    let status = if entry.record.error.is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    let detail = Detail::from(&*entry);
    let body = serde_json::json!({ "original": original, "comparison": detail.comparison, "exchange": detail });
    Ok((status, axum::Json(body)).into_response())
}
