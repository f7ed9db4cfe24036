//! Forwarding one request to the local service through a pooled HTTP client.
//!
//! The client keeps connections alive, never follows redirects and never adds, drops or
//! reorders a header of its own accord (beyond what HTTP framing requires). Bodies stream both
//! ways; the caller decides how the response body travels.

use std::time::Duration;

use std::io;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;
use tunnel_schemas::http::{Header, RequestHead};

use crate::target::Target;

/// Idle keep-alive connections kept to the local service.
const MAX_IDLE_CONNECTIONS: usize = 256;
/// Most header fields accepted in a response head (hyper's default is 100).
const MAX_RESPONSE_HEADERS: usize = 1024;
/// Time a connection to the local service may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request body for the local service: carried whole, or streaming in from the tunnel.
pub struct LocalBody(BoxBody<Bytes, io::Error>);

impl LocalBody {
    /// A body that arrived whole.
    pub fn whole(bytes: Bytes) -> Self {
        Self(Full::new(bytes).map_err(|never| match never {}).boxed())
    }

    /// A body streaming in.
    pub fn streamed(chunks: impl Stream<Item = Result<Bytes, io::Error>> + Send + Sync + 'static) -> Self {
        Self(BodyExt::boxed(StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data)))))
    }
}

/// The pooled client of one local service.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, BoxBody<Bytes, io::Error>>,
    target: Target,
    /// Where exchanges are captured for the local inspector, when it runs.
    inspector: Option<crate::inspector::Handle>,
}

/// A connector for `http://` and `https://` URLs; servers are checked against the roots of
/// [`crate::trust`].
pub fn connector() -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.enforce_http(false);
    let tls = (*crate::trust::client_config()).clone();
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http)
}

impl Forwarder {
    /// A forwarder to `target`.
    pub fn new(target: Target) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .build(connector());
        Self { client, target, inspector: None }
    }

    /// The same forwarder, its exchanges captured by `inspector`.
    #[must_use]
    pub fn inspected(self, inspector: Option<crate::inspector::Handle>) -> Self {
        Self { inspector, ..self }
    }

    /// The inspector capturing this forwarder's exchanges.
    pub fn inspector(&self) -> Option<&crate::inspector::Handle> {
        self.inspector.as_ref()
    }

    /// Sends a request with `head` and `body` to the local service and returns its response
    /// once the head has arrived.
    ///
    /// # Errors
    /// A [`Failure`] when the request cannot be formed or the service cannot be reached.
    pub async fn send(&self, head: RequestHead, body: LocalBody) -> Result<Response<Incoming>, Failure> {
        let bad_request = |detail: &str| Failure::new(ErrorCode::BadRequest, detail);
        let method = Method::from_bytes(head.method.as_bytes()).map_err(|_| bad_request("invalid method"))?;
        let uri = self.target.uri_for(&head.target).ok_or_else(|| bad_request("invalid request target"))?;
        let mut outgoing = Request::new(body.0);
        *outgoing.method_mut() = method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = header_map(head.headers);
        self.client.request(outgoing).await.map_err(|e| upstream_failure(&e))
    }
}

fn header_map(headers: Vec<Header>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for Header(name, value) in headers {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value)) {
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
    let detail = if error.is_connect() { format!("cannot connect: {error}") } else { error.to_string() };
    Failure::new(ErrorCode::UpstreamUnreachable, detail)
}
