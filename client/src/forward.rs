//! Forwarding one request to the local service through a pooled HTTP client.
//!
//! The client keeps connections alive, never follows redirects and never adds, drops or
//! reorders a header of its own accord (beyond what HTTP framing requires).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::{Failure, TunnelReply, TunnelRequest, TunnelResponse};
use tunnel_schemas::http::{Header, ResponseHead};

use crate::target::Target;

/// Idle keep-alive connections kept to the local service.
const MAX_IDLE_CONNECTIONS: usize = 256;
/// Most header fields accepted in a response head (hyper's default is 100).
const MAX_RESPONSE_HEADERS: usize = 1024;
/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pooled client of one local service.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    target: Target,
    timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `target` that gives up on an answer after `timeout`.
    pub fn new(target: Target, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .build(connector);
        Self {
            client,
            target,
            timeout,
        }
    }

    /// Sends `request` to the local service and returns the reply for the tunnel, whose body is
    /// at most `max_body` bytes (larger responses fail with `response_too_large`).
    pub async fn forward(&self, request: TunnelRequest, max_body: usize) -> TunnelReply {
        match tokio::time::timeout(self.timeout, self.exchange(request, max_body)).await {
            Ok(Ok(response)) => TunnelReply::Response(response),
            Ok(Err(failure)) => TunnelReply::Failure(failure),
            Err(_) => TunnelReply::Failure(Failure::new(
                ErrorCode::UpstreamTimeout,
                "local service did not answer in time",
            )),
        }
    }

    async fn exchange(
        &self,
        request: TunnelRequest,
        max_body: usize,
    ) -> Result<TunnelResponse, Failure> {
        let bad_request = |detail: &str| Failure::new(ErrorCode::BadRequest, detail);
        let method = Method::from_bytes(request.head.method.as_bytes())
            .map_err(|_| bad_request("invalid method"))?;
        let uri = self
            .target
            .uri_for(&request.head.target)
            .ok_or_else(|| bad_request("invalid request target"))?;
        let mut outgoing = Request::new(Full::new(request.body));
        *outgoing.method_mut() = method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = header_map(request.head.headers);
        let response = self
            .client
            .request(outgoing)
            .await
            .map_err(|e| upstream_failure(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Failure::new(
                    ErrorCode::ResponseTooLarge,
                    format!("response body exceeds {max_body} bytes"),
                )
            } else {
                Failure::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("response body failed: {e}"),
                )
            }
        })?;
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                Header(
                    name.as_str().to_owned(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect();
        Ok(TunnelResponse {
            head: ResponseHead {
                status: parts.status.as_u16(),
                headers,
            },
            body: body.to_bytes(),
        })
    }
}

fn header_map(headers: Vec<Header>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for Header(name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => tracing::debug!(name, "dropping a header the local request cannot carry"),
        }
    }
    map
}

fn upstream_failure(error: &hyper_util::client::legacy::Error) -> Failure {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>()
            && hyper_error.is_parse()
        {
            return Failure::new(ErrorCode::UpstreamBadResponse, error.to_string());
        }
        source = e.source();
    }
    let detail = if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        error.to_string()
    };
    Failure::new(ErrorCode::UpstreamUnreachable, detail)
}
