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

/// The `Host` header the local service gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// The public one, as the visitor sent it.
    #[default]
    Preserve,
    /// The local service's own (`localhost:3000`), for services that check it.
    Rewrite,
    /// This value.
    Fixed(HeaderValue),
}

/// Why a `--host-header` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid host header {0:?}: expected rewrite, preserve or a host such as app.local:8080")]
pub struct InvalidHostHeader(String);

impl std::str::FromStr for HostHeader {
    type Err = InvalidHostHeader;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "preserve" => Ok(Self::Preserve),
            "rewrite" => Ok(Self::Rewrite),
            host if host.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == host && !host.contains('@')) => {
                HeaderValue::from_str(host).map(Self::Fixed).map_err(|_| InvalidHostHeader(text.to_owned()))
            }
            _ => Err(InvalidHostHeader(text.to_owned())),
        }
    }
}

/// The pooled client of one local service.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, BoxBody<Bytes, io::Error>>,
    target: Target,
    host_header: HostHeader,
    /// Where exchanges are captured for the local inspector, when it runs.
    inspector: Option<crate::inspector::Handle>,
    /// Where the spans of forwarded requests go.
    traces: tunnel_kit::traces::Traces,
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
        Self { client, target, host_header: HostHeader::Preserve, inspector: None, traces: Default::default() }
    }

    /// This forwarder, giving the local service `host_header`.
    #[must_use]
    pub fn with_host_header(self, host_header: HostHeader) -> Self {
        Self { host_header, ..self }
    }

    /// The same forwarder, its exchanges captured by `inspector`.
    #[must_use]
    pub fn inspected(self, inspector: Option<crate::inspector::Handle>) -> Self {
        Self { inspector, ..self }
    }

    /// The same forwarder, a span of each request it forwards in `traces`.
    #[must_use]
    pub fn traced(self, traces: tunnel_kit::traces::Traces) -> Self {
        Self { traces, ..self }
    }

    /// Where the spans of forwarded requests go.
    pub fn traces(&self) -> &tunnel_kit::traces::Traces {
        &self.traces
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
        let mut headers = header_map(head.headers);
        let host = match &self.host_header {
            HostHeader::Preserve => None,
            HostHeader::Rewrite => uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            HostHeader::Fixed(value) => Some(value.clone()),
        };
        if let Some(host) = host {
            headers.insert(http::header::HOST, host);
        }
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;
        self.client.request(outgoing).await.map_err(|e| upstream_failure(&self.target, &e))
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

fn upstream_failure(target: &Target, error: &hyper_util::client::legacy::Error) -> Failure {
    let mut source = std::error::Error::source(error);
    let mut cause = None;
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>()
            && hyper_error.is_parse()
        {
            return Failure::new(ErrorCode::UpstreamBadResponse, error.to_string());
        }
        if let Some(io_error) = e.downcast_ref::<io::Error>() {
            cause = Some(io_error.kind());
        }
        source = e.source();
    }
    let detail = if error.is_connect() {
        let reason = match cause {
            Some(io::ErrorKind::ConnectionRefused) => "connection refused: is it running?".to_owned(),
            Some(io::ErrorKind::TimedOut) => "connection timed out".to_owned(),
            Some(kind) => kind.to_string(),
            None => "cannot connect".to_owned(),
        };
        format!("{target} unreachable: {reason}")
    } else {
        format!("{target}: {error}")
    };
    Failure::new(ErrorCode::UpstreamUnreachable, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_choices() {
        assert_eq!("rewrite".parse::<HostHeader>().expect("valid"), HostHeader::Rewrite);
        assert_eq!("preserve".parse::<HostHeader>().expect("valid"), HostHeader::Preserve);
        assert_eq!(
            "app.local:8080".parse::<HostHeader>().expect("valid"),
            HostHeader::Fixed(HeaderValue::from_static("app.local:8080"))
        );
        for bad in ["", "a b", "x/y", "user@host", "host\r\nX: y"] {
            assert!(bad.parse::<HostHeader>().is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_closed_port_names_the_target() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bound");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let target = Target::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
        let head = RequestHead { method: "GET".into(), target: "/".into(), headers: Vec::new() };
        let failure = Forwarder::new(target).send(head, LocalBody::whole(Bytes::new())).await.expect_err("refused");
        assert_eq!(failure.code, ErrorCode::UpstreamUnreachable);
        assert_eq!(failure.detail, format!("http://127.0.0.1:{port} unreachable: connection refused: is it running?"));
    }
}
