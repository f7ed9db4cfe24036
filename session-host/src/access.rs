//! The trail of a tunnel, served to its own client: `GET /v1/trail/<name>`.
//!
//! A developer with the server's URL and the tunnel's resume secret, and no NATS account, reads
//! their tunnel's log here (`Authorization: Bearer <resume secret>`), as JSON lines:
//! - recorded exchanges (`source=exchanges`): only those recorded for this secret (each record
//!   carries the owner key of the secret of the session that recorded it), so a tunnel name
//!   taken by someone else later never shows the earlier holder's records;
//! - audit records (`source=audit`, the default): only while the secret holds the tunnel's
//!   current lease, since audit records carry no owner.
//!
//! The filter is the query string ([`Filter::from_pairs`]), plus `follow=1`, `limit=N` and
//! `purpose=query|replay|export|inspect` (what the client reads for).
//!
//! Every read of recorded exchanges is itself put on record before it starts: a [`DataEvent`] in
//! the tunnel's audit trail, naming the reader (the owner key's first 12 hex digits), its
//! address, the purpose and the filter. A read that cannot be put on record is refused
//! (`unavailable`).

use std::sync::Arc;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query as QueryString, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tunnel_schemas::audit::{DataAction, DataEvent};
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::record::owner_key;
use tunnel_schemas::{ErrorCode, PROTOCOL_VERSION};
use tunnel_trail::event::TrailEvent;
use tunnel_trail::filter::{Filter, now_ms};
use tunnel_trail::query::{self, Query, Source};
use tunnel_trail::record::put_on_record;

use crate::hub::Hub;

/// Path of the trail endpoint; the tunnel name follows.
pub const TRAIL_PATH: &str = "/v1/trail/{name}";
/// Trail readers served at once by one host; more get `unavailable`.
pub const MAX_READERS: usize = 256;

/// State of the trail endpoint.
#[derive(Clone)]
pub struct Access {
    /// The host's shared resources.
    pub hub: Arc<Hub>,
    /// Permits of the readers being served.
    pub readers: Arc<Semaphore>,
}

/// `GET /v1/trail/<name>?since=…&status=5xx&source=exchanges&follow=1`.
pub async fn trail(
    State(access): State<Access>,
    Path(name): Path<String>,
    QueryString(pairs): QueryString<Vec<(String, String)>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match open(&access, &name, &pairs, &headers, peer).await {
        Ok(response) => response,
        Err((code, detail)) => refuse(code, &detail),
    }
}

async fn open(
    access: &Access,
    name: &str,
    pairs: &[(String, String)],
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Response, (ErrorCode, String)> {
    let name = TunnelName::parse(name).map_err(|e| (ErrorCode::InvalidName, e.to_string()))?;
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|secret| !secret.is_empty())
        .ok_or((ErrorCode::Forbidden, "send the tunnel's resume secret as `Authorization: Bearer <secret>`".into()))?;
    let (mut source, mut follow, mut limit, mut purpose) = (Source::Audit, false, None, DataAction::Query);
    let mut filter_pairs = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "purpose" => {
                purpose = DataAction::parse(value).filter(|action| *action != DataAction::Erase).ok_or_else(|| {
                    (ErrorCode::BadRequest, format!("purpose {value:?}: use query, replay, export or inspect"))
                })?;
            }
            "source" if value == "audit" => source = Source::Audit,
            "source" if value == "exchanges" => source = Source::Exchanges,
            "follow" => follow = matches!(value.as_str(), "1" | "true"),
            "limit" => limit = Some(value.parse().map_err(|_| (ErrorCode::BadRequest, format!("limit {value:?}")))?),
            "source" => return Err((ErrorCode::BadRequest, format!("source {value:?}: use audit or exchanges"))),
            _ => filter_pairs.push((key.as_str(), value.as_str())),
        }
    }
    let filter = Filter::from_pairs(filter_pairs, now_ms()).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    let owner = match source {
        Source::Exchanges => Some(owner_key(secret)),
        Source::Audit => {
            let holds = access
                .hub
                .leases
                .held_with(&name, secret)
                .await
                .map_err(|e| (ErrorCode::Unavailable, e.to_string()))?;
            if !holds {
                return Err((ErrorCode::Forbidden, "the secret does not hold this tunnel's lease".into()));
            }
            None
        }
    };
    let permit = access
        .readers
        .clone()
        .try_acquire_owned()
        .map_err(|_| (ErrorCode::Unavailable, "too many trail readers on this host".into()))?;
    let js = async_nats::jetstream::new(access.hub.nats.clone());
    if source == Source::Exchanges {
        let event = DataEvent {
            v: PROTOCOL_VERSION,
            tunnel: name.to_string(),
            action: if follow && purpose == DataAction::Query { DataAction::Tail } else { purpose },
            actor: format!("owner:{}", &owner_key(secret)[..12]),
            remote_addr: Some(peer.ip().to_string()),
            selector: filter.describe(),
            records: None,
            at_ms: now_ms(),
        };
        put_on_record(&js, &event).await.map_err(|e| (ErrorCode::Unavailable, e.to_string()))?;
    }
    let query = Query { tunnel: name.to_string(), source, filter, follow, owner, limit };
    let events = query::read(&js, query).await.map_err(|e| (ErrorCode::Unavailable, e.to_string()))?;
    let shutdown = access.hub.shutdown.clone().cancelled_owned();
    let lines = events.take_until(shutdown).map(move |event| {
        let _reading = &permit;
        let event = event.unwrap_or_else(|e| TrailEvent::Error { message: e.to_string() });
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

fn refuse(code: ErrorCode, detail: &str) -> Response {
    tracing::debug!(code = %code, detail, "trail request refused");
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({ "error": code.as_str(), "message": code.message(), "detail": detail });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
