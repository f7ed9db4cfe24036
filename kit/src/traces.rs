//! Traces: one span per stage of a public request (ingress, session-host, tunnel client), linked
//! by W3C trace context and exported over OTLP/HTTP (protobuf) when an endpoint is set.
//!
//! The context travels as a `traceparent` value: in the public request's headers, in the NATS
//! headers of the request message from the ingress to the session-host, and in the request head
//! that goes on to the client and the local service. Each stage that traces starts its span as a
//! child of the `traceparent` it receives (or starts a trace when there is none) and passes its
//! own on. A stage that does not trace passes the header on untouched, as W3C asks.
//!
//! Off (no endpoint) costs nothing: no provider, no thread, [`StageSpan`]s are empty.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tunnel_schemas::http::Header;

/// The W3C Trace Context header that names a span's trace and parent.
pub const TRACEPARENT: &str = "traceparent";

/// Where OTLP paths of traces end; appended to an endpoint given as a base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Longest an export of one batch may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Trace settings of a server (flattened into its configuration: `otlp_endpoint`,
/// `trace_sample_ratio`; `TUNNEL_OTLP_ENDPOINT` and so on override them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TraceSettings {
    /// OTLP/HTTP collector, as a base URL (`http://collector:4318`; `/v1/traces` is added) or
    /// the full traces URL; empty turns traces off.
    pub otlp_endpoint: String,
    /// Share of the traces this node starts that are kept (0 to 1); a trace started upstream
    /// keeps its own decision (the `sampled` flag of its `traceparent`).
    pub trace_sample_ratio: f64,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self { otlp_endpoint: String::new(), trace_sample_ratio: 1.0 }
    }
}

impl TraceSettings {
    /// Checks the ratio and the endpoint's form.
    ///
    /// # Errors
    /// The setting that is wrong, and why.
    pub fn check(&self) -> Result<(), crate::config::ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(crate::config::ConfigError::invalid("trace_sample_ratio", "must be between 0 and 1"));
        }
        if !self.otlp_endpoint.is_empty() && !self.otlp_endpoint.starts_with("http://") {
            return Err(crate::config::ConfigError::invalid(
                "otlp_endpoint",
                "must be an http:// URL of an OTLP/HTTP collector (a local agent or sidecar)",
            ));
        }
        Ok(())
    }
}

/// Why traces could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces: {0}")]
pub struct TraceError(String);

/// A component's tracer: cheap to clone, off when no endpoint is set.
#[derive(Clone, Default)]
pub struct Traces {
    exporting: Option<Arc<Exporting>>,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Traces for `service` (the `service.name` of its spans), exported to the settings'
    /// endpoint in batches from a thread of their own; off when the endpoint is empty.
    ///
    /// # Errors
    /// When the exporter cannot be built (a malformed endpoint).
    pub fn start(service: &'static str, settings: &TraceSettings) -> Result<Self, TraceError> {
        if settings.otlp_endpoint.is_empty() {
            return Ok(Self::default());
        }
        let endpoint = if settings.otlp_endpoint.ends_with(TRACES_PATH) {
            settings.otlp_endpoint.clone()
        } else {
            format!("{}{TRACES_PATH}", settings.otlp_endpoint.trim_end_matches('/'))
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TraceError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name(service).build();
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.trace_sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service);
        Ok(Self { exporting: Some(Arc::new(Exporting { provider, tracer })) })
    }

    /// Starts the span `name` of `kind`, the child of `parent` (a `traceparent` value), or the
    /// root of a new trace when there is none or it does not parse.
    #[must_use]
    pub fn span(&self, name: &'static str, kind: SpanKind, parent: Option<&str>) -> StageSpan {
        let Some(exporting) = &self.exporting else {
            return StageSpan::default();
        };
        let parent = parent.map_or_else(Context::new, context_of);
        let span = exporting.tracer.span_builder(name).with_kind(kind).start_with_context(&exporting.tracer, &parent);
        StageSpan { span: Some(Box::new(span)) }
    }

    /// Exports what is pending and stops the export thread; call once when the component stops.
    pub async fn shutdown(&self) {
        if let Some(exporting) = self.exporting.clone() {
            // The flush waits on the export thread: not on a runtime worker.
            let flushed = tokio::task::spawn_blocking(move || exporting.provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "traces not all exported at shutdown");
            }
        }
    }
}

/// One stage's span, ended when dropped; empty (every call a no-op) when traces are off.
#[derive(Default)]
pub struct StageSpan {
    /// Boxed: an empty span stays one word in the state that holds it.
    span: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl StageSpan {
    /// This span's `traceparent`, for the next stage; `None` when traces are off.
    #[must_use]
    pub fn traceparent(&self) -> Option<String> {
        let context = self.span.as_ref()?.span_context();
        // Version 00: trace id, span id, and the sampled flag alone (W3C Trace Context).
        let flags = context.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
        Some(format!("00-{:032x}-{:016x}-{:02x}", context.trace_id(), context.span_id(), flags))
    }

    /// Whether this span records (traces on and the trace sampled): attributes worth building.
    #[must_use]
    pub fn recording(&self) -> bool {
        self.span.as_ref().is_some_and(|span| span.is_recording())
    }

    /// Sets an attribute (a bounded value: ids, names, codes, sizes).
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the stage failed with the error `code`.
    pub fn fail(&mut self, code: &'static str) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new("error.type", code));
            span.set_status(Status::error(code));
        }
    }
}

/// The `traceparent` among request `headers`, if any (and valid UTF-8).
#[must_use]
pub fn traceparent_in(headers: &[Header]) -> Option<&str> {
    headers
        .iter()
        .find(|Header(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
        .and_then(|h| std::str::from_utf8(&h.1).ok())
}

/// Makes `span` the parent the next stage sees in `headers`: its `traceparent` replaces the one
/// there. Untouched when `span` is empty (traces off here: the header passes on as it came).
pub fn pass_on(span: &StageSpan, headers: &mut Vec<Header>) {
    if let Some(traceparent) = span.traceparent() {
        headers.retain(|Header(name, _)| !name.eq_ignore_ascii_case(TRACEPARENT));
        headers.push(Header(TRACEPARENT.to_owned(), traceparent.into()));
    }
}

/// The context a `traceparent` value names (empty when it does not parse).
fn context_of(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&OneHeader(traceparent))
}

/// A carrier holding a `traceparent` value alone, for the propagator to parse.
struct OneHeader<'a>(&'a str);

impl opentelemetry::propagation::Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Traces {
        // No collector listens there; the spans are made and their export fails quietly.
        let settings = TraceSettings { otlp_endpoint: "http://127.0.0.1:9".into(), ..TraceSettings::default() };
        Traces::start("test", &settings).expect("tracer")
    }

    #[tokio::test]
    async fn a_child_span_keeps_the_trace_of_its_parent_and_has_its_own_id() {
        let traces = on();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = traces.span("stage", SpanKind::Server, Some(parent)).traceparent().expect("traced");
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{child}");
        assert!(!child.contains("00f067aa0ba902b7"), "{child}");
        assert!(child.ends_with("-01"), "{child}");
        traces.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_or_malformed_parent_starts_a_trace_and_an_unsampled_one_stays_unsampled() {
        let traces = on();
        for parent in [None, Some("not-a-traceparent")] {
            let root = traces.span("stage", SpanKind::Server, parent).traceparent().expect("traced");
            assert_eq!(root.len(), 55, "{root}");
        }
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let child = traces.span("stage", SpanKind::Server, Some(unsampled)).traceparent().expect("traced");
        assert!(child.ends_with("-00"), "{child}");
        traces.shutdown().await;
    }

    #[tokio::test]
    async fn the_span_replaces_the_traceparent_it_was_given_and_an_empty_one_leaves_it() {
        let traces = on();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = vec![Header("Traceparent".into(), parent.into()), Header("accept".into(), "*/*".into())];
        let span = traces.span("stage", SpanKind::Server, traceparent_in(&headers));
        pass_on(&StageSpan::default(), &mut headers);
        assert_eq!(traceparent_in(&headers), Some(parent));
        pass_on(&span, &mut headers);
        assert_eq!(traceparent_in(&headers), span.traceparent().as_deref());
        assert_eq!(headers.len(), 2);
        traces.shutdown().await;
    }

    #[test]
    fn off_makes_no_spans_and_bad_settings_are_refused() {
        let off = Traces::default();
        assert!(!off.span("stage", SpanKind::Server, None).recording());
        assert_eq!(off.span("stage", SpanKind::Server, None).traceparent(), None);
        let ratio = TraceSettings { trace_sample_ratio: 1.5, ..TraceSettings::default() };
        assert!(ratio.check().is_err());
        let https = TraceSettings { otlp_endpoint: "https://collector".into(), ..TraceSettings::default() };
        assert!(https.check().is_err());
        assert!(TraceSettings::default().check().is_ok());
    }
}
