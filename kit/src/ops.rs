//! Operational routes: `/healthz` (the process is alive), `/readyz` (it can serve: NATS is
//! connected) and `/metrics` (Prometheus text).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Routes for `/healthz`, `/readyz` and `/metrics`; readiness follows the NATS connection.
pub fn router<S: Clone + Send + Sync + 'static>(metrics: PrometheusHandle, nats: async_nats::Client) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let state = nats.connection_state();
                async move {
                    if state == async_nats::connection::State::Connected {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "nats not connected\n")
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(metrics.render())))
}
