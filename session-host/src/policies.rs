//! The owners' public-side policies in the KV bucket [`POLICIES_BUCKET`], which every ingress
//! watches and enforces.
//!
//! A session stores its client's policy when it binds its name, before its client is told the
//! tunnel is ready, and keeps the revision of that write. An ingress stamps every request with
//! the last revision of the bucket it has applied ([`POLICY_REVISION_HEADER`]); a request
//! stamped lower than the session's revision reached an ingress that had not yet seen the
//! policy, and is refused here instead of being served unchecked.

use async_nats::jetstream::{self, kv};
use tunnel_schemas::ErrorCode;
use tunnel_schemas::events::Failure;
use tunnel_schemas::policy::{POLICIES_BUCKET, POLICY_REVISION_HEADER, TunnelRecord, owner_key};

/// Largest stored policy read back.
const MAX_POLICY_BYTES: usize = 512 << 10;

/// The policy store.
#[derive(Clone)]
pub struct Policies {
    kv: kv::Store,
}

impl Policies {
    /// Opens the bucket, creating it (with `replicas`) when absent.
    ///
    /// # Errors
    /// The JetStream error when the bucket can be neither found nor created.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, String> {
        let kv = match js.get_key_value(POLICIES_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: POLICIES_BUCKET.into(),
                    description: "public-side policies of tunnels".into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?,
        };
        Ok(Self { kv })
    }

    /// Stores `record` (the account and the owner's policy) for `name`, unless it is stored
    /// already, and returns the revision ingresses must have applied before a request reaches the
    /// session (0 when there is nothing to wait for: no account, no policy, and none stored).
    ///
    /// # Errors
    /// `unavailable` when the store fails.
    pub async fn publish(&self, name: &str, record: &TunnelRecord) -> Result<u64, Failure> {
        let key = owner_key(name);
        let unavailable = |e: &dyn std::fmt::Display| Failure::new(ErrorCode::Unavailable, e.to_string());
        let stored = self.kv.entry(&key).await.map_err(|e| unavailable(&e))?;
        let current = stored.filter(|entry| entry.operation == kv::Operation::Put);
        if let Some(entry) = &current
            && tunnel_schemas::decode::<TunnelRecord>(&entry.value, MAX_POLICY_BYTES).is_ok_and(|r| &r == record)
        {
            return Ok(entry.revision);
        }
        if current.is_none() && record == &TunnelRecord::default() {
            return Ok(0);
        }
        self.kv.put(&key, tunnel_schemas::encode(record).into()).await.map_err(|e| unavailable(&e))
    }

    /// Removes the record of a released name.
    pub async fn clear(&self, name: &str) {
        if let Err(e) = self.kv.delete(owner_key(name)).await {
            tracing::warn!(error = %e, "tunnel policy not removed");
        }
    }
}

/// Whether a request stamped by its ingress (`headers`) may reach a session whose policy has
/// `revision`: the ingress had applied that revision or a later one.
pub fn ingress_has_applied(headers: Option<&async_nats::HeaderMap>, revision: u64) -> bool {
    revision == 0
        || headers
            .and_then(|h| h.get(POLICY_REVISION_HEADER))
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .is_some_and(|applied| applied >= revision)
}
