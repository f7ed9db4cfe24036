//! The `RECORDINGS` stream, apart from `AUDIT`, with its own retention.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tunnel_schemas::subjects::{RECORDING_STREAM, RECORDING_SUBJECTS};

use tunnel_kit::retention::Retention;

use super::Policy;

/// Time before the first new attempt at creating the stream after a failure; it doubles up to
/// [`RETRY_CEILING`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Longest time between attempts at creating the stream.
const RETRY_CEILING: Duration = Duration::from_secs(10);

/// Window in which a re-published part (same message id) is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates the `RECORDINGS` stream when absent (settings from `policy`) and returns it; an
/// existing stream gets the configured retention ([`tunnel_kit::retention::reconcile`]).
///
/// # Errors
/// The JetStream error when the stream can be neither found nor created.
pub async fn ensure_stream(js: &jetstream::Context, policy: &Policy) -> Result<stream::Stream, String> {
    let wanted = config(policy);
    let stream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| e.to_string())?;
    tunnel_kit::retention::reconcile(js, RECORDING_STREAM, Retention::of(&wanted)).await;
    tokio::spawn(tunnel_kit::retention::watch(js.clone(), RECORDING_STREAM.to_owned(), Retention::of(&wanted)));
    Ok(stream)
}

/// The settings of the stream `policy` asks for.
fn config(policy: &Policy) -> stream::Config {
    stream::Config {
        name: RECORDING_STREAM.into(),
        description: Some("http-tunnel recorded exchanges".into()),
        subjects: vec![RECORDING_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: policy.max_age,
        max_bytes: i64::try_from(policy.max_bytes).unwrap_or(i64::MAX),
        storage: stream::StorageType::File,
        num_replicas: policy.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    }
}

/// Tries to create the stream, at growing intervals from [`RETRY_FIRST`] to [`RETRY_CEILING`],
/// until it exists (JetStream was down or slow at start, or refused the settings: the error says
/// why, e.g. a `record_max_bytes` over the server's `max_file_store`).
pub async fn retry(js: jetstream::Context, policy: Policy) {
    let mut interval = RETRY_FIRST;
    loop {
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(RETRY_CEILING);
        match ensure_stream(&js, &policy).await {
            Ok(_) => {
                tracing::info!(stream = RECORDING_STREAM, "recording stream ready");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "recording stream still unavailable"),
        }
    }
}
