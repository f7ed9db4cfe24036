//! A small OTLP/HTTP trace receiver: what the components export, decoded and kept for the test.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::sync::watch;

use crate::{DEADLINE, within};

/// One span as received, ids in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The `service.name` of the exporting component.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace.
    pub trace_id: String,
    /// Its id.
    pub span_id: String,
    /// Its parent's id; empty for a root.
    pub parent_id: String,
    /// Its string and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The running receiver; every span it has been sent.
pub struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    received: watch::Receiver<usize>,
}

impl OtlpReceiver {
    /// Listens on a random port of 127.0.0.1 for `POST /v1/traces` (protobuf).
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (count, received) = watch::channel(0);
        let store = spans.clone();
        let port = crate::serve_fn(move |request: axum::extract::Request| {
            let (store, count) = (store.clone(), count.clone());
            async move {
                let body = axum::body::to_bytes(request.into_body(), 16 << 20).await.unwrap_or_default();
                let decoded = decode(&body);
                let total = {
                    let mut spans = store.lock().expect("spans");
                    spans.extend(decoded);
                    spans.len()
                };
                count.send_replace(total);
                axum::response::IntoResponse::into_response(axum::http::StatusCode::OK)
            }
        })
        .await;
        Self { url: format!("http://127.0.0.1:{port}"), spans, received }
    }

    /// The base URL to give as `otlp_endpoint`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits until the spans received satisfy `done`, and returns them.
    ///
    /// # Panics
    /// When they do not within [`DEADLINE`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        within(DEADLINE, what, async {
            loop {
                let spans = self.spans.lock().expect("spans").clone();
                if done(&spans) {
                    return spans;
                }
                self.received.changed().await.expect("receiver runs");
            }
        })
        .await
    }
}

fn decode(body: &Bytes) -> Vec<ReceivedSpan> {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else { return Vec::new() };
    let mut out = Vec::new();
    for resource in request.resource_spans {
        let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
        let service = attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .into_iter()
                        .filter_map(|kv| Some((kv.key, text(kv.value?.value.as_ref()?))))
                        .collect(),
                });
            }
        }
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
