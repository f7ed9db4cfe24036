//! Reads and erasures of recordings, put on record in the `AUDIT` stream before they happen
//! (reads) or once they are done (erasures). A read that cannot be put on record is refused.

use std::time::Duration;

use async_nats::jetstream;
use tunnel_schemas::audit::{DataEvent, KIND_DATA};
use tunnel_schemas::subjects::audit_of;

/// Time the stream has to acknowledge a data event.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a data event was not stored.
#[derive(Debug, thiserror::Error)]
#[error("the access could not be put on record in the audit log: {0}")]
pub struct NotRecorded(String);

/// Stores `event` in the `AUDIT` stream (`audit.<tunnel>.data`) and waits for the stream's
/// acknowledgement.
///
/// # Errors
/// [`NotRecorded`] when the stream refuses it or does not answer within [`ACK_TIMEOUT`].
pub async fn put_on_record(js: &jetstream::Context, event: &DataEvent) -> Result<(), NotRecorded> {
    let subject = audit_of(&event.tunnel, KIND_DATA);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let message =
        jetstream::message::PublishMessage::build().payload(tunnel_schemas::encode(event).into()).message_id(id);
    let stored = async {
        let ack = js.send_publish(subject, message).await.map_err(|e| NotRecorded(e.to_string()))?;
        ack.await.map_err(|e| NotRecorded(e.to_string()))
    };
    match tokio::time::timeout(ACK_TIMEOUT, stored).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(NotRecorded("no acknowledgement in time".into())),
    }
}
