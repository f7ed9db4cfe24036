//! The public request path: routing, limits, policies, the NATS request to the tunnel, the
//! response.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Subject;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tracing::Instrument;
use tunnel_schemas::events::{
    Failure, REQUEST_ID_HEADER, STREAM_HEADER, TunnelReply, TunnelRequest, TunnelResponse, UPLOAD_HEADER,
};
use tunnel_schemas::http::{Header, RequestHead};
use tunnel_schemas::policy::POLICY_REVISION_HEADER;
use tunnel_schemas::stream::INLINE_BYTES;
use tunnel_schemas::{ErrorCode, PROTOCOL_VERSION, audit, subjects};

use crate::audit::AuditSink;
use crate::client_addr::TrustedProxies;
use crate::config::IngressConfig;
use crate::error_page::{detailed_error_response, error_response, wants_json};
use crate::exchange::Exchange;
use crate::headers::{Forwarded, header_bytes, request_headers, response_headers};
use crate::limits::Limits;
use crate::policies::{Admitted, PolicyBook};
use crate::quotas::QuotaBook;
use crate::request_id::request_id;
use crate::resume::Leases;
use crate::routing::{Route, route};
use crate::streams::StreamHub;
use tunnel_kit::pump::{Ended, Summary};
use tunnel_kit::traces::{SpanKind, StageSpan, TRACEPARENT, Traces};

/// Shared state of the public handler.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    /// Tells a request waiting for its answer that the connection it went out on was lost.
    reconnects: tunnel_kit::nats::Reconnects,
    config: IngressConfig,
    /// Time the tunnel has to produce the response head.
    timeout: Duration,
    /// Routes for requests that name no tunnel (`/healthz`, `/readyz`, `/metrics`).
    ops: Router,
    streams: Arc<StreamHub>,
    audit: AuditSink,
    limits: Arc<Limits>,
    /// The tunnels' public-side policies.
    policies: Arc<PolicyBook>,
    /// Tunnels and accounts over a quota.
    quotas: QuotaBook,
    /// Proxies whose `X-Forwarded-For` names the client.
    trusted: TrustedProxies,
    /// The tunnels' leases, read when a tunnel has no responder.
    leases: Leases,
    metrics: RequestMetrics,
    /// This node's spans, one per public request.
    traces: Traces,
}

/// The per-request metrics, registered once: looking a labelled metric up by name costs more
/// than the increment.
struct RequestMetrics {
    ok: metrics::Counter,
    /// Arrival to the response head.
    seconds: metrics::Histogram,
    /// Publishing to NATS to the response head: the session-host, the client and the local
    /// service (the rest of `seconds` is this node's own).
    tunnel_seconds: metrics::Histogram,
}

impl RequestMetrics {
    fn new() -> Self {
        Self {
            ok: metrics::counter!("ingress_requests_total", "result" => "ok"),
            seconds: metrics::histogram!("ingress_request_seconds"),
            tunnel_seconds: metrics::histogram!("ingress_tunnel_seconds"),
        }
    }

    /// Counts a request by result and records its duration to the response head.
    fn record(&self, error: Option<ErrorCode>, elapsed: Duration) {
        match error {
            None => self.ok.increment(1),
            Some(code) => metrics::counter!("ingress_requests_total", "result" => code.as_str()).increment(1),
        }
        self.seconds.record(elapsed.as_secs_f64());
    }
}

/// Longest wait for this ingress to apply a tunnel's new policy when its session-host refused a
/// request for having been checked against an older one.
const POLICY_WAIT: Duration = Duration::from_secs(2);

/// Response chunks queued for the public client beyond what the exchange holds.
const DOWNLOAD_QUEUE: usize = 2;

/// How long a response head is still awaited once the NATS connection the request went out on
/// is lost, and how long a request waits for a lost connection to be made again (the client
/// reconnects at once, to another server of the cluster): then 503 `unavailable`.
const LOST_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// What one request produced, for metrics and the audit record.
struct Outcome {
    response: Response,
    error: Option<ErrorCode>,
    bytes_in: u64,
    bytes_out: u64,
    /// The exchange still streaming after the response head, reporting its totals at the end.
    streaming: Option<JoinHandle<Summary>>,
}

impl Outcome {
    /// A request refused by a rate limit or a quota: 429 with `Retry-After`.
    fn too_many(code: ErrorCode, retry_after_secs: u64, request_id: &str, json: bool) -> Self {
        let mut outcome = Self::failed(code, request_id, json, 0);
        outcome.response.headers_mut().insert(header::RETRY_AFTER, retry_after_secs.into());
        outcome
    }

    /// A request refused before it was forwarded: `code`'s status, with a basic-auth challenge
    /// for `tunnel` when the code is `auth_required`.
    fn refused(code: ErrorCode, tunnel: &str, request_id: &str, json: bool) -> Self {
        let mut outcome = Self::failed(code, request_id, json, 0);
        if code == ErrorCode::AuthRequired
            && let Ok(challenge) =
                header::HeaderValue::from_str(&format!("Basic realm=\"{tunnel}\", charset=\"UTF-8\""))
        {
            outcome.response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        outcome
    }

    fn failed(code: ErrorCode, request_id: &str, json: bool, bytes_in: u64) -> Self {
        tracing::debug!(code = %code, "request failed");
        let response = error_response(code, request_id, json);
        Self { response, error: Some(code), bytes_in, bytes_out: 0, streaming: None }
    }
}

impl Proxy {
    /// A proxy sending tunnel requests over `nats`, receiving stream frames through `streams`,
    /// admitting them by `policies`, with a span each in `traces`; requests naming no tunnel go
    /// to `ops`.
    pub fn new(
        nats: async_nats::Client,
        config: IngressConfig,
        ops: Router,
        streams: Arc<StreamHub>,
        policies: Arc<PolicyBook>,
        traces: Traces,
    ) -> Self {
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let audit = AuditSink::start(nats.clone());
        let limits = Limits::new(
            (config.rate_limit_per_tunnel, config.rate_burst_per_tunnel),
            (config.rate_limit_per_ip, config.rate_burst_per_ip),
        );
        let metrics = RequestMetrics::new();
        // Validated with the configuration.
        let trusted = TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default();
        let quotas = QuotaBook::start(&nats);
        let leases = Leases::new(nats.clone());
        let reconnects = tunnel_kit::nats::Reconnects::watch(&nats);
        let inner = Inner {
            nats,
            reconnects,
            config,
            timeout,
            ops,
            streams,
            audit,
            limits,
            policies,
            quotas,
            trusted,
            leases,
            metrics,
            traces,
        };
        Self { inner: Arc::new(inner) }
    }
}

/// Axum handler for every public request.
pub async fn handle(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let arrived_ms = tunnel_schemas::now_ms();
    let (mut parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(host) = crate::routing::public_host(&parts.headers, &parts.uri) else {
        return error_response(ErrorCode::BadRequest, &request_id(&parts.headers), wants_json(&parts.headers));
    };
    let Some(route) = route(host, target, &proxy.inner.config.domain) else {
        let request = Request::from_parts(parts, body);
        return match proxy.inner.ops.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    };
    let request_id = request_id(&parts.headers);
    let on_upgrade = parts.extensions.remove::<OnUpgrade>();
    let client = proxy.inner.trusted.client(peer.ip(), &parts.headers);
    let client_ip = client.to_string();
    let span = tracing::debug_span!("request", tunnel = %route.name, request_id = %request_id);
    let parent = parts.headers.get(TRACEPARENT).and_then(|value| value.to_str().ok());
    let mut trace = proxy.inner.traces.span("ingress request", SpanKind::Server, parent);
    if trace.recording() {
        trace.set("http.request.method", parts.method.to_string());
        trace.set("tunnel.name", route.name.to_string());
        trace.set("request.id", request_id.clone());
    }
    let json = wants_json(&parts.headers);
    let account = proxy.inner.policies.account(route.name.as_str());
    let checked = Checked { client, account: account.as_deref(), at_ms: arrived_ms };
    let admitted = proxy.admit(route.name.as_str(), &checked, &parts.headers);
    let mut outcome = match admitted {
        Ok(admitted) => {
            let peer_ip = peer.ip().to_canonical().to_string();
            let request = Admission { client, peer_ip: &peer_ip, request_id: &request_id, admitted, trace: &trace };
            proxy.forward(&parts, body, on_upgrade, route.clone(), request).instrument(span).await
        }
        Err(Refusal::RetryAfter(code, secs)) => Outcome::too_many(code, secs, &request_id, json),
        Err(Refusal::Code(code)) => Outcome::refused(code, route.name.as_str(), &request_id, json),
    };
    proxy.inner.metrics.record(outcome.error, started.elapsed());
    trace.set("http.response.status_code", i64::from(outcome.response.status().as_u16()));
    if let Some(code) = outcome.error {
        trace.fail(code.as_str());
    }
    let audit = proxy.inner.config.audit.then(|| {
        let record = audit::RequestAudit {
            v: PROTOCOL_VERSION,
            request_id,
            tunnel: route.name.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            status: outcome.response.status().as_u16(),
            error: outcome.error,
            bytes_in: outcome.bytes_in,
            bytes_out: outcome.bytes_out,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            remote_addr: if proxy.inner.config.audit_truncate_addresses {
                crate::client_addr::truncated(client)
            } else {
                client_ip
            },
            at_ms: arrived_ms,
            account: account.map(|account| account.to_string()),
            replay: parts.headers.contains_key(tunnel_schemas::record::REPLAY_OF_HEADER),
            head_in: request_head_bytes(&parts),
            head_out: response_head_bytes(&outcome.response),
        };
        (subjects::audit(&route.name, audit::KIND_REQUEST), record)
    });
    match outcome.streaming.take() {
        Some(streaming) if audit.is_some() || trace.recording() => {
            // The audit record and the span end with the body.
            let sink = proxy.inner.audit.clone();
            tokio::spawn(async move {
                let summary = streaming.await.ok();
                let reset = summary.as_ref().and_then(|summary| match summary.ended {
                    Ended::Reset(code) => Some(code),
                    Ended::Complete => None,
                });
                if let Some(code) = reset {
                    trace.fail(code.as_str());
                }
                drop(trace);
                if let Some((subject, mut record)) = audit {
                    if let Some(summary) = summary {
                        record.bytes_in += summary.sent;
                        record.bytes_out += summary.received;
                        record.error = reset.or(record.error);
                    }
                    sink.record(subject, record);
                }
            });
        }
        _ => {
            if let Some((subject, record)) = audit {
                proxy.inner.audit.record(subject, record);
            }
        }
    }
    outcome.response
}

/// Why a request is refused before it is forwarded.
enum Refusal {
    /// With this code (a basic-auth challenge for `auth_required`).
    Code(ErrorCode),
    /// With this code and `Retry-After` seconds.
    RetryAfter(ErrorCode, u64),
}

/// Who sent a request, for the checks before forwarding.
struct Checked<'a> {
    /// The client's address (behind trusted proxies).
    client: std::net::IpAddr,
    /// The account of the tunnel's session.
    account: Option<&'a str>,
    /// Arrival time, Unix milliseconds.
    at_ms: u64,
}

/// What the checks before forwarding found out about a request.
struct Admission<'a> {
    /// The client's address (behind trusted proxies).
    client: std::net::IpAddr,
    /// The connection's own address, appended to `X-Forwarded-For`.
    peer_ip: &'a str,
    request_id: &'a str,
    /// What the policies decided, and the bucket revision they were read at.
    admitted: (Admitted, u64),
    /// The request's span here, the parent of the next stage's.
    trace: &'a StageSpan,
}

impl Proxy {
    /// The checks before anything is published to NATS, in order: rate limits, quotas, the
    /// policies (once the ingress has read them); the policy decision and the revision it was
    /// read at, or why the request is refused.
    fn admit(
        &self,
        tunnel: &str,
        checked: &Checked<'_>,
        headers: &axum::http::HeaderMap,
    ) -> Result<(Admitted, u64), Refusal> {
        let inner = &self.inner;
        inner
            .limits
            .check(tunnel, checked.client)
            .map_err(|limited| Refusal::RetryAfter(ErrorCode::RateLimited, limited.retry_after_secs))?;
        inner
            .quotas
            .check(tunnel, checked.account, checked.at_ms)
            .map_err(|exceeded| Refusal::RetryAfter(ErrorCode::QuotaExceeded, exceeded.retry_after_secs))?;
        let revision = inner.policies.applied().ok_or(Refusal::Code(ErrorCode::Unavailable))?;
        let admitted =
            inner.policies.check(tunnel, checked.client, headers).map_err(|refused| Refusal::Code(refused.0))?;
        Ok((admitted, revision))
    }

    async fn forward(
        &self,
        parts: &Parts,
        body: Body,
        on_upgrade: Option<OnUpgrade>,
        route: Route,
        admission: Admission<'_>,
    ) -> Outcome {
        let Admission { client, peer_ip, request_id, admitted: (admitted, policy_revision), trace } = admission;
        let json = wants_json(&parts.headers);
        let fail = |code: ErrorCode, bytes_in: u64| Outcome::failed(code, request_id, json, bytes_in);
        let config = &self.inner.config;
        if route.target.len() > config.max_uri_bytes {
            return fail(ErrorCode::UriTooLong, 0);
        }
        if header_bytes(&parts.headers) > config.max_header_bytes {
            return fail(ErrorCode::HeadersTooLarge, 0);
        }
        let limit = (config.max_body_bytes > 0).then_some(config.max_body_bytes);
        let declared = declared_length(parts);
        if declared.zip(limit).is_some_and(|(length, limit)| length > limit) {
            return fail(ErrorCode::BodyTooLarge, 0);
        }
        let upgrade = upgrade_protocol(&parts.headers).filter(|_| on_upgrade.is_some());
        let mut exchange = self.exchange();
        let (inline, end) = if upgrade.is_some() {
            (Bytes::new(), false)
        } else if body.is_end_stream() {
            (Bytes::new(), true)
        } else if declared.is_some_and(|length| length <= INLINE_BYTES as u64) {
            match axum::body::to_bytes(body, INLINE_BYTES).await {
                Ok(body) => (body, true),
                Err(e) => {
                    tracing::debug!(error = %e, "public client body failed");
                    return fail(ErrorCode::BadRequest, 0);
                }
            }
        } else {
            let upload = body.into_data_stream().map(|chunk| chunk.map_err(io::Error::other));
            exchange.send_from(Box::pin(upload), limit);
            (Bytes::new(), false)
        };
        let bytes_in = inline.len() as u64;
        let forwarded =
            Forwarded { client_ip: peer_ip, proto: &config.public_scheme, host: host_of(parts), request_id };
        let mut headers = request_headers(&parts.headers, &forwarded);
        tunnel_kit::traces::pass_on(trace, &mut headers);
        if admitted.consumed_authorization {
            strip_authorization(&mut headers);
        }
        if let Some(protocol) = &upgrade {
            headers.push(Header("connection".into(), Bytes::from_static(b"upgrade")));
            headers.push(Header("upgrade".into(), protocol.clone()));
        }
        let mut event = TunnelRequest {
            v: PROTOCOL_VERSION,
            request_id: request_id.to_owned(),
            head: RequestHead { method: parts.method.as_str().to_owned(), target: route.target, headers },
            body: inline,
            end,
            upgrade: upgrade.is_some(),
        };
        let sent = Instant::now();
        let reply = match self.deliver(&route.name, (request_id, policy_revision), &event, &mut exchange).await {
            Ok(reply) => reply,
            Err(code) => return fail(code, bytes_in + exchange.bytes_sent()),
        };
        self.inner.metrics.tunnel_seconds.record(sent.elapsed().as_secs_f64());
        // The session's policy was newer than this ingress's: wait for it, check the request
        // against it, and send it again (a whole body only; a streaming one has gone).
        let pending = reply.as_ref().err().and_then(tunnel_schemas::policy::pending_revision);
        let reply = match pending {
            Some(revision) if event.end && upgrade.is_none() => {
                let policies = &self.inner.policies;
                if !policies.wait_applied(revision, POLICY_WAIT).await {
                    return fail(ErrorCode::PolicyPending, bytes_in);
                }
                match policies.check(route.name.as_str(), client, &parts.headers) {
                    Err(refused) => return Outcome::refused(refused.0, route.name.as_str(), request_id, json),
                    Ok(admitted) if admitted.consumed_authorization => strip_authorization(&mut event.head.headers),
                    Ok(_) => {}
                }
                match self.deliver(&route.name, (request_id, revision), &event, &mut exchange).await {
                    Ok(reply) => reply,
                    Err(code) => return fail(code, bytes_in + exchange.bytes_sent()),
                }
            }
            _ => reply,
        };
        let (response, host) = match reply {
            Ok(reply) => reply,
            Err(failure) => {
                exchange.finish();
                if !failure.detail.is_empty() {
                    tracing::debug!(detail = %failure.detail, "tunnel reported a failure");
                }
                if failure.code == ErrorCode::TunnelBusy {
                    // Shed at once by the session: worth a retry in a moment.
                    return Outcome::too_many(failure.code, 1, request_id, json);
                }
                if failure.code == ErrorCode::UpstreamUnreachable {
                    // The client names the local service it could not reach: the visitor, often
                    // the developer, sees which port to start.
                    let mut outcome = fail(failure.code, bytes_in + exchange.bytes_sent());
                    outcome.response = detailed_error_response(failure.code, request_id, json, Some(&failure.detail));
                    return outcome;
                }
                return fail(failure.code, bytes_in + exchange.bytes_sent());
            }
        };
        tunnel_kit::pump::FrameOut::learn(exchange.out(), host);
        let TunnelResponse { head, body, end } = response;
        let Ok(status) = StatusCode::from_u16(head.status) else {
            return fail(ErrorCode::UpstreamBadResponse, bytes_in);
        };
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let bytes_out = body.len() as u64;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        *response.headers_mut() = response_headers(head.headers, switching && upgrade.is_some());
        let mut bytes_in = bytes_in;
        let streaming = if end {
            // The upload is over or abandoned: count what streamed up. A streaming exchange
            // reports its whole upload in its summary instead.
            bytes_in += exchange.bytes_sent();
            if !exchange.sending() {
                exchange.finish();
            }
            *response.body_mut() = Body::from(body);
            None
        } else if let (true, Some(on_upgrade)) = (switching, on_upgrade) {
            Some(tokio::spawn(relay_upgraded(exchange, on_upgrade)))
        } else {
            let (sink, body) = tunnel_kit::pump::body_channel(body, DOWNLOAD_QUEUE);
            exchange.deliver_to(sink);
            *response.body_mut() = Body::from_stream(body);
            Some(tokio::spawn(exchange.run()))
        };
        Outcome { response, error: None, bytes_in, bytes_out, streaming }
    }

    /// Sends `event` to the tunnel and waits for the response head while `exchange` runs (see
    /// [`Proxy::await_head`]). When the tunnel has no responder but a lease, its client is
    /// coming back: the request is sent again until it is taken or `offline_grace_ms` ends.
    async fn deliver(
        &self,
        name: &tunnel_schemas::names::TunnelName,
        (request_id, policy_revision): (&str, u64),
        event: &TunnelRequest,
        exchange: &mut Exchange,
    ) -> Result<Result<(TunnelResponse, Option<Subject>), Failure>, ErrorCode> {
        let stream = exchange.out().subject().to_owned();
        let mut comeback = None;
        loop {
            let request = self.send(name, (request_id, policy_revision), &stream, event);
            let reply = self.await_head(request, exchange).await?;
            let offline = matches!(&reply, Err(failure) if failure.code == ErrorCode::TunnelOffline);
            let grace = self.inner.config.offline_grace_ms;
            if offline && comeback.is_none() && grace > 0 && self.inner.leases.may_return(name).await {
                metrics::counter!("ingress_requests_awaiting_tunnel_total").increment(1);
                comeback = Some((Instant::now() + Duration::from_millis(grace), crate::resume::delays()));
            }
            let delay = match &mut comeback {
                Some((until, delays)) if offline => delays.next().filter(|delay| Instant::now() + *delay < *until),
                _ => None,
            };
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Ok(reply),
            }
        }
    }

    /// Waits for the reply to `request` while `exchange` runs (its upload, its frames). Ends
    /// early with a code when the exchange is reset (by the session-host, or by the
    /// [`HostWatch`](crate::host_watch::HostWatch) when the host is lost) or when no session-host
    /// took the request (acknowledged or answered it) within `host_timeout_ms`.
    async fn await_head(
        &self,
        request: impl Future<Output = Result<(TunnelResponse, Option<Subject>), Failure>>,
        exchange: &mut Exchange,
    ) -> Result<Result<(TunnelResponse, Option<Subject>), Failure>, ErrorCode> {
        let unacknowledged = tokio::time::sleep(Duration::from_millis(self.inner.config.host_timeout_ms));
        tokio::pin!(request, unacknowledged);
        loop {
            tokio::select! {
                reply = &mut request => return Ok(reply),
                ended = exchange.step() => if let Some(ended) = ended {
                    // Before the head only a reset can end the exchange.
                    return Err(match ended {
                        Ended::Reset(code) => code,
                        Ended::Complete => ErrorCode::Internal,
                    });
                },
                () = &mut unacknowledged, if !tunnel_kit::pump::FrameOut::ready(exchange.out()) => {
                    metrics::counter!("ingress_requests_unacknowledged_total").increment(1);
                    return Err(ErrorCode::HostUnresponsive);
                }
            }
        }
    }

    fn exchange(&self) -> Exchange {
        let data_idle = self.inner.config.stream_idle_timeout_secs;
        crate::exchange::open(
            self.inner.nats.clone(),
            &self.inner.streams,
            (data_idle > 0).then(|| Duration::from_secs(data_idle)),
        )
    }

    /// Sends `event` to the tunnel and waits for the response head; returns it with the
    /// session-host's stream subject.
    /// The request carries its id and the policy revision the ingress applied.
    async fn send(
        &self,
        name: &tunnel_schemas::names::TunnelName,
        (request_id, policy_revision): (&str, u64),
        stream: &str,
        event: &TunnelRequest,
    ) -> Result<(TunnelResponse, Option<Subject>), Failure> {
        let nats = &self.inner.nats;
        if !self.inner.reconnects.connected_within(LOST_ANSWER_GRACE).await {
            return Err(Failure::new(ErrorCode::Unavailable, "nats is not connected"));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, request_id);
        headers.insert(STREAM_HEADER, stream);
        headers.insert(POLICY_REVISION_HEADER, policy_revision.to_string().as_str());
        if !event.end {
            headers.insert(UPLOAD_HEADER, "1");
        }
        if let Some(traceparent) = tunnel_kit::traces::traceparent_in(&event.head.headers) {
            headers.insert(TRACEPARENT, traceparent);
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::from(tunnel_schemas::encode(event)))
            .timeout(Some(self.inner.timeout));
        // A request or answer in flight on a lost connection may be lost with it: fail soon
        // rather than at the timeout.
        let connection = self.inner.reconnects.current();
        let sent = nats.send_request(subjects::tunnel_requests(name), request);
        let Ok(reply) = self.inner.reconnects.unless_lost(connection, LOST_ANSWER_GRACE, sent).await else {
            return Err(Failure::new(ErrorCode::Unavailable, "the nats connection was lost"));
        };
        let reply = reply.map_err(|e| {
            use async_nats::RequestErrorKind as Kind;
            match e.kind() {
                Kind::NoResponders => Failure::new(ErrorCode::TunnelOffline, "no responders"),
                Kind::TimedOut => Failure::new(ErrorCode::UpstreamTimeout, "request timed out"),
                Kind::MaxPayloadExceeded => {
                    Failure::new(ErrorCode::BodyTooLarge, "request exceeds the nats payload limit")
                }
                _ => Failure::new(ErrorCode::Unavailable, e.to_string()),
            }
        })?;
        match tunnel_schemas::decode_shared::<TunnelReply>(&reply.payload, usize::MAX) {
            Ok(TunnelReply::Response(response)) => Ok((response, reply.reply)),
            Ok(TunnelReply::Failure(failure)) => Err(failure),
            Err(e) => Err(Failure::new(
                ErrorCode::UpstreamBadResponse,
                format!("undecodable reply from the tunnel client: {e}"),
            )),
        }
    }
}

/// After a `101`: carries the raw upgraded connection both ways until either side closes.
async fn relay_upgraded(mut exchange: Exchange, on_upgrade: OnUpgrade) -> Summary {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "public upgrade failed");
            return Summary { ended: Ended::Reset(ErrorCode::Cancelled), sent: 0, received: 0 };
        }
    };
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    exchange.send_from(tunnel_kit::pump::stream_from(read), None);
    let (sink, writer) = tunnel_kit::pump::sink_into(write);
    exchange.deliver_to(sink);
    let summary = exchange.run().await;
    let _ = writer.await;
    summary
}

/// Bytes of a request head as received: request line and header fields.
fn request_head_bytes(parts: &Parts) -> u64 {
    let line = parts.method.as_str().len() + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 12;
    (line + header_bytes(&parts.headers) + 2) as u64
}

/// Bytes of a response head as sent over HTTP/1.1: status line and header fields.
fn response_head_bytes(response: &Response) -> u64 {
    (17 + response.status().canonical_reason().map_or(0, str::len) + header_bytes(response.headers()) + 2) as u64
}

/// Drops the tunnel's own basic-auth credentials: the local service never sees them.
fn strip_authorization(headers: &mut Vec<Header>) {
    headers.retain(|Header(name, _)| name != "authorization");
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with an `Upgrade` field).
fn upgrade_protocol(headers: &axum::http::HeaderMap) -> Option<Bytes> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE)?;
    asks.then(|| Bytes::copy_from_slice(protocol.as_bytes()))
}

fn host_of(parts: &Parts) -> Option<&str> {
    crate::routing::public_host(&parts.headers, &parts.uri).ok().flatten()
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
