//! Traces: one public request makes one connected trace across ingress, session-host and the
//! tunnel client, exported over OTLP to a real receiver, and the local service gets the trace.

use nix::sys::signal::Signal;
use tunnel_tests::{Cli, EnvOptions, OtlpReceiver, ReceivedSpan, TestEnv, Upstream};

/// The public client's own trace, as a browser or a traced caller would send it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The `traceparent` the local service received, as (trace id, parent span id).
fn parent_of(request: &tunnel_tests::Recorded) -> (String, String) {
    let value = request.header("traceparent");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The one span of `service` in `trace`.
fn span_of<'a>(spans: &'a [ReceivedSpan], trace: &str, service: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace && s.service == service).collect();
    assert_eq!(found.len(), 1, "one {service} span in trace {trace}: {spans:#?}");
    found[0]
}

/// Whether `spans` hold a span of each component in `trace`.
fn complete(spans: &[ReceivedSpan], trace: &str) -> bool {
    ["ingress", "session-host", "tunnel-client"]
        .iter()
        .all(|service| spans.iter().any(|s| s.trace_id == trace && s.service == *service))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_ingress_session_host_client_and_the_local_service() {
    let mut receiver = OtlpReceiver::start().await;
    let options = EnvOptions { otlp_endpoint: receiver.url().to_owned(), ..EnvOptions::default() };
    let env = TestEnv::start_with(options).await;
    let mut upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let args = [port.as_str(), "--name", "traced", "--no-inspect", "--otlp-endpoint", receiver.url()];
    let mut client = Cli::start(&env.server_url(), &args);
    client.next_event("ready").await;

    // A caller that traces: its trace goes on.
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let response = env.request(reqwest::Method::POST, "traced", "/echo").header("traceparent", &caller).body("hi");
    assert_eq!(response.send().await.expect("response").status(), 200);
    let (local_trace, local_parent) = parent_of(&upstream.next_request().await);
    assert_eq!(local_trace, TRACE_ID, "the local service is in the caller's trace");
    // A caller that does not: the ingress starts the trace.
    assert_eq!(env.get("traced", "/echo").await.status(), 200);
    let (started_trace, _) = parent_of(&upstream.next_request().await);
    assert_ne!(started_trace, TRACE_ID);

    // The client exports what it holds as it leaves; the servers on their next batch.
    client.signal(Signal::SIGINT);
    assert_eq!(client.exit_code().await, Some(0));
    let spans = receiver
        .until("every stage's span of both traces", |spans| {
            complete(spans, TRACE_ID) && complete(spans, &started_trace)
        })
        .await;

    let ingress = span_of(&spans, TRACE_ID, "ingress");
    let host = span_of(&spans, TRACE_ID, "session-host");
    let client = span_of(&spans, TRACE_ID, "tunnel-client");
    assert_eq!(ingress.parent_id, CALLER_SPAN, "the ingress span is the caller's child");
    assert_eq!(host.parent_id, ingress.span_id, "the session-host span is the ingress span's child");
    assert_eq!(client.parent_id, host.span_id, "the client span is the session-host span's child");
    assert_eq!(local_parent, client.span_id, "the local service's parent is the client span");
    assert_eq!(ingress.attribute("tunnel.name"), Some("traced"));
    assert_eq!(ingress.attribute("http.response.status_code"), Some("200"));
    assert_eq!(client.attribute("http.request.method"), Some("POST"));
    assert_eq!(ingress.attribute("request.id"), client.attribute("request.id"));
    let root = span_of(&spans, &started_trace, "ingress");
    assert_eq!(root.parent_id, "", "the ingress starts a trace when the caller sends none");
    for span in [ingress, host, client] {
        println!(
            "trace {} span {} parent {:16} {:13} {:20} {:?}",
            span.trace_id, span.span_id, span.parent_id, span.service, span.name, span.attributes
        );
    }
}

#[tokio::test]
async fn without_traces_the_callers_traceparent_reaches_the_local_service_untouched() {
    let env = TestEnv::start().await;
    let mut upstream = Upstream::start().await;
    let _tunnel = env.tunnel(upstream.port(), Some("untraced")).await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let response = env.request(reqwest::Method::GET, "untraced", "/echo").header("traceparent", &caller);
    assert_eq!(response.send().await.expect("response").status(), 200);
    assert_eq!(upstream.next_request().await.header("traceparent"), caller);
}
