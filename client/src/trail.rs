//! Reading a tunnel's trail from the client side: through the session-host with the tunnel's
//! resume secret (`GET /v1/trail/<name>`), or straight from JetStream with NATS credentials
//! (operators).

use std::io;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tunnel_schemas::audit::{DataAction, DataEvent};
use tunnel_trail::event::TrailEvent;
use tunnel_trail::query::{self, Query, Source};
use tunnel_trail::record::put_on_record;

/// Longest line of the trail endpoint's output accepted (a recorded exchange with two 1 MiB
/// bodies in base64 is under 3 MiB).
const MAX_LINE_BYTES: usize = 96 << 20;

/// How the log is reached.
#[derive(Clone)]
pub enum Access {
    /// Through a session-host, as the tunnel's own client.
    Host {
        /// Base URL of the host's HTTP endpoint (`http://host:7070`).
        base: String,
        /// The tunnel's resume secret.
        secret: String,
    },
    /// Straight from NATS (`nats://user:password@host:4222`).
    Nats {
        /// The NATS URL.
        url: String,
        /// TLS to NATS.
        tls: tunnel_kit::nats::NatsTls,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host { base, .. } => f.debug_struct("Host").field("base", base).field("secret", &"***").finish(),
            Self::Nats { url, tls } => {
                f.debug_struct("Nats").field("url", &tunnel_kit::config::redact_url(url)).field("tls", tls).finish()
            }
        }
    }
}

/// Why the trail cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The server refused, with a typed code.
    #[error("{message} ({code})")]
    Refused {
        /// The error code.
        code: String,
        /// What it means.
        message: String,
    },
    /// The server or NATS cannot be reached, or answered nonsense.
    #[error("{0}")]
    Unreachable(String),
}

impl TrailError {
    /// The typed code.
    pub fn code(&self) -> &str {
        match self {
            Self::Refused { code, .. } => code,
            Self::Unreachable(_) => "unavailable",
        }
    }
}

/// The HTTP base URL of a session-host given by its WebSocket URL: `ws://h:7070/v1/connect`
/// gives `http://h:7070`, `wss://h` gives `https://h`.
///
/// # Errors
/// [`TrailError::Unreachable`] for a URL that is not `ws://`, `wss://`, `http://` or `https://`.
pub fn host_base(server: &str) -> Result<String, TrailError> {
    let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
    let scheme = match scheme {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return Err(TrailError::Unreachable(format!("{server:?}: expected a ws:// or wss:// server URL"))),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{authority}"))
}

/// An operator's connection to NATS at `url` as `name` (a user and password in the URL
/// authenticate, as for the servers), over TLS as `tls` says, replies under its own
/// `_INBOX.cli.<random>` prefix.
///
/// # Errors
/// When no server answers, the credentials are refused or the TLS settings or handshake fail.
pub async fn operator_nats(
    url: &str,
    tls: &tunnel_kit::nats::NatsTls,
    name: &str,
) -> Result<async_nats::Client, tunnel_kit::nats::ConnectError> {
    let inbox = tunnel_schemas::subjects::inbox_prefix("cli", &uuid::Uuid::new_v4().simple().to_string());
    tunnel_kit::nats::connect_with(url, name, &inbox, tls).await
}

/// The events of `query`, from the log behind `access`, read for `purpose` (a read of recorded
/// exchanges is put on record first, by the session-host or, through NATS, here).
///
/// # Errors
/// [`TrailError`] when the log cannot be reached or refuses, or the read cannot be put on record.
pub async fn read(
    access: &Access,
    query: Query,
    purpose: DataAction,
) -> Result<BoxStream<'static, Result<TrailEvent, TrailError>>, TrailError> {
    match access {
        Access::Nats { url, tls } => {
            let nats =
                operator_nats(url, tls, "tunnel-cli").await.map_err(|e| TrailError::Unreachable(e.to_string()))?;
            let js = async_nats::jetstream::new(nats);
            if query.source == Source::Exchanges {
                let action = if query.follow && purpose == DataAction::Query { DataAction::Tail } else { purpose };
                put_on_record(&js, &operator_event(url, &query.tunnel, action, query.filter.describe(), None))
                    .await
                    .map_err(|e| TrailError::Unreachable(e.to_string()))?;
            }
            let events = query::read(&js, query).await.map_err(|e| TrailError::Unreachable(e.to_string()))?;
            Ok(events.map_err(|e| TrailError::Unreachable(e.to_string())).boxed())
        }
        Access::Host { base, secret } => read_from_host(base, secret, &query, purpose).await,
    }
}

/// The data event of an operator reaching the log through NATS at `url`: the actor is the NATS
/// user of the URL (`nats:admin`), or `nats` without one.
pub fn operator_event(
    url: &str,
    tunnel: &str,
    action: DataAction,
    selector: String,
    records: Option<u64>,
) -> DataEvent {
    let user = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(credentials, _)| credentials.split(':').next().unwrap_or_default());
    DataEvent {
        v: tunnel_schemas::PROTOCOL_VERSION,
        tunnel: tunnel.to_owned(),
        action,
        actor: user.map_or_else(|| "nats".to_owned(), |user| format!("nats:{user}")),
        remote_addr: None,
        selector,
        records,
        at_ms: tunnel_trail::filter::now_ms(),
    }
}

async fn read_from_host(
    base: &str,
    secret: &str,
    query: &Query,
    purpose: DataAction,
) -> Result<BoxStream<'static, Result<TrailEvent, TrailError>>, TrailError> {
    let mut pairs: Vec<(&str, String)> = query.filter.to_pairs();
    pairs.push(("source", query.source.as_str().to_owned()));
    pairs.push(("purpose", purpose.as_str().to_owned()));
    if query.follow {
        pairs.push(("follow", "1".into()));
    }
    if let Some(limit) = query.limit {
        pairs.push(("limit", limit.to_string()));
    }
    let encoded = serde_urlencoded::to_string(&pairs).map_err(|e| TrailError::Unreachable(e.to_string()))?;
    let url = format!("{base}/v1/trail/{}?{encoded}", query.tunnel);
    let request = Request::get(&url)
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| TrailError::Unreachable(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build(crate::forward::connector());
    let response = client.request(request).await.map_err(|e| TrailError::Unreachable(format!("{base}: {e}")))?;
    let status = response.status();
    let body = response.into_body().into_data_stream().map_err(io::Error::other);
    if status != StatusCode::OK {
        let text = body.try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        });
        let text = text.await.unwrap_or_default();
        let error: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        let field = |key: &str| error.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        return Err(TrailError::Refused {
            code: field("error"),
            message: format!("{} {}", field("message"), field("detail")),
        });
    }
    Ok(lines(body)
        .map(|line| {
            let line = line.map_err(|e| TrailError::Unreachable(e.to_string()))?;
            serde_json::from_slice::<TrailEvent>(&line)
                .map_err(|e| TrailError::Unreachable(format!("unreadable trail line: {e}")))
        })
        .boxed())
}

/// Splits a byte stream into lines (without their newline), refusing a line over
/// [`MAX_LINE_BYTES`].
fn lines(
    body: impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, io::Error>> + Send + 'static {
    futures_util::stream::unfold((Box::pin(body), Vec::new(), false), |(mut body, mut pending, mut done)| async move {
        loop {
            if let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let rest = pending.split_off(at + 1);
                let mut line = std::mem::replace(&mut pending, rest);
                line.pop();
                return Some((Ok(line), (body, pending, done)));
            }
            if done {
                return (!pending.is_empty()).then(|| (Ok(std::mem::take(&mut pending)), (body, Vec::new(), true)));
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    pending.extend_from_slice(&chunk);
                    if pending.len() > MAX_LINE_BYTES {
                        return Some((Err(io::Error::other("trail line too long")), (body, Vec::new(), true)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (body, Vec::new(), true))),
                None => done = true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_split_across_chunks() {
        let chunks = ["a\nb", "c\n", "d"].map(|s| Ok(Bytes::from_static(s.as_bytes())));
        let lines: Vec<_> = lines(futures_util::stream::iter(chunks)).map(|l| l.expect("line")).collect().await;
        assert_eq!(lines, [b"a".to_vec(), b"bc".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn operators_are_named_by_their_nats_user_never_their_password() {
        let event = operator_event("nats://admin:s3cret@h:4222", "t", DataAction::Export, String::new(), None);
        assert_eq!(event.actor, "nats:admin");
        assert!(!format!("{event:?}").contains("s3cret"));
        assert_eq!(operator_event("nats://h:4222", "t", DataAction::Query, String::new(), None).actor, "nats");
    }

    #[test]
    fn host_base_from_websocket_urls() {
        assert_eq!(host_base("ws://h:7070/v1/connect").expect("ws"), "http://h:7070");
        assert_eq!(host_base("ws://h:7070").expect("ws"), "http://h:7070");
        assert_eq!(host_base("wss://connect.example.com/v1/connect").expect("wss"), "https://connect.example.com");
        assert!(host_base("ftp://h").is_err());
    }
}
