//! Tunnel-name leases in the JetStream KV bucket [`LEASES_BUCKET`].
//!
//! A lease maps a name to the session holding it and the hash of its resume secret. `create`
//! makes reservation atomic (of two racing clients exactly one wins); renewals are CAS updates on
//! the observed revision, so a session that lost its name learns it at its next renewal. The
//! bucket's `max_age` expires a lease that nobody renews: a crashed host frees its names after
//! one TTL.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tunnel_schemas::names::TunnelName;
use tunnel_schemas::subjects::{LEASES_BUCKET, lease_key};
use tunnel_schemas::tokens::constant_time_eq;

/// The lease store.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
}

/// What the bucket stores per name.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    session: String,
    host: String,
    secret_hash: String,
    /// The account whose clients may serve the name together (each saying so); none for a
    /// name served by one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_by: Option<String>,
}

/// A lease held by a session.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The name held.
    pub name: TunnelName,
    /// The resume secret (plain; only its hash is stored).
    pub secret: String,
    /// Whether a resume secret took the name back.
    pub resumed: bool,
    /// Whether the name is served together by sessions of one account: they all renew the same
    /// lease, and none releases it.
    pub shared: bool,
    key: String,
    record: Bytes,
    revision: u64,
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another client holds the name (or the resume secret is wrong).
    #[error("name in use")]
    InUse,
    /// The lease was taken over or expired.
    #[error("lease lost")]
    Lost,
    /// JetStream did not answer.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
}

impl Leases {
    /// Opens the bucket, creating it with `ttl` as its `max_age` when absent.
    ///
    /// # Errors
    /// [`LeaseError::Unavailable`] when JetStream refuses.
    pub async fn open(js: &jetstream::Context, ttl: Duration, replicas: usize) -> Result<Self, LeaseError> {
        let config = kv::Config {
            bucket: LEASES_BUCKET.into(),
            description: "tunnel name leases".into(),
            history: 1,
            max_age: ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = match js.get_key_value(LEASES_BUCKET).await {
            Ok(kv) => {
                warn_on_drift(&kv, ttl, replicas).await;
                kv
            }
            Err(_) => js.create_key_value(config).await.map_err(unavailable)?,
        };
        Ok(Self { kv })
    }

    /// Takes `name` for `session`: creates the lease (shared by the account `share` when given),
    /// or joins it when it is shared by that same account, or takes it over when `resume_secret`
    /// matches the stored hash, or when the session's account `owns` the name (its client came
    /// back after a crash without its secret; the stale session is evicted).
    ///
    /// # Errors
    /// [`LeaseError::InUse`] when another client holds the name.
    pub async fn acquire(
        &self,
        name: TunnelName,
        (resume_secret, owns, share): (Option<&str>, bool, Option<&str>),
        session: &str,
        host: &str,
    ) -> Result<Lease, LeaseError> {
        let key = lease_key(&name);
        let secret = resume_secret.map_or_else(new_secret, str::to_owned);
        let record = Bytes::from(tunnel_schemas::encode(&LeaseRecord {
            session: session.to_owned(),
            host: host.to_owned(),
            secret_hash: hash(&secret),
            shared_by: share.map(str::to_owned),
        }));
        let created = self.kv.create(&key, record.clone()).await;
        let (revision, resumed) = match created {
            Ok(revision) => (revision, false),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                if resume_secret.is_none() && !owns && share.is_none() {
                    return Err(LeaseError::InUse);
                }
                let entry = self.kv.entry(&key).await.map_err(unavailable)?.ok_or(LeaseError::InUse)?;
                let held: LeaseRecord = tunnel_schemas::decode(&entry.value, usize::MAX).map_err(unavailable)?;
                if share.is_some() && held.shared_by.as_deref() == share {
                    // Served together: the members renew the very same record.
                    let (record, revision) = (entry.value, entry.revision);
                    return Ok(Lease { name, secret, resumed: false, shared: true, key, record, revision });
                }
                let resumes = resume_secret
                    .is_some_and(|secret| constant_time_eq(held.secret_hash.as_bytes(), hash(secret).as_bytes()));
                if !resumes && !owns {
                    return Err(LeaseError::InUse);
                }
                let revision = self.kv.update(&key, record.clone(), entry.revision).await.map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision { LeaseError::InUse } else { unavailable(e) }
                })?;
                (revision, true)
            }
            Err(e) => return Err(unavailable(e)),
        };
        Ok(Lease { name, secret, resumed, shared: share.is_some(), key, record, revision })
    }

    /// Renews `lease`, resetting its age.
    ///
    /// # Errors
    /// [`LeaseError::Lost`] when it was taken over or expired.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        match self.kv.update(&lease.key, lease.record.clone(), lease.revision).await {
            Ok(revision) => {
                lease.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => self.recreate(lease).await,
            Err(e) => Err(unavailable(e)),
        }
    }

    /// After a renewal refused for its revision: the stored lease may still be this session's
    /// (an earlier renewal was stored but its acknowledgement was lost), or it may have expired
    /// while NATS was unreachable with nobody taking the name since; in both cases the session
    /// keeps it. Otherwise it is lost.
    async fn recreate(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        match self.kv.entry(&lease.key).await.map_err(unavailable)? {
            Some(entry) if entry.operation == kv::Operation::Put && entry.value == lease.record => {
                lease.revision = entry.revision;
                return Ok(());
            }
            Some(entry) if entry.operation == kv::Operation::Put => return Err(LeaseError::Lost),
            _ => {}
        }
        match self.kv.create(&lease.key, lease.record.clone()).await {
            Ok(revision) => {
                tracing::warn!(tunnel = %lease.name, "lease had expired; taken again");
                lease.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(LeaseError::Lost),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Whether the current lease on `name` was granted to the holder of `secret`.
    ///
    /// # Errors
    /// [`LeaseError::Unavailable`] when JetStream does not answer.
    pub async fn held_with(&self, name: &TunnelName, secret: &str) -> Result<bool, LeaseError> {
        let Some(entry) = self.kv.entry(lease_key(name)).await.map_err(unavailable)? else { return Ok(false) };
        if entry.operation != kv::Operation::Put {
            return Ok(false);
        }
        let held: LeaseRecord = tunnel_schemas::decode(&entry.value, usize::MAX).map_err(unavailable)?;
        Ok(constant_time_eq(held.secret_hash.as_bytes(), hash(secret).as_bytes()))
    }

    /// Releases `lease` if it is still the current one and served by one session (a shared
    /// name stays with the other members, and expires one TTL after the last has gone).
    pub async fn release(&self, lease: &Lease) {
        if lease.shared {
            return;
        }
        if let Err(e) = self.kv.delete_expect_revision(&lease.key, Some(lease.revision)).await {
            tracing::debug!(error = %e, "lease not released (already taken over or expired)");
        }
    }
}

/// Logs when the existing bucket was created with other settings than this host's.
async fn warn_on_drift(kv: &kv::Store, ttl: Duration, replicas: usize) {
    match kv.status().await {
        Ok(status) => {
            let config = &status.info.config;
            if config.max_age != ttl || config.num_replicas != replicas {
                tracing::warn!(
                    bucket = LEASES_BUCKET,
                    max_age = ?config.max_age,
                    replicas = config.num_replicas,
                    wanted_max_age = ?ttl,
                    wanted_replicas = replicas,
                    "the lease bucket exists with other settings; it is used as it is"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the lease bucket's settings"),
    }
}

fn new_secret() -> String {
    let mut bytes = [0_u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable(e.to_string())
}
