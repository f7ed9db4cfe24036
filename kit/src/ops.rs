//! Operational routes: `/healthz` (the process is alive), `/readyz` (it can serve: NATS is
//! connected, and whatever else the service needs first) and `/metrics` (Prometheus text).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Routes for `/healthz`, `/readyz` and `/metrics`; readiness follows the NATS connection.
pub fn router<S: Clone + Send + Sync + 'static>(metrics: PrometheusHandle, nats: async_nats::Client) -> Router<S> {
    router_with(metrics, nats, || Ok(()))
}

/// [`router`] whose readiness also needs `ready` to pass; its error says what is missing.
pub fn router_with<S: Clone + Send + Sync + 'static>(
    metrics: PrometheusHandle,
    nats: async_nats::Client,
    ready: impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let state = nats.connection_state();
                let ready = ready();
                async move {
                    match (state, ready) {
                        (async_nats::connection::State::Connected, Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
                        (async_nats::connection::State::Connected, Err(missing)) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("{missing}\n"))
                        }
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "nats not connected\n".to_owned()),
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(metrics.render())))
}
