//! The public request path: limits, routing, the NATS request to the tunnel, the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::Response;
use bytes::Bytes;
use tower::ServiceExt;
use tracing::Instrument;
use tunnel_schemas::events::{
    Failure, REQUEST_ID_HEADER, TunnelReply, TunnelRequest, TunnelResponse,
};
use tunnel_schemas::http::RequestHead;
use tunnel_schemas::{ErrorCode, PROTOCOL_VERSION, audit, subjects};

use crate::config::IngressConfig;
use crate::error_page::{error_response, wants_json};
use crate::headers::{Forwarded, header_bytes, request_headers, response_headers};
use crate::request_id::request_id;
use crate::routing::{Route, route};

/// Shared state of the public handler.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    config: IngressConfig,
    timeout: Duration,
    /// Routes for requests that name no tunnel (`/healthz`, `/readyz`, `/metrics`).
    ops: Router,
}

/// What one request produced, for metrics and the audit record.
struct Outcome {
    response: Response,
    error: Option<ErrorCode>,
    bytes_in: u64,
    bytes_out: u64,
}

impl Proxy {
    /// A proxy sending tunnel requests over `nats`; requests naming no tunnel go to `ops`.
    pub fn new(nats: async_nats::Client, config: IngressConfig, ops: Router) -> Self {
        let timeout = Duration::from_secs(config.request_timeout_secs);
        Self {
            inner: Arc::new(Inner {
                nats,
                config,
                timeout,
                ops,
            }),
        }
    }
}

/// Axum handler for every public request.
pub async fn handle(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = host_of(&parts);
    let Some(route) = route(host, target, &proxy.inner.config.domain) else {
        let request = Request::from_parts(parts, body);
        return match proxy.inner.ops.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    };
    let request_id = request_id(&parts.headers);
    let span = tracing::info_span!("request", tunnel = %route.name, request_id = %request_id);
    let outcome = proxy
        .forward(&parts, body, route.clone(), peer, &request_id)
        .instrument(span)
        .await;
    let status = outcome.response.status().as_u16();
    let result = outcome.error.map_or("ok", ErrorCode::as_str);
    metrics::counter!("ingress_requests_total", "result" => result).increment(1);
    metrics::histogram!("ingress_request_seconds").record(started.elapsed().as_secs_f64());
    if proxy.inner.config.audit {
        let record = audit::RequestAudit {
            v: PROTOCOL_VERSION,
            request_id,
            tunnel: route.name.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            status,
            error: outcome.error,
            bytes_in: outcome.bytes_in,
            bytes_out: outcome.bytes_out,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            remote_addr: peer.ip().to_string(),
            at_ms: unix_ms(),
        };
        let subject = subjects::audit(&route.name, audit::KIND_REQUEST);
        if let Err(e) = proxy
            .inner
            .nats
            .publish(subject, tunnel_schemas::encode(&record).into())
            .await
        {
            metrics::counter!("ingress_audit_publish_errors_total").increment(1);
            tracing::warn!(error = %e, "audit event not published");
        }
    }
    outcome.response
}

impl Proxy {
    async fn forward(
        &self,
        parts: &Parts,
        body: Body,
        route: Route,
        peer: SocketAddr,
        request_id: &str,
    ) -> Outcome {
        let json = wants_json(&parts.headers);
        let fail = |code: ErrorCode, bytes_in: u64| {
            tracing::debug!(code = %code, "request failed");
            Outcome {
                response: error_response(code, request_id, json),
                error: Some(code),
                bytes_in,
                bytes_out: 0,
            }
        };
        let config = &self.inner.config;
        if route.target.len() > config.max_uri_bytes {
            return fail(ErrorCode::UriTooLong, 0);
        }
        if header_bytes(&parts.headers) > config.max_header_bytes {
            return fail(ErrorCode::HeadersTooLarge, 0);
        }
        if declared_length(parts).is_some_and(|length| length > config.max_body_bytes as u64) {
            return fail(ErrorCode::BodyTooLarge, 0);
        }
        let body = match axum::body::to_bytes(body, config.max_body_bytes).await {
            Ok(body) => body,
            Err(e) if is_length_limit(&e) => return fail(ErrorCode::BodyTooLarge, 0),
            Err(e) => {
                tracing::debug!(error = %e, "public client body failed");
                return fail(ErrorCode::BadRequest, 0);
            }
        };
        let bytes_in = body.len() as u64;
        let forwarded = Forwarded {
            client_ip: peer.ip().to_string(),
            proto: &config.public_scheme,
            host: host_of(parts),
            request_id,
        };
        let event = TunnelRequest {
            v: PROTOCOL_VERSION,
            request_id: request_id.to_owned(),
            head: RequestHead {
                method: parts.method.as_str().to_owned(),
                target: route.target,
                headers: request_headers(&parts.headers, &forwarded),
            },
            body,
        };
        match self.send(&route.name, request_id, &event).await {
            Ok(TunnelResponse { head, body }) => {
                let Ok(status) = StatusCode::from_u16(head.status) else {
                    return fail(ErrorCode::UpstreamBadResponse, bytes_in);
                };
                let bytes_out = body.len() as u64;
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = status;
                *response.headers_mut() = response_headers(head.headers);
                Outcome {
                    response,
                    error: None,
                    bytes_in,
                    bytes_out,
                }
            }
            Err(failure) => {
                if !failure.detail.is_empty() {
                    tracing::debug!(detail = %failure.detail, "tunnel reported a failure");
                }
                fail(failure.code, bytes_in)
            }
        }
    }

    /// Sends `event` to the tunnel and waits for its reply.
    async fn send(
        &self,
        name: &tunnel_schemas::names::TunnelName,
        request_id: &str,
        event: &TunnelRequest,
    ) -> Result<TunnelResponse, Failure> {
        let nats = &self.inner.nats;
        if nats.connection_state() != async_nats::connection::State::Connected {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                "nats is not connected",
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, request_id);
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::from(tunnel_schemas::encode(event)))
            .timeout(Some(self.inner.timeout));
        let reply = nats
            .send_request(subjects::tunnel_requests(name), request)
            .await
            .map_err(|e| {
                use async_nats::RequestErrorKind as Kind;
                match e.kind() {
                    Kind::NoResponders => Failure::new(ErrorCode::TunnelOffline, "no responders"),
                    Kind::TimedOut => Failure::new(ErrorCode::UpstreamTimeout, "request timed out"),
                    Kind::MaxPayloadExceeded => Failure::new(
                        ErrorCode::BodyTooLarge,
                        "request exceeds the nats payload limit",
                    ),
                    _ => Failure::new(ErrorCode::Unavailable, e.to_string()),
                }
            })?;
        match tunnel_schemas::decode::<TunnelReply>(&reply.payload, usize::MAX) {
            Ok(TunnelReply::Response(response)) => Ok(response),
            Ok(TunnelReply::Failure(failure)) => Err(failure),
            Err(e) => Err(Failure::new(
                ErrorCode::UpstreamBadResponse,
                format!("undecodable reply from the tunnel client: {e}"),
            )),
        }
    }
}

fn host_of(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()))
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
