//! The leader lease: of the auditors running, one counts at a time.
//!
//! Two auditors pulling from the one durable consumer would each apply a share of the messages,
//! out of order with each other, and the per-counter `last_seq` would then skip messages the
//! other had not stored yet. So an auditor counts only while it holds the key [`LEADER_KEY`] in
//! the bucket [`LEADER_BUCKET`], whose `max_age` is the lease's length:
//! - it takes the key with `create` (only if absent: expired, released or never held);
//! - it renews it every third of the lease with `update` on the revision it wrote (a
//!   compare-and-set: it fails when another auditor took the key);
//! - it counts itself leader only until the time of its last renewal's *request* plus the lease
//!   less a margin, earlier than the server can expire the key, so two leaders never overlap
//!   in time; past that, or on a failed compare-and-set, it stops consuming at once;
//! - on a clean stop it deletes the key so a standby takes over without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;

/// KV bucket of the leader lease.
pub const LEADER_BUCKET: &str = "tunnel_auditor_leader";
/// The key the leader holds.
pub const LEADER_KEY: &str = "leader";

/// A held lease; it renews itself until it is lost or released.
pub struct Lease {
    kv: kv::Store,
    /// Revision of the last renewal.
    revision: Arc<AtomicU64>,
    /// Milliseconds after `epoch` until which the holder may act.
    valid_until_ms: Arc<AtomicU64>,
    epoch: Instant,
    /// Cancelled when the lease is lost (or released).
    lost: CancellationToken,
}

impl Lease {
    /// Waits until this auditor (`holder`) takes the lease of the bucket `kv`, whose `max_age`
    /// is the lease's length; `None` when `shutdown` comes first.
    pub async fn acquire(kv: &kv::Store, holder: &str, shutdown: &CancellationToken) -> Option<Self> {
        let ttl = lease_length(kv).await;
        let poll = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut waiting_logged = false;
        loop {
            let asked = Instant::now();
            match kv.create(LEADER_KEY, holder.to_owned().into()).await {
                Ok(revision) => return Some(Self::hold(kv.clone(), holder.to_owned(), revision, asked, ttl)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !std::mem::replace(&mut waiting_logged, true) {
                        tracing::info!("another auditor leads; standing by");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot ask for the leader lease"),
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    fn hold(kv: kv::Store, holder: String, revision: u64, asked: Instant, ttl: Duration) -> Self {
        let epoch = asked;
        let margin = ttl / 5;
        let valid_until_ms = Arc::new(AtomicU64::new(millis(ttl - margin)));
        let revision = Arc::new(AtomicU64::new(revision));
        let lost = CancellationToken::new();
        let lease = Self {
            kv: kv.clone(),
            revision: revision.clone(),
            valid_until_ms: valid_until_ms.clone(),
            epoch,
            lost: lost.clone(),
        };
        tokio::spawn(async move {
            let renew_every = ttl / 3;
            loop {
                let deadline = epoch + Duration::from_millis(valid_until_ms.load(Ordering::Acquire));
                let next = (Instant::now() + renew_every).min(deadline);
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    () = lost.cancelled() => return,
                }
                if Instant::now() >= deadline {
                    tracing::warn!("leader lease not renewed in time; standing down");
                    break;
                }
                let asked = Instant::now();
                let current = revision.load(Ordering::Acquire);
                match kv.update(LEADER_KEY, holder.clone().into(), current).await {
                    Ok(next) => {
                        revision.store(next, Ordering::Release);
                        valid_until_ms.store(millis(asked - epoch + ttl - margin), Ordering::Release);
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        tracing::warn!("another auditor took the leader lease; standing down");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "leader lease renewal failed; retrying"),
                }
            }
            lost.cancel();
        });
        lease
    }

    /// Whether this auditor may still act as the leader.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled()
            && self.epoch.elapsed() < Duration::from_millis(self.valid_until_ms.load(Ordering::Acquire))
    }

    /// Completes when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Stops renewing and gives the lease up, so that a standby takes over at once.
    pub async fn release(self) {
        let still_held = self.valid();
        self.lost.cancel();
        if still_held {
            let revision = self.revision.load(Ordering::Acquire);
            if let Err(e) = self.kv.delete_expect_revision(LEADER_KEY, Some(revision)).await {
                tracing::debug!(error = %e, "leader lease not released; it will expire");
            }
        }
    }
}

/// The lease's length: the bucket's `max_age`.
async fn lease_length(kv: &kv::Store) -> Duration {
    match kv.status().await {
        Ok(status) if !status.max_age().is_zero() => status.max_age(),
        _ => Duration::from_secs(10),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Opens the lease bucket, creating it with `ttl` as its `max_age` when absent.
///
/// # Errors
/// The JetStream error when it can be neither found nor created.
pub async fn open_bucket(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<kv::Store, String> {
    crate::buckets::open(
        js,
        kv::Config {
            bucket: LEADER_BUCKET.into(),
            description: "the auditor holding the lease counts usage".into(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
}
