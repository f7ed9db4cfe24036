//! Tells clients about their quotas: each warning or block the auditor stores in the KV bucket
//! [`QUOTA_STATE_BUCKET`] is sent to the sessions of its tunnel, or of its account, on this host
//! (`HostFrame::Quota`); the client shows it. Refusing requests is the ingress's part.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tunnel_schemas::usage::{QUOTA_STATE_BUCKET, QuotaState};

use crate::registry::Registry;

/// Time between looks for the bucket (made by the auditor) or a new watch after a failure.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Largest stored state read.
const MAX_STATE_BYTES: usize = 64 << 10;

/// Relays the bucket's states, the current ones and then each new one, to `registry`'s sessions
/// until the task is aborted.
pub async fn relay(js: jetstream::Context, registry: Registry) {
    loop {
        if let Ok(store) = js.get_key_value(QUOTA_STATE_BUCKET).await {
            // The current states first: the sessions open now hear where they stand.
            match store.watch_with_history(">").await {
                Ok(mut watch) => {
                    while let Some(Ok(entry)) = watch.next().await {
                        if entry.operation != kv::Operation::Put {
                            continue;
                        }
                        match tunnel_schemas::decode::<QuotaState>(&entry.value, MAX_STATE_BYTES) {
                            Ok(state) => {
                                let told = registry.notify_quota(&state);
                                tracing::debug!(key = %entry.key, told, "quota notice");
                            }
                            Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable quota state"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the quota states; retrying"),
            }
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}
