//! The KV buckets of usage and quotas, found or created (idempotently: several auditors may
//! start at once).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tunnel_schemas::usage::{QUOTA_STATE_BUCKET, QUOTAS_BUCKET, USAGE_BUCKET};

use tunnel_kit::retention::Retention;

use crate::config::AuditorConfig;

/// The buckets the auditor uses.
#[derive(Clone)]
pub struct Buckets {
    /// Usage counters.
    pub usage: kv::Store,
    /// The operator's limits.
    pub quotas: kv::Store,
    /// Scopes near or over a limit, watched by ingresses and session-hosts.
    pub quota_state: kv::Store,
    /// The leader lease.
    pub leader: kv::Store,
}

impl Buckets {
    /// Opens (or creates) every bucket with the settings of `config`.
    ///
    /// # Errors
    /// The JetStream error of the first bucket that can be neither found nor created.
    pub async fn open(js: &jetstream::Context, config: &AuditorConfig) -> Result<Self, String> {
        let bucket = |name: &str, description: &str, max_age: Duration| kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            max_age,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let retention = Duration::from_secs(config.usage_retention_days * 86_400);
        let usage = open(js, bucket(USAGE_BUCKET, "usage counters per scope and period", retention)).await?;
        // Counters older than the retention go; nothing else limits the bucket. Deletes are
        // denied in every KV bucket's stream (keys are deleted with markers, not removed).
        let kept = Retention { max_age: retention, max_bytes: -1, deny_delete: true, deny_purge: false };
        let stream = format!("KV_{USAGE_BUCKET}");
        tunnel_kit::retention::reconcile(js, &stream, kept).await;
        tokio::spawn(tunnel_kit::retention::watch(js.clone(), stream, kept));
        Ok(Self {
            usage,
            quotas: open(js, bucket(QUOTAS_BUCKET, "quota limits per scope", Duration::ZERO)).await?,
            quota_state: open(js, bucket(QUOTA_STATE_BUCKET, "scopes near or over a quota", Duration::ZERO)).await?,
            leader: crate::lease::open_bucket(js, Duration::from_secs(config.leader_lease_secs), config.replicas)
                .await?,
        })
    }
}

/// The bucket of `config`, found, else created, else found (another process created it
/// meanwhile). An existing bucket is used as it is.
///
/// # Errors
/// The JetStream error when it can be neither found nor created.
pub async fn open(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(created) => js.get_key_value(&name).await.map_err(|_| format!("bucket {name}: {created}")),
    }
}
