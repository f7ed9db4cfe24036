//! The service kit shared by the http-tunnel servers (ingress, session-host, auditor).
//!
//! Each server is a library with a `run` function plus a thin `main`; this crate holds what those
//! mains have in common, so it is written once:
//!
//! - [`alloc`]: the allocator settings of every process;
//! - [`batch`]: batching events per key in front of the journal;
//! - [`config`]: layered configuration (defaults < TOML file < environment < flags), validated;
//! - [`telemetry`]: tracing and the Prometheus recorder;
//! - [`gaps`]: events dropped before they reached the log, kept until reported;
//! - [`journal`]: the bounded, asynchronous JetStream publisher of audit and recording events;
//! - [`mirror`]: an in-memory mirror of a KV bucket, kept current by a watch;
//! - [`ops`]: the `/healthz`, `/readyz` and `/metrics` routes;
//! - [`pump`]: the stream engine both ends of an exchange run (credits, resets, liveness);
//! - [`shutdown`]: SIGINT/SIGTERM handling;
//! - [`nats`]: connecting to NATS with a per-component inbox prefix;
//! - [`serve`]: the HTTP accept loop with hyper's limits and graceful drain;
//! - [`service`]: the start and stop script of every server's `main`;
//! - [`tls`]: the servers' TLS configuration from PEM files;
//! - [`traces`]: spans per stage of a request, W3C trace context, OTLP export;
//! - [`sink`]: the batching WebSocket writer of the tunnel client.

pub mod alloc;
pub mod batch;
pub mod config;
pub mod gaps;
pub mod journal;
pub mod mirror;
pub mod nats;
pub mod ops;
pub mod presence;
pub mod pump;
pub mod retention;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod traces;
