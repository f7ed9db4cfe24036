//! The `AUDIT` stream and the auditor's durable consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use tunnel_schemas::subjects::{AUDIT_STREAM, AUDIT_SUBJECTS};

use tunnel_kit::retention::Retention;

use crate::config::AuditorConfig;

/// Name of the auditor's durable consumer.
pub const CONSUMER: &str = "auditor";
/// Largest audit event accepted by the stream.
const MAX_EVENT_BYTES: i32 = 256 << 10;
/// Time a delivered message may stay unacknowledged before it is delivered again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered and not yet acknowledged, at most.
pub const MAX_ACK_PENDING: i64 = 2048;
/// Window in which a re-published event (same `Nats-Msg-Id`) is dropped as a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the stream or consumer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the audit stream: {0}")]
pub struct SetupError(
    /// What failed.
    pub String,
);

/// Creates the `AUDIT` stream when absent and returns it; an existing stream gets the configured
/// retention where this user may update it, and is reported otherwise
/// ([`tunnel_kit::retention::reconcile`]).
///
/// The stream denies deletes and purges: no message of the audit log can be removed but by its
/// age. The server refuses to lift either once set.
///
/// # Errors
/// [`SetupError`] when JetStream refuses.
pub async fn ensure_stream(js: &jetstream::Context, config: &AuditorConfig) -> Result<stream::Stream, SetupError> {
    let wanted = stream_config(config);
    let stream = js.get_or_create_stream(wanted.clone()).await.map_err(|e| SetupError(e.to_string()))?;
    tunnel_kit::retention::reconcile(js, AUDIT_STREAM, Retention::of(&wanted)).await;
    tokio::spawn(tunnel_kit::retention::watch(js.clone(), AUDIT_STREAM.to_owned(), Retention::of(&wanted)));
    Ok(stream)
}

/// The settings of the `AUDIT` stream `config` asks for.
fn stream_config(config: &AuditorConfig) -> stream::Config {
    stream::Config {
        name: AUDIT_STREAM.into(),
        subjects: vec![AUDIT_SUBJECTS.into()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(config.retention_days * 86_400),
        max_message_size: MAX_EVENT_BYTES,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// The auditor's durable pull consumer on `stream`, created when absent.
///
/// # Errors
/// [`SetupError`] when JetStream refuses.
pub async fn ensure_consumer(stream: &stream::Stream) -> Result<consumer::PullConsumer, SetupError> {
    stream
        .get_or_create_consumer(CONSUMER, consumer_config(consumer::DeliverPolicy::All))
        .await
        .map_err(|e| SetupError(e.to_string()))
}

/// Rewinds the durable consumer to its acknowledgement floor, so that a new leader receives
/// every message not yet acknowledged again, in stream order, before any later one.
///
/// Without it, the messages a crashed leader had received but not acknowledged would come back
/// only after the ack wait, behind later ones, and a counter already past them would skip them.
/// The consumer is deleted and created again to start just after the floor; this also ends
/// any pull a former leader left behind. Messages past the floor that were acknowledged come
/// again too, and are skipped by the counters' `last_seq`.
///
/// # Errors
/// [`SetupError`] when JetStream refuses.
pub async fn rewind(stream: &stream::Stream) -> Result<consumer::PullConsumer, SetupError> {
    let failed = |e: &dyn std::fmt::Display| SetupError(e.to_string());
    let deliver = match stream.consumer_info(CONSUMER).await {
        Ok(info) => {
            stream.delete_consumer(CONSUMER).await.map_err(|e| failed(&e))?;
            consumer::DeliverPolicy::ByStartSequence { start_sequence: info.ack_floor.stream_sequence + 1 }
        }
        Err(e) if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound => {
            consumer::DeliverPolicy::All
        }
        Err(e) => return Err(failed(&e)),
    };
    tracing::info!(from = ?deliver, "audit consumer rewound to its acknowledgement floor");
    stream.create_consumer(consumer_config(deliver)).await.map_err(|e| failed(&e))
}

/// The durable consumer's settings: explicit acks, unlimited deliveries (a message is never
/// given up on), delivery from `deliver`.
fn consumer_config(deliver: consumer::DeliverPolicy) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER.into()),
        deliver_policy: deliver,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: AUDIT_SUBJECTS.into(),
        ..Default::default()
    }
}
