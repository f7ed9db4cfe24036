//! The `AUDIT` stream and the auditor's durable consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use tunnel_schemas::subjects::{AUDIT_STREAM, AUDIT_SUBJECTS};

use crate::config::AuditorConfig;

/// Name of the auditor's durable consumer.
pub const CONSUMER: &str = "auditor";
/// Largest audit event accepted by the stream.
const MAX_EVENT_BYTES: i32 = 256 << 10;
/// Window in which a re-published event (same `Nats-Msg-Id`) is dropped as a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the stream or consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the audit stream: {0}")]
pub struct SetupError(String);

/// Creates the `AUDIT` stream when absent and returns it.
///
/// # Errors
/// [`SetupError`] when JetStream refuses.
pub async fn ensure_stream(js: &jetstream::Context, config: &AuditorConfig) -> Result<stream::Stream, SetupError> {
    let wanted = stream::Config {
        name: AUDIT_STREAM.into(),
        subjects: vec![AUDIT_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(config.retention_days * 86_400),
        max_message_size: MAX_EVENT_BYTES,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| SetupError(e.to_string()))?;
    let actual = &stream.info().await.map_err(|e| SetupError(e.to_string()))?.config;
    if actual.max_age != wanted.max_age
        || actual.num_replicas != wanted.num_replicas
        || actual.subjects != wanted.subjects
    {
        tracing::warn!(
            stream = AUDIT_STREAM,
            max_age = ?actual.max_age,
            replicas = actual.num_replicas,
            subjects = ?actual.subjects,
            "the audit stream exists with other settings; it is used as it is"
        );
    }
    Ok(stream)
}

/// The auditor's durable pull consumer on `stream`, created when absent.
///
/// # Errors
/// [`SetupError`] when JetStream refuses.
pub async fn ensure_consumer(stream: &stream::Stream) -> Result<consumer::PullConsumer, SetupError> {
    stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: 10,
                max_ack_pending: 1000,
                filter_subject: AUDIT_SUBJECTS.into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SetupError(e.to_string()))
}
