//! An in-memory mirror of a JetStream KV bucket, kept current by a watch: the way a service
//! reads state on its request path (tunnel policies, quota states) with no NATS round trip per
//! request.
//!
//! The mirror reads the bucket whole first; until then [`Mirror::applied`] is `None`, so a
//! service can refuse to act on a partial view. Afterwards it applies each change in order and
//! records the bucket revision it has applied. When the watch fails it reads the bucket whole
//! again into a fresh state, keeping the old one in force meanwhile. A bucket that does not
//! exist yet reads as empty, and is looked for again every [`RETRY_INTERVAL`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

/// Time between attempts at opening or watching the bucket after a failure (or while it does
/// not exist yet).
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// How a change of the bucket changes the mirrored state.
pub type ApplyFn<S> = fn(&mut S, &kv::Entry);

/// A bucket's state, as last read.
pub struct Mirror<S> {
    state: RwLock<S>,
    /// Bucket revision up to which every change is applied.
    applied: AtomicU64,
    /// The whole bucket has been read once.
    loaded: AtomicBool,
    /// Woken at every change applied.
    changed: tokio::sync::Notify,
}

impl<S: Default + Send + Sync + 'static> Mirror<S> {
    /// A mirror of `bucket` over `nats`, changed by `apply`, kept current by a task that runs as
    /// long as the mirror is referenced.
    pub fn start(nats: &async_nats::Client, bucket: &'static str, apply: ApplyFn<S>) -> Arc<Self> {
        let mirror = Arc::new(Self::with(S::default(), 0, false));
        tokio::spawn(follow(jetstream::new(nats.clone()), bucket, apply, Arc::downgrade(&mirror)));
        mirror
    }

    /// A mirror holding `state` at `revision`, followed by nothing (for tests of its readers).
    pub fn loaded_with(state: S, revision: u64) -> Self {
        Self::with(state, revision, true)
    }

    fn with(state: S, revision: u64, loaded: bool) -> Self {
        Self {
            state: RwLock::new(state),
            applied: AtomicU64::new(revision),
            loaded: AtomicBool::new(loaded),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The last bucket revision applied, or `None` until the bucket has been read whole.
    pub fn applied(&self) -> Option<u64> {
        self.loaded.load(Ordering::Acquire).then(|| self.applied.load(Ordering::Acquire))
    }

    /// The state, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, S> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to `timeout` until `revision` is applied; whether it was.
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> bool {
        let applied = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.applied().is_some_and(|applied| applied >= revision) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, applied).await.is_ok()
    }

    /// Waits for the next change applied.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn replace(&self, state: S, revision: u64) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        self.applied.store(revision, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn apply(&self, apply: ApplyFn<S>, entry: &kv::Entry) {
        apply(&mut self.state.write().unwrap_or_else(PoisonError::into_inner), entry);
        self.applied.store(entry.revision, Ordering::Release);
        self.changed.notify_waiters();
    }
}

/// Keeps `mirror` current until it is dropped.
async fn follow<S: Default + Send + Sync + 'static>(
    js: jetstream::Context,
    bucket: &'static str,
    apply: ApplyFn<S>,
    mirror: Weak<Mirror<S>>,
) {
    let mut told = false;
    loop {
        let outcome = match js.get_key_value(bucket).await {
            Ok(store) => watch(&store, apply, &mirror).await,
            Err(e) => {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(bucket, error = %e, "no such bucket yet (or no access to it); looking again");
                }
                let Some(mirror) = mirror.upgrade() else { return };
                if mirror.applied().is_none() {
                    mirror.replace(S::default(), 0);
                }
                Ok(())
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(bucket, error = %e, "bucket watch failed; reading the bucket again");
        }
        if mirror.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// Reads the bucket whole into a fresh state, swaps it in, then applies changes until the watch
/// ends (an error) or the mirror is dropped (`Ok`).
async fn watch<S: Default + Send + Sync + 'static>(
    store: &kv::Store,
    apply: ApplyFn<S>,
    mirror: &Weak<Mirror<S>>,
) -> Result<(), String> {
    let last = store.status().await.map_err(|e| e.to_string())?.info.state.last_sequence;
    let mut watch = store.watch_with_history(">").await.map_err(|e| e.to_string())?;
    let mut fresh = Some(S::default());
    let mut read = 0;
    if last == 0 {
        let Some(mirror) = mirror.upgrade() else { return Ok(()) };
        mirror.replace(fresh.take().unwrap_or_default(), 0);
    }
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        let Some(mirror) = mirror.upgrade() else { return Ok(()) };
        match fresh.as_mut() {
            Some(state) => {
                apply(state, &entry);
                read = read.max(entry.revision);
                if read >= last {
                    mirror.replace(fresh.take().unwrap_or_default(), read);
                }
            }
            None => mirror.apply(apply, &entry),
        }
    }
    Err("the watch ended".into())
}
